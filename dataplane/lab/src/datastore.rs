//! Writes the lab's cluster state as Kubernetes YAML files for the agent to read.
//!
//! Resources live in memory keyed by (apiVersion/kind, namespace, name); after a step, only the
//! changed files are rewritten (atomically: temp file + rename) or removed.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::case::{DeleteRef, LabelTarget, documents, type_of};
use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::topology::Topology;

/// Identity of a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResKey {
    /// `apiVersion/kind`, e.g. `networking.k8s.io/v1/NetworkPolicy`.
    pub type_: String,
    /// Namespace (empty for cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ResKey {
    /// The kind.
    pub fn kind(&self) -> &str {
        self.type_.rsplit('/').next().unwrap_or("")
    }
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> &str {
        self.type_.rsplit_once('/').map_or("", |(a, _)| a)
    }
    fn file_name(&self) -> String {
        let clean = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect::<String>();
        let ns = if self.namespace.is_empty() { "_cluster" } else { &self.namespace };
        format!("{}__{}__{}.yaml", clean(&self.type_), clean(ns), clean(&self.name))
    }
}

/// The datastore directory and the resources in it.
pub struct Datastore {
    dir: PathBuf,
    resources: BTreeMap<ResKey, Value>,
    dirty: BTreeSet<ResKey>,
}

