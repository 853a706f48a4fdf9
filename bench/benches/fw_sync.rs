//! fw-sync: time from a pod event to the firewall updated, API calls per 1,000 pod events,
//! and convergence under injected faults, per backend.
//!
//! The real daemon loop (`fw_sync::daemon::run_until`, inotify on a datastore folder, event
//! batching, retries) runs in a thread against one firewall at a time:
//! - ipset and nftables: real kernel sets in a network namespace of their own;
//! - PAN-OS (static group with commit; dynamic tag through User-ID) and FortiOS 7.2.5
//!   (addrgrp; push threat feed):
//!   the project's emulators over HTTPS with TLS verification, in this process.
//!
//! A pod event is one pod file written atomically (hidden temporary renamed into place) or
//! removed. Latency = from the rename/unlink to the first observation of the firewall's real
//! state holding the change: kernel sets are listed with `ipset list` / `nft list set` in
//! a loop (one listing takes about 1-2 ms for ipset and 5-10 ms for nft, which bounds the
//! resolution), the emulators'
//! running state is read in memory every 0.2 ms. Events are spaced 30 ms apart so each is
//! measured alone.
//!
//! Calls per 1,000 pod events: a burst (1,000 pods created back to back, then deleted back
//! to back, as in a rollout) and a steady stream (200 events/s). Calls are what the backend
//! sent: commands for ipset/nftables, HTTP requests (reads, writes, commits, job polls) for
//! the APIs.
//!
//! Faults (emulators): 15% of requests answered with a 5xx and 15% reset without an answer,
//! during 200 mixed events (create, delete, relabel) at 100 events/s; then the time until
//! the firewall equals the datastore, and the updates lost (addresses that differ from the
//! datastore after convergence, or after 60 s if it never converges).
//!
//! Quarantine (the perimeter's part of a detector isolation): a node's Quarantine file written
//! (or removed, for a release) to the firewall's `bhfw-quarantine` object holding (or no
//! longer holding) the address, measured as the pod events are.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bulkhead_bench::{is_root, percentile, result};
use bulkhead_fw_emulator::fortios::{FortiosEmulator, FortiosOptions};
use bulkhead_fw_emulator::panos::{PanosEmulator, PanosOptions};
use bulkhead_fw_emulator::{FaultConfig, Faults};
use fw_sync::config::DaemonConfig;
use fw_sync::metrics::Metrics;

const LATENCY_EVENTS: usize = 100;
/// Quarantines and releases measured per backend (half each).
const QUARANTINE_EVENTS: usize = 40;
const SPACING: Duration = Duration::from_millis(30);
const GIVE_UP: Duration = Duration::from_secs(60);
const FIREWALL: &str = "bench";

/// Removes what an earlier run killed before its drops ran left behind (a SIGTERM or a
/// timeout skips them): the namespaces `bhb-<pid>-fw`, the temp folders
/// `bulkhead-bench-fwsync-*` and the emulators' CA files `bulkhead-*-ca-<pid>-*`, of pids no
/// longer running.
fn sweep_dead_runs() {
    let dead = |pid: &str| pid.parse::<u32>().is_ok_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists());
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if let Some(pid) = name.strip_prefix("bhb-").and_then(|r| r.strip_suffix("-fw"))
                && dead(pid)
            {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = if let Some(rest) = name.strip_prefix("bulkhead-bench-fwsync-secrets-") {
            rest.to_string()
        } else if let Some(rest) = name.strip_prefix("bulkhead-bench-fwsync-") {
            rest.split('-').next().unwrap_or_default().to_string()
        } else if name.starts_with("bulkhead-") && name.contains("-ca-") && name.ends_with(".pem") {
            name.rsplit("-ca-").next().and_then(|r| r.split('-').next()).unwrap_or_default().to_string()
        } else {
            continue;
        };
        if dead(&pid) {
            let p = e.path();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}

/// A network namespace for the kernel-set firewalls, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("bhb-{}-fw", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every IPv4 address in a listing.
fn addresses(text: &str) -> BTreeSet<Ipv4Addr> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|w| w.parse().ok()).collect()
}

/// One firewall under test: its daemon-config entry and how to read its real state.
struct Rig {
    name: &'static str,
    /// The `firewalls:` entry of the daemon config (YAML flow mapping).
    firewall_yaml: String,
    /// Target kind of the AddressGroup.
    kind: &'static str,
    /// The IPv4 members of an owned object, by name (`bhfw-web`, `bhfw-quarantine`).
    observe: Box<dyn Fn(&str) -> BTreeSet<Ipv4Addr>>,
    faults: Option<Arc<dyn Fn(FaultConfig)>>,
    /// Only the calls phase (a variant that differs in a way only calls show).
    calls_only: bool,
    /// Kept alive for the rig's lifetime (emulator, namespace, files).
    _keep: Vec<Box<dyn std::any::Any>>,
}

