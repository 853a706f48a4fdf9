//! What a compile derives from the pods and namespaces alone (given the prefixes policies
//! name): pod identities, address owners and the selection index. At cluster scale this is
//! most of a compile (every pod visited, its labels hashed and copied), while a policy change
//! leaves it alone, so the [`crate::Compiler`] keeps it while its inputs are the same
//! ([`crate::model::Shared::same`] pods and namespaces, equal prefixes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::error::Error;
use crate::fasthash::{HashMap, HashSet};
use bulkhead_common::{IpInfoV3, identity};

use crate::identity::{IdentityAllocator, IdentityAttrs};
use crate::model::{Cidr, Model, Namespace, Pod, PodRef, Shared};
use crate::select::{Ident, Index};

/// The pods' side of a compile.
pub(crate) struct PodSide {
    /// Per pod, in model order: the identity of its IPv4 address and of its IPv6 address.
    /// Each address has the identity of the pod's attributes and that address's region, so a
    /// dual-stack pod has two when its addresses lie in different regions (one when neither
    /// does): a CIDR then matches only addresses of its own family. Pods without an address
    /// have neither and are not enforced.
    pub ids: Vec<(Option<u32>, Option<u32>)>,
    pub attrs_by_id: Arc<BTreeMap<u32, Arc<IdentityAttrs>>>,
    /// Per identity, how many pod addresses have it (a patch must not empty one).
    members: HashMap<u32, u32>,
    /// Every pod address with (the position of its owner pod in model order, the address's
    /// identity), in address order; owners by the model's one rule ([`Model::ip_owners`]).
    pub owners: Vec<(IpAddr, u32, u32)>,
    /// Every collected prefix with its identity.
    pub regions: Vec<(Cidr, u32)>,
    /// Whether IPv6 addresses outside every prefix have the identity `WORLD6`: unless `::/0`
    /// is a region, the IPv6 cache holds `::/0` with it, so they are never judged as the
    /// baseline (which may lie in 0.0.0.0/0, a block no IPv6 address is in).
    pub world6: bool,
    pub index: Arc<Index>,
    /// The pods placed on this node (with an interface), with their position in model order.
    pub local: Vec<(PodRef, u32)>,
    /// Their identities, sorted: what the selection index is restricted to.
    local_ids: Vec<u32>,
}

impl PodSide {
    /// The identity pair of each pod with an address, with the pod, in model order.
    pub fn pods<'m>(&self, model: &'m Model) -> Vec<(&'m PodRef, &'m Pod, Option<u32>, Option<u32>)> {
        model
            .pods
            .iter()
            .zip(&self.ids)
            .filter(|(_, (a, b))| a.is_some() || b.is_some())
            .map(|((r, p), &(a, b))| (r, &**p, a, b))
            .collect()
    }

    /// The pods with an endpoint entry (on a node: its own pods only), with their position in
    /// model order.
    pub fn endpoints<'m>(&'m self, model: &'m Model, node: bool) -> Box<dyn Iterator<Item = (u32, &'m PodRef, &'m Pod)> + 'm> {
        // One of the two identities exists for pods with an address.
        let enforced = |&(pos, _, _): &(u32, &PodRef, &Pod)| self.ids.get(pos as usize).is_some_and(|&(a, b)| a.is_some() || b.is_some());
        if node {
            Box::new(self.local.iter().filter_map(|(r, pos)| model.pods.get_key_value(r).map(|(r, p)| (*pos, r, &**p))).filter(enforced))
        } else {
            Box::new(model.pods.iter().enumerate().map(|(pos, (r, p))| (pos as u32, r, &**p)).filter(enforced))
        }
    }

    /// The owner (position in model order) and identity of a pod address.
    pub fn owner(&self, ip: IpAddr) -> Option<(u32, u32)> {
        self.owners.binary_search_by_key(&ip, |o| o.0).ok().map(|i| (self.owners[i].1, self.owners[i].2))
    }
}

