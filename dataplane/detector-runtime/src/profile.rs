//! Behaviour profiles shared by workloads with the same labels: executables, syscall counts,
//! outbound network peers and ports, egress volume. Learned in learn mode (replicas learn
//! together: the union), judged against in monitor and protect mode, persisted as YAML under
//! the agent's state folder and exported/imported by operators (hand edits take effect).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use bulkhead_common::detect::EXEC_PATH_MAX;
use serde::{Deserialize, Serialize};

/// apiVersion and kind of a profile file.
pub const API_VERSION: &str = "bulkhead.io/v1alpha1";
pub const KIND: &str = "DetectorProfile";

/// Folder (inside the agent's state folder) of the profiles, one YAML file each.
pub const PROFILES_DIR: &str = "detector-profiles";
/// Folder (inside the state folder) where `bulkhead detector profile import` drops validated
/// profiles for the running agent to apply; the agent answers with `<file>.result.json`.
pub const IMPORT_DIR: &str = "detector-profile-import";

/// Labels that differ between replicas of one workload, so never part of a profile key.
pub const PER_REPLICA_LABELS: [&str; 5] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];

/// A profile file is bad: which field and why. Nothing of the file was applied.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {field}: {message}")]
pub struct ProfileError {
    /// The file (or "profile NAME").
    pub source_name: String,
    /// Field path, e.g. `network.egress[2].address`.
    pub field: String,
    pub message: String,
}

/// IP protocols a profile names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "ICMP")]
    Icmp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// From an IP protocol number (`None` for protocols profiles do not track).
    pub fn from_ip(p: u8) -> Option<Protocol> {
        Some(match p {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            1 => Protocol::Icmp,
            132 => Protocol::Sctp,
            _ => return None,
        })
    }
}

/// A remote end a profile allows: a workload (by its profile name, so every replica of the
/// peer counts) or an address, with port and protocol. Outbound entries name the destination
/// port; inbound entries ([`Network::ingress`]) the workload's own port the peer connected to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// The peer workload's profile name (`namespace/k=v,...`), for pods the datastore knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The peer's address, for anything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// Destination port (0 for ICMP).
    pub port: u16,
    pub protocol: Protocol,
}

/// Who a flow's remote end is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Workload(String),
    Address(IpAddr),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Workload(w) => write!(f, "{w}"),
            Peer::Address(a) => write!(f, "{a}"),
        }
    }
}

impl Egress {
    /// The peer this entry names.
    pub fn peer(&self) -> Peer {
        match (&self.workload, self.address) {
            (Some(w), _) => Peer::Workload(w.clone()),
            (None, Some(a)) => Peer::Address(a),
            (None, None) => Peer::Address(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        }
    }

    fn of(peer: &Peer, port: u16, protocol: Protocol) -> Egress {
        match peer {
            Peer::Workload(w) => Egress { workload: Some(w.clone()), address: None, port, protocol },
            Peer::Address(a) => Egress { workload: None, address: Some(*a), port, protocol },
        }
    }
}

/// Which executable started which: `parent` is the image that called exec (empty: the
/// workload's first process, started from outside it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    #[serde(default)]
    pub parent: String,
    pub child: String,
}

/// Network part of a profile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    /// Outbound destinations seen while learning.
    #[serde(default)]
    pub egress: BTreeSet<Egress>,
    /// Inbound clients seen while learning (peer, and the workload's port and protocol).
    #[serde(default)]
    pub ingress: BTreeSet<Egress>,
    /// Largest byte count (both directions) of one outbound flow seen while learning
    /// (from conntrack).
    #[serde(default)]
    pub max_flow_bytes: u64,
    /// Bytes of all outbound flows per second, highest one-second value seen while learning.
    #[serde(default)]
    pub max_egress_bytes_per_second: u64,
}

