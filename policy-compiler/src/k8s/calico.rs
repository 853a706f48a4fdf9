//! Calico v3 (`projectcalico.org/v3`) Tier, (Staged)(Global)NetworkPolicy -> tiered model.
//!
//! Read strictly like Kubernetes NetworkPolicies: an unknown field is an error naming it, and
//! a field Bulkhead's datapath cannot honour (source ports, IPv6, HTTP matches, host-endpoint
//! options) is an explicit error rather than a silently dropped constraint.

use std::collections::BTreeSet;

use serde_yaml::{Mapping, Value};

use super::syntax::{self, Doc, child, get, index};
use super::CLUSTER_SCOPED_ONLY_ANNOTATION;
use crate::error::Error;
use crate::model::Cidr;
use crate::selector_parser::parse_selector;
use crate::tiered::{
    ANP_TIER, ANP_TIER_ORDER, Action, BANP_TIER, BANP_TIER_ORDER, DEFAULT_TIER, DEFAULT_TIER_ORDER, EntityMatch,
    IcmpMatch, NamespaceMatch, Order, PolicyId, PolicyKind, PortItem, Selector, TRule, Tier, TierDefault, TieredPolicy,
};

/// Label carrying the name of a service account (and of a namespace) in Calico selectors.
pub const NAME_LABEL: &str = "projectcalico.org/name";

/// Order and default action of the built-in tiers.
pub(super) fn builtin_tier(name: &str) -> Option<(f64, TierDefault)> {
    match name {
        DEFAULT_TIER => Some((DEFAULT_TIER_ORDER, TierDefault::Deny)),
        ANP_TIER => Some((ANP_TIER_ORDER, TierDefault::Pass)),
        BANP_TIER => Some((BANP_TIER_ORDER, TierDefault::Pass)),
        _ => None,
    }
}

/// A `Tier`. Missing fields of a built-in tier's name keep the built-in values; for other
/// tiers the order is nil (after every number) and the default action Deny, as in Calico.
pub(super) fn parse_tier(d: &Doc<'_>, top: &Mapping, meta: &Mapping, name: &str) -> Result<Tier, Error> {
    let empty = Mapping::new();
    let spec = match get(top, "spec") {
        Some(s) => d.strict_map(s, "spec", &["order", "defaultAction"])?,
        None => &empty,
    };
    let builtin = builtin_tier(name);
    let order = match get(spec, "order") {
        Some(v) => Some(order(d, v, "spec.order")?),
        None => builtin.map(|(o, _)| Order(o)),
    };
    let default_action = match get(spec, "defaultAction") {
        Some(v) => match d.str(v, "spec.defaultAction")? {
            "Deny" => TierDefault::Deny,
            "Pass" => TierDefault::Pass,
            other => {
                return Err(
                    d.err("spec.defaultAction", format!("unknown default action {other:?} (expected Deny or Pass)"))
                );
            }
        },
        None => builtin.map_or(TierDefault::Deny, |(_, a)| a),
    };
    let mut cluster_scoped_only = false;
    if let Some(a) = get(meta, "annotations") {
        let a = d.map(a, "metadata.annotations")?;
        if let Some(v) = get(a, CLUSTER_SCOPED_ONLY_ANNOTATION) {
            let path = format!("metadata.annotations[{CLUSTER_SCOPED_ONLY_ANNOTATION:?}]");
            cluster_scoped_only = match d.str(v, &path)? {
                "true" => true,
                "false" => false,
                other => return Err(d.err(&path, format!("expected \"true\" or \"false\", found {other:?}"))),
            };
        }
    }
    Ok(Tier { name: name.to_string(), order, default_action, cluster_scoped_only })
}

/// A Calico order: any finite number.
pub(super) fn order(d: &Doc<'_>, v: &Value, path: &str) -> Result<Order, Error> {
    match v.as_f64() {
        Some(f) if f.is_finite() => Ok(Order(f)),
        Some(f) => Err(d.err(path, format!("order must be a finite number, found {f}"))),
        None => Err(d.err(path, "expected a number")),
    }
}

