//! Writes the compiler's output into the BPF maps. Lookup entries and endpoint identities exist
//! in two generations ([`bulkhead_common::GEN_DIRECTION_BIT`]): a sync writes the inactive one
//! (the difference from what it held, or in full when unknown), then flips the policy revision
//! in one map write, so no packet is ever judged by a mix of two policies.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::lpm_trie::Key;
use bulkhead_common::{
    ConfigV2, EndpointV4, GEN_DIRECTION_BIT, IpInfoV3, IpSlot6V1, IpSlotV1, PeerKeyV2, PeerSliceV1, PolicyValueV2, PortKeyV1, SliceKeyV2,
    SliceValueV2, ep_flags, ip_slot_flags, map_names, proto, slice_flags,
    slots::{self, PeerSlotV1, PortSlotV1},
};
use policy_compiler::{compile::Compiled, diff::diff_map, layout::PolicyLayout};

use crate::{
    error::{AgentError, DataplaneError},
    loader::{Dataplane, ipcache_key, ipcache6_key},
};

fn werr(map: &'static str, source: aya::maps::MapError) -> AgentError {
    DataplaneError::Map { map, source }.into()
}

/// Everything the kernel's lookup maps hold, derived from one compile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    /// /32 entries (pods and single-address prefixes) whose slot holds another address, hash.
    pub iphost: BTreeMap<[u8; 4], IpInfoV3>,
    /// /32 entries in the direct-mapped array, by slot: the lowest address of each slot.
    pub ipslot: BTreeMap<u32, IpSlotV1>,
    /// Shorter prefixes, LPM.
    pub ipcache: BTreeMap<(Ipv4Addr, u8), IpInfoV3>,
    /// IPv6 /128 entries (pods) whose slot holds another address, hash.
    pub iphost6: BTreeMap<[u8; 16], IpInfoV3>,
    /// IPv6 /128 entries in the direct-mapped array, by slot: the lowest address of each.
    pub ipslot6: BTreeMap<u32, IpSlot6V1>,
    /// Shorter IPv6 prefixes, LPM.
    pub ipcache6: BTreeMap<(Ipv6Addr, u8), IpInfoV3>,
    /// The layout's peer entries joined with their tables' slices: every peer entry the
    /// kernel holds, in [`KernelState::peer_slots`] or [`KernelState::peer_spill`].
    pub peers: BTreeMap<PeerKeyV2, PeerSliceV1>,
    /// Peer entries direct-mapped, by slot within a generation: the lowest key of each slot.
    pub peer_slots: BTreeMap<u32, PeerSlotV1>,
    /// Peer entries whose slot holds another key: the hash.
    pub peer_spill: BTreeMap<PeerKeyV2, PeerSliceV1>,
    /// The layout's port exceptions direct-mapped, by slot within a generation.
    pub port_slots: BTreeMap<u32, PortSlotV1>,
    /// Port exceptions whose slot holds another key: the hash.
    pub port_spill: BTreeMap<PortKeyV1, PolicyValueV2>,
    /// The compiler's layout; its port exceptions are written as they are.
    pub layout: PolicyLayout,
}

impl KernelState {
    /// Splits the compiled IP cache by prefix length and lays the policy out.
    pub fn of(c: &Compiled) -> Self {
        // The same layout `explain` and the compiler's property tests read.
        let mut s = KernelState { layout: c.layout().clone(), ..Default::default() };
        s.peers = join_slices(&s.layout);
        s.slot_policy();
        for ((addr, len), v) in &c.ipcache {
            match (addr, *len) {
                (IpAddr::V4(a), 32) => {
                    let a = a.octets();
                    place(&mut s.ipslot, &mut s.iphost, bulkhead_common::ip_slot(a), a, *v, || IpSlotV1 { addr_be: a, info: *v, flags: ip_slot_flags::PRESENT }, |x| &mut x.flags);
                }
                (IpAddr::V6(a), 128) => {
                    let a = a.octets();
                    place(&mut s.ipslot6, &mut s.iphost6, bulkhead_common::ip_slot6(&a), a, *v, || IpSlot6V1 { addr_be: a, info: *v, flags: ip_slot_flags::PRESENT, _pad: 0 }, |x| &mut x.flags);
                }
                (IpAddr::V4(a), len) => {
                    s.ipcache.insert((*a, len), *v);
                }
                (IpAddr::V6(a), len) => {
                    s.ipcache6.insert((*a, len), *v);
                }
            }
        }
        s
    }
}

