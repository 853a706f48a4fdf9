//! The two kernel clocks user space compares with the datapath's timestamps. Each is named by
//! the BPF helper it pairs with, so a kernel time is only ever subtracted from its own clock.

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns` (detector events,
/// isolation stamps).
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`, which
/// stamps conntrack entries (tick resolution is enough for timeouts of seconds).
pub fn coarse_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer; both clocks exist on every kernel this runs on.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_coarse_clock_trails_the_fine_one_by_at_most_a_tick() {
        let coarse = super::coarse_ns();
        let fine = super::monotonic_ns();
        // A tick is at most 10 ms (HZ >= 100); the coarse clock is never ahead.
        assert!(fine + 1 >= coarse && fine - coarse < 20_000_000, "fine {fine}, coarse {coarse}");
    }
}
