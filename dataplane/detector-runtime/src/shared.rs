//! The state the agent thread and the detector's own threads share (workloads, findings, counters).

use super::*;

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

    pub(crate) fn gate(&self) -> std::sync::MutexGuard<'_, alerts::AlertGate> {
        // Plain counters and windows: usable after a panic elsewhere, as `state`.
        self.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Events reported by kind, and actions taken by (finding kind, action), since start.
    pub fn finding_counts(&self) -> (Vec<(&'static str, u64)>, Vec<((&'static str, String), u64)>) {
        let g = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (g.0.iter().map(|(k, v)| (*k, *v)).collect(), g.1.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    pub(crate) fn report(&self, file: &Path, rec: DetectorEvent) {
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
