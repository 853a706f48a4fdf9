//! File-system baselines: what a profile learns of its workloads' file operations (directories
//! and the operations done in them, directories listed, sensitive files read), how that
//! becomes the kernel's FILE_RULES entries, and how the agent handles the file probe's events
//! (learning, findings on paths the kernel could not judge, user-space actions).
//!
//! Profiles learn directories, not file names: a log file rotated every hour, a temp file per
//! request or a per-request temp directory must not grow the profile. A directory holding
//! [`SUBTREE_AFTER`] learned subdirectories becomes `dir/**` (its whole subtree, with the
//! union of their operations).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
};

use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
use bulkhead_common::detect::{self as det, FILE_DATA_HEADER, FILE_PATH_MAX, FileDataV1, FileRuleV1, file_class, file_ops};
use serde::{Deserialize, Serialize};

/// Learned subdirectories of one directory above which it becomes `dir/**`.
pub const SUBTREE_AFTER: usize = 8;

/// Sensitive paths when a DetectorPolicy names none: secrets a server has no business reading
/// unless it did while learning (prefixes: a trailing `/` covers a folder).
pub const DEFAULT_SENSITIVE: [&str; 8] = [
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/security/opasswd",
    "/etc/ssh/ssh_host_",
    "/etc/ssl/private/",
    "/root/",
    "/proc/1/environ",
];

/// An operation a profile learns per directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileOp {
    Write,
    Create,
    Delete,
    Rename,
    Attr,
    List,
}

impl FileOp {
    const ALL: [(FileOp, u8); 6] = [
        (FileOp::Write, file_ops::WRITE),
        (FileOp::Create, file_ops::CREATE),
        (FileOp::Delete, file_ops::DELETE),
        (FileOp::Rename, file_ops::RENAME),
        (FileOp::Attr, file_ops::ATTR),
        (FileOp::List, file_ops::LIST),
    ];

    /// The operations in a kernel [`file_ops`] mask (READ_SENSITIVE is not one of them).
    pub fn from_mask(mask: u8) -> Vec<FileOp> {
        Self::ALL.iter().filter(|(_, b)| mask & b != 0).map(|(o, _)| *o).collect()
    }

    fn mask(ops: &BTreeSet<FileOp>) -> u32 {
        Self::ALL.iter().filter(|(o, _)| ops.contains(o)).fold(0u32, |m, (_, b)| m | *b as u32)
    }

    /// Lower-case name, as in profiles and findings.
    pub fn name(self) -> &'static str {
        match self {
            FileOp::Write => "write",
            FileOp::Create => "create",
            FileOp::Delete => "delete",
            FileOp::Rename => "rename",
            FileOp::Attr => "attr",
            FileOp::List => "list",
        }
    }
}

/// The file part of a profile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Files {
    /// Directories (absolute, no trailing `/`; `dir/**` for a subtree) and the operations
    /// seen in them.
    #[serde(default)]
    pub dirs: BTreeMap<String, BTreeSet<FileOp>>,
    /// Sensitive files read while learning (exact paths).
    #[serde(default)]
    pub sensitive_reads: BTreeSet<String>,
}

/// The parent directory of an absolute, lexically normal path (`/` for `/x`).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

