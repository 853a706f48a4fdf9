//! Loads the embedded eBPF object, pins its maps under the agent's bpffs folder and attaches
//! the programs to pod interfaces (tcx on both directions; the XDP pre-filter only on request,
//! see [`XDP_PREFILTER_ENV`]).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::{
        LinkOrder, RawTracePoint, SchedClassifier, TcAttachType, TracePoint, Xdp,
        raw_trace_point::RawTracePointLinkId,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::{XdpLinkId, XdpMode},
    },
};
use bulkhead_common::detect::{self as det, AllowKey6V1, AllowKeyV2, ExecKeyV1, SyscallKeyV1, WorkloadV1};
use bulkhead_common::{
    ConfigV2, IpCacheKeyV1, IpInfoV3, IpSlot6V1, IpSlotV1, PeerKeyV2, PeerSliceV1, PolicyStatsV1,
    PolicyValueV2, PortKeyV1, map_names,
};

use crate::{error::DataplaneError, netns};

/// The compiled eBPF object, built by build.rs from dataplane-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bulkhead-ebpf"));

/// Program names in the object.
pub mod programs {
    pub const FROM_POD: &str = "bh_from_pod";
    pub const TO_POD: &str = "bh_to_pod";
    pub const XDP_PREFILTER: &str = "bh_xdp_prefilter";
    /// The uplink pre-filter ([`crate::uplink`]).
    pub const XDP_UPLINK: &str = "bh_xdp_uplink";
    /// Detector probes (tracepoints).
    pub const EXEC: &str = "bh_exec";
    pub const FORK: &str = "bh_fork";
    /// The syscall probe: raw tracepoint `sys_enter`. Attaching any sys_enter tracepoint sets
    /// a work flag on every task, which sends every syscall of the machine through the slow
    /// entry path.
    pub const SYS_ENTER: &str = "bh_sys_enter";
    /// The file probe ([`super::FILE_TRACEPOINTS`]): file-system baselines.
    pub const FILE: &str = "bh_file";
}

/// The `syscalls` tracepoints the file probe is attached to: the calls that change the file
/// system, and open (listings, sensitive reads). Attaching any of them sets the syscall
/// tracing flag on every task (every syscall takes the slower entry path), so the probe is
/// attached only while a workload has a file baseline. fchmod/fchown/ftruncate act on an
/// fd, not a path: not judged.
pub const FILE_TRACEPOINTS: [&str; 23] = [
    "sys_enter_open",
    "sys_enter_openat",
    "sys_enter_openat2",
    "sys_enter_creat",
    "sys_enter_truncate",
    "sys_enter_mkdir",
    "sys_enter_mkdirat",
    "sys_enter_unlink",
    "sys_enter_unlinkat",
    "sys_enter_rmdir",
    "sys_enter_rename",
    "sys_enter_renameat",
    "sys_enter_renameat2",
    "sys_enter_link",
    "sys_enter_linkat",
    "sys_enter_symlink",
    "sys_enter_symlinkat",
    "sys_enter_chmod",
    "sys_enter_fchmodat",
    "sys_enter_fchmodat2",
    "sys_enter_chown",
    "sys_enter_lchown",
    "sys_enter_fchownat",
];

/// Tracepoints of the detector probes: (program, category, name). The syscall probe is a raw
/// tracepoint (`sys_enter`), see [`Dataplane::set_syscall_probe`].
const TRACEPOINTS: [(&str, &str, &str); 2] =
    [(programs::EXEC, "sched", "sched_process_exec"), (programs::FORK, "sched", "sched_process_fork")];

/// Folder (inside the pin folder) of links pinned by [`Dataplane::pin_links`].
const LINKS_DIR: &str = "links";

pub(crate) const ALL_MAPS: [&str; 50] = [
    map_names::ENDPOINTS,
    map_names::UPLINK_DENY,
    map_names::UPLINK_DENY6,
    map_names::EGRESS_BYTES,
    map_names::FLOW_WATCH,
    map_names::ENDPOINTS_DIRECT,
    map_names::IPHOST[0],
    map_names::IPHOST[1],
    map_names::IPSLOT[0],
    map_names::IPSLOT[1],
    map_names::IPCACHE[0],
    map_names::IPCACHE[1],
    map_names::IPHOST6[0],
    map_names::IPHOST6[1],
    map_names::IPSLOT6[0],
    map_names::IPSLOT6[1],
    map_names::IPCACHE6[0],
    map_names::IPCACHE6[1],
    map_names::SCRATCH6,
    map_names::PEERS,
    map_names::PEER_SLOTS,
    map_names::PORTS,
    map_names::PORT_SLOTS,
    map_names::RANGES,
    map_names::POLICY_STATS,
    map_names::FLOWS,
    map_names::CONNTRACK,
    map_names::CONNTRACK6,
    map_names::CONFIG,
    map_names::COUNTERS,
    map_names::DROPS,
    map_names::DROP_RATE,
    det::map_names::WORKLOADS,
    det::map_names::EXEC_ALLOW,
    det::map_names::ISOLATION,
    det::map_names::ISOLATION_DIRECT,
    det::map_names::ISOLATION_ALLOW,
    det::map_names::ISOLATION_ALLOW6,
    det::map_names::EVENTS,
    det::map_names::SCRATCH,
    det::map_names::SYSCALLS,
    det::map_names::PARENTS,
    det::map_names::SYSSEQ,
    det::map_names::LEARNED,
    det::map_names::FILE_RULES,
    det::map_names::FILE_SCRATCH,
    det::map_names::EXE,
    det::map_names::LINEAGE,
    det::map_names::KOFFSETS,
    det::map_names::IDENT,
];

