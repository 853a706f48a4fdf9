//! Model -> BPF map entries.
//!
//! The output is shaped by what the datapath can afford per packet: one LPM lookup in the IP
//! cache and at most six in the policy map, whatever the number of pods or rules. Everything
//! that would make a lookup depend on rule count (selectors, ipBlock excepts, port ranges,
//! named ports) is resolved here, ahead of time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::rc::Rc;

use bulkhead_common::{
    IpInfoV1, POLICY_KEY_FIXED_BITS, PolicyKeyV1, PolicyValueV1, action, capacity, direction, ep_flags, identity, proto,
};

use crate::error::Error;
use crate::identity::{IdentityAllocator, IdentityAttrs};
use crate::model::{Cidr, IpBlock, Model, NetworkPolicy, Peer, Peers, PodRef, PolicyRef, PortMatch, Ports, Protocol, Rule};
use crate::portrange::{PortPrefix, port_mask, port_prefixes};
use crate::select::IdentityTable;

/// Rank bands of [`PolicyValueV1::rank`]; the lowest rank among all hits decides.
///
/// NetworkPolicy allows sit in the middle so that policy evaluated before them (Calico tiers,
/// AdminNetworkPolicy by priority) can take ranks below, and policy evaluated after them
/// (BaselineAdminNetworkPolicy) ranks above, without renumbering what exists.
pub mod rank {
    /// Every Kubernetes NetworkPolicy rule (they are all allows and commute).
    pub const NETWORK_POLICY: u32 = 1 << 30;
}

/// Map capacities the compiler must stay within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_policy_entries: usize,
    pub max_ipcache_entries: usize,
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
    pub identity: u32,
    /// [`ep_flags`] bits.
    pub flags: u32,
    pub ip: Ipv4Addr,
    pub interface: Option<String>,
}

/// Policy map key as the compiler stores it: (LPM prefix length, key).
pub type PolicyMapKey = (u32, PolicyKeyV1);

/// The compiled content of every map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub endpoints: BTreeMap<PodRef, EndpointEntry>,
    /// (network address, prefix length) -> info.
    pub ipcache: BTreeMap<(Ipv4Addr, u8), IpInfoV1>,
    /// Keys are normalised: bits beyond the prefix length are zero.
    pub policy: BTreeMap<PolicyMapKey, PolicyValueV1>,
    /// `PolicyValueV1::policy_index` -> policy.
    pub policy_table: Vec<PolicyRef>,
    /// Human-readable reports of what did not fit (and which endpoints fail closed for it).
    pub overflow: Vec<String>,
}

impl Compiled {
    /// The endpoint that owns `ip`.
    pub fn endpoint_by_ip(&self, ip: Ipv4Addr) -> Option<(&PodRef, &EndpointEntry)> {
        self.endpoints.iter().find(|(_, e)| e.ip == ip)
    }
}

/// Builds a policy key; identities and port in network order, as the datapath reads them.
pub fn policy_key(local: u32, peer: u32, dir: u8, protocol: u8, port: u16) -> PolicyKeyV1 {
    PolicyKeyV1 {
        local_identity_be: local.to_be_bytes(),
        peer_identity_be: peer.to_be_bytes(),
        direction: dir,
        protocol,
        port_be: port.to_be_bytes(),
    }
}

/// Compiles models into map contents, keeping identity numbers, policy indexes and per-policy
/// results across calls so that small model changes produce small map changes, fast.
#[derive(Debug)]
pub struct Compiler {
    limits: Limits,
    identities: IdentityAllocator,
    slots: PolicySlots,
    /// Changes whenever the identity or CIDR set changes; cached contributions are valid only
    /// for the generation they were computed in.
    generation: u64,
    last_env: (Vec<u32>, Vec<(Cidr, u32)>),
    cache: HashMap<PolicyRef, Cached>,
}

#[derive(Debug)]
struct Cached {
    policy: NetworkPolicy,
    index: u32,
    generation: u64,
    contribution: Rc<Contribution>,
}

/// One policy's share of the output.
#[derive(Debug, Default)]
struct Contribution {
    entries: Vec<(PolicyMapKey, PolicyValueV1)>,
    /// (local identity, isolation flag).
    isolated: Vec<(u32, u32)>,
}