/// A behaviour profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profile {
    pub api_version: String,
    pub kind: String,
    /// `namespace/k=v,...` for label-keyed profiles, or the workload's name.
    pub name: String,
    /// The labels that key it (informational).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Executables allowed (learned, or added by hand).
    #[serde(default)]
    pub execs: BTreeSet<String>,
    /// Which executable starts which (learned). Judged in the kernel once not empty; a
    /// profile learned before lineage existed has none and is judged on paths only.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub lineage: BTreeSet<Lineage>,
    /// Interpreters seen running inline code (`-c`, `-e`, `-`) while learning; the others
    /// are killed for it (see [`is_interpreter`]).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub inline_code: BTreeSet<String>,
    /// Syscall counts while learning, by syscall number, summed over the replicas (the
    /// kernel's per-workload aggregation; highest value seen).
    #[serde(default)]
    pub syscalls: BTreeMap<u32, u64>,
    #[serde(default)]
    pub network: Network,
    /// The file-system baseline ([`super::files`]).
    #[serde(default, skip_serializing_if = "super::files::Files::is_empty")]
    pub files: super::files::Files,
    /// The syscall-sequence model (normal syscall sequences; see [`super::sequence`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall_model: Option<bulkhead_detector::CoverProfile>,
    /// Learned syscalls that did not fit under the model's cap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub syscall_model_dropped: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Profile {
    /// An empty profile.
    pub fn new(name: &str, labels: BTreeMap<String, String>) -> Profile {
        Profile {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            name: name.into(),
            labels,
            execs: BTreeSet::new(),
            lineage: BTreeSet::new(),
            inline_code: BTreeSet::new(),
            syscalls: BTreeMap::new(),
            network: Network::default(),
            files: Default::default(),
            syscall_model: None,
            syscall_model_dropped: 0,
        }
    }

    /// Whether an outbound flow to `peer` on `port`/`protocol` is in the profile; and whether
    /// the peer is known at all (on any port).
    pub fn knows(&self, peer: &Peer, port: u16, protocol: Protocol) -> (bool, bool) {
        let e = Egress::of(peer, port, protocol);
        if self.network.egress.contains(&e) {
            return (true, true);
        }
        (false, self.network.egress.iter().any(|x| &x.peer() == peer))
    }

    /// Whether an inbound flow from `peer` to the workload's `port`/`protocol` is in the profile.
    pub fn knows_inbound(&self, peer: &Peer, port: u16, protocol: Protocol) -> bool {
        self.network.ingress.contains(&Egress::of(peer, port, protocol))
    }

    /// Adds an inbound client; returns whether it was new.
    pub fn learn_ingress(&mut self, peer: &Peer, port: u16, protocol: Protocol) -> bool {
        self.network.ingress.insert(Egress::of(peer, port, protocol))
    }

    /// Adds an outbound destination; returns whether it was new.
    pub fn learn_egress(&mut self, peer: &Peer, port: u16, protocol: Protocol) -> bool {
        self.network.egress.insert(Egress::of(peer, port, protocol))
    }

    /// YAML text of the profile.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("profile is plain data")
    }

    /// Parses and validates a profile (strict: unknown fields are errors).
    pub fn from_yaml(source_name: &str, text: &str) -> Result<Profile, ProfileError> {
        let err = |field: &str, message: String| ProfileError { source_name: source_name.into(), field: field.into(), message };
        let p: Profile = serde_yaml::from_str(text).map_err(|e| {
            // serde_yaml names the path ("network.egress[1]: unknown field ...") before the message.
            let msg = e.to_string();
            match msg.split_once(": ") {
                Some((path, rest)) if !path.contains(' ') => err(path, rest.to_string()),
                _ => err("(document)", msg),
            }
        })?;
        p.validate().map_err(|(f, m)| err(&f, m))?;
        Ok(p)
    }

    /// Field-level checks beyond the types: (field path, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.api_version != API_VERSION {
            return Err(("apiVersion".into(), format!("expected {API_VERSION:?}, found {:?}", self.api_version)));
        }
        if self.kind != KIND {
            return Err(("kind".into(), format!("expected {KIND:?}, found {:?}", self.kind)));
        }
        if self.name.trim().is_empty() {
            return Err(("name".into(), "must not be empty".into()));
        }
        for (i, e) in self.execs.iter().enumerate() {
            if !e.starts_with('/') {
                return Err((format!("execs[{i}]"), format!("{e:?} is not an absolute path")));
            }
            if e.len() >= EXEC_PATH_MAX {
                return Err((format!("execs[{i}]"), format!("longer than {} bytes", EXEC_PATH_MAX - 1)));
            }
            if e.contains('\0') {
                return Err((format!("execs[{i}]"), "contains a NUL byte".into()));
            }
        }
        for (i, l) in self.lineage.iter().enumerate() {
            if !l.child.starts_with('/') || l.child.len() >= EXEC_PATH_MAX {
                return Err((format!("lineage[{i}].child"), format!("{:?} is not an absolute path shorter than {EXEC_PATH_MAX} bytes", l.child)));
            }
            if !l.parent.is_empty() && (!l.parent.starts_with('/') || l.parent.len() >= EXEC_PATH_MAX) {
                return Err((format!("lineage[{i}].parent"), format!("{:?} is neither empty nor an absolute path", l.parent)));
            }
        }
        self.files.validate()?;
        for (i, e) in self.network.egress.iter().enumerate() {
            let f = format!("network.egress[{i}]");
            match (&e.workload, &e.address) {
                (Some(_), Some(_)) => return Err((f, "set either workload or address, not both".into())),
                (None, None) => return Err((f, "set workload or address".into())),
                (Some(w), None) if w.trim().is_empty() => return Err((format!("{f}.workload"), "must not be empty".into())),
                _ => {}
            }
            if e.protocol == Protocol::Icmp && e.port != 0 {
                return Err((format!("{f}.port"), "must be 0 for ICMP".into()));
            }
        }
        Ok(())
    }
}

/// Whether an executable is an interpreter whose inline code is judged, by its file name
/// with any version suffix (`python3.11`, `php8.2`, `lua5.4`) taken off.
pub fn is_interpreter(path: &str) -> bool {
    const NAMES: [&str; 16] = [
        "python", "perl", "ruby", "node", "nodejs", "php", "lua", "luajit", "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "tclsh",
    ];
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    NAMES.contains(&stem)
}

