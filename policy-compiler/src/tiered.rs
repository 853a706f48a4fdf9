//! The one semantic model every policy kind compiles through: Calico's tiers.
//!
//! Kubernetes NetworkPolicies, Calico v3 (Global)NetworkPolicies and their staged forms,
//! AdminNetworkPolicies and the BaselineAdminNetworkPolicy are all converted into
//! [`TieredPolicy`] values placed in [`Tier`]s. Evaluation (for one endpoint and direction):
//! tiers in ascending order; only tiers holding at least one *enforced* policy that selects
//! the endpoint for that direction apply; within a tier, policies by order (missing order
//! last) then name, rules in order; the first Allow or Deny is final; Pass jumps to the next
//! applicable tier; Log records and goes on; a tier that applies but decides nothing takes its
//! default action; after all tiers, allow. Staged policies are evaluated in a second,
//! counterfactual pass ([`in_world`]) and never change a verdict: they do not make a tier
//! apply for the enforced verdict.

use std::{cmp::Ordering, collections::BTreeSet, fmt};

use crate::model::{Cidr, Labels, LabelSelector, Operator};

/// Name of the tier Kubernetes NetworkPolicies (and Calico policies without a tier) live in.
pub const DEFAULT_TIER: &str = "default";
/// Order of the default tier, as Calico gives it.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// Tier of AdminNetworkPolicies: before everything else, default Pass.
pub const ANP_TIER: &str = "adminnetworkpolicy";
pub const ANP_TIER_ORDER: f64 = 1_000.0;
/// Tier of the BaselineAdminNetworkPolicy: after the default tier, default Pass.
pub const BANP_TIER: &str = "baselineadminnetworkpolicy";
pub const BANP_TIER_ORDER: f64 = 10_000_000.0;

/// Labels a selector can be matched against: a label map, or a view that adds implicit labels
/// to one without copying it.
pub trait LabelLookup {
    /// The value of label `key`, if present.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl<L: LabelLookup + ?Sized> LabelLookup for std::sync::Arc<L> {
    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }
}

/// A pod's labels as pod selectors see them: Calico's implicit namespace and service account
/// labels over the pod's own (as [`pod_selector_labels`] makes them), without a copy.
pub struct PodLabels<'a> {
    namespace: &'a str,
    service_account: &'a str,
    labels: &'a Labels,
}

impl<'a> PodLabels<'a> {
    pub fn new(namespace: &'a str, service_account: &'a str, labels: &'a Labels) -> Self {
        PodLabels { namespace, service_account, labels }
    }

    /// Every label, implicit ones first.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        let implicit = |k: &str| k == NAMESPACE_LABEL || k == SERVICE_ACCOUNT_LABEL;
        [(NAMESPACE_LABEL, self.namespace), (SERVICE_ACCOUNT_LABEL, self.service_account)]
            .into_iter()
            .chain(self.labels.iter().filter(move |(k, _)| !implicit(k)).map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl LabelLookup for PodLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            NAMESPACE_LABEL => Some(self.namespace),
            SERVICE_ACCOUNT_LABEL => Some(self.service_account),
            _ => self.labels.label(key),
        }
    }
}

/// A namespace's or service account's labels as Calico selectors see them: the implicit name
/// label over the object's own labels (as [`namespace_selector_labels`] and
/// [`service_account_labels`] make them), without a copy.
pub struct NamedLabels<'a> {
    name: &'a str,
    labels: Option<&'a Labels>,
}

impl<'a> NamedLabels<'a> {
    /// A namespace's: its labels and its name.
    pub fn namespace(name: &'a str, labels: &'a Labels) -> Self {
        NamedLabels { name, labels: Some(labels) }
    }

    /// A service account's: the model knows its name only.
    pub fn service_account(name: &'a str) -> Self {
        NamedLabels { name, labels: None }
    }
}

impl LabelLookup for NamedLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        if key == NAME_LABEL { Some(self.name) } else { self.labels.and_then(|l| l.label(key)) }
    }
}

/// A Calico selector expression (the full grammar). Kubernetes label selectors convert into it.
/// Semantics follow Calico: `k == v` and `k in {..}` are false when `k` is missing; `k != v`
/// and `k not in {..}` are true when it is missing; string operators are false when missing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// `all()`, also the empty selector.
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Contains(String, String),
    StartsWith(String, String),
    EndsWith(String, String),
    Not(Box<Selector>),
    And(Vec<Selector>),
    Or(Vec<Selector>),
}

