//! Datapath verdict cost through BPF_PROG_TEST_RUN, against the number of policy rules.
//!
//! Loads the real eBPF object (`bulkhead_agent::loader::Dataplane`), fills the maps with N
//! policy entries (10, 1k, 10k, 100k), and runs `bh_to_pod` (the pod's ingress) on a TCP SYN
//! from a peer to the local endpoint, next to a no-op TC program (`r0 = TC_ACT_UNSPEC; exit`, loaded by the bench) in the
//! same process. Two paths:
//!
//! - `deny_new_flow`: the SYN's port is not allowed, so no conntrack entry is ever created and
//!   every run does the full evaluation (2 conntrack lookups, 1 IP-cache lookup, 6 policy
//!   lookups: peer identity, CIDR identity and ANY, each with the protocol and ANY).
//! - `established`: an allowed SYN; the first run creates the conntrack entry, every later run
//!   takes the conntrack fast path.
//!
//! BPF_PROG_TEST_RUN on an skb program runs it with `skb->dev` = the loopback device of the
//! caller's netns (ifindex 1) unless `ctx_in.ifindex > 1`, so the endpoint entry is written
//! under ifindex 1 and no ctx is passed. Counters are checked after each measurement so that
//! a miss (no endpoint, no config) cannot masquerade as a fast verdict.
//!
//! Figures: criterion measures the wall-clock time of the test_run syscall divided by the
//! repeat count (one skb setup per >= 1e6 runs, negligible); the RESULT lines use the
//! kernel-reported average (integer ns) and the wall-clock average, medians of 7 interleaved
//! rounds of 1e6 runs each.

use std::time::{Duration, Instant};

#[path = "datapath/records.rs"]
mod records;

use bulkhead_bench::datapath::{Bench, PathKind, REPEAT, Shape, median, remove_stale_pins};
use bulkhead_bench::{require_root, result};
use criterion::{BenchmarkId, Criterion};

const ROUNDS: usize = 7;
const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];

/// Median kernel-reported ns per run of each path.
#[derive(Default, Clone, Copy)]
struct Figures {
    noop: f64,
    deny: f64,
    deny_world: f64,
    established: f64,
}

const PATHS: [PathKind; 4] = [PathKind::Noop, PathKind::Deny, PathKind::DenyWorld, PathKind::Established];

fn measure(c: &mut Criterion, shape: Shape, n: usize) -> Figures {
    let mut b = Bench::new(n, shape);
    // Quotable figures: interleaved rounds, medians of the kernel's own average.
    let mut k: [Vec<f64>; 4] = Default::default();
    for _ in 0..ROUNDS {
        for (i, p) in PATHS.into_iter().enumerate() {
            k[i].push(b.run_path(p, REPEAT).kernel_ns as f64);
        }
    }
    let [noop, deny, deny_world, established] = k.map(median);
    let tag = format!("{shape:?}_{n}");
    for (name, v) in [("noop", noop), ("deny_new_flow", deny), ("deny_new_flow_world", deny_world), ("established", established)] {
        result(&format!("datapath_{name}_ns_{tag}"), format!("{v:.0}"));
    }
    if matches!(shape, Shape::NetworkPolicies) {
        let (sa, sn) = b.single_shot_allow(5_000);
        result(&format!("datapath_allow_new_flow_single_shot_ns_{tag}"), format!("{sa:.1}"));
        result(&format!("datapath_noop_single_shot_ns_{tag}"), format!("{sn:.1}"));
    }
    // Criterion: ns per program run (wall-clock of the syscall / repeat).
    let mut group = c.benchmark_group(format!("datapath_{shape:?}"));
    for p in PATHS {
        group.bench_function(BenchmarkId::new(p.label(), format!("{n}_rules")), |bn| {
            bn.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(u64::from(u32::MAX)) as u32;
                    let r = b.run_path(p, chunk);
                    total += Duration::from_secs_f64(r.wall_ns * f64::from(chunk) / 1e9);
                    left -= u64::from(chunk);
                }
                total
            })
        });
    }
    group.finish();
    Figures { noop, deny, deny_world, established }
}

