//! Connection tracking: replies of allowed flows pass, and a policy change reaches
//! established flows through the revision stored in each entry. Each entry counts its
//! packets and bytes both ways, which the flow's end record carries.
//!
//! The tables are arrays of slots the programs probe themselves (layout and protocol in
//! `bulkhead_common::ct`): an inlined array lookup per way instead of a hash map call.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, compiler_fence};

use bulkhead_common::ct::{Ct6SlotV1, CtSlotV1, WAYS};
use bulkhead_common::{ConfigV2, Ct6KeyV1, CtKeyV2, CtValueV2, counters, ct_flags, proto};

use crate::family::{In6, put16};
use crate::maps::{CONNTRACK, CONNTRACK6, count};
use crate::parse::{Flow, TCP_FIN, TCP_RST};

/// Records a packet on an existing entry. Returns true once per flow, for the packet that
/// ends a TCP connection (an RST, or the second side's FIN): the caller reports the end.
#[inline(always)]
pub fn touch<A>(ct: &mut CtValueV2, f: &Flow<A>, len: u32, now: u64, is_reply: bool) -> bool {
    count_packet(ct, len, now, is_reply);
    if f.protocol != proto::TCP || f.tcp_flags & (TCP_FIN | TCP_RST) == 0 {
        return false;
    }
    ct.flags |= ct_flags::CLOSING;
    if f.tcp_flags & TCP_FIN != 0 {
        ct.flags |= if is_reply { ct_flags::FIN_REPLY } else { ct_flags::FIN_ORIG };
    }
    let both_fins = ct_flags::FIN_ORIG | ct_flags::FIN_REPLY;
    let ends = f.tcp_flags & TCP_RST != 0 || ct.flags & both_fins == both_fins;
    if ends && ct.flags & ct_flags::ENDED == 0 {
        ct.flags |= ct_flags::ENDED;
        return true;
    }
    false
}

/// Counts a packet on an existing entry, one way or the other.
#[inline(always)]
pub fn count_packet(ct: &mut CtValueV2, len: u32, now: u64, is_reply: bool) {
    ct.last_seen_ns = now;
    if is_reply {
        ct.packets_reply += 1;
        ct.bytes_reply += len as u64;
        ct.flags |= ct_flags::SEEN_REPLY;
    } else {
        ct.packets_orig += 1;
        ct.bytes_orig += len as u64;
    }
}

/// A fresh entry for the first packet of an allowed flow; `origin_hi` says which end of
/// the key sent it.
#[inline(always)]
pub fn new_entry<A>(f: &Flow<A>, len: u32, now: u64, dir: u8, rev: u32, origin_hi: bool) -> CtValueV2 {
    let mut ct = CtValueV2 {
        last_seen_ns: now,
        created_ns: now,
        packets_orig: 1,
        bytes_orig: len as u64,
        packets_reply: 0,
        bytes_reply: 0,
        policy_rev: rev,
        origin_direction: dir,
        protocol: f.protocol,
        _pad: [0; 2],
        flags: if origin_hi { ct_flags::ORIGIN_HI } else { 0 },
        _pad2: 0,
    };
    if f.protocol == proto::TCP && f.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        ct.flags |= ct_flags::CLOSING;
    }
    ct
}

/// One family's table: where its slots are and how a key is matched and written. The table
/// operations below are written once over both.
pub trait Table {
    /// The key as the probe holds it (IPv6: in the per-CPU scratch on the general path, in
    /// registers on the fast path).
    type Key: ?Sized;
    type Slot;
    fn bucket(k: &Self::Key) -> u32;
    /// Slot `i` (an inlined array lookup; `None` only past the end).
    fn slot(i: u32) -> Option<*mut Self::Slot>;
    fn key_eq(s: *const Self::Slot, k: &Self::Key) -> bool;
    fn set_key(s: *mut Self::Slot, k: &Self::Key);
    fn value(s: *mut Self::Slot) -> *mut CtValueV2;
}

