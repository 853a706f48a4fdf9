//! Every map the programs use. Keys and values come from `bulkhead-common`; names carry a
//! layout version so an agent never reads a pinned map of another layout.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use bulkhead_common::detect::{
    self as det, AllowKey6V1, AllowKeyV2, DetEventV2, ExecKeyV1, FileDataV1, FileKeyV1, FileRuleV1, IdentKeyV1, IsolationV1, KernelOffsetsV1, LearnedKeyV1, LineageKeyV1, SyscallKeyV1, WorkloadV1,
};
use bulkhead_common::ct::{Ct6SlotV1, CtSlotV1};
use bulkhead_common::{
    ConfigV2, Ct6KeyV1, DropRateV1, EndpointV4, IpCache6KeyV1, IpCacheKeyV1, IpInfoV3, IpSlot6V1, IpSlotV1, PeerKeyV2, PeerSliceV1, PolicyStatsV1,
    PolicyValueV2, PortKeyV1, capacity,
    slots::{self, PeerSlotV1, PortSlotV1},
};

/// Key: host-side interface index below `capacity::IFINDEX_DIRECT` (array index). Value: the
/// endpoint behind it (identity and flags per policy generation; `present` 0 = none). Written
/// by the agent when a pod's interface appears and for the inactive generation before a flip;
/// read by TC and XDP on every packet (through [`endpoint`]).
#[map(name = "BH_EP_DIRECT_V4")]
pub static ENDPOINTS_DIRECT: Array<EndpointV4> = Array::with_max_entries(capacity::IFINDEX_DIRECT, 0);

/// As [`ENDPOINTS_DIRECT`], for interface indexes from `capacity::IFINDEX_DIRECT` up (hash).
#[map(name = "BH_EP_V4")]
pub static ENDPOINTS: HashMap<u32, EndpointV4> = HashMap::with_max_entries(capacity::ENDPOINTS, 0);

/// The endpoint behind host interface `ifindex`, if it is one. Most interfaces are found in
/// the array, whose lookup the verifier inlines: no call on the hot path.
#[inline(always)]
pub fn endpoint(ifindex: u32) -> Option<&'static EndpointV4> {
    if bulkhead_common::ifindex_is_direct(ifindex) {
        match ENDPOINTS_DIRECT.get(ifindex) {
            Some(ep) if ep.present != 0 => Some(ep),
            _ => None,
        }
    } else {
        // SAFETY: a map value stays valid for the program's run (the agent replaces entries,
        // it never frees one under a reader); read in place rather than copied to the stack.
        unsafe { ENDPOINTS.get(&ifindex) }
    }
}

/// Key: IPv4 address (network order). Value: its identity in policy generation 0. Pods'
/// addresses live here, so pod-to-pod traffic resolves its peer with one hash lookup. Written by
/// the agent from the compiler's output while generation 0 is inactive; read by TC for the
/// remote address while it is enforced.
#[map(name = "BH_IPHOST_G0_V2")]
pub static IPHOST_G0: HashMap<[u8; 4], IpInfoV3> = HashMap::with_max_entries(capacity::IPCACHE, 0);

/// As [`IPHOST_G0`], for policy generation 1.
#[map(name = "BH_IPHOST_G1_V2")]
pub static IPHOST_G1: HashMap<[u8; 4], IpInfoV3> = HashMap::with_max_entries(capacity::IPCACHE, 0);

/// Key: `ip_slot(address)` (array index). Value: the address and its identity in policy
/// generation 0, for one address per slot (the others are in IPHOST_G0). Written by the agent
/// while generation 0 is inactive; read by TC first for the remote address: an inlined array
/// read, where the hash lookup is a call.
#[map(name = "BH_IPSLOT_G0_V1")]
pub static IPSLOT_G0: Array<IpSlotV1> = Array::with_max_entries(capacity::IPSLOT, 0);

/// As [`IPSLOT_G0`], for policy generation 1.
#[map(name = "BH_IPSLOT_G1_V1")]
pub static IPSLOT_G1: Array<IpSlotV1> = Array::with_max_entries(capacity::IPSLOT, 0);