/// What [`PodCache::patch`] found.
pub(crate) enum Patch {
    /// Every pod equal to a kept one.
    Unchanged,
    /// The pod side for the changed pods.
    Changed(PodSide),
}

/// A pod side with its IP cache and the peer classes that cache was built for.
type IpcacheBase = (Arc<PodSide>, HashMap<u32, u32>, Arc<Ipcache>);

/// The last pod side built, with what it was built from.
pub(crate) struct PodCache {
    pods: crate::model::Pods,
    namespaces: Shared<BTreeMap<String, Namespace>>,
    prefixes: BTreeSet<Cidr>,
    side: Arc<PodSide>,
    /// The IP cache of the previous compile, with the peer classes it was built for.
    ipcache: Option<(HashMap<u32, u32>, Arc<Ipcache>)>,
    /// When `side` was patched: the pod side it was patched from, with that side's IP cache
    /// and peer classes, from which [`PodCache::patch_ipcache`] derives this side's.
    base: Option<IpcacheBase>,
}

impl PodCache {
    /// The kept pod side when `model` and `prefixes` are what it was built from: the very
    /// same pods (no pod visited), equal namespaces and prefixes.
    pub fn hit(cache: &Option<PodCache>, model: &Model, prefixes: &BTreeSet<Cidr>) -> Option<Arc<PodSide>> {
        let c = cache.as_ref()?;
        (Shared::same(&c.pods, &model.pods) && c.same_namespaces(model) && c.prefixes == *prefixes).then(|| c.side.clone())
    }

    /// Namespaces the same or equal (a model built afresh has equal ones; there are few).
    fn same_namespaces(&self, model: &Model) -> bool {
        Shared::same(&self.namespaces, &model.namespaces) || *self.namespaces == *model.namespaces
    }

    #[cfg(test)]
    pub fn holds_pods_of(&self, m: &Model) -> bool {
        Shared::same(&self.pods, &m.pods)
    }

    pub fn side(&self) -> Arc<PodSide> {
        self.side.clone()
    }

    /// Holds `model`'s pods and namespaces from now on, found equal to the kept ones, so the
    /// next compile of the same model meets [`PodCache::hit`] without visiting a pod.
    pub fn adopt(&mut self, model: &Model) {
        self.pods = model.pods.clone();
        self.namespaces = model.namespaces.clone();
    }

    pub fn new(model: &Model, prefixes: BTreeSet<Cidr>, side: Arc<PodSide>) -> PodCache {
        PodCache { pods: model.pods.clone(), namespaces: model.namespaces.clone(), prefixes, side, ipcache: None, base: None }
    }

    /// A cache for `side`, patched from this one's: it keeps what its IP cache derives from.
    pub fn patched(&self, model: &Model, prefixes: BTreeSet<Cidr>, side: Arc<PodSide>) -> PodCache {
        let base = self.ipcache.as_ref().map(|(c, i)| (self.side.clone(), c.clone(), i.clone()));
        PodCache { base, ..PodCache::new(model, prefixes, side) }
    }

