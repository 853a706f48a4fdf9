//! Where the agent reads the cluster's state from. The file datastore reads a folder of
//! Kubernetes-style YAML; a Kubernetes API datastore will implement the same trait.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use policy_compiler::{k8s::Resource, model::Model};

use crate::{detect::policy::DetectorInput, error::AgentError};

/// Called by a datastore with `true` when its content may have changed, or `false` as a
/// liveness check; returns false once nobody listens any more (the agent stopped).
pub type Notify = Box<dyn Fn(bool) -> bool + Send + Sync>;

/// A source of the policy model.
pub trait Datastore: Send {
    /// Reads the whole model. Documents the datastore rejects on their own (a bad file) are
    /// left out or kept at their last good version, and listed by [`Datastore::rejected`];
    /// an error here (a model that does not hold together) means nothing applies.
    fn load(&mut self) -> Result<Model, AgentError>;
    /// Cheap check whether the content may have changed since the last call.
    fn poll_changed(&mut self) -> bool;
    /// Human-readable location, for logs.
    fn describe(&self) -> String;
    /// The detector's documents (DetectorPolicies and pod cgroup annotations) of the last
    /// [`Datastore::load`]. A bad policy fails the whole read (and the sync: nothing applies).
    fn load_detector(&self) -> Result<DetectorInput, AgentError> {
        Ok(DetectorInput::default())
    }
    /// What the last [`Datastore::load`] rejected, each naming its file, document and field.
    fn rejected(&self) -> Vec<String> {
        Vec::new()
    }
    /// Starts telling `notify` about changes (an agent that watches its datastore).
    fn subscribe(&mut self, notify: Notify) -> Result<(), AgentError>;
    /// Where the detector's Quarantines for `node` go for fw-sync
    /// ([`crate::detect::perimeter`]); `None` where they cannot.
    fn quarantine_store(&self, _node: &str) -> Option<Box<dyn crate::detect::perimeter::QuarantineStore>> {
        None
    }
}

/// Largest datastore file read, in bytes; a bigger file is rejected without being read, so a
/// huge or endless file cannot grow the agent.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// A folder of `*.yaml` / `*.yml` files (searched recursively, in name order) holding
/// Namespaces, Pods and policies, several documents per file allowed.
///
/// No file can stop or loosen it: only regular files are read (FIFOs, devices and sockets
/// are refused before they are opened, and opened non-blocking), links only when they stay
/// inside the folder, each file up to [`MAX_FILE_BYTES`]. A file that cannot be read or
/// parsed is rejected on its own, as an API server rejects one object: its last good version
/// stays in force (or nothing, if it never had one) and every other file still applies. An
/// empty file is reported and, like a bad one, keeps its last good version: an editor's
/// truncate-then-write must not drop a deny for a moment; removing the file removes its
/// documents.
pub struct FileDatastore {
    dir: PathBuf,
    last_fingerprint: Vec<(PathBuf, Stamp)>,
    /// Last good version of each file. A file whose stamp is unchanged is not read or parsed
    /// again, so a change to one file of thousands costs one parse, not thousands.
    good: HashMap<PathBuf, Version>,
    /// The texts the last load used that hold detector documents, by display name, in name
    /// order.
    current: Vec<(String, String)>,
    rejected: Vec<String>,
}

/// What identifies one version of a file without reading it: inode (an atomic rename-into-place
/// brings a new one), size, and modification and change times to the nanosecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp { ino: m.ino(), len: m.len(), mtime: (m.mtime(), m.mtime_nsec()), ctime: (m.ctime(), m.ctime_nsec()) }
    }
}

/// One good version of a file.
#[derive(Clone)]
struct Version {
    /// `None` when it was read while changing (its stamp moved during the read): never reused.
    stamp: Option<Stamp>,
    text: Arc<str>,
    docs: Arc<[Resource]>,
    /// Whether it holds detector documents (DetectorPolicies, cgroup annotations).
    detector: bool,
}

