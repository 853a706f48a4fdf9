//! Detector probes: exec (with in-kernel protect, on the path and on which image starts
//! which), fork (parent and image tracking) and syscall counts.
//! Each probe looks its cgroup up in WORKLOADS first and returns at once when it is not
//! monitored.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated::bpf_send_signal,
    },
    programs::{RawTracePointContext, TracePointContext},
};
use bulkhead_common::{
    counters,
    detect::{
        self as det, DetEventV2, EXEC_PATH_MAX, exec_allow, ExecKeyV1, IsolationV1, IdentKeyV1, LineageKeyV1, SyscallKeyV1, WorkloadV1, SyscallRecordV1, event_actions, event_kind, isolation_reason, mode,
        path_hash, wl_flags,
    },
};

use crate::maps::{DET_EVENTS, DET_SCRATCH, EXE, EXEC_ALLOW, IDENT, KOFFSETS, LINEAGE, PARENTS, SYSCALLS, SYSSEQ, WORKLOADS, count};

const SIGKILL: u32 = 9;
/// sched_process_exec: `__data_loc char[] filename` at offset 8.
const EXEC_FILENAME_LOC: usize = 8;
/// sched_process_fork: parent_pid at 12, child_pid at 20.
const FORK_PARENT_PID: usize = 12;
const FORK_CHILD_PID: usize = 20;
/// Raw tracepoint sys_enter: TP_PROTO(struct pt_regs *regs, long id).
const SYS_ENTER_ID_ARG: usize = 1;

