//! The detector end to end with real processes in lab pods (run as root): learn a benign
//! workload, switch to protect, then a shell and a freshly written binary are killed by the
//! kernel and the pod isolated (traffic really stops, the DNS allow-list still passes); pause
//! freezes the cgroup and release undoes it; terminate kills every process of the pod; a benign
//! run under protect causes no action; isolation holds while no agent runs and after a restart.
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use bulkhead_e2e::{LabAgent, bulkhead_bin, run_bulkhead, spawn_in_pod};
use bulkhead_lab::agent::detect::{Actions, Mode, WorkloadSpec, cgroup};
use bulkhead_lab::probe::probe;
use bulkhead_lab::{PodNetns, Protocol};

const TOPOLOGY: &str = "
kind: Topology
name: detector
namespaces:
  - name: d
    labels: {kubernetes.io/metadata.name: d}
pods:
  - {namespace: d, name: app, ip: 10.242.0.10, labels: {app: app}}
  - {namespace: d, name: dns, ip: 10.242.0.11, labels: {app: dns}}
ports:
  - {port: 8080, protocol: TCP}
  - {port: 53, protocol: UDP}
";
const APP: &str = "d/app";
const T: Duration = Duration::from_millis(700);

bulkhead_e2e::lab_agent_fixture!(
    /// The shared lab-with-agent fixture, with this file's scenario helpers.
    Fixture
);

impl Fixture {
    fn new() -> Fixture {
        Fixture(LabAgent::new(TOPOLOGY, "detector.yaml", false))
    }
    fn app(&self) -> &PodNetns {
        &self.lab.pods()[0]
    }
    fn dns(&self) -> &PodNetns {
        &self.lab.pods()[1]
    }
    fn cg(&self) -> PathBuf {
        self.app().cgroup.clone().expect("pod cgroup")
    }

    /// Monitors the app pod in learn mode, runs the benign workload (a client of the DNS pod's
    /// echo server via nc, and a second echo server) and switches to protect.
    fn learn_then_protect(&self, actions: Actions) {
        self.agent()
            .detector_isolation_allow(vec![(self.dns().ip.into(), 53, 17)])
            .expect("allow-list");
        self.agent()
            .detector_monitor(WorkloadSpec {
                name: APP.into(),
                cgroup: self.cg(),
                interface: Some(self.app().host_veth.clone()),
                mode: Mode::Learn,
                actions,
                syscalls: true,
                allowed_execs: vec![],
            })
            .expect("monitor");
        self.benign_run();
        let det = self.agent().detector();
        for p in ["/usr/bin/nc", bulkhead_bin().to_str().unwrap()] {
            det.wait_event(Duration::from_secs(3), |e| e.kind == "exec" && e.path == p && e.mode == "learn")
                .unwrap_or_else(|| panic!("learn mode saw no exec of {p}: {:?}", det.events()));
        }
        let st = self.agent().detector_set_mode(APP, Mode::Protect).expect("protect");
        assert_eq!(st.learned_execs, 2, "learned exactly the benign binaries: {st:?}");
        let sys = self.agent().detector_syscalls(APP).expect("syscalls");
        assert!(sys.len() > 5 && sys.iter().map(|s| s.1).sum::<u64>() > 50, "syscall counts of the benign run: {sys:?}");
    }