/// Key: IPv4 prefix shorter than /32 (LPM). Value: the identity of the addresses in it, in
/// policy generation 0. Written by the agent while generation 0 is inactive; read by TC when
/// IPHOST_G0 has no entry for the remote address.
#[map(name = "BH_IPCACHE_G0_V2")]
pub static IPCACHE_G0: LpmTrie<IpCacheKeyV1, IpInfoV3> = LpmTrie::with_max_entries(capacity::IPCACHE, 0);

/// As [`IPCACHE_G0`], for policy generation 1.
#[map(name = "BH_IPCACHE_G1_V2")]
pub static IPCACHE_G1: LpmTrie<IpCacheKeyV1, IpInfoV3> = LpmTrie::with_max_entries(capacity::IPCACHE, 0);

/// Key: `ip_slot6(address)` (array index). Value: the IPv6 address and its identity in policy
/// generation 0, for one address per slot (the others are in IPHOST6_G0). Written by the
/// agent while generation 0 is inactive; read by TC first for the remote IPv6 address.
#[map(name = "BH_IPSLOT6_G0_V1")]
pub static IPSLOT6_G0: Array<IpSlot6V1> = Array::with_max_entries(capacity::IPSLOT6, 0);

/// As [`IPSLOT6_G0`], for policy generation 1.
#[map(name = "BH_IPSLOT6_G1_V1")]
pub static IPSLOT6_G1: Array<IpSlot6V1> = Array::with_max_entries(capacity::IPSLOT6, 0);

/// Key: IPv6 address (network order). Value: its identity in policy generation 0 (pods'
/// addresses). Written by the agent while generation 0 is inactive; read by TC for the remote
/// address of IPv6 packets while it is enforced. Not preallocated: IPv4-only clusters pay
/// no memory for it.
#[map(name = "BH_IPHOST6_G0_V1")]
pub static IPHOST6_G0: HashMap<[u8; 16], IpInfoV3> = HashMap::with_max_entries(capacity::IPCACHE, BPF_F_NO_PREALLOC);

/// As [`IPHOST6_G0`], for policy generation 1.
#[map(name = "BH_IPHOST6_G1_V1")]
pub static IPHOST6_G1: HashMap<[u8; 16], IpInfoV3> = HashMap::with_max_entries(capacity::IPCACHE, BPF_F_NO_PREALLOC);

/// Key: IPv6 prefix shorter than /128 (LPM). Value: the identity of the addresses in it, in
/// policy generation 0 (`::/0` holds the identity of addresses in no policy prefix when that
/// differs from a miss). Written by the agent while generation 0 is inactive; read by TC when
/// IPHOST6_G0 has no entry for the remote address.
#[map(name = "BH_IPCACHE6_G0_V1")]
pub static IPCACHE6_G0: LpmTrie<IpCache6KeyV1, IpInfoV3> = LpmTrie::with_max_entries(capacity::IPCACHE, 0);

/// As [`IPCACHE6_G0`], for policy generation 1.
#[map(name = "BH_IPCACHE6_G1_V1")]
pub static IPCACHE6_G1: LpmTrie<IpCache6KeyV1, IpInfoV3> = LpmTrie::with_max_entries(capacity::IPCACHE, 0);

/// Key: (local identity, peer class or any, direction (+ staged bit, + generation bit),
/// protocol or any). Value: the slice of the verdict table judging that traffic (the verdict
/// for most ports, whether port exceptions exist) and where the exceptions are. Written by the
/// agent from the compiler's layout into the inactive generation; read by TC for new flows and
/// after policy changes.
///
/// Only the keys whose slot in [`PEER_SLOTS`] holds another key: read when that slot is MORE.
#[map(name = "BH_PEER_V3")]
pub static PEERS: HashMap<PeerKeyV2, PeerSliceV1> = HashMap::with_max_entries(capacity::POLICY, 0);

/// Key: [`bulkhead_common::slots::peer_index`] of a generation-free peer key (generation 1 in
/// the second half). Value: the lowest key of that slot and its slice, MORE when others are in
/// [`PEERS`]. Written by the agent into the inactive generation; read by TC before [`PEERS`]
/// (inlined, where a hash lookup is a call).
#[map(name = "BH_PEER_SLOT_V1")]
pub static PEER_SLOTS: Array<PeerSlotV1> = Array::with_max_entries(2 * slots::PEER_SLOTS, 0);

