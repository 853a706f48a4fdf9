use super::*;
use crate::k8s::{build_model, parse_documents};
use crate::lookup::{self, Endpoint};
use crate::{diff, reference};
use std::collections::BTreeSet;
use crate::model::PolicyRef;
use crate::tiered::{NamespaceMatch, PortItem};
use bulkhead_common::proto;


use crate::fixtures::model;

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
    assert!(c.ipcache.contains_key(&(std::net::IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 16)), "region prefix in the ipcache");
    assert_eq!(c.endpoints[&PodRef::new("x", "a")].flags, ep_flags::EGRESS_ISOLATED);
    // a (10.0.0.1, in the except /31) and b (10.0.0.2, only in the /16) differ in region, so
    // their identities differ although nothing else tells them apart... and c's too.
    let ids: BTreeSet<u32> = c.endpoints.values().map(|e| e.identity).collect();
    assert_eq!(ids.len(), 3);

    // Dropping the ipBlock removes its prefixes.
    let m2 = model("apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n");
    let c2 = Compiler::default().compile(&m2).expect("compile");
    assert_eq!(c2.ipcache.len(), 3, "only pod addresses remain: {:?}", c2.ipcache);
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

fn local_of(k: &crate::compile::PeerSlot) -> u32 {
    k.0
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
    assert_eq!(c1.policy_table, c2.policy_table, "indexes are stable");
    let b = c2.endpoints[&PodRef::new("x", "b")].identity;
    assert!(!d.policy.is_empty(), "b's entries change");
    assert!(
        d.policy.removals.iter().chain(d.policy.upserts.iter().map(|(k, _)| k)).all(|k| local_of(k) == b),
        "only b's entries change: {d:?}"
    );
    let b_old: BTreeMap<_, _> = c1.policy.iter().filter(|(k, _)| local_of(k) == b).collect();
    let b_new: BTreeMap<_, _> = c2.policy.iter().filter(|(k, _)| local_of(k) == b).collect();
    assert_ne!(b_old, b_new);
    assert!(d.endpoints.is_empty() && d.ipcache.is_empty() && d.staged.is_empty(), "nothing else changes: {d:?}");
    assert!(diff(&c2, &c2).is_empty(), "no change, no diff");

    // Deleting a policy removes its entries; the last policy may move into its slot.
    let c3 = compiler.compile(&model(&p("b", 8080))).expect("compile 3");
    assert_eq!(c3.policy_table.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), vec![knp::policy_id(&PolicyRef::new("x", "b"))]);
    let d = diff(&c2, &c3);
    let a = c2.endpoints[&PodRef::new("x", "a")].identity;
    let a_entries = c2.policy.keys().filter(|k| local_of(k) == a).count();
    assert_eq!(d.policy.removals.len(), a_entries, "a's entries go: {d:?}");
    assert!(d.policy.removals.iter().all(|k| local_of(k) == a));
    assert_eq!(d.endpoints.upserts.len(), 1, "a is no longer isolated: {d:?}");
}

/// A policy isolating every pod of namespace x for ingress, admitting every pod of the
/// cluster to one TCP port.
fn admit_all_namespaces_to_x(port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\n\
         spec: {{podSelector: {{}}, ingress: [{{from: [{{namespaceSelector: {{}}}}], ports: [{{port: {port}}}]}}]}}\n"
    )
}

#[test]
fn overflow_fails_closed_instead_of_dropping_silently() {
    let m = model(&admit_all_namespaces_to_x(1));
    let full = Compiler::default().compile(&m).expect("compile");
    let per_identity = full.policy.len() / 2;
    assert_eq!(full.policy.len(), 2 * per_identity, "two local identities, same shape: {:?}", full.policy.keys());
    let mut small = Compiler::new(Limits { max_policy_entries: per_identity + 1, ..Limits::default() });
    let c = small.compile(&m).expect("compile with small limit");
    assert_eq!(c.policy.len(), per_identity, "one identity's entries fit");
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
    let a = c.endpoints[&PodRef::new("x", "a")].identity;
    let a2 = c.endpoints[&PodRef::new("x", "a2")].identity;
    assert_ne!(a, a2, "the twin outside the block has another region, hence another identity");
}

