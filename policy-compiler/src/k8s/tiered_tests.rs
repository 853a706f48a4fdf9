//! Calico v3 and (Baseline)AdminNetworkPolicy parsing and model building.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::*;
use crate::tiered::{
    ANP_TIER, Action, BANP_TIER, DEFAULT_TIER, DEFAULT_TIER_ORDER, EntityMatch, IcmpMatch, NamespaceMatch, Order,
    PortItem, Selector, TRule, TierDefault,
};

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\n";

fn parse(text: &str) -> Vec<Object> {
    parse_documents("policies.yaml", text)
        .unwrap_or_else(|e| panic!("must parse: {e}"))
        .into_iter()
        .map(|r| r.object)
        .collect()
}

fn tiered(text: &str) -> TieredPolicy {
    match parse(text).pop() {
        Some(Object::Tiered(p)) => p,
        other => panic!("expected a tiered policy, got {other:?}"),
    }
}

fn err(text: &str) -> String {
    parse_documents("policies.yaml", text).expect_err("must be rejected").to_string()
}

fn model_err(text: &str) -> String {
    build_model(parse_documents("policies.yaml", text).unwrap_or_else(|e| panic!("must parse: {e}")))
        .expect_err("model must be rejected")
        .to_string()
}

fn gnp(spec: &str) -> String {
    format!("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: allow-dns}}\nspec:\n{spec}")
}

fn cnp(spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: np, namespace: x}}\nspec:\n{spec}"
    )
}

fn anp(spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {{name: a}}\nspec:\n{spec}"
    )
}

fn eq(k: &str, v: &str) -> Selector {
    Selector::Eq(k.into(), v.into())
}

fn ns_is(name: &str) -> Selector {
    eq(NAMESPACE_NAME_LABEL, name)
}

fn range(start: u16, end: u16) -> PortItem {
    PortItem::Range { start, end }
}

// ---------------------------------------------------------------------------------------------
// Kinds and the conformance cases.

#[test]
fn new_kinds_are_supported() {
    for kind in ["Tier", "GlobalNetworkPolicy", "NetworkPolicy", "StagedGlobalNetworkPolicy", "StagedNetworkPolicy"] {
        assert!(is_supported("projectcalico.org/v3", kind), "{kind}");
    }
    for kind in ["AdminNetworkPolicy", "BaselineAdminNetworkPolicy"] {
        assert!(is_supported("policy.networking.k8s.io/v1alpha1", kind), "{kind}");
    }
    assert!(!is_supported("crd.projectcalico.org/v1", "GlobalNetworkPolicy"), "only the v3 API");
    assert!(!is_supported("projectcalico.org/v3", "GlobalNetworkSet"));
    assert!(!is_supported("policy.networking.k8s.io/v1alpha1", "NetworkPolicy"));
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance/cases")
}

type Key = (String, String, String, String);

fn key_of(doc: &serde_yaml::Value) -> Key {
    let s = |v: Option<&serde_yaml::Value>| v.and_then(serde_yaml::Value::as_str).unwrap_or("").to_string();
    let meta = doc.get("metadata");
    (
        s(doc.get("apiVersion")),
        s(doc.get("kind")),
        s(meta.and_then(|m| m.get("namespace"))),
        s(meta.and_then(|m| m.get("name"))),
    )
}

/// Every `apply:` of every case parses, and after each step (applies and deletes replayed on
/// the topology's namespaces) the resources build a model.
#[test]
fn every_conformance_case_parses_and_builds() {
    let dir = cases_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let (mut cases, mut tiered_docs) = (0, 0);
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable case");
        let case: serde_yaml::Value = serde_yaml::from_str(&text).expect("case YAML");
        if case.get("kind").and_then(serde_yaml::Value::as_str) != Some("Case") {
            continue;
        }
        cases += 1;
        let name = file.file_name().expect("file name").to_string_lossy().into_owned();
        let topo_name = case["topology"].as_str().expect("case names its topology");
        let topo: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join(format!("{topo_name}.yaml"))).expect("topology"))
                .expect("topology YAML");
        let mut namespaces = String::new();
        for ns in topo["namespaces"].as_sequence().expect("topology namespaces") {
            let doc = serde_yaml::to_string(&serde_yaml::Value::Mapping(
                [
                    ("apiVersion".into(), "v1".into()),
                    ("kind".into(), "Namespace".into()),
                    ("metadata".into(), serde_yaml::to_value(ns).expect("ns")),
                ]
                .into_iter()
                .collect(),
            ))
            .expect("ns doc");
            namespaces.push_str(&format!("---\n{doc}"));
        }
        let mut store: BTreeMap<Key, String> = BTreeMap::new();
        for (si, step) in case["steps"].as_sequence().expect("steps").iter().enumerate() {
            let origin = format!("{name} step {si}");
            if let Some(apply) = step.get("apply").and_then(serde_yaml::Value::as_str) {
                let parsed = parse_documents(&origin, apply).unwrap_or_else(|e| panic!("{e}"));
                tiered_docs += parsed.iter().filter(|r| matches!(r.object, Object::Tiered(_))).count();
                for de in serde_yaml::Deserializer::from_str(apply) {
                    let doc = serde_yaml::Value::deserialize(de).expect("doc");
                    if !doc.is_null() {
                        store.insert(key_of(&doc), serde_yaml::to_string(&doc).expect("doc"));
                    }
                }
            } else if let Some(refs) = step.get("delete").and_then(serde_yaml::Value::as_sequence) {
                for r in refs {
                    let want = key_of(&serde_yaml::Value::Mapping(
                        [
                            ("kind".into(), r["kind"].clone()),
                            (
                                "metadata".into(),
                                serde_yaml::Value::Mapping(
                                    [
                                        ("name".into(), r["name"].clone()),
                                        ("namespace".into(), r.get("namespace").cloned().unwrap_or_default()),
                                    ]
                                    .into_iter()
                                    .collect(),
                                ),
                            ),
                        ]
                        .into_iter()
                        .collect(),
                    ));
                    let before = store.len();
                    store.retain(|k, _| !(k.1 == want.1 && k.2 == want.2 && k.3 == want.3));
                    assert!(store.len() < before, "{origin}: delete of {want:?} matches nothing");
                }
            } else {
                continue;
            }
            let mut all = namespaces.clone();
            for doc in store.values() {
                all.push_str(&format!("---\n{doc}"));
            }
            let resources = parse_documents(&origin, &all).unwrap_or_else(|e| panic!("{e}"));
            build_model(resources).unwrap_or_else(|e| panic!("{origin}: {e}"));
        }
    }
    assert!(cases >= 60, "found only {cases} cases in {}", dir.display());
    assert!(tiered_docs >= 50, "found only {tiered_docs} Calico/ANP documents");
}