impl KernelState {
    /// Places the peer entries and port exceptions in their slots or, where another key took
    /// the slot, in the hash. Keys in ascending order, as addresses: the lowest of a slot
    /// takes it.
    fn slot_policy(&mut self) {
        for (k, v) in &self.peers {
            let slot = slots::peer_slot(slots::peer_words(k));
            place(&mut self.peer_slots, &mut self.peer_spill, slot, *k, *v, || PeerSlotV1 { flags: ip_slot_flags::PRESENT, key: *k, value: *v }, |x| &mut x.flags);
        }
        for (k, v) in &self.layout.ports {
            let slot = slots::port_slot(slots::port_word(k));
            place(&mut self.port_slots, &mut self.port_spill, slot, *k, *v, || PortSlotV1 { flags: ip_slot_flags::PRESENT, key: *k, _pad: 0, verdict: *v }, |x| &mut x.flags);
        }
    }
}

/// Puts a single address of either family (or a peer or port key) into its slot array
/// (`make` builds the entry), or, when its slot is taken, into the hash with the slot marked
/// MORE. Keys come in ascending order, so the lowest of a slot takes it, the same on every
/// sync, and a diff moves no key between the array and the hash needlessly.
fn place<A: Ord, V, S>(
    slots: &mut BTreeMap<u32, S>,
    hosts: &mut BTreeMap<A, V>,
    slot: u32,
    addr: A,
    v: V,
    make: impl FnOnce() -> S,
    flags: impl FnOnce(&mut S) -> &mut u32,
) {
    match slots.entry(slot) {
        std::collections::btree_map::Entry::Vacant(e) => {
            e.insert(make());
        }
        std::collections::btree_map::Entry::Occupied(mut e) => {
            *flags(e.get_mut()) |= ip_slot_flags::MORE;
            hosts.insert(addr, v);
        }
    }
}

/// Slots of a slot array holding something `desired` does not, among the array's indexes
/// `range` (a generation's; the slots returned count from its start): the array has no keys
/// to list, so every slot is read (only on a full write).
fn stale_slots<S: aya::Pod + PartialEq>(
    map: &aya::maps::Array<aya::maps::MapData, S>,
    desired: &BTreeMap<u32, S>,
    range: std::ops::Range<u32>,
    flags: impl Fn(&S) -> u32,
) -> Vec<u32> {
    let base = range.start;
    crate::batch::filled_slots(map, range, flags).into_iter().filter(|(i, v)| desired.get(&(i - base)) != Some(v)).map(|(i, _)| i - base).collect()
}

/// One kernel peer entry per (peer entry, slice of its table): the lookup the compiler's
/// [`policy_compiler::layout::lookup`] does in two steps, done in one. A table without its
/// any-protocol slice gets a BROKEN any-protocol entry that denies, as that lookup answers.
pub fn join_slices(l: &PolicyLayout) -> BTreeMap<PeerKeyV2, PeerSliceV1> {
    let mut out = BTreeMap::new();
    for (pk, pv) in &l.peers {
        let table_be = pv.table.to_be_bytes();
        let key = |protocol| PeerKeyV2 { local_identity_be: pk.local_identity_be, peer_class_be: pk.peer_class_be, direction: pk.direction, protocol, _pad: [0; 2] };
        // Slices are keyed (table, direction, protocol): the table's are one range.
        let from = SliceKeyV2 { table_be, direction: pk.direction, protocol: 0, _pad: [0; 2] };
        let to = SliceKeyV2 { table_be, direction: pk.direction, protocol: u8::MAX, _pad: [u8::MAX; 2] };
        let mut any = false;
        for (sk, sv) in l.slices.range(from..=to) {
            any |= sk.protocol == proto::ANY;
            out.insert(key(sk.protocol), PeerSliceV1 { slice: *sv, table_be, protocol: sk.protocol, _pad: [0; 3] });
        }
        if !any {
            let slice = SliceValueV2 { verdict: bulkhead_common::BROKEN_TABLE_VERDICT, flags: slice_flags::BROKEN, _pad: 0, port_filter: 0 };
            out.insert(key(proto::ANY), PeerSliceV1 { slice, table_be, protocol: proto::ANY, _pad: [0; 3] });
        }
    }
    out
}

/// How many map entries a sync wrote and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub upserts: usize,
    pub removals: usize,
}

/// Called after every single map write of a generation or an endpoint, and after the flip:
/// tests replay a change step by step and judge packets in between.
pub type Observer<'a> = &'a mut dyn FnMut(&mut Dataplane);

