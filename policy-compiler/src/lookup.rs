//! The datapath's decision procedure, run on a [`Compiled`] instead of kernel maps. It mirrors
//! the TC program step for step, so comparing it with [`crate::reference`] checks the compiler.

use std::net::Ipv4Addr;

use bulkhead_common::{IpInfoV1, POLICY_KEY_FIXED_BITS, POLICY_KEY_FULL_BITS, PolicyValueV1, action, direction, ep_flags, identity, proto};

use crate::compile::{Compiled, EndpointEntry, policy_key};
use crate::model::{Cidr, PodRef};
use crate::portrange::port_mask;

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
    /// The deciding policy entry, if any.
    pub hit: Option<PolicyValueV1>,
}

/// IP cache lookup: longest prefix containing `ip`; a miss is the world.
pub fn ipcache_lookup(compiled: &Compiled, ip: Ipv4Addr) -> IpInfoV1 {
    (0..=32u8)
        .rev()
        .find_map(|len| compiled.ipcache.get(&(Cidr::containing(ip, len).addr(), len)).copied())
        .unwrap_or(IpInfoV1 { identity: identity::WORLD, cidr_identity: identity::ANY })
}

/// The policy check at endpoint `local` for traffic with `remote` in direction `dir`
/// ([`direction`]); `port` is the destination port.
pub fn check(compiled: &Compiled, local: &EndpointEntry, remote: Ipv4Addr, dir: u8, protocol: u8, port: u16) -> Verdict {
    if local.flags & ep_flags::OVERFLOW_FAIL_CLOSED != 0 {
        return Verdict { allowed: false, hit: None };
    }
    let info = ipcache_lookup(compiled, remote);
    let mut peers = vec![info.identity];
    if info.cidr_identity != identity::ANY && info.cidr_identity != info.identity {
        peers.push(info.cidr_identity);
    }
    peers.push(identity::ANY);
    let mut best: Option<PolicyValueV1> = None;
    for &peer in &peers {
        for p in [protocol, proto::ANY] {
            let key = policy_key(local.identity, peer, dir, p, port);
            if let Some(v) = lpm_policy(compiled, key)
                && best.is_none_or(|b| v.rank < b.rank)
            {
                best = Some(v);
            }
        }
    }
    if let Some(v) = best {
        return Verdict { allowed: v.action == action::ALLOW, hit: Some(v) };
    }
    let isolated = match dir {
        direction::INGRESS => local.flags & ep_flags::INGRESS_ISOLATED != 0,
        _ => local.flags & ep_flags::EGRESS_ISOLATED != 0,
    };
    Verdict { allowed: !isolated, hit: None }
}

fn lpm_policy(compiled: &Compiled, key: bulkhead_common::PolicyKeyV1) -> Option<PolicyValueV1> {
    let port = u16::from_be_bytes(key.port_be);
    (POLICY_KEY_FIXED_BITS..=POLICY_KEY_FULL_BITS).rev().find_map(|plen| {
        let mut k = key;
        k.port_be = (port & port_mask((plen - POLICY_KEY_FIXED_BITS) as u8)).to_be_bytes();
        compiled.policy.get(&(plen, k)).copied()
    })
}

fn resolve<'c>(compiled: &'c Compiled, e: &Endpoint) -> Option<(Option<&'c EndpointEntry>, Ipv4Addr)> {
    match e {
        Endpoint::Pod(r) => compiled.endpoints.get(r).map(|ep| (Some(ep), ep.ip)),
        Endpoint::Ip(ip) => Some((compiled.endpoint_by_ip(*ip).map(|(_, ep)| ep), *ip)),
    }
}

/// Whether a connection from `src` to `dst` is allowed: the source pod's egress check and the
/// destination pod's ingress check must both allow it. An unknown pod (or one without an
/// address) has no datapath: nothing to or from it is allowed.
pub fn allowed(compiled: &Compiled, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16) -> bool {
    let (Some((s_ep, s_ip)), Some((d_ep, d_ip))) = (resolve(compiled, src), resolve(compiled, dst)) else {
        return false;
    };
    if let Some(s) = s_ep
        && !check(compiled, s, d_ip, direction::EGRESS, protocol, port).allowed
    {
        return false;
    }
    if let Some(d) = d_ep
        && !check(compiled, d, s_ip, direction::INGRESS, protocol, port).allowed
    {
        return false;
    }
    true
}
