//! Tiered semantics: the compiled maps, read with the datapath algorithm (through `explain`),
//! must give every probe the same enforced and staged decision (verdict, tier, policy, rule,
//! end-of-tier, log) as the plain tiered reference evaluator, also after incremental changes
//! compiled by the same `Compiler`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use bulkhead_common::proto;
use policy_compiler::model::{Cidr, Labels, Model, NamedPort, Namespace, Pod, Protocol};
use policy_compiler::reference::TieredReference;
use policy_compiler::tiered::{
    Action, EntityMatch, IcmpMatch, NamespaceMatch, Order, PolicyId, PolicyKind, PortItem, Selector, TRule, Tier,
    TierDefault, TieredPolicy,
};
use policy_compiler::{Compiled, Compiler, Endpoint, Limits, explain};
use proptest::prelude::*;

const KEYS: [&str; 3] = ["app", "tier", "env"];
const VALUES: [&str; 2] = ["x", "y"];

fn labels() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(prop::sample::select(KEYS.to_vec()), prop::sample::select(VALUES.to_vec()), 0..=2)
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn leaf() -> impl Strategy<Value = Selector> {
    let k = prop::sample::select(KEYS.to_vec()).prop_map(String::from);
    let v = prop::sample::select(VALUES.to_vec()).prop_map(String::from);
    prop_oneof![
        2 => Just(Selector::All),
        3 => (k.clone(), v.clone()).prop_map(|(k, v)| Selector::Eq(k, v)),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| Selector::Ne(k, v)),
        1 => k.clone().prop_map(Selector::Has),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| Selector::In(k, [v].into())),
        1 => (k, v).prop_map(|(k, v)| Selector::NotIn(k, [v].into())),
        1 => (0..3usize).prop_map(|i| Selector::Eq("projectcalico.org/namespace".into(), format!("ns{i}"))),
        1 => Just(Selector::Eq("projectcalico.org/serviceaccount".into(), "sa1".into())),
    ]
}

fn selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        4 => leaf(),
        1 => leaf().prop_map(|s| Selector::Not(Box::new(s))),
        1 => prop::collection::vec(leaf(), 2).prop_map(Selector::And),
        1 => prop::collection::vec(leaf(), 2).prop_map(Selector::Or),
    ]
}

fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        4 => (0u32..256, 24u8..=32).prop_map(|(host, len)| Cidr::containing(Ipv4Addr::from(0x0a00_0000 | host), len)),
        1 => Just(Cidr::containing(Ipv4Addr::new(0, 0, 0, 0), 0)),
        1 => Just(Cidr::containing(Ipv4Addr::new(10, 0, 0, 0), 8)),
    ]
}

fn port_items() -> impl Strategy<Value = Vec<PortItem>> {
    let item = prop_oneof![
        3 => prop::sample::select(vec![53u16, 80, 81, 443, 8080]).prop_map(|p| PortItem::Range { start: p, end: p }),
        2 => (prop::sample::select(vec![1u16, 50, 80, 1000]), 0u16..2000)
            .prop_map(|(s, w)| PortItem::Range { start: s, end: s.saturating_add(w) }),
        2 => prop::sample::select(vec!["web", "dns", "nope"]).prop_map(|n| PortItem::Named(n.into())),
    ];
    prop::collection::vec(item, 0..=2)
}

/// The identity part of an entity (ports are set by the rule).
fn entity() -> impl Strategy<Value = EntityMatch> {
    let ns = prop_oneof![
        (0..3usize).prop_map(|i| NamespaceMatch::Named(format!("ns{i}"))),
        selector().prop_map(NamespaceMatch::Selector),
    ];
    (
        prop::option::weighted(0.4, selector()),
        prop::option::weighted(0.15, selector()),
        prop::option::weighted(0.25, ns),
        prop::option::weighted(0.1, Just(Selector::Eq("projectcalico.org/name".into(), "sa1".into()))),
        prop::collection::vec(cidr(), 0..=1),
        prop::collection::vec(cidr(), 0..=1),
    )
        .prop_map(|(selector, not_selector, namespace, service_account_selector, nets, not_nets)| EntityMatch {
            selector,
            not_selector,
            namespace,
            service_account_selector,
            nets,
            not_nets,
            ports: vec![],
            not_ports: vec![],
        })
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![3 => Just(Action::Allow), 3 => Just(Action::Deny), 2 => Just(Action::Pass), 2 => Just(Action::Log)]
}

