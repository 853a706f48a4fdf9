//! Writes the compiler's output into the BPF maps: incrementally from the difference with
//! what was written last, or in full against whatever the pinned maps hold (first sync after a
//! start, or after a failed write).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::maps::lpm_trie::Key;
use bulkhead_common::{ConfigV1, EndpointV1, IpInfoV2, PolicyKeyV1, PolicyValueV2, SliceKeyV1, SliceValueV1, map_names};
use policy_compiler::{compile::Compiled, diff::diff_map, layout::PolicyLayout};

use crate::{
    error::AgentError,
    loader::{Dataplane, ipcache_key},
};

fn werr(map: &'static str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Map { map, detail: e.to_string() }
}

/// Everything the kernel's lookup maps hold, derived from one compile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    /// /32 entries (pods and single-address prefixes), hash.
    pub iphost: BTreeMap<[u8; 4], IpInfoV2>,
    /// Shorter prefixes, LPM.
    pub ipcache: BTreeMap<(Ipv4Addr, u8), IpInfoV2>,
    pub layout: PolicyLayout,
}

impl KernelState {
    /// Splits the compiled IP cache by prefix length and lays the policy out.
    pub fn of(c: &Compiled) -> Self {
        let mut s = KernelState { layout: policy_compiler::layout::layout(&c.policy, &c.staged), ..Default::default() };
        for ((addr, len), v) in &c.ipcache {
            if *len == 32 {
                s.iphost.insert(addr.octets(), *v);
            } else {
                s.ipcache.insert((*addr, *len), *v);
            }
        }
        s
    }
}

/// How many map entries a sync wrote and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub upserts: usize,
    pub removals: usize,
}

/// Applies the difference between `old` and `new`. Removals go first: during the update a flow
/// may be denied for a moment, never allowed by a rule that no longer exists. Slices are
/// written after their port exceptions, so a slice never points at exceptions not there yet.
pub fn apply_diff(dp: &mut Dataplane, old: &KernelState, new: &KernelState) -> Result<Written, AgentError> {
    let mut w = Written::default();
    let slices = diff_map(&old.layout.slices, &new.layout.slices);
    let ports = diff_map(&old.layout.ports, &new.layout.ports);
    let ranges = diff_map(&old.layout.ranges, &new.layout.ranges);
    let hosts = diff_map(&old.iphost, &new.iphost);
    let prefixes = diff_map(&old.ipcache, &new.ipcache);
    for k in &slices.removals {
        dp.maps.slices.remove(k).map_err(|e| werr(map_names::SLICES, e))?;
    }
    for k in &ports.removals {
        dp.maps.ports.remove(k).map_err(|e| werr(map_names::PORTS, e))?;
    }
    for (len, k) in &ranges.removals {
        dp.maps.ranges.remove(&Key::new(*len, *k)).map_err(|e| werr(map_names::RANGES, e))?;
    }
    for k in &hosts.removals {
        dp.maps.iphost.remove(k).map_err(|e| werr(map_names::IPHOST, e))?;
    }
    for (a, l) in &prefixes.removals {
        dp.maps.ipcache.remove(&ipcache_key(*a, *l)).map_err(|e| werr(map_names::IPCACHE, e))?;
    }
    w.removals = slices.removals.len() + ports.removals.len() + ranges.removals.len() + hosts.removals.len() + prefixes.removals.len();
    for (k, v) in &hosts.upserts {
        dp.maps.iphost.insert(k, v, 0).map_err(|e| werr(map_names::IPHOST, e))?;
    }
    for ((a, l), v) in &prefixes.upserts {
        dp.maps.ipcache.insert(&ipcache_key(*a, *l), v, 0).map_err(|e| werr(map_names::IPCACHE, e))?;
    }
    write_policy(dp, &ports.upserts, &ranges.upserts, &slices.upserts)?;
    w.upserts = slices.upserts.len() + ports.upserts.len() + ranges.upserts.len() + hosts.upserts.len() + prefixes.upserts.len();
    Ok(w)
}

fn write_policy(
    dp: &mut Dataplane,
    ports: &[(PolicyKeyV1, PolicyValueV2)],
    ranges: &[((u32, PolicyKeyV1), PolicyValueV2)],
    slices: &[(SliceKeyV1, SliceValueV1)],
) -> Result<(), AgentError> {
    for (k, v) in ports {
        dp.maps.ports.insert(k, v, 0).map_err(|e| werr(map_names::PORTS, e))?;
    }
    for ((len, k), v) in ranges {
        dp.maps.ranges.insert(&Key::new(*len, *k), v, 0).map_err(|e| werr(map_names::RANGES, e))?;
    }
    for (k, v) in slices {
        dp.maps.slices.insert(k, v, 0).map_err(|e| werr(map_names::SLICES, e))?;
    }
    Ok(())
}

