//! The lab's error type.
use std::path::PathBuf;

/// Everything the lab's library API can fail with.
///
/// Messages name the file and field (for input errors) or the object and the errno (for
/// system errors), so a user can act on them without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An input file (topology, case, demo expectation) is well-formed YAML but semantically wrong.
    #[error("{file}: {field}: {message}")]
    Invalid {
        /// The file as given by the user.
        file: String,
        /// Path of the offending field, e.g. `pods[3].ip`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// An input file is not valid YAML or does not have the expected shape.
    #[error("{file}: {source}")]
    Yaml {
        /// The file as given by the user.
        file: String,
        /// The parser's error (carries line and column).
        #[source]
        source: serde_yaml::Error,
    },
    /// Reading or writing a file or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path that was being accessed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request (link, address, route) was refused, or could not be made.
    #[error("netns {netns}: {what}: {source}")]
    Netlink {
        /// The network namespace the request was for.
        netns: String,
        /// The step, naming its interface and address, e.g. `adding address 10.0.0.1/32 to eth0`.
        what: String,
        /// The kernel's errno (from the NACK) or the socket's error.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{context}: {source}")]
    Sys {
        /// What the lab was doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An echo server did not come up.
    #[error("echo server in netns {netns}: {message}")]
    Server {
        /// The pod's network namespace.
        netns: String,
        /// What went wrong.
        message: String,
    },
    /// The agent refused to start or to sync.
    #[error("agent: {0}")]
    Agent(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    pub(crate) fn invalid(file: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        LabError::Invalid { file: file.to_string(), field: field.into(), message: message.into() }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::Io { path: path.into(), source }
    }
}
