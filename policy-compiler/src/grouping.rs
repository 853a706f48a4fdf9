//! The first step of a pod side: every pod address grouped by what policy can see of it
//! (namespace, labels, service account, named ports, CIDR region), one group per identity.
//!
//! At cluster scale this is a pass over every pod, bound by memory: each pod's strings and
//! labels are allocations of their own. On large models the pods are grouped in two shares on
//! two threads, and the shares' groups are merged in model order, so identities are numbered
//! exactly as one pass would number them.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::error::Error;
use crate::fasthash::{HashMap, Prehashed};
use crate::identity::{IdentityAllocator, IdentityAttrs};
use crate::model::{Cidr, Labels, Model, Namespace, NamedPort, Pod, PodRef};
use crate::pods::Regions;

/// From this many pods on, grouping runs in two shares (below, a thread costs more than it
/// saves).
const TWO_SHARES_FROM: usize = 20_000;

/// What tells pod addresses apart, borrowed from the pod (the namespace name stands for its
/// labels).
type PodKey<'a> = (&'a str, &'a Labels, &'a str, Cow<'a, [NamedPort]>, Option<Cidr>);

/// The pods grouped: what [`crate::pods::build`] goes on from.
pub(crate) struct Grouped {
    /// Per pod in model order: the identity of its IPv4 and of its IPv6 address.
    pub ids: Vec<(Option<u32>, Option<u32>)>,
    pub attrs_by_id: BTreeMap<u32, Arc<IdentityAttrs>>,
    /// Per identity, how many pod addresses have it.
    pub members: HashMap<u32, u32>,
    /// IPv4 address claims, `address << 32 | position in model order`.
    pub claims4: Vec<u64>,
    /// IPv6 address claims: (address, position, identity).
    pub claims6: Vec<(IpAddr, u32, u32)>,
    /// The pods placed on this node (with an interface), with their positions.
    pub local: Vec<(PodRef, u32)>,
}

/// A group of one share: its key, its attributes, how many addresses it has.
struct Group<'m> {
    key: Prehashed<PodKey<'m>>,
    attrs: Arc<IdentityAttrs>,
    addresses: u32,
}

/// One share of the pods, grouped; groups are numbered in the order the share first saw them.
#[derive(Default)]
struct Share<'m> {
    groups: Vec<Group<'m>>,
    /// Per pod, the groups of its IPv4 and IPv6 address.
    pods: Vec<(Option<u32>, Option<u32>)>,
    claims4: Vec<u64>,
    /// (address, position, group).
    claims6: Vec<(IpAddr, u32, u32)>,
    local: Vec<(PodRef, u32)>,
}

/// Groups the pods of `model` and numbers the groups with `identities`, in model order.
pub(crate) fn group(model: &Model, regions: &Regions, node: bool, identities: &mut IdentityAllocator) -> Result<Grouped, Error> {
    let two = model.pods.len() >= TWO_SHARES_FROM && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    group_in(model, regions, node, identities, if two { 2 } else { 1 })
}

fn group_in(model: &Model, regions: &Regions, node: bool, identities: &mut IdentityAllocator, shares: usize) -> Result<Grouped, Error> {
    // One hasher for both shares: the merge looks one share's keys up among the other's.
    let state = foldhash::fast::RandomState::default();
    let n = model.pods.len();
    let parts: Vec<Result<Share<'_>, Error>> = match model.pods.keys().nth(n / 2).filter(|_| shares > 1) {
        Some(mid) => std::thread::scope(|s| {
            let second = s.spawn(|| group_share(model, model.pods.range(mid..), n / 2, regions, &state, node));
            let first = group_share(model, model.pods.range(..mid), 0, regions, &state, node);
            // A panic in the share's thread is a bug here too: carried on, not swallowed.
            let second = second.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            vec![first, second]
        }),
        None => vec![group_share(model, model.pods.iter(), 0, regions, &state, node)],
    };
    // The first error in model order, as one pass would stop at it.
    let parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;

    let mut out = Grouped {
        ids: Vec::with_capacity(n),
        attrs_by_id: BTreeMap::new(),
        members: HashMap::default(),
        claims4: Vec::with_capacity(n),
        claims6: Vec::new(),
        local: Vec::new(),
    };
    let mut seen: HashMap<&Prehashed<PodKey<'_>>, u32> = HashMap::default();
    for share in &parts {
        let mut id_of: Vec<u32> = Vec::with_capacity(share.groups.len());
        for g in &share.groups {
            let id = match seen.get(&g.key) {
                Some(&id) => id,
                None => {
                    let id = identities.labels(&g.attrs);
                    out.attrs_by_id.insert(id, g.attrs.clone());
                    seen.insert(&g.key, id);
                    id
                }
            };
            *out.members.entry(id).or_insert(0) += g.addresses;
            id_of.push(id);
        }
        let id = |g: u32| id_of[g as usize];
        out.ids.extend(share.pods.iter().map(|&(a, b)| (a.map(id), b.map(id))));
        out.claims4.extend_from_slice(&share.claims4);
        out.claims6.extend(share.claims6.iter().map(|&(ip, pos, g)| (ip, pos, id(g))));
        out.local.extend(share.local.iter().cloned());
    }
    Ok(out)
}

