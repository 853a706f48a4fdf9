//! Datapath verdict cost through BPF_PROG_TEST_RUN, against the number of policy rules.
//!
//! Loads the real eBPF object (`bulkhead_agent::loader::Dataplane`), fills the maps with N
//! policy entries (10, 1k, 10k, 100k), and runs `bh_to_pod` (the pod's ingress) on a TCP SYN
//! from a peer to the local endpoint, next to the no-op TC program `bh_noop` in the same
//! process. Two paths:
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

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use bulkhead_agent::loader::{Dataplane, programs};
use bulkhead_bench::packet::{TCP_ACK, TCP_SYN, tcp_frame};
use bulkhead_bench::{require_root, result};
use bulkhead_common::{ConfigV1, CtKeyV1, EndpointV3, proto};
use criterion::{BenchmarkId, Criterion};

const PIN_ROOT: &str = "/sys/fs/bpf/bulkhead";
const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;
const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];
/// Loopback: the device BPF_PROG_TEST_RUN gives the skb.
const IFINDEX: u32 = 1;
/// TC_ACT_SHOT and TC_ACT_UNSPEC as test_run reports them.
const RET_DROP: u32 = 2;
const RET_PASS: u32 = u32::MAX;

const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(10, 16, 0, 1);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 17, 0, 0);
/// An address no pod and no policy prefix covers (identity WORLD).
const WORLD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const DENIED_PORT: u16 = 5432;
const ALLOWED_PORT: u16 = 8080;

use bulkhead_bench::DataplaneGuard as Guard;

/// Removes pin folders of earlier bench processes that died without cleaning up.
fn remove_stale_pins() {
    let Ok(dir) = std::fs::read_dir(PIN_ROOT) else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix("bench-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(files) = std::fs::read_dir(e.path()) {
            for f in files.flatten() {
                let _ = std::fs::remove_file(f.path());
            }
        }
        let _ = std::fs::remove_dir(e.path());
        eprintln!("removed stale pins {}", e.path().display());
    }
}

fn pin_dir(tag: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(format!("bench-{}-{tag}", std::process::id()))
}

/// A policy set of `n` rules. `Shape::NetworkPolicies`: `n` Kubernetes ingress rules (ten per
/// NetworkPolicy) selecting the target pod, each allowing one peer pod on one port. `Shape::Tiers`:
/// `n` Calico GlobalNetworkPolicies spread over ten tiers (default Pass, the last Deny), one
/// rule each. In both, peer 0 may reach `ALLOWED_PORT` and never `DENIED_PORT`.
#[derive(Clone, Copy, Debug)]
enum Shape {
    NetworkPolicies,
    Tiers,
}

fn model(n: usize, shape: Shape) -> policy_compiler::Model {
    use std::fmt::Write as _;
    let peers = (n / 10).clamp(1, 2000);
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: target, namespace: x, labels: {app: target}}\nstatus: {podIP: 10.16.0.1}\n");
    for i in 0..peers {
        let ip = Ipv4Addr::from(u32::from(PEER_IP) + i as u32);
        let _ = write!(y, "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: peer-{i}, namespace: x, labels: {{app: peer-{i}}}}}\nstatus: {{podIP: {ip}}}\n");
    }
    let port = |r: usize| -> u16 {
        if r == 0 { ALLOWED_PORT } else { 1000 + ((r * 13) % 20000) as u16 + if (1000 + (r * 13) % 20000) as u16 >= DENIED_PORT { 1 } else { 0 } }
    };
    match shape {
        Shape::NetworkPolicies => {
            for k in 0..n.div_ceil(10) {
                let _ = write!(y, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: target}}}}\n  ingress:\n");
                for j in 0..10.min(n - k * 10) {
                    let r = k * 10 + j;
                    let _ = write!(y, "  - from: [{{podSelector: {{matchLabels: {{app: peer-{}}}}}}}]\n    ports: [{{port: {}}}]\n", r % peers, port(r));
                }
            }
        }
        Shape::Tiers => {
            let tiers = if n >= 10 { 10 } else { 1 };
            for t in 0..tiers {
                let default = if t == tiers - 1 { "Deny" } else { "Pass" };
                let _ = write!(y, "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: t{t}}}\nspec: {{order: {}, defaultAction: {default}}}\n", t + 1);
            }
            for r in 0..n {
                let t = r % tiers;
                let _ = write!(
                    y,
                    "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: t{t}.g{r}}}\nspec:\n  tier: t{t}\n  order: {r}\n  selector: app == 'target'\n  types: [Ingress]\n  ingress:\n  - {{action: Allow, protocol: TCP, source: {{selector: app == 'peer-{}'}}, destination: {{ports: [{}]}}}}\n",
                    r % peers,
                    port(r)
                );
            }
        }
    }
    let docs = policy_compiler::k8s::parse_documents("bench.yaml", &y).expect("synthetic model parses");
    policy_compiler::k8s::build_model(docs).expect("synthetic model builds")
}

