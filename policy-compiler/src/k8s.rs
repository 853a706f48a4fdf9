//! Kubernetes YAML (Namespace, Pod, networking.k8s.io/v1 NetworkPolicy; Calico v3 Tier,
//! (Staged)(Global)NetworkPolicy; policy.networking.k8s.io/v1alpha1 (Baseline)AdminNetworkPolicy)
//! -> domain model.
//!
//! NetworkPolicy specs are read strictly (unknown fields are errors, so a typo cannot silently
//! widen or narrow a policy); Pods are read leniently (only the fields policy needs). Every
//! error names the file, the document and the field path.

mod anp;
mod calico;
mod syntax;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::error::{DocumentRef, Error, Origin};
use crate::tiered::{PolicyId, PolicyKind, Tier, TieredPolicy};
use crate::model::{
    Cidr, IpBlock, LabelSelector, Model, NamedPort, Namespace, NamespaceScope, NetworkPolicy, Operator, Peer, Peers,
    Pod, PodRef, PolicyRef, PortMatch, PortSpec, Ports, Protocol, Requirement, Rule, Shared,
};
use syntax::{Doc, child, get, index};

/// Annotation carrying the pod's host-side interface name.
pub const INTERFACE_ANNOTATION: &str = "bulkhead.io/interface";

/// Label every namespace carries with its own name (added when a manifest omits it, as the
/// API server does).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// API group/version of Calico's resources.
pub const CALICO_API_VERSION: &str = "projectcalico.org/v3";
/// API group/version of AdminNetworkPolicy and BaselineAdminNetworkPolicy.
pub const ANP_API_VERSION: &str = "policy.networking.k8s.io/v1alpha1";
/// Tier annotation setting [`Tier::cluster_scoped_only`].
pub const CLUSTER_SCOPED_ONLY_ANNOTATION: &str = "bulkhead.io/cluster-scoped-only";

/// A parsed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    /// Shared, so the models built from one parse hold the very same pod.
    Pod(Shared<Pod>),
    NetworkPolicy(NetworkPolicy),
    /// A Calico `Tier`.
    Tier(Tier),
    /// A Calico (staged) (global) network policy, an AdminNetworkPolicy or the
    /// BaselineAdminNetworkPolicy.
    Tiered(TieredPolicy),
}

/// A parsed object and where it came from (so duplicates can name both places).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub origin: Origin,
    pub object: Object,
}

/// Whether [`parse_documents`] handles this apiVersion/kind.
pub fn is_supported(api_version: &str, kind: &str) -> bool {
    matches!((api_version, kind), ("v1", "Namespace") | ("v1", "Pod") | ("networking.k8s.io/v1", "NetworkPolicy"))
        || (api_version == CALICO_API_VERSION && (kind == "Tier" || calico_kind(kind).is_some()))
        || (api_version == ANP_API_VERSION && anp_kind(kind).is_some())
}

fn calico_kind(kind: &str) -> Option<PolicyKind> {
    Some(match kind {
        "NetworkPolicy" => PolicyKind::CalicoNetworkPolicy,
        "GlobalNetworkPolicy" => PolicyKind::CalicoGlobalNetworkPolicy,
        "StagedNetworkPolicy" => PolicyKind::StagedNetworkPolicy,
        "StagedGlobalNetworkPolicy" => PolicyKind::StagedGlobalNetworkPolicy,
        _ => return None,
    })
}

fn anp_kind(kind: &str) -> Option<PolicyKind> {
    Some(match kind {
        "AdminNetworkPolicy" => PolicyKind::AdminNetworkPolicy,
        "BaselineAdminNetworkPolicy" => PolicyKind::BaselineAdminNetworkPolicy,
        _ => return None,
    })
}

/// Kinds without a namespace (the rest, supported or not, are named with one in errors).
pub fn is_cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace"
            | "Tier"
            | "GlobalNetworkPolicy"
            | "StagedGlobalNetworkPolicy"
            | "AdminNetworkPolicy"
            | "BaselineAdminNetworkPolicy"
            | "GlobalNetworkSet"
            | "HostEndpoint"
            | "Node"
    )
}