impl FileDatastore {
    /// A datastore over `dir`; the folder must exist.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, AgentError> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(AgentError::Datastore { path: dir, detail: "not a folder".into() });
        }
        Ok(FileDatastore { dir, last_fingerprint: Vec::new(), good: HashMap::new(), current: Vec::new(), rejected: Vec::new() })
    }

    fn files(&self) -> Result<Vec<PathBuf>, AgentError> {
        bulkhead_fswatch::yaml_files(&self.dir)
            .map_err(|(path, e)| AgentError::Datastore { path, detail: e.to_string() })
    }

    fn fingerprint(&self) -> Vec<(PathBuf, Stamp)> {
        let Ok(files) = self.files() else { return Vec::new() };
        files
            .into_iter()
            .filter_map(|p| {
                // The entry itself (a link is not followed): stat never blocks or reads.
                let m = std::fs::symlink_metadata(&p).ok()?;
                Some((p, Stamp::of(&m)))
            })
            .collect()
    }

    /// The stamp of what reading `p` reads (a link's target), if it can be taken.
    fn stamp(p: &Path) -> Option<Stamp> {
        std::fs::metadata(p).ok().map(|m| Stamp::of(&m))
    }

    fn display_name(&self, p: &Path) -> String {
        p.strip_prefix(&self.dir).unwrap_or(p).display().to_string()
    }

    /// Reads and checks one file: its text and policy documents when it is readable and both
    /// the policy and the detector parsers accept it.
    fn check_file(&self, p: &Path) -> Result<Version, String> {
        let name = self.display_name(p);
        let before = Self::stamp(p);
        let text = read_bounded(&self.dir, p).map_err(|e| format!("{name}: {e}"))?;
        // Reused later only if nothing changed it while it was read.
        let stamp = before.filter(|b| Self::stamp(p) == Some(*b));
        if text.trim().is_empty() {
            return Err(format!("{name}: empty file (no documents)"));
        }
        let docs = policy_compiler::k8s::parse_documents(&name, &text).map_err(|e| e.to_string())?;
        let mut det = DetectorInput::default();
        crate::detect::policy::parse_documents(&name, &text, &mut det)?;
        let detector = !det.policies.is_empty() || !det.cgroups.is_empty();
        Ok(Version { stamp, text: text.into(), docs: docs.into(), detector })
    }
}