/// Loads a fresh dataplane and fills it, through the real compiler and the agent's writer,
/// with `n` rules of `shape`.
fn setup(n: usize, shape: Shape) -> Guard {
    let mut g = Guard(Some(Dataplane::load(&pin_dir(&format!("{shape:?}-{n}"))).expect("loading the eBPF object")));
    let started = Instant::now();
    let m = model(n, shape);
    let compiled = policy_compiler::Compiler::default().compile(&m).expect("compile");
    assert!(compiled.overflow.is_empty(), "synthetic model overflowed: {:?}", compiled.overflow);
    let compile_s = started.elapsed().as_secs_f64();
    let ks = bulkhead_agent::apply::KernelState::of(&compiled);
    // The config below enforces revision 1, i.e. generation 1.
    bulkhead_agent::apply::write_generation(g.dp(), 1, None, &ks, &mut None).expect("writing the maps");
    let target = &compiled.endpoints[&policy_compiler::model::PodRef::new("x", "target")];
    let ep = EndpointV3 { identity: [target.identity; 2], flags: [target.flags; 2], ipv4_be: LOCAL_IP.octets(), present: 1 };
    let maps = &mut g.dp().maps;
    maps.endpoints.insert(IFINDEX, ep).expect("endpoint insert");
    maps.config.set(0, ConfigV1::with_default_timeouts(1), 0).expect("config set");
    eprintln!(
        "datapath {shape:?} {n} rules: compiled in {compile_s:.2}s to {} peer slots, {} table slices, {} port and {} range exceptions, {} ipcache entries",
        ks.layout.peers.len(),
        ks.layout.slices.len(),
        ks.layout.ports.len(),
        ks.layout.ranges.len(),
        ks.iphost.len() + ks.ipcache.len()
    );
    g
}

struct Run {
    retval: u32,
    kernel_ns: u64,
    wall_ns: f64,
}

fn run(prog: &SchedClassifier, frame: &[u8], repeat: u32) -> Run {
    let opts = TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() };
    let t = Instant::now();
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    let wall = t.elapsed();
    Run { retval: r.return_value, kernel_ns: r.duration.as_nanos() as u64, wall_ns: wall.as_nanos() as f64 / f64::from(repeat) }
}

fn counter(dp: &Dataplane, name: &str) -> u64 {
    dp.counters().expect("counters").into_iter().find(|(n, _)| n == name).map(|(_, v)| v).unwrap_or(0)
}

/// Counters that moved between two snapshots.
fn moved(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    before.iter().zip(after).filter(|((_, b), (_, a))| a != b).map(|((n, b), (_, a))| (n.clone(), a - b)).collect()
}

#[derive(Clone, Copy, Debug)]
enum Path_ {
    Noop,
    Deny,
    DenyWorld,
    Established,
}

impl Path_ {
    fn label(self) -> &'static str {
        match self {
            Path_::Noop => "noop",
            Path_::Deny => "deny_new_flow",
            Path_::DenyWorld => "deny_new_flow_world",
            Path_::Established => "established",
        }
    }
}

struct Frames {
    deny: Vec<u8>,
    deny_world: Vec<u8>,
    /// The SYN that opens the allowed flow (always judged by policy).
    allow: Vec<u8>,
    /// A later packet (ACK) of that flow: the conntrack fast path.
    established: Vec<u8>,
}

fn run_path(dp: &mut Dataplane, frames: &Frames, path: Path_, repeat: u32) -> Run {
    let (prog, frame, want) = match path {
        Path_::Noop => (programs::NOOP, &frames.deny, RET_PASS),
        Path_::Deny => (programs::TO_POD, &frames.deny, RET_DROP),
        Path_::DenyWorld => (programs::TO_POD, &frames.deny_world, RET_DROP),
        Path_::Established => (programs::TO_POD, &frames.established, RET_PASS),
    };
    let before = dp.counters().expect("counters");
    let r = run(dp.classifier(prog).expect("program"), frame, repeat);
    assert_eq!(r.retval, want, "{} returned {}", path.label(), r.retval as i32);
    // Counters, not just the return value: a missing endpoint or config also drops.
    let d = moved(&before, &dp.counters().expect("counters"));
    let get = |name: &str| d.iter().find(|(n, _)| n == name).map(|x| x.1).unwrap_or(0);
    let ok = match path {
        Path_::Noop => d.is_empty(),
        Path_::Deny | Path_::DenyWorld => d.len() == 1 && get("deny_policy") == u64::from(repeat),
        Path_::Established => {
            get("allow_policy") <= 1
                && get("allow_policy") + get("allow_conntrack") == u64::from(repeat)
                && d.iter().all(|(n, _)| n == "allow_policy" || n == "allow_conntrack")
        }
    };
    assert!(ok, "{} x{repeat}: unexpected counters {d:?}", path.label());
    r
}

