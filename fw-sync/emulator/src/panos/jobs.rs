//! `type=commit` (and Panorama's commit-all) as jobs that go ACT -> FIN over the configured
//! commit duration, and `<show><jobs>` to poll them. A commit is validated when enqueued
//! and takes effect (running = candidate at enqueue time) when the job finishes.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::xml::{self, Node};
use super::{ApiReply, State};

/// What a job does.
#[derive(Clone, Debug)]
pub(crate) enum JobKind {
    Commit,
    /// Push of the running config of these device groups to their firewalls.
    CommitAll(Vec<String>),
}

/// One job.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub id: u64,
    pub kind: JobKind,
    pub user: String,
    pub start: Instant,
    pub duration: Duration,
    /// Failure lines (empty: the job succeeds).
    pub errors: Vec<String>,
    /// The configuration a commit makes running.
    pub snapshot: Option<Node>,
    pub done: bool,
}

impl State {
    /// Whether a commit or commit-all job has not finished.
    pub(crate) fn commit_in_progress(&self) -> bool {
        self.jobs.iter().any(|j| !j.done)
    }

    /// Finishes the jobs whose time is up, in order.
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.jobs.len() {
            let j = &self.jobs[i];
            if j.done || now < j.start + j.duration {
                continue;
            }
            let (ok, kind, snapshot) = (j.errors.is_empty(), j.kind.clone(), j.snapshot.clone());
            self.jobs[i].done = true;
            if !ok {
                continue;
            }
            match kind {
                JobKind::Commit => {
                    if let Some(s) = snapshot {
                        self.running = s;
                    }
                    self.commits += 1;
                }
                JobKind::CommitAll(dgs) => {
                    for dg in dgs {
                        let steps = xml::parse_xpath(&format!("/config/devices/entry[@name='localhost.localdomain']/device-group/entry[@name='{dg}']"))
                            .expect("device-group xpath");
                        let node = xml::select(&self.running, &steps).first().map(|n| (*n).clone());
                        self.pushed.insert(dg, node.unwrap_or_else(|| Node::named("entry", "")));
                    }
                    self.pushes += 1;
                }
            }
        }
    }

    fn enqueue(&mut self, kind: JobKind, user: &str, errors: Vec<String>, snapshot: Option<Node>) -> u64 {
        self.next_job += 1;
        let id = self.next_job;
        self.jobs.push(Job { id, kind, user: user.to_string(), start: Instant::now(), duration: self.commit_duration, errors, snapshot, done: false });
        id
    }
}

/// `type=commit`: `cmd=<commit>...</commit>`, or on Panorama `action=all` with
/// `cmd=<commit-all><shared-policy><device-group><entry name="DG"/>...`.
pub(crate) fn commit(st: &mut State, user: &str, p: &std::collections::BTreeMap<String, String>) -> ApiReply {
    let cmd = p.get("cmd").map(String::as_str).unwrap_or("");
    let Ok(doc) = roxmltree::Document::parse(cmd) else {
        return ApiReply::error(Some(18), "Malformed commit command");
    };
    let root = doc.root_element();
    if let Some(holder) = st.lock.as_ref().filter(|h| *h != user) {
        return ApiReply::error(None, &format!("Configuration is locked by {holder}"));
    }
    if st.commit_in_progress() {
        return ApiReply::error(None, "Another commit/validate is in progress. Please try again later");
    }
    let all = p.get("action").is_some_and(|a| a == "all");
    let (kind, errors, snapshot) = match (all, root.tag_name().name()) {
        (false, "commit") => {
            if st.candidate == st.running {
                return ApiReply::ok("<response status=\"success\" code=\"19\"><msg>There are no changes to commit.</msg></response>".into());
            }
            (JobKind::Commit, super::config::commit_errors(&st.candidate), Some(st.candidate.clone()))
        }
        (true, "commit-all") if st.panorama => {
            let dgs: Vec<String> = root
                .descendants()
                .filter(|n| n.has_tag_name("device-group"))
                .flat_map(|dg| dg.children().filter(|e| e.has_tag_name("entry")).filter_map(|e| e.attribute("name").map(String::from)))
                .collect();
            if dgs.is_empty() {
                return ApiReply::error(Some(17), "commit-all: no device group given");
            }
            let dg_root = "/config/devices/entry[@name='localhost.localdomain']/device-group/entry";
            let missing: Vec<String> = dgs
                .iter()
                .filter(|dg| xml::select(&st.running, &xml::parse_xpath(&format!("{dg_root}[@name='{dg}']")).expect("xpath")).is_empty())
                .map(|dg| format!("device-group {dg} does not exist"))
                .collect();
            if !missing.is_empty() {
                return ApiReply::error(Some(17), &missing.join("; "));
            }
            (JobKind::CommitAll(dgs), Vec::new(), None)
        }
        (true, _) => return ApiReply::error(Some(17), "commit-all is only available on Panorama"),
        (false, other) => return ApiReply::error(Some(17), &format!("{other} is unexpected")),
    };
    let id = st.enqueue(kind, user, errors, snapshot);
    let what = if all { "CommitAll" } else { "Commit" };
    ApiReply::ok(format!(
        "<response status=\"success\" code=\"19\"><result><msg><line>{what} job enqueued with jobid {id}</line></msg><job>{id}</job></result></response>"
    ))
}

/// `<show><jobs><id>N</id></jobs></show>` and `<show><jobs><all/></jobs></show>`.
pub(crate) fn show_jobs(st: &State, jobs: roxmltree::Node) -> ApiReply {
    let mut out = String::new();
    if let Some(idn) = jobs.children().find(|c| c.has_tag_name("id")) {
        let Ok(id) = idn.text().unwrap_or("").trim().parse::<u64>() else {
            return ApiReply::error(Some(17), "show -> jobs -> id is invalid");
        };
        let Some(j) = st.jobs.iter().find(|j| j.id == id) else {
            return ApiReply::error(None, &format!("job {id} not found"));
        };
        write_job(j, &mut out);
    } else if jobs.children().any(|c| c.has_tag_name("all")) {
        for j in st.jobs.iter().rev() {
            write_job(j, &mut out);
        }
    } else {
        return ApiReply::error(Some(17), "show -> jobs is incomplete");
    }
    ApiReply::ok(format!("<response status=\"success\"><result>{out}</result></response>"))
}

fn write_job(j: &Job, out: &mut String) {
    let elapsed = j.start.elapsed();
    let (status, result, progress) = match (j.done, j.errors.is_empty()) {
        (false, _) => {
            let pct = if j.duration.is_zero() { 99 } else { (elapsed.as_millis() * 100 / j.duration.as_millis()).min(99) };
            ("ACT", "PEND", pct.to_string())
        }
        (true, true) => ("FIN", "OK", "100".into()),
        (true, false) => ("FIN", "FAIL", "100".into()),
    };
    let kind = match j.kind {
        JobKind::Commit => "Commit",
        JobKind::CommitAll(_) => "CommitAll",
    };
    let mut details = String::new();
    if j.done {
        if j.errors.is_empty() {
            details.push_str("<line>Configuration committed successfully</line>");
        } else {
            for e in &j.errors {
                let _ = write!(details, "<line>{}</line>", xml::escape(e));
            }
            details.push_str("<line>Commit failed</line>");
        }
    }
    let _ = write!(
        out,
        "<job><id>{}</id><user>{}</user><type>{kind}</type><status>{status}</status><queued>NO</queued><stoppable>no</stoppable><result>{result}</result><description/><positionInQ>0</positionInQ><progress>{progress}</progress><details>{details}</details><warnings/></job>",
        j.id,
        xml::escape(&j.user)
    );
}
