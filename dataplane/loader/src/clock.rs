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

/// How the datapath turns `bpf_jiffies64` into conntrack time on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JiffiesClock {
    pub hz: u64,
    pub ns_per_jiffy: u64,
    /// `jiffies * ns_per_jiffy - offset` = `CLOCK_MONOTONIC` in ns (within a tick).
    pub offset_ns: u64,
}

impl JiffiesClock {
    /// A config carrying only this calibration: its `jiffies_to_ns` is the datapath's clock.
    pub fn config(&self) -> bulkhead_common::ConfigV2 {
        bulkhead_common::ConfigV2 { ns_per_jiffy: self.ns_per_jiffy, jiffies_offset_ns: self.offset_ns, ..Default::default() }
    }
}

/// The kernel's jiffies clock, calibrated once per process from `/proc/timer_list` (which
/// prints `jiffies` and `CLOCK_MONOTONIC` in one read), or `None` when it cannot be read:
/// the programs then call the coarse-clock helper, which costs a helper call per packet but
/// gives the same time. Cilium's BPF clock probe does the same for its conntrack.
pub fn jiffies_clock() -> Option<JiffiesClock> {
    static CLOCK: std::sync::OnceLock<Option<JiffiesClock>> = std::sync::OnceLock::new();
    *CLOCK.get_or_init(|| {
        let c = std::fs::read_to_string("/proc/timer_list").ok().and_then(|t| calibrate(&t));
        match c {
            Some(c) => tracing::info!(hz = c.hz, "conntrack clock: jiffies"),
            None => tracing::info!("conntrack clock: the coarse-clock helper (/proc/timer_list not readable)"),
        }
        c
    })
}

/// The jiffies reading and `CLOCK_MONOTONIC` of one `/proc/timer_list` text.
fn timer_list_sample(text: &str) -> Option<(u64, u64)> {
    let now = text.lines().find_map(|l| l.strip_prefix("now at ")?.strip_suffix(" nsecs")?.trim().parse::<u64>().ok())?;
    let jiffies = text.lines().find_map(|l| l.trim().strip_prefix("jiffies:")?.trim().parse::<u64>().ok())?;
    Some((jiffies, now))
}

/// HZ is the candidate under which jiffies, counted from the kernel's `INITIAL_JIFFIES`
/// (-300 s worth of ticks as an unsigned 32-bit value), agree with the uptime; the offset
/// makes `jiffies * ns_per_jiffy - offset` equal `CLOCK_MONOTONIC` at the sample.
fn calibrate(text: &str) -> Option<JiffiesClock> {
    let (jiffies, now) = timer_list_sample(text)?;
    let (hz, err) = [100u64, 250, 300, 1000]
        .into_iter()
        .filter_map(|hz| {
            let initial = u64::from((300 * hz as u32).wrapping_neg());
            let ticks = jiffies.checked_sub(initial)?;
            let uptime_ns = ticks as f64 * 1e9 / hz as f64;
            Some((hz, (uptime_ns - now as f64).abs()))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    // A wrong HZ misses by minutes (INITIAL_JIFFIES differs per HZ); a right one by a tick.
    if err > 5e9 {
        return None;
    }
    let ns_per_jiffy = 1_000_000_000 / hz;
    Some(JiffiesClock { hz, ns_per_jiffy, offset_ns: jiffies.wrapping_mul(ns_per_jiffy).wrapping_sub(now) })
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer; both clocks exist on every kernel this runs on.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    const SAMPLE: &str = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 53552436333443 nsecs\n\ncpu: 0\n  .last_jiffies   : 4308280342\njiffies: 4308280341\n";

    #[test]
    fn calibration_finds_hz_from_initial_jiffies_and_the_offset_maps_the_sample_to_its_time() {
        let c = super::calibrate(SAMPLE).expect("sample calibrates");
        assert_eq!((c.hz, c.ns_per_jiffy), (250, 4_000_000), "{c:?}");
        assert_eq!(super::JiffiesClock::config(&c).jiffies_to_ns(4308280341), 53552436333443);
    }

    #[test]
    fn calibration_refuses_text_without_both_clocks() {
        assert_eq!(super::calibrate("now at 5 nsecs\n"), None);
        assert_eq!(super::calibrate("jiffies: 4308280341\n"), None);
        // Jiffies far from the uptime under every HZ: no guess.
        assert_eq!(super::calibrate("now at 1000 nsecs\njiffies: 4300000000\n"), None);
    }

    #[test]
    fn on_this_kernel_jiffies_time_tracks_the_coarse_clock() {
        let Ok(text) = std::fs::read_to_string("/proc/timer_list") else {
            eprintln!("skipped: /proc/timer_list is not readable (needs root); the datapath then uses the helper clock");
            return;
        };
        let c = super::calibrate(&text).expect("this kernel's timer list calibrates");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let text = std::fs::read_to_string("/proc/timer_list").expect("second read");
        let (jiffies, _) = super::timer_list_sample(&text).expect("sample");
        let coarse = super::coarse_ns() as i64;
        let j = super::JiffiesClock::config(&c).jiffies_to_ns(jiffies) as i64;
        // Within two ticks: each of the two readings is at most one tick behind.
        assert!((j - coarse).abs() <= 2 * c.ns_per_jiffy as i64 + 1_000_000, "jiffies time {j}, coarse {coarse}, {c:?}");
    }

    #[test]
    fn the_coarse_clock_trails_the_fine_one_by_at_most_a_tick() {
        let coarse = super::coarse_ns();
        let fine = super::monotonic_ns();
        // A tick is at most 10 ms (HZ >= 100); the coarse clock is never ahead.
        assert!(fine + 1 >= coarse && fine - coarse < 20_000_000, "fine {fine}, coarse {coarse}");
    }
}