/// Parses a multi-document YAML text. Empty documents are skipped; document numbers in
/// errors and origins are 1-based positions in the file. A resource of another kind is an
/// [`Error::UnsupportedKind`], so callers can choose to report and skip it.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Resource>, Error> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = i + 1;
        let value = Value::deserialize(de)
            .map_err(|e| Error::Yaml { file: file.to_string(), document: number, message: e.to_string() })?;
        if value.is_null() || belongs_to_another_component(&value) {
            continue;
        }
        let object = parse_document(file, number, &value)?;
        out.push(Resource { origin: Origin { file: file.to_string(), document: number }, object });
    }
    Ok(out)
}

/// Kinds other Bulkhead components keep in the same datastore folder (fw-sync's
/// AddressGroups, the detector's DetectorPolicies, the agents' Quarantines): not network policy,
/// so skipped here rather than reported as unsupported; their own reader validates them.
pub const OTHER_COMPONENT_KINDS: [(&str, &str); 3] =
    [("bulkhead.io/v1alpha1", "AddressGroup"), ("bulkhead.io/v1alpha1", "DetectorPolicy"), ("bulkhead.io/v1alpha1", "Quarantine")];

fn belongs_to_another_component(value: &Value) -> bool {
    let field = |k: &str| get_str(value, k);
    OTHER_COMPONENT_KINDS.iter().any(|(a, k)| field("apiVersion") == Some(*a) && field("kind") == Some(*k))
}

fn get_str<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.as_mapping()?.get(key)?.as_str()
}

fn parse_document(file: &str, number: usize, value: &Value) -> Result<Object, Error> {
    let mut d = Doc { file, doc: DocumentRef { index: number, ..Default::default() } };
    let top = d.map(value, "")?;
    let api_version = d.str(get(top, "apiVersion").ok_or_else(|| d.err("apiVersion", "required"))?, "apiVersion")?;
    let kind = d.str(get(top, "kind").ok_or_else(|| d.err("kind", "required"))?, "kind")?;
    d.doc.kind = Some(kind.to_string());
    let meta = get(top, "metadata").map(|m| d.map(m, "metadata")).transpose()?;
    // Name and namespace are read before validation so every later error can name the object.
    d.doc.name = meta.and_then(|m| get(m, "name")).and_then(Value::as_str).map(String::from);
    let namespaced = !is_cluster_scoped(kind);
    if namespaced {
        let ns = meta.and_then(|m| get(m, "namespace")).and_then(Value::as_str).unwrap_or("default");
        d.doc.namespace = Some(ns.to_string());
    }
    if !is_supported(api_version, kind) {
        return Err(Error::UnsupportedKind {
            file: file.to_string(),
            document: Box::new(d.doc.clone()),
            api_version: api_version.to_string(),
            kind: kind.to_string(),
        });
    }
    let meta = meta.ok_or_else(|| d.err("metadata", "required"))?;
    let name = d.str(get(meta, "name").ok_or_else(|| d.err("metadata.name", "required"))?, "metadata.name")?;
    let namespace = match get(meta, "namespace") {
        Some(v) if namespaced => d.str(v, "metadata.namespace")?,
        Some(_) if kind != "Namespace" => {
            return Err(d.err("metadata.namespace", format!("{kind} is cluster-scoped: remove metadata.namespace")));
        }
        _ => "default",
    };
    let name_problem = match kind {
        "Namespace" | "Tier" => syntax::dns_label_problem(name),
        _ => syntax::dns_subdomain_problem(name),
    };
    if let Some(problem) = name_problem {
        return Err(d.err("metadata.name", format!("invalid name {name:?}: {problem}")));
    }
    if let Some(problem) = syntax::dns_label_problem(namespace) {
        return Err(d.err("metadata.namespace", format!("invalid namespace {namespace:?}: {problem}")));
    }
    let labels = get(meta, "labels").map(|l| d.labels(l, "metadata.labels")).transpose()?.unwrap_or_default();
    match kind {
        "Namespace" => {
            let mut labels = labels;
            labels.entry(NAMESPACE_NAME_LABEL.to_string()).or_insert_with(|| name.to_string());
            Ok(Object::Namespace(Namespace { name: name.to_string(), labels }))
        }
        "Pod" => parse_pod(&d, top, meta, namespace, name, labels).map(|p| Object::Pod(p.into())),
        _ if api_version == CALICO_API_VERSION && kind == "Tier" => calico::parse_tier(&d, top, meta, name).map(Object::Tier),
        _ if api_version == CALICO_API_VERSION => {
            let kind = calico_kind(kind).expect("supported Calico kind");
            let namespace = kind.is_namespaced().then_some(namespace);
            calico::parse_policy(&d, top, kind, namespace, name).map(Object::Tiered)
        }
        _ if api_version == ANP_API_VERSION => {
            let kind = anp_kind(kind).expect("supported ANP kind");
            anp::parse_policy(&d, top, kind, name).map(Object::Tiered)
        }
        _ => parse_policy(&d, top, namespace, name).map(Object::NetworkPolicy),
    }
}

