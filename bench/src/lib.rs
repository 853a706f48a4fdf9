//! Shared helpers of Bulkhead's criterion benchmarks (`benches/`):
//!
//! - [`synth`]: deterministic synthetic cluster models (namespaces, replicated pods,
//!   NetworkPolicies mixing every selector and port form) for the compiler benchmark.
//! - [`heap`]: a counting allocator for peak-memory figures.
//! - [`packet`]: Ethernet + IPv4 + TCP frames for `BPF_PROG_TEST_RUN`.
//! - [`datapath`]: the real programs' per-packet cost through `BPF_PROG_TEST_RUN`;
//!   [`noop`]: the no-op baselines it is measured against.
//! - [`require_root`], [`result`], [`percentile`]: plumbing.

pub mod datapath;
pub mod heap;
pub mod noop;
pub mod packet;
pub mod synth;

/// Whether the process runs as root (privileged benches need it for bpf() and netns).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns `true` when running as root; otherwise prints a loud skip notice for `bench`.
pub fn require_root(bench: &str) -> bool {
    if is_root() {
        return true;
    }
    let bar = "!".repeat(78);
    eprintln!("{bar}");
    eprintln!("!! SKIPPED: the `{bench}` benchmark needs root (bpf(), bpffs pins, netns).");
    eprintln!("!! Nothing was measured. Re-run as root, e.g.:");
    eprintln!("!!   sudo -E CARGO_TARGET_DIR=/work/target-bench cargo bench -p bulkhead-bench --bench {bench}");
    eprintln!("{bar}");
    println!("RESULT {bench}_skipped_not_root=1");
    false
}

/// `<bench> lab serve --tcp a,b --udp c`: the echo server a lab starts inside each pod, which
/// the lab runs as the current executable. Returns true when this process was that server
/// (the bench's `main` then returns at once).
pub fn serve_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("lab") || args.get(2).map(String::as_str) != Some("serve") {
        return false;
    }
    let list = |flag: &str| -> Vec<u16> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.split(',').filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    };
    if let Err(e) = bulkhead_lab::server::serve(&list("--tcp"), &list("--udp")) {
        eprintln!("echo server: {e}");
        std::process::exit(1);
    }
    true
}

/// The start of a bench that runs a lab: returns `false` when this process should do nothing
/// more (it was started as a lab pod's echo server, or it lacks root and printed the skip
/// notice); otherwise installs the signal teardown first, before any thread exists, so
/// SIGINT/SIGTERM remove the lab's namespaces, servers and pins.
pub fn start_lab_bench(bench: &str) -> bool {
    if serve_mode() || !require_root(bench) {
        return false;
    }
    bulkhead_lab::teardown::install_signal_teardown();
    true
}

/// Prints a quotable result line: `RESULT <name>=<value>`.
pub fn result(name: &str, value: impl std::fmt::Display) {
    println!("RESULT {name}={value}");
}

/// Nearest-rank percentile (`p` in 0..=100) of `sorted` (ascending). `None` when empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A tiny deterministic PRNG (xorshift64*), so synthetic inputs are identical across runs
/// without a `rand` dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
    }
}

/// A loaded dataplane that is unloaded (programs detached, pins removed) however the scope is
/// left, panics included. Benchmarks and the kernel-level tests use it.
pub struct DataplaneGuard(pub Option<bulkhead_agent::loader::Dataplane>);

impl DataplaneGuard {
    /// Loads the eBPF object into its own pin folder under `/sys/fs/bpf/bulkhead/<name>`.
    pub fn load(name: &str) -> DataplaneGuard {
        let dir = std::path::Path::new("/sys/fs/bpf/bulkhead").join(name);
        DataplaneGuard(Some(bulkhead_agent::loader::Dataplane::load(&dir).expect("loading the eBPF object")))
    }

    pub fn dp(&mut self) -> &mut bulkhead_agent::loader::Dataplane {
        self.0.as_mut().expect("loaded")
    }
}

impl Drop for DataplaneGuard {
    fn drop(&mut self) {
        if let Some(dp) = self.0.take() {
            dp.unload();
        }
    }
}

/// How [`time_to_verdict`] probes.
#[derive(Clone, Copy, Debug)]
pub struct Probing {
    /// A new probe starts this often (the figure's resolution).
    pub interval: std::time::Duration,
    /// Each probe's connect timeout.
    pub timeout: std::time::Duration,
    /// No probe seeing the new verdict by then is a failure.
    pub give_up: std::time::Duration,
}

/// Time from `t0` (when a policy change was made) until the first TCP probe from `client` to
/// `ip:port` that sees `allowed`: probes start every `p.interval`, in parallel, until one sees
/// the new verdict; those still in flight are then waited for, since an earlier-started probe
/// may report later. The figure is the start of the earliest probe that saw the new verdict.
/// `None` when no probe saw it within `p.give_up`.
pub fn time_to_verdict(
    client: &bulkhead_lab::PodNetns,
    ip: std::net::Ipv4Addr,
    port: u16,
    allowed: bool,
    t0: std::time::Instant,
    p: Probing,
) -> Option<std::time::Duration> {
    use std::time::{Duration, Instant};
    let Probing { interval, timeout, give_up } = p;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, bool)>();
    let mut first: Option<Instant> = None;
    let mut outstanding = 0usize;
    let mut next = t0;
    let deadline = t0 + give_up;
    let seen = |first: &mut Option<Instant>, (started, ok): (Instant, bool)| {
        if ok == allowed {
            *first = Some(first.map_or(started, |f| f.min(started)));
        }
    };
    while first.is_none() && Instant::now() < deadline {
        if Instant::now() >= next {
            let (tx, client) = (tx.clone(), client.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let ok = bulkhead_lab::probe::probe(&client, ip, port, bulkhead_lab::Protocol::Tcp, timeout);
                let _ = tx.send((started, ok));
            });
            outstanding += 1;
            next += interval;
        }
        while let Ok(r) = rx.try_recv() {
            outstanding -= 1;
            seen(&mut first, r);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    drop(tx);
    while outstanding > 0 {
        match rx.recv_timeout(timeout + Duration::from_secs(2)) {
            Ok(r) => {
                outstanding -= 1;
                seen(&mut first, r);
            }
            Err(_) => break,
        }
    }
    first.map(|f| f.saturating_duration_since(t0))
}
