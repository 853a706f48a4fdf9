//! Flow events and per-policy counters.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use bulkhead_common::{FlowEventV1, NO_POLICY, PolicyValueV2, action, counters};

use crate::{
    maps::{FLOWS, POLICY_STATS, count},
    parse::Flow,
};

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
pub fn emit(ifindex: u32, f: &Flow, dir: u8, kind: u8, verdict: &PolicyValueV2, staged: Option<&PolicyValueV2>) {
    let Some(mut slot) = FLOWS.reserve::<FlowEventV1>(0) else {
        count(counters::EVENTS_DROPPED);
        return;
    };
    let ev = FlowEventV1 {
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
        _pad: 0,
    };
    slot.write(ev);
    slot.submit(0);
    count(counters::EVENTS_SENT);
}