/// Stable policy indexes. A removed policy's slot is filled by the last policy
/// (`swap_remove`), so the table stays dense and a deletion renumbers one other policy at most.
#[derive(Debug, Default)]
struct PolicySlots {
    table: Vec<PolicyRef>,
    index: HashMap<PolicyRef, u32>,
}

impl PolicySlots {
    fn sync(&mut self, model: &Model) {
        let mut i = 0;
        while i < self.table.len() {
            if model.policies.contains_key(&self.table[i]) {
                i += 1;
                continue;
            }
            let gone = self.table.swap_remove(i);
            self.index.remove(&gone);
            if let Some(moved) = self.table.get(i) {
                self.index.insert(moved.clone(), i as u32);
            }
        }
        for r in model.policies.keys() {
            if !self.index.contains_key(r) {
                self.index.insert(r.clone(), self.table.len() as u32);
                self.table.push(r.clone());
            }
        }
    }
}

impl Default for Compiler {
    fn default() -> Self {
        Compiler::new(Limits::default())
    }
}

/// Per-compile inputs shared by all policies.
struct Env<'m> {
    table: IdentityTable<'m>,
    /// Collected prefixes as (network, len) -> CIDR identity, ordered for range scans.
    cidrs: BTreeMap<(u32, u8), u32>,
    /// IP -> owning pod's identity (first pod in [`PodRef`] order wins).
    ip_owner: BTreeMap<Ipv4Addr, u32>,
}

