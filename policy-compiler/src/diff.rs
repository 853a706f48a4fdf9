//! Differences between two compiles, so the agent rewrites only what changed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bulkhead_common::IpInfoV3;

use crate::compile::{Compiled, EndpointEntry, PeerSlot, VerdictTable};
use crate::model::PodRef;

/// Changes to one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    /// Keys that are new or whose value changed, with the new value.
    pub upserts: Vec<(K, V)>,
    /// Keys that are gone.
    pub removals: Vec<K>,
}

impl<K, V> Default for MapDiff<K, V> {
    fn default() -> Self {
        MapDiff { upserts: Vec::new(), removals: Vec::new() }
    }
}

impl<K, V> MapDiff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// Changes to every map.
///
/// Map values are complete verdicts (denies included) and identities may be renumbered, so
/// no order of individual writes is free of transient mixes of old and new. A sensible order:
/// policy and staged upserts (new keys are unreachable until the ipcache names their
/// identities), ipcache upserts, endpoint upserts and removals, then ipcache, policy and
/// staged removals; the agent bumps the policy revision last so tracked flows are judged
/// again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledDiff {
    pub endpoints: MapDiff<PodRef, EndpointEntry>,
    pub ipcache: MapDiff<(IpAddr, u8), IpInfoV3>,
    pub policy: MapDiff<PeerSlot, u32>,
    pub staged: MapDiff<PeerSlot, u32>,
    pub tables: MapDiff<u32, VerdictTable>,
}

impl CompiledDiff {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.ipcache.is_empty() && self.policy.is_empty() && self.staged.is_empty() && self.tables.is_empty()
    }
}

/// What turns `old` into `new`.
pub fn diff(old: &Compiled, new: &Compiled) -> CompiledDiff {
    CompiledDiff {
        endpoints: diff_map(&old.endpoints, &new.endpoints),
        // A compile that kept the IP cache shares it: nothing to compare.
        ipcache: if crate::model::Shared::same(&old.ipcache, &new.ipcache) { MapDiff::default() } else { diff_map(&old.ipcache, &new.ipcache) },
        policy: diff_map(&old.policy, &new.policy),
        staged: diff_map(&old.staged, &new.staged),
        tables: diff_map(&old.tables, &new.tables),
    }
}

/// What turns one map into another: new or changed entries, and removed keys.
pub fn diff_map<K: Ord + Clone, V: PartialEq + Clone>(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> MapDiff<K, V> {
    let upserts = new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let removals = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
    MapDiff { upserts, removals }
}