impl Files {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.sensitive_reads.is_empty()
    }

    /// The operations allowed in directory `dir`: its own entry's, and those of every `**`
    /// entry at or above it.
    fn allowed_in(&self, dir: &str) -> BTreeSet<FileOp> {
        let mut out = self.dirs.get(dir).cloned().unwrap_or_default();
        for (k, ops) in &self.dirs {
            if let Some(base) = k.strip_suffix("/**") {
                let base = if base.is_empty() { "/" } else { base };
                if is_under(dir, base) {
                    out.extend(ops);
                }
            }
        }
        out
    }

    /// Whether the profile allows `ops` on `path` (a file's path; for [`FileOp::List`] the
    /// listed directory).
    pub fn allows(&self, ops: &[FileOp], path: &str) -> bool {
        let dir = if ops.contains(&FileOp::List) { path } else { parent(path) };
        let have = self.allowed_in(dir);
        ops.iter().all(|o| have.contains(o))
    }

    /// Learns `ops` on `path` (as [`Files::allows`]); returns whether the profile changed.
    pub fn learn(&mut self, ops: &[FileOp], path: &str) -> bool {
        if ops.is_empty() || self.allows(ops, path) {
            return false;
        }
        let dir = if ops.contains(&FileOp::List) { path.to_string() } else { parent(path).to_string() };
        self.dirs.entry(dir.clone()).or_default().extend(ops.iter().copied());
        // Many learned subdirectories of one directory: its subtree.
        if dir != "/" {
            let up = parent(&dir).to_string();
            let children: Vec<String> = self.dirs.keys().filter(|k| !k.ends_with("/**") && parent(k) == up).cloned().collect();
            if children.len() >= SUBTREE_AFTER {
                let key = if up == "/" { "/**".to_string() } else { format!("{up}/**") };
                let mut ops = self.dirs.remove(&key).unwrap_or_default();
                for c in children {
                    // Everything below a child now falls under the subtree too.
                    let below: Vec<String> = self.dirs.keys().filter(|k| is_under(k.trim_end_matches("/**"), &c)).cloned().collect();
                    for b in below {
                        ops.extend(self.dirs.remove(&b).unwrap_or_default());
                    }
                }
                self.dirs.insert(key, ops);
            }
        }
        true
    }

    /// Learns a read of a sensitive file; returns whether the profile changed.
    pub fn learn_sensitive_read(&mut self, path: &str) -> bool {
        self.sensitive_reads.insert(path.to_string())
    }

    /// Field-level checks: (field path, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, d) in self.dirs.keys().enumerate() {
            let base = d.strip_suffix("/**").map(|b| if b.is_empty() { "/" } else { b }).unwrap_or(d);
            check_path(base).map_err(|m| (format!("files.dirs[{i}]"), format!("{d:?}: {m}")))?;
        }
        for (i, p) in self.sensitive_reads.iter().enumerate() {
            check_path(p).map_err(|m| (format!("files.sensitiveReads[{i}]"), format!("{p:?}: {m}")))?;
        }
        Ok(())
    }
}

/// Whether `p` is an absolute, lexically normal path the kernel can hold.
pub fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err("not an absolute path".into());
    }
    if p.len() >= FILE_PATH_MAX - 1 {
        return Err(format!("longer than {} bytes", FILE_PATH_MAX - 2));
    }
    if p.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    if p.len() > 1 && (p.contains("//") || p.split('/').any(|s| s == "." || s == "..")) {
        return Err("not in normal form (no `.`, `..` or `//`)".into());
    }
    Ok(())
}

/// A workload's file-baseline settings (from its DetectorPolicy's `files`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileConfig {
    /// Sensitive path prefixes (a read outside the profile is `file-sensitive-read`).
    pub sensitive_paths: Vec<String>,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig { sensitive_paths: DEFAULT_SENSITIVE.iter().map(|s| s.to_string()).collect() }
    }
}

/// The kernel entries of one profile: (class, path bytes) -> rule.
pub type RulePlan = BTreeMap<(u8, Vec<u8>), FileRuleV1>;

/// The FILE_RULES entries for a profile's files and its workloads' sensitive prefixes.
pub fn plan(files: &Files, sensitive: &BTreeSet<String>) -> RulePlan {
    let mut out = RulePlan::new();
    let with_slash = |d: &str| if d == "/" { "/".to_string() } else { format!("{d}/") };
    // Every directory key: the exact entries and the bases of the `**` entries.
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for d in files.dirs.keys() {
        dirs.insert(d.strip_suffix("/**").map(|b| if b.is_empty() { "/".to_string() } else { b.to_string() }).unwrap_or_else(|| d.clone()));
    }
    for d in dirs {
        let ops = files.dirs.get(&d).map(FileOp::mask).unwrap_or(0);
        // The trie answers with the longest match only: each entry carries the subtree
        // operations of every `**` at or above it.
        let sub = files
            .dirs
            .iter()
            .filter_map(|(k, o)| k.strip_suffix("/**").map(|b| (if b.is_empty() { "/" } else { b }, o)))
            .filter(|(b, _)| is_under(&d, b))
            .fold(0u32, |m, (_, o)| m | FileOp::mask(o));
        let path = with_slash(&d);
        if path.len() >= FILE_PATH_MAX {
            continue;
        }
        out.insert((file_class::DIR, path.clone().into_bytes()), FileRuleV1 { ops, subtree_ops: sub, path_len: path.len() as u32, _pad: 0 });
    }
    for s in sensitive {
        if s.len() < FILE_PATH_MAX {
            out.insert((file_class::SENSITIVE, s.clone().into_bytes()), FileRuleV1 { path_len: s.len() as u32, ..Default::default() });
        }
    }
    for r in &files.sensitive_reads {
        if r.len() < FILE_PATH_MAX {
            out.insert((file_class::READ, r.clone().into_bytes()), FileRuleV1 { path_len: r.len() as u32, ..Default::default() });
        }
    }
    out
}

