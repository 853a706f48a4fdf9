//! Desired state: for each firewall, each owned object and the addresses (IPv4 and IPv6) it
//! must hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use policy_compiler::Model;
use policy_compiler::model::PodRef;
use policy_compiler::tiered::{namespace_selector_labels, pod_selector_labels};

use crate::group::{AddressGroup, FirewallState};

/// The pods a group selects that have an address. When several pods claim one address (a
/// stale status), only its owner counts, by the model's rule ([`Model::ip_owners`]) that the
/// compiler uses too, so the firewall and the dataplane agree on who an IP is. A dual-stack
/// pod counts with both its addresses, each owned on its own (a stale IPv4 claim does not
/// take the pod's IPv6 address out).
pub fn members(model: &Model, group: &AddressGroup) -> BTreeMap<IpAddr, PodRef> {
    let owner = model.ip_owners();
    let mut out = BTreeMap::new();
    for (r, pod) in &model.pods {
        let ips: Vec<IpAddr> = pod
            .addrs()
            .filter(|ip| {
                let mine = owner.get(ip) == Some(&r);
                if !mine {
                    tracing::warn!(pod = %r, %ip, family = crate::group::family(ip), owner = %owner[ip], "two pods claim one address; the first in name order keeps it");
                }
                mine
            })
            .collect();
        if ips.is_empty() {
            continue;
        }
        if let Some(ns_sel) = &group.namespace_selector {
            // build_model guarantees every pod's namespace exists.
            let Some(ns) = model.namespaces.get(&pod.namespace) else { continue };
            if !ns_sel.matches(&namespace_selector_labels(&ns.labels, &ns.name)) {
                continue;
            }
        }
        if group.pod_selector.matches(&pod_selector_labels(&pod.labels, &pod.namespace, &pod.service_account)) {
            out.extend(ips.into_iter().map(|ip| (ip, r.clone())));
        }
    }
    out
}

