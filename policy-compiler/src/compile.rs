//! Model -> BPF map entries.
//!
//! Every policy kind is compiled through the tiered model ([`crate::tiered`]); Kubernetes
//! NetworkPolicies are converted first ([`crate::knp`]). The output is shaped by the datapath
//! ([`crate::lookup`]): one ipcache lookup gives the peer's single identity, then the peer
//! slot (local, peer, direction) or else (local, any peer, direction) names a verdict table,
//! and the table's slice for the protocol (or any protocol) is the complete verdict. The
//! compiler guarantees that:
//!
//! - every table covers every protocol and all 65536 ports, so the first slot hit answers;
//! - a (local, direction) with any slot has its any-peer slot;
//! - tables are shared by content, so a local identity holds one entry per peer its policy
//!   tells apart, and the ports and protocols of a verdict function are laid out once.
//!
//! How: per local identity L and direction D, the ordered rules of the applicable tiers are
//! split into the local side (a constant for L) and the remote side (a predicate over peer
//! identities, stored as baseline answer + deviating identities). A peer's signature is the
//! set of rules whose remote side it answers differently from the baseline address (plus, for
//! egress named ports, its port numbers); each distinct signature is evaluated once over a
//! partition of (protocol, port) space into cells, with the full tier semantics, and emitted
//! as merged port intervals split into aligned prefixes. Peers whose function equals the
//! baseline's use the any-peer entries.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bulkhead_common::{
    IpInfoV3, NO_POLICY, PolicyValueV2, capacity, ep_flags,
};

use crate::error::Error;
use crate::fasthash::{HashMap, HashSet};
use crate::identity::IdentityAllocator;
use crate::knp;
use crate::pods::{self, Patch, PodCache};
use crate::reuse::{Kept, LocalOut, Matches, Member};
use crate::verdicts::{Prep, RulePreds, TierRef, emit_identity};
use crate::model::{Cidr, Model, PodRef};
use crate::classes::{Ctx, Tables, peer_classes};
use crate::select::Universe;
use crate::tiered::{PolicyId, TieredPolicy, effective_tiers};

/// `tier_index` of a verdict no tier decided (no applicable tier denied or decided: allow).
pub const NO_TIER: u16 = u16::MAX;

/// Map capacities the compiler must stay within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Per policy map: enforced and staged peer slots together, and the tables' slice and
    /// port entries each.
    pub max_policy_entries: usize,
    pub max_ipcache_entries: usize,
}

impl Limits {
    /// What one policy generation may hold: both generations share each map while the agent
    /// switches between them, so a compile may fill half of it.
    pub fn per_generation() -> Self {
        let all = Limits::default();
        Limits { max_policy_entries: all.max_policy_entries / 2, max_ipcache_entries: all.max_ipcache_entries / 2 }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_policy_entries: capacity::POLICY as usize, max_ipcache_entries: capacity::IPCACHE as usize }
    }
}

/// What the agent writes into the endpoint map for one pod (it keys the map by the ifindex of
/// `interface`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    /// The identity of the pod's IPv4 address: the local side of its IPv4 traffic's keys
    /// (`identity6` for an IPv6-only pod, which has no IPv4 traffic).
    pub identity: u32,
    /// The identity of its IPv6 address (equal to `identity` unless a policy prefix tells
    /// the two addresses apart; `identity` when the pod has no IPv6 address).
    pub identity6: u32,
    /// [`ep_flags`] bits.
    pub flags: u32,
    /// `None` for an IPv6-only pod.
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    pub interface: Option<String>,
}

/// A peer slot: (local identity, peer identity or [`identity::ANY`], [`direction`]).
pub type PeerSlot = (u32, u32, u8);

/// Merged port intervals covering 0..=65535, each with its verdict.
pub type Segs = Vec<(u16, u16, PolicyValueV2)>;

/// A verdict table: the complete verdict function of a class of peers for one local identity
/// and direction, over protocols and ports. Shared by content between every slot with the
/// same function.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VerdictTable {
    /// The verdict for every protocol not listed, at every port.
    pub other: PolicyValueV2,
    /// Protocols whose function differs from `other`.
    pub per_proto: Vec<(u8, Segs)>,
}

/// One row of the policy table (`policy_index` -> policy).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicyEntry {
    pub id: PolicyId,
    pub tier: String,
    pub staged: bool,
}

