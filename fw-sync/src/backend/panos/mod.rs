//! PAN-OS (firewall or Panorama) through the XML API.
//!
//! Objects fw-sync owns carry the `bhfw-` prefix: host address objects `bhfw-<ip>`
//! (`ip-netmask` `<ip>/32`, or `<ip>/128` for IPv6, whose name spells the address with `-`
//! for `:` since PAN-OS names allow no colon: `bhfw-fd00-9--1` is `fd00:9::1/128`; described
//! as managed by fw-sync), static address groups `bhfw-<name>` (one group holds both
//! families, as PAN-OS groups do)
//! (target kind `panos-static-group`) and tags `bhfw-<name>` (`panos-dynamic-tag`), whose
//! IPs (of both families) are registered through the User-ID API for dynamic address groups
//! matching the tag.
//! Nothing without the prefix is read as owned, changed or deleted.
//!
//! Reading (3 requests, plus one per 500 registered IPs when fw-sync owns tags) shows the
//! RUNNING config: that is what the firewall enforces, and a change left uncommitted (a
//! failed or interrupted commit) then still reads as a difference and is committed by the
//! next reconcile. Changes go to the candidate config in ONE strict-transactional
//! multi-config per apply, followed by ONE commit (and, on Panorama, one commit-all to the
//! device group), whose jobs are first polled when the previous job would have finished, then
//! at intervals doubling from 25 ms to 0.5 s. Every operation is idempotent (set
//! merges, deleting a missing node succeeds), so a repeated or partly stale apply is safe.
//! Caveat: the commit is a full commit, so uncommitted edits other admins left in the
//! candidate are committed with it.
//!
//! Removal first: inside the transaction members leave groups before others join, and the
//! commit makes the whole transaction running at once; registered-IP tags are unregistered
//! before the commit and registered after it.
//!
//! Empty groups: PAN-OS refuses to commit a static group without members, so an empty owned
//! group holds the placeholder address `bhfw-empty-group` (255.255.255.255/32, which is
//! never the source or destination of a forwarded packet); reading skips it.
//!
//! Busy firewall: a commit in progress or a config lock held by another admin makes the
//! request be retried with backoff for up to 5 s (then an error naming the holder). A group
//! or address still used by something fw-sync does not own (reference count not zero) is
//! emptied or kept instead of deleted.

mod api;
mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use api::{Api, CallError, esc};
use plan::{Pinned, Purpose};

use crate::backend::Backend;
use crate::backend::http::TlsOptions;
use crate::config::{PanosConfig, PanosLocation};
use crate::diff::{Action, Diff};
use crate::error::FwSyncError;
use crate::group::{FirewallState, OWNED_PREFIX, ObjectRef, TargetKind};

/// Name of the member an empty owned group holds.
pub(crate) const PLACEHOLDER: &str = "bhfw-empty-group";
/// Its address: the limited broadcast address, never a pod's.
pub(crate) const PLACEHOLDER_IP: &str = "255.255.255.255";

/// Longest pause between two polls of a commit job.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// The description of owned objects.
pub(crate) const DESCRIPTION: &str = "managed by fw-sync (Bulkhead); changes are reverted";
/// IPs per User-ID request.
const UID_BATCH: usize = 1000;
/// Registered IPs per page of `show object registered-ip` (the PAN-OS maximum).
const PAGE: usize = 500;

/// The name of the address object for `ip`: `bhfw-10.1.2.3`, or for IPv6 the compressed
/// form with `-` for `:` (`bhfw-fd00-9--1`), PAN-OS names allowing letters, digits, `-`,
/// `_`, `.` and spaces only.
pub(crate) fn address_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{OWNED_PREFIX}{a}"),
        IpAddr::V6(a) => format!("{OWNED_PREFIX}{}", a.to_string().replace(':', "-")),
    }
}

