//! The detector's syscall-sequence side: the syscall probe streams every syscall of workloads
//! with a sequence model (`WorkloadOptions::sequences`) into a ring buffer, and this thread
//! learns and judges them per thread with the project's model, sequence covering
//! ([`bulkhead_detector::cover`]).
//!
//! Learn mode: each thread's syscalls are cut into chunks; a chunk the profile's model cannot
//! already cover in one phrase is new behaviour and is added to the shared profile (replicas
//! learn together), up to the profile's cap (what does not fit is counted). Monitor and
//! protect: each thread's stream is covered online against the model (one automaton state,
//! a 64-bit window and a few counters per thread) and two findings are raised: a window with
//! too many phrases (`syscall-sequence`: the thread does something the workload never did),
//! and a syscall number the profile never saw (`syscall-unseen`). Protect mode then takes
//! the workload's `syscall_anomaly` actions (isolation entry, cgroup freeze or kill), all in
//! user space; every finding is an alert.
//!
//! Bounded memory: at most [`MAX_STREAMS`] thread streams (idle ones are dropped after
//! [`IDLE`]; when full, new threads are judged from a fresh start only after old ones go),
//! each with at most one chunk of [`CHUNK`] syscalls while learning; the model is capped by
//! [`SequenceConfig::max_syscalls`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use bulkhead_common::detect::{self as det, SyscallRecordV1};
use bulkhead_detector::{CoverCursor, CoverProfile};
use serde::{Deserialize, Serialize};

use super::{DetectorEvent, Mode, Shared, WorkloadState, take_actions};
use bulkhead_loader::ring::Ring;

use crate::error::DetectorError;

/// Syscalls per learning chunk of one thread.
pub const CHUNK: usize = 256;
/// Thread streams kept at most (all workloads together).
pub const MAX_STREAMS: usize = 16_384;
/// A thread silent this long has its stream (and its partial chunk, when learning) closed.
pub const IDLE: Duration = Duration::from_secs(1);
/// At most one finding per workload within this time (the first one acts).
const COOLDOWN: Duration = Duration::from_secs(1);
/// Syscalls a finding's detail names (the thread's most recent).
const RECENT: usize = 16;

/// Settings of a workload's syscall-sequence model. Present = the workload's syscalls are
/// streamed to the agent, learned in learn mode and judged in monitor and protect mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SequenceConfig {
    /// Syscalls in the sliding window of each thread (1..=64).
    #[serde(default = "default_window")]
    pub window: u32,
    /// Phrases within one full window that raise a `syscall-sequence` finding (1..=window).
    #[serde(default = "default_max_phrases")]
    pub max_phrases: u32,
    /// Raise a `syscall-unseen` finding for a syscall number the profile never saw.
    #[serde(default = "default_true")]
    pub unseen_syscalls: bool,
    /// Cap on the normal syscalls the profile's model holds.
    #[serde(default = "default_max_syscalls")]
    pub max_syscalls: u32,
}

fn default_window() -> u32 {
    64
}
fn default_max_phrases() -> u32 {
    16
}
fn default_true() -> bool {
    true
}
fn default_max_syscalls() -> u32 {
    1 << 16
}

impl Default for SequenceConfig {
    fn default() -> Self {
        SequenceConfig {
            window: default_window(),
            max_phrases: default_max_phrases(),
            unseen_syscalls: true,
            max_syscalls: default_max_syscalls(),
        }
    }
}

impl SequenceConfig {
    /// Checks the ranges; the error names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=64).contains(&self.window) {
            return Err(("window", format!("{} is outside 1..=64", self.window)));
        }
        if self.max_phrases == 0 || self.max_phrases > self.window {
            return Err(("maxPhrases", format!("{} is outside 1..=window ({})", self.max_phrases, self.window)));
        }
        if self.max_syscalls < CHUNK as u32 {
            return Err(("maxSyscalls", format!("{} is below one chunk ({CHUNK})", self.max_syscalls)));
        }
        Ok(())
    }
}

/// A finding of the sequence model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqFinding {
    /// Too many phrases in one window.
    Sequence { phrases: u32 },
    /// A syscall number the profile never saw.
    Unseen { nr: u32 },
}

