//! Conntrack garbage collection: the LRU map evicts under pressure, this removes entries whose
//! timeout passed so the table reflects live flows.

use std::time::Duration;

use bulkhead_common::{CtKeyV1, map_names};

use crate::{error::AgentError, loader::Dataplane};

/// How often the agent sweeps.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock `bpf_ktime_get_coarse_ns` reads, which
/// the datapath stamps conntrack entries with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Removes expired entries; returns how many.
pub fn sweep(dp: &mut Dataplane) -> Result<usize, AgentError> {
    let cfg = dp
        .maps
        .config
        .get(&0, 0)
        .map_err(|e| AgentError::Map { map: map_names::CONFIG, detail: e.to_string() })?;
    let now = monotonic_ns();
    let expired: Vec<CtKeyV1> = dp
        .maps
        .conntrack
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| {
            let timeout = match v.protocol {
                bulkhead_common::proto::TCP => {
                    if v.flags & bulkhead_common::ct_flags::CLOSING != 0
                        || v.flags & bulkhead_common::ct_flags::SEEN_REPLY == 0
                    {
                        cfg.tcp_short_timeout_ns
                    } else {
                        cfg.tcp_established_timeout_ns
                    }
                }
                bulkhead_common::proto::ICMP => cfg.icmp_timeout_ns,
                _ => cfg.udp_timeout_ns,
            };
            now.saturating_sub(v.last_seen_ns) > timeout
        })
        .map(|(k, _)| k)
        .collect();
    for k in &expired {
        let _ = dp.maps.conntrack.remove(k);
    }
    Ok(expired.len())
}
