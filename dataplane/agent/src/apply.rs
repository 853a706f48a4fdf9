//! Writes the compiler's output into the BPF maps: incrementally from a diff, or in full
//! against whatever the pinned maps hold (first sync after a start or after a failed write).

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::lpm_trie::Key;
use aya::maps::{LpmTrie, MapData};
use bulkhead_common::{ConfigV1, EndpointV1, PolicyKeyV1, PolicyValueV2, map_names};
use policy_compiler::{
    compile::Compiled,
    diff::{CompiledDiff, MapDiff},
};

use crate::{error::AgentError, loader::{Dataplane, ipcache_key}};

fn werr(map: &'static str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Map { map, detail: e.to_string() }
}

/// How many map entries a sync wrote and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub upserts: usize,
    pub removals: usize,
}

/// Applies the IP cache, policy and staged parts of `diff`. Removals go first: during the
/// update a flow may be denied for a moment, never allowed by a rule that no longer exists.
pub fn apply_diff(dp: &mut Dataplane, diff: &CompiledDiff) -> Result<Written, AgentError> {
    let mut w = Written::default();
    apply_policy_diff(&mut dp.maps.staged, map_names::STAGED, &diff.staged, &mut w)?;
    apply_policy_diff(&mut dp.maps.policy, map_names::POLICY, &diff.policy, &mut w)?;
    for (addr, len) in &diff.ipcache.removals {
        dp.maps.ipcache.remove(&ipcache_key(*addr, *len)).map_err(|e| werr(map_names::IPCACHE, e))?;
        w.removals += 1;
    }
    for ((addr, len), v) in &diff.ipcache.upserts {
        dp.maps.ipcache.insert(&ipcache_key(*addr, *len), v, 0).map_err(|e| werr(map_names::IPCACHE, e))?;
        w.upserts += 1;
    }
    Ok(w)
}

/// Removals then upserts of one policy-layout map. Within a slice, a removed prefix and an
/// added one briefly coexist only as "less" policy, never more.
fn apply_policy_diff(
    map: &mut LpmTrie<MapData, PolicyKeyV1, PolicyValueV2>,
    name: &'static str,
    d: &MapDiff<(u32, PolicyKeyV1), PolicyValueV2>,
    w: &mut Written,
) -> Result<(), AgentError> {
    for (len, k) in &d.removals {
        map.remove(&Key::new(*len, *k)).map_err(|e| werr(name, e))?;
        w.removals += 1;
    }
    for ((len, k), v) in &d.upserts {
        map.insert(&Key::new(*len, *k), v, 0).map_err(|e| werr(name, e))?;
        w.upserts += 1;
    }
    Ok(())
}

/// Makes a policy-layout map hold exactly `desired`.
fn full_policy(
    map: &mut LpmTrie<MapData, PolicyKeyV1, PolicyValueV2>,
    name: &'static str,
    desired: &BTreeMap<(u32, PolicyKeyV1), PolicyValueV2>,
    w: &mut Written,
) -> Result<(), AgentError> {
    let stale: Vec<Key<PolicyKeyV1>> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !desired.contains_key(&(k.prefix_len(), k.data())))
        .collect();
    for k in stale {
        map.remove(&k).map_err(|e| werr(name, e))?;
        w.removals += 1;
    }
    for ((len, k), v) in desired {
        map.insert(&Key::new(*len, *k), v, 0).map_err(|e| werr(name, e))?;
        w.upserts += 1;
    }
    Ok(())
}

/// Makes the IP cache and policy maps hold exactly `desired`, whatever they held before.
pub fn apply_full(dp: &mut Dataplane, desired: &Compiled) -> Result<Written, AgentError> {
    let mut w = Written::default();
    full_policy(&mut dp.maps.staged, map_names::STAGED, &desired.staged, &mut w)?;
    full_policy(&mut dp.maps.policy, map_names::POLICY, &desired.policy, &mut w)?;
    let stale_ip: Vec<_> = dp
        .maps
        .ipcache
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            let a = std::net::Ipv4Addr::from(k.data().addr_be);
            !desired.ipcache.contains_key(&(a, k.prefix_len() as u8))
        })
        .collect();
    for k in stale_ip {
        dp.maps.ipcache.remove(&k).map_err(|e| werr(map_names::IPCACHE, e))?;
        w.removals += 1;
    }
    for ((addr, len), v) in &desired.ipcache {
        dp.maps.ipcache.insert(&ipcache_key(*addr, *len), v, 0).map_err(|e| werr(map_names::IPCACHE, e))?;
        w.upserts += 1;
    }
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
/// Keeps the timeouts already configured.
pub fn bump_revision(dp: &mut Dataplane) -> Result<u32, AgentError> {
    let cur = dp.maps.config.get(&0, 0).map_err(|e| werr(map_names::CONFIG, e))?;
    let base = if cur.tcp_established_timeout_ns == 0 { ConfigV1::with_default_timeouts(0) } else { cur };
    let next = ConfigV1 { policy_rev: cur.policy_rev.wrapping_add(1), ..base };
    dp.maps.config.set(0, next, 0).map_err(|e| werr(map_names::CONFIG, e))?;
    Ok(next.policy_rev)
}
