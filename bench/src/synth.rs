//! Deterministic synthetic cluster models shaped like real clusters: namespaces with team/env
//! labels, Deployments whose replicas share one label set (app/tier/version), and
//! NetworkPolicies mixing podSelector, namespaceSelector, matchExpressions, ipBlocks with
//! excepts, numeric and named ports and endPort ranges.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use policy_compiler::model::{
    Cidr, IpBlock, LabelSelector, Labels, Model, NamedPort, Namespace, NamespaceScope, NetworkPolicy, Operator,
    Peer, Peers, Pod, PodRef, PolicyRef, PortMatch, PortSpec, Ports, Protocol, Requirement, Rule,
};

use crate::Rng;

const TIERS: [&str; 5] = ["web", "api", "worker", "db", "cache"];
const TEAMS: usize = 7;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|s| s.to_string()).collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector { match_labels: labels(pairs), match_expressions: Vec::new() }
}

fn tcp(port: u16) -> PortSpec {
    PortSpec { protocol: Protocol::Tcp, port: PortMatch::Range { start: port, end: port } }
}

fn named(name: &str) -> PortSpec {
    PortSpec { protocol: Protocol::Tcp, port: PortMatch::Named(name.into()) }
}

fn cidr(a: u8, b: u8, c: u8, d: u8, len: u8) -> Cidr {
    Cidr::new(Ipv4Addr::new(a, b, c, d), len).expect("canonical prefix")
}

/// Pod address number `i` (10.16.0.0/12 upwards).
pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 16, 0, 1)) + i as u32)
}

fn tier_ports(tier: &str) -> Vec<NamedPort> {
    let p = |name: &str, port| NamedPort { name: Some(name.into()), port, protocol: Protocol::Tcp };
    match tier {
        "web" => vec![p("http", 8080), p("metrics", 9090)],
        "api" => vec![p("http", 8080), p("grpc", 9000), p("metrics", 9090)],
        "db" => vec![p("postgres", 5432)],
        "cache" => vec![p("redis", 6379)],
        _ => vec![p("metrics", 9090)],
    }
}

/// One Deployment: its label set is shared by its replicas.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub namespace: String,
    pub app: String,
    pub tier: &'static str,
}

/// A synthetic model and what the incremental-update scenarios need to know about it.
#[derive(Clone, Debug)]
pub struct Synth {
    pub model: Model,
    pub deployments: Vec<Deployment>,
    /// The node of every pod (pods are spread round-robin, as a scheduler spreads replicas).
    pub node_of: std::collections::BTreeMap<PodRef, usize>,
    pub nodes: usize,
    /// Next free pod number (for [`Synth::add_one_pod`]).
    next_pod: usize,
}

/// The size and spread of a synthetic cluster.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub pods: usize,
    pub policies: usize,
    /// Namespaces (`None`: one per 200 pods, 2 to 50).
    pub namespaces: Option<usize>,
    /// Replicas per Deployment, inclusive range (a third of Deployments are mid-rollout, with
    /// two label sets).
    pub replicas: (usize, usize),
    /// Nodes the pods are spread over.
    pub nodes: usize,
}

/// Builds a model with `pods` pods (replicas of Deployments of 2..=8 pods) and `policies`
/// NetworkPolicies, spread over nodes of 100 pods.
pub fn model(pods: usize, policies: usize, seed: u64) -> Synth {
    model_with(Shape { pods, policies, namespaces: None, replicas: (2, 8), nodes: pods.div_ceil(100).max(1) }, seed)
}

/// The cluster the issue names: 5,000 nodes, 150,000 pods in about 15,000 label sets, 10,000
/// policies (a share with ipBlock excepts), 300 namespaces.
pub fn cluster(seed: u64) -> Synth {
    model_with(Shape { pods: 150_000, policies: 10_000, namespaces: Some(300), replicas: (10, 16), nodes: 5_000 }, seed)
}

