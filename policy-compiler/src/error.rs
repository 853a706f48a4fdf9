//! The crate's single error type. Every variant carries enough context (file, document,
//! field path, object name) for the message alone to lead a user to the offending line.

use std::fmt;

use crate::model::PodRef;

/// Where a resource came from: a file and a 1-based document index within it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub file: String,
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)
    }
}

/// A document as error messages name it: `document 2 (NetworkPolicy x/allow-b)`.
/// Kind, namespace and name are filled in as far as they could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocumentRef {
    /// 1-based index of the document in its file.
    pub index: usize,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for DocumentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.index)?;
        let Some(kind) = &self.kind else { return Ok(()) };
        write!(f, " ({kind}")?;
        match (&self.namespace, &self.name) {
            (Some(ns), Some(name)) => write!(f, " {ns}/{name}")?,
            (None, Some(name)) => write!(f, " {name}")?,
            _ => {}
        }
        f.write_str(")")
    }
}

/// Errors of parsing, model building and compiling.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The text is not YAML, or a document is not a mapping.
    #[error("{file}: document {document}: invalid YAML: {message}")]
    Yaml { file: String, document: usize, message: String },

    /// A well-formed resource of a kind the compiler does not handle.
    #[error("{file}: {document}: unsupported resource (apiVersion {api_version:?}, kind {kind:?})")]
    UnsupportedKind { file: String, document: Box<DocumentRef>, api_version: String, kind: String },

    /// A field has a wrong type or value.
    #[error("{file}: {document}: {path}: {message}")]
    Invalid { file: String, document: Box<DocumentRef>, path: String, message: String },

    /// The same object is defined twice.
    #[error("{kind} {name} is defined twice: {first} and {second}")]
    Duplicate { kind: &'static str, name: String, first: Origin, second: Origin },

    /// A pod in a namespace the model does not have.
    #[error("pod {pod}{}: namespace {namespace:?} does not exist", origin_suffix(.origin))]
    MissingNamespace { pod: PodRef, namespace: String, origin: Option<Origin> },

    /// A tiered policy (Calico, staged, ANP, BANP) in a tier that is neither declared nor built in.
    #[error(
        "{policy} ({origin}): tier {tier:?} does not exist (declare a projectcalico.org/v3 Tier named {tier:?}; \
         built-in tiers: default, adminnetworkpolicy, baselineadminnetworkpolicy)"
    )]
    UnknownTier { policy: String, tier: String, origin: Origin },

    /// A namespaced policy in a tier that accepts only cluster-scoped policies (blast-radius guard).
    #[error(
        "{policy} ({origin}): tier {tier:?} accepts only cluster-scoped policies (annotation \
         bulkhead.io/cluster-scoped-only: \"true\"), but this policy is namespaced; use a GlobalNetworkPolicy \
         or another tier"
    )]
    NamespacedPolicyInClusterTier { policy: String, tier: String, origin: Origin },

    /// A namespaced tiered policy (Calico NetworkPolicy, StagedNetworkPolicy) in a namespace the
    /// model does not have.
    #[error("{policy} ({origin}): namespace {namespace:?} does not exist")]
    MissingPolicyNamespace { policy: String, namespace: String, origin: Origin },

    /// A model map key that disagrees with the object stored under it.
    #[error("model inconsistency: {what} stored under key {key} calls itself {actual}")]
    InconsistentModel { what: &'static str, key: String, actual: String },
}

/// What [`crate::Compiler::compile`] returns on failure (the crate has one error type).
pub type CompileError = Error;

fn origin_suffix(origin: &Option<Origin>) -> String {
    origin.as_ref().map(|o| format!(" ({o})")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ref_names_what_is_known() {
        let mut d = DocumentRef { index: 2, ..Default::default() };
        assert_eq!(d.to_string(), "document 2");
        d.kind = Some("NetworkPolicy".into());
        assert_eq!(d.to_string(), "document 2 (NetworkPolicy)");
        d.namespace = Some("x".into());
        d.name = Some("allow-b".into());
        assert_eq!(d.to_string(), "document 2 (NetworkPolicy x/allow-b)");
    }
}
