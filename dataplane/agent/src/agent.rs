//! The agent: one thread that owns the loaded dataplane and writes the maps, and answers
//! requests from the rest of the process over a channel. Reading the datastore and compiling
//! run on the compile thread ([`crate::compile`]), so the agent thread stays free while a
//! compile runs; the detector's network decisions have a thread of their own
//! ([`crate::detect::FlowWatch`]).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use policy_compiler::compile::{Compiled, Compiler, Limits};

use crate::{
    apply,
    compile::{CompileThread, Job, Outcome, Ready},
    datastore::{Datastore, FileDatastore},
    detect::{self, Detector},
    error::AgentError,
    gc,
    loader::Dataplane,
    netns,
};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Folder of the file datastore.
    pub datastore_dir: PathBuf,
    /// Network namespace (name under /var/run/netns) where the pods' host-side veths live;
    /// `None` = the agent's own.
    pub node_netns: Option<String>,
    /// This instance's bpffs folder, e.g. `/sys/fs/bpf/bulkhead/node1`.
    pub pin_dir: PathBuf,
    /// Re-sync on its own when the datastore changes.
    pub watch: bool,
    /// Flow records for every endpoint: each new flow (allowed or denied) and each flow's
    /// end. Revoked flows, Log rules and (rate-limited) drops are reported either way.
    pub flow_records: bool,
}

impl AgentConfig {
    /// Default bpffs folder for an instance name.
    pub fn default_pin_dir(instance: &str) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/bulkhead").join(instance)
    }

    /// The instance's name: the last component of its pin folder.
    pub fn instance(&self) -> String {
        self.pin_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "node".into())
    }

    /// Runtime files of the instance (flow log, policy table): `/run/bulkhead/<pin dir name>`.
    pub fn state_dir(&self) -> PathBuf {
        Self::state_dir_of(&self.instance())
    }

    /// [`AgentConfig::state_dir`] of instance `instance` (for the commands that read it).
    pub fn state_dir_of(instance: &str) -> PathBuf {
        PathBuf::from("/run/bulkhead").join(instance)
    }

    /// The flow log of an instance (readers: `bulkhead flows`, the service map, `policy
    /// recommend`).
    pub fn flow_log_of(instance: &str) -> PathBuf {
        Self::state_dir_of(instance).join(crate::flows::FLOW_LOG_FILE)
    }
}

/// The policy and tier tables of the last sync, written to `policies.json` in the state dir so
/// the CLI can name what the kernel's counters and verdicts refer to.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PolicyTable {
    /// Index = policy index in the kernel's values and counters.
    pub policies: Vec<PolicyTableEntry>,
    /// Index = tier index.
    pub tiers: Vec<String>,
}

/// One policy of [`PolicyTable`].
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PolicyTableEntry {
    pub name: String,
    pub tier: String,
    pub staged: bool,
}

impl PolicyTable {
    fn of(c: &Compiled) -> Self {
        PolicyTable {
            policies: c
                .policy_table
                .iter()
                .map(|p| PolicyTableEntry { name: p.id.to_string(), tier: p.tier.clone(), staged: p.staged })
                .collect(),
            tiers: c.tier_table.clone(),
        }
    }
}

/// What one sync did.
#[derive(Clone, Debug, Default)]
pub struct SyncReport {
    /// Policy revision now enforced.
    pub policy_rev: u32,
    pub upserts: usize,
    pub removals: usize,
    pub endpoints: usize,
    /// Interfaces named by pods that do not exist yet (retried on every watch tick).
    pub pending_interfaces: Vec<String>,
    /// Overflow reports from the compiler (those endpoints fail closed).
    pub overflow: Vec<String>,
    /// Datastore files rejected on their own (named with document and field); their last
    /// good version, if any, stays in force while everything else applied.
    pub rejected: Vec<String>,
    /// Reading the datastore (files or the API watchers' cache) into the model.
    pub load_time: Duration,
    /// The compiler, and turning its output into map entries.
    pub compile_time: Duration,
    /// Writing the inactive generation, flipping to it, endpoints and the detector's plan.
    pub write_time: Duration,
    pub total_time: Duration,
}

