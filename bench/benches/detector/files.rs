//! The file-system baseline's latencies and per-open cost.
//!
//! Included by the detector bench (`mod files`). The victim pod is learned with a file
//! baseline (a few writes into one folder, a read of /etc/hostname), then put in protect mode
//! with the DetectorPolicy defaults for file findings (unseen write: isolate; sensitive read:
//! kill and isolate). Each iteration runs one offending process in the pod and releases the
//! pod after its finding:
//! - `file_write_to_isolated`: `touch <folder never written>/x`, judged by the file probe on
//!   the openat's entry. From the syscall tracepoint's `bpf_ktime_get_ns` to the same
//!   program's timestamp after it wrote the isolation entry (the finding's
//!   `kernel_enforce_ns`): the isolation is in place before the open runs.
//! - `sensitive_read_to_killed`: `cat /etc/shadow`; the same span, which here also covers the
//!   SIGKILL sent before the open returns (cat never reads a byte).
//! - `file_relative_write_to_isolated`: `sh -c 'cd <folder> && touch x'`: a relative path the
//!   kernel does not judge; from the tracepoint to the agent's isolation entry (ring wake-up,
//!   resolving the path through /proc, the profile lookup, the map write).
//!
//! Per-open cost: a Python loop in the pod opening and closing /etc/hostname 200k times
//! (reads of a non-sensitive path: the common case the probe must not slow), ns per open,
//! with the pod unmonitored (no file probe attached anywhere) and with its file baseline
//! on (protect), 5 interleaved rounds, medians.

use std::time::Duration;

use bulkhead_agent::detect::{Actions, DetectorEvent, FileActions, Mode, WorkloadOptions, WorkloadSpec, files::FileConfig};
use bulkhead_bench::result;

use super::{Bench, NAME, reap, spawn_in_pod, stats};

const ITERATIONS: usize = 40;
const ROUNDS: usize = 5;

fn spec(b: &Bench, mode: Mode) -> WorkloadSpec {
    let v = b.victim();
    WorkloadSpec {
        name: NAME.into(),
        cgroup: v.cgroup.clone().expect("victim cgroup"),
        interface: Some(v.host_veth.clone()),
        mode,
        actions: Actions {
            file_write: FileActions { isolate: true, ..Default::default() },
            sensitive_read: FileActions { kill: true, isolate: true, ..Default::default() },
            ..Default::default()
        },
        syscalls: false,
        allowed_execs: vec![],
    }
}

fn opts() -> WorkloadOptions {
    WorkloadOptions { profile: Some("bench/files".into()), files: Some(FileConfig::default()), ..Default::default() }
}

fn finding(b: &Bench, kind: &str, pid: u32) -> DetectorEvent {
    b.agent()
        .detector()
        .wait_event(Duration::from_secs(3), |e| e.kind == kind && e.pid == pid)
        .unwrap_or_else(|| panic!("no {kind} finding for pid {pid}"))
}

fn run(b: &Bench, argv: &[&str]) -> (u32, Option<i32>) {
    let c = spawn_in_pod(b.victim(), argv);
    let pid = c.id();
    (pid, reap(c).0)
}

/// ns per open+close of a Python loop in the pod.
fn open_loop(b: &Bench) -> f64 {
    let code = "import os,time\nn=200000\nt=time.perf_counter_ns()\nfor _ in range(n):\n    os.close(os.open('/etc/hostname', os.O_RDONLY))\nprint((time.perf_counter_ns()-t)/n)";
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.args(["-c", code]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    let v = b.victim();
    let out = bulkhead_lab::netns::spawn_in(&v.netns, v.cgroup.as_ref().expect("cgroup"), cmd).expect("spawn python").wait_with_output().expect("python");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("open loop output: {:?}", out))
}

pub fn file_latencies(b: &Bench) {
    let learned = b.tmp.join("files-learned");
    let never = b.tmp.join("files-never");
    std::fs::create_dir_all(&learned).expect("folder");
    std::fs::create_dir_all(&never).expect("folder");
    let agent = b.agent();
    agent.detector_monitor_with(spec(b, Mode::Learn), opts()).expect("learn");
    for i in 0..3 {
        let f = learned.join(format!("x{i}"));
        assert_eq!(run(b, &["/usr/bin/touch", f.to_str().unwrap()]).1, None, "touch while learning");
        assert_eq!(run(b, &["/bin/cat", "/etc/hostname"]).1, None, "cat while learning");
        assert_eq!(run(b, &["/bin/sh", "-c", &format!("cd {} && /usr/bin/touch y", learned.display())]).1, None);
    }
    let _ = open_loop(b);
    std::thread::sleep(Duration::from_millis(200));
    agent.detector_monitor_with(spec(b, Mode::Protect), opts()).expect("protect");

    let (mut write, mut read, mut rel, mut failures) = (vec![], vec![], vec![], 0);
    for i in 0..ITERATIONS {
        let f = never.join(format!("w{i}"));
        let (pid, _) = run(b, &["/usr/bin/touch", f.to_str().unwrap()]);
        let ev = finding(b, "file-write-unseen", pid);
        if !ev.kernel_actions.contains(&"isolated") {
            failures += 1;
        }
        write.push(ev.kernel_enforce_ns.unwrap_or(u64::MAX));
        agent.detector_release(NAME).expect("release");

        let (pid, sig) = run(b, &["/bin/cat", "/etc/shadow"]);
        let ev = finding(b, "file-sensitive-read", pid);
        if sig != Some(libc::SIGKILL) || !ev.kernel_actions.contains(&"killed") || !ev.kernel_actions.contains(&"isolated") {
            failures += 1;
        }
        read.push(ev.kernel_enforce_ns.unwrap_or(u64::MAX));
        agent.detector_release(NAME).expect("release");

        let (pid, _) = run(b, &["/bin/sh", "-c", &format!("cd {} && /usr/bin/touch r{i}", never.display())]);
        // The finding is the touch's, a child of the shell.
        let ev = b
            .agent()
            .detector()
            // dash may exec the last command in place of forking it.
            .wait_event(Duration::from_secs(3), |e| e.kind == "file-write-unseen" && (e.ppid == pid || e.pid == pid))
            .unwrap_or_else(|| panic!("no relative-path finding under pid {pid}"));
        if !ev.user_actions.iter().any(|a| a == "isolated") {
            failures += 1;
        }
        rel.push(ev.isolate_ns.unwrap_or(u64::MAX));
        agent.detector_release(NAME).expect("release");
    }
    stats("file_write_to_isolated", "us", 1e3, write);
    stats("sensitive_read_to_killed", "us", 1e3, read);
    stats("file_relative_write_to_isolated", "ms", 1e6, rel);
    result("detector_file_failures", failures);

    // Per-open cost, interleaved.
    let (mut off, mut on) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        let _ = agent.detector_unmonitor(NAME);
        off.push(open_loop(b));
        agent.detector_monitor_with(spec(b, Mode::Protect), opts()).expect("protect");
        on.push(open_loop(b));
    }
    let _ = agent.detector_unmonitor(NAME);
    let (off, on) = (super::median(off), super::median(on));
    println!("detector open+close of a non-sensitive file: unmonitored {off:.0} ns, file baseline {on:.0} ns ({:+.1}%)", (on - off) / off * 100.0);
    result("detector_file_open_unmonitored_ns", format!("{off:.0}"));
    result("detector_file_open_baseline_ns", format!("{on:.0}"));
    result("detector_file_open_overhead_pct", format!("{:.1}", (on - off) / off * 100.0));
}