/// What flow records cost the datapath at 10k rules: a new allowed flow (single shot, its
/// record written to the ring, which is drained between runs outside the timing) and a denied
/// packet (its record within the per-second budget, then counted as rate-limited), with
/// records on and off, interleaved. The established path writes no record.
fn flow_record_cost() {
    let mut b = Bench::new(10_000, Shape::NetworkPolicies);
    let (mut allow, mut deny) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut noop = Vec::new();
    for _ in 0..ROUNDS {
        for (i, on) in [false, true].into_iter().enumerate() {
            b.set_flow_records(on);
            let (a, n) = b.single_shot_allow(2_000);
            allow[i].push(a);
            noop.push(n);
            deny[i].push(b.run_path(PathKind::Deny, REPEAT).kernel_ns as f64);
            b.drain_flow_records();
        }
    }
    let [allow_off, allow_on] = allow.map(median);
    let [deny_off, deny_on] = deny.map(median);
    let noop = median(noop);
    result("flow_records_allow_new_flow_ns_off", format!("{allow_off:.1}"));
    result("flow_records_allow_new_flow_ns_on", format!("{allow_on:.1}"));
    result("flow_records_allow_new_flow_ratio_on_off", format!("{:.2}", allow_on / allow_off));
    result("flow_records_single_shot_noop_ns", format!("{noop:.1}"));
    result("flow_records_deny_ns_off", format!("{deny_off:.0}"));
    result("flow_records_deny_ns_on", format!("{deny_on:.0}"));
    result("flow_records_deny_ratio_on_off", format!("{:.2}", deny_on / deny_off));
}

/// `DATAPATH_PROFILE=noop|deny|deny_world|established`: runs that path at 10k rules for 10 s
/// and nothing else, for a profiler (`perf record -a -e cpu-clock`) to see where the time goes
/// inside the program and the helpers it calls.
fn profile(which: &str) {
    let path = match which {
        "noop" => PathKind::Noop,
        "deny" => PathKind::Deny,
        "deny_world" => PathKind::DenyWorld,
        "established" => PathKind::Established,
        _ => panic!("DATAPATH_PROFILE={which}: expected one of noop, deny, deny_world, established"),
    };
    let mut b = Bench::new(10_000, Shape::NetworkPolicies);
    let t = Instant::now();
    let mut runs = 0u64;
    let mut ns = Vec::new();
    while t.elapsed() < Duration::from_secs(10) {
        ns.push(b.run_path(path, REPEAT).kernel_ns as f64);
        runs += u64::from(REPEAT);
    }
    println!("profile {}: {runs} runs, median {:.0} ns per run", path.label(), median(ns));
}

fn main() {
    if !require_root("datapath") {
        return;
    }
    remove_stale_pins();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    if let Ok(which) = std::env::var("DATAPATH_PROFILE") {
        profile(&which);
        return;
    }
    // `DATAPATH_BENCH=flow_records`: only what flow records cost.
    if std::env::var("DATAPATH_BENCH").as_deref() == Ok("flow_records") {
        flow_record_cost();
        records::agent_record_rate();
        return;
    }
    let mut np = Vec::new();
    for n in SIZES {
        np.push((n, measure(&mut c, Shape::NetworkPolicies, n)));
    }
    flow_record_cost();
    records::agent_record_rate();
    let one = measure(&mut c, Shape::Tiers, 1);
    let tiered = measure(&mut c, Shape::Tiers, 10_000);

    println!();
    println!("datapath summary (kernel-reported ns per run, median of {ROUNDS} rounds x {REPEAT} runs):");
    let row = |label: String, f: &Figures| {
        println!(
            "  {label:<28} noop {:>4.0}  deny(peer) {:>4.0}  deny(world) {:>4.0}  established {:>4.0}",
            f.noop, f.deny, f.deny_world, f.established
        )
    };
    for (n, f) in &np {
        row(format!("{n} NetworkPolicy rules"), f);
    }
    row("1 tier x 1 policy".into(), &one);
    row("10 tiers x 1000 policies".into(), &tiered);
    let get = |n: usize| np.iter().find(|(m, _)| *m == n).map(|(_, f)| *f).expect("measured");
    let (f10, f10k, f100k) = (get(10), get(10_000), get(100_000));
    result("verdict_ratio_100k_over_10", format!("{:.2}", f100k.deny / f10.deny));
    result("verdict_ratio_100k_over_10_world", format!("{:.2}", f100k.deny_world / f10.deny_world));
    result("verdict_ratio_10k_over_noop", format!("{:.2}", f10k.deny / f10k.noop));
    result("verdict_ratio_10k_over_noop_world", format!("{:.2}", f10k.deny_world / f10k.noop));
    result("established_ratio_10k_over_noop", format!("{:.2}", f10k.established / f10k.noop));
    result("tiers_ratio_10x1000_over_1", format!("{:.2}", tiered.deny / one.deny));
    result("tiers_ratio_10x1000_over_1_world", format!("{:.2}", tiered.deny_world / one.deny_world));
    println!("goals: verdict_ratio_100k_over_10 <= 1.2, verdict_ratio_10k_over_noop <= 3, tiers_ratio_10x1000_over_1 <= 1.2");
    c.final_summary();
}