/// sched/sched_process_exec: reports the exec; in monitor/protect mode checks the path
/// against the profile and, in protect mode, kills and isolates in this same program.
#[inline(always)]
pub fn try_exec(ctx: &TracePointContext) -> u32 {
    // SAFETY: helpers without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: value copied out.
    let Some(wl) = (unsafe { WORKLOADS.get(&cgroup_id) }).copied() else { return 0 };
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let Some(ev) = DET_SCRATCH.get_ptr_mut(0) else { return 0 };
    // SAFETY: per-CPU scratch slot, used by this program only and not across runs.
    let ev = unsafe { &mut *ev };
    let mut actions = 0u8;
    // SAFETY: the tracepoint record is valid for the program's run; offset from its format.
    let loc: u32 = unsafe { ctx.read_at(EXEC_FILENAME_LOC) }.unwrap_or(0);
    let src = unsafe { ctx.as_ptr().add((loc & 0xffff) as usize) } as *const u8;
    ev.filename[0] = 0;
    // SAFETY: reads kernel memory (the tracepoint record) with the checked helper.
    if unsafe { bpf_probe_read_kernel_str_bytes(src, &mut ev.filename) }.is_err() {
        // Judged as the empty path: never in a profile, so protect fails closed.
        ev.filename[0] = 0;
        actions |= event_actions::PATH_UNREADABLE;
        count(counters::DET_PATH_UNREADABLE);
    }
    let hash = path_hash(&ev.filename[..EXEC_PATH_MAX]);
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mut kind = event_kind::EXEC;
    let mut enforced_ns = 0;
    // SAFETY: value copied out. The image calling exec is the new image's parent.
    let parent_hash = unsafe { EXE.get(&pid) }.copied().unwrap_or(0);
    // Reading argv costs a few helper calls: done while learning (every exec, so the profile
    // learns which interpreters take inline code) and otherwise only for interpreters the
    // profile never saw take it.
    let mut inline = wl.mode == mode::LEARN && inline_code();
    if wl.mode == mode::MONITOR || wl.mode == mode::PROTECT {
        let key = ExecKeyV1 { profile_id: wl.profile_id, _pad: 0, path_hash: hash };
        // SAFETY: value copied out.
        let found = unsafe { EXEC_ALLOW.get(&key) }.copied();
        let allow = found.unwrap_or(0);
        match found {
            None => kind = event_kind::EXEC_VIOLATION,
            Some(v) if v & exec_allow::LINEAGE != 0 => {
                let lk = LineageKeyV1 { profile_id: wl.profile_id, _pad: 0, parent_hash, child_hash: hash };
                if LINEAGE.get_ptr(&lk).is_none() {
                    kind = event_kind::EXEC_LINEAGE;
                }
            }
            Some(_) => {}
        }
        if kind == event_kind::EXEC && allow & exec_allow::INTERPRETER != 0 && allow & exec_allow::INLINE == 0 {
            inline = inline_code();
            if inline {
                kind = event_kind::EXEC_INLINE;
            }
        }
        if kind == event_kind::EXEC {
            if let Some(id) = identity() {
                let ik = IdentKeyV1 { cgroup_id, path_hash: hash };
                // SAFETY: value copied out.
                match unsafe { IDENT.get(&ik) }.copied() {
                    // Trust on first use: a workload (or a replica) that never ran this path
                    // keeps what it runs now.
                    None => {
                        let _ = IDENT.insert(&ik, &id, 0);
                    }
                    Some(known) if known != id => kind = event_kind::EXEC_IDENTITY,
                    Some(_) => {}
                }
            }
        }
        if kind != event_kind::EXEC {
            count(counters::DET_EXEC_VIOLATIONS);
            if wl.mode == mode::PROTECT {
                // SIGKILL is handled before the process runs a single instruction of the new
                // image.
                actions |= contain(&wl, cgroup_id, ts_ns, wl_flags::ISOLATE_ON_EXEC, wl_flags::KILL_ON_EXEC, isolation_reason::EXEC_VIOLATION);
                enforced_ns = unsafe { bpf_ktime_get_ns() };
            }
        }
    }
    if wl.mode == mode::LEARN {
        // Learning keeps the latest: an image updated while learning is what protect knows.
        if let Some(id) = identity() {
            let _ = IDENT.insert(&IdentKeyV1 { cgroup_id, path_hash: hash }, &id, 0);
        }
    }
    // LRU: an insert evicts an old entry instead of failing. A killed process never runs
    // the image, but a later exec from it is judged as from the image it tried.
    let _ = EXE.insert(&pid, &hash, 0);
    ev.ts_ns = ts_ns;
    ev.enforced_ns = enforced_ns;
    ev.cgroup_id = cgroup_id;
    ev.path_hash = hash;
    ev.parent_hash = parent_hash;
    ev.op = inline as u8;
    ev.pid = pid;
    // SAFETY: value copied out.
    ev.ppid = unsafe { PARENTS.get(&pid) }.copied().unwrap_or(0);
    ev.uid = bpf_get_current_uid_gid() as u32;
    ev.profile_id = wl.profile_id;
    ev.kind = kind;
    ev.actions = actions;
    ev.mode = wl.mode;
    ev.dirfd = 0;
    if DET_EVENTS.output::<DetEventV2>(ev, 0).is_ok() {
        count(counters::DET_EVENTS_SENT);
    } else {
        // Enforcement above already happened; only the report is lost, and counted.
        count(counters::DET_EVENTS_DROPPED);
    }
    0
}

/// The identity of the file the current process runs (device, inode, change time), from
/// task -> mm -> exe_file -> f_inode at the offsets the agent read from the kernel's BTF.
/// `None` when the offsets are unknown or a read fails (the exec is then judged on its path
/// and lineage only).
#[inline(always)]
fn identity() -> Option<u64> {
    let o = KOFFSETS.get(0)?;
    if o.valid == 0 {
        return None;
    }
    // SAFETY: checked reads of kernel memory at offsets from the running kernel's BTF.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm: *const u8 = bpf_probe_read_kernel(task.add(o.task_mm as usize) as *const *const u8).ok()?;
        let file: *const u8 = bpf_probe_read_kernel(mm.add(o.mm_exe_file as usize) as *const *const u8).ok()?;
        let inode: *const u8 = bpf_probe_read_kernel(file.add(o.file_inode as usize) as *const *const u8).ok()?;
        let ino: u64 = bpf_probe_read_kernel(inode.add(o.inode_ino as usize) as *const u64).ok()?;
        let sb: *const u8 = bpf_probe_read_kernel(inode.add(o.inode_sb as usize) as *const *const u8).ok()?;
        let dev: u32 = bpf_probe_read_kernel(sb.add(o.sb_dev as usize) as *const u32).ok()?;
        let sec: i64 = bpf_probe_read_kernel(inode.add(o.inode_ctime_sec as usize) as *const i64).ok()?;
        let nsec: u32 = bpf_probe_read_kernel(inode.add(o.inode_ctime_nsec as usize) as *const u32).ok()?;
        Some(det::file_identity(dev, ino, sec, nsec))
    }
}