// ---------------------------------------------------------------------------------------------
// Tiers.

#[test]
fn tiers_parse_with_calico_defaults() {
    let objs = parse(
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t1}\nspec: {order: 100.5, defaultAction: Pass}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t2}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: default, annotations: {bulkhead.io/cluster-scoped-only: 'true'}}\n",
    );
    let tiers: Vec<Tier> = objs
        .into_iter()
        .map(|o| match o {
            Object::Tier(t) => t,
            o => panic!("expected a tier, got {o:?}"),
        })
        .collect();
    assert_eq!(
        tiers[0],
        Tier {
            name: "t1".into(),
            order: Some(Order(100.5)),
            default_action: TierDefault::Pass,
            cluster_scoped_only: false
        }
    );
    assert_eq!(
        tiers[1],
        Tier { name: "t2".into(), order: None, default_action: TierDefault::Deny, cluster_scoped_only: false }
    );
    assert_eq!(
        tiers[2],
        Tier {
            name: DEFAULT_TIER.into(),
            order: Some(Order(DEFAULT_TIER_ORDER)),
            default_action: TierDefault::Deny,
            cluster_scoped_only: true
        },
        "a declared default tier keeps its built-in order"
    );
    let t =
        parse("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: adminnetworkpolicy}\nspec: {order: 5}\n");
    assert!(
        matches!(&t[0], Object::Tier(t) if t.order == Some(Order(5.0)) && t.default_action == TierDefault::Pass),
        "built-in names keep their built-in default action: {t:?}"
    );
}

