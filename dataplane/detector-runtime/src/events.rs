//! The detector's event thread: reads exec events from the kernel's ring buffer as soon as
//! they arrive (poll on the ring's fd), learns profiles, takes the user-space actions (pause,
//! terminate, kill fallback) and writes alerts as JSON lines and log lines.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use bulkhead_common::detect::{self as det, DetEventV2, event_actions, event_kind, mode};
use serde::Serialize;

use super::{Shared, cgroup};
use bulkhead_loader::ring::Ring;

use crate::error::DetectorError;

/// Finding kind of an allowed binary started by an image that never started it.
pub const LINEAGE_KIND: &str = "exec-lineage";
/// Finding kind of an allowed path whose file changed since the workload first ran it.
pub const IDENTITY_KIND: &str = "exec-identity";
/// Finding kind of an interpreter given inline code it never was while learning.
pub const INLINE_KIND: &str = "exec-inline-code";

/// How long a user-space action may take before it counts as failed.
pub(super) const ACTION_TIMEOUT: Duration = Duration::from_secs(2);

/// One detector event as reported (JSON line, log line, `Agent::detector_events`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetectorEvent {
    /// `exec`, `violation`, `exec-lineage`, `exec-identity` or `exec-inline-code` (exec probe); `new-peer`, `new-port`, `port-scan` or
    /// `new-inbound` (network); `syscall-sequence` or `syscall-unseen` (sequence model);
    /// `file-write-unseen`, `file-sensitive-read` or `dir-list-unseen` (file baseline);
    /// `egress-volume`; `quarantine-perimeter` (firewalls holding an isolated workload).
    pub kind: &'static str,
    /// Kernel timestamp of the exec or of the flow's first packet (CLOCK_MONOTONIC ns).
    pub ts_ns: u64,
    /// The workload's name, or `None` when it is no longer monitored.
    pub workload: Option<String>,
    pub cgroup_id: u64,
    pub pid: u32,
    /// Parent pid (0 = forked before monitoring started).
    pub ppid: u32,
    pub uid: u32,
    pub path: String,
    /// Mode at the time of the exec or flow.
    pub mode: &'static str,
    /// What the exec probe did: `killed`, `isolated`, and failures.
    pub kernel_actions: Vec<&'static str>,
    /// From the exec tracepoint to the end of the kernel's actions, ns.
    pub kernel_enforce_ns: Option<u64>,
    /// What the agent did: `paused`, `terminated`, `kill-fallback`, and failures.
    pub user_actions: Vec<String>,
    /// From the exec tracepoint to the end of the agent's actions (cgroup frozen or empty), ns.
    pub user_enforce_ns: Option<u64>,
    /// From the exec tracepoint (or the flow's first packet) until the agent read the event, ns.
    pub read_delay_ns: u64,
    /// Network findings: the remote peer (profile name of a pod, or an address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Network findings: `address:port/protocol` of the flow's destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Network findings: from the flow's first packet in TC (`bpf_ktime_get_ns`) to the
    /// isolation entry written by the agent, ns (when it isolated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolate_ns: Option<u64>,
    /// Port scans: distinct ports on the peer and distinct peers within the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Summaries ([`super::alerts`]): how many repeats of this alert were folded into this
    /// one, or how many alerts an `alerts-rate-limited` event stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// `quarantine-perimeter`: the firewalls whose quarantine group now holds the
    /// workload's addresses ([`super::perimeter`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub firewalls: Vec<String>,
}

impl DetectorEvent {
    /// Whether this is an exec violation of the profile (a binary outside it, or one started
    /// by an image that never started it).
    pub fn is_violation(&self) -> bool {
        matches!(self.kind, "violation" | LINEAGE_KIND | IDENTITY_KIND | INLINE_KIND)
    }

    /// Whether this is a network finding (new peer, new port, port scan).
    pub fn is_network(&self) -> bool {
        matches!(self.kind, "new-peer" | "new-port" | "port-scan" | "new-inbound")
    }
}

