//! Prometheus metrics of the daemon, served as text at `GET /metrics` on `metricsListen`.
//!
//! Per firewall: the latency from a datastore change to the firewall updated (histogram),
//! API calls, failed syncs, drift repairs, owned objects and addresses. Written by the sync
//! loop, read by the HTTP server's threads; one mutex, taken once per sync and per scrape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulkhead_httpd::{Handler, Reply, Request, Response, Server};

use crate::engine::{FirewallReport, Mode};
use crate::error::FwSyncError;

/// Upper bounds (seconds) of the latency buckets: from a sub-millisecond ipset swap to a
/// multi-second PAN-OS commit.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

#[derive(Clone, Debug, Default)]
struct FirewallMetrics {
    latency: Histogram,
    calls: u64,
    errors: u64,
    drift_repairs: u64,
    owned_objects: u64,
    /// Owned addresses by family: [IPv4, IPv6].
    owned_addresses: [u64; 2],
    syncs: BTreeMap<&'static str, u64>,
}

/// The daemon's metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    inner: Arc<Mutex<BTreeMap<String, FirewallMetrics>>>,
}

impl Metrics {
    /// Records one sync of every firewall; `elapsed` runs from the datastore change (or the
    /// start of the reconcile) to this sync's end. Only changes that touched a firewall count
    /// in its latency histogram: an event that changes nothing there is not an update.
    /// `owned` gives (objects, IPv4 addresses, IPv6 addresses) owned on a firewall.
    pub fn record(&self, mode: Mode, reports: &[FirewallReport], elapsed: Duration, owned: impl Fn(&str) -> Option<(usize, usize, usize)>) {
        let mut all = self.inner.lock().expect("metrics lock");
        for r in reports {
            let m = all.entry(r.firewall.clone()).or_default();
            m.calls += r.calls;
            *m.syncs.entry(if mode == Mode::Event { "event" } else { "reconcile" }).or_default() += 1;
            if r.error.is_some() {
                m.errors += 1;
            } else if !r.diff.is_empty() {
                m.latency.observe(elapsed.as_secs_f64());
            }
            if r.drift {
                m.drift_repairs += 1;
            }
            if let Some((objects, v4, v6)) = owned(&r.firewall) {
                m.owned_objects = objects as u64;
                m.owned_addresses = [v4 as u64, v6 as u64];
            }
        }
    }

    /// API calls made to `firewall` so far.
    pub fn calls(&self, firewall: &str) -> u64 {
        self.inner.lock().expect("metrics lock").get(firewall).map_or(0, |m| m.calls)
    }

