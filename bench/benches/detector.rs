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
//! - `seq_unseen_to_isolated` / `seq_window_to_isolated`: user-space syscall-sequence
//!   decisions. A Python echo server in the pod is learned under benign requests, then each
//!   iteration sends the request that runs reconnaissance inside the server process. From the
//!   offending syscall's entry (`bpf_ktime_get_ns` in the syscall probe) to the agent having
//!   written the isolation entry: ring wake-up of the sequence thread, the per-thread cover
//!   step and the map write. `unseen`: the first syscall the profile never saw (default
//!   settings); `window`: unseen-syscall findings off, the window of 64 syscalls reaching 16
//!   phrases. `seq_syscall_to_agent_read`: to the thread reading the record. One finding per
//!   workload per second (the model's cooldown), so iterations are 1 s apart.
//!
//! Probe overhead: a tight loop of `getpid` (the cheapest syscall: worst case for a per-syscall
//! probe) and of 4 KiB `read`s from /dev/zero, run by this process in its own cgroup in three
//! states: syscall probe detached; attached but this cgroup not monitored (other workloads
//! are); attached and this cgroup monitored (every syscall counted). Median of 7 alternating
//! rounds of 1M (getpid) / 300k (read) calls each. Overhead = (state - detached) / detached.
//! A fourth state for the raw tracepoint: monitored with the syscall-sequence model (every
//! syscall also written to the sequence ring and read by the agent's sequence thread):
//! `detector_{getpid,read4k}_sequence_overhead_pct`, with the records sent and dropped.
//! Variants (one fresh agent each):
//! - `raw_tp`: raw tracepoint sys_enter, the only attachment the product has (result names
//!   without a variant).
//! - `sampled`: the raw tracepoint attached 20 ms of every 200 ms (turning counting on and
//!   off through the agent), loops 10x longer so each spans many periods
//!   (`detector_sampled_*`). Only a share of the syscalls is counted
//!   (`detector_sampled_counted_share_pct`, ~5%: attach and detach take time); the agent does
//!   not sample (this measures what it would cost).
//!
//! The bench warns when other programs hold sys_enter links (`*_foreign_sys_enter_links`):
//! the "detached" baseline is then on the slow path too.
//!
//! Measured, three runs (2 cores shared with other work, so single figures move by about ±10
//! points; no foreign sys_enter link during any of them), unmonitored / monitored:
//! - raw_tp: getpid +103..105% / +122..133%; read4k +26..39% / +42..56%.
//! - tp_btf (BTF tracepoint sys_enter, measured then removed from the product): getpid
//!   +100..104% / +129..132%; read4k +34..51% / +19..36%. The same as raw_tp within noise:
//!   the cost is the tracepoint's slow syscall path, not the program.
//! - sampled (5.3% of the syscalls counted): getpid -2..+5% / -3..+13%; read4k -7..+6% /
//!   -8..+9%.
//!
//! - with the sequence model (one run): getpid +240%, read4k +92% (11.8 M records sent, 0
//!   dropped). The first version let the kernel wake the reader per record: +572% / +212%.
//!
//! Sequence-model latencies (one run, 20 iterations each, 0 findings on the 40 benign
//! requests): unseen syscall to isolated p50 0.82 ms, p99 1.16 ms; window to isolated p50
//! 0.68 ms, p99 1.03 ms: the 1 ms poll of the reader dominates (goal <= 10 ms).
//!
//! The goal (<= 5% on a syscall-heavy workload) is not met with full counts on this kernel; only
//! sampling comes near it, at the price of counting ~5% of the syscalls (rare ones are missed).
//! fentry on `x64_sys_call` (BPF trampoline, no per-task slow path), the attachment that would
//! avoid it, was tried and then removed from the product: this machine kind refuses it
//! (BPF_PROG_LOAD: EPERM for every fentry target tried, also `vfs_read` and `do_syscall_64`;
//! tracefs' available_filter_functions is EPERM too), so it never ran. The figures above stay
//! as a record. The loader attaches the probe only while a workload asks for syscall counts:
//! without that, nothing is paid.
//!
//! The cost on a real service (`detector/http.rs`; `DETECTOR_BENCH=http` runs only that part):
//! nginx in the monitored pod under wrk from the other pod, requests/s and latency per
//! detector configuration, interleaved rounds.
//!
//! File-system baseline (`detector/files.rs`; `DETECTOR_BENCH=files` runs only that part):
//! from the offending file syscall to the isolation entry (kernel and agent decisions), and
//! the per-open cost of the file probe.
//!
//! The bench binary doubles as the lab's echo server (`<bench> lab serve --tcp ...`).

