//! The compiler's own policy model: namespaces, pods and network policies as domain values.
//!
//! Nothing here knows about YAML or the Kubernetes wire format (that is [`crate::k8s`]), and
//! nothing here knows about BPF maps (that is [`crate::compile`]). Invalid states that the
//! wire format can express (an `In` operator without values, an `endPort` on a named port) are
//! made unrepresentable here instead, so the compiler never has to re-validate them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bulkhead_common::proto;

/// Label map of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// Everything the compiler needs to know about a cluster.
///
/// Namespaces and pods are [`Shared`]: a clone of a model shares them until either copy
/// changes them, and a [`crate::Compiler`] that sees the same ones as in its previous compile
/// reuses what it derived from them (identities, address owners, selection indexes) instead
/// of visiting every pod again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// Keyed by namespace name.
    pub namespaces: Shared<BTreeMap<String, Namespace>>,
    /// Each pod is shared too: a datastore that hands out the pod it parsed once (the
    /// Kubernetes watcher keeps each object's parse until the object changes) makes an
    /// unchanged pod the very same one in the next model, which the compiler tells at once
    /// instead of comparing its fields.
    pub pods: Pods,
    pub policies: BTreeMap<PolicyRef, NetworkPolicy>,
    /// Calico tiers by name (the built-in `default`, ANP and BANP tiers are implicit and need
    /// not be listed).
    pub tiers: BTreeMap<String, crate::tiered::Tier>,
    /// Policies of the tiered kinds (Calico, staged, ANP, BANP). Kubernetes NetworkPolicies
    /// stay in `policies` and are converted when compiling.
    pub tiered: BTreeMap<crate::tiered::PolicyId, crate::tiered::TieredPolicy>,
}

impl Model {
    /// Inserts or replaces a namespace under its own name.
    pub fn upsert_namespace(&mut self, namespace: Namespace) {
        self.namespaces.insert(namespace.name.clone(), namespace);
    }

    /// Inserts or replaces a pod under its own namespace/name.
    pub fn upsert_pod(&mut self, pod: impl Into<Shared<Pod>>) {
        let pod = pod.into();
        self.pods.insert(pod.pod_ref(), pod);
    }

    /// Inserts or replaces a policy under its own namespace/name.
    pub fn upsert_policy(&mut self, policy: NetworkPolicy) {
        self.policies.insert(policy.policy_ref(), policy);
    }

    /// The pod owning `ip` (either family), if any (see [`Model::ip_owners`]).
    pub fn pod_by_ip(&self, ip: impl Into<IpAddr>) -> Option<&Pod> {
        let ip = ip.into();
        // The first claim in PodRef order, as ip_owners decides.
        self.pods.values().find(|p| p.addrs().any(|a| a == ip)).map(|p| &**p)
    }

    /// Which pod owns each pod address. When several pods claim one address (a stale
    /// status), the first in [`PodRef`] order keeps it: the one rule for the compiler's IP
    /// cache, fw-sync's address groups and [`Model::pod_by_ip`], so the dataplane and the
    /// firewalls agree on who an address is.
    /// Both families: a dual-stack pod owns (or loses) each of its addresses on its own.
    pub fn ip_owners(&self) -> std::collections::HashMap<IpAddr, &PodRef> {
        let mut owners = std::collections::HashMap::with_capacity(self.pods.len());
        for (r, p) in &self.pods {
            for ip in p.addrs() {
                owners.entry(ip).or_insert(r);
            }
        }
        owners
    }
}

/// The pods of a model by namespace/name.
pub type Pods = Shared<BTreeMap<PodRef, Shared<Pod>>>;

/// A part of a model shared by reference and copied on write: reading goes through
/// [`Deref`](std::ops::Deref); any mutable access ([`DerefMut`](std::ops::DerefMut)) first
/// copies the contents if another holder shares them. So two holders of the
/// [`Shared::same`] value hold equal contents, whoever changed what since: the compiler keeps a
/// holder of what it last compiled and skips the work on parts that are still the same.
#[derive(Clone, Debug, Default, Eq)]
pub struct Shared<T>(std::sync::Arc<T>);

