//! Per-packet cost of the real programs through `BPF_PROG_TEST_RUN`, shared by the `datapath`
//! bench (criterion, every rule count and the tier shape) and the `comparison` report (one
//! table per program against a no-op at the same hook).
//!
//! The real eBPF object is loaded (`bulkhead_agent::loader::Dataplane`) and filled, through the
//! real compiler and the agent's map writer, with N rules. BPF_PROG_TEST_RUN gives an skb or
//! XDP buffer the loopback device of the caller's netns (ifindex 1) when no ctx is passed, so
//! the endpoint entry is written under ifindex 1. Counters are checked after each run so that a
//! miss (no endpoint, no config) cannot masquerade as a fast verdict.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use bulkhead_agent::loader::{Dataplane, programs};
use bulkhead_common::{ConfigV2, CtKeyV2, EndpointV4, proto};

use crate::DataplaneGuard as Guard;
use crate::noop::NoopProg;
use crate::packet::{TCP_ACK, TCP_SYN, tcp6_frame, tcp_frame};

const PIN_ROOT: &str = "/sys/fs/bpf/bulkhead";
/// Runs per BPF_PROG_TEST_RUN call.
pub const REPEAT: u32 = 1_000_000;
/// Loopback: the device BPF_PROG_TEST_RUN gives the packet.
pub const IFINDEX: u32 = 1;
/// TC_ACT_SHOT and TC_ACT_UNSPEC as test_run reports them.
const RET_DROP: u32 = 2;
const RET_PASS: u32 = u32::MAX;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

pub const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(10, 16, 0, 1);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 17, 0, 0);
/// An address no pod and no policy prefix covers (identity WORLD).
pub const WORLD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// The same three roles for IPv6: every synthetic pod is dual-stack.
pub const LOCAL_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x16, 0, 0, 0, 0, 1);
pub const PEER_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x17, 0, 0, 0, 0, 0);
pub const WORLD_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
pub const DENIED_PORT: u16 = 5432;
pub const ALLOWED_PORT: u16 = 8080;
/// Source port of the frames into the pod and out of it (distinct flows).
const SPORT_IN: u16 = 40000;
const SPORT_OUT: u16 = 40001;

/// Removes pin folders of earlier bench processes that died without cleaning up.
pub fn remove_stale_pins() {
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
/// NetworkPolicy) selecting the target pod, each allowing one peer pod on one port, plus one
/// egress policy letting the target reach peer 0 on `ALLOWED_PORT` (so its egress is judged
/// by policy too). `Shape::Tiers`: `n` Calico GlobalNetworkPolicies spread over ten tiers
/// (default Pass, the last Deny), one rule each. In both, peer 0 may reach `ALLOWED_PORT` and
/// never `DENIED_PORT`.
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    NetworkPolicies,
    Tiers,
}

fn model(n: usize, shape: Shape) -> policy_compiler::Model {
    use std::fmt::Write as _;
    let peers = (n / 10).clamp(1, 2000);
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: target, namespace: x, labels: {app: target}}\nstatus: {podIPs: [{ip: 10.16.0.1}, {ip: 'fd00:10:16::1'}]}\n");
    for i in 0..peers {
        let ip = Ipv4Addr::from(u32::from(PEER_IP) + i as u32);
        let ip6 = Ipv6Addr::from(u128::from(PEER_IP6) + i as u128);
        let _ = write!(y, "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: peer-{i}, namespace: x, labels: {{app: peer-{i}}}}}\nstatus: {{podIPs: [{{ip: {ip}}}, {{ip: '{ip6}'}}]}}\n");
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
            let _ = write!(
                y,
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: egress, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: target}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{podSelector: {{matchLabels: {{app: peer-0}}}}}}]\n    ports: [{{port: {ALLOWED_PORT}}}]\n"
            );
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
pub fn setup(n: usize, shape: Shape) -> Guard {
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
    assert_eq!(target.ip6, Some(LOCAL_IP6), "the target pod is dual-stack");
    let ep = EndpointV4 { identity: [target.identity; 2], flags: [target.flags; 2], ipv4_be: LOCAL_IP.octets(), present: 1, identity6: [target.identity6; 2], ipv6_be: LOCAL_IP6.octets() };
    let maps = &mut g.dp().maps;
    maps.endpoints.insert(IFINDEX, ep).expect("endpoint insert");
    maps.config.set(0, bulkhead_agent::apply::with_clock(ConfigV2::with_default_timeouts(1)), 0).expect("config set");
    eprintln!(
        "datapath {shape:?} {n} rules: compiled in {compile_s:.2}s to {} peer entries, {} table slices, {} port and {} range exceptions, {} ipcache entries",
        ks.peers.len(),
        ks.layout.slices.len(),
        ks.layout.ports.len(),
        ks.layout.ranges.len(),
        ks.iphost.len() + ks.ipslot.len() + ks.ipcache.len()
    );
    g
}

