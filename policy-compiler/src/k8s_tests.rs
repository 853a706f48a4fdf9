use super::*;

fn policy_doc(spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: allow-b, namespace: x}}\nspec:\n{spec}"
    )
}

fn parse_policy_ok(spec: &str) -> NetworkPolicy {
    let res = parse_documents("policies.yaml", &policy_doc(spec)).expect("policy must parse");
    match &res[1].object {
        Object::NetworkPolicy(p) => p.clone(),
        other => panic!("expected a NetworkPolicy, got {other:?}"),
    }
}

fn parse_policy_err(spec: &str) -> String {
    parse_documents("policies.yaml", &policy_doc(spec)).expect_err("policy must be rejected").to_string()
}

#[test]
fn full_policy_parses() {
    let p = parse_policy_ok(
        r#"
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: a}}
      namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [blue]}]}
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}
    ports:
    - {port: 80}
    - {protocol: UDP, port: 1000, endPort: 2000}
    - {port: http}
    - {protocol: SCTP}
  egress:
  - {}
"#,
    );
    assert_eq!(p.pod_selector.match_labels.get("app").map(String::as_str), Some("b"));
    let ingress = p.ingress.expect("Ingress in policyTypes");
    let Peers::List(peers) = &ingress[0].peers else { panic!("from has peers") };
    assert!(matches!(&peers[0], Peer::Pods { namespaces: NamespaceScope::Matching(_), .. }), "AND peer: {peers:?}");
    assert!(matches!(&peers[1], Peer::IpBlock(b) if b.except.len() == 1), "ipBlock with except: {peers:?}");
    let Ports::List(ports) = &ingress[0].ports else { panic!("ports listed") };
    assert_eq!(ports[0], PortSpec { protocol: Protocol::Tcp, port: PortMatch::Range { start: 80, end: 80 } });
    assert_eq!(ports[1], PortSpec { protocol: Protocol::Udp, port: PortMatch::Range { start: 1000, end: 2000 } });
    assert_eq!(ports[2].port, PortMatch::Named("http".into()));
    assert_eq!(ports[3], PortSpec { protocol: Protocol::Sctp, port: PortMatch::All });
    let egress = p.egress.expect("Egress in policyTypes");
    assert_eq!(egress, vec![Rule { peers: Peers::Any, ports: Ports::Any }], "empty rule allows all");
}

#[test]
fn policy_types_default_like_upstream() {
    let p = parse_policy_ok("  podSelector: {}\n");
    assert_eq!(p.ingress, Some(vec![]), "no ingress rules + default types = isolate ingress, allow nothing");
    assert_eq!(p.egress, None, "egress not affected by default");
    let p = parse_policy_ok("  podSelector: {}\n  egress: [{}]\n");
    assert!(p.ingress.is_some() && p.egress.is_some(), "egress rules add Egress to the default types");
    let p = parse_policy_ok("  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n");
    assert_eq!((p.ingress, p.egress), (None, Some(vec![])), "explicit types win over present rules");
}

#[test]
fn ipv6_blocks_are_kept_and_match_their_own_family_only() {
    let p = parse_policy_ok("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 'fd00::/64', except: ['fd00::/80']}}]\n");
    let Peers::List(peers) = &p.ingress.expect("ingress")[0].peers else { panic!("a peer list") };
    let [crate::model::Peer::IpBlock(b)] = peers.as_slice() else { panic!("one ipBlock: {peers:?}") };
    assert!(b.contains("fd00::1:0:0:1".parse::<std::net::Ipv6Addr>().expect("v6")), "inside the block, outside the except");
    assert!(!b.contains("fd00::1".parse::<std::net::Ipv6Addr>().expect("v6")), "inside the except");
    assert!(!b.contains(std::net::Ipv4Addr::new(10, 0, 0, 1)), "an IPv6 block holds no IPv4 address");
    let e = parse_policy_err("  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 'fd00::/64', except: ['10.0.0.0/8']}}]\n");
    assert!(e.contains("except \"10.0.0.0/8\" is IPv4 but cidr fd00::/64 is IPv6"), "{e}");
}

