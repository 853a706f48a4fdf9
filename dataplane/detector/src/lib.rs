//! Bulkhead's syscall-behaviour detector: a per-workload model of normal syscall sequences
//! that scores a stream online in bounded memory, the STIDE baseline, detection metrics, and
//! the evaluation of both on the public ADFA-LD dataset ([`run_adfa`]).
//!
//! The model's input is a stream of syscall numbers per thread of a workload (in the agent,
//! from the syscall probe's sequence ring, see `bulkhead_agent::detect::sequence`). The
//! project's model is sequence covering ([`cover`]): its learned state is a [`CoverProfile`]
//! (the workload's normal sequences) that can be exported to YAML, edited and re-imported; a
//! [`CoverScorer`] scores one stream online, and [`CoverProfile::step`] with a [`CoverCursor`]
//! lets a caller follow many streams without borrowing the profile. The earlier
//! variable-order Markov model ([`model`], [`Profile`]) is kept for comparison and for its
//! users, and a GRU language model ([`gru`]) as an evaluated alternative that did not beat
//! covering on ADFA-LD.

pub mod adfa;
pub mod cover;
pub mod dataset;
pub mod error;
pub mod gru;
pub mod metrics;
pub mod model;
mod ngram;
pub mod select;
pub mod stide;
#[cfg(test)]
mod testdata;

pub use adfa::{AdfaReport, run_adfa};
pub use cover::{CoverCursor, CoverProfile, CoverScorer, CoverTrainer};
pub use dataset::{AdfaDataset, Trace, read_adfa_zip};
pub use error::DetectorError;
pub use metrics::{RateAtFa, auc, rate_at_fa};
pub use model::{Profile, Scorer, Trainer};
pub use ngram::{MAX_GRAM, MAX_SYSCALL};
pub use select::{OrderSelection, select_order};
pub use stide::Stide;
