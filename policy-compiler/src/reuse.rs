//! What a [`crate::Compiler`] keeps of one local identity's verdicts between compiles.
//!
//! A local identity's contexts (direction, world) and the tables of the peers they judge
//! otherwise follow from the policies selecting it (their content, order, indexes and tiers)
//! and from the pod side (identities, selection index). When a compile finds both the same as
//! in the previous one, it takes the kept result instead of evaluating every peer again: a
//! policy change re-evaluates only the local identities that policy selects (or selected).

use std::sync::Arc;

use crate::fasthash::HashMap;
use crate::knp;
use crate::pods::PodSide;
use crate::select::Index;
use crate::tiered::{TierDefault, TieredPolicy};

/// A policy as a local identity's verdicts depend on it.
#[derive(PartialEq)]
pub(crate) struct Member {
    pub index: u32,
    pub tier_pos: usize,
    pub tier_index: u16,
    pub tier_default: TierDefault,
    /// Whether it is in the enforced and in the staged world.
    pub in_world: [bool; 2],
    pub content: Arc<Content>,
}

/// A policy's rules, and for a converted NetworkPolicy the origin of each rule.
#[derive(PartialEq)]
pub(crate) struct Content {
    pub policy: TieredPolicy,
    pub origins: Option<(Vec<usize>, Vec<usize>)>,
}

impl Content {
    pub fn of(policy: &TieredPolicy, knp: Option<&knp::Converted>) -> Content {
        Content { policy: policy.clone(), origins: knp.map(|c| (c.ingress_origin.clone(), c.egress_origin.clone())) }
    }

    fn is(&self, policy: &TieredPolicy, knp: Option<&knp::Converted>) -> bool {
        self.policy == *policy
            && match (&self.origins, knp) {
                (None, None) => true,
                (Some((i, e)), Some(c)) => *i == c.ingress_origin && *e == c.egress_origin,
                _ => false,
            }
    }
}

/// One context's result: direction, world, its any-peer table, (peer, table) of the peers
/// judged otherwise.
pub(crate) struct CtxOut {
    pub dir: u8,
    pub staged: bool,
    pub base: u32,
    pub deviating: Vec<(u32, u32)>,
}

/// One local identity's result.
pub(crate) struct LocalOut {
    pub members: Vec<Member>,
    pub flags: u32,
    pub contexts: Vec<CtxOut>,
    /// The tables its contexts name, each once.
    tables: Vec<u32>,
}

impl LocalOut {
    pub fn new(members: Vec<Member>, flags: u32, contexts: Vec<CtxOut>) -> LocalOut {
        let mut tables: Vec<u32> =
            contexts.iter().flat_map(|c| std::iter::once(c.base).chain(c.deviating.iter().map(|d| d.1))).collect();
        tables.sort_unstable();
        tables.dedup();
        LocalOut { members, flags, contexts, tables }
    }
}

/// The kept results, valid for one pod side.
#[derive(Default)]
pub(crate) struct Kept {
    index: Option<Arc<Index>>,
    pub by_local: HashMap<u32, LocalOut>,
}

impl Kept {
    /// Forgets everything unless it was computed on the selection index of `side` (a patched
    /// pod side keeps the index: the identities and their attributes are the same).
    pub fn for_side(&mut self, side: &PodSide) {
        if !self.index.as_ref().is_some_and(|s| Arc::ptr_eq(s, &side.index)) {
            self.by_local.clear();
            self.index = Some(side.index.clone());
        }
    }

    /// Every table number a kept result names (from each result's own short list, not its
    /// deviating peers, which run to a million at cluster scale).
    pub fn tables(&self) -> crate::fasthash::HashSet<u32> {
        self.by_local.values().flat_map(|o| o.tables.iter().copied()).collect()
    }
}

/// Per policy of this compile (by its position among the prepared ones): the kept content
/// found equal to it, so each policy is compared by value once per compile.
#[derive(Default)]
pub(crate) struct Matches(HashMap<usize, Arc<Content>>);

impl Matches {
    /// Whether `kept` holds the content of prepared policy `i` (`policy`, `knp`).
    pub fn same(&mut self, i: usize, kept: &Arc<Content>, policy: &TieredPolicy, knp: Option<&knp::Converted>) -> bool {
        if self.0.get(&i).is_some_and(|k| Arc::ptr_eq(k, kept)) {
            return true;
        }
        if kept.is(policy, knp) {
            self.0.insert(i, kept.clone());
            return true;
        }
        false
    }

    /// The content of prepared policy `i`, shared with a kept result when one matched.
    pub fn content(&mut self, i: usize, policy: &TieredPolicy, knp: Option<&knp::Converted>) -> Arc<Content> {
        self.0.entry(i).or_insert_with(|| Arc::new(Content::of(policy, knp))).clone()
    }
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept").field("locals", &self.by_local.len()).finish()
    }
}

#[cfg(test)]
#[path = "reuse_tests.rs"]
mod tests;
