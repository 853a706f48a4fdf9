//! File-system baseline probe: one program attached to the `syscalls/sys_enter_*`
//! tracepoints of the calls that change the file system (open with write intent, creat,
//! truncate, mkdir, unlink, rmdir, rename, link, symlink, chmod, chown) and of open (for
//! directory listings and reads of sensitive paths).
//!
//! Unmonitored workloads pay one WORKLOADS lookup. For a monitored workload with the FILES
//! flag, an absolute canonical path is judged here against the profile's rules in
//! FILE_RULES (an LPM trie: the longest learned directory holding the path); in protect mode
//! the kill and the isolation happen in this program, before the syscall runs (the signal is
//! delivered as the syscall returns, so the process never writes into the file it opened, nor
//! reads a byte of a sensitive one). A relative or non-canonical path (`..`, `.`, `//`) cannot
//! be judged without the process's directories: it goes to user space as FILE_UNRESOLVED (in
//! protect mode with the process stopped until the agent has resolved and judged it).
//! Plain reads on relative paths are not reported (they are most reads; documented).

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_str_bytes, generated::bpf_send_signal},
    maps::lpm_trie::Key,
    programs::TracePointContext,
};
use bulkhead_common::{
    counters,
    detect::{
        DetEventV2, FILE_DATA_HEADER, FILE_PATH_MAX, FileDataV1, WorkloadV1, event_actions, event_kind, file_class, file_ops,
        isolation_reason, mode, wl_flags,
    },
};

use crate::maps::{DET_EVENTS, DET_SCRATCH, FILE_RULES, FILE_SCRATCH, FileScratchV1, WORKLOADS, count};

const SIGSTOP: u32 = 19;
const AT_FDCWD: i64 = -100;
/// `__syscall_nr` in a syscalls/sys_enter_* record; the arguments follow at 16, 8 bytes each.
const NR_OFFSET: usize = 8;
const ARGS_OFFSET: usize = 16;

/// x86-64 syscall numbers of the calls the probe is attached to.
mod nr {
    pub const OPEN: i32 = 2;
    pub const TRUNCATE: i32 = 76;
    pub const RENAME: i32 = 82;
    pub const MKDIR: i32 = 83;
    pub const RMDIR: i32 = 84;
    pub const CREAT: i32 = 85;
    pub const LINK: i32 = 86;
    pub const UNLINK: i32 = 87;
    pub const SYMLINK: i32 = 88;
    pub const CHMOD: i32 = 90;
    pub const CHOWN: i32 = 92;
    pub const LCHOWN: i32 = 94;
    pub const OPENAT: i32 = 257;
    pub const MKDIRAT: i32 = 258;
    pub const FCHOWNAT: i32 = 260;
    pub const UNLINKAT: i32 = 263;
    pub const RENAMEAT: i32 = 264;
    pub const LINKAT: i32 = 265;
    pub const SYMLINKAT: i32 = 266;
    pub const FCHMODAT: i32 = 268;
    pub const RENAMEAT2: i32 = 316;
    pub const OPENAT2: i32 = 437;
    pub const FCHMODAT2: i32 = 452;
}

/// open(2) flag bits (x86-64).
const O_ACCMODE: u64 = 0o3;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_DIRECTORY: u64 = 0o200000;
const O_TMPFILE_BIT: u64 = 0o20000000;

/// Argument `i` of the syscall. The first is a direct load of the record (no helper call);
/// the others go through `read_at`: the kernel refuses to attach a program whose direct loads
/// reach past the shortest record it is attached to (unlink's holds one argument).
#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    if i == 0 {
        // SAFETY: offset from the syscalls tracepoints' format; every record holds it.
        return unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(ARGS_OFFSET) as *const u64) };
    }
    // SAFETY: offsets from the syscalls tracepoints' format (every argument is 8 bytes).
    unsafe { ctx.read_at::<u64>(ARGS_OFFSET + 8 * i) }.unwrap_or(0)
}

