//! The recommended tier split (deploy/examples/tiers) holds: whatever policies application
//! owners write in the lower tier, nothing the security tier denies becomes allowed.

use std::net::Ipv4Addr;

use policy_compiler::{
    Compiler, Model,
    k8s::{build_model, parse_documents},
    lookup::{Endpoint, allowed},
    model::PodRef,
};
use proptest::prelude::*;

const NAMESPACES: [&str; 3] = ["payments", "shop", "other"];

fn example_docs() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/tiers");
    let mut files: Vec<_> = std::fs::read_dir(dir).expect("example folder").flatten().map(|e| e.path()).collect();
    files.sort();
    files.iter().map(|p| std::fs::read_to_string(p).expect("read example")).collect::<Vec<_>>().join("\n---\n")
}

/// Pods: (namespace index, pci label, app label index).
fn cluster(pods: &[(usize, bool, u8)]) -> String {
    let mut y = String::new();
    for ns in NAMESPACES {
        y += &format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
    }
    for (i, (ns, pci, app)) in pods.iter().enumerate() {
        let pci = if *pci { ", pci: \"true\"" } else { "" };
        y += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: {}, labels: {{app: a{app}{pci}}}}}\nstatus: {{podIP: 10.1.0.{}}}\n",
            NAMESPACES[*ns],
            i + 1
        );
    }
    y
}

/// Application policies: (namespace index, kind, app label or all). kind 0: K8s NP allowing
/// all ingress and egress; 1: Calico namespaced NetworkPolicy allowing everything; 2: K8s NP
/// allowing ingress from all namespaces on 22 and 10250 (what the security tier forbids).
fn app_policies(ps: &[(usize, u8, Option<u8>)]) -> String {
    let mut y = String::new();
    for (i, (ns, kind, app)) in ps.iter().enumerate() {
        let ns = NAMESPACES[*ns];
        let sel_k8s = app.map(|a| format!("{{matchLabels: {{app: a{a}}}}}")).unwrap_or_else(|| "{}".into());
        let sel_calico = app.map(|a| format!("app == 'a{a}'")).unwrap_or_else(|| "all()".into());
        y += &match kind {
            0 => format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: app{i}, namespace: {ns}}}\nspec: {{podSelector: {sel_k8s}, policyTypes: [Ingress, Egress], ingress: [{{}}], egress: [{{}}]}}\n"),
            1 => format!("---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: app{i}, namespace: {ns}}}\nspec: {{selector: \"{sel_calico}\", types: [Ingress, Egress], ingress: [{{action: Allow}}], egress: [{{action: Allow}}]}}\n"),
            _ => format!("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: app{i}, namespace: {ns}}}\nspec: {{podSelector: {sel_k8s}, ingress: [{{from: [{{namespaceSelector: {{}}}}], ports: [{{port: 22}}, {{port: 10250}}]}}]}}\n"),
        };
    }
    y
}

fn model(text: &str) -> Model {
    build_model(parse_documents("blast.yaml", text).expect("parses")).expect("builds")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn lower_tier_policies_never_allow_what_the_security_tier_denies(
        pods in prop::collection::vec((0usize..3, any::<bool>(), 0u8..3), 2..7),
        apps in prop::collection::vec((0usize..3, 0u8..3, prop::option::of(0u8..3)), 0..6),
    ) {
        let base = format!("{}\n{}", example_docs(), cluster(&pods));
        let security_only = model(&base);
        let full = model(&format!("{base}\n{}", app_policies(&apps)));
        let c_sec = Compiler::default().compile(&security_only).expect("compile security only");
        let c_full = Compiler::default().compile(&full).expect("compile full");
        for (i, a) in pods.iter().enumerate() {
            for (j, b) in pods.iter().enumerate() {
                if i == j {
                    continue;
                }
                let (src, dst) = (Endpoint::Pod(PodRef::new(NAMESPACES[a.0], format!("p{i}"))), Endpoint::Pod(PodRef::new(NAMESPACES[b.0], format!("p{j}"))));
                for port in [22u16, 80, 10250] {
                    if !allowed(&c_sec, &src, &dst, 6, port) {
                        prop_assert!(
                            !allowed(&c_full, &src, &dst, 6, port),
                            "security denies p{i}->p{j}:{port} but the application tier allowed it; apps {apps:?}"
                        );
                    }
                }
            }
            // Outside addresses too.
            let src = Endpoint::Ip(Ipv4Addr::new(192, 0, 2, 1).into());
            let dst = Endpoint::Pod(PodRef::new(NAMESPACES[a.0], format!("p{i}")));
            if !allowed(&c_sec, &src, &dst, 6, 22) {
                prop_assert!(!allowed(&c_full, &src, &dst, 6, 22), "outside -> p{i}:22");
            }
        }
    }
}

#[test]
fn the_security_tier_denies_what_it_promises() {
    let m = model(&format!("{}\n{}", example_docs(), cluster(&[(0, true, 0), (1, true, 1), (1, false, 2), (2, false, 0), (0, false, 1)])));
    let c = Compiler::default().compile(&m).expect("compile");
    let pod = |ns: &str, i: usize| Endpoint::Pod(PodRef::new(ns, format!("p{i}")));
    assert!(allowed(&c, &pod("payments", 4), &pod("shop", 1), 6, 80), "payments may reach a PCI pod");
    assert!(!allowed(&c, &pod("payments", 0), &pod("shop", 1), 6, 80), "a PCI pod's egress stays inside payments");
    assert!(!allowed(&c, &pod("shop", 2), &pod("shop", 1), 6, 80), "shop may not reach a PCI pod");
    assert!(!allowed(&c, &pod("shop", 1), &pod("other", 3), 6, 80), "a PCI pod may not reach outside payments");
    assert!(!allowed(&c, &pod("other", 3), &pod("shop", 2), 6, 22), "port 22 is closed everywhere");
    assert!(allowed(&c, &pod("other", 3), &pod("shop", 2), 6, 80), "the rest is passed to (empty) application policy");
}
