//! The file probe's events on the detector's event thread: learning (the profile grows and
//! the kernel's rules with it, so the next operation in that directory stays in the kernel),
//! findings the kernel judged (it killed and isolated already; pause and terminate follow
//! here), and paths the kernel could not judge (relative or not in normal form), resolved
//! against the process's directories and judged here with the same rules.

use bulkhead_common::detect::{DetEventV2, event_actions, event_kind, file_ops, mode};

use super::{
    DetectorEvent, NetActions, Shared, WorkloadState,
    files::{self, FileOp},
    take_actions,
};
use bulkhead_loader::ifmap::IsolationMap;

/// Finding kinds of the file baseline.
pub const WRITE_UNSEEN: &str = "file-write-unseen";
pub const SENSITIVE_READ: &str = "file-sensitive-read";
pub const LIST_UNSEEN: &str = "dir-list-unseen";

/// Whether an event of the ring is the file probe's.
pub(super) fn is_file_event(ev: &DetEventV2) -> bool {
    matches!(ev.kind, event_kind::FILE_LEARN | event_kind::FILE_VIOLATION | event_kind::FILE_UNRESOLVED)
}

/// Learns or judges one file event; returns the finding to report, if any. A process the
/// kernel stopped for the agent to resolve its path is continued afterwards, whatever the
/// outcome (unless it was killed).
pub(super) fn handle(shared: &Shared, ev: &DetEventV2, isolation: &mut Option<IsolationMap<aya::maps::MapData>>) -> Option<DetectorEvent> {
    let rec = judge(shared, ev, isolation);
    if ev.actions & event_actions::STOPPED != 0 && !rec.as_ref().is_some_and(|r| r.user_actions.iter().any(|a| a == "killed")) {
        // SAFETY: plain syscall; the process may be gone.
        unsafe { libc::kill(ev.pid as i32, libc::SIGCONT) };
    }
    rec
}

fn judge(shared: &Shared, ev: &DetEventV2, isolation: &mut Option<IsolationMap<aya::maps::MapData>>) -> Option<DetectorEvent> {
    let read_at = bulkhead_loader::clock::monotonic_ns();
    let len = ev.filename.iter().position(|&b| b == 0).unwrap_or(ev.filename.len());
    let raw = String::from_utf8_lossy(&ev.filename[..len]).into_owned();
    let (w, cfg) = {
        let g = shared.state();
        let w = g.workloads.get(&ev.cgroup_id)?.clone();
        let cfg = w.opts.files.clone()?;
        (w, cfg)
    };
    let path = if ev.kind == event_kind::FILE_UNRESOLVED {
        match files::resolve(ev.pid, ev.dirfd, &raw) {
            Some(p) => p,
            None => {
                tracing::warn!(workload = %w.spec.name, pid = ev.pid, path = %raw, "detector: file path not resolvable (process gone); not judged");
                return None;
            }
        }
    } else {
        raw.clone()
    };
    let ops = FileOp::from_mask(ev.op);
    let read = ev.op == file_ops::READ_SENSITIVE;
    if read && !files::is_sensitive(&path, &cfg.sensitive_paths) {
        return None;
    }
    let name = w.profile_name().to_string();
    let learning = ev.mode == mode::LEARN;
    let (allowed, changed) = {
        let mut g = shared.state();
        let p = g.profile_mut(&w);
        let allowed = if read { p.files.sensitive_reads.contains(&path) } else { p.files.allows(&ops, &path) };
        let changed = learning && !allowed && if read { p.files.learn_sensitive_read(&path) } else { p.files.learn(&ops, &path) };
        if changed {
            g.dirty.insert(name.clone());
        }
        (allowed, changed)
    };
    if changed {
        if let Err(e) = shared.sync_file_rules(&name) {
            tracing::error!(profile = %name, error = %e, "detector file rules not written; the kernel keeps reporting this directory");
        }
    }
    if learning || (allowed && ev.kind != event_kind::FILE_VIOLATION) {
        return None;
    }
    Some(finding(&w, ev, path, raw, read, &ops, isolation, read_at))
}

#[allow(clippy::too_many_arguments)]
fn finding(
    w: &WorkloadState,
    ev: &DetEventV2,
    path: String,
    raw: String,
    read: bool,
    ops: &[FileOp],
    isolation: &mut Option<IsolationMap<aya::maps::MapData>>,
    read_at: u64,
) -> DetectorEvent {
    let a = w.spec.actions;
    let (kind, fa) = if read {
        (SENSITIVE_READ, a.sensitive_read)
    } else if ops.contains(&FileOp::List) {
        (LIST_UNSEEN, a.dir_list)
    } else {
        (WRITE_UNSEEN, a.file_write)
    };
    let kernel_actions = super::events::kernel_actions(ev.actions);
    let judged_here = ev.kind == event_kind::FILE_UNRESOLVED;
    let protect = ev.mode == mode::PROTECT;
    let mut user_actions = Vec::new();
    if protect && fa.kill && (judged_here || ev.actions & event_actions::SIGNAL_FAILED != 0) {
        // SAFETY: plain syscall; the process may be gone.
        let r = unsafe { libc::kill(ev.pid as i32, libc::SIGKILL) };
        user_actions.push(match (judged_here, r == 0) {
            (true, true) => "killed".to_string(),
            (true, false) => "kill-failed".to_string(),
            (false, true) => "kill-fallback".to_string(),
            (false, false) => "kill-fallback-failed".to_string(),
        });
    }
    // The kernel isolated what it judged; the agent isolates what only it could judge.
    let net = NetActions { isolate: judged_here && fa.isolate, pause: fa.pause, terminate: fa.terminate };
    let (done, isolate_ns) = if protect {
        take_actions(w, net, ev.ts_ns, || {
            let map = isolation.as_mut().ok_or("isolation map not open")?;
            map.insert(w.ifindex, super::user_isolation(w)).map_err(|e| e.to_string())
        })
    } else {
        (Vec::new(), None)
    };
    user_actions.extend(done);
    let what = if read {
        "read of a sensitive path".to_string()
    } else if ops.contains(&FileOp::List) {
        format!("listing of {path}")
    } else {
        let names: Vec<&str> = ops.iter().map(|o| o.name()).collect();
        format!("{} in {}", names.join("+"), files::parent(&path))
    };
    let detail = if raw != path { format!("{what} (as {raw:?})") } else { what };
    let rec = DetectorEvent {
        kind,
        ts_ns: ev.ts_ns,
        workload: Some(w.spec.name.clone()),
        cgroup_id: ev.cgroup_id,
        pid: ev.pid,
        ppid: super::events::proc_ppid(ev.pid).unwrap_or(0),
        uid: ev.uid,
        path,
        mode: if protect { "protect" } else { "monitor" },
        kernel_actions,
        kernel_enforce_ns: (ev.enforced_ns != 0).then(|| ev.enforced_ns.saturating_sub(ev.ts_ns)),
        user_enforce_ns: (!user_actions.is_empty()).then(|| bulkhead_loader::clock::monotonic_ns().saturating_sub(ev.ts_ns)),
        user_actions,
        read_delay_ns: read_at.saturating_sub(ev.ts_ns),
        isolate_ns,
        detail: Some(detail),
        ..Default::default()
    };
    tracing::warn!(
        workload = %w.spec.name,
        kind,
        pid = rec.pid,
        path = %rec.path,
        kernel = ?rec.kernel_actions,
        user = ?rec.user_actions,
        "detector: file operation outside the profile"
    );
    rec
}
