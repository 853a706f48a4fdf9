//! The loader's error type: what failed in the kernel or on bpffs, with the object it failed on
//! and the kernel's (or aya's) error kept as the source.

use std::path::PathBuf;

/// A failure loading, pinning, attaching or reading the eBPF programs and maps.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("network namespace {name}: {source}")]
    Netns { name: String, source: std::io::Error },
    #[error("bpffs folder {path}: {source}")]
    PinDir { path: PathBuf, source: std::io::Error },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {program}: {source}")]
    Program { program: &'static str, source: aya::programs::ProgramError },
    #[error("eBPF map {map}: {source}")]
    Map { map: &'static str, source: aya::maps::MapError },
    #[error("eBPF map {map}, entry {key}: {source}")]
    MapEntry { map: &'static str, key: String, source: aya::maps::MapError },
    #[error("eBPF map {map} pinned at {path}: {source}")]
    MapPin { map: &'static str, path: PathBuf, source: aya::maps::MapError },
    /// A map held something its writer never writes.
    #[error("eBPF map {map}: {detail}")]
    MapContent { map: &'static str, detail: String },
    /// A program or map this binary needs is not in the eBPF object built into it.
    #[error("{what} is missing from the eBPF object built into this binary")]
    Missing { what: String },
    #[error("eBPF link {what}: {source}")]
    Link { what: String, source: aya::programs::links::LinkError },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: aya::pin::PinError },
    #[error("no pinned maps in {pin_dir} (has an agent of this instance run?)")]
    NotLoaded { pin_dir: PathBuf },
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    IfindexMap(#[from] crate::ifmap::IfindexMapError),
    #[error("interface {ifname}: {detail}")]
    Interface { ifname: String, detail: String },
    /// A value given to the loader (a prefix for the uplink filter) is not valid.
    #[error("{0}")]
    Invalid(String),
}