/// What an open asks for: (operation, the path names a directory).
#[inline(always)]
fn open_op(flags: u64) -> (u8, bool) {
    if flags & O_TMPFILE_BIT != 0 {
        // An unnamed file in the directory the path names.
        return (file_ops::CREATE | file_ops::WRITE, true);
    }
    let acc = flags & O_ACCMODE;
    let mut op = 0;
    if acc == 1 || acc == 2 || flags & O_TRUNC != 0 {
        op |= file_ops::WRITE;
    }
    if flags & O_CREAT != 0 {
        op |= file_ops::CREATE;
    }
    if op != 0 {
        (op, false)
    } else if flags & O_DIRECTORY != 0 {
        (file_ops::LIST, true)
    } else {
        (file_ops::READ_SENSITIVE, false)
    }
}

#[inline(always)]
pub fn try_file(ctx: &TracePointContext) -> u32 {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    // SAFETY: value copied out.
    let Some(wl) = (unsafe { WORKLOADS.get(&cgroup_id) }).copied() else { return 0 };
    if wl.flags & wl_flags::FILES == 0 {
        return 0;
    }
    // SAFETY: offset from the tracepoints' format; a direct load as in `arg`.
    let nr: i32 = unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(NR_OFFSET) as *const i32) };
    let a0 = arg(ctx, 0);
    let a = |i| arg(ctx, i);
    let cwd = AT_FDCWD as u64;
    // (operation, dirfd, path, path names a directory); renames and links judge a second path.
    let (op, dfd, path, is_dir) = match nr {
        nr::OPEN => {
            let (op, d) = open_op(a(1));
            (op, cwd, a0, d)
        }
        nr::OPENAT => {
            let (op, d) = open_op(a(2));
            (op, a0, a(1), d)
        }
        nr::OPENAT2 => {
            // struct open_how { u64 flags; ... } in user memory.
            // SAFETY: checked read of user memory.
            let flags: u64 = unsafe { bpf_probe_read_user(a(2) as *const u64) }.unwrap_or(0);
            let (op, d) = open_op(flags);
            (op, a0, a(1), d)
        }
        nr::CREAT => (file_ops::WRITE | file_ops::CREATE, cwd, a0, false),
        nr::TRUNCATE => (file_ops::WRITE, cwd, a0, false),
        nr::MKDIR => (file_ops::CREATE, cwd, a0, false),
        nr::MKDIRAT => (file_ops::CREATE, a0, a(1), false),
        nr::UNLINK | nr::RMDIR => (file_ops::DELETE, cwd, a0, false),
        nr::UNLINKAT => (file_ops::DELETE, a0, a(1), false),
        nr::RENAME => {
            judge(&wl, cgroup_id, file_ops::RENAME, cwd, a0, false);
            (file_ops::RENAME, cwd, a(1), false)
        }
        nr::RENAMEAT | nr::RENAMEAT2 => {
            judge(&wl, cgroup_id, file_ops::RENAME, a0, a(1), false);
            (file_ops::RENAME, a(2), a(3), false)
        }
        nr::LINK => (file_ops::CREATE, cwd, a(1), false),
        nr::LINKAT => (file_ops::CREATE, a(2), a(3), false),
        nr::SYMLINK => (file_ops::CREATE, cwd, a(1), false),
        nr::SYMLINKAT => (file_ops::CREATE, a(1), a(2), false),
        nr::CHMOD | nr::CHOWN | nr::LCHOWN => (file_ops::ATTR, cwd, a0, false),
        nr::FCHMODAT | nr::FCHMODAT2 | nr::FCHOWNAT => (file_ops::ATTR, a0, a(1), false),
        _ => return 0,
    };
    judge(&wl, cgroup_id, op, dfd, path, is_dir);
    0
}

/// The shape of a path as read: its length, where its last `/` is, and whether the kernel
/// can judge it as written (absolute, no `.`/`..` segment, no `//`, not cut).
struct Shape {
    len: usize,
    last_slash: usize,
    canonical: bool,
}