/// One BPF_PROG_TEST_RUN call.
pub struct Run {
    pub retval: u32,
    /// The kernel's average per run.
    pub kernel_ns: u64,
    /// Wall-clock of the syscall divided by the repeat count.
    pub wall_ns: f64,
}

fn run(prog: &SchedClassifier, frame: &[u8], repeat: u32) -> Run {
    let opts = TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() };
    let t = Instant::now();
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    let wall = t.elapsed();
    Run { retval: r.return_value, kernel_ns: r.duration.as_nanos() as u64, wall_ns: wall.as_nanos() as f64 / f64::from(repeat) }
}

fn run_noop(prog: &NoopProg, frame: &[u8], repeat: u32) -> Run {
    let t = Instant::now();
    let r = prog.test_run(frame, repeat).expect("BPF_PROG_TEST_RUN of the no-op");
    let wall = t.elapsed();
    Run { retval: r.retval, kernel_ns: u64::from(r.kernel_ns), wall_ns: wall.as_nanos() as f64 / f64::from(repeat) }
}

fn counter(dp: &Dataplane, name: &str) -> u64 {
    dp.counters().expect("counters").into_iter().find(|(n, _)| n == name).map(|(_, v)| v).unwrap_or(0)
}

/// Counters that moved between two snapshots.
fn moved(before: &[(String, u64)], after: &[(String, u64)]) -> Vec<(String, u64)> {
    before.iter().zip(after).filter(|((_, b), (_, a))| a != b).map(|((n, b), (_, a))| (n.clone(), a - b)).collect()
}

/// What one measured run exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// The no-op TC program.
    Noop,
    /// Into the pod: a SYN from a peer pod to a port no rule allows (full evaluation, no
    /// conntrack entry is ever created).
    Deny,
    /// The same from an address outside every pod and prefix (identity WORLD).
    DenyWorld,
    /// Into the pod: a later packet of an allowed flow (the conntrack fast path).
    Established,
    /// Out of the pod: a SYN to a port its egress policy does not allow.
    EgressDeny,
    /// Out of the pod: a later packet of an allowed flow.
    EgressEstablished,
    /// Out of the pod: the pod's answer on the allowed flow into it (conntrack finds the flow
    /// under the same key as its first packet).
    Reply,
}

impl PathKind {
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Noop => "noop",
            PathKind::Deny => "deny_new_flow",
            PathKind::DenyWorld => "deny_new_flow_world",
            PathKind::Established => "established",
            PathKind::EgressDeny => "egress_deny_new_flow",
            PathKind::EgressEstablished => "egress_established",
            PathKind::Reply => "reply",
        }
    }
}

/// The address family a measured path runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The test frames of one family.
pub struct Frames {
    deny: Vec<u8>,
    deny_world: Vec<u8>,
    /// The SYN that opens the allowed flow into the pod (always judged by policy).
    allow: Vec<u8>,
    /// A later packet (ACK) of that flow: the conntrack fast path.
    established: Vec<u8>,
    egress_deny: Vec<u8>,
    egress_allow: Vec<u8>,
    egress_established: Vec<u8>,
    reply: Vec<u8>,
}

