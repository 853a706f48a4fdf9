//! The `bulkhead.io/v1alpha1` `Quarantine` resource, exchanged by the agent and fw-sync: the
//! agent's record that its detector isolated or paused a workload, which fw-sync turns into
//! membership of the quarantine address group on every firewall it drives, answering per
//! firewall in a status beside it.
//!
//! In a folder datastore (the wire format both sides share):
//! - `<datastore>/bulkhead-quarantine/<node>/<namespace>.<name>.yaml`: the Quarantine, written
//!   (atomically) and removed by that node's agent only; a node's folder is its own, so an
//!   agent can drop stale files of its folder without touching another node's.
//! - `.<namespace>.<name>.status.json` beside it: written by fw-sync after each firewall's
//!   update, hidden so no datastore reader takes it for content.
//!
//! A Quarantine carries the addresses the agent isolated. fw-sync counts an address only
//! while no *other* pod owns it (by the model's owner rule), so a quarantine the agent has not
//! withdrawn yet never catches the next pod given that address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// API group/version of the resource.
pub const API_VERSION: &str = "bulkhead.io/v1alpha1";
/// Kind of the resource.
pub const KIND: &str = "Quarantine";
/// Folder under the datastore holding one folder per node.
pub const FOLDER: &str = "bulkhead-quarantine";
/// The resource's plural (Kubernetes API), namespaced.
pub const PLURAL: &str = "quarantines";
/// Label naming the node whose agent wrote a Quarantine (on the API: each agent lists its own).
pub const NODE_LABEL: &str = "bulkhead.io/node";

/// One quarantined workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quarantine {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: QuarantineSpec,
}

/// Name (the pod's) and namespace (the pod's, when the workload is a pod).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// [`NODE_LABEL`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What was decided, where and when, and the addresses to quarantine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuarantineSpec {
    /// The detector's workload name (`namespace/pod` for pods).
    pub workload: String,
    /// The agent instance (node) that decided.
    pub node: String,
    /// The finding that led to it (`violation`, `new-peer`, `port-scan`, ...).
    pub reason: String,
    /// What the node did: `isolated`, `paused`.
    pub actions: Vec<String>,
    /// When the node acted, milliseconds since the Unix epoch; also tells one quarantine of
    /// a workload from the next in the status.
    pub since_unix_ms: u64,
    /// The workload's addresses (both families) as the node knew them.
    pub addresses: Vec<IpAddr>,
}

/// fw-sync's answer: per firewall, when the quarantine group holding the addresses was
/// applied, or the last error while it was not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineStatus {
    /// The `spec.sinceUnixMs` this status answers (an older status is for an earlier
    /// quarantine of the same workload).
    pub since_unix_ms: u64,
    pub firewalls: BTreeMap<String, FirewallStatus>,
}

/// One firewall's part of a [`QuarantineStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirewallStatus {
    /// The object holding the addresses (`ipset bhfw-quarantine`, ...).
    pub target: String,
    /// When the firewall held every address, ms since the epoch; `None` while not yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_unix_ms: Option<u64>,
    /// The last failure while not yet applied (retried with backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Quarantine {
    /// A quarantine of `workload` decided now on `node`.
    pub fn new(node: &str, workload: &str, reason: &str, actions: Vec<String>, addresses: Vec<IpAddr>, since_unix_ms: u64) -> Quarantine {
        let (namespace, name) = match workload.split_once('/') {
            Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
            None => (None, workload.to_string()),
        };
        Quarantine {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata { name, namespace, labels: [(NODE_LABEL.to_string(), node.to_string())].into() },
            spec: QuarantineSpec { workload: workload.into(), node: node.into(), reason: reason.into(), actions, since_unix_ms, addresses },
        }
    }

    /// `(namespace, name)` of the pod, when the workload is one.
    pub fn pod(&self) -> Option<(&str, &str)> {
        self.metadata.namespace.as_deref().map(|ns| (ns, self.metadata.name.as_str()))
    }
}

