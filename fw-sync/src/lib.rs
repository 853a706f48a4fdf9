//! fw-sync: keeps address groups on external firewalls in step with pod IPs, event-driven.
//!
//! - [`group`]: domain types (address groups, targets, firewall objects).
//! - [`crd`], [`config`]: the AddressGroup resource and the daemon config (wire formats).
//! - [`source`]: reads pods, namespaces and AddressGroups from the datastore folder;
//!   [`kube_source`] from the Kubernetes API.
//! - [`desired`], [`diff`]: desired state and what must change.
//! - [`quarantine`]: the quarantine group from the agents' Quarantines, and its statuses.
//! - [`backend`]: the [`backend::Backend`] trait and one module per firewall API.
//! - [`metrics`]: Prometheus metrics at `GET /metrics`.
//! - [`secret`]: credentials from files or the environment, never shown.
//! - [`engine`]: event and reconcile syncs; [`worker`]: a thread per firewall;
//!   [`daemon`]: the commands.

pub mod backend;
pub mod config;
pub mod crd;
pub mod daemon;
pub mod desired;
pub mod diff;
pub mod engine;
pub mod error;
pub mod group;
pub mod kube_source;
pub mod metrics;
pub mod quarantine;
pub mod secret;
pub mod source;
pub mod worker;
mod yaml;

pub use error::FwSyncError;
