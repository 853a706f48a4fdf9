//! JSON schemas for CustomResourceDefinitions.

use serde_json::{Value, json};

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
