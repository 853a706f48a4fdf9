//! `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy and BaselineAdminNetworkPolicy ->
//! tiered model.
//!
//! An ANP becomes one policy in tier `adminnetworkpolicy` (order = priority), the BANP one in
//! tier `baselineadminnetworkpolicy` (order 0). A rule with several peers (OR) becomes one
//! [`TRule`] per peer, and a port list mixing protocols one rule per protocol (named ports
//! carry no protocol, so they join every protocol's rule), all with the rule's action, in the
//! rule's position.

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use super::syntax::{self, Doc, child, get, index};
use crate::error::Error;
use crate::model::Protocol;
use crate::tiered::{
    ANP_TIER, Action, BANP_TIER, EntityMatch, NamespaceMatch, Order, PolicyId, PolicyKind, PortItem, Selector, TRule,
    TieredPolicy,
};

/// The only name a BaselineAdminNetworkPolicy may have.
pub const BANP_NAME: &str = "default";

pub(super) fn parse_policy(d: &Doc<'_>, top: &Mapping, kind: PolicyKind, name: &str) -> Result<TieredPolicy, Error> {
    let baseline = kind == PolicyKind::BaselineAdminNetworkPolicy;
    if baseline && name != BANP_NAME {
        return Err(
            d.err("metadata.name", format!("a BaselineAdminNetworkPolicy must be named {BANP_NAME:?}, not {name:?}"))
        );
    }
    let spec = get(top, "spec").ok_or_else(|| d.err("spec", "required"))?;
    let allowed: &[&str] =
        if baseline { &["subject", "ingress", "egress"] } else { &["priority", "subject", "ingress", "egress"] };
    let spec = d.strict_map(spec, "spec", allowed)?;
    let order = if baseline {
        0.0
    } else {
        let p = get(spec, "priority").ok_or_else(|| d.err("spec.priority", "required"))?;
        let p = d.int(p, "spec.priority")?;
        if !(0..=1000).contains(&p) {
            return Err(d.err("spec.priority", format!("priority {p} is out of range 0..=1000")));
        }
        p as f64
    };
    let subject = get(spec, "subject").ok_or_else(|| d.err("spec.subject", "required"))?;
    let (selector, namespace_selector) = subject_of(d, subject, "spec.subject")?;
    let ingress = get(spec, "ingress").map(|v| rules(d, v, "spec.ingress", baseline, true)).transpose()?;
    let egress = get(spec, "egress").map(|v| rules(d, v, "spec.egress", baseline, false)).transpose()?;
    Ok(TieredPolicy {
        id: PolicyId { kind, namespace: None, name: name.to_string() },
        tier: if baseline { BANP_TIER } else { ANP_TIER }.to_string(),
        order: Some(Order(order)),
        selector,
        namespace_selector: Some(namespace_selector),
        service_account_selector: None,
        // Without rules for a direction (missing or empty list) an (B)ANP does not act on it:
        // its tier's default is Pass, so applying with no rules would decide nothing either.
        ingress: ingress.filter(|r| !r.is_empty()),
        egress: egress.filter(|r| !r.is_empty()),
    })
}

/// `subject`: exactly one of `namespaces` and `pods`. Returns the pod selector and the
/// namespace selector.
fn subject_of(d: &Doc<'_>, v: &Value, path: &str) -> Result<(Selector, Selector), Error> {
    let m = d.strict_map(v, path, &["namespaces", "pods"])?;
    match (get(m, "namespaces"), get(m, "pods")) {
        (Some(ns), None) => Ok((Selector::All, label_selector(d, ns, &child(path, "namespaces"))?)),
        (None, Some(pods)) => pods_of(d, pods, &child(path, "pods")),
        _ => Err(d.err(path, "set exactly one of namespaces and pods")),
    }
}

/// `{namespaceSelector, podSelector}` (both required). Returns (pods, namespaces).
fn pods_of(d: &Doc<'_>, v: &Value, path: &str) -> Result<(Selector, Selector), Error> {
    let m = d.strict_map(v, path, &["namespaceSelector", "podSelector"])?;
    let field = |f: &str| -> Result<Selector, Error> {
        let p = child(path, f);
        label_selector(d, get(m, f).ok_or_else(|| d.err(&p, "required"))?, &p)
    };
    let namespaces = field("namespaceSelector")?;
    Ok((field("podSelector")?, namespaces))
}

