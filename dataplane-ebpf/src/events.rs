//! Flow events and per-policy counters.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use bulkhead_common::{CtValueV2, FlowEventV5, NO_POLICY, PolicyValueV2, action, capacity, counters, direction, flow_kind};

use crate::{
    family::Addr,
    maps::{DROP_RATE, DROPS, FLOWS, POLICY_STATS, count, watch_flags},
    parse::Flow,
};

/// `bpf_ringbuf_submit` flags: do not wake the reader; wake it whatever is pending.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `bpf_ringbuf_query` flag: bytes written and not yet read.
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Who a packet belongs to, as far as it is known when it is dropped or reported.
#[derive(Clone, Copy)]
pub struct Ids {
    pub local: u32,
    pub peer: u32,
}

impl Ids {
    pub const UNKNOWN: Ids = Ids { local: 0, peer: 0 };
}

/// What a flow event says beside the tuple.
pub struct Meta<'a> {
    pub dir: u8,
    /// Write the tuple's ends swapped (an end record written from a reply packet carries the
    /// flow's origin as its source).
    pub swap: bool,
    /// For an end record: the flow's conntrack entry (its start and counts).
    pub ct: Option<&'a CtValueV2>,
    pub kind: u8,
    pub verdict: &'a PolicyValueV2,
    pub staged: Option<&'a PolicyValueV2>,
    pub drop_reason: u16,
    pub ids: Ids,
}

const NO_VERDICT: PolicyValueV2 = PolicyValueV2 {
    policy_index: 0,
    log_policy_index: 0,
    rule_index: 0,
    log_rule_index: 0,
    tier_index: 0,
    action: 0,
    flags: 0,
};

/// A dropped packet: counts it under its reason (and per direction) and, within this CPU's
/// per-second budget, reports it with whatever of its tuple was parsed. `local` is the
/// endpoint's identity and policy generation when known; the peer's identity is looked up
/// only for an event that is sent.
#[inline(always)]
pub fn dropped<A: Addr>(ifindex: u32, flow: Option<&Flow<A>>, dir: u8, reason: u32, local: Option<(u32, u8)>) {
    count_drop(reason, dir);
    if !drop_budget() {
        return;
    }
    let ids = match (local, flow) {
        (Some((identity, pgen)), Some(fl)) => {
            let remote = if dir == direction::EGRESS { fl.daddr_be } else { fl.saddr_be };
            Ids { local: identity, peer: remote.peer_info(pgen).identity }
        }
        (Some((identity, _)), None) => Ids { local: identity, peer: 0 },
        _ => Ids::UNKNOWN,
    };
    let m = Meta { dir, swap: false, ct: None, kind: flow_kind::DROPPED, verdict: &NO_VERDICT, staged: None, drop_reason: reason as u16, ids };
    write(ifindex, flow, &m);
}

/// A drop before the packet's family was known.
#[inline(always)]
pub fn dropped_unparsed(ifindex: u32, dir: u8, reason: u32, local: Option<(u32, u8)>) {
    dropped::<[u8; 4]>(ifindex, None, dir, reason, local)
}

/// Counts a drop under its reason, in total and per direction. Policy denials and revoked
/// flows come here too (their events are flow events of their own kind).
#[inline(always)]
pub fn count_drop(reason: u32, dir: u8) {
    count(reason);
    let slot = reason + capacity::COUNTERS * (u32::from(dir).saturating_sub(1) & 1);
    if let Some(c) = DROPS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

/// Takes one event from this CPU's per-second budget of drop and denial records; past it the
/// record is counted as rate-limited and not sent.
#[inline(always)]
pub fn drop_budget() -> bool {
    let ok = within_budget();
    if !ok {
        count(counters::DROP_EVENTS_RATE_LIMITED);
    }
    ok
}

#[inline(always)]
fn within_budget() -> bool {
    let Some(r) = DROP_RATE.get_ptr_mut(0) else { return false };
    // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
    let r = unsafe { &mut *r };
    // A one-second window needs no nanosecond clock: the tick clock (one inlined load where
    // `bpf_ktime_get_ns` was a helper call) keeps a flood of denials with flow records on
    // (the default) cheap once the budget is spent. Without a config, the coarse clock.
    let now = match crate::maps::CONFIG.get(0) {
        Some(cfg) => crate::coarse_now(cfg),
        // SAFETY: helper without preconditions.
        None => unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() },
    };
    if now.wrapping_sub(r.window_start_ns) >= 1_000_000_000 {
        r.window_start_ns = now;
        r.sent = 0;
    }
    if r.sent >= capacity::DROP_EVENTS_PER_SEC_PER_CPU {
        return false;
    }
    r.sent += 1;
    true
}

/// Counts a new flow's verdicts against the deciding policies.
#[inline(always)]
pub fn record_stats(verdict: &PolicyValueV2, staged: Option<&PolicyValueV2>) {
    if verdict.policy_index != NO_POLICY {
        if let Some(s) = POLICY_STATS.get_ptr_mut(verdict.policy_index) {
            // SAFETY: per-CPU slot.
            let s = unsafe { &mut *s };
            if verdict.action == action::ALLOW {
                s.allowed += 1;
            } else {
                s.denied += 1;
            }
        }
    }
    if let Some(st) = staged {
        if st.policy_index != NO_POLICY {
            if let Some(s) = POLICY_STATS.get_ptr_mut(st.policy_index) {
                // SAFETY: per-CPU slot.
                let s = unsafe { &mut *s };
                if st.action == action::ALLOW {
                    s.would_allow += 1;
                } else {
                    s.would_deny += 1;
                }
            }
        }
    }
}

