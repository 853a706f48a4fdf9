//! The detector's sampling on the agent thread: once a second the egress volume (the kernel's
//! per-endpoint byte counter, or conntrack) and the kernel's syscall counts go into learning
//! profiles or are judged against them. Flow events are judged on their own thread
//! ([`super::flowwatch`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use bulkhead_common::{CtKeyV2, direction};

use super::{Detector, DetectorEvent, Mode, WorkloadState};
use bulkhead_loader::Dataplane;

/// Per-workload network state kept by the agent thread.
#[derive(Debug, Default)]
pub(crate) struct NetState {
    /// Byte counts of the workload's outbound flows at the last sample (conntrack; only for
    /// interfaces past the kernel's per-endpoint counters).
    prev_bytes: HashMap<CtKeyV2, u64>,
    /// The kernel's egress byte counter of the workload's interface at the last sample.
    prev_total: Option<u64>,
    /// Last egress-volume alert (one a minute at most).
    last_volume_alert: Option<Instant>,
}

/// How often conntrack and the syscall counts are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Egress above this many times the learned peak (and above [`VOLUME_FLOOR`]) is alerted.
const VOLUME_FACTOR: u64 = 10;
/// Below this rate (bytes/s) egress is never alerted: too little to matter.
const VOLUME_FLOOR: u64 = 1 << 20;

impl Detector {
    /// Pod addresses and their peer names (profile names), from the datastore's last sync.
    pub(crate) fn set_peers(&mut self, peers: HashMap<IpAddr, String>) {
        *self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(peers);
    }

    /// Once a second: egress volume (learn: the peak; monitor/protect: alert far above it)
    /// and syscall counts into learning profiles; dirty profiles are written.
    pub fn tick(&mut self, dp: &mut Dataplane) {
        if self.last_tick.elapsed() < SAMPLE_EVERY {
            return;
        }
        let elapsed = self.last_tick.elapsed().as_secs_f64();
        self.last_tick = Instant::now();
        self.sync_perimeter(dp);
        let span = tracing::debug_span!("detector-tick");
        let _g = span.enter();
        let workloads: Vec<WorkloadState> = self.shared.state().workloads.values().cloned().collect();
        if workloads.iter().any(|w| w.ifindex != 0) {
            self.sample_volume(dp, &workloads, elapsed);
        }
        if workloads.iter().any(|w| w.spec.mode == Mode::Learn && w.spec.syscalls) {
            self.sample_syscalls(dp, &workloads);
        }
        self.persist();
    }

    fn sample_volume(&mut self, dp: &mut Dataplane, workloads: &[WorkloadState], elapsed: f64) {
        // The rate comes from TC's per-endpoint byte counter: one read per workload. Only a
        // learning workload (its largest single flow) or an interface past the counters needs
        // the flows themselves, i.e. a walk of conntrack (its memory mapping: no syscall).
        let counted = |w: &WorkloadState| bulkhead_common::ifindex_is_direct(w.ifindex);
        let walk = workloads.iter().any(|w| w.ifindex != 0 && (w.spec.mode == Mode::Learn || !counted(w)));
        // Outbound flows per interface: key -> bytes (both directions, as conntrack counts).
        let mut per_if: HashMap<u32, Vec<(CtKeyV2, u64)>> = HashMap::new();
        if walk {
            for e in dp.maps.conntrack.entries().into_iter().filter(|e| e.value.origin_direction == direction::EGRESS) {
                per_if.entry(e.key.ifindex).or_default().push((e.key, e.value.bytes_orig + e.value.bytes_reply));
            }
        }
        for w in workloads.iter().filter(|w| w.ifindex != 0) {
            let flows = per_if.remove(&w.ifindex).unwrap_or_default();
            let state = self.net.entry(w.cgroup_id).or_default();
            let max_flow = flows.iter().map(|(_, b)| *b).max().unwrap_or(0);
            let delta = if counted(w) {
                let total = match dp.maps.egress_bytes.get(&w.ifindex, 0) {
                    Ok(v) => v.iter().sum::<u64>(),
                    Err(e) => {
                        tracing::warn!(workload = %w.spec.name, error = %e, "egress byte counter unreadable; volume not judged this second");
                        continue;
                    }
                };
                // The first sample is the baseline: bytes from before monitoring are no rate.
                let d = total.saturating_sub(state.prev_total.unwrap_or(total));
                state.prev_total = Some(total);
                d
            } else {
                let mut delta = 0u64;
                let mut next = HashMap::with_capacity(flows.len());
                for (k, b) in flows {
                    delta += b.saturating_sub(state.prev_bytes.get(&k).copied().unwrap_or(0));
                    next.insert(k, b);
                }
                state.prev_bytes = next;
                delta
            };
            let rate = (delta as f64 / elapsed.max(0.001)) as u64;
            let mut g = self.shared.state();
            let p = g.profile_mut(&w);
            if w.spec.mode == Mode::Learn {
                let net = &mut p.network;
                if max_flow > net.max_flow_bytes || rate > net.max_egress_bytes_per_second {
                    net.max_flow_bytes = net.max_flow_bytes.max(max_flow);
                    net.max_egress_bytes_per_second = net.max_egress_bytes_per_second.max(rate);
                    g.dirty.insert(w.profile_name().to_string());
                }
                continue;
            }
            let limit = p.network.max_egress_bytes_per_second.saturating_mul(VOLUME_FACTOR).max(VOLUME_FLOOR);
            drop(g);
            if rate > limit && state.last_volume_alert.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                state.last_volume_alert = Some(Instant::now());
                let rec = DetectorEvent {
                    kind: "egress-volume",
                    ts_ns: bulkhead_loader::clock::monotonic_ns(),
                    workload: Some(w.spec.name.clone()),
                    cgroup_id: w.cgroup_id,
                    mode: if w.spec.mode == Mode::Protect { "protect" } else { "monitor" },
                    detail: Some(format!("{rate} bytes/s outbound; learned peak {} bytes/s", limit / VOLUME_FACTOR)),
                    ..Default::default()
                };
                tracing::warn!(workload = %w.spec.name, rate, limit, "detector: egress volume far above the profile");
                self.shared.record(&self.events_file, rec);
            }
        }
    }

    fn sample_syscalls(&mut self, dp: &mut Dataplane, workloads: &[WorkloadState]) {
        let mut per_cg: HashMap<u64, BTreeMap<u32, u64>> = HashMap::new();
        for k in dp.maps.det.syscalls.keys() {
            let Ok(k) = k else { continue };
            if let Ok(v) = dp.maps.det.syscalls.get(&k, 0) {
                *per_cg.entry(k.cgroup_id).or_default().entry(k.nr).or_default() += v.iter().sum::<u64>();
            }
        }
        // Sum over the replicas of each learning profile; the profile keeps the highest sum.
        let mut per_profile: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
        for w in workloads.iter().filter(|w| w.spec.mode == Mode::Learn) {
            let sums = per_profile.entry(w.profile_name().to_string()).or_default();
            for (nr, c) in per_cg.get(&w.cgroup_id).into_iter().flatten() {
                *sums.entry(*nr).or_default() += c;
            }
        }
        let mut g = self.shared.state();
        for (name, sums) in per_profile {
            let Some(p) = g.profiles.get_mut(&name) else { continue };
            let mut changed = false;
            for (nr, c) in sums {
                let e = p.syscalls.entry(nr).or_default();
                if c > *e {
                    *e = c;
                    changed = true;
                }
            }
            if changed {
                g.dirty.insert(name);
            }
        }
    }
}