/// Scans the path once. The per-segment counters live in the scratch map, not in registers:
/// the verifier tracks register values exactly, so a loop over 251 bytes with exact counters
/// would be explored once per possible path shape (over its 1M-instruction budget); values
/// read back from a map are unknown to it, and the iterations' states merge.
#[inline(always)]
fn shape(sc: &mut FileScratchV1, len: usize, is_dir: bool) -> Shape {
    use core::ptr::{read_volatile as rd, write_volatile as wr};
    let start_ok = len > 0 && len < FILE_PATH_MAX - 1 && sc.key.data.path[0] == b'/';
    // SAFETY: plain reads and writes of the scratch map value (volatile: kept in memory).
    unsafe {
        wr(&mut sc.seg_len, 0);
        wr(&mut sc.seg_dots, 0);
        wr(&mut sc.last_slash, 0);
        wr(&mut sc.bad, if start_ok { 0 } else { 1 });
    }
    let mut i = 0usize;
    while i < FILE_PATH_MAX {
        let end = i >= len;
        let b = if end { b'/' } else { sc.key.data.path[i] };
        // SAFETY: as above.
        unsafe {
            if b == b'/' {
                let (sl, sd) = (rd(&sc.seg_len), rd(&sc.seg_dots));
                // A segment ends: "." and ".." are not canonical; an empty one is "//", or a
                // trailing "/" (fine for a directory, not for a file's name).
                if sl > 0 && sl == sd && sl <= 2 {
                    wr(&mut sc.bad, 1);
                }
                if sl == 0 && i > 0 && (!end || !is_dir) {
                    wr(&mut sc.bad, 1);
                }
                if !end {
                    wr(&mut sc.last_slash, i as u32);
                }
                wr(&mut sc.seg_len, 0);
                wr(&mut sc.seg_dots, 0);
            } else {
                wr(&mut sc.seg_len, rd(&sc.seg_len) + 1);
                if b == b'.' {
                    wr(&mut sc.seg_dots, rd(&sc.seg_dots) + 1);
                }
            }
        }
        if end {
            break;
        }
        i += 1;
    }
    // SAFETY: as above.
    unsafe { Shape { len, last_slash: rd(&sc.last_slash) as usize, canonical: rd(&sc.bad) == 0 } }
}

