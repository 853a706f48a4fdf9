//! Map types of the detector: monitored workloads, learned executables, isolation of
//! workloads, exec events and per-workload syscall counts.
//!
//! Same rules as the rest of this crate: `#[repr(C)]`, integers and byte arrays only,
//! explicit padding, versioned map names, size asserts at the bottom.

/// Map names of the detector.
pub mod map_names {
    /// Monitored workloads: cgroup v2 id (u64) -> [`crate::detect::WorkloadV1`].
    pub const WORKLOADS: &str = "BH_DET_WL_V1";
    /// Executables a profile allows: [`crate::detect::ExecKeyV1`] -> u8 (1).
    pub const EXEC_ALLOW: &str = "BH_DET_EXEC_V1";
    /// Isolated endpoints with a host-side ifindex from [`crate::capacity::IFINDEX_DIRECT`]
    /// up: ifindex (u32) -> [`crate::detect::IsolationV1`] (hash).
    pub const ISOLATION: &str = "BH_ISOLATE_V2";
    /// Isolated endpoints with a host-side ifindex below [`crate::capacity::IFINDEX_DIRECT`]:
    /// array indexed by ifindex -> [`crate::detect::IsolationV1`] (`since_ns` 0: not
    /// isolated). TC reads it on every packet; an array lookup costs no call.
    pub const ISOLATION_DIRECT: &str = "BH_ISOLATE_DIRECT_V2";
    /// What an isolated endpoint may still talk to: [`crate::detect::AllowKeyV2`] -> u8 (1).
    /// V2 adds the endpoint to the key (V1 had one list for every endpoint).
    pub const ISOLATION_ALLOW: &str = "BH_ISOALLOW_V2";
    /// The same for IPv6 addresses: [`crate::detect::AllowKey6V1`] -> u8 (1). Entries
    /// without an address stay in [`ISOLATION_ALLOW`] (0.0.0.0) and match both families.
    pub const ISOLATION_ALLOW6: &str = "BH_ISOALLOW6_V1";
    /// Exec events ring buffer of [`crate::detect::DetEventV1`].
    pub const EVENTS: &str = "BH_DET_EVENTS_V1";
    /// Per-CPU scratch event (one slot) the exec probe fills before deciding.
    pub const SCRATCH: &str = "BH_DET_SCRATCH_V1";
    /// Syscall counts: [`crate::detect::SyscallKeyV1`] -> u64 (per CPU).
    pub const SYSCALLS: &str = "BH_DET_SYSCALLS_V1";
    /// Parent of each task forked in a monitored workload: pid (u32) -> parent pid (u32), LRU.
    pub const PARENTS: &str = "BH_DET_PARENTS_V1";
    /// Syscall stream of workloads with [`super::wl_flags::SYSCALL_SEQ`]: ring buffer of
    /// [`crate::detect::SyscallRecordV1`].
    pub const SYSSEQ: &str = "BH_DET_SYSSEQ_V1";
    /// Outbound destinations a protect-mode workload learned, per endpoint:
    /// [`crate::detect::LearnedKeyV1`] -> u8 (1). TC drops a new flow outside them before it
    /// leaves (see [`super::watch_flags`]).
    pub const LEARNED: &str = "BH_DET_LEARNED_V1";
}

/// Bits of the per-endpoint flow-watch array ([`crate::map_names::FLOW_WATCH`]). Written by
/// the agent; read by TC on a new flow.
pub mod watch_flags {
    /// Report every new flow of the endpoint (a monitored workload's).
    pub const REPORT: u32 = 1;
    /// Protect mode, new peers isolate: a new outbound flow to an address the endpoint's
    /// profile never reached is dropped and the endpoint isolated, in TC.
    pub const DROP_NEW_PEER: u32 = 2;
    /// Protect mode, new ports isolate: a new outbound flow to a learned address on a port or
    /// protocol never used with it is dropped and the endpoint isolated, in TC.
    pub const DROP_NEW_PORT: u32 = 4;
}

/// A learned outbound destination of an endpoint. With `port_be` 0 and `protocol` 0: the
/// address is a learned peer on some port. Key of [`map_names::LEARNED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LearnedKeyV1 {
    /// Host-side ifindex of the endpoint.
    pub ifindex: u32,
    /// IPv4 in the first 4 bytes (rest 0) or IPv6, network order.
    pub addr_be: [u8; 16],
    /// Destination port (0 for ICMP).
    pub port_be: [u8; 2],
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<LearnedKeyV1>() == 24);

