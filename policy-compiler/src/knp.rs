//! Kubernetes NetworkPolicy -> [`TieredPolicy`]: every KNP becomes a policy of the `default`
//! tier with Calico's order 1000. All its rules are Allow; a KNP selecting a pod for a
//! direction makes the default tier apply, whose end-of-tier Deny is upstream's default deny.
//!
//! A KNP rule is an OR of peers and an OR of (protocol, port) entries; a tiered rule has one
//! source, one destination and one protocol, so a KNP rule becomes one tiered rule per
//! (peer, protocol). `origin` maps each tiered rule back to the KNP rule index.

use crate::model::{NamespaceScope, NetworkPolicy, Peer, Peers, PolicyRef, PortMatch, Ports, Rule};
use crate::tiered::{
    Action, DEFAULT_TIER, EntityMatch, NamespaceMatch, Order, PolicyId, PolicyKind, PortItem, Selector, TRule,
    TieredPolicy,
};

/// Order of every Kubernetes NetworkPolicy within the default tier (as Calico gives them).
pub const KNP_ORDER: f64 = 1000.0;

/// A converted KNP and, per converted rule, the index of the KNP rule it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converted {
    pub policy: TieredPolicy,
    pub ingress_origin: Vec<usize>,
    pub egress_origin: Vec<usize>,
}

impl Converted {
    /// The KNP rule index of converted rule `i` of a direction.
    pub fn origin(&self, ingress: bool, i: usize) -> usize {
        let o = if ingress { &self.ingress_origin } else { &self.egress_origin };
        o.get(i).copied().unwrap_or(i)
    }
}

/// The tiered id of a KNP.
pub fn policy_id(r: &PolicyRef) -> PolicyId {
    PolicyId { kind: PolicyKind::KubernetesNetworkPolicy, namespace: Some(r.namespace.clone()), name: r.name.clone() }
}

pub fn convert(p: &NetworkPolicy) -> Converted {
    let (ingress, ingress_origin) = match &p.ingress {
        Some(rules) => {
            let (r, o) = convert_rules(&p.namespace, rules, true);
            (Some(r), o)
        }
        None => (None, vec![]),
    };
    let (egress, egress_origin) = match &p.egress {
        Some(rules) => {
            let (r, o) = convert_rules(&p.namespace, rules, false);
            (Some(r), o)
        }
        None => (None, vec![]),
    };
    Converted {
        policy: TieredPolicy {
            id: policy_id(&p.policy_ref()),
            tier: DEFAULT_TIER.to_string(),
            order: Some(Order(KNP_ORDER)),
            selector: Selector::from_label_selector(&p.pod_selector),
            namespace_selector: None,
            service_account_selector: None,
            ingress,
            egress,
        },
        ingress_origin,
        egress_origin,
    }
}

fn peer_entity(namespace: &str, peer: &Peer) -> EntityMatch {
    match peer {
        Peer::Pods { namespaces, pods } => EntityMatch {
            selector: Some(Selector::from_label_selector(pods)),
            namespace: Some(match namespaces {
                NamespaceScope::Own => NamespaceMatch::Named(namespace.to_string()),
                NamespaceScope::Matching(s) => NamespaceMatch::Selector(Selector::from_label_selector(s)),
            }),
            ..EntityMatch::default()
        },
        Peer::IpBlock(b) => EntityMatch { nets: vec![b.cidr], not_nets: b.except.clone(), ..EntityMatch::default() },
    }
}

/// (protocol, destination ports) groups of a `ports` list, in order of first appearance.
fn protocol_groups(ports: &Ports) -> Vec<(Option<u8>, Vec<PortItem>)> {
    let specs = match ports {
        Ports::Any => return vec![(None, vec![])],
        Ports::List(specs) => specs,
    };
    let mut out: Vec<(Option<u8>, Vec<PortItem>, bool)> = Vec::new();
    for s in specs {
        let n = s.protocol.number();
        let pos = match out.iter().position(|g| g.0 == Some(n)) {
            Some(i) => i,
            None => {
                out.push((Some(n), vec![], false));
                out.len() - 1
            }
        };
        let g = &mut out[pos];
        match &s.port {
            PortMatch::All => g.2 = true,
            PortMatch::Range { start, end } => g.1.push(PortItem::Range { start: *start, end: *end }),
            PortMatch::Named(name) => g.1.push(PortItem::Named(name.clone())),
        }
    }
    out.into_iter().map(|(p, items, all)| (p, if all { vec![] } else { items })).collect()
}

fn convert_rules(namespace: &str, rules: &[Rule], ingress: bool) -> (Vec<TRule>, Vec<usize>) {
    // Sized first: a converted rule is large, and growing the list copies every one.
    let n: usize = rules
        .iter()
        .map(|r| {
            let peers = match &r.peers {
                Peers::Any => 1,
                Peers::List(l) => l.len(),
            };
            let protocols = match &r.ports {
                Ports::Any => 1,
                Ports::List(specs) => specs.len(),
            };
            peers * protocols
        })
        .sum();
    let mut out = Vec::with_capacity(n);
    let mut origin = Vec::with_capacity(n);
    for (i, rule) in rules.iter().enumerate() {
        let peers: Vec<EntityMatch> = match &rule.peers {
            Peers::Any => vec![EntityMatch::default()],
            Peers::List(list) => list.iter().map(|p| peer_entity(namespace, p)).collect(),
        };
        let groups = protocol_groups(&rule.ports);
        for peer in &peers {
            for (protocol, ports) in &groups {
                let (source, destination) = if ingress {
                    (peer.clone(), EntityMatch { ports: ports.clone(), ..EntityMatch::default() })
                } else {
                    (EntityMatch::default(), EntityMatch { ports: ports.clone(), ..peer.clone() })
                };
                out.push(TRule {
                    action: Action::Allow,
                    protocol: *protocol,
                    not_protocol: None,
                    icmp: None,
                    not_icmp: None,
                    source,
                    destination,
                });
                origin.push(i);
            }
        }
    }
    (out, origin)
}
