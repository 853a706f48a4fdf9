//! Lays the compiler's complete policy slices out for the datapath's fastest lookups.
//!
//! The compiler describes each slice (local identity, peer, direction, protocol) as disjoint
//! port prefixes covering all 65,536 ports. The datapath wants hash lookups, not a trie walk:
//! each slice becomes one hash entry holding the verdict that covers the most ports, plus
//! exceptions — small prefixes as single-port hash entries, large ones as LPM range entries
//! (rare: only port ranges that differ from the slice's default land there). A new flow then
//! costs one to four slice lookups and at most one port lookup, whatever the rule count.

use std::collections::BTreeMap;

use bulkhead_common::{
    POLICY_KEY_FIXED_BITS, POLICY_KEY_FULL_BITS, PolicyKeyV1, PolicyValueV2, STAGED_DIRECTION_BIT,
    SliceKeyV1, SliceValueV1, slice_flags,
};

/// Prefixes of at most this many ports become single-port entries; larger ones ranges.
const MAX_EXPANDED_PORTS: u32 = 16;

/// The datapath's policy maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyLayout {
    pub slices: BTreeMap<SliceKeyV1, SliceValueV1>,
    /// Exact keys (prefix length 96 implied).
    pub ports: BTreeMap<PolicyKeyV1, PolicyValueV2>,
    /// (prefix length, key) LPM entries.
    pub ranges: BTreeMap<(u32, PolicyKeyV1), PolicyValueV2>,
}

fn slice_of(k: &PolicyKeyV1, staged: bool) -> SliceKeyV1 {
    SliceKeyV1 {
        local_identity_be: k.local_identity_be,
        peer_identity_be: k.peer_identity_be,
        direction: k.direction | if staged { STAGED_DIRECTION_BIT } else { 0 },
        protocol: k.protocol,
        _pad: [0; 2],
    }
}

/// Adds the complete slices of `policy` (enforced, or staged when `staged`) to `out`.
pub fn lay_out(policy: &BTreeMap<(u32, PolicyKeyV1), PolicyValueV2>, staged: bool, out: &mut PolicyLayout) {
    // Group the prefixes of each slice; BTreeMap order keeps slices contiguous but grouping
    // explicitly does not depend on it.
    let mut slices: BTreeMap<SliceKeyV1, Vec<(u32, PolicyKeyV1, PolicyValueV2)>> = BTreeMap::new();
    for ((len, k), v) in policy {
        slices.entry(slice_of(k, staged)).or_default().push((*len, *k, *v));
    }
    for (sk, entries) in slices {
        // The default is the verdict covering the most ports.
        let mut weight: BTreeMap<PolicyValueV2, u64> = BTreeMap::new();
        for (len, _, v) in &entries {
            *weight.entry(*v).or_default() += 1u64 << (POLICY_KEY_FULL_BITS - len);
        }
        let default = weight.iter().max_by_key(|(v, w)| (**w, std::cmp::Reverse(**v))).map(|(v, _)| *v).unwrap_or_default();
        let mut flags = 0;
        for (len, k, v) in entries {
            if v == default {
                continue;
            }
            let mut key = k;
            key.direction = sk.direction;
            let n = 1u32 << (POLICY_KEY_FULL_BITS - len);
            if n <= MAX_EXPANDED_PORTS {
                let start = u16::from_be_bytes(k.port_be);
                for p in 0..n {
                    let mut e = key;
                    e.port_be = (start + p as u16).to_be_bytes();
                    out.ports.insert(e, v);
                }
                flags |= slice_flags::HAS_PORTS;
            } else {
                out.ranges.insert((len, key), v);
                flags |= slice_flags::HAS_RANGES;
            }
        }
        out.slices.insert(sk, SliceValueV1 { verdict: default, flags });
    }
}

/// Lays out the enforced and staged policy together (staged entries carry the staged bit).
pub fn layout(
    policy: &BTreeMap<(u32, PolicyKeyV1), PolicyValueV2>,
    staged: &BTreeMap<(u32, PolicyKeyV1), PolicyValueV2>,
) -> PolicyLayout {
    let mut out = PolicyLayout::default();
    lay_out(policy, false, &mut out);
    lay_out(staged, true, &mut out);
    out
}