#[test]
fn errors_name_file_document_and_field() {
    let cases = [
        (
            "  podSelector: {}\n  ingress:\n  - ports: [{port: 80}, {port: ab cd}]\n",
            "policies.yaml: document 2 (NetworkPolicy x/allow-b): spec.ingress[0].ports[1].port: named port \"ab cd\" is not a valid port name",
        ),
        (
            "  podSelector: {matchExpressions: [{key: a, operator: Inn, values: [x]}]}\n",
            "policies.yaml: document 2 (NetworkPolicy x/allow-b): spec.podSelector.matchExpressions[0].operator: unknown operator \"Inn\"",
        ),
        ("  podSelector: {}\n  ingres: []\n", "spec.ingres: unknown field"),
        ("  podSelector: {matchExpressions: [{key: a, operator: In}]}\n", "matchExpressions[0].values: operator In needs at least one value"),
        ("  podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}\n", "operator Exists takes no values"),
        ("  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]\n", "spec.ingress[0].ports[0].port: port 0 is out of range"),
        ("  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]\n", "port 70000 is out of range"),
        ("  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]\n", "ports[0].endPort: endPort 80 is less than port 90"),
        ("  podSelector: {}\n  ingress: [{ports: [{port: web, endPort: 80}]}]\n", "endPort requires a numeric port"),
        ("  podSelector: {}\n  ingress: [{ports: [{endPort: 80}]}]\n", "endPort requires a numeric port"),
        ("  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP}]}]\n", "ports[0].protocol: unknown protocol \"ICMP\""),
        ("  podSelector: {}\n  ingress: [{ports: [{port: '80'}]}]\n", "named port \"80\" is not a valid port name"),
        ("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.1/24}}]}]\n", "spec.egress[0].to[0].ipBlock.cidr: invalid CIDR \"10.0.0.1/24\": host bits are set (did you mean 10.0.0.0/24?)"),
        ("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n", "at most 32"),
        ("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: banana}}]}]\n", "invalid CIDR \"banana\""),
        ("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.1.0.0/25]}}]}]\n", "ipBlock.except[0]: except \"10.1.0.0/25\" must be strictly inside cidr"),
        ("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.0/24]}}]}]\n", "must be strictly inside cidr"),
        ("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/24}, podSelector: {}}]}]\n", "egress[0].to[0]: ipBlock cannot be combined"),
        ("  podSelector: {}\n  egress: [{to: [{}]}]\n", "a peer must set podSelector, namespaceSelector or ipBlock"),
        ("  podSelector: {}\n  policyTypes: [Ingres]\n", "spec.policyTypes[0]: unknown policy type \"Ingres\""),
        ("  podSelector: {matchLabels: {'a b': x}}\n", "invalid label key \"a b\""),
        ("  podSelector: {matchLabels: {a: 1}}\n", "label values must be strings, found a number (quote it)"),
        ("  podSelector: {matchLabels: {a: 'x y'}}\n", "invalid label value \"x y\""),
        ("  podSelector: []\n", "spec.podSelector: expected a mapping, found a list"),
    ];
    for (spec, want) in cases {
        let got = parse_policy_err(spec);
        assert!(got.contains(want), "spec {spec:?}\n  error: {got}\n  wanted it to contain: {want}");
        assert!(got.starts_with("policies.yaml: document 2 (NetworkPolicy x/allow-b): "), "context missing in {got}");
    }
}

#[test]
fn unsupported_kinds_and_yaml_errors() {
    let err = parse_documents("f.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: n}\n")
        .expect_err("Deployment is unsupported");
    assert!(
        matches!(&err, Error::UnsupportedKind { kind, api_version, .. } if kind == "Deployment" && api_version == "apps/v1"),
        "got {err:?}"
    );
    assert!(err.to_string().contains("f.yaml: document 1 (Deployment n/d)"), "message: {err}");
    assert!(!is_supported("networking.k8s.io/v1beta1", "NetworkPolicy") && is_supported("v1", "Pod"));
    let err = parse_documents("f.yaml", "---\nkind: [\n").expect_err("broken YAML");
    assert!(err.to_string().starts_with("f.yaml: document 1: invalid YAML"), "message: {err}");
    let err = parse_documents("f.yaml", "kind: Pod\n").expect_err("no apiVersion");
    assert_eq!(err.to_string(), "f.yaml: document 1: apiVersion: required");
}

