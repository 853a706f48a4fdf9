//! Isolation carried to the perimeter: when the detector isolates or pauses a workload, the
//! agent writes a [`Quarantine`] for it into the folder datastore
//! (`bulkhead-quarantine/<node>/`), which fw-sync turns into membership of the quarantine
//! group on every firewall it drives; on release the file goes and the addresses leave the
//! group. fw-sync answers per firewall in a status file beside it; each firewall that holds
//! the addresses (or fails to) is reported once as a `quarantine-perimeter` event naming it.
//!
//! The file is written after the kernel's isolation entry, by the thread that reports the
//! finding, so the perimeter never delays the node's own isolation. Once a second the agent
//! reconciles the folder with what is really isolated or paused (an event lost in a full
//! ring, a release without an agent, a restart), so the folder converges whatever happened.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bulkhead_kube::quarantine::{self as wire, Quarantine, QuarantineStatus};

use super::{Detector, DetectorEvent, Shared, cgroup};
use crate::loader::Dataplane;

/// One workload's published quarantine.
#[derive(Clone, Debug)]
struct Active {
    file: PathBuf,
    quarantine: Quarantine,
    /// Firewalls already reported applied, or failing (with the error reported).
    reported: BTreeMap<String, Option<String>>,
}

/// The node's quarantine folder and what it holds.
#[derive(Debug)]
pub struct Perimeter {
    dir: PathBuf,
    node: String,
    active: BTreeMap<String, Active>,
}