impl Compiler {
    pub fn new(limits: Limits) -> Self {
        Compiler {
            limits,
            identities: IdentityAllocator::new(),
            slots: PolicySlots::default(),
            generation: 0,
            last_env: Default::default(),
            cache: HashMap::new(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Compiles `model`. Identity numbers and policy indexes of unchanged things are kept
    /// from the previous call.
    pub fn compile(&mut self, model: &Model) -> Result<Compiled, Error> {
        check_consistency(model)?;
        self.slots.sync(model);

        // Identities of pods, grouped by attributes.
        let mut attrs_by_id: BTreeMap<u32, IdentityAttrs> = BTreeMap::new();
        let mut pod_identity: BTreeMap<&PodRef, u32> = BTreeMap::new();
        let mut seen: HashMap<IdentityAttrs, u32> = HashMap::new();
        for (r, pod) in &model.pods {
            if pod.ip.is_none() {
                continue;
            }
            let ns = &model.namespaces[&pod.namespace];
            let mut ports = pod.ports.clone();
            ports.sort();
            ports.dedup();
            let attrs = IdentityAttrs {
                namespace: pod.namespace.clone(),
                namespace_labels: ns.labels.clone(),
                labels: pod.labels.clone(),
                service_account: pod.service_account.clone(),
                ports,
            };
            let id = match seen.get(&attrs) {
                Some(&id) => id,
                None => {
                    let id = self.identities.labels(&attrs);
                    seen.insert(attrs.clone(), id);
                    attrs_by_id.insert(id, attrs);
                    id
                }
            };
            pod_identity.insert(r, id);
        }
        let mut ip_owner: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
        let mut ip_owner_pod: BTreeMap<Ipv4Addr, &PodRef> = BTreeMap::new();
        for (r, &id) in &pod_identity {
            let ip = model.pods[*r].ip.expect("only pods with an IP get identities");
            ip_owner.entry(ip).or_insert(id);
            ip_owner_pod.entry(ip).or_insert(r);
        }

        let table = IdentityTable::new(model, attrs_by_id);
        let mut env = Env { table, cidrs: BTreeMap::new(), ip_owner };

        // CIDR identities for every prefix a rule can name.
        for cidr in collect_prefixes(model, &env) {
            let id = self.identities.cidr(cidr);
            env.cidrs.insert((u32::from(cidr.addr()), cidr.prefix_len()), id);
        }

        let this_env = (
            env.table.attrs.keys().copied().collect::<Vec<_>>(),
            env.cidrs
                .iter()
                .map(|(&(a, l), &id)| (Cidr::new(a.into(), l).expect("collected prefixes are canonical"), id))
                .collect::<Vec<_>>(),
        );
        if this_env != self.last_env {
            self.generation += 1;
            self.last_env = this_env;
        }

        // Per-policy contributions, reused when neither the policy nor its inputs changed.
        let mut contributions = Vec::with_capacity(model.policies.len());
        let mut fresh_cache = HashMap::with_capacity(model.policies.len());
        for (r, policy) in &model.policies {
            let index = self.slots.index[r];
            let contribution = match self.cache.remove(r) {
                Some(c) if c.generation == self.generation && c.index == index && c.policy == *policy => c.contribution,
                _ => Rc::new(contribute(policy, index, &env)),
            };
            if is_cacheable(policy) {
                fresh_cache.insert(
                    r.clone(),
                    Cached { policy: policy.clone(), index, generation: self.generation, contribution: contribution.clone() },
                );
            }
            contributions.push(contribution);
        }
        self.cache = fresh_cache;

        let mut flags: HashMap<u32, u32> = HashMap::new();
        let total: usize = contributions.iter().map(|c| c.entries.len()).sum();
        let mut all = Vec::with_capacity(total);
        for c in &contributions {
            for &(id, flag) in &c.isolated {
                *flags.entry(id).or_default() |= flag;
            }
            all.extend_from_slice(&c.entries);
        }
        // Equal keys from several rules: keep the lowest value (lowest rank, then first policy).
        all.sort_unstable();
        all.dedup_by(|later, earlier| later.0 == earlier.0);
        let mut policy: BTreeMap<PolicyMapKey, PolicyValueV1> = all.into_iter().collect();
        push_down_ranks(&mut policy);

        let mut overflow = Vec::new();
        let mut fail_closed: HashSet<u32> = HashSet::new();
        let pods_of = |id: u32| -> String {
            let names: Vec<String> =
                pod_identity.iter().filter(|(_, i)| **i == id).map(|(r, _)| r.to_string()).collect();
            names.join(", ")
        };
        fit_policy(&mut policy, self.limits.max_policy_entries, &mut fail_closed, &mut overflow, &pods_of);

        // IP cache: prefixes first (a missing prefix could widen what an except removed), then
        // pod addresses.
        let mut ipcache = BTreeMap::new();
        let mut fail_closed_pods: HashSet<&PodRef> = HashSet::new();
        let mut all_fail_closed = false;
        if env.cidrs.len() > self.limits.max_ipcache_entries {
            all_fail_closed = true;
            overflow.push(format!(
                "ipcache: {} ipBlock prefixes do not fit (limit {}); every endpoint fails closed",
                env.cidrs.len(),
                self.limits.max_ipcache_entries
            ));
        } else {
            for (&(a, l), &id) in &env.cidrs {
                ipcache.insert((Ipv4Addr::from(a), l), IpInfoV1 { identity: id, cidr_identity: id });
            }
            for (&ip, &id) in &env.ip_owner {
                let key = (ip, 32);
                if !ipcache.contains_key(&key) && ipcache.len() >= self.limits.max_ipcache_entries {
                    let pod = ip_owner_pod[&ip];
                    fail_closed_pods.insert(pod);
                    overflow.push(format!(
                        "ipcache: no room for {ip}/32 of pod {pod} (limit {}); it fails closed",
                        self.limits.max_ipcache_entries
                    ));
                    continue;
                }
                ipcache.insert(key, IpInfoV1 { identity: id, cidr_identity: longest_cidr(&env.cidrs, ip) });
            }
        }

        let mut endpoints = BTreeMap::new();
        for (&r, &id) in &pod_identity {
            let pod = &model.pods[r];
            let ip = pod.ip.expect("pods with identities have an IP");
            let mut f = flags.get(&id).copied().unwrap_or(0);
            if ip_owner_pod[&ip] != r {
                // The IP cache can only name one pod per address; the other claimant would be
                // judged under the owner's identity by its peers.
                overflow.push(format!("pod {r} shares {ip} with pod {}; it fails closed", ip_owner_pod[&ip]));
                f |= ep_flags::OVERFLOW_FAIL_CLOSED;
            }
            if all_fail_closed || fail_closed.contains(&id) || fail_closed_pods.contains(r) {
                f |= ep_flags::OVERFLOW_FAIL_CLOSED;
            }
            endpoints.insert(r.clone(), EndpointEntry { identity: id, flags: f, ip, interface: pod.interface.clone() });
        }

        let live: HashSet<u32> = env.table.attrs.keys().chain(env.cidrs.values()).copied().collect();
        self.identities.retain(&live);

        Ok(Compiled { endpoints, ipcache, policy, policy_table: self.slots.table.clone(), overflow })
    }
}

fn check_consistency(model: &Model) -> Result<(), Error> {
    for (key, ns) in &model.namespaces {
        if *key != ns.name {
            return Err(Error::InconsistentModel { what: "namespace", key: key.clone(), actual: ns.name.clone() });
        }
    }
    for (key, pod) in &model.pods {
        if *key != pod.pod_ref() {
            return Err(Error::InconsistentModel { what: "pod", key: key.to_string(), actual: pod.pod_ref().to_string() });
        }
        if pod.ip.is_some() && !model.namespaces.contains_key(&pod.namespace) {
            return Err(Error::MissingNamespace { pod: key.clone(), namespace: pod.namespace.clone(), origin: None });
        }
    }
    for (key, p) in &model.policies {
        if *key != p.policy_ref() {
            return Err(Error::InconsistentModel {
                what: "policy",
                key: key.to_string(),
                actual: p.policy_ref().to_string(),
            });
        }
    }
    Ok(())
}

/// Rules whose result depends on individual pod addresses (egress named ports towards
/// ipBlocks) are recomputed every time; everything else depends only on identities and
/// prefixes, which the generation tracks.
fn is_cacheable(policy: &NetworkPolicy) -> bool {
    !policy.egress.iter().flatten().any(rule_has_named_ipblock)
}

fn rule_has_named_ipblock(rule: &Rule) -> bool {
    let named = matches!(&rule.ports, Ports::List(l) if l.iter().any(|s| matches!(s.port, PortMatch::Named(_))));
    let block = matches!(&rule.peers, Peers::List(l) if l.iter().any(|p| matches!(p, Peer::IpBlock(_))));
    named && block
}

fn rules(policy: &NetworkPolicy) -> impl Iterator<Item = (u8, &Rule)> {
    let ingress = policy.ingress.iter().flatten().map(|r| (direction::INGRESS, r));
    ingress.chain(policy.egress.iter().flatten().map(|r| (direction::EGRESS, r)))
}

/// Every prefix an ipBlock names, plus the /32 of each pod an egress named port may reach
/// through an ipBlock: that /32 gets its own CIDR identity so a key can allow exactly that
/// pod's resolved port, not the port on every address of the block.
fn collect_prefixes(model: &Model, env: &Env<'_>) -> BTreeSet<Cidr> {
    let mut out = BTreeSet::new();
    for policy in model.policies.values() {
        for (dir, rule) in rules(policy) {
            let Peers::List(peers) = &rule.peers else { continue };
            for peer in peers {
                let Peer::IpBlock(block) = peer else { continue };
                out.insert(block.cidr);
                out.extend(block.except.iter().copied());
                if dir == direction::EGRESS && rule_has_named_ipblock(rule) {
                    let Ports::List(specs) = &rule.ports else { continue };
                    for (ip, _, _) in named_pods_in_block(env, block, specs) {
                        out.insert(Cidr::containing(ip, 32));
                    }
                }
            }
        }
    }
    out
}

/// Pod addresses in `block` whose pods define one of the named ports in `specs`, with the
/// resolved (protocol, port).
fn named_pods_in_block(env: &Env<'_>, block: &IpBlock, specs: &[crate::model::PortSpec]) -> Vec<(Ipv4Addr, Protocol, u16)> {
    let (start, end) = block.cidr.range();
    let mut out = Vec::new();
    for (&ip, &id) in env.ip_owner.range(Ipv4Addr::from(start)..=Ipv4Addr::from(end)) {
        if !block.contains(ip) {
            continue;
        }
        for spec in specs {
            if let PortMatch::Named(name) = &spec.port
                && let Some(port) = env.table.named_port(id, name, spec.protocol)
            {
                out.push((ip, spec.protocol, port));
            }
        }
    }
    out
}

/// CIDR identity of the longest collected prefix containing `ip`, or [`identity::ANY`].
fn longest_cidr(cidrs: &BTreeMap<(u32, u8), u32>, ip: Ipv4Addr) -> u32 {
    if cidrs.is_empty() {
        return identity::ANY;
    }
    (0..=32u8)
        .rev()
        .find_map(|len| cidrs.get(&(u32::from(Cidr::containing(ip, len).addr()), len)).copied())
        .unwrap_or(identity::ANY)
}

/// CIDR identities standing for `block`: every collected prefix inside the cidr and not inside
/// an except. Exact because collected prefixes are nested or disjoint and an address's CIDR
/// identity is that of the longest collected prefix containing it.
fn block_identities(cidrs: &BTreeMap<(u32, u8), u32>, block: &IpBlock) -> Vec<u32> {
    let (start, end) = block.cidr.range();
    cidrs
        .range((start, 0)..=(end, 32))
        .filter(|((a, l), _)| {
            let p = Cidr::new((*a).into(), *l).expect("collected prefixes are canonical");
            block.cidr.contains(p) && !block.except.iter().any(|e| e.contains(p))
        })
        .map(|(_, &id)| id)
        .collect()
}

fn contribute<'m>(policy: &'m NetworkPolicy, index: u32, env: &Env<'m>) -> Contribution {
    let mut out = Contribution::default();
    let locals = env.table.select_in(&policy.namespace, &policy.pod_selector);
    for (dir, rules, flag) in [
        (direction::INGRESS, &policy.ingress, ep_flags::INGRESS_ISOLATED),
        (direction::EGRESS, &policy.egress, ep_flags::EGRESS_ISOLATED),
    ] {
        let Some(rules) = rules else { continue };
        out.isolated.extend(locals.iter().map(|&l| (l, flag)));
        if locals.is_empty() {
            continue;
        }
        for (rule_index, rule) in rules.iter().enumerate() {
            let value = PolicyValueV1 {
                rank: rank::NETWORK_POLICY,
                policy_index: index,
                rule_index: u16::try_from(rule_index).unwrap_or(u16::MAX),
                action: action::ALLOW,
                _pad: 0,
            };
            compile_rule(policy, rule, dir, &locals, value, env, &mut out.entries);
        }
    }
    out
}

fn compile_rule<'m>(
    policy: &'m NetworkPolicy,
    rule: &'m Rule,
    dir: u8,
    locals: &[u32],
    value: PolicyValueV1,
    env: &Env<'m>,
    out: &mut Vec<(PolicyMapKey, PolicyValueV1)>,
) {
    let peers = peer_identities(policy, &rule.peers, env);
    let mut push = |local: u32, peer: u32, protocol: u8, pp: PortPrefix| {
        let key = policy_key(local, peer, dir, protocol, pp.port);
        out.push(((pp.key_prefix_len(), key), value));
    };
    let any_port = PortPrefix { port: 0, bits: 0 };
    let specs = match &rule.ports {
        Ports::Any => {
            for &local in locals {
                for &peer in &peers {
                    push(local, peer, proto::ANY, any_port);
                }
            }
            return;
        }
        Ports::List(specs) => specs,
    };
    for spec in specs {
        let protocol = spec.protocol.number();
        match &spec.port {
            PortMatch::All | PortMatch::Range { .. } => {
                let prefixes = match spec.port {
                    PortMatch::Range { start, end } => port_prefixes(start, end),
                    _ => vec![any_port],
                };
                for &local in locals {
                    for &peer in &peers {
                        for &pp in &prefixes {
                            push(local, peer, protocol, pp);
                        }
                    }
                }
            }
            // Ingress: the destination is the local pod, so the name resolves on it.
            PortMatch::Named(name) if dir == direction::INGRESS => {
                for &local in locals {
                    let Some(port) = env.table.named_port(local, name, spec.protocol) else { continue };
                    for &peer in &peers {
                        push(local, peer, protocol, PortPrefix { port, bits: 16 });
                    }
                }
            }
            // Egress: the name resolves on each destination pod; addresses that are not pods
            // never match.
            PortMatch::Named(name) => {
                for (peer, port) in named_egress_peers(policy, &rule.peers, name, spec.protocol, env) {
                    for &local in locals {
                        push(local, peer, protocol, PortPrefix { port, bits: 16 });
                    }
                }
            }
        }
    }
}

fn peer_identities<'m>(policy: &'m NetworkPolicy, peers: &'m Peers, env: &Env<'m>) -> Vec<u32> {
    let list = match peers {
        Peers::Any => return vec![identity::ANY],
        Peers::List(list) => list,
    };
    let mut out = Vec::new();
    for peer in list {
        match peer {
            Peer::Pods { namespaces, pods } => out.extend_from_slice(&env.table.select(&policy.namespace, namespaces, pods)),
            Peer::IpBlock(block) => out.extend(block_identities(&env.cidrs, block)),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// (peer identity, resolved port) for an egress named port.
fn named_egress_peers<'m>(
    policy: &'m NetworkPolicy,
    peers: &'m Peers,
    name: &str,
    protocol: Protocol,
    env: &Env<'m>,
) -> Vec<(u32, u16)> {
    let list = match peers {
        Peers::Any => return env.table.all_defining(name, protocol),
        Peers::List(list) => list,
    };
    let mut out = Vec::new();
    for peer in list {
        match peer {
            Peer::Pods { namespaces, pods } => {
                for &id in env.table.select(&policy.namespace, namespaces, pods).iter() {
                    if let Some(port) = env.table.named_port(id, name, protocol) {
                        out.push((id, port));
                    }
                }
            }
            Peer::IpBlock(block) => {
                let spec = crate::model::PortSpec { protocol, port: PortMatch::Named(name.to_string()) };
                for (ip, _, port) in named_pods_in_block(env, block, std::slice::from_ref(&spec)) {
                    // collect_prefixes gave this /32 its own identity.
                    let id = env.cidrs[&(u32::from(ip), 32)];
                    out.push((id, port));
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Makes every stored entry carry the lowest-ranked verdict among the entries covering it.
/// The datapath's LPM lookup returns only the longest matching prefix per (peer, protocol), so
/// without this a specific port could hide a lower-ranked any-port rule (tiered deny/allow).
/// NetworkPolicy alone uses one rank, which makes this a no-op.
fn push_down_ranks(policy: &mut BTreeMap<PolicyMapKey, PolicyValueV1>) {
    let (lo, hi) = policy.values().fold((u32::MAX, 0), |(lo, hi), v| (lo.min(v.rank), hi.max(v.rank)));
    if lo >= hi {
        return;
    }
    let mut updates = Vec::new();
    for (&(plen, key), value) in policy.iter() {
        let mut best = *value;
        for q in POLICY_KEY_FIXED_BITS..plen {
            let mut k = key;
            let port = u16::from_be_bytes(key.port_be) & port_mask((q - POLICY_KEY_FIXED_BITS) as u8);
            k.port_be = port.to_be_bytes();
            if let Some(a) = policy.get(&(q, k))
                && a.rank < best.rank
            {
                best = *a;
            }
        }
        if best != *value {
            updates.push(((plen, key), best));
        }
    }
    policy.extend(updates);
}

/// Keeps whole identities' entries while they fit; the rest fail closed. Identities are taken
/// in number order, so established ones keep their entries when a new one does not fit.
fn fit_policy(
    policy: &mut BTreeMap<PolicyMapKey, PolicyValueV1>,
    limit: usize,
    fail_closed: &mut HashSet<u32>,
    overflow: &mut Vec<String>,
    pods_of: &dyn Fn(u32) -> String,
) {
    if policy.len() <= limit {
        return;
    }
    let mut per_local: BTreeMap<u32, usize> = BTreeMap::new();
    for (_, key) in policy.keys() {
        *per_local.entry(u32::from_be_bytes(key.local_identity_be)).or_default() += 1;
    }
    let mut used = 0;
    for (id, n) in per_local {
        if used + n <= limit {
            used += n;
        } else {
            fail_closed.insert(id);
            overflow.push(format!(
                "policy: {n} entries of identity {id} (pods {}) do not fit (limit {limit}, {used} in use); they fail closed",
                pods_of(id)
            ));
        }
    }
    policy.retain(|(_, key), _| !fail_closed.contains(&u32::from_be_bytes(key.local_identity_be)));
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