impl Selector {
    /// Whether the labels satisfy the expression.
    pub fn matches<L: LabelLookup + ?Sized>(&self, labels: &L) -> bool {
        let get = |k: &String| labels.label(k);
        match self {
            Selector::All => true,
            Selector::Has(k) => get(k).is_some(),
            Selector::Eq(k, v) => get(k) == Some(v.as_str()),
            Selector::Ne(k, v) => get(k) != Some(v.as_str()),
            Selector::In(k, vs) => get(k).is_some_and(|v| vs.contains(v)),
            Selector::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(v)),
            Selector::Contains(k, s) => get(k).is_some_and(|v| v.contains(s.as_str())),
            Selector::StartsWith(k, s) => get(k).is_some_and(|v| v.starts_with(s.as_str())),
            Selector::EndsWith(k, s) => get(k).is_some_and(|v| v.ends_with(s.as_str())),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(v) => v.iter().all(|s| s.matches(labels)),
            Selector::Or(v) => v.iter().any(|s| s.matches(labels)),
        }
    }

    /// The Kubernetes label selector as an expression (same meaning).
    pub fn from_label_selector(s: &LabelSelector) -> Selector {
        let mut parts: Vec<Selector> =
            s.match_labels.iter().map(|(k, v)| Selector::Eq(k.clone(), v.clone())).collect();
        for r in &s.match_expressions {
            parts.push(match &r.operator {
                Operator::In(vs) => Selector::In(r.key.clone(), vs.clone()),
                Operator::NotIn(vs) => Selector::NotIn(r.key.clone(), vs.clone()),
                Operator::Exists => Selector::Has(r.key.clone()),
                Operator::DoesNotExist => Selector::Not(Box::new(Selector::Has(r.key.clone()))),
            });
        }
        match parts.len() {
            0 => Selector::All,
            1 => parts.pop().expect("one element"),
            _ => Selector::And(parts),
        }
    }
}

/// What a tier does with traffic none of its rules decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TierDefault {
    Deny,
    Pass,
}

/// A tier. Order `None` sorts after every number (Calico's nil order); ties by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tier {
    pub name: String,
    pub order: Option<Order>,
    pub default_action: TierDefault,
    /// Blast-radius guard: only cluster-scoped policies (GlobalNetworkPolicy, ANP, BANP) may be
    /// placed in this tier; the model builder rejects a namespaced policy here. Set by the
    /// annotation `bulkhead.io/cluster-scoped-only: "true"` on the Tier.
    pub cluster_scoped_only: bool,
}

/// A Calico order (float64), totally ordered so models can be compared and sorted.
#[derive(Clone, Copy, Debug)]
pub struct Order(pub f64);

impl PartialEq for Order {
    fn eq(&self, o: &Self) -> bool {
        self.0.total_cmp(&o.0) == Ordering::Equal
    }
}
impl Eq for Order {}
impl PartialOrd for Order {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Order {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}
impl std::hash::Hash for Order {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.to_bits().hash(h)
    }
}

/// Total order of optional orders: numbers ascending, then `None` (Calico's nil order).
pub fn cmp_order(a: Option<Order>, b: Option<Order>) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Where a policy came from; part of its identity (a staged and an enforced policy may share a
/// name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    KubernetesNetworkPolicy,
    CalicoNetworkPolicy,
    CalicoGlobalNetworkPolicy,
    StagedNetworkPolicy,
    StagedGlobalNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl PolicyKind {
    /// Staged policies are evaluated only in the counterfactual pass.
    pub fn is_staged(self) -> bool {
        matches!(self, PolicyKind::StagedNetworkPolicy | PolicyKind::StagedGlobalNetworkPolicy)
    }
    /// Namespaced kinds select endpoints of their own namespace only, whatever the selector.
    pub fn is_namespaced(self) -> bool {
        matches!(
            self,
            PolicyKind::KubernetesNetworkPolicy | PolicyKind::CalicoNetworkPolicy | PolicyKind::StagedNetworkPolicy
        )
    }
    /// The kind as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::KubernetesNetworkPolicy => "NetworkPolicy (networking.k8s.io)",
            PolicyKind::CalicoNetworkPolicy => "NetworkPolicy",
            PolicyKind::CalicoGlobalNetworkPolicy => "GlobalNetworkPolicy",
            PolicyKind::StagedNetworkPolicy => "StagedNetworkPolicy",
            PolicyKind::StagedGlobalNetworkPolicy => "StagedGlobalNetworkPolicy",
            PolicyKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            PolicyKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }
}

/// Identity of a policy: kind, namespace (namespaced kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind.as_str(), ns, self.name),
            None => write!(f, "{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// A rule's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    Deny,
    /// Skip the rest of this tier; evaluation continues in the next applicable tier.
    Pass,
    /// Record the packet (flow event) and go on with the next rule.
    Log,
}