/// Judges one path of a file syscall and acts on a violation.
#[inline(always)]
fn judge(wl: &WorkloadV1, cgroup_id: u64, op: u8, dfd: u64, ptr: u64, is_dir: bool) {
    let Some(sc) = FILE_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU scratch slot, used by this program only and not across runs.
    let sc = unsafe { &mut *sc };
    // SAFETY: checked read of user memory into the scratch.
    let len = match unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut sc.key.data.path) } {
        Ok(s) => s.len(),
        Err(_) => {
            count(counters::DET_FILE_PATH_FAULT);
            return;
        }
    };
    if len == 0 {
        return;
    }
    let sh = shape(sc, len, is_dir);
    let k = &mut sc.key;
    if !sh.canonical {
        if op == file_ops::READ_SENSITIVE && k.data.path[0] != b'/' {
            // Relative plain reads: most reads of most programs; not reported.
            return;
        }
        count(counters::DET_FILE_UNRESOLVED);
        // Protect: the process is stopped (as the syscall returns) until the agent has
        // resolved the path through /proc and judged it: a short-lived process would be gone
        // before it could look. Only once the agent has the event, so it can continue it.
        let protect = wl.mode == mode::PROTECT;
        let actions = if protect { event_actions::STOPPED } else { 0 };
        if emit(wl, cgroup_id, event_kind::FILE_UNRESOLVED, op, dfd, ptr, unsafe { bpf_ktime_get_ns() }, actions, 0) && protect {
            // SAFETY: signals the current process.
            unsafe { bpf_send_signal(SIGSTOP) };
        }
        return;
    }
    k.data.profile_id_be = wl.profile_id.to_be_bytes();
    let allowed = if op == file_ops::READ_SENSITIVE {
        k.data.class = file_class::SENSITIVE;
        k.prefix_len = (FILE_DATA_HEADER + sh.len as u32) * 8;
        // SAFETY: the scratch key has the trie key's layout (u32 prefix length, then data).
        let key = unsafe { &*(k as *const _ as *const Key<FileDataV1>) };
        if FILE_RULES.get(key).is_none() {
            return;
        }
        k.data.class = file_class::READ;
        matches!(FILE_RULES.get(key), Some(r) if r.path_len as usize == sh.len)
    } else {
        // The directory the operation changes (or lists): up to and with the last `/` of a
        // file's path, or the whole path of a directory with a `/` added.
        let qlen = if is_dir {
            let last = sh.len.wrapping_sub(1);
            if sh.len > 1 && last < FILE_PATH_MAX && k.data.path[last] != b'/' {
                // sh.len < FILE_PATH_MAX - 1 (canonical): the index is in bounds.
                if sh.len < FILE_PATH_MAX {
                    k.data.path[sh.len] = b'/';
                }
                sh.len + 1
            } else {
                sh.len
            }
        } else {
            (sh.last_slash & 0xff) + 1
        };
        k.data.class = file_class::DIR;
        k.prefix_len = (FILE_DATA_HEADER + qlen as u32) * 8;
        // SAFETY: as above.
        let key = unsafe { &*(k as *const _ as *const Key<FileDataV1>) };
        match FILE_RULES.get(key) {
            Some(r) => {
                // A match shorter than the directory is an ancestor: only what it allows below.
                let mut have = r.subtree_ops;
                if r.path_len as usize == qlen {
                    have |= r.ops;
                }
                have & op as u32 == op as u32
            }
            None => false,
        }
    };
    if allowed {
        return;
    }
    if wl.mode == mode::LEARN {
        let _ = emit(wl, cgroup_id, event_kind::FILE_LEARN, op, dfd, ptr, unsafe { bpf_ktime_get_ns() }, 0, 0);
        return;
    }
    count(counters::DET_FILE_VIOLATIONS);
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let mut actions = 0u8;
    let mut enforced_ns = 0;
    if wl.mode == mode::PROTECT {
        let (kill, isolate) = if op == file_ops::READ_SENSITIVE {
            (wl_flags::KILL_ON_SENSITIVE_READ, wl_flags::ISOLATE_ON_SENSITIVE_READ)
        } else if op == file_ops::LIST {
            (wl_flags::KILL_ON_DIR_LIST, wl_flags::ISOLATE_ON_DIR_LIST)
        } else {
            (wl_flags::KILL_ON_FILE_WRITE, wl_flags::ISOLATE_ON_FILE_WRITE)
        };
        // The kill lands as the syscall returns: a file opened for writing is never
        // written, a sensitive one never read.
        actions |= crate::detect::contain(wl, cgroup_id, ts_ns, isolate, kill, isolation_reason::FILE_VIOLATION);
        enforced_ns = unsafe { bpf_ktime_get_ns() };
    }
    let _ = emit(wl, cgroup_id, event_kind::FILE_VIOLATION, op, dfd, ptr, ts_ns, actions, enforced_ns);
}

/// Sends a file event (the path read again into the event); whether it was sent.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(wl: &WorkloadV1, cgroup_id: u64, kind: u8, op: u8, dfd: u64, ptr: u64, ts_ns: u64, actions: u8, enforced_ns: u64) -> bool {
    let Some(ev) = DET_SCRATCH.get_ptr_mut(0) else { return false };
    // SAFETY: per-CPU scratch slot; the exec probe cannot run on this CPU while this does.
    let ev: &mut DetEventV2 = unsafe { &mut *ev };
    ev.filename[0] = 0;
    // SAFETY: checked read of user memory.
    if unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut ev.filename) }.is_err() {
        ev.filename[0] = 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.ts_ns = ts_ns;
    ev.enforced_ns = enforced_ns;
    ev.cgroup_id = cgroup_id;
    ev.path_hash = 0;
    ev.parent_hash = 0;
    ev.pid = (pid_tgid >> 32) as u32;
    ev.ppid = 0;
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.profile_id = wl.profile_id;
    ev.kind = kind;
    ev.actions = actions;
    ev.mode = wl.mode;
    ev.op = op;
    ev.dirfd = dfd as i32;
    if DET_EVENTS.output::<DetEventV2>(ev, 0).is_ok() {
        count(counters::DET_EVENTS_SENT);
        true
    } else {
        // The kernel's actions above already happened; only the report is lost, and counted.
        count(counters::DET_EVENTS_DROPPED);
        false
    }
}
