//! The crate's one error type. Every variant names the object it failed on (file and field,
//! firewall and object, command) so the message alone leads to the cause.

use std::path::PathBuf;

/// Everything fw-sync can fail at.
#[derive(Debug, thiserror::Error)]
pub enum FwSyncError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },

    /// Bad configuration (daemon config or an AddressGroup document): nothing is applied.
    #[error("{file}: {field}: {message} (nothing applied)")]
    Config { file: String, field: String, message: String },

    /// The pods and namespaces in the datastore do not form a valid model.
    #[error("datastore {dir}: {source} (nothing applied)")]
    Model { dir: PathBuf, source: Box<policy_compiler::Error> },

    /// An external command (ipset, nft, ip) could not be started or failed.
    #[error("firewall {firewall}: `{command}` failed: {detail}")]
    Command { firewall: String, command: String, detail: String },

    /// An HTTP request to a firewall API failed at the transport (connect, TLS, timeout,
    /// reset) or was refused; `request` names it without credentials.
    #[error("firewall {firewall}: {request}: {detail}")]
    Http { firewall: String, request: String, detail: String },

    /// The firewall's state is not what fw-sync can manage (e.g. an owned set of another type).
    #[error("firewall {firewall}: {object}: {detail}")]
    Backend { firewall: String, object: String, detail: String },

    /// The metrics endpoint could not be served.
    #[error("metrics endpoint {addr}: {detail}")]
    Metrics { addr: String, detail: String },

    /// The Kubernetes API could not be read (or the Lease held).
    #[error(transparent)]
    Kubernetes(#[from] bulkhead_kube::KubeError),

    /// Watching the datastore folder failed.
    #[error("watching {path}: {detail}")]
    Watch { path: PathBuf, detail: String },
}

/// Short alias used throughout the crate.
pub type Result<T, E = FwSyncError> = std::result::Result<T, E>;
