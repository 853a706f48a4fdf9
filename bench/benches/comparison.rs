//! Side by side: Bulkhead against no policy and against iptables (legacy and nft, stateful
//! and stateless renderings), an nftables set and an ipset, at 10 / 1k / 10k / 100k rules, on
//! the same lab pods, interleaved round by round so drift on the machine hits every
//! configuration alike. One command: `cargo bench -p bulkhead-bench --bench comparison` (root);
//! it writes `bench/report/comparison.md` and `bench/report/comparison.svg`.
//!
//! No policy is measured at the start of each round and again every `BASELINE_EVERY`
//! configurations; a configuration's ratio is the median over the rounds of its ratio to the
//! no-policy measurement just before it, so drift over a round (10-50 % on a 2-vCPU VM) does not
//! pass for a difference between configurations.
//!
//! Per configuration and round: TCP throughput with 1 and 4 streams (iperf3, `COMPARISON_SECONDS`
//! each), UDP small-packet rate (iperf3, 64-byte datagrams, unlimited sender; the receiver's
//! count), request/response latency (1-byte ping-pong over one TCP connection, p50/p99), and
//! new connections per second (connect + close loop); the last three for at most 3 s each. The client and server are lab pods (network namespaces behind veths
//! into a node namespace, routed like Calico); every rendering guards traffic to the server:
//! N-1 rules that never match the client (distinct /32 sources) before the rule that admits it,
//! so a stateless rendering walks all N rules for every packet and a stateful one for every new
//! flow. Bulkhead is the default configuration (tcx only) plus, at 10k rules, the XDP
//! pre-filter on the veths that the default no longer uses.
//!
//! After the rounds, on the same lab: policy change -> enforced (`comparison/policy_change.rs`)
//! for Bulkhead at 10 / 1k / 10k policies next to iptables and nftables changing one rule or
//! element of 10k; then every program's per-packet cost through BPF_PROG_TEST_RUN against a
//! no-op at the same hook (`comparison/per_packet.rs`).
//!
//! Environment: `COMPARISON_ROUNDS` (default 5), `COMPARISON_SECONDS` per measurement
//! (default 5), `COMPARISON_RULES` (default `10,1000,10000,100000`), `COMPARISON_FLIPS` per
//! policy-change configuration (default 20), `COMPARISON_REPORT_DIR`. `COMPARISON_ONLY=
//! throughput|policy_change|per_packet` runs one part and prints it (no report is written).
//! For a quick look at one figure: `COMPARISON_IMPLS=bulkhead,nft-set,...` (short names in
//! `Impl::short`) keeps only those beside no policy, `COMPARISON_MEASURE=conn` measures only the
//! connection rate.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_agent::{Agent, AgentConfig};
use bulkhead_bench::{percentile, result};
use bulkhead_lab::datastore::Datastore;
use bulkhead_lab::{Lab, LabOptions, PodNetns, Topology};

#[path = "comparison/per_packet.rs"]
mod per_packet;
#[path = "comparison/policy_change.rs"]
mod policy_change;

const ECHO_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
/// An accept-and-close server for the connection rate (the lab's echo server spawns a thread
/// per connection and cannot accept faster than a few hundred per second).
const ACCEPT_PORT: u16 = 9000;

const TOPOLOGY: &str = "kind: Topology
name: bench-comparison
namespaces:
  - {name: bench, labels: {team: bench}}
pods:
  - {namespace: bench, name: client, ip: 10.240.0.10, labels: {app: client}}
  - {namespace: bench, name: server, ip: 10.240.0.11, labels: {app: server}}
ports:
  - {port: 8080, protocol: TCP, name: echo}
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    NoPolicy,
    Bulkhead,
    BulkheadXdp,
    IptablesLegacy { stateful: bool },
    IptablesNft { stateful: bool },
    NftSet,
    Ipset,
}

