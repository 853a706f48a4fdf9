//! The detector's network decisions on a thread of their own. It owns the flow ring: every
//! event is judged first (new peers, new ports, port scans, new inbound peers of monitored
//! workloads; protect mode writes the isolation entry through its own handle of the pinned
//! map), then handed to the agent thread for the flow log. The agent thread compiles policy
//! and writes maps; however long that takes, it never stands between a flow event and its
//! isolation.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::MapData;
use bulkhead_common::{FlowEventV5, direction, flow_kind};

use super::{
    DetectorEvent, Mode, NetActions, Shared, WorkloadState,
    network::{self, Finding, ScanWindow},
    profile::{Peer, Protocol},
    take_actions,
};
use bulkhead_loader::{
    ifmap::IsolationMap,
    ring::{Ring, Wake},
};

use crate::error::DetectorError;

/// Pod address -> peer name (the pod's profile name), replaced whole at each sync.
pub type PeerBook = Arc<Mutex<Arc<HashMap<IpAddr, String>>>>;

/// Batches of events waiting for the flow log; past this many the agent thread is too far
/// behind and new batches are counted as lost (the ring itself stays drained, so the
/// detector keeps judging).
const LOG_BACKLOG: usize = 1024;
/// Largest batch read from the ring at once.
const BATCH: usize = 4096;
/// Under a stream of new flows, lets events gather briefly after a drain so one wake-up takes
/// a batch; a first event after a quiet spell is still read at once.
const BATCH_WAIT: Duration = Duration::from_micros(200);

/// The agent's handle on the thread.
pub struct FlowWatch {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    wake: Arc<Wake>,
    flush_tx: mpsc::Sender<mpsc::SyncSender<()>>,
    events_rx: mpsc::Receiver<Vec<FlowEventV5>>,
}

impl FlowWatch {
    /// Starts the thread on the flow ring.
    pub(super) fn spawn(ring: Ring<FlowEventV5>, shared: Arc<Shared>, peers: PeerBook, events_file: PathBuf, pin_dir: &Path) -> Result<FlowWatch, DetectorError> {
        let isolation = match IsolationMap::open_isolation(pin_dir) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "network decisions cannot open the isolation maps; isolate actions will fail");
                None
            }
        };
        let learned = MapData::from_pin(pin_dir.join(bulkhead_common::detect::map_names::LEARNED))
            .ok()
            .and_then(|m| aya::maps::HashMap::try_from(aya::maps::Map::HashMap(m)).ok());
        if learned.is_none() {
            tracing::error!("network decisions cannot open the learned-destination map; a flow TC dropped for a stale entry stays dropped");
        }
        let wake = Arc::new(Wake::new()?);
        let stop = Arc::new(AtomicBool::new(false));
        let (flush_tx, flush_rx) = mpsc::channel();
        let (events_tx, events_rx) = mpsc::sync_channel(LOG_BACKLOG);
        let mut w = Watcher { ring, shared, peers, events_file, isolation, learned, scan: HashMap::new(), to_log: events_tx };
        let thread = std::thread::Builder::new()
            .name("bh-netwatch".into())
            .spawn({
                let (stop, wake) = (stop.clone(), wake.clone());
                move || w.run(&stop, &wake, &flush_rx)
            })
            .map_err(|_| DetectorError::Stopped)?;
        Ok(FlowWatch { thread: Some(thread), stop, wake, flush_tx, events_rx })
    }

    /// Event batches judged and waiting for the flow log, oldest first.
    pub fn take_events(&self) -> Vec<Vec<FlowEventV5>> {
        self.events_rx.try_iter().collect()
    }

    /// Has the thread read the ring now and waits (up to `timeout`) until it has handed over
    /// what was there: what the kernel wrote before this call is then in [`Self::take_events`].
    pub fn flush(&self, timeout: Duration) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.flush_tx.send(tx).is_ok() {
            self.wake.signal();
            let _ = rx.recv_timeout(timeout);
        }
    }


    /// Stops the thread (it reads what is left first).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FlowWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The thread's state.
struct Watcher {
    ring: Ring<FlowEventV5>,
    shared: Arc<Shared>,
    peers: PeerBook,
    events_file: PathBuf,
    /// The pinned isolation map (TC reads it): protect mode's `isolate`.
    isolation: Option<IsolationMap<MapData>>,
    /// The pinned learned-destination map ([`super::learned`]), for repairs.
    learned: Option<aya::maps::HashMap<MapData, bulkhead_common::detect::LearnedKeyV1, u8>>,
    /// Port-scan windows per workload (cgroup id).
    scan: HashMap<u64, ScanWindow>,
    to_log: mpsc::SyncSender<Vec<FlowEventV5>>,
}

