use super::*;
use crate::k8s::{build_model, parse_documents};
use crate::lookup::{self, Endpoint};
use crate::{diff, reference};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{ports: [{name: serve, containerPort: 80}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{ports: [{name: serve, containerPort: 81}, {name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: c}}
spec: {containers: [{ports: [{name: serve, containerPort: 82}]}]}
status: {podIP: 10.0.1.3}
"#;

fn model(policies: &str) -> Model {
    let text = format!("{BASE}---\n{policies}");
    build_model(parse_documents("test.yaml", &text).expect("test YAML parses")).expect("test model is valid")
}

fn pod(name: &str) -> Endpoint {
    let ns = if name == "c" { "y" } else { "x" };
    Endpoint::Pod(PodRef::new(ns, name))
}

fn ip(s: &str) -> Endpoint {
    Endpoint::Ip(s.parse().expect("test address"))
}

/// Compiles and asserts that every listed probe has the expected verdict both in the compiled
/// maps and in the reference evaluator.
fn expect(m: &Model, probes: &[(Endpoint, Endpoint, u8, u16, bool)]) -> Compiled {
    let c = Compiler::default().compile(m).expect("compile");
    for (src, dst, protocol, port, want) in probes {
        let r = reference::allowed(m, src, dst, *protocol, *port);
        let l = lookup::allowed(&c, src, dst, *protocol, *port);
        assert_eq!(r, *want, "reference: {src:?} -> {dst:?} {protocol}/{port}");
        assert_eq!(l, *want, "compiled: {src:?} -> {dst:?} {protocol}/{port}");
    }
    c
}

const TCP: u8 = proto::TCP;
const UDP: u8 = proto::UDP;

#[test]
fn no_policy_allows_everything() {
    let m = model("apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n");
    let c = expect(&m, &[(pod("a"), pod("b"), TCP, 1, true), (ip("8.8.8.8"), pod("c"), UDP, 9, true)]);
    assert!(c.policy.is_empty() && c.endpoints.values().all(|e| e.flags == 0), "no entries, no isolation");
}

#[test]
fn named_ports_resolve_on_the_destination_pod() {
    let m = model(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-serve, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{ports: [{port: serve}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-serve, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: serve}, {port: dns, protocol: UDP}]}]
"#,
    );
    expect(
        &m,
        &[
            // Ingress at a resolves "serve" on a: 80.
            (pod("c"), pod("a"), TCP, 80, true),
            (pod("c"), pod("a"), TCP, 81, false),
            (ip("8.8.8.8"), pod("a"), TCP, 80, true),
            (pod("b"), pod("a"), TCP, 80, true),
            (pod("b"), pod("a"), UDP, 80, false),
            // Egress from c resolves on each destination pod: b's "serve" is 81, a's is 80;
            // only b defines "dns"; a non-pod address never matches a named port.
            (pod("c"), pod("b"), TCP, 81, true),
            (pod("c"), pod("b"), TCP, 80, false),
            (pod("c"), pod("b"), UDP, 53, true),
            (pod("c"), pod("a"), UDP, 53, false),
            (pod("c"), ip("8.8.8.8"), TCP, 80, false),
            (pod("c"), ip("10.0.0.1"), TCP, 80, true),
        ],
    );
}

#[test]
fn ip_blocks_with_except_match_pods_and_others() {
    let m = model(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/31]}}]