impl Impl {
    /// The name `COMPARISON_IMPLS` selects by.
    fn short(self) -> &'static str {
        match self {
            Impl::NoPolicy => "none",
            Impl::Bulkhead => "bulkhead",
            Impl::BulkheadXdp => "bulkhead-xdp",
            Impl::IptablesLegacy { stateful: true } => "iptables-legacy",
            Impl::IptablesLegacy { stateful: false } => "iptables-legacy-stateless",
            Impl::IptablesNft { stateful: true } => "iptables-nft",
            Impl::IptablesNft { stateful: false } => "iptables-nft-stateless",
            Impl::NftSet => "nft-set",
            Impl::Ipset => "ipset",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Impl::NoPolicy => "no policy",
            Impl::Bulkhead => "Bulkhead (default: tcx)",
            Impl::BulkheadXdp => "Bulkhead + XDP pre-filter on veths",
            Impl::IptablesLegacy { stateful: true } => "iptables-legacy, conntrack first",
            Impl::IptablesLegacy { stateful: false } => "iptables-legacy, no conntrack",
            Impl::IptablesNft { stateful: true } => "iptables-nft, conntrack first",
            Impl::IptablesNft { stateful: false } => "iptables-nft, no conntrack",
            Impl::NftSet => "nftables, one set",
            Impl::Ipset => "ipset + iptables, conntrack first",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Config {
    imp: Impl,
    rules: usize,
}

impl Config {
    fn name(&self) -> String {
        match self.imp {
            Impl::NoPolicy => "no policy".into(),
            _ => format!("{} @ {}", self.imp.label(), rules_label(self.rules)),
        }
    }
}

fn rules_label(n: usize) -> String {
    match n {
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

/// One round's figures for one configuration.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    tcp1_gbps: f64,
    tcp4_gbps: f64,
    udp_kpps: f64,
    rr_p50_us: f64,
    rr_p99_us: f64,
    conn_per_s: f64,
}

/// No policy is measured again after this many other configurations (see `ratio_to`).
const BASELINE_EVERY: usize = 6;

/// The median of each figure.
fn median_sample(v: &[Sample]) -> Sample {
    let col = |f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    Sample {
        tcp1_gbps: col(|x| x.tcp1_gbps),
        tcp4_gbps: col(|x| x.tcp4_gbps),
        udp_kpps: col(|x| x.udp_kpps),
        rr_p50_us: col(|x| x.rr_p50_us),
        rr_p99_us: col(|x| x.rr_p99_us),
        conn_per_s: col(|x| x.conn_per_s),
    }
}

impl Sample {
    /// Each figure divided by the same figure of `base` (NaN where `base` has none).
    fn ratio_to(&self, base: &Sample) -> Sample {
        let r = |v: f64, b: f64| if b > 0.0 { v / b } else { f64::NAN };
        Sample {
            tcp1_gbps: r(self.tcp1_gbps, base.tcp1_gbps),
            tcp4_gbps: r(self.tcp4_gbps, base.tcp4_gbps),
            udp_kpps: r(self.udp_kpps, base.udp_kpps),
            rr_p50_us: r(self.rr_p50_us, base.rr_p50_us),
            rr_p99_us: r(self.rr_p99_us, base.rr_p99_us),
            conn_per_s: r(self.conn_per_s, base.conn_per_s),
        }
    }
}

/// The i-th never-matching source address.
fn decoy(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i as u32)
}

fn sh(netns: &str, program: &str, args: &[&str], stdin: Option<&str>) {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, program]).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(text) = stdin {
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).unwrap_or_else(|e| panic!("{program} stdin: {e}"));
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{program} {args:?} in {netns}: {}", String::from_utf8_lossy(&out.stderr));
}

fn sh_quiet(netns: &str, program: &str, args: &[&str]) {
    let _ = Command::new("ip").args(["netns", "exec", netns, program]).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

struct Bench {
    // Drop order: the agent before the lab.
    agent: Option<Agent>,
    iperf: Option<std::process::Child>,
    ds: Datastore,
    client: PodNetns,
    server: PodNetns,
    lab: Lab,
    seconds: u64,
    /// `COMPARISON_MEASURE=conn`: only the connection rate (a quick look at one figure).
    conn_only: bool,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.agent.take();
        if let Some(mut c) = self.iperf.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.clear_kernel_rules();
    }
}