fn parse_pod(
    d: &Doc<'_>,
    top: &Mapping,
    meta: &Mapping,
    namespace: &str,
    name: &str,
    labels: crate::model::Labels,
) -> Result<Pod, Error> {
    let interface = match get(meta, "annotations") {
        Some(a) => {
            let a = d.map(a, "metadata.annotations")?;
            let path = format!("metadata.annotations[{INTERFACE_ANNOTATION:?}]");
            get(a, INTERFACE_ANNOTATION).map(|v| d.str(v, &path).map(String::from)).transpose()?
        }
        None => None,
    };
    let empty = Mapping::new();
    let spec = get(top, "spec").map(|s| d.map(s, "spec")).transpose()?.unwrap_or(&empty);
    let service_account = match get(spec, "serviceAccountName") {
        Some(v) => d.str(v, "spec.serviceAccountName")?.to_string(),
        None => "default".to_string(),
    };
    let mut ports = Vec::new();
    let mut names = BTreeSet::new();
    if let Some(containers) = get(spec, "containers") {
        for (ci, c) in d.seq(containers, "spec.containers")?.iter().enumerate() {
            let cpath = index("spec.containers", ci);
            let c = d.map(c, &cpath)?;
            let Some(list) = get(c, "ports") else { continue };
            let ppath = child(&cpath, "ports");
            for (pi, p) in d.seq(list, &ppath)?.iter().enumerate() {
                let path = index(&ppath, pi);
                let p = d.map(p, &path)?;
                let port_path = child(&path, "containerPort");
                let port = d.port(get(p, "containerPort").ok_or_else(|| d.err(&port_path, "required"))?, &port_path)?;
                let protocol = protocol(d, p, &path)?;
                let name = match get(p, "name") {
                    Some(v) => {
                        let npath = child(&path, "name");
                        let n = d.str(v, &npath)?;
                        if let Some(problem) = syntax::port_name_problem(n) {
                            return Err(d.err(&npath, format!("port name {n:?} is not valid: {problem}")));
                        }
                        if !names.insert(n.to_string()) {
                            return Err(d.err(&npath, format!("port name {n:?} is used twice in the pod")));
                        }
                        Some(n.to_string())
                    }
                    None => None,
                };
                ports.push(NamedPort { name, port, protocol });
            }
        }
    }
    let host_network = get(spec, "hostNetwork").and_then(Value::as_bool).unwrap_or(false);
    let (ip, ip6) = if host_network { (None, None) } else { pod_ip(d, top)? };
    Ok(Pod {
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels,
        service_account,
        ip,
        ip6,
        ports,
        interface,
    })
}