/// Groups a run of pods, the first at `offset` in model order.
fn group_share<'m>(
    model: &'m Model,
    pods: impl Iterator<Item = (&'m PodRef, &'m crate::model::Shared<Pod>)>,
    offset: usize,
    regions: &Regions,
    state: &foldhash::fast::RandomState,
    node: bool,
) -> Result<Share<'m>, Error> {
    let mut share = Share::default();
    let mut seen: HashMap<Prehashed<PodKey<'m>>, u32> = HashMap::default();
    // The replicas of a workload sit next to each other in pod order (their names share a
    // prefix), so the last two keys (two during a rollout) answer most pods by one comparison
    // with memory just read, before any hashing.
    let mut recent: [Option<(PodKey<'m>, u32)>; 2] = [None, None];
    // Pods come in namespace order: one namespace lookup per run of its pods, and one copy
    // of its labels for all its identities.
    let mut ns: Option<(&Namespace, Arc<Labels>)> = None;
    for (i, (key, pod)) in pods.enumerate() {
        let pos = (offset + i) as u32;
        // Compared field by field: a PodRef per pod would allocate twice for every pod.
        if key.namespace != pod.namespace || key.name != pod.name {
            return Err(Error::InconsistentModel { what: "pod", key: key.to_string(), actual: pod.pod_ref().to_string() });
        }
        // A pod is enforced with an address of either family (dual-stack, IPv4-only or
        // IPv6-only); without any it has nothing to enforce on.
        if pod.ip.is_none() && pod.ip6.is_none() {
            share.pods.push((None, None));
            continue;
        }
        let namespace_labels = match &ns {
            Some((n, l)) if n.name == pod.namespace => l.clone(),
            _ => {
                let n = model.namespaces.get(&pod.namespace).ok_or_else(|| Error::MissingNamespace {
                    pod: key.clone(),
                    namespace: pod.namespace.clone(),
                    origin: None,
                })?;
                let l = Arc::new(n.labels.clone());
                ns = Some((n, l.clone()));
                l
            }
        };
        let ports: Cow<'m, [NamedPort]> = if pod.ports.windows(2).all(|w| w[0] < w[1]) {
            Cow::Borrowed(&pod.ports)
        } else {
            let mut ports = pod.ports.clone();
            ports.sort();
            ports.dedup();
            Cow::Owned(ports)
        };
        let mut identify = |ip: IpAddr| -> u32 {
            let region = regions.of(ip);
            let key: PodKey<'m> = (pod.namespace.as_str(), &pod.labels, pod.service_account.as_str(), ports.clone(), region);
            let g = match recent.iter().flatten().find(|(k, _)| *k == key) {
                Some(&(_, g)) => g,
                None => {
                    let key = Prehashed::new(state, key);
                    let g = match seen.get(&key) {
                        Some(&g) => g,
                        None => {
                            let attrs = Arc::new(IdentityAttrs {
                                namespace: pod.namespace.clone(),
                                namespace_labels: namespace_labels.clone(),
                                labels: pod.labels.clone(),
                                service_account: pod.service_account.clone(),
                                ports: ports.clone().into_owned(),
                                region,
                            });
                            let g = share.groups.len() as u32;
                            share.groups.push(Group { key: key.clone(), attrs, addresses: 0 });
                            seen.insert(key.clone(), g);
                            g
                        }
                    };
                    recent[1] = recent[0].take();
                    recent[0] = Some((key.key, g));
                    g
                }
            };
            share.groups[g as usize].addresses += 1;
            match ip {
                IpAddr::V4(a) => share.claims4.push(u64::from(a.to_bits()) << 32 | u64::from(pos)),
                IpAddr::V6(_) => share.claims6.push((ip, pos, g)),
            }
            g
        };
        let g4 = pod.ip.map(|a| identify(IpAddr::V4(a)));
        let g6 = pod.ip6.map(|a| identify(IpAddr::V6(a)));
        share.pods.push((g4, g6));
        if node && pod.interface.is_some() {
            share.local.push((key.clone(), pos));
        }
    }
    Ok(share)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Namespace, Pod};

    /// Pods over three namespaces, with repeating label sets, some dual-stack, some without an
    /// address, ports in both orders, and one address claimed twice.
    fn model() -> Model {
        let mut m = Model::default();
        for ns in ["a", "b", "c"] {
            m.upsert_namespace(Namespace { name: ns.into(), labels: [("team".to_string(), ns.to_string())].into() });
        }
        for i in 0..600u32 {
            let ns = ["a", "b", "c"][(i % 3) as usize];
            let ports = vec![
                NamedPort { name: Some("http".into()), port: 80 + (i % 2) as u16, protocol: crate::model::Protocol::Tcp },
                NamedPort { name: None, port: 9000, protocol: crate::model::Protocol::Tcp },
            ];
            m.upsert_pod(Pod {
                namespace: ns.into(),
                name: format!("p{i:04}"),
                labels: [("app".to_string(), format!("app{}", i % 7)), ("v".to_string(), format!("{}", i % 2))].into(),
                service_account: "default".into(),
                ip: (i % 11 != 0).then(|| std::net::Ipv4Addr::new(10, (i / 250) as u8, (i % 250) as u8, if i == 5 { 1 } else { 7 })),
                ip6: (i % 4 == 0).then(|| std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16)),
                ports: if i % 5 == 0 { ports.into_iter().rev().collect() } else { ports },
                interface: (i % 9 == 0).then(|| format!("veth{i}")),
            });
        }
        m
    }

    #[test]
    fn two_shares_number_and_group_as_one_pass_does() {
        let m = model();
        let prefixes = [Cidr::new(std::net::Ipv4Addr::new(10, 1, 0, 0), 16).expect("cidr")].into_iter().collect();
        let regions = Regions::new(&prefixes);
        let (mut one, mut two) = (IdentityAllocator::new(), IdentityAllocator::new());
        let a = group_in(&m, &regions, true, &mut one, 1).expect("one share");
        let b = group_in(&m, &regions, true, &mut two, 2).expect("two shares");
        assert!(a.attrs_by_id.len() > 20, "the model has many identities: {}", a.attrs_by_id.len());
        assert_eq!(a.ids, b.ids, "every pod's identities");
        assert_eq!(a.attrs_by_id, b.attrs_by_id, "identity numbers and attributes");
        assert_eq!(a.members, b.members, "addresses per identity");
        assert_eq!((&a.claims4, &a.claims6), (&b.claims4, &b.claims6), "address claims");
        assert_eq!(a.local, b.local, "the node's pods");
    }

    #[test]
    fn the_first_error_in_model_order_wins_across_shares() {
        let mut m = model();
        // Pods sort by namespace: a's are in the first share, c's in the second. Both are
        // missing; a's pod is reported.
        m.namespaces.remove("a");
        m.namespaces.remove("c");
        let regions = Regions::new(&Default::default());
        let err = group_in(&m, &regions, false, &mut IdentityAllocator::new(), 2).err().expect("missing namespaces fail");
        assert!(err.to_string().contains("namespace \"a\""), "{err}");
    }
}
