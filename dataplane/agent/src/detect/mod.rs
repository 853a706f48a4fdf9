//! The detector's user-space side: which workloads are monitored and how, their learned exec
//! profiles, the maps the probes and TC read, the actions decided in user space (pause,
//! terminate) and release.
//!
//! Decided in the kernel (protect mode, in the exec probe): SIGKILL of a process that execs a
//! binary outside its workload's profile, and isolation of the workload's endpoint. Decided
//! here, after the probe's event: pause (cgroup freeze), terminate (cgroup kill), the alert
//! record, and a kill fallback when the kernel could not signal.

pub mod cgroup;
mod events;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, atomic::AtomicBool},
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use bulkhead_common::detect::{self as det, AllowKeyV1, ExecKeyV1, IsolationV1, SyscallKeyV1, WorkloadV1};
use serde::{Deserialize, Serialize};

use crate::{error::AgentError, loader::Dataplane, netns};

pub use events::DetectorEvent;

/// How a workload is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Record execs into the profile; no enforcement.
    Learn,
    /// Report execs outside the profile; no action.
    Monitor,
    /// Act on execs outside the profile (see [`Actions`]).
    Protect,
}

impl Mode {
    fn kernel(self) -> u8 {
        match self {
            Mode::Learn => det::mode::LEARN,
            Mode::Monitor => det::mode::MONITOR,
            Mode::Protect => det::mode::PROTECT,
        }
    }
}

/// What happens on a violation in protect mode. `kill` and `isolate` are done by the exec
/// probe itself; `pause` and `terminate` by the agent on the probe's event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actions {
    /// SIGKILL the offending process (in the kernel).
    pub kill: bool,
    /// Drop the workload's traffic except the isolation allow-list (in the kernel).
    pub isolate: bool,
    /// Freeze the workload's cgroup (user space).
    pub pause: bool,
    /// Kill every process of the workload's cgroup (user space).
    pub terminate: bool,
}

/// A workload to monitor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Name in events and commands (e.g. the pod's `namespace/name`).
    pub name: String,
    /// The workload's cgroup v2 folder.
    pub cgroup: PathBuf,
    /// The endpoint's host-side interface (in the agent's node namespace), for isolation.
    pub interface: Option<String>,
    pub mode: Mode,
    pub actions: Actions,
    /// Count the workload's syscalls.
    pub syscalls: bool,
    /// Executables allowed besides the learned ones.
    pub allowed_execs: Vec<String>,
}

/// A monitored workload as the agent keeps it (persisted, so a restarted agent knows it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadState {
    pub spec: WorkloadSpec,
    pub cgroup_id: u64,
    pub profile_id: u32,
    pub ifindex: u32,
    /// Executables seen in learn mode.
    pub learned: BTreeSet<String>,
}

/// A workload's state for status output.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub mode: Mode,
    pub actions: Actions,
    pub learned_execs: usize,
    pub isolated: bool,
    pub frozen: bool,
}

/// State shared by the agent thread and the event thread.
#[derive(Default)]
pub struct Shared {
    pub(crate) inner: Mutex<Inner>,
    pub(crate) changed: Condvar,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub workloads: BTreeMap<u64, WorkloadState>,
    pub events: VecDeque<DetectorEvent>,
}

/// Events kept in memory.
const RECENT_EVENTS: usize = 10_000;

impl Shared {
    /// The most recent events, oldest first.
    pub fn events(&self) -> Vec<DetectorEvent> {
        self.inner.lock().unwrap().events.iter().cloned().collect()
    }

    /// Waits up to `timeout` for an event matching `pred`; returns it.
    pub fn wait_event(&self, timeout: Duration, pred: impl Fn(&DetectorEvent) -> bool) -> Option<DetectorEvent> {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.inner.lock().unwrap();
        loop {
            if let Some(e) = g.events.iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            g = self.changed.wait_timeout(g, left).unwrap().0;
        }
    }
}

/// The detector inside the agent thread: owns the event thread and writes the maps.
pub struct Detector {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    state_file: PathBuf,
    events_file: PathBuf,
}

/// File names in the agent's state folder.
pub const WORKLOADS_FILE: &str = "detector-workloads.json";
pub const EVENTS_FILE: &str = "detector-events.jsonl";

fn map_err(map: &'static str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Map { map, detail: e.to_string() }
}

fn det_err(detail: impl Into<String>) -> AgentError {
    AgentError::Detector(detail.into())
}

