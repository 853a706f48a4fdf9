//! The detector runtime's error type.

/// A failure of the detector runtime, with what it failed on.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    /// A map, program or link of the dataplane.
    #[error(transparent)]
    Dataplane(#[from] bulkhead_loader::DataplaneError),
    /// Bad input (a profile, a `DetectorPolicy`, a workload's cgroup): nothing of it was applied.
    #[error("{0} (nothing applied; the enforced policy is unchanged)")]
    Invalid(String),
    /// A workload or detector state that does not allow the request.
    #[error("detector: {0}")]
    State(String),
    #[error("interface {ifname}: {detail}")]
    Interface { ifname: String, detail: String },
    /// A detector thread could not be started.
    #[error("a detector thread could not start")]
    Stopped,
}

impl From<bulkhead_loader::ifmap::IfindexMapError> for DetectorError {
    fn from(e: bulkhead_loader::ifmap::IfindexMapError) -> Self {
        DetectorError::Dataplane(e.into())
    }
}