/// Reads a datastore file without ever blocking or reading more than [`MAX_FILE_BYTES`].
fn read_bounded(dir: &Path, p: &Path) -> Result<String, String> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let meta = std::fs::symlink_metadata(p).map_err(|e| e.to_string())?;
    let target = if meta.file_type().is_symlink() {
        let t = std::fs::canonicalize(p).map_err(|e| format!("link: {e}"))?;
        let root = std::fs::canonicalize(dir).map_err(|e| e.to_string())?;
        if !t.starts_with(&root) {
            return Err(format!("a link to {}, outside the datastore folder: not read", t.display()));
        }
        t
    } else {
        p.to_path_buf()
    };
    let kind = std::fs::symlink_metadata(&target).map_err(|e| e.to_string())?;
    if !kind.is_file() {
        return Err("not a regular file (a FIFO, device, socket or folder): not read".into());
    }
    if kind.len() > MAX_FILE_BYTES {
        return Err(format!("{} bytes, over the {MAX_FILE_BYTES}-byte limit: not read", kind.len()));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(&target)
        .map_err(|e| e.to_string())?;
    // Checked again on the open file: the entry may have been swapped since the stat.
    let m = f.metadata().map_err(|e| e.to_string())?;
    if !m.is_file() {
        return Err("not a regular file: not read".into());
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("over the {MAX_FILE_BYTES}-byte limit: not read"));
    }
    String::from_utf8(buf).map_err(|e| format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

impl Datastore for FileDatastore {
    fn load(&mut self) -> Result<Model, AgentError> {
        let files = self.files()?;
        let mut current = Vec::new();
        let mut rejected = Vec::new();
        let mut good = HashMap::with_capacity(self.good.len());
        let mut resources = Vec::new();
        for p in files {
            let name = self.display_name(&p);
            let unchanged = self.good.get(&p).filter(|v| v.stamp.is_some() && v.stamp == Self::stamp(&p));
            let version = match unchanged.cloned().map_or_else(|| self.check_file(&p), Ok) {
                Ok(v) => v,
                Err(e) => match self.good.get(&p) {
                    Some(old) => {
                        rejected.push(format!("{e} (its last good version stays in force)"));
                        old.clone()
                    }
                    None => {
                        rejected.push(format!("{e} (its documents are not applied)"));
                        continue;
                    }
                },
            };
            resources.extend(version.docs.iter().cloned());
            if version.detector {
                current.push((name, version.text.to_string()));
            }
            good.insert(p, version);
        }
        let model = policy_compiler::k8s::build_model(resources)
            .map_err(|e| AgentError::Invalid(format!("{}: {e}", self.dir.display())))?;
        // Only a load that holds together moves the last good versions on.
        self.good = good;
        self.current = current;
        self.rejected = rejected;
        Ok(model)
    }

    fn poll_changed(&mut self) -> bool {
        let fp = self.fingerprint();
        if fp != self.last_fingerprint {
            self.last_fingerprint = fp;
            true
        } else {
            false
        }
    }

    fn describe(&self) -> String {
        format!("file datastore {}", self.dir.display())
    }

    fn load_detector(&self) -> Result<DetectorInput, AgentError> {
        let mut input = DetectorInput::default();
        for (name, text) in &self.current {
            crate::detect::policy::parse_documents(name, text, &mut input)
                .map_err(|e| AgentError::Invalid(format!("{}: {e}", self.dir.display())))?;
        }
        Ok(input)
    }

    fn rejected(&self) -> Vec<String> {
        self.rejected.clone()
    }

    /// A thread turns inotify events on the folder into notifications; it ends when the
    /// notification is refused (the agent is gone).
    fn quarantine_store(&self, node: &str) -> Option<Box<dyn crate::detect::perimeter::QuarantineStore>> {
        Some(Box::new(crate::detect::perimeter::FileStore::new(&self.dir, node)))
    }

    fn subscribe(&mut self, notify: Notify) -> Result<(), AgentError> {
        let dir = self.dir.clone();
        let w = bulkhead_fswatch::Watcher::new(&dir)
            .map_err(|e| AgentError::Datastore { path: dir.clone(), detail: format!("watching for changes: {e}") })?;
        std::thread::Builder::new()
            .name("bh-watch".into())
            .spawn(move || {
                // The timeout only bounds how long a stopped agent goes unnoticed.
                while notify(w.wait(500)) {}
            })
            .map_err(|_| AgentError::Stopped)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(port: u16) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: a}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - ports: [{{port: {port}}}]\n"
        )
    }

    fn policy_text(m: &Model) -> String {
        format!("{:?}", m.policies.values().next().expect("one policy"))
    }

    /// A temporary folder removed however the test ends.
    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn an_in_place_edit_of_the_same_size_is_read_and_unchanged_files_are_reused() {
        let dir = TempDir(std::env::temp_dir().join(format!("bh-ds-test-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).expect("temp folder");
        std::fs::write(dir.0.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").expect("write");
        let f = dir.0.join("p.yaml");
        std::fs::write(&f, policy(8080)).expect("write");
        let mut s = FileDatastore::new(&dir.0).expect("datastore");
        let first = policy_text(&s.load().expect("load"));
        assert!(first.contains("8080"), "{first}");
        let ns_text = s.good[&dir.0.join("ns.yaml")].text.clone();
        // Same length, same inode: only the times and the content differ.
        std::fs::write(&f, policy(8081)).expect("rewrite");
        let second = policy_text(&s.load().expect("load"));
        assert!(second.contains("8081"), "the edit was not read: {second}");
        // The untouched file's version is the very same allocation: not read again.
        assert!(Arc::ptr_eq(&ns_text, &s.good[&dir.0.join("ns.yaml")].text), "an unchanged file was read again");
    }
}