impl Perimeter {
    /// The node's folder under a folder datastore; what an earlier agent published there is
    /// taken over (its statuses are not reported again).
    pub fn new(datastore: &Path, node: &str) -> Perimeter {
        let dir = wire::node_dir(datastore, node);
        let mut active = BTreeMap::new();
        for f in yaml_files(&dir) {
            match std::fs::read_to_string(&f).map_err(|e| e.to_string()).and_then(|t| serde_yaml::from_str::<Quarantine>(&t).map_err(|e| e.to_string())) {
                Ok(q) => {
                    let reported = read_status(&f, q.spec.since_unix_ms).map(|s| s.firewalls.into_iter().map(|(k, v)| (k, v.error)).collect()).unwrap_or_default();
                    active.insert(q.spec.workload.clone(), Active { file: f, quarantine: q, reported });
                }
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "unreadable quarantine file of this node; removed");
                    remove(&f);
                }
            }
        }
        Perimeter { dir, node: node.to_string(), active }
    }

    /// Publishes `workload`'s quarantine (once: a workload already quarantined keeps its
    /// first record unless its addresses changed). Returns whether a file was written.
    pub fn publish(&mut self, workload: &str, reason: &str, actions: Vec<String>, addresses: Vec<IpAddr>) -> bool {
        if let Some(a) = self.active.get(workload)
            && a.quarantine.spec.addresses == addresses
        {
            return false;
        }
        let q = Quarantine::new(&self.node, workload, reason, actions, addresses, wire::now_unix_ms());
        let file = self.dir.join(wire::file_name(workload));
        let text = serde_yaml::to_string(&q).expect("a Quarantine serializes");
        if let Err(e) = std::fs::create_dir_all(&self.dir).and_then(|()| wire::write_atomic(&file, text.as_bytes())) {
            // The node's isolation holds; the perimeter is retried at the next reconcile.
            tracing::error!(file = %file.display(), workload, error = %e, "writing the quarantine for the perimeter failed");
            return false;
        }
        tracing::info!(workload, reason, addresses = ?q.spec.addresses, file = %file.display(), "quarantine published for the perimeter");
        self.active.insert(workload.to_string(), Active { file, quarantine: q, reported: BTreeMap::new() });
        true
    }

    /// Withdraws `workload`'s quarantine (released, or no longer monitored).
    pub fn withdraw(&mut self, workload: &str) {
        if let Some(a) = self.active.remove(workload) {
            remove(&a.file);
            remove(&wire::status_path(&a.file));
            tracing::info!(workload, "quarantine withdrawn from the perimeter");
        }
    }

    /// Brings the folder in step with what is isolated or paused now (`quarantined`: workload
    /// -> its addresses, of the `monitored` workloads); files in the folder that nothing
    /// accounts for are removed. A quarantine of a workload no longer monitored stays: a
    /// policy that stops selecting an isolated pod leaves it isolated, until released.
    pub fn reconcile(&mut self, quarantined: &BTreeMap<String, Vec<IpAddr>>, monitored: &BTreeSet<String>) {
        let stale: Vec<String> = self.active.keys().filter(|w| monitored.contains(*w) && !quarantined.contains_key(*w)).cloned().collect();
        for w in stale {
            self.withdraw(&w);
        }
        for (w, addrs) in quarantined {
            // Known addresses replace a record written before the first sync knew them.
            let stale_addrs = self.active.get(w).is_some_and(|a| !addrs.is_empty() && a.quarantine.spec.addresses != *addrs);
            if !self.active.contains_key(w) || stale_addrs {
                let (reason, actions) = match self.active.get(w) {
                    Some(a) => (a.quarantine.spec.reason.clone(), a.quarantine.spec.actions.clone()),
                    None => ("reconciled".to_string(), vec!["isolated".to_string()]),
                };
                self.publish(w, &reason, actions, addrs.clone());
            }
        }
        let known: BTreeSet<PathBuf> = self.active.values().map(|a| a.file.clone()).collect();
        for f in yaml_files(&self.dir).into_iter().filter(|f| !known.contains(f)) {
            remove(&f);
            remove(&wire::status_path(&f));
        }
    }

    /// Reads the statuses of the published quarantines: every firewall that newly holds a
    /// workload's addresses, or newly fails to, becomes one `quarantine-perimeter` event.
    pub fn poll(&mut self) -> Vec<DetectorEvent> {
        let mut out = Vec::new();
        for (w, a) in &mut self.active {
            let Some(st) = read_status(&a.file, a.quarantine.spec.since_unix_ms) else { continue };
            let mut applied = Vec::new();
            let mut failing = Vec::new();
            for (fw, s) in st.firewalls {
                let now = if s.applied_unix_ms.is_some() { None } else { s.error.clone() };
                if a.reported.get(&fw) == Some(&now) {
                    continue;
                }
                match (&now, s.applied_unix_ms) {
                    (None, Some(at)) => applied.push(format!("{fw} ({}, {} ms)", s.target, at.saturating_sub(a.quarantine.spec.since_unix_ms))),
                    (Some(e), _) => failing.push(format!("{fw}: {e}")),
                    (None, None) => continue,
                }
                a.reported.insert(fw, now);
            }
            if applied.is_empty() && failing.is_empty() {
                continue;
            }
            let mut detail = String::new();
            if !applied.is_empty() {
                detail = format!("quarantine group updated on {}", applied.join(", "));
            }
            if !failing.is_empty() {
                detail = [detail, format!("not yet on {} (retrying)", failing.join("; "))].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join("; ");
            }
            out.push(DetectorEvent {
                kind: "quarantine-perimeter",
                ts_ns: crate::clock::monotonic_ns(),
                workload: Some(w.clone()),
                mode: "protect",
                detail: Some(detail),
                firewalls: applied.iter().map(|s| s.split(' ').next().unwrap_or_default().to_string()).collect(),
                ..DetectorEvent::default()
            });
        }
        out
    }
}

impl Shared {
    /// Publishes the workload's quarantine when `rec` reports that the node isolated or
    /// paused it.
    pub(crate) fn quarantine_if_acted(&self, rec: &DetectorEvent) {
        let Some(w) = &rec.workload else { return };
        let acted: Vec<String> =
            rec.kernel_actions.iter().map(|a| a.to_string()).chain(rec.user_actions.iter().cloned()).filter(|a| a == "isolated" || a == "paused").collect();
        if acted.is_empty() {
            return;
        }
        let mut g = self.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(p) = g.as_mut() else { return };
        let addrs = self.state().addresses_of(w);
        p.publish(w, rec.kind, acted, addrs);
    }

