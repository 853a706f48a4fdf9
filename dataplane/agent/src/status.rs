//! Reads a running (or crashed) instance's state from its pins, without loading anything:
//! what `bulkhead status` prints.

use std::path::Path;

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use bulkhead_common::{
    GEN_DIRECTION_BIT, IpCacheKeyV1, IpInfoV3, IpSlot6V1, IpSlotV1, PeerKeyV2, PeerSliceV1, PolicyValueV2, PortKeyV1, generation, map_names,
};

use crate::error::{AgentError, DataplaneError};

/// A snapshot of one instance.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub endpoints: usize,
    /// Exact-address and prefix entries of the IP cache (the enforced generation).
    pub ipcache_entries: usize,
    /// Peer entries (one per peer slot and protocol of its table), the distinct table slices
    /// they carry, single-port and port-range exceptions (the enforced
    /// generation; the other one holds the previous or the next policy).
    pub policy_peers: usize,
    pub policy_slices: usize,
    pub policy_ports: usize,
    pub policy_ranges: usize,
    /// Tracked IPv4 flows.
    pub conntrack_entries: usize,
    /// Tracked IPv6 flows (their own map).
    pub conntrack6_entries: usize,
    pub policy_rev: u32,
    pub counters: Vec<(String, u64)>,
    /// Dropped packets by reason and direction (reasons with any drop only).
    pub drops: Vec<DropRow>,
}

/// Drops of one reason, by direction (relative to the pod).
#[derive(Debug, serde::Serialize)]
pub struct DropRow {
    pub reason: String,
    pub ingress: u64,
    pub egress: u64,
}

fn open(dir: &Path, name: &'static str) -> Result<Map, AgentError> {
    let data = MapData::from_pin(dir.join(name)).map_err(|source| DataplaneError::MapPin { map: name, path: dir.join(name), source })?;
    Ok(Map::from_map_data(data).map_err(|source| DataplaneError::Map { map: name, source })?)
}

fn merr(map: &'static str, source: aya::maps::MapError) -> AgentError {
    DataplaneError::Map { map, source }.into()
}

/// Per-policy counters of an instance, named from the policy table the agent wrote.
#[derive(Debug, serde::Serialize)]
pub struct PolicyStatsRow {
    pub policy: String,
    pub tier: String,
    pub staged: bool,
    pub allowed: u64,
    pub denied: u64,
    pub would_allow: u64,
    pub would_deny: u64,
}

impl PolicyStatsRow {
    /// A row from a policy table entry and its counts.
    pub fn new(p: &crate::PolicyTableEntry, c: bulkhead_common::PolicyStatsV1) -> Self {
        PolicyStatsRow {
            policy: p.name.clone(),
            tier: p.tier.clone(),
            staged: p.staged,
            allowed: c.allowed,
            denied: c.denied,
            would_allow: c.would_allow,
            would_deny: c.would_deny,
        }
    }
}

/// Reads per-policy counters from the pins under `dir` and names them with `table`.
pub fn policy_stats(dir: &Path, table: &crate::PolicyTable) -> Result<Vec<PolicyStatsRow>, AgentError> {
    let map: PerCpuArray<_, bulkhead_common::PolicyStatsV1> =
        PerCpuArray::try_from(open(dir, map_names::POLICY_STATS)?).map_err(|e| merr(map_names::POLICY_STATS, e))?;
    let counts = crate::loader::read_policy_stats(&map, table.policies.len() as u32)?;
    let mut by_index: std::collections::BTreeMap<u32, bulkhead_common::PolicyStatsV1> = counts.into_iter().collect();
    Ok(table
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| PolicyStatsRow::new(p, by_index.remove(&(i as u32)).unwrap_or_default()))
        .collect())
}