/// Parses a selector expression at `path`.
pub(super) fn selector(d: &Doc<'_>, v: &Value, path: &str) -> Result<Selector, Error> {
    let s = d.str(v, path)?;
    parse_selector(s).map_err(|e| d.err(path, format!("invalid selector {s:?}: {e}")))
}

/// What rule conversion needs to know about the policy.
struct Ctx<'a> {
    /// The policy's namespace (namespaced kinds): rule selectors without a namespaceSelector
    /// look only there.
    namespace: Option<&'a str>,
}

/// A (Staged)(Global)NetworkPolicy. `namespace` is set for the namespaced kinds.
pub(super) fn parse_policy(
    d: &Doc<'_>,
    top: &Mapping,
    kind: PolicyKind,
    namespace: Option<&str>,
    name: &str,
) -> Result<TieredPolicy, Error> {
    let global = !kind.is_namespaced();
    let mut allowed =
        vec!["order", "tier", "selector", "serviceAccountSelector", "types", "ingress", "egress", "performanceHints"];
    if global {
        allowed.extend(["namespaceSelector", "doNotTrack", "preDNAT", "applyOnForward"]);
    }
    if kind.is_staged() {
        allowed.push("stagedAction");
    }
    let spec = get(top, "spec").ok_or_else(|| d.err("spec", "required"))?;
    let spec = d.strict_map(spec, "spec", &allowed)?;

    if let Some(v) = get(spec, "stagedAction") {
        match d.str(v, "spec.stagedAction")? {
            "Set" => {}
            "Delete" => {
                return Err(d.err(
                    "spec.stagedAction",
                    "stagedAction Delete (staging the deletion of an enforced policy) is not supported yet; \
                     stage a replacement with stagedAction Set instead",
                ));
            }
            other => {
                return Err(
                    d.err("spec.stagedAction", format!("unknown staged action {other:?} (expected Set or Delete)"))
                );
            }
        }
    }
    for field in ["doNotTrack", "preDNAT"] {
        if let Some(v) = get(spec, field) {
            let path = child("spec", field);
            if bool_field(d, v, &path)? {
                return Err(d.err(
                    &path,
                    format!("{field} applies to host endpoints, which Bulkhead does not enforce; not supported"),
                ));
            }
        }
    }
    if let Some(v) = get(spec, "applyOnForward") {
        // Only meaningful for host endpoints; harmless for pods either way.
        bool_field(d, v, "spec.applyOnForward")?;
    }
    if let Some(v) = get(spec, "performanceHints") {
        // Hints for Calico's dataplane; they never change what a policy matches.
        for (i, h) in d.seq(v, "spec.performanceHints")?.iter().enumerate() {
            d.str(h, &index("spec.performanceHints", i))?;
        }
    }

    let tier = match get(spec, "tier") {
        Some(v) => {
            let t = d.str(v, "spec.tier")?;
            if let Some(problem) = syntax::dns_label_problem(t) {
                return Err(d.err("spec.tier", format!("invalid tier name {t:?}: {problem}")));
            }
            t.to_string()
        }
        None => DEFAULT_TIER.to_string(),
    };
    let bare_name = strip_tier_prefix(d, name, &tier, get(spec, "tier").is_some())?;

    let order = get(spec, "order").map(|v| order(d, v, "spec.order")).transpose()?;
    let selector_ =
        get(spec, "selector").map(|v| selector(d, v, "spec.selector")).transpose()?.unwrap_or(Selector::All);
    let namespace_selector =
        get(spec, "namespaceSelector").map(|v| selector(d, v, "spec.namespaceSelector")).transpose()?;
    let service_account_selector =
        get(spec, "serviceAccountSelector").map(|v| selector(d, v, "spec.serviceAccountSelector")).transpose()?;

    let ctx = Ctx { namespace };
    let ingress = get(spec, "ingress").map(|v| rules(d, v, "spec.ingress", &ctx)).transpose()?;
    let egress = get(spec, "egress").map(|v| rules(d, v, "spec.egress", &ctx)).transpose()?;
    let has_ingress = get(spec, "ingress").and_then(Value::as_sequence).is_some_and(|s| !s.is_empty());
    let has_egress = get(spec, "egress").and_then(Value::as_sequence).is_some_and(|s| !s.is_empty());

    let (wants_ingress, wants_egress) = match get(spec, "types") {
        Some(types) => {
            let (mut i, mut e) = (false, false);
            for (n, t) in d.seq(types, "spec.types")?.iter().enumerate() {
                let path = index("spec.types", n);
                let flag = match d.str(t, &path)? {
                    "Ingress" => &mut i,
                    "Egress" => &mut e,
                    other => {
                        return Err(d.err(&path, format!("unknown policy type {other:?} (expected Ingress or Egress)")));
                    }
                };
                if *flag {
                    return Err(d.err(&path, "type listed twice"));
                }
                *flag = true;
            }
            if !i && !e {
                return Err(d.err("spec.types", "must list Ingress, Egress or both (omit it for Calico's default)"));
            }
            if has_ingress && !i {
                return Err(d.err(
                    "spec.ingress",
                    "ingress rules are given but spec.types lacks Ingress (they would be ignored)",
                ));
            }
            if has_egress && !e {
                return Err(
                    d.err("spec.egress", "egress rules are given but spec.types lacks Egress (they would be ignored)")
                );
            }
            (i, e)
        }
        // Calico's defaulting: Ingress unless the policy has egress rules only; Egress when it
        // has egress rules.
        None => (has_ingress || !has_egress, has_egress),
    };

    Ok(TieredPolicy {
        id: PolicyId { kind, namespace: namespace.map(String::from), name: bare_name.to_string() },
        tier,
        order,
        selector: selector_,
        namespace_selector,
        service_account_selector,
        ingress: wants_ingress.then(|| ingress.unwrap_or_default()),
        egress: wants_egress.then(|| egress.unwrap_or_default()),
    })
}