fn icmp() -> impl Strategy<Value = IcmpMatch> {
    (prop::sample::select(vec![0u8, 3, 8]), prop::option::of(prop::sample::select(vec![0u8, 1])))
        .prop_map(|(icmp_type, code)| IcmpMatch { icmp_type, code })
}

fn rule() -> impl Strategy<Value = TRule> {
    let protocol = prop_oneof![
        3 => Just(None),
        3 => Just(Some(proto::TCP)),
        1 => Just(Some(proto::UDP)),
        1 => Just(Some(proto::ICMP)),
        1 => Just(Some(47u8)),
    ];
    (
        action(),
        protocol,
        prop::option::weighted(0.15, prop::sample::select(vec![proto::TCP, proto::UDP, proto::ICMP])),
        entity(),
        entity(),
        port_items(),
        port_items(),
        prop::option::weighted(0.6, icmp()),
        prop::option::weighted(0.3, icmp()),
        prop::bool::weighted(0.5),
    )
        .prop_map(|(action, protocol, not_protocol, source, mut destination, ports, not_ports, ic, nic, use_ports)| {
            let port_proto = matches!(protocol, Some(proto::TCP | proto::UDP));
            if port_proto && use_ports {
                destination.ports = ports;
                destination.not_ports = not_ports;
            }
            let is_icmp = protocol == Some(proto::ICMP);
            TRule {
                action,
                protocol,
                not_protocol: not_protocol.filter(|p| Some(*p) != protocol),
                icmp: if is_icmp { ic } else { None },
                not_icmp: if is_icmp { nic } else { None },
                source,
                destination,
            }
        })
}

fn rules() -> impl Strategy<Value = Option<Vec<TRule>>> {
    prop_oneof![1 => Just(None), 1 => Just(Some(vec![])), 4 => prop::collection::vec(rule(), 1..=3).prop_map(Some)]
}

const KINDS: [PolicyKind; 4] = [
    PolicyKind::CalicoNetworkPolicy,
    PolicyKind::CalicoGlobalNetworkPolicy,
    PolicyKind::StagedNetworkPolicy,
    PolicyKind::StagedGlobalNetworkPolicy,
];

fn policy(i: usize, n_tiers: usize) -> impl Strategy<Value = TieredPolicy> {
    (
        prop::sample::select(KINDS.to_vec()),
        0..3usize,
        0..=n_tiers,
        prop::option::weighted(0.8, prop::sample::select(vec![1.0f64, 2.0, 5.0])),
        selector(),
        prop::option::weighted(0.2, selector()),
        prop::option::weighted(0.1, Just(Selector::Eq("projectcalico.org/name".into(), "default".into()))),
        rules(),
        rules(),
    )
        .prop_map(move |(kind, ns, tier, order, selector, ns_sel, sa_sel, ingress, egress)| TieredPolicy {
            id: PolicyId { kind, namespace: kind.is_namespaced().then(|| format!("ns{ns}")), name: format!("p{i}") },
            // Tier index n_tiers is the built-in default tier.
            tier: if tier == n_tiers { "default".into() } else { format!("t{tier}") },
            order: order.map(Order),
            selector,
            namespace_selector: if kind.is_namespaced() { None } else { ns_sel },
            service_account_selector: sa_sel,
            ingress,
            egress,
        })
}

fn tier(i: usize) -> impl Strategy<Value = Tier> {
    (
        prop::option::weighted(0.9, prop::sample::select(vec![10.0f64, 20.0, 20.0, 2_000_000.0])),
        prop_oneof![Just(TierDefault::Deny), Just(TierDefault::Pass)],
    )
        .prop_map(move |(order, default_action)| Tier {
            name: format!("t{i}"),
            order: order.map(Order),
            default_action,
            cluster_scoped_only: false,
        })
}

