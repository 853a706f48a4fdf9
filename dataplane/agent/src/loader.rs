//! Loads the embedded eBPF object, pins its maps under the agent's bpffs folder and attaches
//! the programs to pod interfaces (tcx on both directions, XDP pre-filter).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp,
        tc::{SchedClassifierLinkId, TcAttachOptions},
        xdp::{XdpLinkId, XdpMode},
    },
};
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
}

const ALL_MAPS: [&str; 11] = [
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
}

/// The loaded programs and maps of one agent instance.
pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
    pin_dir: PathBuf,
    attached: BTreeMap<String, Attachment>,
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
        };
        Ok(Dataplane { ebpf, maps, pin_dir: pin_dir.to_path_buf(), attached: BTreeMap::new() })
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
        let _ = std::fs::remove_dir(&self.pin_dir);
        if let Some(parent) = self.pin_dir.parent() {
            // Removes the shared parent only when no other instance uses it.
            let _ = std::fs::remove_dir(parent);
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