/// The pod's IPv4 and IPv6 addresses (the first of each family in `status.podIP` and
/// `status.podIPs`). Host-network pods (no own address) and terminated pods (whose address
/// may already belong to another pod) have none for policy purposes.
fn pod_ip(d: &Doc<'_>, top: &Mapping) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), Error> {
    let Some(status) = get(top, "status") else { return Ok((None, None)) };
    let status = d.map(status, "status")?;
    if let Some(phase) = get(status, "phase").and_then(Value::as_str)
        && matches!(phase, "Succeeded" | "Failed")
    {
        return Ok((None, None));
    }
    let mut candidates = Vec::new();
    if let Some(v) = get(status, "podIP") {
        candidates.push((d.str(v, "status.podIP")?, "status.podIP".to_string()));
    }
    if let Some(list) = get(status, "podIPs") {
        for (i, item) in d.seq(list, "status.podIPs")?.iter().enumerate() {
            let path = index("status.podIPs", i);
            let item = d.map(item, &path)?;
            if let Some(v) = get(item, "ip") {
                let path = child(&path, "ip");
                candidates.push((d.str(v, &path)?, path));
            }
        }
    }
    // Dual-stack pods list both families.
    let (mut v4, mut v6) = (None, None);
    for (s, path) in candidates {
        match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => {
                v4.get_or_insert(a);
            }
            Ok(IpAddr::V6(a)) => {
                v6.get_or_insert(a);
            }
            Err(_) => return Err(d.err(&path, format!("{s:?} is not an IP address"))),
        }
    }
    Ok((v4, v6))
}

fn protocol(d: &Doc<'_>, m: &Mapping, path: &str) -> Result<Protocol, Error> {
    let Some(v) = get(m, "protocol") else { return Ok(Protocol::Tcp) };
    let path = child(path, "protocol");
    let s = d.str(v, &path)?;
    Protocol::from_k8s(s).ok_or_else(|| d.err(&path, format!("unknown protocol {s:?} (expected TCP, UDP or SCTP)")))
}

fn parse_policy(d: &Doc<'_>, top: &Mapping, namespace: &str, name: &str) -> Result<NetworkPolicy, Error> {
    let spec = get(top, "spec").ok_or_else(|| d.err("spec", "required"))?;
    let spec = d.strict_map(spec, "spec", &["podSelector", "ingress", "egress", "policyTypes"])?;
    let pod_selector = match get(spec, "podSelector") {
        Some(v) => selector(d, v, "spec.podSelector")?,
        None => LabelSelector::everything(),
    };
    let ingress = get(spec, "ingress").map(|v| rules(d, v, "spec.ingress", "from")).transpose()?;
    let egress = get(spec, "egress").map(|v| rules(d, v, "spec.egress", "to")).transpose()?;
    let (mut wants_ingress, mut wants_egress) = (false, false);
    if let Some(types) = get(spec, "policyTypes") {
        for (i, t) in d.seq(types, "spec.policyTypes")?.iter().enumerate() {
            let path = index("spec.policyTypes", i);
            match d.str(t, &path)? {
                "Ingress" => wants_ingress = true,
                "Egress" => wants_egress = true,
                other => return Err(d.err(&path, format!("unknown policy type {other:?} (expected Ingress or Egress)"))),
            }
        }
    }
    if !wants_ingress && !wants_egress {
        // Upstream defaulting: Ingress always, Egress when there are egress rules.
        wants_ingress = true;
        wants_egress = egress.as_ref().is_some_and(|e| !e.is_empty());
    }
    Ok(NetworkPolicy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        pod_selector,
        ingress: wants_ingress.then(|| ingress.unwrap_or_default()),
        egress: wants_egress.then(|| egress.unwrap_or_default()),
    })
}