"#,
    );
    let c = expect(
        &m,
        &[
            (pod("a"), pod("c"), TCP, 80, true),
            (pod("a"), ip("10.0.9.9"), TCP, 80, true),
            (pod("a"), pod("b"), TCP, 80, true),
            (pod("a"), ip("10.0.0.0"), TCP, 80, false),
            (pod("a"), ip("10.1.0.0"), TCP, 80, false),
            (pod("b"), ip("10.1.0.0"), TCP, 80, true),
        ],
    );
    let c_ip = (Ipv4Addr::new(10, 0, 1, 3), 32);
    let cidr_16 = c.ipcache[&(Ipv4Addr::new(10, 0, 0, 0), 16)].identity;
    assert_eq!(c.ipcache[&c_ip].cidr_identity, cidr_16, "pod c carries the /16 CIDR identity");
    assert_eq!(c.endpoints[&PodRef::new("x", "a")].flags, ep_flags::EGRESS_ISOLATED);

    // Dropping the ipBlock removes its prefixes and the pods' CIDR identities with it.
    let m2 = model("apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n");
    let c2 = Compiler::default().compile(&m2).expect("compile");
    assert_eq!(c2.ipcache.len(), 3, "only pod addresses remain: {:?}", c2.ipcache);
    assert!(c2.ipcache.values().all(|i| i.cidr_identity == identity::ANY), "no stale CIDR identity");
}

#[test]
fn identities_are_shared_and_stable_across_recompiles() {
    let mut compiler = Compiler::default();
    let mut m = model("");
    let mut twin = m.pods[&PodRef::new("x", "a")].clone();
    twin.name = "a2".into();
    twin.ip = Some(Ipv4Addr::new(10, 0, 0, 9));
    m.upsert_pod(twin);
    let c1 = compiler.compile(&m).expect("compile 1");
    let id = |c: &Compiled, n: &str| c.endpoints[&PodRef::new("x", n)].identity;
    assert_eq!(id(&c1, "a"), id(&c1, "a2"), "equal attributes share an identity");
    assert_ne!(id(&c1, "a"), id(&c1, "b"));

    let m2 = {
        let mut m2 = model(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n",
        );
        m2.pods = m.pods.clone();
        m2
    };
    let c2 = compiler.compile(&m2).expect("compile 2");
    for (r, e) in &c1.endpoints {
        assert_eq!(e.identity, c2.endpoints[r].identity, "policy change renumbered {r}");
    }
    assert_eq!(c1.ipcache, c2.ipcache, "a policy without ipBlocks leaves the ipcache alone");
}

fn policy_entries(c: &Compiled, index: u32) -> BTreeMap<PolicyMapKey, PolicyValueV1> {
    c.policy.iter().filter(|(_, v)| v.policy_index == index).map(|(k, v)| (*k, *v)).collect()
}

#[test]
fn diff_touches_only_the_changed_policy() {
    let p = |name: &str, port: u16| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
             spec: {{podSelector: {{matchLabels: {{app: {name}}}}}, ingress: [{{ports: [{{port: {port}}}]}}]}}\n"
        )
    };
    let mut compiler = Compiler::default();
    let c1 = compiler.compile(&model(&format!("{}---\n{}", p("a", 80), p("b", 80)))).expect("compile 1");
    let c2 = compiler.compile(&model(&format!("{}---\n{}", p("a", 80), p("b", 8080)))).expect("compile 2");
    let d = diff(&c1, &c2);
    let b_index = c2.policy_table.iter().position(|r| r.name == "b").expect("b in table") as u32;
    assert_eq!(c1.policy_table, c2.policy_table, "indexes are stable");
    let old_b = policy_entries(&c1, b_index);
    let new_b = policy_entries(&c2, b_index);
    assert_eq!(d.policy.removals, old_b.keys().copied().collect::<Vec<_>>(), "removes exactly b's old entries");
    assert_eq!(d.policy.upserts, new_b.into_iter().collect::<Vec<_>>(), "adds exactly b's new entries");
    assert!(d.endpoints.is_empty() && d.ipcache.is_empty(), "nothing else changes: {d:?}");
    assert!(diff(&c2, &c2).is_empty(), "no change, no diff");

    // Deleting a policy removes its entries; the last policy may move into its slot.
    let c3 = compiler.compile(&model(&p("b", 8080))).expect("compile 3");
    assert_eq!(c3.policy_table, vec![PolicyRef::new("x", "b")]);
    let d = diff(&c2, &c3);
    assert_eq!(d.policy.removals.len(), 1, "a's single entry goes: {d:?}");
    assert_eq!(d.endpoints.upserts.len(), 1, "a is no longer isolated: {d:?}");
}

