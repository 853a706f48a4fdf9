//! Map types of the detector: monitored workloads, learned executables, isolation of
//! workloads, exec and file events, file-system baselines and per-workload syscall counts.
//!
//! Same rules as the rest of this crate: `#[repr(C)]`, integers and byte arrays only,
//! explicit padding, versioned map names, size asserts at the bottom.

/// Map names of the detector.
pub mod map_names {
    /// Monitored workloads: cgroup v2 id (u64) -> [`crate::detect::WorkloadV1`].
    pub const WORKLOADS: &str = "BH_DET_WL_V1";
    /// Executables a profile allows: [`crate::detect::ExecKeyV1`] -> u8
    /// ([`crate::detect::exec_allow`] bits).
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
    /// Exec and file events ring buffer of [`crate::detect::DetEventV2`] (V2: the parent
    /// image's hash).
    pub const EVENTS: &str = "BH_DET_EVENTS_V2";
    /// Per-CPU scratch event (one slot) the exec and file probes fill before deciding.
    pub const SCRATCH: &str = "BH_DET_SCRATCH_V2";
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
    /// The executable image of each process of a monitored workload: pid (tgid, u32) ->
    /// [`crate::detect::path_hash`] of the path it was exec'd from (u64), LRU. Written by the
    /// exec probe (after judging) and the fork probe (the child inherits its parent's); read by
    /// the exec probe: the image that calls exec is the parent of the new one.
    pub const EXE: &str = "BH_DET_EXE_V1";
    /// Parent -> child executables a profile allows: [`crate::detect::LineageKeyV1`] -> u8
    /// (1). Written by the agent; read by the exec probe for executables whose
    /// [`super::exec_allow::LINEAGE`] bit is set.
    pub const LINEAGE: &str = "BH_DET_LINEAGE_V1";
    /// Kernel struct offsets the exec probe follows (array, one [`crate::detect::KernelOffsetsV1`]).
    /// Written by the agent at load from the kernel's BTF; read by the exec probe.
    pub const KOFFSETS: &str = "BH_DET_KOFFSETS_V1";
    /// What each workload's executables are: [`crate::detect::IdentKeyV1`] -> identity (u64:
    /// device, inode and change time of the file the process runs). Written by the exec
    /// probe (learn mode: the latest; monitor and protect: the first seen, trust on first
    /// use); read by the exec probe; an agent removes a workload's entries when it stops
    /// monitoring it.
    pub const IDENT: &str = "BH_DET_IDENT_V1";
    /// File-system baselines of the profiles: LPM trie [`crate::detect::FileKeyV1`] ->
    /// [`crate::detect::FileRuleV1`]: learned directories with their operations, the sensitive
    /// paths configured, and sensitive files read while learning. Written by the agent (the
    /// event thread as it learns, the agent thread on mode changes and imports); read by the
    /// file probe.
    pub const FILE_RULES: &str = "BH_DET_FILES_V1";
    /// Per-CPU scratch (one slot) of the file probe: the key it builds its lookups in and its
    /// path scan's counters (a kernel-only layout).
    pub const FILE_SCRATCH: &str = "BH_DET_FSCRATCH_V1";
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
    /// Processes of monitored workloads whose image is remembered.
    pub const EXE: u32 = 65_536;
    /// (profile, parent, child) executable pairs.
    pub const LINEAGE: u32 = 65_536;
    /// (workload, executable) identities.
    pub const IDENT: u32 = 65_536;
    /// File rules of all profiles (directories, sensitive paths, learned sensitive reads).
    pub const FILE_RULES: u32 = 65_536;
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
    /// File-system baseline: the file probe judges the workload's file operations.
    pub const FILES: u32 = 1 << 4;
    /// Protect: SIGKILL a process writing where the profile never wrote (before the write:
    /// the signal lands when the syscall returns).
    pub const KILL_ON_FILE_WRITE: u32 = 1 << 5;
    /// Protect: isolate the endpoint on such a write.
    pub const ISOLATE_ON_FILE_WRITE: u32 = 1 << 6;
    /// Protect: SIGKILL a process opening a sensitive file the profile never read (it dies
    /// before it can read a byte).
    pub const KILL_ON_SENSITIVE_READ: u32 = 1 << 7;
    /// Protect: isolate the endpoint on such a read.
    pub const ISOLATE_ON_SENSITIVE_READ: u32 = 1 << 8;
    /// Protect: SIGKILL a process listing a directory the profile never listed.
    pub const KILL_ON_DIR_LIST: u32 = 1 << 9;
    /// Protect: isolate the endpoint on such a listing.
    pub const ISOLATE_ON_DIR_LIST: u32 = 1 << 10;
}

/// Byte offsets in kernel structs, from the running kernel's BTF (`valid` 0: unknown, the
/// exec probe does not judge identities).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsetsV1 {
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub inode_ctime_sec: u32,
    pub inode_ctime_nsec: u32,
    pub valid: u32,
    /// `mm_struct.arg_start`: where the new process's argv strings are (its own memory).
    pub mm_arg_start: u32,
}

