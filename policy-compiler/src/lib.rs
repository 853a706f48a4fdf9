//! Bulkhead policy compiler: turns a policy model (namespaces, pods, Kubernetes
//! NetworkPolicies) into the entries of Bulkhead's BPF maps, whose per-packet lookup cost does
//! not grow with the number of rules or pods.
//!
//! Pure library: no kernel, no Kubernetes client, no async.
//!
//! - [`model`]: the domain model the compiler works on.
//! - [`k8s`]: Kubernetes YAML -> model, with precise errors.
//! - [`compile`]: model -> map entries ([`Compiler`], [`Compiled`]).
//! - [`diff`](mod@diff): what changed between two compiles.
//! - [`lookup`]: the datapath algorithm run on compiled maps.
//! - [`knp`]: Kubernetes NetworkPolicy -> tiered policy.
//! - [`explain`]: why a connection is allowed, from the compiled maps.
//! - [`reference`]: plain evaluators of upstream and tiered semantics, the oracles for tests.

mod classes;
mod fasthash;
mod grouping;
pub mod compile;
pub mod diff;
pub mod error;
pub mod explain;
#[cfg(test)]
mod fixtures;
pub mod identity;
pub mod layout;
pub mod k8s;
pub mod knp;
pub mod lookup;
pub mod model;
mod pods;
pub mod portrange;
mod radix;
pub mod recommend;
pub mod reference;
mod reuse;
pub mod selector_parser;
pub mod tiered;
mod select;
mod verdicts;

pub use compile::{Compiled, Compiler, EndpointEntry, Limits, PeerSlot, PodSideUse, PolicyEntry, Scope, VerdictTable};
pub use diff::{CompiledDiff, MapDiff, diff};
pub use explain::{Decision, Explanation, explain};
pub use error::{CompileError, DocumentRef, Error, Origin};
pub use identity::IdentityAllocator;
pub use lookup::Endpoint;
pub use model::Model;
