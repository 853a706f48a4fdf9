//! Isolation of endpoints by the detector: an isolated endpoint's packets are dropped unless
//! they are on its isolation allow-list (its DetectorPolicy's, e.g. DNS to the resolvers) or
//! on the list for every endpoint (set through the API).

use bulkhead_common::{counters, detect::AllowKeyV2, direction};

use crate::{
    family::Addr,
    maps::{ISOLATION_ALLOW, count},
    parse::Flow,
};

/// `Some(false)` = drop (isolated, not allowed), `Some(true)` = isolated but allowed (policy
/// still judges it), `None` = not isolated.
#[inline(always)]
pub fn check<A: Addr>(ifindex: u32, flow: &Flow<A>, dir: u8) -> Option<bool> {
    if !crate::maps::isolated(ifindex) {
        return None;
    }
    // Egress matches the destination, ingress the source (answers from the allowed server).
    let (addr, port) = if dir == direction::EGRESS { (flow.daddr_be, flow.dport_be) } else { (flow.saddr_be, flow.sport_be) };
    // The endpoint's own list (its DetectorPolicy's), then the list for every endpoint:
    // exact entries in the family's map, any-address entries (IPv4 keys) for both families.
    let any = AllowKeyV2 { ifindex, addr_be: [0; 4], port_be: port, protocol: flow.protocol, _pad: 0 };
    let all_any = AllowKeyV2 { ifindex: 0, ..any };
    if addr.allow_listed(ifindex, port, flow.protocol) || ISOLATION_ALLOW.get_ptr(&any).is_some() || ISOLATION_ALLOW.get_ptr(&all_any).is_some()
    {
        count(counters::PASS_ISOLATION_ALLOWLIST);
        Some(true)
    } else {
        // The caller reports the drop (DROP_ISOLATED) with the packet's identities.
        Some(false)
    }
}
