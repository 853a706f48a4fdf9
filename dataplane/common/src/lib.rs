//! Types shared by Bulkhead's eBPF programs (`dataplane-ebpf`) and user space (`dataplane`,
//! `policy-compiler`).
//!
//! Rules for everything in this crate (checked by the size asserts at the bottom):
//! `#[repr(C)]`, integers and byte arrays only, explicit padding, byte order in the field name
//! (`_be` = network order as it sits in the packet; everything else is host order), and a
//! version in every map name so a new layout never reads an old pinned map.
#![no_std]

pub mod ct;
pub mod detect;
pub mod slots;

/// Map names. The version suffix changes whenever a key or value layout changes.
pub mod map_names {
    /// Endpoint table for interface indexes from [`crate::capacity::IFINDEX_DIRECT`] up:
    /// host-side interface index -> [`crate::EndpointV4`] (hash).
    pub const ENDPOINTS: &str = "BH_EP_V4";
    /// Endpoint table for interface indexes below [`crate::capacity::IFINDEX_DIRECT`]: array
    /// indexed by the host-side interface index -> [`crate::EndpointV4`] (`present` 0: none).
    pub const ENDPOINTS_DIRECT: &str = "BH_EP_DIRECT_V4";
    /// IP cache, one map per policy generation: IPv4 prefix -> [`crate::IpInfoV3`] (the
    /// identity and peer class of addresses). One map each rather than a generation in the
    /// key, which would lengthen every LPM walk.
    pub const IPCACHE: [&str; 2] = ["BH_IPCACHE_G0_V2", "BH_IPCACHE_G1_V2"];
    /// IP cache for single addresses (pods), per policy generation: IPv4 (network order) ->
    /// [`crate::IpInfoV3`]; consulted before the LPM [`IPCACHE`], which then only holds shorter
    /// prefixes.
    pub const IPHOST: [&str; 2] = ["BH_IPHOST_G0_V2", "BH_IPHOST_G1_V2"];
    /// Single addresses again, direct-mapped, per policy generation: array indexed by
    /// [`crate::ip_slot`] -> [`crate::IpSlotV1`]. Consulted before [`IPHOST`], which then
    /// only holds the addresses whose slot another address took. The verifier inlines an
    /// array lookup, so a pod peer costs no map call (a hash lookup costs 25-30 ns here).
    pub const IPSLOT: [&str; 2] = ["BH_IPSLOT_G0_V1", "BH_IPSLOT_G1_V1"];
    /// The IPv6 cache, per policy generation: IPv6 prefix ([`crate::IpCache6KeyV1`], LPM)
    /// -> [`crate::IpInfoV3`]. Its own maps, so IPv4 lookups keep their 4-byte keys.
    pub const IPCACHE6: [&str; 2] = ["BH_IPCACHE6_G0_V1", "BH_IPCACHE6_G1_V1"];
    /// Single IPv6 addresses (pods), per policy generation: IPv6 (network order) ->
    /// [`crate::IpInfoV3`] (hash), consulted before [`IPCACHE6`].
    pub const IPHOST6: [&str; 2] = ["BH_IPHOST6_G0_V1", "BH_IPHOST6_G1_V1"];
    /// Single IPv6 addresses direct-mapped, per policy generation, as [`IPSLOT`] for IPv4:
    /// array indexed by [`crate::ip_slot6`] -> [`crate::IpSlot6V1`], consulted before
    /// [`IPHOST6`], which then only holds the addresses whose slot another took. Without it an
    /// IPv6 peer pod cost a hash lookup of a 16-byte key that an IPv4 peer does not pay.
    pub const IPSLOT6: [&str; 2] = ["BH_IPSLOT6_G0_V1", "BH_IPSLOT6_G1_V1"];
    /// The IPv6 packet being judged, per CPU (TC's scratch: 16-byte addresses would crowd
    /// the BPF stack). Never read by user space.
    pub const SCRATCH6: &str = "BH_SCRATCH6_V1";
    /// The slice judging a (local identity, peer class or any, direction, protocol or any):
    /// [`crate::PeerKeyV2`] (generation in the direction byte) -> [`crate::PeerSliceV1`] (hash).
    /// Only the entries whose slot in [`PEER_SLOTS`] another key took (V2 held them all).
    pub const PEERS: &str = "BH_PEER_V3";
    /// Peer entries direct-mapped, both generations: array indexed by
    /// [`crate::slots::peer_index`] -> [`crate::slots::PeerSlotV1`]; consulted before [`PEERS`].
    pub const PEER_SLOTS: &str = "BH_PEER_SLOT_V1";
    /// Single-port exceptions of a slice: [`crate::PortKeyV1`] (exact) -> [`crate::PolicyValueV2`].
    /// Only those whose slot in [`PORT_SLOTS`] another key took (V3 held them all).
    pub const PORTS: &str = "BH_PORT_V4";
    /// Single-port exceptions direct-mapped, both generations: array indexed by
    /// [`crate::slots::port_index`] -> [`crate::slots::PortSlotV1`]; consulted before [`PORTS`].
    pub const PORT_SLOTS: &str = "BH_PORT_SLOT_V1";
    /// Port-range exceptions of a slice: [`crate::PortKeyV1`] (LPM over the port) ->
    /// [`crate::PolicyValueV2`].
    pub const RANGES: &str = "BH_RANGE_V3";
    /// Sources the uplink pre-filter drops: IPv4 prefix ([`crate::IpCacheKeyV1`], LPM) -> u32
    /// (1). Written by `bulkhead prefilter`, read by the XDP program on uplinks.
    pub const UPLINK_DENY: &str = "BH_UPLINK_DENY_V1";
    /// The same for IPv6 source prefixes ([`crate::IpCache6KeyV1`], LPM) -> u32 (1).
    pub const UPLINK_DENY6: &str = "BH_UPLINK_DENY6_V1";
    /// Bytes (both directions) of the flows each endpoint opened: host ifindex below
    /// [`crate::capacity::IFINDEX_DIRECT`] -> u64 (per CPU). Written by TC on every packet of
    /// such a flow; read by the detector's egress-volume check once a second (no conntrack walk).
    pub const EGRESS_BYTES: &str = "BH_EGRESS_BYTES_V1";
    /// Endpoints whose every new flow is reported (the detector's monitored workloads): host
    /// ifindex below [`crate::capacity::IFINDEX_DIRECT`] -> u32 (1 = report). Written by the
    /// detector, read by TC for each new flow. Interfaces past the array use
    /// [`crate::config_flags::FLOW_EVENTS_ALL`].
    pub const FLOW_WATCH: &str = "BH_FLOW_WATCH_V1";
    /// Per-policy counters: policy index -> [`crate::PolicyStatsV1`] (per CPU).
    pub const POLICY_STATS: &str = "BH_POLICY_STATS_V1";
    /// Flow events ring buffer of [`crate::FlowEventV5`].
    pub const FLOWS: &str = "BH_FLOWS_V5";
    /// Drops per reason and direction: index `reason + capacity::COUNTERS * (direction - 1)`
    /// -> packets (per CPU); the reasons are [`crate::counters`] indexes.
    pub const DROPS: &str = "BH_DROPS_V1";
    /// Rate limit of drop events: one [`crate::DropRateV1`] per CPU.
    pub const DROP_RATE: &str = "BH_DROP_RATE_V1";
    /// Connection tracking: slot index -> [`crate::ct::CtSlotV1`] (a set-associative table
    /// in a memory-mappable array: [`crate::ct`]).
    pub const CONNTRACK: &str = "BH_CT_V4";
    /// Connection tracking of IPv6 flows: slot index -> [`crate::ct::Ct6SlotV1`].
    pub const CONNTRACK6: &str = "BH_CT6_V3";
    /// Global configuration, one [`crate::ConfigV2`] at index 0.
    pub const CONFIG: &str = "BH_CONFIG_V2";
    /// Per-CPU counters indexed by [`crate::counters`].
    pub const COUNTERS: &str = "BH_COUNTERS_V1";
}

