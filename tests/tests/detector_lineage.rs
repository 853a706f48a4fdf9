//! Process lineage and exec identity end to end (run as root): a Python server in a lab pod
//! learns that it runs `/bin/ls` and a tool of its own for its requests; under protect that
//! keeps working, while the same server running its own interpreter (`python3 -c ...`: an
//! allowed path, so the path allow-list alone let it through) is killed by the exec probe
//! before the child runs, and the pod isolated; the server itself lives on. The tool
//! overwritten with another binary, and then replaced by a symlink to a foreign binary, is
//! killed too (same path, another file). Once the server has learned to run a Python
//! script of its own (python3 starting python3 is then known lineage), `python3 -c` is still
//! killed, for the inline code.
use std::time::Duration;

use bulkhead_e2e::{LabAgent, LineServer};
use bulkhead_lab::PodNetns;
use bulkhead_lab::agent::detect::{Actions, Mode, WorkloadSpec};

const TOPOLOGY: &str = "
kind: Topology
name: detlineage
namespaces:
  - name: l
    labels: {kubernetes.io/metadata.name: l}
pods:
  - {namespace: l, name: app, ip: 10.247.0.10, labels: {app: app}}
ports:
  - {port: 8080, protocol: TCP}
";
const APP: &str = "l/app";
const PYTHON: &str = "/usr/bin/python3";

const SERVER: &str = r#"
import subprocess, sys
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "work":
        r = subprocess.run(["/bin/ls", "/"], stdout=subprocess.DEVNULL)
    elif cmd == "tool":
        r = subprocess.run([sys.argv[1]], stdout=subprocess.DEVNULL)
    elif cmd == "child":
        r = subprocess.run([sys.executable, "-B", sys.argv[2]], stdout=subprocess.DEVNULL)
    elif cmd == "inline":
        r = subprocess.run([sys.executable, "-c", "print(open('/etc/hostname').read())"], stdout=subprocess.DEVNULL)
    else:
        print("?", flush=True)
        continue
    print("rc %d" % r.returncode, flush=True)
"#;

bulkhead_e2e::lab_agent_fixture!(
    /// The shared lab-with-agent fixture.
    Fixture
);

impl Fixture {
    fn app(&self) -> &PodNetns {
        &self.lab.pods()[0]
    }
    fn server(&self) -> LineServer {
        let script = self.tmp.join("server.py");
        std::fs::write(&script, SERVER).expect("server script");
        let child = self.tmp.join("child.py");
        std::fs::write(&child, "print('child')\n").expect("child script");
        LineServer::spawn(self.app(), &[PYTHON, "-B", script.to_str().unwrap(), self.tool().to_str().unwrap(), child.to_str().unwrap()])
    }
    fn tool(&self) -> std::path::PathBuf {
        self.tmp.join("tool")
    }
}

