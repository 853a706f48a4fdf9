//! The compiled maps, read with the datapath algorithm, must decide every probe exactly as
//! the reference evaluator does on the model, including after incremental changes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use bulkhead_common::proto;
use policy_compiler::model::{
    Cidr, IpBlock, LabelSelector, Labels, Model, NamedPort, Namespace, NamespaceScope, NetworkPolicy, Operator, Peer,
    Peers, Pod, PortMatch, PortSpec, Ports, Protocol, Requirement, Rule,
};
use policy_compiler::{Compiled, Compiler, Endpoint, Limits, lookup, reference};
use proptest::prelude::*;

const KEYS: [&str; 3] = ["app", "tier", "env"];
const VALUES: [&str; 2] = ["x", "y"];

fn labels() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), prop::sample::select(VALUES.to_vec()), 0..=2)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![4 => Just(Protocol::Tcp), 2 => Just(Protocol::Udp), 1 => Just(Protocol::Sctp)]
}

fn named_ports() -> impl Strategy<Value = Vec<NamedPort>> {
    // Mostly TCP, so that named ports often resolve for the (TCP-heavy) policy ports.
    let pod_protocol = prop_oneof![6 => Just(Protocol::Tcp), 1 => Just(Protocol::Udp), 1 => Just(Protocol::Sctp)];
    let web = prop::option::of((prop::sample::select(vec![80u16, 81, 8080]), pod_protocol));
    let dns = prop::option::of((Just(53u16), protocol()));
    (web, dns, prop::option::of(Just(9000u16))).prop_map(|(web, dns, unnamed)| {
        let mut out = Vec::new();
        if let Some((port, protocol)) = web {
            out.push(NamedPort { name: Some("web".into()), port, protocol });
        }
        if let Some((port, protocol)) = dns {
            out.push(NamedPort { name: Some("dns".into()), port, protocol });
        }
        if let Some(port) = unnamed {
            out.push(NamedPort { name: None, port, protocol: Protocol::Tcp });
        }
        out
    })
}

fn requirement() -> impl Strategy<Value = Requirement> {
    let values = prop::collection::btree_set(prop::sample::select(VALUES.to_vec()), 1..=2)
        .prop_map(|s| s.into_iter().map(String::from).collect::<BTreeSet<_>>());
    let op = prop_oneof![
        values.clone().prop_map(Operator::In),
        values.prop_map(Operator::NotIn),
        Just(Operator::Exists),
        Just(Operator::DoesNotExist),
    ];
    (prop::sample::select(KEYS.to_vec()), op).prop_map(|(k, operator)| Requirement { key: k.into(), operator })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    (
        prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), prop::sample::select(VALUES.to_vec()), 0..=1),
        prop::collection::vec(requirement(), 0..=1),
    )
        .prop_map(|(m, match_expressions)| LabelSelector {
            match_labels: m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            match_expressions,
        })
}

fn ns_selector() -> impl Strategy<Value = LabelSelector> {
    let by_name = (0..4usize).prop_map(|i| LabelSelector {
        match_labels: [("kubernetes.io/metadata.name".to_string(), format!("ns{i}"))].into(),
        match_expressions: vec![],
    });
    prop_oneof![selector(), by_name]
}

/// Prefixes over 10.0.0.0/24 and around it.
fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (0u32..256, 24u8..=32).prop_map(|(host, len)| Cidr::containing(Ipv4Addr::from(0x0a00_0000 | host), len)),
        Just(Cidr::containing(Ipv4Addr::new(0, 0, 0, 0), 0)),
        Just(Cidr::containing(Ipv4Addr::new(10, 0, 0, 0), 8)),
    ]
}

fn ip_block() -> impl Strategy<Value = IpBlock> {
    (cidr(), prop::collection::vec((0u32..256, 1u8..=8), 0..=2)).prop_map(|(cidr, ex)| {
        let (start, end) = cidr.range();
        let (start, end) = (start as u32, end as u32);
        let except = ex
            .into_iter()
            .filter(|_| cidr.prefix_len() < 32)
            .map(|(off, extra)| {
                let len = (cidr.prefix_len() + extra).min(32);
                let host = start + off % (end - start).saturating_add(1).max(1);
                Cidr::containing(Ipv4Addr::from(host), len)
            })
            .collect();
        IpBlock { cidr, except }
    })
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        selector().prop_map(|pods| Peer::Pods { namespaces: NamespaceScope::Own, pods }),
        (ns_selector(), selector()).prop_map(|(ns, pods)| Peer::Pods { namespaces: NamespaceScope::Matching(ns), pods }),
        ns_selector().prop_map(|ns| Peer::Pods {
            namespaces: NamespaceScope::Matching(ns),
            pods: LabelSelector::everything()
        }),
        ip_block().prop_map(Peer::IpBlock),
    ]
}