/// ICMP type, optionally with a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    pub code: Option<u8>,
}

/// A port, a range or a named port (resolved on the endpoint that owns the port: the
/// destination of the packet).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortItem {
    Range { start: u16, end: u16 },
    Named(String),
}

/// Which namespaces a rule's `selector` looks in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NamespaceMatch {
    /// Namespaces whose labels match (Calico `namespaceSelector`, K8s/ANP namespace peers).
    Selector(Selector),
    /// Only this namespace (the policy's own, for namespaced policies).
    Named(String),
}

/// One side (source or destination) of a rule. Every field given must match (AND). A field
/// that constrains endpoint labels (`selector`, `not_selector`, `namespace`,
/// `service_account_selector`) never matches an address that is not a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntityMatch {
    pub selector: Option<Selector>,
    pub not_selector: Option<Selector>,
    pub namespace: Option<NamespaceMatch>,
    pub service_account_selector: Option<Selector>,
    /// The address is in one of these (empty = no constraint).
    pub nets: Vec<Cidr>,
    /// The address is in none of these.
    pub not_nets: Vec<Cidr>,
    /// Destination side: the destination port is one of these (empty = no constraint).
    pub ports: Vec<PortItem>,
    pub not_ports: Vec<PortItem>,
}

/// A rule: action plus match criteria. Protocol numbers are IANA numbers (6 TCP, 17 UDP,
/// 1 ICMP, 132 SCTP, ...); ports require TCP, UDP or SCTP.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TRule {
    pub action: Action,
    pub protocol: Option<u8>,
    pub not_protocol: Option<u8>,
    pub icmp: Option<IcmpMatch>,
    pub not_icmp: Option<IcmpMatch>,
    pub source: EntityMatch,
    pub destination: EntityMatch,
}

/// A policy in the tiered model.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TieredPolicy {
    pub id: PolicyId,
    pub tier: String,
    /// Order within the tier (ANP: priority); `None` sorts last; ties by name.
    pub order: Option<Order>,
    /// Endpoints the policy applies to (labels of the pod, plus the implicit
    /// `projectcalico.org/namespace` and `projectcalico.org/serviceaccount` labels). For
    /// namespaced kinds the compiler also requires the endpoint to be in `id.namespace`.
    pub selector: Selector,
    /// Endpoints whose namespace's labels match (Calico GNP `namespaceSelector`, ANP subject).
    pub namespace_selector: Option<Selector>,
    /// Endpoints whose service account matches (labels of the service account; the implicit
    /// `projectcalico.org/name` label carries its name).
    pub service_account_selector: Option<Selector>,
    /// `None` = the policy does not apply to this direction (not in `types`).
    pub ingress: Option<Vec<TRule>>,
    pub egress: Option<Vec<TRule>>,
}

// ---- Evaluation order helpers (shared by the compiler, the reference evaluator and explain).

impl Tier {
    /// The built-in tier of this name, if it is one (`default`, ANP, BANP).
    pub fn builtin(name: &str) -> Option<Tier> {
        let (order, default_action) = match name {
            DEFAULT_TIER => (DEFAULT_TIER_ORDER, TierDefault::Deny),
            ANP_TIER => (ANP_TIER_ORDER, TierDefault::Pass),
            BANP_TIER => (BANP_TIER_ORDER, TierDefault::Pass),
            _ => return None,
        };
        Some(Tier { name: name.to_string(), order: Some(Order(order)), default_action, cluster_scoped_only: false })
    }

    /// Evaluation order of tiers: order ascending (`None` last), then name.
    pub fn eval_cmp(&self, other: &Tier) -> Ordering {
        cmp_order(self.order, other.order).then_with(|| self.name.cmp(&other.name))
    }
}

impl TieredPolicy {
    /// Evaluation order within a tier: order ascending (`None` last), then name; the full id
    /// breaks the remaining ties (same name in different namespaces or kinds) deterministically.
    pub fn eval_cmp(&self, other: &TieredPolicy) -> Ordering {
        cmp_order(self.order, other.order)
            .then_with(|| self.id.name.cmp(&other.id.name))
            .then_with(|| self.id.cmp(&other.id))
    }

    /// The rules of one direction (`ingress == true`: ingress), if the policy has it.
    pub fn rules(&self, ingress: bool) -> Option<&[TRule]> {
        if ingress { self.ingress.as_deref() } else { self.egress.as_deref() }
    }
}