fn named_ports() -> impl Strategy<Value = Vec<NamedPort>> {
    let proto = prop_oneof![4 => Just(Protocol::Tcp), 1 => Just(Protocol::Udp)];
    (prop::option::of((prop::sample::select(vec![80u16, 81, 8080]), proto.clone())), prop::option::of((Just(53u16), proto)))
        .prop_map(|(web, dns)| {
            let mut out = Vec::new();
            if let Some((port, protocol)) = web {
                out.push(NamedPort { name: Some("web".into()), port, protocol });
            }
            if let Some((port, protocol)) = dns {
                out.push(NamedPort { name: Some("dns".into()), port, protocol });
            }
            out
        })
}

fn model() -> impl Strategy<Value = Model> {
    (2usize..=4, 2usize..=7).prop_flat_map(|(n_tiers, n_pods)| {
        let tiers = (0..n_tiers).map(tier).collect::<Vec<_>>();
        let namespaces = prop::collection::vec(labels(), 3);
        let pods = prop::collection::vec(
            (0..3usize, labels(), prop::sample::select(vec!["default", "sa1"]), named_ports()),
            n_pods,
        );
        let ips = prop::sample::subsequence((1u8..=254).collect::<Vec<_>>(), n_pods);
        let policies = (0usize..=6).prop_flat_map(move |n| (0..n).map(|i| policy(i, n_tiers)).collect::<Vec<_>>());
        (tiers, namespaces, pods, ips, policies).prop_map(|(tiers, namespaces, pods, ips, policies)| {
            let mut m = Model::default();
            for t in tiers {
                m.tiers.insert(t.name.clone(), t);
            }
            for (i, mut labels) in namespaces.into_iter().enumerate() {
                let name = format!("ns{i}");
                labels.insert("kubernetes.io/metadata.name".into(), name.clone());
                m.upsert_namespace(Namespace { name, labels });
            }
            for (i, ((ns, labels, sa, ports), last)) in pods.into_iter().zip(ips).enumerate() {
                m.upsert_pod(Pod {
                    namespace: format!("ns{ns}"),
                    name: format!("pod{i}"),
                    labels,
                    service_account: sa.into(),
                    ip: Some(Ipv4Addr::new(10, 0, 0, last)),
                    ip6: None,
                    ports,
                    interface: None,
                });
            }
            for p in policies {
                m.tiered.insert(p.id.clone(), p);
            }
            m
        })
    })
}

const PROBES: [(u8, u16); 12] = [
    (proto::TCP, 80),
    (proto::TCP, 81),
    (proto::TCP, 8080),
    (proto::TCP, 1000),
    (proto::TCP, 3000),
    (proto::UDP, 53),
    (proto::UDP, 80),
    (proto::SCTP, 80),
    (proto::ICMP, 8 << 8),
    (proto::ICMP, 3 << 8 | 1),
    (proto::ICMP, 0),
    (47, 0),
];

fn endpoints(m: &Model) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = m.pods.values().map(|p| Endpoint::Pod(p.pod_ref())).collect();
    let used: BTreeSet<Ipv4Addr> = m.pods.values().filter_map(|p| p.ip).collect();
    for ip in [Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 0, 0, 77), Ipv4Addr::new(10, 0, 0, 200), Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(8, 8, 8, 8)] {
        if !used.contains(&ip) {
            out.push(Endpoint::Ip(ip.into()));
        }
    }
    out
}