fn rules(d: &Doc<'_>, v: &Value, path: &str, peers_field: &str) -> Result<Vec<Rule>, Error> {
    let mut out = Vec::new();
    for (i, r) in d.seq(v, path)?.iter().enumerate() {
        let rpath = index(path, i);
        let r = d.strict_map(r, &rpath, &[peers_field, "ports"])?;
        let peers = match get(r, peers_field) {
            Some(list) => {
                let ppath = child(&rpath, peers_field);
                let items = d.seq(list, &ppath)?;
                if items.is_empty() {
                    Peers::Any
                } else {
                    let mut peers = Vec::new();
                    for (j, p) in items.iter().enumerate() {
                        peers.extend(peer(d, p, &index(&ppath, j))?);
                    }
                    Peers::List(peers)
                }
            }
            None => Peers::Any,
        };
        let ports = match get(r, "ports") {
            Some(list) => {
                let ppath = child(&rpath, "ports");
                let items = d.seq(list, &ppath)?;
                if items.is_empty() {
                    Ports::Any
                } else {
                    Ports::List(items.iter().enumerate().map(|(j, p)| port(d, p, &index(&ppath, j))).collect::<Result<_, _>>()?)
                }
            }
            None => Ports::Any,
        };
        out.push(Rule { peers, ports });
    }
    Ok(out)
}

/// One peer; `None` for an IPv6 ipBlock, which no IPv4 address can match.
fn peer(d: &Doc<'_>, v: &Value, path: &str) -> Result<Option<Peer>, Error> {
    let m = d.strict_map(v, path, &["podSelector", "namespaceSelector", "ipBlock"])?;
    let pods = get(m, "podSelector").map(|s| selector(d, s, &child(path, "podSelector"))).transpose()?;
    let namespaces = get(m, "namespaceSelector").map(|s| selector(d, s, &child(path, "namespaceSelector"))).transpose()?;
    if let Some(block) = get(m, "ipBlock") {
        if pods.is_some() || namespaces.is_some() {
            return Err(d.err(path, "ipBlock cannot be combined with podSelector or namespaceSelector"));
        }
        return ip_block(d, block, &child(path, "ipBlock")).map(|b| b.map(Peer::IpBlock));
    }
    match (pods, namespaces) {
        (None, None) => Err(d.err(path, "a peer must set podSelector, namespaceSelector or ipBlock")),
        (pods, None) => Ok(Some(Peer::Pods { namespaces: NamespaceScope::Own, pods: pods.unwrap_or_default() })),
        (pods, Some(ns)) => Ok(Some(Peer::Pods { namespaces: NamespaceScope::Matching(ns), pods: pods.unwrap_or_default() })),
    }
}

fn parse_cidr(d: &Doc<'_>, s: &str, path: &str) -> Result<Cidr, Error> {
    let bad = |why: &str| d.err(path, format!("invalid CIDR {s:?}: {why}"));
    let (addr, len) = s.split_once('/').ok_or_else(|| bad("expected address/prefix-length"))?;
    let len: u8 = len.parse().map_err(|_| bad("prefix length is not a number"))?;
    let a: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
    if a.is_ipv4() && len > 32 {
        return Err(bad("IPv4 prefix length must be at most 32"));
    }
    if len > 128 {
        return Err(bad("IPv6 prefix length must be at most 128"));
    }
    Cidr::new(a, len).ok_or_else(|| bad(&format!("host bits are set (did you mean {}?)", Cidr::containing(a, len))))
}

fn family(c: Cidr) -> &'static str {
    if c.is_ipv6() { "IPv6" } else { "IPv4" }
}

fn ip_block(d: &Doc<'_>, v: &Value, path: &str) -> Result<Option<IpBlock>, Error> {
    let m = d.strict_map(v, path, &["cidr", "except"])?;
    let cpath = child(path, "cidr");
    let cidr = parse_cidr(d, d.str(get(m, "cidr").ok_or_else(|| d.err(&cpath, "required"))?, &cpath)?, &cpath)?;
    let mut except = Vec::new();
    if let Some(list) = get(m, "except") {
        let epath = child(path, "except");
        for (i, e) in d.seq(list, &epath)?.iter().enumerate() {
            let p = index(&epath, i);
            let s = d.str(e, &p)?;
            let e = parse_cidr(d, s, &p)?;
            if e.is_ipv6() != cidr.is_ipv6() {
                return Err(d.err(&p, format!("except {s:?} is {} but cidr {cidr} is {}", family(e), family(cidr))));
            }
            if !(e.prefix_len() > cidr.prefix_len() && cidr.contains(e)) {
                return Err(d.err(&p, format!("except {s:?} must be strictly inside cidr")));
            }
            except.push(e);
        }
    }
    Ok(Some(IpBlock { cidr, except }))
}

