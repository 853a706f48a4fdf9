//! The detector's network behaviour, shared profiles and DetectorPolicy end to end (root):
//! a DetectorPolicy file in the watched datastore puts two client replicas (same labels but
//! pod-template-hash) in learn mode; one replica learns a benign client (nc + TCP to the
//! server); the policy is rewritten to protect; then
//! (c) both replicas keep working for a few seconds with no action (the second judged by the
//!     profile the first learned: its exec of nc and its flows pass),
//! (a) an outbound connection to a peer never seen isolates the pod (traffic stops, the
//!     DNS allow-list of the clients' policy passes, over IPv4 and IPv6 (the pods are
//!     dual-stack; the list has an entry per family), and only for them: a pod of another
//!     policy isolated meanwhile does not get it; latency measured from the flow's first
//!     packet in TC),
//! (b) a port scan of the server isolates the pod (new ports alone only alert),
//! (d) profile export -> add an executable -> import: that executable runs under protect
//!     without action; a bad file is rejected naming the field and changes nothing.
//!
//! And a network finding made while a sync is held for 30 seconds in its datastore read is
//! isolated at once, and the agent answers requests meanwhile: detector decisions and the
//! agent thread do not wait for policy work.
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bulkhead_lab::agent::AgentError;
use bulkhead_lab::agent::datastore::{Datastore, FileDatastore, Notify};
use bulkhead_lab::agent::detect::policy::DetectorInput;

use bulkhead_e2e::{LabAgent, run_bulkhead, spawn_in_pod};
use bulkhead_lab::agent::detect::{DetectorEvent, Mode};
use bulkhead_lab::probe::probe;
use bulkhead_lab::{PodNetns, Protocol};

const TOPOLOGY: &str = "
kind: Topology
name: detnet
namespaces:
  - name: dn
    labels: {kubernetes.io/metadata.name: dn}
pods:
  - {namespace: dn, name: client-a, ip: 10.244.0.10, ip6: 'fd00:244::10', labels: {app: client, pod-template-hash: aaa}}
  - {namespace: dn, name: client-b, ip: 10.244.0.11, ip6: 'fd00:244::11', labels: {app: client, pod-template-hash: bbb}}
  - {namespace: dn, name: server, ip: 10.244.0.12, ip6: 'fd00:244::12', labels: {app: server}}
  - {namespace: dn, name: stranger, ip: 10.244.0.13, ip6: 'fd00:244::13', labels: {app: stranger}}
ports:
  - {port: 8080, protocol: TCP}
  - {port: 53, protocol: UDP}
";
const PROFILE: &str = "dn/app=client";
const A: &str = "dn/client-a";
const B: &str = "dn/client-b";
const T: Duration = Duration::from_millis(700);

bulkhead_e2e::lab_agent_fixture!(
    /// The shared lab-with-agent fixture, with this file's scenario helpers.
    Fixture
);

impl Fixture {
    fn new() -> Fixture {
        Fixture(LabAgent::new(TOPOLOGY, "detnet.yaml", true))
    }
    /// The agent reads the datastore through `gate`.
    fn gated(gate: Arc<Gate>) -> Fixture {
        Fixture(LabAgent::with_store(TOPOLOGY, "detnet.yaml", true, |inner| Box::new(GatedStore { inner, gate })))
    }
    fn pod(&self, name: &str) -> &PodNetns {
        self.lab.pods().iter().find(|p| p.key.ends_with(name)).unwrap_or_else(|| panic!("no pod {name}"))
    }
    fn instance(&self) -> String {
        self.lab.pin_dir().file_name().unwrap().to_string_lossy().into_owned()
    }

