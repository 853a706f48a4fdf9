//! Bulkhead's eBPF programs.
//!
//! Enforcement sits at TC on the host side of each pod's veth: `bh_from_pod` (TC ingress of the
//! host veth = the pod's egress) and `bh_to_pod` (TC egress of the host veth = the pod's
//! ingress). `bh_xdp_prefilter` (off by default: XDP on a veth costs the pod TSO) can run first
//! on packets leaving the pod and drop spoofed source addresses; `bh_xdp_uplink` drops denied
//! outside prefixes on a node's physical interface. The benchmarks' no-op baselines are loaded
//! by the benchmarks themselves, not shipped here.
//!
//! The detector's probes are tracepoints: `bh_exec` (sched_process_exec: exec events and
//! in-kernel protect), `bh_fork` (sched_process_fork: parents) and `bh_sys_enter`
//! (raw tracepoint sys_enter: syscall counts), `bh_file` (syscalls/sys_enter_* of the file
//! calls: file-system baselines). TC drops traffic of isolated endpoints.
#![no_std]
#![no_main]
// The conntrack table's compare-and-swap (`conntrack::claim`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod conntrack;
mod detect;
mod events;
mod family;
mod fast;
mod files;
mod isolate;
mod learned;
mod maps;
mod parse;
mod policy;
mod uplink;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::{classifier, raw_tracepoint, tracepoint, xdp},
    programs::{RawTracePointContext, TcContext, TracePointContext, XdpContext},
};
use bulkhead_common::{
    ConfigV2, CtValueV2, EndpointV4, action, counters, direction, ep_flags, flow_kind, proto, verdict_flags,
};

use family::Addr;
use maps::{CONFIG, count};
use parse::{Flow, Frame, parse};

/// Continue: with tcx, the next program on the hook (or the stack) decides.
pub(crate) const TC_PASS: i32 = TC_ACT_UNSPEC;
const TC_DROP: i32 = TC_ACT_SHOT as i32;

/// Packets leaving the pod: the pod's egress policy.
#[classifier]
pub fn bh_from_pod(ctx: TcContext) -> i32 {
    try_tc(&ctx, direction::EGRESS)
}

/// Packets entering the pod: the pod's ingress policy.
#[classifier]
pub fn bh_to_pod(ctx: TcContext) -> i32 {
    try_tc(&ctx, direction::INGRESS)
}

/// Anti-spoofing pre-filter on the host side of the pod's veth.
#[xdp]
pub fn bh_xdp_prefilter(ctx: XdpContext) -> u32 {
    try_xdp(&ctx)
}

/// Pre-filter on a node's uplink (a physical interface, in driver mode): drops packets from
/// denied source prefixes before the kernel allocates a socket buffer for them.
#[xdp]
pub fn bh_xdp_uplink(ctx: XdpContext) -> u32 {
    uplink::try_uplink(&ctx)
}

/// Exec of a process: report it; in protect mode kill and isolate on a binary outside the
/// workload's profile.
#[tracepoint]
pub fn bh_exec(ctx: TracePointContext) -> u32 {
    detect::try_exec(&ctx)
}

/// Fork of a task: remember its parent (monitored workloads only).
#[tracepoint]
pub fn bh_fork(ctx: TracePointContext) -> u32 {
    detect::try_fork(&ctx)
}

/// Entry of a file syscall (one program on the syscalls/sys_enter_* tracepoints of the calls
/// that change the file system, and open): judge it against the workload's file baseline.
#[tracepoint]
pub fn bh_file(ctx: TracePointContext) -> u32 {
    files::try_file(&ctx)
}

/// Entry of a syscall: count it per workload (monitored workloads only). A raw tracepoint:
/// the regular one formats a trace record for every syscall of every task first.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn bh_sys_enter(ctx: RawTracePointContext) -> i32 {
    detect::try_sys_enter(&ctx)
}