/// Writes a flow event; a full ring is counted, never blocks or changes the verdict.
#[inline(always)]
pub fn emit<A: Addr>(ifindex: u32, f: &Flow<A>, dir: u8, kind: u8, verdict: &PolicyValueV2, staged: Option<&PolicyValueV2>, ids: Ids) {
    write(ifindex, Some(f), &Meta { dir, swap: false, ct: None, kind, verdict, staged, drop_reason: 0, ids });
}

/// A TCP flow's end (an RST, or a FIN each way), with its packets and bytes both ways, from
/// the packet that ended it (`is_reply`: sent by the answering end). One per flow: the
/// entry's ENDED flag keeps it so. Reported as the flow's origin saw it.
#[inline(always)]
pub fn ended<A: Addr>(ifindex: u32, f: &Flow<A>, ct: &CtValueV2, is_reply: bool, ids: Ids) {
    const ALLOWED: PolicyValueV2 = PolicyValueV2 { action: action::ALLOW, policy_index: NO_POLICY, ..NO_VERDICT };
    write(ifindex, Some(f), &Meta { dir: ct.origin_direction, swap: is_reply, ct: Some(ct), kind: flow_kind::END, verdict: &ALLOWED, staged: None, drop_reason: 0, ids });
}

/// A flow dropped for `reason` after the policy judged it (`verdict`): reported whatever the
/// drop-event budget says, since a decision follows from it.
#[inline(always)]
pub fn emit_dropped<A: Addr>(ifindex: u32, f: &Flow<A>, dir: u8, reason: u32, verdict: &PolicyValueV2, ids: Ids) {
    write(ifindex, Some(f), &Meta { dir, swap: false, ct: None, kind: flow_kind::DROPPED, verdict, staged: None, drop_reason: reason as u16, ids });
}

/// Writes the event (a tuple of zeros and family 0 without `f`). Not inlined: events are the
/// uncommon path, and each inlined copy would hold its own copy of the tuple on the caller's
/// BPF stack.
#[inline(never)]
fn write<A: Addr>(ifindex: u32, f: Option<&Flow<A>>, m: &Meta) {
    let Some(mut slot) = FLOWS.reserve::<FlowEventV5>(0) else {
        count(counters::EVENTS_DROPPED);
        return;
    };
    // Written field by field into the ring: a whole event built on the BPF stack first
    // would take 136 of its 512 bytes.
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points to a reserved, writable FlowEventV5 in the ring; every field is
    // written before submit.
    unsafe {
        // SAFETY: helper without preconditions.
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).ifindex = ifindex;
        match f {
            Some(f) if m.swap => {
                (*ev).saddr_be = f.daddr_be.to16();
                (*ev).daddr_be = f.saddr_be.to16();
                (*ev).sport_be = f.dport_be;
                (*ev).dport_be = f.sport_be;
                (*ev).protocol = f.protocol;
                (*ev).tcp_flags = f.tcp_flags;
                (*ev).family = A::FAMILY;
            }
            Some(f) => {
                (*ev).saddr_be = f.saddr_be.to16();
                (*ev).daddr_be = f.daddr_be.to16();
                (*ev).sport_be = f.sport_be;
                (*ev).dport_be = f.dport_be;
                (*ev).protocol = f.protocol;
                (*ev).tcp_flags = f.tcp_flags;
                (*ev).family = A::FAMILY;
            }
            None => {
                (*ev).saddr_be = [0; 16];
                (*ev).daddr_be = [0; 16];
                (*ev).sport_be = [0; 2];
                (*ev).dport_be = [0; 2];
                (*ev).protocol = 0;
                (*ev).tcp_flags = 0;
                (*ev).family = 0;
            }
        }
        (*ev).verdict = *m.verdict;
        (*ev).staged = match m.staged {
            Some(s) => *s,
            None => PolicyValueV2::default(),
        };
        (*ev).direction = m.dir;
        (*ev).kind = m.kind;
        (*ev).has_staged = m.staged.is_some() as u8;
        (*ev).drop_reason = m.drop_reason;
        (*ev).local_identity = m.ids.local;
        (*ev).peer_identity = m.ids.peer;
        match m.ct {
            Some(ct) => {
                (*ev).start_ns = ct.created_ns;
                (*ev).packets_orig = ct.packets_orig;
                (*ev).bytes_orig = ct.bytes_orig;
                (*ev).packets_reply = ct.packets_reply;
                (*ev).bytes_reply = ct.bytes_reply;
            }
            None => {
                (*ev).start_ns = 0;
                (*ev).packets_orig = 0;
                (*ev).bytes_orig = 0;
                (*ev).packets_reply = 0;
                (*ev).bytes_reply = 0;
            }
        }
    }
    // Waking the reader costs an interrupt (a VM exit on a virtual machine: about 7 us, 14x
    // a new flow's verdict, measured by the datapath bench). Only records a decision waits
    // for wake it (the detector's workloads, its kernel drops), and a ring a quarter full;
    // the rest (flow records, Log rules, drops) are read at the reader's next tick (500 ms at
    // most), many per wake-up.
    let urgent = watch_flags(ifindex) != 0 || (m.kind == flow_kind::DROPPED && u32::from(m.drop_reason) == counters::DENY_DETECTOR_UNLEARNED);
    let filling = FLOWS.query(BPF_RB_AVAIL_DATA) > u64::from(capacity::FLOW_RING_BYTES / 4);
    // Forced: the kernel's adaptive wake-up skips it when earlier unwoken records wait.
    slot.submit(if urgent || filling { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP });
    count(counters::EVENTS_SENT);
}