// ---- Tiered semantics ---------------------------------------------------------------------

mod tiered_semantics {
    use super::*;
    use crate::explain::{Decision, explain};
    use crate::reference::{TieredReference, TieredSide};
    use crate::tiered::{
        ANP_TIER, Action, BANP_TIER, EntityMatch, Order, PolicyId, PolicyKind, Selector, TRule, Tier, TierDefault,
        TieredPolicy,
    };

    pub(super) fn tier(name: &str, order: f64, default_action: TierDefault) -> Tier {
        Tier { name: name.into(), order: Some(Order(order)), default_action, cluster_scoped_only: false }
    }

    pub(super) fn rule(action: Action) -> TRule {
        TRule {
            action,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: EntityMatch::default(),
            destination: EntityMatch::default(),
        }
    }

    pub(super) fn app(v: &str) -> Selector {
        Selector::Eq("app".into(), v.into())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn policy(
        kind: PolicyKind,
        ns: Option<&str>,
        name: &str,
        tier: &str,
        order: Option<f64>,
        selector: Selector,
        ingress: Option<Vec<TRule>>,
        egress: Option<Vec<TRule>>,
    ) -> TieredPolicy {
        TieredPolicy {
            id: PolicyId { kind, namespace: ns.map(String::from), name: name.into() },
            tier: tier.into(),
            order: order.map(Order),
            selector,
            namespace_selector: None,
            service_account_selector: None,
            ingress,
            egress,
        }
    }

    pub(super) fn gnp(name: &str, tier: &str, order: f64, selector: Selector, ingress: Vec<TRule>) -> TieredPolicy {
        policy(PolicyKind::CalicoGlobalNetworkPolicy, None, name, tier, Some(order), selector, Some(ingress), None)
    }

    fn add(m: &mut Model, p: TieredPolicy) {
        m.tiered.insert(p.id.clone(), p);
    }

    fn add_tier(m: &mut Model, t: Tier) {
        m.tiers.insert(t.name.clone(), t);
    }

    /// Compiles, checks explain (from the maps) against the tiered reference for the probe and
    /// returns the ingress side at the destination.
    fn ingress(m: &Model, src: &Endpoint, dst: &Endpoint, protocol: u8, port: u16) -> TieredSide {
        let c = Compiler::default().compile(m).expect("compile");
        let r = TieredReference::new(m);
        let (eg, ing) = r.sides(src, dst, protocol, port).expect("known endpoints");
        let x = explain(&c, m, src, dst, protocol, port);
        assert_eq!(x.egress.as_ref().map(|s| (&s.enforced, &s.staged)), eg.as_ref().map(|s| (&s.enforced, &s.staged)), "egress\n{x}");
        assert_eq!(x.ingress.as_ref().map(|s| (&s.enforced, &s.staged)), ing.as_ref().map(|s| (&s.enforced, &s.staged)), "ingress\n{x}");
        assert!(!x.to_string().is_empty());
        ing.expect("destination is a pod")
    }

    fn id(kind: PolicyKind, ns: Option<&str>, name: &str) -> PolicyId {
        PolicyId { kind, namespace: ns.map(String::from), name: name.into() }
    }
    const GNP: PolicyKind = PolicyKind::CalicoGlobalNetworkPolicy;

    #[test]
    fn pass_then_allow_in_a_later_tier() {
        let mut m = model("");
        add_tier(&mut m, tier("t1", 10.0, TierDefault::Deny));
        add_tier(&mut m, tier("t2", 20.0, TierDefault::Deny));
        let mut pass = rule(Action::Pass);
        pass.source.selector = Some(app("b"));
        add(&mut m, gnp("p1", "t1", 1.0, app("a"), vec![pass]));
        add(&mut m, gnp("p2", "t2", 1.0, app("a"), vec![rule(Action::Allow)]));
        let s = ingress(&m, &pod("b"), &pod("a"), TCP, 80);
        assert_eq!(s.enforced.policy, Some(id(GNP, None, "p2")));
        assert!(s.enforced.allowed && s.staged.is_none());
        let s = ingress(&m, &pod("c"), &pod("a"), TCP, 80);
        assert!(!s.enforced.allowed && s.enforced.end_of_tier, "{:?}", s.enforced);
        assert_eq!(s.enforced.tier.as_deref(), Some("t1"));
    }

    #[test]
    fn end_of_tier_deny_hides_later_tiers() {
        let mut m = model("");
        add_tier(&mut m, tier("t1", 10.0, TierDefault::Deny));
        let mut allow80 = rule(Action::Allow);
        allow80.protocol = Some(TCP);
        allow80.destination.ports = vec![PortItem::Range { start: 80, end: 80 }];
        add(&mut m, gnp("p1", "t1", 1.0, Selector::All, vec![allow80]));
        add(&mut m, gnp("late", "default", 1.0, Selector::All, vec![rule(Action::Allow)]));
        assert!(ingress(&m, &pod("b"), &pod("a"), TCP, 80).enforced.allowed);
        let s = ingress(&m, &pod("b"), &pod("a"), TCP, 81);
        assert_eq!(
            s.enforced,
            Decision { allowed: false, tier: Some("t1".into()), policy: None, rule_index: None, end_of_tier: true, log: None }
        );
        assert!(!ingress(&m, &ip("8.8.8.8"), &pod("a"), UDP, 80).enforced.allowed);
    }

    #[test]
    fn default_pass_in_the_last_tier_allows_and_log_continues() {
        let mut m = model("");
        add_tier(&mut m, tier("t1", 10.0, TierDefault::Pass));
        let mut deny_c = rule(Action::Deny);
        deny_c.source.selector = Some(app("c"));
        deny_c.source.namespace = Some(NamespaceMatch::Selector(Selector::All));
        add(&mut m, gnp("p1", "t1", 1.0, Selector::All, vec![rule(Action::Log), deny_c]));
        let s = ingress(&m, &pod("b"), &pod("a"), TCP, 80);
        let logged = Some((id(GNP, None, "p1"), 0));
        assert_eq!(s.enforced, Decision { log: logged.clone(), ..Decision::default_allow() });
        let s = ingress(&m, &pod("c"), &pod("a"), TCP, 80);
        assert_eq!(s.enforced.policy, Some(id(GNP, None, "p1")));
        assert_eq!((s.enforced.allowed, s.enforced.rule_index, s.enforced.log.clone()), (false, Some(1), logged));
    }

    #[test]
    fn staged_policy_does_not_make_a_tier_apply_for_the_enforced_verdict() {
        let mut m = model("");
        add_tier(&mut m, tier("t1", 10.0, TierDefault::Deny));
        add(
            &mut m,
            policy(PolicyKind::StagedGlobalNetworkPolicy, None, "s", "t1", Some(1.0), app("a"), Some(vec![rule(Action::Deny)]), None),
        );
        let s = ingress(&m, &pod("b"), &pod("a"), TCP, 80);
        assert!(s.enforced.allowed, "enforced: t1 does not apply, nothing but a staged policy selects a");
        let staged = s.staged.expect("a has staged policy");
        assert!(!staged.allowed, "staged world: the staged deny is what enforcing it would do");
        assert_eq!(staged.policy, Some(id(PolicyKind::StagedGlobalNetworkPolicy, None, "s")));
        let c = Compiler::default().compile(&m).expect("compile");
        assert_eq!(c.endpoints[&PodRef::new("x", "a")].flags, ep_flags::HAS_STAGED, "no isolation from a staged policy");
        assert!(c.policy.is_empty(), "no enforced entries from a staged policy");
        assert!(!c.staged.is_empty(), "staged entries exist");

        // With an enforced policy in t1 the enforced verdict follows it; the staged one is
        // decided by the staged policy, ordered first.
        let mut log = rule(Action::Log);
        log.protocol = Some(UDP);
        add(&mut m, gnp("e", "t1", 5.0, app("a"), vec![log, rule(Action::Allow)]));
        let s = ingress(&m, &pod("b"), &pod("a"), TCP, 80);
        assert!(s.enforced.allowed);
        let staged = s.staged.expect("a has staged policy");
        assert!(!staged.allowed);
        assert_eq!(staged.policy, Some(id(PolicyKind::StagedGlobalNetworkPolicy, None, "s")));
        let c = Compiler::default().compile(&m).expect("compile");
        assert!(c.policy_table.iter().any(|e| e.staged));
    }

    #[test]
    fn a_staged_policy_replaces_its_enforced_namesake_in_the_staged_world() {
        let mut m = model("");
        add_tier(&mut m, tier("t1", 10.0, TierDefault::Pass));
        add(&mut m, gnp("p", "t1", 1.0, app("a"), vec![rule(Action::Deny)]));
        add(
            &mut m,
            policy(PolicyKind::StagedGlobalNetworkPolicy, None, "p", "t1", Some(1.0), app("a"), Some(vec![rule(Action::Allow)]), None),
        );
        let s = ingress(&m, &pod("b"), &pod("a"), TCP, 80);
        assert!(!s.enforced.allowed, "the enforced deny holds");
        let staged = s.staged.expect("staged verdict");
        assert!(staged.allowed, "staged world: the staged version replaces the enforced deny: {staged:?}");
        assert_eq!(staged.policy, Some(id(PolicyKind::StagedGlobalNetworkPolicy, None, "p")));
    }

    #[test]
    fn not_nets_with_a_pod_inside() {
        let mut m = model("");
        add_tier(&mut m, tier("t1", 10.0, TierDefault::Deny));
        let mut allow = rule(Action::Allow);
        allow.source.nets = vec![Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 16).expect("cidr")];
        allow.source.not_nets = vec![Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 31).expect("cidr")];
        add(&mut m, gnp("p", "t1", 1.0, app("b"), vec![allow]));
        assert!(!ingress(&m, &pod("a"), &pod("b"), TCP, 80).enforced.allowed, "a (10.0.0.1) is in the notNets");
        assert!(ingress(&m, &pod("c"), &pod("b"), TCP, 80).enforced.allowed, "c (10.0.1.3) is in nets only");
        assert!(ingress(&m, &ip("10.0.9.9"), &pod("b"), TCP, 80).enforced.allowed);
        assert!(!ingress(&m, &ip("10.0.0.0"), &pod("b"), TCP, 80).enforced.allowed);
        assert!(!ingress(&m, &ip("10.1.0.0"), &pod("b"), TCP, 80).enforced.allowed);
    }

    #[test]
    fn namespaced_policy_never_selects_another_namespace() {
        let mut m = model("");
        add_tier(&mut m, tier("t1", 10.0, TierDefault::Deny));
        let mut p = policy(PolicyKind::CalicoNetworkPolicy, Some("x"), "all", "t1", Some(1.0), Selector::All, Some(vec![]), None);
        p.namespace_selector = Some(Selector::All);
        add(&mut m, p);
        assert!(!ingress(&m, &pod("c"), &pod("a"), TCP, 80).enforced.allowed);
        assert!(ingress(&m, &pod("a"), &pod("c"), TCP, 80).enforced.allowed, "c in y is not selected");
        let c = Compiler::default().compile(&m).expect("compile");
        assert_eq!(c.endpoints[&PodRef::new("y", "c")].flags, 0);
    }

    #[test]
    fn anp_beats_knp_and_banp_applies_only_without_knp() {
        let mut m = model(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{}]
"#,
        );
        let mut deny_c = rule(Action::Deny);
        deny_c.source.selector = Some(app("c"));
        deny_c.source.namespace = Some(NamespaceMatch::Selector(Selector::All));
        add(&mut m, policy(PolicyKind::AdminNetworkPolicy, None, "anp", ANP_TIER, Some(10.0), Selector::All, Some(vec![deny_c]), None));
        let banp = policy(
            PolicyKind::BaselineAdminNetworkPolicy,
            None,
            "default",
            BANP_TIER,
            None,
            Selector::All,
            Some(vec![rule(Action::Deny)]),
            None,
        );
        add(&mut m, banp);
        let s = ingress(&m, &pod("c"), &pod("a"), TCP, 80);
        assert_eq!((s.enforced.allowed, s.enforced.tier.as_deref()), (false, Some(ANP_TIER)), "ANP deny beats KNP allow");
        let s = ingress(&m, &pod("b"), &pod("a"), TCP, 80);
        assert_eq!(s.enforced.policy, Some(knp::policy_id(&PolicyRef::new("x", "allow-all"))));
        assert_eq!(s.enforced.rule_index, Some(0));
        let s = ingress(&m, &pod("a"), &pod("b"), TCP, 80);
        assert_eq!((s.enforced.allowed, s.enforced.tier.as_deref()), (false, Some(BANP_TIER)), "no KNP selects b: BANP");
    }

    #[test]
    fn icmp_type_and_code() {
        let mut m = model("");
        add_tier(&mut m, tier("t1", 10.0, TierDefault::Deny));
        let mut echo = rule(Action::Allow);
        echo.protocol = Some(proto::ICMP);
        echo.icmp = Some(crate::tiered::IcmpMatch { icmp_type: 8, code: Some(0) });
        let mut not3 = rule(Action::Allow);
        not3.protocol = Some(proto::ICMP);
        not3.not_icmp = Some(crate::tiered::IcmpMatch { icmp_type: 3, code: None });
        add(&mut m, gnp("p", "t1", 1.0, app("a"), vec![echo]));
        add(&mut m, gnp("q", "t1", 2.0, app("b"), vec![not3]));
        assert!(ingress(&m, &pod("c"), &pod("a"), proto::ICMP, 8 << 8).enforced.allowed);
        assert!(!ingress(&m, &pod("c"), &pod("a"), proto::ICMP, 8 << 8 | 1).enforced.allowed);
        assert!(!ingress(&m, &pod("c"), &pod("b"), proto::ICMP, 3 << 8 | 4).enforced.allowed);
        assert!(ingress(&m, &pod("c"), &pod("b"), proto::ICMP, 0).enforced.allowed);
        assert!(!ingress(&m, &pod("c"), &pod("b"), TCP, 0).enforced.allowed);
    }
}

