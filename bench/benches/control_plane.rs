//! Control plane: time from a policy file change to the kernel enforcing it, and the same
//! from a Kubernetes API write (an API-server emulator, the agent's Kubernetes datastore
//! watching it: API event -> watch -> compile -> maps).
//!
//! A `bulkhead_lab::Lab` (pods as network namespaces, echo servers) with the real agent
//! (`bulkhead_agent::Agent`, `watch: true`, no explicit sync) on its datastore folder. Each
//! iteration rewrites one NetworkPolicy file (atomically, through the lab's `Datastore`),
//! alternating "deny all ingress to server" and "allow client -> server:8080", and probes
//! client -> server with real TCP probes (lab `probe`, 50 ms timeout) started every 2 ms in
//! parallel until one sees the new verdict. Latency = start of the earliest probe that saw
//! the new verdict - time of the file write; resolution is the 2 ms probe interval.
//!
//! Then agent restart to reconciled: the in-process agent stops keeping enforcement, and the
//! real daemon (`bulkhead agent`, from `$BULKHEAD_BIN` or `target/release/bulkhead`) is
//! started, killed with SIGKILL and started again, `RESTARTS` times. Latency = spawn to the
//! daemon's "running" line (programs loaded, pinned links adopted, maps reconciled with the
//! datastore). Meanwhile real TCP probes run every 5 ms and every one must see the enforced
//! verdict (a deny) through the kill, the gap and the restart; any that does not is reported.
//!
//! The bench binary doubles as the lab's echo server (`<bench> lab serve --tcp ...`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_agent::{Agent, AgentConfig};
use bulkhead_bench::{percentile, result};
use bulkhead_lab::datastore::Datastore;
use bulkhead_lab::probe::probe;
use bulkhead_lab::{Lab, LabOptions, PodNetns, Protocol, Topology};
use criterion::Criterion;

const ITERATIONS: usize = 40;
const PROBE_TIMEOUT: Duration = Duration::from_millis(50);
const PROBE_INTERVAL: Duration = Duration::from_millis(2);
const GIVE_UP: Duration = Duration::from_secs(5);
const PROBING: bulkhead_bench::Probing = bulkhead_bench::Probing { interval: PROBE_INTERVAL, timeout: PROBE_TIMEOUT, give_up: GIVE_UP };
const SETTLE: Duration = Duration::from_millis(100);
const PORT: u16 = 8080;

const TOPOLOGY: &str = "kind: Topology
name: bench-control-plane
namespaces:
  - {name: bench, labels: {team: bench}}
  - {name: other, labels: {team: other}}
pods:
  - {namespace: bench, name: client, ip: 10.240.0.10, labels: {app: client}}
  - {namespace: bench, name: server, ip: 10.240.0.11, labels: {app: server}}
  - {namespace: other, name: bystander, ip: 10.240.0.12, labels: {app: bystander}}
ports:
  - {port: 8080, protocol: TCP, name: http}
";

const DENY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bench-toggle, namespace: bench}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress: []
";

const ALLOW: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bench-toggle, namespace: bench}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{protocol: TCP, port: 8080}]
";

struct Bench {
    // Field order = drop order: the agent (pins, links) goes before the API server and the
    // lab (netns, servers).
    agent: Option<Agent>,
    /// Set when policy goes through the Kubernetes API instead of files.
    kube: Option<bulkhead_lab::kube::KubeLab>,
    ds: Datastore,
    client: PodNetns,
    server_ip: Ipv4Addr,
    lab: Lab,
    /// Whether the policy currently written allows client -> server.
    allowed: bool,
    /// Every measured flip: (became allowed?, latency).
    samples: Vec<(bool, Duration)>,
    failures: usize,
}

