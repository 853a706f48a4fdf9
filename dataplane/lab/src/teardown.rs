//! Teardown of labs: on drop, on Ctrl-C, and after a crash (`bulkhead lab cleanup`).
//!
//! Every live lab registers a [`Plan`] listing what it created. Drop runs the plan; the signal
//! thread runs every registered plan before exiting, because destructors do not run when the
//! process is ended by a signal.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{netns, rtnl};

/// Root of the lab cgroups (cgroup v2 is mounted here on this machine kind).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
/// Root of all Bulkhead bpffs pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/bulkhead";
/// Root of per-lab state (datastore directories).
pub const STATE_ROOT: &str = "/run/bulkhead";

/// What one lab created, in the order it must be removed.
#[derive(Debug, Default, Clone)]
pub(crate) struct Plan {
    pub id: String,
    pub netns: Vec<String>,
    /// Leaf cgroups; the lab's parent cgroup is `cgroup_parent`.
    pub cgroups: Vec<PathBuf>,
    pub cgroup_parent: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

/// True once SIGINT/SIGTERM arrived: labs being built stop at the next step.
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::SeqCst)
}

/// If a signal arrived, blocks forever: the signal thread is tearing down and will exit the
/// process with 130. Returning instead would let `main` exit halfway through the teardown.
pub fn park_if_shutting_down() {
    while shutting_down() {
        std::thread::park();
    }
}

type Registry = Mutex<HashMap<String, Arc<Mutex<Plan>>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Registers a lab's plan so that the signal handler can tear it down.
pub(crate) fn register(plan: Arc<Mutex<Plan>>) {
    let id = plan.lock().unwrap().id.clone();
    registry().lock().unwrap().insert(id, plan);
}

/// Removes a lab's plan from the registry (its Drop is about to run it).
pub(crate) fn unregister(id: &str) -> Option<Arc<Mutex<Plan>>> {
    registry().lock().unwrap().remove(id)
}

/// Runs a plan: processes, then network namespaces, then cgroups, then pins and state.
/// Best effort: every failure is logged and the rest still runs.
pub(crate) fn run_plan(plan: &Plan, children: &mut [Child]) {
    tracing::debug!(id = %plan.id, "tearing down lab");
    if let Some(parent) = &plan.cgroup_parent {
        kill_cgroup(parent);
    }
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    if let Some(parent) = &plan.cgroup_parent {
        wait_unpopulated(parent);
    }
    for ns in &plan.netns {
        if Path::new(netns::NETNS_DIR).join(ns).exists()
            && let Err(e) = rtnl::del_netns(ns)
        {
            tracing::warn!("teardown of lab {}: {e}", plan.id);
        }
    }
    for cg in plan.cgroups.iter().chain(plan.cgroup_parent.iter()) {
        rmdir_logged(cg, &plan.id);
    }
    for dir in plan.pin_dir.iter().chain(plan.state_dir.iter()) {
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(dir)
        {
            tracing::warn!("teardown of lab {}: removing {}: {e}", plan.id, dir.display());
        }
    }
}

fn rmdir_logged(dir: &Path, id: &str) {
    if dir.exists()
        && let Err(e) = std::fs::remove_dir(dir)
    {
        tracing::warn!("teardown of lab {id}: rmdir {}: {e}", dir.display());
    }
}

/// Kills every process in a cgroup subtree (cgroup.kill, kernel >= 5.14).
pub(crate) fn kill_cgroup(dir: &Path) {
    let kill = dir.join("cgroup.kill");
    if kill.exists()
        && let Err(e) = std::fs::write(&kill, "1")
    {
        tracing::warn!("writing {}: {e}", kill.display());
    }
}

