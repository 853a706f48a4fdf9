//! The detector's syscall-sequence model end to end with real processes (root): a Python echo
//! server in a lab pod is learned under its benign traffic, then protect mode is switched on
//! and
//! (a) more benign traffic causes no finding and no action; a request from a client never
//!     seen while learning raises a `new-inbound` alert (no action by default),
//! (b) a request that makes the *same* server process run reconnaissance code (the Log4j
//!     pattern: no new executable, so the exec allow-list cannot see it) is found from its
//!     syscalls: with the default settings as a syscall the profile never saw, and the pod is
//!     isolated and terminated; with unseen-syscall findings off, as a window of syscalls the
//!     profile cannot cover, and the pod is paused until release.
//! Latencies (offending syscall -> action done) are printed.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use bulkhead_e2e::{LabAgent, spawn_in_pod};
use bulkhead_lab::agent::detect::{Actions, DetectorEvent, Mode, NetActions, SequenceConfig, WorkloadOptions, WorkloadSpec, cgroup};
use bulkhead_lab::probe::probe;
use bulkhead_lab::scenario::{PYTHON, RECON_SERVER};
use bulkhead_lab::{PodNetns, Protocol};

const TOPOLOGY: &str = "
kind: Topology
name: detsys
namespaces:
  - name: s
    labels: {kubernetes.io/metadata.name: s}
pods:
  - {namespace: s, name: app, ip: 10.243.0.10, labels: {app: app}}
  - {namespace: s, name: client, ip: 10.243.0.11, labels: {app: client}}
  - {namespace: s, name: other, ip: 10.243.0.12, labels: {app: other}}
ports:
  - {port: 8080, protocol: TCP}
";
const APP: &str = "s/app";
/// The Python server's port (the lab's own echo servers hold 8080).
const PORT: u16 = 9090;


bulkhead_e2e::lab_agent_fixture!(
    /// The shared lab-with-agent fixture, with this file's scenario helpers.
    Fixture
);

impl Fixture {
    fn new(name: &str) -> Fixture {
        let f = Fixture(LabAgent::new(&TOPOLOGY.replace("name: detsys", &format!("name: {name}")), "detsys.yaml", false));
        std::fs::write(f.tmp.join("server.py"), RECON_SERVER).expect("server script");
        f
    }
    fn app(&self) -> &PodNetns {
        &self.lab.pods()[0]
    }
    fn client(&self) -> &PodNetns {
        &self.lab.pods()[1]
    }
    fn cg(&self) -> PathBuf {
        self.app().cgroup.clone().expect("pod cgroup")
    }