#[test]
fn a_node_compiles_policy_for_its_own_endpoints_only() {
    let mut m = model(&admit_all_namespaces_to_x(80));
    let cluster = Compiler::default().compile(&m).expect("compile");
    m.pods.get_mut(&PodRef::new("x", "a")).expect("pod a").interface = Some("veth-a".into());
    let node = Compiler::for_node(Limits::default()).compile(&m).expect("node compile");
    let a = node.endpoints[&PodRef::new("x", "a")].identity;
    assert_eq!(node.endpoints.keys().map(ToString::to_string).collect::<Vec<_>>(), vec!["x/a"], "only the local endpoint");
    assert!(node.policy.keys().all(|k| k.0 == a), "entries for the local identity only: {:?}", node.policy.keys());
    assert!(node.policy.len() < cluster.policy.len(), "fewer entries than the cluster compile");
    assert_eq!(node.ipcache.len(), cluster.ipcache.len(), "every pod stays a peer");
    // The local endpoint's verdicts are the cluster compile's.
    for port in [80, 81] {
        assert_eq!(
            lookup::allowed(&node, &ip("10.0.0.2"), &pod("a"), TCP, port),
            lookup::allowed(&cluster, &pod("b"), &pod("a"), TCP, port),
            "port {port}"
        );
    }
}