/// Bytes of the new process's argv read to look for inline code.
const ARGV_BYTES: usize = 128;

/// Whether the new process's first or second argument asks an interpreter for inline code
/// (`-c`, `-e`) or a script on stdin (`-`). Reads the argv strings from the process's own
/// memory (mm->arg_start, offset from BTF); counters live in the scratch map, as in the file
/// probe's path scan, so the verifier's states merge.
#[inline(always)]
fn inline_code() -> bool {
    use core::ptr::{read_volatile as rd, write_volatile as wr};
    let Some(o) = KOFFSETS.get(0) else { return false };
    if o.valid == 0 {
        return false;
    }
    let Some(sc) = crate::maps::FILE_SCRATCH.get_ptr_mut(0) else { return false };
    // SAFETY: per-CPU scratch; the file probe never runs on this CPU while this does.
    let sc = unsafe { &mut *sc };
    // SAFETY: checked reads of kernel and then user memory (the current process's).
    let start: u64 = unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Ok(mm) = bpf_probe_read_kernel(task.add(o.task_mm as usize) as *const *const u8) else { return false };
        let Ok(start) = bpf_probe_read_kernel(mm.add(o.mm_arg_start as usize) as *const u64) else { return false };
        start
    };
    let buf = &mut sc.key.data.path;
    // SAFETY: checked read of user memory.
    if unsafe { aya_ebpf::helpers::bpf_probe_read_user_buf(start as *const u8, &mut buf[..ARGV_BYTES]) }.is_err() {
        return false;
    }
    // SAFETY: plain reads and writes of the scratch map value.
    unsafe {
        wr(&mut sc.seg_len, 0); // argument index
        wr(&mut sc.seg_dots, 0); // current argument's start
        wr(&mut sc.bad, 0); // found
    }
    let mut i = 0usize;
    while i < ARGV_BYTES {
        if sc.key.data.path[i] == 0 {
            // SAFETY: as above.
            unsafe {
                let (arg, st) = (rd(&sc.seg_len), rd(&sc.seg_dots) as usize & (ARGV_BYTES - 1));
                let len = i.wrapping_sub(st);
                if (arg == 1 || arg == 2) && sc.key.data.path[st] == b'-' {
                    let b1 = sc.key.data.path[(st + 1) & (ARGV_BYTES - 1)];
                    if len == 1 || (len == 2 && (b1 == b'c' || b1 == b'e')) {
                        wr(&mut sc.bad, 1);
                    }
                }
                if arg >= 2 {
                    break;
                }
                wr(&mut sc.seg_len, arg + 1);
                wr(&mut sc.seg_dots, (i + 1) as u32);
            }
        }
        i += 1;
    }
    // SAFETY: as above.
    unsafe { rd(&sc.bad) == 1 }
}

/// Protect mode's in-kernel containment of the current process's workload, as its flags
/// ask (`isolate` and `kill` are [`wl_flags`] bits): the isolation entry first (the network
/// stops before the process could use what it did), then SIGKILL to the current process. Every
/// outcome is counted; returns the [`event_actions`] bits.
#[inline(always)]
pub fn contain(wl: &WorkloadV1, cgroup_id: u64, ts_ns: u64, isolate: u32, kill: u32, reason: u32) -> u8 {
    let mut actions = 0;
    if wl.flags & isolate != 0 && wl.ifindex != 0 {
        // since_ns 0 would read as "not isolated" in the array.
        let iso = IsolationV1 { since_ns: ts_ns.max(1), cgroup_id, reason, _pad: 0 };
        if crate::maps::isolate(wl.ifindex, &iso) {
            actions |= event_actions::ISOLATED;
        } else {
            actions |= event_actions::ISOLATE_FAILED;
            count(counters::DET_ISOLATE_FAILED);
        }
    }
    if wl.flags & kill != 0 {
        // SAFETY: signals the current process; the kernel delivers SIGKILL before it returns
        // to user space.
        if unsafe { bpf_send_signal(SIGKILL) } == 0 {
            actions |= event_actions::KILLED;
            count(counters::DET_KILLED);
        } else {
            actions |= event_actions::SIGNAL_FAILED;
            count(counters::DET_SIGNAL_FAILED);
        }
    }
    actions
}

