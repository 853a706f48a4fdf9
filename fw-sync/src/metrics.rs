//! Prometheus metrics of the daemon, served as text at `GET /metrics` on `metricsListen`,
//! through the `prometheus-client` crate (as the agent's).
//!
//! Per firewall: the latency from a datastore change to the firewall updated (histogram),
//! API calls, failed syncs, drift repairs, owned objects and addresses. Written by the sync
//! loop, read by the HTTP server's threads (the crate's metrics are atomics behind locks of
//! their own).

use std::sync::Arc;
use std::time::Duration;

use bulkhead_httpd::{Handler, Reply, Request, Response, Server};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::{FirewallReport, Mode};
use crate::error::FwSyncError;

/// Upper bounds (seconds) of the latency buckets: from a sub-millisecond ipset swap to a
/// multi-second PAN-OS commit.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(BUCKETS)
    }
}

/// The daemon's metrics (cheap to clone: every clone shares them).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    latency: Family<Labels, Histogram, LatencyBuckets>,
    calls: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    drift_repairs: Family<Labels, Counter>,
    owned_objects: Family<Labels, Gauge>,
    owned_addresses: Family<Labels, Gauge>,
    syncs: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            latency: Family::new_with_constructor(LatencyBuckets),
            calls: Family::default(),
            errors: Family::default(),
            drift_repairs: Family::default(),
            owned_objects: Family::default(),
            owned_addresses: Family::default(),
            syncs: Family::default(),
        };
        let mut r = Registry::default();
        r.register("fwsync_update_latency_seconds", "Datastore change to firewall updated, per firewall", m.latency.clone());
        r.register("fwsync_api_calls", "Requests or commands sent to the firewall", m.calls.clone());
        r.register("fwsync_sync_errors", "Syncs that left the firewall out of step (retried)", m.errors.clone());
        r.register("fwsync_drift_repairs", "Reconciles that found and repaired hand-made changes", m.drift_repairs.clone());
        r.register("fwsync_owned_objects", "Objects (sets, groups, tags) fw-sync owns on the firewall", m.owned_objects.clone());
        r.register("fwsync_owned_addresses", "Addresses in the objects fw-sync owns, by family (ipv4, ipv6)", m.owned_addresses.clone());
        r.register("fwsync_syncs", "Syncs by trigger (event, reconcile)", m.syncs.clone());
        Metrics { registry: Arc::new(r), ..m }
    }
}

fn fw(name: &str) -> Labels {
    vec![("firewall", name.to_string())]
}

impl Metrics {
    /// Records one sync of every firewall; `elapsed` runs from the datastore change (or the
    /// start of the reconcile) to this sync's end. Only changes that touched a firewall count
    /// in its latency histogram: an event that changes nothing there is not an update.
    /// `owned` gives (objects, IPv4 addresses, IPv6 addresses) owned on a firewall.
    pub fn record(&self, mode: Mode, reports: &[FirewallReport], elapsed: Duration, owned: impl Fn(&str) -> Option<(usize, usize, usize)>) {
        for r in reports {
            let l = fw(&r.firewall);
            // Every firewall's series exist from its first sync, at 0 until something happens.
            let latency = self.latency.get_or_create_owned(&l);
            self.calls.get_or_create(&l).inc_by(r.calls);
            let errors = self.errors.get_or_create_owned(&l);
            let drift = self.drift_repairs.get_or_create_owned(&l);
            let trigger = if mode == Mode::Event { "event" } else { "reconcile" };
            self.syncs.get_or_create(&vec![("firewall", r.firewall.clone()), ("trigger", trigger.to_string())]).inc();
            if r.error.is_some() {
                errors.inc();
            } else if !r.diff.is_empty() {
                latency.observe(elapsed.as_secs_f64());
            }
            if r.drift {
                drift.inc();
            }
            if let Some((objects, v4, v6)) = owned(&r.firewall) {
                self.owned_objects.get_or_create(&l).set(objects as i64);
                for (family, n) in [("ipv4", v4), ("ipv6", v6)] {
                    self.owned_addresses.get_or_create(&vec![("firewall", r.firewall.clone()), ("family", family.to_string())]).set(n as i64);
                }
            }
        }
    }

    /// API calls made to `firewall` so far.
    pub fn calls(&self, firewall: &str) -> u64 {
        self.calls.get_or_create(&fw(firewall)).get()
    }

    /// Syncs of `firewall` that failed so far.
    pub fn errors(&self, firewall: &str) -> u64 {
        self.errors.get_or_create(&fw(firewall)).get()
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Serves `GET /metrics` on `addr` until the returned server is dropped.
    pub fn serve(&self, addr: &str) -> Result<Server, FwSyncError> {
        let metrics = self.clone();
        let handler: Handler = Arc::new(move |r: &Request| {
            Reply::Respond(match (r.method.as_str(), r.path.as_str()) {
                ("GET", "/metrics") => Response::new(200, prometheus_text::CONTENT_TYPE, metrics.render()),
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