/// The address an owned address object's name spells ([`address_name`] read back; only the
/// name fw-sync itself would give that address counts).
pub(crate) fn address_of_name(name: &str) -> Option<IpAddr> {
    let rest = name.strip_prefix(OWNED_PREFIX)?;
    let ip = match rest.parse::<IpAddr>() {
        Ok(ip @ IpAddr::V4(_)) => ip,
        Ok(IpAddr::V6(_)) => return None,
        Err(_) if rest.contains("--") || rest.matches('-').count() >= 2 => IpAddr::V6(rest.replace('-', ":").parse::<Ipv6Addr>().ok()?),
        Err(_) => return None,
    };
    (address_name(ip) == name).then_some(ip)
}

/// Whether an `ip-netmask` value is exactly the host `ip` (`/32`, `/128` or no length).
fn is_host_value(value: &str, ip: IpAddr) -> bool {
    let (addr, len) = value.trim().split_once('/').map_or((value.trim(), None), |(a, l)| (a, Some(l)));
    let full = if ip.is_ipv4() { "32" } else { "128" };
    addr.parse::<IpAddr>().is_ok_and(|a| a == ip) && len.is_none_or(|l| l == full)
}

/// A PAN-OS firewall (vsys) or Panorama (device group).
pub struct PanosBackend {
    api: Api,
    config: PanosConfig,
    /// `/config/devices/entry[@name='localhost.localdomain']/vsys/entry[@name='vsys1']` or the
    /// device group's.
    base: String,
    /// Owned state as last read or applied.
    known: FirewallState,
    /// Owned addresses no group used at the last read.
    orphans: BTreeSet<IpAddr>,
    /// Owned address names that objects fw-sync does not own use.
    foreign_refs: BTreeSet<String>,
    /// A commit went through on Panorama but its push (commit-all) was not confirmed.
    push_owed: bool,
    poll_interval: Duration,
    /// How long the last job took from enqueue to FIN as seen by polling.
    last_job: Duration,
    busy_budget: Duration,
    job_timeout: Duration,
}

impl PanosBackend {
    /// A backend for firewall `name`.
    pub fn new(name: &str, config: PanosConfig, tls: &TlsOptions) -> Result<Self, FwSyncError> {
        let device = "/config/devices/entry[@name='localhost.localdomain']";
        let base = match &config.location {
            PanosLocation::Vsys(v) => format!("{device}/vsys/entry[@name='{v}']"),
            PanosLocation::DeviceGroup(d) => format!("{device}/device-group/entry[@name='{d}']"),
        };
        Ok(PanosBackend {
            api: Api::new(name, &config.url, config.api_key.clone(), tls)?,
            config,
            base,
            known: FirewallState::new(),
            orphans: BTreeSet::new(),
            foreign_refs: BTreeSet::new(),
            push_owed: false,
            poll_interval: Duration::from_millis(25),
            last_job: Duration::ZERO,
            busy_budget: Duration::from_secs(5),
            job_timeout: Duration::from_secs(600),
        })
    }

    /// How long a busy firewall (commit in progress, config locked) is retried.
    pub fn set_busy_budget(&mut self, d: Duration) {
        self.busy_budget = d;
    }

    fn fail(&self, object: &str, detail: String) -> FwSyncError {
        FwSyncError::Backend { firewall: self.api.firewall().into(), object: object.into(), detail }
    }

    /// `show` of the running config; None when the node does not exist.
    fn show(&mut self, xpath: &str) -> Result<Option<String>, FwSyncError> {
        let what = format!("config show {xpath}");
        match self.api.call(&[("type", "config"), ("action", "show"), ("xpath", xpath)], &what) {
            Ok(body) => Ok(Some(body)),
            Err(CallError::Refused { msg, .. }) if msg.contains("No such node") => Ok(None),
            Err(e) => Err(self.api.error(&what, e)),
        }
    }

