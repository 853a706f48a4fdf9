//! `bulkhead lab soak`: a benign workload learned by the detector, then run under protect for
//! a long time; any action the detector takes on it is a false positive and fails the run.
//!
//! The lab has two monitored pods. `soak/web` runs an HTTP-like server (`lab soak-serve`) and a
//! cron-like job started every few seconds (`/bin/sh` running `date`, `cat`, `ls`, as crond
//! would start it). `soak/client` runs a client (`lab soak-client`) that sends a request to the
//! server every 20 ms. Both pods are monitored with syscall counting and the syscall-sequence
//! model (alert only), first in learn mode, then in protect mode with kill + isolate, the
//! in-kernel actions. Halfway through the
//! protect phase the server is restarted (a rolling update: the same binary exec'd again).
//!
//! The report lists every action (events with kernel or user actions, violations, isolated or
//! frozen pods at the end), the alerts without action by kind (the sequence model's false
//! alarms), the client's requests made and failed, the cron runs, and the
//! probes' event drops. Teardown: dropping the lab removes everything; on SIGINT/SIGTERM the
//! lab's signal thread (see [`crate::teardown`]) does, including the workers in the pods'
//! cgroups.
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_agent::detect::{Actions, DetectorEvent, FileActions, Mode, SequenceConfig, WorkloadOptions, WorkloadSpec, files::FileConfig};
use serde::{Deserialize, Serialize};

use crate::datastore::Datastore;
use crate::error::{LabError, Result};
use crate::lab::{Lab, LabOptions, PodNetns};
use crate::teardown;
use crate::topology::Topology;

const TOPOLOGY: &str = "kind: Topology
name: soak
namespaces:
  - {name: soak, labels: {kubernetes.io/metadata.name: soak}}
pods:
  - {namespace: soak, name: web, ip: 10.244.0.10, labels: {app: web}}
  - {namespace: soak, name: client, ip: 10.244.0.11, labels: {app: client}}
ports:
  - {port: 8080, protocol: TCP}
";
const WEB: &str = "soak/web";
const CLIENT: &str = "soak/client";
const PORT: u16 = 8080;
/// Pause between two requests of the client (50 requests per second).
const CLIENT_INTERVAL_MS: u64 = 20;
/// The cron-like job. PATH is set as crond sets it, so the execs are the same every run.
const CRON_SCRIPT: &str = "date > /dev/null; cat /proc/loadavg > /dev/null; ls / > /dev/null";
/// How often the run checks the pods' isolation and freeze state and prints progress.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// The negative control's binary: present on the machine, never run by the benign workload.
pub const INJECTED_BINARY: &str = "/usr/bin/id";

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// Length of the protect phase, minutes (fractions allowed).
    pub minutes: f64,
    /// Length of the learn phase; default a quarter of the protect phase, within 5..=60 s.
    pub learn_secs: Option<f64>,
    /// Negative control: a third into the protect phase, run one binary the profile never saw
    /// (`/usr/bin/id` in the web pod). The run must then report that action and fail.
    pub inject_violation: bool,
}

impl SoakOptions {
    fn learn(&self) -> Duration {
        Duration::from_secs_f64(self.learn_secs.unwrap_or(self.minutes * 60.0 / 4.0).clamp(5.0, 60.0))
    }
    /// The cron period: at least four runs while learning, at most one per 15 s.
    fn cron_every(&self) -> Duration {
        Duration::from_secs_f64((self.learn().as_secs_f64() / 4.0).clamp(1.0, 15.0))
    }
}

/// The client's counters (cumulative, printed by `lab soak-client` once a second).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientStats {
    /// Requests answered with `200` (possibly after retries).
    pub ok: u64,
    /// Requests that failed all attempts.
    pub failed: u64,
    /// Attempts repeated after a failure (connection refused while the server restarts).
    pub retried: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// One action the detector took (or a violation it reported) during the protect phase.
#[derive(Clone, Debug, Serialize)]
pub struct SoakAction {
    /// Seconds after the start of the protect phase.
    pub at_s: f64,
    pub workload: Option<String>,
    pub pid: u32,
    pub ppid: u32,
    pub path: String,
    pub kind: &'static str,
    pub kernel_actions: Vec<&'static str>,
    pub user_actions: Vec<String>,
}

