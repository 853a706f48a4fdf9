//! The detector's cost on a real service: nginx in the monitored pod, wrk in the other pod.
//!
//! Included by the detector bench (`mod detector_http`). One nginx (one worker, a 1 KiB static
//! page, access log off) runs in the victim pod for the whole part; wrk (2 threads) loads it
//! from the other pod in two shapes: `keepalive` (32 persistent connections: requests/s of a
//! busy service) and `close` (16 connections, `Connection: close`: a new flow per request,
//! which is what the network findings pay for). Configurations, each measured once per round,
//! rounds interleaved so drift hits all alike:
//! - `unmonitored`: the pod is not monitored (the probes still run for nobody).
//! - `exec_fork_network`: protect mode, exec/fork probes and network findings (new peer, new
//!   port, new inbound client, port scan; all set to isolate), no syscall counts: the common
//!   configuration, whose goal is within 5 % of unmonitored.
//! - `file_baseline`: exec_fork_network plus the file-system baseline (the file probe on the
//!   file syscalls; nginx opens the page on every request).
//! - `syscall_counts`: the same plus per-syscall counts (the sys_enter probe).
//! - `sequence_model`: the same plus the syscall-sequence model (every syscall streamed to the
//!   agent and judged; monitor mode for its findings, so a false positive does not stop the
//!   run, and the findings are counted).
//! The profile is learned first under the same load (learn mode). A finding during a
//! measured round would isolate the pod and wreck its figures, so every round also checks
//! that no network finding fired. Medians of the rounds; ratio to unmonitored.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bulkhead_agent::detect::{Actions, Mode, NetActions, SequenceConfig, WorkloadOptions, WorkloadSpec, files::FileConfig};
use bulkhead_bench::result;

use super::{Bench, NAME, spawn_in_pod};

const PORT: u16 = 8088;
const ROUNDS: usize = 7;
const SECONDS: u32 = 4;

/// One wrk run's figures.
#[derive(Clone, Copy, Debug)]
struct Load {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn nginx_conf(dir: &Path, ip: std::net::Ipv4Addr) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
         \x20 server {{ listen {ip}:{PORT}; root {d}/www; location / {{ }} }}\n}}\n"
    )
}

/// wrk's latency figure ("812.00us", "1.20ms", "2.01s") in microseconds.
fn micros(s: &str) -> Option<f64> {
    let (num, mul) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

fn parse_wrk(out: &str) -> Option<Load> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    for line in out.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse().ok(),
            (Some("50%"), Some(v)) => p50 = micros(v),
            (Some("99%"), Some(v)) => p99 = micros(v),
            _ => {}
        }
    }
    Some(Load { rps: rps?, p50_us: p50?, p99_us: p99? })
}

/// Runs wrk from the client pod; `close` asks for a new connection per request.
fn wrk(b: &Bench, close: bool, seconds: u32) -> Load {
    let url = format!("http://{}:{PORT}/index.html", b.victim().ip);
    let client = &b.lab.pods()[1];
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", if close { "-c16" } else { "-c32" }, &format!("-d{seconds}s"), "--latency"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(&url).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = bulkhead_lab::netns::spawn_in(&client.netns, client.cgroup.as_ref().expect("client cgroup"), cmd).expect("spawn wrk");
    let out = child.wait_with_output().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {}\n{}", text, String::from_utf8_lossy(&out.stderr));
    let load = parse_wrk(&text).unwrap_or_else(|| panic!("wrk output not understood:\n{text}"));
    assert!(!text.contains("Non-2xx"), "nginx answered errors:\n{text}");
    load
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Unmonitored,
    ExecForkNetwork,
    FileBaseline,
    SyscallCounts,
    SequenceModel,
}

impl Config {
    const ALL: [Config; 5] = [Config::Unmonitored, Config::ExecForkNetwork, Config::FileBaseline, Config::SyscallCounts, Config::SequenceModel];

