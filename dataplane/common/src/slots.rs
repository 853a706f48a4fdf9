//! Direct-mapped front arrays of the verdict's two hash maps ([`crate::map_names::PEERS`],
//! [`crate::map_names::PORTS`]).
//!
//! A new flow's verdict took a peer lookup and often a port lookup, each a hash lookup of
//! 25-30 ns on this project's machines (a call, jhash, the bucket walk, the key compare): 68 ns
//! of a denied SYN's 150. The verifier inlines an array lookup, so a slot costs a few loads and
//! compares. Each key has one slot, from a multiply-shift hash of its generation-free form; the
//! agent puts the lowest key of a slot there and the others in the hash, marking the slot
//! [`crate::ip_slot_flags::MORE`]. A key that does not match its slot is then looked up in the
//! hash only when the slot says so: a definite miss (the any-peer and any-protocol fallbacks)
//! costs no hash lookup either. As [`crate::IpSlotV1`] does for addresses.
//!
//! Each array holds both policy generations: generation `g`'s slots are
//! `g * SLOTS .. (g + 1) * SLOTS`, written by the agent only while `g` is inactive.

use crate::{GEN_DIRECTION_BIT, PeerKeyV2, PeerSliceV1, PolicyValueV2, PortKeyV1, ct};

/// Slots of the peer array per generation (7 MiB each): a node's few thousand peer entries
/// spill into the hash a few percent at most.
pub const PEER_SLOTS: u32 = 1 << 17;
/// Slots of the port array per generation (2 MiB each).
pub const PORT_SLOTS: u32 = 1 << 16;

/// A peer entry in [`crate::map_names::PEER_SLOTS`]: `key` without its generation bit (the
/// slot's half of the array says the generation) and the entry's value. `flags`:
/// [`crate::ip_slot_flags`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSlotV1 {
    pub flags: u32,
    pub key: PeerKeyV2,
    pub value: PeerSliceV1,
}

/// A single-port exception in [`crate::map_names::PORT_SLOTS`], as [`PeerSlotV1`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortSlotV1 {
    pub flags: u32,
    pub key: PortKeyV1,
    pub _pad: u32,
    pub verdict: PolicyValueV2,
}

const _: () = {
    assert!(core::mem::size_of::<PeerSlotV1>() == 56);
    assert!(core::mem::size_of::<PortSlotV1>() == 32);
    assert!(PEER_SLOTS.is_power_of_two() && PORT_SLOTS.is_power_of_two());
};

/// The three native-order words of a peer key: local identity, peer class, then direction,
/// protocol and padding. The kernel compares a slot's key by these.
#[inline(always)]
pub fn peer_words(k: &PeerKeyV2) -> [u32; 3] {
    [
        u32::from_ne_bytes(k.local_identity_be),
        u32::from_ne_bytes(k.peer_class_be),
        u32::from_ne_bytes([k.direction, k.protocol, k._pad[0], k._pad[1]]),
    ]
}

/// The native-order word of a port key, as the kernel compares it.
#[inline(always)]
pub fn port_word(k: &PortKeyV1) -> u64 {
    let t = u32::from_ne_bytes(k.table_be) as u64;
    let r = u32::from_ne_bytes([k.direction, k.protocol, k.port_be[0], k.port_be[1]]) as u64;
    t << 32 | r
}

/// The slot of a peer key's words (generation bit cleared) within its generation.
#[inline(always)]
pub fn peer_slot(w: [u32; 3]) -> u32 {
    let a = (w[0] as u64) << 32 | w[1] as u64;
    ct::fmix(ct::step(ct::step(0, a), w[2] as u64)) as u32 & (PEER_SLOTS - 1)
}

/// The slot of a port key's word (generation bit cleared) within its generation.
#[inline(always)]
pub fn port_slot(w: u64) -> u32 {
    ct::fmix(ct::step(0, w)) as u32 & (PORT_SLOTS - 1)
}

/// A peer key without its generation bit, as slots hold it.
#[inline(always)]
pub fn bare_peer(k: &PeerKeyV2) -> PeerKeyV2 {
    PeerKeyV2 { direction: k.direction & !GEN_DIRECTION_BIT, ..*k }
}

/// A port key without its generation bit, as slots hold it.
#[inline(always)]
pub fn bare_port(k: &PortKeyV1) -> PortKeyV1 {
    PortKeyV1 { direction: k.direction & !GEN_DIRECTION_BIT, ..*k }
}

/// The array index of a generation-free peer key in generation `g`.
#[inline(always)]
pub fn peer_index(k: &PeerKeyV2, g: u32) -> u32 {
    g * PEER_SLOTS + peer_slot(peer_words(k))
}

/// The array index of a generation-free port key in generation `g`.
#[inline(always)]
pub fn port_index(k: &PortKeyV1, g: u32) -> u32 {
    g * PORT_SLOTS + port_slot(port_word(k))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::BTreeMap;

    use super::*;

    fn peer(local: u32, peer: u32, direction: u8, protocol: u8) -> PeerKeyV2 {
        PeerKeyV2 { local_identity_be: local.to_be_bytes(), peer_class_be: peer.to_be_bytes(), direction, protocol, _pad: [0; 2] }
    }

    #[test]
    fn keys_of_one_local_identity_spread_as_a_uniform_hash() {
        // One pod's ingress and egress entries for 3,000 peer classes and two protocols: the
        // shape that matters (local identity, direction and protocol barely vary).
        let mut per_slot = BTreeMap::<u32, u32>::new();
        let mut n = 0u32;
        for p in 0..3_000u32 {
            for dir in [1u8, 2] {
                for protocol in [0u8, 6] {
                    *per_slot.entry(peer_index(&peer(7, 256 + p, dir, protocol), 0)).or_default() += 1;
                    n += 1;
                }
            }
        }
        let spilled: u32 = per_slot.values().map(|c| c - 1).sum();
        // A uniform hash spills about n^2 / (2 * slots) keys: 12,000 keys -> about 550.
        let expected = (n as f64).powi(2) / (2.0 * PEER_SLOTS as f64);
        assert!((spilled as f64) < expected * 1.5, "{spilled} of {n} keys spilled; a uniform hash spills about {expected:.0}");
    }

    #[test]
    fn port_keys_of_one_table_spread_as_a_uniform_hash() {
        let mut per_slot = BTreeMap::<u32, u32>::new();
        for port in 1..=4_000u16 {
            let k = PortKeyV1 { table_be: 9u32.to_be_bytes(), direction: 1, protocol: 6, port_be: port.to_be_bytes() };
            *per_slot.entry(port_index(&k, 0)).or_default() += 1;
        }
        let spilled: u32 = per_slot.values().map(|c| c - 1).sum();
        let expected = 4_000f64.powi(2) / (2.0 * PORT_SLOTS as f64);
        assert!((spilled as f64) < expected * 1.5, "{spilled} of 4000 port keys spilled; a uniform hash spills about {expected:.0}");
    }

    #[test]
    fn generation_one_is_the_second_half() {
        let k = peer(1, 2, 1, 6);
        assert_eq!(peer_index(&k, 1), peer_index(&k, 0) + PEER_SLOTS);
        let pk = PortKeyV1 { table_be: [0, 0, 0, 3], direction: 2, protocol: 17, port_be: [0, 53] };
        assert_eq!(port_index(&pk, 1), port_index(&pk, 0) + PORT_SLOTS);
        assert_eq!(bare_peer(&PeerKeyV2 { direction: 1 | GEN_DIRECTION_BIT, ..k }), k);
    }
}