/// Makes the lookup maps hold exactly `desired`, whatever they held before.
pub fn apply_full(dp: &mut Dataplane, desired: &KernelState) -> Result<Written, AgentError> {
    let mut w = Written::default();
    let stale: Vec<SliceKeyV1> = dp.maps.slices.keys().filter_map(Result::ok).filter(|k| !desired.layout.slices.contains_key(k)).collect();
    for k in &stale {
        dp.maps.slices.remove(k).map_err(|e| werr(map_names::SLICES, e))?;
    }
    w.removals += stale.len();
    let stale: Vec<PolicyKeyV1> = dp.maps.ports.keys().filter_map(Result::ok).filter(|k| !desired.layout.ports.contains_key(k)).collect();
    for k in &stale {
        dp.maps.ports.remove(k).map_err(|e| werr(map_names::PORTS, e))?;
    }
    w.removals += stale.len();
    let stale: Vec<Key<PolicyKeyV1>> = dp
        .maps
        .ranges
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !desired.layout.ranges.contains_key(&(k.prefix_len(), k.data())))
        .collect();
    for k in &stale {
        dp.maps.ranges.remove(k).map_err(|e| werr(map_names::RANGES, e))?;
    }
    w.removals += stale.len();
    let stale: Vec<[u8; 4]> = dp.maps.iphost.keys().filter_map(Result::ok).filter(|k| !desired.iphost.contains_key(k)).collect();
    for k in &stale {
        dp.maps.iphost.remove(k).map_err(|e| werr(map_names::IPHOST, e))?;
    }
    w.removals += stale.len();
    let stale: Vec<_> = dp
        .maps
        .ipcache
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !desired.ipcache.contains_key(&(Ipv4Addr::from(k.data().addr_be), k.prefix_len() as u8)))
        .collect();
    for k in &stale {
        dp.maps.ipcache.remove(k).map_err(|e| werr(map_names::IPCACHE, e))?;
    }
    w.removals += stale.len();
    for (k, v) in &desired.iphost {
        dp.maps.iphost.insert(k, v, 0).map_err(|e| werr(map_names::IPHOST, e))?;
    }
    for ((a, l), v) in &desired.ipcache {
        dp.maps.ipcache.insert(&ipcache_key(*a, *l), v, 0).map_err(|e| werr(map_names::IPCACHE, e))?;
    }
    let ports: Vec<_> = desired.layout.ports.iter().map(|(k, v)| (*k, *v)).collect();
    let ranges: Vec<_> = desired.layout.ranges.iter().map(|(k, v)| (*k, *v)).collect();
    let slices: Vec<_> = desired.layout.slices.iter().map(|(k, v)| (*k, *v)).collect();
    write_policy(dp, &ports, &ranges, &slices)?;
    w.upserts = desired.iphost.len() + desired.ipcache.len() + ports.len() + ranges.len() + slices.len();
    Ok(w)
}

/// Attaches programs to every local endpoint's interface and writes its endpoint entry;
/// detaches and forgets interfaces that are no longer endpoints. `written` is what the
/// endpoint map holds (ifindex -> value), kept by the caller. Interfaces that do not exist
/// yet are returned so the caller retries them.
pub fn sync_endpoints(
    dp: &mut Dataplane,
    desired: &Compiled,
    written: &mut BTreeMap<u32, (String, EndpointV1)>,
) -> Result<Vec<String>, AgentError> {
    let mut pending = Vec::new();
    let mut keep = BTreeSet::new();
    for ep in desired.endpoints.values() {
        let Some(ifname) = &ep.interface else { continue };
        let value = EndpointV1 { identity: ep.identity, ipv4_be: ep.ip.octets(), flags: ep.flags, _pad: 0 };
        let Some(ifindex) = crate::netns::ifindex(ifname) else {
            pending.push(ifname.clone());
            continue;
        };
        keep.insert(ifindex);
        if written.get(&ifindex).map(|(_, v)| v) != Some(&value) {
            // The entry goes in before the programs so the first packet finds it.
            dp.maps.endpoints.insert(ifindex, value, 0).map_err(|e| werr(map_names::ENDPOINTS, e))?;
            written.insert(ifindex, (ifname.clone(), value));
        }
        dp.attach(ifname)?;
    }
    let gone: Vec<u32> = written.keys().filter(|i| !keep.contains(i)).copied().collect();
    for ifindex in gone {
        if let Some((ifname, _)) = written.remove(&ifindex) {
            dp.detach(&ifname);
        }
        let _ = dp.maps.endpoints.remove(&ifindex);
    }
    Ok(pending)
}

/// Removes endpoint entries left by an earlier agent run whose interfaces are not endpoints
/// now (their indexes could be reused by new interfaces).
pub fn drop_stale_endpoints(dp: &mut Dataplane, written: &BTreeMap<u32, (String, EndpointV1)>) {
    let stale: Vec<u32> = dp.maps.endpoints.keys().filter_map(Result::ok).filter(|k| !written.contains_key(k)).collect();
    for k in stale {
        let _ = dp.maps.endpoints.remove(&k);
    }
}

/// Bumps the policy revision so established flows are judged again on their next packet.
/// Keeps the timeouts and flags already configured.
pub fn bump_revision(dp: &mut Dataplane) -> Result<u32, AgentError> {
    let cur = dp.maps.config.get(&0, 0).map_err(|e| werr(map_names::CONFIG, e))?;
    let base = if cur.tcp_established_timeout_ns == 0 { ConfigV1::with_default_timeouts(0) } else { cur };
    let next = ConfigV1 { policy_rev: cur.policy_rev.wrapping_add(1), ..base };
    dp.maps.config.set(0, next, 0).map_err(|e| werr(map_names::CONFIG, e))?;
    Ok(next.policy_rev)
}
