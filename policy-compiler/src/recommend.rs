//! Policy recommendations from observed flows: one policy per workload that admits exactly
//! the flows seen, in a tier of its own, for a person to review as staged policy and then
//! enforce. Pure: the caller turns flow records into [`Observation`]s and the cluster's pods
//! into [`Model`]; [`render`] writes Calico v3 or Kubernetes YAML.
//!
//! Workloads are pods of a namespace with the same *stable* labels: labels a controller sets
//! per replica or per revision ([`PER_REPLICA_LABELS`]) never reach a selector, so replicas and
//! rollouts share one policy. Peers in the cluster are named by their namespace's
//! `kubernetes.io/metadata.name` and their stable labels, never by pod name or address;
//! peers outside it by their address as a /32 or /128.

pub mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::{Labels, Model};

/// The tier recommended policies go in (as Calico Cloud's recommendations do).
pub const TIER: &str = "namespace-isolation";

/// The tier's order: after platform and security tiers (small orders), before the default
/// tier.
pub const TIER_ORDER: u32 = 10_000;

/// Labels that differ between replicas or revisions of one workload.
pub const PER_REPLICA_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
    "batch.kubernetes.io/job-completion-index",
];

/// One end of an observed flow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Party {
    /// A pod of the cluster.
    Pod { namespace: String, name: String },
    /// An address outside the cluster (or of no known pod).
    Outside(IpAddr),
}

/// A flow seen by the datapath (either observation point; duplicates are harmless).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub src: Party,
    pub dst: Party,
    /// Destination port; 0 for protocols without ports (ICMP).
    pub port: u16,
    pub protocol: u8,
    /// When it was seen (any clock the caller uses for `now`), for stability.
    pub ts_ns: u64,
}

/// A workload: a namespace and the stable labels its pods share.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    pub namespace: String,
    pub labels: Labels,
}

/// The peer of a recommended rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    Workload(Workload),
    /// An address outside the cluster, as a host prefix.
    Cidr(IpAddr),
}

/// One rule: a peer, a protocol and the ports seen, and the flows it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub peer: Peer,
    pub protocol: u8,
    /// Ports seen, ascending (empty for protocols without ports).
    pub ports: BTreeSet<u16>,
    /// The pod pairs (or addresses) the rule came from, as "source -> destination".
    pub from_flows: BTreeSet<String>,
}

/// The recommendation for one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recommended {
    pub workload: Workload,
    /// A name from the workload's label values, unique within its namespace; renderers put
    /// the tier in front (`namespace-isolation.web`, `namespace-isolation-web`).
    pub name: String,
    /// The workload's pods (for the comment only).
    pub pods: BTreeSet<String>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// When the last element (peer, protocol or port) of this recommendation was first seen:
    /// it is stable once a window passes after this. `None`: no flow at all.
    pub last_change_ns: Option<u64>,
}

impl Recommended {
    /// Whether no new element arrived for `window_ns` before `now_ns`.
    pub fn stable(&self, now_ns: u64, window_ns: u64) -> bool {
        self.last_change_ns.is_none_or(|t| now_ns.saturating_sub(t) >= window_ns)
    }
}