/// Builds a model of `shape`.
pub fn model_with(shape: Shape, seed: u64) -> Synth {
    let Shape { pods, policies, .. } = shape;
    let mut rng = Rng::new(seed);
    let mut m = Model::default();
    let n_ns = shape.namespaces.unwrap_or((pods / 200).clamp(2, 50));
    let ns_names: Vec<String> = (0..n_ns).map(|i| format!("ns-{i:03}")).collect();
    for (i, name) in ns_names.iter().enumerate() {
        let team = format!("team-{}", i % TEAMS);
        let env = if i % 3 == 0 { "staging" } else { "prod" };
        m.upsert_namespace(Namespace {
            name: name.clone(),
            labels: labels(&[("kubernetes.io/metadata.name", name), ("team", &team), ("env", env)]),
        });
    }

    // Deployments, round-robin over namespaces, until the pod budget is used.
    let mut deployments = Vec::new();
    let mut node_of = std::collections::BTreeMap::new();
    let mut i = 0usize;
    let (lo, hi) = shape.replicas;
    while i < pods {
        let d = deployments.len();
        let namespace = ns_names[d % n_ns].clone();
        let tier = TIERS[rng.below(TIERS.len() as u64) as usize];
        let app = format!("app-{d:05}");
        let replicas = (lo + rng.below((hi - lo + 1) as u64) as usize).min(pods - i);
        // A third of the Deployments are mid-rollout: two versions, two identities.
        let rollout = rng.chance(33) && replicas >= 2;
        for r in 0..replicas {
            let version = if rollout && r % 2 == 1 { "v2" } else { "v1" };
            m.upsert_pod(Pod {
                namespace: namespace.clone(),
                name: format!("{app}-{r}"),
                labels: labels(&[("app", &app), ("tier", tier), ("version", version)]),
                service_account: app.clone(),
                ip: Some(pod_ip(i)),
                ip6: None,
                ports: tier_ports(tier),
                interface: Some(format!("cali{i:011x}")),
            });
            node_of.insert(PodRef { namespace: namespace.clone(), name: format!("{app}-{r}") }, i % shape.nodes);
            i += 1;
        }
        deployments.push(Deployment { namespace, app, tier });
    }
    let mut apps_in: Vec<Vec<usize>> = vec![Vec::new(); n_ns];
    for (d, dep) in deployments.iter().enumerate() {
        apps_in[d % n_ns].push(d);
        debug_assert_eq!(dep.namespace, ns_names[d % n_ns]);
    }

    // Policies: the first policy of every namespace is a default deny; the others protect
    // one Deployment or one tier, with 1-3 ingress rules and sometimes an egress section.
    let mut per_ns = vec![0usize; n_ns];
    for p in 0..policies {
        let ns_i = p % n_ns;
        let namespace = ns_names[ns_i].clone();
        let nth = per_ns[ns_i];
        per_ns[ns_i] += 1;
        let local_apps: Vec<&Deployment> = apps_in[ns_i].iter().map(|&d| &deployments[d]).collect();
        let pick = |rng: &mut Rng| local_apps[rng.below(local_apps.len() as u64) as usize];
        let policy = if nth == 0 {
            NetworkPolicy {
                namespace: namespace.clone(),
                name: "default-deny".into(),
                pod_selector: LabelSelector::everything(),
                ingress: Some(Vec::new()),
                egress: None,
            }
        } else {
            let target = pick(&mut rng);
            let pod_selector = match rng.below(4) {
                0 | 1 => sel(&[("app", &target.app)]),
                2 => sel(&[("tier", target.tier)]),
                _ => LabelSelector {
                    match_labels: Labels::new(),
                    match_expressions: vec![
                        Requirement { key: "tier".into(), operator: Operator::In(set(&[target.tier, "web"])) },
                        Requirement { key: "version".into(), operator: Operator::NotIn(set(&["v0"])) },
                    ],
                },
            };
            let n_rules = 1 + rng.below(3) as usize;
            let mut ingress = Vec::new();
            for _ in 0..n_rules {
                let client = pick(&mut rng);
                ingress.push(match rng.below(5) {
                    0 => Rule {
                        peers: Peers::List(vec![Peer::Pods { namespaces: NamespaceScope::Own, pods: sel(&[("app", &client.app)]) }]),
                        ports: Ports::List(vec![named("http"), tcp(9090)]),
                    },
                    1 => Rule {
                        peers: Peers::List(vec![Peer::Pods {
                            namespaces: NamespaceScope::Matching(sel(&[("team", &format!("team-{}", rng.below(TEAMS as u64)))])),
                            pods: sel(&[("tier", "web")]),
                        }]),
                        ports: Ports::List(vec![tcp(8080), tcp(9000)]),
                    },
                    2 => Rule {
                        peers: Peers::List(vec![Peer::Pods {
                            namespaces: NamespaceScope::Matching(LabelSelector {
                                match_labels: Labels::new(),
                                match_expressions: vec![Requirement { key: "env".into(), operator: Operator::In(set(&["prod"])) }],
                            }),
                            pods: LabelSelector {
                                match_labels: Labels::new(),
                                match_expressions: vec![Requirement { key: "tier".into(), operator: Operator::Exists }],
                            },
                        }]),
                        ports: Ports::List(vec![PortSpec { protocol: Protocol::Tcp, port: PortMatch::Range { start: 30000, end: 30100 } }]),
                    },
                    3 => {
                        let k = rng.below(250) as u8;
                        Rule {
                            peers: Peers::List(vec![Peer::IpBlock(IpBlock {
                                cidr: cidr(192, 168, 0, 0, 16),
                                except: vec![cidr(192, 168, k, 0, 24)],
                            })]),
                            ports: Ports::List(vec![tcp(443), PortSpec { protocol: Protocol::Udp, port: PortMatch::Range { start: 53, end: 53 } }]),
                        }
                    }
                    _ => Rule {
                        peers: Peers::List(vec![
                            Peer::Pods { namespaces: NamespaceScope::Own, pods: sel(&[("app", &client.app), ("version", "v1")]) },
                            Peer::IpBlock(IpBlock { cidr: cidr(172, 16, (rng.below(16) as u8) << 4, 0, 20), except: Vec::new() }),
                        ]),
                        ports: Ports::List(vec![named("grpc"), PortSpec { protocol: Protocol::Tcp, port: PortMatch::Range { start: 8000, end: 8999 } }]),
                    },
                });
            }
            let egress = rng.chance(30).then(|| {
                vec![
                    Rule {
                        peers: Peers::List(vec![Peer::Pods {
                            namespaces: NamespaceScope::Matching(sel(&[("team", &format!("team-{}", rng.below(TEAMS as u64)))])),
                            pods: sel(&[("tier", "db")]),
                        }]),
                        ports: Ports::List(vec![named("postgres")]),
                    },
                    Rule {
                        peers: Peers::List(vec![Peer::IpBlock(IpBlock { cidr: cidr(0, 0, 0, 0, 0), except: vec![cidr(10, 0, 0, 0, 8)] })]),
                        ports: Ports::List(vec![tcp(443)]),
                    },
                ]
            });
            NetworkPolicy {
                namespace: namespace.clone(),
                name: format!("allow-{p:05}"),
                pod_selector,
                ingress: Some(ingress),
                egress,
            }
        };
        m.upsert_policy(policy);
    }
    Synth { model: m, deployments, node_of, nodes: shape.nodes, next_pod: pods }
}