/// Capacities of the maps. User space may not write more than these; the compiler reports an
/// overflow instead of dropping entries.
pub mod capacity {
    pub const ENDPOINTS: u32 = 65_536;
    /// Slots of the endpoint array: interfaces with a lower index are found without a hash
    /// lookup ([`crate::ifindex_is_direct`]).
    pub const IFINDEX_DIRECT: u32 = 65_536;
    /// Prefixes the uplink pre-filter can deny.
    pub const UPLINK_DENY: u32 = 65_536;
    pub const IPCACHE: u32 = 1_048_576;
    /// Slots of the direct-mapped address array: the low 16 bits of the address, so a pod
    /// CIDR of up to a /16 maps without collisions.
    pub const IPSLOT: u32 = 65_536;
    /// Slots of each IPv6 slot array (2 MiB per generation).
    pub const IPSLOT6: u32 = 65_536;
    pub const POLICY: u32 = 1_048_576;
    /// Slots of each family's conntrack table ([`crate::ct`]); a power of two.
    pub const CONNTRACK: u32 = 262_144;
    pub const COUNTERS: u32 = 64;
    /// Policies (enforced and staged) with their own counters.
    pub const POLICIES: u32 = 65_536;
    /// Flow event ring buffer size in bytes.
    pub const FLOW_RING_BYTES: u32 = 1 << 20;
    /// Drop events each CPU may send per second; the rest are counted
    /// (`drop_events_rate_limited`), so a flood of bad packets is not a flood of events.
    pub const DROP_EVENTS_PER_SEC_PER_CPU: u32 = 200;
}

/// Traffic direction relative to the local endpoint (the pod whose veth the program sits on).
pub mod direction {
    /// Traffic arriving at the pod (TC egress of the host-side veth).
    pub const INGRESS: u8 = 1;
    /// Traffic leaving the pod (TC ingress of the host-side veth).
    pub const EGRESS: u8 = 2;
}

/// IP protocol numbers used in keys. `ANY` is the wildcard a rule without protocol uses.
pub mod proto {
    pub const ANY: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    /// ICMPv6: echo is judged by policy like ICMP echo (`type << 8 | code` as the port);
    /// neighbour discovery passes and errors pass when they quote a tracked flow.
    pub const ICMPV6: u8 = 58;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// Reserved identities. Label identities start at [`identity::FIRST_ALLOCATED`].
pub mod identity {
    /// Wildcard peer in policy keys: "any address".
    pub const ANY: u32 = 0;
    /// An address the IP cache has no entry for (outside every known prefix).
    pub const WORLD: u32 = 1;
    /// IPv6 addresses outside every policy prefix (the compiler keeps `::/0` for them
    /// unless a policy names it; a miss in the IPv6 cache means the same).
    pub const WORLD6: u32 = 2;
    /// First identity the compiler hands out.
    pub const FIRST_ALLOCATED: u32 = 256;
}

/// Verdicts stored in [`PolicyValueV2::action`].
pub mod action {
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

/// Bits of [`PolicyValueV2::flags`]: how the verdict came about.
pub mod verdict_flags {
    /// A Log rule matched on the way: emit a flow event naming `log_policy_index`.
    pub const LOG: u8 = 1 << 0;
    /// No rule of the tier decided: the tier's default action (`tier_index` names the tier).
    pub const END_OF_TIER: u8 = 1 << 1;
}

/// Marks "no policy" in policy index fields.
pub const NO_POLICY: u32 = u32::MAX;

/// Bit of the direction byte in slice and port keys marking the staged (counterfactual)
/// evaluation: staged entries share the maps with enforced ones.
pub const STAGED_DIRECTION_BIT: u8 = 0x80;

/// Bit of the direction byte in slice and port keys marking generation 1 (clear: generation
/// 0). Policy and IP-cache entries exist in two generations: the kernel judges with the
/// generation `ConfigV2::policy_rev & 1` only, and the agent writes a change into the other
/// generation, then flips the revision with one map write. So no packet is ever judged by a
/// mix of two policies, and a change costs its difference, not a full rewrite (each generation
/// is brought from the state two changes back to the new one).
pub const GEN_DIRECTION_BIT: u8 = 0x40;

/// The policy generation a revision enforces.
#[inline(always)]
pub const fn generation(policy_rev: u32) -> usize {
    (policy_rev & 1) as usize
}

/// Bits of [`SliceValueV2::flags`].
pub mod slice_flags {
    /// Some single ports of this slice have their own verdict in the ports map.
    pub const HAS_PORTS: u32 = 1 << 0;
    /// Some port ranges of this slice have their own verdict in the ranges map.
    pub const HAS_RANGES: u32 = 1 << 1;
    /// The table had no any-protocol slice (a broken layout): the slice's verdict is
    /// [`crate::BROKEN_TABLE_VERDICT`], and the datapath counts the drop.
    pub const BROKEN: u32 = 1 << 2;
}

/// Key of the compiler's peer entries (the kernel holds them joined with their tables' slices,
/// [`PeerKeyV2`]): which verdict table judges traffic of a local identity with a peer class in
/// one direction. Peers whose verdicts equal the "any other peer" ones have no entry of their
/// own, so a local identity holds one entry per peer its policy tells apart, whatever the
/// ports and protocols involved (those live once per table).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKeyV1 {
    pub local_identity_be: [u8; 4],
    /// Peer class ([`IpInfoV3::peer_class`]), or [`identity::ANY`].
    pub peer_class_be: [u8; 4],
    /// [`direction`] value, with [`STAGED_DIRECTION_BIT`] for staged entries and
    /// [`GEN_DIRECTION_BIT`] for generation 1.
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// Value of the compiler's peer entries: a verdict table number (host order, never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerValueV1 {
    pub table: u32,
}

/// Key of a verdict table slice in the compiler's layout (joined into [`PeerSliceV1`] for the
/// kernel): the table, the direction (its generation and staged bits:
/// tables of one generation are written while the other is live) and a protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SliceKeyV2 {
    pub table_be: [u8; 4],
    /// As [`PeerKeyV1::direction`].
    pub direction: u8,
    /// IP protocol, or [`proto::ANY`] (every table has its any-protocol slice).
    pub protocol: u8,
    pub _pad: [u8; 2],
}