    /// Monitors the app pod with a sequence model, starts the server and learns it under
    /// benign traffic; returns the server process once protect mode is on.
    fn learn_then_protect(&self, cfg: SequenceConfig, on_finding: NetActions) -> Child {
        let spec = WorkloadSpec {
            name: APP.into(),
            cgroup: self.cg(),
            interface: Some(self.app().host_veth.clone()),
            mode: Mode::Learn,
            actions: Actions { kill: true, isolate: true, syscall_anomaly: on_finding, ..Default::default() },
            syscalls: false,
            allowed_execs: vec![],
        };
        let opts = WorkloadOptions { sequences: Some(cfg), ..Default::default() };
        self.agent().detector_monitor_with(spec, opts).expect("monitor");
        let script = self.tmp.join("server.py");
        let server = spawn_in_pod(self.app(), &[PYTHON, script.to_str().unwrap(), &PORT.to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut server = server;
        while !self.request("ready?") {
            assert!(Instant::now() < deadline, "the Python server never answered");
            assert!(server.try_wait().expect("wait").is_none(), "the Python server exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        for i in 0..60 {
            assert!(self.request(&format!("hello {i}")), "benign request {i} failed while learning");
        }
        // Learning is merged into the profile about once a second: wait for it, as an
        // operator checks `detector status` before switching to protect.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = self.agent().detector_status().expect("status");
            if st.iter().any(|w| w.name == APP && w.learned_syscalls > 100) {
                break;
            }
            assert!(Instant::now() < deadline, "the profile learned no syscall sequences in 5 s: {st:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = self.agent().detector_set_mode(APP, Mode::Protect).expect("protect");
        assert!(st.sequence_model && st.learned_syscalls > 100, "the profile learned the server's syscalls: {st:?}");
        println!("learned {} normal syscalls into the profile's sequence model", st.learned_syscalls);
        server
    }

    /// One request from the client pod; whether the echo came back.
    fn request(&self, text: &str) -> bool {
        self.request_from(self.client(), text)
    }

    /// One request from `pod`; whether the echo came back.
    fn request_from(&self, pod: &PodNetns, text: &str) -> bool {
        let addr = SocketAddr::from((self.app().ip, PORT));
        let text = text.to_string();
        bulkhead_lab::netns::in_netns(&pod.netns, move || {
            let attempt = || -> std::io::Result<Vec<u8>> {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(700))?;
                s.set_read_timeout(Some(Duration::from_millis(700)))?;
                s.write_all(text.as_bytes())?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf)?;
                Ok(buf)
            };
            match attempt() {
                Ok(buf) => buf == text.as_bytes(),
                Err(e) => {
                    eprintln!("request {text:?} to {addr}: {e}");
                    false
                }
            }
        })
        .expect("run in client netns")
    }

    /// Sends the request that runs the payload inside the server; returns the first syscall
    /// finding (printed with its latency).
    fn exploit(&self) -> DetectorEvent {
        let _ = self.request("exploit");
        let det = self.agent().detector();
        let ev = det
            .wait_event(Duration::from_secs(3), |e| e.kind.starts_with("syscall-"))
            .unwrap_or_else(|| panic!("no syscall finding for the payload: {:?}", det.events()));
        print_latency(&ev);
        ev
    }

    fn syscall_findings(&self) -> Vec<DetectorEvent> {
        self.agent().detector().events().into_iter().filter(|e| e.kind.starts_with("syscall-")).collect()
    }
}

fn print_latency(ev: &DetectorEvent) {
    println!(
        "{}: {}; actions {:?}: read {} us, isolated {} us, done {} us after the offending syscall",
        ev.kind,
        ev.detail.as_deref().unwrap_or(""),
        ev.user_actions,
        ev.read_delay_ns / 1000,
        ev.isolate_ns.unwrap_or(0) / 1000,
        ev.user_enforce_ns.unwrap_or(0) / 1000
    );
}

#[test]
fn recon_inside_a_learned_server_is_found_by_unseen_syscalls_and_terminated() {
    let f = Fixture::new("detsys1");
    let mut server = f.learn_then_protect(SequenceConfig::default(), NetActions { isolate: true, terminate: true, ..Default::default() });
    // (a) Benign traffic under protect: no finding, no action.
    for i in 0..40 {
        assert!(f.request(&format!("hello again {i}")), "benign request {i} failed under protect: {:?}", f.syscall_findings());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(f.syscall_findings().is_empty(), "benign traffic raised findings: {:?}", f.syscall_findings());
    assert!(server.try_wait().expect("wait").is_none(), "the server died during benign traffic");
    let det = f.agent().detector();
    assert!(det.events().iter().all(|e| !e.is_network()), "benign traffic raised network findings: {:?}", det.events());
    // A client never seen while learning: an alert (the default action), nothing else; the
    // same request handled, so no syscall finding either.
    let other = &f.lab.pods()[2];
    assert!(f.request_from(other, "hello from elsewhere"), "a new client's request failed (alert only)");
    let ev = det
        .wait_event(Duration::from_secs(3), |e| e.kind == "new-inbound")
        .unwrap_or_else(|| panic!("no new-inbound finding: {:?}", det.events()));
    assert_eq!(ev.peer.as_deref(), Some("s/app=other"), "{ev:?}");
    assert!(ev.user_actions.is_empty(), "new-inbound alerts only by default: {ev:?}");
    assert!(f.syscall_findings().is_empty(), "a new client's benign request raised syscall findings: {:?}", f.syscall_findings());
    // (b) The payload runs inside the same process.
    let ev = f.exploit();
    assert_eq!(ev.kind, "syscall-unseen", "the payload's first sign is a syscall never seen: {ev:?}");
    assert_eq!(ev.pid, server.id(), "the finding names the server process");
    assert_eq!(ev.mode, "protect");
    assert!(ev.user_actions.contains(&"isolated".to_string()) && ev.user_actions.contains(&"terminated".to_string()), "{ev:?}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while server.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the server still runs after terminate");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(cgroup::procs(&f.cg()).expect("cgroup.procs").is_empty(), "processes left in the pod after terminate");
    assert!(!probe(f.client(), f.app().ip, 8080, Protocol::Tcp, Duration::from_millis(500)), "the pod still answers after isolation");
    let st = f.agent().detector_status().expect("status");
    assert!(st.iter().any(|w| w.name == APP && w.isolated), "status does not show isolation: {st:?}");
}

#[test]
fn recon_found_by_its_window_of_syscalls_pauses_until_release() {
    let f = Fixture::new("detsys2");
    let cfg = SequenceConfig { unseen_syscalls: false, ..SequenceConfig::default() };
    let mut server = f.learn_then_protect(cfg, NetActions { pause: true, ..Default::default() });
    for i in 0..20 {
        assert!(f.request(&format!("hello again {i}")), "benign request {i} failed under protect: {:?}", f.syscall_findings());
    }
    assert!(f.syscall_findings().is_empty(), "benign traffic raised findings: {:?}", f.syscall_findings());
    let ev = f.exploit();
    assert_eq!(ev.kind, "syscall-sequence", "{ev:?}");
    assert_eq!(ev.user_actions, vec!["paused".to_string()], "{ev:?}");
    assert!(cgroup::is_frozen(&f.cg()).expect("freeze state"), "the pod's cgroup is not frozen");
    assert!(!f.request("hello while paused"), "a paused server answered");
    assert_eq!(f.agent().detector_release(APP).expect("release"), (false, true), "release thaws (nothing was isolated)");
    assert!(f.request("hello after release"), "the server does not answer after release");
    let _ = server.kill();
    let _ = server.wait();
}