#[test]
fn tier_errors() {
    let tier = |meta: &str, spec: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {meta}\nspec: {spec}\n")
    };
    let cases = [
        (
            tier("{name: t1}", "{defaultAction: Allow}"),
            "policies.yaml: document 1 (Tier t1): spec.defaultAction: unknown default action \"Allow\" (expected Deny or Pass)",
        ),
        (tier("{name: t1}", "{order: x}"), "policies.yaml: document 1 (Tier t1): spec.order: expected a number"),
        (
            tier("{name: t1}", "{priority: 1}"),
            "policies.yaml: document 1 (Tier t1): spec.priority: unknown field (expected one of: order, defaultAction)",
        ),
        (
            tier("{name: t1, annotations: {bulkhead.io/cluster-scoped-only: 'yes'}}", "{}"),
            "policies.yaml: document 1 (Tier t1): metadata.annotations[\"bulkhead.io/cluster-scoped-only\"]: expected \"true\" or \"false\", found \"yes\"",
        ),
        (
            tier("{name: t.1}", "{}"),
            "policies.yaml: document 1 (Tier t.1): metadata.name: invalid name \"t.1\": must be at most 63 characters without '.'",
        ),
        (
            tier("{name: t1, namespace: x}", "{}"),
            "policies.yaml: document 1 (Tier t1): metadata.namespace: Tier is cluster-scoped: remove metadata.namespace",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(&text), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Calico policies.

#[test]
fn full_global_network_policy() {
    let p = tiered(&gnp(r#"
  order: 10.5
  selector: "app == 'web' && !has(debug)"
  namespaceSelector: "team in {'a', 'b'}"
  serviceAccountSelector: "role == 'api'"
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: "app == 'client'"
      notSelector: "bad == 'true'"
      nets: [10.0.0.0/8, 10.1.2.3, 'fd00::/64']
      notNets: [10.9.0.0/16]
    destination:
      ports: [80, '8080:8090', http, '443']
      notPorts: [8085]
  - action: Deny
    protocol: ICMP
    icmp: {type: 8, code: 0}
    notICMP: {type: 3}
  - action: Pass
    notProtocol: 17
    ipVersion: 4
    source: {namespaceSelector: "team == 'a'"}
  - action: Log
    protocol: udplite
    metadata: {annotations: {why: audit}}
  egress:
  - action: Allow
    protocol: UDP
    destination:
      serviceAccounts: {names: [dns, coredns], selector: "tier == 'infra'"}
      ports: [53]
"#));
    assert_eq!(
        p.id,
        PolicyId { kind: PolicyKind::CalicoGlobalNetworkPolicy, namespace: None, name: "allow-dns".into() }
    );
    assert_eq!(p.tier, DEFAULT_TIER);
    assert_eq!(p.order, Some(Order(10.5)));
    assert_eq!(
        p.selector,
        Selector::And(vec![eq("app", "web"), Selector::Not(Box::new(Selector::Has("debug".into())))])
    );
    assert_eq!(p.namespace_selector, Some(Selector::In("team".into(), ["a".to_string(), "b".to_string()].into())));
    assert_eq!(p.service_account_selector, Some(eq("role", "api")));
    let ingress = p.ingress.expect("ingress rules make Ingress a default type");
    assert_eq!(p.egress.as_ref().map(Vec::len), Some(1), "egress rules add Egress");
    let cidr = |s: &str| {
        let (a, l) = s.split_once('/').expect("cidr");
        Cidr::new(a.parse::<std::net::IpAddr>().expect("addr"), l.parse().expect("len")).expect("canonical")
    };
    assert_eq!(
        ingress[0],
        TRule {
            action: Action::Allow,
            protocol: Some(6),
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: EntityMatch {
                selector: Some(eq("app", "client")),
                not_selector: Some(eq("bad", "true")),
                nets: vec![cidr("10.0.0.0/8"), cidr("10.1.2.3/32"), cidr("fd00::/64")],
                not_nets: vec![cidr("10.9.0.0/16")],
                ..Default::default()
            },
            destination: EntityMatch {
                ports: vec![range(80, 80), range(8080, 8090), PortItem::Named("http".into()), range(443, 443)],
                not_ports: vec![range(8085, 8085)],
                ..Default::default()
            },
        }
    );
    assert_eq!(ingress[1].icmp, Some(IcmpMatch { icmp_type: 8, code: Some(0) }));
    assert_eq!(ingress[1].not_icmp, Some(IcmpMatch { icmp_type: 3, code: None }));
    assert_eq!((ingress[2].action, ingress[2].not_protocol), (Action::Pass, Some(17)));
    assert_eq!(
        ingress[2].source,
        EntityMatch { namespace: Some(NamespaceMatch::Selector(eq("team", "a"))), nets: vec![cidr("0.0.0.0/0")], ..Default::default() },
        "a namespaceSelector alone selects all pods of the namespaces; ipVersion 4 keeps IPv4 addresses only"
    );
    assert_eq!((ingress[3].action, ingress[3].protocol), (Action::Log, Some(136)));
    let egress = &p.egress.expect("egress")[0];
    assert_eq!(
        egress.destination.service_account_selector,
        Some(Selector::And(vec![
            Selector::In("projectcalico.org/name".into(), ["coredns".to_string(), "dns".to_string()].into()),
            eq("tier", "infra"),
        ]))
    );
    assert_eq!(egress.destination.namespace, None, "GNP rule selectors look in every namespace");
}

#[test]
fn calico_default_types() {
    let types = |spec: &str| {
        let p = tiered(&gnp(spec));
        (p.ingress.map(|r| r.len()), p.egress.map(|r| r.len()))
    };
    assert_eq!(types("  selector: all()\n"), (Some(0), None), "no rules: Ingress");
    assert_eq!(types("  ingress: [{action: Allow}]\n"), (Some(1), None));
    assert_eq!(types("  egress: [{action: Allow}]\n"), (None, Some(1)), "egress rules only: Egress only");
    assert_eq!(types("  ingress: [{action: Deny}]\n  egress: [{action: Allow}]\n"), (Some(1), Some(1)));
    assert_eq!(types("  types: [Egress]\n"), (None, Some(0)), "explicit types");
    assert_eq!(types("  types: [Ingress, Egress]\n  egress: [{action: Allow}]\n"), (Some(0), Some(1)));
}

#[test]
fn namespaced_rule_selectors_are_scoped_to_the_policy_namespace() {
    let p = tiered(&cnp(r#"
  selector: "pod == 'a'"
  ingress:
  - action: Allow
    source: {selector: "pod == 'b'"}
  - action: Allow
    source: {notSelector: "pod == 'b'"}
  - action: Allow
    source: {serviceAccounts: {names: [sa]}}
  - action: Allow
    source: {namespaceSelector: "ns == 'y'", selector: "pod == 'c'"}
  - action: Allow
    source: {namespaceSelector: all()}
  - action: Allow
    source: {nets: [10.0.0.0/8]}
"#));
    assert_eq!(
        p.id,
        PolicyId { kind: PolicyKind::CalicoNetworkPolicy, namespace: Some("x".into()), name: "np".into() }
    );
    assert_eq!(p.namespace_selector, None);
    let r = p.ingress.expect("ingress");
    let own = Some(NamespaceMatch::Named("x".into()));
    assert_eq!(r[0].source.namespace, own, "selector: own namespace");
    assert_eq!(r[1].source.namespace, own, "notSelector: own namespace");
    assert_eq!(r[2].source.namespace, own, "serviceAccounts: own namespace");
    assert_eq!(r[3].source.namespace, Some(NamespaceMatch::Selector(eq("ns", "y"))), "namespaceSelector widens");
    assert_eq!(r[3].source.selector, Some(eq("pod", "c")));
    assert_eq!(
        (r[4].source.namespace.clone(), r[4].source.selector.clone()),
        (Some(NamespaceMatch::Selector(Selector::All)), None)
    );
    assert_eq!(r[5].source.namespace, None, "nets alone are not scoped to a namespace");
}

#[test]
fn tier_prefix_in_names() {
    let policy = |kind: &str, meta: &str, spec: &str| {
        format!("{NS}apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {meta}\nspec: {spec}\n")
    };
    let p = tiered(&policy("NetworkPolicy", "{name: tier1.np1-1, namespace: x}", "{tier: tier1}"));
    assert_eq!((p.id.name.as_str(), p.tier.as_str()), ("np1-1", "tier1"), "prefix stripped");
    let p = tiered(&policy("GlobalNetworkPolicy", "{name: np1-1}", "{tier: tier1}"));
    assert_eq!((p.id.name.as_str(), p.tier.as_str()), ("np1-1", "tier1"), "prefix optional");
    let p = tiered(&policy("GlobalNetworkPolicy", "{name: default.p}", "{}"));
    assert_eq!((p.id.name.as_str(), p.tier.as_str()), ("p", DEFAULT_TIER));
    assert_eq!(
        err(&policy("GlobalNetworkPolicy", "{name: tier2.p}", "{tier: tier1}")),
        "policies.yaml: document 2 (GlobalNetworkPolicy tier2.p): metadata.name: name \"tier2.p\" has the tier prefix \"tier2\" but the policy is in tier \"tier1\" (rename it tier1.p or set spec.tier: tier2)"
    );
    assert_eq!(
        err(&policy("GlobalNetworkPolicy", "{name: tier2.p}", "{}")),
        "policies.yaml: document 2 (GlobalNetworkPolicy tier2.p): metadata.name: name \"tier2.p\" has the tier prefix \"tier2\" but the policy is in tier \"default\" (set spec.tier: tier2, or drop the dot from the name)"
    );
    // With and without the prefix, one policy.
    let text = format!(
        "{}---\n{}",
        policy("GlobalNetworkPolicy", "{name: tier1.p}", "{tier: tier1}"),
        policy("GlobalNetworkPolicy", "{name: p}", "{tier: tier1}").replace(NS, "")
    );
    let text = format!("{text}---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: tier1}}\n");
    assert_eq!(
        model_err(&text),
        "GlobalNetworkPolicy p is defined twice: policies.yaml: document 2 and policies.yaml: document 3"
    );
}

#[test]
fn staged_policies() {
    let p = tiered(&format!(
        "{NS}apiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\nmetadata: {{name: s, namespace: x}}\n\
         spec: {{stagedAction: Set, selector: all(), types: [Egress]}}\n"
    ));
    assert_eq!(p.id.kind, PolicyKind::StagedNetworkPolicy);
    assert_eq!((p.ingress, p.egress), (None, Some(vec![])));
    let p = tiered(
        "apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata: {name: s}\nspec: {namespaceSelector: all()}\n",
    );
    assert_eq!((p.id.kind, p.namespace_selector), (PolicyKind::StagedGlobalNetworkPolicy, Some(Selector::All)));
    assert_eq!(
        err(
            "apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata: {name: s}\nspec: {stagedAction: Delete}\n"
        ),
        "policies.yaml: document 1 (StagedGlobalNetworkPolicy s): spec.stagedAction: stagedAction Delete (staging the deletion of an enforced policy) is not supported yet; stage a replacement with stagedAction Set instead"
    );
    assert!(
        err(&gnp("  stagedAction: Set\n")).contains("spec.stagedAction: unknown field"),
        "stagedAction only on staged kinds"
    );
}

#[test]
fn calico_policy_errors_name_file_document_and_field() {
    let d = "policies.yaml: document 1 (GlobalNetworkPolicy allow-dns)";
    let cases: Vec<(String, String)> = vec![
        (
            gnp("  ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: [53, '80:70']}\n"),
            format!("{d}: spec.ingress[0].destination.ports[1]: \"80:70\" is not a valid port range: 80 is greater than 70"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: ['1:x']}\n"),
            format!("{d}: spec.ingress[0].destination.ports[0]: \"1:x\" is not a valid port range: expected N:M with ports 1-65535"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: [70000]}\n"),
            format!("{d}: spec.ingress[0].destination.ports[0]: port 70000 is out of range 1..=65535"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: ['Web Port']}\n"),
            format!("{d}: spec.ingress[0].destination.ports[0]: named port \"Web Port\" is not a valid port name: only lowercase letters, digits and '-' are allowed"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    destination: {ports: [80]}\n"),
            format!("{d}: spec.ingress[0].destination.ports: ports require protocol TCP, UDP or SCTP, but the rule has no protocol"),
        ),
        (
            gnp("  egress:\n  - action: Allow\n    protocol: ICMP\n    destination: {notPorts: [80]}\n"),
            format!("{d}: spec.egress[0].destination.notPorts: ports require protocol TCP, UDP or SCTP, but the rule has protocol ICMP"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    protocol: TCP\n    source: {ports: [1024]}\n"),
            format!("{d}: spec.ingress[0].source.ports: source ports are not supported by Bulkhead's datapath (only destination ports can be matched)"),
        ),
        (
            gnp("  egress:\n  - action: Allow\n    protocol: TCP\n    source: {notPorts: [1024]}\n"),
            format!("{d}: spec.egress[0].source.notPorts: source ports are not supported by Bulkhead's datapath (only destination ports can be matched)"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    protocol: TCP\n    icmp: {type: 8}\n"),
            format!("{d}: spec.ingress[0].icmp: icmp requires protocol: ICMP or ICMPv6"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    protocol: 256\n"),
            format!("{d}: spec.ingress[0].protocol: protocol number 256 is out of range 1..=255"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    protocol: TPC\n"),
            format!("{d}: spec.ingress[0].protocol: unknown protocol \"TPC\" (expected TCP, UDP, ICMP, SCTP, UDPLite or a number 1-255)"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    ipVersion: 6\n    source: {nets: [10.0.0.0/8]}\n"),
            format!("{d}: spec.ingress[0].source.nets: 10.0.0.0/8 does not match ipVersion 6"),
        ),
        (gnp("  ingress:\n  - action: Allow\n    ipVersion: 5\n"), format!("{d}: spec.ingress[0].ipVersion: unknown IP version 5 (expected 4 or 6)")),
        (
            gnp("  ingress:\n  - action: Accept\n"),
            format!("{d}: spec.ingress[0].action: unknown action \"Accept\" (expected Allow, Deny, Pass or Log)"),
        ),
        (gnp("  ingress:\n  - protocol: TCP\n"), format!("{d}: spec.ingress[0].action: required")),
        (
            gnp("  ingress:\n  - action: Allow\n    icmp: {type: 8}\n"),
            format!("{d}: spec.ingress[0].icmp: icmp requires protocol: ICMP or ICMPv6"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    protocol: ICMP\n    notICMP: {type: 255}\n"),
            format!("{d}: spec.ingress[0].notICMP.type: ICMP type 255 is out of range 0..=254"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    protocol: ICMP\n    icmp: {code: 1}\n"),
            format!("{d}: spec.ingress[0].icmp.code: code requires type"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    source: {selector: \"app == 'a' &&\"}\n"),
            format!("{d}: spec.ingress[0].source.selector: invalid selector \"app == 'a' &&\": at position 14: expected a label key, all(), has(...), '!' or '(', found the end of the selector"),
        ),
        (
            gnp("  selector: \"app = 'a'\"\n"),
            format!("{d}: spec.selector: invalid selector \"app = 'a'\": at position 5: found '=', Calico selectors compare with '=='"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    source: {namespaceSelector: global()}\n"),
            format!("{d}: spec.ingress[0].source.namespaceSelector: invalid selector \"global()\": at position 1: global() (non-namespaced endpoints) is not supported"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    source: {nets: [10.0.0.1/8]}\n"),
            format!("{d}: spec.ingress[0].source.nets[0]: invalid CIDR \"10.0.0.1/8\": host bits are set (did you mean 10.0.0.0/8?)"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    source: {notNets: [nowhere]}\n"),
            format!("{d}: spec.ingress[0].source.notNets[0]: invalid CIDR \"nowhere\": not an IP address"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    source: {selecter: all()}\n"),
            format!("{d}: spec.ingress[0].source.selecter: unknown field (expected one of: selector, notSelector, namespaceSelector, serviceAccounts, nets, notNets, ports, notPorts, services)"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    destination: {services: {name: kube-dns, namespace: kube-system}}\n"),
            format!("{d}: spec.ingress[0].destination.services: matching Kubernetes Services is not supported"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    http: {methods: [GET]}\n"),
            format!("{d}: spec.ingress[0].http: HTTP matches (application layer policy) are not supported"),
        ),
        (
            gnp("  ingress:\n  - action: Allow\n    source: {serviceAccounts: {names: [Bad_Name]}}\n"),
            format!("{d}: spec.ingress[0].source.serviceAccounts.names[0]: invalid service account name \"Bad_Name\": must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"),
        ),
        (
            gnp("  types: [Ingress, Ingress]\n"),
            format!("{d}: spec.types[1]: type listed twice"),
        ),
        (
            gnp("  types: [ingress]\n"),
            format!("{d}: spec.types[0]: unknown policy type \"ingress\" (expected Ingress or Egress)"),
        ),
        (
            gnp("  types: [Egress]\n  ingress: [{action: Allow}]\n"),
            format!("{d}: spec.ingress: ingress rules are given but spec.types lacks Ingress (they would be ignored)"),
        ),
        (gnp("  order: .nan\n"), format!("{d}: spec.order: order must be a finite number, found NaN")),
        (
            gnp("  doNotTrack: true\n"),
            format!("{d}: spec.doNotTrack: doNotTrack applies to host endpoints, which Bulkhead does not enforce; not supported"),
        ),
        (gnp("  tier: Tier1\n"), format!("{d}: spec.tier: invalid tier name \"Tier1\": must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit")),
        (
            gnp("  selectr: all()\n"),
            format!("{d}: spec.selectr: unknown field (expected one of: order, tier, selector, serviceAccountSelector, types, ingress, egress, performanceHints, namespaceSelector, doNotTrack, preDNAT, applyOnForward)"),
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: allow-dns, namespace: x}\nspec: {}\n".to_string(),
            format!("{d}: metadata.namespace: GlobalNetworkPolicy is cluster-scoped: remove metadata.namespace"),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(&text), want, "for:\n{text}");
    }
    // Namespaced kinds have no policy-level namespaceSelector.
    assert_eq!(
        err(&cnp("  namespaceSelector: all()\n")),
        "policies.yaml: document 1 (NetworkPolicy x/np): spec.namespaceSelector: unknown field (expected one of: order, tier, selector, serviceAccountSelector, types, ingress, egress, performanceHints)"
    );
}

#[test]
fn ipv6_nets_match_no_ipv4_address() {
    let p = tiered(&gnp(
        "  ingress:\n  - action: Deny\n    source: {nets: ['fd00::/64']}\n  - action: Allow\n    source: {notNets: ['fd00::/64']}\n",
    ));
    let r = p.ingress.expect("ingress");
    assert_eq!(r.len(), 2, "IPv6 nets are kept (they match IPv6 addresses only; see the compiler's tests): {r:?}");
    assert_eq!((r[0].action, r[0].source.nets[0].to_string()), (Action::Deny, "fd00::/64".to_string()));
    assert_eq!((r[1].action, r[1].source.not_nets.len()), (Action::Allow, 1));
}

// ---------------------------------------------------------------------------------------------
// AdminNetworkPolicy and BaselineAdminNetworkPolicy.

#[test]
fn anp_subject_priority_and_peer_split() {
    let p = tiered(&anp(r#"
  priority: 7
  subject:
    pods:
      namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {app: web}}
  ingress:
  - name: two-peers-mixed-ports
    action: Deny
    from:
    - namespaces: {matchLabels: {kubernetes.io/metadata.name: y}}
    - pods:
        namespaceSelector: {}
        podSelector: {matchLabels: {app: db}}
    ports:
    - portNumber: {port: 80}
    - portNumber: {protocol: UDP, port: 53}
    - portRange: {protocol: TCP, start: 8000, end: 8080}
  - action: Pass
    from: [{namespaces: {}}]
  egress:
  - action: Allow
    to:
    - networks: [10.0.0.0/8, 'fd00::/8']
    - networks: ['fd00::/64']
    ports: [{namedPort: web}]
"#));
    assert_eq!(p.id, PolicyId { kind: PolicyKind::AdminNetworkPolicy, namespace: None, name: "a".into() });
    assert_eq!((p.tier.as_str(), p.order), (ANP_TIER, Some(Order(7.0))));
    assert_eq!((p.selector.clone(), p.namespace_selector.clone()), (eq("app", "web"), Some(ns_is("x"))));
    let ingress = p.ingress.expect("ingress");
    let ns_y = EntityMatch { namespace: Some(NamespaceMatch::Selector(ns_is("y"))), ..Default::default() };
    let db = EntityMatch {
        selector: Some(eq("app", "db")),
        namespace: Some(NamespaceMatch::Selector(Selector::All)),
        ..Default::default()
    };
    let rule = |protocol: u8, source: &EntityMatch, ports: Vec<PortItem>| TRule {
        action: Action::Deny,
        protocol: Some(protocol),
        not_protocol: None,
        icmp: None,
        not_icmp: None,
        source: source.clone(),
        destination: EntityMatch { ports, ..Default::default() },
    };
    let tcp = vec![range(80, 80), range(8000, 8080)];
    let udp = vec![range(53, 53)];
    assert_eq!(
        ingress[..4],
        [rule(6, &ns_y, tcp.clone()), rule(17, &ns_y, udp.clone()), rule(6, &db, tcp), rule(17, &db, udp)],
        "one rule per peer and protocol, in order"
    );
    assert_eq!((ingress.len(), ingress[4].action, ingress[4].protocol), (5, Action::Pass, None));
    assert_eq!(ingress[4].source.namespace, Some(NamespaceMatch::Selector(Selector::All)));
    let egress = p.egress.expect("egress");
    let web = vec![PortItem::Named("web".into())];
    assert_eq!(
        egress.iter().map(|r| (r.protocol, r.destination.nets.len(), r.destination.ports.clone())).collect::<Vec<_>>(),
        vec![(Some(6), 2, web.clone()), (Some(17), 2, web.clone()), (Some(132), 2, web.clone()), (Some(6), 1, web.clone()), (Some(17), 1, web.clone()), (Some(132), 1, web)],
        "a named port joins every protocol; the IPv6 peer is a rule of its own"
    );
    assert_eq!(egress[0].source, EntityMatch::default());
}

#[test]
fn anp_without_rules_for_a_direction_does_not_act_on_it() {
    let p = tiered(&anp("  priority: 0\n  subject: {namespaces: {}}\n  egress: []\n"));
    assert_eq!((p.ingress, p.egress), (None, None));
    assert_eq!((p.selector, p.namespace_selector), (Selector::All, Some(Selector::All)));
}

#[test]
fn banp_tier_order_and_actions() {
    let banp = |name: &str, action: &str| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {{name: {name}}}\n\
             spec:\n  subject: {{namespaces: {{}}}}\n  egress:\n  - action: {action}\n    to: [{{pods: {{namespaceSelector: {{}}, podSelector: {{}}}}}}]\n"
        )
    };
    let p = tiered(&banp("default", "Deny"));
    assert_eq!(p.id.kind, PolicyKind::BaselineAdminNetworkPolicy);
    assert_eq!((p.tier.as_str(), p.order), (BANP_TIER, Some(Order(0.0))));
    assert_eq!(p.egress.expect("egress")[0].action, Action::Deny);
    assert_eq!(
        err(&banp("default", "Pass")),
        "policies.yaml: document 1 (BaselineAdminNetworkPolicy default): spec.egress[0].action: a BaselineAdminNetworkPolicy has no Pass action (expected Allow or Deny)"
    );
    assert_eq!(
        err(&banp("other", "Deny")),
        "policies.yaml: document 1 (BaselineAdminNetworkPolicy other): metadata.name: a BaselineAdminNetworkPolicy must be named \"default\", not \"other\""
    );
    assert!(
        err(&banp("default", "Deny").replace("  subject:", "  priority: 1\n  subject:"))
            .contains("spec.priority: unknown field"),
        "BANP has no priority"
    );
}

#[test]
fn anp_errors_name_file_document_and_field() {
    let d = "policies.yaml: document 1 (AdminNetworkPolicy a)";
    let sub = "  priority: 1\n  subject: {namespaces: {}}\n";
    let cases: Vec<(String, String)> = vec![
        (anp("  subject: {namespaces: {}}\n"), format!("{d}: spec.priority: required")),
        (
            anp("  priority: 1001\n  subject: {namespaces: {}}\n"),
            format!("{d}: spec.priority: priority 1001 is out of range 0..=1000"),
        ),
        (anp("  priority: 1\n"), format!("{d}: spec.subject: required")),
        (
            anp("  priority: 1\n  subject: {namespaces: {}, pods: {namespaceSelector: {}, podSelector: {}}}\n"),
            format!("{d}: spec.subject: set exactly one of namespaces and pods"),
        ),
        (
            anp("  priority: 1\n  subject: {pods: {podSelector: {}}}\n"),
            format!("{d}: spec.subject.pods.namespaceSelector: required"),
        ),
        (
            anp(&format!("{sub}  egress:\n  - action: Allow\n    to: [{{nodes: {{matchLabels: {{a: b}}}}}}]\n")),
            format!(
                "{d}: spec.egress[0].to[0].nodes: nodes peers are not supported: Bulkhead enforces traffic of pods only; use networks with the node CIDRs"
            ),
        ),
        (
            anp(&format!("{sub}  egress:\n  - action: Allow\n    to: [{{domainNames: [example.com]}}]\n")),
            format!("{d}: spec.egress[0].to[0].domainNames: domainNames peers are not supported"),
        ),
        (
            anp(&format!("{sub}  ingress:\n  - action: Allow\n    from: [{{networks: [10.0.0.0/8]}}]\n")),
            format!("{d}: spec.ingress[0].from[0].networks: unknown field (expected one of: namespaces, pods)"),
        ),
        (
            anp(&format!("{sub}  ingress:\n  - action: Allow\n    from: [{{}}]\n")),
            format!("{d}: spec.ingress[0].from[0]: set exactly one of namespaces, pods"),
        ),
        (
            anp(&format!("{sub}  ingress:\n  - action: Allow\n    from: []\n")),
            format!("{d}: spec.ingress[0].from: must list at least one peer"),
        ),
        (anp(&format!("{sub}  ingress:\n  - action: Allow\n")), format!("{d}: spec.ingress[0].from: required")),
        (
            anp(&format!("{sub}  ingress:\n  - action: Log\n    from: [{{namespaces: {{}}}}]\n")),
            format!("{d}: spec.ingress[0].action: unknown action \"Log\" (expected Allow, Deny or Pass)"),
        ),
        (
            anp(&format!(
                "{sub}  ingress:\n  - action: Allow\n    from: [{{namespaces: {{}}}}]\n    ports: [{{portNumber: {{protocol: ICMP, port: 1}}}}]\n"
            )),
            format!(
                "{d}: spec.ingress[0].ports[0].portNumber.protocol: unknown protocol \"ICMP\" (expected TCP, UDP or SCTP)"
            ),
        ),
        (
            anp(&format!(
                "{sub}  ingress:\n  - action: Allow\n    from: [{{namespaces: {{}}}}]\n    ports: [{{portRange: {{start: 90, end: 80}}}}]\n"
            )),
            format!("{d}: spec.ingress[0].ports[0].portRange.end: end 80 must be greater than start 90"),
        ),
        (
            anp(&format!(
                "{sub}  ingress:\n  - action: Allow\n    from: [{{namespaces: {{}}}}]\n    ports: [{{portNumber: {{port: 80}}, namedPort: web}}]\n"
            )),
            format!("{d}: spec.ingress[0].ports[0]: set exactly one of portNumber, namedPort, portRange"),
        ),
        (
            anp(&format!(
                "{sub}  ingress:\n  - action: Allow\n    from: [{{namespaces: {{}}}}]\n    ports: [{{namedPort: Web}}]\n"
            )),
            format!(
                "{d}: spec.ingress[0].ports[0].namedPort: named port \"Web\" is not a valid port name: only lowercase letters, digits and '-' are allowed"
            ),
        ),
        (
            anp(&format!("{sub}  egress:\n  - action: Allow\n    to: [{{networks: [10.0.0.1/8]}}]\n")),
            format!(
                "{d}: spec.egress[0].to[0].networks[0]: invalid CIDR \"10.0.0.1/8\": host bits are set (did you mean 10.0.0.0/8?)"
            ),
        ),
        (
            anp(&format!(
                "{sub}  egress:\n  - action: Allow\n    to: [{{namespaces: {{matchLabels: {{a: b}}, matchExpressions: [{{key: k, operator: In}}]}}}}]\n"
            )),
            format!(
                "{d}: spec.egress[0].to[0].namespaces.matchExpressions[0].values: operator In needs at least one value"
            ),
        ),
        (
            anp(&format!("{sub}  egress:\n  - action: Allow\n    to: [{{namespaces: {{}}}}]\n    protocol: TCP\n")),
            format!("{d}: spec.egress[0].protocol: unknown field (expected one of: name, action, ports, to)"),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(&text), want, "for:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Model building.

#[test]
fn model_holds_tiers_and_tiered_policies() {
    let m = build_model(
        parse_documents(
            "p.yaml",
            &format!(
                "{NS}apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: t1}}\nspec: {{order: 1}}\n---\n\
                 apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: t1.p, namespace: x}}\nspec: {{tier: t1}}\n---\n\
                 apiVersion: projectcalico.org/v3\nkind: StagedNetworkPolicy\nmetadata: {{name: t1.p, namespace: x}}\nspec: {{tier: t1}}\n---\n\
                 {}---\n{}",
                gnp("  tier: default\n"),
                anp("  priority: 1\n  subject: {namespaces: {}}\n"),
            ),
        )
        .expect("parses"),
    )
    .expect("valid model");
    assert_eq!(m.tiers.keys().collect::<Vec<_>>(), ["t1"], "built-in tiers stay implicit");
    let ids: BTreeSet<String> = m.tiered.keys().map(ToString::to_string).collect();
    let want: BTreeSet<String> =
        ["NetworkPolicy x/p", "StagedNetworkPolicy x/p", "GlobalNetworkPolicy allow-dns", "AdminNetworkPolicy a"]
            .into_iter()
            .map(String::from)
            .collect();
    assert_eq!(ids, want);
}

#[test]
fn model_errors() {
    let tier = |name: &str, ann: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {name}{ann}}}\n---\n")
    };
    // Duplicates.
    assert_eq!(
        model_err(&format!("{}{}", tier("t1", ""), tier("t1", ""))),
        "Tier t1 is defined twice: policies.yaml: document 1 and policies.yaml: document 2"
    );
    assert_eq!(
        model_err(&format!("{NS}{}---\n{}", cnp("  {}\n"), cnp("  selector: all()\n"))),
        "NetworkPolicy x/np is defined twice: policies.yaml: document 2 and policies.yaml: document 3"
    );
    // A Kubernetes and a Calico NetworkPolicy of one name are different policies.
    build_model(
        parse_documents(
            "p.yaml",
            &format!(
                "{NS}{}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np, namespace: x}}\nspec: {{}}\n",
                cnp("  {}\n")
            ),
        )
        .expect("parses"),
    )
    .expect("no clash across API groups");
    // Unknown tier.
    assert_eq!(
        model_err(&gnp("  tier: nope\n")),
        "GlobalNetworkPolicy allow-dns (policies.yaml: document 1): tier \"nope\" does not exist (declare a projectcalico.org/v3 Tier named \"nope\"; built-in tiers: default, adminnetworkpolicy, baselineadminnetworkpolicy)"
    );
    // Blast-radius guard.
    let guarded = tier("platform", ", annotations: {bulkhead.io/cluster-scoped-only: 'true'}");
    assert_eq!(
        model_err(&format!("{NS}{guarded}{}", cnp("  tier: platform\n"))),
        "NetworkPolicy x/np (policies.yaml: document 3): tier \"platform\" accepts only cluster-scoped policies (annotation bulkhead.io/cluster-scoped-only: \"true\"), but this policy is namespaced; use a GlobalNetworkPolicy or another tier"
    );
    build_model(parse_documents("p.yaml", &format!("{guarded}{}", gnp("  tier: platform\n"))).expect("parses"))
        .expect("cluster-scoped policies are welcome in a guarded tier");
    // Missing namespace.
    assert_eq!(
        model_err(&cnp("  {}\n")),
        "NetworkPolicy x/np (policies.yaml: document 1): namespace \"x\" does not exist"
    );
}
