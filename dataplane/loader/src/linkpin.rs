//! Removing a pinned link so that the program is off its hook when the call returns.
//!
//! Unpinning alone is not enough for that: the kernel frees the bpffs inode after an RCU grace
//! period and puts the link from a work queue, so a packet sent right after `unlink(2)` can
//! still meet the program (the crash-safety test saw a denied port stay denied just after
//! `bulkhead agent uninstall`). `BPF_LINK_DETACH` (kernel >= 5.9) detaches at once for the link
//! types that support it (tcx, XDP, cgroup, netns); for the others (tracepoints) the unpin is
//! all there is, and they leave within a grace period. A raw `bpf(2)` call, as in
//! [`crate::batch`]: aya 0.14 has no link detach, and two commands do not justify libbpf-rs.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// The `obj_pin` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The `link_detach` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the size passed; the
    // only pointer in any of them (a path) outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Detaches the link pinned at `pin` (when its type allows) and removes the pin. `Ok(false)`
/// when there was no pin.
pub fn remove(pin: &Path) -> io::Result<bool> {
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in pin path"))?;
    let mut get = ObjGetAttr { pathname: path.as_ptr() as u64, ..Default::default() };
    match bpf(BPF_OBJ_GET, &mut get) {
        Ok(fd) => {
            // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
            let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let mut detach = LinkDetachAttr { link_fd: link.as_raw_fd() as u32 };
            match bpf(BPF_LINK_DETACH, &mut detach) {
                // EOPNOTSUPP: a link type without detach (tracepoints); EINVAL: the pin is not
                // a link (a program or a map someone put there). Unpinning is all that is left.
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {}
                Err(e) => tracing::warn!(pin = %pin.display(), error = %e, "BPF_LINK_DETACH failed; unpinning only"),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        // Not a bpf object (or not readable as one): still remove the file.
        Err(_) => {}
    }
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