/// One thread's stream, learning or judged.
#[derive(Debug, Clone)]
struct Stream {
    cursor: CoverCursor,
    /// Bit i set = the i-th most recent syscall started a phrase.
    bits: u64,
    /// Syscalls judged since the stream (re)started, saturating (bounds the recent list).
    judged: u32,
    last_seen: Instant,
    /// Learn mode: syscalls of the chunk being filled.
    chunk: Vec<u16>,
    recent: [u16; RECENT],
    recent_next: usize,
}

impl Stream {
    fn new(now: Instant) -> Stream {
        Stream { cursor: CoverCursor::default(), bits: 0, judged: 0, last_seen: now, chunk: Vec::new(), recent: [0; RECENT], recent_next: 0 }
    }

    /// Judges one syscall; returns a finding when the window or the syscall is anomalous.
    fn judge(&mut self, model: &CoverProfile, cfg: &SequenceConfig, nr: u16) -> Option<SeqFinding> {
        self.recent[self.recent_next] = nr;
        self.recent_next = (self.recent_next + 1) % RECENT;
        let starts = model.step(&mut self.cursor, nr);
        self.bits = (self.bits << 1) | starts as u64;
        self.judged = self.judged.saturating_add(1);
        if starts && cfg.unseen_syscalls && !model.knows(nr) {
            return Some(SeqFinding::Unseen { nr: nr as u32 });
        }
        // A window not yet full (a new thread, or just after a finding) is judged on what it
        // has: that many phrases in fewer syscalls is no less foreign.
        let window = cfg.window.min(64);
        let mask = if window == 64 { u64::MAX } else { (1u64 << window) - 1 };
        let phrases = (self.bits & mask).count_ones();
        (phrases >= cfg.max_phrases).then_some(SeqFinding::Sequence { phrases })
    }

    /// The most recent syscalls, oldest first.
    fn recent(&self) -> Vec<u16> {
        let n = (self.judged as usize).min(RECENT);
        (0..n).map(|i| self.recent[(self.recent_next + RECENT - n + i) % RECENT]).collect()
    }

    /// Starts the window afresh (after a finding, so the next one needs a new full window).
    fn restart(&mut self) {
        self.cursor = CoverCursor::default();
        self.bits = 0;
        self.judged = 0;
    }
}

/// What the thread knows of one monitored workload (refreshed when the agent changes any).
#[derive(Clone, Debug)]
struct View {
    state: WorkloadState,
    cfg: SequenceConfig,
}

/// The sequence-model thread's state.
struct Runner {
    ring: Ring<SyscallRecordV1>,
    shared: Arc<Shared>,
    events_file: PathBuf,
    /// The pinned isolation map (TC reads it): protect mode's `isolate`.
    isolation: Option<bulkhead_loader::ifmap::IsolationMap<MapData>>,
    generation: u64,
    views: HashMap<u64, View>,
    /// The model of each profile (by name) as this thread last built or loaded it.
    models: HashMap<String, Arc<CoverProfile>>,
    /// Chunks learned since the last merge, per profile.
    pending: HashMap<String, Vec<Vec<u16>>>,
    streams: HashMap<(u64, u32), Stream>,
    last_finding: HashMap<u64, Instant>,
    last_merge: Instant,
    /// Records of threads not followed because [`MAX_STREAMS`] were (fail-open, logged).
    untracked: u64,
    /// Workloads that left learn mode: their threads' partial chunks (including records
    /// still in the ring at the switch) are learned once the ring is drained.
    left_learning: Vec<u64>,
}

pub(super) fn spawn(
    ring: RingBuf<MapData>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    events_file: PathBuf,
    pin_dir: &Path,
) -> Result<JoinHandle<()>, DetectorError> {
    // Without the pinned maps, isolate fails (reported per finding); the rest still works.
    let isolation = match bulkhead_loader::ifmap::IsolationMap::open_isolation(pin_dir) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!(error = %e, "sequence model cannot open the isolation maps; isolate actions will fail");
            None
        }
    };
    let mut runner = Runner {
        ring: Ring::new(ring),
        shared,
        events_file,
        isolation,
        generation: u64::MAX,
        views: HashMap::new(),
        models: HashMap::new(),
        pending: HashMap::new(),
        streams: HashMap::new(),
        last_finding: HashMap::new(),
        last_merge: Instant::now(),
        untracked: 0,
        left_learning: Vec::new(),
    };
    std::thread::Builder::new()
        .name("bh-sequences".into())
        .spawn(move || runner.run(&stop))
        .map_err(|_| DetectorError::Stopped)
}

