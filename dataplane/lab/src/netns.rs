//! Network-namespace plumbing: pods' processes, code run inside a namespace, sysctls.
//! Entering a namespace is bulkhead-netns's; creating namespaces and wiring them is [`crate::rtnl`]'s.
use std::fs::File;
use std::os::fd::AsRawFd;

use crate::error::{LabError, Result};

pub use bulkhead_netns::NETNS_DIR;

/// Lists the named network namespaces (`ip netns list`, names only).
pub fn list_netns() -> Vec<String> {
    // Reading the directory avoids parsing `ip netns list` output ("name (id: 3)").
    match std::fs::read_dir(NETNS_DIR) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Spawns `cmd` inside a pod: the network namespace `netns` and the cgroup folder `cgroup`,
/// both joined in the child before exec, so the exec is the pod's (the detector sees it).
/// Every pod process the lab, its tests and benches start goes through here.
pub fn spawn_in(netns: &str, cgroup: &std::path::Path, mut cmd: std::process::Command) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt as _;
    let ns_path = bulkhead_netns::path(netns);
    let ns_file = File::open(&ns_path).map_err(|e| LabError::io(&ns_path, e))?;
    let procs = cgroup.join("cgroup.procs");
    let cg_file = std::fs::OpenOptions::new().write(true).open(&procs).map_err(|e| LabError::io(&procs, e))?;
    // The namespace first, so the exec below already happens inside it.
    bulkhead_netns::pre_exec_enter(&mut cmd, ns_file);
    // The hook owns `cg_file`: open in the child whenever spawn forks, close-on-exec after.
    // SAFETY: one async-signal-safe write(2) on that descriptor; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            // Writing "0" moves the writer itself into the pod's cgroup.
            if libc::write(cg_file.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| LabError::Server { netns: netns.into(), message: format!("spawning {cmd:?}: {e}") })
}

/// Runs `f` on a fresh thread inside network namespace `name` and returns its result.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    bulkhead_netns::in_netns(name, f).map_err(|source| LabError::Sys { context: format!("running in netns {name}"), source })
}

/// Writes IPv4 sysctls (`conf/<dev>/<key>` style paths under /proc/sys/net/ipv4) inside `netns`.
///
/// /proc/sys/net resolves against the opening thread's namespace, so one thread that entered the
/// namespace can set them all without spawning `ip netns exec sysctl` per value.
pub fn set_ipv4_sysctls(netns: &str, settings: &[(String, &str)]) -> Result<()> {
    set_net_sysctls(netns, &settings.iter().map(|(k, v)| (format!("ipv4/{k}"), *v)).collect::<Vec<_>>())
}

/// Sets `/proc/sys/net/KEY` = value in `netns` (keys like `ipv6/conf/all/forwarding`).
pub fn set_net_sysctls(netns: &str, settings: &[(String, &str)]) -> Result<()> {
    in_netns(netns, || -> Result<()> {
        for (key, value) in settings {
            let path = format!("/proc/sys/net/{key}");
            std::fs::write(&path, value).map_err(|e| LabError::io(format!("{path} in netns {netns}"), e))?;
        }
        Ok(())
    })?
}