impl Bench {
    fn new(seconds: u64) -> Bench {
        let topo = Topology::parse(TOPOLOGY, Path::new("comparison.rs")).expect("topology");
        let lab = Lab::create(&topo, &LabOptions::default()).expect("creating the lab (needs root)");
        let ds = Datastore::for_lab(&lab);
        let client = lab.endpoint("bench/client").expect("client").clone();
        let server = lab.endpoint("bench/server").expect("server").clone();
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-p", &IPERF_PORT.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
        let cg = server.cgroup.clone().expect("server cgroup");
        let iperf = bulkhead_lab::netns::spawn_in(&server.netns, &cg, cmd).expect("iperf3 server");
        spawn_acceptor(server.netns.clone(), ACCEPT_PORT);
        std::thread::sleep(Duration::from_millis(300));
        let conn_only = std::env::var("COMPARISON_MEASURE").is_ok_and(|m| m == "conn");
        Bench { agent: None, iperf: Some(iperf), ds, client, server, lab, seconds, conn_only }
    }

    fn node(&self) -> String {
        self.lab.node_netns().to_string()
    }

    fn clear_kernel_rules(&self) {
        let node = self.node();
        for ipt in ["iptables-legacy", "iptables-nft"] {
            sh_quiet(&node, ipt, &["-P", "FORWARD", "ACCEPT"]);
            sh_quiet(&node, ipt, &["-F", "FORWARD"]);
        }
        sh_quiet(&node, "nft", &["delete", "table", "inet", "bhcmp"]);
        sh_quiet(&node, "ipset", &["destroy", "bhcmp"]);
    }

