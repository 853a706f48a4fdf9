//! cgroup v2 operations of the detector's actions: id, freeze, thaw, kill, and finding the
//! processes stopped by a signal.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

/// The cgroup v2 id of a cgroup folder: its inode number, which is what
/// `bpf_get_current_cgroup_id()` returns for tasks in it.
pub fn id(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

fn events_say(path: &Path, line: &str) -> io::Result<bool> {
    Ok(std::fs::read_to_string(path.join("cgroup.events"))?.lines().any(|l| l == line))
}

/// Waits until `cgroup.events` has `line`; polls every 50 µs (the wait is short: the kernel
/// freezes or kills a handful of tasks).
fn wait_for(path: &Path, line: &str, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if events_say(path, line)? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{} never showed {line:?}", path.display())));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Freezes every process of the cgroup and waits until the kernel reports it frozen.
pub fn freeze(path: &Path, timeout: Duration) -> io::Result<()> {
    std::fs::write(path.join("cgroup.freeze"), "1")?;
    wait_for(path, "frozen 1", timeout)
}

/// Thaws the cgroup (no-op when not frozen).
pub fn thaw(path: &Path) -> io::Result<()> {
    std::fs::write(path.join("cgroup.freeze"), "0")
}

/// Whether the cgroup is frozen.
pub fn is_frozen(path: &Path) -> io::Result<bool> {
    events_say(path, "frozen 1")
}

/// Kills every process of the cgroup (cgroup.kill) and waits until none is left.
pub fn kill(path: &Path, timeout: Duration) -> io::Result<()> {
    std::fs::write(path.join("cgroup.kill"), "1")?;
    wait_for(path, "populated 0", timeout)
}

/// Process ids in the cgroup.
pub fn procs(path: &Path) -> io::Result<Vec<u32>> {
    Ok(std::fs::read_to_string(path.join("cgroup.procs"))?.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Process ids in the cgroup stopped by a signal (state `T` in /proc/<pid>/stat).
pub fn stopped(path: &Path) -> io::Result<Vec<u32>> {
    Ok(procs(path)?
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "T")))
                .unwrap_or(false)
        })
        .collect())
}