    /// Writes the DetectorPolicy into the watched datastore (atomically) and waits until both
    /// client replicas are monitored in `mode`.
    fn policy(&self, mode: &str) {
        let server = self.pod("server").ip;
        let server6 = self.pod("server").ip6.expect("the server is dual-stack");
        let text = format!(
            "apiVersion: bulkhead.io/v1alpha1
kind: DetectorPolicy
metadata: {{name: clients, namespace: dn}}
spec:
  selector: app == 'client'
  mode: {mode}
  syscalls: true
  actions: {{exec: [kill, isolate], newPeer: [isolate], newPort: [alert], portScan: [isolate]}}
  portScan: {{distinctPorts: 8, windowMs: 5000}}
  isolationAllow: [{{address: {server}, port: 53, protocol: UDP}}, {{address: '{server6}', port: 53, protocol: UDP}}]
---
apiVersion: bulkhead.io/v1alpha1
kind: DetectorPolicy
metadata: {{name: strangers, namespace: dn}}
spec:
  selector: app == 'stranger'
  mode: learn
"
        );
        let dir = self.lab.datastore_dir();
        std::fs::write(dir.join(".detector-policy.tmp"), text).expect("write policy");
        std::fs::rename(dir.join(".detector-policy.tmp"), dir.join("detector-policy.yaml")).expect("rename policy");
        let want = if mode == "protect" { Mode::Protect } else { Mode::Learn };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = self.agent().detector_status().expect("status");
            let ok = [A, B].iter().all(|n| st.iter().any(|w| &w.name == n && w.mode == want && w.profile == PROFILE));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the DetectorPolicy ({mode}) was not applied to both replicas: {st:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn reaches(&self, from: &str, to: &str, port: u16, proto: Protocol) -> bool {
        probe(self.pod(from), self.pod(to).ip, port, proto, T)
    }

    /// The benign client: nc (exec) and a TCP probe to the server.
    fn benign(&self, from: &str) {
        let server = self.pod("server").ip.to_string();
        let mut nc = spawn_in_pod(self.pod(from), &["/usr/bin/nc", "-z", "-w", "1", &server, "8080"]);
        let st = nc.wait().expect("nc");
        assert!(st.success(), "benign nc from {from} failed: {st:?} (signal {:?})", st.signal());
        assert!(self.reaches(from, "server", 8080, Protocol::Tcp), "benign TCP from {from} to the server failed");
    }

    /// The stranger pod monitored through the API (no DetectorPolicy), default actions.
    fn stranger_spec(&self, mode: Mode) -> bulkhead_lab::agent::detect::WorkloadSpec {
        let p = self.pod("stranger");
        bulkhead_lab::agent::detect::WorkloadSpec {
            name: "dn/stranger".into(),
            cgroup: p.cgroup.clone().expect("cgroup"),
            interface: Some(p.host_veth.clone()),
            mode,
            actions: bulkhead_lab::agent::detect::Actions::default(),
            syscalls: false,
            allowed_execs: vec![],
        }
    }

    fn isolated(&self, name: &str) -> bool {
        self.agent().detector_status().expect("status").iter().any(|w| w.name == name && w.isolated)
    }

    fn findings(&self) -> Vec<DetectorEvent> {
        self.agent().detector().events().into_iter().filter(|e| e.is_network() || e.is_violation()).collect()
    }
}

fn wait_exit(mut c: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = c.try_wait().expect("wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("process did not end within 5 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn replicas_share_a_profile_and_network_deviations_isolate() {
    let f = Fixture::new();
    let det = f.agent().detector();
    f.policy("learn");

    // Learn: only replica A runs the benign client.
    f.benign("client-a");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let p = det.profile(PROFILE);
        let learned = p.as_ref().is_some_and(|p| {
            p.execs.contains("/usr/bin/nc")
                && p.network.egress.iter().any(|e| e.workload.as_deref() == Some("dn/app=server") && e.port == 8080)
        });
        if learned {
            break;
        }
        assert!(Instant::now() < deadline, "learn mode did not record nc and the server peer: {p:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    f.policy("protect");
    let st = f.agent().detector_status().unwrap();
    let clients = || st.iter().filter(|w| w.name == A || w.name == B);
    assert!(clients().count() == 2 && clients().all(|w| w.profile == PROFILE && w.learned_execs >= 1 && w.learned_peers >= 1), "{st:?}");

    // (c) Benign traffic under protect, from both replicas (B never learned anything itself).
    let before = f.findings().len();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        f.benign("client-a");
        f.benign("client-b");
    }
    assert_eq!(f.findings().len(), before, "benign run raised findings: {:?}", &f.findings()[before..]);
    assert!(!f.isolated(A) && !f.isolated(B), "benign run isolated a replica");

    // (a) Replica B connects to a peer it (and A) never talked to.
    let _ = f.reaches("client-b", "stranger", 8080, Protocol::Tcp);
    let ev = det
        .wait_event(Duration::from_secs(3), |e| e.kind == "new-peer" && e.workload.as_deref() == Some(B))
        .unwrap_or_else(|| panic!("no new-peer finding: {:?}", det.events()));
    assert_eq!(ev.peer.as_deref(), Some("dn/app=stranger"), "{ev:?}");
    assert!(ev.user_actions.iter().any(|a| a == "isolated"), "{ev:?}");
    let latency = ev.isolate_ns.expect("isolation latency recorded");
    println!("new peer: isolated {} us after the flow's first packet in TC", latency / 1000);
    assert!(f.isolated(B), "status does not show B isolated");
    assert!(!f.reaches("client-b", "server", 8080, Protocol::Tcp), "isolated B still reaches the server");
    assert!(!f.reaches("client-b", "stranger", 8080, Protocol::Tcp), "isolated B still reaches the stranger");
    assert!(f.reaches("client-b", "server", 53, Protocol::Udp), "the isolation allow-list (UDP 53 to the server) is blocked");
    // The same over IPv6: the allow-list's IPv6 entry passes, the rest of IPv6 is cut too.
    let server6 = f.pod("server").ip6.expect("dual-stack server");
    assert!(probe(f.pod("client-b"), server6, 53, Protocol::Udp, T), "the isolation allow-list's IPv6 entry (UDP 53 to the server) is blocked");
    assert!(!probe(f.pod("client-b"), server6, 8080, Protocol::Tcp, T), "isolated B still reaches the server over IPv6");
    assert!(!probe(f.pod("client-b"), f.pod("stranger").ip6.expect("dual-stack"), 53, Protocol::Udp, T), "the IPv6 entry opened another address");
    // That allow-list is the clients' policy's: the stranger, isolated under its own policy
    // (no allow-list), does not get it.
    f.agent().detector_isolate("dn/stranger").expect("isolate the stranger");
    assert!(!f.reaches("stranger", "server", 53, Protocol::Udp), "the clients' isolation allow-list applies to the stranger too");
    f.agent().detector_release("dn/stranger").expect("release the stranger");
    assert!(f.reaches("stranger", "server", 53, Protocol::Udp), "the stranger not released");
    assert!(f.reaches("client-a", "server", 8080, Protocol::Tcp), "replica A suffered from B's isolation");
    f.agent().detector_release(B).expect("release B");
    assert!(f.reaches("client-b", "server", 8080, Protocol::Tcp), "B not released");

    // (b) Replica A scans the server: new ports only alert, the scan isolates.
    let server = f.pod("server").ip;
    let mut scanned = 0;
    for port in 9000..9020u16 {
        let _ = probe(f.pod("client-a"), server, port, Protocol::Tcp, Duration::from_millis(200));
        scanned += 1;
        if det.events().iter().any(|e| e.kind == "port-scan" && e.workload.as_deref() == Some(A)) {
            break;
        }
    }
    let ev = det
        .wait_event(Duration::from_secs(3), |e| e.kind == "port-scan" && e.workload.as_deref() == Some(A))
        .unwrap_or_else(|| panic!("no port-scan finding after {scanned} ports: {:?}", det.events()));
    assert!(ev.user_actions.iter().any(|a| a == "isolated"), "{ev:?}");
    let alerts = det.events().iter().filter(|e| e.kind == "new-port" && e.workload.as_deref() == Some(A)).count();
    assert!(alerts >= 7, "new ports before the scan are alerts: {alerts}");
    assert!(
        det.events().iter().filter(|e| e.kind == "new-port").all(|e| e.user_actions.is_empty()),
        "new-port is alert-only in this policy"
    );
    println!("port scan: detected after {scanned} ports; isolated {} us after the flow's first packet", ev.isolate_ns.unwrap_or(0) / 1000);
    assert!(!f.reaches("client-a", "server", 8080, Protocol::Tcp), "A still reaches the server after the scan");
    f.agent().detector_release(A).expect("release A");

    // (d) Export, add an executable, import: it runs under protect without action.
    let tool = f.tmp.join("tool");
    std::fs::copy("/bin/true", &tool).expect("copy tool");
    let tool_s = tool.to_str().unwrap();
    let st = wait_exit(spawn_in_pod(f.pod("client-b"), &[tool_s]));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "control: the tool outside the profile must be killed");
    det.wait_event(Duration::from_secs(2), |e| e.is_violation() && e.path == tool_s).expect("violation for the tool");
    f.agent().detector_release(B).expect("release B after the control");
    let inst = f.instance();
    let out = run_bulkhead(&["detector", "profile", "export", PROFILE, "--instance", &inst]);
    assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).expect("utf-8");
    assert!(yaml.contains("/usr/bin/nc") && yaml.contains("dn/app=server"), "export:\n{yaml}");
    // A broken edit is rejected, naming the field, and changes nothing.
    let bad = f.tmp.join("bad.yaml");
    std::fs::write(&bad, yaml.replace("execs:\n", "execs:\n- relative/tool\n")).unwrap();
    let out = run_bulkhead(&["detector", "profile", "import", bad.to_str().unwrap(), "--instance", &inst]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("execs["), "bad import: {err}");
    let good = f.tmp.join("good.yaml");
    std::fs::write(&good, yaml.replace("execs:\n", &format!("execs:\n- {tool_s}\n"))).unwrap();
    let out = run_bulkhead(&["detector", "profile", "import", good.to_str().unwrap(), "--instance", &inst, "--json"]);
    assert!(out.status.success(), "import: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("import JSON");
    assert_eq!(r["report"]["profile"], PROFILE, "{r}");
    let n_before = det.events().iter().filter(|e| e.is_violation()).count();
    for pod in ["client-a", "client-b"] {
        let st = wait_exit(spawn_in_pod(f.pod(pod), &[tool_s]));
        assert!(st.success(), "imported executable did not run in {pod}: {st:?} (signal {:?})", st.signal());
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(det.events().iter().filter(|e| e.is_violation()).count(), n_before, "imported executable raised a violation");
    assert!(!f.isolated(A) && !f.isolated(B), "imported executable isolated a replica");

    // The CLI shows the shared profile and the findings.
    let out = run_bulkhead(&["detector", "profile", "show", PROFILE, "--instance", &inst, "--json"]);
    assert!(out.status.success(), "show: {}", String::from_utf8_lossy(&out.stderr));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("show JSON");
    assert!(p["execs"].as_array().unwrap().iter().any(|e| e == tool_s), "{p}");
    let out = run_bulkhead(&["detector", "events", "--instance", &inst]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("new-peer") && l.contains(B)), "events:\n{text}");
    assert!(text.lines().any(|l| l.starts_with("port-scan") && l.contains(A)), "events:\n{text}");
    let out = run_bulkhead(&["detector", "status", "--instance", &inst, "--json"]);
    assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(st["counters"]["flow_events_dropped"], 0, "flow ring drops: {st}");
    assert!(st["counters"]["flow_events_sent"].as_u64().unwrap_or(0) > 10, "{st}");
    let wl = st["workloads"].as_array().expect("workloads");
    let clients: Vec<_> = wl.iter().filter(|w| w["name"] == A || w["name"] == B).collect();
    assert!(clients.len() == 2 && clients.iter().all(|w| w["profile"] == PROFILE && w["policy"] == "dn/clients"), "{st}");
    assert!(wl.iter().any(|w| w["name"] == "dn/stranger" && w["policy"] == "dn/strangers"), "{st}");
}

#[test]
fn a_bad_detector_policy_changes_nothing() {
    let f = Fixture::new();
    f.policy("learn");
    let dir = f.lab.datastore_dir();
    std::fs::write(
        dir.join("bad-detector.yaml"),
        "apiVersion: bulkhead.io/v1alpha1\nkind: DetectorPolicy\nmetadata: {name: bad, namespace: dn}\nspec:\n  selector: app == 'server'\n  mode: protekt\n",
    )
    .unwrap();
    let report = f.agent().sync_now().expect("a bad file is rejected on its own; the sync goes on");
    let msg = report.rejected.join("\n");
    assert!(msg.contains("bad-detector.yaml") && msg.contains("spec.mode"), "rejection names file and field: {msg}");
    let st = f.agent().detector_status().unwrap();
    assert!(st.iter().all(|w| w.name != "dn/server"), "half-applied: {st:?}");
    assert_eq!(st.iter().filter(|w| (w.name == A || w.name == B) && w.mode == Mode::Learn).count(), 2, "{st:?}");
    // Two policies selecting one pod: rejected too.
    std::fs::write(
        dir.join("bad-detector.yaml"),
        "apiVersion: bulkhead.io/v1alpha1\nkind: DetectorPolicy\nmetadata: {name: overlap, namespace: dn}\nspec:\n  selector: app == 'client'\n  mode: protect\n",
    )
    .unwrap();
    let msg = f.agent().sync_now().expect_err("overlap must be rejected").to_string();
    assert!(msg.contains("one policy per pod"), "{msg}");
    assert!(f.agent().detector_status().unwrap().iter().all(|w| w.mode == Mode::Learn), "overlap half-applied");
}

#[test]
fn egress_far_above_the_learned_peak_is_alerted_from_the_kernel_byte_counter() {
    use std::io::{Read, Write};
    let f = Fixture::new();
    let client = f.pod("stranger");
    let server = f.pod("server").ip;
    let spec = |mode: Mode| f.stranger_spec(mode);
    // Learn a quiet peer: a few small exchanges, sampled by a few one-second ticks.
    f.agent().detector_monitor(spec(Mode::Learn)).expect("learn");
    for _ in 0..3 {
        assert!(f.reaches("stranger", "server", 8080, Protocol::Tcp), "benign TCP while learning");
        std::thread::sleep(Duration::from_millis(700));
    }
    f.agent().detector_monitor(spec(Mode::Monitor)).expect("monitor");
    std::thread::sleep(Duration::from_millis(1200));
    let volume_alerts = || f.agent().detector().events().iter().filter(|e| e.kind == "egress-volume" && e.workload.as_deref() == Some("dn/stranger")).count();
    assert_eq!(volume_alerts(), 0, "no volume alert before the burst");
    // A burst far above the learned peak and above the 1 MiB/s floor: 48 MiB to the echo
    // server (and back), through one connection the profile knows.
    bulkhead_lab::netns::in_netns(&client.netns, move || {
        let mut s = std::net::TcpStream::connect_timeout(&(server, 8080).into(), T).expect("connect to the echo server");
        let mut r = s.try_clone().expect("clone");
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0usize;
            while n < 48 << 20 {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            n
        });
        let chunk = vec![7u8; 1 << 16];
        for _ in 0..768 {
            s.write_all(&chunk).expect("send");
        }
        assert_eq!(reader.join().expect("reader"), 48 << 20, "the echo came back whole");
    })
    .expect("client netns");
    let deadline = Instant::now() + Duration::from_secs(4);
    while volume_alerts() == 0 {
        assert!(Instant::now() < deadline, "no egress-volume alert after a 48 MiB burst: {:?}", f.agent().detector().events());
        std::thread::sleep(Duration::from_millis(100));
    }
    let ev = f.agent().detector().events().into_iter().find(|e| e.kind == "egress-volume").expect("alert");
    assert!(ev.detail.as_deref().is_some_and(|d| d.contains("bytes/s outbound")), "{ev:?}");
    f.agent().detector_unmonitor("dn/stranger").expect("unmonitor");
}

/// While closed, every datastore load waits (up to 30 s) until it opens: the agent thread is
/// then as busy as in a 30-second compile, since loading and compiling both run inside the
/// agent's sync, on the thread that writes the maps.
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    /// A load is waiting at the gate.
    held: AtomicBool,
    /// Change checks the agent made (each sync it starts makes one).
    polls: std::sync::atomic::AtomicUsize,
}

struct GatedStore {
    inner: FileDatastore,
    gate: Arc<Gate>,
}

impl Datastore for GatedStore {
    fn load(&mut self) -> Result<policy_compiler::model::Model, AgentError> {
        let t0 = Instant::now();
        if self.gate.closed.load(Ordering::SeqCst) {
            self.gate.held.store(true, Ordering::SeqCst);
            while self.gate.closed.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.gate.held.store(false, Ordering::SeqCst);
        }
        self.inner.load()
    }
    fn poll_changed(&mut self) -> bool {
        self.gate.polls.fetch_add(1, Ordering::SeqCst);
        self.inner.poll_changed()
    }
    fn describe(&self) -> String {
        format!("gated {}", self.inner.describe())
    }
    fn load_detector(&self) -> Result<DetectorInput, AgentError> {
        self.inner.load_detector()
    }
    fn rejected(&self) -> Vec<String> {
        self.inner.rejected()
    }
    fn subscribe(&mut self, notify: Notify) -> Result<(), AgentError> {
        self.inner.subscribe(notify)
    }
}

#[test]
fn a_finding_during_a_30_second_sync_is_isolated_at_once_and_the_agent_answers() {
    let gate = Arc::new(Gate::default());
    let f = Fixture::gated(gate.clone());
    let det = f.agent().detector();
    // An idle agent starts no syncs: nothing changed, so nothing is read or compiled.
    let before = gate.polls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    let idle_polls = gate.polls.load(Ordering::SeqCst) - before;
    assert!(idle_polls <= 1, "an idle agent checked its datastore {idle_polls} times in 0.5 s");
    f.policy("learn");
    f.benign("client-a");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !det.profile(PROFILE).is_some_and(|p| p.network.egress.iter().any(|e| e.port == 8080)) {
        assert!(Instant::now() < deadline, "learn mode did not record the server peer: {:?}", det.profile(PROFILE));
        std::thread::sleep(Duration::from_millis(50));
    }
    f.policy("protect");

    // The usual latency: replica A's new peer with the agent idle.
    let _ = f.reaches("client-a", "stranger", 8080, Protocol::Tcp);
    let idle = det
        .wait_event(Duration::from_secs(3), |e| e.kind == "new-peer" && e.workload.as_deref() == Some(A))
        .unwrap_or_else(|| panic!("no new-peer finding for A: {:?}", det.events()));
    let idle_ns = idle.isolate_ns.unwrap_or_else(|| panic!("A not isolated: {idle:?}"));

    // Hold the agent thread: a datastore change starts a sync whose load waits at the gate.
    gate.closed.store(true, Ordering::SeqCst);
    let dir = f.lab.datastore_dir();
    std::fs::write(dir.join("zz-trigger.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: trigger}\n").expect("write trigger");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gate.held.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the datastore change did not start a sync");
        std::thread::sleep(Duration::from_millis(5));
    }

    // Replica B's new peer while the sync is held.
    let _ = f.reaches("client-b", "stranger", 8080, Protocol::Tcp);
    let busy = det.wait_event(Duration::from_secs(5), |e| e.kind == "new-peer" && e.workload.as_deref() == Some(B));
    let blocked_b = !f.reaches("client-b", "server", 8080, Protocol::Tcp);
    // The agent thread answers meanwhile: the compile runs on a thread of its own.
    let (status, still_held) = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let agent = f.agent();
        s.spawn(move || tx.send(agent.detector_status()));
        let r = rx.recv_timeout(Duration::from_secs(3));
        let held = gate.held.load(Ordering::SeqCst);
        // Open the gate before the scope joins, whatever the outcome.
        gate.closed.store(false, Ordering::SeqCst);
        (r, held)
    });
    let busy = busy.unwrap_or_else(|| panic!("no new-peer finding for B while the agent was held in a sync: {:?}", det.events()));
    let busy_ns = busy.isolate_ns.unwrap_or_else(|| panic!("B not isolated: {busy:?}"));
    println!("new peer: isolated {} us after the flow's first packet with the agent idle, {} us with it held in a sync", idle_ns / 1000, busy_ns / 1000);
    assert!(still_held, "the sync ended before B's finding was checked: the test did not hold the agent");
    assert!(blocked_b, "B still reaches the server: its isolation did not reach the kernel");
    // Decided on its own path, not after the sync: far below the 30 s the sync was held.
    assert!(busy_ns < 1_000_000_000, "B isolated {busy_ns} ns after its flow: it waited for the sync");
    // The agent comes back: the held sync completes and the agent answers again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gate.held.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the held sync did not end after the gate opened");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = status.expect("the agent did not answer a status request within 3 s while a sync was held").expect("status");
    assert!(status.iter().any(|w| w.name == B && w.isolated), "status does not show B isolated: {status:?}");
    f.agent().detector_release(A).expect("release A");
    f.agent().detector_release(B).expect("release B");
}