/// Desired state of every firewall in `firewalls` (a firewall no group targets gets an empty
/// state, so objects fw-sync owns there are cleaned up).
pub fn desired<'a>(model: &Model, groups: &[AddressGroup], firewalls: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, FirewallState> {
    let mut out: BTreeMap<String, FirewallState> = firewalls.into_iter().map(|f| (f.to_string(), FirewallState::new())).collect();
    for g in groups {
        let ips: BTreeSet<IpAddr> = members(model, g).into_keys().collect();
        for t in &g.targets {
            out.entry(t.firewall.clone()).or_default().insert(t.object.clone(), ips.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{ObjectRef, Target, TargetKind};

    fn model(yaml: &str) -> Model {
        let docs = policy_compiler::k8s::parse_documents("t.yaml", yaml).expect("test YAML parses");
        policy_compiler::k8s::build_model(docs).expect("test model builds")
    }

    fn group(pod: &str, ns: Option<&str>) -> AddressGroup {
        AddressGroup {
            name: "g".into(),
            pod_selector: policy_compiler::selector_parser::parse_selector(pod).expect("pod selector"),
            namespace_selector: ns.map(|s| policy_compiler::selector_parser::parse_selector(s).expect("ns selector")),
            targets: vec![Target { firewall: "fw".into(), object: ObjectRef { kind: TargetKind::Ipset, name: "g".into() } }],
            origin: "t".into(),
        }
    }

    const PODS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: prod}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: dev, labels: {env: dev}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web1, namespace: prod, labels: {app: web}}\nstatus: {podIP: 10.9.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web2, namespace: dev, labels: {app: web}}\nstatus: {podIP: 10.9.0.2}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: prod, labels: {app: db}}\nstatus: {podIP: 10.9.0.3}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: pending, namespace: prod, labels: {app: web}}\n";

    fn ips(m: &Model, g: &AddressGroup) -> Vec<String> {
        members(m, g).keys().map(ToString::to_string).collect()
    }

    #[test]
    fn selectors_over_pod_and_namespace_labels() {
        let m = model(PODS);
        assert_eq!(ips(&m, &group("app == 'web'", None)), ["10.9.0.1", "10.9.0.2"], "pending pod has no IP");
        assert_eq!(ips(&m, &group("app == 'web'", Some("env == 'prod'"))), ["10.9.0.1"]);
        assert_eq!(ips(&m, &group("projectcalico.org/namespace == 'prod'", None)), ["10.9.0.1", "10.9.0.3"]);
        assert_eq!(ips(&m, &group("all()", Some("projectcalico.org/name == 'dev'"))), ["10.9.0.2"]);
        assert_eq!(ips(&m, &group("!has(app) || app in {'db'}", None)), ["10.9.0.3"]);
    }

    #[test]
    fn a_shared_address_counts_once_for_its_first_pod() {
        let m = model(&PODS.replace("10.9.0.3", "10.9.0.1"));
        // prod/db sorts before prod/web1, so the address is db's.
        assert_eq!(ips(&m, &group("app == 'web'", None)), ["10.9.0.2"]);
        assert_eq!(ips(&m, &group("app == 'db'", None)), ["10.9.0.1"]);
    }

    /// web1 is dual-stack, web2 IPv6-only (podIPs alone), db IPv4 through podIP and podIPs.
    const DUAL: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web1, namespace: prod, labels: {app: web}}\nstatus: {podIP: 10.9.0.1, podIPs: [{ip: 10.9.0.1}, {ip: 'fd00:9::1'}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web2, namespace: prod, labels: {app: web}}\nstatus: {podIPs: [{ip: 'fd00:9::2'}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db, namespace: prod, labels: {app: db}}\nstatus: {podIP: 10.9.0.3, podIPs: [{ip: 10.9.0.3}]}\n";

    #[test]
    fn dual_stack_pods_count_with_both_addresses() {
        let m = model(DUAL);
        assert_eq!(ips(&m, &group("app == 'web'", None)), ["10.9.0.1", "fd00:9::1", "fd00:9::2"]);
        assert_eq!(ips(&m, &group("app == 'db'", None)), ["10.9.0.3"]);
        let d = desired(&m, &[group("all()", None)], ["fw"]);
        let obj = ObjectRef { kind: TargetKind::Ipset, name: "g".into() };
        assert_eq!(crate::group::count_by_family(&d["fw"][&obj]), (2, 2), "{d:?}");
    }

    #[test]
    fn a_shared_ipv6_address_counts_once_and_leaves_the_other_family_alone() {
        // db claims web1's IPv6 address too (a stale status): db sorts first, so it keeps
        // fd00:9::1, while web1 keeps its own IPv4 address.
        let m = model(&DUAL.replace("podIPs: [{ip: 10.9.0.3}]", "podIPs: [{ip: 10.9.0.3}, {ip: 'fd00:9::1'}]"));
        assert_eq!(ips(&m, &group("app == 'web'", None)), ["10.9.0.1", "fd00:9::2"]);
        assert_eq!(ips(&m, &group("app == 'db'", None)), ["10.9.0.3", "fd00:9::1"]);
    }

    #[test]
    fn a_malformed_ipv6_pod_address_is_refused_naming_file_and_field() {
        let text = DUAL.replace("fd00:9::2", "fd00:9::zz");
        let e = policy_compiler::k8s::parse_documents("pods.yaml", &text).and_then(policy_compiler::k8s::build_model).expect_err("bad address").to_string();
        assert!(e.contains("pods.yaml") && e.contains("status.podIPs[0].ip") && e.contains("fd00:9::zz"), "{e}");
    }

    #[test]
    fn every_firewall_gets_a_state() {
        let m = model(PODS);
        let d = desired(&m, &[group("app == 'db'", None)], ["fw", "other"]);
        assert!(d["other"].is_empty(), "{d:?}");
        let obj = ObjectRef { kind: TargetKind::Ipset, name: "g".into() };
        assert_eq!(d["fw"][&obj].len(), 1, "{d:?}");
    }
}
