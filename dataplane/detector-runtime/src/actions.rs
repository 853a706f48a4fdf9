//! Actions on a workload decided in user space (isolate, pause, terminate) and releasing an isolation, also from outside a running agent.

use super::*;

/// Takes a user-space finding's actions on a workload, in protect mode only: isolation first
/// (`isolate` writes the entry; it is what stops traffic), then terminate or else pause.
/// Returns what was done (failures included, for the alert) and, when isolated, the time from
/// `since_ns` (the offending event) to the isolation entry.
pub(crate) fn take_actions(
    w: &WorkloadState,
    actions: NetActions,
    since_ns: u64,
    isolate: impl FnOnce() -> Result<(), String>,
) -> (Vec<String>, Option<u64>) {
    let mut done = Vec::new();
    let mut isolate_ns = None;
    if w.effective_mode() != Mode::Protect {
        return (done, isolate_ns);
    }
    if actions.isolate {
        match isolate() {
            Ok(()) => {
                isolate_ns = Some(bulkhead_loader::clock::monotonic_ns().saturating_sub(since_ns));
                done.push("isolated".to_string());
            }
            Err(e) => done.push(format!("isolate-failed: {e}")),
        }
    }
    if actions.terminate {
        match cgroup::kill(&w.spec.cgroup, events::ACTION_TIMEOUT) {
            Ok(()) => done.push("terminated".into()),
            Err(e) => done.push(format!("terminate-failed: {e}")),
        }
    } else if actions.pause {
        match cgroup::freeze(&w.spec.cgroup, events::ACTION_TIMEOUT) {
            Ok(()) => done.push("paused".into()),
            Err(e) => done.push(format!("pause-failed: {e}")),
        }
    }
    (done, isolate_ns)
}

/// The isolation entry of a user-space decision on `w`, as of now.
pub(crate) fn user_isolation(w: &WorkloadState) -> IsolationV1 {
    IsolationV1 { since_ns: bulkhead_loader::clock::monotonic_ns(), cgroup_id: w.cgroup_id, reason: det::isolation_reason::USER, _pad: 0 }
}

/// Writes the workload's isolation entry (user-space decision).
pub(crate) fn isolate_entry(dp: &mut Dataplane, w: &WorkloadState) -> Result<(), DetectorError> {
    Ok(dp.maps.det.isolation.insert(w.ifindex, user_isolation(w))?)
}

/// Removes the isolation entries of a workload (by cgroup id, and its interface). Returns
/// whether any existed.
pub fn release_isolation<T: std::borrow::BorrowMut<MapData>>(
    map: &mut IsolationMap<T>,
    cgroup_id: u64,
    ifindex: u32,
) -> Result<bool, DetectorError> {
    let keys: Vec<u32> =
        map.entries()?.into_iter().filter(|(k, v)| v.cgroup_id == cgroup_id || (ifindex != 0 && *k == ifindex)).map(|(k, _)| k).collect();
    for &k in &keys {
        map.remove(k)?;
    }
    Ok(!keys.is_empty())
}

/// Release without an agent: opens the instance's pinned isolation map, removes the
/// workload's entries and thaws its cgroup. Returns whether it was isolated, frozen.
pub fn release_pinned(pin_dir: &Path, cgroup: &Path) -> Result<(bool, bool), DetectorError> {
    let cgroup_id = cgroup::id(cgroup).map_err(|e| det_err(format!("cgroup {}: {e}", cgroup.display())))?;
    let mut map = IsolationMap::open_isolation(pin_dir)?;
    let isolated = release_isolation(&mut map, cgroup_id, 0)?;
    let frozen = cgroup::is_frozen(cgroup).unwrap_or(false);
    cgroup::thaw(cgroup).map_err(|e| det_err(format!("thawing {}: {e}", cgroup.display())))?;
    Ok((isolated, frozen))
}

/// Isolation entries of a pinned instance: (ifindex, entry).
pub fn isolated_pinned(pin_dir: &Path) -> Result<Vec<(u32, IsolationV1)>, DetectorError> {
    Ok(IsolationMap::open_isolation(pin_dir)?.entries()?)
}
