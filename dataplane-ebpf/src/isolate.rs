//! Isolation of endpoints by the detector: an isolated endpoint's packets are dropped unless
//! they are on the isolation allow-list (e.g. DNS to the resolvers).

use bulkhead_common::{counters, detect::AllowKeyV1, direction};

use crate::{
    maps::{ISOLATION, ISOLATION_ALLOW, count},
    parse::Flow,
};

/// `Some(false)` = drop (isolated, not allowed), `Some(true)` = isolated but allowed (policy
/// still judges it), `None` = not isolated.
#[inline(always)]
pub fn check(ifindex: u32, flow: &Flow, dir: u8) -> Option<bool> {
    ISOLATION.get_ptr(&ifindex)?;
    // Egress matches the destination, ingress the source (answers from the allowed server).
    let (addr, port) = if dir == direction::EGRESS { (flow.daddr_be, flow.dport_be) } else { (flow.saddr_be, flow.sport_be) };
    let exact = AllowKeyV1 { addr_be: addr, port_be: port, protocol: flow.protocol, _pad: 0 };
    let any = AllowKeyV1 { addr_be: [0; 4], ..exact };
    if ISOLATION_ALLOW.get_ptr(&exact).is_some() || ISOLATION_ALLOW.get_ptr(&any).is_some() {
        count(counters::PASS_ISOLATION_ALLOWLIST);
        Some(true)
    } else {
        count(counters::DROP_ISOLATED);
        Some(false)
    }
}