/// An IPv4 key's five 4-byte words, packed for [`V4::key_eq`]'s comparison. From the fields,
/// not through a pointer cast, so a key built on the fast path can stay in registers.
#[inline(always)]
fn words20(k: &CtKeyV2) -> (u64, u64, u32) {
    let ports = u32::from_ne_bytes([k.port_lo_be[0], k.port_lo_be[1], k.port_hi_be[0], k.port_hi_be[1]]);
    (
        (k.ifindex as u64) << 32 | u32::from_ne_bytes(k.addr_lo_be) as u64,
        (u32::from_ne_bytes(k.addr_hi_be) as u64) << 32 | ports as u64,
        k.protocol as u32,
    )
}

/// The IPv4 table.
pub struct V4;
/// The IPv6 table.
pub struct V6;

impl Table for V4 {
    type Key = CtKeyV2;
    type Slot = CtSlotV1;
    #[inline(always)]
    fn bucket(k: &CtKeyV2) -> u32 {
        k.bucket()
    }
    #[inline(always)]
    fn slot(i: u32) -> Option<*mut CtSlotV1> {
        CONNTRACK.get_ptr_mut(i)
    }
    #[inline(always)]
    fn key_eq(s: *const CtSlotV1, k: &CtKeyV2) -> bool {
        // SAFETY: a valid slot; a torn read is caught by the caller's state check.
        let sk = unsafe { &(*s).key };
        // Word by word, without a branch per field: every branch in a probe of four ways is
        // paths the verifier walks. Padding is zero in every key written.
        words20(sk) == words20(k)
    }
    #[inline(always)]
    fn set_key(s: *mut CtSlotV1, k: &CtKeyV2) {
        // SAFETY: the caller owns the slot (odd sequence).
        unsafe { (*s).key = *k };
    }
    #[inline(always)]
    fn value(s: *mut CtSlotV1) -> *mut CtValueV2 {
        // SAFETY: field of a valid slot.
        unsafe { &mut (*s).value }
    }
}

impl Table for V6 {
    type Key = Ct6KeyV1;
    type Slot = Ct6SlotV1;
    #[inline(always)]
    fn bucket(k: &Ct6KeyV1) -> u32 {
        let (lo, hi) = (In6::at(&k.addr_lo_be), In6::at(&k.addr_hi_be));
        bulkhead_common::ct::bucket6(k.ifindex, lo.0, hi.0, k.port_lo_be, k.port_hi_be, k.protocol)
    }
    #[inline(always)]
    fn slot(i: u32) -> Option<*mut Ct6SlotV1> {
        CONNTRACK6.get_ptr_mut(i)
    }
    #[inline(always)]
    fn key_eq(s: *const Ct6SlotV1, k: &Ct6KeyV1) -> bool {
        // SAFETY: as for IPv4.
        let sk = unsafe { &(*s).key };
        let (a, b) = (In6::at(&sk.addr_lo_be).0, In6::at(&k.addr_lo_be).0);
        let (c, d) = (In6::at(&sk.addr_hi_be).0, In6::at(&k.addr_hi_be).0);
        let rest = |x: &Ct6KeyV1| (x.ifindex, u32::from_ne_bytes([x.port_lo_be[0], x.port_lo_be[1], x.port_hi_be[0], x.port_hi_be[1]]), x.protocol as u32);
        let ((i1, p1, r1), (i2, p2, r2)) = (rest(sk), rest(k));
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (c[0] ^ d[0]) | (c[1] ^ d[1]) | ((i1 ^ i2) | (p1 ^ p2) | (r1 ^ r2)) as u64 == 0
    }
    #[inline(always)]
    fn set_key(s: *mut Ct6SlotV1, k: &Ct6KeyV1) {
        // SAFETY: the caller owns the slot.
        let sk = unsafe { &mut (*s).key };
        sk.ifindex = k.ifindex;
        sk.protocol = k.protocol;
        sk._pad = [0; 3];
        sk.port_lo_be = k.port_lo_be;
        sk.port_hi_be = k.port_hi_be;
        put16(&mut sk.addr_lo_be, &In6::at(&k.addr_lo_be));
        put16(&mut sk.addr_hi_be, &In6::at(&k.addr_hi_be));
    }
    #[inline(always)]
    fn value(s: *mut Ct6SlotV1) -> *mut CtValueV2 {
        // SAFETY: field of a valid slot.
        unsafe { &mut (*s).value }
    }
}

