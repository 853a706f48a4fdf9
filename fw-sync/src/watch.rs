//! inotify on the datastore folder, so a pod written to disk reaches the firewall in
//! milliseconds rather than at the next reconcile. (Same approach as the agent's watcher;
//! fw-sync does not depend on the agent crate, whose build compiles the eBPF programs.)

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use crate::error::FwSyncError;

/// An inotify instance watching a folder tree.
pub struct Watcher {
    fd: libc::c_int,
}

const MASK: u32 = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE | libc::IN_CREATE;

impl Watcher {
    /// Watches `dir` and every folder below it that exists now.
    pub fn new(dir: &Path) -> Result<Self, FwSyncError> {
        let err = |detail: String| FwSyncError::Watch { path: dir.into(), detail };
        // SAFETY: plain syscall.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(err(format!("inotify_init1: {}", std::io::Error::last_os_error())));
        }
        let w = Watcher { fd };
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let c = CString::new(d.as_os_str().as_bytes()).map_err(|_| err("path contains NUL".into()))?;
            // SAFETY: valid fd and NUL-terminated path.
            if unsafe { libc::inotify_add_watch(w.fd, c.as_ptr(), MASK) } < 0 {
                return Err(err(format!("inotify_add_watch {}: {}", d.display(), std::io::Error::last_os_error())));
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        Ok(w)
    }

    /// Blocks until something changes or `timeout_ms` passes; returns whether anything did.
    /// All queued notifications are consumed: one wake-up stands for every change so far.
    pub fn wait(&self, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, timeout_ms) } <= 0 {
            return false;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a buffer we own; the fd is readable.
        unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        true
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptor once.
        unsafe { libc::close(self.fd) };
    }
}
