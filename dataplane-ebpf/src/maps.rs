//! Every map the programs use. Keys and values come from `bulkhead-common`; names carry a
//! layout version so an agent never reads a pinned map of another layout.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use bulkhead_common::{
    ConfigV1, CtKeyV1, CtValueV1, EndpointV1, IpCacheKeyV1, IpInfoV2, PolicyKeyV1, PolicyStatsV1,
    PolicyValueV2, SliceKeyV1, SliceValueV1, capacity,
};

/// Key: host-side interface index (u32). Value: the endpoint behind it.
/// Written by the agent when a pod's interface appears; read by TC and XDP on every packet.
#[map(name = "BH_EP_V1")]
pub static ENDPOINTS: HashMap<u32, EndpointV1> = HashMap::with_max_entries(capacity::ENDPOINTS, 0);

/// Key: IPv4 address (network order). Value: its identity. Pods' addresses live here, so
/// pod-to-pod traffic resolves its peer with one hash lookup. Written by the agent from the
/// compiler's output; read by TC for the remote address.
#[map(name = "BH_IPHOST_V1")]
pub static IPHOST: HashMap<[u8; 4], IpInfoV2> = HashMap::with_max_entries(capacity::IPCACHE, 0);

/// Key: IPv4 prefix shorter than /32 (LPM). Value: the identity of the addresses in it.
/// Written by the agent; read by TC when IPHOST has no entry for the remote address.
#[map(name = "BH_IPCACHE_V2")]
pub static IPCACHE: LpmTrie<IpCacheKeyV1, IpInfoV2> = LpmTrie::with_max_entries(capacity::IPCACHE, 0);

/// Key: (local identity, peer identity or any, direction (+ staged bit), protocol or any).
/// Value: the verdict for most ports and whether exceptions exist. Written by the agent from
/// the compiler's layout; read by TC for new flows and after policy changes.
#[map(name = "BH_SLICE_V1")]
pub static SLICES: HashMap<SliceKeyV1, SliceValueV1> = HashMap::with_max_entries(capacity::POLICY, 0);

/// Key: a slice key plus one port (exact). Value: that port's verdict where it differs from
/// the slice's. Written by the agent; read by TC when the slice has HAS_PORTS.
#[map(name = "BH_PORT_V1")]
pub static PORTS: HashMap<PolicyKeyV1, PolicyValueV2> = HashMap::with_max_entries(capacity::POLICY, 0);

/// Key: a slice key plus a port prefix (LPM). Value: the verdict of that port range where it
/// differs from the slice's. Written by the agent; read by TC when the slice has HAS_RANGES.
#[map(name = "BH_RANGE_V1")]
pub static RANGES: LpmTrie<PolicyKeyV1, PolicyValueV2> = LpmTrie::with_max_entries(capacity::POLICY, 0);

/// Key: policy index. Value: per-CPU allow/deny and would-allow/would-deny counts.
/// Written by TC on every judged new flow; read by `bulkhead policy stats`.
#[map(name = "BH_POLICY_STATS_V1")]
pub static POLICY_STATS: PerCpuArray<PolicyStatsV1> =
    PerCpuArray::with_max_entries(capacity::POLICIES, 0);

/// Flow events (`FlowEventV1`): new flows (when enabled), Log-rule matches, revoked flows.
/// Written by TC; read by the agent's flow log.
#[map(name = "BH_FLOWS_V1")]
pub static FLOWS: RingBuf = RingBuf::with_byte_size(capacity::FLOW_RING_BYTES, 0);

/// Key: flow 5-tuple at one interface. Value: flow state and the policy revision it was
/// admitted under. Written by TC; read by TC, garbage-collected by the agent. LRU so a flood of
/// flows evicts the oldest entries instead of failing inserts.
#[map(name = "BH_CT_V1")]
pub static CONNTRACK: LruHashMap<CtKeyV1, CtValueV1> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

/// Key: 0. Value: global configuration (policy revision, conntrack timeouts).
/// Written by the agent; read by TC.
#[map(name = "BH_CONFIG_V1")]
pub static CONFIG: Array<ConfigV1> = Array::with_max_entries(1, 0);

/// Key: counter index (`bulkhead_common::counters`). Value: per-CPU packet count.
/// Written by TC and XDP; read and summed by the agent.
#[map(name = "BH_COUNTERS_V1")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(capacity::COUNTERS, 0);

/// Adds one to a counter. A missing slot is impossible (index < capacity); ignoring it keeps
/// the hot path free of a branch that could never be taken.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}