/// An IPv6 key as the fast path holds it: words, in the per-CPU scratch (see `fast`), where
/// the general path writes a [`Ct6KeyV1`] there. Ends ordered as in [`Ct6KeyV1::set`];
/// `ports` is the native-order word of the low end's port then the high end's, in network
/// order. Whole words throughout: byte fields made LLVM keep a pointer per byte.
#[repr(C)]
pub struct Key6 {
    pub lo: In6,
    pub hi: In6,
    pub ifindex: u32,
    pub ports: u32,
    pub protocol: u32,
    pub _pad: u32,
}

/// The IPv6 table, probed with a [`Key6`] (the fast path's).
pub struct V6Words;

impl Table for V6Words {
    type Key = Key6;
    type Slot = Ct6SlotV1;
    #[inline(always)]
    fn bucket(k: &Key6) -> u32 {
        bulkhead_common::ct::bucket6_ports_word(k.ifindex, k.lo.0, k.hi.0, k.ports, k.protocol as u8)
    }
    #[inline(always)]
    fn slot(i: u32) -> Option<*mut Ct6SlotV1> {
        CONNTRACK6.get_ptr_mut(i)
    }
    #[inline(always)]
    fn key_eq(s: *const Ct6SlotV1, k: &Key6) -> bool {
        // SAFETY: as for IPv4.
        let sk = unsafe { &(*s).key };
        let (a, c) = (In6::at(&sk.addr_lo_be).0, In6::at(&sk.addr_hi_be).0);
        let ports = u32::from_ne_bytes([sk.port_lo_be[0], sk.port_lo_be[1], sk.port_hi_be[0], sk.port_hi_be[1]]);
        let rest = (sk.ifindex ^ k.ifindex) | (ports ^ k.ports) | (sk.protocol as u32 ^ k.protocol);
        (a[0] ^ k.lo.0[0]) | (a[1] ^ k.lo.0[1]) | (c[0] ^ k.hi.0[0]) | (c[1] ^ k.hi.0[1]) | rest as u64 == 0
    }
    #[inline(always)]
    fn set_key(s: *mut Ct6SlotV1, k: &Key6) {
        // SAFETY: the caller owns the slot.
        let sk = unsafe { &mut (*s).key };
        sk.ifindex = k.ifindex;
        sk.protocol = k.protocol as u8;
        sk._pad = [0; 3];
        let p = k.ports.to_ne_bytes();
        sk.port_lo_be = [p[0], p[1]];
        sk.port_hi_be = [p[2], p[3]];
        put16(&mut sk.addr_lo_be, &k.lo);
        put16(&mut sk.addr_hi_be, &k.hi);
    }
    #[inline(always)]
    fn value(s: *mut Ct6SlotV1) -> *mut CtValueV2 {
        // SAFETY: field of a valid slot.
        unsafe { &mut (*s).value }
    }
}

/// The slot's first 8 bytes as one word: `seq` (low half) and `live` (high half) on this
/// little-endian machine. The BPF target has 64-bit atomics only, so both are read and taken
/// together. A volatile 8-byte load (one instruction, never torn); the fence keeps the
/// compiler from moving the slot's other reads above it (x86 keeps loads in order).
#[inline(always)]
fn load_state<S>(s: *mut S) -> u64 {
    // SAFETY: both slot types start with `seq: u32, live: u32`, 8-byte aligned in the array.
    let st = unsafe { read_volatile(s as *const u64) };
    compiler_fence(Ordering::Acquire);
    st
}

/// The state word with its sequence (low half) even and `live` set or not.
#[inline(always)]
fn state(seq: u32, live: bool) -> u64 {
    (live as u64) << 32 | seq as u64
}

/// The live slot holding `k` in its bucket. Inlined only into the established-flow fast
/// path ([`find_inline`]); elsewhere a subprogram ([`find`]): four inlined probes at each of
/// the slow path's call sites multiplied the paths the verifier walks past its limit.
#[inline(always)]
fn find_slot<T: Table>(k: &T::Key) -> Option<*mut T::Slot> {
    let base = T::bucket(k) * WAYS;
    for w in 0..WAYS {
        let s = T::slot(base + w)?;
        let st = load_state(s);
        // Even sequence, live, the key, and the same state after reading it: not torn.
        // Non-short-circuit `&`: one branch per way, not four.
        if (st & 1 == 0) & (st >> 32 != 0) & T::key_eq(s, k) && load_state(s) == st {
            return Some(s);
        }
    }
    None
}