enum Request {
    /// The datastore may have changed (from its watcher).
    Changed,
    /// Liveness probe from the watcher thread; detects a dropped agent.
    Tick,
    Sync(mpsc::Sender<Result<SyncReport, AgentError>>),
    Counters(mpsc::Sender<Result<Vec<(String, u64)>, AgentError>>),
    Flows(mpsc::Sender<Vec<crate::flows::FlowRecord>>),
    PolicyStats(mpsc::Sender<Result<Vec<crate::status::PolicyStatsRow>, AgentError>>),
    /// Work on the detector (runs on the agent thread, which owns the maps).
    Detector(Box<dyn FnOnce(&mut Dataplane, &mut Detector) + Send>),
    Stop,
    /// Stop but keep the kernel enforcing: links and maps stay pinned for the next agent.
    StopKeep(mpsc::Sender<Result<usize, AgentError>>),
    /// A request of the CNI plugin from the control socket.
    Endpoint(crate::endpoints::Pending),
    /// The compile thread finished a job.
    Compiled(Outcome),
}

/// Who waits for the sync a job starts, answered when its outcome is written.
enum Waiter {
    /// [`Agent::sync_now`].
    Caller(mpsc::Sender<Result<SyncReport, AgentError>>),
    /// A CNI ADD: answered once its endpoint is enforced, or with why not (the registration
    /// is then withdrawn).
    CniAdd { ifindex: u32, container_id: String, ifname: String, reply: mpsc::Sender<bulkhead_cni::api::Response> },
    /// A CNI DEL: answered after the sync, whatever its outcome (the registration is gone).
    CniDel(mpsc::Sender<bulkhead_cni::api::Response>),
    /// A CNI GC: an error when the sync failed.
    CniGc(mpsc::Sender<bulkhead_cni::api::Response>),
}

/// A running agent. Dropping it stops the thread, detaches the programs and removes the pins
/// and runtime files: an embedded agent (lab, tests) leaves nothing behind. A node's daemon
/// stops with [`Agent::stop_keep_enforcing`] instead, and is removed by [`uninstall`].
pub struct Agent {
    tx: mpsc::Sender<Request>,
    thread: Option<JoinHandle<()>>,
    detector: Arc<detect::Shared>,
    /// Fed by the agent thread, read by the metrics endpoint.
    sync_metrics: crate::metrics::SyncMetrics,
    /// Held until the thread has ended (fields drop after [`Drop::drop`]).
    _lock: crate::instance::InstanceLock,
}

impl Agent {
    /// Loads the programs, does the first sync, and starts the agent thread.
    pub fn start(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let store = FileDatastore::new(&cfg.datastore_dir)?;
        Self::start_with(cfg, Box::new(store))
    }

    /// As [`Agent::start`], with any datastore.
    pub fn start_with(cfg: AgentConfig, mut store: Box<dyn Datastore>) -> Result<Agent, AgentError> {
        let instance = cfg.instance();
        crate::instance::validate_name(&instance)?;
        let lock = crate::instance::InstanceLock::acquire(&instance)?;
        let (tx, rx) = mpsc::channel();
        let (init_tx, init_rx) = mpsc::channel();
        let sync_metrics = crate::metrics::SyncMetrics::default();
        if cfg.watch {
            let tx = tx.clone();
            store.subscribe(Box::new(move |changed| tx.send(if changed { Request::Changed } else { Request::Tick }).is_ok()))?;
        }
        let thread = std::thread::Builder::new()
            .name("bh-agent".into())
            .spawn({
                let tx = tx.clone();
                let m = sync_metrics.clone();
                move || worker(cfg, store, tx, rx, init_tx, m)
            })
            .map_err(|_| AgentError::Stopped)?;
        match init_rx.recv() {
            Ok(Ok(detector)) => Ok(Agent { tx, thread: Some(thread), detector, sync_metrics, _lock: lock }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(AgentError::Stopped)
            }
        }
    }