#[inline(always)]
fn try_xdp(ctx: &XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(ep) = maps::endpoint(ifindex) else {
        // Fail-open here on purpose: TC behind us fails closed for unknown endpoints.
        count(counters::XDP_PASS_NO_ENDPOINT);
        return xdp_action::XDP_PASS;
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 30 > end {
        // Too short for an IPv4 source address: TC parses and decides.
        count(counters::XDP_PASS);
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above (14-byte Ethernet header + 16 bytes of IPv4 header).
    let eth_type = unsafe { *((data + 12) as *const [u8; 2]) };
    if eth_type == [0x08, 0x00] {
        // SAFETY: bounds checked above.
        let saddr = unsafe { *((data + 26) as *const [u8; 4]) };
        if saddr != ep.ipv4_be {
            count(counters::DROP_SPOOFED);
            return xdp_action::XDP_DROP;
        }
    }
    count(counters::XDP_PASS);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn try_tc(ctx: &TcContext, dir: u8) -> i32 {
    // SAFETY: __sk_buff is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(raw) = maps::endpoint(ifindex) else {
        return dropped_early(ifindex, dir, counters::DROP_NO_ENDPOINT);
    };
    let Some(cfg) = CONFIG.get(0) else {
        return dropped_early(ifindex, dir, counters::DROP_NO_CONFIG);
    };
    // Each family in a function of its own: inlined together, the two paths' stack slots
    // add up past the BPF stack's 512 bytes. The entry keeps only the fast paths' 80-88
    // bytes (IPv6's key lives in the per-CPU scratch), so either callee has most of it
    // (entry, `tc_v4` and the verdict subprogram come to 488 of 512). Most packets: a flow
    // conntrack admitted. Here rather than in the family's path, it saves that call (about
    // 10 ns of an established packet's 55).
    if parse::is_ipv6(ctx.data(), ctx.data_end()) {
        if let Some(v) = fast::established_v6(ctx, raw, cfg, dir, ifindex) {
            return v;
        }
        tc_v6(ctx.skb.skb, raw, cfg, dir, ifindex)
    } else {
        if let Some(v) = fast::established_v4(ctx, raw, cfg, dir, ifindex) {
            return v;
        }
        tc_v4(ctx.skb.skb, raw, cfg, dir, ifindex)
    }
}

/// Reports and drops a packet the entry cannot judge at all. A subprogram: the drop record's
/// metadata would otherwise take the entry's stack, which the established-flow fast path and
/// the family's path share.
#[inline(never)]
fn dropped_early(ifindex: u32, dir: u8, reason: u32) -> i32 {
    events::dropped_unparsed(ifindex, dir, reason, None);
    TC_DROP
}

/// Parses the frame with `$parse` (an expression of `$d`, `$e`: the frame's data and
/// data_end), pulling headers beyond the linear part into it once; `None` after a drop
/// (reported). A macro, not a function taking a closure: LLVM kept the closure as a BPF
/// subprogram of its own (called twice), which cost the IPv6 path about 13 ns per packet.
macro_rules! parse_pulled {
    ($ctx:expr, $local:expr, $dir:expr, $ifindex:expr, |$d:ident, $e:ident| $parse:expr) => {{
        let ($d, $e) = ($ctx.data(), $ctx.data_end());
        match $parse {
            Some(f) => Some(f),
            // Headers beyond the linear part (IP options, extension headers, an ICMP error's
            // quote): pull in what the parser may read, once, then fail closed.
            None => {
                if $ctx.pull_data((parse::MAX_PARSE_LEN as u32).min($ctx.len())).is_err() {
                    events::dropped_unparsed($ifindex, $dir, counters::DROP_MALFORMED, $local);
                    None
                } else {
                    let ($d, $e) = ($ctx.data(), $ctx.data_end());
                    let f = $parse;
                    if f.is_none() {
                        events::dropped_unparsed($ifindex, $dir, counters::DROP_MALFORMED, $local);
                    }
                    f
                }
            }
        }
    }};
}

/// Everything but IPv6: IPv4 (and its ICMP errors) judged, ARP passed, the rest dropped.
#[inline(never)]
fn tc_v4(skb: *mut aya_ebpf::bindings::__sk_buff, raw: &EndpointV4, cfg: &ConfigV2, dir: u8, ifindex: u32) -> i32 {
    let ctx = TcContext::new(skb);
    // One generation for the whole packet: every lookup below sees one complete policy.
    let g = bulkhead_common::generation(cfg.policy_rev) as usize & 1;
    let local = Some((raw.identity[g], g as u8));
    let Some(frame) = parse_pulled!(ctx, local, dir, ifindex, |d, e| parse(d, e)) else { return TC_DROP };
    // An ICMP error goes through the same checks as its flow's packets, as the reversed quote:
    // that puts the flow's remote side where the isolation allow-list expects it in this
    // direction (destination on egress, source on ingress). Anti-spoofing checks the error's
    // own source.
    let len = ctx.len();
    match frame {
        Frame::Ipv4(f) => judge(ifindex, raw, cfg, g, &f, &f.saddr_be, false, dir, len),
        Frame::IcmpError { saddr_be, quoted } => judge(ifindex, raw, cfg, g, &parse::reversed(&quoted), &saddr_be, true, dir, len),
        Frame::Pass(c) => {
            count(c);
            TC_PASS
        }
        Frame::Drop(c) => {
            events::dropped_unparsed(ifindex, dir, c, local);
            TC_DROP
        }
    }
}

/// IPv6: the same steps as IPv4, with the IPv6 caches and conntrack map and the tuple in the
/// per-CPU scratch; neighbour discovery passed.
#[inline(never)]
fn tc_v6(skb: *mut aya_ebpf::bindings::__sk_buff, raw: &EndpointV4, cfg: &ConfigV2, dir: u8, ifindex: u32) -> i32 {
    let ctx = TcContext::new(skb);
    let g = bulkhead_common::generation(cfg.policy_rev) as usize & 1;
    let local = Some((raw.identity6[g], g as u8));
    let Some(s) = maps::SCRATCH6.get_ptr_mut(0) else {
        // Index 0 of a one-entry array always exists; fail closed should it not.
        events::dropped_unparsed(ifindex, dir, counters::DROP_IPV6_UNPARSED, local);
        return TC_DROP;
    };
    // SAFETY: this CPU's scratch slot, used by this packet only.
    let s = unsafe { &mut *s };
    let Some(frame) = parse_pulled!(ctx, local, dir, ifindex, |d, e| parse::parse_v6(d, e, &mut s.flow, &mut s.err_saddr)) else {
        return TC_DROP;
    };
    let len = ctx.len();
    match frame {
        parse::Frame6::Flow => judge(ifindex, raw, cfg, g, &s.flow, &s.flow.saddr_be, false, dir, len),
        parse::Frame6::IcmpError => {
            parse::reverse(&mut s.flow);
            judge(ifindex, raw, cfg, g, &s.flow, &s.err_saddr, true, dir, len)
        }
        parse::Frame6::Pass(c) => {
            count(c);
            TC_PASS
        }
        parse::Frame6::Drop(c) => {
            events::dropped_unparsed(ifindex, dir, c, local);
            TC_DROP
        }
    }
}

/// The verdict for a parsed packet of either family: anti-spoofing, isolation, conntrack,
/// then policy for a new flow. `saddr_be` is the packet's own source (for an ICMP error, not
/// the quote's).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn judge<A: Addr>(ifindex: u32, raw: &EndpointV4, cfg: &ConfigV2, g: usize, flow: &Flow<A>, saddr_be: &A, is_icmp_error: bool, dir: u8, len: u32) -> i32 {
    let ep = Local::of::<A>(raw, g);
    let local = Some((ep.identity, ep.pgen));
    if dir == direction::EGRESS && !saddr_be.own_source(raw) {
        events::dropped(ifindex, Some(flow), dir, counters::DROP_SPOOFED, local);
        return TC_DROP;
    }
    // Before conntrack, so established flows of an isolated endpoint stop too.
    if isolate::check(ifindex, flow, dir) == Some(false) {
        events::dropped(ifindex, Some(flow), dir, counters::DROP_ISOLATED, local);
        return TC_DROP;
    }
    if ep.flags & ep_flags::OVERFLOW_FAIL_CLOSED != 0 {
        events::dropped(ifindex, Some(flow), dir, counters::DROP_OVERFLOW, local);
        return TC_DROP;
    }
    if is_icmp_error {
        return icmp_related(ifindex, &ep, cfg, flow, dir);
    }
    let remote = if dir == direction::EGRESS { flow.daddr_be } else { flow.saddr_be };

    // A bare SYN opens a connection: it is never a reply, and a SYN reusing the tuple of an
    // old flow must be judged by today's policy, not inherit the old verdict. So it skips
    // conntrack and goes straight to policy (its entry is then written afresh).
    let bare_syn = flow.protocol == proto::TCP
        && flow.tcp_flags & parse::TCP_SYN != 0
        && flow.tcp_flags & parse::TCP_ACK == 0;
    // The clock only when conntrack needs it: a helper call costs as much as a map lookup, and
    // a denied SYN never touches conntrack.
    let now = if bare_syn { 0 } else { coarse_now(cfg) };
    let pkt = Packet { ifindex, ep: &ep, cfg, flow, dir, remote, now, len };
    // One entry per flow at this interface, both directions under one key. Built only when
    // conntrack is consulted or written: a denied SYN never needs it, and for IPv6 ordering
    // and copying two 16-byte addresses is a good part of the packet's cost.
    let mut key = None;
    if !bare_syn {
        let Some(k) = ct_key(ifindex, flow, dir, local) else { return TC_DROP };
        let k = key.insert(k);
        if let Some(ct) = A::ct_get_mut(k) {
            // SAFETY: LRU value pointer valid for this run; races with other CPUs only blur
            // counters.
            let ct = unsafe { &mut *ct };
            // A reply travels against the direction the flow was opened in. After a policy
            // change it is judged as the original flow, whose policy port was the reply's
            // source port (or the ICMP echo request).
            let is_reply = dir != ct.origin_direction;
            let origin_port = if !is_reply {
                flow.policy_port
            } else if flow.protocol == proto::ICMP {
                0x0800
            } else if flow.protocol == proto::ICMPV6 {
                (parse::ICMP6_ECHO_REQUEST as u16) << 8
            } else {
                u16::from_be_bytes(flow.sport_be)
            };
            if let Some(verdict) = tracked(&pkt, ct, k, origin_port, is_reply) {
                return verdict;
            }
        }
    }
    if !judge_new_flow(ifindex, &ep, cfg, flow, dir, remote) {
        return TC_DROP;
    }
    let now = if bare_syn { coarse_now(cfg) } else { now };
    let Some(key) = key.or_else(|| ct_key(ifindex, flow, dir, local)) else { return TC_DROP };
    let entry = conntrack::new_entry(flow, len, now, dir, cfg.policy_rev, A::ct_source_hi(&key, flow));
    if !A::ct_insert(&key, &entry, cfg, now) {
        count(counters::CT_INSERT_FAILED);
    }
    if dir == direction::EGRESS {
        maps::add_egress_bytes(ifindex, len);
    }
    TC_PASS
}

/// The flow's conntrack key; `None` (reported, fail closed) only if the IPv6 scratch slot
/// were missing. A function, not a closure: LLVM keeps closures as BPF subprograms.
#[inline(always)]
fn ct_key<A: Addr>(ifindex: u32, flow: &Flow<A>, dir: u8, local: Option<(u32, u8)>) -> Option<A::CtKey> {
    let k = A::ct_key(ifindex, flow);
    if k.is_none() {
        events::dropped(ifindex, Some(flow), dir, counters::DROP_IPV6_UNPARSED, local);
    }
    k
}

/// Conntrack only needs timeouts of seconds: tick resolution is enough. From jiffies when the
/// agent calibrated them (`bpf_jiffies64` is inlined: one load, where a helper call cost 13 ns
/// of a 60 ns established-flow path in the per-packet benchmark), else the coarse clock.
#[inline(always)]
pub(crate) fn coarse_now(cfg: &ConfigV2) -> u64 {
    if cfg.ns_per_jiffy != 0 {
        // SAFETY: helper without preconditions.
        cfg.jiffies_to_ns(unsafe { bpf_jiffies64() })
    } else {
        // SAFETY: helper without preconditions.
        unsafe { bpf_ktime_get_coarse_ns() }
    }
}

/// The endpoint as the packet's policy generation and family see it.
struct Local {
    /// The identity of the endpoint's address of the packet's family.
    identity: u32,
    flags: u32,
    /// Policy generation (0 or 1) of every lookup for this packet.
    pgen: u8,
}

impl Local {
    #[inline(always)]
    fn of<A: Addr>(raw: &EndpointV4, g: usize) -> Local {
        let flags = if g == 0 { raw.flags[0] } else { raw.flags[1] };
        Local { identity: A::local_identity(raw, g), flags, pgen: g as u8 }
    }
}

/// An ICMP error passes when the flow it quotes (`reply`: the quote reversed) is live in
/// conntrack at this interface, in either direction: path-MTU discovery and unreachables of
/// allowed flows work under default deny. Anything else is dropped and counted: policy never
/// judges errors.
#[inline(always)]
fn icmp_related<A: Addr>(ifindex: u32, ep: &Local, cfg: &ConfigV2, reply: &Flow<A>, dir: u8) -> i32 {
    let now = coarse_now(cfg);
    if let Some(ct) = A::ct_key(ifindex, reply).and_then(|k| A::ct_get(&k)) {
        if !ct.expired(cfg, now) {
            count(counters::PASS_ICMP_RELATED);
            return TC_PASS;
        }
    }
    events::dropped(ifindex, Some(reply), dir, counters::DROP_ICMP_UNRELATED, Some((ep.identity, ep.pgen)));
    TC_DROP
}

/// What the conntrack path needs to know about the packet at hand.
struct Packet<'a, A> {
    ifindex: u32,
    ep: &'a Local,
    cfg: &'a ConfigV2,
    flow: &'a Flow<A>,
    dir: u8,
    remote: A,
    now: u64,
    len: u32,
}