    /// A request retried while the firewall is busy.
    fn busy_retry(&mut self, params: &[(&str, &str)], what: &str) -> Result<String, CallError> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            match self.api.call(params, what) {
                Err(e) if e.busy() && start.elapsed() + wait <= self.busy_budget => {
                    tracing::info!(request = what, reason = e.message(), "firewall busy; retrying");
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                Err(e) if e.busy() => {
                    let msg = format!("still refused after {:.1} s: {}", start.elapsed().as_secs_f64(), e.message());
                    return Err(CallError::Refused { code: None, msg, body: String::new() });
                }
                other => return other,
            }
        }
    }

    /// User-ID request parameters for this location.
    fn uid_params(&self, cmd: &str) -> Vec<(String, String)> {
        let mut p = vec![("type".to_string(), "user-id".to_string()), ("cmd".into(), cmd.to_string())];
        if let PanosLocation::Vsys(v) = &self.config.location {
            p.push(("vsys".into(), v.clone()));
        }
        if let Some(t) = &self.config.target {
            p.push(("target".into(), t.clone()));
        }
        p
    }

    /// Every registered IP with its tags, page by page.
    fn registered(&mut self) -> Result<BTreeMap<IpAddr, Vec<String>>, FwSyncError> {
        let mut out = BTreeMap::new();
        let mut start = 1;
        loop {
            let cmd = format!("<show><object><registered-ip><limit>{PAGE}</limit><start-point>{start}</start-point></registered-ip></object></show>");
            let what = format!("op show registered-ip from {start}");
            let mut p = vec![("type", "op"), ("cmd", cmd.as_str())];
            if let Some(t) = &self.config.target {
                p.push(("target", t));
            }
            let body = self.api.call(&p, &what).map_err(|e| self.api.error(&what, e))?;
            let doc = roxmltree::Document::parse(&body).map_err(|e| self.fail(&what, format!("unreadable answer: {e}")))?;
            let mut n = 0;
            for e in doc.descendants().filter(|e| e.has_tag_name("entry") && e.attribute("ip").is_some()) {
                n += 1;
                let Ok(ip) = e.attribute("ip").unwrap_or("").parse::<IpAddr>() else { continue };
                let tags = e.descendants().filter(|m| m.has_tag_name("member")).filter_map(|m| m.text()).map(String::from);
                out.entry(ip).or_insert_with(Vec::new).extend(tags);
            }
            if n < PAGE {
                return Ok(out);
            }
            start += PAGE;
        }
    }

    /// Sends register or unregister messages for `entries` (IP -> tags), in batches.
    fn user_id(&mut self, op: &str, entries: &BTreeMap<IpAddr, BTreeSet<String>>) -> Result<(), FwSyncError> {
        let list: Vec<_> = entries.iter().collect();
        let timeout = match (op, self.config.registered_ip_timeout) {
            ("register", t) if t > 0 => format!(" timeout=\"{t}\""),
            _ => String::new(),
        };
        for chunk in list.chunks(UID_BATCH) {
            let mut cmd = format!("<uid-message><version>1.0</version><type>update</type><payload><{op}>");
            for (ip, tags) in chunk {
                let _ = write!(cmd, "<entry ip=\"{ip}\"><tag>");
                for t in *tags {
                    let _ = write!(cmd, "<member{timeout}>{}</member>", esc(t));
                }
                cmd.push_str("</tag></entry>");
            }
            let _ = write!(cmd, "</{op}></payload></uid-message>");
            let what = format!("user-id {op} of {} IPs", chunk.len());
            let owned = self.uid_params(&cmd);
            let params: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            match self.api.call(&params, &what) {
                Ok(_) => {}
                Err(CallError::Refused { body, msg, code }) => {
                    // Per-entry messages: "already exists, ignore" and "does not exist,
                    // ignore unreg" mean the state is already what was asked.
                    let doc = roxmltree::Document::parse(&body).ok();
                    let entries: Vec<String> = doc
                        .iter()
                        .flat_map(|d| d.descendants().filter(|e| e.has_tag_name("entry")).map(|e| format!("{}: {}", e.attribute("ip").unwrap_or("?"), e.attribute("message").unwrap_or(""))))
                        .collect();
                    let real: Vec<&String> = entries.iter().filter(|m| !(m.ends_with("already exists, ignore") || m.ends_with("does not exist, ignore unreg"))).collect();
                    if entries.is_empty() {
                        return Err(self.api.error(&what, CallError::Refused { code, msg, body: String::new() }));
                    }
                    if !real.is_empty() {
                        let shown: Vec<&str> = real.iter().take(5).map(|s| s.as_str()).collect();
                        return Err(self.fail(&what, format!("{} entries refused: {}", real.len(), shown.join("; "))));
                    }
                }
                Err(e) => return Err(self.api.error(&what, e)),
            }
        }
        Ok(())
    }

    /// Runs the strict multi-config for `diff`; objects PAN-OS refuses to delete because
    /// something else uses them are emptied or kept, and the transaction sent again.
    fn configure(&mut self, diff: &Diff) -> Result<bool, FwSyncError> {
        let mut pinned = Pinned::default();
        loop {
            let ops = plan::plan(&self.base, diff, &self.known, &self.orphans, &self.foreign_refs, &pinned);
            if ops.is_empty() {
                return Ok(false);
            }
            let element = plan::multi_config_element(&ops);
            let what = format!("config multi-config ({} operations)", ops.len());
            let params = [("type", "config"), ("action", "multi-config"), ("strict-transactional", "yes"), ("element", element.as_str())];
            match self.busy_retry(&params, &what) {
                Ok(_) => return Ok(true),
                Err(CallError::Refused { code: Some(10), msg, body }) => {
                    let failed = failed_op(&body).and_then(|id| ops.get(id.wrapping_sub(1)));
                    let newly = match failed.map(|o| &o.purpose) {
                        Some(Purpose::DeleteGroup(g)) => pinned.groups.insert(g.clone()),
                        Some(Purpose::DeleteAddress(ip)) => pinned.addresses.insert(*ip),
                        _ => false,
                    };
                    if !newly {
                        return Err(self.api.error(&what, CallError::Refused { code: Some(10), msg, body: String::new() }));
                    }
                    tracing::warn!(request = %what, reason = %msg, "an owned object is still in use by something else; keeping it");
                }
                Err(e) => return Err(self.api.error(&what, e)),
            }
        }
    }

    /// Commits (busy-retried) and waits for the job; false when there was nothing to commit.
    fn commit(&mut self, action: Option<&str>, cmd: &str, what: &str) -> Result<bool, FwSyncError> {
        let mut params = vec![("type", "commit"), ("cmd", cmd)];
        if let Some(a) = action {
            params.push(("action", a));
        }
        // Repeated after a transport failure too: a commit commits the candidate, so doing it
        // twice is harmless, and if the first one was enqueued after all the repeat is told
        // "another commit is in progress" and waits like any busy answer.
        let start = Instant::now();
        let mut wait = Duration::from_millis(50);
        let body = loop {
            match self.api.call(&params, what) {
                Err(e) if e.busy() && start.elapsed() + wait <= self.busy_budget => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                Err(e) if e.busy() => {
                    let msg = format!("still refused after {:.1} s: {}", start.elapsed().as_secs_f64(), e.message());
                    return Err(self.fail(what, msg));
                }
                Err(e) => return Err(self.api.error(what, e)),
                Ok(b) => break b,
            }
        };
        let doc = roxmltree::Document::parse(&body).map_err(|e| self.fail(what, format!("unreadable answer: {e}")))?;
        let Some(job) = doc.descendants().find(|n| n.has_tag_name("job")).and_then(|n| n.text()).map(|t| t.trim().to_string()) else {
            let msg = api::messages(doc.root_element());
            if msg.contains("no changes to commit") {
                return Ok(false);
            }
            return Err(self.fail(what, format!("no job id in the answer: {msg}")));
        };
        self.wait_job(&job, what)?;
        Ok(true)
    }

    /// Polls a job until FIN; an error unless its result is OK.
    fn wait_job(&mut self, job: &str, what: &str) -> Result<(), FwSyncError> {
        let cmd = format!("<show><jobs><id>{}</id></jobs></show>", esc(job));
        let poll = format!("op show jobs id {job}");
        let start = Instant::now();
        // The first poll comes when the last job of this firewall would have finished (commits
        // of one device take similar times), then short polls doubling to 0.5 s (pan-python's
        // fixed pace): a fast commit is seen at once, a multi-minute one costs few calls.
        let mut pause = self.poll_interval.max(self.last_job.mul_f64(0.9));
        let mut next = self.poll_interval;
        loop {
            std::thread::sleep(pause);
            pause = next;
            next = (next * 2).min(MAX_POLL_INTERVAL);
            let body = self.api.call(&[("type", "op"), ("cmd", &cmd)], &poll).map_err(|e| self.api.error(&poll, e))?;
            let doc = roxmltree::Document::parse(&body).map_err(|e| self.fail(&poll, format!("unreadable answer: {e}")))?;
            let Some(jn) = doc.descendants().find(|n| n.has_tag_name("job")) else {
                return Err(self.fail(&poll, format!("no job in the answer: {}", api::messages(doc.root_element()))));
            };
            let field = |tag: &str| jn.children().find(|n| n.has_tag_name(tag)).and_then(|n| n.text()).unwrap_or("").trim().to_string();
            if field("status") == "FIN" {
                self.last_job = start.elapsed();
                if field("result") == "OK" {
                    return Ok(());
                }
                let details: Vec<String> = jn
                    .descendants()
                    .filter(|n| n.has_tag_name("line"))
                    .filter_map(|n| n.text())
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect();
                return Err(self.fail(what, format!("job {job} ended {}: {}", field("result"), details.join("; "))));
            }
            if start.elapsed() > self.job_timeout {
                return Err(self.fail(what, format!("job {job} not finished after {} s (status {})", self.job_timeout.as_secs(), field("status"))));
            }
        }
    }

    /// Commit, then on Panorama push the device group.
    fn commit_and_push(&mut self) -> Result<(), FwSyncError> {
        let committed = self.commit(None, "<commit></commit>", "commit")?;
        if let PanosLocation::DeviceGroup(dg) = &self.config.location {
            if committed {
                self.push_owed = true;
            }
            if self.push_owed {
                let cmd = format!("<commit-all><shared-policy><device-group><entry name=\"{}\"/></device-group></shared-policy></commit-all>", esc(dg));
                self.commit(Some("all"), &cmd, &format!("commit-all to device group {dg}"))?;
                self.push_owed = false;
            }
        }
        Ok(())
    }
}

