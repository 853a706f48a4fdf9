//! CustomResourceDefinitions for the non-core kinds the agent reads, so a cluster (or the
//! API-server emulator) serves them. `deploy/crds/` holds their YAML, written by
//! `bulkhead crds` and checked for staleness by a test.
//!
//! Bulkhead's own kinds carry the schema derived from the Rust types that read them; the
//! Calico and AdminNetworkPolicy kinds are served with an open `spec` (Bulkhead's parser
//! checks them strictly and reports a bad object by namespace/name and field, leaving the rest
//! of the policy in force). Clusters that already run Calico's API server or the upstream
//! AdminNetworkPolicy CRDs keep theirs.

use serde_json::{Value, json};

use crate::kubernetes::WATCHED;

/// A CRD serving one kind at one version.
pub fn crd(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool, spec_schema: Value) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}"), "labels": {"app.kubernetes.io/part-of": "bulkhead"}},
        "spec": {
            "group": group,
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "names": {"plural": plural, "singular": kind.to_ascii_lowercase(), "kind": kind, "listKind": format!("{kind}List")},
            "versions": [{
                "name": version, "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                    },
                }},
            }],
        },
    })
}

/// Whether a kind is namespaced (the cluster-scoped policy kinds are not).
fn namespaced(kind: &str) -> bool {
    !matches!(kind, "Namespace" | "Tier" | "GlobalNetworkPolicy" | "StagedGlobalNetworkPolicy" | "AdminNetworkPolicy" | "BaselineAdminNetworkPolicy")
}

/// The CRDs of every non-built-in kind the agent watches.
pub fn agent_crds() -> Vec<Value> {
    WATCHED
        .iter()
        .filter(|k| !matches!(k.group, "" | "networking.k8s.io"))
        .map(|k| {
            let schema = if k.kind == "DetectorPolicy" {
                crate::detect::policy::spec_schema()
            } else {
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
            };
            crd(k.group, k.version, k.kind, k.plural, namespaced(k.kind), schema)
        })
        .collect()
}

/// Makes a schemars schema structural, as Kubernetes requires of a CRD: references inlined,
/// definitions and JSON-Schema-only keywords dropped, `additionalProperties: false` removed
/// beside `properties` (the two are exclusive in a structural schema; unknown fields are
/// pruned by the API server and refused by Bulkhead's parser).
pub fn structural(v: &mut Value) {
    let defs = v
        .get("components")
        .and_then(|c| c.get("schemas"))
        .or_else(|| v.get("$defs"))
        .or_else(|| v.get("definitions"))
        .cloned()
        .unwrap_or(Value::Null);
    fn walk(v: &mut Value, defs: &Value, depth: usize) {
        if depth > 32 {
            return;
        }
        if let Some(o) = v.as_object_mut() {
            if let Some(r) = o.get("$ref").and_then(Value::as_str).map(str::to_string) {
                let name = r.rsplit('/').next().unwrap_or("");
                let mut target = defs.get(name).cloned().unwrap_or_else(|| json!({}));
                o.remove("$ref");
                if let Some(t) = target.as_object_mut() {
                    for (k, val) in std::mem::take(o) {
                        t.insert(k, val);
                    }
                }
                *v = target;
                walk(v, defs, depth + 1);
                return;
            }
            // A lone `allOf: [{$ref}]` (how schemars wraps a described reference) is the reference.
            if let Some(all) = o.remove("allOf") {
                if let Some([one]) = all.as_array().map(Vec::as_slice) {
                    if let Some(t) = one.as_object() {
                        for (k, val) in t {
                            o.entry(k.clone()).or_insert(val.clone());
                        }
                    }
                } else {
                    o.insert("allOf".into(), all);
                }
                walk(v, defs, depth + 1);
                return;
            }
            for k in ["$schema", "title", "components", "$defs", "definitions", "examples"] {
                o.remove(k);
            }
            // Kubernetes' dialect of OpenAPI v3: one type plus `nullable`, `enum` not `const`,
            // no null defaults, only its own integer formats.
            if let Some(Value::Array(types)) = o.get("type").cloned() {
                let real: Vec<&Value> = types.iter().filter(|t| t.as_str() != Some("null")).collect();
                if real.len() == 1 {
                    o.insert("type".into(), real[0].clone());
                }
                if real.len() < types.len() {
                    o.insert("nullable".into(), true.into());
                }
            }
            for key in ["anyOf", "oneOf"] {
                let Some(Value::Array(alts)) = o.get(key).cloned() else { continue };
                let is_null = |a: &Value| a.get("enum") == Some(&json!([null])) || a.get("type") == Some(&json!("null"));
                let rest: Vec<&Value> = alts.iter().filter(|a| !is_null(a)).collect();
                if rest.len() == 1 && rest.len() < alts.len() {
                    // `Option<T>`: T, nullable.
                    o.remove(key);
                    if let Some(t) = rest[0].as_object() {
                        for (k, val) in t {
                            o.entry(k.clone()).or_insert(val.clone());
                        }
                    }
                    o.insert("nullable".into(), true.into());
                } else if !rest.is_empty() && rest.iter().all(|a| a.get("const").is_some()) {
                    // A unit enum with documented variants: a string enum.
                    o.remove(key);
                    o.insert("enum".into(), Value::Array(rest.iter().filter_map(|a| a.get("const").cloned()).collect()));
                    if let Some(t) = rest[0].get("type") {
                        o.insert("type".into(), t.clone());
                    }
                }
            }
            if o.contains_key("$ref") {
                // An `Option<T>` just unwrapped to a reference.
                walk(v, defs, depth + 1);
                return;
            }
            if let Some(c) = o.remove("const") {
                o.insert("enum".into(), json!([c]));
            }
            if o.get("default") == Some(&Value::Null) {
                o.remove("default");
            }
            if o.get("format").and_then(Value::as_str).is_some_and(|f| !matches!(f, "int32" | "int64" | "float" | "double" | "byte" | "date" | "date-time" | "ipv4" | "ipv6" | "cidr")) {
                o.remove("format");
            }
            if o.contains_key("properties") && o.get("additionalProperties") == Some(&Value::Bool(false)) {
                o.remove("additionalProperties");
            }
            for (_, val) in o.iter_mut() {
                walk(val, defs, depth + 1);
            }
        } else if let Some(a) = v.as_array_mut() {
            for x in a {
                walk(x, defs, depth + 1);
            }
        }
    }
    walk(v, &defs, 0);
}