/// Key: a slice's table, direction and protocol plus one port (exact). Value: that port's
/// verdict where it differs from the slice's. Written by the agent; read by TC when the slice
/// has HAS_PORTS and the port's filter bit is set.
///
/// Only the keys whose slot in [`PORT_SLOTS`] holds another key: read when that slot is MORE.
#[map(name = "BH_PORT_V4")]
pub static PORTS: HashMap<PortKeyV1, PolicyValueV2> = HashMap::with_max_entries(capacity::POLICY, 0);

/// Key: [`bulkhead_common::slots::port_index`] of a generation-free port key. Value: the
/// lowest key of that slot and its verdict, MORE when others are in [`PORTS`]. Written by the
/// agent into the inactive generation; read by TC before [`PORTS`].
#[map(name = "BH_PORT_SLOT_V1")]
pub static PORT_SLOTS: Array<PortSlotV1> = Array::with_max_entries(2 * slots::PORT_SLOTS, 0);

/// Key: a slice key plus a port prefix (LPM). Value: the verdict of that port range where it
/// differs from the slice's. Written by the agent; read by TC when the slice has HAS_RANGES.
#[map(name = "BH_RANGE_V3")]
pub static RANGES: LpmTrie<PortKeyV1, PolicyValueV2> = LpmTrie::with_max_entries(capacity::POLICY, 0);

/// Key: IPv4 source prefix (LPM). Value: 1. Written by `bulkhead prefilter add/remove`; read
/// by the uplink pre-filter (XDP) on every packet of the interfaces it is attached to.
#[map(name = "BH_UPLINK_DENY_V1")]
pub static UPLINK_DENY: LpmTrie<IpCacheKeyV1, u32> = LpmTrie::with_max_entries(capacity::UPLINK_DENY, 0);

/// Key: IPv6 source prefix (LPM). Value: 1. Written by `bulkhead prefilter add/remove`; read
/// by the uplink pre-filter for IPv6 packets.
#[map(name = "BH_UPLINK_DENY6_V1")]
pub static UPLINK_DENY6: LpmTrie<IpCache6KeyV1, u32> = LpmTrie::with_max_entries(capacity::UPLINK_DENY, 0);

/// Key: host ifindex below `capacity::IFINDEX_DIRECT`. Value: per-CPU bytes (both directions)
/// of the flows that endpoint opened. Written by TC; read by the detector's egress-volume check.
#[map(name = "BH_EGRESS_BYTES_V1")]
pub static EGRESS_BYTES: PerCpuArray<u64> = PerCpuArray::with_max_entries(capacity::IFINDEX_DIRECT, 0);

/// Adds a packet of a flow the endpoint opened to its egress volume (an inlined array
/// update; interfaces past the array are left to the detector's conntrack walk).
#[inline(always)]
pub fn add_egress_bytes(ifindex: u32, len: u32) {
    if let Some(slot) = EGRESS_BYTES.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += u64::from(len) };
    }
}

/// Key: host ifindex below `capacity::IFINDEX_DIRECT`. Value: [`det::watch_flags`] of that
/// endpoint (a monitored workload's: report every new flow; in protect mode, drop new flows
/// outside the learned destinations). Written by the detector; read by TC.
#[map(name = "BH_FLOW_WATCH_V1")]
pub static FLOW_WATCH: Array<u32> = Array::with_max_entries(capacity::IFINDEX_DIRECT, 0);

/// Whether every new flow of the endpoint behind `ifindex` is reported: an inlined array
/// read; interfaces past the array follow the global flag.
#[inline(always)]
pub fn flow_watched(ifindex: u32, cfg: &ConfigV2) -> bool {
    // The slot is read only when the flag does not decide already.
    let slot = if cfg.flags & bulkhead_common::config_flags::FLOW_RECORDS == 0 { FLOW_WATCH.get(ifindex).copied().unwrap_or(0) } else { 0 };
    bulkhead_common::flow_reported(cfg.flags, ifindex, slot)
}

/// The endpoint's [`det::watch_flags`] (0 for interfaces past the array: reported through
/// the global flag, never dropped for the detector).
#[inline(always)]
pub fn watch_flags(ifindex: u32) -> u32 {
    if bulkhead_common::ifindex_is_direct(ifindex) {
        FLOW_WATCH.get(ifindex).copied().unwrap_or(0)
    } else {
        0
    }
}