    /// The benign workload: nc to the DNS pod's TCP echo and a short-lived second echo server.
    fn benign_run(&self) {
        let dns = self.dns().ip.to_string();
        let mut nc = spawn_in_pod(self.app(), &["/usr/bin/nc", "-z", "-w", "1", &dns, "8080"]);
        let st = nc.wait().expect("nc");
        assert!(st.success(), "benign nc failed: {st:?}");
        let bin = bulkhead_bin();
        let mut srv = spawn_in_pod(self.app(), &[bin.to_str().unwrap(), "lab", "serve", "--tcp", "9090"]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !probe(self.dns(), self.app().ip, 9090, Protocol::Tcp, T) {
            assert!(Instant::now() < deadline, "second echo server never answered");
            assert!(srv.try_wait().expect("wait").is_none(), "second echo server died");
        }
        let _ = srv.kill();
        let _ = srv.wait();
    }

    fn app_reachable(&self) -> bool {
        probe(self.dns(), self.app().ip, 8080, Protocol::Tcp, T)
    }
    fn app_reaches_dns_udp53(&self) -> bool {
        probe(self.app(), self.dns().ip, 53, Protocol::Udp, T)
    }
    fn app_reaches_dns_tcp(&self) -> bool {
        probe(self.app(), self.dns().ip, 8080, Protocol::Tcp, T)
    }
}

/// Waits for the child; returns the signal that ended it, and how long after `t0` it was reaped.
fn reap(mut c: Child, t0: Instant) -> (Option<i32>, Duration) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = c.try_wait().expect("wait") {
            return (st.signal(), t0.elapsed());
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("process was not killed within 5 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn echo(s: &mut TcpStream) -> bool {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 5];
    s.write_all(b"hello").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"hello"
}

/// Checks that an offender was killed by the kernel and the pod isolated, with an event.
fn assert_contained(f: &Fixture, argv: &[&str], what: &str) {
    let det = f.agent().detector();
    let t0 = Instant::now();
    let child = spawn_in_pod(f.app(), argv);
    let pid = child.id();
    let (sig, reaped_after) = reap(child, t0);
    assert_eq!(sig, Some(libc::SIGKILL), "{what}: not killed by SIGKILL");
    let ev = det
        .wait_event(Duration::from_secs(2), |e| e.is_violation() && e.pid == pid)
        .unwrap_or_else(|| panic!("{what}: no violation event: {:?}", det.events()));
    assert_eq!(ev.path, argv[0], "{what}: event path");
    assert_eq!(ev.workload.as_deref(), Some(APP));
    assert!(ev.kernel_actions.contains(&"killed") && ev.kernel_actions.contains(&"isolated"), "{what}: {ev:?}");
    println!(
        "{what}: killed in kernel {} ns after the exec tracepoint; spawn -> reaped {:?}; event read after {} us",
        ev.kernel_enforce_ns.unwrap_or(0),
        reaped_after,
        ev.read_delay_ns / 1000
    );
    assert!(!f.app_reachable(), "{what}: app pod still reachable over TCP after isolation");
    assert!(!f.app_reaches_dns_tcp(), "{what}: app pod still reaches TCP 8080 after isolation");
    assert!(f.app_reaches_dns_udp53(), "{what}: the DNS allow-list (UDP 53 to the dns pod) is blocked");
    let st = f.agent().detector_status().expect("status");
    assert!(st.iter().any(|w| w.name == APP && w.isolated), "{what}: status does not show isolation: {st:?}");
}

#[test]
fn benign_run_then_shell_and_new_binary_are_killed_and_isolated() {
    let f = Fixture::new();
    f.learn_then_protect(Actions { kill: true, isolate: true, ..Default::default() });
    // (e) The learned workload under protect: no action, traffic flows for a few seconds.
    let before = f.agent().detector().events().iter().filter(|e| e.is_violation()).count();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        f.benign_run();
        assert!(f.app_reachable(), "benign run under protect: app pod not reachable");
    }
    let ev = f.agent().detector().events();
    assert_eq!(ev.iter().filter(|e| e.is_violation()).count(), before, "benign run raised violations: {ev:?}");
    assert!(!f.agent().detector_status().unwrap()[0].isolated, "benign run isolated the pod");

    // An established connection from the app pod, to show it stops too.
    let mut conn = bulkhead_lab::netns::in_netns(&f.app().netns, {
        let to = SocketAddr::from((f.dns().ip, 8080));
        move || TcpStream::connect_timeout(&to, T)
    })
    .unwrap()
    .expect("connect before isolation");
    assert!(echo(&mut conn), "echo before isolation");

    // (a) A shell started inside the pod.
    assert_contained(&f, &["/bin/sh", "-c", "echo pwned"], "shell");
    assert!(!echo(&mut conn), "established connection still works after isolation");

    // Release undoes isolation.
    let (isolated, frozen) = f.agent().detector_release(APP).expect("release");
    assert!(isolated && !frozen);
    assert!(f.app_reachable(), "app pod not reachable after release");

    // (b) A new binary written and executed.
    let newbin = f.tmp.join("dropper");
    std::fs::copy("/bin/true", &newbin).expect("copy binary");
    assert_contained(&f, &[newbin.to_str().unwrap()], "new binary");
    f.agent().detector_release(APP).expect("release");
    assert!(f.app_reachable(), "app pod not reachable after the second release");
    // The echo server (exec'd before monitoring) was never touched.
    assert!(!cgroup::procs(&f.cg()).unwrap().is_empty());
}

#[test]
fn pause_freezes_and_release_thaws() {
    let f = Fixture::new();
    f.learn_then_protect(Actions { isolate: true, pause: true, ..Default::default() });
    let counter = f.tmp.join("counter");
    let script = format!("i=0; while :; do i=$((i+1)); echo $i > {}; done", counter.display());
    let mut child = spawn_in_pod(f.app(), &["/bin/sh", "-c", &script]);
    let det = f.agent().detector();
    let ev = det
        .wait_event(Duration::from_secs(3), |e| e.is_violation() && e.pid == child.id())
        .unwrap_or_else(|| panic!("no violation event: {:?}", det.events()));
    assert!(ev.user_actions.iter().any(|a| a == "paused"), "{ev:?}");
    println!("pause: cgroup frozen {} us after the exec tracepoint", ev.user_enforce_ns.unwrap_or(0) / 1000);
    assert!(cgroup::is_frozen(&f.cg()).unwrap(), "cgroup not frozen");
    let read = || std::fs::read_to_string(&counter).unwrap_or_default();
    let a = read();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(), a, "the paused process still makes progress");
    assert!(child.try_wait().unwrap().is_none(), "paused process died");
    assert!(!f.app_reachable(), "paused pod still reachable (isolate action)");