/// What each policy generation of the lookup maps holds (`None` = unknown, e.g. after a
/// restart or a failed write: the next write into it is a full one).
#[derive(Clone, Debug, Default)]
pub struct Generations {
    pub held: [Option<KernelState>; 2],
}

fn peer_key(k: &PeerKeyV2, g: usize) -> PeerKeyV2 {
    PeerKeyV2 { direction: with_gen(k.direction, g), ..*k }
}

fn policy_key(k: &PortKeyV1, g: usize) -> PortKeyV1 {
    PortKeyV1 { direction: with_gen(k.direction, g), ..*k }
}

fn with_gen(direction: u8, g: usize) -> u8 {
    if g == 1 { direction | GEN_DIRECTION_BIT } else { direction }
}

fn gen_of(direction: u8) -> usize {
    usize::from(direction & GEN_DIRECTION_BIT != 0)
}


/// Makes generation `g` of the lookup maps hold `new`: the difference from `old` when known,
/// else a full write that also removes whatever else generation `g` holds. No packet reads
/// generation `g` while this runs (it is the inactive one), so the order of writes does not
/// matter for verdicts; `obs` sees every single write.
pub fn write_generation(
    dp: &mut Dataplane,
    g: usize,
    old: Option<&KernelState>,
    new: &KernelState,
    obs: &mut Option<Observer<'_>>,
) -> Result<Written, AgentError> {
    let empty = KernelState::default();
    let base = match old {
        Some(o) => o,
        None => {
            remove_unlisted(dp, g, new, obs)?;
            &empty
        }
    };
    let mut w = Written::default();
    let mut step = |dp: &mut Dataplane| {
        if let Some(o) = obs.as_mut() {
            o(dp)
        }
    };
    let peers = diff_map(&base.peer_spill, &new.peer_spill);
    let peer_slots = diff_map(&base.peer_slots, &new.peer_slots);
    let ports = diff_map(&base.port_spill, &new.port_spill);
    let port_slots = diff_map(&base.port_slots, &new.port_slots);
    let (peer_base, port_base) = (g as u32 * slots::PEER_SLOTS, g as u32 * slots::PORT_SLOTS);
    let ranges = diff_map(&base.layout.ranges, &new.layout.ranges);
    let hosts = diff_map(&base.iphost, &new.iphost);
    let slots = diff_map(&base.ipslot, &new.ipslot);
    let prefixes = diff_map(&base.ipcache, &new.ipcache);
    let hosts6 = diff_map(&base.iphost6, &new.iphost6);
    let slots6 = diff_map(&base.ipslot6, &new.ipslot6);
    let prefixes6 = diff_map(&base.ipcache6, &new.ipcache6);
    for k in &peers.removals {
        dp.maps.peers.remove(&peer_key(k, g)).map_err(|e| werr(map_names::PEERS, e))?;
        step(dp);
    }
    for k in &peer_slots.removals {
        dp.maps.peer_slots.set(peer_base + k, PeerSlotV1::default(), 0).map_err(|e| werr(map_names::PEER_SLOTS, e))?;
        step(dp);
    }
    for k in &ports.removals {
        dp.maps.ports.remove(&policy_key(k, g)).map_err(|e| werr(map_names::PORTS, e))?;
        step(dp);
    }
    for k in &port_slots.removals {
        dp.maps.port_slots.set(port_base + k, PortSlotV1::default(), 0).map_err(|e| werr(map_names::PORT_SLOTS, e))?;
        step(dp);
    }
    for (len, k) in &ranges.removals {
        dp.maps.ranges.remove(&Key::new(*len, policy_key(k, g))).map_err(|e| werr(map_names::RANGES, e))?;
        step(dp);
    }
    for k in &hosts.removals {
        dp.maps.iphost[g].remove(k).map_err(|e| werr(map_names::IPHOST[g], e))?;
        step(dp);
    }
    for k in &slots.removals {
        dp.maps.ipslot[g].set(*k, IpSlotV1::default(), 0).map_err(|e| werr(map_names::IPSLOT[g], e))?;
        step(dp);
    }
    for (a, l) in &prefixes.removals {
        dp.maps.ipcache[g].remove(&ipcache_key(*a, *l)).map_err(|e| werr(map_names::IPCACHE[g], e))?;
        step(dp);
    }
    for k in &hosts6.removals {
        dp.maps.iphost6[g].remove(k).map_err(|e| werr(map_names::IPHOST6[g], e))?;
        step(dp);
    }
    for k in &slots6.removals {
        dp.maps.ipslot6[g].set(*k, IpSlot6V1::default(), 0).map_err(|e| werr(map_names::IPSLOT6[g], e))?;
        step(dp);
    }
    for (a, l) in &prefixes6.removals {
        dp.maps.ipcache6[g].remove(&ipcache6_key(*a, *l)).map_err(|e| werr(map_names::IPCACHE6[g], e))?;
        step(dp);
    }
    w.removals = peers.removals.len()
        + peer_slots.removals.len()
        + ports.removals.len()
        + port_slots.removals.len()
        + ranges.removals.len()
        + hosts.removals.len()
        + slots.removals.len()
        + prefixes.removals.len()
        + hosts6.removals.len()
        + slots6.removals.len()
        + prefixes6.removals.len();
    for (k, v) in &hosts.upserts {
        dp.maps.iphost[g].insert(k, v, 0).map_err(|e| werr(map_names::IPHOST[g], e))?;
        step(dp);
    }
    for (k, v) in &slots.upserts {
        dp.maps.ipslot[g].set(*k, *v, 0).map_err(|e| werr(map_names::IPSLOT[g], e))?;
        step(dp);
    }
    for ((a, l), v) in &prefixes.upserts {
        dp.maps.ipcache[g].insert(&ipcache_key(*a, *l), v, 0).map_err(|e| werr(map_names::IPCACHE[g], e))?;
        step(dp);
    }
    for (k, v) in &hosts6.upserts {
        dp.maps.iphost6[g].insert(k, v, 0).map_err(|e| werr(map_names::IPHOST6[g], e))?;
        step(dp);
    }
    for (k, v) in &slots6.upserts {
        dp.maps.ipslot6[g].set(*k, *v, 0).map_err(|e| werr(map_names::IPSLOT6[g], e))?;
        step(dp);
    }
    for ((a, l), v) in &prefixes6.upserts {
        dp.maps.ipcache6[g].insert(&ipcache6_key(*a, *l), v, 0).map_err(|e| werr(map_names::IPCACHE6[g], e))?;
        step(dp);
    }
    for (k, v) in &ports.upserts {
        dp.maps.ports.insert(policy_key(k, g), v, 0).map_err(|e| werr(map_names::PORTS, e))?;
        step(dp);
    }
    for (k, v) in &port_slots.upserts {
        dp.maps.port_slots.set(port_base + k, v, 0).map_err(|e| werr(map_names::PORT_SLOTS, e))?;
        step(dp);
    }
    for ((len, k), v) in &ranges.upserts {
        dp.maps.ranges.insert(&Key::new(*len, policy_key(k, g)), v, 0).map_err(|e| werr(map_names::RANGES, e))?;
        step(dp);
    }
    for (k, v) in &peers.upserts {
        dp.maps.peers.insert(peer_key(k, g), v, 0).map_err(|e| werr(map_names::PEERS, e))?;
        step(dp);
    }
    for (k, v) in &peer_slots.upserts {
        dp.maps.peer_slots.set(peer_base + k, v, 0).map_err(|e| werr(map_names::PEER_SLOTS, e))?;
        step(dp);
    }
    w.upserts = peers.upserts.len()
        + peer_slots.upserts.len()
        + ports.upserts.len()
        + port_slots.upserts.len()
        + ranges.upserts.len()
        + hosts.upserts.len()
        + slots.upserts.len()
        + prefixes.upserts.len()
        + hosts6.upserts.len()
        + slots6.upserts.len()
        + prefixes6.upserts.len();
    Ok(w)
}

