//! The quarantine group: the addresses of workloads a node's detector isolated or paused
//! ([`bulkhead_kube::quarantine::Quarantine`] documents the agents write into the datastore
//! folder), kept on every configured firewall as one more owned object, so a perimeter rule
//! can drop them too. After each firewall's sync fw-sync answers every quarantine in a status
//! file beside it, naming the firewalls that hold its addresses (or the error while one does
//! not): the agent reports that in its alert.
//!
//! ```yaml
//! quarantine:
//!   name: quarantine                  # object bhfw-quarantine on every firewall
//!   kinds: {pa: panos-static-group}   # optional, per firewall; defaults below
//! ```
//!
//! Default kinds are the fastest each firewall offers: ipset and nftables sets, PAN-OS
//! registered-IP tags (no commit; a dynamic address group matching `bhfw-quarantine` puts
//! them in rules), FortiOS address groups (every FortiOS version).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

use bulkhead_kube::quarantine::{Quarantine, QuarantineStatus, now_unix_ms, status_path, write_atomic};
use policy_compiler::Model;
use serde_yaml::Value;

use crate::config::{FirewallConfig, FirewallKind};
use crate::engine::FirewallReport;
use crate::error::FwSyncError;
use crate::group::{ObjectRef, Target, TargetKind};
use crate::yaml::{Ctx, child, get};

/// The `quarantine` block of the daemon config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineConfig {
    /// Object name on every firewall (`bhfw-<name>`).
    pub name: String,
    /// Kind per firewall where not the default.
    pub kinds: BTreeMap<String, TargetKind>,
}

/// Where a Quarantine came from, which is where its status goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// A file of the folder datastore: the status is a hidden file beside it.
    File(PathBuf),
    /// An API object (namespace, name): the status is its `status`.
    Object(String, String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Object(ns, n) => write!(f, "kubernetes Quarantine {ns}/{n}"),
        }
    }
}

/// A Quarantine and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantineDoc {
    pub origin: Origin,
    pub quarantine: Quarantine,
}

/// The kind a firewall's quarantine object has unless the config says otherwise.
pub fn default_kind(kind: &FirewallKind) -> TargetKind {
    match kind {
        FirewallKind::Ipset => TargetKind::Ipset,
        FirewallKind::Nftables { .. } => TargetKind::NftablesSet,
        FirewallKind::Panos(_) => TargetKind::PanosDynamicTag,
        FirewallKind::Fortios(_) => TargetKind::FortiosAddrgrp,
    }
}

impl QuarantineConfig {
    /// Parses the block; `firewalls` are the configured ones (a kind for another is an error).
    pub(crate) fn parse(ctx: &Ctx, v: &Value, firewalls: &[FirewallConfig]) -> Result<QuarantineConfig, FwSyncError> {
        let m = ctx.strict_map(v, "quarantine", &["name", "kinds"])?;
        let name = match get(m, "name") {
            Some(n) => ctx.str(n, "quarantine.name")?.to_string(),
            None => "quarantine".to_string(),
        };
        let mut kinds = BTreeMap::new();
        let kinds_value = match get(m, "kinds") {
            Some(k) => Some(k.as_mapping().ok_or_else(|| ctx.err("quarantine.kinds", "expected a map of firewall name to kind"))?),
            None => None,
        };
        for (fw, kind) in kinds_value.into_iter().flatten() {
            let fw = fw.as_str().ok_or_else(|| ctx.err("quarantine.kinds", "keys are firewall names"))?;
            let path = child("quarantine.kinds", fw);
            let Some(f) = firewalls.iter().find(|f| f.name == fw) else {
                return Err(ctx.err(&path, format!("no firewall {fw:?} in this config")));
            };
            let text = ctx.str(kind, &path)?;
            let kind = TargetKind::parse(text).ok_or_else(|| ctx.err(&path, format!("unknown kind {text:?}")))?;
            if !f.kind.accepts(kind) {
                return Err(ctx.err(&path, format!("firewall {fw} has no {kind} objects")));
            }
            kinds.insert(fw.to_string(), kind);
        }
        let q = QuarantineConfig { name, kinds };
        for t in q.targets(firewalls) {
            if let Some(problem) = crate::crd::name_problem_for(t.object.kind, &t.object.name) {
                return Err(ctx.err("quarantine.name", format!("invalid {} name {:?}: {problem}", t.object.kind, t.object.name)));
            }
        }
        Ok(q)
    }

