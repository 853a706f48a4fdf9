//! The conformance case format (FORMAT.md): a topology name and steps.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{LabError, Result};
use crate::matrix::{Expect, pattern_is_valid};
use crate::topology::Protocol;

/// A probe's port: a number, or a container-port name resolved on the destination pod.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A number.
    Number(u16),
    /// A name.
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// A resource to delete.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteRef {
    /// Kind (e.g. `NetworkPolicy`).
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace; omitted for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// Optional apiVersion to disambiguate kinds with the same name in two groups.
    pub api_version: Option<String>,
}

/// What a `label` step relabels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelTarget {
    /// A pod, `namespace/name`.
    Pod(String),
    /// A namespace.
    Namespace(String),
}

/// One step of a case.
#[derive(Debug, Clone)]
pub enum Step {
    /// Create or replace every document.
    Apply(String),
    /// Delete resources.
    Delete(Vec<DeleteRef>),
    /// Set and remove labels.
    Label {
        /// Pod or namespace.
        target: LabelTarget,
        /// Labels to set.
        set: BTreeMap<String, String>,
        /// Labels to remove.
        remove: Vec<String>,
    },
    /// Probe every ordered pair and compare with `expect`.
    Probe {
        /// Port.
        port: PortRef,
        /// Protocol.
        protocol: Protocol,
        /// `family: IPv6`: probe between the pods' IPv6 addresses; pairs where either pod has
        /// none are not probed.
        ipv6: bool,
        /// Expected matrix.
        expect: Expect,
    },
}

/// A parsed case.
#[derive(Debug, Clone)]
pub struct Case {
    /// `name:`.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Name of the topology (a `<name>.yaml` beside the case).
    pub topology: String,
    /// Steps in order.
    pub steps: Vec<Step>,
}

#[derive(Deserialize)]
struct RawCase {
    kind: String,
    name: String,
    topology: String,
    #[serde(default)]
    steps: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    apply: Option<String>,
    delete: Option<Vec<DeleteRef>>,
    label: Option<RawLabel>,
    probe: Option<RawProbe>,
    expect: Option<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    pod: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
struct RawProbe {
    port: PortRef,
    protocol: Option<String>,
    family: Option<String>,
}

impl Case {
    /// Whether a YAML file declares `kind: Case` (cheap check used when scanning folders).
    pub fn is_case_file(text: &str) -> bool {
        text.lines().any(|l| l.trim_end() == "kind: Case")
    }

    /// Reads and validates a case file.
    pub fn load(path: &Path) -> Result<Case> {
        let text = std::fs::read_to_string(path).map_err(|e| LabError::io(path, e))?;
        Case::parse(&text, path)
    }