/// The verdict for a packet of a tracked flow, or `None` when the entry has expired (the
/// packet then starts a new flow). After a policy change the flow is judged again as its first
/// packet was (`origin_port`); a flow the new policy denies loses its entry and is reported.
#[inline(always)]
fn tracked<A: Addr>(p: &Packet<A>, ct: &mut CtValueV2, key: &A::CtKey, origin_port: u16, is_reply: bool) -> Option<i32> {
    if ct.expired(p.cfg, p.now) {
        return None;
    }
    if ct.policy_rev != p.cfg.policy_rev {
        let info = p.remote.peer_info(p.ep.pgen);
        let peer = info.identity;
        let v = policy::enforced_again(p.ep.identity, info.peer_class, ct.origin_direction, p.flow.protocol, origin_port, p.ep.pgen);
        if v.action != action::ALLOW {
            A::ct_remove(key);
            events::count_drop(counters::CT_REEVAL_DENY, p.dir);
            events::emit(p.ifindex, p.flow, p.dir, flow_kind::REVOKED, &v, None, events::Ids { local: p.ep.identity, peer });
            return Some(TC_DROP);
        }
        ct.policy_rev = p.cfg.policy_rev;
        count(counters::CT_REEVAL_ALLOW);
    }
    if conntrack::touch(ct, p.flow, p.len, p.now, is_reply) && maps::flow_watched(p.ifindex, p.cfg) {
        events::ended(p.ifindex, p.flow, ct, is_reply, events::Ids { local: p.ep.identity, peer: p.remote.peer_info(p.ep.pgen).identity });
    }
    if ct.origin_direction == direction::EGRESS {
        maps::add_egress_bytes(p.ifindex, p.len);
    }
    count(counters::ALLOW_CT);
    Some(TC_PASS)
}