    /// The quarantine object on every firewall.
    pub fn targets(&self, firewalls: &[FirewallConfig]) -> Vec<Target> {
        firewalls
            .iter()
            .map(|f| Target {
                firewall: f.name.clone(),
                object: ObjectRef { kind: self.kinds.get(&f.name).copied().unwrap_or_else(|| default_kind(&f.kind)), name: self.name.clone() },
            })
            .collect()
    }
}

/// Whether a datastore document is a Quarantine.
pub fn is_quarantine(v: &Value) -> bool {
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    bulkhead_kube::quarantine::is_quarantine(s("apiVersion"), s("kind"))
}

/// Parses a Quarantine document; `place` (`file: document N`) names it in errors.
pub fn parse(place: &str, file: PathBuf, v: &Value) -> Result<QuarantineDoc, FwSyncError> {
    let quarantine: Quarantine =
        serde_yaml::from_value(v.clone()).map_err(|e| FwSyncError::Config { file: format!("{place} (Quarantine)"), field: String::new(), message: e.to_string() })?;
    Ok(QuarantineDoc { origin: Origin::File(file), quarantine })
}

/// The addresses the quarantine group holds: every quarantined address that no other pod
/// owns (by the model's rule), so a stale quarantine never catches a pod that got the address
/// next. An address of a pod the model does not know (registered through the CNI plugin
/// only) counts.
pub fn members(model: &Model, docs: &[QuarantineDoc]) -> BTreeSet<IpAddr> {
    let owners = model.ip_owners();
    let mut out = BTreeSet::new();
    for d in docs {
        for ip in &d.quarantine.spec.addresses {
            match (owners.get(ip), d.quarantine.pod()) {
                (Some(owner), Some((ns, name))) if owner.namespace != ns || owner.name != name => {
                    tracing::warn!(%ip, quarantined = %d.quarantine.spec.workload, owner = %owner, origin = %d.origin, "quarantined address now belongs to another pod; left out");
                }
                _ => {
                    out.insert(*ip);
                }
            }
        }
    }
    out
}

/// Where statuses of API objects are written.
pub type KubeWriter = (bulkhead_kube::Client, bulkhead_kube::RuntimeHandle);

/// The statuses fw-sync writes, shared by the firewalls' workers.
#[derive(Default)]
pub struct StatusBook {
    /// Per quarantine, the status last written.
    written: Mutex<BTreeMap<Origin, QuarantineStatus>>,
    /// The API client for [`Origin::Object`] statuses.
    kube: Option<KubeWriter>,
}

impl StatusBook {
    /// A book that also writes the statuses of API objects through `kube`.
    pub fn with_kube(kube: KubeWriter) -> StatusBook {
        StatusBook { written: Mutex::default(), kube: Some(kube) }
    }

    fn write(&self, origin: &Origin, st: &QuarantineStatus) {
        let result = match origin {
            Origin::File(f) => {
                let json = serde_json::to_vec_pretty(st).expect("a status serializes");
                write_atomic(&status_path(f), &json).map_err(|e| e.to_string())
            }
            Origin::Object(ns, name) => match &self.kube {
                Some((client, rt)) => bulkhead_kube::quarantine::api::patch_status(client, rt, ns, name, st),
                None => Err("no API client".into()),
            },
        };
        if let Err(e) = result {
            tracing::error!(quarantine = %origin, error = %e, "writing the quarantine status failed");
        }
    }