/// sched/sched_process_fork: remembers the parent of tasks forked in monitored workloads.
#[inline(always)]
pub fn try_fork(ctx: &TracePointContext) -> u32 {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if WORKLOADS.get_ptr(&cgroup_id).is_none() {
        return 0;
    }
    // SAFETY: offsets from the tracepoint's format.
    let (Ok(parent), Ok(child)) = (unsafe { ctx.read_at::<u32>(FORK_PARENT_PID) }, unsafe { ctx.read_at::<u32>(FORK_CHILD_PID) }) else {
        return 0;
    };
    // LRU: an insert evicts an old entry instead of failing.
    let _ = PARENTS.insert(&child, &parent, 0);
    // The child runs its parent's image until it execs. The forking task is current: its
    // process id, not the thread's, keys the image.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: value copied out.
    if let Some(h) = unsafe { EXE.get(&tgid) }.copied() {
        let _ = EXE.insert(&child, &h, 0);
    }
    0
}

/// sys_enter (raw tracepoint): counts syscalls per (workload, number) for monitored workloads
/// with the SYSCALLS flag.
#[inline(always)]
pub fn try_sys_enter(ctx: &RawTracePointContext) -> i32 {
    let nr: i64 = ctx.arg(SYS_ENTER_ID_ARG);
    count_syscall(nr as u32);
    0
}

/// Counts the syscall (SYSCALLS flag) and streams it to the sequence model (SYSCALL_SEQ).
#[inline(always)]
fn count_syscall(nr: u32) {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(wl) = WORKLOADS.get_ptr(&cgroup_id) else { return };
    // SAFETY: map value pointer valid for this run.
    let (flags, wl_mode) = unsafe { ((*wl).flags, (*wl).mode) };
    if flags & wl_flags::SYSCALLS != 0 {
        let key = SyscallKeyV1 { cgroup_id, nr, _pad: 0 };
        if let Some(c) = SYSCALLS.get_ptr_mut(&key) {
            // SAFETY: per-CPU slot.
            unsafe { *c += 1 };
        } else if SYSCALLS.insert(&key, &1, 0).is_err() {
            count(counters::DET_SYSCALL_MAP_FULL);
        }
    }
    if flags & wl_flags::SYSCALL_SEQ != 0 {
        let pid_tgid = bpf_get_current_pid_tgid();
        let rec = SyscallRecordV1 {
            // SAFETY: helper without preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            cgroup_id,
            tid: pid_tgid as u32,
            pid: (pid_tgid >> 32) as u32,
            nr,
            mode: wl_mode,
            _pad: [0; 3],
        };
        // A wake-up costs about a microsecond, more than the rest of the probe: the reader
        // polls every millisecond while workloads stream (bounding the delay), and is woken
        // early only when a good part of the ring waits. The kernel's default (wake when the
        // reader has caught up) woke it on nearly every record of a busy workload.
        let flags = if SYSSEQ.query(BPF_RB_AVAIL_DATA as u64) >= det::SYSSEQ_WAKE_BYTES as u64 {
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            BPF_RB_NO_WAKEUP as u64
        };
        if SYSSEQ.output::<SyscallRecordV1>(&rec, flags).is_ok() {
            count(counters::DET_SYSSEQ_SENT);
        } else {
            // Fail-open: the syscall runs unobserved; the agent reports the count.
            count(counters::DET_SYSSEQ_DROPPED);
        }
    }
}
