//! Enforcement that survives the agent: the `bulkhead agent` daemon is killed with SIGKILL and
//! stopped with SIGTERM during a real-packet run; allowed and denied connections keep their
//! verdicts through the crash, the gap and the restart, an established connection keeps
//! working, a second agent on the instance is refused, and only `bulkhead agent uninstall`
//! removes the programs. Needs root and the built `bulkhead` binary.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

mod common;
use common::*;

/// Pod 2 accepts port 8080 from anyone and nothing else.
const ALLOW_8080: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-8080, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: p2}}\n  policyTypes: [Ingress]\n  ingress: [{ports: [{port: 8080, protocol: TCP}]}]\n";

fn bulkhead_bin() -> PathBuf {
    workspace_bin("bulkhead", "BULKHEAD_BIN")
}

/// The daemon under test and its instance; on drop (also when the test panics) the process is
/// killed and the instance uninstalled, so no pins or links outlive the test.
struct Daemon {
    child: Option<Child>,
    instance: String,
    t_dir: PathBuf,
    node: String,
}

impl Daemon {
    fn new(t: &Topo) -> Daemon {
        Daemon { child: None, instance: format!("bhc{}", t.id), t_dir: t.dir.clone(), node: t.node() }
    }

    fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/bulkhead").join(&self.instance)
    }

    fn spawn(&self) -> Child {
        Command::new(bulkhead_bin())
            .args(["agent", "--datastore", self.t_dir.to_str().unwrap(), "--node-netns", &self.node, "--instance", &self.instance, "--metrics-listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bulkhead agent")
    }

    /// Starts the daemon and waits until it says it runs (first sync done: the pods' links
    /// are adopted or attached and the maps reconciled). Returns how long that took.
    fn start(&mut self) -> Duration {
        assert!(self.child.is_none(), "daemon already running");
        let t0 = Instant::now();
        let mut child = self.spawn();
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(l) if l.contains("bulkhead agent running") => break,
                Ok(l) => seen.push(l),
                Err(_) => {
                    let _ = child.kill();
                    let st = child.wait();
                    panic!("agent did not come up ({st:?}); stderr: {seen:#?}");
                }
            }
        }
        self.child = Some(child);
        t0.elapsed()
    }

    fn signal(&mut self, sig: libc::c_int) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        child.wait().expect("wait for the agent")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(bulkhead_bin()).args(["agent", "uninstall", "--instance", &self.instance]).output();
    }
}

/// The verdicts the policy gives, checked with new connections, plus the held connection.
#[track_caller]
fn assert_enforced(t: &Topo, held: &mut std::net::TcpStream, when: &str) {
    assert!(connect_port(t, 8080).is_some(), "{when}: the allowed connection (port 8080) must work");
    assert!(connect_port(t, 9090).is_none(), "{when}: the denied connection (port 9090) must stay denied");
    assert!(echo_once(held), "{when}: the established connection must keep working");
}