impl<T: PartialEq> PartialEq for Shared<T> {
    /// The very same contents are equal without a look at them.
    fn eq(&self, other: &Self) -> bool {
        Shared::same(self, other) || *self.0 == *other.0
    }
}

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Shared(std::sync::Arc::new(value))
    }

    /// Whether both hold the very same contents (not merely equal ones).
    pub fn same(a: &Shared<T>, b: &Shared<T>) -> bool {
        std::sync::Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T> AsRef<T> for Shared<T> {
    fn as_ref(&self) -> &T {
        &self.0
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Shared::new(value)
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> std::ops::DerefMut for Shared<T> {
    /// Copies the contents first when they are shared, so no other holder sees the change.
    fn deref_mut(&mut self) -> &mut T {
        std::sync::Arc::make_mut(&mut self.0)
    }
}

impl<'a, T> IntoIterator for &'a Shared<T>
where
    &'a T: IntoIterator,
{
    type Item = <&'a T as IntoIterator>::Item;
    type IntoIter = <&'a T as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        (&*self.0).into_iter()
    }
}

/// Namespace and name of a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// Namespace and name of a network policy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PodRef { namespace: namespace.into(), name: name.into() }
    }
}

impl PolicyRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        PolicyRef { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A namespace and its labels (including `kubernetes.io/metadata.name`, which the wire
/// conversion adds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// Transport protocols a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// IP protocol number, as used in policy keys.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proto::TCP,
            Protocol::Udp => proto::UDP,
            Protocol::Sctp => proto::SCTP,
        }
    }

    /// Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Parses the Kubernetes spelling, which is case-sensitive upstream.
    pub fn from_k8s(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container port of a pod; named ones are what named policy ports resolve against.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub service_account: String,
    /// `None` while the pod has no address (pending) or is not enforceable (host network,
    /// terminated); such pods are ignored by the compiler.
    pub ip: Option<Ipv4Addr>,
    /// The pod's IPv6 address (`status.podIPs` of a dual-stack or IPv6-only pod).
    pub ip6: Option<Ipv6Addr>,
    pub ports: Vec<NamedPort>,
    /// Host-side veth name (annotation `bulkhead.io/interface`), carried through for the agent.
    pub interface: Option<String>,
}

impl Pod {
    pub fn pod_ref(&self) -> PodRef {
        PodRef::new(&self.namespace, &self.name)
    }

    /// The pod's addresses, IPv4 first.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ip.map(IpAddr::V4).into_iter().chain(self.ip6.map(IpAddr::V6))
    }

    /// Resolves a named port the way upstream does: same name and same protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        resolve_named_port(&self.ports, name, protocol)
    }
}

/// Named-port resolution shared by pods and identities (which carry the same port list).
pub(crate) fn resolve_named_port(ports: &[NamedPort], name: &str, protocol: Protocol) -> Option<u16> {
    ports
        .iter()
        .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
        .map(|p| p.port)
}

/// A label selector. The empty selector selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
}

/// Selector operators; the value sets live inside the operators that need them, so an `In`
/// without values cannot be built (the wire conversion rejects it with a field path).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// The selector `{}`, which selects everything.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            // Upstream: NotIn also matches objects that lack the key.
            Operator::NotIn(values) => value.is_none_or(|v| !values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A Kubernetes NetworkPolicy (networking.k8s.io/v1) in domain form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    /// Selects pods of `namespace` only.
    pub pod_selector: LabelSelector,
    /// `None`: the policy does not affect ingress (policyTypes lacks `Ingress`).
    /// `Some(rules)`: selected pods are isolated for ingress and `rules` are the allows;
    /// `Some(vec![])` allows nothing.
    pub ingress: Option<Vec<Rule>>,
    /// Same as `ingress`, for egress.
    pub egress: Option<Vec<Rule>>,
}

impl NetworkPolicy {
    pub fn policy_ref(&self) -> PolicyRef {
        PolicyRef::new(&self.namespace, &self.name)
    }
}

