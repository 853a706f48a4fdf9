//! The agent's error type.

use std::path::PathBuf;

pub use bulkhead_detector_runtime::DetectorError;
pub use bulkhead_loader::DataplaneError;

/// Everything the agent can fail at, with the object it failed on.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The kernel side: loading, pinning, attaching, reading or writing maps.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The detector runtime.
    #[error(transparent)]
    Detector(#[from] DetectorError),
    #[error("datastore {path}: {detail}")]
    Datastore { path: PathBuf, detail: String },
    #[error(transparent)]
    Kubernetes(#[from] bulkhead_kube::KubeError),
    /// Bad input in the datastore: nothing of it was applied, the enforced state is unchanged.
    #[error("{0} (nothing applied; the enforced policy is unchanged)")]
    Invalid(String),
    /// The compiler refused the model: nothing of it was applied.
    #[error("{0} (nothing applied; the enforced policy is unchanged)")]
    Policy(#[source] Box<policy_compiler::Error>),
    #[error("agent instance {instance}: {detail}")]
    Instance { instance: String, detail: String },
    #[error("the agent thread stopped")]
    Stopped,
}

impl From<bulkhead_loader::ifmap::IfindexMapError> for AgentError {
    fn from(e: bulkhead_loader::ifmap::IfindexMapError) -> Self {
        AgentError::Dataplane(e.into())
    }
}