/// Counts of one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseReport {
    pub seconds: f64,
    /// Client requests in this phase.
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub requests_retried: u64,
    /// Cron-like job runs and how many exited non-zero, were killed or hung.
    pub cron_runs: u64,
    pub cron_failed: u64,
    /// Exec events the detector reported for the pods.
    pub exec_events: u64,
    /// Detector counters (kernel) over the phase: `detector_*` deltas.
    pub counters: Vec<(String, u64)>,
}

/// The soak's result.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    pub lab_id: String,
    pub learn: PhaseReport,
    pub protect: PhaseReport,
    /// Executables learned per workload at the switch to protect.
    pub learned: Vec<(String, Vec<String>)>,
    /// Syscalls counted per workload over the whole run (shows the syscall probe was on).
    pub syscalls_counted: Vec<(String, u64)>,
    /// Events with an action, and violations, during protect. Must be empty.
    pub actions: Vec<SoakAction>,
    /// Findings without action during protect (alert-only network and syscall-sequence
    /// findings), by kind: the false alarms of a benign run. Reported, not a failure.
    pub alerts: BTreeMap<&'static str, u64>,
    /// The first alerts in full (`+seconds kind workload: detail`), to see what they were.
    pub alert_samples: Vec<String>,
    /// Pods isolated or frozen at any check during protect (`name: isolated|frozen`).
    pub contained: Vec<String>,
    /// Probe events lost (ring buffer full) over the whole run.
    pub events_dropped: u64,
    /// Whether the workload itself kept working (client alive, no failed request or cron run).
    pub workload_ok: bool,
    /// Why the run failed, one line per reason; empty when it passed.
    pub failures: Vec<String>,
    /// Server restarts done during protect (a benign re-exec).
    pub server_restarts: u32,
    /// Whether a violation was injected (negative control, `--inject-violation`).
    pub injected_violation: bool,
}

impl SoakReport {
    /// Passed: no action, no violation, no drop, the workload worked.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn soak_err(message: impl Into<String>) -> LabError {
    LabError::Server { netns: "soak".into(), message: message.into() }
}

/// Starts `cmd` inside the pod (see [`crate::netns::spawn_in`]).
fn spawn_in_pod(pod: &PodNetns, cmd: Command) -> Result<Child> {
    let cg = pod.cgroup.as_ref().ok_or_else(|| soak_err(format!("pod {} has no cgroup", pod.key)))?;
    crate::netns::spawn_in(&pod.netns, cg, cmd)
}

/// The HTTP-like server in the web pod; returns once it printed `ready`.
fn start_server(bin: &Path, web: &PodNetns) -> Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.args(["lab", "soak-serve", "--port", &PORT.to_string()]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = spawn_in_pod(web, cmd)?;
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        return Err(soak_err(format!("soak server said {line:?} instead of \"ready\"")));
    }
    Ok(child)
}

/// The client in the client pod; a thread keeps its latest counters in the returned cell.
fn start_client(bin: &Path, client: &PodNetns, to: SocketAddr) -> Result<(Child, Arc<Mutex<ClientStats>>)> {
    let mut cmd = Command::new(bin);
    cmd.args(["lab", "soak-client", "--to", &to.to_string(), "--interval-ms", &CLIENT_INTERVAL_MS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = spawn_in_pod(client, cmd)?;
    let stats = Arc::new(Mutex::new(ClientStats::default()));
    let out = child.stdout.take().expect("piped");
    let cell = stats.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(std::result::Result::ok) {
            match serde_json::from_str::<ClientStats>(&line) {
                Ok(s) => *cell.lock().unwrap() = s,
                Err(e) => tracing::warn!(line, error = %e, "soak client printed an unreadable line"),
            }
        }
    });
    Ok((child, stats))
}

/// One run of the cron-like job in the web pod; true when it exited 0 within 10 s.
fn run_cron(web: &PodNetns) -> Result<bool> {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", CRON_SCRIPT]).env_clear().env("PATH", "/usr/bin:/bin").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawn_in_pod(web, cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                if !st.success() {
                    tracing::warn!(status = ?st, signal = ?st.signal(), "cron job failed");
                }
                return Ok(st.success());
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                tracing::warn!("cron job hung for 10 s");
                return Ok(false);
            }
        }
    }
}