fn port_spec() -> impl Strategy<Value = PortSpec> {
    let port = prop_oneof![
        Just(PortMatch::All),
        prop::sample::select(vec![53u16, 80, 81, 443, 8080]).prop_map(|p| PortMatch::Range { start: p, end: p }),
        (prop::sample::select(vec![1u16, 50, 80, 1000]), 0u16..2000)
            .prop_map(|(s, w)| PortMatch::Range { start: s, end: s.saturating_add(w) }),
        prop::sample::select(vec!["web", "dns", "nope"]).prop_map(|n| PortMatch::Named(n.into())),
    ];
    (protocol(), port).prop_map(|(protocol, port)| PortSpec { protocol, port })
}

fn rule() -> impl Strategy<Value = Rule> {
    let peers = prop_oneof![1 => Just(Peers::Any), 3 => prop::collection::vec(peer(), 0..=3).prop_map(Peers::List)];
    let ports = prop_oneof![1 => Just(Ports::Any), 3 => prop::collection::vec(port_spec(), 1..=3).prop_map(Ports::List)];
    (peers, ports).prop_map(|(peers, ports)| Rule { peers, ports })
}

fn rules() -> impl Strategy<Value = Option<Vec<Rule>>> {
    prop_oneof![1 => Just(None), 1 => Just(Some(vec![])), 3 => prop::collection::vec(rule(), 1..=3).prop_map(Some)]
}

fn policy(n_ns: usize, i: usize) -> impl Strategy<Value = NetworkPolicy> {
    (0..n_ns, selector(), rules(), rules()).prop_map(move |(ns, pod_selector, ingress, egress)| NetworkPolicy {
        namespace: format!("ns{ns}"),
        name: format!("p{i}"),
        pod_selector,
        ingress,
        egress,
    })
}

fn model() -> impl Strategy<Value = Model> {
    (2usize..=4, 2usize..=10).prop_flat_map(|(n_ns, n_pods)| {
        let namespaces = prop::collection::vec(labels(), n_ns);
        let pods = prop::collection::vec(
            (0..n_ns, labels(), prop::sample::select(vec!["default", "sa1"]), named_ports(), prop::bool::weighted(0.9)),
            n_pods,
        );
        let ips = prop::sample::subsequence((1u8..=254).collect::<Vec<_>>(), n_pods);
        let policies = (0usize..=5).prop_flat_map(move |n| (0..n).map(|i| policy(n_ns, i)).collect::<Vec<_>>());
        (namespaces, pods, ips, policies).prop_map(|(namespaces, pods, ips, policies)| {
            let mut m = Model::default();
            for (i, mut labels) in namespaces.into_iter().enumerate() {
                let name = format!("ns{i}");
                labels.insert("kubernetes.io/metadata.name".into(), name.clone());
                m.upsert_namespace(Namespace { name, labels });
            }
            for (i, ((ns, labels, sa, ports, has_ip), last)) in pods.into_iter().zip(ips).enumerate() {
                m.upsert_pod(Pod {
                    namespace: format!("ns{ns}"),
                    name: format!("pod{i}"),
                    labels,
                    service_account: sa.into(),
                    ip: has_ip.then_some(Ipv4Addr::new(10, 0, 0, last)),
                    ip6: None,
                    ports,
                    interface: Some(format!("veth{i}")),
                });
            }
            for p in policies {
                m.upsert_policy(p);
            }
            m
        })
    })
}

const PROBES: [(u8, u16); 11] = [
    (proto::TCP, 80),
    (proto::TCP, 81),
    (proto::TCP, 8080),
    (proto::TCP, 53),
    (proto::TCP, 1000),
    (proto::TCP, 9000),
    (proto::UDP, 53),
    (proto::UDP, 80),
    (proto::SCTP, 80),
    (proto::SCTP, 8080),
    (proto::ICMP, 0),
];

fn endpoints(m: &Model) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = m.pods.values().filter(|p| p.ip.is_some()).map(|p| Endpoint::Pod(p.pod_ref())).collect();
    // Addresses that are no pod's: inside the generated prefixes, next to them, and far away.
    let used: BTreeSet<Ipv4Addr> = m.pods.values().filter_map(|p| p.ip).collect();
    for ip in [Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 0, 0, 77), Ipv4Addr::new(10, 0, 0, 200), Ipv4Addr::new(10, 0, 0, 255)] {
        if !used.contains(&ip) {
            out.push(Endpoint::Ip(ip.into()));
        }
    }
    out.push(Endpoint::Ip(Ipv4Addr::new(10, 0, 1, 1).into()));
    out.push(Endpoint::Ip(Ipv4Addr::new(8, 8, 8, 8).into()));
    // A pod reached by address must be the same as the pod by name.
    if let Some(ip) = used.iter().next() {
        out.push(Endpoint::Ip((*ip).into()));
    }
    out
}