/// Reads the pinned maps under `dir`.
pub fn read(dir: &Path) -> Result<Status, AgentError> {
    let eps = crate::ifmap::EndpointMap::open_endpoints(dir)?;
    let peers: HashMap<_, bulkhead_common::PeerKeyV2, bulkhead_common::PeerSliceV1> =
        HashMap::try_from(open(dir, map_names::PEERS)?).map_err(|e| merr(map_names::PEERS, e))?;
    let ports: HashMap<_, PortKeyV1, PolicyValueV2> = HashMap::try_from(open(dir, map_names::PORTS)?).map_err(|e| merr(map_names::PORTS, e))?;
    let ranges: LpmTrie<_, PortKeyV1, PolicyValueV2> = LpmTrie::try_from(open(dir, map_names::RANGES)?).map_err(|e| merr(map_names::RANGES, e))?;
    let ct = crate::cttable::CtTable::<bulkhead_common::ct::CtSlotV1>::new(open(dir, map_names::CONNTRACK)?, map_names::CONNTRACK)?;
    let ct6 = crate::cttable::CtTable::<bulkhead_common::ct::Ct6SlotV1>::new(open(dir, map_names::CONNTRACK6)?, map_names::CONNTRACK6)?;
    let cfg: aya::maps::Array<_, bulkhead_common::ConfigV2> = aya::maps::Array::try_from(open(dir, map_names::CONFIG)?).map_err(|e| merr(map_names::CONFIG, e))?;
    let cnt: PerCpuArray<_, u64> = PerCpuArray::try_from(open(dir, map_names::COUNTERS)?).map_err(|e| merr(map_names::COUNTERS, e))?;
    let mut counters = Vec::new();
    for (i, name) in bulkhead_common::counters::NAMES.iter().enumerate() {
        let v = cnt.get(&(i as u32), 0).map_err(|e| merr(map_names::COUNTERS, e))?;
        counters.push((name.to_string(), v.iter().sum()));
    }
    let drops_map: PerCpuArray<_, u64> = PerCpuArray::try_from(open(dir, map_names::DROPS)?).map_err(|e| merr(map_names::DROPS, e))?;
    let mut drops = Vec::new();
    for (i, name) in bulkhead_common::counters::NAMES.iter().enumerate() {
        let sum = |slot: u32| -> Result<u64, AgentError> { Ok(drops_map.get(&slot, 0).map_err(|e| merr(map_names::DROPS, e))?.iter().sum()) };
        let (ingress, egress) = (sum(i as u32)?, sum(i as u32 + bulkhead_common::capacity::COUNTERS)?);
        if ingress + egress > 0 {
            drops.push(DropRow { reason: name.to_string(), ingress, egress });
        }
    }
    let policy_rev = cfg.get(&0, 0).map_err(|e| merr(map_names::CONFIG, e))?.policy_rev;
    let g = generation(policy_rev);
    let ipc: LpmTrie<_, IpCacheKeyV1, IpInfoV3> = LpmTrie::try_from(open(dir, map_names::IPCACHE[g])?).map_err(|e| merr(map_names::IPCACHE[g], e))?;
    let hosts: HashMap<_, [u8; 4], IpInfoV3> = HashMap::try_from(open(dir, map_names::IPHOST[g])?).map_err(|e| merr(map_names::IPHOST[g], e))?;
    let slots: Array<_, IpSlotV1> = Array::try_from(open(dir, map_names::IPSLOT[g])?).map_err(|e| merr(map_names::IPSLOT[g], e))?;
    let ipc6: LpmTrie<_, bulkhead_common::IpCache6KeyV1, IpInfoV3> =
        LpmTrie::try_from(open(dir, map_names::IPCACHE6[g])?).map_err(|e| merr(map_names::IPCACHE6[g], e))?;
    let hosts6: HashMap<_, [u8; 16], IpInfoV3> = HashMap::try_from(open(dir, map_names::IPHOST6[g])?).map_err(|e| merr(map_names::IPHOST6[g], e))?;
    let slots6: Array<_, IpSlot6V1> = Array::try_from(open(dir, map_names::IPSLOT6[g])?).map_err(|e| merr(map_names::IPSLOT6[g], e))?;
    let slotted = slots.iter().filter(|v| matches!(v, Ok(s) if s.flags != 0)).count()
        + slots6.iter().filter(|v| matches!(v, Ok(s) if s.flags != 0)).count();
    let of_gen = |direction: u8| usize::from(direction & GEN_DIRECTION_BIT != 0) == g;
    // The enforced generation's peer entries and port exceptions: its half of each slot
    // array, then the keys that spilled into the hash.
    let peer_slots: Array<_, bulkhead_common::slots::PeerSlotV1> =
        Array::try_from(open(dir, map_names::PEER_SLOTS)?).map_err(|e| merr(map_names::PEER_SLOTS, e))?;
    let port_slots: Array<_, bulkhead_common::slots::PortSlotV1> =
        Array::try_from(open(dir, map_names::PORT_SLOTS)?).map_err(|e| merr(map_names::PORT_SLOTS, e))?;
    let half = |per_gen: u32| g as u32 * per_gen..(g as u32 + 1) * per_gen;
    let mut peer_entries: Vec<(PeerKeyV2, PeerSliceV1)> = crate::batch::filled_slots(&peer_slots, half(bulkhead_common::slots::PEER_SLOTS), |v| v.flags)
        .into_iter()
        .map(|(_, v)| (v.key, v.value))
        .collect();
    peer_entries.extend(peers.iter().filter_map(Result::ok).filter(|(k, _)| of_gen(k.direction)));
    let port_entries = crate::batch::filled_slots(&port_slots, half(bulkhead_common::slots::PORT_SLOTS), |v| v.flags).len()
        + ports.keys().filter_map(Result::ok).filter(|k| of_gen(k.direction)).count();
    Ok(Status {
        pin_dir: dir.display().to_string(),
        endpoints: eps.ifindexes()?.len(),
        ipcache_entries: ipc.keys().count() + hosts.keys().count() + slotted + ipc6.keys().count() + hosts6.keys().count(),
        policy_peers: peer_entries.len(),
        // The tables' slices the peer entries carry, each counted once.
        policy_slices: peer_entries
            .iter()
            .map(|(k, v)| (v.table_be, k.direction & !GEN_DIRECTION_BIT, v.protocol))
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        policy_ports: port_entries,
        policy_ranges: ranges.keys().filter_map(Result::ok).filter(|k| of_gen(k.data().direction)).count(),
        conntrack_entries: ct.len(),
        conntrack6_entries: ct6.len(),
        policy_rev,
        counters,
        drops,
    })
}