/// Key of the kernel's peer map: the compiler's peer entry ([`PeerKeyV1`]) joined with the
/// slices of its table, one entry per protocol the table has a slice for (and any). A new flow
/// then finds its slice with one lookup where the peer entry and the slice were two.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKeyV2 {
    pub local_identity_be: [u8; 4],
    /// Peer class ([`IpInfoV3::peer_class`]), or [`identity::ANY`].
    pub peer_class_be: [u8; 4],
    /// As [`PeerKeyV1::direction`].
    pub direction: u8,
    /// IP protocol, or [`proto::ANY`] (every entry with a table has its any-protocol entry).
    pub protocol: u8,
    pub _pad: [u8; 2],
}

/// Value of the kernel's peer map: the slice judging that (local, peer, direction, protocol),
/// and where its port exceptions are (table and the slice's own protocol, the
/// [`PortKeyV1`] fields).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerSliceV1 {
    pub slice: SliceValueV2,
    pub table_be: [u8; 4],
    /// The slice's protocol (a key's own or [`proto::ANY`]).
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Data part of the port exception keys: a slice key and a port. The LPM key of the ranges
/// map is `(prefix_len: u32, PortKeyV1)`; every field but the port is matched exactly (prefix
/// length >= [`PORT_KEY_FIXED_BITS`]) and port ranges become prefixes over the last 16 bits,
/// which is why the port is big-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKeyV1 {
    pub table_be: [u8; 4],
    pub direction: u8,
    pub protocol: u8,
    /// Destination port, network order; for ICMP `type << 8 | code`.
    pub port_be: [u8; 2],
}

/// Bits of a [`PortKeyV1`] that are always matched exactly.
pub const PORT_KEY_FIXED_BITS: u32 = 48;
/// Bits of a full [`PortKeyV1`] (exact port).
pub const PORT_KEY_FULL_BITS: u32 = 64;

/// A slice: the verdict for most ports, and whether single ports or ranges differ.
/// The datapath finds the table of (local, peer) or else (local, any peer), then the slice
/// (table, protocol) or else (table, any); a slice answers for every port of its protocol(s).
/// Written by the agent, read by TC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SliceValueV2 {
    /// Verdict for ports without an exception.
    pub verdict: PolicyValueV2,
    /// [`slice_flags`] bits.
    pub flags: u32,
    pub _pad: u32,
    /// One bit per [`port_filter_bit`] of every single-port exception: a port whose bit is
    /// clear has no exception, so the ports map is not consulted (most packets of a slice
    /// with a few exceptions take its default without a third lookup).
    pub port_filter: u64,
}

/// The bit of [`SliceValueV2::port_filter`] a port (host order) sets and tests. Folds the
/// high bits in so that runs of neighbouring ports and ports 64 apart spread over the bits.
#[inline(always)]
pub const fn port_filter_bit(port: u16) -> u64 {
    let p = port as u32;
    1u64 << ((p ^ (p >> 6) ^ (p >> 12)) & 63)
}

/// Bits of [`EndpointV4::flags`].
pub mod ep_flags {
    /// At least one enforced policy selects the endpoint for ingress (informational: the
    /// policy map holds complete verdicts for such endpoints).
    pub const INGRESS_ISOLATED: u32 = 1 << 0;
    /// Same for egress.
    pub const EGRESS_ISOLATED: u32 = 1 << 1;
    /// The compiler could not fit this endpoint's entries: drop everything (fail-closed).
    pub const OVERFLOW_FAIL_CLOSED: u32 = 1 << 2;
    /// Staged policies select the endpoint: judge new flows against the staged map too.
    pub const HAS_STAGED: u32 = 1 << 3;
}