fn port(d: &Doc<'_>, v: &Value, path: &str) -> Result<PortSpec, Error> {
    let m = d.strict_map(v, path, &["protocol", "port", "endPort"])?;
    let protocol = protocol(d, m, path)?;
    let ppath = child(path, "port");
    let epath = child(path, "endPort");
    let port = match get(m, "port") {
        None => {
            if get(m, "endPort").is_some() {
                return Err(d.err(&epath, "endPort requires a numeric port"));
            }
            PortMatch::All
        }
        Some(Value::String(name)) => {
            if let Some(problem) = syntax::port_name_problem(name) {
                return Err(d.err(&ppath, format!("named port {name:?} is not a valid port name: {problem}")));
            }
            if get(m, "endPort").is_some() {
                return Err(d.err(&epath, "endPort requires a numeric port, not a named one"));
            }
            PortMatch::Named(name.clone())
        }
        Some(v) => {
            let start = d.port(v, &ppath)?;
            let end = match get(m, "endPort") {
                Some(e) => {
                    let end = d.port(e, &epath)?;
                    if end < start {
                        return Err(d.err(&epath, format!("endPort {end} is less than port {start}")));
                    }
                    end
                }
                None => start,
            };
            PortMatch::Range { start, end }
        }
    };
    Ok(PortSpec { protocol, port })
}

fn selector(d: &Doc<'_>, v: &Value, path: &str) -> Result<LabelSelector, Error> {
    let m = d.strict_map(v, path, &["matchLabels", "matchExpressions"])?;
    let match_labels = get(m, "matchLabels").map(|l| d.labels(l, &child(path, "matchLabels"))).transpose()?.unwrap_or_default();
    let mut match_expressions = Vec::new();
    if let Some(list) = get(m, "matchExpressions") {
        let epath = child(path, "matchExpressions");
        for (i, e) in d.seq(list, &epath)?.iter().enumerate() {
            match_expressions.push(requirement(d, e, &index(&epath, i))?);
        }
    }
    Ok(LabelSelector { match_labels, match_expressions })
}

fn requirement(d: &Doc<'_>, v: &Value, path: &str) -> Result<Requirement, Error> {
    let m = d.strict_map(v, path, &["key", "operator", "values"])?;
    let kpath = child(path, "key");
    let key = d.str(get(m, "key").ok_or_else(|| d.err(&kpath, "required"))?, &kpath)?;
    if let Some(problem) = syntax::label_key_problem(key) {
        return Err(d.err(&kpath, format!("invalid label key {key:?}: {problem}")));
    }
    let opath = child(path, "operator");
    let op = d.str(get(m, "operator").ok_or_else(|| d.err(&opath, "required"))?, &opath)?;
    let vpath = child(path, "values");
    let mut values = BTreeSet::new();
    if let Some(list) = get(m, "values") {
        for (i, v) in d.seq(list, &vpath)?.iter().enumerate() {
            let p = index(&vpath, i);
            let s = d.str(v, &p)?;
            if let Some(problem) = syntax::label_value_problem(s) {
                return Err(d.err(&p, format!("invalid label value {s:?}: {problem}")));
            }
            values.insert(s.to_string());
        }
    }
    let operator = match op {
        "In" | "NotIn" if values.is_empty() => {
            return Err(d.err(&vpath, format!("operator {op} needs at least one value")));
        }
        "In" => Operator::In(values),
        "NotIn" => Operator::NotIn(values),
        "Exists" | "DoesNotExist" if !values.is_empty() => {
            return Err(d.err(&vpath, format!("operator {op} takes no values")));
        }
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(d.err(&opath, format!("unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)")));
        }
    };
    Ok(Requirement { key: key.to_string(), operator })
}