/// Key: (endpoint ifindex, destination, port, protocol; or port and protocol 0 for "a learned
/// peer"). Value: 1. Written by the agent from protect-mode workloads' profiles (and by its
/// network thread when it finds an entry missing); read by TC on a new outbound flow of an
/// endpoint with [`det::watch_flags::DROP_NEW_PEER`] or `DROP_NEW_PORT`.
#[map(name = "BH_DET_LEARNED_V1")]
pub static LEARNED: HashMap<LearnedKeyV1, u8> = HashMap::with_max_entries(det::capacity::LEARNED, 0);

/// Key: policy index. Value: per-CPU allow/deny and would-allow/would-deny counts.
/// Written by TC on every judged new flow; read by `bulkhead policy stats`.
#[map(name = "BH_POLICY_STATS_V1")]
pub static POLICY_STATS: PerCpuArray<PolicyStatsV1> =
    PerCpuArray::with_max_entries(capacity::POLICIES, 0);

/// Flow events (`FlowEventV5`): new flows (when enabled), Log-rule matches, revoked flows and
/// rate-limited drops. Written by TC; read by the agent's flow log.
#[map(name = "BH_FLOWS_V5")]
pub static FLOWS: RingBuf = RingBuf::with_byte_size(capacity::FLOW_RING_BYTES, 0);

/// Key: slot index (bucket * WAYS + way, see `bulkhead_common::ct`). Value: a flow's
/// 5-tuple at one interface, its state and the policy revision it was admitted under. Written
/// by TC (insert, update in place, remove); read by TC; read and garbage-collected by the
/// agent through a memory mapping (hence BPF_F_MMAPABLE). An array because the verifier
/// inlines its lookups: the table is probed without a call ([`crate::conntrack`]).
#[map(name = "BH_CT_V4")]
pub static CONNTRACK: Array<CtSlotV1> = Array::with_max_entries(capacity::CONNTRACK, BPF_F_MMAPABLE);

/// As [`CONNTRACK`], for IPv6 flows.
#[map(name = "BH_CT6_V3")]
pub static CONNTRACK6: Array<Ct6SlotV1> = Array::with_max_entries(capacity::CONNTRACK, BPF_F_MMAPABLE);

/// Key: 0. Value: the IPv6 packet being judged (its tuple, an ICMPv6 error's own source, its
/// conntrack key): 16-byte addresses would crowd the 512-byte BPF stack. Written and read by
/// TC only, within one packet (per CPU, programs do not preempt each other on one CPU).
#[map(name = "BH_SCRATCH6_V1")]
pub static SCRATCH6: PerCpuArray<Scratch6> = PerCpuArray::with_max_entries(1, 0);

/// The per-CPU scratch of an IPv6 packet ([`SCRATCH6`]).
#[repr(C)]
pub struct Scratch6 {
    pub flow: crate::parse::Flow6,
    pub err_saddr: crate::family::In6,
    pub key: Ct6KeyV1,
    /// The established-flow fast path's conntrack key (see `fast`).
    pub fast: crate::conntrack::Key6,
}

/// Key: 0. Value: global configuration (policy revision, conntrack timeouts).
/// Written by the agent; read by TC.
#[map(name = "BH_CONFIG_V2")]
pub static CONFIG: Array<ConfigV2> = Array::with_max_entries(1, 0);

/// Key: drop reason (a `bulkhead_common::counters` index) + COUNTERS * (direction - 1).
/// Value: per-CPU packet count. Written by TC on every drop; read by `bulkhead status`.
#[map(name = "BH_DROPS_V1")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(capacity::COUNTERS * 2, 0);

/// Key: 0. Value: this CPU's drop-event budget for the current second. Written and read by TC.
#[map(name = "BH_DROP_RATE_V1")]
pub static DROP_RATE: PerCpuArray<DropRateV1> = PerCpuArray::with_max_entries(1, 0);

/// Key: counter index (`bulkhead_common::counters`). Value: per-CPU packet count.
/// Written by TC and XDP; read and summed by the agent.
#[map(name = "BH_COUNTERS_V1")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(capacity::COUNTERS, 0);

/// Key: cgroup v2 id. Value: how the workload is monitored (mode, profile, endpoint, flags).
/// Written by the agent; read by the exec, fork and syscall probes, which return at once for
/// cgroups not in it (only monitored workloads pay for probes).
#[map(name = "BH_DET_WL_V1")]
pub static WORKLOADS: HashMap<u64, WorkloadV1> = HashMap::with_max_entries(det::capacity::WORKLOADS, 0);

