//! The detector's network side on the agent thread: flow events (read as soon as the ring
//! wakes the agent) are learned into the profile or judged against it; protect mode acts
//! (isolation entry first: that is what stops traffic), and every finding is an alert.
//! Once a second the agent also samples conntrack (egress volume) and the kernel's syscall
//! counts into learning profiles.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use bulkhead_common::{CtKeyV2, FlowEventV3, direction, flow_kind};

use super::{
    Detector, DetectorEvent, Mode, NetActions, WorkloadState,
    take_actions,
    isolate_entry,
    network::{self, Finding, ScanWindow},
    profile::{Peer, Protocol},
};
use crate::loader::Dataplane;

/// Per-workload network state kept by the agent thread.
#[derive(Debug, Default)]
pub(crate) struct NetState {
    scan: ScanWindow,
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
    pub(crate) fn set_peers(&mut self, peers: HashMap<Ipv4Addr, String>) {
        self.peers = peers;
    }

    /// Learns or judges one flow event (outbound new flows of monitored workloads).
    pub fn on_flow(&mut self, dp: &mut Dataplane, ev: &FlowEventV3) {
        if !matches!(ev.kind, flow_kind::NEW_ALLOWED | flow_kind::DENIED) || ev.ifindex == 0 {
            return;
        }
        let inbound = ev.direction != direction::EGRESS;
        // A denied inbound flow is stopped and counted by policy already: no finding of its own.
        if inbound && ev.kind != flow_kind::NEW_ALLOWED {
            return;
        }
        let read_at = crate::clock::monotonic_ns();
        let Some(protocol) = Protocol::from_ip(ev.protocol) else { return };
        // A TCP flow whose first packet seen is no SYN was picked up mid-stream (its
        // conntrack entry was evicted or expired while it ran): its direction here is that of
        // a packet, not of who opened it, so it is neither learned nor judged. A connection
        // the workload really opens starts with a SYN, which is always seen.
        if protocol == Protocol::Tcp && !bulkhead_common::tcp_opens(ev.tcp_flags) {
            tracing::debug!(ifindex = ev.ifindex, flags = ev.tcp_flags, "TCP flow picked up mid-stream: not a finding");
            return;
        }
        // ICMP "ports" are the echo identifier: not part of a destination. The port is the
        // destination's either way: the peer's outbound, the workload's own inbound.
        let port = if protocol == Protocol::Icmp { 0 } else { u16::from_be_bytes(ev.dport_be) };
        let remote = Ipv4Addr::from(if inbound { ev.saddr_be } else { ev.daddr_be });
        let peer = self.peers.get(&remote).map(|n| Peer::Workload(n.clone())).unwrap_or(Peer::Address(remote));
        let mut g = self.shared.state();
        let Some(w) = g.workloads.values().find(|w| w.ifindex == ev.ifindex).cloned() else { return };
        if w.spec.mode == Mode::Learn {
            // A flow the policy denied is no behaviour to learn.
            let p = g.profile_mut(&w);
            let new = ev.kind == flow_kind::NEW_ALLOWED && if inbound { p.learn_ingress(&peer, port, protocol) } else { p.learn_egress(&peer, port, protocol) };
            if new {
                g.dirty.insert(w.profile_name().to_string());
                tracing::debug!(workload = %w.spec.name, %peer, port, ?protocol, inbound, "detector learned a peer");
            }
            return;
        }
        let findings = if inbound {
            if g.profile_mut(&w).knows_inbound(&peer, port, protocol) { Vec::new() } else { vec![(Finding::NewInbound, None)] }
        } else {
            let state = self.net.entry(w.cgroup_id).or_default();
            network::judge(g.profile_mut(&w), &mut state.scan, &w.opts.scan, ev.ts_ns, &peer, port, protocol)
        };
        drop(g);
        for (finding, counts) in findings {
            let actions = match finding {
                Finding::NewPeer => w.spec.actions.new_peer,
                Finding::NewPort => w.spec.actions.new_port,
                Finding::PortScan => w.spec.actions.port_scan,
                Finding::NewInbound => w.spec.actions.new_inbound,
            };
            let mut rec = self.act(dp, &w, ev, finding, actions, &peer, port, protocol, counts);
            rec.read_delay_ns = read_at.saturating_sub(ev.ts_ns);
            self.shared.record(&self.events_file, rec);
        }
    }

    /// Takes a finding's actions (protect mode only) and builds its alert.
    #[allow(clippy::too_many_arguments)]
    fn act(
        &mut self,
        dp: &mut Dataplane,
        w: &WorkloadState,
        ev: &FlowEventV3,
        finding: Finding,
        actions: NetActions,
        peer: &Peer,
        port: u16,
        protocol: Protocol,
        counts: Option<(usize, usize)>,
    ) -> DetectorEvent {
        let protect = w.spec.mode == Mode::Protect;
        let (user_actions, isolate_ns) = take_actions(w, actions, ev.ts_ns, || {
            if w.ifindex == 0 { Err("no interface".to_string()) } else { isolate_entry(dp, w).map_err(|e| e.to_string()) }
        });
        let now = crate::clock::monotonic_ns();
        let dst = format!("{}:{port}/{protocol:?}", Ipv4Addr::from(ev.daddr_be)).to_uppercase();
        let rec = DetectorEvent {
            kind: finding.kind(),
            ts_ns: ev.ts_ns,
            workload: Some(w.spec.name.clone()),
            cgroup_id: w.cgroup_id,
            mode: if protect { "protect" } else { "monitor" },
            user_enforce_ns: (!user_actions.is_empty()).then(|| now.saturating_sub(ev.ts_ns)),
            user_actions,
            read_delay_ns: 0,
            peer: Some(peer.to_string()),
            dst: Some(dst),
            isolate_ns,
            detail: counts.map(|(p, q)| format!("{p} distinct ports on the peer, {q} distinct peers within {} ms", w.opts.scan.window_ms)),
            ..Default::default()
        };
        tracing::warn!(
            workload = %w.spec.name,
            kind = rec.kind,
            peer = %peer,
            dst = rec.dst.as_deref().unwrap_or(""),
            actions = ?rec.user_actions,
            isolate_ns = rec.isolate_ns,
            "detector: flow outside the profile"
        );
        rec
    }

    /// Once a second: egress volume (learn: the peak; monitor/protect: alert far above it)
    /// and syscall counts into learning profiles; dirty profiles are written.
    pub fn tick(&mut self, dp: &mut Dataplane) {
        if self.last_tick.elapsed() < SAMPLE_EVERY {
            return;
        }
        let elapsed = self.last_tick.elapsed().as_secs_f64();
        self.last_tick = Instant::now();
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
        // the flows themselves, i.e. a walk of conntrack, which costs a syscall per entry
        // (on a busy node, a share of a core every second).
        let counted = |w: &WorkloadState| bulkhead_common::ifindex_is_direct(w.ifindex);
        let walk = workloads.iter().any(|w| w.ifindex != 0 && (w.spec.mode == Mode::Learn || !counted(w)));
        // Outbound flows per interface: key -> bytes (both directions, as conntrack counts).
        let mut per_if: HashMap<u32, Vec<(CtKeyV2, u64)>> = HashMap::new();
        if walk {
            for item in dp.maps.conntrack.iter() {
                let Ok((k, v)) = item else { continue };
                if v.origin_direction == direction::EGRESS {
                    per_if.entry(k.ifindex).or_default().push((k, v.bytes));
                }
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
                    ts_ns: crate::clock::monotonic_ns(),
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
