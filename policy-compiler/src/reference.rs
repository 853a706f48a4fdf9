//! A deliberately plain evaluator of upstream NetworkPolicy semantics, straight on the
//! [`Model`]: no identities, no maps, every policy and rule walked per query. It exists to be
//! obviously right, so tests can hold the compiler against it.

use std::net::IpAddr;

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
    ip: IpAddr,
}

/// A pod's address of the family (`v6`), or the address itself.
fn resolve<'m>(model: &'m Model, e: &Endpoint, v6: bool) -> Option<Side<'m>> {
    match e {
        Endpoint::Pod(r) => {
            let pod = model.pods.get(r)?;
            let ip = if v6 { IpAddr::V6(pod.ip6?) } else { IpAddr::V4(pod.ip?) };
            Some(Side { pod: Some(pod), ip })
        }
        Endpoint::Ip(ip) => Some(Side { pod: model.pod_by_ip(*ip), ip: *ip }),
    }
}

/// Whether upstream semantics allow a connection from `src` to `dst` with IP protocol number
/// `protocol` to destination port `port`. Unknown or address-less pods get nothing.
pub fn allowed(model: &Model, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16) -> bool {
    let (Some(s), Some(d)) = (resolve(model, src, false), resolve(model, dst, false)) else { return false };
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

// ---- Tiered reference -----------------------------------------------------------------------

pub use tiered_ref::{TieredReference, TieredSide};

/// A plain evaluator of the tiered semantics (module doc of [`crate::tiered`]): walks tiers,
/// policies and rules per query, on pods and addresses directly (no identities, no regions, no
/// maps). Kubernetes NetworkPolicies go through the same conversion as in the compiler
/// ([`crate::knp`]); their upstream meaning is checked separately by [`allowed`].
mod tiered_ref {
    use std::net::IpAddr;

    use bulkhead_common::proto;

    use super::resolve;
    use crate::explain::Decision;
    use crate::knp;
    use crate::lookup::Endpoint;
    use crate::model::{Model, Pod, Protocol};
    use crate::tiered::{
        Action, EntityMatch, NamespaceMatch, PortItem, TRule, Tier, TierDefault, TieredPolicy, effective_tiers,
        namespace_selector_labels, pod_selector_labels, service_account_labels,
    };

    /// A checked side: the enforced decision and, for pods some staged policy selects, the
    /// staged one.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct TieredSide {
        pub enforced: Decision,
        pub staged: Option<Decision>,
    }

    pub struct TieredReference<'m> {
        model: &'m Model,
        tiers: Vec<Tier>,
        /// Converted KNPs (with rule origins) and tiered policies.
        policies: Vec<(TieredPolicy, Option<knp::Converted>)>,
    }

    impl<'m> TieredReference<'m> {
        pub fn new(model: &'m Model) -> Self {
            let mut policies: Vec<(TieredPolicy, Option<knp::Converted>)> =
                model.policies.values().map(|p| {
                    let c = knp::convert(p);
                    (c.policy.clone(), Some(c))
                }).collect();
            policies.extend(model.tiered.values().map(|p| (p.clone(), None)));
            TieredReference { model, tiers: effective_tiers(model), policies }
        }

        fn selects(&self, p: &TieredPolicy, pod: &Pod) -> bool {
            if p.id.kind.is_namespaced() && p.id.namespace.as_deref() != Some(pod.namespace.as_str()) {
                return false;
            }
            let Some(ns) = self.model.namespaces.get(&pod.namespace) else { return false };
            p.selector.matches(&pod_selector_labels(&pod.labels, &pod.namespace, &pod.service_account))
                && p.namespace_selector.as_ref().is_none_or(|s| s.matches(&namespace_selector_labels(&ns.labels, &ns.name)))
                && p.service_account_selector.as_ref().is_none_or(|s| s.matches(&service_account_labels(&pod.service_account)))
        }

        fn entity(&self, e: &EntityMatch, pod: Option<&Pod>, ip: IpAddr) -> bool {
            let label_field = e.selector.is_some()
                || e.not_selector.is_some()
                || e.namespace.is_some()
                || e.service_account_selector.is_some();
            if label_field {
                let Some(pod) = pod else { return false };
                let labels = pod_selector_labels(&pod.labels, &pod.namespace, &pod.service_account);
                if e.selector.as_ref().is_some_and(|s| !s.matches(&labels)) {
                    return false;
                }
                if e.not_selector.as_ref().is_some_and(|s| s.matches(&labels)) {
                    return false;
                }
                match &e.namespace {
                    Some(NamespaceMatch::Named(n)) if *n != pod.namespace => return false,
                    Some(NamespaceMatch::Selector(s)) => {
                        let Some(ns) = self.model.namespaces.get(&pod.namespace) else { return false };
                        if !s.matches(&namespace_selector_labels(&ns.labels, &ns.name)) {
                            return false;
                        }
                    }
                    _ => {}
                }
                if e.service_account_selector.as_ref().is_some_and(|s| !s.matches(&service_account_labels(&pod.service_account))) {
                    return false;
                }
            }
            if !e.nets.is_empty() && !e.nets.iter().any(|n| n.contains_addr(ip)) {
                return false;
            }
            !e.not_nets.iter().any(|n| n.contains_addr(ip))
        }

        fn port_item(it: &PortItem, protocol: u8, port: u16, dst: Option<&Pod>) -> bool {
            match it {
                PortItem::Range { start, end } => *start <= port && port <= *end,
                PortItem::Named(n) => {
                    let p = match protocol {
                        proto::TCP => Protocol::Tcp,
                        proto::UDP => Protocol::Udp,
                        proto::SCTP => Protocol::Sctp,
                        _ => return false,
                    };
                    dst.and_then(|d| d.named_port(n, p)) == Some(port)
                }
            }
        }

        #[allow(clippy::too_many_arguments)]
        fn rule(&self, r: &TRule, ingress: bool, local: &Pod, peer: Option<&Pod>, peer_ip: IpAddr, protocol: u8, port: u16) -> bool {
            // The local address of the packet's family.
            let local_ip = match peer_ip {
                IpAddr::V4(_) => IpAddr::V4(local.ip.expect("local pods have an address")),
                IpAddr::V6(_) => IpAddr::V6(local.ip6.expect("IPv6 traffic has a local IPv6 address")),
            };
            let (src, src_ip, dst, dst_ip) =
                if ingress { (peer, peer_ip, Some(local), local_ip) } else { (Some(local), local_ip, peer, peer_ip) };
            if r.protocol.is_some_and(|p| p != protocol) || r.not_protocol == Some(protocol) {
                return false;
            }
            if !r.source.ports.is_empty() || !r.source.not_ports.is_empty() {
                return false; // unsupported by the datapath: never matches
            }
            let port_proto = matches!(protocol, proto::TCP | proto::UDP | proto::SCTP);
            let d = &r.destination;
            if !d.ports.is_empty() && (!port_proto || !d.ports.iter().any(|i| Self::port_item(i, protocol, port, dst))) {
                return false;
            }
            if !d.not_ports.is_empty() && (!port_proto || d.not_ports.iter().any(|i| Self::port_item(i, protocol, port, dst))) {
                return false;
            }
            let icmp_hit = |m: &crate::tiered::IcmpMatch| {
                (port >> 8) as u8 == m.icmp_type && m.code.is_none_or(|c| (port & 0xff) as u8 == c)
            };
            if let Some(m) = &r.icmp
                && (protocol != proto::ICMP || !icmp_hit(m))
            {
                return false;
            }
            if let Some(m) = &r.not_icmp
                && (protocol != proto::ICMP || icmp_hit(m))
            {
                return false;
            }
            self.entity(&r.source, src, src_ip) && self.entity(&r.destination, dst, dst_ip)
        }

        /// The decision at pod `local` (which must have an address) for traffic with the peer
        /// (`peer`: the pod owning `peer_ip`, if any) in direction `ingress`/egress. `staged`:
        /// evaluate the staged world instead ([`crate::tiered::in_world`]).
        #[allow(clippy::too_many_arguments)]
        pub fn decide(&self, local: &Pod, ingress: bool, peer: Option<&Pod>, peer_ip: IpAddr, protocol: u8, port: u16, staged: bool) -> Decision {
            let mut log = None;
            for tier in &self.tiers {
                let mut here: Vec<&(TieredPolicy, Option<knp::Converted>)> = self
                    .policies
                    .iter()
                    .filter(|(p, _)| {
                        p.tier == tier.name
                            && p.rules(ingress).is_some()
                            && crate::tiered::in_world(self.model, &p.id, staged)
                            && self.selects(p, local)
                    })
                    .collect();
                if here.is_empty() {
                    continue; // the tier does not apply in this world
                }
                here.sort_by(|a, b| a.0.eval_cmp(&b.0));
                let mut passed = false;
                'tier: for (p, conv) in here {
                    for (i, r) in p.rules(ingress).into_iter().flatten().enumerate() {
                        if !self.rule(r, ingress, local, peer, peer_ip, protocol, port) {
                            continue;
                        }
                        let ri = conv.as_ref().map_or(i, |c| c.origin(ingress, i));
                        match r.action {
                            Action::Allow | Action::Deny => {
                                return Decision {
                                    allowed: r.action == Action::Allow,
                                    tier: Some(tier.name.clone()),
                                    policy: Some(p.id.clone()),
                                    rule_index: Some(ri),
                                    end_of_tier: false,
                                    log,
                                };
                            }
                            Action::Pass => {
                                passed = true;
                                break 'tier;
                            }
                            Action::Log => {
                                log.get_or_insert((p.id.clone(), ri));
                            }
                        }
                    }
                }
                if !passed && tier.default_action == TierDefault::Deny {
                    return Decision {
                        allowed: false,
                        tier: Some(tier.name.clone()),
                        policy: None,
                        rule_index: None,
                        end_of_tier: true,
                        log,
                    };
                }
            }
            Decision { log, ..Decision::default_allow() }
        }

        /// Whether some staged policy selects the pod (it then has a staged verdict).
        pub fn has_staged(&self, pod: &Pod) -> bool {
            self.policies.iter().any(|(p, _)| {
                p.id.kind.is_staged() && (p.ingress.is_some() || p.egress.is_some()) && self.selects(p, pod)
            })
        }

        fn side(&self, local: &Pod, ingress: bool, peer: Option<&Pod>, peer_ip: IpAddr, protocol: u8, port: u16) -> TieredSide {
            TieredSide {
                enforced: self.decide(local, ingress, peer, peer_ip, protocol, port, false),
                staged: self.has_staged(local).then(|| self.decide(local, ingress, peer, peer_ip, protocol, port, true)),
            }
        }

        /// The source pod's egress side and the destination pod's ingress side of a connection
        /// (`None` for a side that is not a pod); `None` if an endpoint is unknown.
        #[allow(clippy::type_complexity)]
        pub fn sides(&self, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16) -> Option<(Option<TieredSide>, Option<TieredSide>)> {
            self.sides_family(src, dst, protocol, port, false)
        }

        /// As [`Self::sides`], between the pods' IPv6 addresses with `v6`.
        #[allow(clippy::type_complexity)]
        pub fn sides_family(&self, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16, v6: bool) -> Option<(Option<TieredSide>, Option<TieredSide>)> {
            let (s, d) = (resolve(self.model, src, v6)?, resolve(self.model, dst, v6)?);
            if s.ip.is_ipv6() != d.ip.is_ipv6() {
                return None;
            }
            let egress = s.pod.map(|pod| self.side(pod, false, d.pod, d.ip, protocol, port));
            let ingress = d.pod.map(|pod| self.side(pod, true, s.pod, s.ip, protocol, port));
            Some((egress, ingress))
        }

        /// Whether the connection is allowed (enforced verdicts).
        pub fn allowed(&self, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16) -> bool {
            self.allowed_family(src, dst, protocol, port, false)
        }

        /// As [`Self::allowed`], between the pods' IPv6 addresses with `v6`.
        pub fn allowed_family(&self, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16, v6: bool) -> bool {
            match self.sides_family(src, dst, protocol, port, v6) {
                None => false,
                Some((e, i)) => [e, i].iter().flatten().all(|s| s.enforced.allowed),
            }
        }
    }
}