/// Waits (up to 2 s) until no live process is left in the cgroup subtree; rmdir fails before.
pub(crate) fn wait_unpopulated(dir: &Path) {
    let events = dir.join("cgroup.events");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match std::fs::read_to_string(&events) {
            Ok(s) if s.lines().any(|l| l == "populated 1") => std::thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
    tracing::warn!("{} still populated after 2 s", dir.display());
}

/// Blocks SIGINT/SIGTERM in the calling thread and spawns a thread that, on either signal,
/// tears down every live lab and exits with 130.
///
/// Call it from the main thread before any other thread is spawned: the signal mask is
/// inherited, so every later thread leaves the signal to the dedicated one.
pub fn install_signal_teardown() {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            eprintln!("\ninterrupted: tearing down labs");
            SHUTTING_DOWN.store(true, Ordering::SeqCst);
            // Lets builders in the middle of a step reach their next shutdown check.
            std::thread::sleep(Duration::from_millis(200));
            let plans: Vec<_> = registry().lock().unwrap().drain().map(|(_, p)| p).collect();
            for p in plans {
                let plan = p.lock().unwrap().clone();
                run_plan(&plan, &mut []);
                // The name-based sweep also catches what was created after the plan snapshot.
                cleanup(Some(&plan.id));
            }
            std::process::exit(130);
        });
    }
}

/// File in a lab's state folder naming the process that owns the lab (its pid).
pub const OWNER_FILE: &str = "owner.pid";

/// Ids of labs whose owning process still runs (other than this one): not leftovers.
fn live_labs() -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir(STATE_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let id = e.file_name().to_string_lossy().strip_prefix("bh-")?.to_string();
                    let pid = std::fs::read_to_string(e.path().join(OWNER_FILE)).ok()?;
                    let pid = pid.trim();
                    (pid != me && Path::new("/proc").join(pid).exists()).then_some(id)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes leftovers of crashed labs: every `bh-*` netns, `bh-*` cgroup (after killing its
/// processes), `/sys/fs/bpf/bulkhead` pins and `/run/bulkhead` state, except those of labs
/// whose owning process still runs (a demo or soak next to the tests). With `id`, only that
/// lab's, live or not. Returns the number of objects removed.
pub fn cleanup(id: Option<&str>) -> usize {
    let prefix = match id {
        Some(id) => format!("bh-{id}"),
        None => "bh-".to_string(),
    };
    let live = if id.is_none() { live_labs() } else { Vec::new() };
    // A live lab's folders and its agent's `.sock` / `.lock` files are all left alone.
    let of_live = |name: &str| live.iter().any(|l| name == format!("bh-{l}") || name.starts_with(&format!("bh-{l}-")) || name.starts_with(&format!("bh-{l}.")));
    for l in &live {
        tracing::info!(lab = %l, "lab cleanup: lab owned by a running process left alone");
    }
    let matches = |name: &str| match id {
        Some(_) => name == prefix || name.starts_with(&format!("{prefix}-")) || name == format!("{prefix}.sock") || name == format!("{prefix}.lock"),
        None => name.starts_with(&prefix) && !of_live(name),
    };
    let mut removed = 0;
    let cgroups: Vec<PathBuf> = std::fs::read_dir(CGROUP_ROOT)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| matches(&e.file_name().to_string_lossy()) && e.path().is_dir())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    for cg in &cgroups {
        kill_cgroup(cg);
    }
    for cg in &cgroups {
        wait_unpopulated(cg);
    }
    for ns in netns::list_netns() {
        if matches(&ns) {
            match rtnl::del_netns(&ns) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!("{e}"),
            }
        }
    }
    for cg in &cgroups {
        if let Ok(rd) = std::fs::read_dir(cg) {
            for leaf in rd.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
                rmdir_logged(&leaf.path(), "cleanup");
            }
        }
        rmdir_logged(cg, "cleanup");
        removed += 1;
    }
    let pin_targets: Vec<PathBuf> = match id {
        None if live.is_empty() => vec![PathBuf::from(PIN_ROOT)],
        None => std::fs::read_dir(PIN_ROOT)
            .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| !of_live(&e.file_name().to_string_lossy())).map(|e| e.path()).collect())
            .unwrap_or_default(),
        Some(_) => vec![Path::new(PIN_ROOT).join(&prefix)],
    };
    let state_targets: Vec<PathBuf> = std::fs::read_dir(STATE_ROOT)
        .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| matches(&e.file_name().to_string_lossy())).map(|e| e.path()).collect())
        .unwrap_or_default();
    for dir in pin_targets.into_iter().chain(state_targets) {
        // The state folder holds a killed agent's control socket and lock file beside its
        // folder: files, not folders.
        if let Ok(meta) = std::fs::symlink_metadata(&dir) {
            let res = if meta.is_dir() { std::fs::remove_dir_all(&dir) } else { std::fs::remove_file(&dir) };
            match res {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!("removing {}: {e}", dir.display()),
            }
        }
    }
    removed
}