fn detector_counters(agent: &bulkhead_agent::Agent) -> Result<Vec<(String, u64)>> {
    let all = agent.counters().map_err(|e| LabError::Agent(e.to_string()))?;
    Ok(all.into_iter().filter(|(k, _)| k.starts_with("detector_")).collect())
}

fn delta(after: &[(String, u64)], before: &[(String, u64)]) -> Vec<(String, u64)> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.iter().find(|(b, _)| b == k).map_or(0, |(_, x)| *x)))
        .collect()
}

fn counter(list: &[(String, u64)], name: &str) -> u64 {
    list.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v)
}

/// The workload processes of a running soak; killed on drop (the lab's teardown kills the
/// pods' cgroups again, this makes the order explicit).
struct Workers {
    server: Option<Child>,
    client: Option<Child>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in [self.server.as_mut(), self.client.as_mut()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A phase's running counters.
struct Phase {
    start: Instant,
    client_at_start: ClientStats,
    cron_runs: u64,
    cron_failed: u64,
    events_at_start: usize,
    counters_at_start: Vec<(String, u64)>,
}

/// Runs the soak. Progress goes to stderr. Returns `Err` only when the lab or the workload
/// could not be set up (or a signal arrived); a run with actions returns a failing report.
pub fn run(opts: &SoakOptions, lab_opts: &LabOptions) -> Result<SoakReport> {
    let bin = crate::server::server_binary()?;
    let topo = Topology::parse(TOPOLOGY, Path::new("soak.yaml"))?;
    eprintln!("soak: building the lab ...");
    let lab = Lab::create(&topo, &LabOptions { serve: false, ..lab_opts.clone() })?;
    Datastore::for_lab(&lab).flush()?;
    let agent = lab.start_agent(false)?;
    let agent_err = |e: bulkhead_agent::AgentError| LabError::Agent(e.to_string());
    let (web, client) = (&lab.pods()[0], &lab.pods()[1]);
    for pod in [web, client] {
        // The syscall-sequence model alerts only: its findings are counted (false alarms of a
        // benign run); the exec decisions and the file baseline (DetectorPolicy defaults:
        // unseen writes isolate, sensitive reads kill and isolate) are the ones acting.
        let opts = WorkloadOptions { sequences: Some(SequenceConfig::default()), files: Some(FileConfig::default()), ..Default::default() };
        agent
            .detector_monitor_with(WorkloadSpec {
                name: pod.key.clone(),
                cgroup: pod.cgroup.clone().ok_or_else(|| soak_err(format!("pod {} has no cgroup", pod.key)))?,
                interface: Some(pod.host_veth.clone()),
                mode: Mode::Learn,
                actions: Actions {
                    kill: true,
                    isolate: true,
                    file_write: FileActions { isolate: true, ..Default::default() },
                    sensitive_read: FileActions { kill: true, isolate: true, ..Default::default() },
                    ..Default::default()
                },
                syscalls: true,
                allowed_execs: vec![],
            }, opts)
            .map_err(agent_err)?;
    }
    let det = agent.detector();
    let (learn, protect, cron_every) = (opts.learn(), Duration::from_secs_f64(opts.minutes * 60.0), opts.cron_every());
    eprintln!(
        "soak: lab {}; learning for {:.0} s, then protect (kill + isolate) for {:.1} min; cron job every {:.1} s",
        lab.id(),
        learn.as_secs_f64(),
        protect.as_secs_f64() / 60.0,
        cron_every.as_secs_f64()
    );

    let mut workers = Workers { server: Some(start_server(&bin, web)?), client: None };
    let (c, stats) = start_client(&bin, client, SocketAddr::from((web.ip, PORT)))?;
    workers.client = Some(c);
    let start_phase = |det: &bulkhead_agent::detect::Shared| -> Result<Phase> {
        Ok(Phase {
            start: Instant::now(),
            client_at_start: stats.lock().unwrap().clone(),
            cron_runs: 0,
            cron_failed: 0,
            events_at_start: det.events().len(),
            counters_at_start: detector_counters(&agent)?,
        })
    };
    let mut failures = Vec::new();
    let mut contained = Vec::new();
    let mut server_restarts = 0;

    // One loop for both phases: the same behaviour, only the mode differs.
    let mut drive = |phase: &mut Phase, length: Duration, restart_at: Option<Duration>, inject_at: Option<Duration>, workers: &mut Workers, check: bool| -> Result<()> {
        let mut next_cron = Instant::now();
        let mut next_check = Instant::now() + CHECK_EVERY;
        let mut restart_at = restart_at.map(|d| phase.start + d);
        let mut inject_at = inject_at.map(|d| phase.start + d);
        while phase.start.elapsed() < length {
            if teardown::shutting_down() {
                return Err(soak_err("interrupted"));
            }
            if Instant::now() >= next_cron {
                phase.cron_runs += 1;
                if !run_cron(web)? {
                    phase.cron_failed += 1;
                }
                next_cron += cron_every;
            }
            if restart_at.is_some_and(|t| Instant::now() >= t) {
                restart_at = None;
                if let Some(mut s) = workers.server.take() {
                    let _ = s.kill();
                    let _ = s.wait();
                }
                workers.server = Some(start_server(&bin, web)?);
                server_restarts += 1;
                eprintln!("soak: server restarted (benign re-exec)");
            }
            if inject_at.is_some_and(|t| Instant::now() >= t) {
                inject_at = None;
                let mut c = spawn_in_pod(web, {
                    let mut cmd = Command::new(INJECTED_BINARY);
                    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
                    cmd
                })?;
                let st = c.wait().map_err(|e| soak_err(format!("waiting for {INJECTED_BINARY}: {e}")))?;
                eprintln!("soak: injected {INJECTED_BINARY} (negative control): {st:?}");
            }
            if let Some(st) = workers.client.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(soak_err(format!("the client exited: {st:?} (signal {:?})", st.signal())));
            }
            if Instant::now() >= next_check {
                next_check += CHECK_EVERY;
                let s = stats.lock().unwrap().clone();
                eprintln!(
                    "soak: {:>5.0} s: {} requests ok, {} failed; {} cron runs",
                    phase.start.elapsed().as_secs_f64(),
                    s.ok - phase.client_at_start.ok,
                    s.failed - phase.client_at_start.failed,
                    phase.cron_runs
                );
                if check {
                    for w in agent.detector_status().map_err(agent_err)? {
                        for (on, what) in [(w.isolated, "isolated"), (w.frozen, "frozen")] {
                            let line = format!("{}: {what}", w.name);
                            if on && !contained.contains(&line) {
                                eprintln!("soak: ACTION: {line}");
                                contained.push(line);
                            }
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50).min(next_cron.saturating_duration_since(Instant::now())));
        }
        Ok(())
    };
    let finish = |phase: &Phase, det: &bulkhead_agent::detect::Shared| -> Result<PhaseReport> {
        // Lets the last second of client counters and exec events arrive.
        std::thread::sleep(Duration::from_millis(1200));
        let s = stats.lock().unwrap().clone();
        let events = det.events();
        Ok(PhaseReport {
            seconds: phase.start.elapsed().as_secs_f64(),
            requests_ok: s.ok - phase.client_at_start.ok,
            requests_failed: s.failed - phase.client_at_start.failed,
            requests_retried: s.retried - phase.client_at_start.retried,
            cron_runs: phase.cron_runs,
            cron_failed: phase.cron_failed,
            exec_events: events.len().saturating_sub(phase.events_at_start) as u64,
            counters: delta(&detector_counters(&agent)?, &phase.counters_at_start),
        })
    };

    let mut learn_phase = start_phase(&det)?;
    drive(&mut learn_phase, learn, None, None, &mut workers, false)?;
    let learn_report = finish(&learn_phase, &det)?;
    let mut learned = Vec::new();
    for name in [WEB, CLIENT] {
        agent.detector_set_mode(name, Mode::Protect).map_err(agent_err)?;
    }
    let execs_of = |name: &str| -> Vec<String> {
        let mut v: Vec<String> = det.events().iter().filter(|e| e.workload.as_deref() == Some(name) && e.mode == "learn").map(|e| e.path.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    for name in [WEB, CLIENT] {
        learned.push((name.to_string(), execs_of(name)));
    }
    eprintln!("soak: learned {learned:?}; protect for {:.1} min", protect.as_secs_f64() / 60.0);

    let mut protect_phase = start_phase(&det)?;
    let protect_start_ts = bulkhead_agent::clock::monotonic_ns();
    let inject_at = opts.inject_violation.then_some(protect / 3);
    drive(&mut protect_phase, protect, Some(protect / 2), inject_at, &mut workers, true)?;
    let protect_report = finish(&protect_phase, &det)?;

    let actions: Vec<SoakAction> = det
        .events()
        .iter()
        .skip(protect_phase.events_at_start)
        .filter(|e: &&DetectorEvent| e.is_violation() || !e.kernel_actions.is_empty() || !e.user_actions.is_empty())
        .map(|e| SoakAction {
            at_s: e.ts_ns.saturating_sub(protect_start_ts) as f64 / 1e9,
            workload: e.workload.clone(),
            pid: e.pid,
            ppid: e.ppid,
            path: e.path.clone(),
            kind: e.kind,
            kernel_actions: e.kernel_actions.clone(),
            user_actions: e.user_actions.clone(),
        })
        .collect();
    let mut alerts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut alert_samples = Vec::new();
    for e in det.events().iter().skip(protect_phase.events_at_start) {
        if e.kernel_actions.is_empty() && e.user_actions.is_empty() && !matches!(e.kind, "exec" | "violation") {
            *alerts.entry(e.kind).or_default() += 1;
            if alert_samples.len() < 10 {
                let at = e.ts_ns.saturating_sub(protect_start_ts) as f64 / 1e9;
                let who = e.workload.as_deref().unwrap_or("?");
                alert_samples.push(format!("+{at:.1}s {} {who}: {}", e.kind, e.detail.as_deref().or(e.dst.as_deref()).unwrap_or("")));
            }
        }
    }
    for w in agent.detector_status().map_err(agent_err)? {
        for (on, what) in [(w.isolated, "isolated"), (w.frozen, "frozen")] {
            let line = format!("{}: {what}", w.name);
            if on && !contained.contains(&line) {
                contained.push(line);
            }
        }
    }
    let mut syscalls_counted = Vec::new();
    for name in [WEB, CLIENT] {
        let n = agent.detector_syscalls(name).map_err(agent_err)?.iter().map(|s| s.1).sum();
        syscalls_counted.push((name.to_string(), n));
    }
    let total = detector_counters(&agent)?;
    let events_dropped = counter(&total, "detector_events_dropped");
    let map_full = counter(&total, "detector_syscall_map_full");

    if !actions.is_empty() {
        failures.push(format!("{} detector action(s)/violation(s) during protect", actions.len()));
    }
    if !contained.is_empty() {
        failures.push(format!("pods contained: {}", contained.join(", ")));
    }
    if events_dropped > 0 {
        failures.push(format!("{events_dropped} probe event(s) dropped: some execs were not observed"));
    }
    if map_full > 0 {
        failures.push(format!("syscall count map full {map_full} time(s)"));
    }
    for (name, p) in [("learn", &learn_report), ("protect", &protect_report)] {
        if p.requests_failed > 0 {
            failures.push(format!("{name}: {} client request(s) failed (last: {:?})", p.requests_failed, stats.lock().unwrap().last_error));
        }
        if p.requests_ok == 0 {
            failures.push(format!("{name}: the client made no successful request"));
        }
        if p.cron_failed > 0 {
            failures.push(format!("{name}: {} of {} cron job run(s) failed", p.cron_failed, p.cron_runs));
        }
    }
    if learned.iter().any(|(_, v)| v.is_empty()) {
        failures.push(format!("a workload learned no exec (the probe saw nothing): {learned:?}"));
    }
    if protect_report.exec_events == 0 {
        failures.push("no exec event during protect: the soak did not exercise the exec probe".into());
    }
    if syscalls_counted.iter().any(|(_, n)| *n == 0) {
        failures.push(format!("no syscall counted for a workload: {syscalls_counted:?}"));
    }
    let workload_ok = !failures.iter().any(|f| f.contains("client") || f.contains("cron"));
    drop(workers);
    let lab_id = lab.id().to_string();
    drop(agent);
    drop(lab);
    Ok(SoakReport {
        lab_id,
        learn: learn_report,
        protect: protect_report,
        learned,
        syscalls_counted,
        actions,
        alerts,
        alert_samples,
        contained,
        events_dropped,
        workload_ok,
        failures,
        server_restarts,
        injected_violation: opts.inject_violation,
    })
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "soak in lab {}", self.lab_id)?;
        for (name, p) in [("learn", &self.learn), ("protect", &self.protect)] {
            writeln!(
                f,
                "  {name:<8} {:>7.1} s: {} requests ok, {} failed ({} retried); {} cron runs, {} failed; {} exec events",
                p.seconds, p.requests_ok, p.requests_failed, p.requests_retried, p.cron_runs, p.cron_failed, p.exec_events
            )?;
        }
        for (name, execs) in &self.learned {
            writeln!(f, "  learned {name}: {}", execs.join(", "))?;
        }
        for (name, n) in &self.syscalls_counted {
            writeln!(f, "  syscalls counted {name}: {n}")?;
        }
        writeln!(f, "  server restarts under protect: {}", self.server_restarts)?;
        if self.injected_violation {
            writeln!(f, "  injected violation (negative control): {INJECTED_BINARY}")?;
        }
        writeln!(f, "  probe events dropped: {}", self.events_dropped)?;
        let alerts: Vec<String> = self.alerts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        writeln!(f, "  alerts (no action): {}", if alerts.is_empty() { "none".to_string() } else { alerts.join(", ") })?;
        for a in &self.alert_samples {
            writeln!(f, "    {a}")?;
        }
        writeln!(f, "  actions: {}", self.actions.len())?;
        for a in &self.actions {
            writeln!(
                f,
                "    +{:.1}s {} {:?} pid {} (ppid {}) {}: kernel {:?} user {:?}",
                a.at_s, a.kind, a.workload, a.pid, a.ppid, a.path, a.kernel_actions, a.user_actions
            )?;
        }
        for c in &self.contained {
            writeln!(f, "    contained: {c}")?;
        }
        if self.passed() {
            write!(f, "PASSED: no action taken on the benign workload")
        } else {
            write!(f, "FAILED: {}", self.failures.join("; "))
        }
    }
}

/// `lab soak-serve`: the HTTP-like server. Answers every `GET` with `200` and a small body,
/// one thread per connection; prints `ready` once listening.
pub fn serve(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| LabError::Sys { context: format!("binding TCP {port}"), source: e })?;
    println!("ready");
    let _ = std::io::stdout().flush();
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let first = String::from_utf8_lossy(req.split(|b| *b == b'\r').next().unwrap_or_default()).into_owned();
            let (status, body) = match first.split(' ').collect::<Vec<_>>()[..] {
                ["GET", path, _] => ("200 OK", format!("hello from soak/web: {path}\n")),
                _ => ("400 Bad Request", "bad request\n".to_string()),
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        });
    }
    Ok(())
}