/// Key: (profile id, exec path hash). Value: 1. Written by the agent from learned profiles;
/// read by the exec probe in monitor and protect mode.
#[map(name = "BH_DET_EXEC_V1")]
pub static EXEC_ALLOW: HashMap<ExecKeyV1, u8> = HashMap::with_max_entries(det::capacity::EXEC_ALLOW, 0);

/// Key: host-side ifindex below `capacity::IFINDEX_DIRECT` (array index). Value: since when
/// and why the endpoint is isolated (`since_ns` 0: not isolated). Written by the exec probe
/// (protect mode) and the agent; cleared by release; read by TC on every packet (through
/// [`isolated`]). Pinned, so isolation survives an agent restart.
#[map(name = "BH_ISOLATE_DIRECT_V2")]
pub static ISOLATION_DIRECT: Array<IsolationV1> = Array::with_max_entries(capacity::IFINDEX_DIRECT, 0);

/// As [`ISOLATION_DIRECT`], for interface indexes from `capacity::IFINDEX_DIRECT` up (hash).
#[map(name = "BH_ISOLATE_V2")]
pub static ISOLATION: HashMap<u32, IsolationV1> = HashMap::with_max_entries(det::capacity::ISOLATION, 0);

/// Whether the endpoint behind `ifindex` is isolated: an inlined array read for most
/// interfaces, so the check costs no call on the hot path.
#[inline(always)]
pub fn isolated(ifindex: u32) -> bool {
    if bulkhead_common::ifindex_is_direct(ifindex) {
        matches!(ISOLATION_DIRECT.get(ifindex), Some(iso) if iso.since_ns != 0)
    } else {
        ISOLATION.get_ptr(&ifindex).is_some()
    }
}

/// Isolates the endpoint behind `ifindex`; false when the entry could not be written.
#[inline(always)]
pub fn isolate(ifindex: u32, iso: &IsolationV1) -> bool {
    if bulkhead_common::ifindex_is_direct(ifindex) {
        match ISOLATION_DIRECT.get_ptr_mut(ifindex) {
            Some(slot) => {
                // SAFETY: a valid array slot; TC readers only test `since_ns`, which is
                // written in one aligned 8-byte store (and never 0: see the caller).
                unsafe { *slot = *iso };
                true
            }
            None => false,
        }
    } else {
        ISOLATION.insert(&ifindex, iso, 0).is_ok()
    }
}

/// Key: (endpoint ifindex or 0 = all, address or 0.0.0.0, port, protocol) an isolated endpoint
/// may still reach. Value: 1.
/// Written by the agent; read by TC for packets of isolated endpoints.
#[map(name = "BH_ISOALLOW_V2")]
pub static ISOLATION_ALLOW: HashMap<AllowKeyV2, u8> =
    HashMap::with_max_entries(det::capacity::ISOLATION_ALLOW, 0);

/// Key: (endpoint ifindex or 0 = all, IPv6 address, port, protocol) an isolated endpoint may
/// still reach. Value: 1. Written by the agent; read by TC for IPv6 packets of isolated
/// endpoints (their any-address entries are in ISOLATION_ALLOW).
#[map(name = "BH_ISOALLOW6_V1")]
pub static ISOLATION_ALLOW6: HashMap<AllowKey6V1, u8> =
    HashMap::with_max_entries(det::capacity::ISOLATION_ALLOW, 0);

/// Exec and file events (`DetEventV2`). Written by the exec and file probes; read by the
/// agent's detector thread.
#[map(name = "BH_DET_EVENTS_V2")]
pub static DET_EVENTS: RingBuf = RingBuf::with_byte_size(det::capacity::EVENT_RING_BYTES, 0);

/// Key: 0. Value: the event being built (too big for the BPF stack). Written and read by the
/// exec probe only.
#[map(name = "BH_DET_SCRATCH_V2")]
pub static DET_SCRATCH: PerCpuArray<DetEventV2> = PerCpuArray::with_max_entries(1, 0);

