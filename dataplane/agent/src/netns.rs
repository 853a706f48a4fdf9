//! Network namespaces by name (`/var/run/netns/<name>`, as `ip netns` makes them).

use std::{fs::File, os::fd::AsRawFd as _, path::PathBuf};

use crate::error::AgentError;

/// Path of a named network namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// Moves the calling thread into the named network namespace. Network namespaces are a
/// per-thread attribute, so only this thread moves; callers dedicate a thread to it.
pub fn enter(name: &str) -> Result<(), AgentError> {
    let p = path(name);
    let f = File::open(&p).map_err(|e| AgentError::Netns { name: name.to_string(), source: e })?;
    // SAFETY: setns on a valid fd; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(AgentError::Netns { name: name.to_string(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// Interface index of `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Option<u32> {
    let c = std::ffi::CString::new(ifname).ok()?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}
