//! How Bulkhead's syscall model ([`bulkhead_detector::cover`]) was chosen and where it
//! stands: the evaluation on the public ADFA-LD dataset ([`run_adfa`]) with detection metrics,
//! and the alternatives measured against it: the STIDE baseline, the earlier variable-order
//! Markov model ([`model`], [`Profile`]) and a GRU language model ([`gru`]) that did not beat
//! covering. The product (`bulkhead`) does not link this crate; `bulkhead-adfa` runs the
//! evaluation.

pub mod adfa;
pub mod dataset;
pub mod gru;
pub mod learning;
pub mod metrics;
pub mod model;
mod ngram;
pub mod select;
pub mod stide;

pub use adfa::{AdfaReport, run_adfa};
pub use bulkhead_detector::{DetectorError, MAX_SYSCALL};
pub use learning::{LearningCurve, learning_curve};
pub use dataset::{AdfaDataset, Trace, read_adfa_zip};
pub use metrics::{RateAtFa, auc, rate_at_fa};
pub use model::{Profile, Scorer, Trainer};
pub use ngram::MAX_GRAM;
pub use select::{OrderSelection, select_order};
pub use stide::Stide;
