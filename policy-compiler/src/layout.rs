//! Lays the compiler's output out for the datapath's fastest lookups.
//!
//! The compiler says, per (local identity, peer or any peer, direction), which verdict table
//! judges the traffic ([`crate::compile::PeerSlot`]), and describes each table once, as
//! merged port intervals per protocol. The datapath wants hash lookups, not a trie walk:
//! every peer slot becomes one peer entry naming its table, and every (table, direction in
//! use, protocol) one slice holding the verdict that covers the most ports, plus exceptions —
//! small prefixes as single-port hash entries, large ones as LPM range entries (rare: only
//! port ranges that differ from the slice's default land there). A new flow then costs one or
//! two peer lookups, one or two slice lookups and at most one port lookup, whatever the rule
//! count; and a local identity holds one entry per peer its policy tells apart, however many
//! ports and protocols that policy names (those are laid out once per table).

use std::collections::{BTreeMap, BTreeSet};

use bulkhead_common::{
    PORT_KEY_FIXED_BITS, PORT_KEY_FULL_BITS, PeerKeyV1, PeerValueV1, PolicyValueV2, PortKeyV1, STAGED_DIRECTION_BIT,
    SliceKeyV2, SliceValueV2, port_filter_bit, proto, slice_flags,
};

use crate::compile::{PeerSlot, VerdictTable};
use crate::portrange::port_prefixes;

/// Prefixes of at most this many ports become single-port entries; larger ones ranges.
const MAX_EXPANDED_PORTS: u32 = 16;

/// The datapath's policy maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyLayout {
    pub peers: BTreeMap<PeerKeyV1, PeerValueV1>,
    pub slices: BTreeMap<SliceKeyV2, SliceValueV2>,
    /// Exact keys (prefix length [`PORT_KEY_FULL_BITS`] implied).
    pub ports: BTreeMap<PortKeyV1, PolicyValueV2>,
    /// (prefix length, key) LPM entries.
    pub ranges: BTreeMap<(u32, PortKeyV1), PolicyValueV2>,
}