/// Counter indexes in the per-CPU counter array. Each datapath outcome, and each error path
/// with its fail-open or fail-closed decision, has its own counter. One table: the index,
/// the constant and the name user space shows come from the same line, so kernel and user
/// space cannot drift apart (the index is the position in the table).
pub mod counters {
    /// Declares the counters in index order: constant, then the name user space shows.
    macro_rules! table {
        ($($(#[$doc:meta])* $konst:ident = $name:literal,)*) => {
            table!(@consts 0u32, $($(#[$doc])* $konst,)*);
            /// Human-readable names, in index order.
            pub const NAMES: [&str; COUNT as usize] = [$($name,)*];
        };
        (@consts $i:expr, $(#[$doc:meta])* $konst:ident, $($rest:tt)*) => {
            $(#[$doc])*
            pub const $konst: u32 = $i;
            table!(@consts $i + 1, $($rest)*);
        };
        (@consts $i:expr,) => {
            /// Number of counters in use.
            pub const COUNT: u32 = $i;
        };
    }

    table! {
        /// New flow allowed by policy.
        ALLOW_POLICY = "allow_policy",
        /// Packet of a tracked flow allowed by conntrack.
        ALLOW_CT = "allow_conntrack",
        /// New flow allowed because the direction is not isolated.
        ALLOW_NOT_ISOLATED = "allow_not_isolated",
        /// Denied by policy (default deny of an isolated direction, or a deny rule).
        DENY_POLICY = "deny_policy",
        /// A tracked flow judged again after a policy change and still allowed.
        CT_REEVAL_ALLOW = "ct_reeval_allow",
        /// A tracked flow judged again after a policy change and now denied.
        CT_REEVAL_DENY = "ct_reeval_deny",
        /// ARP passes: pods need it to reach their gateway, and it carries no L4 payload.
        PASS_ARP = "pass_arp",
        /// Fail-closed: an IPv6 packet whose extension headers run past the parser's bound
        /// (more than [`crate::IPV6_MAX_EXT_HEADERS`] or beyond the first 512 bytes), or an
        /// IPv6 header of another version: its ports cannot be known.
        DROP_IPV6_UNPARSED = "drop_ipv6_unparsed_fail_closed",
        /// Fail-closed: truncated or malformed header.
        DROP_MALFORMED = "drop_malformed_fail_closed",
        /// Fail-closed: non-first IP fragment (ports unknown).
        DROP_FRAGMENT = "drop_fragment_fail_closed",
        /// Fail-closed: program attached to an interface that has no endpoint entry.
        DROP_NO_ENDPOINT = "drop_no_endpoint_fail_closed",
        /// Fail-closed: the endpoint is marked as overflowed by the compiler.
        DROP_OVERFLOW = "drop_overflow_fail_closed",
        /// Fail-closed: the configuration map entry is missing.
        DROP_NO_CONFIG = "drop_no_config_fail_closed",
        /// Fail-closed: a packet leaving a pod with a source address that is not the pod's own
        /// (spoofed), dropped by TC (or by the optional XDP pre-filter).
        DROP_SPOOFED = "drop_spoofed_source_fail_closed",
        /// XDP: passed to the stack.
        XDP_PASS = "xdp_pass",
        /// XDP fail-open: no endpoint entry for the interface; TC decides (it fails closed).
        XDP_PASS_NO_ENDPOINT = "xdp_pass_no_endpoint_fail_open",
        /// Conntrack insert failed; the packet is still allowed (policy said so), counted.
        CT_INSERT_FAILED = "ct_insert_failed",
        /// Fail-closed: an L2 protocol other than IPv4, IPv6 or ARP (VLAN, PPPoE, ...) could
        /// carry IP past the policy, so it is dropped.
        DROP_UNKNOWN_L2 = "drop_unknown_l2_fail_closed",
        /// A flow event could not be written (ring buffer full); the verdict is unaffected.
        EVENTS_DROPPED = "flow_events_dropped",
        /// Flow events written.
        EVENTS_SENT = "flow_events_sent",
        /// New flows judged against staged policy too.
        STAGED_EVALUATED = "staged_evaluated",
        /// Fail-closed: the endpoint is isolated by the detector and the packet is not on the
        /// isolation allow-list.
        DROP_ISOLATED = "drop_isolated_fail_closed",
        /// A packet of an isolated endpoint on the isolation allow-list (e.g. DNS): judged by policy.
        PASS_ISOLATION_ALLOWLIST = "pass_isolation_allowlist",
        /// Detector events written to the ring buffer.
        DET_EVENTS_SENT = "detector_events_sent",
        /// Detector events lost because the ring buffer was full (enforcement is unaffected).
        DET_EVENTS_DROPPED = "detector_events_dropped",
        /// Execs outside the profile in monitor or protect mode.
        DET_EXEC_VIOLATIONS = "detector_exec_violations",
        /// Processes the exec probe killed.
        DET_KILLED = "detector_killed",
        /// bpf_send_signal failed on a violation (user space is told through the event).
        DET_SIGNAL_FAILED = "detector_signal_failed",
        /// An isolation entry could not be written on a violation.
        DET_ISOLATE_FAILED = "detector_isolate_failed",
        /// A new (workload, syscall) pair found the syscall map full: not counted.
        DET_SYSCALL_MAP_FULL = "detector_syscall_map_full",
        /// An exec path could not be read: judged as the empty path (fail-closed in protect).
        DET_PATH_UNREADABLE = "detector_path_unreadable_fail_closed",
        /// Syscall records sent to the agent's sequence model (workloads with SYSCALL_SEQ).
        DET_SYSSEQ_SENT = "detector_syscall_records_sent",
        /// Syscall records lost because the sequence ring was full (the syscall still runs:
        /// fail-open for the workload, counted and shown by `bulkhead detector status`).
        DET_SYSSEQ_DROPPED = "detector_syscall_records_dropped_fail_open",
        /// An ICMP error (unreachable, fragmentation needed, time exceeded, ...) quoting a tracked
        /// flow: passes as related traffic, whatever the policy says of ICMP.
        PASS_ICMP_RELATED = "pass_icmp_related",
        /// Fail-closed: an ICMP error quoting no tracked flow (or quoting an ICMP error).
        DROP_ICMP_UNRELATED = "drop_icmp_unrelated_fail_closed",
        /// Drop events not sent because the CPU's per-second budget was spent (the drops
        /// themselves are counted under their reason).
        DROP_EVENTS_RATE_LIMITED = "drop_events_rate_limited",
        /// Fail-closed: a verdict table without its any-protocol slice (a write the agent
        /// never makes complete); the packet is denied rather than judged by a guess.
        DROP_BROKEN_TABLE = "drop_broken_table_fail_closed",
        /// The uplink pre-filter (XDP on a node's uplink, `bulkhead prefilter`) dropped a
        /// packet whose IPv4 source is in a denied prefix, before the stack saw it.
        UPLINK_DROP_DENIED = "uplink_drop_denied_source",
        /// The uplink pre-filter passed a packet to the stack (not IPv4, or a source in no
        /// denied prefix: TC and the host's rules decide as before).
        UPLINK_PASS = "uplink_pass",
        /// ICMPv6 neighbour discovery (router and neighbour solicitation/advertisement,
        /// redirect) and multicast listener messages pass without policy, as ARP does: IPv6
        /// needs them to reach the gateway. Only with hop limit 255 (ND) or 1 (MLD), which a
        /// router never forwards.
        PASS_ICMPV6_ND = "pass_icmpv6_nd",
        /// Fail-closed: an ICMPv6 neighbour discovery or listener message with a hop limit
        /// that says it was forwarded (RFC 4861 and 3810 receivers discard these).
        DROP_ICMPV6_ND_HOPLIMIT = "drop_icmpv6_nd_forwarded_fail_closed",
        /// A new outbound flow of a protect-mode workload to a destination outside its
        /// learned profile, dropped (and the endpoint isolated where the finding's action
        /// says so) before its first packet left: the detector's kernel decision.
        DENY_DETECTOR_UNLEARNED = "deny_detector_unlearned_flow",
        /// File operations of monitored workloads outside their file baseline (monitor or
        /// protect mode), judged in the kernel.
        DET_FILE_VIOLATIONS = "detector_file_violations",
        /// File operations sent to user space unjudged (relative, non-canonical or too long
        /// a path): the agent resolves and judges them after the fact.
        DET_FILE_UNRESOLVED = "detector_file_unresolved",
        /// A file syscall whose path pointer could not be read: not judged (the syscall fails
        /// with EFAULT on the same pointer; fail-open, counted).
        DET_FILE_PATH_FAULT = "detector_file_path_fault_fail_open",
        /// A live conntrack entry overwritten by a new flow because every slot of its bucket
        /// was live (the table's least recently seen of them goes); that flow's next packet is
        /// judged by policy again, as after an LRU eviction.
        CT_EVICTED = "ct_evicted_live",
    }
}

/// Value of the endpoint maps, keyed by the host-side interface index (u32, host order):
/// the array [`map_names::ENDPOINTS_DIRECT`] for indexes below [`capacity::IFINDEX_DIRECT`],
/// the hash [`map_names::ENDPOINTS`] for the rest (see [`ifindex_is_direct`]).
/// Identity and flags come from a compile, so they exist per policy generation (index =
/// [`generation`]): a relabelled pod moves to its new identity with the flip, never before.
/// Written by the agent, read by the TC and XDP programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointV4 {
    /// The identity of the endpoint's IPv4 address (the local side of IPv4 policy keys), per
    /// generation.
    pub identity: [u32; 2],
    /// [`ep_flags`] bits, per generation.
    pub flags: [u32; 2],
    /// The endpoint's IPv4 address, network order (anti-spoofing: the only IPv4 source
    /// address its packets may carry).
    pub ipv4_be: [u8; 4],
    /// 1 for an endpoint; 0 marks an empty slot of the array (an interface that is no
    /// endpoint), which the datapath treats as a missing entry.
    pub present: u32,
    /// The identity of its IPv6 address (the local side of IPv6 policy keys), per generation.
    pub identity6: [u32; 2],
    /// The endpoint's IPv6 address, network order; all zero when it has none (then only
    /// link-local sources pass anti-spoofing, so an IPv4-only pod cannot send IPv6 past its
    /// link).
    pub ipv6_be: [u8; 16],
}

/// Whether an interface's endpoint entry lives in the array [`map_names::ENDPOINTS_DIRECT`]
/// (an array lookup is inlined by the verifier: no call, no hashing, on every packet) or in
/// the hash [`map_names::ENDPOINTS`]. The kernel hands out interface indexes in increasing
/// order per namespace, so a node with enough pod churn passes any fixed bound: those
/// interfaces still work, through the hash.
#[inline(always)]
pub const fn ifindex_is_direct(ifindex: u32) -> bool {
    ifindex < capacity::IFINDEX_DIRECT
}

/// Data part of the IP cache LPM key. The LPM key itself is `(prefix_len: u32, IpCacheKeyV1)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpCacheKeyV1 {
    pub addr_be: [u8; 4],
}

/// Data part of the IPv6 cache LPM key ([`map_names::IPCACHE6`]); also the key of
/// [`map_names::IPHOST6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpCache6KeyV1 {
    pub addr_be: [u8; 16],
}

/// How many IPv6 extension headers the datapath walks before the transport header (hop-by-hop,
/// routing, fragment, destination options, authentication); a packet with more is dropped
/// and counted ([`counters::DROP_IPV6_UNPARSED`]).
pub const IPV6_MAX_EXT_HEADERS: usize = 4;

/// Value of the IP cache: the identity of an address. Every address has exactly one
/// identity; a pod's identity covers its labels *and* which policy prefixes contain its IP, so
/// policy never needs two lookups for one peer. Written by the agent from the compiler's
/// output, read by the TC programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpInfoV3 {
    /// The address's identity (what flow events and `explain` name).
    pub identity: u32,
    /// The address's peer class on this node: peers whose verdicts are equal for every local
    /// endpoint share one class, so the peer map holds one entry per class a local policy
    /// tells apart rather than one per identity. 0 ([`identity::ANY`]): judged as any peer.
    pub peer_class: u32,
}

/// An address's entry in the direct-mapped array [`map_names::IPSLOT`]: the slot matches
/// only its own address; any other address of the slot is looked up further (in the hash only
/// when the slot says some are there).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpSlotV1 {
    pub addr_be: [u8; 4],
    pub info: IpInfoV3,
    /// [`ip_slot_flags`]; 0 = empty (an all-zero slot must not match 0.0.0.0).
    pub flags: u32,
}

/// Bits of [`IpSlotV1::flags`].
pub mod ip_slot_flags {
    /// The slot holds `addr_be`.
    pub const PRESENT: u32 = 1 << 0;
    /// Other addresses of this slot are in the hash [`crate::map_names::IPHOST`]; without it
    /// an address that does not match the slot skips that lookup and goes to the prefixes.
    pub const MORE: u32 = 1 << 1;
}

/// An IPv6 address's entry in the direct-mapped array [`map_names::IPSLOT6`], as
/// [`IpSlotV1`] for IPv4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpSlot6V1 {
    pub addr_be: [u8; 16],
    pub info: IpInfoV3,
    /// [`ip_slot_flags`]; 0 = empty (an all-zero slot must not match `::`).
    pub flags: u32,
    pub _pad: u32,
}

/// Slot of an IPv6 address (network order) in [`map_names::IPSLOT6`]: its low 16 bits (pod
/// addresses of a node's range differ there first).
#[inline(always)]
pub fn ip_slot6(addr_be: &[u8; 16]) -> u32 {
    u32::from(u16::from_be_bytes([addr_be[14], addr_be[15]]))
}

/// Slot of an IPv4 address (network order) in [`map_names::IPSLOT`]: its low 16 bits.
#[inline(always)]
pub fn ip_slot(addr_be: [u8; 4]) -> u32 {
    u32::from(u16::from_be_bytes([addr_be[2], addr_be[3]]))
}

/// A complete verdict of a cell of (local identity, peer, direction, protocol, ports),
/// with tiers, Pass, Log and end-of-tier defaults already resolved by the compiler: the value
/// of slices (as their default), single-port and port-range entries. Written by the agent,
/// read by TC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyValueV2 {
    /// Deciding policy (index in the compiler's policy table), or [`NO_POLICY`] for a tier's
    /// default action.
    pub policy_index: u32,
    /// First Log rule passed on the way, or [`NO_POLICY`].
    pub log_policy_index: u32,
    /// Deciding rule within the policy.
    pub rule_index: u16,
    pub log_rule_index: u16,
    /// Deciding tier (index in the compiler's tier table).
    pub tier_index: u16,
    /// [`action`] value: ALLOW or DENY (anything else fails closed).
    pub action: u8,
    /// [`verdict_flags`] bits.
    pub flags: u8,
}

