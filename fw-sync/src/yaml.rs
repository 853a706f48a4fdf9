//! Path-aware reading of YAML values, so every config error names the file and the field
//! (`spec.targets[1].kind`) rather than a line of serde's internals.

use serde_yaml::{Mapping, Value};

use crate::error::FwSyncError;

/// Where the value being read came from: the file and, for multi-document files, which one.
pub(crate) struct Ctx {
    /// File name as shown to the user, with ": document N (Kind name)" appended when known.
    pub(crate) place: String,
}

impl Ctx {
    pub(crate) fn new(place: impl Into<String>) -> Self {
        Ctx { place: place.into() }
    }

    pub(crate) fn err(&self, field: &str, message: impl Into<String>) -> FwSyncError {
        FwSyncError::Config { file: self.place.clone(), field: field.to_string(), message: message.into() }
    }

    pub(crate) fn map<'a>(&self, v: &'a Value, field: &str) -> Result<&'a Mapping, FwSyncError> {
        v.as_mapping().ok_or_else(|| self.err(field, format!("expected a mapping, found {}", kind_of(v))))
    }

    /// A mapping whose keys must all be in `allowed`: a typo is an error, never ignored.
    pub(crate) fn strict_map<'a>(&self, v: &'a Value, field: &str, allowed: &[&str]) -> Result<&'a Mapping, FwSyncError> {
        let m = self.map(v, field)?;
        for k in m.keys() {
            let Some(k) = k.as_str() else {
                return Err(self.err(field, format!("keys must be strings, found {}", kind_of(k))));
            };
            if !allowed.contains(&k) {
                return Err(self.err(&child(field, k), format!("unknown field (expected one of: {})", allowed.join(", "))));
            }
        }
        Ok(m)
    }

    pub(crate) fn str<'a>(&self, v: &'a Value, field: &str) -> Result<&'a str, FwSyncError> {
        v.as_str().ok_or_else(|| self.err(field, format!("expected a string, found {}", kind_of(v))))
    }

    pub(crate) fn seq<'a>(&self, v: &'a Value, field: &str) -> Result<&'a [Value], FwSyncError> {
        v.as_sequence().map(Vec::as_slice).ok_or_else(|| self.err(field, format!("expected a list, found {}", kind_of(v))))
    }

    pub(crate) fn required<'a>(&self, m: &'a Mapping, parent: &str, key: &str) -> Result<&'a Value, FwSyncError> {
        get(m, key).ok_or_else(|| self.err(&child(parent, key), "required"))
    }
}

pub(crate) fn get<'a>(m: &'a Mapping, key: &str) -> Option<&'a Value> {
    m.get(Value::String(key.to_string()))
}

/// `parent.key`, or `key` at the top.
pub(crate) fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
