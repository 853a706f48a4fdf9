//! Reads the datastore folder: the pods and namespaces (through the policy compiler's
//! Kubernetes parser) and the AddressGroups (through [`crate::crd`]). Policies and any other
//! kinds live in the same folder for the agent and are skipped here. One bad Pod, Namespace
//! or AddressGroup fails the whole read, so nothing of a half-valid state is applied.

use std::path::{Path, PathBuf};

use policy_compiler::Model;
use serde::Deserialize as _;
use serde_yaml::Value;

use crate::error::FwSyncError;
use crate::group::AddressGroup;

/// What the datastore holds that fw-sync needs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub model: Model,
    pub groups: Vec<AddressGroup>,
    /// The agents' Quarantines (folder datastore).
    pub quarantines: Vec<crate::quarantine::QuarantineDoc>,
}

/// Reads every `*.yaml`/`*.yml` below `dir` (hidden files skipped, in name order).
pub fn load(dir: &Path) -> Result<Snapshot, FwSyncError> {
    let mut resources = Vec::new();
    let mut groups = Vec::new();
    let mut quarantines = Vec::new();
    for path in files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| FwSyncError::Read { path: path.clone(), source })?;
        let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        // Documents other than Pods and Namespaces become nulls, which the compiler's parser
        // skips while still counting them, so its errors keep the right document numbers.
        let mut kept = Vec::new();
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let place = format!("{name}: document {}", i + 1);
            let value = Value::deserialize(de).map_err(|e| FwSyncError::Config { file: place.clone(), field: String::new(), message: format!("invalid YAML: {e}") })?;
            if crate::crd::is_address_group(&value) {
                groups.push(crate::crd::parse(&place, &value)?);
                kept.push(Value::Null);
            } else if crate::quarantine::is_quarantine(&value) {
                quarantines.push(crate::quarantine::parse(&place, path.clone(), &value)?);
                kept.push(Value::Null);
            } else if is_pod_or_namespace(&value) {
                kept.push(value);
            } else {
                kept.push(Value::Null);
            }
        }
        if kept.iter().all(Value::is_null) {
            continue;
        }
        let rebuilt = kept
            .iter()
            .map(|v| serde_yaml::to_string(v).expect("a parsed YAML value serializes"))
            .collect::<Vec<_>>()
            .join("---\n");
        let parsed = policy_compiler::k8s::parse_documents(&name, &rebuilt).map_err(|source| FwSyncError::Model { dir: dir.into(), source: Box::new(source) })?;
        resources.extend(parsed);
    }
    let model = policy_compiler::k8s::build_model(resources).map_err(|source| FwSyncError::Model { dir: dir.into(), source: Box::new(source) })?;
    Ok(Snapshot { model, groups, quarantines })
}

fn is_pod_or_namespace(v: &Value) -> bool {
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    s("apiVersion") == Some("v1") && matches!(s("kind"), Some("Pod" | "Namespace"))
}

fn files(dir: &Path) -> Result<Vec<PathBuf>, FwSyncError> {
    bulkhead_fswatch::yaml_files(dir).map_err(|(path, source)| FwSyncError::Read { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("fw-sync-src-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    #[test]
    fn reads_pods_and_groups_and_skips_policies() {
        let d = tempdir("ok");
        std::fs::write(
            d.0.join("a.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: web}}\nstatus: {podIP: 10.1.0.1}\n---\napiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {name: web}\nspec: {podSelector: app == 'web', targets: [{firewall: f, kind: ipset, name: web}]}\n---\napiVersion: example.com/v1\nkind: Whatever\n",
        )
        .expect("write");
        let s = load(&d.0).expect("loads");
        assert_eq!(s.model.pods.len(), 1, "{s:?}");
        assert_eq!(s.groups.len(), 1, "{s:?}");
        assert_eq!(s.groups[0].origin, "a.yaml: document 4");
    }

    #[test]
    fn bad_pod_keeps_its_document_number() {
        let d = tempdir("bad");
        std::fs::write(
            d.0.join("a.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: example.com/v1\nkind: Whatever\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: 10.1.0.300}\n",
        )
        .expect("write");
        let e = load(&d.0).expect_err("bad IP").to_string();
        assert!(e.contains("a.yaml: document 3 (Pod x/a): status.podIP"), "{e}");
        assert!(e.ends_with("(nothing applied)"), "{e}");
    }
}