/// The profile name of a pod: `namespace/k=v,...` over `key_labels` (all labels except the
/// per-replica ones when `None`), sorted by key.
pub fn key_of(namespace: &str, labels: &BTreeMap<String, String>, key_labels: Option<&[String]>) -> (String, BTreeMap<String, String>) {
    let chosen: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| match key_labels {
            Some(keys) => keys.iter().any(|x| x == *k),
            None => !PER_REPLICA_LABELS.contains(&k.as_str()),
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let body: Vec<String> = chosen.iter().map(|(k, v)| format!("{k}={v}")).collect();
    (format!("{namespace}/{}", body.join(",")), chosen)
}

/// File of a profile in `dir` (the name made file-safe, plus a hash so distinct names never
/// share a file).
pub fn file_of(dir: &Path, name: &str) -> PathBuf {
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    let h = bulkhead_common::detect::path_hash(name.as_bytes());
    dir.join(format!("{safe}-{:08x}.yaml", h as u32))
}

/// Reads every profile in `dir` (bad files are skipped with an error log: a hand-broken file
/// must not stop the agent; `import` is the validated way in).
pub fn load_dir(dir: &Path) -> Vec<Profile> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        match std::fs::read_to_string(&p).map_err(|e| e.to_string()).and_then(|t| Profile::from_yaml(&p.display().to_string(), &t).map_err(|e| e.to_string())) {
            Ok(profile) => out.push(profile),
            Err(e) => tracing::error!(file = %p.display(), error = %e, "detector profile unreadable; skipped"),
        }
    }
    out
}

/// Writes a profile atomically (temp file + rename).
pub fn save(dir: &Path, p: &Profile) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = file_of(dir, &p.name);
    let tmp = dir.join(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    std::fs::write(&tmp, p.to_yaml())?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn interpreters_by_name() {
        for p in ["/usr/bin/python3", "/usr/bin/python3.11", "/bin/sh", "/bin/bash", "/usr/bin/php8.2", "/usr/bin/node", "/usr/bin/perl"] {
            assert!(is_interpreter(p), "{p}");
        }
        for p in ["/bin/ls", "/usr/bin/shred", "/usr/bin/tar", "/usr/bin/grep", "/usr/sbin/nginx", "/bin/true"] {
            assert!(!is_interpreter(p), "{p}");
        }
    }

    #[test]
    fn replicas_share_a_key_without_per_replica_labels() {
        let a = key_of("d", &labels(&[("app", "web"), ("pod-template-hash", "abc")]), None);
        let b = key_of("d", &labels(&[("app", "web"), ("pod-template-hash", "xyz")]), None);
        assert_eq!(a.0, b.0);
        assert_eq!(a.0, "d/app=web");
        let c = key_of("e", &labels(&[("app", "web")]), None);
        assert_ne!(a.0, c.0, "namespace is part of the key");
        let d = key_of("d", &labels(&[("app", "web"), ("tier", "x")]), Some(&["app".to_string()]));
        assert_eq!(d.0, "d/app=web", "configured key labels");
    }

    #[test]
    fn round_trip_and_validation_names_the_field() {
        let mut p = Profile::new("d/app=web", labels(&[("app", "web")]));
        p.execs.insert("/usr/bin/nc".into());
        p.learn_egress(&Peer::Workload("d/app=db".into()), 5432, Protocol::Tcp);
        p.learn_egress(&Peer::Address("10.0.0.53".parse().unwrap()), 53, Protocol::Udp);
        p.syscalls.insert(0, 12);
        let text = p.to_yaml();
        assert_eq!(Profile::from_yaml("x", &text).expect("round trip"), p);
        assert_eq!(p.knows(&Peer::Workload("d/app=db".into()), 5432, Protocol::Tcp), (true, true));
        assert_eq!(p.knows(&Peer::Workload("d/app=db".into()), 22, Protocol::Tcp), (false, true));
        assert_eq!(p.knows(&Peer::Address("1.1.1.1".parse().unwrap()), 53, Protocol::Udp), (false, false));

        let bad_exec = text.replace("/usr/bin/nc", "usr/bin/nc");
        let e = Profile::from_yaml("f.yaml", &bad_exec).unwrap_err();
        assert_eq!(e.field, "execs[0]", "{e}");
        let bad_addr = text.replace("10.0.0.53", "10.0.0.300");
        let e = Profile::from_yaml("f.yaml", &bad_addr).unwrap_err();
        assert!(e.to_string().contains("network.egress"), "{e}");
        let typo = text.replace("maxFlowBytes", "maxFlowByte");
        let e = Profile::from_yaml("f.yaml", &typo).unwrap_err();
        assert!(e.to_string().contains("maxFlowByte"), "{e}");
        let kind = text.replace("DetectorProfile", "Profile");
        assert_eq!(Profile::from_yaml("f.yaml", &kind).unwrap_err().field, "kind");
        let both = text.replace("workload: d/app=db", "workload: d/app=db\n    address: 10.0.0.1");
        let e = Profile::from_yaml("f.yaml", &both).unwrap_err();
        assert!(e.field.starts_with("network.egress["), "{e}");
    }
}
