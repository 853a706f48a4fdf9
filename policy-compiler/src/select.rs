//! Selector and entity evaluation against identities (not pods), cached per compile.
//!
//! Every identity is either a pod identity (labels, namespace, service account, named ports
//! and CIDR region) or a region identity (non-pod addresses of one collected prefix), plus the
//! baseline: an address matched by no selector and in no prefix beyond the shortest one. An
//! entity predicate is stored as the baseline's answer plus the sorted identities whose answer
//! differs from it ([`PredSet`]), which is what the compiler's per-peer signatures are built
//! from (an inverted index: rule -> deviating peers).

use std::rc::Rc;
use std::sync::Arc;

use crate::fasthash::HashMap;
use crate::identity::IdentityAttrs;
use crate::model::{Cidr, NamedPort};
use crate::tiered::{EntityMatch, NamedLabels, NamespaceMatch, PodLabels, Selector, TieredPolicy};

/// What selectors see of a pod identity.
#[derive(Debug)]
pub(crate) struct PodSide {
    /// The identity's attributes (namespace and its labels, labels, service account, ports),
    /// shared with the compile's identity table; selectors see them through views that add
    /// Calico's implicit labels, so no label map is copied per identity.
    pub attrs: Arc<IdentityAttrs>,
}

impl PodSide {
    /// The labels pod selectors see: the pod's own plus Calico's implicit ones.
    pub fn labels(&self) -> PodLabels<'_> {
        PodLabels::new(&self.attrs.namespace, &self.attrs.service_account, &self.attrs.labels)
    }

    /// The labels namespace selectors see: the namespace's plus its implicit name label.
    pub fn ns_labels(&self) -> NamedLabels<'_> {
        NamedLabels::namespace(&self.attrs.namespace, &self.attrs.namespace_labels)
    }

    /// The labels service account selectors see: the implicit name label.
    pub fn sa_labels(&self) -> NamedLabels<'_> {
        NamedLabels::service_account(&self.attrs.service_account)
    }
}

#[derive(Debug)]
pub(crate) struct Ident {
    pub id: u32,
    pub pod: Option<PodSide>,
    pub region: Option<Cidr>,
}

impl Ident {
    pub fn from_attrs(id: u32, a: &Arc<IdentityAttrs>) -> Ident {
        Ident { id, pod: Some(PodSide { attrs: a.clone() }), region: a.region }
    }
}

/// Whether the identity part of an entity (selectors, namespace, nets; not ports) holds.
pub(crate) fn entity_holds(e: &EntityMatch, who: &Ident) -> bool {
    if needs_pod(e) {
        let Some(pod) = &who.pod else { return false };
        if let Some(s) = &e.selector
            && !s.matches(&pod.labels())
        {
            return false;
        }
        if let Some(s) = &e.not_selector
            && s.matches(&pod.labels())
        {
            return false;
        }
        match &e.namespace {
            Some(NamespaceMatch::Named(n)) if *n != pod.attrs.namespace => return false,
            Some(NamespaceMatch::Selector(s)) if !s.matches(&pod.ns_labels()) => return false,
            _ => {}
        }
        if let Some(s) = &e.service_account_selector
            && !s.matches(&pod.sa_labels())
        {
            return false;
        }
    }
    // Collected prefixes are nested or disjoint and every net is collected, so a net contains
    // the address iff it contains the address's region.
    let in_any = |nets: &[Cidr]| who.region.is_some_and(|q| nets.iter().any(|n| n.contains(q)));
    if !e.nets.is_empty() && !in_any(&e.nets) {
        return false;
    }
    !in_any(&e.not_nets)
}

fn needs_pod(e: &EntityMatch) -> bool {
    e.selector.is_some() || e.not_selector.is_some() || e.namespace.is_some() || e.service_account_selector.is_some()
}

/// A predicate over identities: the baseline's answer and the identities answering otherwise.
#[derive(Debug, Default)]
pub(crate) struct PredSet {
    pub baseline: bool,
    /// Sorted.
    pub diff: Vec<u32>,
}

impl PredSet {
    pub fn holds(&self, id: u32) -> bool {
        self.baseline ^ self.diff.binary_search(&id).is_ok()
    }
}