fn check_agrees(m: &Model, c: &Compiled, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(c.overflow.is_empty(), "{what}: unexpected overflow {:?}", c.overflow);
    let eps = endpoints(m);
    for src in &eps {
        for dst in &eps {
            if src == dst || (matches!(src, Endpoint::Ip(_)) && matches!(dst, Endpoint::Ip(_))) {
                continue;
            }
            for (protocol, port) in PROBES {
                let want = reference::allowed(m, src, dst, protocol, port);
                let got = lookup::allowed(c, src, dst, protocol, port);
                prop_assert_eq!(got, want, "{}: {:?} -> {:?} proto {} port {}\nmodel: {:#?}", what, src, dst, protocol, port, m);
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Change {
    Relabel(usize, Labels),
    DeletePolicy(usize),
    ReplacePolicy(usize, Option<Vec<Rule>>),
    RelabelNamespace(usize, Labels),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0usize..10, labels()).prop_map(|(i, l)| Change::Relabel(i, l)),
        (0usize..6).prop_map(Change::DeletePolicy),
        (0usize..6, rules()).prop_map(|(i, r)| Change::ReplacePolicy(i, r)),
        (0usize..4, labels()).prop_map(|(i, l)| Change::RelabelNamespace(i, l)),
    ]
}

fn apply(m: &mut Model, change: &Change) {
    match change {
        Change::Relabel(i, l) => {
            let n = m.pods.len();
            if let Some(p) = m.pods.values_mut().nth(i % n) {
                p.labels = l.clone();
            }
        }
        Change::DeletePolicy(i) => {
            if let Some(k) = m.policies.keys().nth(*i).cloned() {
                m.policies.remove(&k);
            }
        }
        Change::ReplacePolicy(i, r) => {
            if let Some(p) = m.policies.values_mut().nth(*i) {
                p.ingress = r.clone();
            }
        }
        Change::RelabelNamespace(i, l) => {
            let n = m.namespaces.len();
            if let Some(ns) = m.namespaces.values_mut().nth(i % n) {
                let mut l = l.clone();
                l.insert("kubernetes.io/metadata.name".into(), ns.name.clone());
                ns.labels = l;
            }
        }
    }
}

/// Every ipBlock prefix of the model.
fn prefixes(m: &Model) -> BTreeSet<Cidr> {
    let mut out = BTreeSet::new();
    for p in m.policies.values() {
        for r in p.ingress.iter().flatten().chain(p.egress.iter().flatten()) {
            if let Peers::List(peers) = &r.peers {
                for peer in peers {
                    if let Peer::IpBlock(b) = peer {
                        out.insert(b.cidr);
                        out.extend(b.except.iter().copied());
                    }
                }
            }
        }
    }
    out
}

/// The longest ipBlock prefix containing `ip`.
fn region(m: &Model, ip: Ipv4Addr) -> Option<Cidr> {
    prefixes(m).into_iter().filter(|c| c.contains_addr(ip)).max_by_key(|c| c.prefix_len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_lookup_matches_reference(m in model(), changes in prop::collection::vec(change(), 1..=3)) {
        let mut compiler = Compiler::new(Limits::default());
        let c = compiler.compile(&m).expect("generated models are consistent");
        check_agrees(&m, &c, "initial compile")?;

        let mut m2 = m.clone();
        for ch in &changes {
            apply(&mut m2, ch);
        }
        let c2 = compiler.compile(&m2).expect("changed model is consistent");
        check_agrees(&m2, &c2, &format!("after {changes:?}"))?;

        // Incremental and from-scratch compiles agree on the entries (identity numbers aside,
        // so compare through the lookup only) and on pods whose identity survived, numbers
        // did not change.
        let fresh = Compiler::new(Limits::default()).compile(&m2).expect("fresh compile");
        check_agrees(&m2, &fresh, "fresh compile")?;
        for (r, e) in &c.endpoints {
            if let Some(e2) = c2.endpoints.get(r) {
                // A pod's identity also covers its CIDR region (the longest policy prefix
                // containing its address), which policy changes can move.
                let same_attrs = m.pods[r].labels == m2.pods[r].labels
                    && m.namespaces[&r.namespace].labels == m2.namespaces[&r.namespace].labels
                    && e.ip.map(|ip| region(&m, ip)) == e.ip.map(|ip| region(&m2, ip));
                if same_attrs {
                    prop_assert_eq!(e.identity, e2.identity, "identity of unchanged pod {} renumbered", r);
                }
            }
        }
    }
}