    /// Re-reads the datastore and applies it; returns once the kernel enforces the result. On
    /// bad input returns the error and keeps enforcing the previous state.
    pub fn sync_now(&self) -> Result<SyncReport, AgentError> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Request::Sync(tx)).map_err(|_| AgentError::Stopped)?;
        rx.recv().map_err(|_| AgentError::Stopped)?
    }

    /// The most recent flow events (oldest first), drained from the kernel first.
    pub fn recent_flows(&self) -> Result<Vec<crate::flows::FlowRecord>, AgentError> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Request::Flows(tx)).map_err(|_| AgentError::Stopped)?;
        rx.recv().map_err(|_| AgentError::Stopped)
    }

    /// Per-policy counters (allowed, denied, would-allow, would-deny), named.
    pub fn policy_stats(&self) -> Result<Vec<crate::status::PolicyStatsRow>, AgentError> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Request::PolicyStats(tx)).map_err(|_| AgentError::Stopped)?;
        rx.recv().map_err(|_| AgentError::Stopped)?
    }

    /// Runs `f` on the agent thread with the detector and the maps.
    fn with_detector<T: Send + 'static, E: Into<AgentError>>(
        &self,
        f: impl FnOnce(&mut Dataplane, &mut Detector) -> Result<T, E> + Send + 'static,
    ) -> Result<T, AgentError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Request::Detector(Box::new(move |dp, det| {
                let _ = tx.send(f(dp, det).map_err(Into::into));
            })))
            .map_err(|_| AgentError::Stopped)?;
        rx.recv().map_err(|_| AgentError::Stopped)?
    }

    /// Starts (or changes) monitoring of a workload by the detector.
    pub fn detector_monitor(&self, spec: detect::WorkloadSpec) -> Result<detect::WorkloadStatus, AgentError> {
        self.with_detector(move |dp, det| det.monitor(dp, spec))
    }

    /// As [`Agent::detector_monitor`], with a shared profile and scan thresholds.
    pub fn detector_monitor_with(&self, spec: detect::WorkloadSpec, opts: detect::WorkloadOptions) -> Result<detect::WorkloadStatus, AgentError> {
        self.with_detector(move |dp, det| det.monitor_with(dp, spec, opts))
    }

    /// Switches a monitored workload's mode (protect installs the learned profile).
    pub fn detector_set_mode(&self, name: &str, mode: detect::Mode) -> Result<detect::WorkloadStatus, AgentError> {
        let name = name.to_string();
        self.with_detector(move |dp, det| det.set_mode(dp, &name, mode))
    }

    /// Isolates a workload's endpoint (user-space decision).
    pub fn detector_isolate(&self, name: &str) -> Result<(), AgentError> {
        let name = name.to_string();
        self.with_detector(move |dp, det| det.isolate(dp, &name))
    }

    /// Undoes isolate and pause; returns whether the workload was isolated, frozen.
    pub fn detector_release(&self, name: &str) -> Result<(bool, bool), AgentError> {
        let name = name.to_string();
        self.with_detector(move |dp, det| det.release(dp, &name))
    }

    /// Stops monitoring a workload.
    pub fn detector_unmonitor(&self, name: &str) -> Result<(), AgentError> {
        let name = name.to_string();
        self.with_detector(move |dp, det| det.unmonitor(dp, &name))
    }

    /// Replaces the isolation allow-list: (address or 0.0.0.0, port, IP protocol).
    pub fn detector_isolation_allow(&self, allow: Vec<(std::net::IpAddr, u16, u8)>) -> Result<(), AgentError> {
        self.with_detector(move |dp, det| det.set_isolation_allow(dp, &allow))
    }

    /// Status of the monitored workloads.
    pub fn detector_status(&self) -> Result<Vec<detect::WorkloadStatus>, AgentError> {
        self.with_detector(|dp, det| Ok::<_, AgentError>(det.status(dp)))
    }

    /// A workload's syscall counts (number, count).
    pub fn detector_syscalls(&self, name: &str) -> Result<Vec<(u32, u64)>, AgentError> {
        let name = name.to_string();
        self.with_detector(move |dp, det| det.syscalls(dp, &name))
    }

    /// Replaces a profile by a validated YAML text (`source` names it in errors); the kernel's
    /// exec entries follow at once. A bad text changes nothing.
    pub fn detector_import_profile(&self, source: &str, text: &str) -> Result<detect::ImportReport, AgentError> {
        let (source, text) = (source.to_string(), text.to_string());
        self.with_detector(move |dp, det| det.import_profile(dp, &source, &text))
    }

    /// Events and workloads shared with the detector's event thread (wait for events here).
    pub fn detector(&self) -> Arc<detect::Shared> {
        self.detector.clone()
    }

    /// The policy-programming latency histogram and failed-sync counter the agent thread
    /// feeds (for [`crate::metrics::serve`]).
    pub fn sync_metrics(&self) -> crate::metrics::SyncMetrics {
        self.sync_metrics.clone()
    }

    /// Stops the agent but leaves the kernel enforcing: TC and exec-probe links and all maps
    /// stay pinned, so isolation, protect and policy hold while no agent runs; the next agent
    /// on the same pin folder takes over. Returns the number of links kept.
    pub fn stop_keep_enforcing(mut self) -> Result<usize, AgentError> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Request::StopKeep(tx)).map_err(|_| AgentError::Stopped)?;
        let r = rx.recv().map_err(|_| AgentError::Stopped)?;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        r
    }

    /// Datapath counters, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(String, u64)>, AgentError> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Request::Counters(tx)).map_err(|_| AgentError::Stopped)?;
        rx.recv().map_err(|_| AgentError::Stopped)?
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.tx.send(Request::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct State {
    dp: Dataplane,
    /// Reads the datastore and compiles; results come back as [`Request::Compiled`].
    compile: CompileThread,
    /// Waiters of the job the compile thread is running (`None`: no job out).
    inflight: Option<Vec<Waiter>>,
    /// A sync asked for while a job runs: (forced, waiters); sent when the job returns, so
    /// a burst of changes costs one more compile, not one each.
    queued: Option<(bool, Vec<Waiter>)>,
    /// The compile the kernel enforces (names flow events and counters).
    applied: Option<Compiled>,
    /// What each generation of the lookup maps holds.
    gens: apply::Generations,
    /// When the last flip happened ([`FLIP_GRACE`]).
    last_flip: Instant,
    /// Endpoint map content: ifindex -> (interface, value).
    endpoints: apply::EndpointTable,
    pending: Vec<String>,
    flows: crate::flows::FlowLog,
    state_dir: PathBuf,
    det: Detector,
    /// Endpoints registered by the CNI plugin.
    registry: crate::endpoints::Registry,
    /// Policy-programming latency and failed syncs, for the metrics endpoint.
    sync_metrics: crate::metrics::SyncMetrics,
}

fn worker(
    cfg: AgentConfig,
    store: Box<dyn Datastore>,
    tx_self: mpsc::Sender<Request>,
    rx: mpsc::Receiver<Request>,
    init: mpsc::Sender<Result<Arc<detect::Shared>, AgentError>>,
    sync_metrics: crate::metrics::SyncMetrics,
) {
    let span = tracing::info_span!("agent", store = %store.describe());
    let _g = span.enter();
    if let Some(ns) = &cfg.node_netns {
        if let Err(e) = netns::enter(ns) {
            let _ = init.send(Err(e.into()));
            return;
        }
    }
    let mut dp = match Dataplane::load(&cfg.pin_dir) {
        Ok(dp) => dp,
        Err(e) => {
            let _ = init.send(Err(e.into()));
            return;
        }
    };
    dp.flow_records = cfg.flow_records;
    let state_dir = cfg.state_dir();
    let _ = std::fs::create_dir_all(&state_dir);
    let mut det = match Detector::start(&mut dp, &state_dir) {
        Ok(d) => d,
        Err(e) => {
            dp.unload();
            let _ = init.send(Err(e.into()));
            return;
        }
    };
    let instance = cfg.instance();
    if let Some(q) = store.quarantine_store(&instance) {
        det.set_perimeter(q, &instance);
    }
    let mut registry = crate::endpoints::Registry::load(&state_dir);
    let replayed = registry.replay_del_queue(&bulkhead_cni::api::del_queue_dir(&instance));
    if replayed > 0 {
        tracing::info!(replayed, "applied CNI DELs queued while no agent ran");
    }
    // Policy for this node's endpoints only; both policy generations share each map.
    let compiler = Compiler::for_node(Limits::per_generation());
    let done = tx_self.clone();
    let compile = match CompileThread::spawn(store, compiler, move |o| done.send(Request::Compiled(o)).is_ok()) {
        Ok(c) => c,
        Err(e) => {
            det.stop();
            dp.unload();
            let _ = init.send(Err(e.into()));
            return;
        }
    };
    let mut st = State {
        registry,
        sync_metrics,
        det,
        flows: crate::flows::FlowLog::new(&state_dir.join(crate::flows::FLOW_LOG_FILE)),
        state_dir,
        dp,
        compile,
        inflight: None,
        queued: None,
        applied: None,
        gens: apply::Generations::default(),
        last_flip: Instant::now(),
        endpoints: BTreeMap::new(),
        pending: Vec::new(),
    };
    let mut control = None;
    // The first sync completes before the agent starts: until then only the datastore's
    // watcher can send anything, and its notifications just ask for another sync.
    st.inflight = Some(Vec::new());
    let first = if st.compile.send(Job { registry: st.registry.clone(), force: true }) {
        loop {
            match rx.recv() {
                Ok(Request::Compiled(o)) => break o,
                Ok(Request::Changed) => request_sync(&mut st, false, None),
                Ok(_) => {}
                Err(_) => break Outcome::Failed(AgentError::Stopped),
            }
        }
    } else {
        Outcome::Failed(AgentError::Stopped)
    };
    st.inflight = None;
    let first = match first {
        Outcome::Ready(r) => apply_ready(&mut st, *r),
        Outcome::Failed(e) => Err(e),
        Outcome::Unchanged => Err(AgentError::Stopped),
    };
    match first {
        Ok(r) => {
            apply::drop_stale_endpoints(&mut st.dp, &st.endpoints);
            // Links a previous agent kept for endpoints that are gone: nothing adopted them.
            let dropped = st.dp.drop_unadopted_links();
            if dropped > 0 {
                tracing::info!(dropped, "removed links kept for endpoints no longer in the datastore");
            }
            let fwd = tx_self.clone();
            match crate::endpoints::spawn_control_socket(&bulkhead_cni::api::socket_path(&instance), move |p| fwd.send(Request::Endpoint(p)).is_ok()) {
                Ok(c) => control = Some(c),
                Err(e) => tracing::error!(error = %e, "no control socket: the CNI plugin cannot register endpoints"),
            }
            tracing::info!(rev = r.policy_rev, upserts = r.upserts, "first sync done");
            let _ = init.send(Ok(st.det.shared()));
            // Changes notified during the first sync.
            send_queued(&mut st);
        }
        Err(e) => {
            st.det.stop();
            st.dp.unload();
            let _ = init.send(Err(e.into()));
            return;
        }
    }
    let tick = Duration::from_millis(20);
    let mut last_gc = Instant::now();
    let mut last_cgroups = Instant::now();
    let mut last_periodic = Instant::now();
    let mut keep: Option<mpsc::Sender<Result<usize, AgentError>>> = None;
    loop {
        match rx.recv_timeout(tick) {
            Ok(Request::Sync(reply)) => request_sync(&mut st, true, Some(Waiter::Caller(reply))),
            // A burst of events costs one fingerprint check each on the compile thread; only
            // a real change compiles.
            Ok(Request::Changed) => {
                // fw-sync's quarantine statuses are hidden files: they wake the watcher
                // without changing the datastore's content.
                st.det.poll_perimeter();
                request_sync(&mut st, false, None)
            }
            Ok(Request::Compiled(outcome)) => finish_sync(&mut st, outcome),
            Ok(Request::Tick) => {}
            Ok(Request::Flows(reply)) => {
                st.det.flush_flows();
                drain_flows(&mut st);
                let _ = reply.send(st.flows.recent().cloned().collect());
            }
            Ok(Request::PolicyStats(reply)) => {
                let _ = reply.send(policy_stats(&st));
            }
            Ok(Request::Counters(reply)) => {
                let _ = reply.send(st.dp.counters().map_err(Into::into));
            }
            Ok(Request::Detector(f)) => f(&mut st.dp, &mut st.det),
            Ok(Request::Endpoint((req, reply))) => handle_endpoint(&mut st, req, reply),
            Ok(Request::StopKeep(reply)) => {
                keep = Some(reply);
                break;
            }
            Ok(Request::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // Periodic work runs on time even when requests never let the receive time out
        // (flow events wake the agent as often as they arrive).
        if last_periodic.elapsed() >= tick {
            last_periodic = Instant::now();
            drain_flows(&mut st);
            st.det.tick(&mut st.dp);
            st.det.import_inbox(&mut st.dp);
            // Changes arrive only as notifications (inotify, whose queue overflow also
            // notifies, or the API watches): no polling beside them. Interfaces still pending
            // retry every tick.
            if cfg.watch && !st.pending.is_empty() {
                request_sync(&mut st, true, None);
            }
            if last_cgroups.elapsed() > Duration::from_secs(1) {
                last_cgroups = Instant::now();
                if st.registry.resolve_cgroups() {
                    // A container's first process appeared: bind the detector to its cgroup.
                    request_sync(&mut st, true, None);
                }
            }
            if last_gc.elapsed() > gc::INTERVAL {
                last_gc = Instant::now();
                match gc::sweep(&mut st.dp) {
                    Ok(sw) => {
                        if sw.removed > 0 {
                            tracing::debug!(removed = sw.removed, ended = sw.ended.len(), "conntrack gc");
                        }
                        if let Some(c) = &st.applied {
                            st.flows.log(c, &sw.ended);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "conntrack gc failed"),
                }
            }
        }
    }
    st.det.flush_flows();
    drain_flows(&mut st);
    if let Some(c) = &control {
        c.close();
    }
    let State { mut dp, det, state_dir, .. } = st;
    det.save();
    det.stop();
    if let Some(reply) = keep {
        let r = dp.pin_links();
        tracing::info!(kept = ?r.as_ref().ok(), "agent stopped; the kernel keeps enforcing");
        // Dropping the loaded object closes our handles only: the pins hold the rest.
        drop(dp);
        let _ = reply.send(r.map_err(Into::into));
        return;
    }
    dp.unload();
    remove_state_files(&state_dir);
}

/// Removes the agent's own runtime files and, when then empty, its folder. Only the agent's
/// files: the folder may be shared (the lab keeps its datastore there).
fn remove_state_files(state_dir: &std::path::Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for f in [crate::flows::FLOW_LOG_FILE, "policies.json", detect::WORKLOADS_FILE, detect::EVENTS_FILE] {
        let p = state_dir.join(f);
        if std::fs::remove_file(&p).is_ok() {
            removed.push(p);
        }
    }
    for d in [detect::profile::PROFILES_DIR, detect::profile::IMPORT_DIR, "endpoints", "cni-del-queue"] {
        let p = state_dir.join(d);
        if std::fs::remove_dir_all(&p).is_ok() {
            removed.push(p);
        }
    }
    let _ = std::fs::remove_dir(state_dir);
    removed
}

/// What [`uninstall`] removed.
#[derive(Debug, Default)]
pub struct UninstallReport {
    /// Pinned links removed (each detaches a program from an interface or a tracepoint).
    pub links: Vec<PathBuf>,
    /// Pinned maps and programs removed.
    pub pins: Vec<PathBuf>,
    /// Runtime files removed: flow log, policy table, detector profiles, workloads, events, CNI
    /// registrations and queued DELs, the control socket.
    pub state: Vec<PathBuf>,
}

/// Removes an instance from the node: detaches every program it kept attached, removes its
/// pinned maps and programs and its runtime files (detector profiles included). Refused while
/// an agent runs on the instance. Stopping an agent never does this; it is the explicit
/// `bulkhead agent uninstall`.
pub fn uninstall(instance: &str) -> Result<UninstallReport, AgentError> {
    crate::instance::validate_name(instance)?;
    let _lock = crate::instance::InstanceLock::acquire(instance)?;
    let cfg = AgentConfig { datastore_dir: PathBuf::new(), node_netns: None, pin_dir: AgentConfig::default_pin_dir(instance), watch: false, flow_records: true };
    let mut report = UninstallReport::default();
    let links = cfg.pin_dir.join("links");
    if let Ok(rd) = std::fs::read_dir(&links) {
        for e in rd.flatten() {
            if matches!(bulkhead_loader::linkpin::remove(&e.path()), Ok(true)) {
                report.links.push(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(&links);
    for ifname in crate::uplink::attached(&cfg.pin_dir) {
        if crate::uplink::detach(&cfg.pin_dir, &ifname) {
            report.links.push(cfg.pin_dir.join(crate::uplink::UPLINKS_DIR).join(ifname));
        }
    }
    let _ = std::fs::remove_dir(cfg.pin_dir.join(crate::uplink::UPLINKS_DIR));
    if let Ok(rd) = std::fs::read_dir(&cfg.pin_dir) {
        for e in rd.flatten() {
            if std::fs::remove_file(e.path()).is_ok() {
                report.pins.push(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(&cfg.pin_dir);
    report.state = remove_state_files(&cfg.state_dir());
    // A killed agent could not remove its control socket.
    let sock = bulkhead_cni::api::socket_path(instance);
    if std::fs::remove_file(&sock).is_ok() {
        report.state.push(sock);
    }
    Ok(report)
}

/// Answers a CNI plugin request; an `add` is answered once the endpoint is enforced.
/// Answers a CNI request; ADD, DEL and GC are answered once the sync they start is written.
fn handle_endpoint(st: &mut State, req: bulkhead_cni::api::Request, reply: mpsc::Sender<bulkhead_cni::api::Response>) {
    use bulkhead_cni::api::{Request as R, Response};
    let span = tracing::info_span!("cni", request = ?req);
    let _g = span.enter();
    let answer = |r: Response| {
        let _ = reply.send(r);
    };
    match req {
        R::Add(a) => {
            let Some(ifindex) = netns::ifindex(&a.host_interface) else {
                return answer(Response::err(format!("interface {} (host side of {} in container {}) does not exist", a.host_interface, a.ifname, a.container_id)));
            };
            let (container_id, ifname) = (a.container_id.clone(), a.ifname.clone());
            if let Err(e) = st.registry.insert(a) {
                return answer(Response::err(e.to_string()));
            }
            request_sync(st, true, Some(Waiter::CniAdd { ifindex, container_id, ifname, reply }));
        }
        R::Del { container_id, ifname } => {
            if st.registry.remove(&container_id, &ifname) {
                request_sync(st, true, Some(Waiter::CniDel(reply)));
            } else {
                answer(Response::ok());
            }
        }
        R::Check { container_id, ifname } => {
            let Some(a) = st.registry.get(&container_id, &ifname) else {
                return answer(Response::err(format!("container {container_id} interface {ifname} is not registered")));
            };
            let host = a.host_interface.clone();
            let attached = st.dp.attached().find(|(n, _)| *n == host).map(|(_, i)| i);
            answer(match attached {
                None => Response::err(format!("no programs attached to {host}")),
                Some(i) if !matches!(st.dp.maps.endpoints.get(i), Ok(Some(_))) => Response::err(format!("no endpoint entry for {host} (ifindex {i})")),
                Some(i) => Response { ok: true, error: None, ifindex: Some(i) },
            })
        }
        R::Status => answer(Response::ok()),
        R::Gc { valid } => {
            let valid: std::collections::BTreeSet<(String, String)> = valid.into_iter().collect();
            let mut removed = 0;
            for k in st.registry.keys() {
                if !valid.contains(&k) && st.registry.remove(&k.0, &k.1) {
                    removed += 1;
                }
            }
            if removed > 0 {
                request_sync(st, true, Some(Waiter::CniGc(reply)));
            } else {
                answer(Response::ok());
            }
        }
    }
}

/// Asks for a sync: sent to the compile thread now if it is idle, else when its job returns
/// (`force`: compile even if the datastore reports no change; a waiter always forces).
fn request_sync(st: &mut State, force: bool, waiter: Option<Waiter>) {
    let q = st.queued.get_or_insert_with(|| (false, Vec::new()));
    q.0 |= force || waiter.is_some();
    q.1.extend(waiter);
    send_queued(st);
}

/// Sends the queued sync, if any, once no job is out.
fn send_queued(st: &mut State) {
    if st.inflight.is_some() {
        return;
    }
    let Some((force, waiters)) = st.queued.take() else { return };
    if st.compile.send(Job { registry: st.registry.clone(), force }) {
        st.inflight = Some(waiters);
    } else {
        for w in waiters {
            answer(st, w, Err(AgentError::Stopped));
        }
    }
}

/// Writes a job's outcome, answers its waiters and sends the next job if one was asked for.
fn finish_sync(st: &mut State, outcome: Outcome) {
    let waiters = st.inflight.take().unwrap_or_default();
    let result = match outcome {
        Outcome::Unchanged => None,
        Outcome::Ready(r) => Some(apply_ready(st, *r)),
        Outcome::Failed(e) => Some(Err(e)),
    };
    if let Some(Err(_)) = &result {
        st.sync_metrics.failed.inc();
    }
    match result {
        // Only an unforced job comes back unchanged, and waiters force: none to answer.
        None => {
            for w in waiters {
                request_sync(st, true, Some(w));
            }
        }
        Some(r) => {
            if let Err(e) = &r {
                tracing::error!(error = %e, "datastore change rejected; the enforced policy stays as it was");
            }
            // Each waiter gets the report, or the error (its text, past the first waiter).
            let mut r = Some(r);
            let n = waiters.len();
            for (i, w) in waiters.into_iter().enumerate() {
                let this = if i + 1 == n {
                    r.take().expect("one result per waiter")
                } else {
                    match r.as_ref().expect("taken only by the last") {
                        Ok(rep) => Ok(rep.clone()),
                        Err(e) => Err(AgentError::Invalid(e.to_string())),
                    }
                };
                answer(st, w, this);
            }
        }
    }
    // Only what was asked for meanwhile: an idle agent sends no job.
    send_queued(st);
}

/// Answers one waiter with the outcome of its sync.
fn answer(st: &mut State, w: Waiter, r: Result<SyncReport, AgentError>) {
    use bulkhead_cni::api::Response;
    match w {
        Waiter::Caller(reply) => {
            let _ = reply.send(r.map_err(Into::into));
        }
        Waiter::CniAdd { ifindex, container_id, ifname, reply } => {
            let resp = match r {
                Ok(_) if st.endpoints.contains_key(&ifindex) => Response { ok: true, error: None, ifindex: Some(ifindex) },
                // Nothing left behind: the registration goes, and the next sync takes the
                // endpoint out again.
                Ok(r) => {
                    st.registry.remove(&container_id, &ifname);
                    request_sync(st, true, None);
                    Response::err(format!("the endpoint was not enforced (pending interfaces {:?}, rejected {:?})", r.pending_interfaces, r.rejected))
                }
                Err(e) => {
                    st.registry.remove(&container_id, &ifname);
                    request_sync(st, true, None);
                    Response::err(e.to_string())
                }
            };
            let _ = reply.send(resp);
        }
        Waiter::CniDel(reply) => {
            if let Err(e) = r {
                tracing::error!(error = %e, "sync after a CNI DEL failed; the endpoint is gone from the registry");
            }
            let _ = reply.send(Response::ok());
        }
        Waiter::CniGc(reply) => {
            let _ = reply.send(match r {
                Ok(_) => Response::ok(),
                Err(e) => Response::err(e.to_string()),
            });
        }
    }
}

fn policy_stats(st: &State) -> Result<Vec<crate::status::PolicyStatsRow>, AgentError> {
    let Some(c) = &st.applied else { return Ok(Vec::new()) };
    let table = PolicyTable::of(c);
    let counts: BTreeMap<u32, bulkhead_common::PolicyStatsV1> =
        st.dp.policy_stats(table.policies.len() as u32)?.into_iter().collect();
    Ok(table
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| crate::status::PolicyStatsRow::new(p, counts.get(&(i as u32)).copied().unwrap_or_default()))
        .collect())
}

/// Writes the flow events the detector's network thread judged (it reads the ring and
/// decides first: its decisions are latency-bound) into the flow log.
fn drain_flows(st: &mut State) {
    let Some(c) = &st.applied else { return };
    for batch in st.det.flow_events() {
        st.flows.log(c, &batch);
    }
}

/// How long after a flip the now inactive generation may be written again.
const FLIP_GRACE: Duration = Duration::from_millis(5);

/// Writes a compile into the kernel: the inactive generation, the flip, the endpoints and
/// the detector's plan.
fn apply_ready(st: &mut State, ready: Ready) -> Result<SyncReport, AgentError> {
    let span = tracing::info_span!("sync");
    let _g = span.enter();
    let t0 = Instant::now();
    let Ready { model, compiled, kernel, plan: detector_plan, rejected, load_time, compile_time } = ready;
    for r in &rejected {
        tracing::error!(rejected = %r, "datastore file rejected; the rest applies");
    }
    // A packet that read the old revision just before the last flip may still be judged with
    // the generation about to be written: programs run for microseconds, so a few
    // milliseconds after a flip nobody reads it any more.
    let since_flip = st.last_flip.elapsed();
    if since_flip < FLIP_GRACE {
        std::thread::sleep(FLIP_GRACE - since_flip);
    }
    let c = apply::commit(&mut st.dp, &mut st.gens, kernel, &compiled, &mut st.endpoints, &mut None)?;
    st.last_flip = Instant::now();
    st.applied = Some(compiled);
    let compiled = st.applied.as_ref().expect("just set");
    apply::attach_endpoints(&mut st.dp, &mut st.endpoints, &c.keep)?;
    st.pending = c.pending;
    let (rev, written) = (c.rev, c.written);
    st.det.apply_plan(&mut st.dp, &detector_plan)?;
    st.det.peers_from(&model);
    st.flows.set_model(model);
    st.det.sync_flow_events(&mut st.dp)?;
    let write_time = t0.elapsed();
    st.sync_metrics.programming_seconds.observe((load_time + compile_time + write_time).as_secs_f64());
    tracing::info!(
        rev,
        upserts = written.upserts,
        removals = written.removals,
        load_ms = load_time.as_secs_f64() * 1e3,
        compile_ms = compile_time.as_secs_f64() * 1e3,
        write_ms = write_time.as_secs_f64() * 1e3,
        "policy enforced"
    );
    if let Ok(json) = serde_json::to_string_pretty(&PolicyTable::of(compiled)) {
        let _ = std::fs::write(st.state_dir.join("policies.json"), json);
    }
    for o in &compiled.overflow {
        tracing::error!(report = %o, "map capacity reached; affected endpoints fail closed");
    }
    Ok(SyncReport {
        policy_rev: rev,
        upserts: written.upserts,
        removals: written.removals,
        endpoints: st.endpoints.len(),
        pending_interfaces: st.pending.clone(),
        overflow: compiled.overflow.clone(),
        rejected,
        load_time,
        compile_time,
        write_time,
        total_time: load_time + compile_time + write_time,
    })
}