/// Removes every entry of generation `g` that `desired` does not hold (whatever a previous
/// agent or a failed write left there).
/// Keys of generation `g` in a policy hash map whose generation-free form `desired` lacks;
/// `direction` reaches the key's direction byte, which carries the generation bit.
fn stale_keys<K, V, D>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    g: usize,
    desired: &BTreeMap<K, D>,
    direction: impl Fn(&mut K) -> &mut u8,
) -> Vec<K>
where
    K: aya::Pod + Ord,
    V: aya::Pod,
{
    map.keys()
        .filter_map(Result::ok)
        .filter(|k| {
            let mut bare = *k;
            let d = direction(&mut bare);
            let of_g = gen_of(*d) == g;
            *d &= !GEN_DIRECTION_BIT;
            of_g && !desired.contains_key(&bare)
        })
        .collect()
}

fn remove_unlisted(dp: &mut Dataplane, g: usize, desired: &KernelState, obs: &mut Option<Observer<'_>>) -> Result<(), AgentError> {
    let mut step = |dp: &mut Dataplane| {
        if let Some(o) = obs.as_mut() {
            o(dp)
        }
    };
    let stale = stale_keys(&dp.maps.peers, g, &desired.peer_spill, |k| &mut k.direction);
    for k in &stale {
        dp.maps.peers.remove(k).map_err(|e| werr(map_names::PEERS, e))?;
        step(dp);
    }
    let (peer_base, port_base) = (g as u32 * slots::PEER_SLOTS, g as u32 * slots::PORT_SLOTS);
    for i in stale_slots(&dp.maps.peer_slots, &desired.peer_slots, peer_base..peer_base + slots::PEER_SLOTS, |v| v.flags) {
        dp.maps.peer_slots.set(peer_base + i, PeerSlotV1::default(), 0).map_err(|e| werr(map_names::PEER_SLOTS, e))?;
        step(dp);
    }
    let stale = stale_keys(&dp.maps.ports, g, &desired.port_spill, |k| &mut k.direction);
    for k in &stale {
        dp.maps.ports.remove(k).map_err(|e| werr(map_names::PORTS, e))?;
        step(dp);
    }
    for i in stale_slots(&dp.maps.port_slots, &desired.port_slots, port_base..port_base + slots::PORT_SLOTS, |v| v.flags) {
        dp.maps.port_slots.set(port_base + i, PortSlotV1::default(), 0).map_err(|e| werr(map_names::PORT_SLOTS, e))?;
        step(dp);
    }
    let stale: Vec<Key<PortKeyV1>> = dp
        .maps
        .ranges
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            let d = k.data();
            gen_of(d.direction) == g
                && !desired.layout.ranges.contains_key(&(k.prefix_len(), PortKeyV1 { direction: d.direction & !GEN_DIRECTION_BIT, ..d }))
        })
        .collect();
    for k in &stale {
        dp.maps.ranges.remove(k).map_err(|e| werr(map_names::RANGES, e))?;
        step(dp);
    }
    let stale: Vec<[u8; 4]> = dp.maps.iphost[g].keys().filter_map(Result::ok).filter(|k| !desired.iphost.contains_key(k)).collect();
    for k in &stale {
        dp.maps.iphost[g].remove(k).map_err(|e| werr(map_names::IPHOST[g], e))?;
        step(dp);
    }
    let stale = stale_slots(&dp.maps.ipslot[g], &desired.ipslot, 0..bulkhead_common::capacity::IPSLOT, |v| v.flags);
    for k in &stale {
        dp.maps.ipslot[g].set(*k, IpSlotV1::default(), 0).map_err(|e| werr(map_names::IPSLOT[g], e))?;
        step(dp);
    }
    let stale: Vec<_> = dp.maps.ipcache[g]
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !desired.ipcache.contains_key(&(Ipv4Addr::from(k.data().addr_be), k.prefix_len() as u8)))
        .collect();
    for k in &stale {
        dp.maps.ipcache[g].remove(k).map_err(|e| werr(map_names::IPCACHE[g], e))?;
        step(dp);
    }
    let stale: Vec<[u8; 16]> = dp.maps.iphost6[g].keys().filter_map(Result::ok).filter(|k| !desired.iphost6.contains_key(k)).collect();
    for k in &stale {
        dp.maps.iphost6[g].remove(k).map_err(|e| werr(map_names::IPHOST6[g], e))?;
        step(dp);
    }
    let stale = stale_slots(&dp.maps.ipslot6[g], &desired.ipslot6, 0..bulkhead_common::capacity::IPSLOT6, |v| v.flags);
    for k in &stale {
        dp.maps.ipslot6[g].set(*k, IpSlot6V1::default(), 0).map_err(|e| werr(map_names::IPSLOT6[g], e))?;
        step(dp);
    }
    let stale: Vec<_> = dp.maps.ipcache6[g]
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !desired.ipcache6.contains_key(&(Ipv6Addr::from(k.data().addr_be), k.prefix_len() as u8)))
        .collect();
    for k in &stale {
        dp.maps.ipcache6[g].remove(k).map_err(|e| werr(map_names::IPCACHE6[g], e))?;
        step(dp);
    }
    Ok(())
}

