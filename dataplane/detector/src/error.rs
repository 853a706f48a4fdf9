//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading data, building a profile or evaluating it.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    /// The dataset archive could not be opened or read as a zip.
    #[error("cannot read dataset archive {path}: {reason}")]
    Archive { path: PathBuf, reason: String },
    /// One trace file inside the archive is not a whitespace-separated list of syscall numbers.
    #[error(
        "bad trace {file} in {archive}: token {token:?} at position {position} is not a syscall number (0..={max})"
    )]
    BadTrace {
        archive: PathBuf,
        file: String,
        position: usize,
        token: String,
        max: u16,
    },
    /// A trace file inside the archive could not be decompressed or is not UTF-8.
    #[error("cannot read trace {file} in {archive}: {reason}")]
    TraceRead {
        archive: PathBuf,
        file: String,
        reason: String,
    },
    /// A part of the dataset that the evaluation needs has no traces.
    #[error("dataset {archive} has no traces under {folder}/")]
    MissingPart {
        archive: PathBuf,
        folder: &'static str,
    },
    /// A profile (typically edited YAML) is inconsistent.
    #[error("invalid profile: {field}: {reason}")]
    InvalidProfile { field: String, reason: String },
    /// Model parameters given to a constructor are out of range.
    #[error("invalid parameter {name} = {value}: {reason}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    /// YAML export or import failed.
    #[error("profile YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// A metric was asked of an empty score set.
    #[error("metric {metric} needs at least one {class} score")]
    EmptyScores {
        metric: &'static str,
        class: &'static str,
    },
}
