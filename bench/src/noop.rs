//! No-op baselines for per-packet cost: a two-instruction program (`r0 = verdict; exit`) of
//! the same type as the program measured, loaded with a raw `bpf(BPF_PROG_LOAD)` so the product's
//! eBPF object need not carry a program no configuration runs. Measured with the same
//! `BPF_PROG_TEST_RUN` as the real programs, so the difference is what the real program does.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `TC_ACT_UNSPEC`: continue, as the real TC programs return for a pass.
const TC_ACT_UNSPEC: i32 = -1;
const XDP_PASS: i32 = 2;

/// A loaded no-op program; closed on drop.
pub struct NoopProg {
    fd: OwnedFd,
}

/// One `BPF_PROG_TEST_RUN`: the program's return value and the kernel's average ns per run.
#[derive(Clone, Copy, Debug)]
pub struct RawRun {
    pub retval: u32,
    pub kernel_ns: u32,
}

/// `bpf_attr` as a zeroed byte buffer, fields written at their documented offsets (the union
/// is larger than any command's part; the kernel checks the tail is zero).
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
    fn call(&mut self, cmd: libc::c_long) -> io::Result<libc::c_long> {
        // SAFETY: the buffer outlives the call and its size is passed; pointers written into it
        // point at live buffers of the caller.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), self.0.len() as u32) };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
    }
}

impl NoopProg {
    /// A TC (sched_cls) program returning `TC_ACT_UNSPEC`.
    pub fn tc() -> io::Result<Self> {
        Self::load(BPF_PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC)
    }

    /// An XDP program returning `XDP_PASS`.
    pub fn xdp() -> io::Result<Self> {
        Self::load(BPF_PROG_TYPE_XDP, XDP_PASS)
    }

    fn load(prog_type: u32, verdict: i32) -> io::Result<Self> {
        // mov64 r0, imm ; exit
        let mut insns = [0u8; 16];
        insns[0] = 0xb7;
        insns[4..8].copy_from_slice(&verdict.to_ne_bytes());
        insns[8] = 0x95;
        let license = c"GPL";
        let mut a = Attr::new();
        a.u32(0, prog_type);
        a.u32(4, 2);
        a.u64(8, insns.as_ptr() as u64);
        a.u64(16, license.as_ptr() as u64);
        let name = b"bh_bench_noop";
        a.0[48..48 + name.len()].copy_from_slice(name);
        let fd = a.call(BPF_PROG_LOAD)?;
        // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor we own.
        Ok(NoopProg { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } })
    }

    /// Runs the program `repeat` times on `frame`.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> io::Result<RawRun> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut a = Attr::new();
        a.u32(0, self.fd.as_raw_fd() as u32);
        a.u32(8, frame.len() as u32);
        a.u32(12, out.len() as u32);
        a.u64(16, frame.as_ptr() as u64);
        a.u64(24, out.as_mut_ptr() as u64);
        a.u32(32, repeat);
        a.call(BPF_PROG_TEST_RUN)?;
        Ok(RawRun { retval: a.get_u32(4), kernel_ns: a.get_u32(36) })
    }
}
