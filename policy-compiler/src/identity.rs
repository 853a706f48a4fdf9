//! Identity numbers for groups of pods and for CIDR prefixes.
//!
//! Policy keys name identities, not pods, so the number of keys grows with the number of
//! distinct label sets rather than with the number of pods, and a new pod with a known label
//! set needs no policy update at all.

use bulkhead_common::identity;

use std::sync::Arc;

use crate::fasthash::{HashMap, HashSet, Prehashed};
use crate::model::{Cidr, Labels, NamedPort};

/// Everything about a pod that a policy can look at. Pods with equal attributes are
/// indistinguishable to policy and share one identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityAttrs {
    pub namespace: String,
    /// Shared by the identities of a namespace.
    pub namespace_labels: Arc<Labels>,
    pub labels: Labels,
    pub service_account: String,
    /// Sorted and deduplicated, so container order does not split identities.
    pub ports: Vec<NamedPort>,
    /// The pod address's CIDR region: the longest policy prefix containing it (`None`: in no
    /// prefix). Part of the identity so that one ipcache lookup answers every nets/notNets
    /// question about the address.
    pub region: Option<Cidr>,
}

/// Hands out identity numbers and remembers them across compiles, so that a policy change
/// does not renumber pods (which would rewrite every policy and IP cache entry).
///
/// Numbers are never reused while the allocator lives: an identity that disappears and comes
/// back gets a fresh number. Reusing a number right away could let entries that the agent has
/// not yet removed grant the old group's access to a new group.
#[derive(Clone, Debug)]
pub struct IdentityAllocator {
    /// Shared with the compile's identity table, so an identity's attributes exist once.
    by_labels: HashMap<Prehashed<Arc<IdentityAttrs>>, u32>,
    /// Hashes the keys of `by_labels`.
    state: foldhash::fast::RandomState,
    by_cidr: HashMap<Cidr, u32>,
    next: u32,
    wrapped: bool,
}

impl Default for IdentityAllocator {
    fn default() -> Self {
        IdentityAllocator {
            by_labels: HashMap::default(),
            state: Default::default(),
            by_cidr: HashMap::default(),
            next: identity::FIRST_ALLOCATED,
            wrapped: false,
        }
    }
}

impl IdentityAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Identity of a pod attribute set, allocating one if it is new.
    pub fn labels(&mut self, attrs: &Arc<IdentityAttrs>) -> u32 {
        let key = Prehashed::new(&self.state, attrs.clone());
        if let Some(&id) = self.by_labels.get(&key) {
            return id;
        }
        let id = self.fresh();
        self.by_labels.insert(key, id);
        id
    }

    /// The identity of these attributes, if they have one (allocates no number).
    pub fn find_labels(&self, attrs: IdentityAttrs) -> Option<u32> {
        self.by_labels.get(&Prehashed::new(&self.state, Arc::new(attrs))).copied()
    }

    /// Identity of the non-pod addresses of a CIDR region (a prefix collected from policies).
    pub fn cidr(&mut self, cidr: Cidr) -> u32 {
        if let Some(&id) = self.by_cidr.get(&cidr) {
            return id;
        }
        let id = self.fresh();
        self.by_cidr.insert(cidr, id);
        id
    }

    /// Forgets every identity not in `live`.
    pub fn retain(&mut self, live: &HashSet<u32>) {
        self.by_labels.retain(|_, id| live.contains(id));
        self.by_cidr.retain(|_, id| live.contains(id));
    }

    /// Number of identities currently remembered.
    pub fn len(&self) -> usize {
        self.by_labels.len() + self.by_cidr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fresh(&mut self) -> u32 {
        // After 2^32 allocations wrap around, skipping numbers still in use; by then any
        // number freed that long ago has long been removed from the maps.
        loop {
            let id = self.next;
            if self.next == u32::MAX {
                self.next = identity::FIRST_ALLOCATED;
                self.wrapped = true;
            } else {
                self.next += 1;
            }
            if !self.wrapped || !self.by_labels.values().chain(self.by_cidr.values()).any(|&v| v == id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(app: &str) -> Arc<IdentityAttrs> {
        Arc::new(IdentityAttrs {
            namespace: "ns".into(),
            namespace_labels: Default::default(),
            labels: [("app".to_string(), app.to_string())].into(),
            service_account: "default".into(),
            ports: vec![],
            region: None,
        })
    }

    #[test]
    fn equal_attributes_share_and_numbers_are_stable() {
        let mut a = IdentityAllocator::new();
        let web = a.labels(&attrs("web"));
        assert!(web >= identity::FIRST_ALLOCATED, "allocated ids start at FIRST_ALLOCATED");
        assert_eq!(a.labels(&attrs("web")), web, "same attributes, same id");
        let db = a.labels(&attrs("db"));
        assert_ne!(db, web, "different attributes, different id");
        a.retain(&[web].into_iter().collect());
        assert_eq!(a.labels(&attrs("web")), web, "kept identity keeps its number");
        assert!(a.labels(&attrs("db")) > db, "released identity is not reused");
    }

    #[test]
    fn cidr_and_label_identities_do_not_collide() {
        let mut a = IdentityAllocator::new();
        let c = a.cidr(Cidr::new(std::net::Ipv4Addr::new(10, 0, 0, 0), 8).expect("valid cidr"));
        let l = a.labels(&attrs("web"));
        assert_ne!(c, l, "one number space for both kinds");
    }
}
