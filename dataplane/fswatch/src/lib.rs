//! Change notification for a file datastore through inotify, so a file written to disk is
//! acted on in milliseconds rather than on the next poll. Used by the agent (policy reaches the
//! kernel) and by fw-sync (pods reach the firewalls).

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

/// An inotify instance watching a folder tree. Dropping it closes the descriptor, which also
/// wakes a thread blocked in [`Watcher::wait`].
pub struct Watcher {
    fd: libc::c_int,
    root: std::path::PathBuf,
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
        let w = Watcher { fd, root: dir.to_path_buf() };
        w.watch_tree()?;
        Ok(w)
    }

    /// Adds a watch on every folder of the tree (adding one twice is harmless).
    fn watch_tree(&self) -> std::io::Result<()> {
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            let c = CString::new(d.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{}: path contains NUL", d.display())))?;
            // SAFETY: valid fd and NUL-terminated path.
            if unsafe { libc::inotify_add_watch(self.fd, c.as_ptr(), MASK) } < 0 {
                return Err(context(&d, "inotify_add_watch", std::io::Error::last_os_error()));
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                // The entry's own type: a link to a folder is not descended into.
                stack.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
            }
        }
        Ok(())
    }

    /// Blocks until something changes (or `timeout_ms` passes); returns whether anything did.
    pub fn wait(&self, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n <= 0 {
            return false;
        }
        // Drain the queue: one notification stands for all changes so far (a queue overflow
        // is an event too, so it also wakes the reader, who re-reads everything).
        let mut buf = [0u8; 4096];
        // SAFETY: reading into a buffer we own; the fd is readable.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        // A folder created (or moved in) since the last call gets its watch now; files written
        // into it before that are found by the reader's re-read, which this notification
        // causes. Only then is the tree walked: a file event costs no directory listing.
        if new_folder(&buf[..n.max(0) as usize]) {
            let _ = self.watch_tree();
        }
        true
    }
}

/// Whether a buffer of `inotify_event`s reports a folder created or moved in, or lost events
/// (a queue overflow: anything may have happened).
fn new_folder(mut buf: &[u8]) -> bool {
    const HDR: usize = std::mem::size_of::<libc::inotify_event>();
    while buf.len() >= HDR {
        let mask = u32::from_ne_bytes(buf[4..8].try_into().expect("4 bytes"));
        let len = u32::from_ne_bytes(buf[12..16].try_into().expect("4 bytes")) as usize;
        if mask & libc::IN_Q_OVERFLOW != 0 || (mask & libc::IN_ISDIR != 0 && mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0) {
            return true;
        }
        buf = buf.get(HDR + len..).unwrap_or(&[]);
    }
    false
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
    // Path order (component by component) as bytes with the separator lowest: the same order,
    // without taking every path apart on every comparison (a folder of 10k files).
    out.sort_by_cached_key(|p| p.as_os_str().as_bytes().iter().map(|&b| if b == b'/' { 0 } else { b }).collect::<Vec<u8>>());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary folder removed however the test ends.
    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("bh-fswatch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp folder");
        TempDir(d)
    }

    #[test]
    fn a_folder_created_after_the_watch_starts_is_watched() {
        let dir = temp("new-folder");
        let w = Watcher::new(&dir.0).expect("watcher");
        std::fs::create_dir(dir.0.join("sub")).expect("subfolder");
        assert!(w.wait(2000), "creating a subfolder was not seen");
        assert!(!w.wait(50), "a wake with no change");
        std::fs::write(dir.0.join("sub").join("p.yaml"), "x").expect("file in the new subfolder");
        assert!(w.wait(2000), "a file written into the new subfolder was not seen");
        assert_eq!(yaml_files(&dir.0).expect("listing"), vec![dir.0.join("sub").join("p.yaml")]);
    }

    #[test]
    fn files_come_in_path_order() {
        let dir = temp("order");
        for d in ["a", "a-b"] {
            std::fs::create_dir_all(dir.0.join(d)).expect("folder");
        }
        for f in ["a/z.yaml", "a-b/a.yaml", "a.yaml", "b.yml"] {
            std::fs::write(dir.0.join(f), "x").expect("file");
        }
        let got = yaml_files(&dir.0).expect("listing");
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want, "not the order of Path's own comparison");
        assert_eq!(got.len(), 4);
    }
}