impl Runner {
    fn run(&mut self, stop: &AtomicBool) {
        let span = tracing::info_span!("detector-sequences");
        let _g = span.enter();
        loop {
            // The probe wakes this thread only when much is waiting (see SYSSEQ_WAKE_BYTES):
            // the short timeout is what bounds a finding's delay while workloads stream.
            // Otherwise it bounds how long a stop request goes unnoticed.
            let timeout = if self.views.is_empty() { 100 } else { det::SYSSEQ_POLL_MS };
            self.ring.wait(None, timeout);
            self.drain();
            self.housekeeping();
            if stop.load(Ordering::SeqCst) {
                self.flush_chunks(|_| true);
                self.merge();
                break;
            }
        }
    }

    /// Reads and handles every record waiting in the ring, picking up the agent's changes
    /// between batches. Once the ring is empty, confirms the generation it started that last
    /// read under: every record the kernel wrote before that change's map write is handled
    /// (the agent bumps the generation again after writing the workload map).
    fn drain(&mut self) {
        let mut batch: Vec<SyscallRecordV1> = Vec::with_capacity(4096);
        loop {
            self.refresh();
            let applied = self.generation;
            batch.clear();
            let room = batch.capacity();
            self.ring.read(&mut batch, room);
            if batch.is_empty() {
                if !self.left_learning.is_empty() {
                    let left = std::mem::take(&mut self.left_learning);
                    self.flush_chunks(|cg| left.contains(&cg));
                    self.merge();
                }
                self.shared.seq_applied.store(applied, Ordering::SeqCst);
                return;
            }
            let now = Instant::now();
            for rec in &batch {
                self.on_record(rec, now);
            }
        }
    }

    /// Picks up workload and mode changes (and imported profiles) from the agent thread.
    fn refresh(&mut self) {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        if generation == self.generation {
            return;
        }
        // Records carry the mode the kernel saw, so records still in the ring from before a
        // switch are learned or judged as sent, whatever the views say now.
        self.generation = generation;
        let (workloads, reload): (Vec<WorkloadState>, Vec<(String, Option<CoverProfile>)>) = {
            let mut g = self.shared.state();
            let names: Vec<String> = std::mem::take(&mut g.sequence_reload).into_iter().collect();
            let reload = names.into_iter().map(|n| {
                let m = g.profiles.get(&n).and_then(|p| p.syscall_model.clone());
                (n, m)
            });
            let reload: Vec<_> = reload.collect();
            (g.workloads.values().cloned().collect(), reload)
        };
        // Profiles replaced by an import: the import wins over what was learned meanwhile.
        for (name, model) in reload {
            self.pending.remove(&name);
            match model {
                Some(m) => self.models.insert(name, Arc::new(m)),
                None => self.models.remove(&name),
            };
        }
        let next: HashMap<u64, View> = workloads
            .into_iter()
            .filter_map(|w| w.opts.sequences.map(|cfg| (w.cgroup_id, View { state: w, cfg })))
            .collect();
        // A workload leaving learn mode: what its threads learned so far counts.
        let left_learning: Vec<u64> = self
            .views
            .iter()
            .filter(|(cg, v)| v.state.spec.mode == Mode::Learn && next.get(cg).is_none_or(|n| n.state.spec.mode != Mode::Learn))
            .map(|(cg, _)| *cg)
            .collect();
        if !left_learning.is_empty() {
            self.flush_chunks(|cg| left_learning.contains(&cg));
            self.merge();
            self.left_learning.extend(left_learning);
        }
        // Streams of workloads no longer modelled go; the others carry on (a learning
        // thread's partial chunk is learned at its first judged record).
        self.streams.retain(|(cg, _), _| next.contains_key(cg));
        for v in next.values() {
            let name = v.state.profile_name().to_string();
            if !self.models.contains_key(&name) {
                let stored = self.shared.state().profiles.get(&name).and_then(|p| p.syscall_model.clone());
                let model = stored.unwrap_or_else(|| CoverProfile::empty(v.cfg.max_syscalls as usize));
                self.models.insert(name, Arc::new(model));
            }
        }
        for v in next.values().filter(|v| v.state.spec.mode != Mode::Learn) {
            if self.models.get(v.state.profile_name()).is_none_or(|m| m.is_empty()) && !self.views.get(&v.state.cgroup_id).is_some_and(|o| o.state.spec.mode != Mode::Learn) {
                tracing::warn!(workload = %v.state.spec.name, profile = v.state.profile_name(), "no syscall sequences learned: the workload's syscalls are not judged");
            }
        }
        self.views = next;
    }