/// Key of [`map_names::IDENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentKeyV1 {
    pub cgroup_id: u64,
    pub path_hash: u64,
}

/// Bits of the [`map_names::EXEC_ALLOW`] value.
pub mod exec_allow {
    /// The executable is allowed.
    pub const ALLOWED: u8 = 1;
    /// The profile learned which images start it: the exec probe also judges the parent
    /// ([`super::map_names::LINEAGE`]). Executables added by hand, or learned before lineage
    /// existed, carry only [`ALLOWED`] and are judged on their path.
    pub const LINEAGE: u8 = 2;
    /// The executable is an interpreter (by name: python, perl, ruby, node, php, lua, shells):
    /// inline code (`-c`, `-e`, `-` as its first or second argument) is judged.
    pub const INTERPRETER: u8 = 4;
    /// The profile saw it run inline code while learning: allowed.
    pub const INLINE: u8 = 8;
}

/// A parent -> child executable pair a profile allows. `parent_hash` 0: a process started
/// from outside the workload (its first process, exec'd by the runtime).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineageKeyV1 {
    pub profile_id: u32,
    pub _pad: u32,
    /// [`path_hash`] of the image that called exec.
    pub parent_hash: u64,
    /// [`path_hash`] of the new image's path.
    pub child_hash: u64,
}

/// Longest path the file probe reads (bytes, including the terminating NUL). A longer path
/// is not judged in the kernel: it goes to user space as unresolved.
pub const FILE_PATH_MAX: usize = 251;

/// File operations (bits), as the file probe classifies syscalls and profiles learn them
/// per directory.
pub mod file_ops {
    /// Open with write intent (write, read-write, truncate), creat, truncate.
    pub const WRITE: u8 = 1 << 0;
    /// A new name in the directory: O_CREAT, mkdir, link, symlink, O_TMPFILE.
    pub const CREATE: u8 = 1 << 1;
    /// unlink, rmdir.
    pub const DELETE: u8 = 1 << 2;
    /// rename (judged in both the source's and the destination's directory).
    pub const RENAME: u8 = 1 << 3;
    /// chmod, chown (and their *at forms).
    pub const ATTR: u8 = 1 << 4;
    /// Open of a directory for reading (listing it: ls, os.listdir, find).
    pub const LIST: u8 = 1 << 5;
    /// Open for reading of a path under a sensitive prefix.
    pub const READ_SENSITIVE: u8 = 1 << 6;
    /// Every operation that changes the file system.
    pub const MUTATING: u8 = WRITE | CREATE | DELETE | RENAME | ATTR;
}

/// [`FileDataV1::class`] values: what kind of rule an LPM entry is.
pub mod file_class {
    /// A learned directory (path ends with `/`): [`super::FileRuleV1`] holds the operations.
    pub const DIR: u8 = 1;
    /// A sensitive path prefix (from the DetectorPolicy).
    pub const SENSITIVE: u8 = 2;
    /// A sensitive file the profile read while learning (exact path).
    pub const READ: u8 = 3;
}

/// The LPM data of a file rule: class, profile, path. The prefix length (bits) covers class
/// and profile always, and the path up to the rule's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileDataV1 {
    /// [`file_class`] value.
    pub class: u8,
    /// The profile id, big-endian (a byte prefix in the trie).
    pub profile_id_be: [u8; 4],
    /// The path bytes (no NUL needed: the prefix length bounds them).
    pub path: [u8; FILE_PATH_MAX],
}

impl Default for FileDataV1 {
    fn default() -> Self {
        FileDataV1 { class: 0, profile_id_be: [0; 4], path: [0; FILE_PATH_MAX] }
    }
}

/// Bytes of [`FileDataV1`] before the path.
pub const FILE_DATA_HEADER: u32 = 5;

/// Key of [`map_names::FILE_RULES`]: the kernel's LPM trie key layout (prefix length in bits,
/// host order, then the data).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileKeyV1 {
    pub prefix_len: u32,
    pub data: FileDataV1,
}

/// Value of [`map_names::FILE_RULES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRuleV1 {
    /// [`file_ops`] allowed in the directory itself (class DIR).
    pub ops: u32,
    /// [`file_ops`] allowed anywhere below it: its own `**` entry and those of ancestors,
    /// copied down by the agent because the trie answers with the longest match only.
    pub subtree_ops: u32,
    /// The rule's path length in bytes (a match shorter than the looked-up path is a
    /// parent directory, which allows only `subtree_ops`).
    pub path_len: u32,
    pub _pad: u32,
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
    /// The file probe isolated it: a file operation outside its baseline (protect mode).
    pub const FILE_VIOLATION: u32 = 4;
}

