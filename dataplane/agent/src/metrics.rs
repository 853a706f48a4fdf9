//! Prometheus metrics of the agent at `GET /metrics`, in the Prometheus text format through
//! the `prometheus-client` crate (not hand-written text).
//!
//! Every scrape reads the instance's pinned maps (as `bulkhead status` does) and the
//! detector's counters, so a scrape never waits for the agent thread, and the figures are
//! the kernel's own: packets by verdict and reason, drops by reason and direction, per-policy
//! hits and staged would-allow / would-deny, map occupancy against capacity, lost events,
//! detector findings and actions by kind and what the alert gate held back. The one metric the
//! agent thread feeds is the policy-programming latency (datastore read + compile + write,
//! per sync), a histogram shared with it. Label values are bounded sets (reasons, kinds,
//! policy names, map names): never addresses or pods.
//!
//! The endpoint binds to `127.0.0.1:9964` unless told otherwise (`--metrics-listen`), and only
//! answers GET: `/metrics`, and the instance's service map (`/`, `/api/servicemap`,
//! `/servicemap.svg`; see [`crate::servicemap`]). It is read-only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_common::capacity;
use bulkhead_httpd::{Handler, Reply, Request, Response, Server};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::detect::Shared;
use crate::error::AgentError;

/// Where the endpoint listens unless configured: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9964";

/// Upper bounds (seconds) of the policy-programming buckets: a small change is written in
/// milliseconds, 10k policies take a quarter second.
const SYNC_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// What the agent thread records for the endpoint.
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// From the start of a sync's datastore read to the policy written into the kernel.
    pub programming_seconds: Histogram,
    /// Syncs that failed (the previous policy stays enforced).
    pub failed: Counter,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        SyncMetrics { programming_seconds: Histogram::new(SYNC_BUCKETS), failed: Counter::default() }
    }
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A datapath counter's verdict and reason (`allow_policy` -> allow, policy;
/// `drop_spoofed_source_fail_closed` -> drop, spoofed_source), or `None` for counters that
/// count something else than a packet's verdict.
fn verdict_of(name: &str) -> Option<(&'static str, &str)> {
    if let Some(r) = name.strip_prefix("allow_") {
        return Some(("allow", r));
    }
    if let Some(r) = name.strip_prefix("pass_") {
        return Some(("pass", r));
    }
    // Decisions (policy, the detector's in TC), as opposed to fail-closed error paths.
    if let Some(r) = name.strip_prefix("deny_") {
        return Some(("drop", r));
    }
    if name.starts_with("drop_") && name.ends_with("_fail_closed") {
        return Some(("drop", &name["drop_".len()..name.len() - "_fail_closed".len()]));
    }
    None
}