/// Judges the first packet of a flow: enforced verdict, staged verdict for endpoints with
/// staged policies, per-policy counters and flow events. Returns whether it is allowed.
#[inline(always)]
fn judge_new_flow<A: Addr>(ifindex: u32, ep: &Local, cfg: &ConfigV2, flow: &Flow<A>, dir: u8, remote: A) -> bool {
    let info = remote.peer_info(ep.pgen);
    let peer = info.identity;
    let v = policy::enforced(ep.identity, info.peer_class, dir, flow.protocol, flow.policy_port, ep.pgen);
    // The detector's kernel decision (protect mode), for flows the policy lets out.
    let unlearned = v.action == action::ALLOW && dir == direction::EGRESS && learned::denies(ifindex, flow);
    let allow = v.action == action::ALLOW && !unlearned;
    let counter = if unlearned {
        counters::DENY_DETECTOR_UNLEARNED
    } else if !allow {
        counters::DENY_POLICY
    } else if v.policy_index == bulkhead_common::NO_POLICY && v.flags & verdict_flags::END_OF_TIER == 0 {
        counters::ALLOW_NOT_ISOLATED
    } else {
        counters::ALLOW_POLICY
    };
    if allow {
        count(counter);
    } else {
        events::count_drop(counter, dir);
    }
    let staged_v;
    let staged = if ep.flags & ep_flags::HAS_STAGED != 0 {
        count(counters::STAGED_EVALUATED);
        staged_v = policy::staged(ep.identity, info.peer_class, dir, flow.protocol, flow.policy_port, ep.pgen);
        Some(&staged_v)
    } else {
        None
    };
    events::record_stats(&v, staged);
    if unlearned {
        // Always reported (not rate-limited as other drops): the agent's finding follows it.
        events::emit_dropped(ifindex, flow, dir, counters::DENY_DETECTOR_UNLEARNED, &v, events::Ids { local: ep.identity, peer });
    } else if (maps::flow_watched(ifindex, cfg) || v.flags & verdict_flags::LOG != 0) && (allow || events::drop_budget()) {
        // An allowed flow is reported once (its next packets find conntrack); a denied one
        // has no entry, so each packet of a flood would be a record: denials share the
        // drops' per-second budget.
        let kind = if allow { flow_kind::NEW_ALLOWED } else { flow_kind::DENIED };
        events::emit(ifindex, flow, dir, kind, &v, staged, events::Ids { local: ep.identity, peer });
    }
    allow
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