type EntityKey<'m> =
    (Option<&'m Selector>, Option<&'m Selector>, Option<&'m NamespaceMatch>, Option<&'m Selector>, &'m [Cidr], &'m [Cidr]);

type SelectKey<'m> = (Option<&'m str>, &'m Selector, Option<&'m Selector>, Option<&'m Selector>);

/// The identities of one compile, indexed for selection. Owned and built from the pods,
/// namespaces and prefixes alone, so a compiler keeps it while those are unchanged.
pub(crate) struct Index {
    /// Pod identities, then region identities.
    pub idents: Vec<Ident>,
    pub n_pods: usize,
    /// The baseline address (see module doc).
    pub baseline: Ident,
    by_id: HashMap<u32, usize>,
    by_ns: HashMap<String, Vec<usize>>,
    /// Pod selector label (key, value) -> pod identity indexes, ascending: selectors naming a
    /// label are matched against its holders only, so a selection costs what it selects, not
    /// the cluster's identity count.
    by_label: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Namespace -> its namespace-selector labels (equal for every identity of a namespace).
    ns_labels: HashMap<String, usize>,
    /// Identities policies are compiled for (`None`: every pod identity).
    local: Option<Vec<usize>>,
    /// Port name -> pod identities defining it (any protocol).
    named: HashMap<String, Vec<u32>>,
    /// Identity -> its named ports as a number shared by every identity with the same ones
    /// (identities without named ports have none): an egress rule naming a port resolves it on
    /// the peer, and peers are grouped by these numbers, not by comparing port lists per peer.
    port_group: HashMap<u32, u32>,
    /// Port group -> its named ports (sorted).
    port_groups: Vec<Vec<NamedPort>>,
    /// (family (1 = IPv6), first address, prefix length, index) of every region, sorted: the
    /// identities inside a prefix are one run of it, so an ipBlock entity costs the regions it
    /// covers, not the cluster's identity count.
    by_region: Vec<(bool, u128, u8, usize)>,
}

/// An [`Index`] with the predicate caches of one compile (keyed by the compiled policies'
/// selectors, which live as long as the compile's model).
pub(crate) struct Universe<'m> {
    ix: std::sync::Arc<Index>,
    preds: HashMap<EntityKey<'m>, Rc<PredSet>>,
    selections: HashMap<SelectKey<'m>, Rc<[u32]>>,
}

impl std::ops::Deref for Universe<'_> {
    type Target = Index;
    fn deref(&self) -> &Index {
        &self.ix
    }
}

impl Index {
    pub fn new(pods: Vec<Ident>, regions: Vec<Ident>, baseline: Ident) -> Self {
        let n_pods = pods.len();
        let idents: Vec<Ident> = pods.into_iter().chain(regions).collect();
        let mut by_id = HashMap::with_capacity_and_hasher(idents.len(), Default::default());
        let mut by_ns: HashMap<String, Vec<usize>> = HashMap::default();
        let mut named: HashMap<String, Vec<u32>> = HashMap::default();
        let mut by_label: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::default();
        let mut ns_labels: HashMap<String, usize> = HashMap::default();
        let mut port_group: HashMap<u32, u32> = HashMap::default();
        let mut group_of: HashMap<&[NamedPort], u32> = HashMap::default();
        let mut port_groups: Vec<Vec<NamedPort>> = Vec::new();
        for (i, ident) in idents.iter().enumerate() {
            by_id.insert(ident.id, i);
            if let Some(p) = &ident.pod {
                let ns = &p.attrs.namespace;
                // Keys are copied only when first seen: most identities add to existing lists.
                match by_ns.get_mut(ns) {
                    Some(v) => v.push(i),
                    None => {
                        by_ns.insert(ns.clone(), vec![i]);
                        ns_labels.insert(ns.clone(), i);
                    }
                }
                for (k, v) in p.labels().iter() {
                    let values = match by_label.get_mut(k) {
                        Some(values) => values,
                        None => by_label.entry(k.to_string()).or_default(),
                    };
                    match values.get_mut(v) {
                        Some(holders) => holders.push(i),
                        None => {
                            values.insert(v.to_string(), vec![i]);
                        }
                    }
                }
                let ports = &p.attrs.ports;
                for port in ports {
                    if let Some(n) = &port.name {
                        let v = match named.get_mut(n) {
                            Some(v) => v,
                            None => named.entry(n.clone()).or_default(),
                        };
                        if v.last() != Some(&ident.id) {
                            v.push(ident.id);
                        }
                    }
                }
                if ports.iter().any(|port| port.name.is_some()) {
                    let g = *group_of.entry(ports.as_slice()).or_insert_with(|| {
                        port_groups.push(ports.iter().filter(|port| port.name.is_some()).cloned().collect());
                        port_groups.len() as u32 - 1
                    });
                    port_group.insert(ident.id, g);
                }
            }
        }
        drop(group_of);
        let mut by_region: Vec<(bool, u128, u8, usize)> = idents
            .iter()
            .enumerate()
            .filter_map(|(i, ident)| ident.region.map(|r| (r.is_ipv6(), r.range().0, r.prefix_len(), i)))
            .collect();
        by_region.sort_unstable();
        Index { by_region, idents, n_pods, baseline, by_id, by_ns, by_label, ns_labels, local: None, named, port_group, port_groups }
    }