impl Bench {
    fn new(kubernetes: bool) -> Bench {
        let topo = Topology::parse(TOPOLOGY, Path::new("control_plane.rs")).expect("topology");
        let lab = Lab::create(&topo, &LabOptions::default()).expect("creating the lab (needs root, ip, cgroup v2)");
        let mut ds = Datastore::for_lab(&lab);
        let (agent, kube) = if kubernetes {
            let mut k = bulkhead_lab::kube::KubeLab::start(&lab, &mut ds, false).expect("API emulator and Kubernetes datastore");
            let agent = k.start_agent(&lab, true).expect("starting the agent");
            (agent, Some(k))
        } else {
            ds.flush().expect("writing the datastore");
            let agent = Agent::start(AgentConfig {
                datastore_dir: lab.datastore_dir(),
                node_netns: Some(lab.node_netns().to_string()),
                pin_dir: lab.pin_dir(),
                watch: true,
                flow_records: true,
            })
            .expect("starting the agent");
            (agent, None)
        };
        let client = lab.endpoint("bench/client").expect("client pod").clone();
        let server_ip = lab.endpoint("bench/server").expect("server pod").ip;
        let b = Bench { agent: Some(agent), kube, ds, client, server_ip, lab, allowed: true, samples: Vec::new(), failures: 0 };
        // No policy yet: the server is not isolated, so the client must get through.
        let deadline = Instant::now() + GIVE_UP;
        while !probe(&b.client, b.server_ip, PORT, Protocol::Tcp, Duration::from_millis(200)) {
            assert!(Instant::now() < deadline, "client cannot reach server before any policy: lab or agent broken");
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("control_plane: lab {} ready, agent watching {}", b.lab.id(), b.ds.dir().display());
        b
    }

    /// Writes the opposite policy and returns the time until a probe sees the new verdict.
    fn flip(&mut self) -> Option<Duration> {
        let want = !self.allowed;
        self.ds.apply(if want { ALLOW } else { DENY }).expect("policy YAML");
        let t0 = Instant::now();
        match &self.kube {
            None => self.ds.flush().expect("writing the policy file"),
            Some(k) => drop(k.write(&mut self.ds).expect("writing the policy through the API")),
        }
        self.allowed = want;

        let first = bulkhead_bench::time_to_verdict(&self.client, self.server_ip, PORT, want, t0, PROBING);
        std::thread::sleep(SETTLE);
        match first {
            Some(d) => {
                self.samples.push((want, d));
                Some(d)
            }
            None => {
                self.failures += 1;
                eprintln!("control_plane: verdict did not flip to {} within {GIVE_UP:?}", if want { "allow" } else { "deny" });
                None
            }
        }
    }
}

const RESTARTS: usize = 20;

fn bulkhead_bin() -> std::path::PathBuf {
    std::env::var_os("BULKHEAD_BIN")
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/bulkhead"))
}

impl Bench {
    /// Kills and restarts the real daemon `RESTARTS` times under a deny policy while probes
    /// check the deny never lapses. Returns the restart-to-reconciled times and the number of
    /// probes that got through.
    fn restarts(&mut self) -> (Vec<Duration>, usize, usize) {
        use std::io::BufRead as _;
        if self.allowed {
            self.flip();
        }
        let kept = self.agent.take().expect("agent").stop_keep_enforcing().expect("stop keeping enforcement");
        eprintln!("control_plane: in-process agent stopped, {kept} links kept; restarting the daemon {RESTARTS} times");
        let instance = self.lab.pin_dir().file_name().expect("pin dir").to_string_lossy().into_owned();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let leaks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let probes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let prober = {
            let (stop, leaks, probes, client, ip) = (stop.clone(), leaks.clone(), probes.clone(), self.client.clone(), self.server_ip);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if probe(&client, ip, PORT, Protocol::Tcp, PROBE_TIMEOUT) {
                        leaks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    probes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let mut times = Vec::new();
        for i in 0..=RESTARTS {
            let t0 = Instant::now();
            let mut child = std::process::Command::new(bulkhead_bin())
                .args(["agent", "--datastore", self.lab.datastore_dir().to_str().expect("utf-8"), "--node-netns", self.lab.node_netns(), "--instance", &instance, "--metrics-listen", "127.0.0.1:0"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawning bulkhead agent (build it: cargo build --release -p bulkhead)");
            let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
            let up = lines.by_ref().map_while(Result::ok).any(|l| l.contains("bulkhead agent running"));
            assert!(up, "the daemon did not come up");
            let d = t0.elapsed();
            // The first start replaces the in-process agent's links; the rest follow a SIGKILL.
            if i > 0 {
                times.push(d);
            }
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, if i == RESTARTS { libc::SIGTERM } else { libc::SIGKILL }) };
            let _ = child.wait();
        }
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = prober.join();
        // Back to an in-process agent, which removes everything on drop.
        self.agent = Some(
            Agent::start(AgentConfig {
                datastore_dir: self.lab.datastore_dir(),
                node_netns: Some(self.lab.node_netns().to_string()),
                pin_dir: self.lab.pin_dir(),
                watch: true,
                flow_records: true,
            })
            .expect("restarting the in-process agent"),
        );
        (times, leaks.load(std::sync::atomic::Ordering::SeqCst), probes.load(std::sync::atomic::Ordering::SeqCst))
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn report(prefix: &str, samples: &[(bool, Duration)], failures: usize) {
    let summary = |name: &str, mut v: Vec<Duration>| {
        v.sort();
        let (Some(p50), Some(p99)) = (percentile(&v, 50.0), percentile(&v, 99.0)) else { return };
        let name = format!("{prefix}{name}");
        println!(
            "control_plane {name}: n={} p50={} ms p99={} ms min={} ms max={} ms",
            v.len(),
            ms(p50),
            ms(p99),
            ms(v[0]),
            ms(*v.last().unwrap())
        );
        result(&format!("control_plane_{name}_p50_ms"), ms(p50));
        result(&format!("control_plane_{name}_p99_ms"), ms(p99));
        result(&format!("control_plane_{name}_n"), v.len());
    };
    summary("policy_change_to_enforced", samples.iter().map(|s| s.1).collect());
    summary("to_deny", samples.iter().filter(|s| !s.0).map(|s| s.1).collect());
    summary("to_allow", samples.iter().filter(|s| s.0).map(|s| s.1).collect());
    result(&format!("control_plane_{prefix}flip_failures"), failures);
}

fn main() {
    if !bulkhead_bench::start_lab_bench("control_plane") {
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();

    let flips = |kubernetes: bool| {
        let mut b = Bench::new(kubernetes);
        for _ in 0..ITERATIONS {
            b.flip();
        }
        let (how, prefix) = if kubernetes { ("through the Kubernetes API (emulator; agent woken by its watchers)", "api_event_") } else { ("of a watched file", "") };
        println!("control_plane: {} flips {how}, alternating deny/allow, probes every {PROBE_INTERVAL:?} with {PROBE_TIMEOUT:?} timeout", b.samples.len());
        report(prefix, &b.samples, b.failures);
        b
    };
    // Through the Kubernetes API first (its own lab, torn down before the file run).
    drop(flips(true));
    let mut b = flips(false);

    let (mut times, leaks, probes) = b.restarts();
    times.sort();
    if let (Some(p50), Some(p99)) = (percentile(&times, 50.0), percentile(&times, 99.0)) {
        println!(
            "control_plane agent restart after SIGKILL to reconciled: n={} p50={} ms p99={} ms max={} ms; {probes} probes during the restarts, {leaks} got through the deny",
            times.len(),
            ms(p50),
            ms(p99),
            ms(*times.last().expect("samples"))
        );
        result("agent_restart_to_reconciled_p50_ms", ms(p50));
        result("agent_restart_to_reconciled_p99_ms", ms(p99));
        result("agent_restart_probes", probes);
        result("agent_restart_denied_probes_let_through", leaks);
    }

    // Criterion view of the same quantity (each iteration = one flip; failures count as GIVE_UP).
    let mut group = c.benchmark_group("control_plane");
    group.sampling_mode(criterion::SamplingMode::Flat);
    group.bench_function("policy_file_change_to_enforced", |bn| {
        bn.iter_custom(|iters| (0..iters).map(|_| b.flip().unwrap_or(GIVE_UP)).sum())
    });
    group.finish();
    c.final_summary();
    drop(b);
}