impl Frames {
    /// The same flows in `family`: the same ports, the family's addresses of the same pods.
    pub fn of(family: Family) -> Frames {
        let tcp = |s: u8, d: u8, sport: u16, dport: u16, flags: u8| -> Vec<u8> {
            // 0: the pod, 1: peer 0, 2: outside the cluster.
            match family {
                Family::V4 => {
                    let a = [LOCAL_IP, PEER_IP, WORLD_IP];
                    tcp_frame(a[s as usize], a[d as usize], sport, dport, flags)
                }
                Family::V6 => {
                    let a = [LOCAL_IP6, PEER_IP6, WORLD_IP6];
                    tcp6_frame(a[s as usize], a[d as usize], sport, dport, flags)
                }
            }
        };
        Frames {
            deny: tcp(1, 0, SPORT_IN, DENIED_PORT, TCP_SYN),
            deny_world: tcp(2, 0, SPORT_IN, DENIED_PORT, TCP_SYN),
            allow: tcp(1, 0, SPORT_IN, ALLOWED_PORT, TCP_SYN),
            established: tcp(1, 0, SPORT_IN, ALLOWED_PORT, TCP_ACK),
            egress_deny: tcp(0, 1, SPORT_OUT, DENIED_PORT, TCP_SYN),
            egress_allow: tcp(0, 1, SPORT_OUT, ALLOWED_PORT, TCP_SYN),
            egress_established: tcp(0, 1, SPORT_OUT, ALLOWED_PORT, TCP_ACK),
            reply: tcp(0, 1, ALLOWED_PORT, SPORT_IN, TCP_ACK),
        }
    }
}

impl Default for Frames {
    fn default() -> Self {
        Frames::of(Family::V4)
    }
}

/// A loaded dataplane with its rules, the no-op baselines and the frames.
pub struct Bench {
    pub guard: Guard,
    pub frames: Frames,
    pub frames6: Frames,
    noop_tc: NoopProg,
    noop_xdp: NoopProg,
}

impl Bench {
    /// [`setup`] plus the no-op programs; the allowed flows in both directions are opened so
    /// the established paths take conntrack.
    pub fn new(n: usize, shape: Shape) -> Bench {
        let mut b = Bench {
            guard: setup(n, shape),
            frames: Frames::of(Family::V4),
            frames6: Frames::of(Family::V6),
            noop_tc: NoopProg::tc().expect("loading the no-op TC program"),
            noop_xdp: NoopProg::xdp().expect("loading the no-op XDP program"),
        };
        b.open_flows();
        b
    }

    /// Sends the SYNs of the allowed flows of both families (conntrack entries for the
    /// established paths).
    pub fn open_flows(&mut self) {
        let dp = self.guard.dp();
        for f in [&self.frames, &self.frames6] {
            for (prog, frame) in [(programs::TO_POD, &f.allow), (programs::FROM_POD, &f.egress_allow)] {
                let r = run(dp.classifier(prog).expect("program"), frame, 1);
                assert_eq!(r.retval, RET_PASS, "{prog}: the allowed SYN was not passed");
            }
        }
    }

    /// Runs `path` `repeat` times; panics when the verdict or the counters are not the ones
    /// the path must produce.
    pub fn run_path(&mut self, path: PathKind, repeat: u32) -> Run {
        self.run_path_in(path, Family::V4, repeat)
    }

