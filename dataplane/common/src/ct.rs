//! The conntrack tables' layout: a set-associative hash table in an array map, which the TC
//! programs probe themselves.
//!
//! A hash map lookup is a call out of the program, and on this project's machines every call
//! pays the kernel's return thunk: the conntrack lookup was a third of an established packet's
//! cost. The verifier inlines an array lookup into a few instructions, so the table is an
//! array of slots: a flow lives in one of the [`WAYS`] consecutive slots of its bucket
//! ([`bucket4`], [`bucket6`]), found by comparing keys. Inserting takes a free or expired slot
//! of the bucket, else the least recently seen one (counted as `ct_evicted_live`), which keeps
//! the LRU map's behaviour under pressure.
//!
//! Writers (a TC program inserting or removing, the agent's garbage collector through a
//! memory mapping of the array) own a slot while its `seq` is odd: they take it with a
//! compare-and-swap from an even value and give it back by adding one. Readers never wait:
//! they read `seq`, the key, then `seq` again, and take the slot only when both were the same
//! even value, so a slot being rewritten is never mistaken for another flow's.

use crate::{Ct6KeyV1, CtKeyV2, CtValueV2, capacity};

/// Slots per bucket.
pub const WAYS: u32 = 4;
/// Buckets per table.
pub const BUCKETS: u32 = capacity::CONNTRACK / WAYS;

/// One slot of the IPv4 table. Written by TC (insert, update in place, remove) and by the
/// agent (remove, through the mapping); read by both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtSlotV1 {
    /// Odd while a writer owns the slot.
    pub seq: u32,
    /// 1 when the slot holds a flow.
    pub live: u32,
    pub key: CtKeyV2,
    pub _pad: u32,
    pub value: CtValueV2,
}

/// One slot of the IPv6 table, as [`CtSlotV1`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ct6SlotV1 {
    pub seq: u32,
    pub live: u32,
    pub key: Ct6KeyV1,
    pub _pad: u32,
    pub value: CtValueV2,
}

const _: () = {
    assert!(core::mem::size_of::<CtSlotV1>() == 96);
    assert!(core::mem::size_of::<Ct6SlotV1>() == 120);
    assert!(BUCKETS.is_power_of_two());
    assert!(BUCKETS * WAYS == capacity::CONNTRACK);
};

/// Folds a word into a running hash: one multiply, and a shift that brings the high bits a
/// multiply produces back down, so the next word's multiply spreads them again.
#[inline(always)]
pub fn step(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 32)
}

