//! Policy verdict for a new flow: a fixed number of lookups, whatever the number of rules,
//! tiers or policies. The compiler says, per (local identity, peer or any peer, direction),
//! which verdict table judges it, and per table complete verdicts per protocol slice; the
//! agent joins the two, so the first (peer, protocol) entry found answers. Peer entries and
//! port exceptions are found in direct-mapped arrays first ([`bulkhead_common::slots`]), so
//! most verdicts take no hash lookup at all.

use aya_ebpf::maps::lpm_trie::Key;
use bulkhead_common::{
    GEN_DIRECTION_BIT, IpCache6KeyV1, IpCacheKeyV1, IpInfoV3, NO_POLICY, PORT_KEY_FULL_BITS, PeerKeyV2, PeerSliceV1, PolicyValueV2,
    PortKeyV1, STAGED_DIRECTION_BIT, action, identity, ip_slot_flags, port_filter_bit, proto, slice_flags, slots,
};

use crate::family::In6;
use crate::maps::{
    IPCACHE6_G0, IPCACHE6_G1, IPCACHE_G0, IPCACHE_G1, IPHOST6_G0, IPHOST6_G1, IPHOST_G0, IPHOST_G1, IPSLOT6_G0, IPSLOT6_G1, IPSLOT_G0, IPSLOT_G1, PEER_SLOTS,
    PEERS, PORT_SLOTS, PORTS, RANGES,
};

/// Identity and peer class of a remote address in policy generation `pgen`: exact (pods)
/// first, from the direct-mapped slot array or else the hash, then prefixes, else WORLD
/// judged as any peer.
#[inline(always)]
pub fn peer_info(remote_be: [u8; 4], pgen: u8) -> IpInfoV3 {
    // Each generation with its own call sites: a map pointer chosen at run time would keep
    // the verifier from inlining the lookup.
    let slot = bulkhead_common::ip_slot(remote_be);
    if pgen == 0 {
        // An empty slot, or one without MORE, means no exact entry elsewhere either.
        let more = match IPSLOT_G0.get(slot) {
            Some(s) if s.flags & ip_slot_flags::PRESENT != 0 && s.addr_be == remote_be => return s.info,
            Some(s) => s.flags & ip_slot_flags::MORE != 0,
            None => true,
        };
        if more {
            // SAFETY: value copied out immediately.
            if let Some(info) = unsafe { IPHOST_G0.get(&remote_be) } {
                return *info;
            }
        }
        match IPCACHE_G0.get(Key::new(32, IpCacheKeyV1 { addr_be: remote_be })) {
            Some(info) => *info,
            None => WORLD,
        }
    } else {
        // An empty slot, or one without MORE, means no exact entry elsewhere either.
        let more = match IPSLOT_G1.get(slot) {
            Some(s) if s.flags & ip_slot_flags::PRESENT != 0 && s.addr_be == remote_be => return s.info,
            Some(s) => s.flags & ip_slot_flags::MORE != 0,
            None => true,
        };
        if more {
            // SAFETY: value copied out immediately.
            if let Some(info) = unsafe { IPHOST_G1.get(&remote_be) } {
                return *info;
            }
        }
        match IPCACHE_G1.get(Key::new(32, IpCacheKeyV1 { addr_be: remote_be })) {
            Some(info) => *info,
            None => WORLD,
        }
    }
}

/// An address in no cached prefix.
const WORLD: IpInfoV3 = IpInfoV3 { identity: identity::WORLD, peer_class: identity::ANY };

/// An IPv6 address in no cached prefix (the compiler writes `::/0` when such addresses are
/// judged otherwise than any peer).
const WORLD6: IpInfoV3 = IpInfoV3 { identity: identity::WORLD6, peer_class: identity::ANY };

/// As [`peer_info`], for an IPv6 address: the slot array, the host hash (pods whose slot
/// another took), then the prefix trie.
#[inline(always)]
pub fn peer_info6(remote: &In6, pgen: u8) -> IpInfoV3 {
    let remote_be = remote.bytes();
    let slot = bulkhead_common::ip_slot6(remote_be);
    if pgen == 0 {
        let more = match IPSLOT6_G0.get(slot) {
            Some(s) if s.flags & ip_slot_flags::PRESENT != 0 && In6::at(&s.addr_be) == *remote => return s.info,
            Some(s) => s.flags & ip_slot_flags::MORE != 0,
            None => true,
        };
        if more {
            // SAFETY: value copied out immediately.
            if let Some(info) = unsafe { IPHOST6_G0.get(remote_be) } {
                return *info;
            }
        }
        match IPCACHE6_G0.get(Key::new(128, IpCache6KeyV1 { addr_be: *remote_be })) {
            Some(info) => *info,
            None => WORLD6,
        }
    } else {
        let more = match IPSLOT6_G1.get(slot) {
            Some(s) if s.flags & ip_slot_flags::PRESENT != 0 && In6::at(&s.addr_be) == *remote => return s.info,
            Some(s) => s.flags & ip_slot_flags::MORE != 0,
            None => true,
        };
        if more {
            // SAFETY: value copied out immediately.
            if let Some(info) = unsafe { IPHOST6_G1.get(remote_be) } {
                return *info;
            }
        }
        match IPCACHE6_G1.get(Key::new(128, IpCache6KeyV1 { addr_be: *remote_be })) {
            Some(info) => *info,
            None => WORLD6,
        }
    }
}

