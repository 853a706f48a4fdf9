//! Alerts people can live with: a workload in monitor mode that opens a new flow every few
//! milliseconds must not become one alert per flow on the JSON lines, the webhook and the
//! memory ring. Every event passes this gate before it is recorded:
//!
//! - **De-duplication**: an alert without actions that repeats one already reported for the
//!   same workload, kind and subject (peer, destination or executable) within the window is
//!   counted, not reported; when the window closes, one summary of the same alert carries the
//!   count (`count`), so nothing is lost from view.
//! - **Rate limit**: beyond `per_workload` reported alerts of one workload within the rate
//!   window, further ones are counted; when that window closes one `alerts-rate-limited`
//!   event says how many.
//!
//! Events that record an action (killed, isolated, paused...) always pass: they are rare by
//! nature (the workload is stopped) and each one changed something. So do `exec` events,
//! which record a learned executable run (the trail of what a workload ran, not an alert).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::DetectorEvent;

/// The gate's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertLimits {
    /// Repeats of one alert within this window are folded into a count.
    pub dedup_window: Duration,
    /// At most this many alerts per workload are reported within `rate_window`.
    pub per_workload: u32,
    pub rate_window: Duration,
}

impl Default for AlertLimits {
    fn default() -> Self {
        AlertLimits { dedup_window: Duration::from_secs(60), per_workload: 20, rate_window: Duration::from_secs(10) }
    }
}

/// Environment: seconds of the de-duplication window (0 = no de-duplication).
pub const DEDUP_ENV: &str = "BULKHEAD_ALERT_DEDUP_SECONDS";
/// Environment: alerts reported per workload within the rate window (0 = none but actions).
pub const RATE_ENV: &str = "BULKHEAD_ALERT_RATE";
/// Environment: seconds of the rate window.
pub const RATE_WINDOW_ENV: &str = "BULKHEAD_ALERT_RATE_WINDOW_SECONDS";

impl AlertLimits {
    /// The defaults, changed by the environment variables above; an unparsable value is an
    /// error naming the variable and the value.
    pub fn from_env() -> Result<AlertLimits, String> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<AlertLimits, String> {
        let num = |k: &str| -> Result<Option<u64>, String> {
            get(k).map(|v| v.trim().parse::<u64>().map_err(|_| format!("{k}={v:?}: expected a whole number"))).transpose()
        };
        let mut l = AlertLimits::default();
        if let Some(s) = num(DEDUP_ENV)? {
            l.dedup_window = Duration::from_secs(s);
        }
        if let Some(n) = num(RATE_ENV)? {
            l.per_workload = u32::try_from(n).map_err(|_| format!("{RATE_ENV}={n}: too large"))?;
        }
        if let Some(s) = num(RATE_WINDOW_ENV)? {
            if s == 0 {
                return Err(format!("{RATE_WINDOW_ENV}=0: the window must be at least one second"));
            }
            l.rate_window = Duration::from_secs(s);
        }
        Ok(l)
    }
}

/// What the gate did, since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AlertStats {
    /// Events reported as they came.
    pub reported: u64,
    /// Repeats folded into a later summary.
    pub deduplicated: u64,
    /// Alerts over a workload's rate, counted in an `alerts-rate-limited` event.
    pub rate_limited: u64,
    /// Summary events (repeat counts and rate-limit notices) reported.
    pub summaries: u64,
}

/// Kind of the event that reports alerts held back by the rate limit.
pub const RATE_LIMITED_KIND: &str = "alerts-rate-limited";