/// A Quarantine as the API serves it: the spec read strictly, name and namespace from the
/// metadata (the server adds its own fields there), and fw-sync's status if any.
pub fn from_object(v: &serde_json::Value) -> Result<(Quarantine, Option<QuarantineStatus>), String> {
    let spec: QuarantineSpec = serde_json::from_value(v["spec"].clone()).map_err(|e| format!("spec: {e}"))?;
    let name = v["metadata"]["name"].as_str().ok_or("metadata.name: missing")?.to_string();
    let namespace = v["metadata"]["namespace"].as_str().map(str::to_string);
    let labels = v["metadata"]["labels"].as_object().map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()).unwrap_or_default();
    let status = v.get("status").filter(|s| !s.is_null()).map(|s| serde_json::from_value(s.clone()).map_err(|e| format!("status: {e}"))).transpose()?;
    Ok((Quarantine { api_version: API_VERSION.into(), kind: KIND.into(), metadata: Metadata { name, namespace, labels }, spec }, status))
}

/// Whether a parsed YAML document is a Quarantine (the caller skips other kinds).
pub fn is_quarantine(api_version: Option<&str>, kind: Option<&str>) -> bool {
    api_version == Some(API_VERSION) && kind == Some(KIND)
}

/// The folder of `node`'s quarantines under a datastore folder.
pub fn node_dir(datastore: &Path, node: &str) -> PathBuf {
    datastore.join(FOLDER).join(node)
}

/// The file name of a workload's quarantine: `namespace.pod.yaml`, every character outside
/// letters, digits, `-`, `_` and `.` replaced by `_` (a workload name from the API may hold
/// anything).
pub fn file_name(workload: &str) -> String {
    let safe: String = workload.replace('/', ".").chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    format!("{}.yaml", safe.trim_start_matches('.'))
}

/// Where fw-sync answers a quarantine file: `.<stem>.status.json` beside it.
pub fn status_path(file: &Path) -> PathBuf {
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    file.with_file_name(format!(".{stem}.status.json"))
}

