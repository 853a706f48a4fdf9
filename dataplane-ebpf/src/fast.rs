//! The established-flow fast path: a TCP or UDP packet of a flow conntrack already admitted
//! under the current policy passes after a handful of checks and one inlined probe of the
//! table, without the general parser and without the call into the probe's subprogram (each
//! call costs the kernel's return thunk on this project's machines).
//!
//! Both run in the programs' entry, before the call into the family's path (IPv4: 43 ns
//! against 54-56 ns inside `tc_v4`, the no-op 26-27; IPv6: 49-55 against 55-62 inside
//! `tc_v6`). The entry's frame, `tc_v4`'s and the verdict subprogram's share the BPF stack's
//! 512 bytes, so IPv6's key (four address words) is built in the per-CPU scratch, not on the
//! stack.
//!
//! It decides nothing the general path would decide otherwise: every packet it does not
//! recognise as plainly established goes on to the general path unchanged (`None`). That is
//! IP options, fragments, ICMP, a bare SYN, FIN or RST (the flow's end is reported there), a
//! source the anti-spoofing check would look at, an isolated or overflowed endpoint, an
//! expired entry and one admitted under another policy revision (judged again there).

use aya_ebpf::programs::TcContext;
use bulkhead_common::{ConfigV2, CtKeyV2, CtValueV2, EndpointV4, counters, direction, ep_flags, proto};

use crate::{
    conntrack,
    family::In6,
    maps::{self, count},
    parse::{TCP_FIN, TCP_RST, TCP_SYN, word},
};

const ETH_HLEN: usize = 14;
/// Ethernet, an IPv4 header without options, and the L4 bytes up to the TCP flags.
const V4_LEN: usize = ETH_HLEN + 20 + 14;
/// Ethernet, the IPv6 header, and the L4 bytes up to the TCP flags.
const V6_LEN: usize = ETH_HLEN + 40 + 14;

/// `Some(verdict)` for an IPv4 packet of an established flow; `None`: the general path
/// decides.
#[inline(always)]
pub fn established_v4(ctx: &TcContext, raw: &EndpointV4, cfg: &ConfigV2, dir: u8, ifindex: u32) -> Option<i32> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + V4_LEN > end {
        return None;
    }
    // SAFETY: all reads below are inside [data, data + V4_LEN), checked above.
    let eth_type = unsafe { *((data + 12) as *const [u8; 2]) };
    let ip = data + ETH_HLEN;
    let (ver_ihl, frag, protocol) = unsafe { (*(ip as *const u8), *((ip + 6) as *const [u8; 2]), *((ip + 9) as *const u8)) };
    let l4 = ip + 20;
    // IPv4 without options, not a later fragment (as the parser: the first fragment has the
    // ports), and a packet this path takes, before anything else: a new flow's SYN leaves
    // here, on its way to the general path, after a few loads.
    if eth_type != [0x08, 0x00] || ver_ihl != 0x45 || frag[0] & 0x1f != 0 || frag[1] != 0 || !plain(protocol, unsafe { *((l4 + 13) as *const u8) }) {
        return None;
    }
    if !open_endpoint(raw, cfg, ifindex) {
        return None;
    }
    // Whole words (`parse::word`): byte by byte, LLVM spilled the bytes, which put this
    // path's stack past what the programs' entry can hold beside the general path.
    let (saddr, daddr) = unsafe { (word((ip + 12) as *const [u8; 4]), word((ip + 16) as *const [u8; 4])) };
    let ports = unsafe { word(l4 as *const [u8; 4]) };
    // The general path drops a spoofed source and reports it.
    if dir == direction::EGRESS && (saddr != raw.ipv4_be || saddr == [0; 4]) {
        return None;
    }
    let key = CtKeyV2::of(ifindex, saddr, [ports[0], ports[1]], daddr, [ports[2], ports[3]], protocol);
    let ct = conntrack::find_inline::<conntrack::V4>(&key)?;
    // SAFETY: a valid slot's value; races with other CPUs only blur its counters.
    pass(unsafe { &mut *ct }, cfg, dir, ifindex, ctx.len())
}