#[test]
fn a_node_skips_namespaced_policies_of_namespaces_without_local_pods() {
    let y_policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: y}\n\
                    spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 192.168.0.0/16}}]}]}\n";
    let mut m = model(&format!("{}---\n{y_policy}", admit_all_namespaces_to_x(80)));
    let cluster = Compiler::default().compile(&m).expect("compile");
    assert_eq!(cluster.policy_table.len(), 2, "the cluster compile holds both policies");
    m.pods.get_mut(&PodRef::new("x", "a")).expect("pod a").interface = Some("veth-a".into());
    let node = Compiler::for_node(Limits::default()).compile(&m).expect("node compile");
    let names: Vec<String> = node.policy_table.iter().map(|p| p.id.to_string()).collect();
    assert_eq!(names.len(), 1, "only the policy of the local pod's namespace: {names:?}");
    assert!(names[0].ends_with("x/p"), "{names:?}");
    let region: (IpAddr, u8) = ("192.168.0.0".parse().expect("address"), 16);
    assert!(cluster.ipcache.contains_key(&region), "the cluster compile has y's prefix as a region");
    assert!(!node.ipcache.contains_key(&region), "a prefix only a skipped policy names is no region on the node");
    // Pod c (namespace y, not local) reaches a as a peer: through its address on the node.
    assert!(lookup::allowed(&cluster, &pod("c"), &pod("a"), TCP, 80), "x/p admits every namespace on 80");
    for port in [80, 81] {
        assert_eq!(
            lookup::allowed(&node, &ip("10.0.1.3"), &pod("a"), TCP, port),
            lookup::allowed(&cluster, &pod("c"), &pod("a"), TCP, port),
            "port {port}"
        );
    }
}

