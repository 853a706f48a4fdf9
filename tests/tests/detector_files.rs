//! File-system baselines end to end, with a real Python server in a lab pod (run as root).
//! The server learns its normal file behaviour (a log with rotation, temp files, a temp folder
//! per request, a listing of its static folder), then: a benign run under protect raises
//! nothing; in monitor, a write into a cron folder and a listing of `/` are alerted with no
//! action; in protect, the cron write isolates the pod in the kernel, reading /etc/shadow kills
//! the server before it reads a byte (and isolates), and a write through a relative path (the
//! kernel cannot judge it) is resolved and isolated by the agent.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_e2e::{LabAgent, LineServer, run_bulkhead};
use bulkhead_lab::PodNetns;
use bulkhead_lab::agent::detect::{Actions, DetectorEvent, FileActions, Mode, WorkloadOptions, WorkloadSpec, files::FileConfig};

const TOPOLOGY: &str = "
kind: Topology
name: detfiles
namespaces:
  - name: f
    labels: {kubernetes.io/metadata.name: f}
pods:
  - {namespace: f, name: app, ip: 10.246.0.10, labels: {app: app}}
ports:
  - {port: 8080, protocol: TCP}
";
const APP: &str = "f/app";
const PYTHON: &str = "/usr/bin/python3";

/// The server: one request per line on stdin, one answer line on stdout.
const SERVER: &str = r#"
import os, sys, tempfile
root = sys.argv[1]
log_dir, tmp_dir, static, cron = (os.path.join(root, d) for d in ("log", "tmp", "static", "cron.d"))
n = 0
for line in sys.stdin:
    cmd = line.strip()
    n += 1
    try:
        if cmd == "work":
            with open(os.path.join(log_dir, "app.log"), "a") as f:
                f.write("request %d\n" % n)
            if n % 3 == 0:
                for i in (3, 2, 1):
                    src = os.path.join(log_dir, "app.log" if i == 1 else "app.log.%d" % (i - 1))
                    if os.path.exists(src):
                        os.rename(src, os.path.join(log_dir, "app.log.%d" % i))
                old = os.path.join(log_dir, "app.log.3")
                if os.path.exists(old):
                    os.unlink(old)
            fd, p = tempfile.mkstemp(dir=tmp_dir)
            os.write(fd, b"body")
            os.close(fd)
            os.unlink(p)
            d = tempfile.mkdtemp(dir=tmp_dir)
            with open(os.path.join(d, "part"), "w") as f:
                f.write("x")
            os.unlink(os.path.join(d, "part"))
            os.rmdir(d)
            os.listdir(static)
            answer = "ok"
        elif cmd == "cron":
            with open(os.path.join(cron, "evil"), "w") as f:
                f.write("* * * * * root sh\n")
            answer = "ok"
        elif cmd == "relwrite":
            os.chdir(cron)
            with open("evil2", "w") as f:
                f.write("x")
            answer = "ok"
        elif cmd == "shadow":
            with open("/etc/shadow") as f:
                answer = "read %d" % len(f.read())
        elif cmd == "ls":
            answer = "ls %d" % len(os.listdir("/"))
        else:
            answer = "?"
    except Exception as e:
        answer = "error %s" % e
    print(answer, flush=True)
"#;