    /// Parses case text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Case> {
        let file = path.display().to_string();
        let raw: RawCase = serde_yaml::from_str(text).map_err(|source| LabError::Yaml { file: file.clone(), source })?;
        if raw.kind != "Case" {
            return Err(LabError::invalid(&file, "kind", format!("{:?} is not \"Case\"", raw.kind)));
        }
        let mut steps = Vec::new();
        for (i, s) in raw.steps.into_iter().enumerate() {
            let at = |f: &str| format!("steps[{i}].{f}");
            let n = [s.apply.is_some(), s.delete.is_some(), s.label.is_some(), s.probe.is_some()].iter().filter(|b| **b).count();
            if n != 1 {
                return Err(LabError::invalid(&file, format!("steps[{i}]"), "needs exactly one of apply, delete, label, probe"));
            }
            let step = if let Some(a) = s.apply {
                for (d, doc) in documents(&a).map_err(|e| LabError::invalid(&file, at("apply"), e))?.iter().enumerate() {
                    type_of(doc).map_err(|e| LabError::invalid(&file, format!("steps[{i}].apply[{d}]"), e))?;
                }
                Step::Apply(a)
            } else if let Some(d) = s.delete {
                Step::Delete(d)
            } else if let Some(l) = s.label {
                let target = match (l.pod, l.namespace) {
                    (Some(p), None) if p.contains('/') => LabelTarget::Pod(p),
                    (Some(p), None) => return Err(LabError::invalid(&file, at("label.pod"), format!("{p:?} is not namespace/name"))),
                    (None, Some(ns)) => LabelTarget::Namespace(ns),
                    _ => return Err(LabError::invalid(&file, at("label"), "needs exactly one of pod, namespace")),
                };
                Step::Label { target, set: l.set, remove: l.remove }
            } else {
                let p = s.probe.unwrap();
                let proto_s = p.protocol.unwrap_or_else(|| "TCP".into());
                let protocol = Protocol::parse(&proto_s)
                    .ok_or_else(|| LabError::invalid(&file, at("probe.protocol"), format!("{proto_s:?} is not TCP or UDP")))?;
                let ipv6 = match p.family.as_deref() {
                    None | Some("IPv4") => false,
                    Some("IPv6") => true,
                    Some(f) => return Err(LabError::invalid(&file, at("probe.family"), format!("{f:?} is not IPv4 or IPv6"))),
                };
                let expect = s.expect.ok_or_else(|| LabError::invalid(&file, at("expect"), "missing"))?;
                for (r, rule) in expect.rules.iter().enumerate() {
                    for (fname, pat) in [("from", &rule.from), ("to", &rule.to)] {
                        if !pattern_is_valid(pat) {
                            return Err(LabError::invalid(&file, format!("steps[{i}].expect.rules[{r}].{fname}"), format!("{pat:?} is not *, ns/* or ns/pod")));
                        }
                    }
                }
                Step::Probe { port: p.port, protocol, ipv6, expect }
            };
            steps.push(step);
        }
        Ok(Case { name: raw.name, file: path.to_path_buf(), topology: raw.topology, steps })
    }

    /// Every `(apiVersion, kind)` the case applies, in order, without duplicates.
    pub fn applied_types(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for s in &self.steps {
            if let Step::Apply(text) = s {
                for doc in documents(text).unwrap_or_default() {
                    if let Ok(t) = type_of(&doc)
                        && !out.contains(&t)
                    {
                        out.push(t);
                    }
                }
            }
        }
        out
    }
}

/// Splits multi-document YAML into values, skipping empty documents.
pub fn documents(text: &str) -> std::result::Result<Vec<serde_yaml::Value>, String> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml::Value::deserialize(de).map_err(|e| format!("document {i}: {e}"))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// `(apiVersion, kind)` of a document.
pub fn type_of(doc: &serde_yaml::Value) -> std::result::Result<(String, String), String> {
    let get = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string).ok_or_else(|| format!("missing {k}"));
    Ok((get("apiVersion")?, get("kind")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_step_kinds() {
        let text = r#"
kind: Case
name: c
topology: standard
steps:
  - apply: |
      apiVersion: networking.k8s.io/v1
      kind: NetworkPolicy
      metadata: {name: p, namespace: x}
      ---
      apiVersion: projectcalico.org/v3
      kind: Tier
      metadata: {name: t}
  - delete: [{kind: NetworkPolicy, name: p, namespace: x}]
  - label: {namespace: "y", set: {a: b}}
  - probe: {port: serve-80-tcp, protocol: TCP}
    expect: {default: allow, rules: [{from: "x/*", to: "y/a", verdict: deny}]}
"#;
        let c = Case::parse(text, Path::new("c.yaml")).unwrap();
        assert_eq!(c.steps.len(), 4);
        assert!(matches!(&c.steps[3], Step::Probe { port: PortRef::Name(n), .. } if n == "serve-80-tcp"));
        assert_eq!(c.applied_types().len(), 2);
    }

    #[test]
    fn bad_pattern_is_named() {
        let text = "kind: Case\nname: c\ntopology: t\nsteps:\n  - probe: {port: 80}\n    expect: {default: allow, rules: [{from: 'x*', to: '*', verdict: deny}]}\n";
        let e = Case::parse(text, Path::new("c.yaml")).unwrap_err().to_string();
        assert!(e.starts_with("c.yaml: steps[0].expect.rules[0].from"), "{e}");
    }
}
