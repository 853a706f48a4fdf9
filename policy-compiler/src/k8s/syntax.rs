//! Walking untyped YAML with field paths, and the Kubernetes name syntaxes.
//!
//! The YAML is walked by hand rather than deserialised into serde structs because error
//! messages must name the exact field path (`spec.ingress[0].ports[1].port`), which serde's
//! errors do not carry.

use serde_yaml::{Mapping, Value};

use crate::error::{DocumentRef, Error};

/// The document being read, for error messages.
pub(super) struct Doc<'a> {
    pub file: &'a str,
    pub doc: DocumentRef,
}

impl Doc<'_> {
    pub fn err(&self, path: &str, message: impl Into<String>) -> Error {
        Error::Invalid {
            file: self.file.to_string(),
            document: Box::new(self.doc.clone()),
            path: if path.is_empty() { "(document)".into() } else { path.to_string() },
            message: message.into(),
        }
    }

    pub fn map<'v>(&self, v: &'v Value, path: &str) -> Result<&'v Mapping, Error> {
        v.as_mapping().ok_or_else(|| self.err(path, format!("expected a mapping, found {}", kind_of(v))))
    }

    /// A mapping whose keys must all be in `allowed` (strict parts of the schema: a typo
    /// must be an error, not a silently ignored field).
    pub fn strict_map<'v>(&self, v: &'v Value, path: &str, allowed: &[&str]) -> Result<&'v Mapping, Error> {
        let m = self.map(v, path)?;
        for k in m.keys() {
            let Some(k) = k.as_str() else {
                return Err(self.err(path, format!("field names must be strings, found {}", kind_of(k))));
            };
            if !allowed.contains(&k) {
                return Err(self.err(&child(path, k), format!("unknown field (expected one of: {})", allowed.join(", "))));
            }
        }
        Ok(m)
    }

    pub fn str<'v>(&self, v: &'v Value, path: &str) -> Result<&'v str, Error> {
        v.as_str().ok_or_else(|| self.err(path, format!("expected a string, found {}", kind_of(v))))
    }

    pub fn seq<'v>(&self, v: &'v Value, path: &str) -> Result<&'v [Value], Error> {
        v.as_sequence().map(Vec::as_slice).ok_or_else(|| self.err(path, format!("expected a list, found {}", kind_of(v))))
    }

    pub fn int(&self, v: &Value, path: &str) -> Result<i64, Error> {
        v.as_i64().ok_or_else(|| self.err(path, format!("expected an integer, found {}", kind_of(v))))
    }

    /// A port number, 1..=65535.
    pub fn port(&self, v: &Value, path: &str) -> Result<u16, Error> {
        let n = self.int(v, path)?;
        u16::try_from(n)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| self.err(path, format!("port {n} is out of range 1..=65535")))
    }

    /// A label map: string keys and values, both syntactically valid.
    pub fn labels(&self, v: &Value, path: &str) -> Result<crate::model::Labels, Error> {
        let m = self.map(v, path)?;
        let mut out = crate::model::Labels::new();
        for (k, val) in m {
            let k = self.str(k, path)?;
            let p = format!("{path}[{k:?}]");
            if let Some(problem) = label_key_problem(k) {
                return Err(self.err(&p, format!("invalid label key {k:?}: {problem}")));
            }
            let val = val.as_str().ok_or_else(|| {
                self.err(&p, format!("label values must be strings, found {} (quote it)", kind_of(val)))
            })?;
            if let Some(problem) = label_value_problem(val) {
                return Err(self.err(&p, format!("invalid label value {val:?}: {problem}")));
            }
            out.insert(k.to_string(), val.to_string());
        }
        Ok(out)
    }
}

/// `field` of mapping `m`; a `null` value counts as absent, as in Kubernetes.
pub(super) fn get<'v>(m: &'v Mapping, field: &str) -> Option<&'v Value> {
    m.get(field).filter(|v| !v.is_null())
}

pub(super) fn child(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_string() } else { format!("{path}.{field}") }
}

pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// Label name part / label value syntax: up to 63 characters, alphanumerics at both ends,
/// `-`, `_`, `.` inside.
fn qualified_part_problem(s: &str) -> Option<&'static str> {
    if s.len() > 63 {
        return Some("must be at most 63 characters");
    }
    if !s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.')) {
        return Some("only letters, digits, '-', '_' and '.' are allowed");
    }
    if !s.starts_with(alnum) || !s.ends_with(alnum) {
        return Some("must start and end with a letter or digit");
    }
    None
}

/// DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, alphanumerics at both ends, up to
/// 253 characters.
pub(super) fn dns_subdomain_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 253 {
        return Some("must be 1 to 253 characters");
    }
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !s.chars().all(|c| ok(c) || matches!(c, '-' | '.')) || !s.starts_with(ok) || !s.ends_with(ok) {
        return Some("must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit");
    }
    None
}

/// DNS-1123 label (namespace names): like a subdomain without dots, up to 63 characters.
pub(super) fn dns_label_problem(s: &str) -> Option<&'static str> {
    if s.len() > 63 || s.contains('.') {
        return Some("must be at most 63 characters without '.'");
    }
    dns_subdomain_problem(s)
}

pub(super) fn label_key_problem(key: &str) -> Option<&'static str> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if dns_subdomain_problem(prefix).is_some() {
                return Some("the prefix before '/' must be a DNS subdomain");
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Some("the name part must not be empty");
    }
    qualified_part_problem(name)
}

pub(super) fn label_value_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() { None } else { qualified_part_problem(value) }
}

/// IANA service name, the syntax of container port names: up to 15 lowercase alphanumerics
/// and `-`, at least one letter, no `-` at either end or twice in a row.
pub(super) fn port_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 15 {
        return Some("must be 1 to 15 characters");
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Some("only lowercase letters, digits and '-' are allowed");
    }
    if !name.chars().any(|c| c.is_ascii_lowercase()) {
        return Some("must contain at least one letter (write a numeric port without quotes)");
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Some("must not start or end with '-' or contain '--'");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_syntax() {
        for ok in ["app", "app.kubernetes.io/name", "a_b-c.d", "kubernetes.io/metadata.name", "A1"] {
            assert_eq!(label_key_problem(ok), None, "{ok} is a valid key");
        }
        for bad in ["", "-app", "app-", "a b", "Example.com/app", "x/", "/x", &"a".repeat(64)] {
            assert!(label_key_problem(bad).is_some(), "{bad:?} must be rejected as key");
        }
        assert_eq!(label_value_problem(""), None, "empty values are valid");
        assert!(label_value_problem("a b").is_some(), "spaces are invalid in values");
    }

    #[test]
    fn port_name_syntax() {
        for ok in ["http", "dns-tcp", "h2c", "a1"] {
            assert_eq!(port_name_problem(ok), None, "{ok} is a valid port name");
        }
        for bad in ["", "80", "ab cd", "HTTP", "-web", "web-", "a--b", "sixteen-chars-xx"] {
            assert!(port_name_problem(bad).is_some(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn dns_names() {
        assert_eq!(dns_label_problem("kube-system"), None);
        assert!(dns_label_problem("a.b").is_some(), "namespaces have no dots");
        assert_eq!(dns_subdomain_problem("a.b-c"), None);
        assert!(dns_subdomain_problem("Ab").is_some(), "uppercase is invalid");
    }
}