bulkhead_e2e::lab_agent_fixture!(
    /// The shared lab-with-agent fixture, with this file's scenario helpers.
    Fixture
);

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture(LabAgent::new(TOPOLOGY, "detector_files.yaml", false));
        for d in ["log", "tmp", "static", "cron.d"] {
            std::fs::create_dir_all(f.root().join(d)).expect("server folders");
        }
        std::fs::write(f.root().join("static/index.html"), "hi").expect("static file");
        std::fs::write(f.tmp.join("server.py"), SERVER).expect("server script");
        f
    }
    fn root(&self) -> PathBuf {
        self.tmp.join("srv")
    }
    fn app(&self) -> &PodNetns {
        &self.lab.pods()[0]
    }

    fn server(&self) -> LineServer {
        let script = self.tmp.join("server.py");
        LineServer::spawn(self.app(), &[PYTHON, "-B", script.to_str().unwrap(), self.root().to_str().unwrap()])
    }

    /// Monitors the app pod with a file baseline (the DetectorPolicy defaults for file
    /// findings), learns a benign run and returns once the profile holds it.
    fn learn(&self) {
        let spec = WorkloadSpec {
            name: APP.into(),
            cgroup: self.app().cgroup.clone().expect("pod cgroup"),
            interface: Some(self.app().host_veth.clone()),
            mode: Mode::Learn,
            actions: Actions {
                file_write: FileActions { isolate: true, ..Default::default() },
                sensitive_read: FileActions { kill: true, isolate: true, ..Default::default() },
                ..Default::default()
            },
            syscalls: false,
            allowed_execs: vec![],
        };
        let opts = WorkloadOptions { files: Some(FileConfig::default()), ..Default::default() };
        self.agent().detector_monitor_with(spec, opts).expect("monitor");
        self.benign_run("learn");
        let det = self.agent().detector();
        let log = self.root().join("log");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let p = det.profile(APP).expect("profile");
            if p.files.dirs.contains_key(log.to_str().unwrap()) {
                break;
            }
            assert!(Instant::now() < deadline, "the log folder was never learned: {:?}", p.files);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// 30 requests of normal work (logging with rotation, temp files and folders, a listing).
    fn benign_run(&self, what: &str) {
        let mut s = self.server();
        for i in 0..30 {
            assert_eq!(s.ask("work").as_deref(), Some("ok"), "{what}: request {i} of the benign run");
        }
        s.stop();
    }

    fn set_mode(&self, mode: Mode) {
        self.agent().detector_set_mode(APP, mode).expect("mode");
    }

    fn file_events(&self) -> Vec<DetectorEvent> {
        self.agent().detector().events().into_iter().filter(|e| e.kind.starts_with("file-") || e.kind == "dir-list-unseen").collect()
    }

    /// The finding of `kind` on `path` by the process `pid`.
    fn wait_finding(&self, kind: &str, path: &Path, pid: u32) -> DetectorEvent {
        let det = self.agent().detector();
        let p = path.to_str().unwrap().to_string();
        det.wait_event(Duration::from_secs(3), |e| e.kind == kind && e.path == p && e.pid == pid)
            .unwrap_or_else(|| panic!("no {kind} on {p} by {pid}: {:?}", self.file_events()))
    }

    fn isolated(&self) -> bool {
        self.agent().detector_status().expect("status").iter().any(|w| w.name == APP && w.isolated)
    }

    fn release(&self) {
        self.agent().detector_release(APP).expect("release");
        assert!(!self.isolated(), "still isolated after release");
    }
}

