//! Isolation carried to the perimeter: when the detector isolates or pauses a workload, the
//! agent publishes a [`Quarantine`] for it in its datastore (a file under
//! `bulkhead-quarantine/<node>/` of a folder datastore, or a `quarantines.bulkhead.io` object
//! in the pod's namespace on the Kubernetes API), which fw-sync turns into membership of the
//! quarantine group on every firewall it drives; on release it goes and the addresses leave
//! the group. fw-sync answers per firewall in the Quarantine's status; each firewall that
//! holds the addresses (or fails to) is reported once as a `quarantine-perimeter` event.
//!
//! All of it runs on a thread of its own (`bh-perimeter`): the detector's threads only send
//! it a message after the kernel's isolation entry is written, so neither a slow disk nor an
//! API server that hangs ever delays a decision. Once a second the agent hands it what is
//! really isolated or paused, and it brings the store in step (an event lost in a full ring,
//! a release without an agent, a failed write, a restart).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bulkhead_kube::quarantine::{self as wire, Quarantine, QuarantineStatus};

use super::{Detector, DetectorEvent, Shared, cgroup};
use bulkhead_loader::Dataplane;

/// Where a node's Quarantines live.
pub trait QuarantineStore: Send {
    /// For logs.
    fn describe(&self) -> String;
    /// This node's Quarantines as stored, with fw-sync's status of each.
    fn list(&self) -> Result<Vec<(Quarantine, Option<QuarantineStatus>)>, String>;
    /// Creates or replaces one.
    fn put(&self, q: &Quarantine) -> Result<(), String>;
    /// Removes one (gone already is fine), with its status.
    fn delete(&self, q: &Quarantine) -> Result<(), String>;
    /// fw-sync's status of each of `qs`, where it answered that quarantine (same
    /// `sinceUnixMs`).
    fn statuses(&self, qs: &[&Quarantine]) -> Vec<Option<QuarantineStatus>>;
}

/// The folder datastore's store: `<datastore>/bulkhead-quarantine/<node>/`.
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(datastore: &Path, node: &str) -> FileStore {
        FileStore { dir: wire::node_dir(datastore, node) }
    }

    fn file(&self, q: &Quarantine) -> PathBuf {
        self.dir.join(wire::file_name(&q.spec.workload))
    }
}

fn read_status(path: &Path) -> Option<QuarantineStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn remove(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("{}: {e}", path.display())),
        _ => Ok(()),
    }
}

impl QuarantineStore for FileStore {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn list(&self) -> Result<Vec<(Quarantine, Option<QuarantineStatus>)>, String> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Ok(Vec::new()) };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml") && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f).map_err(|e| e.to_string()).and_then(|t| serde_yaml::from_str::<Quarantine>(&t).map_err(|e| e.to_string())) {
                Ok(q) => out.push((q, read_status(&wire::status_path(&f)))),
                Err(e) => {
                    // Only this node's agent writes here: an unreadable file is a leftover.
                    tracing::warn!(file = %f.display(), error = %e, "unreadable quarantine file of this node; removed");
                    let _ = remove(&f);
                    let _ = remove(&wire::status_path(&f));
                }
            }
        }
        Ok(out)
    }

    fn put(&self, q: &Quarantine) -> Result<(), String> {
        let text = serde_yaml::to_string(q).map_err(|e| e.to_string())?;
        let file = self.file(q);
        std::fs::create_dir_all(&self.dir).and_then(|()| wire::write_atomic(&file, text.as_bytes())).map_err(|e| format!("{}: {e}", file.display()))
    }

    fn delete(&self, q: &Quarantine) -> Result<(), String> {
        let file = self.file(q);
        remove(&file)?;
        remove(&wire::status_path(&file))
    }

    fn statuses(&self, qs: &[&Quarantine]) -> Vec<Option<QuarantineStatus>> {
        qs.iter().map(|q| read_status(&wire::status_path(&self.file(q))).filter(|s| s.since_unix_ms == q.spec.since_unix_ms)).collect()
    }
}