impl Synth {
    /// The model as the agent of `node` sees it: every pod, but only that node's own with an
    /// interface (the CNI plugin placed them there).
    pub fn on_node(&self, node: usize) -> Model {
        let mut m = self.model.clone();
        for (r, p) in m.pods.iter_mut() {
            if self.node_of.get(r) != Some(&node) {
                p.interface = None;
            }
        }
        m
    }

    /// The model with one policy changed: the first non-default-deny policy allows one port more.
    pub fn change_one_policy(&self) -> Model {
        let mut m = self.model.clone();
        let (key, _) = m
            .policies
            .iter()
            .find(|(k, _)| k.name != "default-deny")
            .or_else(|| m.policies.iter().next())
            .map(|(k, v)| (k.clone(), v.clone()))
            .expect("at least one policy");
        let p = m.policies.get_mut(&key).expect("present");
        let rules = p.ingress.get_or_insert_with(Vec::new);
        match rules.first_mut() {
            Some(Rule { ports: Ports::List(ports), .. }) => ports.push(tcp(8443)),
            _ => rules.push(Rule { peers: Peers::Any, ports: Ports::List(vec![tcp(8443)]) }),
        }
        m
    }

    /// The model with one pod relabelled to a version no other pod has (a new identity).
    pub fn relabel_one_pod(&self) -> Model {
        let mut m = self.model.clone();
        let key: PodRef = m.pods.keys().nth(m.pods.len() / 2).expect("at least one pod").clone();
        let pod = m.pods.get_mut(&key).expect("present");
        pod.labels.insert("version".into(), "v3-canary".into());
        m
    }