fn bool_field(d: &Doc<'_>, v: &Value, path: &str) -> Result<bool, Error> {
    v.as_bool().ok_or_else(|| d.err(path, "expected true or false"))
}

/// Calico names policies of a tier `<tier>.<name>` (required before Calico 3.30, optional
/// since). The prefix, when present, must name the policy's tier; the stored name is the part
/// after it, so `tier1.p` and `p` in tier `tier1` are the same policy.
fn strip_tier_prefix<'n>(d: &Doc<'_>, name: &'n str, tier: &str, tier_given: bool) -> Result<&'n str, Error> {
    let Some((prefix, rest)) = name.split_once('.') else { return Ok(name) };
    if prefix == tier {
        return Ok(rest);
    }
    let hint = if tier_given {
        format!("rename it {tier}.{rest} or set spec.tier: {prefix}")
    } else {
        format!("set spec.tier: {prefix}, or drop the dot from the name")
    };
    Err(d.err(
        "metadata.name",
        format!("name {name:?} has the tier prefix {prefix:?} but the policy is in tier {tier:?} ({hint})"),
    ))
}

fn rules(d: &Doc<'_>, v: &Value, path: &str, ctx: &Ctx<'_>) -> Result<Vec<TRule>, Error> {
    let mut out = Vec::new();
    for (i, r) in d.seq(v, path)?.iter().enumerate() {
        if let Some(rule) = rule(d, r, &index(path, i), ctx)? {
            out.push(rule);
        }
    }
    Ok(out)
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;
const UDPLITE: u8 = 136;

/// One rule; `None` when it cannot match any IPv4 packet (its `nets` were all IPv6), which is
/// how Calico renders such a rule for IPv4.
fn rule(d: &Doc<'_>, v: &Value, path: &str, ctx: &Ctx<'_>) -> Result<Option<TRule>, Error> {
    let m = d.strict_map(
        v,
        path,
        &[
            "action",
            "protocol",
            "notProtocol",
            "icmp",
            "notICMP",
            "ipVersion",
            "source",
            "destination",
            "metadata",
            "http",
        ],
    )?;
    if get(m, "http").is_some() {
        return Err(d.err(&child(path, "http"), "HTTP matches (application layer policy) are not supported"));
    }
    if let Some(meta) = get(m, "metadata") {
        let mpath = child(path, "metadata");
        let meta = d.strict_map(meta, &mpath, &["annotations"])?;
        if let Some(a) = get(meta, "annotations") {
            d.map(a, &child(&mpath, "annotations"))?;
        }
    }
    let apath = child(path, "action");
    let action = match d.str(get(m, "action").ok_or_else(|| d.err(&apath, "required"))?, &apath)? {
        "Allow" => Action::Allow,
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        "Log" => Action::Log,
        other => return Err(d.err(&apath, format!("unknown action {other:?} (expected Allow, Deny, Pass or Log)"))),
    };
    let ip_version = match get(m, "ipVersion") {
        None => None,
        Some(v) => {
            let vpath = child(path, "ipVersion");
            match d.int(v, &vpath)? {
                4 => Some(false),
                6 => Some(true),
                n => return Err(d.err(&vpath, format!("unknown IP version {n} (expected 4 or 6)"))),
            }
        }
    };
    let protocol = get(m, "protocol").map(|v| parse_protocol(d, v, &child(path, "protocol"))).transpose()?;
    let not_protocol = get(m, "notProtocol").map(|v| parse_protocol(d, v, &child(path, "notProtocol"))).transpose()?;
    let mut icmp_fields = [None, None];
    for (slot, field) in icmp_fields.iter_mut().zip(["icmp", "notICMP"]) {
        if let Some(v) = get(m, field) {
            let ipath = child(path, field);
            if protocol != Some(ICMP) && protocol != Some(ICMPV6) {
                return Err(d.err(&ipath, format!("{field} requires protocol: ICMP or ICMPv6")));
            }
            *slot = Some(icmp(d, v, &ipath)?);
        }
    }
    let [icmp, not_icmp] = icmp_fields;

    let Some(mut source) = entity(d, get(m, "source"), &child(path, "source"), ctx, false)? else { return Ok(None) };
    if let Some(v6) = ip_version {
        // Both ends of a packet are of one family: the source's address in `0.0.0.0/0` or
        // `::/0` says the packet's family, in the compiler's one way of telling addresses
        // apart (regions). Nets of the other family can never match.
        let spath = child(path, "source");
        for (field, nets) in [("nets", &source.nets), ("notNets", &source.not_nets)] {
            if let Some(c) = nets.iter().find(|c| c.is_ipv6() != v6) {
                return Err(d.err(&child(&spath, field), format!("{c} does not match ipVersion {}", if v6 { 6 } else { 4 })));
            }
        }
        if source.nets.is_empty() {
            source.nets.push(Cidr::all(v6));
        }
    }
    let dpath = child(path, "destination");
    let Some(destination) = entity(d, get(m, "destination"), &dpath, ctx, true)? else { return Ok(None) };
    if !destination.ports.is_empty() || !destination.not_ports.is_empty() {
        let field = if destination.ports.is_empty() { "notPorts" } else { "ports" };
        if !matches!(protocol, Some(TCP | UDP | SCTP)) {
            let has = match protocol {
                Some(p) => format!("protocol {}", protocol_name(p)),
                None => "no protocol".to_string(),
            };
            return Err(d.err(
                &child(&dpath, field),
                format!("ports require protocol TCP, UDP or SCTP, but the rule has {has}"),
            ));
        }
    }
    Ok(Some(TRule { action, protocol, not_protocol, icmp, not_icmp, source, destination }))
}

fn protocol_name(p: u8) -> String {
    match p {
        TCP => "TCP".into(),
        UDP => "UDP".into(),
        ICMP => "ICMP".into(),
        SCTP => "SCTP".into(),
        UDPLITE => "UDPLite".into(),
        n => n.to_string(),
    }
}

/// A protocol name (TCP, UDP, ICMP, SCTP, UDPLite; case-insensitive) or number 1..=255.
fn parse_protocol(d: &Doc<'_>, v: &Value, path: &str) -> Result<u8, Error> {
    let number = match v {
        Value::Number(_) => Some(d.int(v, path)?),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "tcp" => return Ok(TCP),
            "udp" => return Ok(UDP),
            "icmp" => return Ok(ICMP),
            "sctp" => return Ok(SCTP),
            "udplite" => return Ok(UDPLITE),
            "icmpv6" => return Ok(ICMPV6),
            _ => match s.parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    return Err(d.err(
                        path,
                        format!("unknown protocol {s:?} (expected TCP, UDP, ICMP, SCTP, UDPLite or a number 1-255)"),
                    ));
                }
            },
        },
        _ => return Err(d.err(path, "expected a protocol name or number")),
    };
    match number {
        None => Err(d.err(path, "expected a protocol name or number")),
        Some(n) => u8::try_from(n)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| d.err(path, format!("protocol number {n} is out of range 1..=255"))),
    }
}

