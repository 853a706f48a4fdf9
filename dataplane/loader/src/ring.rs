//! The one reader of the kernel's ring buffers (flow events, detector exec events, syscall
//! records): a wait on the ring's descriptor, optionally with a wake-up descriptor beside it,
//! and typed reads of whole records.

use std::{
    marker::PhantomData,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use aya::maps::{MapData, RingBuf};

use crate::error::DataplaneError;

/// A ring of records of type `T` (a `#[repr(C)]` type the kernel writes whole).
pub struct Ring<T> {
    ring: RingBuf<MapData>,
    /// Records shorter than `T` (a kernel/user layout mismatch): skipped and counted.
    short: u64,
    _t: PhantomData<T>,
}

impl<T: aya::Pod> Ring<T> {
    /// Reads `ring` as records of `T`.
    pub fn new(ring: RingBuf<MapData>) -> Ring<T> {
        Ring { ring, short: 0, _t: PhantomData }
    }

    /// Blocks until records are readable, `wake` (if any) is signalled, or `timeout_ms` passes
    /// (a negative timeout waits without bound). Returns whether `wake` fired; a wake-up is
    /// consumed here.
    pub fn wait(&self, wake: Option<&Wake>, timeout_ms: i32) -> bool {
        let mut fds = [
            libc::pollfd { fd: self.ring.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: wake.map_or(-1, Wake::raw_fd), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfd entries (a negative fd is ignored by poll).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if n > 0 && fds[1].revents & libc::POLLIN != 0 {
            if let Some(w) = wake {
                w.consume();
            }
            return true;
        }
        false
    }

    /// Appends up to `max` waiting records to `out`; returns how many it appended.
    pub fn read(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else { break };
            if item.len() < size_of::<T>() {
                self.short += 1;
                if self.short.is_power_of_two() {
                    tracing::warn!(len = item.len(), want = size_of::<T>(), short = self.short, "short ring record skipped");
                }
                continue;
            }
            // SAFETY: the kernel wrote a whole T (size checked); `T: Pod` accepts any bytes;
            // unaligned read since the ring only aligns to 8.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
            n += 1;
        }
        n
    }

    /// Every waiting record.
    pub fn read_all(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        self.read(&mut out, usize::MAX);
        out
    }
}

/// A wake-up another thread signals (an eventfd): stop requests and flushes reach a thread
/// blocked in [`Ring::wait`] at once rather than at its next timeout.
pub struct Wake(OwnedFd);

impl Wake {
    /// A new, unsignalled wake-up.
    pub fn new() -> Result<Wake, DataplaneError> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(DataplaneError::Io { what: "creating an eventfd", source: std::io::Error::last_os_error() });
        }
        // SAFETY: fd was just returned by eventfd and is owned by nobody else.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the waiting thread (or its next wait).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an owned eventfd. A full counter (2^64-2
        // signals) cannot happen; a failure leaves the waiter to its timeout.
        let _ = unsafe { libc::write(self.raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn consume(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from an owned non-blocking eventfd.
        let _ = unsafe { libc::read(self.raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    fn raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
