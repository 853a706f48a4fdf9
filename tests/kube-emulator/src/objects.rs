//! Writes: create, replace, patch and delete, with the metadata the API server maintains
//! (uid, resourceVersion, generation, creationTimestamp) and optimistic concurrency.

use serde_json::{Map, Value, json};

use crate::store::{ApiError, Event, Key, ResourceType, Store, types_of_crd};

/// The label every Namespace carries with its own name (set by the API server).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn meta_str<'v>(obj: &'v Value, field: &str) -> Option<&'v str> {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let o = obj.as_object_mut().ok_or_else(|| ApiError::bad_request("the body is not a JSON object"))?;
    let m = o.entry("metadata").or_insert_with(|| json!({}));
    m.as_object_mut().ok_or_else(|| ApiError::bad_request("metadata: must be an object"))
}

/// Now as RFC 3339 in UTC, second precision, as the API server writes timestamps.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Checks the body's apiVersion/kind against the URL's type (filling them in when absent)
/// and its namespace against the URL's.
fn check_identity(t: &ResourceType, ns: &str, obj: &mut Value) -> Result<(), ApiError> {
    let o = obj.as_object_mut().ok_or_else(|| ApiError::bad_request("the body is not a JSON object"))?;
    match o.get("kind").and_then(Value::as_str) {
        Some(k) if k != t.kind => return Err(ApiError::bad_request(format!("the kind {k:?} of the body does not match the URL's {:?}", t.kind))),
        _ => {}
    }
    match o.get("apiVersion").and_then(Value::as_str) {
        Some(a) if a != t.api_version() => {
            return Err(ApiError::bad_request(format!("the apiVersion {a:?} of the body does not match the URL's {:?}", t.api_version())));
        }
        _ => {}
    }
    o.insert("kind".into(), t.kind.clone().into());
    o.insert("apiVersion".into(), t.api_version().into());
    let m = meta_mut(obj)?;
    if t.namespaced {
        match m.get("namespace").and_then(Value::as_str) {
            Some(n) if n != ns => {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
            _ => {
                m.insert("namespace".into(), ns.into());
            }
        }
    } else {
        m.remove("namespace");
    }
    Ok(())
}

/// Content equality that ignores what the server maintains on every write.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            m.remove("managedFields");
        }
        v
    };
    strip(a) == strip(b)
}

impl Store {
    fn key(t: &ResourceType, ns: &str, name: &str) -> Key {
        (t.id(), if t.namespaced { ns.to_string() } else { String::new() }, name.to_string())
    }

    /// The stored object, shown in the requested version.
    pub fn get(&self, t: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let mut o = self.objects.get(&Self::key(t, ns, name)).cloned().ok_or_else(|| ApiError::not_found(t, name))?;
        o["apiVersion"] = t.api_version().into();
        Ok(o)
    }