    /// Tears down the previous configuration and sets up `c`.
    fn switch(&mut self, c: Config) {
        self.agent.take();
        self.clear_kernel_rules();
        let node = self.node();
        let (client, server) = (self.client.ip, self.server.ip);
        let n = c.rules;
        match c.imp {
            Impl::NoPolicy => {}
            Impl::Bulkhead | Impl::BulkheadXdp => {
                let mut text = format!(
                    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: guard, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n"
                );
                for i in 0..n.saturating_sub(1) {
                    let _ = writeln!(text, "  - from: [{{ipBlock: {{cidr: {}/32}}}}]", decoy(i));
                }
                text += "  - from: [{podSelector: {matchLabels: {app: client}}}]\n";
                self.ds.apply(&text).expect("policy");
                self.ds.flush().expect("datastore");
                // SAFETY: set before the agent's threads read it; the bench is single-threaded here.
                unsafe {
                    if c.imp == Impl::BulkheadXdp {
                        std::env::set_var(bulkhead_agent::loader::XDP_PREFILTER_ENV, "veth");
                    } else {
                        std::env::remove_var(bulkhead_agent::loader::XDP_PREFILTER_ENV);
                    }
                }
                let agent = Agent::start(AgentConfig {
                    datastore_dir: self.lab.datastore_dir(),
                    node_netns: Some(node.clone()),
                    pin_dir: self.lab.pin_dir(),
                    watch: false,
                    flow_records: true,
                })
                .expect("agent");
                self.agent = Some(agent);
            }
            Impl::IptablesLegacy { stateful } | Impl::IptablesNft { stateful } => {
                let restore = if matches!(c.imp, Impl::IptablesLegacy { .. }) { "iptables-legacy-restore" } else { "iptables-nft-restore" };
                let mut r = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n");
                if stateful {
                    r += "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n";
                }
                // Replies from the server: one cheap rule (the rendering guards ingress).
                let _ = writeln!(r, "-A FORWARD -s {server}/32 -j ACCEPT");
                for i in 0..n.saturating_sub(1) {
                    let _ = writeln!(r, "-A FORWARD -s {}/32 -d {server}/32 -j ACCEPT", decoy(i));
                }
                let _ = writeln!(r, "-A FORWARD -s {client}/32 -d {server}/32 -j ACCEPT");
                r += "COMMIT\n";
                sh(&node, restore, &[], Some(&r));
            }
            Impl::NftSet => {
                let mut elems: Vec<String> = (0..n.saturating_sub(1)).map(|i| decoy(i).to_string()).collect();
                elems.push(client.to_string());
                let f = format!(
                    "table inet bhcmp {{\n set allowed {{ type ipv4_addr; elements = {{ {} }} }}\n chain guard {{ type filter hook forward priority 0; policy drop;\n  ip saddr {server} accept\n  ip saddr @allowed ip daddr {server} accept\n }}\n}}\n",
                    elems.join(", ")
                );
                sh(&node, "nft", &["-f", "-"], Some(&f));
            }
            Impl::Ipset => {
                let mut r = String::from("create bhcmp hash:ip family inet hashsize 65536 maxelem 262144\n");
                for i in 0..n.saturating_sub(1) {
                    let _ = writeln!(r, "add bhcmp {}", decoy(i));
                }
                let _ = writeln!(r, "add bhcmp {client}");
                sh(&node, "ipset", &["restore"], Some(&r));
                let ipt = format!(
                    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A FORWARD -s {server}/32 -j ACCEPT\n-A FORWARD -d {server}/32 -m set --match-set bhcmp src -j ACCEPT\nCOMMIT\n"
                );
                sh(&node, "iptables-legacy-restore", &[], Some(&ipt));
            }
        }
        // Every configuration must let the client in before it is measured.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !bulkhead_lab::probe::probe(&self.client, server, ECHO_PORT, bulkhead_lab::Protocol::Tcp, Duration::from_millis(500)) {
            assert!(Instant::now() < deadline, "{}: the client cannot reach the server", c.name());
        }
    }

    fn iperf(&self, extra: &[&str]) -> serde_json::Value {
        let secs = self.seconds.to_string();
        let server = self.server.ip.to_string();
        let mut args = vec!["netns", "exec", &self.client.netns, "iperf3", "-c", &server, "-p", "5201", "-t", &secs, "-J"];
        args.extend_from_slice(extra);
        let out = Command::new("ip").args(&args).output().expect("iperf3");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if v.get("error").is_some() || !out.status.success() {
            eprintln!("comparison: iperf3 {extra:?}: {}", v.get("error").and_then(|e| e.as_str()).unwrap_or("failed"));
        }
        v
    }

    fn measure(&self) -> Sample {
        let to = SocketAddr::from((self.server.ip, ACCEPT_PORT));
        let dur = Duration::from_secs(self.seconds.min(3));
        if self.conn_only {
            let conn_per_s = bulkhead_lab::netns::in_netns(&self.client.netns, move || connections(to, dur)).expect("conn in client netns");
            return Sample { conn_per_s, ..Sample::default() };
        }
        let tcp = |p: &str| {
            let v = self.iperf(&["-P", p]);
            v.pointer("/end/sum_received/bits_per_second").and_then(|b| b.as_f64()).unwrap_or(0.0) / 1e9
        };
        let tcp1_gbps = tcp("1");
        let tcp4_gbps = tcp("4");
        let short = self.seconds.min(3).to_string();
        let udp = self.iperf(&["-u", "-b", "0", "-l", "64", "-t", &short]);
        let s = |p: &str| udp.pointer(p).and_then(|x| x.as_f64()).unwrap_or(0.0);
        let received = s("/end/sum/packets") - s("/end/sum/lost_packets");
        let udp_kpps = received / s("/end/sum/seconds").max(1e-9) / 1e3;
        let to = SocketAddr::from((self.server.ip, ECHO_PORT));
        let (rr_p50_us, rr_p99_us) = bulkhead_lab::netns::in_netns(&self.client.netns, move || rr(to, dur)).expect("rr in client netns");
        let acceptor = SocketAddr::from((self.server.ip, ACCEPT_PORT));
        let conn_per_s = bulkhead_lab::netns::in_netns(&self.client.netns, move || connections(acceptor, dur)).expect("conn in client netns");
        Sample { tcp1_gbps, tcp4_gbps, udp_kpps, rr_p50_us, rr_p99_us, conn_per_s }
    }
}

/// A thread in the server's network namespace that accepts connections and closes them.
fn spawn_acceptor(netns: String, port: u16) {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = netns.clone();
    std::thread::spawn(move || {
        // setns affects this thread only: the listener lives in the server pod's namespace.
        if let Err(e) = bulkhead_netns::enter(&netns) {
            let _ = tx.send(Err(e.to_string()));
            return;
        }
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        let _ = sock.set_reuse_address(true);
        let bound = sock.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into()).and_then(|()| sock.listen(4096));
        let _ = tx.send(bound.map_err(|e| e.to_string()));
        let l: std::net::TcpListener = sock.into();
        for c in l.incoming() {
            drop(c);
        }
    });
    rx.recv().expect("acceptor thread").unwrap_or_else(|e| panic!("acceptor in {name}: {e}"));
}

