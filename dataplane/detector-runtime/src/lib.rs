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

/// How a workload is watched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Record execs and outbound flows into the profile; no enforcement.
    #[default]
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

/// What happens on a finding decided in user space in protect mode (network findings on the
/// flow event, syscall findings of the sequence model). None set = alert only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetActions {
    /// Write the isolation entry (TC drops the endpoint's traffic but the allow-list).
    pub isolate: bool,
    /// Freeze the workload's cgroup.
    pub pause: bool,
    /// Kill every process of the workload's cgroup.
    pub terminate: bool,
}

/// What happens on a file finding in protect mode. `kill` and `isolate` are done by the file
/// probe itself, before the syscall runs (for paths the kernel could not judge, by the agent
/// once it has resolved them); `pause` and `terminate` by the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileActions {
    pub kill: bool,
    pub isolate: bool,
    pub pause: bool,
    pub terminate: bool,
}

/// What happens on a violation in protect mode. Exec violations: `kill` and `isolate` are
/// done by the exec probe itself; `pause` and `terminate` by the agent on the probe's event.
/// Network findings: the per-finding [`NetActions`], all in user space.
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
    /// On an outbound flow to a peer the profile never saw.
    #[serde(default)]
    pub new_peer: NetActions,
    /// On an outbound flow to a known peer on a port/protocol the profile never saw.
    #[serde(default)]
    pub new_port: NetActions,
    /// On a port scan ([`network::ScanConfig`]).
    #[serde(default)]
    pub port_scan: NetActions,
    /// On an inbound flow from a client, or to a port, the profile never saw.
    #[serde(default)]
    pub new_inbound: NetActions,
    /// On a finding of the syscall-sequence model ([`sequence`]).
    #[serde(default)]
    pub syscall_anomaly: NetActions,
    /// On a write, create, delete, rename or chmod/chown in a directory the profile never
    /// changed that way ([`files`]).
    #[serde(default)]
    pub file_write: FileActions,
    /// On a read of a sensitive path the profile never read.
    #[serde(default)]
    pub sensitive_read: FileActions,
    /// On a listing of a directory the profile never listed.
    #[serde(default)]
    pub dir_list: FileActions,
}

/// A workload to monitor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
    /// Executables allowed besides the profile's.
    pub allowed_execs: Vec<String>,
}

/// More about a monitored workload: its shared profile, scan thresholds, managing policy.
/// The default (no shared profile, default thresholds, managed through the API) is what
/// [`Detector::monitor`] uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadOptions {
    /// Profile shared with other workloads of that name; `None` = the workload's own (its name).
    #[serde(default)]
    pub profile: Option<String>,
    /// The labels keying the profile (informational, copied into a new profile).
    #[serde(default)]
    pub profile_labels: BTreeMap<String, String>,
    /// Port-scan thresholds.
    #[serde(default)]
    pub scan: network::ScanConfig,
    /// The DetectorPolicy (`namespace/name`) managing this workload; `None` = the API.
    #[serde(default)]
    pub policy: Option<String>,
    /// The syscall-sequence model's settings; `None` = no sequence model (no syscall stream).
    #[serde(default)]
    pub sequences: Option<SequenceConfig>,
    /// What this workload may still reach while isolated (address of either family or
    /// 0.0.0.0 for any, port, IP protocol), besides the API's list for every workload.
    #[serde(default)]
    pub isolation_allow: Vec<(IpAddr, u16, u8)>,
    /// The file-system baseline's settings; `None` = no file baseline (no file probe).
    #[serde(default)]
    pub files: Option<files::FileConfig>,
}

/// A monitored workload as the agent keeps it (persisted, so a restarted agent knows it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadState {
    pub spec: WorkloadSpec,
    pub cgroup_id: u64,
    /// Kernel id of the workload's (shared) profile.
    pub profile_id: u32,
    pub ifindex: u32,
    #[serde(default)]
    pub opts: WorkloadOptions,
    /// Restored in monitor or protect mode while its profile was gone (deleted, lost): it
    /// only alerts (the kernel reports execs, user space takes no action) until a profile
    /// exists again: imported, learned (the workload set to learn), or the mode set anew.
    #[serde(default)]
    pub profile_missing: bool,
}

