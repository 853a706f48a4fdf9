//! What a compile derives from the pods and namespaces alone (given the prefixes policies
//! name): pod identities, address owners and the selection index. At cluster scale this is
//! most of a compile (every pod visited, its labels hashed and copied), while a policy change
//! leaves it alone, so the [`crate::Compiler`] keeps it while its inputs are the same
//! ([`crate::model::Shared::same`] pods and namespaces, equal prefixes).

use std::collections::{BTreeMap, BTreeSet, HashSet as StdHashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::error::Error;
use crate::fasthash::{HashMap, HashSet};
use bulkhead_common::{IpInfoV3, identity};

use crate::identity::{IdentityAllocator, IdentityAttrs};
use crate::model::{Cidr, Model, Namespace, NamedPort, Pod, PodRef, Shared};
use crate::select::{Ident, Index};

/// The pods' side of a compile.
pub(crate) struct PodSide {
    /// Per pod, in model order: the identity of its IPv4 address and of its IPv6 address.
    /// Each address has the identity of the pod's attributes and that address's region, so a
    /// dual-stack pod has two when its addresses lie in different regions (one when neither
    /// does): a CIDR then matches only addresses of its own family. Pods without an address
    /// have neither and are not enforced.
    pub ids: Vec<(Option<u32>, Option<u32>)>,
    pub attrs_by_id: BTreeMap<u32, IdentityAttrs>,
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
}

impl PodSide {
    /// The identity pair of each pod with an address, with the pod, in model order.
    pub fn pods<'m>(&self, model: &'m Model) -> Vec<(&'m PodRef, &'m Pod, Option<u32>, Option<u32>)> {
        model
            .pods
            .iter()
            .zip(&self.ids)
            .filter(|(_, (a, b))| a.is_some() || b.is_some())
            .map(|((r, p), &(a, b))| (r, p, a, b))
            .collect()
    }

    /// The pods with an endpoint entry (on a node: its own pods only), with their position in
    /// model order.
    pub fn endpoints<'m>(&'m self, model: &'m Model, node: bool) -> Box<dyn Iterator<Item = (u32, &'m PodRef, &'m Pod)> + 'm> {
        // One of the two identities exists for pods with an address.
        let enforced = |&(pos, _, _): &(u32, &PodRef, &Pod)| self.ids.get(pos as usize).is_some_and(|&(a, b)| a.is_some() || b.is_some());
        if node {
            Box::new(self.local.iter().filter_map(|(r, pos)| model.pods.get_key_value(r).map(|(r, p)| (*pos, r, p))).filter(enforced))
        } else {
            Box::new(model.pods.iter().enumerate().map(|(pos, (r, p))| (pos as u32, r, p)).filter(enforced))
        }
    }

    /// The owner (position in model order) and identity of a pod address.
    pub fn owner(&self, ip: IpAddr) -> Option<(u32, u32)> {
        self.owners.binary_search_by_key(&ip, |o| o.0).ok().map(|i| (self.owners[i].1, self.owners[i].2))
    }
}

/// The last pod side built, with what it was built from.
pub(crate) struct PodCache {
    pods: Shared<BTreeMap<PodRef, Pod>>,
    namespaces: Shared<BTreeMap<String, Namespace>>,
    prefixes: BTreeSet<Cidr>,
    side: Arc<PodSide>,
    /// The IP cache of the previous compile, with the peer classes it was built for.
    ipcache: Option<(HashMap<u32, u32>, Arc<Ipcache>)>,
}

impl PodCache {
    /// The kept pod side when `model` and `prefixes` are what it was built from.
    pub fn hit(cache: &Option<PodCache>, model: &Model, prefixes: &BTreeSet<Cidr>) -> Option<Arc<PodSide>> {
        let c = cache.as_ref()?;
        (Shared::same(&c.pods, &model.pods) && Shared::same(&c.namespaces, &model.namespaces) && c.prefixes == *prefixes)
            .then(|| c.side.clone())
    }

    pub fn new(model: &Model, prefixes: BTreeSet<Cidr>, side: Arc<PodSide>) -> PodCache {
        PodCache { pods: model.pods.clone(), namespaces: model.namespaces.clone(), prefixes, side, ipcache: None }
    }