    fn on_record(&mut self, rec: &SyscallRecordV1, now: Instant) {
        let learning = rec.mode == det::mode::LEARN;
        if !self.views.contains_key(&rec.cgroup_id) {
            // A workload added after this batch was read: its view first (no-op otherwise).
            self.refresh();
        }
        let Some(view) = self.views.get(&rec.cgroup_id) else { return };
        let key = (rec.cgroup_id, rec.tid);
        if !self.streams.contains_key(&key) && self.streams.len() >= MAX_STREAMS {
            // Full: this thread is not followed until idle streams are dropped (fail-open,
            // counted and logged at the next merge).
            self.untracked += 1;
            return;
        }
        let stream = self.streams.entry(key).or_insert_with(|| Stream::new(now));
        stream.last_seen = now;
        let nr = rec.nr.min(u16::MAX as u32) as u16;
        let profile = view.state.profile_name();
        if learning {
            stream.chunk.push(nr);
            if stream.chunk.len() >= CHUNK {
                let chunk = std::mem::take(&mut stream.chunk);
                learn_chunk(&self.models, &mut self.pending, profile, chunk);
            }
            return;
        }
        if !stream.chunk.is_empty() {
            // The thread's first judged record after learning: its last partial chunk goes
            // into the model first (once per thread and switch; what other threads left is
            // merged when the ring is drained, see `drain`, not on this per-syscall path,
            // where a replica still learning the same profile would rebuild it every time).
            let chunk = std::mem::take(&mut stream.chunk);
            let profile = profile.to_string();
            if chunk.len() >= 4 {
                learn_chunk(&self.models, &mut self.pending, &profile, chunk);
                self.merge();
            }
            return self.on_record(rec, now);
        }
        let Some(model) = self.models.get(profile) else { return };
        if model.is_empty() {
            // Nothing learned: judging would flag every syscall. Said once at refresh time.
            return;
        }
        let Some(finding) = stream.judge(model, &view.cfg, nr) else { return };
        let recent = stream.recent();
        stream.restart();
        let view = view.clone();
        if self.last_finding.get(&rec.cgroup_id).is_some_and(|t| t.elapsed() < COOLDOWN) {
            return;
        }
        self.last_finding.insert(rec.cgroup_id, Instant::now());
        let ev = self.act(&view, rec, finding, &recent);
        self.shared.record(&self.events_file, ev);
    }