/// One ingress or egress rule: traffic matching any peer and any port is allowed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub peers: Peers,
    pub ports: Ports,
}

/// The `from`/`to` of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peers {
    /// `from`/`to` missing or empty: every address, pods or not.
    Any,
    /// Any of these peers. An empty list matches nothing (the wire conversion never produces
    /// one from an empty `from`, which means `Any`; it can result from dropping IPv6 blocks).
    List(Vec<Peer>),
}

/// One `from`/`to` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Pods matching `pods` in the namespaces `namespaces` designates.
    Pods { namespaces: NamespaceScope, pods: LabelSelector },
    /// Addresses in the block, pod addresses included.
    IpBlock(IpBlock),
}

/// Which namespaces a pod peer looks in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceScope {
    /// The policy's own namespace (a `podSelector` without `namespaceSelector`).
    Own,
    /// Namespaces whose labels match.
    Matching(LabelSelector),
}

/// An `ipBlock`: `cidr` minus the `except` prefixes (each inside `cidr`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IpBlock {
    pub cidr: Cidr,
    pub except: Vec<Cidr>,
}

impl IpBlock {
    pub fn contains(&self, ip: impl Into<IpAddr>) -> bool {
        let ip = ip.into();
        self.cidr.contains_addr(ip) && !self.except.iter().any(|e| e.contains_addr(ip))
    }
}

/// The `ports` of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ports {
    /// `ports` missing or empty: every protocol and port.
    Any,
    /// Any of these.
    List(Vec<PortSpec>),
}

/// One `ports` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortMatch,
}

/// The port part of a `ports` entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// No `port`: every port of the protocol.
    All,
    /// `port` and `endPort`, inclusive; a single port has `start == end`.
    Range { start: u16, end: u16 },
    /// A container port name, resolved on the destination pod.
    Named(String),
}

