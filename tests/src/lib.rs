//! Helpers for Bulkhead's end-to-end tests: finding the binary, requiring root, temp folders
//! and leftover checks. Every guard cleans up in Drop, so a failing (panicking) test does too.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The `bulkhead` binary: `$BULKHEAD_BIN`, else `<workspace>/target/release/bulkhead`.
/// Panics with instructions when it is missing.
pub fn bulkhead_bin() -> PathBuf {
    let p = std::env::var_os("BULKHEAD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/bulkhead"));
    assert!(
        p.is_file(),
        "bulkhead binary not found at {}: run `cargo build --release -p bulkhead` or set BULKHEAD_BIN",
        p.display()
    );
    p
}

/// Panics unless running as root (the lab creates namespaces, veths and cgroups).
pub fn require_root() {
    // SAFETY: trivial syscall.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "this test needs root: it creates network namespaces, veths and cgroups (CI runs it as root)");
}

/// Runs `bulkhead ARGS...` from the workspace root.
pub fn run_bulkhead(args: &[&str]) -> Output {
    Command::new(bulkhead_bin())
        .args(args)
        .current_dir(workspace_root())
        .env("BULKHEAD_BIN", bulkhead_bin())
        .output()
        .expect("spawning bulkhead")
}

/// Removes the given labs' leftovers on drop (`bulkhead lab cleanup --id`), so that even a
/// test that panics between creating a lab and checking it leaves nothing behind.
#[derive(Default)]
pub struct LabIdsGuard(pub Vec<String>);

impl Drop for LabIdsGuard {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = Command::new(bulkhead_bin()).args(["lab", "cleanup", "--id", id]).output();
        }
    }
}