    /// The IP cache of a patched pod side, from its base's: the addresses whose owner or
    /// identity changed are written again. `None` (build it whole) when the peer classes
    /// changed, or anything did not fit in the base or would not fit now (who fails closed
    /// then depends on the whole list).
    pub fn patch_ipcache(&self, class_of: &HashMap<u32, u32>, limit: usize) -> Option<Ipcache> {
        let (old_side, old_classes, old) = self.base.as_ref()?;
        if old_classes != class_of || old.all_fail_closed || !old.fail_closed_pods.is_empty() {
            return None;
        }
        let side = &self.side;
        let info = |id: u32| IpInfoV3 { identity: id, peer_class: class_of.get(&id).copied().unwrap_or(identity::ANY) };
        let key = |ip: IpAddr| (ip, if ip.is_ipv6() { 128 } else { 32 });
        // A removed pod address that is a /32 (or /128) region gives the key back to it.
        let region = |k: (IpAddr, u8)| side.regions.iter().find(|(c, _)| (c.addr(), c.prefix_len()) == k).map(|&(_, id)| id);
        let mut entries = (*old.entries).clone();
        let gone = |entries: &mut BTreeMap<(IpAddr, u8), IpInfoV3>, ip: IpAddr| match region(key(ip)) {
            Some(id) => entries.insert(key(ip), info(id)),
            None => entries.remove(&key(ip)),
        };
        let (mut a, mut b) = (old_side.owners.iter().peekable(), side.owners.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(&&(ip, _, _)), None) => {
                    a.next();
                    gone(&mut entries, ip);
                }
                (Some(&&(ip, _, _)), Some(&&(nip, _, _))) if ip < nip => {
                    a.next();
                    gone(&mut entries, ip);
                }
                (Some(&&(ip, _, id)), Some(&&(nip, _, nid))) if ip == nip => {
                    a.next();
                    b.next();
                    if id != nid {
                        entries.insert(key(ip), info(nid));
                    }
                }
                (_, Some(&&(nip, _, nid))) => {
                    b.next();
                    entries.insert(key(nip), info(nid));
                }
            }
        }
        (entries.len() <= limit).then(|| Ipcache { entries: Shared::new(entries), all_fail_closed: false, fail_closed_pods: HashSet::default(), overflow: Vec::new() })
    }

    /// The kept pod side brought up to `model` (not the very same pods as kept) when only pods
    /// changed and the identities stay as they were: every changed pod's address has an identity some pod already has, no
    /// identity loses its last address, and the node's own identities are the same. The
    /// selection index (and with it every kept verdict) then stands; address owners are
    /// listed again. Pods all equal to the kept ones (a model built afresh, as an agent builds
    /// one per sync) are [`Patch::Unchanged`]. `None` when a full build is needed (or the
    /// model does not hold together, which the build reports).
    pub fn patch(&self, model: &Model, prefixes: &BTreeSet<Cidr>, node: bool, identities: &IdentityAllocator) -> Option<Patch> {
        if !self.same_namespaces(model) || self.prefixes != *prefixes {
            return None;
        }
        let mut changed = self.pods.len() != model.pods.len();
        let old = &self.side;
        let regions = Regions::new(prefixes);
        // Address count changes per identity.
        let mut delta: HashMap<u32, i64> = HashMap::default();
        let mut count = |(a, b): (Option<u32>, Option<u32>), by: i64| {
            for id in a.into_iter().chain(b) {
                *delta.entry(id).or_insert(0) += by;
            }
        };
        let identify = |r: &PodRef, pod: &Pod| -> Option<(Option<u32>, Option<u32>)> {
            if r.namespace != pod.namespace || r.name != pod.name {
                return None;
            }
            let id = |ip: IpAddr| {
                let attrs = attrs_of(model, pod, regions.of(ip))?;
                identities.find_labels(attrs).filter(|id| old.attrs_by_id.contains_key(id))
            };
            let id4 = match pod.ip {
                Some(a) => Some(id(IpAddr::V4(a))?),
                None => None,
            };
            let id6 = match pod.ip6 {
                Some(a) => Some(id(IpAddr::V6(a))?),
                None => None,
            };
            Some((id4, id6))
        };
        let mut ids = Vec::with_capacity(model.pods.len());
        // Address claims and the node's pods are taken in the same pass (see `build`).
        let mut claims4: Vec<u64> = Vec::with_capacity(model.pods.len());
        let mut claims6: Vec<(IpAddr, u32, u32)> = Vec::new();
        let mut local: Vec<(PodRef, u32)> = Vec::new();
        let mut olds = self.pods.iter().zip(&old.ids).peekable();
        for (pos, (r, pod)) in model.pods.iter().enumerate() {
            // Kept pods ordered before this one are gone.
            while let Some(&((or, _), &oi)) = olds.peek() {
                if or >= r {
                    break;
                }
                count(oi, -1);
                olds.next();
            }
            match olds.peek() {
                Some(&((or, op), &oi)) if or == r => {
                    if op == pod {
                        ids.push(oi);
                    } else {
                        changed = true;
                        count(oi, -1);
                        let ni = identify(r, pod)?;
                        count(ni, 1);
                        ids.push(ni);
                    }
                    olds.next();
                }
                _ => {
                    changed = true;
                    let ni = identify(r, pod)?;
                    count(ni, 1);
                    ids.push(ni);
                }
            }
            let (id4, id6) = ids[pos];
            if let (Some(a), Some(_)) = (pod.ip, id4) {
                claims4.push(u64::from(a.to_bits()) << 32 | pos as u64);
            }
            if let (Some(a), Some(id)) = (pod.ip6, id6) {
                claims6.push((IpAddr::V6(a), pos as u32, id));
            }
            if node && pod.interface.is_some() {
                local.push((r.clone(), pos as u32));
            }
        }
        if !changed {
            return Some(Patch::Unchanged);
        }
        for (_, &oi) in olds {
            count(oi, -1);
        }
        let mut members = old.members.clone();
        for (id, d) in delta {
            let n = members.get(&id).copied().unwrap_or(0) as i64 + d;
            if n <= 0 {
                // An identity without pods leaves the index.
                return None;
            }
            members.insert(id, n as u32);
        }
        let local_ids = local_ids(&local, &ids);
        if local_ids != old.local_ids {
            return None;
        }
        Some(Patch::Changed(PodSide {
            owners: first_claims(claims4, claims6, &ids),
            ids,
            attrs_by_id: old.attrs_by_id.clone(),
            members,
            regions: old.regions.clone(),
            world6: old.world6,
            index: old.index.clone(),
            local,
            local_ids,
        }))
    }

    /// The kept IP cache when it was built for these peer classes.
    pub fn ipcache(&self, class_of: &HashMap<u32, u32>) -> Option<Arc<Ipcache>> {
        self.ipcache.as_ref().filter(|(c, _)| c == class_of).map(|(_, i)| i.clone())
    }

    pub fn keep_ipcache(&mut self, class_of: HashMap<u32, u32>, ipcache: Arc<Ipcache>) {
        self.ipcache = Some((class_of, ipcache));
        self.base = None;
    }
}

