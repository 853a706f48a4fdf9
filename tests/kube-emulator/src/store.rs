//! The emulator's state: resource types (built-in and from CRDs), objects, one global
//! resourceVersion counter, a bounded event history and the open watches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::SyncSender;

use serde_json::{Value, json};

use crate::select::{FieldSelector, LabelSelector};

/// A resource type the emulator serves.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The URL name (`pods`, `networkpolicies`).
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
}

impl ResourceType {
    fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            namespaced,
            short_names: Vec::new(),
        }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The key objects of this type are stored under (group and plural; versions share it).
    pub fn id(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }
}

/// The built-in types: enough of the core, networking, coordination and apiextensions
/// groups for Bulkhead's agent, fw-sync and the clients that check the emulator.
pub fn builtin_types() -> Vec<ResourceType> {
    let mut ns = ResourceType::new("", "v1", "Namespace", "namespaces", false);
    ns.short_names = vec!["ns".into()];
    let mut pod = ResourceType::new("", "v1", "Pod", "pods", true);
    pod.short_names = vec!["po".into()];
    let mut np = ResourceType::new("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", true);
    np.short_names = vec!["netpol".into()];
    let mut crd = ResourceType::new("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false);
    crd.short_names = vec!["crd".into(), "crds".into()];
    vec![
        ns,
        pod,
        ResourceType::new("", "v1", "ConfigMap", "configmaps", true),
        ResourceType::new("", "v1", "Secret", "secrets", true),
        ResourceType::new("", "v1", "ServiceAccount", "serviceaccounts", true),
        ResourceType::new("", "v1", "Node", "nodes", false),
        np,
        ResourceType::new("coordination.k8s.io", "v1", "Lease", "leases", true),
        crd,
    ]
}

/// The types a CustomResourceDefinition declares (one per served version).
pub fn types_of_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = crd.get("spec").ok_or("spec: required")?;
    let s = |p: &str| spec.pointer(p).and_then(Value::as_str).map(str::to_string);
    let group = s("/group").ok_or("spec.group: required")?;
    let plural = s("/names/plural").ok_or("spec.names.plural: required")?;
    let kind = s("/names/kind").ok_or("spec.names.kind: required")?;
    let namespaced = match s("/scope").as_deref() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        other => return Err(format!("spec.scope: must be Namespaced or Cluster, got {other:?}")),
    };
    let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    if name != format!("{plural}.{group}") {
        return Err(format!("metadata.name: must be spec.names.plural+\".\"+spec.group ({plural}.{group}), got {name:?}"));
    }
    let versions = spec.get("versions").and_then(Value::as_array).ok_or("spec.versions: required")?;
    let mut out = Vec::new();
    for v in versions {
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let version = v.get("name").and_then(Value::as_str).ok_or("spec.versions[].name: required")?;
        let mut t = ResourceType::new(&group, version, &kind, &plural, namespaced);
        if let Some(sg) = s("/names/singular") {
            t.singular = sg;
        }
        if let Some(sn) = spec.pointer("/names/shortNames").and_then(Value::as_array) {
            t.short_names = sn.iter().filter_map(Value::as_str).map(str::to_string).collect();
        }
        out.push(t);
    }
    Ok(out)
}

/// An API error, rendered as a `Status` object.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into() }
    }
    pub fn not_found(t: &ResourceType, name: &str) -> Self {
        let what = if t.group.is_empty() { t.plural.clone() } else { format!("{}.{}", t.plural, t.group) };
        Self::new(404, "NotFound", format!("{what} \"{name}\" not found"))
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", m)
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::new(422, "Invalid", m)
    }
    /// The `Status` body.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

/// A watch event as sent on the wire (`{"type": ..., "object": ...}`).
#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub type_id: String,
    pub kind: &'static str,
    pub object: Value,
}

/// An open watch.
pub struct Subscription {
    pub type_id: String,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub tx: SyncSender<Value>,
}

impl Subscription {
    fn sees(&self, obj: &Value) -> bool {
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
        self.namespace.as_deref().is_none_or(|n| n == ns) && self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// What a change looks like through this watch's selectors: an object that starts to
    /// match is ADDED, one that stops matching is DELETED, as the API server reports it.
    pub fn translate(&self, e: &Event, old: Option<&Value>) -> Option<Value> {
        if e.type_id != self.type_id {
            return None;
        }
        let now = self.sees(&e.object);
        let kind = match e.kind {
            "MODIFIED" => match (old.is_some_and(|o| self.sees(o)), now) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                (true, false) => "DELETED",
                (false, false) => return None,
            },
            k if now => k,
            _ => return None,
        };
        Some(json!({"type": kind, "object": e.object}))
    }
}

/// Key of a stored object: type id, namespace ("" for cluster-scoped), name.
pub type Key = (String, String, String);

/// Events kept for watches that resume from a resourceVersion; older ones answer 410.
pub const DEFAULT_HISTORY: usize = 10_000;

/// All state, behind the emulator's one lock.
pub struct Store {
    pub types: Vec<ResourceType>,
    pub objects: BTreeMap<Key, Value>,
    /// The last resourceVersion handed out (etcd's revision).
    pub rv: u64,
    pub history: VecDeque<(Event, Option<Value>)>,
    pub history_limit: usize,
    /// Watches from a resourceVersion below this get 410 Gone.
    pub compacted: u64,
    pub subs: Vec<Subscription>,
    pub uid_counter: u64,
}

impl Store {
    pub fn new() -> Self {
        Store {
            types: builtin_types(),
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_limit: DEFAULT_HISTORY,
            compacted: 0,
            subs: Vec::new(),
            uid_counter: 0,
        }
    }

    /// The type served at `group`/`version` under `plural`.
    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural).cloned()
    }

    /// Records a change: bumps nothing (the caller set the object's resourceVersion), keeps
    /// history and fans the event out to the open watches.
    pub fn publish(&mut self, e: Event, old: Option<Value>) {
        self.subs.retain(|s| match s.translate(&e, old.as_ref()) {
            Some(wire) => s.tx.try_send(wire).is_ok(),
            None => true,
        });
        self.history.push_back((e, old));
        while self.history.len() > self.history_limit {
            if let Some((gone, _)) = self.history.pop_front() {
                self.compacted = gone.rv;
            }
        }
    }

    /// Next resourceVersion.
    pub fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    pub fn next_uid(&mut self) -> String {
        self.uid_counter += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid_counter)
    }

    /// Forgets all history up to now: any watch resuming from an older resourceVersion gets
    /// 410 Gone (what etcd compaction does to a client that fell behind).
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}