/// The compiled content of every map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub endpoints: BTreeMap<PodRef, EndpointEntry>,
    /// (network address, prefix length) -> identity, both families. Pods as /32 or /128,
    /// CIDR regions as their prefix; `::/0` for IPv6 addresses in no region.
    /// Shared with the previous compile's when unchanged.
    pub ipcache: crate::model::Shared<BTreeMap<(IpAddr, u8), IpInfoV3>>,
    /// Enforced verdicts: the table judging each peer slot.
    pub policy: BTreeMap<PeerSlot, u32>,
    /// Counterfactual verdicts (staged policies as if enforced), for endpoints flagged
    /// [`ep_flags::HAS_STAGED`] only.
    pub staged: BTreeMap<PeerSlot, u32>,
    /// Every table a slot names, by number (numbers follow the content, so an unchanged
    /// function keeps its number across compiles).
    pub tables: BTreeMap<u32, VerdictTable>,
    /// `policy_index` -> policy (enforced and staged). Indexes are stable across compiles; a
    /// removed policy's slot is taken by the last one (the table stays dense).
    pub policy_table: Vec<PolicyEntry>,
    /// `tier_index` -> tier name, stable across compiles the same way.
    pub tier_table: Vec<String>,
    /// Human-readable reports of what did not fit (and which endpoints fail closed for it).
    pub overflow: Vec<String>,
    /// The policy laid out as the kernel reads it, built on first use ([`Compiled::layout`]).
    pub layout_cache: LayoutCache,
}

/// A lazily built [`crate::layout::PolicyLayout`]; derived data, so it never makes two
/// compiles unequal.
#[derive(Clone, Debug, Default)]
pub struct LayoutCache(std::sync::OnceLock<crate::layout::PolicyLayout>);

impl PartialEq for LayoutCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LayoutCache {}

impl Compiled {
    /// The enforced and staged policy as the kernel's maps hold them (slices, port and range
    /// exceptions): what the agent writes, and what [`crate::lookup`] and `explain` read, so
    /// user space and the kernel share one lookup over one layout.
    pub fn layout(&self) -> &crate::layout::PolicyLayout {
        self.layout_cache.0.get_or_init(|| crate::layout::layout(&self.policy, &self.staged, &self.tables))
    }

    /// The endpoint that owns `ip`.
    pub fn endpoint_by_ip(&self, ip: impl Into<IpAddr>) -> Option<(&PodRef, &EndpointEntry)> {
        let ip = ip.into();
        self.endpoints.iter().find(|(_, e)| e.ip.map(IpAddr::V4) == Some(ip) || e.ip6.map(IpAddr::V6) == Some(ip))
    }

    /// The policy table row of `index`, unless it is [`NO_POLICY`] or out of range.
    pub fn policy_entry(&self, index: u32) -> Option<&PolicyEntry> {
        if index == NO_POLICY { None } else { self.policy_table.get(index as usize) }
    }

    /// The tier name of `index`, unless it is [`NO_TIER`] or out of range.
    pub fn tier_name(&self, index: u16) -> Option<&str> {
        if index == NO_TIER { None } else { self.tier_table.get(usize::from(index)).map(String::as_str) }
    }
}

/// Which endpoints a compile writes policy for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every pod with an address (offline tools, `explain` over a whole model, tests).
    #[default]
    Cluster,
    /// Only pods placed on this node (those with an `interface`): what an agent enforces.
    /// Every pod stays a peer (ipcache), but policy entries exist for local identities only,
    /// so a node holds entries for its own endpoints, not the cluster's (as Cilium keeps one
    /// policy map per local endpoint). Namespaced policies of namespaces without a local pod,
    /// and NetworkPolicies selecting none of its pods, are skipped whole: not converted, no
    /// policy slot, their prefixes no regions.
    Node,
}

/// A node's local namespaces, with the pods they were read from.
/// A node's own pods as (namespace, service account, labels), with their namespaces.
type LocalNamespaces = (crate::model::Pods, HashSet<String>, Vec<(String, String, crate::model::Labels)>);

/// What a compile did with the pod side (identities, address owners, selection index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodSideUse {
    /// Built from every pod.
    Built,
    /// The previous one, brought up to changed pods whose identities all existed already.
    Patched,
    /// The previous one as it was (pods, namespaces and policy prefixes the same).
    Kept,
}

