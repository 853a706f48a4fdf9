//! Flow events and per-policy counters.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use bulkhead_common::{FlowEventV3, NO_POLICY, PolicyValueV2, action, capacity, counters, direction, flow_kind};

use crate::{
    maps::{DROP_RATE, DROPS, FLOWS, POLICY_STATS, count},
    parse::Flow,
};

/// Who a packet belongs to, as far as it is known when it is dropped or reported.
#[derive(Clone, Copy)]
pub struct Ids {
    pub local: u32,
    pub peer: u32,
}

impl Ids {
    pub const UNKNOWN: Ids = Ids { local: 0, peer: 0 };
}

/// A dropped packet: counts it under its reason (and per direction) and, within this CPU's
/// per-second budget, reports it with whatever of its tuple was parsed. `local` is the
/// endpoint's identity and policy generation when known; the peer's identity is looked up
/// only for an event that is sent.
#[inline(always)]
pub fn dropped(ifindex: u32, flow: Option<&Flow>, dir: u8, reason: u32, local: Option<(u32, u8)>) {
    count_drop(reason, dir);
    if !within_budget() {
        count(counters::DROP_EVENTS_RATE_LIMITED);
        return;
    }
    let none = Flow { saddr_be: [0; 4], daddr_be: [0; 4], sport_be: [0; 2], dport_be: [0; 2], policy_port: 0, protocol: 0, tcp_flags: 0 };
    let f = flow.unwrap_or(&none);
    let ids = match (local, flow) {
        (Some((identity, pgen)), Some(fl)) => {
            let remote = if dir == direction::EGRESS { fl.daddr_be } else { fl.saddr_be };
            Ids { local: identity, peer: crate::policy::peer_identity(remote, pgen) }
        }
        (Some((identity, _)), None) => Ids { local: identity, peer: 0 },
        _ => Ids::UNKNOWN,
    };
    write(ifindex, f, dir, flow_kind::DROPPED, &PolicyValueV2::default(), None, reason as u16, ids);
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

/// Takes one event from this CPU's per-second budget.
#[inline(always)]
fn within_budget() -> bool {
    let Some(r) = DROP_RATE.get_ptr_mut(0) else { return false };
    // SAFETY: per-CPU slot, no other writer on this CPU while the program runs.
    let r = unsafe { &mut *r };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
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
pub fn emit(ifindex: u32, f: &Flow, dir: u8, kind: u8, verdict: &PolicyValueV2, staged: Option<&PolicyValueV2>, ids: Ids) {
    write(ifindex, f, dir, kind, verdict, staged, 0, ids);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn write(ifindex: u32, f: &Flow, dir: u8, kind: u8, verdict: &PolicyValueV2, staged: Option<&PolicyValueV2>, drop_reason: u16, ids: Ids) {
    let Some(mut slot) = FLOWS.reserve::<FlowEventV3>(0) else {
        count(counters::EVENTS_DROPPED);
        return;
    };
    let ev = FlowEventV3 {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ifindex,
        saddr_be: f.saddr_be,
        daddr_be: f.daddr_be,
        sport_be: f.sport_be,
        dport_be: f.dport_be,
        verdict: *verdict,
        staged: match staged {
            Some(s) => *s,
            None => PolicyValueV2::default(),
        },
        protocol: f.protocol,
        direction: dir,
        kind,
        has_staged: staged.is_some() as u8,
        drop_reason,
        tcp_flags: f.tcp_flags,
        _pad: 0,
        local_identity: ids.local,
        peer_identity: ids.peer,
    };
    slot.write(ev);
    slot.submit(0);
    count(counters::EVENTS_SENT);
}
