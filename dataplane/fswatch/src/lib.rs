//! Change notification for a file datastore through inotify, so a file written to disk is
//! acted on in milliseconds rather than on the next poll. Used by the agent (policy reaches the
//! kernel) and by fw-sync (pods reach the firewalls).

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};


/// An inotify instance watching a folder tree. Dropping it closes the descriptor, which also
/// wakes a thread blocked in [`Watcher::wait`].
pub struct Watcher {
    fd: libc::c_int,
}

const MASK: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_DELETE
    | libc::IN_CREATE;

impl Watcher {
    /// Watches `dir` and every folder below it that exists now.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(context(dir, "inotify_init1", std::io::Error::last_os_error()));
        }
        let w = Watcher { fd };
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let c = CString::new(d.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{}: path contains NUL", d.display())))?;
            // SAFETY: valid fd and NUL-terminated path.
            if unsafe { libc::inotify_add_watch(w.fd, c.as_ptr(), MASK) } < 0 {
                return Err(context(&d, "inotify_add_watch", std::io::Error::last_os_error()));
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        Ok(w)
    }

    /// Blocks until something changes (or `timeout_ms` passes); returns whether anything did.
    pub fn wait(&self, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n <= 0 {
            return false;
        }
        // Drain the queue: one notification stands for all changes so far.
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

/// An OS error with the path and the call that failed in its message.
fn context(path: &Path, call: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {call}: {e}", path.display()))
}

/// The content files of a datastore folder: every `*.yaml` / `*.yml` below `dir`, in path
/// order. Hidden names (editors' and atomic writers' temporaries) are not content. The error
/// carries the folder that could not be read.
pub fn yaml_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, (std::path::PathBuf, std::io::Error)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| (d.clone(), e))?;
        for ent in rd {
            let ent = ent.map_err(|e| (d.clone(), e))?;
            let p = ent.path();
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue;
            }
            // The entry's own type, links not followed: a link to a folder (possibly a parent:
            // a loop) is never descended into; the datastore's reader decides about links.
            let is_dir = ent.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                stack.push(p);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}
