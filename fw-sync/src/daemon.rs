//! The `run`, `run --dry-run` and `status` commands.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::DaemonConfig;
use crate::engine::{Engine, Mode};
use crate::error::FwSyncError;
use crate::metrics::Metrics;
use crate::source::{self, Snapshot};
use bulkhead_fswatch::Watcher;

/// Changes arriving this close together are applied as one batch.
const QUIET: i32 = 2;
/// A steady stream of changes still gets applied this often.
const MAX_BATCH_WAIT: Duration = Duration::from_millis(50);

/// Runs until killed: a reconcile at start, then one sync per datastore change and a
/// reconcile every `reconcile_interval`. Exiting leaves the firewalls as they are (no flush),
/// so a restart never opens or closes traffic.
pub fn run(config: DaemonConfig) -> Result<(), FwSyncError> {
    run_until(config, Metrics::default(), &AtomicBool::new(false))
}

/// First retry after a firewall failed to sync; doubled per failure up to the reconcile
/// interval, so a firewall that is down is not hammered and one that blipped is repaired
/// within milliseconds rather than at the next periodic reconcile.
const RETRY_FIRST: Duration = Duration::from_millis(50);

/// [`run`] with the caller's metrics, returning when `stop` is set (checked at least every
/// 100 ms): what benchmarks and tests embed.
pub fn run_until(config: DaemonConfig, metrics: Metrics, stop: &AtomicBool) -> Result<(), FwSyncError> {
    let dir = config.datastore.clone();
    let interval = config.reconcile_interval;
    let _metrics_server = match &config.metrics_listen {
        Some(addr) => {
            let server = metrics.serve(addr)?;
            tracing::info!(url = %format!("http://{}/metrics", server.addr()), "serving metrics");
            Some(server)
        }
        None => None,
    };
    // Watch before the first read, so a change during it is not missed.
    let watcher = Watcher::new(&dir).map_err(|e| FwSyncError::Watch { path: dir.clone(), detail: e.to_string() })?;
    let mut engine = Engine::from_config(config)?;
    // A bad datastore at start is fatal: nothing is applied and the operator sees why.
    let snapshot = source::load(&dir)?;
    let mut retry = Retry::new(interval);
    retry.after(sync(&mut engine, &metrics, &snapshot, Mode::Reconcile, Instant::now())?);
    tracing::info!(datastore = %dir.display(), groups = snapshot.groups.len(), "fw-sync running");
    let mut next_reconcile = Instant::now() + interval;
    while !stop.load(Ordering::Relaxed) {
        let wake = retry.at.map_or(next_reconcile, |r| r.min(next_reconcile));
        let timeout = wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
        if watcher.wait(timeout.as_millis() as i32) {
            let first = Instant::now();
            while first.elapsed() < MAX_BATCH_WAIT && watcher.wait(QUIET) {}
            match source::load(&dir) {
                Ok(s) => match sync(&mut engine, &metrics, &s, Mode::Event, first) {
                    Ok(failed) => retry.after(failed),
                    Err(e) => tracing::error!(error = %e, "datastore change not applied"),
                },
                // Half-written files land here too; the write that completes them wakes us again.
                Err(e) => tracing::error!(error = %e, "datastore change not applied; the firewalls keep their last state"),
            }
        }
        let now = Instant::now();
        if now >= next_reconcile || retry.at.is_some_and(|r| now >= r) {
            match source::load(&dir) {
                Ok(s) => match sync(&mut engine, &metrics, &s, Mode::Reconcile, now) {
                    Ok(failed) => retry.after(failed),
                    Err(e) => tracing::error!(error = %e, "reconcile not applied"),
                },
                Err(e) => tracing::error!(error = %e, "reconcile skipped: the datastore does not load"),
            }
            if now >= next_reconcile {
                next_reconcile = Instant::now() + interval;
            }
        }
    }
    Ok(())
}

/// When to retry after failed syncs.
struct Retry {
    at: Option<Instant>,
    delay: Duration,
    max: Duration,
}

impl Retry {
    fn new(max: Duration) -> Retry {
        Retry { at: None, delay: RETRY_FIRST, max }
    }

    /// Schedules a retry when a sync left a firewall out of step, clears it otherwise.
    fn after(&mut self, failed: bool) {
        if failed {
            self.at = Some(Instant::now() + self.delay);
            self.delay = (self.delay * 2).min(self.max);
        } else {
            self.at = None;
            self.delay = RETRY_FIRST;
        }
    }
}

/// One sync of every firewall; `since` is when the change was seen, for the latency metric.
/// Returns whether some firewall was left out of step.
fn sync(engine: &mut Engine, metrics: &Metrics, snapshot: &Snapshot, mode: Mode, since: Instant) -> Result<bool, FwSyncError> {
    let reports = engine.sync(snapshot, mode)?;
    metrics.record(mode, &reports, since.elapsed(), |fw| engine.owned(fw));
    let mut failed = false;
    for r in reports {
        if let Some(e) = r.error {
            failed = true;
            tracing::error!(firewall = %r.firewall, error = %e, "firewall not in step; retrying with backoff");
        }
    }
    Ok(failed)
}

/// What `run --dry-run` prints: per firewall, the diff it would apply (from the real state).
pub fn dry_run(config: DaemonConfig) -> Result<String, FwSyncError> {
    let snapshot = source::load(&config.datastore)?;
    let mut engine = Engine::from_config(config)?;
    let mut out = String::new();
    for (fw, diff) in engine.plan(&snapshot)? {
        let _ = writeln!(out, "firewall {fw}:");
        match diff {
            Ok(d) => out += &d.to_string(),
            Err(e) => {
                let _ = writeln!(out, "  cannot read: {e}");
            }
        }
    }
    Ok(out)
}

/// What `status` prints: each group with its members and targets, then each firewall's drift
/// from the desired state.
pub fn status(config: DaemonConfig) -> Result<String, FwSyncError> {
    let snapshot = source::load(&config.datastore)?;
    let mut out = String::new();
    for g in &snapshot.groups {
        let members = crate::desired::members(&snapshot.model, g);
        let _ = writeln!(out, "AddressGroup {} ({}): {} members", g.name, g.origin, members.len());
        for (ip, pod) in &members {
            let _ = writeln!(out, "  {ip} {pod}");
        }
        for t in &g.targets {
            let _ = writeln!(out, "  -> firewall {} {}", t.firewall, t.object);
        }
    }
    let mut engine = Engine::from_config(config)?;
    for (fw, diff) in engine.plan(&snapshot)? {
        match diff {
            Ok(d) if d.is_empty() => {
                let _ = writeln!(out, "firewall {fw}: in step");
            }
            Ok(d) => {
                let _ = write!(out, "firewall {fw}: drift ({} address changes pending)\n{d}", d.size());
            }
            Err(e) => {
                let _ = writeln!(out, "firewall {fw}: cannot read: {e}");
            }
        }
    }
    Ok(out)
}