/// The id of the first failed operation in a multi-config answer.
fn failed_op(body: &str) -> Option<usize> {
    let doc = roxmltree::Document::parse(body).ok()?;
    let n = doc.root_element().children().find(|n| n.has_tag_name("response") && n.attribute("status") == Some("error"))?;
    n.attribute("id")?.parse().ok()
}

/// Entries (name -> element) below the `show` answer's container.
fn entries(doc: &roxmltree::Document) -> Vec<(String, roxmltree::NodeId)> {
    let Some(result) = doc.root_element().children().find(|n| n.has_tag_name("result")) else { return Vec::new() };
    result
        .children()
        .filter(|n| n.is_element())
        .flat_map(|c| c.children().filter(|e| e.has_tag_name("entry")))
        .filter_map(|e| e.attribute("name").map(|n| (n.to_string(), e.id())))
        .collect()
}

impl Backend for PanosBackend {
    fn firewall(&self) -> &str {
        self.api.firewall()
    }

    fn read_owned_state(&mut self) -> Result<FirewallState, FwSyncError> {
        if self.push_owed {
            self.commit_and_push()?;
        }
        let base = self.base.clone();
        let mut state = FirewallState::new();
        // Owned addresses whose value matches their name.
        let mut addresses = BTreeSet::new();
        if let Some(body) = self.show(&format!("{base}/address"))? {
            let doc = roxmltree::Document::parse(&body).map_err(|e| self.fail("config show address", e.to_string()))?;
            for (name, id) in entries(&doc) {
                let Some(ip) = address_of_name(&name) else { continue };
                let e = doc.get_node(id).expect("node of this document");
                let value = e.children().find(|c| c.has_tag_name("ip-netmask")).and_then(|c| c.text()).unwrap_or("");
                if is_host_value(value, ip) {
                    addresses.insert(ip);
                }
            }
        }
        let mut used = BTreeSet::new();
        self.foreign_refs.clear();
        if let Some(body) = self.show(&format!("{base}/address-group"))? {
            let doc = roxmltree::Document::parse(&body).map_err(|e| self.fail("config show address-group", e.to_string()))?;
            for (name, id) in entries(&doc) {
                let e = doc.get_node(id).expect("node of this document");
                let members: Vec<&str> =
                    e.children().filter(|c| c.has_tag_name("static")).flat_map(|s| s.children()).filter(|m| m.has_tag_name("member")).filter_map(|m| m.text()).collect();
                let owned = name.strip_prefix(OWNED_PREFIX).map(String::from);
                let mut ips = BTreeSet::new();
                for m in members {
                    let ip = address_of_name(m);
                    match (&owned, ip) {
                        (Some(_), Some(ip)) if addresses.contains(&ip) => {
                            ips.insert(ip);
                            used.insert(ip);
                        }
                        (None, Some(ip)) => {
                            self.foreign_refs.insert(m.to_string());
                            used.insert(ip);
                        }
                        _ => {}
                    }
                }
                if let Some(n) = owned
                    && e.children().any(|c| c.has_tag_name("static"))
                {
                    state.insert(ObjectRef { kind: TargetKind::PanosStaticGroup, name: n }, ips);
                }
            }
        }
        self.orphans = addresses.difference(&used).copied().collect();
        let mut tags = BTreeSet::new();
        if let Some(body) = self.show(&format!("{base}/tag"))? {
            let doc = roxmltree::Document::parse(&body).map_err(|e| self.fail("config show tag", e.to_string()))?;
            tags.extend(entries(&doc).into_iter().filter_map(|(n, _)| n.strip_prefix(OWNED_PREFIX).map(String::from)));
        }
        if !tags.is_empty() {
            let registered = self.registered()?;
            for t in &tags {
                let full = format!("{OWNED_PREFIX}{t}");
                let ips = registered.iter().filter(|(_, ts)| ts.contains(&full)).map(|(ip, _)| *ip).collect();
                state.insert(ObjectRef { kind: TargetKind::PanosDynamicTag, name: t.clone() }, ips);
            }
        }
        self.known = state.clone();
        Ok(state)
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), FwSyncError> {
        if let Some(c) = diff.changes.iter().find(|c| !matches!(c.object.kind, TargetKind::PanosStaticGroup | TargetKind::PanosDynamicTag)) {
            return Err(self.fail(&c.object.to_string(), "not a PAN-OS object kind".into()));
        }
        let tag_changes = |pick: fn(&crate::diff::ObjectChange) -> &BTreeSet<IpAddr>| {
            let mut m: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
            for c in diff.changes.iter().filter(|c| c.object.kind == TargetKind::PanosDynamicTag) {
                for ip in pick(c) {
                    m.entry(*ip).or_default().insert(format!("{OWNED_PREFIX}{}", c.object.name));
                }
            }
            m
        };
        let unregister = tag_changes(|c| &c.remove);
        let register = tag_changes(|c| &c.add);
        if !unregister.is_empty() {
            self.user_id("unregister", &unregister)?;
        }
        if self.configure(diff)? || self.push_owed {
            self.commit_and_push()?;
        }
        if !register.is_empty() {
            self.user_id("register", &register)?;
        }
        for c in &diff.changes {
            match c.action {
                Action::Delete => self.known.remove(&c.object),
                _ => self.known.insert(c.object.clone(), c.desired.clone()),
            };
        }
        self.orphans.clear();
        Ok(())
    }

    fn calls(&self) -> u64 {
        self.api.calls()
    }
}