/// Compiles models into map contents, keeping identity numbers, policy and tier indexes
/// across calls so that small model changes produce small map changes.
#[derive(Debug)]
pub struct Compiler {
    limits: Limits,
    scope: Scope,
    /// NetworkPolicy -> its tiered form, from the previous compile (reused when unchanged).
    knp_cache: HashMap<crate::model::PolicyRef, std::sync::Arc<(crate::model::NetworkPolicy, knp::Converted)>>,
    identities: IdentityAllocator,
    policy_slots: Slots<PolicyId>,
    tier_slots: Slots<String>,
    /// The pod side of the previous compile, reused while pods, namespaces and prefixes stay.
    pod_cache: Option<PodCache>,
    /// Each local identity's verdicts from the previous compile, and the tables they name.
    kept: Kept,
    tables: Tables,
    /// What the last compile did with the pod side, and how many local identities' verdicts
    /// it reused.
    reused: (PodSideUse, usize),
    /// On a node: the namespaces of its own pods, with the pods they were read from.
    local_namespaces: Option<LocalNamespaces>,
    /// The last peer classes, with the local identities (in compile order) whose verdicts
    /// they were made from; reused while every one of those verdicts is kept (a replica added
    /// elsewhere) and nothing overflowed.
    classes: Option<(Vec<u32>, crate::classes::ClassedSlots)>,
}

impl Default for Compiler {
    fn default() -> Self {
        Compiler::new(Limits::default())
    }
}

/// Stable dense indexes. A removed key's slot is filled by the last key (`swap_remove`), so a
/// deletion renumbers one other key at most.
#[derive(Debug)]
struct Slots<K> {
    table: Vec<K>,
    index: HashMap<K, u32>,
}

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Slots { table: Vec::new(), index: HashMap::default() }
    }
}

impl<K: Clone + Eq + Hash> Slots<K> {
    fn sync<'a>(&mut self, live: impl IntoIterator<Item = &'a K>)
    where
        K: 'a,
    {
        let live: Vec<&K> = live.into_iter().collect();
        let set: HashSet<&K> = live.iter().copied().collect();
        let mut i = 0;
        while i < self.table.len() {
            if set.contains(&self.table[i]) {
                i += 1;
                continue;
            }
            let gone = self.table.swap_remove(i);
            self.index.remove(&gone);
            if let Some(moved) = self.table.get(i) {
                self.index.insert(moved.clone(), i as u32);
            }
        }
        for k in live {
            if !self.index.contains_key(k) {
                self.index.insert(k.clone(), self.table.len() as u32);
                self.table.push(k.clone());
            }
        }
    }
}


impl Compiler {
    pub fn new(limits: Limits) -> Self {
        Compiler {
            limits,
            scope: Scope::Cluster,
            knp_cache: HashMap::default(),
            identities: IdentityAllocator::new(),
            policy_slots: Slots::default(),
            tier_slots: Slots::default(),
            pod_cache: None,
            kept: Kept::default(),
            tables: Tables::default(),
            reused: (PodSideUse::Built, 0),
            local_namespaces: None,
            classes: None,
        }
    }

    /// A compiler for one node's agent ([`Scope::Node`]).
    pub fn for_node(limits: Limits) -> Self {
        Compiler { scope: Scope::Node, ..Compiler::new(limits) }
    }

    /// What the last compile reused: the pod side (identities, owners, selection index), and
    /// the verdicts of how many local identities.
    pub fn reused(&self) -> (PodSideUse, usize) {
        self.reused
    }

    /// Whether the kept pod side was derived from the very pods `m` holds.
    #[cfg(test)]
    pub(crate) fn holds_pods_of(&self, m: &Model) -> bool {
        self.pod_cache.as_ref().is_some_and(|c| c.holds_pods_of(m))
    }