fn icmp(d: &Doc<'_>, v: &Value, path: &str) -> Result<IcmpMatch, Error> {
    let m = d.strict_map(v, path, &["type", "code"])?;
    let tpath = child(path, "type");
    let cpath = child(path, "code");
    let Some(t) = get(m, "type") else {
        if get(m, "code").is_some() {
            return Err(d.err(&cpath, "code requires type"));
        }
        return Err(d.err(&tpath, "required"));
    };
    let t = d.int(t, &tpath)?;
    let icmp_type = u8::try_from(t)
        .ok()
        .filter(|&t| t != 255)
        .ok_or_else(|| d.err(&tpath, format!("ICMP type {t} is out of range 0..=254")))?;
    let code = match get(m, "code") {
        Some(c) => {
            let c = d.int(c, &cpath)?;
            Some(u8::try_from(c).map_err(|_| d.err(&cpath, format!("ICMP code {c} is out of range 0..=255")))?)
        }
        None => None,
    };
    Ok(IcmpMatch { icmp_type, code })
}

/// A `source` or `destination`; `None` when its `nets` are all IPv6 (no IPv4 address matches).
fn entity(
    d: &Doc<'_>,
    v: Option<&Value>,
    path: &str,
    ctx: &Ctx<'_>,
    is_destination: bool,
) -> Result<Option<EntityMatch>, Error> {
    let Some(v) = v else { return Ok(Some(EntityMatch::default())) };
    let m = d.strict_map(
        v,
        path,
        &[
            "selector",
            "notSelector",
            "namespaceSelector",
            "serviceAccounts",
            "nets",
            "notNets",
            "ports",
            "notPorts",
            "services",
        ],
    )?;
    if get(m, "services").is_some() {
        return Err(d.err(&child(path, "services"), "matching Kubernetes Services is not supported"));
    }
    if !is_destination {
        for field in ["ports", "notPorts"] {
            if get(m, field).is_some() {
                return Err(d.err(
                    &child(path, field),
                    "source ports are not supported by Bulkhead's datapath (only destination ports can be matched)",
                ));
            }
        }
    }
    let sel = |field: &str| get(m, field).map(|v| selector(d, v, &child(path, field))).transpose();
    let selector_ = sel("selector")?;
    let not_selector = sel("notSelector")?;
    let namespace_selector = sel("namespaceSelector")?;
    let service_account_selector = match get(m, "serviceAccounts") {
        Some(v) => Some(service_accounts(d, v, &child(path, "serviceAccounts"))?),
        None => None,
    };
    let namespace = match (namespace_selector, ctx.namespace) {
        (Some(s), _) => Some(NamespaceMatch::Selector(s)),
        // Namespaced policies: endpoint selectors look in the policy's own namespace.
        (None, Some(ns)) if selector_.is_some() || not_selector.is_some() || service_account_selector.is_some() => {
            Some(NamespaceMatch::Named(ns.to_string()))
        }
        (None, _) => None,
    };
    let (nets, nets_given) = parse_nets(d, get(m, "nets"), &child(path, "nets"))?;
    if nets_given && nets.is_empty() {
        return Ok(None);
    }
    let (not_nets, _) = parse_nets(d, get(m, "notNets"), &child(path, "notNets"))?;
    let ports = get(m, "ports").map(|v| parse_ports(d, v, &child(path, "ports"))).transpose()?.unwrap_or_default();
    let not_ports =
        get(m, "notPorts").map(|v| parse_ports(d, v, &child(path, "notPorts"))).transpose()?.unwrap_or_default();
    Ok(Some(EntityMatch {
        selector: selector_,
        not_selector,
        namespace,
        service_account_selector,
        nets,
        not_nets,
        ports,
        not_ports,
    }))
}