/// A link pinned under `<pin dir>/links` as soon as it exists, so the kernel keeps it (and
/// enforces) whatever happens to the agent: `kill -9`, an OOM kill, a panic. Dropping it only
/// closes the agent's handle; [`KeptLink::remove`] detaches it.
struct KeptLink {
    _fd: FdLink,
    pin: PathBuf,
}

impl KeptLink {
    /// Detaches the link and unpins it.
    fn remove(self) {
        let _ = crate::linkpin::remove(&self.pin);
    }
}

/// Links of one attached interface.
struct Attachment {
    ifindex: u32,
    from_pod: KeptLink,
    to_pod: KeptLink,
    xdp: Option<XdpLinkId>,
}

/// Typed handles on the maps.
pub struct Maps {
    pub endpoints: crate::ifmap::EndpointMap<MapData>,
    /// Per policy generation.
    pub iphost: [HashMap<MapData, [u8; 4], IpInfoV3>; 2],
    /// Per policy generation: the direct-mapped addresses (see [`bulkhead_common::ip_slot`]).
    pub ipslot: [Array<MapData, IpSlotV1>; 2],
    /// Per policy generation.
    pub ipcache: [LpmTrie<MapData, IpCacheKeyV1, IpInfoV3>; 2],
    /// Per policy generation: IPv6 single addresses (pods).
    pub iphost6: [HashMap<MapData, [u8; 16], IpInfoV3>; 2],
    /// Per policy generation: the direct-mapped IPv6 addresses.
    pub ipslot6: [Array<MapData, IpSlot6V1>; 2],
    /// Per policy generation: IPv6 prefixes.
    pub ipcache6: [LpmTrie<MapData, bulkhead_common::IpCache6KeyV1, IpInfoV3>; 2],
    /// Peer entries whose slot another key took.
    pub peers: HashMap<MapData, PeerKeyV2, PeerSliceV1>,
    /// Peer entries direct-mapped, both generations ([`bulkhead_common::slots`]).
    pub peer_slots: Array<MapData, bulkhead_common::slots::PeerSlotV1>,
    /// Port exceptions whose slot another key took.
    pub ports: HashMap<MapData, PortKeyV1, PolicyValueV2>,
    /// Port exceptions direct-mapped, both generations.
    pub port_slots: Array<MapData, bulkhead_common::slots::PortSlotV1>,
    pub ranges: LpmTrie<MapData, PortKeyV1, PolicyValueV2>,
    pub policy_stats: PerCpuArray<MapData, PolicyStatsV1>,
    pub flows: Option<crate::ring::Ring<bulkhead_common::FlowEventV5>>,
    pub conntrack: crate::cttable::CtTable<bulkhead_common::ct::CtSlotV1>,
    pub conntrack6: crate::cttable::CtTable<bulkhead_common::ct::Ct6SlotV1>,
    pub config: Array<MapData, ConfigV2>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Bytes of the flows each endpoint opened, by ifindex (per CPU).
    pub egress_bytes: PerCpuArray<MapData, u64>,
    /// Endpoints whose every new flow TC reports, by ifindex.
    pub flow_watch: Array<MapData, u32>,
    pub det: DetectorMaps,
}

/// Typed handles on the detector's maps.
pub struct DetectorMaps {
    pub workloads: HashMap<MapData, u64, WorkloadV1>,
    pub exec_allow: HashMap<MapData, ExecKeyV1, u8>,
    pub isolation: crate::ifmap::IsolationMap<MapData>,
    pub isolation_allow: HashMap<MapData, AllowKeyV2, u8>,
    /// Exact IPv6 entries of the isolation allow-list.
    pub isolation_allow6: HashMap<MapData, AllowKey6V1, u8>,
    pub syscalls: PerCpuHashMap<MapData, SyscallKeyV1, u64>,
    /// Exec events; taken by the detector's event thread.
    pub events: Option<RingBuf<MapData>>,
    /// Syscall records of sequence-modelled workloads; taken by the sequence-model thread.
    pub sysseq: Option<RingBuf<MapData>>,
    /// Learned outbound destinations of protect-mode endpoints (TC drops the rest).
    pub learned: HashMap<MapData, bulkhead_common::detect::LearnedKeyV1, u8>,
    /// Parent -> child executables the profiles allow.
    pub lineage: HashMap<MapData, bulkhead_common::detect::LineageKeyV1, u8>,
    /// Executable identities per workload (the exec probe writes them; the agent clears a
    /// workload's when it stops monitoring it).
    pub ident: HashMap<MapData, bulkhead_common::detect::IdentKeyV1, u64>,
}

