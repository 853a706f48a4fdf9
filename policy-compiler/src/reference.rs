//! A deliberately plain evaluator of upstream NetworkPolicy semantics, straight on the
//! [`Model`]: no identities, no maps, every policy and rule walked per query. It exists to be
//! obviously right, so tests can hold the compiler against it.

use std::net::Ipv4Addr;

use crate::lookup::Endpoint;
use crate::model::{Model, NamespaceScope, NetworkPolicy, Peer, Peers, Pod, PortMatch, Ports, Rule};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Ingress,
    Egress,
}

/// A resolved side: the pod (if the address is a pod's) and the address.
struct Side<'m> {
    pod: Option<&'m Pod>,
    ip: Ipv4Addr,
}

fn resolve<'m>(model: &'m Model, e: &Endpoint) -> Option<Side<'m>> {
    match e {
        Endpoint::Pod(r) => {
            let pod = model.pods.get(r)?;
            Some(Side { pod: Some(pod), ip: pod.ip? })
        }
        Endpoint::Ip(ip) => Some(Side { pod: model.pod_by_ip(*ip), ip: *ip }),
    }
}

/// Whether upstream semantics allow a connection from `src` to `dst` with IP protocol number
/// `protocol` to destination port `port`. Unknown or address-less pods get nothing.
pub fn allowed(model: &Model, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16) -> bool {
    let (Some(s), Some(d)) = (resolve(model, src), resolve(model, dst)) else { return false };
    if let Some(pod) = s.pod
        && !direction_allows(model, pod, Dir::Egress, &d, protocol, port)
    {
        return false;
    }
    if let Some(pod) = d.pod
        && !direction_allows(model, pod, Dir::Ingress, &s, protocol, port)
    {
        return false;
    }
    true
}

fn direction_allows(model: &Model, local: &Pod, dir: Dir, peer: &Side<'_>, protocol: u8, port: u16) -> bool {
    let mut isolated = false;
    for policy in model.policies.values() {
        if policy.namespace != local.namespace || !policy.pod_selector.matches(&local.labels) {
            continue;
        }
        let rules = match dir {
            Dir::Ingress => &policy.ingress,
            Dir::Egress => &policy.egress,
        };
        let Some(rules) = rules else { continue };
        isolated = true;
        if rules.iter().any(|r| rule_matches(model, policy, r, dir, local, peer, protocol, port)) {
            return true;
        }
    }
    !isolated
}

#[allow(clippy::too_many_arguments)]
fn rule_matches(
    model: &Model,
    policy: &NetworkPolicy,
    rule: &Rule,
    dir: Dir,
    local: &Pod,
    peer: &Side<'_>,
    protocol: u8,
    port: u16,
) -> bool {
    let peer_ok = match &rule.peers {
        Peers::Any => true,
        Peers::List(list) => list.iter().any(|p| peer_matches(model, policy, p, peer)),
    };
    let port_ok = match &rule.ports {
        Ports::Any => true,
        Ports::List(specs) => specs.iter().any(|s| {
            s.protocol.number() == protocol
                && match &s.port {
                    PortMatch::All => true,
                    PortMatch::Range { start, end } => (*start..=*end).contains(&port),
                    PortMatch::Named(name) => {
                        let dst_pod = match dir {
                            Dir::Ingress => Some(local),
                            Dir::Egress => peer.pod,
                        };
                        dst_pod.and_then(|p| p.named_port(name, s.protocol)) == Some(port)
                    }
                }
        }),
    };
    peer_ok && port_ok
}

fn peer_matches(model: &Model, policy: &NetworkPolicy, peer: &Peer, side: &Side<'_>) -> bool {
    match peer {
        Peer::IpBlock(block) => block.contains(side.ip),
        Peer::Pods { namespaces, pods } => {
            let Some(pod) = side.pod else { return false };
            let ns_ok = match namespaces {
                NamespaceScope::Own => pod.namespace == policy.namespace,
                NamespaceScope::Matching(sel) => model.namespaces.get(&pod.namespace).is_some_and(|n| sel.matches(&n.labels)),
            };
            ns_ok && pods.matches(&pod.labels)
        }
    }
}