/// The endpoint map entries of a sync, per interface.
pub type EndpointTable = BTreeMap<u32, (String, EndpointV4)>;

/// Writes every local endpoint's identity and flags for generation `g` (the one about to be
/// enforced). A new endpoint fails closed in the other generation until the flip; its
/// programs are attached after the flip ([`attach_endpoints`]). Returns the interfaces that do
/// not exist yet (the caller retries them) and the indexes of this compile's endpoints.
pub fn stage_endpoints(
    dp: &mut Dataplane,
    desired: &Compiled,
    written: &mut EndpointTable,
    g: usize,
    obs: &mut Option<Observer<'_>>,
) -> Result<(Vec<String>, BTreeSet<u32>), AgentError> {
    let mut pending = Vec::new();
    let mut keep = BTreeSet::new();
    for ep in desired.endpoints.values() {
        let Some(ifname) = &ep.interface else { continue };
        let Some(ifindex) = crate::netns::ifindex(ifname) else {
            pending.push(ifname.clone());
            continue;
        };
        keep.insert(ifindex);
        // The enforced generation's fields stay as they are: from our last sync, or from the
        // map (an endpoint a previous agent wrote keeps enforcing through a restart). A new
        // endpoint fails closed in the enforced generation until the flip.
        let mut value = match written.get(&ifindex).map(|(_, v)| *v).or_else(|| dp.maps.endpoints.get(ifindex).ok().flatten()) {
            Some(v) => v,
            None => {
                let mut v = EndpointV4::default();
                v.flags[1 - g] = ep_flags::OVERFLOW_FAIL_CLOSED;
                v
            }
        };
        value.identity[g] = ep.identity;
        value.identity6[g] = ep.identity6;
        value.flags[g] = ep.flags;
        // 0.0.0.0 for an IPv6-only pod: TC then lets no IPv4 source of it through.
        value.ipv4_be = ep.ip.map_or([0; 4], |a| a.octets());
        value.ipv6_be = ep.ip6.map_or([0; 16], |a| a.octets());
        if written.get(&ifindex).map(|(_, v)| v) != Some(&value) {
            dp.maps.endpoints.insert(ifindex, value)?;
            written.insert(ifindex, (ifname.clone(), value));
            if let Some(o) = obs.as_mut() {
                o(dp);
            }
        }
    }
    Ok((pending, keep))
}

