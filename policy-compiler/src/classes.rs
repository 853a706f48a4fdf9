//! Verdict tables and peer classes: the two ways a node's policy entries are shared.
//!
//! A verdict table is the complete function of one class of peers (protocols x ports), stored
//! once and named by every slot that judges that way; a peer class is a set of peers every
//! local context (local identity, direction, world) judges alike, which the node's IP cache
//! gives their addresses. Together they make a node's entries grow with what its endpoints'
//! policies tell apart, not with the cluster's identities.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::Arc;

use bulkhead_common::identity;

use crate::compile::{PeerSlot, VerdictTable};
use crate::fasthash::{HashMap, HashSet};

/// Interns verdict tables: equal functions get one number, derived from the content so that
/// an unchanged function keeps its number across compiles (a probe past collisions).
#[derive(Default, Debug)]
pub(crate) struct Tables {
    by_content: HashMap<Arc<VerdictTable>, u32>,
    pub by_number: BTreeMap<u32, Arc<VerdictTable>>,
}

impl Tables {
    pub fn intern(&mut self, t: VerdictTable) -> u32 {
        if let Some(&n) = self.by_content.get(&t) {
            return n;
        }
        use std::hash::Hasher;
        let mut h = std::hash::DefaultHasher::new();
        t.hash(&mut h);
        let wide = h.finish();
        let mut n = (wide ^ (wide >> 32)) as u32;
        while n == 0 || self.by_number.contains_key(&n) {
            n = n.wrapping_add(1);
        }
        let t = Arc::new(t);
        self.by_content.insert(t.clone(), n);
        self.by_number.insert(n, t);
        n
    }

    /// Forgets every table but `live` ones.
    pub fn retain(&mut self, live: &HashSet<u32>) {
        self.by_number.retain(|n, _| live.contains(n));
        self.by_content.retain(|_, n| live.contains(n));
    }
}

/// One (local identity, direction, world) whose verdicts were compiled.
pub(crate) struct Ctx {
    pub local: u32,
    pub dir: u8,
    pub staged: bool,
    /// Its any-peer table.
    pub base: u32,
}

/// Enforced slots, staged slots and each identity's peer class.
pub(crate) type ClassedSlots = (BTreeMap<PeerSlot, u32>, BTreeMap<PeerSlot, u32>, HashMap<u32, u32>);

/// Groups peers into classes: peers judged by the same table in every context (every
/// local identity, direction and world) are indistinguishable on this node and share one
/// class, which the ipcache gives their addresses. A local identity then holds one slot
/// per class its policy tells apart, not one per peer identity: a rule naming thousands
/// of identities costs one slot when they are all judged alike. Slots are kept per whole
/// local identity while they fit, in identity-number order (established identities keep
/// theirs when a new one does not fit); the rest fail closed.
pub(crate) fn peer_classes(
    limit: usize,
    contexts: &[Ctx],
    mut pairs: Vec<(u32, u32, u32)>,
    pods_of: &dyn Fn(u32) -> String,
    fail_closed: &mut HashSet<u32>,
    overflow: &mut Vec<String>,
) -> ClassedSlots {
    // Pairs come context by context, each context's in ascending peer order: a stable sort by
    // peer leaves each peer's contexts in ascending order. By radix: a million triples are
    // two or three passes over them.
    debug_assert!(pairs.windows(2).all(|w| w[0].1 < w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)), "pairs by context, then peer");
    crate::radix::sort_by_u32_key(&mut pairs, |p| p.0);
    // A class is numbered by its lowest member identity: a policy change that leaves the
    // grouping alone (only tables change) renumbers nothing, so the ipcache stays put.
    // (context, table) list -> class.
    let mut class_by_content: HashMap<Vec<(u32, u32)>, u32> = HashMap::default();
    let mut class_of: HashMap<u32, u32> = HashMap::default();
    for run in runs(&pairs, |p| p.0) {
        let peer = pairs[run.start].0;
        let group: Vec<(u32, u32)> = pairs[run].iter().map(|&(_, ctx, table)| (ctx, table)).collect();
        // Peers come in ascending order: the first of a class is its lowest.
        let class = *class_by_content.entry(group).or_insert(peer);
        class_of.insert(peer, class);
    }

    // Slots per local identity, then the fit.
    let mut per_local: BTreeMap<u32, Vec<(PeerSlot, bool, u32)>> = BTreeMap::new();
    for c in contexts {
        per_local.entry(c.local).or_default().push(((c.local, identity::ANY, c.dir), c.staged, c.base));
    }
    // Slot order does not matter: they land in ordered maps.
    for (group, &class) in &class_by_content {
        for &(ctx, table) in group {
            let c = &contexts[ctx as usize];
            per_local.entry(c.local).or_default().push(((c.local, class, c.dir), c.staged, table));
        }
    }
    let (mut policy, mut staged) = (BTreeMap::new(), BTreeMap::new());
    let mut used = 0;
    for (l, slots) in per_local {
        // Enforced and staged slots share the peer map.
        if used + slots.len() > limit {
            overflow.push(format!(
                "policy: {} peer entries of identity {l} (pods {}) do not fit (limit {limit}, {used} in use); they fail closed",
                slots.len(),
                pods_of(l)
            ));
            fail_closed.insert(l);
            continue;
        }
        used += slots.len();
        for (slot, is_staged, table) in slots {
            if is_staged { &mut staged } else { &mut policy }.insert(slot, table);
        }
    }
    (policy, staged, class_of)
}

/// The index ranges of the runs of equal `key` in `v` (sorted by it), in order.
pub(crate) fn runs<T, K: PartialEq>(v: &[T], key: impl Fn(&T) -> K) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = v.get(i)?;
        let k = key(first);
        let start = i;
        while i < v.len() && key(&v[i]) == k {
            i += 1;
        }
        Some(start..i)
    })
}