/// The Kubernetes API's store: `quarantines.bulkhead.io` objects labelled with the node.
pub struct KubeStore {
    client: bulkhead_kube::Client,
    rt: bulkhead_kube::RuntimeHandle,
    node: String,
}

impl KubeStore {
    pub fn new(client: bulkhead_kube::Client, rt: bulkhead_kube::RuntimeHandle, node: &str) -> KubeStore {
        KubeStore { client, rt, node: node.to_string() }
    }
}

impl QuarantineStore for KubeStore {
    fn describe(&self) -> String {
        format!("kubernetes quarantines (label {}={})", wire::NODE_LABEL, self.node)
    }

    fn list(&self) -> Result<Vec<(Quarantine, Option<QuarantineStatus>)>, String> {
        wire::api::list(&self.client, &self.rt, &self.node)
    }

    fn put(&self, q: &Quarantine) -> Result<(), String> {
        wire::api::apply(&self.client, &self.rt, q)
    }

    fn delete(&self, q: &Quarantine) -> Result<(), String> {
        wire::api::delete(&self.client, &self.rt, q)
    }

    fn statuses(&self, qs: &[&Quarantine]) -> Vec<Option<QuarantineStatus>> {
        // One listing of the node's objects answers them all.
        let all: BTreeMap<String, Option<QuarantineStatus>> = match self.list() {
            Ok(l) => l.into_iter().map(|(o, s)| (o.spec.workload, s)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "quarantine statuses not read; read again next poll");
                BTreeMap::new()
            }
        };
        qs.iter().map(|q| all.get(&q.spec.workload).cloned().flatten().filter(|s| s.since_unix_ms == q.spec.since_unix_ms)).collect()
    }
}

/// One workload's published quarantine.
#[derive(Clone, Debug)]
struct Active {
    quarantine: Quarantine,
    /// Whether the store holds it (a failed write is retried at the next reconcile).
    stored: bool,
    /// Firewalls already reported: `None` = applied, `Some(error)` = failing with that error.
    reported: BTreeMap<String, Option<String>>,
}

/// The node's quarantines and their store.
pub struct Perimeter {
    store: Box<dyn QuarantineStore>,
    node: String,
    active: BTreeMap<String, Active>,
    last_sweep: Option<Instant>,
}

/// Strays (stored, but not active) are looked for this often: a listing of the store.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

impl Perimeter {
    /// What an earlier agent published is taken over (statuses it saw are not reported again).
    pub fn new(store: Box<dyn QuarantineStore>, node: &str) -> Perimeter {
        let mut active = BTreeMap::new();
        match store.list() {
            Ok(list) => {
                for (q, st) in list {
                    let reported = st
                        .filter(|s| s.since_unix_ms == q.spec.since_unix_ms)
                        .map(|s| s.firewalls.into_iter().map(|(k, v)| (k, if v.applied_unix_ms.is_some() { None } else { v.error })).collect())
                        .unwrap_or_default();
                    active.insert(q.spec.workload.clone(), Active { quarantine: q, stored: true, reported });
                }
            }
            Err(e) => tracing::error!(store = %store.describe(), error = %e, "quarantines of an earlier agent not read; reconciled later"),
        }
        Perimeter { store, node: node.to_string(), active, last_sweep: Some(Instant::now()) }
    }

    /// Publishes `workload`'s quarantine (once: a workload already quarantined keeps its
    /// first record unless its addresses changed). Returns whether it was stored.
    pub fn publish(&mut self, workload: &str, reason: &str, actions: Vec<String>, addresses: Vec<IpAddr>) -> bool {
        if let Some(a) = self.active.get(workload)
            && a.stored
            && a.quarantine.spec.addresses == addresses
        {
            return false;
        }
        let q = Quarantine::new(&self.node, workload, reason, actions, addresses, wire::now_unix_ms());
        let stored = match self.store.put(&q) {
            Ok(()) => {
                tracing::info!(workload, reason, addresses = ?q.spec.addresses, store = %self.store.describe(), "quarantine published for the perimeter");
                true
            }
            Err(e) => {
                // The node's isolation holds; the next reconcile writes it again.
                tracing::error!(workload, error = %e, "publishing the quarantine for the perimeter failed; retried");
                false
            }
        };
        self.active.insert(workload.to_string(), Active { quarantine: q, stored, reported: BTreeMap::new() });
        stored
    }