/// The LPM key of a rule of profile `id`.
pub fn key(id: u32, class: u8, path: &[u8]) -> Key<FileDataV1> {
    let mut data = FileDataV1 { class, profile_id_be: id.to_be_bytes(), ..Default::default() };
    let n = path.len().min(FILE_PATH_MAX);
    data.path[..n].copy_from_slice(&path[..n]);
    Key::new((FILE_DATA_HEADER + n as u32) * 8, data)
}

/// The one writer of FILE_RULES (the event thread learns, the agent thread changes modes and
/// imports: both go through this, under a lock, so neither removes what the other wrote).
pub struct FileRules {
    map: LpmTrie<MapData, FileDataV1, FileRuleV1>,
    /// What is in the map, per profile id.
    written: BTreeMap<u32, RulePlan>,
}

impl FileRules {
    /// Opens the pinned map and reads what an earlier agent left in it.
    pub fn open(pin_dir: &Path) -> Result<FileRules, String> {
        let path = pin_dir.join(det::map_names::FILE_RULES);
        let data = MapData::from_pin(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let map = LpmTrie::try_from(aya::maps::Map::LpmTrie(data)).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut written: BTreeMap<u32, RulePlan> = BTreeMap::new();
        for k in map.keys().flatten() {
            let k: Key<FileDataV1> = k;
            let d: FileDataV1 = k.data();
            let n = ((k.prefix_len() / 8).saturating_sub(FILE_DATA_HEADER) as usize).min(FILE_PATH_MAX);
            let v = map.get(&k, 0).unwrap_or_default();
            written.entry(u32::from_be_bytes(d.profile_id_be)).or_default().insert((d.class, d.path[..n].to_vec()), v);
        }
        Ok(FileRules { map, written })
    }

    /// Makes profile `id`'s entries `want`: writes what is new or changed, then removes the
    /// rest (a longer, stale entry would shadow a shorter one in the trie).
    pub fn sync(&mut self, id: u32, want: &RulePlan) -> Result<(), String> {
        let had = self.written.remove(&id).unwrap_or_default();
        let mut now = RulePlan::new();
        let mut failed = None;
        for ((class, path), rule) in want {
            if had.get(&(*class, path.clone())) != Some(rule) {
                if let Err(e) = self.map.insert(&key(id, *class, path), rule, 0) {
                    failed = Some(format!("{}: {e}", det::map_names::FILE_RULES));
                    continue;
                }
            }
            now.insert((*class, path.clone()), *rule);
        }
        for (class, path) in had.keys() {
            if !want.contains_key(&(*class, path.clone())) && self.map.remove(&key(id, *class, path)).is_err() {
                // Still there: remembered so a later sync retries.
                now.insert((*class, path.clone()), had[&(*class, path.clone())]);
            }
        }
        self.written.insert(id, now);
        failed.map_or(Ok(()), Err)
    }

    /// Removes every entry of profile `id`.
    pub fn clear(&mut self, id: u32) -> Result<(), String> {
        self.sync(id, &RulePlan::new())
    }
}

/// The absolute path a file event names: the path as given when absolute, else joined to the
/// process's working directory or the directory fd, made lexically normal. Paths are seen as
/// the process sees them (its root stripped from what /proc shows). `None` when the process
/// is gone or the fd unknown.
pub fn resolve(pid: u32, dirfd: i32, path: &str) -> Option<String> {
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        let base = if dirfd == -100 { format!("/proc/{pid}/cwd") } else { format!("/proc/{pid}/fd/{dirfd}") };
        let mut b = std::fs::read_link(base).ok()?;
        if let Ok(root) = std::fs::read_link(format!("/proc/{pid}/root")) {
            if root != Path::new("/") {
                if let Ok(rel) = b.strip_prefix(&root) {
                    b = Path::new("/").join(rel);
                }
            }
        }
        b.join(path)
    };
    let mut out: Vec<String> = Vec::new();
    for c in joined.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    Some(format!("/{}", out.join("/")))
}