#[test]
fn a_node_skips_network_policies_selecting_none_of_its_pods() {
    // q, in the local pod's namespace, selects b (not local) and names a prefix.
    let q = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: q, namespace: x}\n\
             spec: {podSelector: {matchLabels: {app: b}}, ingress: [{from: [{ipBlock: {cidr: 192.168.0.0/16}}]}]}\n";
    let mut m = model(&format!("{}---\n{q}", admit_all_namespaces_to_x(80)));
    let cluster = Compiler::default().compile(&m).expect("compile");
    assert_eq!(cluster.policy_table.len(), 2, "the cluster compile holds both policies");
    m.pods.get_mut(&PodRef::new("x", "a")).expect("pod a").interface = Some("veth-a".into());
    let node = Compiler::for_node(Limits::default()).compile(&m).expect("node compile");
    let names: Vec<String> = node.policy_table.iter().map(|p| p.id.to_string()).collect();
    assert_eq!(names.len(), 1, "only the policy selecting the local pod: {names:?}");
    assert!(names[0].ends_with("x/p"), "{names:?}");
    let region: (IpAddr, u8) = ("192.168.0.0".parse().expect("address"), 16);
    assert!(cluster.ipcache.contains_key(&region), "the cluster compile has q's prefix as a region");
    assert!(!node.ipcache.contains_key(&region), "a prefix only a skipped policy names is no region on the node");
    for (from, port) in [("10.0.0.2", 80), ("10.0.0.2", 81), ("192.168.1.1", 80), ("192.168.1.1", 81)] {
        let peer = ip(from);
        assert_eq!(
            lookup::allowed(&node, &peer, &pod("a"), TCP, port),
            lookup::allowed(&cluster, &peer, &pod("a"), TCP, port),
            "from {from} to a port {port}: the node judges its pod as the cluster compile does"
        );
    }
    // Once b is local too, q applies on the node.
    m.pods.get_mut(&PodRef::new("x", "b")).expect("pod b").interface = Some("veth-b".into());
    let node = Compiler::for_node(Limits::default()).compile(&m).expect("node compile");
    assert_eq!(node.policy_table.len(), 2, "q selects a local pod now");
    assert!(node.ipcache.contains_key(&region), "and its prefix is a region");
}