impl Datastore {
    /// A datastore holding the topology's namespaces and pods (each pod annotated with its
    /// host-side veth so the agent knows where to attach, and its cgroup v2 folder so the
    /// detector can watch it). Call [`Datastore::flush`] to write.
    pub fn for_lab(lab: &Lab) -> Datastore {
        let mut ds = Datastore { dir: lab.datastore_dir(), resources: BTreeMap::new(), dirty: BTreeSet::new() };
        let topo: &Topology = lab.topology();
        for ns in &topo.namespaces {
            let doc = serde_yaml::to_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns.name, "labels": ns.labels},
            }))
            .expect("plain JSON");
            ds.insert(doc).expect("has type and name");
        }
        for (pod, ep) in topo.pods.iter().zip(lab.pods()) {
            let ports: Vec<_> = topo
                .ports_of(pod)
                .iter()
                .map(|p| {
                    let mut m = serde_json::json!({"containerPort": p.port, "protocol": p.protocol.as_str()});
                    if let Some(n) = &p.name {
                        m["name"] = n.clone().into();
                    }
                    m
                })
                .collect();
            let mut annotations = serde_json::json!({"bulkhead.io/interface": ep.host_veth});
            if let Some(cg) = &ep.cgroup {
                annotations["bulkhead.io/cgroup"] = cg.display().to_string().into();
            }
            let doc = serde_yaml::to_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": pod.name, "namespace": pod.namespace, "labels": pod.labels,
                    "annotations": annotations,
                },
                "spec": {"serviceAccountName": pod.service_account, "containers": [{"name": "app", "ports": ports}]},
                "status": {
                    "podIP": pod.ip.to_string(),
                    "podIPs": std::iter::once(pod.ip.to_string()).chain(pod.ip6.map(|a| a.to_string())).map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>(),
                },
            }))
            .expect("plain JSON");
            ds.insert(doc).expect("has type and name");
        }
        ds
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn insert(&mut self, doc: Value) -> std::result::Result<ResKey, String> {
        let (api, kind) = type_of(&doc)?;
        let meta = doc.get("metadata").ok_or("missing metadata")?;
        let name = meta.get("name").and_then(Value::as_str).ok_or("missing metadata.name")?.to_string();
        let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or("").to_string();
        let key = ResKey { type_: format!("{api}/{kind}"), namespace, name };
        self.resources.insert(key.clone(), doc);
        self.dirty.insert(key.clone());
        Ok(key)
    }

    /// Creates or replaces every document of `text`, unchanged.
    pub fn apply(&mut self, text: &str) -> std::result::Result<Vec<ResKey>, String> {
        let docs = documents(text)?;
        docs.into_iter().enumerate().map(|(i, d)| self.insert(d).map_err(|e| format!("document {i}: {e}"))).collect()
    }

    /// Deletes resources; a reference without apiVersion matches that kind in any group.
    /// Deleting something absent is an error (a case typo would otherwise pass silently).
    pub fn delete(&mut self, refs: &[DeleteRef]) -> std::result::Result<(), String> {
        for r in refs {
            let ns = r.namespace.clone().unwrap_or_default();
            let hits: Vec<ResKey> = self
                .resources
                .keys()
                .filter(|k| k.kind() == r.kind && k.name == r.name && k.namespace == ns)
                .filter(|k| r.api_version.as_ref().is_none_or(|a| k.type_ == format!("{a}/{}", r.kind)))
                .cloned()
                .collect();
            if hits.is_empty() {
                return Err(format!("delete: no {} {}{}", r.kind, if ns.is_empty() { String::new() } else { format!("{ns}/") }, r.name));
            }
            for k in hits {
                self.resources.remove(&k);
                self.dirty.insert(k);
            }
        }
        Ok(())
    }

    /// Sets and removes labels on a Pod or Namespace.
    pub fn label(&mut self, target: &LabelTarget, set: &BTreeMap<String, String>, remove: &[String]) -> std::result::Result<(), String> {
        let key = match target {
            LabelTarget::Pod(p) => {
                let (ns, name) = p.split_once('/').ok_or_else(|| format!("{p:?} is not namespace/name"))?;
                ResKey { type_: "v1/Pod".into(), namespace: ns.into(), name: name.into() }
            }
            LabelTarget::Namespace(n) => ResKey { type_: "v1/Namespace".into(), namespace: String::new(), name: n.clone() },
        };
        let doc = self.resources.get_mut(&key).ok_or_else(|| format!("label: no {} {}", key.kind(), key.name))?;
        let meta = doc.get_mut("metadata").and_then(Value::as_mapping_mut).ok_or("no metadata")?;
        let labels = meta.entry("labels".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
        if labels.is_null() {
            *labels = Value::Mapping(Mapping::new());
        }
        let labels = labels.as_mapping_mut().ok_or("metadata.labels is not a map")?;
        for k in remove {
            labels.remove(k.as_str());
        }
        for (k, v) in set {
            labels.insert(k.clone().into(), v.clone().into());
        }
        self.dirty.insert(key);
        Ok(())
    }

    /// The changed resources since the last call (`None`: deleted) as JSON, namespaces
    /// first, and forgets they changed.
    pub fn take_changes(&mut self) -> Vec<(ResKey, Option<serde_json::Value>)> {
        let mut out: Vec<_> = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|k| {
                let doc = self.resources.get(&k).map(|d| serde_json::to_value(d).unwrap_or_default());
                (k, doc)
            })
            .collect();
        out.sort_by_key(|(k, _)| k.kind() != "Namespace");
        out
    }

    /// Writes changed resources and removes deleted ones.
    pub fn flush(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| LabError::io(&self.dir, e))?;
        for key in std::mem::take(&mut self.dirty) {
            let path = self.dir.join(key.file_name());
            match self.resources.get(&key) {
                Some(doc) => {
                    let text = serde_yaml::to_string(doc).map_err(|source| LabError::Yaml { file: path.display().to_string(), source })?;
                    // A dot-prefixed temp name keeps a watching agent from reading half a file.
                    let tmp = self.dir.join(format!(".{}.tmp", key.file_name()));
                    std::fs::write(&tmp, text).map_err(|e| LabError::io(&tmp, e))?;
                    std::fs::rename(&tmp, &path).map_err(|e| LabError::io(&path, e))?;
                }
                None => {
                    if path.exists() {
                        std::fs::remove_file(&path).map_err(|e| LabError::io(&path, e))?;
                    }
                }
            }
        }
        Ok(())
    }
}
