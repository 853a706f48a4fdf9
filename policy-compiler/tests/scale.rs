//! Scale smoke test (ignored by default; run with `--ignored --nocapture`): 10,000 pods and
//! 1,000 policies must compile in seconds, and a one-policy change must recompile faster.

use std::net::Ipv4Addr;
use std::time::Instant;

use policy_compiler::model::{
    Cidr, IpBlock, LabelSelector, Model, NamedPort, Namespace, NamespaceScope, NetworkPolicy, Peer, Peers, Pod,
    PortMatch, PortSpec, Ports, Protocol, Rule,
};
use policy_compiler::{Compiler, diff};

fn sel(k: &str, v: String) -> LabelSelector {
    LabelSelector { match_labels: [(k.to_string(), v)].into(), match_expressions: vec![] }
}

fn big_model(pods: usize, policies: usize) -> Model {
    let mut m = Model::default();
    for n in 0..50 {
        let name = format!("ns{n}");
        m.upsert_namespace(Namespace {
            name: name.clone(),
            labels: [("kubernetes.io/metadata.name".to_string(), name), ("team".to_string(), format!("t{}", n % 5))].into(),
        });
    }
    for i in 0..pods {
        m.upsert_pod(Pod {
            namespace: format!("ns{}", i % 50),
            name: format!("pod{i}"),
            labels: [("app".to_string(), format!("app{}", i % 200)), ("tier".to_string(), format!("t{}", i % 3))].into(),
            service_account: "default".into(),
            ip: Some(Ipv4Addr::from(0x0a00_0000 + i as u32 + 1)),
            ip6: None,
            ports: vec![NamedPort { name: Some("http".into()), port: 8000 + (i % 3) as u16, protocol: Protocol::Tcp }],
            interface: None,
        });
    }
    for p in 0..policies {
        let ns = p % 50;
        m.upsert_policy(NetworkPolicy {
            namespace: format!("ns{ns}"),
            name: format!("pol{p}"),
            pod_selector: sel("app", format!("app{}", p % 200)),
            ingress: Some(vec![
                Rule {
                    peers: Peers::List(vec![
                        Peer::Pods { namespaces: NamespaceScope::Own, pods: sel("tier", format!("t{}", p % 3)) },
                        Peer::Pods {
                            namespaces: NamespaceScope::Matching(sel("team", format!("t{}", p % 5))),
                            pods: sel("app", format!("app{}", (p + 1) % 200)),
                        },
                    ]),
                    ports: Ports::List(vec![
                        PortSpec { protocol: Protocol::Tcp, port: PortMatch::Range { start: 80, end: 80 } },
                        PortSpec { protocol: Protocol::Tcp, port: PortMatch::Named("http".into()) },
                    ]),
                },
                Rule {
                    peers: Peers::List(vec![Peer::IpBlock(IpBlock {
                        cidr: Cidr::new(Ipv4Addr::new(172, 16, (p % 256) as u8, 0), 24).expect("cidr"),
                        except: vec![],
                    })]),
                    ports: Ports::List(vec![PortSpec { protocol: Protocol::Udp, port: PortMatch::Range { start: 1000, end: 1999 } }]),
                },
            ]),
            egress: (p % 4 == 0).then(|| vec![Rule { peers: Peers::Any, ports: Ports::Any }]),
        });
    }
    m
}

#[test]
#[ignore]
fn compile_10k_pods_1k_policies() {
    let mut m = big_model(10_000, 1_000);
    let mut compiler = Compiler::default();
    let t = Instant::now();
    let c1 = compiler.compile(&m).expect("compile");
    let full = t.elapsed();
    println!("full compile: {full:?}, {} policy entries, {} ipcache entries", c1.policy.len(), c1.ipcache.len());

    let p = m.policies.values_mut().nth(7).expect("policy 7");
    if let Some(rules) = &mut p.ingress {
        rules[1].ports = Ports::List(vec![PortSpec { protocol: Protocol::Udp, port: PortMatch::Range { start: 2000, end: 2999 } }]);
    }
    let t = Instant::now();
    let c2 = compiler.compile(&m).expect("recompile");
    let incr = t.elapsed();
    let d = diff(&c1, &c2);
    println!("one-policy recompile: {incr:?}; diff {} upserts, {} removals", d.policy.upserts.len(), d.policy.removals.len());
    assert!(!d.policy.is_empty(), "the changed policy changes entries");
    assert!(full.as_secs() < 30, "full compile took {full:?}");
}

#[test]
#[ignore]
fn compile_10k_pods_1k_knps_with_tiers_and_staged() {
    use policy_compiler::tiered::{Action, EntityMatch, Order, PolicyId, PolicyKind, Selector, TRule, Tier, TierDefault, TieredPolicy};
    let mut m = big_model(10_000, 1_000);
    for (i, (name, default_action)) in [("security", TierDefault::Pass), ("platform", TierDefault::Deny)].into_iter().enumerate() {
        m.tiers.insert(
            name.into(),
            Tier { name: name.into(), order: Some(Order(100.0 * (i + 1) as f64)), default_action, cluster_scoped_only: false },
        );
    }
    let rule = |action, app: Option<String>, net: Option<Cidr>| TRule {
        action,
        protocol: Some(6),
        not_protocol: None,
        icmp: None,
        not_icmp: None,
        source: EntityMatch {
            selector: app.map(|a| Selector::Eq("app".into(), a)),
            namespace: None,
            nets: net.into_iter().collect(),
            ..EntityMatch::default()
        },
        destination: EntityMatch { ports: vec![policy_compiler::tiered::PortItem::Range { start: 1, end: 1023 }], ..EntityMatch::default() },
    };
    for g in 0..300usize {
        let (kind, tier) = match g % 3 {
            0 => (PolicyKind::CalicoGlobalNetworkPolicy, "security"),
            1 => (PolicyKind::CalicoGlobalNetworkPolicy, "platform"),
            _ => (PolicyKind::StagedGlobalNetworkPolicy, "security"),
        };
        let p = TieredPolicy {
            id: PolicyId { kind, namespace: None, name: format!("g{g}") },
            tier: tier.into(),
            order: Some(Order(g as f64)),
            selector: Selector::Eq("app".into(), format!("app{}", g % 200)),
            namespace_selector: None,
            service_account_selector: None,
            ingress: Some(vec![
                rule(Action::Log, None, Some(Cidr::new(Ipv4Addr::new(192, 168, (g % 256) as u8, 0), 24).expect("cidr"))),
                rule(Action::Deny, Some(format!("app{}", (g + 7) % 200)), None),
                rule(if g % 2 == 0 { Action::Pass } else { Action::Allow }, None, None),
            ]),
            egress: None,
        };
        m.tiered.insert(p.id.clone(), p);
    }
    let mut compiler = Compiler::default();
    let t = Instant::now();
    let c = compiler.compile(&m).expect("compile");
    let full = t.elapsed();
    println!(
        "tiered full compile: {full:?}, {} policy + {} staged entries, {} ipcache entries, {} policies, overflow {}",
        c.policy.len(),
        c.staged.len(),
        c.ipcache.len(),
        c.policy_table.len(),
        c.overflow.len()
    );
    let t = Instant::now();
    let c2 = compiler.compile(&m).expect("recompile");
    println!("tiered unchanged recompile: {:?}, diff empty: {}", t.elapsed(), diff(&c, &c2).is_empty());
    assert!(full.as_secs() < 30, "full compile took {full:?}");
}