/// The datapath's lookup on a layout: the verdict for (local, peer, dir, protocol, port), or
/// `None` when no slice exists (no tier applies: allow). `dir` carries the staged bit for the
/// staged evaluation.
pub fn lookup(l: &PolicyLayout, local: u32, peer: u32, dir: u8, protocol: u8, port: u16) -> Option<PolicyValueV2> {
    use bulkhead_common::{identity, proto};
    for (p, pr) in [(peer, protocol), (peer, proto::ANY), (identity::ANY, protocol), (identity::ANY, proto::ANY)] {
        let sk = SliceKeyV1 {
            local_identity_be: local.to_be_bytes(),
            peer_identity_be: p.to_be_bytes(),
            direction: dir,
            protocol: pr,
            _pad: [0; 2],
        };
        let Some(s) = l.slices.get(&sk) else { continue };
        let key = PolicyKeyV1 {
            local_identity_be: sk.local_identity_be,
            peer_identity_be: sk.peer_identity_be,
            direction: dir,
            protocol: pr,
            port_be: port.to_be_bytes(),
        };
        if s.flags & slice_flags::HAS_PORTS != 0 {
            if let Some(v) = l.ports.get(&key) {
                return Some(*v);
            }
        }
        if s.flags & slice_flags::HAS_RANGES != 0 {
            for len in (POLICY_KEY_FIXED_BITS..=POLICY_KEY_FULL_BITS).rev() {
                let mask: u16 = if len == POLICY_KEY_FIXED_BITS { 0 } else { u16::MAX << (POLICY_KEY_FULL_BITS - len) };
                let mut k = key;
                k.port_be = (port & mask).to_be_bytes();
                if let Some(v) = l.ranges.get(&(len, k)) {
                    return Some(*v);
                }
            }
        }
        return Some(s.verdict);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_common::{action, direction, proto};

    fn v(a: u8, policy: u32) -> PolicyValueV2 {
        PolicyValueV2 { policy_index: policy, action: a, ..Default::default() }
    }

    fn key(peer: u32, port: u16) -> PolicyKeyV1 {
        PolicyKeyV1 {
            local_identity_be: 300u32.to_be_bytes(),
            peer_identity_be: peer.to_be_bytes(),
            direction: direction::INGRESS,
            protocol: proto::TCP,
            port_be: port.to_be_bytes(),
        }
    }

    /// Disjoint aligned prefixes covering [0, 65535] from a list of (start, end, verdict).
    fn complete(peer: u32, intervals: &[(u16, u16, PolicyValueV2)]) -> BTreeMap<(u32, PolicyKeyV1), PolicyValueV2> {
        let mut out = BTreeMap::new();
        for &(start, end, val) in intervals {
            let (mut s, e) = (start as u32, end as u32);
            while s <= e {
                let mut size = if s == 0 { 1 << 16 } else { 1u32 << s.trailing_zeros() };
                while s + size - 1 > e {
                    size >>= 1;
                }
                let len = POLICY_KEY_FULL_BITS - size.trailing_zeros();
                out.insert((len, key(peer, s as u16)), val);
                s += size;
            }
        }
        out
    }

    #[test]
    fn every_port_answers_as_the_complete_slice_says() {
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
            let slice = complete(500, c);
            let l = layout(&slice, &BTreeMap::new());
            assert_eq!(l.slices.len(), 1, "case {i}: one slice");
            for &(start, end, want) in c {
                for port in [start, end, start + (end - start) / 2] {
                    let got = lookup(&l, 300, 500, direction::INGRESS, proto::TCP, port);
                    assert_eq!(got, Some(want), "case {i}: port {port}");
                }
            }
            // Staged lookups never see enforced entries.
            let got = lookup(&l, 300, 500, direction::INGRESS | STAGED_DIRECTION_BIT, proto::TCP, 80);
            assert_eq!(got, None, "case {i}: staged lookup found an enforced slice");
        }
    }

    #[test]
    fn a_single_port_exception_costs_one_hash_entry_not_a_range() {
        let l = layout(&complete(500, &[(0, 79, v(action::DENY, 2)), (80, 80, v(action::ALLOW, 1)), (81, 65535, v(action::DENY, 2))]), &BTreeMap::new());
        assert_eq!(l.ports.len(), 1, "only port 80 differs from the default: {l:?}");
        assert!(l.ranges.is_empty(), "no range entries: {l:?}");
    }

    #[test]
    fn specific_peer_slices_shadow_any_peer_slices() {
        let mut enforced = complete(500, &[(0, 65535, v(action::ALLOW, 1))]);
        enforced.extend(complete(bulkhead_common::identity::ANY, &[(0, 65535, v(action::DENY, 9))]));
        let l = layout(&enforced, &BTreeMap::new());
        assert_eq!(lookup(&l, 300, 500, direction::INGRESS, proto::TCP, 22), Some(v(action::ALLOW, 1)));
        assert_eq!(lookup(&l, 300, 501, direction::INGRESS, proto::TCP, 22), Some(v(action::DENY, 9)));
        assert_eq!(lookup(&l, 301, 500, direction::INGRESS, proto::TCP, 22), None, "other local identity");
    }
}