    /// Withdraws `workload`'s quarantine (released, or no longer monitored).
    pub fn withdraw(&mut self, workload: &str) {
        if let Some(a) = self.active.remove(workload) {
            match self.store.delete(&a.quarantine) {
                Ok(()) => tracing::info!(workload, "quarantine withdrawn from the perimeter"),
                // Found again as a stray at the next sweep.
                Err(e) => tracing::error!(workload, error = %e, "withdrawing the quarantine failed; retried"),
            }
        }
    }

    /// Brings the store in step with what is isolated or paused now (`quarantined`: workload
    /// -> its addresses, of the `monitored` workloads). A quarantine of a workload no longer
    /// monitored stays: a policy that stops selecting an isolated pod leaves it isolated, until
    /// released. Every [`SWEEP_EVERY`], stored quarantines nothing accounts for are removed.
    pub fn reconcile(&mut self, quarantined: &BTreeMap<String, Vec<IpAddr>>, monitored: &BTreeSet<String>) {
        let stale: Vec<String> = self.active.keys().filter(|w| monitored.contains(*w) && !quarantined.contains_key(*w)).cloned().collect();
        for w in stale {
            self.withdraw(&w);
        }
        for (w, addrs) in quarantined {
            // Known addresses replace a record written before a sync knew them; a failed
            // write is retried.
            let redo = self.active.get(w).is_none_or(|a| !a.stored || (!addrs.is_empty() && a.quarantine.spec.addresses != *addrs));
            if redo {
                let (reason, actions) = match self.active.get(w) {
                    Some(a) => (a.quarantine.spec.reason.clone(), a.quarantine.spec.actions.clone()),
                    None => ("reconciled".to_string(), vec!["isolated".to_string()]),
                };
                self.publish(w, &reason, actions, addrs.clone());
            }
        }
        if self.last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            self.last_sweep = Some(Instant::now());
            self.sweep();
        }
    }

    /// Removes stored quarantines of this node that nothing accounts for.
    fn sweep(&mut self) {
        match self.store.list() {
            Ok(list) => {
                for (q, _) in list.into_iter().filter(|(q, _)| !self.active.contains_key(&q.spec.workload)) {
                    tracing::info!(workload = %q.spec.workload, "stray quarantine removed");
                    if let Err(e) = self.store.delete(&q) {
                        tracing::error!(workload = %q.spec.workload, error = %e, "removing a stray quarantine failed");
                    }
                }
            }
            Err(e) => tracing::warn!(store = %self.store.describe(), error = %e, "quarantines not listed; swept later"),
        }
    }

    /// Reads the statuses of the published quarantines: every firewall that newly holds a
    /// workload's addresses, or newly fails to, becomes one `quarantine-perimeter` event.
    pub fn poll(&mut self) -> Vec<DetectorEvent> {
        let mut out = Vec::new();
        // Only quarantines whose answer may still change: no firewall reported yet, one
        // failing, or published within the last minute (firewalls answer at their pace).
        let now = wire::now_unix_ms();
        let waiting = |a: &Active| a.stored && (a.reported.is_empty() || a.reported.values().any(Option::is_some) || now.saturating_sub(a.quarantine.spec.since_unix_ms) < 60_000);
        let asked: Vec<String> = self.active.iter().filter(|(_, a)| waiting(a)).map(|(w, _)| w.clone()).collect();
        if asked.is_empty() {
            return out;
        }
        let statuses = {
            let qs: Vec<&Quarantine> = asked.iter().map(|w| &self.active[w].quarantine).collect();
            self.store.statuses(&qs)
        };
        for (w, st) in asked.iter().zip(statuses) {
            let Some(st) = st else { continue };
            let Some(a) = self.active.get_mut(w) else { continue };
            let mut applied = Vec::new();
            let mut failing = Vec::new();
            for (fw, s) in st.firewalls {
                let now = if s.applied_unix_ms.is_some() { None } else { s.error.clone() };
                if a.reported.get(&fw) == Some(&now) {
                    continue;
                }
                match (&now, s.applied_unix_ms) {
                    (None, Some(at)) => applied.push((fw.clone(), format!("{fw} ({}, {} ms)", s.target, at.saturating_sub(a.quarantine.spec.since_unix_ms)))),
                    (Some(e), _) => failing.push(format!("{fw}: {e}")),
                    (None, None) => continue,
                }
                a.reported.insert(fw, now);
            }
            if applied.is_empty() && failing.is_empty() {
                continue;
            }
            let mut parts = Vec::new();
            if !applied.is_empty() {
                parts.push(format!("quarantine group updated on {}", applied.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>().join(", ")));
            }
            if !failing.is_empty() {
                parts.push(format!("not yet on {} (retrying)", failing.join("; ")));
            }
            out.push(DetectorEvent {
                kind: "quarantine-perimeter",
                ts_ns: bulkhead_loader::clock::monotonic_ns(),
                workload: Some(w.clone()),
                mode: "protect",
                detail: Some(parts.join("; ")),
                firewalls: applied.into_iter().map(|(fw, _)| fw).collect(),
                ..DetectorEvent::default()
            });
        }
        out
    }
}