    /// Gives `model` the kept pods and namespaces where its own are equal to them, so that a
    /// caller rebuilding its model from scratch still meets [`PodCache::hit`].
    pub fn share_unchanged(&self, model: &mut Model) {
        if !Shared::same(&self.pods, &model.pods) && *self.pods == *model.pods {
            model.pods = self.pods.clone();
        }
        if !Shared::same(&self.namespaces, &model.namespaces) && *self.namespaces == *model.namespaces {
            model.namespaces = self.namespaces.clone();
        }
    }

    /// The kept IP cache when it was built for these peer classes.
    pub fn ipcache(&self, class_of: &HashMap<u32, u32>) -> Option<Arc<Ipcache>> {
        self.ipcache.as_ref().filter(|(c, _)| c == class_of).map(|(_, i)| i.clone())
    }

    pub fn keep_ipcache(&mut self, class_of: HashMap<u32, u32>, ipcache: Arc<Ipcache>) {
        self.ipcache = Some((class_of, ipcache));
    }
}

/// Checks the pods and namespaces of `model` hold together.
fn check(model: &Model) -> Result<(), Error> {
    for (key, ns) in &model.namespaces {
        if *key != ns.name {
            return Err(Error::InconsistentModel { what: "namespace", key: key.clone(), actual: ns.name.clone() });
        }
    }
    for (key, pod) in &model.pods {
        // Compared field by field: a PodRef per pod would allocate twice for every pod.
        if key.namespace != pod.namespace || key.name != pod.name {
            return Err(Error::InconsistentModel { what: "pod", key: key.to_string(), actual: pod.pod_ref().to_string() });
        }
        if (pod.ip.is_some() || pod.ip6.is_some()) && !model.namespaces.contains_key(&pod.namespace) {
            return Err(Error::MissingNamespace { pod: key.clone(), namespace: pod.namespace.clone(), origin: None });
        }
    }
    Ok(())
}