/// The collected prefixes, as the regions of addresses.
pub(crate) struct Regions {
    keys: HashSet<Cidr>,
    /// The prefix lengths policies use, longest first, per family.
    lengths4: Vec<u8>,
    lengths6: Vec<u8>,
}

impl Regions {
    pub fn new(prefixes: &BTreeSet<Cidr>) -> Regions {
        let lengths = |v6: bool| -> Vec<u8> {
            prefixes.iter().filter(|c| c.is_ipv6() == v6).map(|c| c.prefix_len()).collect::<BTreeSet<u8>>().into_iter().rev().collect()
        };
        Regions { keys: prefixes.iter().copied().collect(), lengths4: lengths(false), lengths6: lengths(true) }
    }

    /// The longest collected prefix holding `ip`.
    pub fn of(&self, ip: IpAddr) -> Option<Cidr> {
        let lengths = if ip.is_ipv6() { &self.lengths6 } else { &self.lengths4 };
        lengths.iter().map(|&len| Cidr::containing(ip, len)).find(|c| self.keys.contains(c))
    }
}

/// The claims on pod addresses in address order as (address, claimant's position in model
/// order, identity), each address with its first claim only. `v4`: IPv4 claims packed as
/// `address << 32 | position`; `v6`: IPv6 claims; `ids`: every pod's identities.
///
/// Positions are unique, so sorting by (address, position) puts an address's first claim
/// first. IPv4 claims, most of a cluster's, sort by radix.
fn first_claims(mut v4: Vec<u64>, mut v6: Vec<(IpAddr, u32, u32)>, ids: &[(Option<u32>, Option<u32>)]) -> Vec<(IpAddr, u32, u32)> {
    // Claims come in model order: positions ascend among claims of one address already.
    crate::radix::sort_u64_from(&mut v4, 32);
    v6.sort_unstable();
    let mut owners: Vec<(IpAddr, u32, u32)> = Vec::with_capacity(v4.len() + v6.len());
    owners.extend(v4.into_iter().filter_map(|k| {
        let pos = k as u32;
        let id = ids[pos as usize].0?;
        Some((IpAddr::V4(std::net::Ipv4Addr::from_bits((k >> 32) as u32)), pos, id))
    }));
    owners.extend(v6);
    owners.dedup_by_key(|o| o.0);
    owners
}