    /// The model with one more replica of an existing Deployment (existing identity, new IP).
    pub fn add_one_pod(&self) -> Model {
        let mut m = self.model.clone();
        let d = &self.deployments[self.deployments.len() / 2];
        let template = m
            .pods
            .values()
            .find(|p| p.labels.get("app") == Some(&d.app))
            .expect("deployment has pods")
            .as_ref()
            .clone();
        let i = self.next_pod;
        m.upsert_pod(Pod {
            name: format!("{}-extra", d.app),
            ip: Some(pod_ip(i)),
            ip6: None,
            interface: Some(format!("cali{i:011x}")),
            ..template
        });
        m
    }

    /// `model` (a node's view) with one more replica of a Deployment whose pods run elsewhere:
    /// an existing identity at a new address, on another node. The most common pod change a
    /// node's agent sees in a large cluster.
    pub fn add_replica_elsewhere(&self, model: &Model) -> Model {
        let mut m = model.clone();
        let template = m.pods.values().find(|p| p.interface.is_none() && p.ip.is_some()).expect("a pod on another node").as_ref().clone();
        let i = self.next_pod;
        m.upsert_pod(Pod { name: format!("{}-extra", template.name), ip: Some(pod_ip(i)), ip6: None, interface: None, ..template });
        m
    }

    /// `model` with the default deny of `pod`'s namespace changed to admit one port from
    /// anywhere: a change that reaches every identity of that namespace.
    pub fn change_default_deny_of(model: &Model, pod: &PodRef) -> Model {
        let mut m = model.clone();
        let key = PolicyRef { namespace: pod.namespace.clone(), name: "default-deny".into() };
        let p = m.policies.get_mut(&key).expect("every namespace has a default deny");
        p.ingress.get_or_insert_with(Vec::new).push(Rule { peers: Peers::Any, ports: Ports::List(vec![tcp(8443)]) });
        m
    }

    /// Policy names, for reports.
    pub fn policy_refs(&self) -> impl Iterator<Item = &PolicyRef> {
        self.model.policies.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_determinism() {
        let a = model(1000, 100, 7);
        let b = model(1000, 100, 7);
        assert_eq!(a.model, b.model);
        assert_eq!(a.model.pods.len(), 1000);
        assert_eq!(a.model.policies.len(), 100);
        assert_eq!(a.add_one_pod().pods.len(), 1001);
        assert_ne!(a.change_one_policy(), a.model);
        assert_ne!(a.relabel_one_pod(), a.model);
    }

    #[test]
    fn compiles() {
        let s = model(300, 30, 1);
        let mut c = policy_compiler::Compiler::default();
        let out = c.compile(&s.model).expect("synthetic model compiles");
        assert!(out.overflow.is_empty(), "{:?}", out.overflow);
        assert_eq!(out.endpoints.len(), 300);
        assert!(!out.policy.is_empty());
    }
}