/// Capacities of the detector maps.
pub mod capacity {
    pub const WORKLOADS: u32 = 16_384;
    pub const EXEC_ALLOW: u32 = 262_144;
    pub const ISOLATION: u32 = 16_384;
    /// (endpoint, destination) pairs: e.g. 16 entries for each of 1,000 isolated-able pods.
    pub const ISOLATION_ALLOW: u32 = 16_384;
    /// (workload, syscall) pairs; ~450 syscalls, so ~580 busy workloads fit.
    pub const SYSCALLS: u32 = 262_144;
    pub const PARENTS: u32 = 65_536;
    /// (endpoint, destination, port) entries of protect-mode workloads.
    pub const LEARNED: u32 = 65_536;
    pub const EVENT_RING_BYTES: u32 = 1 << 20;
    /// 4 MiB: about 100 k records of 40 bytes (with the ring's header), some 100 ms of a
    /// workload making a million syscalls a second.
    pub const SYSSEQ_RING_BYTES: u32 = 1 << 22;
}

/// [`WorkloadV1::mode`] values.
pub mod mode {
    /// Record every exec (user space builds the profile); no enforcement.
    pub const LEARN: u8 = 1;
    /// Check execs against the profile and report violations; no in-kernel action.
    pub const MONITOR: u8 = 2;
    /// Check execs against the profile; the kernel acts on violations ([`super::wl_flags`]).
    pub const PROTECT: u8 = 3;
}

/// Bits of [`WorkloadV1::flags`].
pub mod wl_flags {
    /// Protect: SIGKILL a process that execs a binary outside the profile.
    pub const KILL_ON_EXEC: u32 = 1 << 0;
    /// Protect: isolate the workload's endpoint on such an exec.
    pub const ISOLATE_ON_EXEC: u32 = 1 << 1;
    /// Count the workload's syscalls (raw_syscalls/sys_enter).
    pub const SYSCALLS: u32 = 1 << 2;
    /// Stream the workload's syscalls (number, thread, time) to the agent's sequence model.
    pub const SYSCALL_SEQ: u32 = 1 << 3;
}

/// A monitored workload. Key: its cgroup v2 id. Written by the agent; read by the exec and
/// syscall probes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadV1 {
    /// Profile whose executables are allowed (key part of [`ExecKeyV1`]).
    pub profile_id: u32,
    /// Host-side interface index of the workload's endpoint (0 = none: no network isolation).
    pub ifindex: u32,
    /// [`mode`] value.
    pub mode: u8,
    pub _pad: [u8; 3],
    /// [`wl_flags`] bits.
    pub flags: u32,
}

/// Key of the allowed-executables map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExecKeyV1 {
    pub profile_id: u32,
    pub _pad: u32,
    /// [`path_hash`] of the path as passed to execve (bounded to [`EXEC_PATH_MAX`] bytes).
    pub path_hash: u64,
}

/// [`IsolationV1::reason`] values.
pub mod isolation_reason {
    /// The exec probe isolated the workload (protect mode).
    pub const EXEC_VIOLATION: u32 = 1;
    /// User space isolated it (operator command or a user-space decision).
    pub const USER: u32 = 2;
    /// TC isolated it: a new outbound flow outside its learned destinations (protect mode).
    pub const UNLEARNED_FLOW: u32 = 3;
}

/// An isolated endpoint. Key: host-side ifindex (u32). Written by the exec probe and the
/// agent, removed by `release`; read by TC on every packet (before conntrack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IsolationV1 {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when isolation started.
    pub since_ns: u64,
    /// The workload's cgroup id (release by workload finds its entries).
    pub cgroup_id: u64,
    /// [`isolation_reason`] value.
    pub reason: u32,
    pub _pad: u32,
}

/// What an isolated endpoint may still reach (e.g. DNS). Egress packets match on
/// (destination, destination port, protocol), ingress packets on (source, source port,
/// protocol), so answers come back. `addr_be` 0.0.0.0 matches any address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllowKeyV2 {
    /// Host-side ifindex of the endpoint the entry is for; 0 = every isolated endpoint.
    pub ifindex: u32,
    pub addr_be: [u8; 4],
    pub port_be: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
}

/// [`AllowKeyV2`] for an IPv6 address (never `::`: any-address entries are IPv4 keys).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllowKey6V1 {
    /// Host-side ifindex of the endpoint the entry is for; 0 = every isolated endpoint.
    pub ifindex: u32,
    pub addr_be: [u8; 16],
    pub port_be: [u8; 2],
    pub protocol: u8,
    pub _pad: u8,
}

/// Key of the syscall counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyscallKeyV1 {
    pub cgroup_id: u64,
    pub nr: u32,
    pub _pad: u32,
}