/// The identities of the node's own pods, sorted.
fn local_ids(local: &[(PodRef, u32)], ids: &[(Option<u32>, Option<u32>)]) -> Vec<u32> {
    let mut v: Vec<u32> = local.iter().flat_map(|&(_, pos)| {
        let (a, b) = ids[pos as usize];
        a.into_iter().chain(b)
    }).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The identity attributes of `pod`'s address in `region` (ports sorted, without repeats).
fn attrs_of(model: &Model, pod: &Pod, region: Option<Cidr>) -> Option<IdentityAttrs> {
    let mut ports = pod.ports.clone();
    ports.sort();
    ports.dedup();
    Some(IdentityAttrs {
        namespace: pod.namespace.clone(),
        namespace_labels: Arc::new(model.namespaces.get(&pod.namespace)?.labels.clone()),
        labels: pod.labels.clone(),
        service_account: pod.service_account.clone(),
        ports,
        region,
    })
}

/// Checks the namespaces of `model` are keyed by their names.
fn check_namespaces(model: &Model) -> Result<(), Error> {
    for (key, ns) in &model.namespaces {
        if *key != ns.name {
            return Err(Error::InconsistentModel { what: "namespace", key: key.clone(), actual: ns.name.clone() });
        }
    }
    Ok(())
}

/// Builds the pod side of `model` for these collected prefixes; `node` restricts selection
/// to the pods placed here (those with an interface).
///
/// One pass over the pods: at cluster scale a pass is bound by memory (every pod's strings and
/// labels live in their own allocations), so the checks, identities, address owners and the
/// node's own pods are all taken in the same visit.
pub(crate) fn build(model: &Model, prefixes: &BTreeSet<Cidr>, node: bool, identities: &mut IdentityAllocator) -> Result<PodSide, Error> {
    check_namespaces(model)?;
    let regions_of = Regions::new(prefixes);

    let crate::grouping::Grouped { ids, attrs_by_id, members, claims4, claims6, local } =
        crate::grouping::group(model, &regions_of, node, identities)?;
    let owners = first_claims(claims4, claims6, &ids);
    let regions: Vec<(Cidr, u32)> = prefixes.iter().map(|&c| (c, identities.cidr(c))).collect();
    // The baseline address: in no prefix, or only in 0.0.0.0/0 when that is collected (then
    // no address is outside every prefix).
    let all = Cidr::all(false);
    let baseline = Ident { id: identity::WORLD, pod: None, region: prefixes.contains(&all).then_some(all) };
    let world6 = !prefixes.contains(&Cidr::all(true));
    let mut index = Index::new(
        attrs_by_id.iter().map(|(&id, a)| Ident::from_attrs(id, a)).collect(),
        regions
            .iter()
            .map(|&(c, id)| Ident { id, pod: None, region: Some(c) })
            .chain(world6.then_some(Ident { id: identity::WORLD6, pod: None, region: None }))
            .collect(),
        baseline,
    );
    let local_ids = local_ids(&local, &ids);
    if node {
        index.restrict_local(local_ids.iter().copied());
    }
    Ok(PodSide { ids, attrs_by_id: Arc::new(attrs_by_id), members, owners, regions, world6, index: Arc::new(index), local, local_ids })
}

impl std::fmt::Debug for PodCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCache").field("pods", &self.pods.len()).field("prefixes", &self.prefixes.len()).finish()
    }
}