impl Detector {
    /// Starts the event thread on the dataplane's event ring and restores the workloads a
    /// previous agent left in `state_dir` (their map entries are pinned and still enforced).
    pub fn start(dp: &mut Dataplane, state_dir: &Path) -> Result<Detector, AgentError> {
        let ring = dp.maps.det.events.take().ok_or_else(|| det_err("event ring already taken"))?;
        let shared = Arc::new(Shared::default());
        let state_file = state_dir.join(WORKLOADS_FILE);
        let events_file = state_dir.join(EVENTS_FILE);
        if let Ok(text) = std::fs::read_to_string(&state_file) {
            match serde_json::from_str::<Vec<WorkloadState>>(&text) {
                Ok(list) => {
                    let mut g = shared.inner.lock().unwrap();
                    for w in list {
                        tracing::info!(workload = %w.spec.name, mode = ?w.spec.mode, "detector workload restored");
                        g.workloads.insert(w.cgroup_id, w);
                    }
                }
                Err(e) => tracing::error!(file = %state_file.display(), error = %e, "detector state unreadable; workloads not restored"),
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = events::spawn(ring, shared.clone(), stop.clone(), events_file.clone())?;
        let mut d = Detector { shared, stop, thread: Some(thread), state_file, events_file };
        d.sync_syscall_probe(dp)?;
        Ok(d)
    }

    /// The state shared with the event thread (events, workloads).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Where alerts are appended as JSON lines.
    pub fn events_file(&self) -> &Path {
        &self.events_file
    }

    /// Starts (or changes) monitoring of a workload.
    pub fn monitor(&mut self, dp: &mut Dataplane, spec: WorkloadSpec) -> Result<WorkloadStatus, AgentError> {
        let cgroup_id = cgroup::id(&spec.cgroup).map_err(|e| det_err(format!("cgroup {}: {e}", spec.cgroup.display())))?;
        let ifindex = match &spec.interface {
            Some(i) => netns::ifindex(i).ok_or_else(|| AgentError::Interface { ifname: i.clone(), detail: "no such interface".into() })?,
            None => 0,
        };
        let state = {
            let mut g = self.shared.inner.lock().unwrap();
            let profile_id = g
                .workloads
                .get(&cgroup_id)
                .map(|w| w.profile_id)
                .unwrap_or_else(|| g.workloads.values().map(|w| w.profile_id).max().unwrap_or(0) + 1);
            let learned = g.workloads.get(&cgroup_id).map(|w| w.learned.clone()).unwrap_or_default();
            let w = WorkloadState { spec, cgroup_id, profile_id, ifindex, learned };
            g.workloads.insert(cgroup_id, w.clone());
            w
        };
        self.write_workload(dp, &state)?;
        self.persist();
        self.sync_syscall_probe(dp)?;
        tracing::info!(workload = %state.spec.name, cgroup_id, mode = ?state.spec.mode, "detector monitors workload");
        Ok(self.status_of(dp, &state))
    }

    /// Switches a workload's mode; protect and monitor install the learned profile first.
    pub fn set_mode(&mut self, dp: &mut Dataplane, name: &str, mode: Mode) -> Result<WorkloadStatus, AgentError> {
        let state = {
            let mut g = self.shared.inner.lock().unwrap();
            let w = g.workloads.values_mut().find(|w| w.spec.name == name).ok_or_else(|| det_err(format!("no workload {name}")))?;
            w.spec.mode = mode;
            w.clone()
        };
        self.write_workload(dp, &state)?;
        self.persist();
        tracing::info!(workload = name, ?mode, profile = state.learned.len(), "detector mode changed");
        Ok(self.status_of(dp, &state))
    }

    /// Writes the profile (allowed execs) and then the workload entry: the probe never sees
    /// protect mode with a half-written profile.
    fn write_workload(&self, dp: &mut Dataplane, w: &WorkloadState) -> Result<(), AgentError> {
        for path in w.learned.iter().chain(&w.spec.allowed_execs) {
            let key = ExecKeyV1 { profile_id: w.profile_id, _pad: 0, path_hash: det::path_hash(path.as_bytes()) };
            dp.maps.det.exec_allow.insert(key, 1, 0).map_err(|e| map_err(det::map_names::EXEC_ALLOW, e))?;
        }
        let a = w.spec.actions;
        let mut flags = 0;
        if a.kill {
            flags |= det::wl_flags::KILL_ON_EXEC;
        }
        if a.isolate {
            flags |= det::wl_flags::ISOLATE_ON_EXEC;
        }
        if w.spec.syscalls {
            flags |= det::wl_flags::SYSCALLS;
        }
        let v = WorkloadV1 { profile_id: w.profile_id, ifindex: w.ifindex, mode: w.spec.mode.kernel(), _pad: [0; 3], flags };
        dp.maps.det.workloads.insert(w.cgroup_id, v, 0).map_err(|e| map_err(det::map_names::WORKLOADS, e))
    }

    /// Isolates a workload's endpoint from user space (same map the exec probe writes).
    pub fn isolate(&mut self, dp: &mut Dataplane, name: &str) -> Result<(), AgentError> {
        let w = self.find(name)?;
        if w.ifindex == 0 {
            return Err(det_err(format!("workload {name} has no interface to isolate")));
        }
        let iso = IsolationV1 { since_ns: cgroup::monotonic_ns(), cgroup_id: w.cgroup_id, reason: det::isolation_reason::USER, _pad: 0 };
        dp.maps.det.isolation.insert(w.ifindex, iso, 0).map_err(|e| map_err(det::map_names::ISOLATION, e))
    }

    /// Undoes isolate and pause for a workload. Returns whether it was isolated, frozen.
    pub fn release(&mut self, dp: &mut Dataplane, name: &str) -> Result<(bool, bool), AgentError> {
        let w = self.find(name)?;
        let isolated = release_isolation(&mut dp.maps.det.isolation, w.cgroup_id, w.ifindex)?;
        let frozen = cgroup::is_frozen(&w.spec.cgroup).unwrap_or(false);
        cgroup::thaw(&w.spec.cgroup).map_err(|e| det_err(format!("thawing {}: {e}", w.spec.cgroup.display())))?;
        tracing::info!(workload = name, isolated, frozen, "detector released workload");
        Ok((isolated, frozen))
    }

    /// Stops monitoring a workload (its profile and isolation are removed too).
    pub fn unmonitor(&mut self, dp: &mut Dataplane, name: &str) -> Result<(), AgentError> {
        let w = self.find(name)?;
        let _ = dp.maps.det.workloads.remove(&w.cgroup_id);
        release_isolation(&mut dp.maps.det.isolation, w.cgroup_id, w.ifindex)?;
        for path in w.learned.iter().chain(&w.spec.allowed_execs) {
            let _ = dp.maps.det.exec_allow.remove(&ExecKeyV1 { profile_id: w.profile_id, _pad: 0, path_hash: det::path_hash(path.as_bytes()) });
        }
        self.shared.inner.lock().unwrap().workloads.remove(&w.cgroup_id);
        self.persist();
        self.sync_syscall_probe(dp)
    }

    /// Replaces the isolation allow-list (what isolated endpoints may still reach).
    pub fn set_isolation_allow(&mut self, dp: &mut Dataplane, allow: &[(Ipv4Addr, u16, u8)]) -> Result<(), AgentError> {
        let old: Vec<AllowKeyV1> = dp.maps.det.isolation_allow.keys().filter_map(Result::ok).collect();
        let new: Vec<AllowKeyV1> =
            allow.iter().map(|(a, p, proto)| AllowKeyV1 { addr_be: a.octets(), port_be: p.to_be_bytes(), protocol: *proto, _pad: 0 }).collect();
        for k in &new {
            dp.maps.det.isolation_allow.insert(*k, 1, 0).map_err(|e| map_err(det::map_names::ISOLATION_ALLOW, e))?;
        }
        for k in old.iter().filter(|k| !new.contains(k)) {
            let _ = dp.maps.det.isolation_allow.remove(k);
        }
        Ok(())
    }

    /// Status of every monitored workload.
    pub fn status(&self, dp: &Dataplane) -> Vec<WorkloadStatus> {
        let list: Vec<WorkloadState> = self.shared.inner.lock().unwrap().workloads.values().cloned().collect();
        list.iter().map(|w| self.status_of(dp, w)).collect()
    }

    /// The workload's syscall counts (number, count), summed over CPUs.
    pub fn syscalls(&self, dp: &Dataplane, name: &str) -> Result<Vec<(u32, u64)>, AgentError> {
        let w = self.find(name)?;
        let mut out = Vec::new();
        for k in dp.maps.det.syscalls.keys() {
            let k: SyscallKeyV1 = k.map_err(|e| map_err(det::map_names::SYSCALLS, e))?;
            if k.cgroup_id != w.cgroup_id {
                continue;
            }
            if let Ok(v) = dp.maps.det.syscalls.get(&k, 0) {
                out.push((k.nr, v.iter().sum()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn status_of(&self, dp: &Dataplane, w: &WorkloadState) -> WorkloadStatus {
        let isolated = w.ifindex != 0 && dp.maps.det.isolation.get(&w.ifindex, 0).is_ok();
        WorkloadStatus {
            name: w.spec.name.clone(),
            cgroup: w.spec.cgroup.clone(),
            cgroup_id: w.cgroup_id,
            mode: w.spec.mode,
            actions: w.spec.actions,
            learned_execs: w.learned.len(),
            isolated,
            frozen: cgroup::is_frozen(&w.spec.cgroup).unwrap_or(false),
        }
    }

    fn find(&self, name: &str) -> Result<WorkloadState, AgentError> {
        self.shared
            .inner
            .lock()
            .unwrap()
            .workloads
            .values()
            .find(|w| w.spec.name == name)
            .cloned()
            .ok_or_else(|| det_err(format!("no workload {name}")))
    }

    /// The syscall probe runs only while some workload wants syscall counts.
    fn sync_syscall_probe(&mut self, dp: &mut Dataplane) -> Result<(), AgentError> {
        let want = self.shared.inner.lock().unwrap().workloads.values().any(|w| w.spec.syscalls);
        dp.set_syscall_probe(want)
    }

    fn persist(&self) {
        let list: Vec<WorkloadState> = self.shared.inner.lock().unwrap().workloads.values().cloned().collect();
        match serde_json::to_string_pretty(&list) {
            Ok(json) => {
                if let Err(e) = std::fs::write(&self.state_file, json) {
                    tracing::error!(file = %self.state_file.display(), error = %e, "detector state not saved");
                }
            }
            Err(e) => tracing::error!(error = %e, "detector state not serialisable"),
        }
    }

    /// Saves what a restarted agent needs (learned profiles too: learning adds to them).
    pub fn save(&self) {
        self.persist();
    }

    /// Stops the event thread (draining what is in the ring first).
    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Removes the isolation entries of a workload (by cgroup id, and its interface). Returns
/// whether any existed.
pub fn release_isolation<T: std::borrow::BorrowMut<MapData>>(
    map: &mut HashMap<T, u32, IsolationV1>,
    cgroup_id: u64,
    ifindex: u32,
) -> Result<bool, AgentError> {
    let mut keys = Vec::new();
    for item in map.iter() {
        let (k, v) = item.map_err(|e| map_err(det::map_names::ISOLATION, e))?;
        if v.cgroup_id == cgroup_id || (ifindex != 0 && k == ifindex) {
            keys.push(k);
        }
    }
    for k in &keys {
        map.remove(k).map_err(|e| map_err(det::map_names::ISOLATION, e))?;
    }
    Ok(!keys.is_empty())
}

/// Release without an agent: opens the instance's pinned isolation map, removes the
/// workload's entries and thaws its cgroup. Returns whether it was isolated, frozen.
pub fn release_pinned(pin_dir: &Path, cgroup: &Path) -> Result<(bool, bool), AgentError> {
    let cgroup_id = cgroup::id(cgroup).map_err(|e| det_err(format!("cgroup {}: {e}", cgroup.display())))?;
    let path = pin_dir.join(det::map_names::ISOLATION);
    let data = MapData::from_pin(&path).map_err(|e| map_err(det::map_names::ISOLATION, format!("{}: {e}", path.display())))?;
    let mut map: HashMap<MapData, u32, IsolationV1> =
        HashMap::try_from(Map::HashMap(data)).map_err(|e| map_err(det::map_names::ISOLATION, e))?;
    let isolated = release_isolation(&mut map, cgroup_id, 0)?;
    let frozen = cgroup::is_frozen(cgroup).unwrap_or(false);
    cgroup::thaw(cgroup).map_err(|e| det_err(format!("thawing {}: {e}", cgroup.display())))?;
    Ok((isolated, frozen))
}

/// Isolation entries of a pinned instance: (ifindex, entry).
pub fn isolated_pinned(pin_dir: &Path) -> Result<Vec<(u32, IsolationV1)>, AgentError> {
    let path = pin_dir.join(det::map_names::ISOLATION);
    let data = MapData::from_pin(&path).map_err(|e| map_err(det::map_names::ISOLATION, format!("{}: {e}", path.display())))?;
    let map: HashMap<MapData, u32, IsolationV1> =
        HashMap::try_from(Map::HashMap(data)).map_err(|e| map_err(det::map_names::ISOLATION, e))?;
    map.iter().map(|r| r.map_err(|e| map_err(det::map_names::ISOLATION, e))).collect()
}
