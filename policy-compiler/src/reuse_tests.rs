//! A compiler reusing its previous work must produce exactly what the same compiler produces
//! when it has forgotten that work, across every kind of change.

use crate::compile::{Compiler, PodSideUse, Scope};
use crate::fixtures;
use crate::model::{Model, PodRef};

/// The policies every model of these tests starts with: a tier whose policy quarantines
/// `app == d` from b, NetworkPolicies with a named port and an ipBlock with except.
const POLICIES: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 10}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.quarantine}
spec: {tier: security, order: 1, selector: "app == 'b'", types: [Ingress], ingress: [{action: Deny, source: {selector: "app == 'd'"}}, {action: Pass}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: serve}]}]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

fn model(extra: &str) -> Model {
    fixtures::model(&format!("{POLICIES}---\n{extra}"))
}

/// Places pods a and b on this node.
fn on_node(mut m: Model) -> Model {
    for name in ["a", "b"] {
        m.pods.get_mut(&PodRef::new("x", name)).expect("pod").interface = Some(format!("veth-{name}"));
    }
    m
}

const ALLOW_C: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-c, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}], ports: [{port: 81}]}]
"#;

#[test]
fn reused_work_compiles_like_a_fresh_look() {
    let m0 = on_node(model("apiVersion: v1\nkind: Namespace\nmetadata: {name: z}\n"));
    // A policy added: pods and prefixes unchanged, so the pod side is reused.
    let mut m1 = m0.clone();
    m1.policies = model(ALLOW_C).policies;
    // A policy's port changed.
    let mut m2 = m1.clone();
    let p = m2.policies.values_mut().find(|p| p.name == "from-c").expect("from-c");
    let text = format!("{:?}", p.ingress);
    assert!(text.contains("81"), "test policy has port 81: {text}");
    *p = model(&ALLOW_C.replace("port: 81", "port: 82")).policies.values().find(|p| p.name == "from-c").expect("from-c").clone();
    // Pod changes that keep the identities: a replica of b on another node, a's address
    // changed, the replica gone again.
    let mut m2b = m2.clone();
    let mut b2 = m2.pods[&PodRef::new("x", "b")].clone();
    (b2.name, b2.ip, b2.interface) = ("b2".into(), Some("10.0.0.9".parse().expect("address")), None);
    m2b.upsert_pod(b2);
    let mut m2c = m2b.clone();
    m2c.pods.get_mut(&PodRef::new("x", "a")).expect("pod a").ip = Some("10.0.0.11".parse().expect("address"));
    let mut m2d = m2c.clone();
    m2d.pods.remove(&PodRef::new("x", "b2"));
    // The last pod of an identity gone: the identities change.
    let mut m2e = m2d.clone();
    m2e.pods.remove(&PodRef::new("y", "c"));
    // A pod relabelled through the shared map: the model must stop sharing it.
    let mut m3 = m2.clone();
    m3.pods.get_mut(&PodRef::new("y", "c")).expect("pod c").labels.insert("app".into(), "d".into());
    // A new prefix (an ipBlock nobody named before).
    let mut m4 = m3.clone();
    let extra = model(&ALLOW_C.replace("namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}", "ipBlock: {cidr: 10.0.1.0/25}"));
    m4.policies = extra.policies;
    // A tiered policy removed, a namespace relabelled.
    let mut m5 = m4.clone();
    m5.tiered.clear();
    m5.namespaces.get_mut("x").expect("x").labels.insert("team".into(), "b".into());
    let models = [&m0, &m1, &m2, &m2b, &m2c, &m2d, &m2e, &m3, &m4, &m5, &m2, &m0];
    let expected = |step: usize| match step {
        1 | 2 => Some(PodSideUse::Kept),
        3..=5 => Some(PodSideUse::Patched),
        6..=9 => Some(PodSideUse::Built),
        _ => None,
    };

    for scope in [Scope::Node, Scope::Cluster] {
        let new = || if scope == Scope::Node { Compiler::for_node(Default::default()) } else { Compiler::default() };
        let (mut warm, mut forgetful) = (new(), new());
        let mut previous = None;
        for (step, m) in models.iter().enumerate() {
            let reused = warm.compile(m).unwrap_or_else(|e| panic!("{scope:?} step {step}: {e}"));
            forgetful.forget();
            let fresh = forgetful.compile(m).unwrap_or_else(|e| panic!("{scope:?} step {step}: {e}"));
            assert_eq!(reused, fresh, "{scope:?} step {step}: reused work differs from a fresh look");
            let (side, locals) = warm.reused();
            if let Some(want) = expected(step) {
                assert_eq!(side, want, "{scope:?} step {step}: pod side");
                // Kept or patched, the identities the change does not touch keep their
                // verdicts; built, nothing is kept.
                let ok = if want == PodSideUse::Built { locals == 0 } else { locals >= 1 };
                assert!(ok, "{scope:?} step {step}: {locals} identities' verdicts reused with the pod side {side:?}");
            }
            assert_ne!(Some(&reused), previous.as_ref(), "{scope:?} step {step}: the change changed nothing compiled; the test would not see stale reuse");
            previous = Some(reused);
        }
    }
    assert!(!crate::model::Shared::same(&m2.pods, &m3.pods), "a changed pod map is no longer shared");
    assert!(crate::model::Shared::same(&m1.pods, &m2.pods), "an unchanged pod map stays shared");
}

/// A model built afresh with equal pods and namespaces (as an agent builds one per sync)
/// reuses the pod side, and the compile after it does not visit the pods again; a changed one
/// does not reuse it as it was.
#[test]
fn a_rebuilt_model_with_equal_pods_reuses_the_pod_side() {
    let m = on_node(model(ALLOW_C));
    let mut c = Compiler::for_node(Default::default());
    let first = c.compile(&m).expect("compile");
    let mut rebuilt = m.clone();
    rebuilt.pods = crate::model::Shared::new((*m.pods).clone());
    rebuilt.namespaces = crate::model::Shared::new((*m.namespaces).clone());
    assert!(!crate::model::Shared::same(&rebuilt.pods, &m.pods) && !crate::model::Shared::same(&rebuilt.namespaces, &m.namespaces));
    assert_eq!(c.compile(&rebuilt).expect("compile"), first);
    assert_eq!(c.reused(), (PodSideUse::Kept, 2), "pod side and both local identities reused");
    assert!(
        c.holds_pods_of(&rebuilt),
        "the compiler now holds the rebuilt model's pods, so compiling it again visits no pod"
    );
    assert_eq!(c.compile(&rebuilt).expect("compile"), first);
    assert_eq!(c.reused(), (PodSideUse::Kept, 2));

    let mut changed = m.clone();
    changed.pods = crate::model::Shared::new((*m.pods).clone());
    changed.pods.get_mut(&PodRef::new("y", "c")).expect("pod c").labels.insert("tier".into(), "x".into());
    c.compile(&changed).expect("compile");
    assert_ne!(c.reused().0, PodSideUse::Kept, "changed pods: the pod side is not kept as it was");
}