/// The verdict when no tier applies: allow, decided by no policy.
pub const DEFAULT_ALLOW: PolicyValueV2 = PolicyValueV2 {
    policy_index: NO_POLICY,
    log_policy_index: NO_POLICY,
    rule_index: 0,
    log_rule_index: 0,
    tier_index: u16::MAX,
    action: action::ALLOW,
    flags: 0,
};

/// The slice of (local, peer class) or else (local, any peer), each for the protocol or else
/// any protocol (an entry with a table always has its any-protocol one), through its port
/// exceptions if it has any. No entry: no tier applies, allow. `dir` carries the staged and
/// generation bits. Typically one slot, plus one for a port with an exception.
#[inline(always)]
fn judge(local: u32, peer_class: u32, dir: u8, protocol: u8, port: u16) -> PolicyValueV2 {
    judge_ref(local, peer_class, dir, protocol, port).copied().unwrap_or(DEFAULT_ALLOW)
}

/// As [`judge`], the verdict where it sits in its map (`None`: [`DEFAULT_ALLOW`]). A pointer
/// comes back in one register: as a subprogram's result, a copied verdict would come back
/// through the caller's stack, a pointer to which the subprogram keeps on its own.
#[inline(always)]
fn judge_ref(local: u32, peer_class: u32, dir: u8, protocol: u8, port: u16) -> Option<&'static PolicyValueV2> {
    // The question is kept in the port key from the start and read back from it (volatile)
    // where needed: held in registers across the lookups, it was three spill slots, and this
    // subprogram's frame sits on top of the entry's and the family path's in 512 bytes.
    let mut key = PortKeyV1 { table_be: [0; 4], direction: dir, protocol, port_be: port.to_be_bytes() };
    let asked = |k: &PortKeyV1| -> u8 {
        // SAFETY: a field of a live stack value.
        unsafe { core::ptr::read_volatile(&k.protocol) }
    };
    let mut pk = PeerKeyV2 { local_identity_be: local.to_be_bytes(), peer_class_be: peer_class.to_be_bytes(), direction: dir, protocol, _pad: [0; 2] };
    let e = match peer_slice(&mut pk, asked(&key)) {
        Some(e) => e,
        // Class ANY was the any-peer lookup already.
        None if peer_class == identity::ANY => return None,
        None => {
            pk.peer_class_be = identity::ANY.to_be_bytes();
            peer_slice(&mut pk, asked(&key))?
        }
    };
    // Through the map value, not a copy: the subprogram's frame sits on top of the family's.
    let slice = &e.slice;
    if slice.flags & slice_flags::BROKEN != 0 {
        crate::maps::count(bulkhead_common::counters::DROP_BROKEN_TABLE);
        return Some(&slice.verdict);
    }
    if slice.flags & (slice_flags::HAS_PORTS | slice_flags::HAS_RANGES) != 0 {
        // SAFETY: a field of a live stack value.
        let port = u16::from_be_bytes(unsafe { core::ptr::read_volatile(&key.port_be) });
        (key.table_be, key.protocol) = (e.table_be, e.protocol);
        if slice.flags & slice_flags::HAS_PORTS != 0 && slice.port_filter & port_filter_bit(port) != 0 {
            if let Some(v) = port_entry(&key) {
                return Some(v);
            }
        }
        if slice.flags & slice_flags::HAS_RANGES != 0 {
            if let Some(v) = RANGES.get(&Key::new(PORT_KEY_FULL_BITS, key)) {
                return Some(v);
            }
        }
    }
    Some(&slice.verdict)
}

/// The entry of `pk` for `protocol`, else for any protocol (`pk.protocol` is left set).
#[inline(always)]
fn peer_slice(pk: &mut PeerKeyV2, protocol: u8) -> Option<&'static PeerSliceV1> {
    pk.protocol = protocol;
    if let Some(e) = peer_entry(pk) {
        return Some(e);
    }
    if protocol == proto::ANY {
        return None;
    }
    pk.protocol = proto::ANY;
    peer_entry(pk)
}

