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

use std::net::IpAddr;

use bulkhead_common::{IpInfoV3, PolicyValueV2, STAGED_DIRECTION_BIT, action, direction, ep_flags, identity};

use crate::compile::{Compiled, EndpointEntry};
use crate::model::{Cidr, PodRef};

/// One side of a connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Pod(PodRef),
    /// An address; if a pod owns it, it is that pod.
    Ip(IpAddr),
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

/// IP cache lookup: longest prefix of the address's family containing `ip`; a miss is the
/// world (IPv4) or [`identity::WORLD6`].
pub fn ipcache_lookup(compiled: &Compiled, ip: impl Into<IpAddr>) -> IpInfoV3 {
    let ip = ip.into();
    let (width, world) = if ip.is_ipv6() { (128u8, identity::WORLD6) } else { (32, identity::WORLD) };
    (0..=width)
        .rev()
        .find_map(|len| compiled.ipcache.get(&(Cidr::containing(ip, len).addr(), len)).copied())
        .unwrap_or(IpInfoV3 { identity: world, peer_class: identity::ANY })
}

fn check_layout(compiled: &Compiled, local: &EndpointEntry, remote: IpAddr, dir: u8, protocol: u8, port: u16) -> Verdict {
    if local.flags & ep_flags::OVERFLOW_FAIL_CLOSED != 0 {
        return Verdict { allowed: false, hit: None, fail_closed: true };
    }
    let peer = ipcache_lookup(compiled, remote).peer_class;
    // The local side's identity is that of its address in the packet's family.
    let local_identity = if remote.is_ipv6() { local.identity6 } else { local.identity };
    match crate::layout::lookup(compiled.layout(), local_identity, peer, dir, protocol, port) {
        Some(v) => Verdict { allowed: v.action == action::ALLOW, hit: Some(v), fail_closed: false },
        None => Verdict { allowed: true, hit: None, fail_closed: false },
    }
}

/// The enforced policy check at endpoint `local` for traffic with `remote` in direction `dir`
/// ([`direction`]); `port` is the policy port (destination port, or ICMP `type << 8 | code`).
pub fn check(compiled: &Compiled, local: &EndpointEntry, remote: impl Into<IpAddr>, dir: u8, protocol: u8, port: u16) -> Verdict {
    check_layout(compiled, local, remote.into(), dir, protocol, port)
}

/// The staged (counterfactual) check, for endpoints flagged [`ep_flags::HAS_STAGED`].
pub fn check_staged(
    compiled: &Compiled,
    local: &EndpointEntry,
    remote: impl Into<IpAddr>,
    dir: u8,
    protocol: u8,
    port: u16,
) -> Option<Verdict> {
    let remote = remote.into();
    (local.flags & ep_flags::HAS_STAGED != 0).then(|| check_layout(compiled, local, remote, dir | STAGED_DIRECTION_BIT, protocol, port))
}

/// Resolves an endpoint to its endpoint entry (if it is a pod with a datapath) and address:
/// a pod's IPv4 address, or its IPv6 address with `v6` (none: `None`). An address is itself,
/// whatever `v6` says.
pub fn resolve<'c>(compiled: &'c Compiled, e: &Endpoint, v6: bool) -> Option<(Option<(&'c PodRef, &'c EndpointEntry)>, IpAddr)> {
    match e {
        Endpoint::Pod(r) => {
            let (r, ep) = compiled.endpoints.get_key_value(r)?;
            let ip = if v6 { IpAddr::V6(ep.ip6?) } else { IpAddr::V4(ep.ip?) };
            Some((Some((r, ep)), ip))
        }
        Endpoint::Ip(ip) => Some((compiled.endpoint_by_ip(*ip), *ip)),
    }
}

/// Whether an IPv4 connection from `src` to `dst` is allowed: the source pod's egress check
/// and the destination pod's ingress check must both allow it. An unknown pod (or one without
/// an address) has no datapath: nothing to or from it is allowed.
pub fn allowed(compiled: &Compiled, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16) -> bool {
    allowed_family(compiled, src, dst, protocol, port, false)
}

/// As [`allowed`], between the endpoints' IPv6 addresses with `v6` (a pod without one has
/// nothing allowed).
pub fn allowed_family(compiled: &Compiled, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16, v6: bool) -> bool {
    let (Some((s_ep, s_ip)), Some((d_ep, d_ip))) = (resolve(compiled, src, v6), resolve(compiled, dst, v6)) else {
        return false;
    };
    if s_ip.is_ipv6() != d_ip.is_ipv6() {
        return false;
    }
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