#[test]
fn sigkill_and_sigterm_of_the_agent_keep_enforcement_and_only_uninstall_removes_it() {
    let t = Topo::create();
    tcp_echo(&t, 2, 8080);
    tcp_echo(&t, 2, 9090);
    std::fs::write(t.dir.join("policy.yaml"), ALLOW_8080).expect("write policy");
    let mut d = Daemon::new(&t);
    let first = d.start();
    let mut held = connect_port(&t, 8080).expect("allowed connection to hold");
    assert_enforced(&t, &mut held, "agent running");

    // SIGKILL: no chance to clean up or pin anything; the links were pinned when attached.
    let st = d.signal(libc::SIGKILL);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL));
    assert!(d.pin_dir().join("links").read_dir().map(|r| r.count()).unwrap_or(0) >= 4, "links stay pinned after SIGKILL");
    assert_enforced(&t, &mut held, "after SIGKILL, no agent");

    // The restarted agent adopts the pinned links and maps.
    let restart = d.start();
    assert_enforced(&t, &mut held, "after the restart");

    // One agent per instance: a second one is refused and names the first.
    let out = d.spawn().wait_with_output().expect("second agent");
    let err = String::from_utf8_lossy(&out.stderr);
    let pid = d.child.as_ref().unwrap().id().to_string();
    assert!(!out.status.success() && err.contains("another agent runs") && err.contains(&pid), "second agent must be refused naming pid {pid}: {err}");
    assert_enforced(&t, &mut held, "after the refused second agent");

    // SIGTERM, as a DaemonSet rollout sends it: the agent stops, the kernel keeps enforcing.
    let st = d.signal(libc::SIGTERM);
    assert!(st.success(), "SIGTERM is a clean stop: {st:?}");
    assert_enforced(&t, &mut held, "after SIGTERM, no agent");
    let after_term = d.start();
    assert_enforced(&t, &mut held, "after the second restart");

    // Uninstall is refused while the agent runs; after a stop it removes everything.
    let out = Command::new(bulkhead_bin()).args(["agent", "uninstall", "--instance", &d.instance]).output().expect("uninstall");
    assert!(!out.status.success(), "uninstall must be refused while an agent runs");
    assert!(d.signal(libc::SIGTERM).success());
    let out = Command::new(bulkhead_bin()).args(["agent", "uninstall", "--instance", &d.instance]).output().expect("uninstall");
    assert!(out.status.success(), "uninstall: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!d.pin_dir().exists(), "uninstall removes the instance's pins");
    assert!(!PathBuf::from(format!("/run/bulkhead/{}.sock", d.instance)).exists(), "uninstall removes the control socket");
    assert!(connect_port(&t, 9090).is_some(), "after uninstall no program filters the pod's traffic");
    println!("agent start to reconciled: first {first:?}, after SIGKILL {restart:?}, after SIGTERM {after_term:?}");
}

/// A cgroup v2 folder for pod 2's processes, killed and removed on drop.
struct PodCgroup(PathBuf);

impl PodCgroup {
    fn new(t: &Topo) -> PodCgroup {
        let dir = PathBuf::from(format!("/sys/fs/cgroup/unified/bhc{}-p2", t.id));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cgroup {}: {e}", dir.display()));
        PodCgroup(dir)
    }