/// (workload or cgroup, kind, subject).
type Key = (String, &'static str, String);

struct Repeat {
    /// When the window of this alert opened (its first report).
    since: Instant,
    /// Repeats since then.
    count: u64,
    /// The last repeat, reported with the count when the window closes.
    last: Option<DetectorEvent>,
}

struct Rate {
    since: Instant,
    reported: u32,
    /// Held back in this window.
    over: u64,
    /// The workload's last held-back alert (for the notice's workload, mode and cgroup).
    sample: Option<DetectorEvent>,
}

/// The gate; one per detector, behind [`super::Shared`].
#[derive(Default)]
pub struct AlertGate {
    limits: AlertLimits,
    repeats: HashMap<Key, Repeat>,
    rates: HashMap<String, Rate>,
    stats: AlertStats,
}

fn workload_key(e: &DetectorEvent) -> String {
    e.workload.clone().unwrap_or_else(|| format!("cgroup:{}", e.cgroup_id))
}

fn key(e: &DetectorEvent) -> Key {
    // The subject an operator tells alerts apart by: the port of a new-port finding, the
    // peer of other network findings, else the destination, else the executable (exec and
    // syscall findings).
    let subject = if e.kind == "new-port" { e.dst.clone() } else { None }
        .or_else(|| e.peer.clone())
        .or_else(|| e.dst.clone())
        .unwrap_or_else(|| e.path.clone());
    (workload_key(e), e.kind, subject)
}

/// Whether the gate lets `e` through untouched: it records an action, or it is no alert.
fn always_passes(e: &DetectorEvent) -> bool {
    !e.kernel_actions.is_empty() || !e.user_actions.is_empty() || e.kind == "exec"
}

impl AlertGate {
    pub fn new(limits: AlertLimits) -> AlertGate {
        AlertGate { limits, ..AlertGate::default() }
    }

    /// New limits; open windows keep their start.
    pub fn set_limits(&mut self, limits: AlertLimits) {
        self.limits = limits;
    }

    pub fn stats(&self) -> AlertStats {
        self.stats
    }

    /// Whether `e` is reported now (`Some`, possibly with summaries due first) or held back.
    /// Also returns the summaries whose windows closed by `now`.
    pub fn admit(&mut self, e: DetectorEvent, now: Instant) -> Vec<DetectorEvent> {
        let mut out = self.flush(now);
        if always_passes(&e) {
            self.stats.reported += 1;
            out.push(e);
            return out;
        }
        let k = key(&e);
        if let Some(r) = self.repeats.get_mut(&k) {
            r.count += 1;
            r.last = Some(e);
            self.stats.deduplicated += 1;
            return out;
        }
        let w = workload_key(&e);
        let rate = self.rates.entry(w).or_insert_with(|| Rate { since: now, reported: 0, over: 0, sample: None });
        if rate.reported >= self.limits.per_workload {
            rate.over += 1;
            rate.sample = Some(e);
            self.stats.rate_limited += 1;
            return out;
        }
        rate.reported += 1;
        self.repeats.insert(k, Repeat { since: now, count: 0, last: None });
        self.stats.reported += 1;
        out.push(e);
        out
    }

    /// Summaries of the windows closed by `now`: each folded alert once more with its count,
    /// and a rate-limit notice per workload that went over. Call it periodically so summaries
    /// come out when a workload falls silent too.
    pub fn flush(&mut self, now: Instant) -> Vec<DetectorEvent> {
        let mut out = Vec::new();
        let window = self.limits.dedup_window;
        let closed: Vec<Key> = self.repeats.iter().filter(|(_, r)| now.duration_since(r.since) >= window).map(|(k, _)| k.clone()).collect();
        for k in closed {
            let Some(r) = self.repeats.remove(&k) else { continue };
            if let Some(mut last) = r.last {
                last.count = Some(r.count);
                last.detail = Some(format!("{} more within {} s", r.count, window.as_secs()));
                out.push(last);
            }
        }
        let rate_window = self.limits.rate_window;
        let closed: Vec<String> = self.rates.iter().filter(|(_, r)| now.duration_since(r.since) >= rate_window).map(|(k, _)| k.clone()).collect();
        for w in closed {
            let Some(r) = self.rates.remove(&w) else { continue };
            if let Some(s) = r.sample.filter(|_| r.over > 0) {
                out.push(DetectorEvent {
                    kind: RATE_LIMITED_KIND,
                    ts_ns: s.ts_ns,
                    workload: s.workload,
                    cgroup_id: s.cgroup_id,
                    mode: s.mode,
                    count: Some(r.over),
                    detail: Some(format!("{} alerts over {} per {} s not reported one by one", r.over, self.limits.per_workload, rate_window.as_secs())),
                    ..DetectorEvent::default()
                });
            }
        }
        self.stats.summaries += out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(workload: &str, kind: &'static str, peer: &str) -> DetectorEvent {
        DetectorEvent { kind, workload: Some(workload.into()), peer: Some(peer.into()), mode: "monitor", ..DetectorEvent::default() }
    }

    fn limits() -> AlertLimits {
        AlertLimits { dedup_window: Duration::from_secs(60), per_workload: 3, rate_window: Duration::from_secs(10) }
    }

    #[test]
    fn repeats_fold_into_one_summary_with_their_count_when_the_window_closes() {
        let mut g = AlertGate::new(limits());
        let t0 = Instant::now();
        assert_eq!(g.admit(alert("ns/w", "new-peer", "1.2.3.4"), t0).len(), 1, "the first is reported at once");
        for i in 1..=500u64 {
            assert!(g.admit(alert("ns/w", "new-peer", "1.2.3.4"), t0 + Duration::from_millis(i)).is_empty(), "repeat {i} reported");
        }
        // Another peer, kind or workload is another alert.
        assert_eq!(g.admit(alert("ns/w", "new-peer", "5.6.7.8"), t0).len(), 1);
        assert_eq!(g.admit(alert("ns/w", "new-port", "1.2.3.4"), t0).len(), 1);
        assert_eq!(g.admit(alert("ns/v", "new-peer", "1.2.3.4"), t0).len(), 1);
        assert!(g.flush(t0 + Duration::from_secs(59)).is_empty(), "window still open");
        let s = g.flush(t0 + Duration::from_secs(60));
        assert_eq!(s.len(), 1, "one summary: {s:?}");
        assert_eq!((s[0].kind, s[0].peer.as_deref(), s[0].count), ("new-peer", Some("1.2.3.4"), Some(500)));
        assert_eq!(g.stats(), AlertStats { reported: 4, deduplicated: 500, rate_limited: 0, summaries: 1 });
        // After the window the alert is reported afresh.
        assert_eq!(g.admit(alert("ns/w", "new-peer", "1.2.3.4"), t0 + Duration::from_secs(61)).len(), 1);
        assert!(g.flush(t0 + Duration::from_secs(200)).is_empty(), "no repeats: no summary");
    }

    #[test]
    fn a_workload_over_its_rate_is_counted_and_told_once_per_window() {
        let mut g = AlertGate::new(limits());
        let t0 = Instant::now();
        let mut reported = 0;
        for i in 0..10 {
            reported += g.admit(alert("ns/w", "new-peer", &format!("10.0.0.{i}")), t0).len();
        }
        assert_eq!(reported, 3, "at most per_workload within the window");
        assert_eq!(g.admit(alert("ns/other", "new-peer", "10.0.0.1"), t0).len(), 1, "other workloads keep their own budget");
        let s = g.flush(t0 + Duration::from_secs(10));
        let notice: Vec<_> = s.iter().filter(|e| e.kind == RATE_LIMITED_KIND).collect();
        assert_eq!(notice.len(), 1, "{s:?}");
        assert_eq!((notice[0].workload.as_deref(), notice[0].count), (Some("ns/w"), Some(7)));
        assert_eq!(g.stats().rate_limited, 7);
        assert_eq!(g.admit(alert("ns/w", "new-peer", "10.0.0.99"), t0 + Duration::from_secs(11)).len(), 1, "a new window, a new budget");
    }

    #[test]
    fn limits_come_from_the_environment_and_bad_values_name_the_variable() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(AlertLimits::from_vars(vars(&[])), Ok(AlertLimits::default()));
        let l = AlertLimits::from_vars(vars(&[(DEDUP_ENV, "5"), (RATE_ENV, "100")])).expect("valid");
        assert_eq!((l.dedup_window, l.per_workload), (Duration::from_secs(5), 100));
        let e = AlertLimits::from_vars(vars(&[(RATE_ENV, "lots")])).expect_err("not a number");
        assert!(e.contains(RATE_ENV) && e.contains("lots"), "{e}");
        let e = AlertLimits::from_vars(vars(&[(RATE_WINDOW_ENV, "0")])).expect_err("zero window");
        assert!(e.contains(RATE_WINDOW_ENV), "{e}");
    }

    #[test]
    fn events_with_actions_and_exec_trails_always_pass() {
        let mut g = AlertGate::new(AlertLimits { per_workload: 0, ..limits() });
        let t0 = Instant::now();
        for _ in 0..5 {
            let e = DetectorEvent { user_actions: vec!["isolated".into()], ..alert("ns/w", "new-peer", "1.2.3.4") };
            assert_eq!(g.admit(e, t0).len(), 1);
        }
        assert!(g.admit(alert("ns/w", "new-peer", "1.2.3.4"), t0).is_empty(), "a budget of 0 holds back plain alerts");
        assert_eq!(g.stats().reported, 5);
        // Runs of learned executables are a trail, not alerts: every one is kept.
        for _ in 0..5 {
            let e = DetectorEvent { kind: "exec", workload: Some("ns/w".into()), path: "/bin/date".into(), ..DetectorEvent::default() };
            assert_eq!(g.admit(e, t0).len(), 1, "exec events are never folded or limited");
        }
    }
}