/// The registry of one scrape: the pinned maps under `pin_dir` read now, the detector's
/// counters, the sync histogram.
pub fn collect(pin_dir: &Path, state_dir: &Path, detector: Option<&Shared>, sync: &SyncMetrics) -> Result<Registry, AgentError> {
    let st = crate::status::read(pin_dir)?;
    let mut r = Registry::with_prefix("bulkhead");

    let packets = Family::<Labels, Counter>::default();
    let other = Family::<Labels, Counter>::default();
    for (name, v) in &st.counters {
        match verdict_of(name) {
            Some((verdict, reason)) => {
                packets.get_or_create(&labels(&[("verdict", verdict), ("reason", reason)])).inc_by(*v);
            }
            None => {
                other.get_or_create(&labels(&[("event", name)])).inc_by(*v);
            }
        }
    }
    r.register("datapath_packets", "Packets judged by the TC programs, by verdict and reason (every fail-closed drop has its own reason)", packets);
    r.register("datapath_events", "Other datapath counters: flow and detector events sent and lost, conntrack inserts that failed, staged evaluations, uplink and XDP passes", other);

    let drops = Family::<Labels, Counter>::default();
    for d in &st.drops {
        let reason = verdict_of(&d.reason).map_or(d.reason.as_str(), |(_, r)| r);
        drops.get_or_create(&labels(&[("reason", reason), ("direction", "ingress")])).inc_by(d.ingress);
        drops.get_or_create(&labels(&[("reason", reason), ("direction", "egress")])).inc_by(d.egress);
    }
    r.register("datapath_drops", "Dropped packets by reason and direction (relative to the pod)", drops);

    let entries = Family::<Labels, Gauge>::default();
    let cap = Family::<Labels, Gauge>::default();
    for (map, n, c) in [
        ("endpoints", st.endpoints, capacity::ENDPOINTS),
        ("ipcache", st.ipcache_entries, capacity::IPCACHE),
        ("policy_peers", st.policy_peers, capacity::POLICY),
        ("policy_ports", st.policy_ports, capacity::POLICY),
        ("policy_ranges", st.policy_ranges, capacity::POLICY),
        ("conntrack", st.conntrack_entries, capacity::CONNTRACK),
        ("conntrack6", st.conntrack6_entries, capacity::CONNTRACK),
    ] {
        entries.get_or_create(&labels(&[("map", map)])).set(n as i64);
        cap.get_or_create(&labels(&[("map", map)])).set(i64::from(c));
    }
    r.register("map_entries", "Entries in each map (the enforced policy generation)", entries);
    r.register("map_capacity", "Capacity of each map", cap);
    let rev = Gauge::<i64>::default();
    rev.set(i64::from(st.policy_rev));
    r.register("policy_revision", "The enforced policy revision", rev);

    // Per-policy counters, named by the table the last sync wrote (bounded by the policies).
    let policy_hits = Family::<Labels, Counter>::default();
    if let Some(table) = std::fs::read_to_string(state_dir.join("policies.json")).ok().and_then(|t| serde_json::from_str::<crate::PolicyTable>(&t).ok()) {
        for row in crate::status::policy_stats(pin_dir, &table)? {
            // An enforced policy decides; a staged one says what it would have decided.
            let counts = if row.staged { [("would_allow", row.would_allow), ("would_deny", row.would_deny)] } else { [("allow", row.allowed), ("deny", row.denied)] };
            for (verdict, v) in counts {
                policy_hits.get_or_create(&labels(&[("policy", &row.policy), ("tier", &row.tier), ("verdict", verdict)])).inc_by(v);
            }
        }
    }
    r.register("policy_flows", "New flows each policy decided (staged policies: would_allow / would_deny)", policy_hits);

    r.register("policy_programming_seconds", "From a sync's datastore read to the policy written into the kernel", sync.programming_seconds.clone());
    r.register("policy_sync_failures", "Syncs that failed (the previous policy stays enforced)", sync.failed.clone());

    if let Some(d) = detector {
        let (findings, actions) = d.finding_counts();
        let f = Family::<Labels, Counter>::default();
        for (kind, n) in findings {
            f.get_or_create(&labels(&[("kind", kind)])).inc_by(n);
        }
        r.register("detector_findings", "Detector events reported, by kind", f);
        let a = Family::<Labels, Counter>::default();
        for ((kind, action), n) in actions {
            a.get_or_create(&labels(&[("kind", kind), ("action", &action)])).inc_by(n);
        }
        r.register("detector_actions", "Actions the detector took, by finding kind and action", a);
        let s = d.alert_stats();
        let g = Family::<Labels, Counter>::default();
        for (outcome, n) in [("reported", s.reported), ("deduplicated", s.deduplicated), ("rate_limited", s.rate_limited), ("summaries", s.summaries)] {
            g.get_or_create(&labels(&[("outcome", outcome)])).inc_by(n);
        }
        let lost = Counter::<u64>::default();
        lost.inc_by(d.flow_records_lost());
        r.register("flow_records_lost", "Flow records read from the ring that the flow log could not take (agent behind); records lost in the ring itself are the datapath counter flow_events_dropped", lost);
        r.register("detector_alerts", "Alerts through the alert gate: reported, folded into a summary, over a workload's rate, summaries sent", g);
    }
    Ok(r)
}

/// The endpoint: `GET /metrics` on `addr`, until the returned server is dropped.
pub fn serve(addr: &str, pin_dir: PathBuf, state_dir: PathBuf, detector: Option<Arc<Shared>>, sync: SyncMetrics) -> Result<Server, AgentError> {
    let handler: Handler = Arc::new(move |req: &Request| {
        Reply::Respond(match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/metrics") => match collect(&pin_dir, &state_dir, detector.as_deref(), &sync) {
                Ok(reg) => {
                    let mut body = String::new();
                    match prometheus_text::encode(&mut body, &reg) {
                        Ok(()) => Response::new(200, prometheus_text::CONTENT_TYPE, body),
                        Err(e) => Response::text(500, format!("encoding the metrics: {e}\n")),
                    }
                }
                Err(e) => Response::text(503, format!("reading the pinned maps: {e}\n")),
            },
            // The service map of the same instance: the page at `/`, its model, its SVG.
            ("GET", path) => crate::servicemap::respond(path, &state_dir)
                .unwrap_or_else(|| Response::text(404, format!("try /metrics, / (the service map) or {}\n", crate::servicemap::API_PATH))),
            _ => Response::text(405, "read-only: GET /metrics, / and /api/servicemap\n"),
        })
    });
    Server::start(addr, None, handler).map_err(|e| AgentError::Invalid(format!("metrics endpoint on {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_names_map_to_a_verdict_and_reason() {
        assert_eq!(verdict_of("allow_policy"), Some(("allow", "policy")));
        assert_eq!(verdict_of("pass_icmpv6_nd"), Some(("pass", "icmpv6_nd")));
        assert_eq!(verdict_of("deny_policy"), Some(("drop", "policy")));
        assert_eq!(verdict_of("drop_spoofed_source_fail_closed"), Some(("drop", "spoofed_source")));
        assert_eq!(verdict_of("deny_detector_unlearned_flow"), Some(("drop", "detector_unlearned_flow")));
        assert_eq!(verdict_of("flow_events_dropped"), None);
        assert_eq!(verdict_of("xdp_pass_no_endpoint_fail_open"), None);
        // Every counter is either a verdict or another event; every drop is a decision
        // (deny_) or fails closed.
        for n in bulkhead_common::counters::NAMES {
            if (n.starts_with("drop_") && n != "drop_events_rate_limited") || n.starts_with("deny_") {
                assert!(verdict_of(n).is_some(), "{n}");
            }
        }
    }
}