    /// Forgets the work kept for reuse (not the numbering): the next compile starts afresh.
    #[cfg(test)]
    pub(crate) fn forget(&mut self) {
        self.pod_cache = None;
        self.kept = Kept::default();
        self.classes = None;
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Compiles `model`. Identity numbers and policy/tier indexes of unchanged things are kept
    /// from the previous call.
    pub fn compile(&mut self, model: &Model) -> Result<Compiled, Error> {
        check_policies(model)?;
        let tiers = effective_tiers(model);
        let tier_pos: HashMap<&str, usize> = tiers.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        for p in model.tiered.values() {
            if !tier_pos.contains_key(p.tier.as_str()) {
                return Err(Error::InconsistentModel { what: "tier of policy", key: p.id.to_string(), actual: p.tier.clone() });
            }
        }
        // On a node, a namespaced policy of a namespace without a local pod selects nothing
        // compiled here: it is neither converted nor given a slot, and the prefixes its rules
        // name are no regions here.
        // Kept while the pods are the same (a pass over every pod otherwise).
        if self.scope == Scope::Node && !self.local_namespaces.as_ref().is_some_and(|(pods, _, _)| crate::model::Shared::same(pods, &model.pods)) {
            let pods: Vec<(String, String, crate::model::Labels)> = model
                .pods
                .values()
                .filter(|p| p.interface.is_some())
                .map(|p| (p.namespace.clone(), p.service_account.clone(), p.labels.clone()))
                .collect();
            let namespaces = pods.iter().map(|p| p.0.clone()).collect();
            self.local_namespaces = Some((model.pods.clone(), namespaces, pods));
        }
        let local_namespaces: Option<&HashSet<String>> = self.local_namespaces.as_ref().map(|(_, l, _)| l);
        let concerns = |namespace: Option<&str>| match (local_namespaces, namespace) {
            (Some(local), Some(ns)) => local.contains(ns),
            _ => true,
        };
        // On a node, a NetworkPolicy selecting none of its pods is skipped the same way (most
        // of a namespace's policies select other workloads' pods): its selection is the pods of
        // its namespace its pod selector matches, which the node's few pods answer at once.
        let local_pods = self.local_namespaces.as_ref().map(|(_, _, pods)| pods.as_slice());
        let selects_local = |p: &crate::model::NetworkPolicy| match local_pods {
            None => true,
            Some(pods) => {
                let selector = crate::tiered::Selector::from_label_selector(&p.pod_selector);
                pods.iter().any(|(ns, sa, labels)| *ns == p.namespace && selector.matches(&crate::tiered::PodLabels::new(ns, sa, labels)))
            }
        };
        // Conversions of unchanged NetworkPolicies are kept from the previous compile.
        let mut cache = std::mem::take(&mut self.knp_cache);
        let converted: Vec<(&crate::model::PolicyRef, std::sync::Arc<(crate::model::NetworkPolicy, knp::Converted)>)> = model
            .policies
            .iter()
            .filter(|(_, p)| concerns(Some(&p.namespace)) && selects_local(p))
            .map(|(r, p)| match cache.remove(r) {
                Some(c) if c.0 == *p => (r, c),
                _ => (r, std::sync::Arc::new((p.clone(), knp::convert(p)))),
            })
            .collect();
        self.knp_cache = converted.iter().map(|(r, c)| ((*r).clone(), c.clone())).collect();
        drop(cache);
        let mut sources: Vec<(&TieredPolicy, Option<&knp::Converted>)> = converted
            .iter()
            .map(|(_, c)| (&c.1.policy, Some(&c.1)))
            .chain(
                model.tiered.values().filter(|p| !p.id.kind.is_namespaced() || concerns(p.id.namespace.as_deref())).map(|p| (p, None)),
            )
            .collect();
        sources.sort_by(|a, b| tier_pos[a.0.tier.as_str()].cmp(&tier_pos[b.0.tier.as_str()]).then_with(|| a.0.eval_cmp(b.0)));

        let mut ids: Vec<&PolicyId> = sources.iter().map(|(p, _)| &p.id).collect();
        ids.sort();
        self.policy_slots.sync(ids);
        let mut tier_names: Vec<&String> = tiers.iter().map(|t| &t.name).collect();
        tier_names.sort();
        self.tier_slots.sync(tier_names);

        // CIDR regions: every prefix any policy names.
        let mut prefixes: BTreeSet<Cidr> = BTreeSet::new();
        for (p, _) in &sources {
            for r in p.ingress.iter().flatten().chain(p.egress.iter().flatten()) {
                for e in [&r.source, &r.destination] {
                    prefixes.extend(e.nets.iter().chain(&e.not_nets).copied());
                }
            }
        }
        self.reused = (PodSideUse::Kept, 0);
        let side = match PodCache::hit(&self.pod_cache, model, &prefixes) {
            Some(side) => side,
            None => {
                let node = self.scope == Scope::Node;
                let patched = self.pod_cache.as_ref().and_then(|c| c.patch(model, &prefixes, node, &self.identities));
                match (patched, self.pod_cache.take()) {
                    (Some(Patch::Unchanged), Some(mut old)) => {
                        old.adopt(model);
                        let side = old.side();
                        self.pod_cache = Some(old);
                        side
                    }
                    (Some(Patch::Changed(side)), Some(old)) => {
                        self.reused.0 = PodSideUse::Patched;
                        let side = std::sync::Arc::new(side);
                        self.pod_cache = Some(old.patched(model, prefixes, side.clone()));
                        side
                    }
                    (_, old) => {
                        // Dropped first: the build holds a second pod side at its peak.
                        drop(old);
                        self.reused.0 = PodSideUse::Built;
                        let side = std::sync::Arc::new(pods::build(model, &prefixes, node, &mut self.identities)?);
                        self.pod_cache = Some(PodCache::new(model, prefixes, side.clone()));
                        side
                    }
                }
            }
        };
        let attrs_by_id = &side.attrs_by_id;
        let regions = &side.regions;
        let mut uni = Universe::new(side.index.clone());

        // Per-policy preparation; `by_local`: local identity -> policies selecting it, in
        // evaluation order.
        let mut preps: Vec<Prep<'_>> = Vec::with_capacity(sources.len());
        let mut by_local: HashMap<u32, Vec<usize>> = HashMap::default();
        for &(policy, knp) in &sources {
            let index = self.policy_slots.index[&policy.id];
            // A policy selecting no identity compiled for has no entries: its rules' peer
            // predicates (a scan of the peers each) are not worth building.
            let selected = uni.selected(policy);
            if selected.is_empty() {
                continue;
            }
            let dirs = [policy.rules(true).is_some(), policy.rules(false).is_some()];
            if dirs == [false, false] {
                continue;
            }
            let i = preps.len();
            for &l in selected.iter() {
                by_local.entry(l).or_default().push(i);
            }
            preps.push(Prep {
                policy,
                knp,
                index,
                staged: policy.id.kind.is_staged(),
                tier_pos: tier_pos[policy.tier.as_str()],
                dirs,
            });
        }

        let in_world_of: Vec<[bool; 2]> = preps
            .iter()
            .map(|p| [crate::tiered::in_world(model, &p.policy.id, false), crate::tiered::in_world(model, &p.policy.id, true)])
            .collect();
        // Per context (local identity, direction, world): its any-peer table; and every
        // (peer, context, table) of peers judged otherwise.
        let mut contexts: Vec<Ctx> = Vec::new();
        let mut pairs: Vec<(u32, u32, u32)> = Vec::new();
        let tables = &mut self.tables;
        let mut flags: HashMap<u32, u32> = HashMap::default();
        let mut overflow = Vec::new();
        let mut fail_closed: HashSet<u32> = HashSet::default();
        let pods_of = |id: u32| -> String {
            let names: Vec<String> =
                side.pods(model).iter().filter(|(_, _, i4, i6)| *i4 == Some(id) || *i6 == Some(id)).map(|(r, _, _, _)| r.to_string()).collect();
            names.join(", ")
        };
        // Per local identity: its kept result when the policies selecting it are as they were,
        // else a fresh one (the rules' identity predicates built for those policies only).
        self.kept.for_side(&side);
        let mut kept = std::mem::take(&mut self.kept.by_local);
        let mut now_kept: HashMap<u32, LocalOut> = HashMap::default();
        let mut locals: Vec<u32> = Vec::new();
        let mut matches = Matches::default();
        let mut preds: Vec<[Option<RulePreds>; 2]> = (0..preps.len()).map(|_| [None, None]).collect();
        let tier_slots = &self.tier_slots;
        let tier_ref = |pos: usize| TierRef {
            tier_index: u16::try_from(tier_slots.index[&tiers[pos].name]).unwrap_or(NO_TIER - 1),
            default: tiers[pos].default_action,
        };
        for (&l, attrs) in attrs_by_id.iter() {
            let Some(sel) = by_local.get(&l) else { continue };
            let same = |o: &LocalOut, matches: &mut Matches| {
                o.members.len() == sel.len()
                    && o.members.iter().zip(sel).all(|(m, &i)| {
                        let p = &preps[i];
                        let t = tier_ref(p.tier_pos);
                        m.index == p.index
                            && m.tier_pos == p.tier_pos
                            && m.tier_index == t.tier_index
                            && m.tier_default == t.default
                            && m.in_world == in_world_of[i]
                            && matches.same(i, &m.content, p.policy, p.knp)
                    })
            };
            let out = match kept.remove(&l) {
                Some(o) if same(&o, &mut matches) => {
                    self.reused.1 += 1;
                    o
                }
                _ => {
                    for &i in sel {
                        for (d, ingress) in [(0, true), (1, false)] {
                            if preds[i][d].is_some() {
                                continue;
                            }
                            if let Some(rules) = preps[i].policy.rules(ingress) {
                                preds[i][d] = Some(
                                    rules
                                        .iter()
                                        .map(|r| {
                                            let (local, remote) =
                                                if ingress { (&r.destination, &r.source) } else { (&r.source, &r.destination) };
                                            (uni.entity(local), uni.entity(remote))
                                        })
                                        .collect(),
                                );
                            }
                        }
                    }
                    let members = sel
                        .iter()
                        .map(|&i| {
                            let p = &preps[i];
                            let t = tier_ref(p.tier_pos);
                            Member {
                                index: p.index,
                                tier_pos: p.tier_pos,
                                tier_index: t.tier_index,
                                tier_default: t.default,
                                in_world: in_world_of[i],
                                content: matches.content(i, p.policy, p.knp),
                            }
                        })
                        .collect();
                    let (flags, contexts) = emit_identity(l, &attrs.ports, sel, &preps, &preds, &in_world_of, &tier_ref, &uni, tables);
                    LocalOut::new(members, flags, contexts)
                }
            };
            for c in &out.contexts {
                let ctx = contexts.len() as u32;
                contexts.push(Ctx { local: l, dir: c.dir, staged: c.staged, base: c.base });
                pairs.extend(c.deviating.iter().map(|&(peer, t)| (peer, ctx, t)));
            }
            if out.flags != 0 {
                flags.insert(l, out.flags);
            }
            locals.push(l);
            now_kept.insert(l, out);
        }
        self.kept.by_local = now_kept;
        // The same kept verdicts of the same local identities in the same order give the same
        // contexts and triples, hence the same classes.
        let classes = match self.classes.take() {
            Some((was, c)) if self.reused.1 == locals.len() && was == locals => c,
            _ => peer_classes(self.limits.max_policy_entries, &contexts, pairs, &pods_of, &mut fail_closed, &mut overflow),
        };
        if fail_closed.is_empty() && overflow.is_empty() {
            self.classes = Some((locals, classes.clone()));
        }
        let (policy, staged, class_of) = classes;
        // Tables still named, with the entries they take: shared by every slot naming them,
        // so they are few; should they not fit, nothing can be judged and every endpoint fails
        // closed.
        let named: BTreeSet<(u32, u8)> =
            policy.iter().map(|(s, t)| (*t, s.2)).chain(staged.iter().map(|(s, t)| (*t, s.2 | bulkhead_common::STAGED_DIRECTION_BIT))).collect();
        let mut table_entries = [0usize; 3];
        let mut sizes: HashMap<u32, [usize; 3]> = HashMap::default();
        for &(t, _) in &named {
            let table = &tables.by_number[&t];
            let n = *sizes.entry(t).or_insert_with(|| crate::layout::table_entries(table));
            for (total, n) in table_entries.iter_mut().zip(n) {
                *total += n;
            }
        }
        let tables_fail_closed = table_entries.iter().any(|&n| n > self.limits.max_policy_entries);
        if tables_fail_closed {
            overflow.push(format!(
                "verdict tables: {} slices, {} single ports, {} ranges do not fit (limit {} each); every endpoint fails closed",
                table_entries[0],
                table_entries[1],
                table_entries[2],
                self.limits.max_policy_entries
            ));
        }
        let tables: BTreeMap<u32, VerdictTable> =
            named.iter().map(|(t, _)| *t).collect::<BTreeSet<u32>>().into_iter().map(|t| (t, (*tables.by_number[&t]).clone())).collect();
        // Tables no kept result names are gone for good: a later compile that needs the same
        // function interns it again (under the same number, barring a collision).
        let live_tables = self.kept.tables();
        self.tables.retain(&live_tables);
        if self.policy_slots.table.len() > capacity::POLICIES as usize {
            overflow.push(format!(
                "policy table: {} policies exceed the {} with counters; policies past that index have no statistics",
                self.policy_slots.table.len(),
                capacity::POLICIES
            ));
        }

        // The IP cache follows from the pod side and the peer classes alone: kept while both are.
        let ipc = match self.pod_cache.as_mut().and_then(|c| c.ipcache(&class_of)) {
            Some(ipc) => ipc,
            None => {
                let limit = self.limits.max_ipcache_entries;
                let patched = self.pod_cache.as_ref().and_then(|c| c.patch_ipcache(&class_of, limit));
                let ipc = std::sync::Arc::new(patched.unwrap_or_else(|| pods::ipcache(model, &side, &class_of, limit)));
                if let Some(c) = self.pod_cache.as_mut() {
                    c.keep_ipcache(class_of, ipc.clone());
                }
                ipc
            }
        };
        overflow.extend(ipc.overflow.iter().cloned());
        let (all_fail_closed, fail_closed_pods) = (ipc.all_fail_closed, &ipc.fail_closed_pods);
        let ipcache = ipc.entries.clone();

        // Endpoint entries: every pod's, or on a node its own pods' only.
        let mut endpoints = BTreeMap::new();
        // Pod names for the reports, listed on the first one.
        let mut refs: Option<Vec<&PodRef>> = None;
        for (pos, r, pod) in side.endpoints(model, self.scope == Scope::Node) {
            let (id4, id6) = side.ids[pos as usize];
            // One of the two exists (pods without an address have no identity).
            let (Some(id4), Some(id6)) = (id4.or(id6), id6.or(id4)) else { continue };
            let ids = [id4, id6];
            // The selection flags are the same for both (they follow labels); a table or
            // entry that did not fit for either address fails the endpoint closed.
            let mut f = ids.iter().fold(0, |f, id| f | flags.get(id).copied().unwrap_or(0));
            for a in pod.addrs() {
                let owner = side.owner(a).map_or(u32::MAX, |o| o.0);
                if owner != pos {
                    let owner = refs.get_or_insert_with(|| model.pods.keys().collect()).get(owner as usize).map_or_else(|| "none".to_string(), |o| o.to_string());
                    overflow.push(format!("pod {r} shares {a} with pod {owner}; it fails closed"));
                    f |= ep_flags::OVERFLOW_FAIL_CLOSED;
                }
            }
            if all_fail_closed || tables_fail_closed || ids.iter().any(|id| fail_closed.contains(id)) || fail_closed_pods.contains(&pos) {
                f |= ep_flags::OVERFLOW_FAIL_CLOSED;
            }
            endpoints.insert(
                r.clone(),
                EndpointEntry { identity: id4, identity6: id6, flags: f, ip: pod.ip, ip6: pod.ip6, interface: pod.interface.clone() },
            );
        }

        let live: HashSet<u32> = attrs_by_id.keys().copied().chain(regions.iter().map(|r| r.1)).collect();
        self.identities.retain(&live);

        let by_id: HashMap<&PolicyId, &TieredPolicy> = sources.iter().map(|(p, _)| (&p.id, *p)).collect();
        let policy_table = self
            .policy_slots
            .table
            .iter()
            .map(|id| {
                let p = by_id.get(id).expect("synced");
                PolicyEntry { id: id.clone(), tier: p.tier.clone(), staged: id.kind.is_staged() }
            })
            .collect::<Vec<_>>();
        Ok(Compiled { endpoints, ipcache, policy, staged, tables, policy_table, tier_table: self.tier_slots.table.clone(), overflow, layout_cache: LayoutCache::default() })
    }
}

/// Checks the policies and tiers of `model` are keyed by their own names (pods and
/// namespaces: [`pods::build`]).
fn check_policies(model: &Model) -> Result<(), Error> {
    for (key, p) in &model.policies {
        if key.namespace != p.namespace || key.name != p.name {
            return Err(Error::InconsistentModel { what: "policy", key: key.to_string(), actual: p.policy_ref().to_string() });
        }
    }
    for (key, p) in &model.tiered {
        if *key != p.id {
            return Err(Error::InconsistentModel { what: "tiered policy", key: key.to_string(), actual: p.id.to_string() });
        }
    }
    for (key, t) in &model.tiers {
        if *key != t.name {
            return Err(Error::InconsistentModel { what: "tier", key: key.clone(), actual: t.name.clone() });
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