fn label_selector(d: &Doc<'_>, v: &Value, path: &str) -> Result<Selector, Error> {
    Ok(Selector::from_label_selector(&super::selector(d, v, path)?))
}

fn rules(d: &Doc<'_>, v: &Value, path: &str, baseline: bool, ingress: bool) -> Result<Vec<TRule>, Error> {
    let peers_field = if ingress { "from" } else { "to" };
    let items = d.seq(v, path)?;
    if items.len() > 100 {
        return Err(d.err(path, format!("at most 100 rules are allowed, found {}", items.len())));
    }
    let mut out = Vec::new();
    for (i, r) in items.iter().enumerate() {
        let rpath = index(path, i);
        let r = d.strict_map(r, &rpath, &["name", "action", "ports", peers_field])?;
        if let Some(n) = get(r, "name") {
            let npath = child(&rpath, "name");
            let n = d.str(n, &npath)?;
            if n.len() > 100 {
                return Err(d.err(&npath, "rule names are at most 100 characters"));
            }
        }
        let apath = child(&rpath, "action");
        let action = match (d.str(get(r, "action").ok_or_else(|| d.err(&apath, "required"))?, &apath)?, baseline) {
            ("Allow", _) => Action::Allow,
            ("Deny", _) => Action::Deny,
            ("Pass", false) => Action::Pass,
            ("Pass", true) => {
                return Err(d.err(&apath, "a BaselineAdminNetworkPolicy has no Pass action (expected Allow or Deny)"));
            }
            (other, false) => {
                return Err(d.err(&apath, format!("unknown action {other:?} (expected Allow, Deny or Pass)")));
            }
            (other, true) => return Err(d.err(&apath, format!("unknown action {other:?} (expected Allow or Deny)"))),
        };
        let ppath = child(&rpath, peers_field);
        let peer_values = d.seq(get(r, peers_field).ok_or_else(|| d.err(&ppath, "required"))?, &ppath)?;
        if peer_values.is_empty() {
            return Err(d.err(&ppath, "must list at least one peer"));
        }
        let mut peers = Vec::new();
        for (j, p) in peer_values.iter().enumerate() {
            peers.extend(peer(d, p, &index(&ppath, j), ingress)?);
        }
        let port_groups = match get(r, "ports") {
            Some(list) => ports(d, list, &child(&rpath, "ports"))?,
            None => Vec::new(),
        };
        for peer in peers {
            if port_groups.is_empty() {
                out.push(rule(action, None, peer.clone(), Vec::new(), ingress));
            }
            for (protocol, items) in &port_groups {
                out.push(rule(action, Some(protocol.number()), peer.clone(), items.clone(), ingress));
            }
        }
    }
    Ok(out)
}

fn rule(action: Action, protocol: Option<u8>, peer: EntityMatch, ports: Vec<PortItem>, ingress: bool) -> TRule {
    let (source, destination) = if ingress {
        (peer, EntityMatch { ports, ..Default::default() })
    } else {
        (EntityMatch::default(), EntityMatch { ports, ..peer })
    };
    TRule { action, protocol, not_protocol: None, icmp: None, not_icmp: None, source, destination }
}