/// What the detector asks of the perimeter thread.
pub(crate) enum Msg {
    Publish { workload: String, reason: String, actions: Vec<String> },
    Withdraw(String),
    /// Workloads isolated or paused now (with addresses), and the monitored ones.
    Reconcile(BTreeMap<String, Vec<IpAddr>>, BTreeSet<String>),
    /// Something in the datastore changed (maybe fw-sync's answer).
    Poll,
}

/// The agent's handle on the perimeter thread; stops it on drop.
pub struct PerimeterThread {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl PerimeterThread {
    pub(crate) fn send(&self, m: Msg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(m);
        }
    }
}

impl Drop for PerimeterThread {
    fn drop(&mut self) {
        self.tx.take();
        // The thread itself may drop the last handle on the detector's state (it holds a weak
        // one): it must not wait for itself.
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

/// How often statuses are read without a notification (the API datastore has none for them).
const POLL_EVERY: Duration = Duration::from_millis(500);

fn run(mut p: Perimeter, rx: mpsc::Receiver<Msg>, shared: Weak<Shared>, events_file: PathBuf) {
    let span = tracing::info_span!("perimeter");
    let _g = span.enter();
    let mut last_poll = Instant::now();
    loop {
        let mut poll = false;
        match rx.recv_timeout(POLL_EVERY) {
            Ok(Msg::Publish { workload, reason, actions }) => {
                // Addresses as of now, from the detector's state.
                let Some(s) = shared.upgrade() else { return };
                let addrs = s.state().addresses_of(&workload);
                p.publish(&workload, &reason, actions, addrs);
            }
            Ok(Msg::Withdraw(w)) => p.withdraw(&w),
            Ok(Msg::Reconcile(q, m)) => p.reconcile(&q, &m),
            Ok(Msg::Poll) => poll = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if poll || last_poll.elapsed() >= POLL_EVERY {
            last_poll = Instant::now();
            let events = p.poll();
            let Some(s) = shared.upgrade() else { return };
            for e in events {
                tracing::warn!(workload = ?e.workload, detail = ?e.detail, "quarantine reached the perimeter");
                // Not through the alert gate: each firewall's answer is reported once already.
                s.report(&events_file, e);
            }
        }
    }
}

impl Shared {
    /// Publishes the workload's quarantine when `rec` reports that the node isolated or
    /// paused it (a message to the perimeter thread: never waits).
    pub(crate) fn quarantine_if_acted(&self, rec: &DetectorEvent) {
        let Some(w) = &rec.workload else { return };
        let acted: Vec<String> =
            rec.kernel_actions.iter().map(|a| a.to_string()).chain(rec.user_actions.iter().cloned()).filter(|a| a == "isolated" || a == "paused").collect();
        if acted.is_empty() {
            return;
        }
        if let Some(p) = self.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            p.send(Msg::Publish { workload: w.clone(), reason: rec.kind.to_string(), actions: acted });
        }
    }

    /// Withdraws the workload's quarantine (released).
    pub(crate) fn withdraw_quarantine(&self, workload: &str) {
        if let Some(p) = self.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            p.send(Msg::Withdraw(workload.to_string()));
        }
    }
}

impl Detector {
    /// Carries isolations to the perimeter through `store` (the datastore's, see
    /// `bulkhead_agent::datastore::Datastore::quarantine_store`), on a thread of its own.
    pub fn set_perimeter(&mut self, store: Box<dyn QuarantineStore>, node: &str) {
        let described = store.describe();
        let p = Perimeter::new(store, node);
        tracing::info!(store = %described, taken_over = p.active.len(), "quarantines for the perimeter go to the datastore");
        let (tx, rx) = mpsc::channel();
        let shared = Arc::downgrade(&self.shared);
        let file = self.events_file.clone();
        let thread = std::thread::Builder::new().name("bh-perimeter".into()).spawn(move || run(p, rx, shared, file));
        match thread {
            Ok(t) => *self.shared.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(PerimeterThread { tx: Some(tx), thread: Some(t) }),
            Err(e) => tracing::error!(error = %e, "perimeter thread not started: isolations stay at the node"),
        }
    }