    /// Syncs of `firewall` that failed so far.
    pub fn errors(&self, firewall: &str) -> u64 {
        self.inner.lock().expect("metrics lock").get(firewall).map_or(0, |m| m.errors)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let all = self.inner.lock().expect("metrics lock").clone();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, body: &dyn Fn(&mut String)| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            body(&mut out);
        };
        family("fwsync_update_latency_seconds", "histogram", "Datastore change to firewall updated, per firewall.", &|o| {
            for (fw, m) in &all {
                for (le, c) in BUCKETS.iter().zip(m.latency.counts) {
                    let _ = writeln!(o, "fwsync_update_latency_seconds_bucket{{firewall=\"{fw}\",le=\"{le}\"}} {c}");
                }
                let _ = writeln!(o, "fwsync_update_latency_seconds_bucket{{firewall=\"{fw}\",le=\"+Inf\"}} {}", m.latency.count);
                let _ = writeln!(o, "fwsync_update_latency_seconds_sum{{firewall=\"{fw}\"}} {}", m.latency.sum);
                let _ = writeln!(o, "fwsync_update_latency_seconds_count{{firewall=\"{fw}\"}} {}", m.latency.count);
            }
        });
        let counter = |o: &mut String, name: &str, get: &dyn Fn(&FirewallMetrics) -> u64| {
            for (fw, m) in &all {
                let _ = writeln!(o, "{name}{{firewall=\"{fw}\"}} {}", get(m));
            }
        };
        family("fwsync_api_calls_total", "counter", "Requests or commands sent to the firewall.", &|o| counter(o, "fwsync_api_calls_total", &|m| m.calls));
        family("fwsync_sync_errors_total", "counter", "Syncs that left the firewall out of step (retried).", &|o| counter(o, "fwsync_sync_errors_total", &|m| m.errors));
        family("fwsync_drift_repairs_total", "counter", "Reconciles that found and repaired hand-made changes.", &|o| counter(o, "fwsync_drift_repairs_total", &|m| m.drift_repairs));
        family("fwsync_owned_objects", "gauge", "Objects (sets, groups, tags) fw-sync owns on the firewall.", &|o| counter(o, "fwsync_owned_objects", &|m| m.owned_objects));
        family("fwsync_owned_addresses", "gauge", "Addresses in the objects fw-sync owns, by family (ipv4, ipv6).", &|o| {
            for (fw, m) in &all {
                for (fam, n) in ["ipv4", "ipv6"].iter().zip(m.owned_addresses) {
                    let _ = writeln!(o, "fwsync_owned_addresses{{firewall=\"{fw}\",family=\"{fam}\"}} {n}");
                }
            }
        });
        family("fwsync_syncs_total", "counter", "Syncs by trigger (event, reconcile).", &|o| {
            for (fw, m) in &all {
                for (mode, n) in &m.syncs {
                    let _ = writeln!(o, "fwsync_syncs_total{{firewall=\"{fw}\",trigger=\"{mode}\"}} {n}");
                }
            }
        });
        out
    }

    /// Serves `GET /metrics` on `addr` until the returned server is dropped.
    pub fn serve(&self, addr: &str) -> Result<Server, FwSyncError> {
        let metrics = self.clone();
        let handler: Handler = Arc::new(move |r: &Request| {
            Reply::Respond(match (r.method.as_str(), r.path.as_str()) {
                ("GET", "/metrics") => Response::new(200, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
                ("GET", _) => Response::text(404, "try /metrics\n"),
                _ => Response::text(405, "GET only\n"),
            })
        });
        Server::start(addr, None, handler).map_err(|e| FwSyncError::Metrics { addr: addr.to_string(), detail: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{Action, Diff, ObjectChange};
    use crate::group::{ObjectRef, TargetKind};

    fn report(fw: &str, changed: bool, error: bool) -> FirewallReport {
        let mut diff = Diff::default();
        if changed {
            let object = ObjectRef { kind: TargetKind::Ipset, name: "web".into() };
            let add = ["10.0.0.1".parse().expect("ip")].into();
            diff.changes.push(ObjectChange { object, action: Action::Update, add, remove: Default::default(), desired: Default::default() });
        }
        let error = error.then(|| FwSyncError::Backend { firewall: fw.into(), object: "web".into(), detail: "boom".into() });
        FirewallReport { firewall: fw.into(), diff, drift: false, calls: 2, error }
    }

    #[test]
    fn renders_histogram_and_counters() {
        let m = Metrics::default();
        m.record(Mode::Event, &[report("edge", true, false), report("pa", false, true)], Duration::from_millis(3), |fw| (fw == "edge").then_some((1, 1, 2)));
        m.record(Mode::Reconcile, &[report("edge", false, false)], Duration::from_millis(40), |_| None);
        let text = m.render();
        for line in [
            "fwsync_update_latency_seconds_bucket{firewall=\"edge\",le=\"0.0025\"} 0",
            "fwsync_update_latency_seconds_bucket{firewall=\"edge\",le=\"0.005\"} 1",
            "fwsync_update_latency_seconds_count{firewall=\"edge\"} 1",
            "fwsync_update_latency_seconds_count{firewall=\"pa\"} 0",
            "fwsync_api_calls_total{firewall=\"edge\"} 4",
            "fwsync_sync_errors_total{firewall=\"pa\"} 1",
            "fwsync_owned_objects{firewall=\"edge\"} 1",
            "fwsync_owned_addresses{firewall=\"edge\",family=\"ipv4\"} 1",
            "fwsync_owned_addresses{firewall=\"edge\",family=\"ipv6\"} 2",
            "fwsync_syncs_total{firewall=\"edge\",trigger=\"reconcile\"} 1",
            "# TYPE fwsync_update_latency_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn serves_metrics_over_http() {
        let m = Metrics::default();
        m.record(Mode::Event, &[report("edge", true, false)], Duration::from_millis(1), |_| None);
        let server = m.serve("127.0.0.1:0").expect("bind");
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(server.addr()).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.1 200") && out.contains("fwsync_api_calls_total{firewall=\"edge\"} 2"), "{out}");
    }
}
