//! Recommended policies as YAML a person reviews: Calico v3 (staged or enforced, with their
//! Tier) or Kubernetes NetworkPolicy, with a plain-language comment on every policy and rule
//! saying which flows it came from. Written by hand rather than through serde because YAML
//! comments are the point; every document is parsed back by the tests.

use std::fmt::Write as _;

use super::{Peer, Recommended, Rule, TIER, TIER_ORDER, Workload};

/// The output forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Calico v3 StagedNetworkPolicy: judged in the kernel beside enforcement, counted as
    /// would-allow / would-deny, enforcing nothing.
    CalicoStaged,
    /// Calico v3 NetworkPolicy: the reviewed set, enforced.
    Calico,
    /// Kubernetes NetworkPolicy (no tier; enforced as soon as it is applied).
    Kubernetes,
}

/// The namespace label every namespace carries (set by the API server).
const NS_LABEL: &str = "kubernetes.io/metadata.name";

/// All recommendations as one multi-document YAML text.
pub fn render(recs: &[Recommended], format: Format) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Recommended by `bulkhead policy recommend` from observed flows: one policy per workload,");
    let _ = writeln!(out, "# admitting exactly the flows seen; anything else to or from a selected pod is denied.");
    if format == Format::CalicoStaged {
        let _ = writeln!(out, "# Staged: nothing is enforced; `bulkhead policy stats` counts what each would allow or deny.");
    }
    if format != Format::Kubernetes {
        let _ = write!(out, "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: {TIER}\nspec:\n  order: {TIER_ORDER}\n");
    }
    for (i, r) in recs.iter().enumerate() {
        if i > 0 || format != Format::Kubernetes {
            out.push_str("---\n");
        }
        match format {
            Format::Kubernetes => kubernetes(&mut out, r),
            _ => calico(&mut out, r, format == Format::CalicoStaged),
        }
    }
    out
}

fn header(out: &mut String, r: &Recommended) {
    let pods: Vec<&str> = r.pods.iter().map(String::as_str).collect();
    let _ = writeln!(out, "# Workload {} in namespace {} (pods: {}).", selector_text(&r.workload), r.workload.namespace, if pods.is_empty() { "none".into() } else { pods.join(", ") });
    if r.ingress.is_empty() && r.egress.is_empty() {
        let _ = writeln!(out, "# No flow of it was seen: isolated both ways.");
    }
}

fn calico(out: &mut String, r: &Recommended, staged: bool) {
    header(out, r);
    let kind = if staged { "StagedNetworkPolicy" } else { "NetworkPolicy" };
    let _ = write!(
        out,
        "apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata:\n  name: {TIER}.{}\n  namespace: {}\nspec:\n  tier: {TIER}\n  selector: {}\n  types: [Ingress, Egress]\n",
        r.name,
        r.workload.namespace,
        quote(&calico_selector(&r.workload))
    );
    for (field, rules, peer_side) in [("ingress", &r.ingress, "source"), ("egress", &r.egress, "destination")] {
        for rule in section(out, field, rules) {
            comment(out, rule, "    ");
            let _ = writeln!(out, "    - action: Allow");
            let _ = writeln!(out, "      protocol: {}", protocol_name(rule.protocol));
            let _ = writeln!(out, "      {peer_side}:");
            match &rule.peer {
                Peer::Workload(w) => {
                    let _ = writeln!(out, "        namespaceSelector: {}", quote(&format!("{NS_LABEL} == '{}'", w.namespace)));
                    let _ = writeln!(out, "        selector: {}", quote(&calico_selector(w)));
                }
                Peer::Cidr(a) => {
                    let _ = writeln!(out, "        nets: [{}]", quote(&cidr(*a)));
                }
            }
            if !rule.ports.is_empty() {
                let ports: Vec<String> = rule.ports.iter().map(u16::to_string).collect();
                if peer_side == "destination" {
                    let _ = writeln!(out, "        ports: [{}]", ports.join(", "));
                } else {
                    let _ = writeln!(out, "      destination:\n        ports: [{}]", ports.join(", "));
                }
            }
        }
    }
}