/// Monitor mode on a busy workload: one new-peer alert per new flow would flood the JSON
/// lines and the webhook. Forty flows to one never-seen peer give one alert and, when the
/// de-duplication window closes, one summary counting the repeats; alerts about many peers
/// beyond the workload's rate are counted in one `alerts-rate-limited` event. The JSON-lines
/// file holds exactly what was reported.
#[test]
fn monitor_alerts_are_deduplicated_and_rate_limited_with_counts() {
    use bulkhead_lab::agent::detect::alerts::{AlertLimits, RATE_LIMITED_KIND};
    let f = Fixture::new();
    let det = f.agent().detector();
    det.set_alert_limits(AlertLimits { dedup_window: Duration::from_secs(2), per_workload: 3, rate_window: Duration::from_secs(2) });
    let client = f.pod("stranger");
    let spec = |mode: Mode| f.stranger_spec(mode);
    f.agent().detector_monitor(spec(Mode::Learn)).expect("learn");
    assert!(f.reaches("stranger", "server", 8080, Protocol::Tcp), "benign TCP while learning");
    f.agent().detector_monitor(spec(Mode::Monitor)).expect("monitor");
    let of_stranger = |kind: &str| det.events().into_iter().filter(|e| e.kind == kind && e.workload.as_deref() == Some("dn/stranger")).collect::<Vec<_>>();

    // 40 flows to one peer never seen (client-a): one alert now, the rest folded.
    for _ in 0..40 {
        let _ = f.reaches("stranger", "client-a", 8080, Protocol::Tcp);
    }
    let first = of_stranger("new-peer");
    assert_eq!(first.len(), 1, "one alert for 40 flows to one peer: {first:?}");
    let summary = det
        .wait_event(Duration::from_secs(4), |e| e.kind == "new-peer" && e.workload.as_deref() == Some("dn/stranger") && e.count.is_some())
        .unwrap_or_else(|| panic!("no summary after the window: {:?}", det.events()));
    // Read once the window closed: the last flows' events may still be in the ring when the
    // loop ends (they are judged on the detector's own thread).
    let folded = det.alert_stats().deduplicated;
    assert!(folded >= 30, "the repeats were counted: {:?}", det.alert_stats());
    assert_eq!(summary.count, Some(folded), "the summary carries the count: {summary:?}");
    assert_eq!(summary.peer, first[0].peer, "of the same peer");

    // Many peers at once (outside addresses, each a peer of its own; nothing answers, the
    // first packet is enough): three alerts within the rate window, the rest in one notice.
    for i in 1..=6u8 {
        let _ = probe(client, std::net::Ipv4Addr::new(192, 0, 2, i), 80, Protocol::Tcp, Duration::from_millis(150));
    }
    let notice = det
        .wait_event(Duration::from_secs(4), |e| e.kind == RATE_LIMITED_KIND && e.workload.as_deref() == Some("dn/stranger"))
        .unwrap_or_else(|| panic!("no rate-limit notice: {:?} {:?}", det.alert_stats(), det.events()));
    assert!(notice.count.is_some_and(|n| n >= 1), "{notice:?}");
    assert_eq!(det.alert_stats().rate_limited, notice.count.expect("count"), "{:?}", det.alert_stats());

    // The JSON lines hold what was reported, summaries with their counts.
    let file = std::path::PathBuf::from("/run/bulkhead").join(f.instance()).join(bulkhead_lab::agent::detect::EVENTS_FILE);
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let stranger = |kind: &str| lines.iter().filter(|v| v["kind"] == kind && v["workload"] == "dn/stranger").count();
    assert_eq!(stranger("new-peer") as u64, det.events().iter().filter(|e| e.kind == "new-peer" && e.workload.as_deref() == Some("dn/stranger")).count() as u64);
    assert!(lines.iter().any(|v| v["kind"] == "new-peer" && v["count"] == folded), "the summary's count is in the JSON lines");
    assert_eq!(stranger(RATE_LIMITED_KIND), 1);
}