/// The stable labels of a pod.
pub fn stable_labels(labels: &Labels) -> Labels {
    labels.iter().filter(|(k, _)| !PER_REPLICA_LABELS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
}

type RuleKey = (Peer, u8);

#[derive(Default)]
struct Acc {
    pods: BTreeSet<String>,
    ingress: BTreeMap<RuleKey, (BTreeSet<u16>, BTreeSet<String>)>,
    egress: BTreeMap<RuleKey, (BTreeSet<u16>, BTreeSet<String>)>,
    /// First sighting of each (direction, peer, protocol, port).
    first_seen: BTreeMap<(bool, RuleKey, u16), u64>,
}

/// Recommends one policy per workload of `model` (workloads with no flow get a policy with no
/// rules: isolated both ways, since nothing was seen to need more). Flows of pods that are not
/// in `model` any more are skipped, flows between two outside addresses too. The same input
/// always gives the same output, in a stable order.
pub fn recommend(model: &Model, flows: &[Observation]) -> Vec<Recommended> {
    let workload_of = |ns: &str, name: &str| -> Option<Workload> {
        model.pods.get(&crate::model::PodRef::new(ns, name)).map(|p| Workload { namespace: ns.to_string(), labels: stable_labels(&p.labels) })
    };
    let mut acc: BTreeMap<Workload, Acc> = BTreeMap::new();
    for (r, p) in &model.pods {
        let w = Workload { namespace: r.namespace.clone(), labels: stable_labels(&p.labels) };
        acc.entry(w).or_default().pods.insert(r.name.clone());
    }
    let mut pod_cache: BTreeMap<(String, String), Option<Workload>> = BTreeMap::new();
    let mut resolve = |p: &Party| -> Option<Peer> {
        match p {
            Party::Outside(a) => Some(Peer::Cidr(*a)),
            Party::Pod { namespace, name } => {
                pod_cache.entry((namespace.clone(), name.clone())).or_insert_with(|| workload_of(namespace, name)).clone().map(Peer::Workload)
            }
        }
    };
    for f in flows {
        let (Some(src), Some(dst)) = (resolve(&f.src), resolve(&f.dst)) else { continue };
        let said = format!("{} -> {}", describe(&f.src), describe(&f.dst));
        if let Peer::Workload(w) = &dst {
            add(acc.get_mut(w), true, (src.clone(), f.protocol), f, &said);
        }
        if let Peer::Workload(w) = &src {
            add(acc.get_mut(w), false, (dst.clone(), f.protocol), f, &said);
        }
    }
    let mut names: BTreeMap<(String, String), usize> = BTreeMap::new();
    acc.into_iter()
        .map(|(workload, a)| {
            let base = policy_name(&workload);
            let n = names.entry((workload.namespace.clone(), base.clone())).or_default();
            *n += 1;
            let name = if *n == 1 { base } else { format!("{base}-{n}") };
            let rules = |m: BTreeMap<RuleKey, (BTreeSet<u16>, BTreeSet<String>)>| {
                m.into_iter().map(|((peer, protocol), (ports, from_flows))| Rule { peer, protocol, ports, from_flows }).collect()
            };
            Recommended {
                last_change_ns: a.first_seen.values().copied().max(),
                name,
                pods: a.pods,
                ingress: rules(a.ingress),
                egress: rules(a.egress),
                workload,
            }
        })
        .collect()
}

fn add(acc: Option<&mut Acc>, ingress: bool, key: RuleKey, f: &Observation, said: &str) {
    let Some(a) = acc else { return };
    let has_ports = matches!(f.protocol, 6 | 17 | 132);
    let port = if has_ports { f.port } else { 0 };
    let first = a.first_seen.entry((ingress, key.clone(), port)).or_insert(f.ts_ns);
    *first = (*first).min(f.ts_ns);
    let (ports, from) = if ingress { a.ingress.entry(key).or_default() } else { a.egress.entry(key).or_default() };
    if has_ports {
        ports.insert(port);
    }
    from.insert(said.to_string());
}

fn describe(p: &Party) -> String {
    match p {
        Party::Pod { namespace, name } => format!("{namespace}/{name}"),
        Party::Outside(a) => a.to_string(),
    }
}

/// The label values in DNS-label form, e.g. `frontend`: readable, and the same for every
/// replica.
fn policy_name(w: &Workload) -> String {
    let mut parts: Vec<&str> = w.labels.values().map(String::as_str).collect();
    if parts.is_empty() {
        parts.push("unlabelled");
    }
    let raw = parts.join("-").to_ascii_lowercase();
    let mut out = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    // Room for the tier prefix within a 253-character name.
    out.truncate(200);
    let out = out.trim_matches('-');
    if out.is_empty() { "workload".into() } else { out.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Namespace, Pod, PodRef};

    fn model(pods: &[(&str, &str, &[(&str, &str)])]) -> Model {
        let mut m = Model::default();
        for (ns, name, labels) in pods {
            m.namespaces.insert(ns.to_string(), Namespace { name: ns.to_string(), labels: [("kubernetes.io/metadata.name".to_string(), ns.to_string())].into() });
            let labels: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            m.upsert_pod(Pod {
                namespace: ns.to_string(),
                name: name.to_string(),
                labels,
                service_account: String::new(),
                ip: None,
                ip6: None,
                ports: vec![],
                interface: None,
            });
        }
        m
    }

    fn pod(ns: &str, n: &str) -> Party {
        Party::Pod { namespace: ns.into(), name: n.into() }
    }

    fn obs(src: Party, dst: Party, port: u16, ts: u64) -> Observation {
        Observation { src, dst, port, protocol: 6, ts_ns: ts }
    }

    #[test]
    fn replicas_share_a_policy_and_ports_group_per_peer() {
        let m = model(&[
            ("shop", "web", &[("app", "web")]),
            ("shop", "api-0", &[("app", "api"), ("statefulset.kubernetes.io/pod-name", "api-0")]),
            ("shop", "api-1", &[("app", "api"), ("statefulset.kubernetes.io/pod-name", "api-1")]),
        ]);
        let flows = [obs(pod("shop", "web"), pod("shop", "api-0"), 8080, 1), obs(pod("shop", "web"), pod("shop", "api-1"), 9090, 2), obs(pod("shop", "web"), pod("shop", "api-1"), 8080, 3)];
        let r = recommend(&m, &flows);
        assert_eq!(r.len(), 2, "{r:#?}");
        let api = r.iter().find(|p| p.workload.labels.get("app").map(String::as_str) == Some("api")).expect("api");
        assert_eq!(api.pods, ["api-0".to_string(), "api-1".to_string()].into());
        assert_eq!(api.name, "api");
        assert_eq!(api.ingress.len(), 1);
        assert_eq!(api.ingress[0].ports, [8080, 9090].into());
        assert!(api.egress.is_empty());
        // The last new element (9090) came at 2; the repeat of 8080 at 3 changes nothing.
        assert_eq!(api.last_change_ns, Some(2));
        assert!(api.stable(12, 10) && !api.stable(11, 10));
        let web = r.iter().find(|p| p.name == "web").expect("web");
        assert_eq!(web.egress.len(), 1);
        assert_eq!(web.egress[0].peer, Peer::Workload(Workload { namespace: "shop".into(), labels: [("app".to_string(), "api".to_string())].into() }));
    }

    #[test]
    fn outside_peers_are_host_prefixes_and_idle_workloads_are_isolated() {
        let m = model(&[("shop", "web", &[("app", "web")]), ("data", "db", &[("app", "db")])]);
        let outside: IpAddr = "192.0.2.7".parse().expect("ip");
        let r = recommend(&m, &[obs(Party::Outside(outside), pod("shop", "web"), 80, 5), obs(Party::Outside(outside), Party::Outside(outside), 80, 5)]);
        let db = r.iter().find(|p| p.workload.namespace == "data").expect("db");
        assert!(db.ingress.is_empty() && db.egress.is_empty() && db.last_change_ns.is_none());
        let web = r.iter().find(|p| p.workload.namespace == "shop").expect("web");
        assert_eq!(web.ingress[0].peer, Peer::Cidr(outside));
        assert_eq!(web.ingress[0].from_flows, ["192.0.2.7 -> shop/web".to_string()].into());
    }

    #[test]
    fn the_same_flows_in_any_order_give_the_same_recommendation() {
        let m = model(&[("a", "x", &[("app", "x")]), ("a", "y", &[("app", "y")]), ("b", "z", &[("app", "z")])]);
        let mut flows = vec![obs(pod("a", "x"), pod("a", "y"), 80, 1), obs(pod("a", "y"), pod("b", "z"), 5432, 2), obs(pod("b", "z"), pod("a", "x"), 53, 3)];
        let one = recommend(&m, &flows);
        flows.reverse();
        flows.extend(flows.clone());
        assert_eq!(recommend(&m, &flows), one);
    }
}
