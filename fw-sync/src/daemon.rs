//! The `run`, `run --dry-run` and `status` commands.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::config::DaemonConfig;
use crate::engine::Engine;
use crate::error::FwSyncError;
use crate::metrics::Metrics;
use crate::source;
use crate::worker::{Worker, stopped};
use bulkhead_fswatch::Watcher;

/// Changes arriving this close together are applied as one batch.
const QUIET: i32 = 2;
/// A steady stream of changes still gets applied this often.
const MAX_BATCH_WAIT: Duration = Duration::from_millis(50);

/// Runs until killed: one worker per firewall reconciles at start, then syncs on every
/// datastore change and reconciles every `reconcile_interval`. Exiting leaves the firewalls
/// as they are (no flush), so a restart never opens or closes traffic.
pub fn run(config: DaemonConfig) -> Result<(), FwSyncError> {
    run_until(config, Metrics::default(), &AtomicBool::new(false))
}

/// [`run`] with the caller's metrics, returning when `stop` is set (checked at least every
/// 100 ms): what benchmarks and tests embed.
pub fn run_until(config: DaemonConfig, metrics: Metrics, stop: &AtomicBool) -> Result<(), FwSyncError> {
    if let Some(k) = config.kubernetes.clone() {
        return run_kubernetes(config, &k, metrics, stop);
    }
    let dir = config.datastore.clone();
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
    // A bad datastore or config at start is fatal: nothing is applied and the operator sees why.
    let snapshot = Arc::new(source::load(&dir)?);
    config.check_groups(&snapshot.groups)?;
    let backends: Vec<_> = config.firewalls.iter().map(crate::backend::for_firewall).collect::<Result<_, _>>()?;
    let statuses = Arc::new(crate::quarantine::StatusBook::default());
    let workers: Vec<Worker> = backends.into_iter().map(|b| Worker::start(config.clone(), b, metrics.clone(), snapshot.clone(), statuses.clone())).collect();
    tracing::info!(datastore = %dir.display(), groups = snapshot.groups.len(), firewalls = workers.len(), "fw-sync running");
    while !stopped(stop) {
        if !watcher.wait(100) {
            continue;
        }
        let first = Instant::now();
        while first.elapsed() < MAX_BATCH_WAIT && watcher.wait(QUIET) {}
        // The whole snapshot is checked before any firewall sees it: all or nothing.
        match source::load(&dir).and_then(|s| config.check_groups(&s.groups).map(|()| s)) {
            Ok(s) => {
                let s = Arc::new(s);
                for w in &workers {
                    w.send(s.clone(), first);
                }
            }
            // Half-written files land here too; the write that completes them wakes us again.
            Err(e) => tracing::error!(error = %e, "datastore change not applied; the firewalls keep their last state"),
        }
    }
    tracing::info!(firewalls = ?workers.iter().map(Worker::firewall).collect::<Vec<_>>(), "stopping");
    Ok(())
}

/// [`run_until`] on the Kubernetes API: optionally waits to lead on the Lease first, and
/// returns an error as soon as leadership is lost (so the process exits and writes nothing
/// more while another replica leads).
fn run_kubernetes(config: DaemonConfig, k: &crate::config::KubeSource, metrics: Metrics, stop: &AtomicBool) -> Result<(), FwSyncError> {
    let _metrics_server = match &config.metrics_listen {
        Some(addr) => Some(metrics.serve(addr)?),
        None => None,
    };
    let opts = bulkhead_kube::KubeOptions { kubeconfig: k.kubeconfig.clone(), ..Default::default() };
    let mut source = crate::kube_source::KubeSource::connect(&opts, config.quarantine.is_some())?;
    let leadership = match &k.election {
        Some(e) => {
            let (client, rt) = source.client();
            match bulkhead_kube::lease::acquire(&rt, client, e, stop)? {
                Some(l) => Some(l),
                None => return Ok(()),
            }
        }
        None => None,
    };
    let snapshot = Arc::new(source.load()?);
    config.check_groups(&snapshot.groups)?;
    let backends: Vec<_> = config.firewalls.iter().map(crate::backend::for_firewall).collect::<Result<_, _>>()?;
    let statuses = Arc::new(crate::quarantine::StatusBook::with_kube(source.client()));
    let workers: Vec<Worker> = backends.into_iter().map(|b| Worker::start(config.clone(), b, metrics.clone(), snapshot.clone(), statuses.clone())).collect();
    tracing::info!(groups = snapshot.groups.len(), firewalls = workers.len(), "fw-sync running on the Kubernetes API");
    while !stopped(stop) {
        if leadership.as_ref().is_some_and(|l| l.is_lost()) {
            return Err(bulkhead_kube::KubeError { server: String::new(), detail: "leadership lost: stopping so the new leader is the only writer".into() }.into());
        }
        if !source.wait(100) {
            continue;
        }
        let first = Instant::now();
        std::thread::sleep(Duration::from_millis(QUIET as u64));
        match source.load().and_then(|s| config.check_groups(&s.groups).map(|()| s)) {
            Ok(s) => {
                let s = Arc::new(s);
                for w in &workers {
                    w.send(s.clone(), first);
                }
            }
            Err(e) => tracing::error!(error = %e, "change not applied; the firewalls keep their last state"),
        }
    }
    Ok(())
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
