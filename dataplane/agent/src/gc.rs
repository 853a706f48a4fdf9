//! Conntrack garbage collection: the LRU map evicts under pressure, this removes entries whose
//! timeout passed so the table reflects live flows.

use std::time::Duration;

use bulkhead_common::{CtKeyV2, map_names};

use crate::{error::AgentError, loader::Dataplane};

/// How often the agent sweeps.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Removes expired entries; returns how many.
pub fn sweep(dp: &mut Dataplane) -> Result<usize, AgentError> {
    let cfg = dp
        .maps
        .config
        .get(&0, 0)
        .map_err(|source| AgentError::Map { map: map_names::CONFIG, source })?;
    let now = crate::clock::coarse_ns();
    let expired: Vec<CtKeyV2> = dp
        .maps
        .conntrack
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.expired(&cfg, now))
        .map(|(k, _)| k)
        .collect();
    for k in &expired {
        let _ = dp.maps.conntrack.remove(k);
    }
    Ok(expired.len())
}
