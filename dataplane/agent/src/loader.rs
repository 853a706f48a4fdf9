//! Loads the embedded eBPF object, pins its maps under the agent's bpffs folder and attaches
//! the programs to pod interfaces (tcx on both directions, XDP pre-filter).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::{
        BtfTracePoint, FEntry, LinkOrder, RawTracePoint, SchedClassifier, TcAttachType, TracePoint, Xdp,
        fentry::FEntryLinkId,
        tp_btf::BtfTracePointLinkId,
        raw_trace_point::RawTracePointLinkId,
        links::FdLink,
        tc::{SchedClassifierLinkId, TcAttachOptions},
        trace_point::TracePointLinkId,
        xdp::{XdpLinkId, XdpMode},
    },
};
use bulkhead_common::detect::{self as det, AllowKeyV2, ExecKeyV1, IsolationV1, SyscallKeyV1, WorkloadV1};
use bulkhead_common::{
    ConfigV1, CtKeyV1, CtValueV1, EndpointV1, IpCacheKeyV1, IpInfoV2, PolicyKeyV1, PolicyStatsV1,
    PolicyValueV2, SliceKeyV1, SliceValueV1, map_names,
};

use crate::{error::AgentError, netns};

/// The compiled eBPF object, built by build.rs from dataplane-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bulkhead-ebpf"));

/// Program names in the object.
pub mod programs {
    pub const FROM_POD: &str = "bh_from_pod";
    pub const TO_POD: &str = "bh_to_pod";
    pub const NOOP: &str = "bh_noop";
    pub const XDP_PREFILTER: &str = "bh_xdp_prefilter";
    /// Detector probes (tracepoints).
    pub const EXEC: &str = "bh_exec";
    pub const FORK: &str = "bh_fork";
    pub const SYS_ENTER: &str = "bh_sys_enter";
    /// The syscall probe as fentry on `x64_sys_call` (opt-in, see [`super::SyscallProbe`]).
    pub const SYS_CALL: &str = "bh_sys_call";
    /// The syscall probe as a BTF tracepoint on sys_enter (`BULKHEAD_SYSCALL_PROBE=tp_btf`).
    pub const SYS_ENTER_BTF: &str = "bh_sys_enter_btf";
}

/// How the syscall probe is attached. Both count the same thing into the same map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallProbe {
    /// Raw tracepoint `sys_enter`. Attaching any sys_enter tracepoint sets a work flag on every
    /// task, which sends every syscall of the machine through the slow entry path.
    RawTracepoint,
    /// BTF tracepoint (tp_btf) `sys_enter`: the same tracepoint as [`Self::RawTracepoint`],
    /// so the same slow path; only selected explicitly.
    BtfTracepoint,
    /// fentry (BPF trampoline) on `x64_sys_call`, the dispatcher every x86-64 syscall goes
    /// through: costs one trampoline call per syscall, no slow path. Needs BTF and ftrace
    /// direct calls (kernel >= 6.9 for `x64_sys_call`); misses ia32 compat syscalls (they go
    /// through `ia32_sys_call`). Opt-in and untested: refused (EPERM) on this machine kind.
    FEntry,
}

/// Environment variable that selects the syscall probe's attachment (`fentry`, `tp_btf` or
/// `raw_tp`);
/// for benchmarks and for kernels where the trampoline misbehaves. Default: fentry when it
/// loads, else the raw tracepoint.
pub const SYSCALL_PROBE_ENV: &str = "BULKHEAD_SYSCALL_PROBE";

/// The attached syscall probe's link.
enum SyscallLink {
    RawTracepoint(RawTracePointLinkId),
    BtfTracepoint(BtfTracePointLinkId),
    FEntry(FEntryLinkId),
}

/// Tracepoints of the detector probes: (program, category, name). The syscall probe is a raw
/// tracepoint (`sys_enter`), see [`Dataplane::set_syscall_probe`].
const TRACEPOINTS: [(&str, &str, &str); 2] =
    [(programs::EXEC, "sched", "sched_process_exec"), (programs::FORK, "sched", "sched_process_fork")];