#[path = "detector/files.rs"]
mod files;
#[path = "detector/http.rs"]
mod http;

use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_agent::detect::{
    Actions, DetectorEvent, Mode, NetActions, SequenceConfig, WorkloadOptions, WorkloadSpec, network::ScanConfig,
};
use bulkhead_bench::{percentile, result};
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
const SEQ_ITERATIONS: usize = 20;
const SEQ_PORT: u16 = 9090;
const NAME: &str = "bench/victim";

fn spawn_in_pod(pod: &PodNetns, argv: &[&str]) -> Child {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    bulkhead_lab::netns::spawn_in(&pod.netns, pod.cgroup.as_ref().unwrap(), cmd).expect("spawn in pod")
}

/// Polls for the child's exit; returns (signal, CLOCK_MONOTONIC ns when reaped).
fn reap(mut c: Child) -> (Option<i32>, u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = c.try_wait().expect("wait") {
            return (st.signal(), bulkhead_agent::clock::monotonic_ns());
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return (None, bulkhead_agent::clock::monotonic_ns());
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

/// One request to the pod's Python server from the other pod; whether it was echoed.
fn seq_request(b: &Bench, text: &str, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from((b.victim().ip, SEQ_PORT));
    let text = text.to_string();
    bulkhead_lab::netns::in_netns(&b.lab.pods()[1].netns, move || {
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, timeout) else { return false };
        let _ = s.set_read_timeout(Some(timeout));
        let mut buf = Vec::new();
        s.write_all(text.as_bytes()).is_ok() && s.read_to_end(&mut buf).is_ok() && buf == text.as_bytes()
    })
    .unwrap_or(false)
}

fn sequence_latencies(b: &Bench) {
    let v = b.victim();
    let spec = |mode: Mode| WorkloadSpec {
        name: NAME.into(),
        cgroup: v.cgroup.clone().unwrap(),
        interface: Some(v.host_veth.clone()),
        mode,
        actions: Actions { syscall_anomaly: NetActions { isolate: true, ..Default::default() }, ..Default::default() },
        ..Default::default()
    };
    let opts = |cfg: SequenceConfig| WorkloadOptions { profile: Some("bench/python".into()), sequences: Some(cfg), ..Default::default() };
    b.agent().detector_monitor_with(spec(Mode::Learn), opts(SequenceConfig::default())).expect("monitor");
    let script = b.tmp.join("server.py");
    std::fs::write(&script, bulkhead_lab::scenario::RECON_SERVER).expect("server script");
    let mut server = spawn_in_pod(v, &[bulkhead_lab::scenario::PYTHON, script.to_str().unwrap(), &SEQ_PORT.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seq_request(b, "ready?", Duration::from_millis(300)) {
        assert!(Instant::now() < deadline, "the Python server never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..60 {
        assert!(seq_request(b, &format!("hello {i}"), Duration::from_millis(700)), "benign request {i}");
    }
    let kinds = [("unseen", "syscall-unseen", true), ("window", "syscall-sequence", false)];
    for (name, kind, unseen) in kinds {
        let cfg = SequenceConfig { unseen_syscalls: unseen, ..SequenceConfig::default() };
        b.agent().detector_monitor_with(spec(Mode::Protect), opts(cfg)).expect("protect");
        let (mut iso, mut read, mut benign_findings) = (vec![], vec![], 0);
        let seen = |k: &str| b.agent().detector().events().iter().filter(|e| e.kind == k).count();
        for _ in 0..SEQ_ITERATIONS {
            // A benign request first: it must pass without a finding.
            let before = seen("syscall-unseen") + seen("syscall-sequence");
            assert!(seq_request(b, "hello", Duration::from_millis(700)), "benign request under protect");
            benign_findings += seen("syscall-unseen") + seen("syscall-sequence") - before;
            let n = seen(kind);
            let _ = seq_request(b, "exploit", Duration::from_millis(100));
            let ev = next_finding(b, kind, n);
            iso.push(ev.isolate_ns.expect("isolated"));
            read.push(ev.read_delay_ns);
            b.agent().detector_release(NAME).expect("release");
            // The model's one-finding-per-second cooldown.
            std::thread::sleep(Duration::from_millis(1050));
        }
        result(&format!("detector_seq_{name}_benign_findings"), benign_findings);
        stats(&format!("seq_{name}_to_isolated"), "ms", 1e6, iso);
        stats(&format!("seq_{name}_syscall_to_agent_read"), "ms", 1e6, read);
    }
    let _ = server.kill();
    let _ = server.wait();
    b.agent().detector_unmonitor(NAME).expect("unmonitor");
}

fn kill_latencies(b: &Bench) {
    b.protect(Actions { kill: true, isolate: true, ..Default::default() });
    let bin = b.tmp.join("dropper");
    std::fs::copy("/bin/true", &bin).expect("copy");
    let (mut in_kernel, mut to_reaped, mut spawn_to_reaped, mut failures) = (vec![], vec![], vec![], 0);
    for _ in 0..KILL_ITERATIONS {
        let t0 = bulkhead_agent::clock::monotonic_ns();
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

/// Replaces the agent with a fresh one: the stopped agent unloads, so the next one starts
/// with empty maps (syscall counts and counters from zero).
fn restart_agent(b: &mut Bench) {
    b.agent.take();
    b.agent = Some(b.lab.start_agent(false).expect("agent"));
}

/// sys_enter links of other programs on the machine (other agents, tests): while one exists,
/// every task is on the slow syscall path even in the "detached" state, and the figures
/// understate the overhead. None when bpftool is not installed.
fn foreign_sys_enter_links() -> Option<usize> {
    let out = Command::new("bpftool").args(["link", "list"]).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("tp 'sys_enter'")).count())
}

/// Sampling period and attached share of it for the duty-cycle variant.
const SAMPLE_PERIOD: Duration = Duration::from_millis(200);
const SAMPLE_ON: Duration = Duration::from_millis(20);

fn overhead(b: &mut Bench) {
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
    let me = |syscalls: bool| WorkloadSpec {
        name: "bench/self".into(),
        cgroup: cg.clone(),
        interface: None,
        mode: Mode::Learn,
        actions: Actions::default(),
        syscalls,
        allowed_execs: vec![],
    };
    let me_seq = WorkloadOptions { profile: Some("bench/self".into()), sequences: Some(SequenceConfig::default()), ..Default::default() };
    let (victim_cg, victim_veth) = (b.victim().cgroup.clone().unwrap(), b.victim().host_veth.clone());
    let victim = |syscalls: bool| {
        WorkloadSpec {
            name: NAME.into(),
            cgroup: victim_cg.clone(),
            interface: Some(victim_veth.clone()),
            mode: Mode::Protect,
            actions: Actions::default(),
            syscalls,
            allowed_execs: vec![],
        }
    };
    // Per variant: samples[loop][state]; states 0 detached, 1 attached + unmonitored,
    // 2 attached + monitored.
    let mut figures: Vec<(&str, Vec<Vec<Vec<f64>>>)> = vec![];
    for variant in ["raw_tp", "sampled"] {
        restart_agent(b);
        let agent = b.agent.as_ref().unwrap();
        let _ = agent.detector_unmonitor(NAME);
        let _ = agent.detector_unmonitor("bench/self");
        let foreign = foreign_sys_enter_links();
        if foreign.unwrap_or(0) > 0 {
            println!("detector probe overhead {variant}: WARNING {foreign:?} sys_enter link(s) of other programs attached: baselines are on the slow path");
        }
        result(&format!("detector_{variant}_foreign_sys_enter_links"), foreign.map_or("unknown".to_string(), |n| n.to_string()));
        let mut samples = vec![vec![vec![]; 4]; 2];
        // State 3 (monitored with the sequence model) only for `raw_tp`.
        let states = if variant == "raw_tp" { 4 } else { 3 };
        let records = |agent: &bulkhead_agent::Agent| {
            let c = agent.counters().unwrap_or_default();
            let get = |k: &str| c.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
            (get("detector_syscall_records_sent"), get("detector_syscall_records_dropped_fail_open"))
        };
        let (mut rec_sent, mut rec_dropped, mut seq_calls) = (0u64, 0u64, 0u64);
        // The duty cycle runs longer loops so that each spans many sampling periods.
        let scale = if variant == "sampled" { 10 } else { 1 };
        // Syscalls counted in the monitored state against the calls made: 100% when always
        // attached, the duty cycle when sampled (checks the sampling really attached).
        let (mut counted, mut calls) = (0u64, 0u64);
        for _ in 0..7 {
            // `state` selects the setup as well as the column of `samples`.
            #[allow(clippy::needless_range_loop)]
            for state in 0..states {
                let _ = agent.detector_unmonitor(NAME);
                let _ = agent.detector_unmonitor("bench/self");
                let stop = std::sync::atomic::AtomicBool::new(false);
                std::thread::scope(|sc| {
                    match (state, variant) {
                        (0, _) => {}
                        (_, "sampled") => {
                            // Attaches the probe SAMPLE_ON out of every SAMPLE_PERIOD by turning
                            // syscall counting on and off (the loader attaches the probe only
                            // while some workload counts).
                            let spec = move |on: bool| if state == 1 { victim(on) } else { me(on) };
                            let stop = &stop;
                            sc.spawn(move || {
                                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                    agent.detector_monitor(spec(true)).expect("monitor");
                                    std::thread::sleep(SAMPLE_ON);
                                    agent.detector_monitor(spec(false)).expect("monitor");
                                    std::thread::sleep(SAMPLE_PERIOD - SAMPLE_ON);
                                }
                            });
                        }
                        (1, _) => drop(agent.detector_monitor(victim(true)).expect("monitor victim")),
                        (2, _) => drop(agent.detector_monitor(me(true)).expect("monitor self")),
                        _ => drop(agent.detector_monitor_with(me(false), me_seq.clone()).expect("monitor self with sequences")),
                    }
                    let before = records(agent);
                    for (i, (_, n, f)) in loops.iter().enumerate() {
                        samples[i][state].push(per_call(*n * scale, f));
                        if state == 2 {
                            calls += *n * scale;
                        }
                        if state == 3 {
                            seq_calls += *n * scale;
                        }
                    }
                    if state == 3 {
                        let after = records(agent);
                        rec_sent += after.0 - before.0;
                        rec_dropped += after.1 - before.1;
                    }
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                });
                if state == 2 {
                    // The map's counts are cumulative over the rounds (unmonitor keeps them).
                    counted = agent.detector_syscalls("bench/self").map(|v| v.iter().map(|s| s.1).sum::<u64>()).unwrap_or(0);
                }
            }
        }
        println!("detector probe overhead {variant}: {counted} of {calls} loop syscalls counted while monitored ({:.1}%)", counted as f64 * 100.0 / calls as f64);
        if states == 4 {
            println!("detector probe overhead {variant} with sequences: {rec_sent} records sent, {rec_dropped} dropped (ring full) for {seq_calls} loop syscalls");
            result("detector_sequence_records_sent", rec_sent);
            result("detector_sequence_records_dropped", rec_dropped);
        }
        result(&format!("detector_{variant}_counted_share_pct"), format!("{:.1}", counted as f64 * 100.0 / calls as f64));
        if variant != "sampled" {
            let _ = agent.detector_monitor(me(true));
            per_call(1000, getpid);
            let counted = agent.detector_syscalls("bench/self").map(|v| v.iter().map(|s| s.1).sum::<u64>()).unwrap_or(0);
            assert!(counted >= 1000, "{variant}: the probe counted {counted} syscalls of 1000+ getpid calls");
            result(&format!("detector_{variant}_syscalls_counted_check"), counted);
        }
        let _ = agent.detector_unmonitor("bench/self");
        let _ = agent.detector_unmonitor(NAME);
        figures.push((variant, samples));
    }
    // The later parts (and the counters reported at the end) start from a fresh agent.
    restart_agent(b);
    std::fs::write(home.join("cgroup.procs"), std::process::id().to_string()).expect("move back");
    let _ = std::fs::remove_dir(&cg);
    for (variant, samples) in &figures {
        for (i, (name, _, _)) in loops.iter().enumerate() {
            let m: Vec<f64> = samples[i].iter().filter(|s| !s.is_empty()).cloned().map(median).collect();
            let pct = |x: f64| (x - m[0]) / m[0] * 100.0;
            println!(
                "detector probe overhead {variant} {name}: detached {:.1} ns/call, attached+unmonitored {:.1} ({:+.1}%), monitored {:.1} ({:+.1}%)",
                m[0], m[1], pct(m[1]), m[2], pct(m[2])
            );
            if m.len() == 4 {
                println!("detector probe overhead {variant} {name}: monitored with sequences {:.1} ({:+.1}%)", m[3], pct(m[3]));
                result(&format!("detector_{name}_sequence_overhead_pct"), format!("{:.1}", pct(m[3])));
            }
            // The raw tracepoint keeps the historical result names.
            let prefix = if *variant == "raw_tp" { format!("detector_{name}") } else { format!("detector_{variant}_{name}") };
            result(&format!("{prefix}_detached_ns"), format!("{:.1}", m[0]));
            result(&format!("{prefix}_unmonitored_overhead_pct"), format!("{:.1}", pct(m[1])));
            result(&format!("{prefix}_monitored_overhead_pct"), format!("{:.1}", pct(m[2])));
        }
    }
}

fn main() {
    if !bulkhead_bench::start_lab_bench("detector") {
        return;
    }
    let mut c = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(100)).measurement_time(Duration::from_secs(2)).configure_from_args();
    let topo = Topology::parse(TOPOLOGY, Path::new("bench-detector.yaml")).expect("topology");
    let lab = Lab::create(&topo, &LabOptions { serve: false, ..Default::default() }).expect("lab");
    Datastore::for_lab(&lab).flush().expect("datastore");
    let agent = lab.start_agent(false).expect("agent");
    let tmp = std::env::temp_dir().join(format!("bh-detbench-{}", lab.id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let mut b = Bench { agent: Some(agent), lab, tmp };

    // DETECTOR_BENCH=http: only the cost on a real HTTP service; =files: only the file
    // baseline's latencies and per-open cost; =exec: only the exec decision's latencies.
    match std::env::var("DETECTOR_BENCH").as_deref() {
        Ok("http") => return http::http_workload_cost(&b),
        Ok("files") => return files::file_latencies(&b),
        Ok("exec") => return kill_latencies(&b),
        _ => {}
    }
    overhead(&mut b);
    http::http_workload_cost(&b);
    kill_latencies(&b);
    user_latencies(&b);
    network_latencies(&b);
    sequence_latencies(&b);
    files::file_latencies(&b);
    let counters = b.agent().counters().expect("counters");
    for (k, v) in counters.iter().filter(|(k, _)| k.starts_with("detector_events") || k.starts_with("flow_events") || k.starts_with("detector_syscall_records")) {
        result(k, v);
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