    let (isolated, frozen) = f.agent().detector_release(APP).expect("release");
    assert!(isolated && frozen, "release: isolated={isolated} frozen={frozen}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while read() == a {
        assert!(
            Instant::now() < deadline,
            "the released process makes no progress (counter {a:?}; cgroup.events {:?}; /proc/{}/stat {:?})",
            std::fs::read_to_string(f.cg().join("cgroup.events")),
            child.id(),
            std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(f.app_reachable(), "released pod not reachable");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn terminate_kills_every_process_of_the_pod() {
    let f = Fixture::new();
    f.learn_then_protect(Actions { terminate: true, ..Default::default() });
    assert!(!cgroup::procs(&f.cg()).unwrap().is_empty(), "the echo server runs in the pod");
    let t0 = Instant::now();
    let child = spawn_in_pod(f.app(), &["/bin/sh", "-c", "sleep 30"]);
    let pid = child.id();
    let (sig, after) = reap(child, t0);
    assert_eq!(sig, Some(libc::SIGKILL));
    let det = f.agent().detector();
    let ev = det.wait_event(Duration::from_secs(2), |e| e.is_violation() && e.pid == pid).expect("violation event");
    assert!(ev.user_actions.iter().any(|a| a == "terminated"), "{ev:?}");
    assert!(ev.kernel_actions.is_empty(), "terminate only: the kernel took no action: {ev:?}");
    println!("terminate: cgroup empty {} us after the exec tracepoint; spawn -> reaped {after:?}", ev.user_enforce_ns.unwrap_or(0) / 1000);
    assert_eq!(cgroup::procs(&f.cg()).unwrap(), Vec::<u32>::new(), "processes left in the pod");
    assert!(!f.app_reachable(), "the pod's echo server still answers after terminate");
}

#[test]
fn isolation_and_protect_survive_an_agent_restart() {
    let mut f = Fixture::new();
    f.learn_then_protect(Actions { kill: true, isolate: true, ..Default::default() });
    assert_contained(&f, &["/bin/sh", "-c", "true"], "shell");
    let kept = f.agent.take().unwrap().stop_keep_enforcing().expect("stop keeping enforcement");
    assert!(kept >= 4, "links kept: {kept}");
    // No agent runs: isolation and in-kernel protect still hold.
    assert!(!f.app_reachable(), "isolation lost while no agent runs");
    assert!(f.app_reaches_dns_udp53(), "allow-list lost while no agent runs");
    let (sig, _) = reap(spawn_in_pod(f.app(), &["/bin/sh", "-c", "true"]), Instant::now());
    assert_eq!(sig, Some(libc::SIGKILL), "protect lost while no agent runs");
    // The CLI reads the state from the pins and state files without an agent.
    let instance = f.lab.pin_dir().file_name().unwrap().to_string_lossy().into_owned();
    let out = run_bulkhead(&["detector", "status", "--instance", &instance, "--json"]);
    assert!(out.status.success(), "detector status: {}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(st["workloads"][0]["name"], APP, "{st}");
    assert_eq!(st["workloads"][0]["isolated"], true, "{st}");
    assert!(st["counters"]["detector_killed"].as_u64().unwrap_or(0) >= 2, "{st}");
    assert_eq!(st["counters"]["detector_events_dropped"], 0, "{st}");
    // A new agent takes over the pinned state.
    f.agent = Some(f.lab.start_agent(false).expect("agent restarts"));
    assert!(!f.app_reachable(), "isolation lost after the agent restart");
    let st = f.agent().detector_status().expect("status");
    assert!(st.iter().any(|w| w.name == APP && w.isolated && w.mode == Mode::Protect), "restored state: {st:?}");
    let (sig, _) = reap(spawn_in_pod(f.app(), &["/bin/sh", "-c", "true"]), Instant::now());
    assert_eq!(sig, Some(libc::SIGKILL), "protect lost after the restart");
    // Release through the CLI (it works on the pinned maps).
    let out = run_bulkhead(&["detector", "release", "--instance", &instance, "--cgroup", f.cg().to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "detector release: {}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("release JSON");
    assert_eq!(r["was_isolated"], true, "{r}");
    assert!(f.app_reachable(), "app pod not reachable after release by the CLI");
    let out = run_bulkhead(&["detector", "events", "--instance", &instance]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().filter(|l| l.starts_with("violation") && l.contains("/bin/sh")).count() >= 3, "events:\n{text}");
}