/// The entry of `k`, for update in place (races with other CPUs only blur its counters).
#[inline(never)]
pub fn find<T: Table>(k: &T::Key) -> Option<*mut CtValueV2> {
    find_slot::<T>(k).map(T::value)
}

/// As [`find`], inlined: for the one call site that pays for a call (the fast path).
#[inline(always)]
pub fn find_inline<T: Table>(k: &T::Key) -> Option<*mut CtValueV2> {
    find_slot::<T>(k).map(T::value)
}

/// Takes slot `s` for writing: its sequence from even to odd, if its state is still `st`.
/// False when another writer has it or took it since.
#[inline(always)]
fn claim<S>(s: *mut S, st: u64) -> bool {
    // The BPF target offers no `compare_exchange` on its atomic types; LLVM lowers the
    // intrinsic to the BPF_CMPXCHG instruction (a locked cmpxchg once JIT-compiled).
    // SAFETY: an aligned 8-byte word of a valid slot.
    st & 1 == 0 && unsafe { atomic_cxchg::<u64, { AtomicOrdering::AcqRel }, { AtomicOrdering::Relaxed }>(s as *mut u64, st, st + 1) }.1
}

/// Gives a claimed slot (state `st` when claimed) back: the next even sequence, `live` as
/// given. The slot's other writes are ordered before this store (x86 keeps stores in order;
/// the fence keeps the compiler from moving them past it).
#[inline(always)]
fn release<S>(s: *mut S, st: u64, live: bool) {
    compiler_fence(Ordering::Release);
    // SAFETY: the caller owns the slot; an aligned 8-byte store.
    unsafe { write_volatile(s as *mut u64, state((st as u32).wrapping_add(2), live)) };
}

/// Writes the entry of `k`: into its own slot if it has one (a reused tuple starts afresh),
/// else a free or expired slot of its bucket, else over the least recently seen flow there
/// (counted). False when another writer held the chosen slot (counted by the caller).
/// Inlined: one call site per family, and as a subprogram its frame on top of the family's
/// passed the BPF stack's 512 bytes.
#[inline(always)]
pub fn insert<T: Table>(k: &T::Key, v: &CtValueV2, cfg: &ConfigV2, now: u64) -> bool {
    let base = T::bucket(k) * WAYS;
    // Rank: 0 = the key's own slot or a free one, else 1 + last seen: lowest wins, so an
    // expired flow (seen long ago) goes before a live one. Plain integers across the loop (the
    // way, not a pointer, and no Option): the verifier must never see a pointer where LLVM
    // merged an unset value, and few branches per way keep its walk short.
    let (mut best_w, mut best_st, mut best_rank) = (WAYS, 0u64, u64::MAX);
    for w in 0..WAYS {
        let Some(s) = T::slot(base + w) else { return false };
        let st = load_state(s);
        // A torn read only makes a worse choice, never a wrong write: the claim below
        // checks the state again.
        // SAFETY: a valid slot's value.
        let seen = unsafe { (*T::value(s)).last_seen_ns };
        let rank = if (st >> 32 == 0) | T::key_eq(s, k) { 0 } else { seen.saturating_add(1) };
        if rank < best_rank {
            (best_w, best_st, best_rank) = (w, st, rank);
        }
    }
    if best_w >= WAYS {
        return false;
    }
    let Some(s) = T::slot(base + best_w) else { return false };
    let st = best_st;
    if !claim(s, st) {
        return false;
    }
    // SAFETY: the slot is ours: its value is the flow being replaced, if any.
    if best_rank != 0 && !unsafe { &*T::value(s) }.expired(cfg, now) {
        count(counters::CT_EVICTED);
    }
    T::set_key(s, k);
    // SAFETY: the slot is ours until released.
    unsafe { *T::value(s) = *v };
    release(s, st, true);
    true
}

/// Removes the entry of `k`, if any. A subprogram, as [`find`].
#[inline(never)]
pub fn remove<T: Table>(k: &T::Key) {
    let Some(s) = find_slot::<T>(k) else { return };
    let st = load_state(s);
    if claim(s, st) {
        // Another flow may have taken the slot between the probe and the claim.
        let still = T::key_eq(s, k);
        release(s, st, !still && st >> 32 != 0);
    }
}