/// One request: connect, `GET /n`, read the whole answer, expect `200`.
fn request(to: SocketAddr, n: u64) -> std::result::Result<(), String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    write!(s, "GET /{n} HTTP/1.1\r\nHost: web\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    if answer.starts_with("HTTP/1.1 200 ") && answer.ends_with(&format!("/{n}\n")) {
        Ok(())
    } else {
        Err(format!("bad answer: {:?}", answer.chars().take(80).collect::<String>()))
    }
}

/// `lab soak-client`: requests to `to` every `interval`, each tried up to 3 times 100 ms apart
/// (a restarting server refuses connections for a moment); prints its cumulative
/// [`ClientStats`] as a JSON line once a second. Runs until killed.
pub fn client(to: SocketAddr, interval: Duration) -> Result<()> {
    let mut stats = ClientStats::default();
    let mut last_print = Instant::now();
    let mut out = std::io::stdout();
    for n in 0.. {
        let mut attempt = 0;
        loop {
            match request(to, n) {
                Ok(()) => {
                    stats.ok += 1;
                    break;
                }
                Err(e) if attempt < 2 => {
                    attempt += 1;
                    stats.retried += 1;
                    stats.last_error = Some(e);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    stats.failed += 1;
                    stats.last_error = Some(e);
                    break;
                }
            }
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let line = serde_json::to_string(&stats).expect("stats serialise");
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                // The soak is gone (its pipe closed): nobody reads the counters any more.
                return Ok(());
            }
        }
        std::thread::sleep(interval);
    }
    Ok(())
}