    fn label(self) -> &'static str {
        match self {
            Config::Unmonitored => "unmonitored",
            Config::ExecForkNetwork => "exec_fork_network",
            Config::FileBaseline => "file_baseline",
            Config::SyscallCounts => "syscall_counts",
            Config::SequenceModel => "sequence_model",
        }
    }
}

fn spec(b: &Bench, mode: Mode, syscalls: bool) -> WorkloadSpec {
    let v = b.victim();
    let net = NetActions { isolate: true, ..Default::default() };
    WorkloadSpec {
        name: NAME.into(),
        cgroup: v.cgroup.clone().expect("victim cgroup"),
        interface: Some(v.host_veth.clone()),
        mode,
        actions: Actions { kill: true, isolate: true, new_peer: net, new_port: net, port_scan: net, new_inbound: net, ..Default::default() },
        syscalls,
        allowed_execs: vec![],
    }
}

fn opts(sequences: bool, files: bool) -> WorkloadOptions {
    WorkloadOptions {
        profile: Some("bench/nginx".into()),
        sequences: sequences.then(SequenceConfig::default),
        files: files.then(FileConfig::default),
        ..Default::default()
    }
}

fn apply(b: &Bench, c: Config) {
    let agent = b.agent();
    match c {
        Config::Unmonitored => {
            let _ = agent.detector_unmonitor(NAME);
        }
        Config::ExecForkNetwork => {
            agent.detector_monitor_with(spec(b, Mode::Protect, false), opts(false, false)).expect("protect");
        }
        Config::FileBaseline => {
            agent.detector_monitor_with(spec(b, Mode::Protect, false), opts(false, true)).expect("protect + files");
        }
        Config::SyscallCounts => {
            agent.detector_monitor_with(spec(b, Mode::Protect, true), opts(false, false)).expect("protect + syscalls");
        }
        Config::SequenceModel => {
            agent.detector_monitor_with(spec(b, Mode::Monitor, true), opts(true, false)).expect("monitor + sequences");
        }
    }
}