/// Builds a model, rejecting objects defined twice (naming both places), pods and namespaced
/// Calico policies in namespaces that are not defined, tiered policies in tiers that do not
/// exist, and namespaced policies in tiers reserved for cluster-scoped ones.
pub fn build_model(resources: impl IntoIterator<Item = Resource>) -> Result<Model, Error> {
    let mut model = Model::default();
    let mut ns_origin: BTreeMap<String, Origin> = BTreeMap::new();
    let mut pod_origin: BTreeMap<PodRef, Origin> = BTreeMap::new();
    let mut policy_origin: BTreeMap<PolicyRef, Origin> = BTreeMap::new();
    let mut tier_origin: BTreeMap<String, Origin> = BTreeMap::new();
    let mut tiered_origin: BTreeMap<PolicyId, Origin> = BTreeMap::new();
    let dup = |kind, name: String, first: &Origin, second: Origin| Error::Duplicate { kind, name, first: first.clone(), second };
    for Resource { origin, object } in resources {
        match object {
            Object::Namespace(ns) => {
                if let Some(first) = ns_origin.get(&ns.name) {
                    return Err(dup("Namespace", ns.name, first, origin));
                }
                ns_origin.insert(ns.name.clone(), origin);
                model.upsert_namespace(ns);
            }
            Object::Pod(pod) => {
                let r = pod.pod_ref();
                if let Some(first) = pod_origin.get(&r) {
                    return Err(dup("Pod", r.to_string(), first, origin));
                }
                pod_origin.insert(r, origin);
                model.upsert_pod(pod);
            }
            Object::NetworkPolicy(p) => {
                let r = p.policy_ref();
                if let Some(first) = policy_origin.get(&r) {
                    return Err(dup("NetworkPolicy", r.to_string(), first, origin));
                }
                policy_origin.insert(r, origin);
                model.upsert_policy(p);
            }
            Object::Tier(t) => {
                if let Some(first) = tier_origin.get(&t.name) {
                    return Err(dup("Tier", t.name, first, origin));
                }
                tier_origin.insert(t.name.clone(), origin);
                model.tiers.insert(t.name.clone(), t);
            }
            Object::Tiered(p) => {
                if let Some(first) = tiered_origin.get(&p.id) {
                    let name = match &p.id.namespace {
                        Some(ns) => format!("{ns}/{}", p.id.name),
                        None => p.id.name.clone(),
                    };
                    return Err(dup(p.id.kind.as_str(), name, first, origin));
                }
                tiered_origin.insert(p.id.clone(), origin);
                model.tiered.insert(p.id.clone(), p);
            }
        }
    }
    for (id, p) in &model.tiered {
        let origin = || tiered_origin.get(id).cloned().expect("every tiered policy has an origin");
        let cluster_scoped_only = match model.tiers.get(&p.tier) {
            Some(t) => t.cluster_scoped_only,
            None if calico::builtin_tier(&p.tier).is_some() => false,
            None => return Err(Error::UnknownTier { policy: id.to_string(), tier: p.tier.clone(), origin: origin() }),
        };
        if let Some(ns) = &id.namespace {
            if cluster_scoped_only {
                return Err(Error::NamespacedPolicyInClusterTier {
                    policy: id.to_string(),
                    tier: p.tier.clone(),
                    origin: origin(),
                });
            }
            if !model.namespaces.contains_key(ns) {
                return Err(Error::MissingPolicyNamespace { policy: id.to_string(), namespace: ns.clone(), origin: origin() });
            }
        }
    }
    for (r, pod) in &model.pods {
        if !model.namespaces.contains_key(&pod.namespace) {
            return Err(Error::MissingNamespace {
                pod: r.clone(),
                namespace: pod.namespace.clone(),
                origin: pod_origin.get(r).cloned(),
            });
        }
    }
    Ok(model)
}

#[cfg(test)]
#[path = "k8s_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "k8s/tiered_tests.rs"]
mod tiered_tests;
