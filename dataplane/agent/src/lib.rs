//! The Bulkhead agent: loads the eBPF programs, attaches them to each pod's host-side veth and
//! keeps the BPF maps in step with the datastore.

pub mod agent;
pub mod apply;
pub mod btf;
mod batch;
pub mod clock;
mod compile;
pub mod crds;
pub mod datastore;
pub mod detect;
pub mod endpoints;
pub mod ifmap;
pub mod error;
pub mod flows;
pub mod gc;
pub mod instance;
pub mod kubernetes;
mod linkpin;
pub mod loader;
pub mod metrics;
pub mod netns;
#[cfg(test)]
mod object_check;
pub mod ring;
pub mod servicemap;
pub mod status;
pub mod uplink;

pub use agent::{Agent, AgentConfig, PolicyTable, PolicyTableEntry, SyncReport, UninstallReport, uninstall};
pub use error::AgentError;