/// Writes `bytes` to `path` atomically (a hidden temporary renamed over it), so a reader
/// never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{}.{}.tmp", name.trim_start_matches('.'), std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The API calls on Quarantines (blocking: from threads outside the runtime). Errors are
/// messages naming the call.
pub mod api {
    use super::*;
    use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};

    fn resource() -> ApiResource {
        ApiResource { group: "bulkhead.io".into(), version: "v1alpha1".into(), api_version: API_VERSION.into(), kind: KIND.into(), plural: PLURAL.into() }
    }

    /// Runs `fut` on the runtime's own threads and waits: the caller may sit in another
    /// network namespace (the agent's threads live in the node's), where the API server's
    /// address does not route; the runtime's threads were started where the client connects.
    fn run<T: Send + 'static>(rt: &tokio::runtime::Handle, fut: impl std::future::Future<Output = T> + Send + 'static) -> Result<T, String> {
        rt.block_on(rt.spawn(fut)).map_err(|e| format!("API task failed: {e}"))
    }

    fn namespaced(client: &kube::Client, q: &Quarantine) -> Result<Api<DynamicObject>, String> {
        let ns = q.metadata.namespace.as_deref().ok_or_else(|| format!("workload {:?} is not a pod (no namespace): not published to the API", q.spec.workload))?;
        Ok(Api::namespaced_with(client.clone(), ns, &resource()))
    }

    /// Creates or updates the Quarantine (server-side apply by the agent).
    pub fn apply(client: &kube::Client, rt: &tokio::runtime::Handle, q: &Quarantine) -> Result<(), String> {
        let api = namespaced(client, q)?;
        let obj = serde_json::to_value(q).map_err(|e| e.to_string())?;
        let (name, workload) = (q.metadata.name.clone(), q.spec.workload.clone());
        run(rt, async move { api.patch(&name, &PatchParams::apply("bulkhead-agent").force(), &Patch::Apply(obj)).await.map(|_| ()) })?
            .map_err(|e| format!("apply Quarantine {workload}: {e}"))
    }

    /// Deletes it (gone already is fine).
    pub fn delete(client: &kube::Client, rt: &tokio::runtime::Handle, q: &Quarantine) -> Result<(), String> {
        let api = namespaced(client, q)?;
        let name = q.metadata.name.clone();
        match run(rt, async move { api.delete(&name, &DeleteParams::default()).await.map(|_| ()) })? {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(format!("delete Quarantine {}: {e}", q.spec.workload)),
        }
    }

    /// The Quarantines `node` wrote, with their statuses.
    pub fn list(client: &kube::Client, rt: &tokio::runtime::Handle, node: &str) -> Result<Vec<(Quarantine, Option<QuarantineStatus>)>, String> {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
        let lp = ListParams::default().labels(&format!("{NODE_LABEL}={node}"));
        let list = run(rt, async move { api.list(&lp).await })?.map_err(|e| format!("list Quarantines: {e}"))?;
        let mut out = Vec::new();
        for o in list.items {
            let v = serde_json::to_value(&o).map_err(|e| e.to_string())?;
            match from_object(&v) {
                Ok(x) => out.push(x),
                Err(e) => tracing::warn!(name = ?o.metadata.name, error = %e, "unreadable Quarantine of this node"),
            }
        }
        Ok(out)
    }

    /// fw-sync's answer on the object's status.
    pub fn patch_status(client: &kube::Client, rt: &tokio::runtime::Handle, namespace: &str, name: &str, st: &QuarantineStatus) -> Result<(), String> {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource());
        let patch = Patch::Merge(serde_json::json!({ "status": st }));
        let n = name.to_string();
        run(rt, async move { api.patch_status(&n, &PatchParams::default(), &patch).await.map(|_| ()) })?
            .map_err(|e| format!("patch status of Quarantine {namespace}/{name}: {e}"))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let q = Quarantine::new("node1", "shop/web-1", "violation", vec!["isolated".into()], vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()], 1_700_000_000_000);
        let text = serde_yaml::to_string(&q).expect("serializes");
        assert!(text.contains("kind: Quarantine") && text.contains("sinceUnixMs: 1700000000000") && text.contains("namespace: shop"), "{text}");
        let back: Quarantine = serde_yaml::from_str(&text).expect("parses");
        assert_eq!(back, q);
        assert_eq!(q.metadata.labels[NODE_LABEL], "node1");
        // As the API serves it: server fields in metadata, a status.
        let mut obj = serde_json::to_value(&q).expect("json");
        obj["metadata"]["uid"] = "u-1".into();
        obj["metadata"]["resourceVersion"] = "7".into();
        obj["status"] = serde_json::json!({"sinceUnixMs": 1_700_000_000_000u64, "firewalls": {"edge": {"target": "ipset bhfw-quarantine", "appliedUnixMs": 1_700_000_000_009u64}}});
        let (from_api, status) = from_object(&obj).expect("from the API");
        assert_eq!(from_api, q);
        assert_eq!(status.expect("status").firewalls["edge"].applied_unix_ms, Some(1_700_000_000_009));
        assert_eq!(back.pod(), Some(("shop", "web-1")));
        let e = serde_yaml::from_str::<Quarantine>(&text.replace("reason:", "raeson:")).expect_err("typo").to_string();
        assert!(e.contains("raeson"), "{e}");
    }

    #[test]
    fn file_names_are_safe_and_status_is_hidden_beside() {
        assert_eq!(file_name("shop/web-1"), "shop.web-1.yaml");
        assert_eq!(file_name("../x y"), "x_y.yaml", "no hidden or parent names");
        let f = node_dir(Path::new("/d"), "n1").join(file_name("shop/web-1"));
        assert_eq!(f, Path::new("/d/bulkhead-quarantine/n1/shop.web-1.yaml"));
        assert_eq!(status_path(&f), Path::new("/d/bulkhead-quarantine/n1/.shop.web-1.status.json"));
    }
}