    /// Takes the workload's actions (protect mode) and builds the alert.
    fn act(&mut self, view: &View, rec: &SyscallRecordV1, finding: SeqFinding, recent: &[u16]) -> DetectorEvent {
        let read_at = bulkhead_loader::clock::monotonic_ns();
        let w = &view.state;
        let protect = w.spec.mode == Mode::Protect;
        let (user_actions, isolate_ns) = take_actions(w, w.spec.actions.syscall_anomaly, rec.ts_ns, || self.isolate(w));
        let now = bulkhead_loader::clock::monotonic_ns();
        let recent: Vec<String> = recent.iter().map(u16::to_string).collect();
        let (kind, detail) = match finding {
            SeqFinding::Sequence { phrases } => (
                "syscall-sequence",
                format!(
                    "thread {}: {phrases} phrases in its last {} syscalls (limit {}); last syscalls: {}",
                    rec.tid,
                    view.cfg.window,
                    view.cfg.max_phrases,
                    recent.join(" ")
                ),
            ),
            SeqFinding::Unseen { nr } => {
                ("syscall-unseen", format!("thread {}: syscall {nr} never seen in the profile; last syscalls: {}", rec.tid, recent.join(" ")))
            }
        };
        let ev = DetectorEvent {
            kind,
            ts_ns: rec.ts_ns,
            workload: Some(w.spec.name.clone()),
            cgroup_id: w.cgroup_id,
            pid: rec.pid,
            mode: if protect { "protect" } else { "monitor" },
            user_enforce_ns: (!user_actions.is_empty()).then(|| now.saturating_sub(rec.ts_ns)),
            user_actions,
            read_delay_ns: read_at.saturating_sub(rec.ts_ns),
            isolate_ns,
            detail: Some(detail),
            ..Default::default()
        };
        tracing::warn!(
            workload = %w.spec.name,
            kind,
            pid = rec.pid,
            tid = rec.tid,
            actions = ?ev.user_actions,
            detail = ev.detail.as_deref().unwrap_or(""),
            "detector: syscalls outside the profile"
        );
        ev
    }

    fn isolate(&mut self, w: &WorkloadState) -> Result<(), String> {
        if w.ifindex == 0 {
            return Err("no interface".into());
        }
        let map = self.isolation.as_mut().ok_or("isolation map not open")?;
        map.insert(w.ifindex, super::user_isolation(w)).map_err(|e| e.to_string())
    }

    /// Once per poll round: idle streams are closed (their partial chunks learned) and, once
    /// a second, learned chunks are merged into the profiles.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        let idle: Vec<(u64, u32)> = self.streams.iter().filter(|(_, s)| now.duration_since(s.last_seen) >= IDLE).map(|(k, _)| *k).collect();
        for key in idle {
            let Some(s) = self.streams.remove(&key) else { continue };
            self.learn_partial(key.0, s.chunk);
        }
        if self.last_merge.elapsed() >= Duration::from_secs(1) {
            self.merge();
        }
    }

    /// Learns the partial chunks of the streams of the workloads `which` selects.
    fn flush_chunks(&mut self, which: impl Fn(u64) -> bool) {
        let keys: Vec<(u64, u32)> = self.streams.keys().filter(|k| which(k.0)).copied().collect();
        for key in keys {
            if let Some(s) = self.streams.get_mut(&key) {
                let chunk = std::mem::take(&mut s.chunk);
                self.learn_partial(key.0, chunk);
            }
        }
    }

    fn learn_partial(&mut self, cgroup_id: u64, chunk: Vec<u16>) {
        // Too short to say anything about order (a thread that made a handful of calls).
        if chunk.len() < 4 {
            return;
        }
        // Chunks hold only records the kernel sent in learn mode, whatever the mode is now.
        if let Some(v) = self.views.get(&cgroup_id) {
            let name = v.state.profile_name().to_string();
            learn_chunk(&self.models, &mut self.pending, &name, chunk);
        }
    }

    /// Adds the pending chunks to each profile's model and hands the result to the agent
    /// thread (which persists it with the profile).
    fn merge(&mut self) {
        self.last_merge = Instant::now();
        if self.untracked > 0 {
            tracing::warn!(records = self.untracked, max_streams = MAX_STREAMS, "syscall records of threads beyond the stream cap were not judged");
            self.untracked = 0;
        }
        if self.pending.is_empty() {
            return;
        }
        for (name, chunks) in std::mem::take(&mut self.pending) {
            let cap = self.views.values().find(|v| v.state.profile_name() == name).map(|v| v.cfg.max_syscalls as usize);
            let current = self.models.get(&name).cloned().unwrap_or_else(|| Arc::new(CoverProfile::empty(cap.unwrap_or(1 << 16))));
            let (model, dropped) = current.extended(chunks);
            if dropped > 0 {
                tracing::warn!(profile = %name, dropped, cap = model.max_syscalls(), "syscall model full; new behaviour not learned");
            }
            tracing::debug!(profile = %name, syscalls = model.len(), sequences = model.sequences(), "syscall model learned");
            let mut g = self.shared.state();
            if let Some(p) = g.profiles.get_mut(&name) {
                p.syscall_model = Some(model.clone());
                p.syscall_model_dropped += dropped;
                g.dirty.insert(name.clone());
            }
            drop(g);
            self.models.insert(name, Arc::new(model));
        }
    }
}