/// Whether `path` falls under one of the sensitive prefixes.
pub fn is_sensitive(path: &str, sensitive: &[String]) -> bool {
    sensitive.iter().any(|s| path.starts_with(s.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(o: &[FileOp]) -> Vec<FileOp> {
        o.to_vec()
    }

    #[test]
    fn learns_directories_not_files_and_generalises_per_request_folders() {
        let mut f = Files::default();
        use FileOp::*;
        // Log rotation and temp files: a handful of directories whatever the file names.
        for i in 0..50 {
            f.learn(&ops(&[Write, Create]), "/var/log/app/app.log");
            f.learn(&ops(&[Rename]), &format!("/var/log/app/app.log.{i}"));
            f.learn(&ops(&[Delete]), &format!("/var/log/app/app.log.{}", i + 5));
            f.learn(&ops(&[Write, Create]), &format!("/tmp/tmp{i:08x}"));
        }
        assert_eq!(f.dirs.len(), 2, "{f:?}");
        assert!(f.allows(&[Write], "/var/log/app/other.log"));
        assert!(!f.allows(&[Attr], "/var/log/app/app.log"), "an operation never seen");
        assert!(!f.allows(&[Write], "/var/log/app/sub/x"), "a subdirectory is not the directory");
        assert!(!f.allows(&[Create], "/etc/cron.d/evil"));
        // Per-request folders: the parent becomes a subtree after SUBTREE_AFTER of them.
        for i in 0..SUBTREE_AFTER {
            f.learn(&ops(&[Create]), &format!("/srv/cache/req{i}"));
            f.learn(&ops(&[Write, Create]), &format!("/srv/cache/req{i}/body"));
        }
        assert!(f.dirs.contains_key("/srv/cache/**"), "{f:?}");
        assert!(f.allows(&[Write, Create], "/srv/cache/req999/body"), "a new request folder");
        assert!(f.allows(&[Create], "/srv/cache/req999"));
        assert!(!f.dirs.keys().any(|k| k.starts_with("/srv/cache/req")), "children folded: {f:?}");
        assert!(!f.allows(&[Write], "/srv/other/x"));
        // The same input again changes nothing.
        let before = f.clone();
        assert!(!f.learn(&ops(&[Write]), "/srv/cache/req5/body"));
        assert_eq!(f, before);
        f.validate().expect("learned paths are valid");
    }

    #[test]
    fn kernel_plan_carries_subtree_operations_down() {
        use FileOp::*;
        let mut f = Files::default();
        f.dirs.insert("/data/**".into(), [Write, Create].into());
        f.dirs.insert("/data/x".into(), [List].into());
        f.dirs.insert("/".into(), [List].into());
        f.sensitive_reads.insert("/etc/shadow".into());
        let p = plan(&f, &["/etc/shadow".to_string()].into());
        let x = p[&(file_class::DIR, b"/data/x/".to_vec())];
        assert_eq!(x.ops, file_ops::LIST as u32);
        assert_eq!(x.subtree_ops, (file_ops::WRITE | file_ops::CREATE) as u32, "the ancestor's ** reaches below /data/x");
        assert_eq!(x.path_len, 8);
        let d = p[&(file_class::DIR, b"/data/".to_vec())];
        assert_eq!((d.ops, d.subtree_ops), (0, (file_ops::WRITE | file_ops::CREATE) as u32));
        assert_eq!(p[&(file_class::DIR, b"/".to_vec())].path_len, 1);
        assert!(p.contains_key(&(file_class::SENSITIVE, b"/etc/shadow".to_vec())));
        assert!(p.contains_key(&(file_class::READ, b"/etc/shadow".to_vec())));
        let k = key(7, file_class::DIR, b"/data/");
        assert_eq!(k.prefix_len(), (FILE_DATA_HEADER + 6) * 8);
        assert_eq!(k.data().profile_id_be, [0, 0, 0, 7]);
    }

    #[test]
    fn paths_are_checked_and_resolved() {
        assert!(check_path("/etc/cron.d").is_ok());
        assert!(check_path("/").is_ok());
        for bad in ["etc", "/etc/../x", "/a//b", "/a/./b", &format!("/{}", "a".repeat(300))] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        let me = std::process::id();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(resolve(me, -100, "a/../b/./c").unwrap(), cwd.join("b/c").to_string_lossy());
        assert_eq!(resolve(me, -100, "/etc/../etc//shadow").unwrap(), "/etc/shadow");
        assert_eq!(resolve(u32::MAX, -100, "x"), None, "a process that is gone");
        assert_eq!(parent("/x"), "/");
        assert_eq!(parent("/a/b"), "/a");
        assert!(is_sensitive("/etc/shadow-", &["/etc/shadow".to_string()]));
        assert!(!is_sensitive("/etc/passwd", &["/etc/shadow".to_string()]));
    }
}
