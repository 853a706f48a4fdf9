//! Runs a lab's datastore through the Kubernetes API: an API-server emulator per lab, the
//! agent's Kubernetes datastore watching it, every step written as API objects.

use std::time::{Duration, Instant};

use bulkhead_agent::kubernetes::{KubeDatastore, KubeHandle, KubeOptions};
use bulkhead_kube_emulator::Emulator;

use crate::datastore::Datastore;
use crate::error::{LabError, Result};
use crate::lab::Lab;

/// How long a write may take to reach the agent's watchers.
const SEEN_TIMEOUT: Duration = Duration::from_secs(20);

/// The API side of a lab.
pub struct KubeLab {
    emu: Emulator,
    handle: KubeHandle,
    store: Option<KubeDatastore>,
    /// Break every watch and compact the history after each write, so every change arrives
    /// through a 410 Gone and a full relist.
    force_relist: bool,
}

impl KubeLab {
    /// Starts the emulator, installs the agent's CRDs, writes the lab's namespaces and pods,
    /// and connects a Kubernetes datastore to it.
    pub fn start(lab: &Lab, ds: &mut Datastore, force_relist: bool) -> Result<KubeLab> {
        let agent_err = |e: String| LabError::Agent(format!("kubernetes datastore: {e}"));
        let emu = Emulator::start().map_err(|e| agent_err(format!("starting the API-server emulator: {e}")))?;
        for crd in bulkhead_agent::crds::agent_crds().into_iter().chain([bulkhead_agent::crds::quarantine_crd()]) {
            emu.create(crd).map_err(|e| agent_err(format!("installing a CRD: {}", e.message)))?;
        }
        let dir = lab.datastore_dir();
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, emu.kubeconfig()).map_err(|e| LabError::io(&kubeconfig, e))?;
        for (key, doc) in ds.take_changes() {
            if let Some(doc) = doc {
                emu.apply(doc).map_err(|e| agent_err(format!("{} {}: {}", key.kind(), key.name, e.message)))?;
            }
        }
        let opts = KubeOptions { api: bulkhead_agent::kubernetes::ApiOptions { kubeconfig: Some(kubeconfig), ..Default::default() }, trust_pod_annotations: true };
        let (store, handle) = KubeDatastore::connect(&opts).map_err(|e| agent_err(e.to_string()))?;
        Ok(KubeLab { emu, handle, store: Some(store), force_relist })
    }

    /// Starts the lab's agent on the Kubernetes datastore (once); `watch`: the agent applies
    /// every change its watchers see on its own.
    pub fn start_agent(&mut self, lab: &Lab, watch: bool) -> Result<bulkhead_agent::Agent> {
        let store = self.store.take().ok_or_else(|| LabError::Agent("the agent was already started".into()))?;
        bulkhead_agent::Agent::start_with(lab.agent_config(watch), Box::new(store)).map_err(|e| LabError::Agent(e.to_string()))
    }

    /// The API server, for tests that inject faults or write objects themselves.
    pub fn emulator(&self) -> &Emulator {
        &self.emu
    }

    /// The datastore's watch handle.
    pub fn handle(&self) -> &KubeHandle {
        &self.handle
    }

    /// Writes the datastore's changes through the API and waits until the agent's watchers
    /// have seen every one of them.
    pub fn push(&self, ds: &mut Datastore) -> std::result::Result<(), String> {
        let written = self.write(ds)?;
        if self.force_relist {
            self.emu.compact();
            self.emu.drop_watches();
        }
        for (key, rv, at) in written {
            if !self.handle.wait_seen(key.api_version(), key.kind(), rv, at, SEEN_TIMEOUT) {
                return Err(format!("{} {}: the agent's watch did not see resourceVersion {rv} within {SEEN_TIMEOUT:?}", key.kind(), key.name));
            }
        }
        Ok(())
    }

    /// Writes the datastore's changes through the API without waiting; returns what was
    /// written, with the resourceVersion the API server gave it and when.
    pub fn write(&self, ds: &mut Datastore) -> std::result::Result<Vec<(crate::datastore::ResKey, u64, Instant)>, String> {
        let mut written = Vec::new();
        for (key, doc) in ds.take_changes() {
            let at = Instant::now();
            let res = match doc {
                Some(doc) => self.emu.apply(doc),
                None => self.emu.delete(key.api_version(), key.kind(), &key.namespace, &key.name),
            };
            let obj = res.map_err(|e| format!("{} {}: the API server refused it: {}", key.kind(), key.name, e.message))?;
            let rv = obj.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
            written.push((key, rv, at));
        }
        Ok(written)
    }
}