/// The loaded programs and maps of one agent instance.
pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
    pin_dir: PathBuf,
    attached: BTreeMap<String, Attachment>,
    /// Attached (and pinned) detector tracepoints by program name.
    tracepoints: BTreeMap<&'static str, KeptLink>,
    /// The syscall probe's (raw tracepoint sys_enter) link while attached.
    sys_enter: Option<RawTracePointLinkId>,
    /// The file probe's links (pinned) while attached.
    file_links: Vec<KeptLink>,
    /// Whether the XDP pre-filter goes on pod interfaces ([`XDP_PREFILTER_ENV`]).
    xdp_prefilter: bool,
    /// Flow records for every endpoint ([`bulkhead_common::config_flags::FLOW_RECORDS`]),
    /// written with the next revision. Off unless the agent turns it on.
    pub flow_records: bool,
}

/// Environment variable that puts the XDP anti-spoofing pre-filter on pod veths (`veth`).
/// Off by default: any XDP program on a veth turns TSO off on its peer, so the pod sends
/// MTU-sized segments and TCP throughput falls to about 0.2x (1 stream) and 0.1x (4 streams)
/// of no program, while on a veth the frame is already a socket buffer, so dropping early saves
/// nothing. The TC program checks the source address itself. Kept for comparison benchmarks.
pub const XDP_PREFILTER_ENV: &str = "BULKHEAD_XDP_PREFILTER";

fn xdp_prefilter_wanted() -> bool {
    match std::env::var(XDP_PREFILTER_ENV).as_deref() {
        Ok("veth") => true,
        Ok("" | "off") | Err(_) => false,
        Ok(other) => {
            tracing::warn!(value = other, "{XDP_PREFILTER_ENV}: expected veth or off; XDP stays off");
            false
        }
    }
}

fn map_err(map: &'static str, source: aya::maps::MapError) -> DataplaneError {
    DataplaneError::Map { map, source }
}

fn missing(what: impl Into<String>) -> DataplaneError {
    DataplaneError::Missing { what: what.into() }
}

impl Dataplane {
    /// Loads the programs into the kernel and pins the maps under `pin_dir` (reusing maps
    /// already pinned there, so conntrack and enforcement state survive an agent restart).
    /// When the load fails (a program the verifier refuses, say) in a folder this call
    /// created, the folder and what was pinned into it go: nothing enforces from it yet. A
    /// folder that existed is left as it was, since a running instance may enforce from it.
    pub fn load(pin_dir: &Path) -> Result<Self, DataplaneError> {
        let fresh = !pin_dir.exists();
        let loaded = Self::load_pinned(pin_dir);
        if loaded.is_err() && fresh {
            let _ = std::fs::remove_dir_all(pin_dir);
        }
        loaded
    }