/// The datastore folder and the daemon running on it.
struct Daemon {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    metrics: Metrics,
}

impl Daemon {
    fn start(rig: &Rig, initial_pods: usize) -> Daemon {
        Self::start_with(rig, initial_pods, "")
    }

    /// With `extra` appended to the daemon config (the quarantine block).
    fn start_with(rig: &Rig, initial_pods: usize, extra: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("bulkhead-bench-fwsync-{}-{}", std::process::id(), rig.name));
        let _ = std::fs::remove_dir_all(&dir);
        let ds = dir.join("datastore");
        std::fs::create_dir_all(&ds).expect("datastore dir");
        std::fs::write(ds.join("ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n").expect("ns");
        std::fs::write(
            ds.join("group.yaml"),
            format!("apiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {{name: web}}\nspec:\n  podSelector: app == 'web'\n  targets: [{{firewall: {FIREWALL}, kind: {}, name: web}}]\n", rig.kind),
        )
        .expect("group");
        for i in 0..initial_pods {
            write_pod(&ds, i, "web");
        }
        let cfg_path = dir.join("fw-sync.yaml");
        std::fs::write(&cfg_path, format!("firewalls:\n- {}\ndatastore: datastore\nreconcileInterval: 30s\n{extra}", rig.firewall_yaml)).expect("config");
        let config = DaemonConfig::load(&cfg_path).unwrap_or_else(|e| panic!("{}: {e}", rig.name));
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Metrics::default();
        let (stop2, metrics2) = (stop.clone(), metrics.clone());
        let thread = std::thread::spawn(move || {
            if let Err(e) = fw_sync::daemon::run_until(config, metrics2, &stop2) {
                panic!("fw-sync daemon: {e}");
            }
        });
        let d = Daemon { dir: ds, stop, thread: Some(thread), metrics };
        let want: BTreeSet<_> = (0..initial_pods).map(pod_ip).collect();
        wait_until(rig, &want).unwrap_or_else(|| panic!("{}: the initial sync never showed {initial_pods} members", rig.name));
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250) as u8 + 1)
}

fn write_pod(ds: &Path, i: usize, app: &str) {
    let text = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: shop, labels: {{app: {app}}}}}\nstatus: {{podIP: {}}}\n", pod_ip(i));
    let tmp = ds.join(format!(".p{i}.tmp"));
    std::fs::write(&tmp, text).expect("write pod");
    std::fs::rename(&tmp, ds.join(format!("p{i}.yaml"))).expect("rename pod");
}

fn delete_pod(ds: &Path, i: usize) {
    std::fs::remove_file(ds.join(format!("p{i}.yaml"))).expect("delete pod");
}

