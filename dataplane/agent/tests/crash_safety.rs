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
    let p = std::env::var_os("BULKHEAD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/bulkhead"));
    assert!(p.is_file(), "bulkhead binary not found at {}: run `cargo build --release -p bulkhead` or set BULKHEAD_BIN", p.display());
    p
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
            .args(["agent", "--datastore", self.t_dir.to_str().unwrap(), "--node-netns", &self.node, "--instance", &self.instance])
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
    assert!(connect_port(&t, 9090).is_some(), "after uninstall no program filters the pod's traffic");
    println!("agent start to reconciled: first {first:?}, after SIGKILL {restart:?}, after SIGTERM {after_term:?}");
}