/// The tiers of a model in evaluation order: `model.tiers` plus the built-in tiers it does not
/// override.
pub fn effective_tiers(model: &crate::model::Model) -> Vec<Tier> {
    let mut out: Vec<Tier> = model.tiers.values().cloned().collect();
    for name in [DEFAULT_TIER, ANP_TIER, BANP_TIER] {
        if !model.tiers.contains_key(name) {
            out.push(Tier::builtin(name).expect("built-in tier"));
        }
    }
    out.sort_by(|a, b| a.eval_cmp(b));
    out
}

/// Implicit labels Calico adds to a pod's labels.
pub const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
pub const SERVICE_ACCOUNT_LABEL: &str = "projectcalico.org/serviceaccount";
/// Implicit name label of namespaces and service accounts.
pub const NAME_LABEL: &str = "projectcalico.org/name";

/// A pod's labels as Calico selectors see them (with the implicit namespace and service
/// account labels).
pub fn pod_selector_labels(labels: &Labels, namespace: &str, service_account: &str) -> Labels {
    let mut l = labels.clone();
    l.insert(NAMESPACE_LABEL.to_string(), namespace.to_string());
    l.insert(SERVICE_ACCOUNT_LABEL.to_string(), service_account.to_string());
    l
}

/// A namespace's labels as Calico namespace selectors see them.
pub fn namespace_selector_labels(labels: &Labels, namespace: &str) -> Labels {
    let mut l = labels.clone();
    l.insert(NAME_LABEL.to_string(), namespace.to_string());
    l
}

/// A service account's labels (the model has none but its name).
pub fn service_account_labels(service_account: &str) -> Labels {
    [(NAME_LABEL.to_string(), service_account.to_string())].into()
}

impl IcmpMatch {
    /// The policy-port interval (`type << 8 | code`) this matches.
    pub fn port_interval(&self) -> (u16, u16) {
        let t = u16::from(self.icmp_type) << 8;
        match self.code {
            Some(c) => (t | u16::from(c), t | u16::from(c)),
            None => (t, t | 0xff),
        }
    }
}

impl PolicyId {
    /// The staged kind's id of an enforced Calico policy (its counterpart in the staged
    /// world), or `None` for kinds that have no staged form here.
    pub fn staged_counterpart(&self) -> Option<PolicyId> {
        let kind = match self.kind {
            PolicyKind::CalicoGlobalNetworkPolicy => PolicyKind::StagedGlobalNetworkPolicy,
            PolicyKind::CalicoNetworkPolicy => PolicyKind::StagedNetworkPolicy,
            _ => return None,
        };
        Some(PolicyId { kind, namespace: self.namespace.clone(), name: self.name.clone() })
    }
}

/// Whether `policy` takes part in an evaluation. The enforced world has every enforced
/// policy and no staged one. The staged (counterfactual) world is "what if the staged policies
/// were enforced": staged policies take part (and so can make their tier apply), and an
/// enforced policy with a staged counterpart of the same name is replaced by it.
pub fn in_world(model: &crate::model::Model, policy: &PolicyId, staged_world: bool) -> bool {
    if !staged_world {
        return !policy.kind.is_staged();
    }
    policy.kind.is_staged() || policy.staged_counterpart().is_none_or(|c| !model.tiered.contains_key(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_views_answer_as_the_copied_maps_do() {
        // Own labels that collide with the implicit ones must be hidden by them, as the copies
        // overwrite them.
        let own: Labels = [(NAMESPACE_LABEL, "spoof"), (SERVICE_ACCOUNT_LABEL, "spoof"), (NAME_LABEL, "spoof"), ("app", "web")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let keys = [NAMESPACE_LABEL, SERVICE_ACCOUNT_LABEL, NAME_LABEL, "app", "absent"];
        let pod_copy = pod_selector_labels(&own, "ns1", "sa1");
        let pod_view = PodLabels::new("ns1", "sa1", &own);
        let ns_copy = namespace_selector_labels(&own, "ns1");
        let ns_view = NamedLabels::namespace("ns1", &own);
        let sa_copy = service_account_labels("sa1");
        let sa_view = NamedLabels::service_account("sa1");
        for k in keys {
            assert_eq!(pod_view.label(k), pod_copy.label(k), "pod label {k}");
            assert_eq!(ns_view.label(k), ns_copy.label(k), "namespace label {k}");
            assert_eq!(sa_view.label(k), sa_copy.label(k), "service account label {k}");
        }
        let listed: Labels = pod_view.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(listed, pod_copy, "the pod view lists what the copy holds");
        assert_eq!(pod_view.iter().count(), pod_copy.len(), "each label once");
    }
}