/// Packets from `src` that reached `pod`'s network namespace on `proto`/`ports` (an iptables
/// counting rule in the pod, inserted first; its namespace goes with the lab).
struct Arrivals {
    netns: String,
    rule: Vec<String>,
}

impl Arrivals {
    fn count(f: &Fixture, pod: &str, src: std::net::Ipv4Addr, proto: &str, ports: &str) -> Arrivals {
        let netns = f.pod(pod).netns.clone();
        let rule: Vec<String> = ["INPUT", "-s", &src.to_string(), "-p", proto, "--dport", ports].iter().map(|s| s.to_string()).collect();
        let mut args = vec!["netns".to_string(), "exec".into(), netns.clone(), "iptables".into(), "-w".into(), "-I".into()];
        args.extend(rule.clone());
        let out = std::process::Command::new("ip").args(&args).output().expect("iptables");
        assert!(out.status.success(), "counting rule in {pod}: {}", String::from_utf8_lossy(&out.stderr));
        Arrivals { netns, rule }
    }

    fn packets(&self) -> u64 {
        let out = std::process::Command::new("ip").args(["netns", "exec", &self.netns, "iptables", "-w", "-nvx", "-L", "INPUT"]).output().expect("iptables -L");
        let text = String::from_utf8_lossy(&out.stdout);
        let src = &self.rule[2];
        let line = text.lines().find(|l| l.contains(src.as_str())).unwrap_or_else(|| panic!("no counting rule in {text}"));
        line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("counter in {line:?}"))
    }
}