/// The generation of a key's direction byte.
#[inline(always)]
fn gen_of(direction: u8) -> u32 {
    (direction & GEN_DIRECTION_BIT != 0) as u32
}

/// The entry of `pk` (generation bit in its direction): its slot, else the hash when the slot
/// is MORE. No hash lookup for a key whose slot is free or holds another key alone.
#[inline(always)]
fn peer_entry(pk: &PeerKeyV2) -> Option<&'static PeerSliceV1> {
    let bare = slots::bare_peer(pk);
    let w = slots::peer_words(&bare);
    let i = gen_of(pk.direction) * slots::PEER_SLOTS + slots::peer_slot(w);
    let more = match PEER_SLOTS.get(i) {
        Some(s) if s.flags & ip_slot_flags::PRESENT != 0 && slots::peer_words(&s.key) == w => return Some(&s.value),
        Some(s) => s.flags & ip_slot_flags::MORE != 0,
        // Index in range by construction; should it not be, the hash still answers.
        None => true,
    };
    if !more {
        return None;
    }
    // SAFETY: a hash value stays valid for the program's run (RCU); the agent writes only
    // the inactive generation.
    unsafe { PEERS.get(pk) }
}

/// The verdict of a single-port exception `key` (generation bit in its direction), as
/// [`peer_entry`].
#[inline(always)]
fn port_entry(key: &PortKeyV1) -> Option<&'static PolicyValueV2> {
    let w = slots::port_word(&slots::bare_port(key));
    let i = gen_of(key.direction) * slots::PORT_SLOTS + slots::port_slot(w);
    let more = match PORT_SLOTS.get(i) {
        Some(s) if s.flags & ip_slot_flags::PRESENT != 0 && slots::port_word(&s.key) == w => return Some(&s.verdict),
        Some(s) => s.flags & ip_slot_flags::MORE != 0,
        None => true,
    };
    if !more {
        return None;
    }
    // SAFETY: as in `peer_entry`.
    unsafe { PORTS.get(key) }
}

/// The direction byte of keys of generation `pgen`.
#[inline(always)]
fn with_gen(dir: u8, pgen: u8) -> u8 {
    if pgen != 0 { dir | GEN_DIRECTION_BIT } else { dir }
}

/// Enforced verdict in policy generation `pgen`, inlined: a new flow's verdict, the one call
/// site per family that every new flow takes.
#[inline(always)]
pub fn enforced(local: u32, peer_class: u32, dir: u8, protocol: u8, port: u16, pgen: u8) -> PolicyValueV2 {
    judge(local, peer_class, with_gen(dir, pgen), protocol, port)
}

/// As [`enforced`], through a BPF subprogram: for a tracked flow judged again after a policy
/// change. Each inlined verdict multiplies the paths the verifier walks (its probes' hits,
/// misses and spills times everything after them); with a third and fourth copy per family
/// the programs passed its million-instruction limit.
#[inline(always)]
pub fn enforced_again(local: u32, peer_class: u32, dir: u8, protocol: u8, port: u16, pgen: u8) -> PolicyValueV2 {
    judge_call(pack_ids(local, peer_class), pack_question(with_gen(dir, pgen), protocol, port)).copied().unwrap_or(DEFAULT_ALLOW)
}

/// Staged (counterfactual) verdict in policy generation `pgen`: through the subprogram, as
/// [`enforced_again`] (only endpoints with staged policies take it).
#[inline(always)]
pub fn staged(local: u32, peer_class: u32, dir: u8, protocol: u8, port: u16, pgen: u8) -> PolicyValueV2 {
    judge_call(pack_ids(local, peer_class), pack_question(with_gen(dir | STAGED_DIRECTION_BIT, pgen), protocol, port)).copied().unwrap_or(DEFAULT_ALLOW)
}

#[inline(always)]
fn pack_ids(local: u32, peer_class: u32) -> u64 {
    (local as u64) << 32 | peer_class as u64
}

#[inline(always)]
fn pack_question(dir: u8, protocol: u8, port: u16) -> u64 {
    dir as u64 | (protocol as u64) << 8 | (port as u64) << 16
}

/// [`judge_ref`] as a subprogram. Its arguments are packed into two words (a BPF call takes
/// at most five registers).
#[inline(never)]
fn judge_call(ids: u64, q: u64) -> Option<&'static PolicyValueV2> {
    judge_ref((ids >> 32) as u32, ids as u32, q as u8, (q >> 8) as u8, (q >> 16) as u16)
}
