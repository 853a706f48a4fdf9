//! Where the agent reads the cluster's state from. The file datastore reads a folder of
//! Kubernetes-style YAML; a Kubernetes API datastore will implement the same trait.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use policy_compiler::model::Model;

use crate::{detect::policy::DetectorInput, error::AgentError};

/// A source of the policy model.
pub trait Datastore: Send {
    /// Reads the whole model. A bad document fails the whole read: nothing of it applies.
    fn load(&self) -> Result<Model, AgentError>;
    /// Cheap check whether the content may have changed since the last call.
    fn poll_changed(&mut self) -> bool;
    /// Human-readable location, for logs.
    fn describe(&self) -> String;
    /// The detector's documents: DetectorPolicies and pod cgroup annotations. A bad policy
    /// fails the whole read (and the sync: nothing applies).
    fn load_detector(&self) -> Result<DetectorInput, AgentError> {
        Ok(DetectorInput::default())
    }
}

/// A folder of `*.yaml` / `*.yml` files (searched recursively, in name order) holding
/// Namespaces, Pods and policies, several documents per file allowed.
pub struct FileDatastore {
    dir: PathBuf,
    last_fingerprint: Vec<(PathBuf, SystemTime, u64)>,
}

impl FileDatastore {
    /// A datastore over `dir`; the folder must exist.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, AgentError> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(AgentError::Datastore { path: dir, detail: "not a folder".into() });
        }
        Ok(FileDatastore { dir, last_fingerprint: Vec::new() })
    }

    fn files(&self) -> Result<Vec<PathBuf>, AgentError> {
        bulkhead_fswatch::yaml_files(&self.dir)
            .map_err(|(path, e)| AgentError::Datastore { path, detail: e.to_string() })
    }

    fn fingerprint(&self) -> Vec<(PathBuf, SystemTime, u64)> {
        let Ok(files) = self.files() else { return Vec::new() };
        files
            .into_iter()
            .filter_map(|p| {
                let m = std::fs::metadata(&p).ok()?;
                Some((p, m.modified().ok()?, m.len()))
            })
            .collect()
    }

    fn display_name(&self, p: &Path) -> String {
        p.strip_prefix(&self.dir).unwrap_or(p).display().to_string()
    }
}

impl Datastore for FileDatastore {
    fn load(&self) -> Result<Model, AgentError> {
        let mut resources = Vec::new();
        for p in self.files()? {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| AgentError::Datastore { path: p.clone(), detail: e.to_string() })?;
            let name = self.display_name(&p);
            let docs = policy_compiler::k8s::parse_documents(&name, &text)
                .map_err(|e| AgentError::Invalid(format!("{}: {e}", self.dir.display())))?;
            resources.extend(docs);
        }
        policy_compiler::k8s::build_model(resources)
            .map_err(|e| AgentError::Invalid(format!("{}: {e}", self.dir.display())))
    }

    fn poll_changed(&mut self) -> bool {
        let fp = self.fingerprint();
        if fp != self.last_fingerprint {
            self.last_fingerprint = fp;
            true
        } else {
            false
        }
    }

    fn describe(&self) -> String {
        format!("file datastore {}", self.dir.display())
    }

    fn load_detector(&self) -> Result<DetectorInput, AgentError> {
        let mut input = DetectorInput::default();
        for p in self.files()? {
            let text = std::fs::read_to_string(&p).map_err(|e| AgentError::Datastore { path: p.clone(), detail: e.to_string() })?;
            crate::detect::policy::parse_documents(&self.display_name(&p), &text, &mut input)
                .map_err(|e| AgentError::Invalid(format!("{}: {e}", self.dir.display())))?;
        }
        Ok(input)
    }
}
