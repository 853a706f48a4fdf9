//! The datapath's decision procedure, run on a [`Compiled`] instead of kernel maps: the same
//! slice / port / range lookup ([`crate::layout::lookup`]) over the same layout
//! ([`Compiled::layout`]) the TC program reads, so comparing it with [`crate::reference`]
//! checks the compiler and the layout the kernel gets, and `explain` tells what the kernel does.
//!
//! For a packet at local endpoint E (identity L), direction D, remote address R, protocol P,
//! policy port T (destination port; ICMP `type << 8 | code`; 0 otherwise):
//! 1. ipcache LPM of R -> identity and peer class C (miss: [`identity::WORLD`], class any);
//! 2. peer slot (L, C, D), else (L, ANY, D): the verdict table it names; then the table's
//!    slice for P, else for any protocol, through its single-port or port-range exception for
//!    T if it has one;
//! 3. no slot: allow (no tier applies to E in D).
//!
//! The staged map is read the same way for endpoints flagged [`ep_flags::HAS_STAGED`].

use std::net::Ipv4Addr;

use bulkhead_common::{IpInfoV3, PolicyValueV2, STAGED_DIRECTION_BIT, action, direction, ep_flags, identity};

use crate::compile::{Compiled, EndpointEntry};
use crate::model::{Cidr, PodRef};

/// One side of a connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Pod(PodRef),
    /// An address; if a pod owns it, it is that pod.
    Ip(Ipv4Addr),
}

/// Outcome of one endpoint's check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The deciding map value; `None` when no entry applied (allow) or the endpoint fails
    /// closed (deny).
    pub hit: Option<PolicyValueV2>,
    /// The endpoint is marked [`ep_flags::OVERFLOW_FAIL_CLOSED`].
    pub fail_closed: bool,
}

/// IP cache lookup: longest prefix containing `ip`; a miss is the world.
pub fn ipcache_lookup(compiled: &Compiled, ip: Ipv4Addr) -> IpInfoV3 {
    (0..=32u8)
        .rev()
        .find_map(|len| compiled.ipcache.get(&(Cidr::containing(ip, len).addr(), len)).copied())
        .unwrap_or(IpInfoV3 { identity: identity::WORLD, peer_class: identity::ANY })
}

fn check_layout(compiled: &Compiled, local: &EndpointEntry, remote: Ipv4Addr, dir: u8, protocol: u8, port: u16) -> Verdict {
    if local.flags & ep_flags::OVERFLOW_FAIL_CLOSED != 0 {
        return Verdict { allowed: false, hit: None, fail_closed: true };
    }
    let peer = ipcache_lookup(compiled, remote).peer_class;
    match crate::layout::lookup(compiled.layout(), local.identity, peer, dir, protocol, port) {
        Some(v) => Verdict { allowed: v.action == action::ALLOW, hit: Some(v), fail_closed: false },
        None => Verdict { allowed: true, hit: None, fail_closed: false },
    }
}

/// The enforced policy check at endpoint `local` for traffic with `remote` in direction `dir`
/// ([`direction`]); `port` is the policy port (destination port, or ICMP `type << 8 | code`).
pub fn check(compiled: &Compiled, local: &EndpointEntry, remote: Ipv4Addr, dir: u8, protocol: u8, port: u16) -> Verdict {
    check_layout(compiled, local, remote, dir, protocol, port)
}

/// The staged (counterfactual) check, for endpoints flagged [`ep_flags::HAS_STAGED`].
pub fn check_staged(
    compiled: &Compiled,
    local: &EndpointEntry,
    remote: Ipv4Addr,
    dir: u8,
    protocol: u8,
    port: u16,
) -> Option<Verdict> {
    (local.flags & ep_flags::HAS_STAGED != 0).then(|| check_layout(compiled, local, remote, dir | STAGED_DIRECTION_BIT, protocol, port))
}

/// Resolves an endpoint to its endpoint entry (if it is a pod with a datapath) and address.
pub fn resolve<'c>(compiled: &'c Compiled, e: &Endpoint) -> Option<(Option<(&'c PodRef, &'c EndpointEntry)>, Ipv4Addr)> {
    match e {
        Endpoint::Pod(r) => compiled.endpoints.get_key_value(r).map(|(r, ep)| (Some((r, ep)), ep.ip)),
        Endpoint::Ip(ip) => Some((compiled.endpoint_by_ip(*ip), *ip)),
    }
}

/// Whether a connection from `src` to `dst` is allowed: the source pod's egress check and the
/// destination pod's ingress check must both allow it. An unknown pod (or one without an
/// address) has no datapath: nothing to or from it is allowed.
pub fn allowed(compiled: &Compiled, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16) -> bool {
    let (Some((s_ep, s_ip)), Some((d_ep, d_ip))) = (resolve(compiled, src), resolve(compiled, dst)) else {
        return false;
    };
    if let Some((_, s)) = s_ep
        && !check(compiled, s, d_ip, direction::EGRESS, protocol, port).allowed
    {
        return false;
    }
    if let Some((_, d)) = d_ep
        && !check(compiled, d, s_ip, direction::INGRESS, protocol, port).allowed
    {
        return false;
    }
    true
}