/// Key: (cgroup id, syscall number). Value: per-CPU count. Written by the syscall probe for
/// workloads with the SYSCALLS flag; read (summed) and cleared by the agent.
#[map(name = "BH_DET_SYSCALLS_V1")]
pub static SYSCALLS: PerCpuHashMap<SyscallKeyV1, u64> = PerCpuHashMap::with_max_entries(det::capacity::SYSCALLS, 0);

/// Key: pid of a task forked in a monitored workload. Value: its parent's pid. Written by the
/// fork probe; read by the exec probe (the parent of an exec). LRU: old tasks fall out.
#[map(name = "BH_DET_PARENTS_V1")]
pub static PARENTS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(det::capacity::PARENTS, 0);

/// Key: pid (tgid) of a process of a monitored workload. Value: `path_hash` of its image.
/// Written by the exec probe (after judging an exec) and the fork probe (a child inherits its
/// parent's image); read by the exec probe, for which the calling image is the new one's
/// parent. LRU: old processes fall out.
#[map(name = "BH_DET_EXE_V1")]
pub static EXE: LruHashMap<u32, u64> = LruHashMap::with_max_entries(det::capacity::EXE, 0);

/// Key: (profile, parent image hash, child path hash). Value: 1. Written by the agent from the
/// profiles' learned lineage; read by the exec probe for workloads with the LINEAGE flag.
#[map(name = "BH_DET_LINEAGE_V1")]
pub static LINEAGE: HashMap<LineageKeyV1, u8> = HashMap::with_max_entries(det::capacity::LINEAGE, 0);

/// Key: 0. Value: the kernel struct offsets the exec probe follows to the executable's inode
/// (`valid` 0: identities are not judged). Written by the agent at load, from the kernel's
/// BTF; read by the exec probe.
#[map(name = "BH_DET_KOFFSETS_V1")]
pub static KOFFSETS: Array<KernelOffsetsV1> = Array::with_max_entries(1, 0);

/// Key: (workload cgroup id, path hash). Value: the identity of the file the workload ran
/// from that path (device, inode, change time). Written by the exec probe (learn mode: the
/// latest; monitor and protect: the first, trust on first use) and cleared by the agent when
/// it stops monitoring the workload; read by the exec probe.
#[map(name = "BH_DET_IDENT_V1")]
pub static IDENT: HashMap<IdentKeyV1, u64> = HashMap::with_max_entries(det::capacity::IDENT, 0);

/// Syscall records (`SyscallRecordV1`) of workloads with the SYSCALL_SEQ flag, in each
/// thread's order. Written by the syscall probe; read by the agent's sequence-model thread.
/// A full ring drops the record (counted as DET_SYSSEQ_DROPPED), never the syscall.
#[map(name = "BH_DET_SYSSEQ_V1")]
pub static SYSSEQ: RingBuf = RingBuf::with_byte_size(det::capacity::SYSSEQ_RING_BYTES, 0);

/// Key: (class, profile id, path) as an LPM prefix. Value: the rule (operations, subtree
/// operations, its path length). Learned directories, sensitive path prefixes and sensitive
/// files read while learning, of every profile with a file baseline. Written by the agent
/// (event thread while learning, agent thread on mode changes and imports); read by the file
/// probe. The trie's longest match answers "which learned directory holds this path".
#[map(name = "BH_DET_FILES_V1")]
pub static FILE_RULES: LpmTrie<FileDataV1, FileRuleV1> = LpmTrie::with_max_entries(det::capacity::FILE_RULES, 0);

/// Key: 0. Value: [`FileScratchV1`] (too big for the stack). Written and read by the file
/// probe only.
#[map(name = "BH_DET_FSCRATCH_V1")]
pub static FILE_SCRATCH: PerCpuArray<FileScratchV1> = PerCpuArray::with_max_entries(1, 0);

/// The file probe's per-CPU scratch: the LPM key it builds and the path scan's counters
/// (kept in memory on purpose, see `files::shape`). Kernel-only: user space never reads it.
#[repr(C)]
pub struct FileScratchV1 {
    pub key: FileKeyV1,
    pub seg_len: u32,
    pub seg_dots: u32,
    pub last_slash: u32,
    pub bad: u32,
}
const _: () = assert!(core::mem::size_of::<FileScratchV1>() == 276);

/// Adds one to a counter. A missing slot is impossible (index < capacity); ignoring it keeps
/// the hot path free of a branch that could never be taken.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}