#[test]
fn overflow_fails_closed_instead_of_dropping_silently() {
    let m = model(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 1, endPort: 5}]}]
"#,
    );
    let full = Compiler::default().compile(&m).expect("compile");
    assert_eq!(full.policy.len(), 6, "1..=5 is 3 prefixes per local identity: {:?}", full.policy.keys());
    let mut small = Compiler::new(Limits { max_policy_entries: 4, ..Limits::default() });
    let c = small.compile(&m).expect("compile with small limit");
    assert_eq!(c.policy.len(), 3, "one identity's entries fit");
    let failed: Vec<_> =
        c.endpoints.iter().filter(|(_, e)| e.flags & ep_flags::OVERFLOW_FAIL_CLOSED != 0).map(|(r, _)| r.to_string()).collect();
    assert_eq!(failed, vec!["x/b"], "the later identity fails closed");
    assert_eq!(c.overflow.len(), 1, "one report: {:?}", c.overflow);
    assert!(c.overflow[0].contains("x/b"), "report names the pod: {}", c.overflow[0]);
    assert!(!lookup::allowed(&c, &pod("c"), &pod("b"), TCP, 1), "fail closed");
    assert!(lookup::allowed(&c, &pod("c"), &pod("a"), TCP, 1), "the fitting pod keeps working");

    let mut tiny = Compiler::new(Limits { max_ipcache_entries: 2, ..Limits::default() });
    let c = tiny.compile(&m).expect("compile with tiny ipcache");
    assert_eq!(c.ipcache.len(), 2);
    assert_eq!(c.overflow.len(), 1, "one pod address does not fit: {:?}", c.overflow);
    assert_eq!(c.endpoints.values().filter(|e| e.flags & ep_flags::OVERFLOW_FAIL_CLOSED != 0).count(), 1);
}

#[test]
fn higher_rank_entries_do_not_hide_lower_ranked_covering_ones() {
    let key = |port, plen| ((plen, policy_key(300, 0, direction::INGRESS, proto::TCP, port)), ());
    let v = |rank, a| PolicyValueV1 { rank, policy_index: 0, rule_index: 0, action: a, _pad: 0 };
    let mut map = BTreeMap::new();
    map.insert(key(0, 80).0, v(1, action::DENY));
    map.insert(key(80, 96).0, v(5, action::ALLOW));
    push_down_ranks(&mut map);
    assert_eq!(map[&key(80, 96).0], v(1, action::DENY), "the any-port deny must win at port 80 too");
}

#[test]
fn egress_named_port_through_ip_block_matches_only_pods_inside() {
    let mut m = model(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named-cidr, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.2/32]}}], ports: [{port: serve}]}]
"#,
    );
    // A twin of a (same identity) outside the block must not inherit a's allowance.
    let mut twin = m.pods[&PodRef::new("x", "a")].clone();
    twin.name = "a2".into();
    twin.ip = Some(Ipv4Addr::new(10, 0, 5, 9));
    m.upsert_pod(twin);
    let c = expect(
        &m,
        &[
            (pod("c"), pod("a"), TCP, 80, true),
            (pod("c"), Endpoint::Pod(PodRef::new("x", "a2")), TCP, 80, false),
            (pod("c"), pod("b"), TCP, 81, false),
            (pod("c"), ip("10.0.0.9"), TCP, 80, false),
            (pod("c"), pod("a"), TCP, 81, false),
        ],
    );
    let a_info = c.ipcache[&(Ipv4Addr::new(10, 0, 0, 1), 32)];
    assert_ne!(a_info.cidr_identity, identity::ANY, "a's /32 has its own CIDR identity");
    assert_ne!(a_info.identity, a_info.cidr_identity);
}