/// As [`established_v4`], for IPv6 without extension headers.
#[inline(always)]
pub fn established_v6(ctx: &TcContext, raw: &EndpointV4, cfg: &ConfigV2, dir: u8, ifindex: u32) -> Option<i32> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + V6_LEN > end {
        return None;
    }
    let ip = data + ETH_HLEN;
    // SAFETY: all reads below are inside [data, data + V6_LEN), checked above.
    let (ver, protocol) = unsafe { (*(ip as *const u8) >> 4, *((ip + 6) as *const u8)) };
    let l4 = ip + 40;
    // As for IPv4: a SYN leaves before the isolation lookup.
    if ver != 6 || !plain(protocol, unsafe { *((l4 + 13) as *const u8) }) || !open_endpoint(raw, cfg, ifindex) {
        return None;
    }
    // Index 0 of a one-entry array always exists; the general path decides should it not.
    // Taken before the packet's words are loaded, so they need not outlive the lookup.
    let scratch = maps::SCRATCH6.get_ptr_mut(0)?;
    // The key is built in the per-CPU scratch, straight from the packet, and its ends put in
    // order there: held in registers, its words spilled and took the entry's frame past what
    // the entry, `tc_v4` and the verdict subprogram can share.
    // SAFETY: this CPU's scratch slot, used by this packet only; packet reads inside the
    // checked range.
    let key = unsafe { &mut (*scratch).fast };
    (key.lo, key.hi) = (In6::at((ip + 8) as *const [u8; 16]), In6::at((ip + 24) as *const [u8; 16]));
    key.ports = u32::from_ne_bytes(unsafe { word(l4 as *const [u8; 4]) });
    (key.ifindex, key.protocol) = (ifindex, protocol as u32);
    // Only the pod's own address here; link-local sources take the general path.
    if dir == direction::EGRESS && (key.lo != In6::at(&raw.ipv6_be) || key.lo.0 == [0; 2]) {
        return None;
    }
    if !source_first(key) {
        // The destination is the low end: ends swapped, and the word's two ports with them.
        // Word by word: `mem::swap` moved the 32 bytes one byte at a time here.
        let (lo, hi) = (key.lo.0, key.hi.0);
        (key.lo.0, key.hi.0) = (hi, lo);
        key.ports = key.ports.rotate_left(16);
    }
    let ct = conntrack::find_inline::<conntrack::V6Words>(key)?;
    // SAFETY: as for IPv4.
    pass(unsafe { &mut *ct }, cfg, dir, ifindex, ctx.len())
}

/// Whether the source end of the packet's tuple in `k` (as loaded: source first) is the
/// low end, by the shared rule. Each word is read from the scratch when compared (volatile
/// reads): LLVM otherwise kept all of them in registers at once and spilled them onto the
/// entry's stack.
#[inline(always)]
fn source_first(k: &conntrack::Key6) -> bool {
    let p = k.ports.to_ne_bytes();
    bulkhead_common::ct6_source_first_with(
        // SAFETY: fields of a valid reference.
        |source, i| u64::from_be(unsafe { core::ptr::read_volatile(if source { &k.lo.0[i] } else { &k.hi.0[i] }) }),
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    )
}

/// Neither overflowed (fails closed) nor isolated (the allow-list decides): those take the
/// general path.
#[inline(always)]
fn open_endpoint(raw: &EndpointV4, cfg: &ConfigV2, ifindex: u32) -> bool {
    let g = bulkhead_common::generation(cfg.policy_rev) & 1;
    let flags = if g == 0 { raw.flags[0] } else { raw.flags[1] };
    flags & ep_flags::OVERFLOW_FAIL_CLOSED == 0 && !maps::isolated(ifindex)
}

/// TCP without SYN, FIN or RST, or UDP: the packets this path takes.
#[inline(always)]
fn plain(protocol: u8, tcp_flags: u8) -> bool {
    protocol == proto::UDP || (protocol == proto::TCP && tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0)
}

/// Passes a packet of the live entry `ct` admitted under the current revision, as the
/// general path's conntrack step does; `None` for an expired entry or another revision.
#[inline(always)]
fn pass(ct: &mut CtValueV2, cfg: &ConfigV2, dir: u8, ifindex: u32, len: u32) -> Option<i32> {
    let now = crate::coarse_now(cfg);
    if ct.policy_rev != cfg.policy_rev || ct.expired(cfg, now) {
        return None;
    }
    conntrack::count_packet(ct, len, now, dir != ct.origin_direction);
    if ct.origin_direction == direction::EGRESS {
        maps::add_egress_bytes(ifindex, len);
    }
    count(counters::ALLOW_CT);
    Some(crate::TC_PASS)
}