/// Findings (anything but a plain exec record) of the workload since `since_ns`
/// (CLOCK_MONOTONIC, the clock of event timestamps).
fn findings(b: &Bench, since_ns: u64) -> Vec<String> {
    b.agent()
        .detector()
        .events()
        .iter()
        .filter(|e| e.workload.as_deref() == Some(NAME) && e.kind != "exec" && e.ts_ns >= since_ns)
        .map(|e| format!("{} peer={:?} dst={:?} detail={:?} path={}", e.kind, e.peer, e.dst, e.detail, e.path))
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The part of the detector bench on a real HTTP service.
pub fn http_workload_cost(b: &Bench) {
    if Command::new("wrk").arg("--version").output().is_err() || Command::new("nginx").arg("-v").output().is_err() {
        panic!("nginx and wrk are needed for the HTTP part (scripts/setup.sh installs nginx-light and wrk)");
    }
    let dir = b.tmp.join("nginx");
    std::fs::create_dir_all(dir.join("www")).expect("nginx dir");
    std::fs::create_dir_all(dir.join("tmp")).expect("nginx tmp");
    std::fs::write(dir.join("www/index.html"), "x".repeat(1024)).expect("page");
    // nginx's workers run as nobody: they must read the page.
    for p in [b.tmp.as_path(), dir.as_path(), &dir.join("www")] {
        let _ = Command::new("chmod").arg("755").arg(p).status();
    }
    // A new connection per request at 10k+ requests/s leaves tens of thousands of sockets in
    // TIME_WAIT within a run: with the default port range the client runs out of ports after
    // a few seconds and the figures measure that, not the detector. Per namespace, as on a
    // load generator and a busy server.
    for pod in [b.victim(), &b.lab.pods()[1]] {
        for (key, value) in [("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "1024 65535")] {
            let st = Command::new("ip").args(["netns", "exec", &pod.netns, "sysctl", "-q", "-w", &format!("{key}={value}")]).status().expect("sysctl");
            assert!(st.success(), "sysctl {key}={value} in {}: {st}", pod.netns);
        }
    }
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir, b.victim().ip)).expect("nginx.conf");
    let mut server = spawn_in_pod(b.victim(), &["nginx", "-p", dir.to_str().unwrap(), "-c", conf.to_str().unwrap(), "-e", "stderr"]);
    let guard = scopeguard(move || {
        let _ = server.kill();
        let _ = server.wait();
    });
    // Ready, and learned: the profile takes the client, the port and the syscalls seen.
    let addr = std::net::SocketAddr::from((b.victim().ip, PORT));
    let mut ready = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let ok = bulkhead_lab::netns::in_netns(&b.lab.pods()[1].netns, || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok());
        if matches!(ok, Ok(true)) {
            ready = true;
            break;
        }
    }
    assert!(ready, "nginx never listened in the pod (see {}/error.log)", dir.display());
    b.agent().detector_monitor_with(spec(b, Mode::Learn, true), opts(true, true)).expect("learn");
    for close in [false, true] {
        let _ = wrk(b, close, 2);
    }
    let mut figures: Vec<(Config, bool, Vec<Load>)> = Config::ALL.iter().flat_map(|&c| [(c, false, vec![]), (c, true, vec![])]).collect();
    let mut seq_findings = 0;
    for round in 0..ROUNDS {
        for i in 0..figures.len() {
            let (c, close, _) = figures[i];
            apply(b, c);
            let since = bulkhead_agent::clock::monotonic_ns();
            let load = wrk(b, close, SECONDS);
            // Findings reach the agent within milliseconds; give the last flows time.
            std::thread::sleep(Duration::from_millis(50));
            let new = findings(b, since);
            if c == Config::SequenceModel {
                seq_findings += new.len();
            } else {
                assert!(new.is_empty(), "round {round}, {} ({}): findings on benign load: {new:#?}", c.label(), if close { "close" } else { "keepalive" });
            }
            figures[i].2.push(load);
        }
    }
    let _ = b.agent().detector_unmonitor(NAME);
    drop(guard);

    println!("\nHTTP service (nginx, 1 worker, 1 KiB page; wrk 2 threads, {ROUNDS} interleaved rounds of {SECONDS} s; medians):");
    for close in [false, true] {
        let shape = if close { "close" } else { "keepalive" };
        let base = median(figures.iter().find(|(c, cl, _)| *c == Config::Unmonitored && *cl == close).expect("baseline").2.iter().map(|l| l.rps).collect());
        for (c, _, loads) in figures.iter().filter(|(_, cl, _)| *cl == close) {
            let rps = median(loads.iter().map(|l| l.rps).collect());
            let p50 = median(loads.iter().map(|l| l.p50_us).collect());
            let p99 = median(loads.iter().map(|l| l.p99_us).collect());
            let (lo, hi) = loads.iter().fold((f64::MAX, 0f64), |(lo, hi), l| (lo.min(l.rps), hi.max(l.rps)));
            // A round far off the others means the load generator hit a limit of its own.
            if lo < rps / 2.0 {
                println!("  ({shape} {}: a round at {lo:.0} req/s, under half the median; see the rounds)", c.label());
            }
            println!("  {shape:<9} {:<18} {rps:>9.0} req/s ({:.3}x, rounds {lo:.0}-{hi:.0})  p50 {p50:>6.0} us  p99 {p99:>6.0} us", c.label(), rps / base);
            let tag = format!("{}_{shape}", c.label());
            result(&format!("detector_http_{tag}_rps"), format!("{rps:.0}"));
            result(&format!("detector_http_{tag}_ratio"), format!("{:.3}", rps / base));
            result(&format!("detector_http_{tag}_p99_us"), format!("{p99:.0}"));
        }
    }
    result("detector_http_sequence_model_findings", seq_findings);
}

/// Runs `f` when dropped (also when the bench panics), so nginx never outlives the bench.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    G(Some(f))
}