impl PolicyLayout {
    /// Entries of every policy map together.
    pub fn len(&self) -> usize {
        self.peers.len() + self.slices.len() + self.ports.len() + self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A port interval and its verdict.
type Seg = (u16, u16, PolicyValueV2);

/// The slices of one table in one direction (staged bit included): (protocol, segments).
fn table_slices(t: &VerdictTable) -> impl Iterator<Item = (u8, std::borrow::Cow<'_, [Seg]>)> {
    std::iter::once((proto::ANY, std::borrow::Cow::Owned(vec![(0, u16::MAX, t.other)])))
        .chain(t.per_proto.iter().map(|(p, segs)| (*p, std::borrow::Cow::Borrowed(segs.as_slice()))))
}

/// Adds table `id`'s slices and exceptions for direction byte `dir` to `out`.
fn lay_out_table(id: u32, dir: u8, t: &VerdictTable, out: &mut PolicyLayout) {
    for (protocol, segs) in table_slices(t) {
        // The default is the verdict covering the most ports.
        let mut weight: BTreeMap<PolicyValueV2, u64> = BTreeMap::new();
        for &(s, e, v) in segs.iter() {
            *weight.entry(v).or_default() += u64::from(e - s) + 1;
        }
        let default = weight.iter().max_by_key(|(v, w)| (**w, std::cmp::Reverse(**v))).map(|(v, _)| *v).unwrap_or_default();
        let (mut flags, mut port_filter) = (0, 0u64);
        for &(s, e, v) in segs.iter() {
            if v == default {
                continue;
            }
            for pp in port_prefixes(s, e) {
                let key = PortKeyV1 { table_be: id.to_be_bytes(), direction: dir, protocol, port_be: pp.port.to_be_bytes() };
                let n = 1u32 << (16 - u32::from(pp.bits));
                if n <= MAX_EXPANDED_PORTS {
                    for p in 0..n {
                        let port = pp.port + p as u16;
                        out.ports.insert(PortKeyV1 { port_be: port.to_be_bytes(), ..key }, v);
                        port_filter |= port_filter_bit(port);
                    }
                    flags |= slice_flags::HAS_PORTS;
                } else {
                    out.ranges.insert((PORT_KEY_FIXED_BITS + u32::from(pp.bits), key), v);
                    flags |= slice_flags::HAS_RANGES;
                }
            }
        }
        out.slices.insert(SliceKeyV2 { table_be: id.to_be_bytes(), direction: dir, protocol, _pad: [0; 2] }, SliceValueV2 { verdict: default, flags, _pad: 0, port_filter });
    }
}

/// Entries one table takes in one direction: (slices, single ports, ranges).
pub fn table_entries(t: &VerdictTable) -> [usize; 3] {
    let mut l = PolicyLayout::default();
    lay_out_table(1, 0, t, &mut l);
    [l.slices.len(), l.ports.len(), l.ranges.len()]
}

/// Lays out the enforced and staged peer slots (staged ones carry the staged bit) and the
/// tables they name, each table once per direction byte in use.
pub fn layout(
    policy: &BTreeMap<PeerSlot, u32>,
    staged: &BTreeMap<PeerSlot, u32>,
    tables: &BTreeMap<u32, VerdictTable>,
) -> PolicyLayout {
    let mut out = PolicyLayout::default();
    let mut used: BTreeSet<(u32, u8)> = BTreeSet::new();
    for (slots, bit) in [(policy, 0), (staged, STAGED_DIRECTION_BIT)] {
        for (&(local, peer, dir), &table) in slots {
            let direction = dir | bit;
            out.peers.insert(
                PeerKeyV1 { local_identity_be: local.to_be_bytes(), peer_class_be: peer.to_be_bytes(), direction, _pad: [0; 3] },
                PeerValueV1 { table },
            );
            used.insert((table, direction));
        }
    }
    for (table, dir) in used {
        if let Some(t) = tables.get(&table) {
            lay_out_table(table, dir, t, &mut out);
        }
    }
    out
}

/// The datapath's lookup on a layout: the verdict for (local, peer, dir, protocol, port), or
/// `None` when no table applies (no tier applies: allow). `dir` carries the staged bit for the
/// staged evaluation. A table without its any-protocol slice denies (the kernel counts it).
pub fn lookup(l: &PolicyLayout, local: u32, peer: u32, dir: u8, protocol: u8, port: u16) -> Option<PolicyValueV2> {
    use bulkhead_common::identity;
    let pk = |p: u32| PeerKeyV1 { local_identity_be: local.to_be_bytes(), peer_class_be: p.to_be_bytes(), direction: dir, _pad: [0; 3] };
    let table = l.peers.get(&pk(peer)).or_else(|| l.peers.get(&pk(identity::ANY)))?.table;
    let sk = |p: u8| SliceKeyV2 { table_be: table.to_be_bytes(), direction: dir, protocol: p, _pad: [0; 2] };
    let Some((pr, s)) = l.slices.get(&sk(protocol)).map(|s| (protocol, s)).or_else(|| l.slices.get(&sk(proto::ANY)).map(|s| (proto::ANY, s)))
    else {
        return Some(bulkhead_common::BROKEN_TABLE_VERDICT);
    };
    let key = PortKeyV1 { table_be: table.to_be_bytes(), direction: dir, protocol: pr, port_be: port.to_be_bytes() };
    if s.flags & slice_flags::HAS_PORTS != 0
        && s.port_filter & port_filter_bit(port) != 0
        && let Some(v) = l.ports.get(&key)
    {
        return Some(*v);
    }
    if s.flags & slice_flags::HAS_RANGES != 0 {
        for len in (PORT_KEY_FIXED_BITS..=PORT_KEY_FULL_BITS).rev() {
            let mask: u16 = if len == PORT_KEY_FIXED_BITS { 0 } else { u16::MAX << (PORT_KEY_FULL_BITS - len) };
            let k = PortKeyV1 { port_be: (port & mask).to_be_bytes(), ..key };
            if let Some(v) = l.ranges.get(&(len, k)) {
                return Some(*v);
            }
        }
    }
    Some(s.verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_common::{action, direction, identity};

    fn v(a: u8, policy: u32) -> PolicyValueV2 {
        PolicyValueV2 { policy_index: policy, action: a, ..Default::default() }
    }

    fn table(tcp: &[(u16, u16, PolicyValueV2)], other: PolicyValueV2) -> VerdictTable {
        VerdictTable { other, per_proto: vec![(proto::TCP, tcp.to_vec())] }
    }

    fn one(peer: u32, t: VerdictTable) -> PolicyLayout {
        let policy = BTreeMap::from([((300, peer, direction::INGRESS), 7)]);
        layout(&policy, &BTreeMap::new(), &BTreeMap::from([(7, t)]))
    }

    #[test]
    fn every_port_answers_as_the_table_says() {
        let allow = v(action::ALLOW, 1);
        let deny = v(action::DENY, 2);
        let other = v(action::ALLOW, 3);
        let cases: Vec<Vec<(u16, u16, PolicyValueV2)>> = vec![
            vec![(0, 65535, deny)],
            vec![(0, 79, deny), (80, 80, allow), (81, 65535, deny)],
            vec![(0, 999, deny), (1000, 1999, allow), (2000, 2003, other), (2004, 65535, deny)],
            vec![(0, 32767, allow), (32768, 65535, deny)],
            vec![(0, 0, allow), (1, 65534, deny), (65535, 65535, other)],
        ];
        for (i, c) in cases.iter().enumerate() {
            let l = one(500, table(c, deny));
            assert_eq!(l.peers.len(), 1, "case {i}: one peer entry");
            for &(start, end, want) in c {
                for port in [start, end, start + (end - start) / 2] {
                    let got = lookup(&l, 300, 500, direction::INGRESS, proto::TCP, port);
                    assert_eq!(got, Some(want), "case {i}: port {port}");
                }
            }
            assert_eq!(lookup(&l, 300, 500, direction::INGRESS, proto::UDP, 80), Some(deny), "case {i}: other protocols");
            // Staged lookups never see enforced entries.
            let got = lookup(&l, 300, 500, direction::INGRESS | STAGED_DIRECTION_BIT, proto::TCP, 80);
            assert_eq!(got, None, "case {i}: staged lookup found an enforced slice");
        }
    }

    #[test]
    fn a_single_port_exception_costs_one_hash_entry_not_a_range() {
        let l = one(500, table(&[(0, 79, v(action::DENY, 2)), (80, 80, v(action::ALLOW, 1)), (81, 65535, v(action::DENY, 2))], v(action::DENY, 2)));
        assert_eq!(l.ports.len(), 1, "only port 80 differs from the default: {l:?}");
        assert!(l.ranges.is_empty(), "no range entries: {l:?}");
    }

    #[test]
    fn peers_sharing_a_table_share_its_port_entries() {
        let t = table(&[(0, 29_999, v(action::DENY, 2)), (30_000, 30_100, v(action::ALLOW, 1)), (30_101, 65535, v(action::DENY, 2))], v(action::DENY, 2));
        let policy: BTreeMap<PeerSlot, u32> = (0..1000).map(|p| ((300, 1000 + p, direction::INGRESS), 7)).collect();
        let l = layout(&policy, &BTreeMap::new(), &BTreeMap::from([(7, t.clone())]));
        let single = one(1000, t);
        assert_eq!(l.peers.len(), 1000);
        assert_eq!(
            (l.slices.len(), l.ports.len(), l.ranges.len()),
            (single.slices.len(), single.ports.len(), single.ranges.len()),
            "the table is laid out once, not per peer"
        );
        assert_eq!(lookup(&l, 300, 1500, direction::INGRESS, proto::TCP, 30_050).map(|v| v.action), Some(action::ALLOW));
        assert_eq!(lookup(&l, 300, 1500, direction::INGRESS, proto::TCP, 30_101).map(|v| v.action), Some(action::DENY));
    }

    #[test]
    fn specific_peer_entries_shadow_the_any_peer_entry() {
        let policy = BTreeMap::from([((300, 500, direction::INGRESS), 1), ((300, identity::ANY, direction::INGRESS), 2)]);
        let flat = |v| VerdictTable { other: v, per_proto: Vec::new() };
        let tables = BTreeMap::from([(1, flat(v(action::ALLOW, 1))), (2, flat(v(action::DENY, 9)))]);
        let l = layout(&policy, &BTreeMap::new(), &tables);
        assert_eq!(lookup(&l, 300, 500, direction::INGRESS, proto::TCP, 22), Some(v(action::ALLOW, 1)));
        assert_eq!(lookup(&l, 300, 501, direction::INGRESS, proto::TCP, 22), Some(v(action::DENY, 9)));
        assert_eq!(lookup(&l, 301, 500, direction::INGRESS, proto::TCP, 22), None, "other local identity");
    }

    #[test]
    fn the_port_filter_holds_every_exception_and_spares_most_other_ports() {
        let (allow, deny) = (v(action::ALLOW, 1), v(action::DENY, 2));
        // Ten single-port exceptions, spread as a policy's named ports would be.
        let ports = [22u16, 80, 443, 2379, 5432, 6379, 8080, 8443, 9090, 27017];
        let mut segs = Vec::new();
        let mut next = 0u16;
        for &p in &ports {
            segs.push((next, p - 1, deny));
            segs.push((p, p, allow));
            next = p + 1;
        }
        segs.push((next, 65535, deny));
        let l = one(500, table(&segs, deny));
        let slice = l.slices.values().find(|s| s.flags & slice_flags::HAS_PORTS != 0).expect("a slice with exceptions");
        for &p in &ports {
            assert_ne!(slice.port_filter & port_filter_bit(p), 0, "exception port {p} missing from the filter");
        }
        // The filter is what the lookup consults; it must still answer every port right.
        for p in (0..=65535u16).step_by(7).chain(ports) {
            let want = if ports.contains(&p) { allow } else { deny };
            assert_eq!(lookup(&l, 300, 500, direction::INGRESS, proto::TCP, p), Some(want), "port {p}");
        }
        let skipped = (0..=65535u16).filter(|&p| slice.port_filter & port_filter_bit(p) == 0).count();
        assert!(skipped > 65536 * 3 / 4, "only {skipped} of 65536 ports skip the ports map with 10 exceptions");
    }
}
