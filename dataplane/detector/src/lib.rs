//! Bulkhead's syscall-behaviour detector: a per-workload model of normal syscall sequences
//! that scores a stream online in bounded memory, the STIDE baseline, detection metrics, and
//! the evaluation of both on the public ADFA-LD dataset ([`run_adfa`]).
//!
//! The model's input is a stream of syscall numbers per workload (later fed by an eBPF probe
//! aggregating per cgroup); its learned state is a [`Profile`] that can be exported to YAML,
//! edited and re-imported.

pub mod adfa;
pub mod dataset;
pub mod error;
pub mod metrics;
pub mod model;
mod ngram;
pub mod select;
pub mod stide;

pub use adfa::{AdfaReport, run_adfa};
pub use dataset::{AdfaDataset, Trace, read_adfa_zip};
pub use error::DetectorError;
pub use metrics::{RateAtFa, auc, rate_at_fa};
pub use model::{Profile, Scorer, Trainer};
pub use ngram::{MAX_GRAM, MAX_SYSCALL};
pub use select::{OrderSelection, select_order};
pub use stide::Stide;
