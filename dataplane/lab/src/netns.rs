//! Network-namespace plumbing: running `ip`, entering a namespace from a thread, sysctls.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use crate::error::{LabError, Result};

/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Runs `ip ARGS...`, failing with its stderr when it exits non-zero.
pub fn ip(args: &[&str]) -> Result<()> {
    run_cmd("ip", args)
}

/// Runs a command and turns a non-zero exit into [`LabError::Command`].
pub fn run_cmd(program: &str, args: &[&str]) -> Result<()> {
    let command = format!("{program} {}", args.join(" "));
    tracing::trace!(%command, "exec");
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| LabError::Sys { context: format!("spawning `{command}`"), source: e })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Lists the named network namespaces (`ip netns list`, names only).
pub fn list_netns() -> Vec<String> {
    // Reading the directory avoids parsing `ip netns list` output ("name (id: 3)").
    match std::fs::read_dir(NETNS_DIR) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Moves the calling thread into the named network namespace.
///
/// Network namespaces are per thread, so this is only safe on a thread that exists for the
/// purpose (see [`in_netns`]); the rest of the process stays where it was.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = format!("{NETNS_DIR}/{name}");
    let f = File::open(&path).map_err(|e| LabError::io(&path, e))?;
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(LabError::sys(format!("setns({path})")));
    }
    Ok(())
}

/// Spawns `cmd` inside a pod: the network namespace `netns` and the cgroup folder `cgroup`,
/// both joined in the child before exec, so the exec is the pod's (the detector sees it).
/// Every pod process the lab, its tests and benches start goes through here.
pub fn spawn_in(netns: &str, cgroup: &std::path::Path, mut cmd: std::process::Command) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt as _;
    let ns_path = format!("{NETNS_DIR}/{netns}");
    let ns_file = File::open(&ns_path).map_err(|e| LabError::io(&ns_path, e))?;
    let procs = cgroup.join("cgroup.procs");
    let cg_file = std::fs::OpenOptions::new().write(true).open(&procs).map_err(|e| LabError::io(&procs, e))?;
    let (ns_fd, cg_fd) = (ns_file.as_raw_fd(), cg_file.as_raw_fd());
    // SAFETY: only async-signal-safe syscalls on fds opened before fork (kept open by
    // `ns_file` and `cg_file` until spawn returns); no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Writing "0" moves the writer itself into the pod's cgroup.
            if libc::write(cg_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| LabError::Server { netns: netns.into(), message: format!("spawning {cmd:?}: {e}") })
}

/// Runs `f` on a fresh thread inside network namespace `name` and returns its result.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(name)?;
            Ok(f())
        })
        .join()
        .map_err(|_| LabError::Sys {
            context: format!("thread in netns {name} panicked"),
            source: std::io::Error::other("panic"),
        })?
    })
}

/// Writes IPv4 sysctls (`conf/<dev>/<key>` style paths under /proc/sys/net/ipv4) inside `netns`.
///
/// /proc/sys/net resolves against the opening thread's namespace, so one thread that entered the
/// namespace can set them all without spawning `ip netns exec sysctl` per value.
pub fn set_ipv4_sysctls(netns: &str, settings: &[(String, &str)]) -> Result<()> {
    in_netns(netns, || -> Result<()> {
        for (key, value) in settings {
            let path = format!("/proc/sys/net/ipv4/{key}");
            std::fs::write(&path, value).map_err(|e| LabError::io(format!("{path} in netns {netns}"), e))?;
        }
        Ok(())
    })?
}