/// One peer; `None` for a `networks` peer listing IPv6 prefixes only (no IPv4 address matches).
fn peer(d: &Doc<'_>, v: &Value, path: &str, ingress: bool) -> Result<Option<EntityMatch>, Error> {
    let allowed: &[&str] =
        if ingress { &["namespaces", "pods"] } else { &["namespaces", "pods", "networks", "nodes", "domainNames"] };
    let m = d.strict_map(v, path, allowed)?;
    let set: Vec<&str> = allowed.iter().copied().filter(|f| get(m, f).is_some()).collect();
    let [field] = set.as_slice() else {
        return Err(d.err(path, format!("set exactly one of {}", allowed.join(", "))));
    };
    let fpath = child(path, field);
    let value = get(m, field).expect("field is set");
    match *field {
        "namespaces" => Ok(Some(EntityMatch {
            namespace: Some(NamespaceMatch::Selector(label_selector(d, value, &fpath)?)),
            ..Default::default()
        })),
        "pods" => {
            let (pods, namespaces) = pods_of(d, value, &fpath)?;
            Ok(Some(EntityMatch {
                selector: Some(pods),
                namespace: Some(NamespaceMatch::Selector(namespaces)),
                ..Default::default()
            }))
        }
        "networks" => {
            let list = d.seq(value, &fpath)?;
            if list.is_empty() {
                return Err(d.err(&fpath, "must list at least one CIDR"));
            }
            let mut nets = Vec::new();
            for (i, c) in list.iter().enumerate() {
                let p = index(&fpath, i);
                nets.push(super::parse_cidr(d, d.str(c, &p)?, &p)?);
            }
            Ok((!nets.is_empty()).then(|| EntityMatch { nets, ..Default::default() }))
        }
        "nodes" => Err(d.err(
            &fpath,
            "nodes peers are not supported: Bulkhead enforces traffic of pods only; use networks with the node CIDRs",
        )),
        _ => Err(d.err(&fpath, "domainNames peers are not supported")),
    }
}

/// The `ports` of a rule, grouped by protocol (protocol order TCP, UDP, SCTP).
fn ports(d: &Doc<'_>, v: &Value, path: &str) -> Result<Vec<(Protocol, Vec<PortItem>)>, Error> {
    let items = d.seq(v, path)?;
    let mut by_protocol: BTreeMap<Protocol, Vec<PortItem>> = BTreeMap::new();
    let mut named = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let m = d.strict_map(item, &p, &["portNumber", "namedPort", "portRange"])?;
        let set: Vec<&str> =
            ["portNumber", "namedPort", "portRange"].into_iter().filter(|f| get(m, f).is_some()).collect();
        let [field] = set.as_slice() else {
            return Err(d.err(&p, "set exactly one of portNumber, namedPort, portRange"));
        };
        let fpath = child(&p, field);
        let value = get(m, field).expect("field is set");
        match *field {
            "portNumber" => {
                let pm = d.strict_map(value, &fpath, &["protocol", "port"])?;
                let protocol = protocol(d, pm, &fpath)?;
                let port_path = child(&fpath, "port");
                let port = d.port(get(pm, "port").ok_or_else(|| d.err(&port_path, "required"))?, &port_path)?;
                by_protocol.entry(protocol).or_default().push(PortItem::Range { start: port, end: port });
            }
            "namedPort" => {
                let name = d.str(value, &fpath)?;
                if let Some(problem) = syntax::port_name_problem(name) {
                    return Err(d.err(&fpath, format!("named port {name:?} is not a valid port name: {problem}")));
                }
                named.push(PortItem::Named(name.to_string()));
            }
            _ => {
                let rm = d.strict_map(value, &fpath, &["protocol", "start", "end"])?;
                let protocol = protocol(d, rm, &fpath)?;
                let spath = child(&fpath, "start");
                let epath = child(&fpath, "end");
                let start = d.port(get(rm, "start").ok_or_else(|| d.err(&spath, "required"))?, &spath)?;
                let end = d.port(get(rm, "end").ok_or_else(|| d.err(&epath, "required"))?, &epath)?;
                if start >= end {
                    return Err(d.err(&epath, format!("end {end} must be greater than start {start}")));
                }
                by_protocol.entry(protocol).or_default().push(PortItem::Range { start, end });
            }
        }
    }
    if !named.is_empty() {
        // A named port matches the container port of that name whatever its protocol.
        for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            by_protocol.entry(protocol).or_default().extend(named.iter().cloned());
        }
    }
    Ok(by_protocol.into_iter().collect())
}

/// `protocol` of a portNumber/portRange: TCP (the default), UDP or SCTP.
fn protocol(d: &Doc<'_>, m: &Mapping, path: &str) -> Result<Protocol, Error> {
    let Some(v) = get(m, "protocol") else { return Ok(Protocol::Tcp) };
    let path = child(path, "protocol");
    let s = d.str(v, &path)?;
    Protocol::from_k8s(s).ok_or_else(|| d.err(&path, format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)")))
}