impl WorkloadState {
    /// The mode the kernel and the actions follow: protect only alerts while the profile is
    /// missing, since an empty profile would make every exec and peer a finding.
    pub fn effective_mode(&self) -> Mode {
        if self.profile_missing && self.spec.mode == Mode::Protect { Mode::Monitor } else { self.spec.mode }
    }

    /// The name of the profile this workload learns into and is judged by.
    pub fn profile_name(&self) -> &str {
        self.opts.profile.as_deref().unwrap_or(&self.spec.name)
    }
}

/// A workload's state for status output.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadStatus {
    pub name: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub mode: Mode,
    pub actions: Actions,
    /// The shared profile's name.
    pub profile: String,
    /// Executables in the profile.
    pub learned_execs: usize,
    /// Outbound destinations in the profile.
    pub learned_peers: usize,
    /// Normal syscalls held by the profile's sequence model (0 = none learned).
    pub learned_syscalls: usize,
    /// Directories in the profile's file baseline.
    pub learned_dirs: usize,
    /// Whether the workload's syscalls go to the sequence model.
    pub sequence_model: bool,
    pub isolated: bool,
    pub frozen: bool,
    /// The managing DetectorPolicy, if any.
    pub policy: Option<String>,
}

/// State shared by the agent thread and the event thread.
#[derive(Default)]
pub struct Shared {
    pub(crate) inner: Mutex<Inner>,
    pub(crate) changed: Condvar,
    /// Bumped whenever workloads, modes or imported profiles change, so the sequence thread
    /// picks the change up before it reads its next syscall.
    pub(crate) generation: AtomicU64,
    /// The generation the sequence thread has applied (learning flushed, views refreshed).
    pub(crate) seq_applied: AtomicU64,
    /// Where alerts are POSTed too, when configured ([`webhook`]).
    pub(crate) webhook: std::sync::OnceLock<webhook::Webhook>,
    /// De-duplication and rate limit of alerts, before they are recorded anywhere.
    pub(crate) alerts: Mutex<alerts::AlertGate>,
    /// Events reported by kind, and actions by (kind, action): the metrics' counters.
    pub(crate) counts: Mutex<(BTreeMap<&'static str, u64>, BTreeMap<(&'static str, String), u64>)>,
    /// The node's Quarantines for fw-sync (folder datastore only, see [`perimeter`]).
    pub(crate) perimeter: Mutex<Option<perimeter::PerimeterThread>>,
    /// The one writer of the kernel's file rules ([`files::FileRules`]); `None` when the
    /// pinned map could not be opened (file baselines then only alert from user space).
    pub(crate) file_rules: Mutex<Option<files::FileRules>>,
    /// Flow records read from the ring that the flow log could not take (the agent thread
    /// too far behind): counted, never silent.
    pub(crate) flow_records_lost: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub workloads: BTreeMap<u64, WorkloadState>,
    /// Profiles by name (shared by the workloads naming them).
    pub profiles: BTreeMap<String, profile::Profile>,
    /// Profiles changed since they were last written.
    pub dirty: BTreeSet<String>,
    pub events: VecDeque<DetectorEvent>,
    /// Profiles replaced by an import whose syscall model the sequence thread must reload.
    pub sequence_reload: BTreeSet<String>,
    /// This node's endpoints' addresses (both families) from the last sync, by host-side
    /// interface: what a quarantine puts in the perimeter's group (a workload monitored
    /// since the last sync is found too).
    pub addresses: std::collections::HashMap<String, Vec<IpAddr>>,
}

impl Inner {
    /// The addresses of the workload named `name`, as of the last sync.
    pub fn addresses_of(&self, name: &str) -> Vec<IpAddr> {
        self.workloads
            .values()
            .find(|w| w.spec.name == name)
            .and_then(|w| w.spec.interface.as_ref())
            .and_then(|i| self.addresses.get(i))
            .cloned()
            .unwrap_or_default()
    }
}