/// Single-shot new-flow allow: conntrack cleared before each run, repeat = 1, so each sample
/// is one run plus the kernel timer's own overhead; the no-op's single-shot figure is that
/// overhead's estimate. Returns (mean allow ns, mean noop ns).
fn single_shot_allow(dp: &mut Dataplane, frames: &Frames, samples: usize) -> (f64, f64) {
    let ct_key = CtKeyV1 {
        ifindex: IFINDEX,
        saddr_be: PEER_IP.octets(),
        daddr_be: LOCAL_IP.octets(),
        sport_be: 40000u16.to_be_bytes(),
        dport_be: ALLOWED_PORT.to_be_bytes(),
        protocol: proto::TCP,
        _pad: [0; 3],
    };
    let before = counter(dp, "allow_policy");
    let (mut allow, mut noop) = (0u64, 0u64);
    for _ in 0..samples {
        let _ = dp.maps.conntrack.remove(&ct_key);
        let r = run(dp.classifier(programs::TO_POD).expect("program"), &frames.allow, 1);
        assert_eq!(r.retval, RET_PASS);
        allow += r.kernel_ns;
        noop += run(dp.classifier(programs::NOOP).expect("program"), &frames.allow, 1).kernel_ns;
    }
    let hits = counter(dp, "allow_policy") - before;
    assert_eq!(hits, samples as u64, "single-shot allow: {hits} policy allows of {samples} runs");
    (allow as f64 / samples as f64, noop as f64 / samples as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median kernel-reported ns per run of each path.
#[derive(Default, Clone, Copy)]
struct Figures {
    noop: f64,
    deny: f64,
    deny_world: f64,
    established: f64,
}

const PATHS: [Path_; 4] = [Path_::Noop, Path_::Deny, Path_::DenyWorld, Path_::Established];

fn measure(c: &mut Criterion, frames: &Frames, shape: Shape, n: usize) -> Figures {
    let mut g = setup(n, shape);
    let dp = g.dp();
    // Establish the allowed flow once so `established` is the conntrack fast path.
    run_path(dp, frames, Path_::Established, 1);
    // Quotable figures: interleaved rounds, medians of the kernel's own average.
    let mut k: [Vec<f64>; 4] = Default::default();
    for _ in 0..ROUNDS {
        for (i, p) in PATHS.into_iter().enumerate() {
            k[i].push(run_path(dp, frames, p, REPEAT).kernel_ns as f64);
        }
    }
    let [noop, deny, deny_world, established] = k.map(median);
    let tag = format!("{shape:?}_{n}");
    for (name, v) in [("noop", noop), ("deny_new_flow", deny), ("deny_new_flow_world", deny_world), ("established", established)] {
        result(&format!("datapath_{name}_ns_{tag}"), format!("{v:.0}"));
    }
    if matches!(shape, Shape::NetworkPolicies) {
        let (sa, sn) = single_shot_allow(dp, frames, 5_000);
        result(&format!("datapath_allow_new_flow_single_shot_ns_{tag}"), format!("{sa:.1}"));
        result(&format!("datapath_noop_single_shot_ns_{tag}"), format!("{sn:.1}"));
        run_path(dp, frames, Path_::Established, 1);
    }
    // Criterion: ns per program run (wall-clock of the syscall / repeat).
    let mut group = c.benchmark_group(format!("datapath_{shape:?}"));
    for p in PATHS {
        group.bench_function(BenchmarkId::new(p.label(), format!("{n}_rules")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(u64::from(u32::MAX)) as u32;
                    let r = run_path(dp, frames, p, chunk);
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

/// `DATAPATH_PROFILE=noop|deny|deny_world|established`: runs that path at 10k rules for 10 s
/// and nothing else, for a profiler (`perf record -a -e cpu-clock`) to see where the time goes
/// inside the program and the helpers it calls.
fn profile(frames: &Frames, which: &str) {
    let path = match which {
        "noop" => Path_::Noop,
        "deny" => Path_::Deny,
        "deny_world" => Path_::DenyWorld,
        "established" => Path_::Established,
        _ => panic!("DATAPATH_PROFILE={which}: expected one of noop, deny, deny_world, established"),
    };
    let mut g = setup(10_000, Shape::NetworkPolicies);
    let dp = g.dp();
    run_path(dp, frames, Path_::Established, 1);
    let t = Instant::now();
    let mut runs = 0u64;
    let mut ns = Vec::new();
    while t.elapsed() < Duration::from_secs(10) {
        ns.push(run_path(dp, frames, path, REPEAT).kernel_ns as f64);
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
    let frames = Frames {
        deny: tcp_frame(PEER_IP, LOCAL_IP, 40000, DENIED_PORT, TCP_SYN),
        deny_world: tcp_frame(WORLD_IP, LOCAL_IP, 40000, DENIED_PORT, TCP_SYN),
        allow: tcp_frame(PEER_IP, LOCAL_IP, 40000, ALLOWED_PORT, TCP_SYN),
        established: tcp_frame(PEER_IP, LOCAL_IP, 40000, ALLOWED_PORT, TCP_ACK),
    };
    if let Ok(which) = std::env::var("DATAPATH_PROFILE") {
        profile(&frames, &which);
        return;
    }
    let mut np = Vec::new();
    for n in SIZES {
        np.push((n, measure(&mut c, &frames, Shape::NetworkPolicies, n)));
    }
    let one = measure(&mut c, &frames, Shape::Tiers, 1);
    let tiered = measure(&mut c, &frames, Shape::Tiers, 10_000);

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
