//! Isolation carried to the perimeter, with real packets (root): a lab pod reached from an
//! external host through a firewall namespace (the lab's outside namespace, routing for
//! `ext`), whose iptables drop what is in the ipset `bhfw-quarantine` that the real fw-sync
//! daemon keeps from the agents' Quarantines in the shared datastore folder.
//!
//! ```text
//!  ext (10.251.0.2) -- firewall = lab outside ns (FORWARD: DROP src/dst in bhfw-quarantine) -- node -- pod q/web
//! ```
//!
//! The pod learns, is switched to protect, runs a binary it never ran: the kernel kills it
//! and isolates the pod; the agent publishes the Quarantine; fw-sync puts the pod's address
//! into the quarantine set, and the external client's SYNs are dropped *at the firewall*
//! (its DROP rule counts them; before the quarantine it counted nothing). The agent reports a
//! `quarantine-perimeter` event naming the firewall, and a second firewall that is down
//! (a PAN-OS address where nothing listens) as retrying: it never delayed the isolation.
//! Release takes the address out of the set and the external client through again.

use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bulkhead_e2e::{LabAgent, spawn_in_pod};
use bulkhead_lab::Protocol;
use bulkhead_lab::agent::detect::{Actions, Mode, WorkloadSpec};
use bulkhead_lab::probe::{ProbeJob, probe_job};

const TOPOLOGY: &str = "
kind: Topology
name: perimeter
namespaces:
  - name: q
    labels: {kubernetes.io/metadata.name: q}
pods:
  - {namespace: q, name: web, ip: 10.243.0.10, labels: {app: web}}
ports:
  - {port: 8080, protocol: TCP}
";
const WEB: &str = "q/web";
const EXT_NET: &str = "10.251.0.0/24";
const EXT_GW: &str = "10.251.0.1";
const EXT_IP: &str = "10.251.0.2";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn in_ns(ns: &str, argv: &[&str]) -> std::process::Output {
    Command::new("ip").args(["netns", "exec", ns]).args(argv).output().unwrap_or_else(|e| panic!("ip netns exec {ns} {argv:?}: {e}"))
}

