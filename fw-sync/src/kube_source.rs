//! The Kubernetes API as fw-sync's datastore: Pods, Namespaces and AddressGroups through
//! [`bulkhead_kube::WatchSet`]. A relist is swapped in only when complete, so a dropped watch
//! or a 410 never shows the firewalls a half-listed cluster (an address would leave a group
//! and come back). An object that does not parse is logged with its kind and namespace/name
//! and keeps its last good version; the rest still syncs.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_kube::{KubeOptions, WatchSet, WatchedKind};
use policy_compiler::k8s::Resource;
use serde_json::Value;

use crate::error::FwSyncError;
use crate::group::AddressGroup;
use crate::source::Snapshot;

/// What fw-sync reads.
pub const WATCHED: [WatchedKind; 3] = [
    WatchedKind::new("", "v1", "Namespace", "namespaces"),
    WatchedKind::new("", "v1", "Pod", "pods"),
    WatchedKind::new("bulkhead.io", "v1alpha1", crate::crd::KIND, "addressgroups"),
];

/// The agents' Quarantines, read when the config keeps a quarantine group.
pub const QUARANTINES: WatchedKind = WatchedKind::new("bulkhead.io", "v1alpha1", bulkhead_kube::quarantine::KIND, bulkhead_kube::quarantine::PLURAL);

#[derive(Clone, Debug)]
enum Item {
    Resources(Vec<Resource>),
    Group(AddressGroup),
    Quarantine(crate::quarantine::QuarantineDoc),
}

/// A connected Kubernetes datastore.
pub struct KubeSource {
    set: WatchSet<Item>,
    loaded: u64,
}

fn accept() -> bulkhead_kube::Accept<Item> {
    Arc::new(|k: &WatchedKind, origin: &str, v: Value| {
        if k.kind == bulkhead_kube::quarantine::KIND {
            let (q, _) = bulkhead_kube::quarantine::from_object(&v).map_err(|e| format!("{origin}: {e}"))?;
            let o = crate::quarantine::Origin::Object(q.metadata.namespace.clone().unwrap_or_default(), q.metadata.name.clone());
            return Ok(Item::Quarantine(crate::quarantine::QuarantineDoc { origin: o, quarantine: q }));
        }
        if k.kind == crate::crd::KIND {
            let y = serde_yaml::to_value(&v).map_err(|e| e.to_string())?;
            return crate::crd::parse(origin, &y).map(Item::Group).map_err(|e| e.to_string());
        }
        let text = serde_json::to_string(&v).map_err(|e| e.to_string())?;
        policy_compiler::k8s::parse_documents(origin, &text).map(Item::Resources).map_err(|e| e.to_string())
    })
}

impl KubeSource {
    /// Connects and waits for the first complete list of every kind (with the agents'
    /// Quarantines when `quarantine`).
    pub fn connect(opts: &KubeOptions, quarantine: bool) -> Result<KubeSource, FwSyncError> {
        let mut kinds = WATCHED.to_vec();
        if quarantine {
            kinds.push(QUARANTINES);
        }
        Ok(KubeSource { set: WatchSet::connect(opts, &kinds, accept())?, loaded: u64::MAX })
    }

    /// The current snapshot; objects that do not parse are logged and keep their last good
    /// version.
    pub fn load(&mut self) -> Result<Snapshot, FwSyncError> {
        self.loaded = self.set.generation();
        let (resources, groups, quarantines, errors) = self.set.read(|_, states| {
            let (mut resources, mut groups, mut quarantines, mut errors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for st in states {
                for obj in st.objects.values() {
                    errors.extend(obj.error.clone());
                    match &obj.good {
                        Some(Item::Resources(r)) => resources.extend(r.iter().cloned()),
                        Some(Item::Group(g)) => groups.push(g.clone()),
                        Some(Item::Quarantine(q)) => quarantines.push(q.clone()),
                        None => {}
                    }
                }
            }
            (resources, groups, quarantines, errors)
        });
        for e in errors {
            tracing::error!(rejected = %e, "object not applied (its last good version stays)");
        }
        let model = policy_compiler::k8s::build_model(resources)
            .map_err(|source| FwSyncError::Model { dir: self.set.server().into(), source: Box::new(source) })?;
        Ok(Snapshot { model, groups, quarantines })
    }

    /// Waits up to `ms` for a change since the last load.
    pub fn wait(&self, ms: u64) -> bool {
        self.set.wait_change(self.loaded, Duration::from_millis(ms))
    }

    /// The client and the runtime it runs on (for the Lease).
    pub fn client(&self) -> (bulkhead_kube::Client, bulkhead_kube::RuntimeHandle) {
        (self.set.client(), self.set.runtime().clone())
    }
}