    /// [`Bench::run_path`] with the frames of `family`.
    pub fn run_path_in(&mut self, path: PathKind, family: Family, repeat: u32) -> Run {
        let f = if family == Family::V4 { &self.frames } else { &self.frames6 };
        if path == PathKind::Noop {
            let r = run_noop(&self.noop_tc, &f.deny, repeat);
            assert_eq!(r.retval, RET_PASS, "no-op returned {}", r.retval as i32);
            return r;
        }
        let (prog, frame, want) = match path {
            PathKind::Noop => unreachable!("handled above"),
            PathKind::Deny => (programs::TO_POD, &f.deny, RET_DROP),
            PathKind::DenyWorld => (programs::TO_POD, &f.deny_world, RET_DROP),
            PathKind::Established => (programs::TO_POD, &f.established, RET_PASS),
            PathKind::EgressDeny => (programs::FROM_POD, &f.egress_deny, RET_DROP),
            PathKind::EgressEstablished => (programs::FROM_POD, &f.egress_established, RET_PASS),
            PathKind::Reply => (programs::FROM_POD, &f.reply, RET_PASS),
        };
        let dp = self.guard.dp();
        let before = dp.counters().expect("counters");
        let r = run(dp.classifier(prog).expect("program"), frame, repeat);
        assert_eq!(r.retval, want, "{} ({family:?}) returned {}", path.label(), r.retval as i32);
        // Counters, not just the return value: a missing endpoint or config also drops.
        let d = moved(&before, &dp.counters().expect("counters"));
        let get = |name: &str| d.iter().find(|(n, _)| n == name).map(|x| x.1).unwrap_or(0);
        let ok = match path {
            PathKind::Noop => unreachable!("handled above"),
            // With flow records on, the denials' records (sent, then rate-limited) move too.
            PathKind::Deny | PathKind::DenyWorld | PathKind::EgressDeny => {
                get("deny_policy") == u64::from(repeat)
                    && d.iter().all(|(n, _)| matches!(n.as_str(), "deny_policy" | "flow_events_sent" | "drop_events_rate_limited" | "flow_events_dropped"))
            }
            PathKind::Reply => d.len() == 1 && get("allow_conntrack") == u64::from(repeat),
            PathKind::Established | PathKind::EgressEstablished => {
                get("allow_policy") <= 1
                    && get("allow_policy") + get("allow_conntrack") == u64::from(repeat)
                    && d.iter().all(|(n, _)| n == "allow_policy" || n == "allow_conntrack")
            }
        };
        assert!(ok, "{} ({family:?}) x{repeat}: unexpected counters {d:?}", path.label());
        r
    }

    /// Turns flow records (every new flow reported through the ring) on or off.
    pub fn set_flow_records(&mut self, on: bool) {
        let maps = &mut self.guard.dp().maps;
        let mut cfg = maps.config.get(&0, 0).expect("config");
        let flag = bulkhead_common::config_flags::FLOW_RECORDS;
        cfg.flags = if on { cfg.flags | flag } else { cfg.flags & !flag };
        maps.config.set(0, cfg, 0).expect("config set");
    }

    /// Flow records waiting in the ring, read and dropped (outside any timed run), so the
    /// ring never fills during a measurement.
    pub fn drain_flow_records(&mut self) -> usize {
        self.guard.dp().maps.flows.as_mut().map_or(0, |r| r.read_all().len())
    }

    /// Single-shot new-flow allow into the pod: conntrack cleared before each run, repeat = 1,
    /// so each sample is one run plus the kernel timer's own overhead; the no-op's single-shot
    /// figure is that overhead's estimate. Returns (mean allow ns, mean noop ns).
    pub fn single_shot_allow(&mut self, samples: usize) -> (f64, f64) {
        let ct_key = CtKeyV2::of(IFINDEX, PEER_IP.octets(), SPORT_IN.to_be_bytes(), LOCAL_IP.octets(), ALLOWED_PORT.to_be_bytes(), proto::TCP);
        let before = counter(self.guard.dp(), "allow_policy");
        let (mut allow, mut noop) = (0u64, 0u64);
        for _ in 0..samples {
            let dp = self.guard.dp();
            let _ = dp.maps.conntrack.remove_key(&ct_key);
            let r = run(dp.classifier(programs::TO_POD).expect("program"), &self.frames.allow, 1);
            assert_eq!(r.retval, RET_PASS);
            allow += r.kernel_ns;
            noop += run_noop(&self.noop_tc, &self.frames.allow, 1).kernel_ns;
            self.drain_flow_records();
        }
        let hits = counter(self.guard.dp(), "allow_policy") - before;
        assert_eq!(hits, samples as u64, "single-shot allow: {hits} policy allows of {samples} runs");
        self.open_flows();
        (allow as f64 / samples as f64, noop as f64 / samples as f64)
    }

