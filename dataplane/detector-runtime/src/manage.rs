//! Applying DetectorPolicies (a [`policy::Plan`]) and imported profiles to the detector.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::Path,
};

use policy_compiler::model::Model;
use serde::Serialize;

use super::{Detector, WorkloadState, cgroup, det_err, policy, profile};
use bulkhead_loader::{Dataplane, netns};

use crate::error::DetectorError;

/// What an import did.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ImportReport {
    pub profile: String,
    pub execs: usize,
    pub egress: usize,
    /// Workloads judged by the profile now.
    pub workloads: Vec<String>,
}

impl Detector {
    /// Makes the policy-managed workloads what `plan` asks for. Checked first (every cgroup
    /// exists), then applied; API-managed workloads are left alone unless a policy now
    /// selects the same pod (the policy wins).
    pub fn apply_plan(&mut self, dp: &mut Dataplane, plan: &policy::Plan) -> Result<(), DetectorError> {
        let span = tracing::info_span!("detector-policies", workloads = plan.workloads.len());
        let _g = span.enter();
        for (w, o) in &plan.workloads {
            cgroup::id(&w.cgroup).map_err(|e| {
                DetectorError::Invalid(format!("{}: pod {}: cgroup {} (annotation {}): {e}", o.policy.as_deref().unwrap_or("?"), w.name, w.cgroup.display(), policy::CGROUP_ANNOTATION))
            })?;
        }
        for pod in &plan.without_cgroup {
            tracing::warn!(pod, annotation = policy::CGROUP_ANNOTATION, "pod selected by a DetectorPolicy has no cgroup annotation; not monitored");
        }
        let current: Vec<WorkloadState> = self.shared.state().workloads.values().cloned().collect();
        let wanted: BTreeSet<&str> = plan.workloads.iter().map(|(w, _)| w.name.as_str()).collect();
        for c in &current {
            let name = &c.spec.name;
            if c.opts.policy.is_some() && !wanted.contains(name.as_str()) {
                tracing::info!(workload = %name, "no DetectorPolicy selects the workload any more; not monitored");
                self.unmonitor_inner(dp, name, false)?;
            }
        }
        for (w, o) in &plan.workloads {
            if let Some(i) = &w.interface {
                if netns::ifindex(i).is_none() {
                    tracing::info!(workload = %w.name, interface = %i, "interface not there yet; monitored on a later sync");
                    continue;
                }
            }
            let same = current
                .iter()
                .any(|c| c.spec.name == w.name && &c.opts == o && serde_json::to_value(&c.spec).ok() == serde_json::to_value(w).ok());
            if !same {
                self.monitor_with(dp, w.clone(), o.clone())?;
            }
        }
        self.write_isolation_allow(dp)
    }

    /// Sets the address -> peer name table from the model: a monitored pod is named by its
    /// profile, any other pod by its default profile key.
    pub fn peers_from(&mut self, model: &Model) {
        let by_pod: HashMap<String, String> = self
            .shared
            .state()
            .workloads
            .values()
            .map(|w| (w.spec.name.clone(), w.profile_name().to_string()))
            .collect();
        let mut peers: HashMap<IpAddr, String> = HashMap::new();
        let mut addresses: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for pod in model.pods.values() {
            if pod.ip.is_none() && pod.ip6.is_none() {
                continue;
            }
            if let Some(i) = &pod.interface {
                addresses.insert(i.clone(), pod.addrs().collect());
            }
            let name = by_pod
                .get(&format!("{}/{}", pod.namespace, pod.name))
                .cloned()
                .unwrap_or_else(|| profile::key_of(&pod.namespace, &pod.labels, None).0);
            // Both families: a dual-stack peer is one workload whichever address it uses.
            for ip in pod.addrs() {
                peers.insert(ip, name.clone());
            }
        }
        self.set_peers(peers);
        self.shared.state().addresses = addresses;
    }

    /// Replaces a profile by a validated one (a bad text changes nothing); the kernel's exec
    /// entries of every workload using it follow at once.
    pub fn import_profile(&mut self, dp: &mut Dataplane, source: &str, text: &str) -> Result<ImportReport, DetectorError> {
        let p = profile::Profile::from_yaml(source, text).map_err(|e| DetectorError::Invalid(e.to_string()))?;
        let name = p.name.clone();
        let mut restored = Vec::new();
        let report = {
            let mut g = self.shared.state();
            let workloads = g.workloads.values().filter(|w| w.profile_name() == name).map(|w| w.spec.name.clone()).collect();
            let r = ImportReport { profile: name.clone(), execs: p.execs.len(), egress: p.network.egress.len(), workloads };
            g.profiles.insert(name.clone(), p);
            g.dirty.insert(name.clone());
            let missing: Vec<u64> = g.workloads.values().filter(|w| w.profile_name() == name && w.profile_missing).map(|w| w.cgroup_id).collect();
            for id in &missing {
                if let Some(w) = g.workloads.get_mut(id) {
                    w.profile_missing = false;
                    restored.push(w.clone());
                }
            }
            g.sequence_reload.insert(name.clone());
            r
        };
        self.write_profile(dp, &name)?;
        // Workloads that only alerted for want of this profile act again.
        for w in &restored {
            self.write_workload(dp, w)?;
        }
        self.persist();
        self.shared.bump();
        self.sync_flow_events(dp)?;
        tracing::info!(profile = %name, execs = report.execs, egress = report.egress, workloads = ?report.workloads, "detector profile imported");
        Ok(report)
    }

    /// Applies profiles dropped by `bulkhead detector profile import` into the state folder's
    /// import folder; answers each with `<file>.result.json`.
    pub fn import_inbox(&mut self, dp: &mut Dataplane) {
        let dir = self.state_dir.join(profile::IMPORT_DIR);
        let Ok(rd) = std::fs::read_dir(&dir) else { return };
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("yaml") {
                continue;
            }
            let result = match std::fs::read_to_string(&path) {
                Ok(text) => self.import_profile(dp, &path.display().to_string(), &text),
                Err(e) => Err(det_err(format!("{}: {e}", path.display()))),
            };
            let answer = match &result {
                Ok(r) => serde_json::json!({"ok": true, "report": r}),
                Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
            };
            let _ = std::fs::remove_file(&path);
            write_answer(&path, &answer);
        }
    }
}

fn write_answer(request: &Path, answer: &serde_json::Value) {
    let mut out = request.as_os_str().to_owned();
    out.push(".result.json");
    let out = std::path::PathBuf::from(out);
    let tmp = out.with_extension("tmp");
    if std::fs::write(&tmp, answer.to_string()).and_then(|_| std::fs::rename(&tmp, &out)).is_err() {
        tracing::error!(file = %out.display(), "profile import answer not written");
    }
}