/// What [`commit`] did.
#[derive(Debug)]
pub struct Commit {
    pub written: Written,
    /// Interfaces of this compile's endpoints that do not exist yet.
    pub pending: Vec<String>,
    /// Endpoint indexes of this compile (for [`attach_endpoints`]).
    pub keep: BTreeSet<u32>,
    /// The revision now enforced.
    pub rev: u32,
}

/// Moves the kernel to `kernel` / `compiled` atomically: writes the inactive generation and
/// the endpoints' identities for it, then flips. Until the flip every packet is judged by the
/// old policy, after it by the new one. On an error before the flip the enforced policy is
/// untouched (the inactive generation is then unknown and rewritten in full next time).
/// `obs` sees every write and the flip. The caller attaches new endpoints afterwards.
pub fn commit(
    dp: &mut Dataplane,
    gens: &mut Generations,
    kernel: KernelState,
    compiled: &Compiled,
    endpoints: &mut EndpointTable,
    obs: &mut Option<Observer<'_>>,
) -> Result<Commit, AgentError> {
    let next = 1 - bulkhead_common::generation(current_revision(dp)?);
    let old = gens.held[next].take();
    let written = write_generation(dp, next, old.as_ref(), &kernel, obs)?;
    let (pending, keep) = stage_endpoints(dp, compiled, endpoints, next, obs)?;
    gens.held[next] = Some(kernel);
    let rev = bump_revision(dp)?;
    if let Some(o) = obs.as_mut() {
        o(dp);
    }
    Ok(Commit { written, pending, keep, rev })
}

/// After the flip: attaches programs to every staged endpoint's interface (its entry is
/// already in the map, so the first packet finds it) and detaches and forgets interfaces
/// that are no longer endpoints.
pub fn attach_endpoints(dp: &mut Dataplane, written: &mut EndpointTable, keep: &BTreeSet<u32>) -> Result<(), AgentError> {
    let gone: Vec<u32> = written.keys().filter(|i| !keep.contains(i)).copied().collect();
    for ifindex in gone {
        if let Some((ifname, _)) = written.remove(&ifindex) {
            dp.detach(&ifname);
        }
        // A slot that cannot be cleared keeps judging an interface that is gone; its index is
        // reused only by a new endpoint, which is written before it is attached.
        if let Err(e) = dp.maps.endpoints.remove(ifindex) {
            tracing::warn!(ifindex, error = %e, "endpoint entry not removed");
        }
    }
    let names: Vec<String> = written.values().map(|(n, _)| n.clone()).collect();
    for ifname in names {
        dp.attach(&ifname)?;
    }
    Ok(())
}

