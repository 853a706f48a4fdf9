//! Selector evaluation against identities (not pods), with per-compile caching.
//!
//! Thousands of pods usually collapse into far fewer identities, and many policies repeat the
//! same selectors, so each (namespace scope, pod selector) pair is evaluated once per compile.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::identity::IdentityAttrs;
use crate::model::{LabelSelector, Model, NamespaceScope, Protocol, resolve_named_port};

/// The identities of one compile, indexed for selection.
pub(crate) struct IdentityTable<'m> {
    /// Identity -> attributes, in identity order.
    pub attrs: BTreeMap<u32, IdentityAttrs>,
    /// Namespace name -> its identities (ascending).
    by_ns: BTreeMap<String, Vec<u32>>,
    model: &'m Model,
    cache: RefCell<SelectionCache<'m>>,
    ns_cache: RefCell<HashMap<&'m LabelSelector, Rc<[String]>>>,
}

type SelectionCache<'m> = HashMap<(ScopeKey<'m>, &'m LabelSelector), Rc<[u32]>>;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum ScopeKey<'m> {
    Namespace(&'m str),
    Matching(&'m LabelSelector),
}

impl<'m> IdentityTable<'m> {
    pub fn new(model: &'m Model, attrs: BTreeMap<u32, IdentityAttrs>) -> Self {
        let mut by_ns: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (&id, a) in &attrs {
            by_ns.entry(a.namespace.clone()).or_default().push(id);
        }
        IdentityTable { attrs, by_ns, model, cache: RefCell::default(), ns_cache: RefCell::default() }
    }

    /// Identities of pods in `own_namespace` (for [`NamespaceScope::Own`]) or in the
    /// namespaces `scope` matches, whose labels match `pods`. Ascending.
    pub fn select(&self, own_namespace: &'m str, scope: &'m NamespaceScope, pods: &'m LabelSelector) -> Rc<[u32]> {
        let key = match scope {
            NamespaceScope::Own => ScopeKey::Namespace(own_namespace),
            NamespaceScope::Matching(sel) => ScopeKey::Matching(sel),
        };
        self.select_key(key, pods)
    }

    /// Identities of pods in `namespace` matching `pods`. Ascending.
    pub fn select_in(&self, namespace: &'m str, pods: &'m LabelSelector) -> Rc<[u32]> {
        self.select_key(ScopeKey::Namespace(namespace), pods)
    }

    fn select_key(&self, key: ScopeKey<'m>, pods: &'m LabelSelector) -> Rc<[u32]> {
        if let Some(hit) = self.cache.borrow().get(&(key, pods)) {
            return hit.clone();
        }
        let mut out = Vec::new();
        let mut scan = |ns: &str| {
            for id in self.by_ns.get(ns).into_iter().flatten() {
                if pods.matches(&self.attrs[id].labels) {
                    out.push(*id);
                }
            }
        };
        match key {
            ScopeKey::Namespace(ns) => scan(ns),
            ScopeKey::Matching(sel) => {
                for ns in self.namespaces(sel).iter() {
                    scan(ns);
                }
            }
        }
        out.sort_unstable();
        let out: Rc<[u32]> = out.into();
        self.cache.borrow_mut().insert((key, pods), out.clone());
        out
    }

    /// Names of namespaces (that have identities) whose labels match `sel`.
    fn namespaces(&self, sel: &'m LabelSelector) -> Rc<[String]> {
        if let Some(hit) = self.ns_cache.borrow().get(sel) {
            return hit.clone();
        }
        let names: Rc<[String]> = self
            .by_ns
            .keys()
            .filter(|ns| self.model.namespaces.get(*ns).is_some_and(|n| sel.matches(&n.labels)))
            .cloned()
            .collect();
        self.ns_cache.borrow_mut().insert(sel, names.clone());
        names
    }

    /// Port number `name`/`protocol` resolves to on pods of `id`.
    pub fn named_port(&self, id: u32, name: &str, protocol: Protocol) -> Option<u16> {
        self.attrs.get(&id).and_then(|a| resolve_named_port(&a.ports, name, protocol))
    }

    /// Every identity that defines `name`/`protocol`, with the port it resolves to.
    pub fn all_defining(&self, name: &str, protocol: Protocol) -> Vec<(u32, u16)> {
        self.attrs
            .iter()
            .filter_map(|(&id, a)| resolve_named_port(&a.ports, name, protocol).map(|p| (id, p)))
            .collect()
    }
}