/// Builds the pod side of `model` for these collected prefixes; `node` restricts selection
/// to the pods placed here (those with an interface).
pub(crate) fn build(model: &Model, prefixes: &BTreeSet<Cidr>, node: bool, identities: &mut IdentityAllocator) -> Result<PodSide, Error> {
    check(model)?;
    let prefix_keys: StdHashSet<Cidr> = prefixes.iter().copied().collect();
    // Only the prefix lengths policies use are tried, longest first, per family.
    let lengths = |v6: bool| -> Vec<u8> {
        prefixes.iter().filter(|c| c.is_ipv6() == v6).map(|c| c.prefix_len()).collect::<BTreeSet<u8>>().into_iter().rev().collect()
    };
    let (lengths4, lengths6) = (lengths(false), lengths(true));
    let region_of = |ip: IpAddr| -> Option<Cidr> {
        let lengths = if ip.is_ipv6() { &lengths6 } else { &lengths4 };
        lengths.iter().map(|&len| Cidr::containing(ip, len)).find(|c| prefix_keys.contains(c))
    };

    // Pods are grouped by borrowed attributes first (the namespace name stands for its
    // labels), so the attributes are copied once per identity, not per pod.
    type PodKey<'a> = (&'a str, &'a crate::model::Labels, &'a str, std::borrow::Cow<'a, [NamedPort]>, Option<Cidr>);
    let mut attrs_by_id: BTreeMap<u32, IdentityAttrs> = BTreeMap::new();
    let mut ids = Vec::with_capacity(model.pods.len());
    let mut seen: HashMap<PodKey<'_>, u32> = HashMap::default();
    for pod in model.pods.values() {
        // A pod is enforced with an address of either family (dual-stack, IPv4-only or
        // IPv6-only); without any it has nothing to enforce on.
        if pod.ip.is_none() && pod.ip6.is_none() {
            ids.push((None, None));
            continue;
        }
        let ports: std::borrow::Cow<'_, [NamedPort]> = if pod.ports.windows(2).all(|w| w[0] < w[1]) {
            std::borrow::Cow::Borrowed(&pod.ports)
        } else {
            let mut ports = pod.ports.clone();
            ports.sort();
            ports.dedup();
            std::borrow::Cow::Owned(ports)
        };
        let mut identify = |region: Option<Cidr>| -> u32 {
            let key: PodKey<'_> = (pod.namespace.as_str(), &pod.labels, pod.service_account.as_str(), ports.clone(), region);
            match seen.get(&key) {
                Some(&id) => id,
                None => {
                    let attrs = IdentityAttrs {
                        namespace: pod.namespace.clone(),
                        namespace_labels: model.namespaces[&pod.namespace].labels.clone(),
                        labels: pod.labels.clone(),
                        service_account: pod.service_account.clone(),
                        ports: key.3.to_vec(),
                        region: key.4,
                    };
                    let id = identities.labels(&attrs);
                    attrs_by_id.insert(id, attrs);
                    seen.insert(key, id);
                    id
                }
            }
        };
        let id4 = pod.ip.map(|a| identify(region_of(IpAddr::V4(a))));
        let id6 = pod.ip6.map(|a| identify(region_of(IpAddr::V6(a))));
        ids.push((id4, id6));
    }
    drop(seen);

    // Address -> (owner pod, identity): the first claim in model order keeps an address.
    let mut owners: Vec<(IpAddr, u32, u32)> = Vec::with_capacity(ids.len());
    for (pos, (pod, &(id4, id6))) in model.pods.values().zip(&ids).enumerate() {
        let addrs = [pod.ip.zip(id4).map(|(a, id)| (IpAddr::V4(a), id)), pod.ip6.zip(id6).map(|(a, id)| (IpAddr::V6(a), id))];
        owners.extend(addrs.into_iter().flatten().map(|(ip, id)| (ip, pos as u32, id)));
    }
    // Stable: among claims of one address, the first pod's comes first and stays.
    owners.sort_by_key(|o| o.0);
    owners.dedup_by_key(|o| o.0);

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
    let local: Vec<(PodRef, u32)> = model
        .pods
        .iter()
        .enumerate()
        .filter(|(_, (_, p))| node && p.interface.is_some())
        .map(|(pos, (r, _))| (r.clone(), pos as u32))
        .collect();
    if node {
        index.restrict_local(
            model.pods.values().zip(&ids).filter(|(p, _)| p.interface.is_some()).flat_map(|(_, &(a, b))| a.into_iter().chain(b)),
        );
    }
    Ok(PodSide { ids, attrs_by_id, owners, regions, world6, index: Arc::new(index), local })
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
    let mut entries = BTreeMap::new();
    let mut fail_closed_pods = HashSet::default();
    let mut overflow = Vec::new();
    if side.regions.len() > limit {
        overflow.push(format!("ipcache: {} policy prefixes do not fit (limit {limit}); every endpoint fails closed", side.regions.len()));
        return Ipcache { entries: Shared::new(entries), all_fail_closed: true, fail_closed_pods, overflow };
    }
    for &(c, id) in &side.regions {
        entries.insert((c.addr(), c.prefix_len()), info(id));
    }
    // Only when it is judged otherwise than a miss (the datapath's WORLD6, any peer).
    if let Some(&class) = class_of.get(&identity::WORLD6).filter(|&&c| side.world6 && c != identity::ANY) {
        entries.insert((Cidr::all(true).addr(), 0), IpInfoV3 { identity: identity::WORLD6, peer_class: class });
    }
    // Pod names for the reports, listed on the first one.
    let mut refs: Option<Vec<&PodRef>> = None;
    // In address order, so which pods miss out on a full map does not vary.
    for &(ip, pos, id) in &side.owners {
        let key = (ip, if ip.is_ipv6() { 128 } else { 32 });
        if !entries.contains_key(&key) && entries.len() >= limit {
            fail_closed_pods.insert(pos);
            let r = refs.get_or_insert_with(|| model.pods.keys().collect())[pos as usize];
            overflow.push(format!("ipcache: no room for {ip}/{} of pod {r} (limit {limit}); it fails closed", key.1));
            continue;
        }
        entries.insert(key, info(id));
    }
    Ipcache { entries: Shared::new(entries), all_fail_closed: false, fail_closed_pods, overflow }
}