/// The verdict of a verdict table without its any-protocol slice (never written by a correct
/// agent): deny, decided by no policy. The kernel counts it under
/// [`counters::DROP_BROKEN_TABLE`]; user space's lookup answers the same.
pub const BROKEN_TABLE_VERDICT: PolicyValueV2 = PolicyValueV2 {
    policy_index: NO_POLICY,
    log_policy_index: NO_POLICY,
    rule_index: 0,
    log_rule_index: 0,
    tier_index: u16::MAX,
    action: action::DENY,
    flags: 0,
};

/// Per-policy counters (per CPU), indexed by policy index. Written by TC, read by the CLI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyStatsV1 {
    /// New flows this enforced policy allowed.
    pub allowed: u64,
    /// New flows this enforced policy denied.
    pub denied: u64,
    /// New flows the staged evaluation says this staged policy would allow.
    pub would_allow: u64,
    /// New flows the staged evaluation says this staged policy would deny.
    pub would_deny: u64,
}

/// Kinds of [`FlowEventV5`].
pub mod flow_kind {
    /// A new flow was allowed.
    pub const NEW_ALLOWED: u8 = 1;
    /// A flow was denied.
    pub const DENIED: u8 = 2;
    /// An established flow was denied after a policy change.
    pub const REVOKED: u8 = 3;
    /// A packet dropped for a reason other than policy (`drop_reason` says which).
    pub const DROPPED: u8 = 4;
    /// A tracked flow ended (TCP: an RST or a FIN each way, reported by TC; otherwise its
    /// conntrack entry expired, reported by the agent's sweep), with packets and bytes both
    /// ways. The tuple and direction are the flow's origin's.
    pub const END: u8 = 5;
}