/// Polls the firewall until it holds exactly `want`; the time it took, or `None` after GIVE_UP.
fn wait_until(rig: &Rig, want: &BTreeSet<Ipv4Addr>) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if (rig.observe)("bhfw-web") == *want {
            return Some(start.elapsed());
        }
        if start.elapsed() > GIVE_UP {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Single events, each measured alone: alternately a new pod and the deletion of the previous one.
fn latency(rig: &Rig) {
    let d = Daemon::start(rig, 20);
    let mut members: BTreeSet<Ipv4Addr> = (0..20).map(pod_ip).collect();
    let mut samples = Vec::new();
    let mut failures = 0;
    for k in 0..LATENCY_EVENTS {
        let i = 1000 + k / 2;
        let t0 = Instant::now();
        if k % 2 == 0 {
            write_pod(&d.dir, i, "web");
            members.insert(pod_ip(i));
        } else {
            delete_pod(&d.dir, i);
            members.remove(&pod_ip(i));
        }
        match wait_until(rig, &members) {
            Some(_) => samples.push(t0.elapsed()),
            None => failures += 1,
        }
        std::thread::sleep(SPACING);
    }
    samples.sort();
    let p = |q| percentile(&samples, q).map_or("n/a".into(), ms);
    println!("fw_sync {}: pod event -> firewall updated over {} events: p50 {} ms, p99 {} ms, max {} ms, failures {failures}", rig.name, samples.len(), p(50.0), p(99.0), p(100.0));
    result(&format!("fw_sync_{}_event_to_updated_p50_ms", rig.name), p(50.0));
    result(&format!("fw_sync_{}_event_to_updated_p99_ms", rig.name), p(99.0));
    result(&format!("fw_sync_{}_event_failures", rig.name), failures);
}

/// A node's quarantine (the Quarantine file the agent writes when its detector isolates a
/// workload) to the firewall's quarantine group holding the address, and its withdrawal
/// (release) to the address gone: the perimeter's part of an isolation.
fn quarantine(rig: &Rig) {
    let d = Daemon::start_with(rig, 20, &format!("quarantine: {{name: quarantine, kinds: {{{FIREWALL}: {}}}}}\n", rig.kind));
    let node = d.dir.join(bulkhead_kube::quarantine::FOLDER).join("bench-node");
    std::fs::create_dir_all(&node).expect("quarantine folder");
    let holds = |want: &BTreeSet<Ipv4Addr>| {
        let start = Instant::now();
        while (rig.observe)("bhfw-quarantine") != *want {
            if start.elapsed() > GIVE_UP {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    };
    let mut samples = Vec::new();
    let mut failures = 0;
    for k in 0..QUARANTINE_EVENTS {
        // Quarantine one of the 20 pods, then release it.
        let pod = k / 2 % 20;
        let ip = pod_ip(pod);
        let file = node.join(bulkhead_kube::quarantine::file_name(&format!("shop/p{pod}")));
        let t0 = Instant::now();
        let want: BTreeSet<Ipv4Addr> = if k % 2 == 0 {
            let q = bulkhead_kube::quarantine::Quarantine::new("bench-node", &format!("shop/p{pod}"), "violation", vec!["isolated".into()], vec![ip.into()], bulkhead_kube::quarantine::now_unix_ms());
            bulkhead_kube::quarantine::write_atomic(&file, serde_yaml::to_string(&q).expect("serializes").as_bytes()).expect("write quarantine");
            [ip].into()
        } else {
            let _ = std::fs::remove_file(&file);
            BTreeSet::new()
        };
        if holds(&want) {
            samples.push(t0.elapsed());
        } else {
            failures += 1;
        }
        std::thread::sleep(SPACING);
    }
    samples.sort();
    let p = |q| percentile(&samples, q).map_or("n/a".into(), ms);
    println!("fw_sync {}: quarantine published / withdrawn -> firewall's quarantine group updated over {} events: p50 {} ms, p99 {} ms, max {} ms, failures {failures}", rig.name, samples.len(), p(50.0), p(99.0), p(100.0));
    result(&format!("fw_sync_{}_quarantine_to_updated_p50_ms", rig.name), p(50.0));
    result(&format!("fw_sync_{}_quarantine_to_updated_p99_ms", rig.name), p(99.0));
    result(&format!("fw_sync_{}_quarantine_failures", rig.name), failures);
}

/// API calls per 1,000 pod events, for a burst and for a steady stream.
fn calls(rig: &Rig) {
    let d = Daemon::start(rig, 0);
    // Burst: 1,000 creations back to back, then 1,000 deletions.
    let before = d.metrics.calls(FIREWALL);
    let mut want = BTreeSet::new();
    for i in 0..1000 {
        write_pod(&d.dir, i, "web");
        want.insert(pod_ip(i));
    }
    wait_until(rig, &want).unwrap_or_else(|| panic!("{}: burst of creations never applied", rig.name));
    for i in 0..1000 {
        delete_pod(&d.dir, i);
    }
    wait_until(rig, &BTreeSet::new()).unwrap_or_else(|| panic!("{}: burst of deletions never applied", rig.name));
    let burst = (d.metrics.calls(FIREWALL) - before) as f64 / 2.0;

    // Steady: 1,000 events at 200/s (each pod created, then deleted 10 events later).
    let before = d.metrics.calls(FIREWALL);
    let mut want = BTreeSet::new();
    let start = Instant::now();
    for k in 0..1000usize {
        let due = start + Duration::from_millis(5 * k as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if k % 2 == 0 {
            write_pod(&d.dir, 2000 + k / 2, "web");
            want.insert(pod_ip(2000 + k / 2));
        } else if k >= 11 {
            let i = 2000 + (k - 11) / 2;
            delete_pod(&d.dir, i);
            want.remove(&pod_ip(i));
        }
    }
    wait_until(rig, &want).unwrap_or_else(|| panic!("{}: steady stream never applied", rig.name));
    let steady = (d.metrics.calls(FIREWALL) - before) as f64;
    println!("fw_sync {}: API calls per 1,000 pod events: burst {burst:.0}, steady 200 events/s {steady:.0}", rig.name);
    result(&format!("fw_sync_{}_calls_per_1000_events_burst", rig.name), format!("{burst:.0}"));
    result(&format!("fw_sync_{}_calls_per_1000_events_steady200", rig.name), format!("{steady:.0}"));
}

/// 200 mixed events under 30% injected faults, then convergence.
fn faults(rig: &Rig) {
    let Some(set_faults) = &rig.faults else { return };
    let d = Daemon::start(rig, 50);
    let mut app: Vec<Option<&str>> = (0..50).map(|_| Some("web")).chain((50..100).map(|_| None)).collect();
    set_faults(FaultConfig { latency: Duration::ZERO, error_rate: 0.15, reset_rate: 0.15 });
    let mut rng = bulkhead_bench::Rng::new(42);
    let start = Instant::now();
    for k in 0..200u64 {
        std::thread::sleep((start + Duration::from_millis(10 * k)).saturating_duration_since(Instant::now()));
        let i = rng.below(100) as usize;
        match app[i] {
            None => {
                write_pod(&d.dir, i, "web");
                app[i] = Some("web");
            }
            Some("web") if rng.chance(50) => {
                write_pod(&d.dir, i, "other");
                app[i] = Some("other");
            }
            Some(_) => {
                delete_pod(&d.dir, i);
                app[i] = None;
            }
        }
    }
    let last = Instant::now();
    let want: BTreeSet<_> = app.iter().enumerate().filter(|(_, a)| **a == Some("web")).map(|(i, _)| pod_ip(i)).collect();
    let converged = wait_until(rig, &want);
    let got = (rig.observe)("bhfw-web");
    let lost = want.symmetric_difference(&got).count();
    set_faults(FaultConfig::default());
    let errors = d.metrics.errors(FIREWALL);
    println!(
        "fw_sync {}: 200 events under 30% faults (15% 5xx, 15% resets): converged {} after the last event, failed syncs {errors}, lost updates {lost}",
        rig.name,
        converged.map_or("NEVER".into(), |t| format!("{} ms", ms(t))),
    );
    result(&format!("fw_sync_{}_faults30_converge_ms", rig.name), converged.map_or("never".into(), ms));
    result(&format!("fw_sync_{}_faults30_failed_syncs", rig.name), errors);
    result(&format!("fw_sync_{}_faults30_lost_updates", rig.name), lost);
    let _ = last;
}

/// Runs a command inside a network namespace (entered between fork and exec, as fw-sync
/// does) and returns its stdout, empty when it fails (e.g. the set does not exist yet).
fn in_netns(ns: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    bulkhead_netns::pre_exec_enter(&mut cmd, bulkhead_netns::open(ns).expect("namespace file"));
    let out = cmd.output().expect("spawn in namespace");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kernel_rigs(ns: &Arc<Netns>) -> Vec<Rig> {
    let n1 = ns.0.clone();
    let n2 = ns.0.clone();
    vec![
        Rig {
            name: "ipset",
            firewall_yaml: format!("{{name: {FIREWALL}, type: ipset, netns: {}}}", ns.0),
            kind: "ipset",
            observe: Box::new(move |set| {
                let text = in_netns(&n1, &["ipset", "list", set]);
                text.split_once("Members:").map_or_else(BTreeSet::new, |(_, m)| addresses(m))
            }),
            faults: None,
            calls_only: false,
            _keep: vec![Box::new(ns.clone())],
        },
        Rig {
            name: "nftables",
            firewall_yaml: format!("{{name: {FIREWALL}, type: nftables, netns: {}, nftables: {{family: inet, table: bhb}}}}", ns.0),
            kind: "nftables-set",
            observe: Box::new(move |set| {
                let text = in_netns(&n2, &["nft", "list", "set", "inet", "bhb", set]);
                text.split_once("elements").map_or_else(BTreeSet::new, |(_, m)| addresses(m))
            }),
            faults: None,
            calls_only: false,
            _keep: vec![Box::new(ns.clone())],
        },
    ]
}

fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("secrets dir");
    let p = dir.join(name);
    std::fs::write(&p, value).expect("secret file");
    p
}

/// Removes the bench's secret files on drop.
struct TempFiles(PathBuf);

impl Drop for TempFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn emulator_rigs() -> Vec<Rig> {
    let secrets = std::env::temp_dir().join(format!("bulkhead-bench-fwsync-secrets-{}", std::process::id()));
    let mut rigs = Vec::new();
    // The emulator commits in 20 ms; a real PAN-OS takes seconds to minutes, during which
    // fw-sync coalesces changes: the `_commit1s` variant shows what that does to calls.
    for (name, kind, commit_ms) in [("panos_static", "panos-static-group", 20), ("panos_dynamic", "panos-dynamic-tag", 20), ("panos_static_commit1s", "panos-static-group", 1000)] {
        let opts = PanosOptions { api_key: "bench-key".into(), commit_duration: Duration::from_millis(commit_ms), ..PanosOptions::default() };
        let emu = Arc::new(PanosEmulator::start(opts).expect("PAN-OS emulator"));
        let key = secret_file(&secrets, &format!("{name}.key"), "bench-key");
        let e2 = emu.clone();
        let e3 = emu.clone();
        let static_group = kind == "panos-static-group";
        rigs.push(Rig {
            name,
            firewall_yaml: format!("{{name: {FIREWALL}, type: panos, panos: {{url: '{}', apiKey: {{file: {}}}, vsys: vsys1}}, tls: {{caFile: {}}}}}", emu.url(), key.display(), emu.ca_file().display()),
            kind,
            observe: Box::new(move |g| real(if static_group { e2.running_static_group("vsys1", g).unwrap_or_default() } else { e2.registered_ips(g) })),
            faults: Some(Arc::new(move |f| set(e3.faults(), f))),
            calls_only: commit_ms != 20,
            _keep: vec![Box::new(emu), Box::new(TempFiles(secrets.clone()))],
        });
    }
    // FortiOS 7.2.5 so both target kinds exist: address groups (one request per new
    // address object) and push threat feeds (one request per batch).
    for (name, kind) in [("fortios_addrgrp", "fortios-addrgrp"), ("fortios_feed", "fortios-threat-feed")] {
        let opts = FortiosOptions { token: "bench-token".into(), vdoms: vec!["root".into()], version: "v7.2.5".into(), ..FortiosOptions::default() };
        let emu = Arc::new(FortiosEmulator::start(opts).expect("FortiOS emulator"));
        let token = secret_file(&secrets, &format!("{name}.token"), "bench-token");
        let (e2, e3) = (emu.clone(), emu.clone());
        let feed = kind == "fortios-threat-feed";
        rigs.push(Rig {
            name,
            firewall_yaml: format!("{{name: {FIREWALL}, type: fortios, fortios: {{url: '{}', token: {{file: {}}}, vdom: root}}, tls: {{caFile: {}}}}}", emu.url(), token.display(), emu.ca_file().display()),
            kind,
            observe: Box::new(move |g| real(if feed { e2.feed_entries("root", g).unwrap_or_default() } else { e2.group_members("root", g).unwrap_or_default() })),
            faults: Some(Arc::new(move |f| set(e3.faults(), f))),
            calls_only: false,
            _keep: vec![Box::new(emu), Box::new(TempFiles(secrets.clone()))],
        });
    }
    rigs
}

/// IPv4 members (the emulators report both families; this bench's pods are IPv4) without the
/// placeholder (255.255.255.255) that PAN-OS and FortiOS groups hold while empty, since both
/// refuse an empty group.
fn real(members: BTreeSet<std::net::IpAddr>) -> BTreeSet<Ipv4Addr> {
    members.into_iter().filter_map(|ip| match ip {
        std::net::IpAddr::V4(a) if a != Ipv4Addr::BROADCAST => Some(a),
        _ => None,
    }).collect()
}

fn set(faults: &Faults, f: FaultConfig) {
    faults.set(f);
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run passes nothing: measure only under cargo bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!("fw_sync: run with `cargo bench -p bulkhead-bench --bench fw_sync`");
        return;
    }
    // RUST_LOG=fw_sync=info shows the daemon's syncs, for a figure that needs explaining.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    }
    sweep_dead_runs();
    let only = std::env::var("FW_SYNC_BENCH_ONLY").ok();
    // FW_SYNC_BENCH_PHASES=latency,quarantine,calls,faults (default: all).
    let phases = std::env::var("FW_SYNC_BENCH_PHASES").ok();
    let mut rigs = Vec::new();
    if is_root() {
        let ns = Arc::new(Netns::new());
        rigs.extend(kernel_rigs(&ns));
    } else {
        println!("RESULT fw_sync_kernel_skipped_not_root=1 (ipset/nftables need root; the emulator backends are measured)");
    }
    rigs.extend(emulator_rigs());
    for rig in &rigs {
        if only.as_deref().is_some_and(|o| !rig.name.starts_with(o)) {
            continue;
        }
        let run = |phase: &str| phases.as_deref().is_none_or(|p| p.split(',').any(|x| x == phase));
        if !rig.calls_only && run("latency") {
            latency(rig);
        }
        if !rig.calls_only && run("quarantine") {
            quarantine(rig);
        }
        if run("calls") {
            calls(rig);
        }
        if !rig.calls_only && run("faults") {
            faults(rig);
        }
    }
}