fn must(ns: &str, argv: &[&str]) -> String {
    let out = in_ns(ns, argv);
    assert!(out.status.success(), "{argv:?} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The external host's namespace, deleted on drop (its veth goes with it).
struct Ext(String);
impl Drop for Ext {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The fw-sync daemon on a thread, stopped on drop.
struct FwSync(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);
impl Drop for FwSync {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

/// Packets the firewall's quarantine DROP rules have counted (both directions).
fn dropped_at_firewall(fw: &str) -> u64 {
    must(fw, &["iptables", "-w", "-nvx", "-L", "FORWARD"])
        .lines()
        .filter(|l| l.contains("bhfw-quarantine") && l.contains("DROP"))
        .map(|l| l.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or_else(|| panic!("counter in {l:?}")))
        .sum()
}

fn in_quarantine_set(fw: &str, addr: &str) -> bool {
    in_ns(fw, &["ipset", "test", "bhfw-quarantine", addr]).status.success()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

#[test]
fn an_isolated_pod_is_quarantined_on_the_perimeter_firewall_with_real_packets() {
    let lab = LabAgent::new(TOPOLOGY, "perimeter.yaml", true);
    let id = lab.lab.id().to_string();
    let fw = lab.lab.outside().netns.clone();
    let node = lab.lab.node_netns().to_string();
    let web = lab.lab.pods()[0].clone();

    // The external host behind the firewall namespace.
    let ext = Ext(format!("bhq-{id}-ext"));
    ip(&["netns", "add", &ext.0]);
    let fw_if = format!("bhq{id}f");
    ip(&["-n", &fw, "link", "add", &fw_if, "type", "veth", "peer", "name", "eth0", "netns", &ext.0]);
    ip(&["-n", &fw, "addr", "add", &format!("{EXT_GW}/24"), "dev", &fw_if]);
    ip(&["-n", &fw, "link", "set", &fw_if, "up"]);
    ip(&["-n", &ext.0, "addr", "add", &format!("{EXT_IP}/24"), "dev", "eth0"]);
    ip(&["-n", &ext.0, "link", "set", "eth0", "up"]);
    ip(&["-n", &ext.0, "link", "set", "lo", "up"]);
    ip(&["-n", &ext.0, "route", "add", "default", "via", EXT_GW]);
    must(&fw, &["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"]);
    ip(&["-n", &node, "route", "add", EXT_NET, "via", &bulkhead_lab::lab::OUTSIDE_IP.to_string()]);
    let ext_reaches = || probe_job(&ProbeJob { from_netns: ext.0.clone(), to_ip: IpAddr::V4(web.ip), port: 8080, protocol: Protocol::Tcp }, Duration::from_millis(500));
    assert!(ext_reaches(), "the external host reaches the pod through the firewall before anything");

    // fw-sync: the firewall namespace's ipset, and a PAN-OS that is down.
    let key = lab.tmp.join("pa.key");
    std::fs::write(&key, "not-a-real-key").expect("key file");
    let config = format!(
        "firewalls:
  - {{name: edge, type: ipset, netns: {fw}}}
  - name: pa
    type: panos
    panos: {{url: 'https://127.0.0.1:9', apiKey: {{file: {key}}}, vsys: vsys1}}
datastore: {ds}
reconcileInterval: 30s
quarantine: {{name: quarantine}}
",
        key = key.display(),
        ds = lab.lab.datastore_dir().display()
    );
    let config = fw_sync::config::DaemonConfig::parse("perimeter fw-sync.yaml", &config, &lab.tmp).expect("fw-sync config");
    let stop = Arc::new(AtomicBool::new(false));
    let daemon = {
        let stop = stop.clone();
        FwSync(stop.clone(), Some(std::thread::spawn(move || fw_sync::daemon::run_until(config, fw_sync::metrics::Metrics::default(), &stop).expect("fw-sync runs"))))
    };
    // The empty quarantine set exists once fw-sync has reconciled; the firewall's rules use it.
    let set_exists = || in_ns(&fw, &["ipset", "list", "-n", "bhfw-quarantine"]).status.success();
    wait_for("fw-sync to create the empty quarantine set", Duration::from_secs(10), set_exists);
    for dir in ["src", "dst"] {
        must(&fw, &["iptables", "-w", "-A", "FORWARD", "-m", "set", "--match-set", "bhfw-quarantine", dir, "-j", "DROP"]);
    }
    assert!(ext_reaches(), "an empty quarantine group lets the external host through");
    assert_eq!(dropped_at_firewall(&fw), 0, "nothing quarantined yet");

    // Learn, protect, then a binary the pod never ran: killed and isolated in the kernel.
    let agent = lab.agent();
    agent
        .detector_monitor(WorkloadSpec {
            name: WEB.into(),
            cgroup: web.cgroup.clone().expect("cgroup"),
            interface: Some(web.host_veth.clone()),
            mode: Mode::Learn,
            actions: Actions { kill: true, isolate: true, ..Actions::default() },
            syscalls: false,
            allowed_execs: vec![],
        })
        .expect("monitor");
    let det = agent.detector();
    let mut t = spawn_in_pod(&web, &["/bin/true"]);
    t.wait().expect("true");
    det.wait_event(Duration::from_secs(3), |e| e.kind == "exec" && e.path == "/bin/true").unwrap_or_else(|| panic!("learned nothing: {:?}", det.events()));
    agent.detector_set_mode(WEB, Mode::Protect).expect("protect");
    let mut bad = spawn_in_pod(&web, &["/bin/ls", "/"]);
    let _ = bad.wait();
    let v = det.wait_event(Duration::from_secs(3), |e| e.is_violation()).unwrap_or_else(|| panic!("no violation: {:?}", det.events()));
    assert!(v.kernel_actions.contains(&"isolated"), "the kernel isolated the pod: {v:?}");
    let seen_at = bulkhead_kube::quarantine::now_unix_ms();

    let took = wait_for("the pod's address in the firewall's quarantine set", Duration::from_secs(5), || in_quarantine_set(&fw, &web.ip.to_string()));
    eprintln!("violation to the firewall's quarantine set: {took:?} (polled from the test)");
    let file = lab.lab.datastore_dir().join("bulkhead-quarantine").join(lab.lab.pin_dir().file_name().expect("instance")).join("q.web.yaml");
    let q: bulkhead_kube::quarantine::Quarantine = serde_yaml::from_str(&std::fs::read_to_string(&file).expect("quarantine file")).expect("quarantine parses");
    assert_eq!(q.spec.addresses, vec![IpAddr::V4(web.ip)], "{q:?}");
    assert_eq!((q.spec.reason.as_str(), q.spec.workload.as_str()), ("violation", WEB));
    // Published with its addresses by the finding itself, not by the next second's reconcile
    // (which would have written a later one).
    assert!(q.spec.since_unix_ms <= seen_at, "the quarantine was written after the event ({} > {seen_at})", q.spec.since_unix_ms);

    // Real packets: the external client's SYNs stop at the firewall now.
    let before = dropped_at_firewall(&fw);
    assert!(!ext_reaches(), "a quarantined pod is not reachable from outside");
    let after = dropped_at_firewall(&fw);
    assert!(after > before, "the firewall itself dropped the external client's packets ({before} -> {after})");

    // The alert names the firewall that holds the address, and the one that is down.
    let ev = det
        .wait_event(Duration::from_secs(5), |e| e.kind == "quarantine-perimeter" && e.firewalls.iter().any(|f| f == "edge"))
        .unwrap_or_else(|| panic!("no quarantine-perimeter event naming edge: {:?}", det.events()));
    assert_eq!(ev.workload.as_deref(), Some(WEB));
    eprintln!("perimeter event: {:?}", ev.detail);
    let down = det
        .wait_event(Duration::from_secs(10), |e| e.kind == "quarantine-perimeter" && e.detail.as_deref().is_some_and(|d| d.contains("not yet on pa")))
        .unwrap_or_else(|| panic!("the firewall that is down is not reported: {:?}", det.events()));
    assert!(down.firewalls.is_empty() || !down.firewalls.contains(&"pa".to_string()), "{down:?}");
    let status: bulkhead_kube::quarantine::QuarantineStatus =
        serde_json::from_slice(&std::fs::read(bulkhead_kube::quarantine::status_path(&file)).expect("status file")).expect("status parses");
    assert!(status.firewalls["edge"].applied_unix_ms.is_some() && status.firewalls["pa"].applied_unix_ms.is_none(), "{status:?}");

    // Release: out of the set, through the firewall again.
    agent.detector_release(WEB).expect("release");
    wait_for("the address to leave the quarantine set", Duration::from_secs(5), || !in_quarantine_set(&fw, &web.ip.to_string()));
    assert!(!file.exists(), "the Quarantine is withdrawn on release");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ext_reaches() {
        assert!(Instant::now() < deadline, "the released pod is not reachable from outside again");
    }
    drop(daemon);
}