    fn load_pinned(pin_dir: &Path) -> Result<Self, DataplaneError> {
        std::fs::create_dir_all(pin_dir)
            .map_err(|e| DataplaneError::PinDir { path: pin_dir.to_path_buf(), source: e })?;
        let paths: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for name in [programs::FROM_POD, programs::TO_POD] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| missing(format!("program {name}")))?
                .try_into()
                .map_err(|e| DataplaneError::Program { program: static_name(name), source: e })?;
            p.load().map_err(|e| DataplaneError::Program { program: static_name(name), source: e })?;
        }
        let xdp_prefilter = xdp_prefilter_wanted();
        if xdp_prefilter {
            let x: &mut Xdp = ebpf
                .program_mut(programs::XDP_PREFILTER)
                .ok_or_else(|| missing(format!("program {}", programs::XDP_PREFILTER)))?
                .try_into()
                .map_err(|e| DataplaneError::Program { program: programs::XDP_PREFILTER, source: e })?;
            x.load().map_err(|e| DataplaneError::Program { program: programs::XDP_PREFILTER, source: e })?;
        }
        for (name, _, _) in TRACEPOINTS {
            let t: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| missing(format!("program {name}")))?
                .try_into()
                .map_err(|e| DataplaneError::Program { program: static_name(name), source: e })?;
            t.load().map_err(|e| DataplaneError::Program { program: static_name(name), source: e })?;
        }
        // The file probe is loaded the first time a workload needs it (`set_file_probe`): its
        // verification takes about as long as the policy program's (1.2 s here), which every
        // agent start would pay for a probe most nodes never attach.
        let r: &mut RawTracePoint = ebpf
            .program_mut(programs::SYS_ENTER)
            .ok_or_else(|| missing(format!("program {}", programs::SYS_ENTER)))?
            .try_into()
            .map_err(|e| DataplaneError::Program { program: programs::SYS_ENTER, source: e })?;
        r.load().map_err(|e| DataplaneError::Program { program: programs::SYS_ENTER, source: e })?;
        // Programs are pinned beside the maps so `bpftool` and operators find everything of an
        // instance in one folder; a pin left by an earlier run is replaced.
        let _ = std::fs::remove_file(pin_dir.join(programs::XDP_PREFILTER));
        let pinned: &[&str] = if xdp_prefilter { &[programs::FROM_POD, programs::TO_POD, programs::XDP_PREFILTER] } else { &[programs::FROM_POD, programs::TO_POD] };
        for &name in pinned {
            let path = pin_dir.join(name);
            let _ = std::fs::remove_file(&path);
            ebpf.program_mut(name)
                .ok_or_else(|| missing(format!("program {name}")))?
                .pin(&path)
                .map_err(|source| DataplaneError::Pin { path: path.clone(), source })?;
        }

        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| missing(format!("map {name}")))
        };
        let maps = Maps {
            endpoints: crate::ifmap::IfindexMap::new(
                Array::try_from(take(map_names::ENDPOINTS_DIRECT)?).map_err(|e| map_err(map_names::ENDPOINTS_DIRECT, e))?,
                HashMap::try_from(take(map_names::ENDPOINTS)?).map_err(|e| map_err(map_names::ENDPOINTS, e))?,
                (map_names::ENDPOINTS_DIRECT, map_names::ENDPOINTS),
            ),
            iphost: [
                HashMap::try_from(take(map_names::IPHOST[0])?).map_err(|e| map_err(map_names::IPHOST[0], e))?,
                HashMap::try_from(take(map_names::IPHOST[1])?).map_err(|e| map_err(map_names::IPHOST[1], e))?,
            ],
            ipslot: [
                Array::try_from(take(map_names::IPSLOT[0])?).map_err(|e| map_err(map_names::IPSLOT[0], e))?,
                Array::try_from(take(map_names::IPSLOT[1])?).map_err(|e| map_err(map_names::IPSLOT[1], e))?,
            ],
            ipcache: [
                LpmTrie::try_from(take(map_names::IPCACHE[0])?).map_err(|e| map_err(map_names::IPCACHE[0], e))?,
                LpmTrie::try_from(take(map_names::IPCACHE[1])?).map_err(|e| map_err(map_names::IPCACHE[1], e))?,
            ],
            iphost6: [
                HashMap::try_from(take(map_names::IPHOST6[0])?).map_err(|e| map_err(map_names::IPHOST6[0], e))?,
                HashMap::try_from(take(map_names::IPHOST6[1])?).map_err(|e| map_err(map_names::IPHOST6[1], e))?,
            ],
            ipslot6: [
                Array::try_from(take(map_names::IPSLOT6[0])?).map_err(|e| map_err(map_names::IPSLOT6[0], e))?,
                Array::try_from(take(map_names::IPSLOT6[1])?).map_err(|e| map_err(map_names::IPSLOT6[1], e))?,
            ],
            ipcache6: [
                LpmTrie::try_from(take(map_names::IPCACHE6[0])?).map_err(|e| map_err(map_names::IPCACHE6[0], e))?,
                LpmTrie::try_from(take(map_names::IPCACHE6[1])?).map_err(|e| map_err(map_names::IPCACHE6[1], e))?,
            ],
            peers: HashMap::try_from(take(map_names::PEERS)?).map_err(|e| map_err(map_names::PEERS, e))?,
            ports: HashMap::try_from(take(map_names::PORTS)?).map_err(|e| map_err(map_names::PORTS, e))?,
            peer_slots: Array::try_from(take(map_names::PEER_SLOTS)?).map_err(|e| map_err(map_names::PEER_SLOTS, e))?,
            port_slots: Array::try_from(take(map_names::PORT_SLOTS)?).map_err(|e| map_err(map_names::PORT_SLOTS, e))?,
            ranges: LpmTrie::try_from(take(map_names::RANGES)?).map_err(|e| map_err(map_names::RANGES, e))?,
            policy_stats: PerCpuArray::try_from(take(map_names::POLICY_STATS)?).map_err(|e| map_err(map_names::POLICY_STATS, e))?,
            flows: Some(crate::ring::Ring::new(RingBuf::try_from(take(map_names::FLOWS)?).map_err(|e| map_err(map_names::FLOWS, e))?)),
            conntrack: crate::cttable::CtTable::new(take(map_names::CONNTRACK)?, map_names::CONNTRACK)?,
            conntrack6: crate::cttable::CtTable::new(take(map_names::CONNTRACK6)?, map_names::CONNTRACK6)?,
            config: Array::try_from(take(map_names::CONFIG)?).map_err(|e| map_err(map_names::CONFIG, e))?,
            counters: PerCpuArray::try_from(take(map_names::COUNTERS)?).map_err(|e| map_err(map_names::COUNTERS, e))?,
            egress_bytes: PerCpuArray::try_from(take(map_names::EGRESS_BYTES)?).map_err(|e| map_err(map_names::EGRESS_BYTES, e))?,
            flow_watch: Array::try_from(take(map_names::FLOW_WATCH)?).map_err(|e| map_err(map_names::FLOW_WATCH, e))?,
            det: DetectorMaps {
                workloads: HashMap::try_from(take(det::map_names::WORKLOADS)?).map_err(|e| map_err(det::map_names::WORKLOADS, e))?,
                exec_allow: HashMap::try_from(take(det::map_names::EXEC_ALLOW)?).map_err(|e| map_err(det::map_names::EXEC_ALLOW, e))?,
                isolation: crate::ifmap::IfindexMap::new(
                    Array::try_from(take(det::map_names::ISOLATION_DIRECT)?).map_err(|e| map_err(det::map_names::ISOLATION_DIRECT, e))?,
                    HashMap::try_from(take(det::map_names::ISOLATION)?).map_err(|e| map_err(det::map_names::ISOLATION, e))?,
                    (det::map_names::ISOLATION_DIRECT, det::map_names::ISOLATION),
                ),
                isolation_allow: HashMap::try_from(take(det::map_names::ISOLATION_ALLOW)?)
                    .map_err(|e| map_err(det::map_names::ISOLATION_ALLOW, e))?,
                isolation_allow6: HashMap::try_from(take(det::map_names::ISOLATION_ALLOW6)?)
                    .map_err(|e| map_err(det::map_names::ISOLATION_ALLOW6, e))?,
                syscalls: PerCpuHashMap::try_from(take(det::map_names::SYSCALLS)?).map_err(|e| map_err(det::map_names::SYSCALLS, e))?,
                events: Some(RingBuf::try_from(take(det::map_names::EVENTS)?).map_err(|e| map_err(det::map_names::EVENTS, e))?),
                sysseq: Some(RingBuf::try_from(take(det::map_names::SYSSEQ)?).map_err(|e| map_err(det::map_names::SYSSEQ, e))?),
                learned: HashMap::try_from(take(det::map_names::LEARNED)?).map_err(|e| map_err(det::map_names::LEARNED, e))?,
                lineage: HashMap::try_from(take(det::map_names::LINEAGE)?).map_err(|e| map_err(det::map_names::LINEAGE, e))?,
                ident: HashMap::try_from(take(det::map_names::IDENT)?).map_err(|e| map_err(det::map_names::IDENT, e))?,
            },
        };
        // The exec probe's way to the executable's inode, from this kernel's BTF. Without it
        // (a kernel without BTF, a renamed field) identities are not judged: said, not hidden.
        let mut koffsets: Array<MapData, det::KernelOffsetsV1> =
            Array::try_from(take(det::map_names::KOFFSETS)?).map_err(|e| map_err(det::map_names::KOFFSETS, e))?;
        let offsets = match crate::btf::Btf::from_sys().and_then(|b| crate::btf::exec_offsets(&b)) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "kernel BTF: exec identities (inode, change time) will not be judged");
                det::KernelOffsetsV1::default()
            }
        };
        koffsets.set(0, offsets, 0).map_err(|e| map_err(det::map_names::KOFFSETS, e))?;
        let mut dp = Dataplane { ebpf, maps, pin_dir: pin_dir.to_path_buf(), attached: BTreeMap::new(), tracepoints: BTreeMap::new(), sys_enter: None, file_links: Vec::new(), xdp_prefilter, flow_records: false };
        // Exec and fork are rare events: their probes are always on (they return at once for
        // unmonitored cgroups). The syscall probe is attached only while someone needs it.
        dp.attach_tracepoint(programs::EXEC)?;
        dp.attach_tracepoint(programs::FORK)?;
        remove_old_layouts(pin_dir);
        Ok(dp)
    }

    /// Attaches a detector tracepoint program and pins its link (protect mode holds while no
    /// agent runs). A link a previous agent pinned is replaced after ours runs: for a moment
    /// both see the same exec, never neither.
    fn attach_tracepoint(&mut self, name: &'static str) -> Result<(), DataplaneError> {
        let (_, category, tp) = TRACEPOINTS
            .iter()
            .find(|(n, _, _)| *n == name)
            .copied()
            .ok_or_else(|| missing(format!("tracepoint program {name}")))?;
        let dir = self.links_dir()?;
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| missing(format!("program {name}")))?
            .try_into()
            .map_err(|e| DataplaneError::Program { program: static_name(name), source: e })?;
        let id = prog.attach(category, tp).map_err(|e| DataplaneError::Program { program: static_name(name), source: e })?;
        let link = prog.take_link(id).map_err(|e| DataplaneError::Program { program: static_name(name), source: e })?;
        let fd: FdLink = link.try_into().map_err(|source| DataplaneError::Link { what: name.to_string(), source })?;
        let kept = pin_replacing(fd, dir.join(name))?;
        self.tracepoints.insert(name, kept);
        Ok(())
    }

    fn links_dir(&self) -> Result<PathBuf, DataplaneError> {
        let dir = self.pin_dir.join(LINKS_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| DataplaneError::PinDir { path: dir.clone(), source: e })?;
        Ok(dir)
    }

    /// Attaches (`on`) or detaches the syscall probe (the raw tracepoint sys_enter).
    /// Idempotent. While attached, every syscall of every task runs it (it returns at once for
    /// unmonitored cgroups), so it is attached only while a workload wants syscall counts.
    pub fn set_syscall_probe(&mut self, on: bool) -> Result<(), DataplaneError> {
        match (on, self.sys_enter.take()) {
            (true, None) => {
                self.sys_enter = Some(
                    self.raw_sys_enter()?.attach("sys_enter").map_err(|e| DataplaneError::Program { program: programs::SYS_ENTER, source: e })?,
                );
            }
            (false, Some(id)) => {
                self.raw_sys_enter()?.detach(id).map_err(|e| DataplaneError::Program { program: programs::SYS_ENTER, source: e })?
            }
            (_, keep) => self.sys_enter = keep,
        }
        Ok(())
    }

    /// Attaches (`on`) or detaches the file probe on every [`FILE_TRACEPOINTS`] entry.
    /// Idempotent. Its links are pinned like the exec probe's: protect holds while no agent
    /// runs; a link an earlier agent pinned is replaced after ours is attached.
    pub fn set_file_probe(&mut self, on: bool) -> Result<(), DataplaneError> {
        if !on {
            for k in std::mem::take(&mut self.file_links) {
                k.remove();
            }
            // Pins an earlier agent left while this one has none of its own.
            if let Ok(rd) = std::fs::read_dir(self.pin_dir.join(LINKS_DIR)) {
                for e in rd.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&format!("{}-", programs::FILE)) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
            return Ok(());
        }
        if !self.file_links.is_empty() {
            return Ok(());
        }
        let dir = self.links_dir()?;
        let err = |e| DataplaneError::Program { program: programs::FILE, source: e };
        let prog: &mut TracePoint = self.ebpf.program_mut(programs::FILE).ok_or_else(|| missing(format!("program {}", programs::FILE)))?.try_into().map_err(err)?;
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        let mut kept = Vec::new();
        for tp in FILE_TRACEPOINTS {
            let id = prog.attach("syscalls", tp).map_err(err)?;
            let link = prog.take_link(id).map_err(err)?;
            let fd: FdLink = link.try_into().map_err(|source| DataplaneError::Link { what: format!("{} on {tp}", programs::FILE), source })?;
            // bpffs refuses names with a dot.
            kept.push(pin_replacing(fd, dir.join(format!("{}-{tp}", programs::FILE)))?);
        }
        self.file_links = kept;
        Ok(())
    }

    fn raw_sys_enter(&mut self) -> Result<&mut RawTracePoint, DataplaneError> {
        self.ebpf
            .program_mut(programs::SYS_ENTER)
            .ok_or_else(|| missing(format!("program {}", programs::SYS_ENTER)))?
            .try_into()
            .map_err(|e| DataplaneError::Program { program: programs::SYS_ENTER, source: e })
    }

    /// Whether a detector probe (exec, fork, syscalls) is attached, by program name.
    pub fn probe_attached(&self, name: &str) -> bool {
        match name {
            programs::SYS_ENTER => self.sys_enter.is_some(),
            programs::FILE => !self.file_links.is_empty(),
            _ => self.tracepoints.contains_key(name),
        }
    }

    /// Lets go of every link without detaching it: TC and exec/fork links are pinned under
    /// `<pin dir>/links` from the moment they are attached, so the kernel keeps enforcing
    /// (policy, isolation, protect) while no agent runs, and the next agent on this pin folder
    /// adopts them ([`Dataplane::attach`]). The opt-in XDP pre-filter and the syscall probe
    /// are not kept. Returns the number of links kept.
    pub fn pin_links(&mut self) -> Result<usize, DataplaneError> {
        let mut kept = 0;
        let attached: Vec<Attachment> = std::mem::take(&mut self.attached).into_values().collect();
        for a in attached {
            if let (Some(l), Ok(x)) = (a.xdp, self.xdp()) {
                let _ = x.detach(l);
            }
            kept += 2;
        }
        kept += std::mem::take(&mut self.tracepoints).len();
        kept += std::mem::take(&mut self.file_links).len();
        Ok(kept)
    }

    /// The bpffs folder holding this instance's pins.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// A loaded TC program by name (benchmarks run them through BPF_PROG_TEST_RUN).
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, DataplaneError> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| missing(format!("program {name}")))?
            .try_into()
            .map_err(|e| DataplaneError::Program { program: static_name(name), source: e })
    }

    /// The veth XDP pre-filter, loaded now if this dataplane was loaded without it (benchmarks
    /// run it through BPF_PROG_TEST_RUN; nothing is attached).
    pub fn xdp_prefilter(&mut self) -> Result<&Xdp, DataplaneError> {
        let x = self.xdp()?;
        if x.fd().is_err() {
            x.load().map_err(|e| DataplaneError::Program { program: programs::XDP_PREFILTER, source: e })?;
        }
        Ok(x)
    }

    /// Interfaces with programs attached, and their indexes.
    pub fn attached(&self) -> impl Iterator<Item = (&str, u32)> {
        self.attached.iter().map(|(k, a)| (k.as_str(), a.ifindex))
    }

    /// Attaches both TC programs (tcx) and, if asked for, the XDP pre-filter to `ifname` in
    /// the calling thread's network namespace. Returns the interface index.
    ///
    /// Links a previous agent pinned for this interface are adopted: their program is replaced
    /// by ours in one `bpf_link_update`, so no packet passes unjudged and none is judged
    /// twice. Links whose interface is gone (ENOLINK) are replaced by fresh ones.
    pub fn attach(&mut self, ifname: &str) -> Result<u32, DataplaneError> {
        if let Some(a) = self.attached.get(ifname) {
            return Ok(a.ifindex);
        }
        let ifindex = netns::ifindex(ifname)
            .ok_or_else(|| DataplaneError::Interface { ifname: ifname.into(), detail: "no such interface".into() })?;
        let dir = self.links_dir()?;
        let from_pod = self.attach_tc(programs::FROM_POD, ifname, TcAttachType::Ingress, dir.join(format!("{ifname}-from")))?;
        let to_pod = match self.attach_tc(programs::TO_POD, ifname, TcAttachType::Egress, dir.join(format!("{ifname}-to"))) {
            Ok(l) => l,
            Err(e) => {
                from_pod.remove();
                return Err(e);
            }
        };
        // The pre-filter (opt-in) only repeats TC's anti-spoofing check earlier, so an XDP
        // attach failure is logged, not fatal.
        let xdp = if !self.xdp_prefilter {
            None
        } else {
            match self.xdp()?.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(ifname, error = %e, "XDP pre-filter not attached; TC still enforces");
                    None
                }
            }
        };
        self.attached.insert(ifname.to_string(), Attachment { ifindex, from_pod, to_pod, xdp });
        Ok(ifindex)
    }

    /// One tcx link of `prog` on `ifname`, pinned at `pin`: the pinned link of a previous
    /// agent with its program replaced by ours, or a new link.
    fn attach_tc(&mut self, prog: &'static str, ifname: &str, at: TcAttachType, pin: PathBuf) -> Result<KeptLink, DataplaneError> {
        let perr = |e| DataplaneError::Program { program: prog, source: e };
        if let Ok(old) = PinnedLink::from_pin(&pin) {
            let fd: FdLink = old.into();
            let adopted = SchedClassifierLink::try_from(fd)
                .map_err(|e| e.to_string())
                .and_then(|l| self.classifier(prog).map_err(|e| e.to_string())?.attach_to_link(l).map_err(|e| e.to_string()));
            match adopted {
                Ok(id) => {
                    let link = self.classifier(prog)?.take_link(id).map_err(perr)?;
                    let fd: FdLink = link.try_into().map_err(|source| DataplaneError::Link { what: pin.display().to_string(), source })?;
                    tracing::debug!(ifname, prog, "adopted the pinned link");
                    return Ok(KeptLink { _fd: fd, pin });
                }
                Err(e) => {
                    // The interface the link was made for is gone (the name is reused), or
                    // the pin is not a tcx link: it enforces nothing, a fresh link replaces it.
                    tracing::info!(ifname, prog, error = %e, "pinned link not adoptable; attaching afresh");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let id = self
            .classifier(prog)?
            .attach_with_options(ifname, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(perr)?;
        let link = self.classifier(prog)?.take_link(id).map_err(perr)?;
        let fd: FdLink = link.try_into().map_err(|source| DataplaneError::Link { what: pin.display().to_string(), source })?;
        pin_replacing(fd, pin)
    }

    /// Detaches everything from `ifname` (the interface may already be gone).
    pub fn detach(&mut self, ifname: &str) {
        let Some(a) = self.attached.remove(ifname) else { return };
        a.from_pod.remove();
        a.to_pod.remove();
        if let (Some(l), Ok(x)) = (a.xdp, self.xdp()) {
            let _ = x.detach(l);
        }
    }

    /// Pins of links on interfaces this agent has not attached: kept by an earlier agent for
    /// endpoints that are gone from the datastore. Removing them detaches those links.
    pub fn drop_unadopted_links(&mut self) -> usize {
        let Ok(rd) = std::fs::read_dir(self.pin_dir.join(LINKS_DIR)) else { return 0 };
        let ours: std::collections::BTreeSet<PathBuf> = self
            .attached
            .values()
            .flat_map(|a| [a.from_pod.pin.clone(), a.to_pod.pin.clone()])
            .chain(self.tracepoints.values().map(|k| k.pin.clone()))
            .chain(self.file_links.iter().map(|k| k.pin.clone()))
            .collect();
        let mut n = 0;
        for e in rd.flatten() {
            if !ours.contains(&e.path()) && matches!(crate::linkpin::remove(&e.path()), Ok(true)) {
                n += 1;
            }
        }
        n
    }

    fn xdp(&mut self) -> Result<&mut Xdp, DataplaneError> {
        self.ebpf
            .program_mut(programs::XDP_PREFILTER)
            .ok_or_else(|| missing(format!("program {}", programs::XDP_PREFILTER)))?
            .try_into()
            .map_err(|e| DataplaneError::Program { program: programs::XDP_PREFILTER, source: e })
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<Vec<(String, u64)>, DataplaneError> {
        let mut out = Vec::new();
        for (i, name) in bulkhead_common::counters::NAMES.iter().enumerate() {
            let v = self.maps.counters.get(&(i as u32), 0).map_err(|e| map_err(map_names::COUNTERS, e))?;
            out.push((name.to_string(), v.iter().sum()));
        }
        Ok(out)
    }

    /// Per-policy counters summed over CPUs, for policies with any count.
    pub fn policy_stats(&self, policies: u32) -> Result<Vec<(u32, bulkhead_common::PolicyStatsV1)>, DataplaneError> {
        read_policy_stats(&self.maps.policy_stats, policies)
    }

    /// Detaches every interface and removes the pins: the instance leaves nothing behind.
    pub fn unload(mut self) {
        let names: Vec<String> = self.attached.keys().cloned().collect();
        for n in names {
            self.detach(&n);
        }
        for (_, k) in std::mem::take(&mut self.tracepoints) {
            k.remove();
        }
        for k in std::mem::take(&mut self.file_links) {
            k.remove();
        }
        for m in ALL_MAPS {
            let _ = std::fs::remove_file(self.pin_dir.join(m));
        }
        // `bh_noop` was pinned by versions that shipped the benchmark baseline in the object.
        for p in [programs::FROM_POD, programs::TO_POD, programs::XDP_PREFILTER, "bh_noop"] {
            let _ = std::fs::remove_file(self.pin_dir.join(p));
        }
        // Links a previous agent kept.
        let links = self.pin_dir.join(LINKS_DIR);
        if let Ok(rd) = std::fs::read_dir(&links) {
            for e in rd.flatten() {
                let _ = crate::linkpin::remove(&e.path());
            }
        }
        let _ = std::fs::remove_dir(&links);
        crate::uplink::detach_all(&self.pin_dir);
        let _ = std::fs::remove_dir(&self.pin_dir);
        if let Some(parent) = self.pin_dir.parent() {
            // Removes the shared parent only when no other instance uses it.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Pins `fd` at `pin`, replacing whatever a previous agent pinned there (ours runs already,
/// so the old link may go).
fn pin_replacing(fd: FdLink, pin: PathBuf) -> Result<KeptLink, DataplaneError> {
    let _ = std::fs::remove_file(&pin);
    let pinned = fd.pin(&pin).map_err(|source| DataplaneError::Pin { path: pin.clone(), source })?;
    Ok(KeptLink { _fd: pinned.into(), pin })
}

/// LPM key of the IPv6 cache for `addr/prefix_len`.
pub fn ipcache6_key(addr: std::net::Ipv6Addr, prefix_len: u8) -> Key<bulkhead_common::IpCache6KeyV1> {
    Key::new(prefix_len as u32, bulkhead_common::IpCache6KeyV1 { addr_be: addr.octets() })
}

/// LPM key of the IP cache for `addr/prefix_len`.
pub fn ipcache_key(addr: std::net::Ipv4Addr, prefix_len: u8) -> Key<IpCacheKeyV1> {
    Key::new(prefix_len as u32, IpCacheKeyV1 { addr_be: addr.octets() })
}

fn static_name(name: &str) -> &'static str {
    match name {
        programs::FROM_POD => programs::FROM_POD,
        programs::TO_POD => programs::TO_POD,
        programs::EXEC => programs::EXEC,
        programs::FORK => programs::FORK,
        programs::SYS_ENTER => programs::SYS_ENTER,
        programs::FILE => programs::FILE,
        programs::XDP_PREFILTER => programs::XDP_PREFILTER,
        programs::XDP_UPLINK => programs::XDP_UPLINK,
        // Names come from the constants above; anything else is a caller's typo, shown as such
        // rather than as another program's name.
        _ => "(a program not in this object)",
    }
}

/// Sums per-CPU policy counters of the first `policies` indexes; skips policies that never
/// counted anything.
pub fn read_policy_stats<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, PolicyStatsV1>,
    policies: u32,
) -> Result<Vec<(u32, PolicyStatsV1)>, DataplaneError> {
    let mut out = Vec::new();
    for i in 0..policies.min(bulkhead_common::capacity::POLICIES) {
        let per_cpu = map.get(&i, 0).map_err(|e| map_err(map_names::POLICY_STATS, e))?;
        let mut sum = PolicyStatsV1::default();
        for s in per_cpu.iter() {
            sum.allowed += s.allowed;
            sum.denied += s.denied;
            sum.would_allow += s.would_allow;
            sum.would_deny += s.would_deny;
        }
        if sum != PolicyStatsV1::default() {
            out.push((i, sum));
        }
    }
    Ok(out)
}

/// Unpins maps of earlier layouts: a pin named like ours (`BH_`) that no map of this build
/// has. An agent upgraded in place pins a new layout under a new name (the version in every
/// map name); the old maps' pins would otherwise keep them, e.g. the preallocated 1M-entry
/// hashes of an older peer map, in kernel memory until reboot, and `uninstall`, which removes
/// this build's names, would never find them. Programs still attached keep the maps they use
/// until the agent replaces them: an unpinned map lives as long as something holds it.
fn remove_old_layouts(pin_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(pin_dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("BH_") && !ALL_MAPS.contains(&name.as_str()) && e.file_type().is_ok_and(|t| !t.is_dir()) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::info!(map = %name, "unpinned a map of an earlier layout"),
                Err(err) => tracing::warn!(map = %name, error = %err, "could not unpin a map of an earlier layout"),
            }
        }
    }
}