    /// POST: a new object.
    pub fn create(&mut self, t: &ResourceType, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        check_identity(t, ns, &mut obj)?;
        if t.namespaced && !self.objects.contains_key(&(String::from("/namespaces"), String::new(), ns.to_string())) {
            return Err(ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found")));
        }
        let uid = self.next_uid();
        let m = meta_mut(&mut obj)?;
        if m.get("resourceVersion").and_then(Value::as_str).is_some_and(|r| !r.is_empty()) {
            return Err(ApiError::bad_request("metadata.resourceVersion: Invalid value: resourceVersion should not be set on objects to be created"));
        }
        let name = match (m.get("name").and_then(Value::as_str), m.get("generateName").and_then(Value::as_str)) {
            (Some(n), _) if !n.is_empty() => n.to_string(),
            (_, Some(g)) => format!("{g}{}", &uid[uid.len() - 5..]),
            _ => return Err(ApiError::invalid("metadata.name: Required value: name or generateName is required")),
        };
        if name.len() > 253 || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.') {
            return Err(ApiError::invalid(format!("metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'")));
        }
        let key = Self::key(t, ns, &name);
        if self.objects.contains_key(&key) {
            let what = if t.group.is_empty() { t.plural.clone() } else { format!("{}.{}", t.plural, t.group) };
            return Err(ApiError::new(409, "AlreadyExists", format!("{what} \"{name}\" already exists")));
        }
        if t.kind == "CustomResourceDefinition" {
            let new_types = types_of_crd(&obj).map_err(|e| ApiError::invalid(format!("CustomResourceDefinition {name:?}: {e}")))?;
            self.types.retain(|x| !new_types.iter().any(|n| n.group == x.group && n.version == x.version && n.plural == x.plural));
            self.types.extend(new_types);
            obj["status"] = json!({
                "conditions": [{"type": "Established", "status": "True"}, {"type": "NamesAccepted", "status": "True"}],
                "acceptedNames": obj.pointer("/spec/names").cloned().unwrap_or(Value::Null),
            });
        }
        let rv = self.next_rv();
        let m = meta_mut(&mut obj)?;
        m.insert("name".into(), name.clone().into());
        m.insert("uid".into(), uid.into());
        m.insert("resourceVersion".into(), rv.to_string().into());
        m.insert("creationTimestamp".into(), now_rfc3339().into());
        m.insert("generation".into(), 1.into());
        if t.kind == "Namespace" {
            let labels = m.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert(NAMESPACE_NAME_LABEL.into(), name.clone().into());
            }
            obj["status"] = json!({"phase": "Active"});
        }
        self.objects.insert(key, obj.clone());
        self.publish(Event { rv, type_id: t.id(), kind: "ADDED", object: obj.clone() }, None);
        Ok(obj)
    }

    /// PUT: replaces an object; a stale `metadata.resourceVersion` is a 409 Conflict.
    pub fn replace(&mut self, t: &ResourceType, ns: &str, name: &str, mut obj: Value) -> Result<Value, ApiError> {
        check_identity(t, ns, &mut obj)?;
        let key = Self::key(t, ns, name);
        let old = self.objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(t, name))?;
        if meta_str(&obj, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!("the name of the object ({:?}) does not match the name on the URL ({name:?})", meta_str(&obj, "name").unwrap_or(""))));
        }
        let current_rv = meta_str(&old, "resourceVersion").unwrap_or("").to_string();
        if let Some(rv) = meta_str(&obj, "resourceVersion").filter(|r| !r.is_empty()) {
            if rv != current_rv {
                let what = if t.group.is_empty() { t.plural.clone() } else { format!("{}.{}", t.plural, t.group) };
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!("Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"),
                ));
            }
        }
        self.store_update(t, key, old, obj)
    }

    /// Writes an update whose preconditions passed: server-kept metadata carried over, a
    /// no-op change neither bumps the resourceVersion nor makes an event.
    fn store_update(&mut self, t: &ResourceType, key: Key, old: Value, mut obj: Value) -> Result<Value, ApiError> {
        {
            let bump = old.get("spec") != obj.get("spec");
            let m = meta_mut(&mut obj)?;
            for k in ["uid", "creationTimestamp", "name"] {
                if let Some(v) = old.get("metadata").and_then(|o| o.get(k)) {
                    m.insert(k.into(), v.clone());
                }
            }
            m.insert("resourceVersion".into(), old["metadata"]["resourceVersion"].clone());
            let generation = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
            m.insert("generation".into(), (generation + i64::from(bump)).into());
            if t.kind == "Namespace" {
                let name = key.2.clone();
                let labels = m.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert(NAMESPACE_NAME_LABEL.into(), name.into());
                }
            }
        }
        if same_content(&old, &obj) {
            return Ok(old);
        }
        let rv = self.next_rv();
        meta_mut(&mut obj)?.insert("resourceVersion".into(), rv.to_string().into());
        self.objects.insert(key, obj.clone());
        self.publish(Event { rv, type_id: t.id(), kind: "MODIFIED", object: obj.clone() }, Some(old));
        Ok(obj)
    }

    /// PATCH with a JSON merge patch (RFC 7386). Strategic merge patches are applied as merge
    /// patches without their `$` directives; server-side apply (`apply-patch+yaml`) merges too
    /// and creates a missing object.
    pub fn patch(&mut self, t: &ResourceType, ns: &str, name: &str, patch: Value, create_missing: bool) -> Result<Value, ApiError> {
        let key = Self::key(t, ns, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            if create_missing {
                let mut obj = strip_directives(patch);
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                return self.create(t, ns, obj);
            }
            return Err(ApiError::not_found(t, name));
        };
        if !patch.is_object() {
            return Err(ApiError::bad_request("the patch is not a JSON object"));
        }
        if let Some(rv) = meta_str(&patch, "resourceVersion") {
            if Some(rv) != meta_str(&old, "resourceVersion") {
                return Err(ApiError::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", t.plural)));
            }
        }
        let mut obj = old.clone();
        merge(&mut obj, &strip_directives(patch));
        if meta_str(&obj, "name") != Some(name) {
            return Err(ApiError::bad_request("metadata.name: the patch may not change the name"));
        }
        check_identity(t, ns, &mut obj)?;
        self.store_update(t, key, old, obj)
    }

    /// DELETE: removes the object (a Namespace takes its objects with it, a CRD its type and
    /// objects) and returns it with the deletion's resourceVersion.
    pub fn delete(&mut self, t: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let key = Self::key(t, ns, name);
        if !self.objects.contains_key(&key) {
            return Err(ApiError::not_found(t, name));
        }
        if t.kind == "Namespace" {
            let inside: Vec<Key> = self.objects.keys().filter(|k| k.1 == name).cloned().collect();
            for k in inside {
                self.remove(k);
            }
        }
        if t.kind == "CustomResourceDefinition" {
            let obj = &self.objects[&key];
            if let Ok(gone) = types_of_crd(obj) {
                let ids: Vec<String> = gone.iter().map(ResourceType::id).collect();
                let objs: Vec<Key> = self.objects.keys().filter(|k| ids.contains(&k.0)).cloned().collect();
                for k in objs {
                    self.remove(k);
                }
                self.types.retain(|x| !gone.contains(x));
            }
        }
        let mut obj = self.remove(key).expect("checked above");
        obj["apiVersion"] = t.api_version().into();
        Ok(obj)
    }

    fn remove(&mut self, key: Key) -> Option<Value> {
        let mut obj = self.objects.remove(&key)?;
        let rv = self.next_rv();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("resourceVersion".into(), rv.to_string().into());
        }
        self.publish(Event { rv, type_id: key.0, kind: "DELETED", object: obj.clone() }, None);
        Some(obj)
    }
}

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Drops strategic-merge directives (`$patch`, `$setElementOrder/...`, `$retainKeys`, ...).
fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k, strip_directives(v))).collect()),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }
}
