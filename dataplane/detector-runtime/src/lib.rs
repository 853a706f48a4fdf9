//! The detector's user-space side: which workloads are monitored and how, their learned exec
//! profiles, the maps the probes and TC read, the actions decided in user space (pause,
//! terminate) and release.
//!
//! Decided in the kernel (protect mode, in the exec probe): SIGKILL of a process that execs a
//! binary outside its workload's profile, and isolation of the workload's endpoint. Decided
//! here, after the probe's event: pause (cgroup freeze), terminate (cgroup kill), the alert
//! record, and a kill fallback when the kernel could not signal, and every network decision
//! (flow events against the profile's peers and ports, port scans: see [`network`]).
//!
//! Workloads with the same profile name share one profile (replicas learn together and are
//! judged by it); see [`profile`]. [`policy`] turns `DetectorPolicy` resources into workloads.

pub mod cgroup;
mod error;
mod events;
mod fileevents;
pub mod files;
mod flowwatch;
pub mod learned;
mod manage;
pub mod network;
mod netwatch;
pub mod perimeter;
pub mod policy;
pub mod profile;
pub mod sequence;
pub mod webhook;
pub mod alerts;
mod actions;
mod kernel;
mod shared;
mod workload;

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::MapData;
use bulkhead_common::detect::{self as det, AllowKey6V1, AllowKeyV2, ExecKeyV1, IsolationV1, LineageKeyV1, SyscallKeyV1, WorkloadV1};
use serde::{Deserialize, Serialize};

use bulkhead_loader::{Dataplane, ifmap::IsolationMap, netns};

pub use error::DetectorError;

pub use events::DetectorEvent;
pub use flowwatch::FlowWatch;
pub use manage::ImportReport;
pub use sequence::SequenceConfig;
pub use actions::{isolated_pinned, release_isolation, release_pinned};
pub(crate) use actions::{isolate_entry, take_actions, user_isolation};
pub use shared::Shared;
pub use workload::*;

/// The detector inside the agent thread: owns the event thread and writes the maps.
pub struct Detector {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The sequence-model thread (syscall streams).
    seq_thread: Option<JoinHandle<()>>,
    state_file: PathBuf,
    events_file: PathBuf,
    state_dir: PathBuf,
    /// Exec-map entries written per profile id (path hashes), to remove what a profile drops.
    written_execs: BTreeMap<u32, BTreeSet<u64>>,
    /// Lineage entries written per profile id (parent, child hashes).
    written_lineage: BTreeMap<u32, BTreeSet<(u64, u64)>>,
    /// Per-workload (cgroup id) egress volume samples.
    net: BTreeMap<u64, netwatch::NetState>,
    /// Pod address -> peer name (profile name of the pod), from the last sync; read by the
    /// network thread.
    peers: flowwatch::PeerBook,
    /// The network-decision thread, which owns the flow ring.
    flowwatch: FlowWatch,
    /// Isolation allow-list set through the API, for every workload (each workload's own
    /// list comes with it, from its DetectorPolicy).
    api_allow: BTreeSet<(IpAddr, u16, u8)>,
    last_tick: std::time::Instant,
    /// FLOW_WATCH slots written (interface -> [`det::watch_flags`]); `None` until the first
    /// sync, which clears whatever an earlier agent left.
    watched: Option<BTreeMap<u32, u32>>,
    /// Learned-destination entries written for protect-mode endpoints ([`learned`]); `None`
    /// until the first sync reads what an earlier agent left.
    learned_written: Option<BTreeSet<det::LearnedKeyV1>>,
}

/// File names in the agent's state folder.
pub const WORKLOADS_FILE: &str = "detector-workloads.json";
pub const EVENTS_FILE: &str = "detector-events.jsonl";

fn map_err(map: &'static str, source: aya::maps::MapError) -> DetectorError {
    bulkhead_loader::DataplaneError::Map { map, source }.into()
}

fn det_err(detail: impl Into<String>) -> DetectorError {
    DetectorError::State(detail.into())
}