fn check_agrees(m: &Model, c: &Compiled, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(c.overflow.is_empty(), "{what}: unexpected overflow {:?}", c.overflow);
    let r = TieredReference::new(m);
    let eps = endpoints(m);
    for src in &eps {
        for dst in &eps {
            if src == dst || (matches!(src, Endpoint::Ip(_)) && matches!(dst, Endpoint::Ip(_))) {
                continue;
            }
            for (protocol, port) in PROBES {
                let (eg, ing) = r.sides(src, dst, protocol, port).expect("known endpoints");
                let x = explain(c, m, src, dst, protocol, port);
                let got = |s: &Option<policy_compiler::explain::SideExplanation>| s.as_ref().map(|s| (s.enforced.clone(), s.staged.clone()));
                let want = |s: &Option<policy_compiler::reference::TieredSide>| s.as_ref().map(|s| (s.enforced.clone(), s.staged.clone()));
                prop_assert_eq!(got(&x.egress), want(&eg), "{}: egress {:?} -> {:?} {}/{}\n{}\nmodel: {:#?}", what, src, dst, protocol, port, x, m);
                prop_assert_eq!(got(&x.ingress), want(&ing), "{}: ingress {:?} -> {:?} {}/{}\n{}\nmodel: {:#?}", what, src, dst, protocol, port, x, m);
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Change {
    Relabel(usize, Labels),
    DeletePolicy(usize),
    ReplaceIngress(usize, Option<Vec<TRule>>),
    Reorder(usize, Option<f64>),
    TierDefault(usize),
    RelabelNamespace(usize, Labels),
    MovePod(usize, u8),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0usize..10, labels()).prop_map(|(i, l)| Change::Relabel(i, l)),
        (0usize..6).prop_map(Change::DeletePolicy),
        (0usize..6, rules()).prop_map(|(i, r)| Change::ReplaceIngress(i, r)),
        (0usize..6, prop::option::of(prop::sample::select(vec![0.5f64, 3.0, 9.0]))).prop_map(|(i, o)| Change::Reorder(i, o)),
        (0usize..4).prop_map(Change::TierDefault),
        (0usize..3, labels()).prop_map(|(i, l)| Change::RelabelNamespace(i, l)),
        (0usize..10, 1u8..=254).prop_map(|(i, a)| Change::MovePod(i, a)),
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
            if let Some(k) = m.tiered.keys().nth(*i).cloned() {
                m.tiered.remove(&k);
            }
        }
        Change::ReplaceIngress(i, r) => {
            if let Some(p) = m.tiered.values_mut().nth(*i) {
                p.ingress = r.clone();
            }
        }
        Change::Reorder(i, o) => {
            if let Some(p) = m.tiered.values_mut().nth(*i) {
                p.order = o.map(Order);
            }
        }
        Change::TierDefault(i) => {
            if let Some(t) = m.tiers.values_mut().nth(*i) {
                t.default_action =
                    if t.default_action == TierDefault::Deny { TierDefault::Pass } else { TierDefault::Deny };
            }
        }
        Change::RelabelNamespace(i, l) => {
            if let Some(ns) = m.namespaces.values_mut().nth(*i) {
                let mut l = l.clone();
                l.insert("kubernetes.io/metadata.name".into(), ns.name.clone());
                ns.labels = l;
            }
        }
        Change::MovePod(i, a) => {
            let ip = Ipv4Addr::new(10, 0, 0, *a);
            if m.pods.values().any(|p| p.ip == Some(ip)) {
                return;
            }
            let n = m.pods.len();
            if let Some(p) = m.pods.values_mut().nth(i % n) {
                p.ip = Some(ip);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, max_shrink_iters: 4000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_tiered_lookup_matches_reference(m in model(), changes in prop::collection::vec(change(), 1..=3)) {
        let mut compiler = Compiler::new(Limits::default());
        let c = compiler.compile(&m).expect("generated models are consistent");
        check_agrees(&m, &c, "initial compile")?;

        let mut m2 = m.clone();
        for ch in &changes {
            apply(&mut m2, ch);
        }
        let c2 = compiler.compile(&m2).expect("changed model is consistent");
        check_agrees(&m2, &c2, &format!("after {changes:?}"))?;
        let fresh = Compiler::new(Limits::default()).compile(&m2).expect("fresh compile");
        check_agrees(&m2, &fresh, "fresh compile")?;
    }
}