fn kubernetes(out: &mut String, r: &Recommended) {
    header(out, r);
    let _ = write!(out, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {TIER}-{}\n  namespace: {}\nspec:\n", r.name, r.workload.namespace);
    out.push_str("  podSelector:\n");
    match_labels(out, &r.workload, "    ");
    out.push_str("  policyTypes: [Ingress, Egress]\n");
    for (field, rules, peers) in [("ingress", &r.ingress, "from"), ("egress", &r.egress, "to")] {
        for rule in section(out, field, rules) {
            comment(out, rule, "    ");
            if !matches!(rule.protocol, 6 | 17 | 132) {
                let _ = writeln!(out, "    # NetworkPolicy cannot name protocol {}: this rule admits every protocol of the peer.", protocol_name(rule.protocol));
            }
            let _ = writeln!(out, "    - {peers}:");
            match &rule.peer {
                Peer::Workload(w) => {
                    let _ = writeln!(out, "        - namespaceSelector:\n            matchLabels:\n              {}: {}", quote(NS_LABEL), quote(&w.namespace));
                    out.push_str("          podSelector:\n");
                    match_labels(out, w, "            ");
                }
                Peer::Cidr(a) => {
                    let _ = writeln!(out, "        - ipBlock:\n            cidr: {}", quote(&cidr(*a)));
                }
            }
            if matches!(rule.protocol, 6 | 17 | 132) {
                let _ = writeln!(out, "      ports:");
                for p in &rule.ports {
                    let _ = writeln!(out, "        - {{protocol: {}, port: {p}}}", protocol_name(rule.protocol));
                }
            }
        }
    }
}

/// Starts an `ingress`/`egress` list (`[]`: nothing admitted) and hands out its rules.
fn section<'r>(out: &mut String, field: &str, rules: &'r [Rule]) -> std::slice::Iter<'r, Rule> {
    let _ = writeln!(out, "  {field}:{}", if rules.is_empty() { " []" } else { "" });
    rules.iter()
}

fn comment(out: &mut String, rule: &Rule, indent: &str) {
    let ports = if rule.ports.is_empty() {
        protocol_name(rule.protocol).to_string()
    } else {
        format!("{}/{}", rule.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","), protocol_name(rule.protocol))
    };
    let flows: Vec<&str> = rule.from_flows.iter().map(String::as_str).collect();
    let _ = writeln!(out, "{indent}# {ports}, from the flows {}.", flows.join("; "));
}

fn match_labels(out: &mut String, w: &Workload, indent: &str) {
    if w.labels.is_empty() {
        let _ = writeln!(out, "{indent}{{}}");
        return;
    }
    let _ = writeln!(out, "{indent}matchLabels:");
    for (k, v) in &w.labels {
        let _ = writeln!(out, "{indent}  {}: {}", quote(k), quote(v));
    }
}

fn calico_selector(w: &Workload) -> String {
    if w.labels.is_empty() {
        return "all()".into();
    }
    w.labels.iter().map(|(k, v)| format!("{k} == '{v}'")).collect::<Vec<_>>().join(" && ")
}

fn selector_text(w: &Workload) -> String {
    if w.labels.is_empty() {
        return "(no stable labels)".into();
    }
    w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn cidr(a: std::net::IpAddr) -> String {
    match a {
        std::net::IpAddr::V4(a) => format!("{a}/32"),
        std::net::IpAddr::V6(a) => format!("{a}/128"),
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        n => n.to_string(),
    }
}

/// A double-quoted YAML scalar (label keys and values, selectors and prefixes hold no
/// control characters, but quotes and backslashes are escaped all the same).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::super::{Observation, Party, recommend};
    use super::*;
    use crate::model::Model;

    const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: data, labels: {kubernetes.io/metadata.name: data}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: data, labels: {app: db}}
status: {podIP: 10.0.0.3}
";

    fn model_with(extra: &str) -> Model {
        let mut r = crate::k8s::parse_documents("cluster.yaml", CLUSTER).expect("cluster");
        r.extend(crate::k8s::parse_documents("recommended.yaml", extra).unwrap_or_else(|e| panic!("does not parse: {e}\n{extra}")));
        crate::k8s::build_model(r).unwrap_or_else(|e| panic!("does not build: {e}\n{extra}"))
    }

    fn flows() -> Vec<Observation> {
        let pod = |ns: &str, n: &str| Party::Pod { namespace: ns.into(), name: n.into() };
        vec![
            Observation { src: pod("shop", "web"), dst: pod("shop", "api"), port: 8080, protocol: 6, ts_ns: 1 },
            Observation { src: pod("shop", "api"), dst: pod("data", "db"), port: 5432, protocol: 6, ts_ns: 2 },
            Observation { src: Party::Outside("192.0.2.9".parse().expect("ip")), dst: pod("shop", "web"), port: 80, protocol: 6, ts_ns: 3 },
            Observation { src: pod("shop", "web"), dst: pod("data", "db"), port: 0, protocol: 1, ts_ns: 4 },
        ]
    }

    /// Every form parses with the compiler's own YAML reader, and the staged Calico form
    /// yields staged policies in the recommendation tier.
    #[test]
    fn every_form_parses_back() {
        let recs = recommend(&model_with(""), &flows());
        for format in [Format::CalicoStaged, Format::Calico, Format::Kubernetes] {
            let text = render(&recs, format);
            let m = model_with(&text);
            let n = if format == Format::Kubernetes { m.policies.len() } else { m.tiered.len() };
            assert_eq!(n, 3, "{format:?}: one policy per workload\n{text}");
        }
        let staged = render(&recs, Format::CalicoStaged);
        assert!(staged.contains("kind: StagedNetworkPolicy") && staged.contains("name: namespace-isolation.web") && staged.contains("kind: Tier"), "{staged}");
        assert!(staged.contains("# 8080/TCP, from the flows shop/web -> shop/api."), "{staged}");
        assert!(staged.contains("nets: [\"192.0.2.9/32\"]"), "{staged}");
    }
}
