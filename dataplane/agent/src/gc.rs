//! Conntrack garbage collection: the LRU map evicts under pressure, this removes entries whose
//! timeout passed so the table reflects live flows.

use std::os::fd::AsFd as _;
use std::time::Duration;

use aya::maps::IterableMap as _;
use bulkhead_common::{Ct6KeyV1, CtKeyV2, map_names};

use crate::{error::AgentError, loader::Dataplane};

/// How often the agent sweeps.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Removes expired entries; returns how many. Reads and deletes in batches
/// ([`crate::batch`]): a full table costs a few dozen syscalls, not two per entry.
pub fn sweep(dp: &mut Dataplane) -> Result<usize, AgentError> {
    let cfg = dp
        .maps
        .config
        .get(&0, 0)
        .map_err(|source| AgentError::Map { map: map_names::CONFIG, source })?;
    let now = crate::clock::coarse_ns();
    let entries = crate::batch::conntrack(&dp.maps.conntrack)?;
    let expired: Vec<CtKeyV2> = entries.into_iter().filter(|(_, v)| v.expired(&cfg, now)).map(|(k, _)| k).collect();
    let n = crate::batch::delete_all(dp.maps.conntrack.map().fd().as_fd(), &expired)
        .map_err(|source| AgentError::Io { what: "deleting expired conntrack entries in batches", source })?;
    let entries = crate::batch::conntrack(&dp.maps.conntrack6)?;
    let expired: Vec<Ct6KeyV1> = entries.into_iter().filter(|(_, v)| v.expired(&cfg, now)).map(|(k, _)| k).collect();
    let n6 = crate::batch::delete_all(dp.maps.conntrack6.map().fd().as_fd(), &expired)
        .map_err(|source| AgentError::Io { what: "deleting expired IPv6 conntrack entries in batches", source })?;
    Ok(n + n6)
}