pub(super) fn spawn(
    ring: RingBuf<MapData>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    file: PathBuf,
    pin_dir: &Path,
) -> Result<JoinHandle<()>, DetectorError> {
    // File findings the kernel could not judge are isolated from here.
    let isolation = match bulkhead_loader::ifmap::IsolationMap::open_isolation(pin_dir) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!(error = %e, "detector event thread cannot open the isolation maps; its isolate actions will fail");
            None
        }
    };
    std::thread::Builder::new()
        .name("bh-detector".into())
        .spawn(move || run(ring, &shared, &stop, &file, isolation))
        .map_err(|_| DetectorError::Stopped)
}

fn run(ring: RingBuf<MapData>, shared: &Shared, stop: &AtomicBool, file: &Path, mut isolation: Option<bulkhead_loader::ifmap::IsolationMap<MapData>>) {
    let span = tracing::info_span!("detector-events");
    let _g = span.enter();
    let mut ring = Ring::<DetEventV2>::new(ring);
    loop {
        // The timeout only bounds how long a stop request goes unnoticed.
        ring.wait(None, 100);
        for ev in ring.read_all() {
            if super::fileevents::is_file_event(&ev) {
                if let Some(rec) = super::fileevents::handle(shared, &ev, &mut isolation) {
                    shared.record(file, rec);
                }
                continue;
            }
            let rec = handle(shared, &ev);
            shared.record(file, rec);
        }
        // Alert summaries come out when their windows close, also for silent workloads.
        shared.flush_alerts(file);
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
}

/// Learns or acts on one event and builds its record.
fn handle(shared: &Shared, ev: &DetEventV2) -> DetectorEvent {
    let read_at = bulkhead_loader::clock::monotonic_ns();
    let len = ev.filename.iter().position(|&b| b == 0).unwrap_or(ev.filename.len());
    let path = String::from_utf8_lossy(&ev.filename[..len]).into_owned();
    let lineage = ev.kind == event_kind::EXEC_LINEAGE;
    let identity = ev.kind == event_kind::EXEC_IDENTITY;
    let inline = ev.kind == event_kind::EXEC_INLINE;
    let violation = ev.kind == event_kind::EXEC_VIOLATION || lineage || identity || inline;
    let (workload, cg_path, actions, parent) = {
        let mut g = shared.state();
        match g.workloads.get_mut(&ev.cgroup_id) {
            Some(w) => {
                let w = w.clone();
                let p = g.profile_mut(&w);
                // The parent image by its hash: one of the profile's (or the workload's
                // allowed) executables; "" = started from outside the workload.
                let parent = if ev.parent_hash == 0 {
                    Some(String::new())
                } else {
                    p.execs.iter().chain(w.spec.allowed_execs.iter()).find(|x| det::path_hash(x.as_bytes()) == ev.parent_hash).cloned()
                };
                let mut changed = false;
                if ev.mode == mode::LEARN && !path.is_empty() {
                    changed |= p.execs.insert(path.clone());
                    if ev.op == 1 {
                        changed |= p.inline_code.insert(path.clone());
                    }
                    if let Some(parent) = &parent {
                        changed |= p.lineage.insert(super::profile::Lineage { parent: parent.clone(), child: path.clone() });
                    }
                }
                if changed {
                    g.dirty.insert(w.profile_name().to_string());
                }
                (Some(w.spec.name), Some(w.spec.cgroup), w.spec.actions, parent)
            }
            None => (None, None, Default::default(), None),
        }
    };
    let kernel_actions = kernel_actions(ev.actions);
    let mut user_actions = Vec::new();
    let mut user_enforce_ns = None;
    if violation && ev.mode == mode::PROTECT {
        if let Some(cg) = &cg_path {
            if ev.actions & event_actions::SIGNAL_FAILED != 0 {
                // The kernel could not kill: do it from here (the process may be gone).
                // SAFETY: plain syscall.
                let r = unsafe { libc::kill(ev.pid as i32, libc::SIGKILL) };
                user_actions.push(if r == 0 { "kill-fallback".to_string() } else { "kill-fallback-failed".to_string() });
            }
            if actions.terminate {
                match cgroup::kill(cg, ACTION_TIMEOUT) {
                    Ok(()) => user_actions.push("terminated".into()),
                    Err(e) => user_actions.push(format!("terminate-failed: {e}")),
                }
            } else if actions.pause {
                match cgroup::freeze(cg, ACTION_TIMEOUT) {
                    Ok(()) => user_actions.push("paused".into()),
                    Err(e) => user_actions.push(format!("pause-failed: {e}")),
                }
            }
            if !user_actions.is_empty() {
                user_enforce_ns = Some(bulkhead_loader::clock::monotonic_ns().saturating_sub(ev.ts_ns));
            }
        }
    }
    // The fork probe only knows parents forked inside a monitored workload; for a process
    // started from outside (moved into the cgroup before exec) ask /proc while it still exists.
    let ppid = if ev.ppid != 0 { ev.ppid } else { proc_ppid(ev.pid).unwrap_or(0) };
    let rec = DetectorEvent {
        kind: if lineage {
            LINEAGE_KIND
        } else if identity {
            IDENTITY_KIND
        } else if inline {
            INLINE_KIND
        } else if violation {
            "violation"
        } else {
            "exec"
        },
        ts_ns: ev.ts_ns,
        workload,
        cgroup_id: ev.cgroup_id,
        pid: ev.pid,
        ppid,
        uid: ev.uid,
        path,
        mode: match ev.mode {
            mode::LEARN => "learn",
            mode::MONITOR => "monitor",
            _ => "protect",
        },
        kernel_actions,
        kernel_enforce_ns: (ev.enforced_ns != 0).then(|| ev.enforced_ns.saturating_sub(ev.ts_ns)),
        user_actions,
        user_enforce_ns,
        read_delay_ns: read_at.saturating_sub(ev.ts_ns),
        detail: if inline {
            Some("an interpreter given inline code (-c, -e or -), which it never was while learning".to_string())
        } else if identity {
            Some("the file at this path is not the one the workload ran from it (another inode, or changed since: overwritten, replaced, a symlink)".to_string())
        } else {
            lineage.then(|| match parent.as_deref() {
                Some("") => "started from outside the workload, which it never was while learning".to_string(),
                Some(p) => format!("started by {p}, which never started it while learning"),
                None => format!("started by an image outside the profile (hash {:016x})", ev.parent_hash),
            })
        },
        ..Default::default()
    };
    if violation {
        tracing::warn!(
            workload = rec.workload.as_deref().unwrap_or("?"),
            pid = rec.pid,
            ppid = rec.ppid,
            uid = rec.uid,
            path = %rec.path,
            kernel = ?rec.kernel_actions,
            user = ?rec.user_actions,
            kernel_enforce_ns = rec.kernel_enforce_ns,
            user_enforce_ns = rec.user_enforce_ns,
            detail = rec.detail.as_deref().unwrap_or(""),
            "detector: exec outside the profile"
        );
    } else {
        tracing::debug!(workload = rec.workload.as_deref().unwrap_or("?"), pid = rec.pid, path = %rec.path, "detector: exec");
    }
    rec
}

/// What the kernel did, by name, from an event's [`event_actions`] bits.
pub(super) fn kernel_actions(bits: u8) -> Vec<&'static str> {
    [
        (event_actions::KILLED, "killed"),
        (event_actions::ISOLATED, "isolated"),
        (event_actions::SIGNAL_FAILED, "signal-failed"),
        (event_actions::ISOLATE_FAILED, "isolate-failed"),
        (event_actions::PATH_UNREADABLE, "path-unreadable"),
        (event_actions::STOPPED, "stopped-until-judged"),
    ]
    .into_iter()
    .filter(|(bit, _)| bits & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// The parent pid from /proc/<pid>/stat (field 4, after the parenthesised command).
pub(super) fn proc_ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Appends one event as a JSON line.
pub(super) fn append(file: &Path, rec: &DetectorEvent) {
    let line = match serde_json::to_string(rec) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "detector event not serialisable");
            return;
        }
    };
    match std::fs::OpenOptions::new().create(true).append(true).open(file) {
        Ok(mut f) => {
            let _ = writeln!(f, "{line}");
        }
        Err(e) => tracing::error!(file = %file.display(), error = %e, "detector event not written"),
    }
}