/// Folder (inside the pin folder) of links pinned by [`Dataplane::pin_links`].
const LINKS_DIR: &str = "links";

const ALL_MAPS: [&str; 20] = [
    map_names::ENDPOINTS,
    map_names::IPHOST,
    map_names::IPCACHE,
    map_names::SLICES,
    map_names::PORTS,
    map_names::RANGES,
    map_names::POLICY_STATS,
    map_names::FLOWS,
    map_names::CONNTRACK,
    map_names::CONFIG,
    map_names::COUNTERS,
    det::map_names::WORKLOADS,
    det::map_names::EXEC_ALLOW,
    det::map_names::ISOLATION,
    det::map_names::ISOLATION_ALLOW,
    det::map_names::EVENTS,
    det::map_names::SCRATCH,
    det::map_names::SYSCALLS,
    det::map_names::PARENTS,
    det::map_names::SYSSEQ,
];

/// Links of one attached interface.
struct Attachment {
    ifindex: u32,
    from_pod: SchedClassifierLinkId,
    to_pod: SchedClassifierLinkId,
    xdp: Option<XdpLinkId>,
}

/// Typed handles on the maps.
pub struct Maps {
    pub endpoints: HashMap<MapData, u32, EndpointV1>,
    pub iphost: HashMap<MapData, [u8; 4], IpInfoV2>,
    pub ipcache: LpmTrie<MapData, IpCacheKeyV1, IpInfoV2>,
    pub slices: HashMap<MapData, SliceKeyV1, SliceValueV1>,
    pub ports: HashMap<MapData, PolicyKeyV1, PolicyValueV2>,
    pub ranges: LpmTrie<MapData, PolicyKeyV1, PolicyValueV2>,
    pub policy_stats: PerCpuArray<MapData, PolicyStatsV1>,
    pub flows: RingBuf<MapData>,
    pub conntrack: HashMap<MapData, CtKeyV1, CtValueV1>,
    pub config: Array<MapData, ConfigV1>,
    pub counters: PerCpuArray<MapData, u64>,
    pub det: DetectorMaps,
}

/// Typed handles on the detector's maps.
pub struct DetectorMaps {
    pub workloads: HashMap<MapData, u64, WorkloadV1>,
    pub exec_allow: HashMap<MapData, ExecKeyV1, u8>,
    pub isolation: HashMap<MapData, u32, IsolationV1>,
    pub isolation_allow: HashMap<MapData, AllowKeyV2, u8>,
    pub syscalls: PerCpuHashMap<MapData, SyscallKeyV1, u64>,
    /// Exec events; taken by the detector's event thread.
    pub events: Option<RingBuf<MapData>>,
    /// Syscall records of sequence-modelled workloads; taken by the sequence-model thread.
    pub sysseq: Option<RingBuf<MapData>>,
}

/// The loaded programs and maps of one agent instance.
pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
    pin_dir: PathBuf,
    attached: BTreeMap<String, Attachment>,
    /// Attached detector tracepoints by program name.
    tracepoints: BTreeMap<&'static str, TracePointLinkId>,
    /// The syscall probe's link while attached.
    sys_enter: Option<SyscallLink>,
    /// Which attachment [`Dataplane::set_syscall_probe`] uses.
    syscall_probe: SyscallProbe,
}

fn map_err(map: &'static str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Map { map, detail: e.to_string() }
}

