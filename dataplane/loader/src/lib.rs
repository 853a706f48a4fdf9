//! The kernel side of Bulkhead as user space sees it: the eBPF object built from
//! dataplane-ebpf and embedded here, its pinned maps ([`loader::Dataplane`]), attaching and
//! detaching its programs (pods' tcx links, the XDP pre-filter, the uplink filter, the
//! detector's tracepoints), batched map reads, ring readers and the kernel clock.
//!
//! The agent (policy, endpoints) and the detector runtime both build on this crate; neither
//! depends on the other for it.

pub mod batch;
pub mod btf;
pub mod clock;
pub mod cttable;
pub mod error;
pub mod ifmap;
pub mod linkpin;
pub mod loader;
pub mod netns;
#[cfg(test)]
mod object_check;
pub mod ring;
pub mod uplink;

pub use error::DataplaneError;
pub use loader::Dataplane;