impl Inner {
    /// The workload's profile, created empty when new.
    pub fn profile_mut(&mut self, w: &WorkloadState) -> &mut profile::Profile {
        let name = w.profile_name().to_string();
        self.profiles.entry(name.clone()).or_insert_with(|| profile::Profile::new(&name, w.opts.profile_labels.clone()))
    }
}

/// Events kept in memory.
const RECENT_EVENTS: usize = 10_000;

impl Shared {
    /// Flow records the flow log lost behind the ring (see `flow_events_dropped` for those
    /// lost in the ring itself).
    pub fn flow_records_lost(&self) -> u64 {
        self.flow_records_lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The detector's state. Its critical sections are short and leave it consistent, so a
    /// thread that panicked while holding it (the panic is reported where it happened) does
    /// not take the other detector threads and the agent down with it: they go on with the
    /// state instead of each panicking in turn on the poisoned lock.
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recent events, oldest first.
    pub fn events(&self) -> Vec<DetectorEvent> {
        self.state().events.iter().cloned().collect()
    }

    /// A profile by name (a copy).
    pub fn profile(&self, name: &str) -> Option<profile::Profile> {
        self.state().profiles.get(name).cloned()
    }

    /// Tells the sequence thread that workloads or profiles changed.
    pub(crate) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits (up to `timeout`) until the sequence thread has applied every change so far:
    /// after a switch out of learn mode, what was learned is in the profile when this returns.
    pub(crate) fn wait_sequences_applied(&self, timeout: Duration) -> bool {
        let want = self.generation.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while self.seq_applied.load(Ordering::SeqCst) < want {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Records an event through the alert gate ([`alerts`]): what it reports (the event, or
    /// nothing when folded or over the rate, plus summaries due) goes to memory, JSON line,
    /// webhook and waiters.
    pub(crate) fn record(&self, file: &Path, rec: DetectorEvent) {
        let out = self.gate().admit(rec, std::time::Instant::now());
        for e in out {
            self.report(file, e);
        }
    }

    /// Reports the alert summaries whose windows have closed.
    pub(crate) fn flush_alerts(&self, file: &Path) {
        let out = self.gate().flush(std::time::Instant::now());
        for e in out {
            self.report(file, e);
        }
    }

    /// Changes the alert gate's limits (the environment sets them at start).
    pub fn set_alert_limits(&self, limits: alerts::AlertLimits) {
        self.gate().set_limits(limits);
    }

    /// What the alert gate did so far.
    pub fn alert_stats(&self) -> alerts::AlertStats {
        self.gate().stats()
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, alerts::AlertGate> {
        // Plain counters and windows: usable after a panic elsewhere, as `state`.
        self.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Events reported by kind, and actions taken by (finding kind, action), since start.
    pub fn finding_counts(&self) -> (Vec<(&'static str, u64)>, Vec<((&'static str, String), u64)>) {
        let g = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (g.0.iter().map(|(k, v)| (*k, *v)).collect(), g.1.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    fn report(&self, file: &Path, rec: DetectorEvent) {
        // The node has acted already; the perimeter follows before the alert is written.
        self.quarantine_if_acted(&rec);
        {
            let mut g = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *g.0.entry(rec.kind).or_default() += 1;
            for a in rec.kernel_actions.iter().map(|a| a.to_string()).chain(rec.user_actions.iter().cloned()) {
                *g.1.entry((rec.kind, a)).or_default() += 1;
            }
        }
        events::append(file, &rec);
        if let Some(w) = self.webhook.get() {
            if let Ok(json) = serde_json::to_string(&rec) {
                w.send(json);
            }
        }
        let mut g = self.state();
        if g.events.len() == RECENT_EVENTS {
            g.events.pop_front();
        }
        g.events.push_back(rec);
        drop(g);
        self.changed.notify_all();
    }

    /// Makes the kernel's file rules of profile `name` what the profile and its workloads'
    /// sensitive paths say (nothing when none of its workloads has a file baseline).
    pub(crate) fn sync_file_rules(&self, name: &str) -> Result<(), String> {
        let (ids, plan) = {
            let g = self.state();
            let members: Vec<&WorkloadState> = g.workloads.values().filter(|w| w.profile_name() == name).collect();
            let ids: BTreeSet<u32> = members.iter().map(|w| w.profile_id).collect();
            let with: Vec<&files::FileConfig> = members.iter().filter_map(|w| w.opts.files.as_ref()).collect();
            let plan = if with.is_empty() {
                files::RulePlan::new()
            } else {
                let sensitive: BTreeSet<String> = with.iter().flat_map(|c| c.sensitive_paths.iter().cloned()).collect();
                files::plan(&g.profiles.get(name).map(|p| p.files.clone()).unwrap_or_default(), &sensitive)
            };
            (ids, plan)
        };
        let mut fr = self.file_rules.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(fr) = fr.as_mut() else {
            return if plan.is_empty() { Ok(()) } else { Err(format!("{} not open", det::map_names::FILE_RULES)) };
        };
        for id in ids {
            fr.sync(id, &plan)?;
        }
        Ok(())
    }

    /// Removes the kernel's file rules of a profile id no workload uses any more.
    pub(crate) fn clear_file_rules(&self, id: u32) {
        if let Some(fr) = self.file_rules.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
            if let Err(e) = fr.clear(id) {
                tracing::error!(profile_id = id, error = %e, "detector file rules not removed");
            }
        }
    }

    /// Waits up to `timeout` for an event matching `pred`; returns it.
    pub fn wait_event(&self, timeout: Duration, pred: impl Fn(&DetectorEvent) -> bool) -> Option<DetectorEvent> {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.state();
        loop {
            if let Some(e) = g.events.iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            g = self.changed.wait_timeout(g, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }
}

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
            let mut w = WorkloadState { spec, cgroup_id, profile_id: 0, ifindex, opts, profile_missing };
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

    /// Makes the kernel's exec entries of a profile what the profile (and its workloads'
    /// extra allowed execs) holds: adds first, then removes what is no longer allowed.
    pub(crate) fn write_profile(&mut self, dp: &mut Dataplane, name: &str) -> Result<(), DetectorError> {
        let (ids, paths, pairs, inline) = {
            let g = self.shared.state();
            let members: Vec<&WorkloadState> = g.workloads.values().filter(|w| w.profile_name() == name).collect();
            let ids: BTreeSet<u32> = members.iter().map(|w| w.profile_id).collect();
            let mut paths: BTreeSet<String> = g.profiles.get(name).map(|p| p.execs.clone()).unwrap_or_default();
            for w in &members {
                paths.extend(w.spec.allowed_execs.iter().cloned());
            }
            let hash = |p: &str| if p.is_empty() { 0 } else { det::path_hash(p.as_bytes()) };
            let pairs: BTreeSet<(u64, u64)> =
                g.profiles.get(name).map(|p| p.lineage.iter().map(|l| (hash(&l.parent), hash(&l.child))).collect()).unwrap_or_default();
            let inline: BTreeSet<String> = g.profiles.get(name).map(|p| p.inline_code.clone()).unwrap_or_default();
            (ids, paths, pairs, inline)
        };
        let want: BTreeSet<u64> = paths.iter().map(|p| det::path_hash(p.as_bytes())).collect();
        // Executables with learned lineage are judged on their parent too.
        let judged: BTreeSet<u64> = pairs.iter().map(|p| p.1).collect();
        for id in ids {
            // The pairs first: an exec entry that turns lineage judging on never meets a
            // partial set of them.
            for &(parent_hash, child_hash) in &pairs {
                let key = LineageKeyV1 { profile_id: id, _pad: 0, parent_hash, child_hash };
                dp.maps.det.lineage.insert(key, 1, 0).map_err(|e| map_err(det::map_names::LINEAGE, e))?;
            }
            for p in &paths {
                let h = det::path_hash(p.as_bytes());
                let key = ExecKeyV1 { profile_id: id, _pad: 0, path_hash: h };
                let mut v = det::exec_allow::ALLOWED;
                if judged.contains(&h) {
                    v |= det::exec_allow::LINEAGE;
                }
                if profile::is_interpreter(p) {
                    v |= det::exec_allow::INTERPRETER;
                }
                if inline.contains(p) {
                    v |= det::exec_allow::INLINE;
                }
                dp.maps.det.exec_allow.insert(key, v, 0).map_err(|e| map_err(det::map_names::EXEC_ALLOW, e))?;
            }
            let had = self.written_execs.insert(id, want.clone()).unwrap_or_default();
            for h in had.difference(&want) {
                let _ = dp.maps.det.exec_allow.remove(&ExecKeyV1 { profile_id: id, _pad: 0, path_hash: *h });
            }
            let had = self.written_lineage.insert(id, pairs.clone()).unwrap_or_default();
            for &(parent_hash, child_hash) in had.difference(&pairs) {
                let _ = dp.maps.det.lineage.remove(&LineageKeyV1 { profile_id: id, _pad: 0, parent_hash, child_hash });
            }
        }
        self.shared.sync_file_rules(name).map_err(det_err)
    }

    /// Writes the profile (allowed execs) and then the workload entry: the probe never sees
    /// protect mode with a half-written profile.
    fn write_workload(&mut self, dp: &mut Dataplane, w: &WorkloadState) -> Result<(), DetectorError> {
        self.write_profile(dp, w.profile_name())?;
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
        if w.opts.sequences.is_some() {
            flags |= det::wl_flags::SYSCALL_SEQ;
        }
        if w.opts.files.is_some() {
            flags |= det::wl_flags::FILES;
            for (fa, kill, isolate) in [
                (a.file_write, det::wl_flags::KILL_ON_FILE_WRITE, det::wl_flags::ISOLATE_ON_FILE_WRITE),
                (a.sensitive_read, det::wl_flags::KILL_ON_SENSITIVE_READ, det::wl_flags::ISOLATE_ON_SENSITIVE_READ),
                (a.dir_list, det::wl_flags::KILL_ON_DIR_LIST, det::wl_flags::ISOLATE_ON_DIR_LIST),
            ] {
                if fa.kill {
                    flags |= kill;
                }
                if fa.isolate {
                    flags |= isolate;
                }
            }
        }
        // The sequence thread learns of the workload before the kernel streams for it.
        self.shared.bump();
        let v = WorkloadV1 { profile_id: w.profile_id, ifindex: w.ifindex, mode: w.effective_mode().kernel(), _pad: [0; 3], flags };
        dp.maps.det.workloads.insert(w.cgroup_id, v, 0).map_err(|e| map_err(det::map_names::WORKLOADS, e))?;
        // Again after the write: confirming this generation means the thread has handled
        // every record sent under the old entry (see `Shared::wait_sequences_applied`).
        self.shared.bump();
        Ok(())
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

    pub(crate) fn write_isolation_allow(&mut self, dp: &mut Dataplane) -> Result<(), DetectorError> {
        let mut entries: Vec<(u32, (IpAddr, u16, u8))> = self.api_allow.iter().map(|e| (0, *e)).collect();
        {
            let g = self.shared.state();
            for w in g.workloads.values().filter(|w| w.ifindex != 0) {
                entries.extend(w.opts.isolation_allow.iter().map(|e| (w.ifindex, *e)));
            }
        }
        // Exact IPv6 entries in their own map; any-address entries (0.0.0.0) match both
        // families in the IPv4 map.
        let (mut new, mut new6) = (Vec::new(), Vec::new());
        for (ifindex, (a, p, protocol)) in entries {
            let port_be = p.to_be_bytes();
            match a {
                IpAddr::V4(a) => new.push(AllowKeyV2 { ifindex, addr_be: a.octets(), port_be, protocol, _pad: 0 }),
                IpAddr::V6(a) => new6.push(AllowKey6V1 { ifindex, addr_be: a.octets(), port_be, protocol, _pad: 0 }),
            }
        }
        let old: Vec<AllowKeyV2> = dp.maps.det.isolation_allow.keys().filter_map(Result::ok).collect();
        for k in &new {
            dp.maps.det.isolation_allow.insert(*k, 1, 0).map_err(|e| map_err(det::map_names::ISOLATION_ALLOW, e))?;
        }
        for k in old.iter().filter(|k| !new.contains(k)) {
            let _ = dp.maps.det.isolation_allow.remove(k);
        }
        let old6: Vec<AllowKey6V1> = dp.maps.det.isolation_allow6.keys().filter_map(Result::ok).collect();
        for k in &new6 {
            dp.maps.det.isolation_allow6.insert(*k, 1, 0).map_err(|e| map_err(det::map_names::ISOLATION_ALLOW6, e))?;
        }
        for k in old6.iter().filter(|k| !new6.contains(k)) {
            let _ = dp.maps.det.isolation_allow6.remove(k);
        }
        Ok(())
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

    /// The syscall probe runs only while some workload wants syscall counts or sequences.
    fn sync_syscall_probe(&mut self, dp: &mut Dataplane) -> Result<(), DetectorError> {
        let want = self.shared.state().workloads.values().any(|w| w.spec.syscalls || w.opts.sequences.is_some());
        Ok(dp.set_syscall_probe(want)?)
    }

    /// The file probe runs only while some workload has a file baseline (attaching it puts
    /// every task's syscalls on the slower traced entry path).
    fn sync_file_probe(&mut self, dp: &mut Dataplane) -> Result<(), DetectorError> {
        let want = self.shared.state().workloads.values().any(|w| w.opts.files.is_some());
        Ok(dp.set_file_probe(want)?)
    }

    /// TC reports every new flow only of the monitored workloads' endpoints (FLOW_WATCH):
    /// the network model needs them, nothing else does, and a busy unmonitored pod next to
    /// them should not pay for events nobody reads. Endpoints past the per-endpoint array
    /// fall back to the global FLOW_EVENTS_ALL flag. Called after every sync too (the revision
    /// bump may have written the config first).
    pub fn sync_flow_events(&mut self, dp: &mut Dataplane) -> Result<(), DetectorError> {
        let ifindexes: BTreeSet<u32> = self.shared.state().workloads.values().map(|w| w.ifindex).filter(|&i| i != 0).collect();
        // Protect mode's learned destinations go in before the flags that make TC drop
        // everything else, and stale ones leave after.
        let (want, entries) = self.learned_plan();
        self.write_learned(dp, &entries, false)?;
        let werr = |e: aya::maps::MapError| map_err(bulkhead_common::map_names::FLOW_WATCH, e);
        let mut watched = match self.watched.take() {
            Some(w) => w,
            // First sync: whatever slots an earlier agent set.
            None => match bulkhead_loader::batch::array_all(&dp.maps.flow_watch) {
                Ok(all) => all.into_iter().filter(|&(_, v)| v != 0).collect(),
                Err(_) => (0..bulkhead_common::capacity::IFINDEX_DIRECT).filter_map(|i| dp.maps.flow_watch.get(&i, 0).ok().filter(|&v| v != 0).map(|v| (i, v))).collect(),
            },
        };
        for (&i, &v) in &want {
            if watched.get(&i) != Some(&v) {
                dp.maps.flow_watch.set(i, v, 0).map_err(werr)?;
                watched.insert(i, v);
            }
        }
        let gone: Vec<u32> = watched.keys().copied().filter(|i| !want.contains_key(i)).collect();
        for i in gone {
            dp.maps.flow_watch.set(i, 0, 0).map_err(werr)?;
            watched.remove(&i);
        }
        self.watched = Some(watched);
        self.write_learned(dp, &entries, true)?;
        let want = ifindexes.iter().any(|&i| !bulkhead_common::ifindex_is_direct(i));
        let mut cfg = dp.maps.config.get(&0, 0).map_err(|e| map_err(bulkhead_common::map_names::CONFIG, e))?;
        if cfg.tcp_established_timeout_ns == 0 {
            // Not configured yet: the first sync writes the config, and calls this again.
            return Ok(());
        }
        let flag = bulkhead_common::config_flags::FLOW_EVENTS_ALL;
        let next = if want { cfg.flags | flag } else { cfg.flags & !flag };
        if next != cfg.flags {
            cfg.flags = next;
            dp.maps.config.set(0, cfg, 0).map_err(|e| map_err(bulkhead_common::map_names::CONFIG, e))?;
            tracing::info!(on = want, "flow events for every new flow");
        }
        Ok(())
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