impl Detector {
    /// Starts the event thread on the dataplane's event ring and restores the workloads a
    /// previous agent left in `state_dir` (their map entries are pinned and still enforced).
    pub fn start(dp: &mut Dataplane, state_dir: &Path) -> Result<Detector, DetectorError> {
        let ring = dp.maps.det.events.take().ok_or_else(|| det_err("event ring already taken"))?;
        let shared = Arc::new(Shared { alerts: Mutex::new(alerts::AlertGate::new(alerts::AlertLimits::from_env().map_err(det_err)?)), ..Shared::default() });
        if let Some(w) = webhook::Webhook::from_env().map_err(det_err)? {
            let _ = shared.webhook.set(w);
        }
        let state_file = state_dir.join(WORKLOADS_FILE);
        let events_file = state_dir.join(EVENTS_FILE);
        {
            let mut g = shared.state();
            for p in profile::load_dir(&state_dir.join(profile::PROFILES_DIR)) {
                g.profiles.insert(p.name.clone(), p);
            }
        }
        if let Ok(text) = std::fs::read_to_string(&state_file) {
            match serde_json::from_str::<Vec<WorkloadState>>(&text) {
                Ok(list) => {
                    let mut g = shared.state();
                    for mut w in list {
                        if w.spec.mode != Mode::Learn && !g.profiles.contains_key(w.profile_name()) {
                            w.profile_missing = true;
                            tracing::error!(
                                workload = %w.spec.name,
                                profile = w.profile_name(),
                                "detector profile missing at restart: the workload only alerts until a profile is imported or learned"
                            );
                        }
                        tracing::info!(workload = %w.spec.name, mode = ?w.spec.mode, "detector workload restored");
                        g.profile_mut(&w);
                        g.workloads.insert(w.cgroup_id, w);
                    }
                }
                Err(e) => tracing::error!(file = %state_file.display(), error = %e, "detector state unreadable; workloads not restored"),
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        match files::FileRules::open(dp.pin_dir()) {
            Ok(fr) => *shared.file_rules.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fr),
            Err(e) => tracing::error!(error = %e, "detector file rules map not open: file baselines cannot be enforced"),
        }
        let thread = events::spawn(ring, shared.clone(), stop.clone(), events_file.clone(), dp.pin_dir())?;
        let seq_ring = dp.maps.det.sysseq.take().ok_or_else(|| det_err("syscall ring already taken"))?;
        let seq_thread = sequence::spawn(seq_ring, shared.clone(), stop.clone(), events_file.clone(), dp.pin_dir())?;
        let flow_ring = dp.maps.flows.take().ok_or_else(|| det_err("flow ring already taken"))?;
        let peers = flowwatch::PeerBook::default();
        let flowwatch = FlowWatch::spawn(flow_ring, shared.clone(), peers.clone(), events_file.clone(), dp.pin_dir())?;
        let mut d = Detector {
            shared,
            stop,
            thread: Some(thread),
            seq_thread: Some(seq_thread),
            state_file,
            events_file,
            state_dir: state_dir.to_path_buf(),
            written_execs: BTreeMap::new(),
            written_lineage: BTreeMap::new(),
            net: BTreeMap::new(),
            peers,
            flowwatch,
            api_allow: BTreeSet::new(),
            last_tick: std::time::Instant::now(),
            watched: None,
            learned_written: None,
        };
        // Restored profiles: the kernel's exec entries for them (pinned) may predate a hand
        // edit; rewrite them from the profiles.
        let list: Vec<WorkloadState> = d.shared.state().workloads.values().cloned().collect();
        for w in &list {
            d.write_profile(dp, w.profile_name())?;
            if w.profile_missing {
                // The pinned entry still says protect: alert only until a profile exists.
                d.write_workload(dp, w)?;
            }
        }
        d.sync_syscall_probe(dp)?;
        d.sync_file_probe(dp)?;
        d.sync_flow_events(dp)?;
        // A process the file probe stopped for an agent that died before continuing it would
        // stay stopped: continue those of file-baseline workloads (events still in the pinned
        // ring are judged and continued by the event thread anyway).
        for w in list.iter().filter(|w| w.opts.files.is_some()) {
            for pid in cgroup::stopped(&w.spec.cgroup).unwrap_or_default() {
                // SAFETY: plain syscall.
                unsafe { libc::kill(pid as i32, libc::SIGCONT) };
                tracing::warn!(workload = %w.spec.name, pid, "detector: continued a process left stopped (an earlier agent's file decision)");
            }
        }
        // What was restored (missing profiles flagged) is what the CLI reads.
        d.persist();
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

    /// Starts (or changes) monitoring of a workload (its own profile, default thresholds).
    pub fn monitor(&mut self, dp: &mut Dataplane, spec: WorkloadSpec) -> Result<WorkloadStatus, DetectorError> {
        self.monitor_with(dp, spec, WorkloadOptions::default())
    }

    /// Starts (or changes) monitoring of a workload with a shared profile and thresholds.
    pub fn monitor_with(&mut self, dp: &mut Dataplane, spec: WorkloadSpec, opts: WorkloadOptions) -> Result<WorkloadStatus, DetectorError> {
        let cgroup_id = cgroup::id(&spec.cgroup).map_err(|e| det_err(format!("cgroup {}: {e}", spec.cgroup.display())))?;
        let ifindex = match &spec.interface {
            Some(i) => netns::ifindex(i).ok_or_else(|| DetectorError::Interface { ifname: i.clone(), detail: "no such interface".into() })?,
            None => 0,
        };
        let state = {
            let mut g = self.shared.state();
            // Workloads naming the same profile share its kernel id (one set of exec entries).
            // A missing profile stays missing until the workload learns (or an import or an
            // explicit mode change says otherwise).
            let profile_missing = spec.mode != Mode::Learn && g.workloads.get(&cgroup_id).is_some_and(|o| o.profile_missing);
            let learned_until_ns = WorkloadState::learned_until_after(g.workloads.get(&cgroup_id), spec.mode);
            let mut w = WorkloadState { spec, cgroup_id, profile_id: 0, ifindex, opts, profile_missing, learned_until_ns };
            w.profile_id = g
                .workloads
                .values()
                .find(|o| o.cgroup_id != cgroup_id && o.profile_name() == w.profile_name())
                .map(|o| o.profile_id)
                .or_else(|| {
                    // Keeps its own id unless that id is shared with another profile's workload.
                    let own = g.workloads.get(&cgroup_id).map(|o| o.profile_id)?;
                    (!g.workloads.values().any(|o| o.cgroup_id != cgroup_id && o.profile_id == own)).then_some(own)
                })
                .unwrap_or_else(|| g.workloads.values().map(|o| o.profile_id).max().unwrap_or(0) + 1);
            g.profile_mut(&w);
            g.workloads.insert(cgroup_id, w.clone());
            w
        };
        self.write_workload(dp, &state)?;
        self.write_isolation_allow(dp)?;
        self.persist();
        self.sync_syscall_probe(dp)?;
        self.sync_file_probe(dp)?;
        self.sync_flow_events(dp)?;
        tracing::info!(workload = %state.spec.name, cgroup_id, mode = ?state.spec.mode, "detector monitors workload");
        Ok(self.status_of(dp, &state))
    }

    /// Switches a workload's mode; protect and monitor install the learned profile first.
    pub fn set_mode(&mut self, dp: &mut Dataplane, name: &str, mode: Mode) -> Result<WorkloadStatus, DetectorError> {
        let state = {
            let mut g = self.shared.state();
            let w = g.workloads.values_mut().find(|w| w.spec.name == name).ok_or_else(|| det_err(format!("no workload {name}")))?;
            w.learned_until_ns = WorkloadState::learned_until_after(Some(w), mode);
            w.spec.mode = mode;
            // The operator chose the mode for the profile there is.
            w.profile_missing = false;
            w.clone()
        };
        self.write_workload(dp, &state)?;
        if state.opts.sequences.is_some() && !self.shared.wait_sequences_applied(Duration::from_secs(2)) {
            tracing::warn!(workload = name, "sequence model did not confirm the mode change within 2 s");
        }
        self.persist();
        self.sync_flow_events(dp)?;
        tracing::info!(workload = name, ?mode, profile = state.profile_name(), "detector mode changed");
        Ok(self.status_of(dp, &state))
    }

    /// Isolates a workload's endpoint from user space (same map the exec probe writes).
    pub fn isolate(&mut self, dp: &mut Dataplane, name: &str) -> Result<(), DetectorError> {
        let w = self.find(name)?;
        if w.ifindex == 0 {
            return Err(det_err(format!("workload {name} has no interface to isolate")));
        }
        isolate_entry(dp, &w)
    }

    /// Undoes isolate and pause for a workload. Returns whether it was isolated, frozen.
    pub fn release(&mut self, dp: &mut Dataplane, name: &str) -> Result<(bool, bool), DetectorError> {
        let w = self.find(name)?;
        let isolated = release_isolation(&mut dp.maps.det.isolation, w.cgroup_id, w.ifindex)?;
        let frozen = cgroup::is_frozen(&w.spec.cgroup).unwrap_or(false);
        cgroup::thaw(&w.spec.cgroup).map_err(|e| det_err(format!("thawing {}: {e}", w.spec.cgroup.display())))?;
        self.shared.withdraw_quarantine(name);
        tracing::info!(workload = name, isolated, frozen, "detector released workload");
        Ok((isolated, frozen))
    }

    /// Stops monitoring a workload (its isolation is removed too; the shared profile stays).
    pub fn unmonitor(&mut self, dp: &mut Dataplane, name: &str) -> Result<(), DetectorError> {
        self.unmonitor_inner(dp, name, true)
    }

    /// Stops monitoring; `release` also removes its isolation (a policy that stops selecting
    /// an isolated pod leaves it isolated: release is an operator's decision).
    pub(crate) fn unmonitor_inner(&mut self, dp: &mut Dataplane, name: &str, release: bool) -> Result<(), DetectorError> {
        let w = self.find(name)?;
        let _ = dp.maps.det.workloads.remove(&w.cgroup_id);
        // Its executables' identities: a workload monitored again starts over.
        let ids: Vec<det::IdentKeyV1> = dp.maps.det.ident.keys().flatten().filter(|k| k.cgroup_id == w.cgroup_id).collect();
        for k in ids {
            let _ = dp.maps.det.ident.remove(&k);
        }
        if release {
            release_isolation(&mut dp.maps.det.isolation, w.cgroup_id, w.ifindex)?;
            self.shared.withdraw_quarantine(name);
        }
        let shared_id = {
            let mut g = self.shared.state();
            g.workloads.remove(&w.cgroup_id);
            g.workloads.values().any(|o| o.profile_id == w.profile_id)
        };
        self.net.remove(&w.cgroup_id);
        self.shared.bump();
        if shared_id {
            self.write_profile(dp, w.profile_name())?;
        } else {
            if let Some(had) = self.written_execs.remove(&w.profile_id) {
                for h in had {
                    let _ = dp.maps.det.exec_allow.remove(&ExecKeyV1 { profile_id: w.profile_id, _pad: 0, path_hash: h });
                }
            }
            for (parent_hash, child_hash) in self.written_lineage.remove(&w.profile_id).unwrap_or_default() {
                let _ = dp.maps.det.lineage.remove(&LineageKeyV1 { profile_id: w.profile_id, _pad: 0, parent_hash, child_hash });
            }
            self.shared.clear_file_rules(w.profile_id);
        }
        self.write_isolation_allow(dp)?;
        self.persist();
        self.sync_syscall_probe(dp)?;
        self.sync_file_probe(dp)?;
        self.sync_flow_events(dp)
    }

    /// Replaces the API's isolation allow-list (what every isolated endpoint may still reach);
    /// each workload's own list (its DetectorPolicy's) applies to it besides.
    pub fn set_isolation_allow(&mut self, dp: &mut Dataplane, allow: &[(IpAddr, u16, u8)]) -> Result<(), DetectorError> {
        self.api_allow = allow.iter().copied().collect();
        self.write_isolation_allow(dp)
    }

    /// Status of every monitored workload.
    pub fn status(&self, dp: &Dataplane) -> Vec<WorkloadStatus> {
        let list: Vec<WorkloadState> = self.shared.state().workloads.values().cloned().collect();
        list.iter().map(|w| self.status_of(dp, w)).collect()
    }

    /// The workload's syscall counts (number, count), summed over CPUs.
    pub fn syscalls(&self, dp: &Dataplane, name: &str) -> Result<Vec<(u32, u64)>, DetectorError> {
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
        let isolated = w.ifindex != 0 && matches!(dp.maps.det.isolation.get(w.ifindex), Ok(Some(_)));
        let (execs, peers, syscalls, dirs) = {
            let g = self.shared.state();
            g.profiles
                .get(w.profile_name())
                .map(|p| (p.execs.len(), p.network.egress.len(), p.syscall_model.as_ref().map_or(0, |m| m.len()), p.files.dirs.len()))
                .unwrap_or((0, 0, 0, 0))
        };
        WorkloadStatus {
            name: w.spec.name.clone(),
            cgroup: w.spec.cgroup.clone(),
            cgroup_id: w.cgroup_id,
            mode: w.spec.mode,
            actions: w.spec.actions,
            profile: w.profile_name().to_string(),
            learned_execs: execs,
            learned_peers: peers,
            learned_syscalls: syscalls,
            learned_dirs: dirs,
            sequence_model: w.opts.sequences.is_some(),
            isolated,
            frozen: cgroup::is_frozen(&w.spec.cgroup).unwrap_or(false),
            policy: w.opts.policy.clone(),
        }
    }

    fn find(&self, name: &str) -> Result<WorkloadState, DetectorError> {
        self.shared
            .state()
            .workloads
            .values()
            .find(|w| w.spec.name == name)
            .cloned()
            .ok_or_else(|| det_err(format!("no workload {name}")))
    }

    fn persist(&self) {
        let (list, dirty): (Vec<WorkloadState>, Vec<profile::Profile>) = {
            let mut g = self.shared.state();
            let dirty = std::mem::take(&mut g.dirty);
            (g.workloads.values().cloned().collect(), dirty.iter().filter_map(|n| g.profiles.get(n).cloned()).collect())
        };
        match serde_json::to_string_pretty(&list) {
            Ok(json) => {
                // Atomically: a crash mid-write must not leave a file the next agent rejects.
                let tmp = self.state_file.with_extension("json.tmp");
                if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &self.state_file)) {
                    tracing::error!(file = %self.state_file.display(), error = %e, "detector state not saved");
                }
            }
            Err(e) => tracing::error!(error = %e, "detector state not serialisable"),
        }
        let dir = self.state_dir.join(profile::PROFILES_DIR);
        for p in dirty {
            if let Err(e) = profile::save(&dir, &p) {
                tracing::error!(profile = %p.name, error = %e, "detector profile not saved");
            }
        }
    }

    /// Saves what a restarted agent needs (learned profiles too: learning adds to them).
    pub fn save(&self) {
        {
            let mut g = self.shared.state();
            let names: Vec<String> = g.profiles.keys().cloned().collect();
            g.dirty.extend(names);
        }
        self.persist();
    }

    /// Flow events the network thread judged, oldest first, for the flow log.
    pub fn flow_events(&self) -> Vec<Vec<bulkhead_common::FlowEventV5>> {
        self.flowwatch.take_events()
    }

    /// Has the network thread read the flow ring now (see [`FlowWatch::flush`]).
    pub fn flush_flows(&self) {
        self.flowwatch.flush(Duration::from_millis(500));
    }

    /// Stops the event threads (each drains what is in its ring first).
    pub fn stop(mut self) {
        self.flowwatch.stop();
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.seq_thread.take() {
            let _ = t.join();
        }
        // Last: what the threads above asked of it is done first.
        self.stop_perimeter();
    }
}