    /// Restricts [`Universe::selected`] to these pod identities (a node's own endpoints):
    /// policies are compiled for them only, while every identity stays a possible peer.
    pub fn restrict_local(&mut self, ids: impl IntoIterator<Item = u32>) {
        let mut v: Vec<usize> = ids.into_iter().filter_map(|id| self.by_id.get(&id).copied()).collect();
        v.sort_unstable();
        v.dedup();
        self.local = Some(v);
    }

    /// The pod identities (ascending indexes) with label `k`, whatever its value: made when a
    /// selector asks (few do), not kept for every key.
    fn key_holders(&self, k: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.by_label.get(k).into_iter().flat_map(|values| values.values().flatten().copied()).collect();
        // An identity has one value per key: no repeats to remove.
        out.sort_unstable();
        out
    }

    /// The pod identities (ascending indexes) with label `k` = `v`.
    fn holders(&self, k: &str, v: &str) -> &[usize] {
        self.by_label.get(k).and_then(|values| values.get(v)).map_or(&[], Vec::as_slice)
    }

    /// A superset of the pod identities (ascending indexes) whose selector labels can satisfy
    /// `s`, or `None` when `s` names no label that narrows it (negations, `all()`).
    fn label_candidates(&self, s: &Selector) -> Option<Vec<usize>> {
        match s {
            Selector::Eq(k, v) => Some(self.holders(k, v).to_vec()),
            Selector::Has(k) | Selector::Contains(k, _) | Selector::StartsWith(k, _) | Selector::EndsWith(k, _) => {
                Some(self.key_holders(k))
            }
            Selector::In(k, vs) => {
                let mut out: Vec<usize> =
                    vs.iter().flat_map(|v| self.holders(k, v).iter().copied()).collect();
                out.sort_unstable();
                out.dedup();
                Some(out)
            }
            // The narrowest conjunct bounds the conjunction.
            Selector::And(parts) => parts.iter().filter_map(|p| self.label_candidates(p)).min_by_key(Vec::len),
            Selector::Or(parts) => {
                let mut out = Vec::new();
                for p in parts {
                    out.extend(self.label_candidates(p)?);
                }
                out.sort_unstable();
                out.dedup();
                Some(out)
            }
            _ => None,
        }
    }