/// A flow event, written by TC into the ring buffer for new flows (when enabled or logged),
/// revoked flows and (rate-limited) drops; read by the agent (flow log, Log rules, the
/// detector's peer baseline).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEventV5 {
    pub ts_ns: u64,
    pub ifindex: u32,
    /// Source address, network order: IPv4 in the first 4 bytes (the rest zero), or IPv6
    /// (see `family`).
    pub saddr_be: [u8; 16],
    pub daddr_be: [u8; 16],
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    /// The enforced verdict's value (policy, rule, tier, log policy).
    pub verdict: PolicyValueV2,
    /// The staged verdict's value when the endpoint has staged policies, else zero.
    pub staged: PolicyValueV2,
    pub protocol: u8,
    /// [`direction`] value.
    pub direction: u8,
    /// [`flow_kind`] value.
    pub kind: u8,
    /// 1 when `staged` is meaningful.
    pub has_staged: u8,
    /// For [`flow_kind::DROPPED`]: the drop reason, a [`counters`] index.
    pub drop_reason: u16,
    /// TCP flags of the packet the event is about (for a new flow, its first packet seen:
    /// a TCP flow whose first packet is no SYN ([`tcp_opens`]) was picked up mid-stream, e.g. after its conntrack
    /// entry was evicted, and says nothing about who opened it). 0 for other protocols.
    pub tcp_flags: u8,
    /// 4 or 6: the addresses' family (0 for a drop before the IP header was parsed).
    pub family: u8,
    /// The endpoint's identity (0 when the drop came before it was known).
    pub local_identity: u32,
    /// The remote address's identity (0 when the drop came before it was known).
    pub peer_identity: u32,
    /// For [`flow_kind::END`]: when the flow started (its conntrack entry's clock), and its
    /// packets and bytes as it was opened (`orig`) and back (`reply`). Zero otherwise.
    pub start_ns: u64,
    pub packets_orig: u64,
    pub bytes_orig: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
}

impl FlowEventV5 {
    fn addr(&self, b: [u8; 16]) -> Option<core::net::IpAddr> {
        match self.family {
            4 => Some(core::net::IpAddr::V4(core::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
            6 => Some(core::net::IpAddr::V6(core::net::Ipv6Addr::from(b))),
            _ => None,
        }
    }

    /// The source address (`None` for a drop before the IP header was parsed).
    pub fn saddr(&self) -> Option<core::net::IpAddr> {
        self.addr(self.saddr_be)
    }

    /// The destination address.
    pub fn daddr(&self) -> Option<core::net::IpAddr> {
        self.addr(self.daddr_be)
    }
}

/// Per-CPU state of the drop-event rate limit. Written and read by TC only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropRateV1 {
    /// Start of the current one-second window, in ns of the programs' tick clock (jiffies
    /// as calibrated in [`ConfigV2`], else the coarse monotonic clock).
    pub window_start_ns: u64,
    /// Events sent in the window.
    pub sent: u32,
    pub _pad: u32,
}

/// Conntrack key: one entry per flow and endpoint interface, the same for both directions, so
/// a reply finds its flow in one lookup (two lookups, one of them a miss on a random bucket,
/// cost a connection-heavy workload about 3 % of its connection rate). The two ends are in a
/// fixed order ([`CtKeyV2::of`]); which end opened the flow is in the value's
/// `origin_direction`: at a pod's interface a packet in that direction is the original side,
/// one in the other direction a reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CtKeyV2 {
    /// Host-side interface index of the endpoint that tracked the flow.
    pub ifindex: u32,
    /// The end whose (address, port) sorts first, byte-wise in network order.
    pub addr_lo_be: [u8; 4],
    /// The other end.
    pub addr_hi_be: [u8; 4],
    /// For ICMP echo, both ports hold the echo identifier.
    pub port_lo_be: [u8; 2],
    pub port_hi_be: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 3],
}

impl CtKeyV2 {
    /// The key of the flow a packet from `saddr:sport` to `daddr:dport` belongs to, at
    /// `ifindex`; a reply (ends swapped) gives the same key. The one ordering rule for kernel
    /// and user space.
    #[inline(always)]
    pub fn of(ifindex: u32, saddr_be: [u8; 4], sport_be: [u8; 2], daddr_be: [u8; 4], dport_be: [u8; 2], protocol: u8) -> CtKeyV2 {
        // Big-endian bytes compare as the numbers they encode; u64 keeps it to one comparison
        // in the verifier's eyes.
        let s = (u32::from_be_bytes(saddr_be) as u64) << 16 | u16::from_be_bytes(sport_be) as u64;
        let d = (u32::from_be_bytes(daddr_be) as u64) << 16 | u16::from_be_bytes(dport_be) as u64;
        let (addr_lo_be, port_lo_be, addr_hi_be, port_hi_be) =
            if s <= d { (saddr_be, sport_be, daddr_be, dport_be) } else { (daddr_be, dport_be, saddr_be, sport_be) };
        CtKeyV2 { ifindex, addr_lo_be, addr_hi_be, port_lo_be, port_hi_be, protocol, _pad: [0; 3] }
    }
}

/// Conntrack key of an IPv6 flow, as [`CtKeyV2`] with 16-byte addresses (map
/// [`map_names::CONNTRACK6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ct6KeyV1 {
    pub ifindex: u32,
    pub addr_lo_be: [u8; 16],
    pub addr_hi_be: [u8; 16],
    pub port_lo_be: [u8; 2],
    pub port_hi_be: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 3],
}

impl Ct6KeyV1 {
    /// As [`CtKeyV2::of`]: the ends ordered by (address, port), compared as numbers.
    pub fn of(ifindex: u32, saddr_be: [u8; 16], sport_be: [u8; 2], daddr_be: [u8; 16], dport_be: [u8; 2], protocol: u8) -> Ct6KeyV1 {
        let mut k = Ct6KeyV1::default();
        k.set(ifindex, &saddr_be, sport_be, &daddr_be, dport_be, protocol);
        k
    }

