//! The sync engine: desired state from the datastore, diffed against each firewall, applied
//! in one batch per firewall.
//!
//! Two paths: an *event* (the datastore changed) diffs against what fw-sync last applied,
//! so a pod event costs one apply call and no read; a *reconcile* reads the firewall's real
//! state first and repairs drift (objects edited or deleted by hand). After a restart the
//! first sync is a reconcile: the diff starts from the real state, so nothing is flushed and
//! traffic of unchanged members never stops.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::backend::Backend;
use crate::config::DaemonConfig;
use crate::desired::desired;
use crate::diff::Diff;
use crate::error::FwSyncError;
use crate::group::FirewallState;
use crate::source::Snapshot;

/// Why a sync runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The datastore changed: diff against the last applied state (read only if unknown).
    Event,
    /// Periodic or at start: read the real state, repair drift.
    Reconcile,
}

/// A firewall's name and the diff that would bring it in step (or why it could not be read).
pub type Plan = (String, Result<Diff, FwSyncError>);

/// What one sync did on one firewall.
#[derive(Debug)]
pub struct FirewallReport {
    pub firewall: String,
    pub diff: Diff,
    /// On a reconcile, whether the real state differed from what fw-sync had last applied.
    pub drift: bool,
    /// Calls made to the firewall by this sync.
    pub calls: u64,
    pub error: Option<FwSyncError>,
}

/// The engine over all configured firewalls.
pub struct Engine {
    config: DaemonConfig,
    backends: BTreeMap<String, Box<dyn Backend>>,
    /// Per firewall, the state after the last successful apply; absent when unknown (never
    /// read, or an apply failed part-way).
    known: BTreeMap<String, FirewallState>,
}

impl Engine {
    /// An engine driving `backends` (one per configured firewall).
    pub fn new(config: DaemonConfig, backends: Vec<Box<dyn Backend>>) -> Self {
        let backends = backends.into_iter().map(|b| (b.firewall().to_string(), b)).collect();
        Engine { config, backends, known: BTreeMap::new() }
    }

    /// The engine with the real backend of every configured firewall.
    pub fn from_config(config: DaemonConfig) -> Result<Self, FwSyncError> {
        let backends = config.firewalls.iter().map(crate::backend::for_firewall).collect::<Result<_, _>>()?;
        Ok(Self::new(config, backends))
    }

    /// The daemon config.
    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// Desired state per firewall, after checking the groups against the config.
    pub fn desired(&self, snapshot: &Snapshot) -> Result<BTreeMap<String, FirewallState>, FwSyncError> {
        self.config.check_groups(&snapshot.groups)?;
        let mut out = desired(&snapshot.model, &snapshot.groups, self.backends.keys().map(String::as_str));
        let quarantine = self.config.quarantine_targets();
        if !quarantine.is_empty() {
            let ips = crate::quarantine::members(&snapshot.model, &snapshot.quarantines);
            for t in quarantine.into_iter().filter(|t| self.backends.contains_key(&t.firewall)) {
                out.entry(t.firewall).or_default().insert(t.object, ips.clone());
            }
        }
        Ok(out)
    }

    /// Reads every firewall and returns the diff that would be applied, applying nothing.
    pub fn plan(&mut self, snapshot: &Snapshot) -> Result<Vec<Plan>, FwSyncError> {
        let desired = self.desired(snapshot)?;
        let mut out = Vec::new();
        for (name, backend) in &mut self.backends {
            let diff = backend.read_owned_state().map(|actual| Diff::compute(&desired[name], &actual));
            out.push((name.clone(), diff));
        }
        Ok(out)
    }

    /// Brings every firewall in step with `snapshot`. A bad snapshot (groups that do not fit
    /// the config) fails before anything is applied; a failing firewall does not stop the
    /// others and is reported in its [`FirewallReport`].
    pub fn sync(&mut self, snapshot: &Snapshot, mode: Mode) -> Result<Vec<FirewallReport>, FwSyncError> {
        let desired = self.desired(snapshot)?;
        let mut reports = Vec::new();
        for (name, backend) in &mut self.backends {
            let span = tracing::info_span!("reconcile", firewall = %name, mode = ?mode);
            let _enter = span.enter();
            let start = Instant::now();
            let calls_before = backend.calls();
            let want = &desired[name];
            let mut report = FirewallReport { firewall: name.clone(), diff: Diff::default(), drift: false, calls: 0, error: None };
            let actual = match (mode, self.known.get(name)) {
                (Mode::Event, Some(known)) => Ok(known.clone()),
                _ => backend.read_owned_state(),
            };
            match actual {
                Err(e) => {
                    tracing::error!(error = %e, "reading the firewall failed");
                    report.error = Some(e);
                }
                Ok(actual) => {
                    if mode == Mode::Reconcile
                        && let Some(known) = self.known.get(name)
                        && *known != actual
                    {
                        report.drift = true;
                        tracing::warn!(drift = %Diff::compute(known, &actual).to_string().trim_end(), "firewall state drifted from what fw-sync applied; repairing");
                    }
                    report.diff = Diff::compute(want, &actual);
                    if report.diff.is_empty() {
                        self.known.insert(name.clone(), actual);
                    } else {
                        match backend.apply(&report.diff) {
                            Ok(()) => {
                                self.known.insert(name.clone(), want.clone());
                                let (ipv4, ipv6) = report.diff.size_by_family();
                                tracing::info!(
                                    objects = report.diff.changes.len(),
                                    addresses = report.diff.size(),
                                    ipv4,
                                    ipv6,
                                    moved = report.diff.moves().len(),
                                    elapsed_us = start.elapsed().as_micros() as u64,
                                    "applied"
                                );
                            }
                            Err(e) => {
                                // Part of it may be applied: read the real state next time.
                                self.known.remove(name);
                                tracing::error!(error = %e, "applying the diff failed");
                                report.error = Some(e);
                            }
                        }
                    }
                }
            }
            report.calls = backend.calls() - calls_before;
            reports.push(report);
        }
        Ok(reports)
    }

    /// (objects, IPv4 addresses, IPv6 addresses) fw-sync owns on `firewall`, as last read or
    /// applied.
    pub fn owned(&self, firewall: &str) -> Option<(usize, usize, usize)> {
        self.known.get(firewall).map(|s| {
            let (v4, v6) = crate::group::count_by_family(s.values().flatten());
            (s.len(), v4, v6)
        })
    }

    /// Calls made to every firewall so far.
    pub fn total_calls(&self) -> u64 {
        self.backends.values().map(|b| b.calls()).sum()
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