/// An IPv4 or IPv6 prefix with its host bits zero. Prefixes of one family never contain an
/// address or prefix of the other (an IPv4 block never matches IPv6 traffic, as upstream).
/// IPv4 sorts before IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// `None` if `len` exceeds the family's width or host bits are set: a prefix must be
    /// written canonically so that two spellings of one block cannot get two identities.
    pub fn new(addr: impl Into<IpAddr>, len: u8) -> Option<Self> {
        let addr = addr.into();
        if len > max_len(addr) || bits(addr) & !mask(addr, len) != 0 {
            return None;
        }
        Some(Cidr { addr, len })
    }

    /// The prefix of length `len` (at most the family's width) containing `ip`.
    pub fn containing(ip: impl Into<IpAddr>, len: u8) -> Self {
        let ip = ip.into();
        let len = len.min(max_len(ip));
        Cidr { addr: from_bits(ip, bits(ip) & mask(ip, len)), len }
    }

    /// `0.0.0.0/0` or `::/0`: every address of a family.
    pub fn all(v6: bool) -> Self {
        if v6 { Cidr { addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED), len: 0 } } else { Cidr { addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED), len: 0 } }
    }

    pub fn addr(self) -> IpAddr {
        self.addr
    }

    pub fn is_ipv6(self) -> bool {
        self.addr.is_ipv6()
    }

    /// Prefix length.
    pub fn prefix_len(self) -> u8 {
        self.len
    }

    /// First and last address, as integers of the prefix's family.
    pub fn range(self) -> (u128, u128) {
        let start = bits(self.addr);
        (start, start | (!mask(self.addr, self.len) & family_max(self.addr)))
    }

    pub fn contains_addr(self, ip: impl Into<IpAddr>) -> bool {
        let ip = ip.into();
        ip.is_ipv6() == self.addr.is_ipv6() && bits(ip) & mask(ip, self.len) == bits(self.addr)
    }

    /// Whether `other` lies inside (or equals) `self`.
    pub fn contains(self, other: Cidr) -> bool {
        other.len >= self.len && self.contains_addr(other.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn max_len(a: IpAddr) -> u8 {
    if a.is_ipv6() { 128 } else { 32 }
}

fn bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn family_max(a: IpAddr) -> u128 {
    if a.is_ipv6() { u128::MAX } else { u128::from(u32::MAX) }
}

fn from_bits(like: IpAddr, b: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(b as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(b)),
    }
}

/// The network mask of a `len`-bit prefix in `a`'s family, as an integer of that family.
fn mask(a: IpAddr, len: u8) -> u128 {
    let w = u32::from(max_len(a));
    let len = u32::from(len.min(max_len(a)));
    if len == 0 { 0 } else { (u128::MAX << (128 - len)) >> (128 - w) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, operator: Operator) -> Requirement {
        Requirement { key: key.into(), operator }
    }

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_selector_selects_everything() {
        assert!(LabelSelector::everything().matches(&Labels::new()), "{{}} must select unlabelled");
        assert!(LabelSelector::everything().matches(&labels(&[("a", "b")])), "{{}} must select all");
    }

    #[test]
    fn selector_operators_follow_upstream() {
        let l = labels(&[("app", "web"), ("tier", "fe")]);
        let cases = [
            (Operator::In(set(&["web", "db"])), "app", true),
            (Operator::In(set(&["db"])), "app", false),
            (Operator::In(set(&["web"])), "missing", false),
            (Operator::NotIn(set(&["db"])), "app", true),
            (Operator::NotIn(set(&["web"])), "app", false),
            (Operator::NotIn(set(&["web"])), "missing", true),
            (Operator::Exists, "tier", true),
            (Operator::Exists, "missing", false),
            (Operator::DoesNotExist, "missing", true),
            (Operator::DoesNotExist, "tier", false),
        ];
        for (op, key, want) in cases {
            let r = req(key, op.clone());
            assert_eq!(r.matches(&l), want, "{key} {op:?} on {l:?}");
        }
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![req("tier", Operator::Exists)],
        };
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "x")])), "both hold");
        assert!(!sel.matches(&labels(&[("app", "web")])), "expression fails");
        assert!(!sel.matches(&labels(&[("app", "db"), ("tier", "x")])), "matchLabels fails");
    }

    #[test]
    fn cidr_rejects_host_bits_and_contains() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("test address");
        assert!(Cidr::new(ip("10.0.0.1"), 24).is_none(), "host bits set must be rejected");
        assert!(Cidr::new(ip("10.0.0.0"), 33).is_none(), "length > 32 must be rejected");
        let c = Cidr::new(ip("10.0.0.0"), 24).expect("canonical");
        assert!(c.contains_addr(ip("10.0.0.255")) && !c.contains_addr(ip("10.0.1.0")));
        assert!(c.contains(Cidr::containing(ip("10.0.0.7"), 30)), "nested prefix");
        assert!(!Cidr::containing(ip("10.0.0.7"), 30).contains(c), "not the other way");
        let all = Cidr::new(ip("0.0.0.0"), 0).expect("default route");
        assert!(all.contains(c) && all.contains_addr(ip("255.255.255.255")));
        assert_eq!(all.range(), (0, u128::from(u32::MAX)));
        let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("test address");
        let b = Cidr::new(v6("fd00:10:240::"), 48).expect("canonical v6");
        assert!(Cidr::new(v6("fd00:10:240::1"), 48).is_none(), "v6 host bits");
        assert!(Cidr::new(v6("fd00::"), 129).is_none(), "v6 length > 128");
        assert!(b.contains_addr(v6("fd00:10:240:2::11")) && !b.contains_addr(v6("fd00:10:241::1")));
        assert!(!all.contains_addr(v6("::1")) && !all.contains(b), "an IPv4 prefix holds no IPv6 address");
        assert!(!Cidr::all(true).contains_addr(ip("10.0.0.1")) && Cidr::all(true).contains(b), "and the reverse");
        assert_eq!(Cidr::containing(v6("fd00:10:240:2::11"), 64).to_string(), "fd00:10:240:2::/64");
        assert_eq!(b.range().1, u128::from(v6("fd00:10:240:ffff:ffff:ffff:ffff:ffff")));
    }
}