/// Dual-stack pods in two namespaces, each address in its own /64 or /24.
const DUAL: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
status: {podIPs: [{ip: 10.1.1.10}, {ip: 'fd00:1::10'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
status: {podIPs: [{ip: 10.1.1.11}, {ip: 'fd00:1::11'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
status: {podIPs: [{ip: 10.1.2.11}, {ip: 'fd00:2::11'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: v4only, namespace: y, labels: {pod: c}}
status: {podIP: 10.1.2.12}
---
apiVersion: v1
kind: Pod
metadata: {name: v6only, namespace: y, labels: {pod: d}}
status: {podIPs: [{ip: 'fd00:2::13'}]}
";

fn dpod(key: &str) -> Endpoint {
    let (ns, name) = key.split_once('/').expect("ns/name");
    Endpoint::Pod(PodRef::new(ns, name))
}

#[test]
fn each_family_is_judged_by_its_own_blocks_and_matches_the_reference() {
    let policies = [
        // An IPv6 block with an IPv6 except: IPv4 sources match nothing.
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 'fd00::/16', except: ['fd00:2::/64']}}]}]\n",
        // An IPv4 block: IPv6 sources match nothing.
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]\n",
        // A selector matches a pod whatever the family; egress to an IPv6 block.
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n  egress: [{to: [{ipBlock: {cidr: 'fd00:2::/64'}}]}]\n",
    ];
    let pods = ["x/a", "x/b", "y/b", "y/v4only", "y/v6only"];
    for (i, p) in policies.iter().enumerate() {
        let m = build_model(parse_documents("dual.yaml", &format!("{DUAL}---\n{p}")).expect("parses")).expect("valid");
        let c = Compiler::new(Limits::default()).compile(&m).expect("compiles");
        let r = reference::TieredReference::new(&m);
        let mut allowed = [0usize; 2];
        for v6 in [false, true] {
            for s in pods {
                for d in pods {
                    if s == d {
                        continue;
                    }
                    let (se, de) = (dpod(s), dpod(d));
                    let got = lookup::allowed_family(&c, &se, &de, 6, 80, v6);
                    let want = r.allowed_family(&se, &de, 6, 80, v6);
                    assert_eq!(got, want, "policy {i}: {s} -> {d} over {}", if v6 { "IPv6" } else { "IPv4" });
                    allowed[v6 as usize] += got as usize;
                }
            }
        }
        match i {
            0 => {
                assert!(!lookup::allowed_family(&c, &dpod("y/v6only"), &dpod("x/a"), 6, 80, true), "y/v6only's address is in the except");
                assert!(lookup::allowed_family(&c, &dpod("x/b"), &dpod("x/a"), 6, 80, true), "x/b's IPv6 is in the block");
                assert!(!lookup::allowed_family(&c, &dpod("y/b"), &dpod("x/a"), 6, 80, true), "y/b's IPv6 is in the except");
                assert!(!lookup::allowed_family(&c, &dpod("x/b"), &dpod("x/a"), 6, 80, false), "no IPv4 address is in an IPv6 block");
            }
            1 => {
                assert!(lookup::allowed_family(&c, &dpod("y/b"), &dpod("x/a"), 6, 80, false), "0.0.0.0/0 holds every IPv4 address");
                assert!(!lookup::allowed_family(&c, &dpod("y/b"), &dpod("x/a"), 6, 80, true), "0.0.0.0/0 holds no IPv6 address");
                let world6: std::net::IpAddr = "2001:db8::1".parse().expect("v6");
                assert!(!lookup::allowed(&c, &Endpoint::Ip(world6), &dpod("x/a"), 6, 80), "nor an outside IPv6 one");
            }
            _ => {
                assert!(lookup::allowed_family(&c, &dpod("x/a"), &dpod("y/b"), 6, 80, true), "egress to the IPv6 block");
                assert!(lookup::allowed_family(&c, &dpod("x/a"), &dpod("y/v6only"), 6, 80, true), "egress to the IPv6-only pod in the block");
                assert!(!lookup::allowed_family(&c, &dpod("x/a"), &dpod("y/b"), 6, 80, false), "not to y/b's IPv4 address");
            }
        }
        assert!(!lookup::allowed_family(&c, &dpod("x/b"), &dpod("y/v4only"), 6, 80, true), "a pod without IPv6 has no IPv6 traffic");
        assert!(!lookup::allowed_family(&c, &dpod("x/b"), &dpod("y/v6only"), 6, 80, false), "an IPv6-only pod has no IPv4 traffic");
        // The IPv6-only pod is an endpoint: no IPv4 address, its IPv6 identity for both.
        let e = &c.endpoints[&PodRef::new("y", "v6only")];
        assert_eq!((e.ip, e.ip6, e.identity), (None, Some("fd00:2::13".parse().expect("v6")), e.identity6), "{e:?}");
        assert_eq!(c.endpoint_by_ip("fd00:2::13".parse::<std::net::IpAddr>().expect("v6")).map(|(r, _)| r.to_string()), Some("y/v6only".to_string()));
        assert!(allowed[0] > 0 && allowed[1] > 0, "policy {i}: something allowed in each family: {allowed:?}");
    }
}