/// The identity of an executable file: FNV-1a over device, inode and change time, so the
/// same file changed in place (new ctime) is another identity.
#[inline(always)]
pub fn file_identity(dev: u32, ino: u64, ctime_sec: i64, ctime_nsec: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in [dev as u64, ino, ctime_sec as u64, ctime_nsec as u64] {
        h ^= v;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
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

/// [`DetEventV2::kind`] values.
pub mod event_kind {
    /// An exec in a monitored workload that the profile allows (or learn mode).
    pub const EXEC: u8 = 1;
    /// An exec of a binary outside the profile (monitor or protect mode).
    pub const EXEC_VIOLATION: u8 = 2;
    /// Learn mode: a file operation outside what the profile holds ([`DetEventV2::op`]).
    pub const FILE_LEARN: u8 = 3;
    /// Monitor or protect mode: a file operation outside the profile, judged in the kernel.
    pub const FILE_VIOLATION: u8 = 4;
    /// A file operation on a relative or non-canonical path (or one too long): the kernel
    /// cannot judge it; user space resolves it against the process's directories and judges.
    pub const FILE_UNRESOLVED: u8 = 5;
    /// An exec of an allowed binary by an image that never started it while learning
    /// ([`super::DetEventV2::parent_hash`]), monitor or protect mode.
    pub const EXEC_LINEAGE: u8 = 6;
    /// An exec of an allowed path whose file is no longer the one this workload ran from it
    /// (another inode, or the same one changed: overwritten, replaced by a symlink).
    pub const EXEC_IDENTITY: u8 = 7;
    /// An interpreter running inline code (`-c`, `-e`, `-`) where the profile never saw it do
    /// so. Exec events carry the inline-code observation in [`super::DetEventV2::op`] (1).
    pub const EXEC_INLINE: u8 = 8;
}

/// Bits of [`DetEventV2::actions`]: what the kernel did.
pub mod event_actions {
    pub const KILLED: u8 = 1 << 0;
    pub const ISOLATED: u8 = 1 << 1;
    /// Fail: bpf_send_signal failed (counted; user space may still terminate).
    pub const SIGNAL_FAILED: u8 = 1 << 2;
    /// Fail: the isolation entry could not be written (counted).
    pub const ISOLATE_FAILED: u8 = 1 << 3;
    /// The path could not be read; judged as an empty path (fail-closed in protect).
    pub const PATH_UNREADABLE: u8 = 1 << 4;
    /// File events on paths the kernel cannot judge, protect mode: the process was stopped
    /// (SIGSTOP) until the agent has resolved the path; the agent continues it (SIGCONT).
    pub const STOPPED: u8 = 1 << 5;
}

/// An exec or file event. Written by the exec and file probes into the ring buffer; read by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetEventV2 {
    /// `bpf_ktime_get_ns` at the exec tracepoint.
    pub ts_ns: u64,
    /// `bpf_ktime_get_ns` after the kernel's actions (0 when it took none).
    pub enforced_ns: u64,
    pub cgroup_id: u64,
    pub path_hash: u64,
    /// Exec events: [`path_hash`] of the image that called exec (0: started from outside the
    /// workload, or before it was monitored).
    pub parent_hash: u64,
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
    /// File events: the [`file_ops`] bit judged (0 for execs).
    pub op: u8,
    /// File events: the directory fd the path is relative to (`AT_FDCWD` = -100).
    pub dirfd: i32,
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
    assert!(core::mem::size_of::<DetEventV2>() == 64 + EXEC_PATH_MAX);
    assert!(core::mem::size_of::<LineageKeyV1>() == 24);
    assert!(core::mem::size_of::<KernelOffsetsV1>() == 40);
    assert!(core::mem::size_of::<IdentKeyV1>() == 16);
    assert!(core::mem::size_of::<FileDataV1>() == 256);
    assert!(core::mem::size_of::<FileKeyV1>() == 260);
    assert!(core::mem::size_of::<FileRuleV1>() == 16);
    assert!(FILE_PATH_MAX <= EXEC_PATH_MAX);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for WorkloadV1 {}
    unsafe impl aya::Pod for ExecKeyV1 {}
    unsafe impl aya::Pod for IsolationV1 {}
    unsafe impl aya::Pod for LearnedKeyV1 {}
    unsafe impl aya::Pod for LineageKeyV1 {}
    unsafe impl aya::Pod for KernelOffsetsV1 {}
    unsafe impl aya::Pod for IdentKeyV1 {}
    unsafe impl aya::Pod for AllowKeyV2 {}
    unsafe impl aya::Pod for AllowKey6V1 {}
    unsafe impl aya::Pod for SyscallKeyV1 {}
    unsafe impl aya::Pod for DetEventV2 {}
    unsafe impl aya::Pod for SyscallRecordV1 {}
    unsafe impl aya::Pod for FileDataV1 {}
    unsafe impl aya::Pod for FileKeyV1 {}
    unsafe impl aya::Pod for FileRuleV1 {}
}
