//! Detector: detection-to-enforcement latency and the syscall probe's overhead.
//!
//! A `bulkhead_lab::Lab` pod (its own netns and cgroup v2) with the real agent; the pod is
//! monitored in protect mode with an empty exec profile, so every exec in it is a violation.
//!
//! Latencies (p50/p99 over the iterations), with these definitions:
//! - `kernel_exec_to_enforced`: in-kernel decision (kill + isolate). From the exec tracepoint's
//!   `bpf_ktime_get_ns` to the same program's timestamp after it wrote the isolation entry and
//!   sent SIGKILL. This is the decision's own cost; the signal is then delivered before the new
//!   image runs one instruction.
//! - `kernel_exec_to_reaped`: the same decision seen from outside: from the exec tracepoint to
//!   the moment the bench (the parent, polling `waitpid` every 20 µs) has reaped the child killed
//!   by SIGKILL (CLOCK_MONOTONIC on both sides). Includes signal delivery, exit and reaping.
//! - `kernel_spawn_to_reaped`: from just before `fork`+`execve` in the bench to the reaped child:
//!   an upper bound that also includes process creation.
//! - `user_pause` / `user_terminate`: user-space decisions. From the exec tracepoint to the
//!   agent seeing `frozen 1` (pause, cgroup.freeze) or `populated 0` (terminate, cgroup.kill)
//!   in cgroup.events; includes the ring-buffer wake-up of the agent's detector thread.
//!
//! - `net_new_peer_to_isolated` / `net_port_scan_to_isolated`: user-space network decisions.
//!   From the flow's first packet in TC (the flow event's `bpf_ktime_get_ns`) to the agent
//!   having written the isolation entry (CLOCK_MONOTONIC after the map update returned): ring
//!   wake-up of the agent's flow poller, hand-over to the agent thread, the profile lookup and
//!   the map write. For the scan, the flow that completes it (10th distinct port).
//! - `net_flow_to_agent_read`: from the same first packet to the agent reading the event.
//!
//! Probe overhead: a tight loop of `getpid` (the cheapest syscall: worst case for a per-syscall
//! probe) and of 4 KiB `read`s from /dev/zero, run by this process in its own cgroup in three
//! states: syscall probe detached; attached but this cgroup not monitored (other workloads
//! are); attached and this cgroup monitored (every syscall counted). Median of 7 alternating
//! rounds of 1M (getpid) / 300k (read) calls each.
//!
//! The bench binary doubles as the lab's echo server (`<bench> lab serve --tcp ...`).

use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_agent::detect::{Actions, DetectorEvent, Mode, NetActions, WorkloadOptions, WorkloadSpec, cgroup, network::ScanConfig};
use bulkhead_bench::{percentile, require_root, result};
use bulkhead_lab::datastore::Datastore;
use bulkhead_lab::{Lab, LabOptions, PodNetns, Topology};
use criterion::Criterion;

const TOPOLOGY: &str = "kind: Topology
name: bench-detector
namespaces:
  - {name: bench, labels: {team: bench}}
pods:
  - {namespace: bench, name: victim, ip: 10.243.0.10, labels: {app: victim}}
  - {namespace: bench, name: other, ip: 10.243.0.11, labels: {app: other}}
ports:
  - {port: 8080, protocol: TCP}
";
const KILL_ITERATIONS: usize = 60;
const NET_ITERATIONS: usize = 60;
const USER_ITERATIONS: usize = 30;
const NAME: &str = "bench/victim";

