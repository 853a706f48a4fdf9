//! Bulkhead's syscall-behaviour model, as the agent runs it: a per-workload model of normal
//! syscall sequences that scores a stream online in bounded memory.
//!
//! The model's input is a stream of syscall numbers per thread of a workload (in the agent,
//! from the syscall probe's sequence ring, see `bulkhead_agent::detect::sequence`). The
//! model is sequence covering ([`cover`]): its learned state is a [`CoverProfile`] (the
//! workload's normal sequences) that can be exported to YAML, edited and re-imported; a
//! [`CoverScorer`] scores one stream online, and [`CoverProfile::step`] with a [`CoverCursor`]
//! lets a caller follow many streams without borrowing the profile. How it was chosen, and
//! the alternatives it was measured against on ADFA-LD (STIDE, a variable-order Markov model,
//! a GRU), live in the evaluation crate `bulkhead-detector-eval`, which the product does not
//! link.

pub mod cover;
pub mod error;
pub mod streams;
#[doc(hidden)]
pub mod testdata;

pub use cover::{CoverCursor, CoverProfile, CoverScorer, CoverTrainer};
pub use error::DetectorError;

/// Largest syscall number the model accepts; one slot value is reserved so that a packed
/// sequence's empty slots (0) never collide with a syscall.
pub const MAX_SYSCALL: u16 = u16::MAX - 1;