impl Dataplane {
    /// Loads the programs into the kernel and pins the maps under `pin_dir` (reusing maps
    /// already pinned there, so conntrack and enforcement state survive an agent restart).
    pub fn load(pin_dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(pin_dir)
            .map_err(|e| AgentError::PinDir { path: pin_dir.to_path_buf(), source: e })?;
        let paths: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for name in [programs::FROM_POD, programs::TO_POD, programs::NOOP] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| map_err("programs", format!("{name} missing from the object")))?
                .try_into()
                .map_err(|e| AgentError::Program { program: static_name(name), source: e })?;
            p.load().map_err(|e| AgentError::Program { program: static_name(name), source: e })?;
        }
        let x: &mut Xdp = ebpf
            .program_mut(programs::XDP_PREFILTER)
            .ok_or_else(|| map_err("programs", "xdp prefilter missing"))?
            .try_into()
            .map_err(|e| AgentError::Program { program: programs::XDP_PREFILTER, source: e })?;
        x.load().map_err(|e| AgentError::Program { program: programs::XDP_PREFILTER, source: e })?;
        for (name, _, _) in TRACEPOINTS {
            let t: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| map_err("programs", format!("{name} missing from the object")))?
                .try_into()
                .map_err(|e| AgentError::Program { program: static_name(name), source: e })?;
            t.load().map_err(|e| AgentError::Program { program: static_name(name), source: e })?;
        }
        let r: &mut RawTracePoint = ebpf
            .program_mut(programs::SYS_ENTER)
            .ok_or_else(|| map_err("programs", "syscall probe missing from the object"))?
            .try_into()
            .map_err(|e| AgentError::Program { program: programs::SYS_ENTER, source: e })?;
        r.load().map_err(|e| AgentError::Program { program: programs::SYS_ENTER, source: e })?;
        let syscall_probe = load_syscall_probe(&mut ebpf);
        // Programs are pinned beside the maps so `bpftool` and operators find everything of an
        // instance in one folder; a pin left by an earlier run is replaced.
        for name in [programs::FROM_POD, programs::TO_POD, programs::NOOP, programs::XDP_PREFILTER] {
            let path = pin_dir.join(name);
            let _ = std::fs::remove_file(&path);
            ebpf.program_mut(name)
                .ok_or_else(|| map_err("programs", format!("{name} missing from the object")))?
                .pin(&path)
                .map_err(|e| map_err("programs", format!("pinning {name} at {}: {e}", path.display())))?;
        }

        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| map_err(name, "missing from the object"))
        };
        let maps = Maps {
            endpoints: HashMap::try_from(take(map_names::ENDPOINTS)?).map_err(|e| map_err(map_names::ENDPOINTS, e))?,
            iphost: HashMap::try_from(take(map_names::IPHOST)?).map_err(|e| map_err(map_names::IPHOST, e))?,
            ipcache: LpmTrie::try_from(take(map_names::IPCACHE)?).map_err(|e| map_err(map_names::IPCACHE, e))?,
            slices: HashMap::try_from(take(map_names::SLICES)?).map_err(|e| map_err(map_names::SLICES, e))?,
            ports: HashMap::try_from(take(map_names::PORTS)?).map_err(|e| map_err(map_names::PORTS, e))?,
            ranges: LpmTrie::try_from(take(map_names::RANGES)?).map_err(|e| map_err(map_names::RANGES, e))?,
            policy_stats: PerCpuArray::try_from(take(map_names::POLICY_STATS)?).map_err(|e| map_err(map_names::POLICY_STATS, e))?,
            flows: RingBuf::try_from(take(map_names::FLOWS)?).map_err(|e| map_err(map_names::FLOWS, e))?,
            conntrack: HashMap::try_from(take(map_names::CONNTRACK)?).map_err(|e| map_err(map_names::CONNTRACK, e))?,
            config: Array::try_from(take(map_names::CONFIG)?).map_err(|e| map_err(map_names::CONFIG, e))?,
            counters: PerCpuArray::try_from(take(map_names::COUNTERS)?).map_err(|e| map_err(map_names::COUNTERS, e))?,
            det: DetectorMaps {
                workloads: HashMap::try_from(take(det::map_names::WORKLOADS)?).map_err(|e| map_err(det::map_names::WORKLOADS, e))?,
                exec_allow: HashMap::try_from(take(det::map_names::EXEC_ALLOW)?).map_err(|e| map_err(det::map_names::EXEC_ALLOW, e))?,
                isolation: HashMap::try_from(take(det::map_names::ISOLATION)?).map_err(|e| map_err(det::map_names::ISOLATION, e))?,
                isolation_allow: HashMap::try_from(take(det::map_names::ISOLATION_ALLOW)?)
                    .map_err(|e| map_err(det::map_names::ISOLATION_ALLOW, e))?,
                syscalls: PerCpuHashMap::try_from(take(det::map_names::SYSCALLS)?).map_err(|e| map_err(det::map_names::SYSCALLS, e))?,
                events: Some(RingBuf::try_from(take(det::map_names::EVENTS)?).map_err(|e| map_err(det::map_names::EVENTS, e))?),
                sysseq: Some(RingBuf::try_from(take(det::map_names::SYSSEQ)?).map_err(|e| map_err(det::map_names::SYSSEQ, e))?),
            },
        };
        let mut dp = Dataplane { ebpf, maps, pin_dir: pin_dir.to_path_buf(), attached: BTreeMap::new(), tracepoints: BTreeMap::new(), sys_enter: None, syscall_probe };
        // Exec and fork are rare events: their probes are always on (they return at once for
        // unmonitored cgroups). The syscall probe is attached only while someone needs it.
        dp.set_tracepoint(programs::EXEC, true)?;
        dp.set_tracepoint(programs::FORK, true)?;
        // A previous agent stopped with its enforcement kept (pinned links): the new probes
        // run now, so the old ones can go.
        for name in [programs::EXEC, programs::FORK] {
            let _ = std::fs::remove_file(dp.pin_dir.join(LINKS_DIR).join(name));
        }
        Ok(dp)
    }

    /// Attaches (`on`) or detaches a detector tracepoint program. Idempotent.
    pub fn set_tracepoint(&mut self, name: &'static str, on: bool) -> Result<(), AgentError> {
        let (_, category, tp) = TRACEPOINTS
            .iter()
            .find(|(n, _, _)| *n == name)
            .copied()
            .ok_or_else(|| map_err("programs", format!("{name} is not a tracepoint program")))?;
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| map_err("programs", format!("{name} missing")))?
            .try_into()
            .map_err(|e| AgentError::Program { program: static_name(name), source: e })?;
        match (on, self.tracepoints.get(name)) {
            (true, None) => {
                let id = prog.attach(category, tp).map_err(|e| AgentError::Program { program: static_name(name), source: e })?;
                self.tracepoints.insert(name, id);
            }
            (false, Some(_)) => {
                let id = self.tracepoints.remove(name).expect("checked");
                prog.detach(id).map_err(|e| AgentError::Program { program: static_name(name), source: e })?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Attaches (`on`) or detaches the syscall probe ([`SyscallProbe`]: fentry on
    /// `x64_sys_call` where it loads, else the raw tracepoint sys_enter). Idempotent.
    /// While attached, every syscall of every task runs it (it returns at once for
    /// unmonitored cgroups), so it is attached only while a workload wants syscall counts.
    pub fn set_syscall_probe(&mut self, on: bool) -> Result<(), AgentError> {
        match (on, self.sys_enter.take()) {
            (true, None) => {
                self.sys_enter = Some(match self.syscall_probe {
                    SyscallProbe::FEntry => SyscallLink::FEntry(
                        self.fentry()?.attach().map_err(|e| AgentError::Program { program: programs::SYS_CALL, source: e })?,
                    ),
                    SyscallProbe::BtfTracepoint => SyscallLink::BtfTracepoint(
                        self.btf_sys_enter()?.attach().map_err(|e| AgentError::Program { program: programs::SYS_ENTER_BTF, source: e })?,
                    ),
                    SyscallProbe::RawTracepoint => SyscallLink::RawTracepoint(
                        self.raw_sys_enter()?.attach("sys_enter").map_err(|e| AgentError::Program { program: programs::SYS_ENTER, source: e })?,
                    ),
                });
            }
            (false, Some(SyscallLink::FEntry(id))) => {
                self.fentry()?.detach(id).map_err(|e| AgentError::Program { program: programs::SYS_CALL, source: e })?
            }
            (false, Some(SyscallLink::BtfTracepoint(id))) => {
                self.btf_sys_enter()?.detach(id).map_err(|e| AgentError::Program { program: programs::SYS_ENTER_BTF, source: e })?
            }
            (false, Some(SyscallLink::RawTracepoint(id))) => {
                self.raw_sys_enter()?.detach(id).map_err(|e| AgentError::Program { program: programs::SYS_ENTER, source: e })?
            }
            (_, keep) => self.sys_enter = keep,
        }
        Ok(())
    }

    /// How the syscall probe attaches on this kernel (and with [`SYSCALL_PROBE_ENV`]).
    pub fn syscall_probe(&self) -> SyscallProbe {
        self.syscall_probe
    }

    fn raw_sys_enter(&mut self) -> Result<&mut RawTracePoint, AgentError> {
        self.ebpf
            .program_mut(programs::SYS_ENTER)
            .ok_or_else(|| map_err("programs", "syscall probe missing"))?
            .try_into()
            .map_err(|e| AgentError::Program { program: programs::SYS_ENTER, source: e })
    }

    fn btf_sys_enter(&mut self) -> Result<&mut BtfTracePoint, AgentError> {
        self.ebpf
            .program_mut(programs::SYS_ENTER_BTF)
            .ok_or_else(|| map_err("programs", "tp_btf syscall probe missing"))?
            .try_into()
            .map_err(|e| AgentError::Program { program: programs::SYS_ENTER_BTF, source: e })
    }

    fn fentry(&mut self) -> Result<&mut FEntry, AgentError> {
        self.ebpf
            .program_mut(programs::SYS_CALL)
            .ok_or_else(|| map_err("programs", "fentry syscall probe missing"))?
            .try_into()
            .map_err(|e| AgentError::Program { program: programs::SYS_CALL, source: e })
    }

    /// Whether a detector probe (exec, fork, syscalls) is attached. The syscall probe answers
    /// to both of its names, whichever attachment it uses.
    pub fn probe_attached(&self, name: &str) -> bool {
        if [programs::SYS_ENTER, programs::SYS_CALL, programs::SYS_ENTER_BTF].contains(&name) { self.sys_enter.is_some() } else { self.tracepoints.contains_key(name) }
    }

    /// Pins the TC links of every interface and the exec and fork probes' links under
    /// `<pin dir>/links`, so the kernel keeps enforcing (policy, isolation, protect) while no
    /// agent runs. The next agent on this pin folder replaces them by its own (attach first,
    /// then unpin: no gap). The XDP pre-filter and the syscall probe are not kept.
    pub fn pin_links(&mut self) -> Result<usize, AgentError> {
        let dir = self.pin_dir.join(LINKS_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::PinDir { path: dir.clone(), source: e })?;
        let mut pinned = 0;
        let attached: Vec<(String, Attachment)> = std::mem::take(&mut self.attached).into_iter().collect();
        for (ifname, a) in attached {
            for (prog, id, suffix) in [(programs::FROM_POD, a.from_pod, "from"), (programs::TO_POD, a.to_pod, "to")] {
                let link = self.classifier(prog)?.take_link(id).map_err(|e| AgentError::Program { program: static_name(prog), source: e })?;
                let fd: FdLink = link.try_into().map_err(|e| map_err("links", format!("{ifname} {suffix}: {e}")))?;
                let path = dir.join(format!("{ifname}-{suffix}"));
                let _ = std::fs::remove_file(&path);
                fd.pin(&path).map_err(|e| map_err("links", format!("pinning {}: {e}", path.display())))?;
                pinned += 1;
            }
            if let (Some(l), Ok(x)) = (a.xdp, self.xdp()) {
                let _ = x.detach(l);
            }
        }
        for name in [programs::EXEC, programs::FORK] {
            let Some(id) = self.tracepoints.remove(name) else { continue };
            let prog: &mut TracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| map_err("programs", format!("{name} missing")))?
                .try_into()
                .map_err(|e| AgentError::Program { program: static_name(name), source: e })?;
            let link = prog.take_link(id).map_err(|e| AgentError::Program { program: static_name(name), source: e })?;
            let fd: FdLink = link.try_into().map_err(|e| map_err("links", format!("{name}: {e}")))?;
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            fd.pin(&path).map_err(|e| map_err("links", format!("pinning {}: {e}", path.display())))?;
            pinned += 1;
        }
        Ok(pinned)
    }

    /// The bpffs folder holding this instance's pins.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// A loaded TC program by name (benchmarks run them through BPF_PROG_TEST_RUN).
    pub fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, AgentError> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| map_err("programs", format!("{name} missing")))?
            .try_into()
            .map_err(|e| AgentError::Program { program: static_name(name), source: e })
    }

    /// Interfaces with programs attached, and their indexes.
    pub fn attached(&self) -> impl Iterator<Item = (&str, u32)> {
        self.attached.iter().map(|(k, a)| (k.as_str(), a.ifindex))
    }

    /// Attaches both TC programs (tcx) and the XDP pre-filter to `ifname` in the calling
    /// thread's network namespace. Returns the interface index.
    pub fn attach(&mut self, ifname: &str) -> Result<u32, AgentError> {
        if let Some(a) = self.attached.get(ifname) {
            return Ok(a.ifindex);
        }
        let ifindex = netns::ifindex(ifname)
            .ok_or_else(|| AgentError::Interface { ifname: ifname.into(), detail: "no such interface".into() })?;
        let tcx = || TcAttachOptions::TcxOrder(LinkOrder::default());
        let from_pod = self
            .classifier(programs::FROM_POD)?
            .attach_with_options(ifname, TcAttachType::Ingress, tcx())
            .map_err(|e| AgentError::Program { program: programs::FROM_POD, source: e })?;
        let to_pod = match self
            .classifier(programs::TO_POD)?
            .attach_with_options(ifname, TcAttachType::Egress, tcx())
        {
            Ok(l) => l,
            Err(e) => {
                let _ = self.classifier(programs::FROM_POD)?.detach(from_pod);
                return Err(AgentError::Program { program: programs::TO_POD, source: e });
            }
        };
        // The pre-filter is an optimisation in front of TC (which also fails closed), so an
        // XDP attach failure is logged, not fatal.
        let xdp = match self.xdp()?.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(ifname, error = %e, "XDP pre-filter not attached; TC still enforces");
                None
            }
        };
        self.attached.insert(ifname.to_string(), Attachment { ifindex, from_pod, to_pod, xdp });
        // Links kept by a previous agent (pin_links) on this interface: ours run now.
        for suffix in ["from", "to"] {
            let _ = std::fs::remove_file(self.pin_dir.join(LINKS_DIR).join(format!("{ifname}-{suffix}")));
        }
        Ok(ifindex)
    }

    /// Detaches everything from `ifname` (the interface may already be gone).
    pub fn detach(&mut self, ifname: &str) {
        let Some(a) = self.attached.remove(ifname) else { return };
        if let Ok(p) = self.classifier(programs::FROM_POD) {
            let _ = p.detach(a.from_pod);
        }
        if let Ok(p) = self.classifier(programs::TO_POD) {
            let _ = p.detach(a.to_pod);
        }
        if let (Some(l), Ok(x)) = (a.xdp, self.xdp()) {
            let _ = x.detach(l);
        }
    }

    fn xdp(&mut self) -> Result<&mut Xdp, AgentError> {
        self.ebpf
            .program_mut(programs::XDP_PREFILTER)
            .ok_or_else(|| map_err("programs", "xdp prefilter missing"))?
            .try_into()
            .map_err(|e| AgentError::Program { program: programs::XDP_PREFILTER, source: e })
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<Vec<(String, u64)>, AgentError> {
        let mut out = Vec::new();
        for (i, name) in bulkhead_common::counters::NAMES.iter().enumerate() {
            let v = self.maps.counters.get(&(i as u32), 0).map_err(|e| map_err(map_names::COUNTERS, e))?;
            out.push((name.to_string(), v.iter().sum()));
        }
        Ok(out)
    }

    /// Per-policy counters summed over CPUs, for policies with any count.
    pub fn policy_stats(&self, policies: u32) -> Result<Vec<(u32, bulkhead_common::PolicyStatsV1)>, AgentError> {
        read_policy_stats(&self.maps.policy_stats, policies)
    }

    /// Detaches every interface and removes the pins: the instance leaves nothing behind.
    pub fn unload(mut self) {
        let names: Vec<String> = self.attached.keys().cloned().collect();
        for n in names {
            self.detach(&n);
        }
        for m in ALL_MAPS {
            let _ = std::fs::remove_file(self.pin_dir.join(m));
        }
        for p in [programs::FROM_POD, programs::TO_POD, programs::NOOP, programs::XDP_PREFILTER] {
            let _ = std::fs::remove_file(self.pin_dir.join(p));
        }
        // Links a previous agent kept: removing the pins detaches them.
        let links = self.pin_dir.join(LINKS_DIR);
        if let Ok(rd) = std::fs::read_dir(&links) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&links);
        let _ = std::fs::remove_dir(&self.pin_dir);
        if let Some(parent) = self.pin_dir.parent() {
            // Removes the shared parent only when no other instance uses it.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Loads the syscall probe's BTF variant chosen by [`SYSCALL_PROBE_ENV`], if any;
/// returns the attachment to use. Where it cannot load (no BTF, trampolines refused: on the
/// project's machine kind fentry loading fails with EPERM), the raw tracepoint is used, which
/// counts the same syscalls at a higher cost.
fn load_syscall_probe(ebpf: &mut Ebpf) -> SyscallProbe {
    let want = match std::env::var(SYSCALL_PROBE_ENV).as_deref() {
        Ok("raw_tp") | Err(_) => return SyscallProbe::RawTracepoint,
        Ok("tp_btf") => SyscallProbe::BtfTracepoint,
        Ok("fentry") => SyscallProbe::FEntry,
        Ok(other) => {
            tracing::warn!(value = other, "{SYSCALL_PROBE_ENV}: expected raw_tp, tp_btf or fentry; using raw_tp");
            return SyscallProbe::RawTracepoint;
        }
    };
    let res = Btf::from_sys_fs().map_err(|e| e.to_string()).and_then(|btf| match want {
        SyscallProbe::BtfTracepoint => {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(programs::SYS_ENTER_BTF)
                .ok_or_else(|| "missing from the object".to_string())?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| e.to_string())?;
            p.load("sys_enter", &btf).map_err(|e| e.to_string())
        }
        _ => {
            let p: &mut FEntry = ebpf
                .program_mut(programs::SYS_CALL)
                .ok_or_else(|| "missing from the object".to_string())?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| e.to_string())?;
            p.load("x64_sys_call", &btf).map_err(|e| e.to_string())
        }
    });
    match res {
        Ok(()) => want,
        Err(e) => {
            tracing::warn!(error = %e, wanted = ?want, "syscall probe falls back to the raw tracepoint sys_enter");
            SyscallProbe::RawTracepoint
        }
    }
}

/// LPM key helper for the IP cache.
pub fn ipcache_key(addr: std::net::Ipv4Addr, prefix_len: u8) -> Key<IpCacheKeyV1> {
    Key::new(prefix_len as u32, IpCacheKeyV1 { addr_be: addr.octets() })
}

fn static_name(name: &str) -> &'static str {
    match name {
        programs::FROM_POD => programs::FROM_POD,
        programs::TO_POD => programs::TO_POD,
        programs::NOOP => programs::NOOP,
        programs::EXEC => programs::EXEC,
        programs::FORK => programs::FORK,
        programs::SYS_ENTER => programs::SYS_ENTER,
        programs::SYS_CALL => programs::SYS_CALL,
        programs::SYS_ENTER_BTF => programs::SYS_ENTER_BTF,
        _ => programs::XDP_PREFILTER,
    }
}

/// Sums per-CPU policy counters of the first `policies` indexes; skips policies that never
/// counted anything.
pub fn read_policy_stats<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, PolicyStatsV1>,
    policies: u32,
) -> Result<Vec<(u32, PolicyStatsV1)>, AgentError> {
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
