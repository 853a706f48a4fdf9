//! The Bulkhead agent: loads the eBPF programs, attaches them to each pod's host-side veth and
//! keeps the BPF maps in step with the datastore.

pub mod agent;
pub mod apply;
mod compile;
pub mod crds;
pub mod datastore;
pub mod endpoints;
pub mod error;
pub mod flows;
pub mod gc;
pub mod instance;
pub mod kubernetes;
pub mod metrics;
pub mod servicemap;
pub mod status;

// The layers below the agent, under the paths the agent and its users have always used.
pub use bulkhead_detector_runtime as detect;
pub use bulkhead_loader::{batch, btf, clock, cttable, ifmap, loader, netns, ring, uplink};

pub use agent::{Agent, AgentConfig, PolicyTable, PolicyTableEntry, SyncReport, UninstallReport, uninstall};
pub use error::AgentError;