/// 1-byte request/response over one connection for `dur`: p50 and p99 round trip in us.
fn rr(to: SocketAddr, dur: Duration) -> (f64, f64) {
    let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else { return (f64::NAN, f64::NAN) };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut lat = Vec::new();
    let end = Instant::now() + dur;
    let mut b = [0u8; 1];
    while Instant::now() < end {
        let t = Instant::now();
        if s.write_all(b"x").is_err() || s.read_exact(&mut b).is_err() {
            break;
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    let us = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
    (us(percentile(&lat, 50.0)), us(percentile(&lat, 99.0)))
}

/// Connect + close as fast as one thread can for `dur`: connections per second.
fn connections(to: SocketAddr, dur: Duration) -> f64 {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < dur {
        match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
            Ok(s) => {
                // Linger 0: the closing side does not keep TIME_WAIT sockets that would run the
                // port range out during a long loop.
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
                n += 1;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn spread(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.len() < 2 {
        return 0.0;
    }
    let (lo, hi) = f.iter().fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
    let m = median(f.clone());
    if m == 0.0 { 0.0 } else { (hi - lo) / m * 100.0 }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if !bulkhead_bench::start_lab_bench("comparison") {
        return;
    }
    // RUST_LOG=info shows the agent's per-sync phases (load, compile, write).
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    let rounds = env_num("COMPARISON_ROUNDS", 5) as usize;
    let seconds = env_num("COMPARISON_SECONDS", 5);
    let counts: Vec<usize> = std::env::var("COMPARISON_RULES")
        .unwrap_or_else(|_| "10,1000,10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let report_dir = std::env::var("COMPARISON_REPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("report"));
    let mut configs = vec![Config { imp: Impl::NoPolicy, rules: 0 }];
    let impls = [
        Impl::Bulkhead,
        Impl::IptablesLegacy { stateful: true },
        Impl::IptablesLegacy { stateful: false },
        Impl::IptablesNft { stateful: true },
        Impl::IptablesNft { stateful: false },
        Impl::NftSet,
        Impl::Ipset,
    ];
    for imp in impls {
        for &n in &counts {
            configs.push(Config { imp, rules: n });
        }
    }
    // `COMPARISON_IMPLS=bulkhead,nft-set` keeps only those (by short name) beside no policy.
    if let Ok(keep) = std::env::var("COMPARISON_IMPLS") {
        let keep: Vec<&str> = keep.split(',').map(str::trim).collect();
        configs.retain(|c| c.imp == Impl::NoPolicy || keep.contains(&c.imp.short()));
    }
    let xdp_at = counts.iter().copied().find(|&n| n == 10_000).or(counts.last().copied()).unwrap_or(10);
    if std::env::var("COMPARISON_IMPLS").is_err() {
        configs.push(Config { imp: Impl::BulkheadXdp, rules: xdp_at });
    }

    let only = std::env::var("COMPARISON_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if let Some(o) = only.as_deref() {
        assert!(matches!(o, "throughput" | "policy_change" | "per_packet"), "COMPARISON_ONLY={o}: expected throughput, policy_change or per_packet");
    }
    let flips = env_num("COMPARISON_FLIPS", 20) as usize;
    let started = Instant::now();
    let mut b = Bench::new(seconds);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); configs.len()];
    let rounds_run = if part("throughput") { rounds } else { 0 };
    // Each measurement's ratio to the no-policy measurement nearest before it in time: the
    // machine drifts by 10-50 % over a round, so a ratio to a baseline minutes away says more
    // about the drift than about the configuration.
    let mut ratios: Vec<Vec<Sample>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds_run {
        // Interleaved: each round visits every configuration once, in a rotated order, with
        // no policy (configuration 0) measured first and again every BASELINE_EVERY.
        let others = configs.len() - 1;
        let mut base = Sample::default();
        for k in 0..others {
            if k % BASELINE_EVERY == 0 {
                b.switch(configs[0]);
                base = b.measure();
                eprintln!("comparison round {}/{rounds} {}: {base:?}", round + 1, configs[0].name());
                samples[0].push(base);
            }
            let i = 1 + (k + round) % others;
            b.switch(configs[i]);
            let s = b.measure();
            eprintln!("comparison round {}/{rounds} {}: {s:?}", round + 1, configs[i].name());
            samples[i].push(s);
            ratios[i].push(s.ratio_to(&base));
        }
    }
    // Each part is written as soon as it is measured, so a failure in a later part does not
    // lose the earlier ones (the throughput rounds take most of an hour).
    let throughput = render(&configs, &samples, &ratios, rounds, seconds, started.elapsed());
    let write = |md: &str| {
        if only.is_none() {
            std::fs::create_dir_all(&report_dir).expect("report dir");
            std::fs::write(report_dir.join("comparison.md"), md).expect("write report");
            std::fs::write(report_dir.join("comparison.svg"), &throughput.1).expect("write chart");
        }
    };
    let mut md = if part("throughput") { throughput.0.clone() } else { String::new() };
    write(&md);
    if part("policy_change") {
        md = format!("{md}\n{}", policy_change::render(&policy_change::measure(&mut b, &counts, flips)));
        write(&md);
    }
    drop(b);
    if part("per_packet") {
        md = format!("{md}\n{}", per_packet::render(&per_packet::measure(&counts, rounds.max(3))));
        write(&md);
    }
    println!("{md}");
    if only.is_some() {
        return;
    }
    println!("comparison: report written to {}", report_dir.display());
}

struct Row {
    /// Medians of the ratios to the nearest no-policy measurement (none for no policy).
    paired: Option<Sample>,
    name: String,
    imp: Impl,
    rules: usize,
    med: Sample,
    spread_tcp1: f64,
}

fn render(configs: &[Config], samples: &[Vec<Sample>], ratios: &[Vec<Sample>], rounds: usize, seconds: u64, took: Duration) -> (String, String) {
    let rows: Vec<Row> = configs
        .iter()
        .zip(samples)
        .zip(ratios)
        .map(|((c, s), r)| {
            let col = |f: fn(&Sample) -> f64| s.iter().map(f).collect::<Vec<f64>>();
            Row {
                paired: (!r.is_empty()).then(|| median_sample(r)),
                name: c.name(),
                imp: c.imp,
                rules: c.rules,
                med: median_sample(s),
                spread_tcp1: spread(&col(|x| x.tcp1_gbps)),
            }
        })
        .collect();
    let base = rows[0].med;
    let ratio = |v: f64, b: f64| if b > 0.0 { v / b } else { f64::NAN };
    let mut md = String::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let _ = writeln!(md, "# Bulkhead side by side\n");
    let _ = writeln!(
        md,
        "Generated by `cargo bench -p bulkhead-bench --bench comparison` on {} ({cpus} vCPU, kernel {}): {rounds} rounds, interleaved, {seconds} s per measurement, {:.0} min in all. Medians over the rounds; no policy is measured at the start of each round and again every {BASELINE_EVERY} configurations, and (x) = the median over the rounds of each measurement's ratio to the no-policy measurement just before it; spread = (max - min) / median of the 1-stream figure.\n",
        host.trim(),
        kernel.trim(),
        took.as_secs_f64() / 60.0
    );
    let _ = writeln!(md, "| configuration | TCP 1 stream Gbit/s | TCP 4 streams Gbit/s | UDP 64 B kpps | RR p50 us | RR p99 us | new connections/s | spread |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let m = r.med;
        // Paired ratios where there are some; the ratio of medians otherwise.
        let ratio = |f: fn(&Sample) -> f64| r.paired.as_ref().map_or_else(|| ratio(f(&m), f(&base)), f);
        let _ = writeln!(
            md,
            "| {} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.0} ({:.2}) | {:.0} | {:.0} | {:.0} ({:.2}) | {:.0} % |",
            r.name,
            m.tcp1_gbps,
            ratio(|x| x.tcp1_gbps),
            m.tcp4_gbps,
            ratio(|x| x.tcp4_gbps),
            m.udp_kpps,
            ratio(|x| x.udp_kpps),
            m.rr_p50_us,
            m.rr_p99_us,
            m.conn_per_s,
            ratio(|x| x.conn_per_s),
            r.spread_tcp1
        );
        let key = r.name.replace([' ', ',', '@', '(', ')', ':', '+'], "_");
        result(&format!("comparison_{key}_tcp1_ratio"), format!("{:.2}", ratio(|x| x.tcp1_gbps)));
        result(&format!("comparison_{key}_conn_ratio"), format!("{:.2}", ratio(|x| x.conn_per_s)));
    }
    let _ = writeln!(md, "\n![throughput and connection rate against rule count](comparison.svg)");
    (md, svg(&rows, base))
}

/// Two panels: TCP 1-stream throughput and new connections/s against rule count (log x), one
/// line per implementation, with no policy as a dashed line.
fn svg(rows: &[Row], base: Sample) -> String {
    let impls: Vec<Impl> = {
        let mut v: Vec<Impl> = Vec::new();
        for r in rows.iter().filter(|r| !matches!(r.imp, Impl::NoPolicy | Impl::BulkheadXdp)) {
            if !v.contains(&r.imp) {
                v.push(r.imp);
            }
        }
        v
    };
    let colors = ["#1b7837", "#d73027", "#fc8d59", "#4575b4", "#91bfdb", "#762a83", "#8c510a"];
    let xs: Vec<usize> = {
        let mut v: Vec<usize> = rows.iter().filter(|r| r.rules > 0).map(|r| r.rules).collect();
        v.sort();
        v.dedup();
        v
    };
    let (w, h, pad) = (520.0, 300.0, 50.0);
    let mut out = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='11'>\n", 2.0 * w + 20.0, h + 150.0);
    let panels: [(&str, fn(&Sample) -> f64); 2] = [("TCP 1 stream (Gbit/s)", |s| s.tcp1_gbps), ("new connections/s", |s| s.conn_per_s)];
    for (p, (title, get)) in panels.iter().enumerate() {
        let ox = p as f64 * (w + 20.0);
        let ymax = rows.iter().map(|r| get(&r.med)).filter(|v| v.is_finite()).fold(get(&base), f64::max) * 1.1;
        let x_of = |n: usize| {
            let (lo, hi) = ((*xs.first().unwrap_or(&1) as f64).log10(), (*xs.last().unwrap_or(&10) as f64).log10().max(1.0));
            ox + pad + ((n as f64).log10() - lo) / (hi - lo).max(1e-9) * (w - 2.0 * pad)
        };
        let y_of = |v: f64| h - pad + 20.0 - v / ymax.max(1e-9) * (h - 2.0 * pad);
        let _ = writeln!(out, "<text x='{}' y='16' font-size='13'>{title} vs rules</text>", ox + pad);
        let _ = writeln!(out, "<line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/>", ox + pad, y_of(0.0), ox + w - pad, y_of(0.0));
        let _ = writeln!(out, "<line x1='{}' y1='{}' x2='{}' y2='{}' stroke='black'/>", ox + pad, y_of(0.0), ox + pad, y_of(ymax));
        for &n in &xs {
            let _ = writeln!(out, "<text x='{}' y='{}' text-anchor='middle'>{}</text>", x_of(n), y_of(0.0) + 14.0, rules_label(n));
        }
        for t in 0..=4 {
            let v = ymax * t as f64 / 4.0;
            let _ = writeln!(out, "<text x='{}' y='{}' text-anchor='end'>{}</text>", ox + pad - 4.0, y_of(v) + 4.0, if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") });
        }
        let by = y_of(get(&base));
        let _ = writeln!(out, "<line x1='{}' y1='{by}' x2='{}' y2='{by}' stroke='gray' stroke-dasharray='4 3'/>", ox + pad, ox + w - pad);
        for (k, imp) in impls.iter().enumerate() {
            let pts: Vec<String> = rows.iter().filter(|r| r.imp == *imp).map(|r| format!("{:.1},{:.1}", x_of(r.rules), y_of(get(&r.med).max(0.0)))).collect();
            let _ = writeln!(out, "<polyline fill='none' stroke='{}' stroke-width='2' points='{}'/>", colors[k % colors.len()], pts.join(" "));
        }
    }
    for (k, imp) in impls.iter().enumerate() {
        let y = h + 40.0 + 16.0 * k as f64;
        let _ = writeln!(out, "<line x1='60' y1='{y}' x2='90' y2='{y}' stroke='{}' stroke-width='3'/><text x='96' y='{}'>{}</text>", colors[k % colors.len()], y + 4.0, imp.label());
    }
    let y = h + 40.0 + 16.0 * impls.len() as f64;
    let _ = writeln!(out, "<line x1='60' y1='{y}' x2='90' y2='{y}' stroke='gray' stroke-dasharray='4 3'/><text x='96' y='{}'>no policy</text>", y + 4.0);
    out += "</svg>\n";
    out
}