#[test]
fn a_learned_server_running_its_own_interpreter_is_killed() {
    let f = Fixture(LabAgent::new(TOPOLOGY, "detector_lineage.yaml", false));
    f.agent()
        .detector_monitor(WorkloadSpec {
            name: APP.into(),
            cgroup: f.app().cgroup.clone().expect("pod cgroup"),
            interface: Some(f.app().host_veth.clone()),
            mode: Mode::Learn,
            actions: Actions { kill: true, isolate: true, ..Default::default() },
            syscalls: false,
            allowed_execs: vec![],
        })
        .expect("monitor");
    std::fs::copy("/bin/true", f.tool()).expect("tool");
    let mut s = f.server();
    for i in 0..5 {
        assert_eq!(s.ask("work").as_deref(), Some("rc 0"), "learning request {i}");
        assert_eq!(s.ask("tool").as_deref(), Some("rc 0"), "learning request {i}");
    }
    s.stop();
    let det = f.agent().detector();
    det.wait_event(Duration::from_secs(3), |e| e.kind == "exec" && e.path == "/bin/ls" && e.mode == "learn").expect("ls learned");
    let st = f.agent().detector_set_mode(APP, Mode::Protect).expect("protect");
    assert_eq!(st.learned_execs, 3, "python3, ls and the tool: {st:?}");
    let profile = det.profile(APP).expect("profile");
    let pairs: Vec<(String, String)> = profile.lineage.iter().map(|l| (l.parent.clone(), l.child.clone())).collect();
    let tool = f.tool().to_string_lossy().into_owned();
    let mut want = vec![(String::new(), PYTHON.to_string()), (PYTHON.to_string(), "/bin/ls".to_string()), (PYTHON.to_string(), tool.clone())];
    want.sort();
    assert_eq!(pairs, want, "learned lineage");

    // Under protect: the learned work goes on, the interpreter with inline code is killed.
    let mut s = f.server();
    assert_eq!(s.ask("work").as_deref(), Some("rc 0"), "benign request under protect");
    assert_eq!(s.ask("inline").as_deref(), Some("rc -9"), "the inline interpreter was not killed");
    let ev = det
        .wait_event(Duration::from_secs(3), |e| e.kind == "exec-lineage" && e.path == PYTHON)
        .unwrap_or_else(|| panic!("no exec-lineage finding: {:?}", det.events()));
    assert!(ev.kernel_actions.contains(&"killed") && ev.kernel_actions.contains(&"isolated"), "{ev:?}");
    assert!(ev.detail.as_deref().is_some_and(|d| d.contains("started by /usr/bin/python3")), "{ev:?}");
    println!("python3 -c from the server: killed and isolated in the kernel {} ns after the exec", ev.kernel_enforce_ns.unwrap_or(0));
    assert_eq!(s.ask("work").as_deref(), Some("rc 0"), "the server itself must live on");
    assert!(f.agent().detector_status().expect("status").iter().any(|w| w.name == APP && w.isolated), "pod not isolated");
    f.agent().detector_release(APP).expect("release");

    // Exec identity: the learned tool runs; overwritten in place, or replaced by a symlink to
    // a foreign binary, the same path is killed.
    assert_eq!(s.ask("tool").as_deref(), Some("rc 0"), "the learned tool under protect");
    std::fs::copy("/bin/false", f.tool()).expect("overwrite the tool");
    assert_eq!(s.ask("tool").as_deref(), Some("rc -9"), "the overwritten tool was not killed");
    let ev = det
        .wait_event(Duration::from_secs(3), |e| e.kind == "exec-identity" && e.path == tool)
        .unwrap_or_else(|| panic!("no exec-identity finding: {:?}", det.events()));
    assert!(ev.kernel_actions.contains(&"killed"), "{ev:?}");
    let n = det.events().iter().filter(|e| e.kind == "exec-identity").count();
    f.agent().detector_release(APP).expect("release");
    std::fs::remove_file(f.tool()).expect("remove the tool");
    std::os::unix::fs::symlink("/bin/true", f.tool()).expect("symlink");
    assert_eq!(s.ask("tool").as_deref(), Some("rc -9"), "the symlinked tool was not killed");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while det.events().iter().filter(|e| e.kind == "exec-identity").count() == n {
        assert!(std::time::Instant::now() < deadline, "no exec-identity finding for the symlink: {:?}", det.events());
        std::thread::sleep(Duration::from_millis(10));
    }
    s.stop();
    f.agent().detector_release(APP).expect("release");

    // Inline code: the server learns to run a Python script of its own (python3 -> python3 is
    // now learned lineage); python3 -c is still killed, for the inline code.
    f.agent().detector_set_mode(APP, Mode::Learn).expect("learn");
    let mut s = f.server();
    for _ in 0..3 {
        assert_eq!(s.ask("child").as_deref(), Some("rc 0"), "learning the child script");
    }
    s.stop();
    det.wait_event(Duration::from_secs(3), |e| e.kind == "exec" && e.path == PYTHON && e.mode == "learn" && e.ppid != 0).expect("child learned");
    std::thread::sleep(Duration::from_millis(200));
    f.agent().detector_set_mode(APP, Mode::Protect).expect("protect");
    let profile = det.profile(APP).expect("profile");
    assert!(profile.lineage.iter().any(|l| l.parent == PYTHON && l.child == PYTHON), "python3 -> python3 learned: {:?}", profile.lineage);
    assert!(profile.inline_code.is_empty(), "no inline code while learning: {:?}", profile.inline_code);
    let mut s = f.server();
    assert_eq!(s.ask("child").as_deref(), Some("rc 0"), "the learned child script under protect");
    assert_eq!(s.ask("inline").as_deref(), Some("rc -9"), "inline code not killed");
    let ev = det
        .wait_event(Duration::from_secs(3), |e| e.kind == "exec-inline-code" && e.path == PYTHON)
        .unwrap_or_else(|| panic!("no exec-inline-code finding: {:?}", det.events()));
    assert!(ev.kernel_actions.contains(&"killed"), "{ev:?}");
    s.stop();
}