/// Waiting bytes in the sequence ring above which the syscall probe wakes the reader at once
/// (below, the reader's own 1 ms poll picks the records up).
pub const SYSSEQ_WAKE_BYTES: u32 = capacity::SYSSEQ_RING_BYTES / 8;

/// How often the agent's sequence thread reads the ring while any workload streams, ms.
pub const SYSSEQ_POLL_MS: i32 = 1;

/// One syscall of a workload with [`wl_flags::SYSCALL_SEQ`], in the order the thread made
/// them. Written by the syscall probe into the sequence ring; read by the agent's sequence
/// model thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallRecordV1 {
    /// `bpf_ktime_get_ns` at syscall entry.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    /// Thread id (the kernel's pid): one sequence per thread.
    pub tid: u32,
    /// Process id (tgid).
    pub pid: u32,
    /// Syscall number (x86-64 table).
    pub nr: u32,
    /// [`mode`] of the workload at the syscall: records already in the ring when the mode
    /// changes are learned or judged as the kernel saw them.
    pub mode: u8,
    pub _pad: [u8; 3],
}

/// Longest exec path kept (bytes, including the terminating NUL); longer paths are cut, and
/// hashed as cut (the same way when learning and when checking).
pub const EXEC_PATH_MAX: usize = 256;

/// [`DetEventV1::kind`] values.
pub mod event_kind {
    /// An exec in a monitored workload that the profile allows (or learn mode).
    pub const EXEC: u8 = 1;
    /// An exec of a binary outside the profile (monitor or protect mode).
    pub const EXEC_VIOLATION: u8 = 2;
}

/// Bits of [`DetEventV1::actions`]: what the kernel did.
pub mod event_actions {
    pub const KILLED: u8 = 1 << 0;
    pub const ISOLATED: u8 = 1 << 1;
    /// Fail: bpf_send_signal failed (counted; user space may still terminate).
    pub const SIGNAL_FAILED: u8 = 1 << 2;
    /// Fail: the isolation entry could not be written (counted).
    pub const ISOLATE_FAILED: u8 = 1 << 3;
    /// The path could not be read; judged as an empty path (fail-closed in protect).
    pub const PATH_UNREADABLE: u8 = 1 << 4;
}

/// An exec event. Written by the exec probe into the ring buffer; read by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetEventV1 {
    /// `bpf_ktime_get_ns` at the exec tracepoint.
    pub ts_ns: u64,
    /// `bpf_ktime_get_ns` after the kernel's actions (0 when it took none).
    pub enforced_ns: u64,
    pub cgroup_id: u64,
    pub path_hash: u64,
    /// Process id (tgid) after exec.
    pub pid: u32,
    /// Parent pid from the fork probe, 0 if the process was forked before monitoring.
    pub ppid: u32,
    pub uid: u32,
    pub profile_id: u32,
    /// [`event_kind`] value.
    pub kind: u8,
    /// [`event_actions`] bits.
    pub actions: u8,
    /// [`mode`] of the workload at the time.
    pub mode: u8,
    pub _pad: u8,
    pub _pad2: u32,
    /// The exec path, NUL-terminated (cut at [`EXEC_PATH_MAX`]).
    pub filename: [u8; EXEC_PATH_MAX],
}

/// FNV-1a (64 bit) over the bytes up to the first NUL: the exec probe and user space hash
/// exec paths the same way.
#[inline(always)]
pub fn path_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() && i < EXEC_PATH_MAX {
        let b = bytes[i];
        if b == 0 {
            break;
        }
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

const _: () = {
    assert!(core::mem::size_of::<WorkloadV1>() == 16);
    assert!(core::mem::size_of::<SyscallRecordV1>() == 32);
    assert!(core::mem::size_of::<ExecKeyV1>() == 16);
    assert!(core::mem::size_of::<IsolationV1>() == 24);
    assert!(core::mem::size_of::<AllowKeyV2>() == 12);
    assert!(core::mem::size_of::<AllowKey6V1>() == 24);
    assert!(core::mem::size_of::<SyscallKeyV1>() == 16);
    assert!(core::mem::size_of::<DetEventV1>() == 56 + EXEC_PATH_MAX);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for WorkloadV1 {}
    unsafe impl aya::Pod for ExecKeyV1 {}
    unsafe impl aya::Pod for IsolationV1 {}
    unsafe impl aya::Pod for LearnedKeyV1 {}
    unsafe impl aya::Pod for AllowKeyV2 {}
    unsafe impl aya::Pod for AllowKey6V1 {}
    unsafe impl aya::Pod for SyscallKeyV1 {}
    unsafe impl aya::Pod for DetEventV1 {}
    unsafe impl aya::Pod for SyscallRecordV1 {}
}
