//! The detector's decision on a new outbound flow, in TC: in protect mode, a flow of a
//! monitored endpoint to a destination its profile never reached is dropped before its first
//! packet leaves (a SYN never completes a handshake, a first datagram never arrives), and the
//! endpoint isolated, where the finding's action says so ([`watch_flags`]). The agent's
//! network thread then makes the finding from the drop's event, as it does for allowed flows.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use bulkhead_common::{
    counters,
    detect::{IsolationV1, LearnedKeyV1, isolation_reason, watch_flags},
    proto,
};

use crate::{
    family::Addr,
    maps::{LEARNED, count},
    parse::{self, Flow},
};

/// Whether the new outbound flow `flow` of the endpoint behind `ifindex` leaves the learned
/// profile in a way protect mode stops: true = drop it (the endpoint is isolated already).
#[inline(always)]
pub fn denies<A: Addr>(ifindex: u32, flow: &Flow<A>) -> bool {
    let wf = crate::maps::watch_flags(ifindex);
    if wf & (watch_flags::DROP_NEW_PEER | watch_flags::DROP_NEW_PORT) == 0 {
        return false;
    }
    // Only what the agent's network model judges: a TCP connection being opened (a packet
    // picked up mid-stream says nothing of who opened it), UDP, SCTP and ICMP echo.
    let judged = match flow.protocol {
        proto::TCP => flow.tcp_flags & parse::TCP_SYN != 0 && flow.tcp_flags & parse::TCP_ACK == 0,
        proto::UDP | proto::SCTP => true,
        proto::ICMP => A::FAMILY == 4,
        _ => false,
    };
    if !judged {
        return false;
    }
    // ICMP "ports" are echo identifiers, not part of a destination: profiles learn 0.
    let port_be = if flow.protocol == proto::ICMP { [0; 2] } else { flow.dport_be };
    let mut key = LearnedKeyV1 { ifindex, addr_be: flow.daddr_be.to16(), port_be, protocol: flow.protocol, family: A::FAMILY };
    if LEARNED.get_ptr(&key).is_some() {
        return false;
    }
    key.port_be = [0; 2];
    key.protocol = 0;
    let peer_known = LEARNED.get_ptr(&key).is_some();
    let stop = if peer_known { wf & watch_flags::DROP_NEW_PORT != 0 } else { wf & watch_flags::DROP_NEW_PEER != 0 };
    if stop {
        // SAFETY: helper without preconditions. since_ns 0 would read as "not isolated".
        let since_ns = unsafe { bpf_ktime_get_ns() }.max(1);
        let iso = IsolationV1 { since_ns, cgroup_id: 0, reason: isolation_reason::UNLEARNED_FLOW, _pad: 0 };
        if !crate::maps::isolate(ifindex, &iso) {
            // The flow is dropped all the same (fail-closed); user space isolates on the event.
            count(counters::DET_ISOLATE_FAILED);
        }
    }
    stop
}