/// Removes endpoint entries left by an earlier agent run whose interfaces are not endpoints
/// now (their indexes could be reused by new interfaces).
pub fn drop_stale_endpoints(dp: &mut Dataplane, written: &EndpointTable) {
    let stale: Vec<u32> = match dp.maps.endpoints.ifindexes() {
        Ok(all) => all.into_iter().filter(|k| !written.contains_key(k)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "endpoint entries not listed; stale ones stay until their interfaces are reused");
            return;
        }
    };
    for k in stale {
        if let Err(e) = dp.maps.endpoints.remove(k) {
            tracing::warn!(ifindex = k, error = %e, "stale endpoint entry not removed");
        }
    }
}

/// The policy revision the kernel enforces now (its parity is the active generation).
pub fn current_revision(dp: &Dataplane) -> Result<u32, AgentError> {
    Ok(dp.maps.config.get(&0, 0).map_err(|e| werr(map_names::CONFIG, e))?.policy_rev)
}

/// The flip: bumps the policy revision by one, which makes the other generation the enforced
/// one in a single map write, and makes established flows be judged again on their next
/// packet. Keeps the timeouts and flags already configured.
pub fn bump_revision(dp: &mut Dataplane) -> Result<u32, AgentError> {
    let cur = dp.maps.config.get(&0, 0).map_err(|e| werr(map_names::CONFIG, e))?;
    let base = if cur.tcp_established_timeout_ns == 0 { ConfigV2::with_default_timeouts(0) } else { cur };
    let records = bulkhead_common::config_flags::FLOW_RECORDS;
    let flags = if dp.flow_records { base.flags | records } else { base.flags & !records };
    let next = with_clock(ConfigV2 { policy_rev: cur.policy_rev.wrapping_add(1), flags, ..base });
    dp.maps.config.set(0, next, 0).map_err(|e| werr(map_names::CONFIG, e))?;
    Ok(next.policy_rev)
}