/// `serviceAccounts: {names, selector}`: both given = both must match.
fn service_accounts(d: &Doc<'_>, v: &Value, path: &str) -> Result<Selector, Error> {
    let m = d.strict_map(v, path, &["names", "selector"])?;
    let mut parts = Vec::new();
    if let Some(list) = get(m, "names") {
        let npath = child(path, "names");
        let mut names = BTreeSet::new();
        for (i, n) in d.seq(list, &npath)?.iter().enumerate() {
            let p = index(&npath, i);
            let n = d.str(n, &p)?;
            if let Some(problem) = syntax::dns_subdomain_problem(n) {
                return Err(d.err(&p, format!("invalid service account name {n:?}: {problem}")));
            }
            names.insert(n.to_string());
        }
        if !names.is_empty() {
            parts.push(Selector::In(NAME_LABEL.to_string(), names));
        }
    }
    if let Some(s) = get(m, "selector") {
        match selector(d, s, &child(path, "selector"))? {
            Selector::All => {}
            s => parts.push(s),
        }
    }
    Ok(match parts.len() {
        0 => Selector::All,
        1 => parts.pop().expect("one part"),
        _ => Selector::And(parts),
    })
}

/// IPv4 prefixes of a `nets`/`notNets` list (a bare address is a /32); IPv6 entries are
/// dropped (they match no IPv4 address). The flag tells whether the list was given non-empty.
fn parse_nets(d: &Doc<'_>, v: Option<&Value>, path: &str) -> Result<(Vec<Cidr>, bool), Error> {
    let Some(v) = v else { return Ok((Vec::new(), false)) };
    let items = d.seq(v, path)?;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let s = d.str(item, &p)?;
        let with_len = if s.contains('/') {
            s.to_string()
        } else if s.contains(':') {
            format!("{s}/128")
        } else {
            format!("{s}/32")
        };
        match super::parse_cidr(d, &with_len, &p) {
            Ok(c) => out.push(c),
            Err(_) if !s.contains('/') => return Err(d.err(&p, format!("invalid CIDR {s:?}: not an IP address"))),
            Err(e) => return Err(e),
        }
    }
    Ok((out, !items.is_empty()))
}