#[test]
fn file_baseline_learns_then_alerts_in_monitor_and_acts_in_protect() {
    let f = Fixture::new();
    f.learn();
    let profile = f.agent().detector().profile(APP).expect("profile");
    let tmp = f.root().join("tmp");
    assert!(
        profile.files.dirs.keys().filter(|d| d.starts_with(tmp.to_str().unwrap())).count() <= 2,
        "30 temp folders must not grow the profile: {:?}",
        profile.files.dirs
    );
    println!("learned {} directories", profile.files.dirs.len());

    // A benign run under protect: no finding, no action.
    f.set_mode(Mode::Protect);
    let inst = f.lab.pin_dir().file_name().unwrap().to_string_lossy().into_owned();
    let out = run_bulkhead(&["detector", "status", "--instance", &inst, "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let w = &st["workloads"][0];
    assert_eq!(w["learned_dirs"].as_u64(), Some(profile.files.dirs.len() as u64), "status: {st}");
    assert!(w["file_baseline"]["sensitive_paths"].as_array().is_some_and(|a| !a.is_empty()), "status: {st}");
    f.benign_run("protect");
    std::thread::sleep(Duration::from_millis(200));
    assert!(f.file_events().is_empty(), "benign run under protect raised: {:?}", f.file_events());
    assert!(!f.isolated(), "benign run isolated the pod");

    // Monitor: alerted, nothing done.
    f.set_mode(Mode::Monitor);
    let mut s = f.server();
    let pid = s.child.id();
    assert_eq!(s.ask("cron").as_deref(), Some("ok"), "monitor does not stop the write");
    let ev = f.wait_finding("file-write-unseen", &f.root().join("cron.d/evil"), pid);
    assert_eq!(ev.mode, "monitor");
    assert!(ev.kernel_actions.is_empty() && ev.user_actions.is_empty(), "monitor acted: {ev:?}");
    assert!(s.ask("ls").is_some_and(|a| a.starts_with("ls ")));
    let ev = f.wait_finding("dir-list-unseen", Path::new("/"), pid);
    assert!(ev.kernel_actions.is_empty(), "{ev:?}");
    s.stop();
    assert!(!f.isolated(), "monitor isolated the pod");
    std::fs::remove_file(f.root().join("cron.d/evil")).expect("cleanup");

    // Protect: the cron write isolates in the kernel.
    f.set_mode(Mode::Protect);
    let mut s = f.server();
    let pid = s.child.id();
    let _ = s.ask("cron");
    let ev = f.wait_finding("file-write-unseen", &f.root().join("cron.d/evil"), pid);
    assert!(ev.kernel_actions.contains(&"isolated"), "cron write not isolated in the kernel: {ev:?}");
    assert!(f.isolated(), "status does not show the isolation");
    println!("cron write: isolated in the kernel {} ns after the syscall entry", ev.kernel_enforce_ns.unwrap_or(0));
    s.stop();
    f.release();

    // Protect: reading /etc/shadow kills the server before it reads, and isolates.
    let mut s = f.server();
    let pid = s.child.id();
    let answer = s.ask("shadow");
    assert_eq!(answer, None, "the server answered {answer:?}: it read /etc/shadow");
    let st = s.child.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "server not killed: {st:?}");
    let ev = f.wait_finding("file-sensitive-read", Path::new("/etc/shadow"), pid);
    assert!(ev.kernel_actions.contains(&"killed") && ev.kernel_actions.contains(&"isolated"), "{ev:?}");
    println!("/etc/shadow: killed and isolated in the kernel {} ns after the syscall entry", ev.kernel_enforce_ns.unwrap_or(0));
    f.release();

    // Protect: a relative path the kernel cannot judge is resolved and judged by the agent.
    let mut s = f.server();
    let pid = s.child.id();
    let _ = s.ask("relwrite");
    let ev = f.wait_finding("file-write-unseen", &f.root().join("cron.d/evil2"), pid);
    assert!(ev.user_actions.iter().any(|a| a == "isolated"), "relative write not isolated by the agent: {ev:?}");
    assert!(ev.detail.as_deref().is_some_and(|d| d.contains("evil2")), "{ev:?}");
    println!("relative write: isolated by the agent {} us after the syscall entry", ev.isolate_ns.unwrap_or(0) / 1000);
    s.stop();
    f.release();

    // No agent: the kernel still judges, and a relative write waits stopped for the next
    // agent, which judges it from the pinned ring and continues it.
    let mut f = f;
    let kept = f.agent.take().unwrap().stop_keep_enforcing().expect("stop keeping enforcement");
    assert!(kept >= 4, "links kept: {kept}");
    let cron = f.root().join("cron.d");
    let script = format!("cd {} && echo x > rel3", cron.display());
    // Without cargo's LD_LIBRARY_PATH (folders under /root/): the loader's probes there would
    // be sensitive reads this never-learned shell is killed for.
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args(["-c", &script]).env_remove("LD_LIBRARY_PATH").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = bulkhead_lab::netns::spawn_in(&f.app().netns, f.app().cgroup.as_ref().expect("cgroup"), cmd).expect("spawn sh");
    let state = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim().chars().next().unwrap_or('?')));
    let deadline = Instant::now() + Duration::from_secs(3);
    while state(child.id()) != Some('T') {
        if state(child.id()) == Some('Z') || Instant::now() > deadline {
            let st = child.wait().expect("wait");
            panic!("the relative write did not wait stopped for an agent: {st:?}; rel3 exists: {}", cron.join("rel3").exists());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f.agent = Some(f.lab.start_agent(false).expect("agent restarts"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the stopped process was not continued by the new agent");
        std::thread::sleep(Duration::from_millis(10));
    }
    let det = f.agent().detector();
    let p = cron.join("rel3").to_string_lossy().into_owned();
    let ev = det
        .wait_event(Duration::from_secs(3), |e| e.kind == "file-write-unseen" && e.path == p)
        .unwrap_or_else(|| panic!("the new agent did not judge the waiting write: {:?}", det.events()));
    assert!(ev.user_actions.iter().any(|a| a == "isolated"), "{ev:?}");
}