#[test]
fn pods_and_namespaces_parse_leniently() {
    let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: web
  labels: {app: a}
  annotations: {bulkhead.io/interface: veth1, other: x}
spec:
  nodeName: n1
  containers:
  - name: c
    image: nginx
    ports:
    - {name: http, containerPort: 8080}
    - {containerPort: 53, protocol: UDP}
status: {phase: Running, podIP: 10.0.0.5, podIPs: [{ip: 10.0.0.5}, {ip: 'fd00::5'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: web}
spec: {hostNetwork: true, serviceAccountName: sa}
status: {podIP: 192.168.0.1}
"#;
    let res = parse_documents("pods.yaml", text).expect("pods parse");
    let Object::Namespace(ns) = &res[0].object else { panic!("namespace first") };
    assert_eq!(ns.labels.get(NAMESPACE_NAME_LABEL).map(String::as_str), Some("web"), "implicit name label");
    let Object::Pod(a) = &res[1].object else { panic!("pod second") };
    assert_eq!(a.ip, Some(Ipv4Addr::new(10, 0, 0, 5)));
    assert_eq!(a.interface.as_deref(), Some("veth1"));
    assert_eq!(a.service_account, "default");
    assert_eq!(a.named_port("http", Protocol::Tcp), Some(8080));
    assert_eq!(a.ports[1], NamedPort { name: None, port: 53, protocol: Protocol::Udp });
    let Object::Pod(b) = &res[2].object else { panic!("pod third") };
    assert_eq!((b.ip, b.service_account.as_str()), (None, "sa"), "host-network pods get no address");
    assert_eq!(res[2].origin, Origin { file: "pods.yaml".into(), document: 3 });
    // Models built from the same parse (as a datastore builds one per sync) hold the very
    // same pods, which the compiler compares without reading them.
    let (m1, m2) = (build_model(res.clone()).expect("model"), build_model(res.clone()).expect("model"));
    for (r, p) in &m1.pods {
        assert!(crate::model::Shared::same(p, &m2.pods[r]), "{r} parsed once is one pod in both models");
    }

    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{ports: [{name: 'ab cd', containerPort: 1}]}]\n";
    let err = parse_documents("p.yaml", bad).expect_err("bad port name").to_string();
    assert!(err.contains("p.yaml: document 1 (Pod default/a): spec.containers[0].ports[0].name"), "message: {err}");
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nstatus: {podIP: 10.0.0.256}\n";
    let err = parse_documents("p.yaml", bad).expect_err("bad IP").to_string();
    assert!(err.contains("status.podIP: \"10.0.0.256\" is not an IP address"), "message: {err}");
}

#[test]
fn build_model_rejects_duplicates_and_orphans() {
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n";
    let mut res = parse_documents("a.yaml", &format!("{ns}---\n{pod}")).expect("parse a.yaml");
    res.extend(parse_documents("b.yaml", pod).expect("parse b.yaml"));
    let err = build_model(res).expect_err("duplicate pod");
    assert_eq!(err.to_string(), "Pod x/a is defined twice: a.yaml: document 2 and b.yaml: document 1");

    let res = parse_documents("c.yaml", pod).expect("parse c.yaml");
    let err = build_model(res).expect_err("pod without namespace");
    assert_eq!(err.to_string(), "pod x/a (c.yaml: document 1): namespace \"x\" does not exist");

    let res = parse_documents("d.yaml", &format!("{ns}---\n{pod}")).expect("parse d.yaml");
    let model = build_model(res).expect("valid model");
    assert_eq!(model.pods.len(), 1);
}

#[test]
fn fw_sync_address_groups_in_the_same_folder_are_skipped_not_errors() {
    let text = "apiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {name: web}\nspec: {podSelector: all()}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
    let docs = parse_documents("mixed.yaml", text).expect("an AddressGroup is not an error");
    assert_eq!(docs.len(), 1, "only the Namespace is a policy resource: {docs:?}");
    assert_eq!(docs[0].origin.document, 2, "document numbers keep their file positions");
}
