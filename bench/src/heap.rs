//! A counting global allocator: current and peak heap bytes, for benchmarks that report the
//! memory a computation needs (the compiler's peak at cluster scale). A bench opts in with
//! `#[global_allocator] static A: bulkhead_bench::heap::Counting = bulkhead_bench::heap::Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// Live bytes counted since counting began: allocations counted minus frees counted. Signed,
/// because memory allocated before counting began may be freed while it runs.
static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
/// Counting is on only inside [`peak_during`]: two atomic updates per allocation would be
/// part of every timing otherwise (a compile at cluster scale makes about a million).
static COUNTING: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting live bytes while [`peak_during`] runs.
pub struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        if COUNTING.load(Ordering::Relaxed) {
            CURRENT.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            CURRENT.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n as isize, Ordering::Relaxed) + n as isize;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

/// Runs `f` and returns its result with the peak heap growth (bytes above the live heap at
/// the start) while it ran. Frees of older memory count against the growth as they lower the
/// live heap. Meant for one measurement at a time (it starts and stops the counting).
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    CURRENT.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f();
    COUNTING.store(false, Ordering::SeqCst);
    (out, usize::try_from(PEAK.load(Ordering::Relaxed)).unwrap_or(0))
}