/// Murmur3's 64-bit finalizer: every input bit reaches every output bit, so the bucket (low
/// bits) depends on the ports (high bits of their word) too.
#[inline(always)]
pub fn fmix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The words of an IPv4 key, loaded as the machine loads them (the kernel and user space
/// run on the same machine, so the bucket is the same on both sides).
#[inline(always)]
fn words4(ifindex: u32, lo: [u8; 4], hi: [u8; 4], port_lo: [u8; 2], port_hi: [u8; 2], protocol: u8) -> (u64, u64) {
    let a = (u32::from_ne_bytes(lo) as u64) << 32 | u32::from_ne_bytes(hi) as u64;
    let b = (u16::from_ne_bytes(port_lo) as u64) << 48 | (u16::from_ne_bytes(port_hi) as u64) << 32 | (ifindex ^ (protocol as u32) << 24) as u64;
    (a, b)
}

/// The bucket of an IPv4 flow's key (its fields as in [`CtKeyV2`], ends already ordered).
#[inline(always)]
pub fn bucket4(ifindex: u32, lo: [u8; 4], hi: [u8; 4], port_lo: [u8; 2], port_hi: [u8; 2], protocol: u8) -> u32 {
    let (a, b) = words4(ifindex, lo, hi, port_lo, port_hi, protocol);
    fmix(step(step(0, a), b)) as u32 & (BUCKETS - 1)
}

/// The bucket of an IPv6 flow's key: each address as two native-order words of its bytes.
#[inline(always)]
pub fn bucket6(ifindex: u32, lo: [u64; 2], hi: [u64; 2], port_lo: [u8; 2], port_hi: [u8; 2], protocol: u8) -> u32 {
    bucket6_ports_word(ifindex, lo, hi, u32::from_ne_bytes([port_lo[0], port_lo[1], port_hi[0], port_hi[1]]), protocol)
}

/// [`bucket6`] with both ports as one native-order word of their four network-order bytes
/// (the low end's port first), as the fast path loads them from the packet.
#[inline(always)]
pub fn bucket6_ports_word(ifindex: u32, lo: [u64; 2], hi: [u64; 2], ports: u32, protocol: u8) -> u32 {
    // The ports' half of `words4`'s second word: the low end's port in the top 16 bits, the
    // high end's below it. On this little-endian machine the word's low half is the low
    // end's port, so rotating it by 16 puts both in place.
    let b = (ports.rotate_left(16) as u64) << 32 | (ifindex ^ (protocol as u32) << 24) as u64;
    let h = step(step(step(step(0, lo[0]), lo[1]), hi[0]), hi[1]);
    fmix(step(h, b)) as u32 & (BUCKETS - 1)
}

/// The 16 bytes of an address as the two words [`bucket6`] takes.
#[inline(always)]
pub fn words6(a: &[u8; 16]) -> [u64; 2] {
    let mut w0 = [0u8; 8];
    let mut w1 = [0u8; 8];
    w0.copy_from_slice(&a[..8]);
    w1.copy_from_slice(&a[8..]);
    [u64::from_ne_bytes(w0), u64::from_ne_bytes(w1)]
}

impl CtKeyV2 {
    /// The bucket of this key's flow.
    #[inline(always)]
    pub fn bucket(&self) -> u32 {
        bucket4(self.ifindex, self.addr_lo_be, self.addr_hi_be, self.port_lo_be, self.port_hi_be, self.protocol)
    }
}

impl Ct6KeyV1 {
    /// The bucket of this key's flow.
    pub fn bucket(&self) -> u32 {
        bucket6(self.ifindex, words6(&self.addr_lo_be), words6(&self.addr_hi_be), self.port_lo_be, self.port_hi_be, self.protocol)
    }
}

/// A slot of either family's table, for code written once over both.
pub trait Slot: Copy + Default {
    type Key: Copy + PartialEq + core::fmt::Debug;
    fn seq(&self) -> u32;
    fn live(&self) -> bool;
    fn key(&self) -> &Self::Key;
    fn value(&self) -> &CtValueV2;
    /// The bucket of `key`.
    fn bucket_of(key: &Self::Key) -> u32;
    /// A live slot holding `key` and `value` (its sequence left to the writer).
    fn new(key: Self::Key, value: CtValueV2) -> Self;
}

impl Slot for CtSlotV1 {
    type Key = CtKeyV2;
    fn seq(&self) -> u32 {
        self.seq
    }
    fn live(&self) -> bool {
        self.live != 0
    }
    fn key(&self) -> &CtKeyV2 {
        &self.key
    }
    fn value(&self) -> &CtValueV2 {
        &self.value
    }
    fn bucket_of(key: &CtKeyV2) -> u32 {
        key.bucket()
    }
    fn new(key: CtKeyV2, value: CtValueV2) -> Self {
        CtSlotV1 { seq: 0, live: 1, key, _pad: 0, value }
    }
}

impl Slot for Ct6SlotV1 {
    type Key = Ct6KeyV1;
    fn seq(&self) -> u32 {
        self.seq
    }
    fn live(&self) -> bool {
        self.live != 0
    }
    fn key(&self) -> &Ct6KeyV1 {
        &self.key
    }
    fn value(&self) -> &CtValueV2 {
        &self.value
    }
    fn bucket_of(key: &Ct6KeyV1) -> u32 {
        key.bucket()
    }
    fn new(key: Ct6KeyV1, value: CtValueV2) -> Self {
        Ct6SlotV1 { seq: 0, live: 1, key, _pad: 0, value }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::proto;

    #[test]
    fn buckets_spread_the_flows_of_one_pod() {
        // One client's 60,000 source ports to one server: the common case must not crowd
        // a few buckets (each holds WAYS flows).
        let mut per = std::collections::HashMap::<u32, u32>::new();
        for port in 1024u16..61024 {
            let k = CtKeyV2::of(7, [10, 0, 0, 2], port.to_be_bytes(), [10, 0, 1, 9], 80u16.to_be_bytes(), proto::TCP);
            *per.entry(k.bucket()).or_default() += 1;
        }
        let worst = per.values().max().copied().unwrap_or(0);
        assert!(worst <= 8, "60,000 flows into {BUCKETS} buckets: the fullest holds {worst}");
        // A uniform hash fills 65,536 * (1 - e^(-60,000 / 65,536)) = about 39,300 of them.
        assert!(per.len() > 38_000, "only {} distinct buckets for 60,000 flows", per.len());
    }

    #[test]
    fn the_fast_paths_ipv6_key_lands_in_the_general_paths_bucket() {
        // The fast path's key as it builds it: the packet's words (source first), its ports
        // word as loaded, swapped when the destination sorts first.
        let (x, y) = ([0xfd; 16], { let mut a = [0xfd; 16]; a[15] = 0x01; a });
        for (s, d, sport, dport) in [(x, y, 1000u16, 443u16), (y, x, 1000, 443), (x, x, 443, 1000), (x, x, 1000, 443), (x, x, 0, 65535)] {
            let (sp, dp) = (sport.to_be_bytes(), dport.to_be_bytes());
            let (sw, dw) = (words6(&s), words6(&d));
            let word = u32::from_ne_bytes([sp[0], sp[1], dp[0], dp[1]]);
            let first = crate::ct6_source_first_with(|src, i| u64::from_be(if src { sw[i] } else { dw[i] }), sport, dport);
            let fast = if first { bucket6_ports_word(9, sw, dw, word, proto::TCP) } else { bucket6_ports_word(9, dw, sw, word.rotate_left(16), proto::TCP) };
            assert_eq!(fast, Ct6KeyV1::of(9, s, sp, d, dp, proto::TCP).bucket(), "{sport} -> {dport}, source first: {first}");
        }
    }

    #[test]
    fn an_ipv6_flow_and_its_reply_share_one_bucket() {
        let (a, b) = ([0xfd; 16], [0x20; 16]);
        let k1 = Ct6KeyV1::of(3, a, 1000u16.to_be_bytes(), b, 443u16.to_be_bytes(), proto::TCP);
        let k2 = Ct6KeyV1::of(3, b, 443u16.to_be_bytes(), a, 1000u16.to_be_bytes(), proto::TCP);
        assert_eq!(k1.bucket(), k2.bucket());
        assert_ne!(k1.bucket(), Ct6KeyV1::of(4, a, 1000u16.to_be_bytes(), b, 443u16.to_be_bytes(), proto::TCP).bucket());
    }
}