    /// [`Ct6KeyV1::of`] written in place: the datapath fills a per-CPU slot, since copies of
    /// 16-byte addresses would crowd the BPF stack.
    #[inline(always)]
    pub fn set(&mut self, ifindex: u32, saddr_be: &[u8; 16], sport_be: [u8; 2], daddr_be: &[u8; 16], dport_be: [u8; 2], protocol: u8) {
        // Two 64-bit halves per address rather than u128, which the BPF backend lowers badly.
        let half = |a: &[u8; 16], i: usize| {
            let mut v = 0u64;
            for b in &a[i..i + 8] {
                v = v << 8 | u64::from(*b);
            }
            v
        };
        let s_first = ct6_source_first((half(saddr_be, 0), half(saddr_be, 8), sport_be), (half(daddr_be, 0), half(daddr_be, 8), dport_be));
        self.ifindex = ifindex;
        self.protocol = protocol;
        self._pad = [0; 3];
        if s_first {
            self.addr_lo_be = *saddr_be;
            self.addr_hi_be = *daddr_be;
            self.port_lo_be = sport_be;
            self.port_hi_be = dport_be;
        } else {
            self.addr_lo_be = *daddr_be;
            self.addr_hi_be = *saddr_be;
            self.port_lo_be = dport_be;
            self.port_hi_be = sport_be;
        }
    }
}

/// The ordering rule of [`Ct6KeyV1`], shared by [`Ct6KeyV1::set`] and the datapath (which
/// holds addresses as words): whether the source end, (high 64 bits, low 64 bits, port in
/// network order), sorts first, comparing the address as a number, then the port.
#[inline(always)]
pub fn ct6_source_first(s: (u64, u64, [u8; 2]), d: (u64, u64, [u8; 2])) -> bool {
    let (s_words, d_words) = ([s.0, s.1], [d.0, d.1]);
    ct6_source_first_with(|source, i| if source { s_words[i] } else { d_words[i] }, u16::from_be_bytes(s.2), u16::from_be_bytes(d.2))
}

/// [`ct6_source_first`] with the address words asked for one pair at a time, as they are
/// compared: `word(source, i)` is word `i` (0 high, 1 low, as numbers) of the source end's
/// address or of the destination's. The fast path reads each from memory when asked; with
/// all four at hand at once, LLVM spilled them onto the programs' entry stack.
#[inline(always)]
pub fn ct6_source_first_with(mut word: impl FnMut(bool, usize) -> u64, sport: u16, dport: u16) -> bool {
    for i in 0..2 {
        let (s, d) = (word(true, i), word(false, i));
        if s != d {
            return s < d;
        }
    }
    sport <= dport
}

/// TCP flags (SYN set, ACK clear) of a connection's opening packet, as in
/// [`FlowEventV5::tcp_flags`].
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;
/// Whether TCP `flags` are those of a connection's opening packet (SYN without ACK).
pub const fn tcp_opens(flags: u8) -> bool {
    flags & TCP_SYN != 0 && flags & TCP_ACK == 0
}

/// Bits of [`CtValueV2::flags`].
pub mod ct_flags {
    /// A FIN or RST was seen: the short timeout applies.
    pub const CLOSING: u32 = 1 << 0;
    /// A reply was seen.
    pub const SEEN_REPLY: u32 = 1 << 1;
    /// The flow's first packet came from the key's `hi` end (else from its `lo` end): how
    /// the agent orients an entry it reports when the entry expires.
    pub const ORIGIN_HI: u32 = 1 << 2;
    /// A FIN was seen from the flow's origin.
    pub const FIN_ORIG: u32 = 1 << 3;
    /// A FIN was seen from the flow's answering end.
    pub const FIN_REPLY: u32 = 1 << 4;
    /// The flow's end was reported (an RST, or a FIN each way): the garbage collector does
    /// not report it again.
    pub const ENDED: u32 = 1 << 5;
}

/// Conntrack value. Written by the TC programs; read and garbage-collected by the agent.
/// Packets and bytes are counted per direction of the flow (`orig`: as its first packet
/// went, `reply`: back), which the flow's end record reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValueV2 {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the last packet.
    pub last_seen_ns: u64,
    pub created_ns: u64,
    pub packets_orig: u64,
    pub bytes_orig: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    /// [`ConfigV2::policy_rev`] the flow was last admitted under; a different current revision
    /// makes the next packet be judged again.
    pub policy_rev: u32,
    /// Direction ([`direction`]) of the flow's first packet relative to the local endpoint.
    pub origin_direction: u8,
    pub protocol: u8,
    pub _pad: [u8; 2],
    /// [`ct_flags`] bits.
    pub flags: u32,
    pub _pad2: u32,
}

impl CtValueV2 {
    /// Whether the entry has outlived its timeout at `now` (its clock): the one rule the TC
    /// programs judge by and the agent's garbage collector sweeps by. A TCP flow not yet
    /// answered or closing gets the short timeout.
    #[inline(always)]
    pub fn expired(&self, cfg: &ConfigV2, now: u64) -> bool {
        let timeout = match self.protocol {
            proto::TCP => {
                if self.flags & ct_flags::CLOSING != 0 || self.flags & ct_flags::SEEN_REPLY == 0 {
                    cfg.tcp_short_timeout_ns
                } else {
                    cfg.tcp_established_timeout_ns
                }
            }
            proto::ICMP => cfg.icmp_timeout_ns,
            _ => cfg.udp_timeout_ns,
        };
        now.saturating_sub(self.last_seen_ns) > timeout
    }
}

/// Bits of [`ConfigV2::flags`].
pub mod config_flags {
    /// Emit a flow event for every new flow (allowed or denied), not only for Log rules and
    /// revoked flows.
    /// (Only for endpoints whose interface index is past the per-endpoint array
    /// [`crate::map_names::FLOW_WATCH`], which says it for the others.)
    pub const FLOW_EVENTS_ALL: u32 = 1 << 0;
    /// Flow records: every endpoint reports every new flow and every flow's end (the
    /// agent's `--flow-records`, on by default).
    pub const FLOW_RECORDS: u32 = 1 << 1;
}

/// Whether endpoint `ifindex` reports its new flows and flow ends: flow records are on, or
/// the detector watches it (`watch_slot`, its [`map_names::FLOW_WATCH`] slot, for interfaces
/// in the array; [`config_flags::FLOW_EVENTS_ALL`] for the others). The one rule for TC and
/// the agent's conntrack sweep.
#[inline(always)]
pub fn flow_reported(flags: u32, ifindex: u32, watch_slot: u32) -> bool {
    if flags & config_flags::FLOW_RECORDS != 0 {
        return true;
    }
    if ifindex_is_direct(ifindex) { watch_slot != 0 } else { flags & config_flags::FLOW_EVENTS_ALL != 0 }
}