    /// Runs `argv` inside pod 2 (its network namespace and this cgroup); returns its exit.
    fn run(&self, t: &Topo, argv: &[&str]) -> std::process::ExitStatus {
        use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
        let procs = std::fs::OpenOptions::new().write(true).open(self.0.join("cgroup.procs")).expect("cgroup.procs");
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        bulkhead_netns::pre_exec_enter(&mut cmd, bulkhead_netns::open(&t.pod(2)).expect("pod netns"));
        // SAFETY: one async-signal-safe write on a descriptor the hook owns; no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.status().unwrap_or_else(|e| panic!("running {argv:?} in pod 2: {e}"))
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(bulkhead_bin()).args(args).output().expect("bulkhead");
    assert!(out.status.success(), "bulkhead {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The detector's view of pod 2 from the CLI: (mode, isolated, learned execs).
fn p2_status(instance: &str) -> Option<(String, bool, Vec<String>)> {
    let v: serde_json::Value = serde_json::from_str(&cli(&["detector", "status", "--instance", instance, "--json"])).expect("status JSON");
    let w = v["workloads"].as_array()?.iter().find(|w| w["name"] == "x/p2")?.clone();
    let execs = w["learned_execs"].as_array().map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_string)).collect()).unwrap_or_default();
    Some((w["mode"].as_str().unwrap_or_default().to_string(), w["isolated"] == true, execs))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn detector_policy(mode: &str) -> String {
    format!(
        "apiVersion: bulkhead.io/v1alpha1\nkind: DetectorPolicy\nmetadata: {{name: guard, namespace: x}}\nspec:\n  selector: app == 'p2'\n  mode: {mode}\n  actions: {{exec: [kill, isolate]}}\n"
    )
}

#[test]
fn an_isolated_pod_stays_isolated_and_its_profile_survives_sigkill_and_sigterm() {
    let t = Topo::create();
    let cg = PodCgroup::new(&t);
    tcp_echo(&t, 2, 8080);
    let pods = std::fs::read_to_string(t.dir.join("pods.yaml")).expect("pods");
    let pods = pods.replace(
        &format!("bulkhead.io/interface: {}}}", t.veth(2)),
        &format!("bulkhead.io/interface: {}, bulkhead.io/cgroup: {}}}", t.veth(2), cg.0.display()),
    );
    std::fs::write(t.dir.join("pods.yaml"), pods).expect("pods with cgroup");
    std::fs::write(t.dir.join("detector.yaml"), detector_policy("learn")).expect("detector policy");
    let mut d = Daemon::new(&t);
    d.start();
    let instance = d.instance.clone();

    // Learn: pod 2 runs sleep; then protect through the datastore, as an operator would.
    assert!(cg.run(&t, &["/bin/sleep", "0.1"]).success(), "sleep runs while learning");
    wait_for("the profile to hold sleep", || p2_status(&instance).is_some_and(|(_, _, e)| e.iter().any(|x| x.ends_with("/sleep"))));
    std::fs::write(t.dir.join("detector.yaml"), detector_policy("protect")).expect("protect");
    wait_for("protect mode", || p2_status(&instance).is_some_and(|(m, _, _)| m == "protect"));
    assert!(connect_port(&t, 8080).is_some(), "no policy, not isolated: pod 2 reachable");

    // An exec outside the profile: killed and pod 2 isolated by the kernel.
    let st = cg.run(&t, &["/bin/true"]);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL), "exec outside the profile killed");
    wait_for("isolation", || connect_port(&t, 8080).is_none());
    let before = p2_status(&instance).expect("status");
    assert!(before.1, "status says isolated: {before:?}");
    let profile_of = |i: &str| {
        let v: serde_json::Value = serde_json::from_str(&cli(&["detector", "profile", "list", "--instance", i, "--json"])).expect("list JSON");
        let name = v[0]["name"].as_str().expect("one profile").to_string();
        cli(&["detector", "profile", "export", &name, "--instance", i])
    };
    let profile = profile_of(&instance);

    for (sig, name) in [(libc::SIGKILL, "SIGKILL"), (libc::SIGTERM, "SIGTERM")] {
        d.signal(sig);
        assert!(connect_port(&t, 8080).is_none(), "after {name}, no agent: pod 2 must stay isolated");
        let st = cg.run(&t, &["/bin/true"]);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL), "after {name}, no agent: protect still kills");
        d.start();
        assert!(connect_port(&t, 8080).is_none(), "after {name} and the restart: pod 2 must stay isolated");
        assert_eq!(p2_status(&instance).expect("status"), before, "after {name} and the restart: same mode, isolation and profile");
        assert_eq!(profile_of(&instance), profile, "after {name} and the restart: the profile is the same");
    }
    // Release through the CLI: reachable again.
    cli(&["detector", "release", "--instance", &instance, "--cgroup", cg.0.to_str().unwrap()]);
    assert!(connect_port(&t, 8080).is_some(), "released pod 2 is reachable");

    // A restart that finds protect mode without the profile (lost while no agent ran) only
    // alerts: an empty profile would make every exec a finding.
    d.signal(libc::SIGTERM);
    let profiles = PathBuf::from("/run/bulkhead").join(&instance).join("detector-profiles");
    for e in std::fs::read_dir(&profiles).expect("profiles folder").flatten() {
        std::fs::remove_file(e.path()).expect("remove profile");
    }
    d.start();
    let v: serde_json::Value = serde_json::from_str(&cli(&["detector", "status", "--instance", &instance, "--json"])).expect("status");
    let w = v["workloads"].as_array().and_then(|a| a.iter().find(|w| w["name"] == "x/p2")).expect("x/p2 restored").clone();
    assert!(w["profile_missing"] == true && w["effective_mode"] == "monitor" && w["mode"] == "protect", "{w}");
    assert!(cg.run(&t, &["/bin/true"]).success(), "with its profile missing, protect must not kill");
    assert!(connect_port(&t, 8080).is_some(), "with its profile missing, protect must not isolate");
    // Importing the profile makes it act again.
    let file = t.dir.join("profile-backup.yml.txt");
    std::fs::write(&file, &profile).expect("profile backup");
    cli(&["detector", "profile", "import", file.to_str().unwrap(), "--instance", &instance]);
    let st = cg.run(&t, &["/bin/true"]);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL), "after the import, protect kills again");
}