fn serve_mode() -> bool {
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

fn spawn_in_pod(pod: &PodNetns, argv: &[&str]) -> Child {
    let ns = std::fs::File::open(format!("/var/run/netns/{}", pod.netns)).expect("netns");
    let procs = std::fs::OpenOptions::new().write(true).open(pod.cgroup.as_ref().unwrap().join("cgroup.procs")).expect("cgroup.procs");
    let (ns_fd, cg_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: async-signal-safe syscalls on fds opened before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 || libc::write(cg_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn in pod")
}

/// Polls for the child's exit; returns (signal, CLOCK_MONOTONIC ns when reaped).
fn reap(mut c: Child) -> (Option<i32>, u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = c.try_wait().expect("wait") {
            return (st.signal(), cgroup::monotonic_ns());
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return (None, cgroup::monotonic_ns());
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

struct Bench {
    agent: Option<bulkhead_agent::Agent>,
    lab: Lab,
    tmp: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.agent.take();
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

impl Bench {
    fn agent(&self) -> &bulkhead_agent::Agent {
        self.agent.as_ref().unwrap()
    }
    fn victim(&self) -> &PodNetns {
        &self.lab.pods()[0]
    }
    fn protect(&self, actions: Actions) {
        let v = self.victim();
        self.agent()
            .detector_monitor(WorkloadSpec {
                name: NAME.into(),
                cgroup: v.cgroup.clone().unwrap(),
                interface: Some(v.host_veth.clone()),
                mode: Mode::Protect,
                actions,
                syscalls: true,
                allowed_execs: vec![],
            })
            .expect("monitor");
    }
    fn event_of(&self, pid: u32) -> DetectorEvent {
        self.agent()
            .detector()
            .wait_event(Duration::from_secs(3), |e| e.is_violation() && e.pid == pid)
            .expect("violation event")
    }
}

fn stats(name: &str, unit: &str, div: f64, mut v: Vec<u64>) {
    v.sort_unstable();
    let (Some(p50), Some(p99)) = (percentile(&v, 50.0), percentile(&v, 99.0)) else { return };
    println!("detector {name}: n={} p50={:.3}{unit} p99={:.3}{unit} max={:.3}{unit}", v.len(), p50 as f64 / div, p99 as f64 / div, *v.last().unwrap() as f64 / div);
    result(&format!("detector_{name}_p50_{unit}"), format!("{:.3}", p50 as f64 / div));
    result(&format!("detector_{name}_p99_{unit}"), format!("{:.3}", p99 as f64 / div));
}

/// Waits for the next network finding of `kind` after `seen` findings of that kind.
fn next_finding(b: &Bench, kind: &'static str, seen: usize) -> DetectorEvent {
    let det = b.agent().detector();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let list: Vec<DetectorEvent> = det.events().into_iter().filter(|e| e.kind == kind).collect();
        if list.len() > seen {
            return list[seen].clone();
        }
        assert!(Instant::now() < deadline, "no {kind} finding #{seen}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn network_latencies(b: &Bench) {
    let v = b.victim();
    let other = b.lab.pods()[1].ip;
    let spec = |actions: Actions| WorkloadSpec {
        name: NAME.into(),
        cgroup: v.cgroup.clone().unwrap(),
        interface: Some(v.host_veth.clone()),
        mode: Mode::Protect,
        actions,
        ..Default::default()
    };
    let isolate = NetActions { isolate: true, ..Default::default() };
    // An empty profile of its own: every outbound flow is to a peer never seen.
    let opts = |scan: ScanConfig| WorkloadOptions { profile: Some("bench/net-empty".into()), scan, ..Default::default() };
    b.agent()
        .detector_monitor_with(spec(Actions { new_peer: isolate, ..Default::default() }), opts(ScanConfig::default()))
        .expect("monitor");
    let (mut iso, mut read) = (Vec::new(), Vec::new());
    for i in 0..NET_ITERATIONS {
        // No echo server runs (serve: false): the SYN gets a RST, the flow event is the SYN's.
        let _ = bulkhead_lab::probe::probe(v, other, 8080, bulkhead_lab::Protocol::Tcp, Duration::from_millis(100));
        let ev = next_finding(b, "new-peer", i);
        iso.push(ev.isolate_ns.expect("isolated"));
        read.push(ev.read_delay_ns);
        b.agent().detector_release(NAME).expect("release");
    }
    stats("net_new_peer_to_isolated", "ms", 1e6, iso);
    stats("net_flow_to_agent_read", "ms", 1e6, read);

    let scan = ScanConfig { distinct_ports: 10, distinct_peers: 1000, window_ms: 60_000 };
    b.agent()
        .detector_monitor_with(spec(Actions { port_scan: isolate, ..Default::default() }), opts(scan))
        .expect("monitor");
    let mut iso = Vec::new();
    for i in 0..NET_ITERATIONS / 3 {
        for port in 0..10u16 {
            let _ = bulkhead_lab::probe::probe(v, other, 20_000 + port, bulkhead_lab::Protocol::Tcp, Duration::from_millis(100));
        }
        let ev = next_finding(b, "port-scan", i);
        iso.push(ev.isolate_ns.expect("isolated"));
        b.agent().detector_release(NAME).expect("release");
    }
    stats("net_port_scan_to_isolated", "ms", 1e6, iso);
    b.agent().detector_unmonitor(NAME).expect("unmonitor");
}

fn kill_latencies(b: &Bench) {
    b.protect(Actions { kill: true, isolate: true, ..Default::default() });
    let bin = b.tmp.join("dropper");
    std::fs::copy("/bin/true", &bin).expect("copy");
    let (mut in_kernel, mut to_reaped, mut spawn_to_reaped, mut failures) = (vec![], vec![], vec![], 0);
    for _ in 0..KILL_ITERATIONS {
        let t0 = cgroup::monotonic_ns();
        let c = spawn_in_pod(b.victim(), &[bin.to_str().unwrap()]);
        let pid = c.id();
        let (sig, reaped) = reap(c);
        let ev = b.event_of(pid);
        if sig != Some(libc::SIGKILL) || !ev.kernel_actions.contains(&"killed") || !ev.kernel_actions.contains(&"isolated") {
            failures += 1;
        }
        in_kernel.push(ev.kernel_enforce_ns.unwrap_or(u64::MAX));
        to_reaped.push(reaped.saturating_sub(ev.ts_ns));
        spawn_to_reaped.push(reaped - t0);
        b.agent().detector_release(NAME).expect("release");
    }
    stats("kernel_exec_to_enforced", "us", 1e3, in_kernel);
    stats("kernel_exec_to_reaped", "ms", 1e6, to_reaped);
    stats("kernel_spawn_to_reaped", "ms", 1e6, spawn_to_reaped);
    result("detector_kill_failures", failures);
}

fn user_latencies(b: &Bench) {
    b.protect(Actions { pause: true, ..Default::default() });
    let mut pause = vec![];
    for _ in 0..USER_ITERATIONS {
        let mut c = spawn_in_pod(b.victim(), &["/bin/sh", "-c", "while :; do :; done"]);
        let ev = b.event_of(c.id());
        assert!(ev.user_actions.iter().any(|a| a == "paused"), "{ev:?}");
        pause.push(ev.user_enforce_ns.unwrap());
        b.agent().detector_release(NAME).expect("release");
        let _ = c.kill();
        let _ = c.wait();
    }
    stats("user_pause", "ms", 1e6, pause);
    b.protect(Actions { terminate: true, ..Default::default() });
    let mut term = vec![];
    for _ in 0..USER_ITERATIONS {
        let c = spawn_in_pod(b.victim(), &["/bin/sh", "-c", "while :; do :; done"]);
        let pid = c.id();
        let (sig, _) = reap(c);
        assert_eq!(sig, Some(libc::SIGKILL));
        let ev = b.event_of(pid);
        assert!(ev.user_actions.iter().any(|a| a == "terminated"), "{ev:?}");
        term.push(ev.user_enforce_ns.unwrap());
    }
    stats("user_terminate", "ms", 1e6, term);
}

/// ns per call of `f` over `n` calls.
fn per_call(n: u64, f: impl Fn()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn getpid() {
    // SAFETY: raw syscall without arguments (glibc's wrapper would be fine too; raw is sure).
    unsafe { libc::syscall(libc::SYS_getpid) };
}

fn own_cgroup() -> PathBuf {
    let s = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let rel = s.lines().find_map(|l| l.strip_prefix("0::")).expect("cgroup v2 line");
    Path::new(bulkhead_lab::teardown::CGROUP_ROOT).join(rel.trim_start_matches('/'))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn overhead(b: &Bench) {
    let home = own_cgroup();
    let cg = b.victim().cgroup.as_ref().unwrap().parent().unwrap().join("bench-self");
    std::fs::create_dir_all(&cg).expect("bench cgroup");
    std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string()).expect("move into bench cgroup");
    let zero = std::fs::File::open("/dev/zero").expect("/dev/zero");
    let fd = zero.as_raw_fd();
    let read4k = move || {
        let mut buf = [0u8; 4096];
        // SAFETY: valid fd and buffer.
        unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    };
    let loops: [(&str, u64, &dyn Fn()); 2] = [("getpid", 1_000_000, &getpid), ("read4k", 300_000, &read4k)];
    let mut samples = vec![vec![vec![]; 3]; 2];
    let me = WorkloadSpec {
        name: "bench/self".into(),
        cgroup: cg.clone(),
        interface: None,
        mode: Mode::Learn,
        actions: Actions::default(),
        syscalls: true,
        allowed_execs: vec![],
    };
    for _ in 0..7 {
        for state in 0..3 {
            match state {
                0 => {
                    let _ = b.agent().detector_unmonitor(NAME);
                    let _ = b.agent().detector_unmonitor("bench/self");
                }
                1 => b.protect(Actions::default()),
                _ => {
                    b.agent().detector_monitor(me.clone()).expect("monitor self");
                }
            }
            for (i, (_, n, f)) in loops.iter().enumerate() {
                samples[i][state].push(per_call(*n, f));
            }
        }
    }
    let counted = b.agent().detector_syscalls("bench/self").map(|v| v.iter().map(|s| s.1).sum::<u64>()).unwrap_or(0);
    let _ = b.agent().detector_unmonitor("bench/self");
    std::fs::write(home.join("cgroup.procs"), std::process::id().to_string()).expect("move back");
    let _ = std::fs::remove_dir(&cg);
    for (i, (name, _, _)) in loops.iter().enumerate() {
        let m: Vec<f64> = samples[i].iter().cloned().map(median).collect();
        let pct = |x: f64| (x - m[0]) / m[0] * 100.0;
        println!(
            "detector probe overhead {name}: detached {:.1} ns/call, attached+unmonitored {:.1} ({:+.1}%), monitored {:.1} ({:+.1}%)",
            m[0], m[1], pct(m[1]), m[2], pct(m[2])
        );
        result(&format!("detector_{name}_detached_ns"), format!("{:.1}", m[0]));
        result(&format!("detector_{name}_unmonitored_overhead_pct"), format!("{:.1}", pct(m[1])));
        result(&format!("detector_{name}_monitored_overhead_pct"), format!("{:.1}", pct(m[2])));
    }
    result("detector_syscalls_counted_in_monitored_state", counted);
}

fn main() {
    if serve_mode() {
        return;
    }
    if !require_root("detector") {
        return;
    }
    bulkhead_lab::teardown::install_signal_teardown();
    let mut c = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(100)).measurement_time(Duration::from_secs(2)).configure_from_args();
    let topo = Topology::parse(TOPOLOGY, Path::new("bench-detector.yaml")).expect("topology");
    let lab = Lab::create(&topo, &LabOptions { serve: false, ..Default::default() }).expect("lab");
    Datastore::for_lab(&lab).flush().expect("datastore");
    let agent = lab.start_agent(false).expect("agent");
    let tmp = std::env::temp_dir().join(format!("bh-detbench-{}", lab.id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let b = Bench { agent: Some(agent), lab, tmp };

    overhead(&b);
    kill_latencies(&b);
    user_latencies(&b);
    network_latencies(&b);
    let counters = b.agent().counters().expect("counters");
    for (k, v) in counters.iter().filter(|(k, _)| k.starts_with("detector_events") || k.starts_with("flow_events")) {
        result(&format!("{k}"), v);
    }

    // Criterion view: exec of a binary outside the profile until the killed child is reaped.
    b.protect(Actions { kill: true, isolate: true, ..Default::default() });
    let bin = b.tmp.join("dropper");
    let mut group = c.benchmark_group("detector");
    group.bench_function("exec_outside_profile_to_killed_and_reaped", |bn| {
        bn.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let (sig, _) = reap(spawn_in_pod(b.victim(), &[bin.to_str().unwrap()]));
                total += t.elapsed();
                assert_eq!(sig, Some(libc::SIGKILL));
                b.agent().detector_release(NAME).expect("release");
            }
            total
        })
    });
    group.finish();
    c.final_summary();
}