/// Lab ids found in a `--json` conformance report.
pub fn lab_ids(report: &serde_json::Value) -> Vec<String> {
    report["cases"]
        .as_array()
        .map(|cases| cases.iter().filter_map(|c| c["lab_id"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Everything of lab `id` still present: netns, veths (in the host namespace), cgroups, pins.
pub fn leftovers(id: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/var/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("bh-{id}-")) {
                out.push(format!("netns {n}"));
            }
        }
    }
    if let Ok(o) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if l.contains(&format!("bh{id}")) {
                out.push(format!("veth {l}"));
            }
        }
    }
    for p in [format!("/sys/fs/cgroup/unified/bh-{id}"), format!("/sys/fs/bpf/bulkhead/bh-{id}"), format!("/run/bulkhead/bh-{id}")] {
        if Path::new(&p).exists() {
            out.push(p);
        }
    }
    out
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `/tmp/bulkhead-e2e-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!("bulkhead-e2e-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir_all(&p).expect("creating temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `argv` inside a lab pod (its network namespace and cgroup, joined before exec, so
/// the exec is the pod's). Stdin is a pipe (closed when the child handle goes), output is
/// discarded.
pub fn spawn_in_pod(pod: &bulkhead_lab::PodNetns, argv: &[&str]) -> Child {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
    let cgroup = pod.cgroup.as_ref().unwrap_or_else(|| panic!("pod {} has no cgroup", pod.key));
    bulkhead_lab::netns::spawn_in(&pod.netns, cgroup, cmd).unwrap_or_else(|e| panic!("spawning {argv:?} in {}: {e}", pod.key))
}

/// A long-running process in a lab pod served one request per line on stdin, answering one
/// line on stdout (the detector tests' "learned server").
pub struct LineServer {
    pub child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl LineServer {
    /// Starts `argv` in the pod (its netns and cgroup) with piped stdin and stdout.
    pub fn spawn(pod: &bulkhead_lab::PodNetns, argv: &[&str]) -> LineServer {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let cgroup = pod.cgroup.as_ref().unwrap_or_else(|| panic!("pod {} has no cgroup", pod.key));
        let mut child = bulkhead_lab::netns::spawn_in(&pod.netns, cgroup, cmd).unwrap_or_else(|e| panic!("spawning {argv:?} in {}: {e}", pod.key));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        LineServer { child, stdin, stdout }
    }

    /// Sends a request; the answer line, or `None` when the server died first.
    pub fn ask(&mut self, cmd: &str) -> Option<String> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{cmd}").ok()?;
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_string()),
        }
    }

    /// Ends the server (closing stdin ends its loop; killed after 5 s).
    pub fn stop(mut self) {
        drop(self.stdin);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.child.wait();
    }
}

/// A lab with a running agent and a temp folder, for the detector's end-to-end tests. Drops
/// in order: the agent, then every process left in the pods (a failed test's offenders must
/// not write into the temp folder while it goes; frozen pods are thawed first), the temp
/// folder, the lab.
pub struct LabAgent {
    /// `None` only while a test restarts the agent.
    pub agent: Option<bulkhead_lab::agent::Agent>,
    pub lab: bulkhead_lab::Lab,
    pub tmp: PathBuf,
}

impl LabAgent {
    /// Builds the lab for `topology` (YAML; `file` names it in errors), writes its datastore
    /// and starts an agent (`watch`: re-syncs on datastore changes). Needs root.
    pub fn new(topology: &str, file: &str, watch: bool) -> LabAgent {
        require_root();
        let topo = bulkhead_lab::Topology::parse(topology, Path::new(file)).expect("topology");
        let opts = bulkhead_lab::LabOptions { server_bin: Some(bulkhead_bin()), ..Default::default() };
        let lab = bulkhead_lab::Lab::create(&topo, &opts).expect("lab");
        bulkhead_lab::datastore::Datastore::for_lab(&lab).flush().expect("datastore");
        let agent = lab.start_agent(watch).expect("agent");
        let tmp = std::env::temp_dir().join(format!("bh-e2e-{}", lab.id()));
        std::fs::create_dir_all(&tmp).expect("temp dir");
        LabAgent { agent: Some(agent), lab, tmp }
    }

    /// As [`LabAgent::new`], with the agent reading the lab's file datastore through `wrap`
    /// (a test's stand-in for a slow or faulty source).
    pub fn with_store(
        topology: &str,
        file: &str,
        watch: bool,
        wrap: impl FnOnce(bulkhead_lab::agent::datastore::FileDatastore) -> Box<dyn bulkhead_lab::agent::datastore::Datastore>,
    ) -> LabAgent {
        require_root();
        let topo = bulkhead_lab::Topology::parse(topology, Path::new(file)).expect("topology");
        let opts = bulkhead_lab::LabOptions { server_bin: Some(bulkhead_bin()), ..Default::default() };
        let lab = bulkhead_lab::Lab::create(&topo, &opts).expect("lab");
        bulkhead_lab::datastore::Datastore::for_lab(&lab).flush().expect("datastore");
        let store = bulkhead_lab::agent::datastore::FileDatastore::new(lab.datastore_dir()).expect("file datastore");
        let agent = bulkhead_lab::agent::Agent::start_with(lab.agent_config(watch), wrap(store)).expect("agent");
        let tmp = std::env::temp_dir().join(format!("bh-e2e-{}", lab.id()));
        std::fs::create_dir_all(&tmp).expect("temp dir");
        LabAgent { agent: Some(agent), lab, tmp }
    }

    /// The running agent.
    pub fn agent(&self) -> &bulkhead_lab::agent::Agent {
        self.agent.as_ref().expect("agent running")
    }
}

impl Drop for LabAgent {
    fn drop(&mut self) {
        self.agent.take();
        for p in self.lab.pods() {
            if let Some(cg) = &p.cgroup {
                let _ = bulkhead_lab::agent::detect::cgroup::thaw(cg);
                let _ = bulkhead_lab::agent::detect::cgroup::kill(cg, std::time::Duration::from_secs(2));
            }
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Declares a test file's fixture type: a newtype over [`LabAgent`] (derefs to it), so the
/// file can add its own scenario methods.
#[macro_export]
macro_rules! lab_agent_fixture {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        struct $name($crate::LabAgent);

        impl std::ops::Deref for $name {
            type Target = $crate::LabAgent;
            fn deref(&self) -> &$crate::LabAgent {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut $crate::LabAgent {
                &mut self.0
            }
        }
    };
}
