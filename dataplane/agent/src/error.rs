//! The agent's error type.

use std::path::PathBuf;

/// Everything the agent can fail at, with the object it failed on.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("network namespace {name}: {source}")]
    Netns { name: String, source: std::io::Error },
    #[error("bpffs folder {path}: {source}")]
    PinDir { path: PathBuf, source: std::io::Error },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {program}: {source}")]
    Program { program: &'static str, source: aya::programs::ProgramError },
    #[error("eBPF map {map}: {detail}")]
    Map { map: &'static str, detail: String },
    #[error(transparent)]
    IfindexMap(#[from] crate::ifmap::IfindexMapError),
    #[error("interface {ifname}: {detail}")]
    Interface { ifname: String, detail: String },
    #[error("datastore {path}: {detail}")]
    Datastore { path: PathBuf, detail: String },
    #[error(transparent)]
    Kubernetes(#[from] bulkhead_kube::KubeError),
    /// Bad input in the datastore: nothing of it was applied, the enforced state is unchanged.
    #[error("{0} (nothing applied; the enforced policy is unchanged)")]
    Invalid(String),
    #[error("policy compiler: {0}")]
    Compile(String),
    #[error("detector: {0}")]
    Detector(String),
    #[error("agent instance {instance}: {detail}")]
    Instance { instance: String, detail: String },
    #[error("the agent thread stopped")]
    Stopped,
}