impl Watcher {
    fn run(&mut self, stop: &AtomicBool, wake: &Wake, flush_rx: &mpsc::Receiver<mpsc::SyncSender<()>>) {
        let span = tracing::info_span!("detector-network");
        let _g = span.enter();
        let mut last_prune = Instant::now();
        loop {
            // The timeout only bounds how long a lost wake-up could go unnoticed.
            let woken = self.ring.wait(Some(wake), 500);
            let read = self.drain();
            for ack in flush_rx.try_iter() {
                let _ = ack.try_send(());
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if last_prune.elapsed() > Duration::from_secs(10) {
                last_prune = Instant::now();
                let live: Vec<u64> = self.shared.state().workloads.keys().copied().collect();
                self.scan.retain(|cg, _| live.contains(cg));
            }
            if read > 0 && !woken {
                std::thread::sleep(BATCH_WAIT);
            }
        }
    }

    /// Judges and hands over every waiting event; returns how many.
    fn drain(&mut self) -> usize {
        let mut total = 0;
        loop {
            let mut batch = Vec::new();
            let n = self.ring.read(&mut batch, BATCH);
            if n == 0 {
                return total;
            }
            total += n;
            let peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            for ev in &batch {
                self.on_flow(&peers, ev);
            }
            if let Err(mpsc::TrySendError::Full(b)) = self.to_log.try_send(batch) {
                let n = b.len() as u64;
                let before = self.shared.flow_records_lost.fetch_add(n, Ordering::Relaxed);
                if (before + n).ilog2() != before.max(1).ilog2() || before == 0 {
                    tracing::warn!(records = n, records_lost = before + n, "flow log behind: flow records not logged (the detector judged them)");
                }
            }
        }
    }

    /// Learns or judges one flow event (new flows of monitored workloads).
    fn on_flow(&mut self, peers: &HashMap<IpAddr, String>, ev: &FlowEventV5) {
        // TC's own detector decision (protect mode): the flow never left.
        let kernel_dropped = ev.kind == flow_kind::DROPPED && u32::from(ev.drop_reason) == bulkhead_common::counters::DENY_DETECTOR_UNLEARNED;
        if !(matches!(ev.kind, flow_kind::NEW_ALLOWED | flow_kind::DENIED) || kernel_dropped) || ev.ifindex == 0 {
            return;
        }
        let inbound = ev.direction != direction::EGRESS;
        // A denied inbound flow is stopped and counted by policy already: no finding of its own.
        if inbound && ev.kind != flow_kind::NEW_ALLOWED {
            return;
        }
        let read_at = bulkhead_loader::clock::monotonic_ns();
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
        let Some(remote) = (if inbound { ev.saddr() } else { ev.daddr() }) else { return };
        let peer = peers.get(&remote).map(|n| Peer::Workload(n.clone())).unwrap_or(Peer::Address(remote));
        let mut g = self.shared.state();
        let Some(w) = g.workloads.values().find(|w| w.ifindex == ev.ifindex).cloned() else { return };
        if w.learns_at(ev.ts_ns) {
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
            let scan = self.scan.entry(w.cgroup_id).or_default();
            network::judge(g.profile_mut(&w), scan, &w.opts.scan, ev.ts_ns, &peer, port, protocol)
        };
        drop(g);
        if kernel_dropped && findings.is_empty() {
            // The profile knows the flow but TC's entries did not (a learned peer's replica
            // newer than the last sync): the profile decides; let the retransmit through and
            // undo TC's isolation.
            let lifted = super::learned::repair(self.learned.as_mut(), self.isolation.as_mut(), ev.ifindex, remote, port, ev.protocol);
            tracing::warn!(workload = %w.spec.name, %peer, %remote, port, lifted, "TC dropped a flow to a learned peer's new address; entry added");
            return;
        }
        // Read before the actions below overwrite TC's entry with their own.
        let tc_isolated = kernel_dropped
            && self.isolation.as_ref().and_then(|m| m.get(ev.ifindex).ok().flatten()).is_some_and(|v| v.reason == bulkhead_common::detect::isolation_reason::UNLEARNED_FLOW);
        for (finding, counts) in findings {
            let actions = match finding {
                Finding::NewPeer => w.spec.actions.new_peer,
                Finding::NewPort => w.spec.actions.new_port,
                Finding::PortScan => w.spec.actions.port_scan,
                Finding::NewInbound => w.spec.actions.new_inbound,
            };
            let mut rec = self.act(&w, ev, finding, actions, &peer, port, protocol, counts);
            rec.read_delay_ns = read_at.saturating_sub(ev.ts_ns);
            if kernel_dropped {
                rec.kernel_actions.push("dropped-first-packet");
                if tc_isolated {
                    rec.kernel_actions.push("isolated");
                }
            }
            self.shared.record(&self.events_file, rec);
        }
    }

    /// Takes a finding's actions (protect mode only) and builds its alert.
    #[allow(clippy::too_many_arguments)]
    fn act(
        &mut self,
        w: &WorkloadState,
        ev: &FlowEventV5,
        finding: Finding,
        actions: NetActions,
        peer: &Peer,
        port: u16,
        protocol: Protocol,
        counts: Option<(usize, usize)>,
    ) -> DetectorEvent {
        let protect = w.spec.mode == Mode::Protect;
        let isolation = &mut self.isolation;
        let (user_actions, isolate_ns) = take_actions(w, actions, ev.ts_ns, || {
            if w.ifindex == 0 {
                return Err("no interface".to_string());
            }
            let map = isolation.as_mut().ok_or("isolation map not open")?;
            map.insert(w.ifindex, super::user_isolation(w)).map_err(|e| e.to_string())
        });
        let now = bulkhead_loader::clock::monotonic_ns();
        let dst = match ev.daddr() {
            Some(IpAddr::V6(a)) => format!("[{a}]:{port}/{protocol:?}"),
            Some(a) => format!("{a}:{port}/{protocol:?}"),
            None => format!("?:{port}/{protocol:?}"),
        }
        .to_uppercase();
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
}