/// Global configuration, index 0 of the config array. Written by the agent, read by TC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigV2 {
    /// Bumped by the agent after every committed policy change.
    pub policy_rev: u32,
    /// [`config_flags`] bits.
    pub flags: u32,
    pub tcp_established_timeout_ns: u64,
    /// SYN-only, FIN or RST seen.
    pub tcp_short_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    pub icmp_timeout_ns: u64,
    /// Nanoseconds per kernel tick (1e9 / HZ), or 0: the programs then read the coarse clock
    /// through a helper call. With it they stamp conntrack entries from `bpf_jiffies64`, which
    /// the verifier inlines into one load (a helper call costs as much as a map lookup).
    pub ns_per_jiffy: u64,
    /// `jiffies * ns_per_jiffy - jiffies_offset_ns` is `CLOCK_MONOTONIC_COARSE` in ns, within a
    /// tick: the clock the agent's garbage collector compares entries with.
    pub jiffies_offset_ns: u64,
}

impl ConfigV2 {
    /// Conntrack time from a jiffies reading (only meaningful when `ns_per_jiffy` is set).
    #[inline(always)]
    pub fn jiffies_to_ns(&self, jiffies: u64) -> u64 {
        jiffies.wrapping_mul(self.ns_per_jiffy).wrapping_sub(self.jiffies_offset_ns)
    }

    /// Timeouts as Cilium and Linux conntrack choose them, in nanoseconds.
    pub const fn with_default_timeouts(policy_rev: u32) -> Self {
        const S: u64 = 1_000_000_000;
        ConfigV2 {
            policy_rev,
            flags: 0,
            tcp_established_timeout_ns: 6 * 3600 * S,
            tcp_short_timeout_ns: 60 * S,
            udp_timeout_ns: 60 * S,
            icmp_timeout_ns: 30 * S,
            ns_per_jiffy: 0,
            jiffies_offset_ns: 0,
        }
    }
}

/// Same layout in the eBPF and user-space builds; a change here must change the map version.
const _: () = {
    // Every counter has a slot in the per-CPU counter array.
    assert!(counters::COUNT <= capacity::COUNTERS);
    assert!(core::mem::size_of::<EndpointV4>() == 48);
    assert!(core::mem::size_of::<IpCacheKeyV1>() == 4);
    assert!(core::mem::size_of::<IpCache6KeyV1>() == 16);
    assert!(core::mem::size_of::<Ct6KeyV1>() == 44);
    assert!(core::mem::size_of::<IpInfoV3>() == 8);
    assert!(core::mem::size_of::<IpSlotV1>() == 16);
    assert!(capacity::IPSLOT == 1 << 16);
    assert!(core::mem::size_of::<IpSlot6V1>() == 32);
    assert!(capacity::IPSLOT6 == 1 << 16);
    assert!(core::mem::size_of::<PolicyValueV2>() == 16);
    assert!(core::mem::size_of::<PeerKeyV1>() == 12);
    assert!(core::mem::size_of::<PeerValueV1>() == 4);
    assert!(core::mem::size_of::<PeerKeyV2>() == 12);
    assert!(core::mem::size_of::<PeerSliceV1>() == 40);
    assert!(core::mem::size_of::<SliceKeyV2>() == 8);
    assert!(core::mem::size_of::<PortKeyV1>() == 8);
    assert!(core::mem::size_of::<SliceValueV2>() == 32);
    assert!(core::mem::size_of::<PolicyStatsV1>() == 32);
    assert!(core::mem::size_of::<FlowEventV5>() == 136);
    assert!(core::mem::size_of::<DropRateV1>() == 16);
    assert!(core::mem::size_of::<CtKeyV2>() == 20);
    assert!(core::mem::size_of::<CtValueV2>() == 64);
    assert!(core::mem::size_of::<ConfigV2>() == 56);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding; every bit
    // pattern is valid.
    unsafe impl aya::Pod for EndpointV4 {}
    unsafe impl aya::Pod for IpCacheKeyV1 {}
    unsafe impl aya::Pod for IpCache6KeyV1 {}
    unsafe impl aya::Pod for Ct6KeyV1 {}
    unsafe impl aya::Pod for IpInfoV3 {}
    unsafe impl aya::Pod for IpSlotV1 {}
    unsafe impl aya::Pod for IpSlot6V1 {}
    unsafe impl aya::Pod for PeerKeyV1 {}
    unsafe impl aya::Pod for PeerValueV1 {}
    unsafe impl aya::Pod for PeerKeyV2 {}
    unsafe impl aya::Pod for PeerSliceV1 {}
    unsafe impl aya::Pod for crate::slots::PeerSlotV1 {}
    unsafe impl aya::Pod for crate::slots::PortSlotV1 {}
    unsafe impl aya::Pod for PortKeyV1 {}
    unsafe impl aya::Pod for PolicyValueV2 {}
    unsafe impl aya::Pod for PolicyStatsV1 {}
    unsafe impl aya::Pod for SliceKeyV2 {}
    unsafe impl aya::Pod for SliceValueV2 {}
    unsafe impl aya::Pod for FlowEventV5 {}
    unsafe impl aya::Pod for DropRateV1 {}
    unsafe impl aya::Pod for CtKeyV2 {}
    unsafe impl aya::Pod for CtValueV2 {}
    unsafe impl aya::Pod for ConfigV2 {}
    unsafe impl aya::Pod for crate::ct::CtSlotV1 {}
    unsafe impl aya::Pod for crate::ct::Ct6SlotV1 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_and_its_reply_share_one_conntrack_key() {
        let (a, b) = ([10, 0, 0, 2], [10, 0, 0, 1]);
        let fwd = CtKeyV2::of(7, a, 40000u16.to_be_bytes(), b, 80u16.to_be_bytes(), proto::TCP);
        let rev = CtKeyV2::of(7, b, 80u16.to_be_bytes(), a, 40000u16.to_be_bytes(), proto::TCP);
        assert_eq!(fwd, rev, "a reply must find its flow's entry");
        assert_eq!((fwd.addr_lo_be, u16::from_be_bytes(fwd.port_lo_be)), (b, 80), "the lower end comes first: {fwd:?}");
        // Same addresses, ports crossed over: another flow, not a reply.
        let other = CtKeyV2::of(7, a, 80u16.to_be_bytes(), b, 40000u16.to_be_bytes(), proto::TCP);
        assert_ne!(fwd, other, "ports belong to their address, not to a position");
        // Equal addresses (a pod to itself through a service): the ports decide.
        let s1 = CtKeyV2::of(7, a, 1u16.to_be_bytes(), a, 2u16.to_be_bytes(), proto::UDP);
        let s2 = CtKeyV2::of(7, a, 2u16.to_be_bytes(), a, 1u16.to_be_bytes(), proto::UDP);
        assert_eq!(s1, s2);
        assert_ne!(fwd, CtKeyV2::of(8, a, 40000u16.to_be_bytes(), b, 80u16.to_be_bytes(), proto::TCP), "entries are per interface");
        assert_ne!(fwd, CtKeyV2::of(7, a, 40000u16.to_be_bytes(), b, 80u16.to_be_bytes(), proto::UDP), "and per protocol");
    }
}