/// No first packet: under the default actions (new peers and new ports isolate), the kernel
/// drops the first packet of an exfiltration (TCP and UDP) and of a scan before it leaves and
/// isolates the pod there; nothing reaches the destination (counted there with iptables), and
/// the user-space finding follows from TC's event.
#[test]
fn protect_mode_lets_no_packet_of_an_unlearned_flow_out() {
    let f = Fixture::new();
    let det = f.agent().detector();
    let write = |mode: &str| {
        let text = format!(
            "apiVersion: bulkhead.io/v1alpha1\nkind: DetectorPolicy\nmetadata: {{name: clients, namespace: dn}}\nspec:\n  selector: app == 'client'\n  mode: {mode}\n"
        );
        let dir = f.lab.datastore_dir();
        std::fs::write(dir.join(".detector-policy.tmp"), text).expect("write policy");
        std::fs::rename(dir.join(".detector-policy.tmp"), dir.join("detector-policy.yaml")).expect("rename policy");
        let want = if mode == "protect" { Mode::Protect } else { Mode::Learn };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f.agent().detector_status().expect("status").iter().any(|w| w.name == A && w.mode == want) {
            assert!(Instant::now() < deadline, "policy ({mode}) not applied");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    write("learn");
    f.benign("client-a");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !det.profile(PROFILE).is_some_and(|p| p.network.egress.iter().any(|e| e.workload.as_deref() == Some("dn/app=server") && e.port == 8080)) {
        assert!(Instant::now() < deadline, "the server peer was not learned: {:?}", det.profile(PROFILE));
        std::thread::sleep(Duration::from_millis(50));
    }
    write("protect");
    assert!(f.reaches("client-a", "server", 8080, Protocol::Tcp), "the learned flow passes under protect");
    let a_ip = f.pod("client-a").ip;
    let before = f.agent().counters().expect("counters").into_iter().find(|(n, _)| n == "deny_detector_unlearned_flow").map_or(0, |(_, v)| v);

    // Exfiltration over TCP to a peer never seen.
    let tcp = Arrivals::count(&f, "stranger", a_ip, "tcp", "8080");
    assert!(!f.reaches("client-a", "stranger", 8080, Protocol::Tcp), "the exfiltration connected");
    let ev = det
        .wait_event(Duration::from_secs(3), |e| e.kind == "new-peer" && e.workload.as_deref() == Some(A))
        .unwrap_or_else(|| panic!("no new-peer finding: {:?}", det.events()));
    assert!(ev.kernel_actions.contains(&"dropped-first-packet") && ev.kernel_actions.contains(&"isolated"), "decided in TC: {ev:?}");
    assert_eq!(tcp.packets(), 0, "a packet of the exfiltration reached the stranger");
    assert!(f.isolated(A));
    f.agent().detector_release(A).expect("release");

    // The first datagram of a UDP exfiltration never arrives either.
    let udp = Arrivals::count(&f, "stranger", a_ip, "udp", "53");
    assert!(!f.reaches("client-a", "stranger", 53, Protocol::Udp), "the UDP exfiltration was answered");
    assert_eq!(udp.packets(), 0, "a datagram reached the stranger");
    assert!(f.isolated(A), "the UDP exfiltration isolated the pod");
    f.agent().detector_release(A).expect("release");

    // A scan of the learned server: its first probe is dropped and the pod isolated; no probe
    // reaches the server.
    let scan = Arrivals::count(&f, "server", a_ip, "tcp", "9000:9019");
    for port in 9000..9010u16 {
        let _ = probe(f.pod("client-a"), f.pod("server").ip, port, Protocol::Tcp, Duration::from_millis(100));
    }
    det.wait_event(Duration::from_secs(3), |e| e.kind == "new-port" && e.workload.as_deref() == Some(A) && e.kernel_actions.contains(&"dropped-first-packet"))
        .unwrap_or_else(|| panic!("no new-port finding from TC: {:?}", det.events()));
    assert_eq!(scan.packets(), 0, "a probe of the scan reached the server");
    assert!(!f.reaches("client-a", "server", 8080, Protocol::Tcp), "the scanner is isolated");
    let after = f.agent().counters().expect("counters").into_iter().find(|(n, _)| n == "deny_detector_unlearned_flow").map_or(0, |(_, v)| v);
    assert!(after >= before + 3, "TC's own drops counted: {before} -> {after}");
    f.agent().detector_release(A).expect("release");
    assert!(f.reaches("client-a", "server", 8080, Protocol::Tcp), "released");
}