/// The IP cache of a compile, with what did not fit.
pub(crate) struct Ipcache {
    pub entries: Shared<BTreeMap<(IpAddr, u8), IpInfoV3>>,
    /// Every endpoint fails closed (the policy prefixes alone do not fit).
    pub all_fail_closed: bool,
    /// Positions (model order) of the pods whose address did not fit.
    pub fail_closed_pods: HashSet<u32>,
    pub overflow: Vec<String>,
}

/// The IP cache for these peer classes: region prefixes first (a missing prefix could change
/// what an address matches), then pod addresses (a pod /32 replaces a /32 region of the same
/// address), within `limit` entries.
pub(crate) fn ipcache(model: &Model, side: &PodSide, class_of: &HashMap<u32, u32>, limit: usize) -> Ipcache {
    let info = |id: u32| IpInfoV3 { identity: id, peer_class: class_of.get(&id).copied().unwrap_or(identity::ANY) };
    let mut fail_closed_pods = HashSet::default();
    let mut overflow = Vec::new();
    if side.regions.len() > limit {
        overflow.push(format!("ipcache: {} policy prefixes do not fit (limit {limit}); every endpoint fails closed", side.regions.len()));
        return Ipcache { entries: Shared::new(BTreeMap::new()), all_fail_closed: true, fail_closed_pods, overflow };
    }
    // Listed in key order and built in bulk (a map built by insertion spends most of its time
    // searching). Regions come first in each key's run, so a pod /32 (or /128) that is also a
    // region replaces it, as the datapath needs.
    let mut regions: Vec<((IpAddr, u8), IpInfoV3)> = side.regions.iter().map(|&(c, id)| ((c.addr(), c.prefix_len()), info(id))).collect();
    // Only when it is judged otherwise than a miss (the datapath's WORLD6, any peer).
    if let Some(&class) = class_of.get(&identity::WORLD6).filter(|&&c| side.world6 && c != identity::ANY) {
        regions.push(((Cidr::all(true).addr(), 0), IpInfoV3 { identity: identity::WORLD6, peer_class: class }));
    }
    regions.sort_by_key(|e| e.0);
    regions.dedup_by_key(|e| e.0);
    let region_keys: HashSet<(IpAddr, u8)> = regions.iter().map(|e| e.0).collect();
    let mut filled = regions.len();
    let mut pods: Vec<((IpAddr, u8), IpInfoV3)> = Vec::with_capacity(side.owners.len());
    // Pod names for the reports, listed on the first one.
    let mut refs: Option<Vec<&PodRef>> = None;
    // In address order, so which pods miss out on a full map does not vary.
    for &(ip, pos, id) in &side.owners {
        let key = (ip, if ip.is_ipv6() { 128 } else { 32 });
        let replaces = region_keys.contains(&key);
        if !replaces && filled >= limit {
            fail_closed_pods.insert(pos);
            let r = refs.get_or_insert_with(|| model.pods.keys().collect())[pos as usize];
            overflow.push(format!("ipcache: no room for {ip}/{} of pod {r} (limit {limit}); it fails closed", key.1));
            continue;
        }
        filled += usize::from(!replaces);
        pods.push((key, info(id)));
    }
    // Two sorted runs: a stable sort merges them and keeps a region before a pod of its key.
    regions.append(&mut pods);
    regions.sort_by_key(|e| e.0);
    // The last of a key's run (the pod) wins.
    regions.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = later.1;
        }
        same
    });
    let entries: BTreeMap<(IpAddr, u8), IpInfoV3> = regions.into_iter().collect();
    Ipcache { entries: Shared::new(entries), all_fail_closed: false, fail_closed_pods, overflow }
}
