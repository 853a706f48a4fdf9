//! One worker thread per firewall, so a slow firewall (a PAN-OS commit takes seconds to
//! minutes on real hardware) never delays the others, and changes that arrive while a
//! firewall is busy are coalesced into its next batch: the worker always applies the latest
//! snapshot, and the latency it reports runs from the oldest change the batch carries.
//! A firewall's `batchWindow` holds a batch open that long after its first change, so a
//! rollout's pod events become one commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::config::DaemonConfig;
use crate::engine::{Engine, Mode};
use crate::group::Target;
use crate::metrics::Metrics;
use crate::quarantine::StatusBook;
use crate::source::Snapshot;

/// First retry after a failed sync; doubled per failure up to [`RETRY_MAX`] (or the
/// reconcile interval if shorter), so a firewall that is down is not hammered (a retry is a
/// read of a few requests) and one that blipped is repaired within milliseconds rather than
/// at the next periodic reconcile.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between retries: a flaky API (every request has some chance to fail, and a
/// PAN-OS apply is several requests) must not push convergence out to minutes.
const RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Inbox {
    /// The newest snapshot not yet applied, and when the oldest change it carries was seen.
    pending: Option<(Arc<Snapshot>, Instant)>,
    stop: bool,
}

/// A firewall's worker; stopped and joined on drop.
pub struct Worker {
    firewall: String,
    inbox: Arc<(Mutex<Inbox>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker: a reconcile against `first` at once, then syncs on [`Worker::send`],
    /// a reconcile every `config.reconcile_interval` and retries after failures.
    /// Quarantine statuses go to `statuses` (shared by the workers).
    pub fn start(config: DaemonConfig, backend: Box<dyn Backend>, metrics: Metrics, first: Arc<Snapshot>, statuses: Arc<StatusBook>) -> Worker {
        let firewall = backend.firewall().to_string();
        let inbox = Arc::new((Mutex::new(Inbox::default()), Condvar::new()));
        let inbox2 = inbox.clone();
        let name = firewall.clone();
        let name_in = firewall.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fw-{firewall}"))
            .spawn(move || {
                let interval = config.reconcile_interval;
                let window = config.firewalls.iter().find(|f| f.name == name_in).map_or(Duration::ZERO, |f| f.batch_window);
                let quarantine = config.quarantine_targets().into_iter().find(|t| t.firewall == name_in);
                let engine = Engine::new(config, vec![backend]);
                let out = Out { metrics: &metrics, quarantine, statuses: &statuses };
                run(engine, &out, &inbox2, first, interval, window);
            })
            .expect("spawning a worker thread");
        tracing::debug!(firewall = %name, "worker started");
        Worker { firewall, inbox, thread: Some(thread) }
    }

    /// Hands the worker a new snapshot, seen at `since`; replaces one still waiting.
    pub fn send(&self, snapshot: Arc<Snapshot>, since: Instant) {
        let (lock, cv) = &*self.inbox;
        let mut inbox = lock.lock().expect("worker inbox");
        let since = inbox.pending.as_ref().map_or(since, |(_, s)| (*s).min(since));
        inbox.pending = Some((snapshot, since));
        cv.notify_one();
    }

    /// The firewall this worker drives.
    pub fn firewall(&self) -> &str {
        &self.firewall
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        {
            let (lock, cv) = &*self.inbox;
            lock.lock().expect("worker inbox").stop = true;
            cv.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a sync's results go: metrics, and the quarantine statuses when this firewall holds
/// the quarantine group.
struct Out<'a> {
    metrics: &'a Metrics,
    quarantine: Option<Target>,
    statuses: &'a StatusBook,
}

fn run(mut engine: Engine, out: &Out, inbox: &(Mutex<Inbox>, Condvar), first: Arc<Snapshot>, interval: Duration, window: Duration) {
    let mut last = first;
    let mut retry_at: Option<Instant>;
    let mut delay = RETRY_FIRST;
    let mut mode = Mode::Reconcile;
    let mut since = Instant::now();
    let mut next_reconcile = Instant::now() + interval;
    loop {
        let failed = sync(&mut engine, out, &last, mode, since);
        if failed {
            retry_at = Some(Instant::now() + delay);
            delay = (delay * 2).min(interval).min(RETRY_MAX);
        } else {
            retry_at = None;
            delay = RETRY_FIRST;
        }
        if mode == Mode::Reconcile && Instant::now() >= next_reconcile {
            next_reconcile = Instant::now() + interval;
        }
        // Wait for a new snapshot, the retry or the periodic reconcile.
        let (lock, cv) = inbox;
        let mut guard = lock.lock().expect("worker inbox");
        loop {
            if guard.stop {
                return;
            }
            let now = Instant::now();
            if let Some((_, seen)) = &guard.pending {
                // Within the batch window, keep collecting (newer snapshots replace this one).
                let due = *seen + window;
                if now < due {
                    guard = cv.wait_timeout(guard, due - now).expect("worker inbox").0;
                    continue;
                }
                let (snapshot, seen) = guard.pending.take().expect("checked above");
                (last, since, mode) = (snapshot, seen, Mode::Event);
                break;
            }
            let wake = retry_at.map_or(next_reconcile, |r| r.min(next_reconcile));
            if now >= wake {
                // A retry reads the real state: the failed apply may have left part of it.
                (since, mode) = (now, Mode::Reconcile);
                break;
            }
            guard = cv.wait_timeout(guard, wake - now).expect("worker inbox").0;
        }
    }
}

/// One sync; returns whether the firewall was left out of step.
fn sync(engine: &mut Engine, out: &Out, snapshot: &Snapshot, mode: Mode, since: Instant) -> bool {
    let reports = match engine.sync(snapshot, mode) {
        Ok(r) => r,
        // The daemon checks every snapshot before sending it; this is a bug guard.
        Err(e) => {
            tracing::error!(error = %e, "snapshot rejected by the engine");
            return false;
        }
    };
    out.metrics.record(mode, &reports, since.elapsed(), |fw| engine.owned(fw));
    if let Some(t) = &out.quarantine {
        for r in &reports {
            out.statuses.record(r, t, &snapshot.quarantines);
        }
    }
    let mut failed = false;
    for r in reports {
        if let Some(e) = r.error {
            failed = true;
            tracing::error!(firewall = %r.firewall, error = %e, "firewall not in step; retrying with backoff");
        }
    }
    failed
}

/// Whether the flag asks to stop (shared by the daemon loop and tests).
pub fn stopped(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}