    /// Withdraws the workload's quarantine (released).
    pub(crate) fn withdraw_quarantine(&self, workload: &str) {
        if let Some(p) = self.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            p.withdraw(workload);
        }
    }
}

impl Detector {
    /// Carries isolations to the perimeter through `datastore`'s quarantine folder (a folder
    /// datastore; the Kubernetes datastore has no Quarantine publishing yet).
    pub fn set_perimeter(&mut self, datastore: &Path, node: &str) {
        let p = Perimeter::new(datastore, node);
        tracing::info!(folder = %p.dir.display(), taken_over = p.active.len(), "quarantines for the perimeter go to the datastore");
        *self.shared.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(p);
    }

    /// Reports the firewalls that newly hold (or fail to hold) a quarantined workload's
    /// addresses. Called when the datastore folder changes (fw-sync's status writes wake the
    /// agent's watcher) and once a second.
    pub(crate) fn poll_perimeter(&mut self) {
        let events = match self.shared.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            Some(p) => p.poll(),
            None => return,
        };
        for e in events {
            tracing::warn!(workload = ?e.workload, detail = ?e.detail, "quarantine reached the perimeter");
            // Not through the alert gate: each firewall's answer is reported once already.
            self.shared.report(&self.events_file, e);
        }
    }

    /// Once a second: the quarantine folder follows what is isolated or paused now.
    pub(crate) fn sync_perimeter(&mut self, dp: &Dataplane) {
        if self.shared.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_none() {
            return;
        }
        let isolated: BTreeSet<u64> = match dp.maps.det.isolation.entries() {
            Ok(e) => e.into_iter().map(|(_, v)| v.cgroup_id).collect(),
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
                let held = (w.ifindex != 0 && matches!(dp.maps.det.isolation.get(w.ifindex), Ok(Some(_))))
                    || isolated.contains(&w.cgroup_id)
                    || cgroup::is_frozen(&w.spec.cgroup).unwrap_or(false);
                if held {
                    quarantined.insert(w.spec.name.clone(), g.addresses_of(&w.spec.name));
                }
            }
        }
        if let Some(p) = self.shared.perimeter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            p.reconcile(&quarantined, &monitored);
        }
        self.poll_perimeter();
    }
}

fn read_status(file: &Path, since: u64) -> Option<QuarantineStatus> {
    let bytes = std::fs::read(wire::status_path(file)).ok()?;
    let st: QuarantineStatus = serde_json::from_slice(&bytes).ok()?;
    (st.since_unix_ms == since).then_some(st)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml") && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    out.sort();
    out
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::error!(file = %path.display(), error = %e, "removing a quarantine file failed");
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

    #[test]
    fn publish_poll_withdraw_and_reconcile() {
        let t = Tmp(std::env::temp_dir().join(format!("bh-perimeter-{}", std::process::id())));
        std::fs::create_dir_all(&t.0).expect("tmp");
        let mut p = Perimeter::new(&t.0, "n1");
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
        let mut again = Perimeter::new(&t.0, "n1");
        assert!(again.poll().is_empty());
        // Reconcile: a stray file goes, a quarantined workload without a file gets one.
        std::fs::write(t.0.join("bulkhead-quarantine/n1/stray.yaml"), "x").expect("stray");
        let mut want = BTreeMap::new();
        want.insert("shop/db".to_string(), vec!["10.1.0.8".parse().unwrap()]);
        let monitored: BTreeSet<String> = ["shop/web".to_string(), "shop/db".to_string()].into();
        again.reconcile(&want, &monitored);
        let names: Vec<String> = yaml_files(&t.0.join("bulkhead-quarantine/n1")).iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["shop.db.yaml"]);
        assert!(!wire::status_path(&file).exists(), "the withdrawn quarantine's status goes too");
    }
}
