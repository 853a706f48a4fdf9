//! One agent per instance: an exclusive `flock` on `/run/bulkhead/<instance>.lock`, held for
//! the agent's life. A second agent on the same instance would split the detector's rings
//! and, on stop, remove the first one's pins; it is refused instead, naming the running one.
//! The kernel drops the lock when the process dies, so a `kill -9`ed agent never blocks its
//! successor.

use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::error::AgentError;

/// Folder of the instance locks (and of the instances' runtime files).
pub const RUN_DIR: &str = "/run/bulkhead";

/// Checks that an instance name is a plain name: it becomes a folder name under bpffs and
/// `/run/bulkhead`, so separators, `..` and hidden names are refused.
pub fn validate_name(name: &str) -> Result<(), AgentError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(AgentError::Instance {
            instance: name.to_string(),
            detail: "an instance name is 1-64 characters of letters, digits, '-', '_' and '.', not starting with '.'".into(),
        })
    }
}

/// The held lock of one instance; released (and its file removed) on drop.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the instance's lock, or fails naming the process that holds it.
    pub fn acquire(instance: &str) -> Result<InstanceLock, AgentError> {
        Self::acquire_in(Path::new(RUN_DIR), instance)
    }

    /// As [`InstanceLock::acquire`], with the lock folder given (unit tests).
    pub fn acquire_in(dir: &Path, instance: &str) -> Result<InstanceLock, AgentError> {
        let err = |detail: String| AgentError::Instance { instance: instance.to_string(), detail };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(format!("{instance}.lock"));
        // A holder that is leaving unlinks the file after we opened it: then the lock we got is
        // on a file nobody else will see, so open again.
        for _ in 0..8 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| err(format!("opening {}: {e}", path.display())))?;
            // SAFETY: valid fd owned by `file`.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(err(format!(
                    "another agent runs on this instance (pid {}, lock {}); stop it first",
                    if holder.is_empty() { "unknown" } else { holder },
                    path.display()
                )));
            }
            let same = match (file.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            file.set_len(0).map_err(|e| err(format!("writing {}: {e}", path.display())))?;
            file.rewind().map_err(|e| err(format!("writing {}: {e}", path.display())))?;
            write!(file, "{}", std::process::id()).map_err(|e| err(format!("writing {}: {e}", path.display())))?;
            return Ok(InstanceLock { file, path });
        }
        Err(err(format!("{} keeps being replaced", path.display())))
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // Unlink first, while still locked: a waiting agent then reopens the path.
        let _ = std::fs::remove_file(&self.path);
        // SAFETY: valid fd owned by `self.file`.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_the_lock_is_free_after_drop() {
        let dir = std::env::temp_dir().join(format!("bh-lock-test-{}", std::process::id()));
        let first = InstanceLock::acquire_in(&dir, "n1").expect("first lock");
        let e = InstanceLock::acquire_in(&dir, "n1").expect_err("second lock must be refused").to_string();
        assert!(e.contains(&std::process::id().to_string()) && e.contains("n1"), "names the holder and instance: {e}");
        let other = InstanceLock::acquire_in(&dir, "n2").expect("another instance is independent");
        drop(first);
        let again = InstanceLock::acquire_in(&dir, "n1").expect("free after drop");
        drop((again, other));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn instance_names_are_names_not_paths() {
        for bad in ["", "../x", "a/b", ".hidden", "x y", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} must be refused");
        }
        for good in ["node", "lab-1", "n_2.a"] {
            validate_name(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
    }
}