/// Queues a chunk for the profile unless its model (plus what is pending) already covers it
/// in one phrase: only behaviour the profile cannot explain yet is kept.
fn learn_chunk(models: &HashMap<String, Arc<CoverProfile>>, pending: &mut HashMap<String, Vec<Vec<u16>>>, profile: &str, chunk: Vec<u16>) {
    if models.get(profile).is_some_and(|m| !m.is_empty() && m.phrases(&chunk) <= 1) {
        return;
    }
    let list = pending.entry(profile.to_string()).or_default();
    if !list.contains(&chunk) {
        list.push(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_detector::CoverTrainer;

    fn model(seqs: &[&[u16]]) -> CoverProfile {
        let mut t = CoverTrainer::new(1 << 12).unwrap();
        for s in seqs {
            t.train_trace(s);
        }
        t.finish()
    }

    #[test]
    fn known_loop_raises_nothing_and_a_foreign_burst_does() {
        // A server loop: accept4, read, write, close, repeated.
        let loop_: Vec<u16> = [288u16, 0, 1, 3].repeat(64);
        let m = model(&[&loop_]);
        let cfg = SequenceConfig { window: 16, max_phrases: 4, unseen_syscalls: false, max_syscalls: 1 << 12 };
        let mut s = Stream::new(Instant::now());
        for &nr in loop_.iter().cycle().take(1000) {
            assert_eq!(s.judge(&m, &cfg, nr), None, "the learned loop is normal");
        }
        // Known syscalls in an order never seen: every one starts a phrase.
        let mut found = None;
        for &nr in [3u16, 3, 0, 0, 1, 1, 288, 288, 3, 0, 0, 3, 1, 288, 288, 1].iter() {
            found = found.or(s.judge(&m, &cfg, nr));
        }
        assert!(matches!(found, Some(SeqFinding::Sequence { phrases }) if phrases >= 4), "{found:?}");
        assert_eq!(s.recent().len(), RECENT);
    }

    #[test]
    fn unseen_syscall_is_a_finding_of_its_own() {
        let m = model(&[&[0u16, 1, 2, 3]]);
        let cfg = SequenceConfig::default();
        let mut s = Stream::new(Instant::now());
        assert_eq!(s.judge(&m, &cfg, 0), None);
        assert_eq!(s.judge(&m, &cfg, 101), Some(SeqFinding::Unseen { nr: 101 }));
        let off = SequenceConfig { unseen_syscalls: false, ..cfg };
        assert_eq!(Stream::new(Instant::now()).judge(&m, &off, 101), None, "one phrase is below the limit");
    }

    #[test]
    fn learning_keeps_only_what_the_model_cannot_cover() {
        let loop_: Vec<u16> = [288u16, 0, 1, 3].repeat(64);
        let mut models = HashMap::new();
        models.insert("p".to_string(), Arc::new(model(&[&loop_])));
        let mut pending = HashMap::new();
        learn_chunk(&models, &mut pending, "p", loop_[1..200].to_vec());
        assert!(pending.is_empty(), "a covered chunk adds nothing");
        learn_chunk(&models, &mut pending, "p", vec![59, 1, 2, 3]);
        learn_chunk(&models, &mut pending, "p", vec![59, 1, 2, 3]);
        assert_eq!(pending["p"].len(), 1, "new behaviour once");
    }

    #[test]
    fn config_ranges_name_the_field() {
        assert!(SequenceConfig::default().validate().is_ok());
        let bad = SequenceConfig { window: 65, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().0, "window");
        let bad = SequenceConfig { max_phrases: 0, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().0, "maxPhrases");
        let bad = SequenceConfig { max_syscalls: 10, ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().0, "maxSyscalls");
    }
}