    /// The datastore changed: fw-sync may have answered.
    pub fn poll_perimeter(&mut self) {
        if let Some(p) = self.shared.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            p.send(Msg::Poll);
        }
    }

    /// Once a second: the perimeter follows what is isolated or paused now.
    pub fn sync_perimeter(&mut self, dp: &Dataplane) {
        if self.shared.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_none() {
            return;
        }
        let (isolated_ifs, isolated): (BTreeSet<u32>, BTreeSet<u64>) = match dp.maps.det.isolation.entries() {
            Ok(e) => e.into_iter().map(|(i, v)| (i, v.cgroup_id)).unzip(),
            Err(e) => {
                tracing::warn!(error = %e, "isolation table unreadable; the perimeter is reconciled next second");
                return;
            }
        };
        let mut quarantined = BTreeMap::new();
        let mut monitored = BTreeSet::new();
        {
            let g = self.shared.state();
            for w in g.workloads.values() {
                monitored.insert(w.spec.name.clone());
                let held = (w.ifindex != 0 && isolated_ifs.contains(&w.ifindex))
                    || isolated.contains(&w.cgroup_id)
                    || cgroup::is_frozen(&w.spec.cgroup).unwrap_or(false);
                if held {
                    quarantined.insert(w.spec.name.clone(), g.addresses_of(&w.spec.name));
                }
            }
        }
        if let Some(p) = self.shared.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            p.send(Msg::Reconcile(quarantined, monitored));
        }
    }

    /// Stops the perimeter thread (what it was sent is done first).
    pub(crate) fn stop_perimeter(&self) {
        let t = self.shared.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        drop(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_kube::quarantine::FirewallStatus;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect()).unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn publish_poll_withdraw_and_reconcile() {
        let t = Tmp(std::env::temp_dir().join(format!("bh-perimeter-{}", std::process::id())));
        std::fs::create_dir_all(&t.0).expect("tmp");
        let mut p = Perimeter::new(Box::new(FileStore::new(&t.0, "n1")), "n1");
        let ip: IpAddr = "10.1.0.7".parse().unwrap();
        assert!(p.publish("shop/web", "violation", vec!["isolated".into()], vec![ip]));
        assert!(!p.publish("shop/web", "new-peer", vec!["isolated".into()], vec![ip]), "published once");
        let file = t.0.join("bulkhead-quarantine/n1/shop.web.yaml");
        let q: Quarantine = serde_yaml::from_str(&std::fs::read_to_string(&file).expect("written")).expect("parses");
        assert_eq!((q.spec.reason.as_str(), q.spec.addresses.as_slice()), ("violation", &[ip][..]));
        assert!(p.poll().is_empty(), "no status yet");
        // fw-sync answers: one firewall applied, one failing.
        let mut st = QuarantineStatus { since_unix_ms: q.spec.since_unix_ms, firewalls: BTreeMap::new() };
        st.firewalls.insert("edge".into(), FirewallStatus { target: "ipset bhfw-quarantine".into(), applied_unix_ms: Some(q.spec.since_unix_ms + 9), error: None });
        st.firewalls.insert("pa".into(), FirewallStatus { target: "panos-dynamic-tag bhfw-quarantine".into(), applied_unix_ms: None, error: Some("connection refused".into()) });
        wire::write_atomic(&wire::status_path(&file), &serde_json::to_vec(&st).unwrap()).expect("status");
        let ev = p.poll();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].firewalls, ["edge"]);
        let d = ev[0].detail.as_deref().unwrap_or_default();
        assert!(d.contains("edge (ipset bhfw-quarantine, 9 ms)") && d.contains("pa: connection refused"), "{d}");
        assert!(p.poll().is_empty(), "each firewall reported once");
        // A restarted agent takes the folder over without reporting again.
        let mut again = Perimeter::new(Box::new(FileStore::new(&t.0, "n1")), "n1");
        assert!(again.poll().is_empty());
        // Reconcile: a stray file goes, a quarantined workload without a file gets one, and
        // the released one goes with its status.
        std::fs::write(t.0.join("bulkhead-quarantine/n1/stray.yaml"), "x").expect("stray");
        let mut want = BTreeMap::new();
        want.insert("shop/db".to_string(), vec!["10.1.0.8".parse().unwrap()]);
        let monitored: BTreeSet<String> = ["shop/web".to_string(), "shop/db".to_string()].into();
        again.last_sweep = None;
        again.reconcile(&want, &monitored);
        assert_eq!(names(&t.0.join("bulkhead-quarantine/n1")), ["shop.db.yaml"]);
        assert!(!wire::status_path(&file).exists(), "the withdrawn quarantine's status goes too");
    }

    /// A store that fails its writes until told otherwise.
    struct Flaky(Arc<std::sync::atomic::AtomicBool>, FileStore);
    impl QuarantineStore for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn list(&self) -> Result<Vec<(Quarantine, Option<QuarantineStatus>)>, String> {
            self.1.list()
        }
        fn put(&self, q: &Quarantine) -> Result<(), String> {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) { Err("down".into()) } else { self.1.put(q) }
        }
        fn delete(&self, q: &Quarantine) -> Result<(), String> {
            self.1.delete(q)
        }
        fn statuses(&self, qs: &[&Quarantine]) -> Vec<Option<QuarantineStatus>> {
            self.1.statuses(qs)
        }
    }

    #[test]
    fn a_failed_publish_is_retried_at_the_next_reconcile() {
        let t = Tmp(std::env::temp_dir().join(format!("bh-perimeter-flaky-{}", std::process::id())));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut p = Perimeter::new(Box::new(Flaky(down.clone(), FileStore::new(&t.0, "n1"))), "n1");
        let ip: IpAddr = "10.1.0.9".parse().unwrap();
        assert!(!p.publish("shop/api", "port-scan", vec!["isolated".into()], vec![ip]), "the store is down");
        down.store(false, std::sync::atomic::Ordering::SeqCst);
        let want: BTreeMap<String, Vec<IpAddr>> = [("shop/api".to_string(), vec![ip])].into();
        p.reconcile(&want, &["shop/api".to_string()].into());
        let q: Quarantine = serde_yaml::from_str(&std::fs::read_to_string(t.0.join("bulkhead-quarantine/n1/shop.api.yaml")).expect("written on retry")).expect("parses");
        assert_eq!(q.spec.reason, "port-scan", "the finding is kept through the retry");
    }
}