    /// Records one firewall's sync of `docs`: applied (no error) or the error, writing each
    /// status that changed. Statuses of quarantines gone from the datastore are forgotten.
    pub fn record(&self, report: &FirewallReport, target: &Target, docs: &[QuarantineDoc]) {
        let mut g = self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_unix_ms();
        let live: BTreeSet<&Origin> = docs.iter().map(|d| &d.origin).collect();
        g.retain(|f, _| live.contains(f));
        for d in docs {
            let since = d.quarantine.spec.since_unix_ms;
            let st = g.entry(d.origin.clone()).or_default();
            if st.since_unix_ms != since {
                *st = QuarantineStatus { since_unix_ms: since, firewalls: BTreeMap::new() };
            }
            let fw = st.firewalls.entry(report.firewall.clone()).or_default();
            let before = fw.clone();
            fw.target = format!("{} {}{}", target.object.kind, crate::group::OWNED_PREFIX, target.object.name);
            match &report.error {
                None if fw.applied_unix_ms.is_none() => {
                    fw.applied_unix_ms = Some(now);
                    fw.error = None;
                    tracing::info!(firewall = %report.firewall, workload = %d.quarantine.spec.workload, latency_ms = now.saturating_sub(since), "quarantine applied");
                }
                None => {}
                Some(e) if fw.applied_unix_ms.is_none() => fw.error = Some(e.to_string()),
                Some(_) => {}
            }
            if *fw != before {
                let st = st.clone();
                self.write(&d.origin, &st);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(yaml: &str) -> Model {
        policy_compiler::k8s::build_model(policy_compiler::k8s::parse_documents("t.yaml", yaml).expect("parses")).expect("builds")
    }

    fn doc(workload: &str, ips: &[&str]) -> QuarantineDoc {
        let q = Quarantine::new("n1", workload, "violation", vec!["isolated".into()], ips.iter().map(|i| i.parse().unwrap()).collect(), 5);
        QuarantineDoc { origin: Origin::File(PathBuf::from(format!("/nonexistent/{}", bulkhead_kube::quarantine::file_name(workload)))), quarantine: q }
    }

    fn config(extra: &str) -> Result<crate::config::DaemonConfig, FwSyncError> {
        let text = format!("firewalls:\n  - {{name: edge, type: ipset}}\n  - {{name: core, type: nftables}}\ndatastore: ./d\n{extra}");
        crate::config::DaemonConfig::parse("fw.yaml", &text, std::path::Path::new("/tmp"))
    }

    #[test]
    fn one_object_per_firewall_with_default_or_chosen_kind() {
        let c = config("quarantine: {name: qz}\n").expect("valid");
        let t: Vec<String> = c.quarantine_targets().iter().map(|t| format!("{} {}", t.firewall, t.object)).collect();
        assert_eq!(t, ["edge ipset qz", "core nftables-set qz"]);
        assert_eq!(config("quarantine: {}\n").expect("defaults").quarantine.expect("set").name, "quarantine");
    }

    #[test]
    fn bad_quarantine_config_is_refused_naming_the_field() {
        for (extra, want) in [
            ("quarantine: {kinds: {nope: ipset}}\n", "quarantine.kinds.nope: no firewall \"nope\""),
            ("quarantine: {kinds: {edge: nftables-set}}\n", "quarantine.kinds.edge: firewall edge has no nftables-set objects"),
            ("quarantine: {name: 'bad name'}\n", "quarantine.name: invalid ipset name"),
            ("quarantine: {name: x-v6}\n", "reserved"),
            ("quarantine: {nam: x}\n", "nam"),
        ] {
            let e = config(extra).expect_err(extra).to_string();
            assert!(e.contains(want) && e.starts_with("fw.yaml"), "{extra}: {e}");
        }
    }

    #[test]
    fn an_address_group_cannot_write_the_quarantine_object() {
        let c = config("quarantine: {name: qz}\n").expect("valid");
        let g = crate::group::AddressGroup {
            name: "g".into(),
            pod_selector: policy_compiler::selector_parser::parse_selector("all()").expect("selector"),
            namespace_selector: None,
            targets: vec![Target { firewall: "edge".into(), object: ObjectRef { kind: TargetKind::Ipset, name: "qz".into() } }],
            origin: "g.yaml: document 1".into(),
        };
        let e = c.check_groups(&[g]).expect_err("conflict").to_string();
        assert!(e.contains("is the quarantine group"), "{e}");
    }

    #[test]
    fn an_address_another_pod_owns_now_is_left_out() {
        let m = model("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nstatus: {podIP: 10.0.0.2}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.0.0.1}\n");
        let got = members(&m, &[doc("x/a", &["10.0.0.1", "fd00::1"]), doc("x/gone", &["10.0.0.2", "10.0.0.9"])]);
        let got: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.0.0.1", "10.0.0.9", "fd00::1"], "x/b owns 10.0.0.2 now");
    }
}