    /// A superset of the pod identities in namespaces whose labels satisfy `s`.
    fn namespace_candidates(&self, s: &Selector) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .ns_labels
            .iter()
            .filter(|(_, i)| s.matches(&self.idents[**i].pod.as_ref().expect("pod identity").ns_labels()))
            .flat_map(|(ns, _)| self.by_ns.get(ns).into_iter().flatten().copied())
            .collect();
        out.sort_unstable();
        out
    }

    /// The narrowest known superset of pod identities a pod-side entity can hold for, as
    /// ascending indexes (`None`: every pod identity).
    fn pod_candidates(&self, selector: Option<&Selector>, namespace: Option<&NamespaceMatch>) -> Option<Vec<usize>> {
        let mut best: Option<Vec<usize>> = match namespace {
            Some(NamespaceMatch::Named(n)) => Some(self.by_ns.get(n).cloned().unwrap_or_default()),
            Some(NamespaceMatch::Selector(s)) => Some(self.namespace_candidates(s)),
            None => None,
        };
        if let Some(c) = selector.and_then(|s| self.label_candidates(s))
            && best.as_ref().is_none_or(|b| c.len() < b.len())
        {
            best = Some(c);
        }
        best
    }

    /// Indexes (ascending) of the identities whose region lies inside one of `nets`. Collected
    /// prefixes are nested or disjoint and every net is collected, so a region starting inside
    /// a net and no wider than it lies inside it.
    fn inside(&self, nets: &[Cidr]) -> Vec<usize> {
        let mut out = Vec::new();
        for n in nets {
            let (lo, hi) = n.range();
            let v6 = n.is_ipv6();
            let from = self.by_region.partition_point(|&(f, s, _, _)| (f, s) < (v6, lo));
            out.extend(
                self.by_region[from..]
                    .iter()
                    .take_while(|&&(f, s, _, _)| f == v6 && s <= hi)
                    .filter(|&&(_, _, l, _)| l >= n.prefix_len())
                    .map(|&(_, _, _, i)| i),
            );
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// A superset of the identities (ascending indexes) whose answer to an entity without a
    /// pod side can differ from the baseline's, or `None` for every identity. With the baseline
    /// outside all of the entity's prefixes, an identity differs only inside `nets` (the entity
    /// holds there and nowhere else), or, with no `nets`, inside `not_nets`.
    fn net_candidates(&self, e: &EntityMatch) -> Option<Vec<usize>> {
        let baseline_in = |nets: &[Cidr]| self.baseline.region.is_some_and(|q| nets.iter().any(|n| n.contains(q)));
        if baseline_in(&e.nets) || baseline_in(&e.not_nets) {
            return None;
        }
        Some(self.inside(if e.nets.is_empty() { &e.not_nets } else { &e.nets }))
    }

    #[cfg(test)]
    pub fn ident(&self, id: u32) -> Option<&Ident> {
        self.by_id.get(&id).map(|&i| &self.idents[i])
    }

    /// The port group of identity `id` (`None`: it has no named ports), and its named ports.
    pub fn named_ports(&self, id: u32) -> Option<(u32, &[NamedPort])> {
        self.port_group.get(&id).map(|&g| (g, self.port_groups[g as usize].as_slice()))
    }

    /// Pod identities defining a port called `name`.
    pub fn defining(&self, name: &str) -> &[u32] {
        self.named.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

}

impl<'m> Universe<'m> {
    pub fn new(ix: std::sync::Arc<Index>) -> Self {
        Universe { ix, preds: HashMap::default(), selections: HashMap::default() }
    }

    /// The identity predicate of an entity (cached by content).
    pub fn entity(&mut self, e: &'m EntityMatch) -> Rc<PredSet> {
        let key = (
            e.selector.as_ref(),
            e.not_selector.as_ref(),
            e.namespace.as_ref(),
            e.service_account_selector.as_ref(),
            e.nets.as_slice(),
            e.not_nets.as_slice(),
        );
        if let Some(p) = self.preds.get(&key) {
            return p.clone();
        }
        let baseline = entity_holds(e, &self.baseline);
        let narrowed = if needs_pod(e) { self.pod_candidates(e.selector.as_ref(), e.namespace.as_ref()) } else { self.net_candidates(e) };
        let candidates: Box<dyn Iterator<Item = usize>> = match (narrowed, needs_pod(e)) {
            (Some(v), _) => Box::new(v.into_iter()),
            (None, true) => Box::new(0..self.n_pods),
            (None, false) => Box::new(0..self.idents.len()),
        };
        // Identities outside the candidates answer like the baseline by construction.
        let mut diff: Vec<u32> =
            candidates.filter(|&i| entity_holds(e, &self.idents[i]) != baseline).map(|i| self.idents[i].id).collect();
        diff.sort_unstable();
        let p = Rc::new(PredSet { baseline, diff });
        self.preds.insert(key, p.clone());
        p
    }

    /// Pod identities a policy applies to (its endpoint selection; namespaced kinds only in
    /// their own namespace). Sorted.
    pub fn selected(&mut self, p: &'m TieredPolicy) -> Rc<[u32]> {
        let ns = if p.id.kind.is_namespaced() { Some(p.id.namespace.as_deref().unwrap_or("")) } else { None };
        let key = (ns, &p.selector, p.namespace_selector.as_ref(), p.service_account_selector.as_ref());
        if let Some(s) = self.selections.get(&key) {
            return s.clone();
        }
        let candidates: Box<dyn Iterator<Item = usize>> = match (&self.local, ns) {
            (Some(local), Some(n)) => {
                let idents = &self.idents;
                Box::new(local.iter().copied().filter(move |&i| idents[i].pod.as_ref().is_some_and(|p| p.attrs.namespace == n)))
            }
            (Some(local), None) => Box::new(local.iter().copied()),
            (None, Some(n)) => Box::new(self.by_ns.get(n).into_iter().flatten().copied()),
            (None, None) => Box::new(0..self.n_pods),
        };
        let mut out: Vec<u32> = candidates
            .filter(|&i| {
                let pod = self.idents[i].pod.as_ref().expect("pod identity");
                p.selector.matches(&pod.labels())
                    && p.namespace_selector.as_ref().is_none_or(|s| s.matches(&pod.ns_labels()))
                    && p.service_account_selector.as_ref().is_none_or(|s| s.matches(&pod.sa_labels()))
            })
            .map(|i| self.idents[i].id)
            .collect();
        out.sort_unstable();
        let out: Rc<[u32]> = out.into();
        self.selections.insert(key, out.clone());
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn cidr(s: &str) -> Cidr {
        let (a, l) = s.split_once('/').expect("a/len");
        Cidr::new(a.parse::<Ipv4Addr>().expect("address"), l.parse().expect("length")).expect("canonical")
    }

    /// The narrowed evaluation of address-only entities answers exactly like asking every
    /// identity, with the baseline in no prefix and in 0.0.0.0/0.
    #[test]
    fn ip_block_entities_agree_with_asking_every_identity() {
        let prefixes = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "10.9.0.0/16", "192.168.0.0/16", "192.168.7.0/24"];
        let sets: Vec<Vec<Cidr>> = vec![
            vec![],
            vec![cidr("10.0.0.0/8")],
            vec![cidr("10.1.0.0/16"), cidr("192.168.0.0/16")],
            vec![cidr("10.1.2.3/32")],
            vec![cidr("0.0.0.0/0")],
            vec![cidr("192.168.7.0/24")],
        ];
        for with_all in [false, true] {
            let mut regions: Vec<Ident> =
                prefixes.iter().enumerate().map(|(i, p)| Ident { id: 1000 + i as u32, pod: None, region: Some(cidr(p)) }).collect();
            if with_all {
                regions.push(Ident { id: 999, pod: None, region: Some(cidr("0.0.0.0/0")) });
            }
            // Pod identities: two in regions, one in no prefix.
            let pods: Vec<Ident> = [Some("10.1.2.0/24"), Some("192.168.0.0/16"), None]
                .iter()
                .enumerate()
                .map(|(i, r)| Ident::from_attrs(10 + i as u32, &Arc::new(IdentityAttrs { namespace: "ns".into(), region: r.map(cidr), ..Default::default() })))
                .collect();
            let baseline = Ident { id: 0, pod: None, region: with_all.then(|| cidr("0.0.0.0/0")) };
            let mut uni = Universe::new(std::sync::Arc::new(Index::new(pods, regions, baseline)));
            let ids: Vec<u32> = uni.idents.iter().map(|i| i.id).collect();
            for nets in &sets {
                for not_nets in &sets {
                    // Every net of a real compile is collected: 0.0.0.0/0 only where it is.
                    if !with_all && nets.iter().chain(not_nets).any(|n| n.prefix_len() == 0) {
                        continue;
                    }
                    let e = Box::leak(Box::new(EntityMatch { nets: nets.clone(), not_nets: not_nets.clone(), ..Default::default() }));
                    let p = uni.entity(e);
                    for &id in &ids {
                        let want = entity_holds(e, uni.ident(id).expect("ident"));
                        assert_eq!(p.holds(id), want, "identity {id}, nets {nets:?}, not_nets {not_nets:?}, 0.0.0.0/0 collected: {with_all}");
                    }
                    assert_eq!(p.baseline, entity_holds(e, &uni.baseline));
                }
            }
        }
    }
}