/// Destination `ports`/`notPorts`: numbers, `"N:M"` ranges and named ports.
fn parse_ports(d: &Doc<'_>, v: &Value, path: &str) -> Result<Vec<PortItem>, Error> {
    let mut out = Vec::new();
    for (i, item) in d.seq(v, path)?.iter().enumerate() {
        let p = index(path, i);
        out.push(match item {
            Value::String(s) => port_string(d, s, &p)?,
            _ => {
                let n = d.port(item, &p)?;
                PortItem::Range { start: n, end: n }
            }
        });
    }
    Ok(out)
}

fn port_string(d: &Doc<'_>, s: &str, path: &str) -> Result<PortItem, Error> {
    let num = |t: &str| -> Option<u16> { t.trim().parse::<u16>().ok().filter(|&n| n != 0) };
    if let Some((a, b)) = s.split_once(':') {
        let bad = |why: &str| d.err(path, format!("{s:?} is not a valid port range: {why}"));
        let (Some(start), Some(end)) = (num(a), num(b)) else {
            return Err(bad("expected N:M with ports 1-65535"));
        };
        if start > end {
            return Err(bad(&format!("{start} is greater than {end}")));
        }
        return Ok(PortItem::Range { start, end });
    }
    if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() {
        let n = num(s).ok_or_else(|| d.err(path, format!("port {s} is out of range 1..=65535")))?;
        return Ok(PortItem::Range { start: n, end: n });
    }
    if let Some(problem) = syntax::port_name_problem(s) {
        return Err(d.err(path, format!("named port {s:?} is not a valid port name: {problem}")));
    }
    Ok(PortItem::Named(s.to_string()))
}