/// `cfg` with this kernel's jiffies calibration, so the programs stamp conntrack entries
/// without a helper call (unchanged when jiffies cannot be calibrated).
pub fn with_clock(mut cfg: ConfigV2) -> ConfigV2 {
    if let Some(c) = crate::clock::jiffies_clock() {
        cfg.ns_per_jiffy = c.ns_per_jiffy;
        cfg.jiffies_offset_ns = c.offset_ns;
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_common::{PeerKeyV1, PeerValueV1, PolicyValueV2, action, direction};

    fn slice(a: u8) -> SliceValueV2 {
        SliceValueV2 { verdict: PolicyValueV2 { action: a, ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn each_peer_entry_gets_one_kernel_entry_per_slice_of_its_table_and_a_broken_table_denies() {
        let mut l = PolicyLayout::default();
        let pk = |peer: u32| PeerKeyV1 { local_identity_be: 300u32.to_be_bytes(), peer_class_be: peer.to_be_bytes(), direction: direction::INGRESS, _pad: [0; 3] };
        let sk = |table: u32, protocol| SliceKeyV2 { table_be: table.to_be_bytes(), direction: direction::INGRESS, protocol, _pad: [0; 2] };
        l.peers.insert(pk(500), PeerValueV1 { table: 7 });
        l.peers.insert(pk(501), PeerValueV1 { table: 8 });
        l.slices.insert(sk(7, proto::ANY), slice(action::DENY));
        l.slices.insert(sk(7, proto::TCP), slice(action::ALLOW));
        // Table 8 has a TCP slice only (a broken layout), and a slice of table 7 in another
        // direction must not leak into the ingress entries.
        l.slices.insert(sk(8, proto::TCP), slice(action::ALLOW));
        l.slices.insert(SliceKeyV2 { direction: direction::EGRESS, ..sk(7, proto::UDP) }, slice(action::ALLOW));
        let j = join_slices(&l);
        let key = |peer: u32, protocol| PeerKeyV2 { local_identity_be: 300u32.to_be_bytes(), peer_class_be: peer.to_be_bytes(), direction: direction::INGRESS, protocol, _pad: [0; 2] };
        assert_eq!(j.len(), 4, "{j:#?}");
        assert_eq!(j[&key(500, proto::TCP)].slice.verdict.action, action::ALLOW);
        assert_eq!((j[&key(500, proto::ANY)].slice.verdict.action, j[&key(500, proto::ANY)].table_be), (action::DENY, 7u32.to_be_bytes()));
        assert_eq!(j[&key(501, proto::TCP)].protocol, proto::TCP);
        let broken = j[&key(501, proto::ANY)];
        assert_eq!((broken.slice.flags, broken.slice.verdict), (slice_flags::BROKEN, bulkhead_common::BROKEN_TABLE_VERDICT));
    }

    #[test]
    fn addresses_sharing_a_slot_go_to_the_hash_with_the_slot_marked_for_both_families() {
        let mut c = Compiled::default();
        let info = |identity: u32| IpInfoV3 { identity, peer_class: identity };
        let v6 = |s: &str| -> IpAddr { s.parse().expect("IPv6 literal") };
        // Same low 16 bits: 10.0.1.2 and 10.9.1.2; fd00::1:2 and fd00:9::1:2.
        for (addr, len, id) in [(IpAddr::from([10, 0, 1, 2]), 32, 300), (IpAddr::from([10, 9, 1, 2]), 32, 301), (v6("fd00::1:2"), 128, 302), (v6("fd00:9::1:2"), 128, 303), (v6("fd00::1:3"), 128, 304), (v6("fd00:1::"), 64, 305)] {
            c.ipcache.insert((addr, len), info(id));
        }
        let k = KernelState::of(&c);
        let a6 = |s: &str| s.parse::<Ipv6Addr>().expect("IPv6 literal").octets();
        let slot = &k.ipslot6[&bulkhead_common::ip_slot6(&a6("fd00::1:2"))];
        assert_eq!((slot.addr_be, slot.info.identity, slot.flags), (a6("fd00::1:2"), 302, ip_slot_flags::PRESENT | ip_slot_flags::MORE), "the lowest address takes the slot, marked MORE");
        assert_eq!(k.iphost6.get(&a6("fd00:9::1:2")).map(|i| i.identity), Some(303), "the other goes to the hash");
        let alone = &k.ipslot6[&bulkhead_common::ip_slot6(&a6("fd00::1:3"))];
        assert_eq!((alone.info.identity, alone.flags), (304, ip_slot_flags::PRESENT), "a slot of its own: no hash lookup needed for misses");
        assert_eq!(k.iphost6.len(), 1, "{:?}", k.iphost6);
        assert_eq!(k.ipcache6.len(), 1, "the /64 stays in the trie");
        let v4 = &k.ipslot[&bulkhead_common::ip_slot([10, 0, 1, 2])];
        assert_eq!((v4.info.identity, v4.flags), (300, ip_slot_flags::PRESENT | ip_slot_flags::MORE));
        assert_eq!(k.iphost.get(&[10, 9, 1, 2]).map(|i| i.identity), Some(301));
    }

    #[test]
    fn peer_entries_sharing_a_slot_put_the_lowest_there_and_the_rest_in_the_hash() {
        // Two peer classes of one pod whose keys share a slot (found by search), and a third
        // alone in its own.
        let kernel_key = |peer: u32| PeerKeyV2 { local_identity_be: 300u32.to_be_bytes(), peer_class_be: peer.to_be_bytes(), direction: direction::INGRESS, protocol: proto::ANY, _pad: [0; 2] };
        let slot_of = |peer: u32| slots::peer_slot(slots::peer_words(&kernel_key(peer)));
        let twin = (501..2_000_000).find(|p| slot_of(*p) == slot_of(500)).expect("a key sharing the slot of class 500");
        let alone = (501..).find(|p| ![slot_of(500)].contains(&slot_of(*p))).expect("a key with a slot of its own");
        let mut k = KernelState::default();
        for p in [500, twin, alone] {
            k.peers.insert(kernel_key(p), PeerSliceV1::default());
        }
        k.slot_policy();
        let shared = &k.peer_slots[&slot_of(500)];
        assert_eq!((shared.key, shared.flags), (kernel_key(500), ip_slot_flags::PRESENT | ip_slot_flags::MORE), "the lowest key takes the slot, marked MORE");
        assert_eq!(k.peer_spill.keys().copied().collect::<Vec<_>>(), vec![kernel_key(twin)], "the other goes to the hash");
        assert_eq!(k.peer_slots[&slot_of(alone)].flags, ip_slot_flags::PRESENT, "a slot of its own: a miss there needs no hash lookup");
        assert_eq!(k.peers.len(), 3);
    }
}