    /// Median kernel ns per run of the XDP programs against the no-op XDP program, over
    /// `rounds` interleaved rounds: the veth anti-spoofing pre-filter on a packet from the pod's
    /// own address, and the uplink pre-filter with `prefixes` denied /32s on a packet from an
    /// undenied and from a denied source. Returns (noop, prefilter, uplink pass, uplink drop).
    pub fn xdp_figures(&mut self, prefixes: usize, rounds: usize) -> (f64, f64, f64, f64) {
        let pin = self.guard.dp().pin_dir().to_path_buf();
        let denied: Vec<ipnetwork::IpNetwork> = (0..prefixes)
            .map(|i| ipnetwork::Ipv4Network::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32), 32).expect("/32").into())
            .collect();
        bulkhead_agent::uplink::add(&pin, &denied).expect("filling the uplink deny list");
        let mut uplink_obj = bulkhead_agent::uplink::load(&pin).expect("loading the uplink program");
        let uplink = bulkhead_agent::uplink::program(&mut uplink_obj).expect("uplink program");
        let from_pod = tcp_frame(LOCAL_IP, PEER_IP, SPORT_OUT, ALLOWED_PORT, TCP_ACK);
        let undenied = tcp_frame(WORLD_IP, LOCAL_IP, SPORT_IN, ALLOWED_PORT, TCP_SYN);
        let denied_src = match denied.last().expect("at least one prefix").ip() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(a) => unreachable!("IPv4 prefixes only: {a}"),
        };
        let denied_frame = tcp_frame(denied_src, LOCAL_IP, SPORT_IN, ALLOWED_PORT, TCP_SYN);
        let xrun = |p: &aya::programs::Xdp, frame: &[u8]| {
            let r = p.test_run(TestRunOptions { data_in: Some(frame), repeat: REPEAT, ..TestRunOptions::new() }).expect("BPF_PROG_TEST_RUN (XDP)");
            (r.return_value, r.duration.as_nanos() as f64)
        };
        let mut k: [Vec<f64>; 4] = Default::default();
        for _ in 0..rounds {
            let n = run_noop(&self.noop_xdp, &from_pod, REPEAT);
            assert_eq!(n.retval, XDP_PASS, "XDP no-op");
            k[0].push(n.kernel_ns as f64);
            let dp = self.guard.dp();
            let before = counter(dp, "xdp_pass");
            let (rv, ns) = xrun(dp.xdp_prefilter().expect("XDP pre-filter"), &from_pod);
            assert_eq!(rv, XDP_PASS, "pre-filter dropped the pod's own address");
            assert_eq!(counter(dp, "xdp_pass") - before, u64::from(REPEAT), "pre-filter: no endpoint entry was found");
            k[1].push(ns);
            let before = counter(dp, "uplink_pass");
            let (rv, ns) = xrun(uplink, &undenied);
            assert_eq!((rv, counter(dp, "uplink_pass") - before), (XDP_PASS, u64::from(REPEAT)), "uplink: undenied source");
            k[2].push(ns);
            let before = counter(dp, "uplink_drop_denied_source");
            let (rv, ns) = xrun(uplink, &denied_frame);
            assert_eq!((rv, counter(dp, "uplink_drop_denied_source") - before), (XDP_DROP, u64::from(REPEAT)), "uplink: denied source");
            k[3].push(ns);
        }
        let [a, b, c, d] = k.map(median);
        (a, b, c, d)
    }
}

/// Median of finite values (NaN when none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}
