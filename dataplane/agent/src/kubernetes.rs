//! The Kubernetes datastore: the same [`Datastore`] as the folder of YAML, read from an API
//! server through [`bulkhead_kube::WatchSet`] (one watcher per kind; a relist is swapped in
//! only when complete, so it never flips a verdict on its own).
//!
//! Each object is parsed when it arrives; one the parsers reject is reported with its kind,
//! namespace/name and field, and its last good version stays in force (or nothing, if it
//! never had one), as a bad file does in the folder datastore.
//!
//! Every pod is watched, not only this node's: peers' labels decide verdicts. Endpoints on
//! this node come from the CNI plugin's registrations; the annotations naming a pod's host
//! interface and cgroup are taken from the API only when [`KubeOptions::trust_pod_annotations`]
//! is set (the lab, which plays kubelet and CNI itself), so an API object can never point the
//! agent at an interface.

use std::sync::Arc;

pub use bulkhead_kube::{KubeHandle, KubeOptions as ApiOptions, WatchedKind};
use bulkhead_kube::WatchSet;
use policy_compiler::k8s::Resource;
use policy_compiler::model::Model;
use serde_json::Value;

use crate::datastore::{Datastore, Notify};
use crate::detect::policy::DetectorInput;
use crate::error::AgentError;

/// Everything the agent reads from the API: Namespaces, Pods, the policy kinds of Kubernetes,
/// AdminNetworkPolicy and Calico, and the detector's policies.
pub const WATCHED: [WatchedKind; 11] = [
    WatchedKind::new("", "v1", "Namespace", "namespaces"),
    WatchedKind::new("", "v1", "Pod", "pods"),
    WatchedKind::new("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
    WatchedKind::new("policy.networking.k8s.io", "v1alpha1", "AdminNetworkPolicy", "adminnetworkpolicies"),
    WatchedKind::new("policy.networking.k8s.io", "v1alpha1", "BaselineAdminNetworkPolicy", "baselineadminnetworkpolicies"),
    WatchedKind::new("projectcalico.org", "v3", "Tier", "tiers"),
    WatchedKind::new("projectcalico.org", "v3", "NetworkPolicy", "networkpolicies"),
    WatchedKind::new("projectcalico.org", "v3", "GlobalNetworkPolicy", "globalnetworkpolicies"),
    WatchedKind::new("projectcalico.org", "v3", "StagedNetworkPolicy", "stagednetworkpolicies"),
    WatchedKind::new("projectcalico.org", "v3", "StagedGlobalNetworkPolicy", "stagedglobalnetworkpolicies"),
    WatchedKind::new("bulkhead.io", "v1alpha1", "DetectorPolicy", "detectorpolicies"),
];

/// How the datastore connects.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// Where the API server is and how long to wait for the first lists.
    pub api: bulkhead_kube::KubeOptions,
    /// Take `bulkhead.io/interface` and `bulkhead.io/cgroup` from Pod annotations (the lab
    /// only: in a cluster the CNI plugin says where a pod is).
    pub trust_pod_annotations: bool,
}

/// An accepted object: its text (for the detector) and its policy documents.
#[derive(Clone, Debug)]
struct Accepted {
    text: String,
    docs: Vec<Resource>,
}

/// The Kubernetes API datastore.
pub struct KubeDatastore {
    set: WatchSet<Accepted>,
    last_generation: u64,
    /// Texts of the last load's pods and detector policies, for the detector.
    current: Vec<(String, String)>,
    rejected: Vec<String>,
}

fn accept(trust: bool) -> bulkhead_kube::Accept<Accepted> {
    Arc::new(move |k: &WatchedKind, origin: &str, mut v: Value| {
        if k.kind == "Pod" && !trust {
            if let Some(a) = v.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
                a.remove(policy_compiler::k8s::INTERFACE_ANNOTATION);
                a.remove(crate::detect::policy::CGROUP_ANNOTATION);
            }
        }
        let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        crate::detect::policy::parse_documents(origin, &text, &mut DetectorInput::default())?;
        let docs = if k.kind == "DetectorPolicy" { Vec::new() } else { policy_compiler::k8s::parse_documents(origin, &text).map_err(|e| e.to_string())? };
        Ok(Accepted { text, docs })
    })
}

impl KubeDatastore {
    /// Connects and waits until every kind has been listed once (a kind the server does not
    /// serve counts as empty); an API server down or failing for `ready_timeout` is an error
    /// naming the kinds not listed.
    pub fn connect(opts: &KubeOptions) -> Result<(KubeDatastore, KubeHandle), AgentError> {
        let set = WatchSet::connect(&opts.api, &WATCHED, accept(opts.trust_pod_annotations))?;
        let handle = set.handle();
        Ok((KubeDatastore { set, last_generation: u64::MAX, current: Vec::new(), rejected: Vec::new() }, handle))
    }
}

impl Datastore for KubeDatastore {
    fn load(&mut self) -> Result<Model, AgentError> {
        self.last_generation = self.set.generation();
        let server = self.set.server().to_string();
        // Every kind was listed before `connect` returned, and stays listed.
        let (resources, rejected, current) = self.set.read(|kinds, states| {
            let mut resources = Vec::new();
            let mut rejected = Vec::new();
            let mut current = Vec::new();
            for (k, st) in kinds.iter().zip(states) {
                for ((ns, name), obj) in &st.objects {
                    if let Some(e) = &obj.error {
                        let fate = if obj.good.is_some() { "its last good version stays in force" } else { "it is not applied" };
                        rejected.push(format!("{e} ({fate})"));
                    }
                    if let Some(a) = &obj.good {
                        resources.extend(a.docs.iter().cloned());
                        if k.kind == "Pod" || k.kind == "DetectorPolicy" {
                            current.push((bulkhead_kube::origin(k.kind, ns, name), a.text.clone()));
                        }
                    }
                }
            }
            (resources, rejected, current)
        });
        let model = policy_compiler::k8s::build_model(resources).map_err(|e| AgentError::Invalid(format!("kubernetes datastore {server}: {e}")))?;
        self.current = current;
        self.rejected = rejected;
        Ok(model)
    }

    fn poll_changed(&mut self) -> bool {
        self.set.generation() != self.last_generation
    }

    fn describe(&self) -> String {
        format!("kubernetes datastore {}", self.set.server())
    }

    fn load_detector(&self) -> Result<DetectorInput, AgentError> {
        let mut input = DetectorInput::default();
        for (name, text) in &self.current {
            crate::detect::policy::parse_documents(name, text, &mut input).map_err(|e| AgentError::Invalid(format!("{}: {e}", self.set.server())))?;
        }
        Ok(input)
    }

    fn rejected(&self) -> Vec<String> {
        self.rejected.clone()
    }

    fn subscribe(&mut self, notify: Notify) -> Result<(), AgentError> {
        self.set.subscribe(notify);
        Ok(())
    }

    fn quarantine_store(&self, node: &str) -> Option<Box<dyn crate::detect::perimeter::QuarantineStore>> {
        Some(Box::new(crate::detect::perimeter::KubeStore::new(self.set.client(), self.set.runtime().clone(), node)))
    }
}
