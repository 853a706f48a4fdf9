//! The detector soak, short (run as root): `bulkhead lab soak` learns a benign workload (HTTP-like
//! server and client, a cron-like job), runs it under protect and must report no action; the
//! same run with one unlearned exec injected must report exactly that action and fail, which
//! shows the soak does see actions. Both leave no lab behind.
use bulkhead_e2e::{LabIdsGuard, require_root, run_bulkhead};

/// Runs the soak with `extra` flags; returns (exit code, JSON report). Registers the lab for
/// cleanup in case the command died halfway.
fn soak(extra: &[&str], guard: &mut LabIdsGuard) -> (i32, serde_json::Value) {
    let mut args = vec!["lab", "soak", "--json"];
    args.extend_from_slice(extra);
    let out = run_bulkhead(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("soak {extra:?} printed no JSON report ({e}); status {:?}; stderr:\n{stderr}", out.status));
    if let Some(id) = report["lab_id"].as_str() {
        guard.0.push(id.to_string());
    }
    (out.status.code().unwrap_or(-1), report)
}

fn assert_lab_gone(report: &serde_json::Value) {
    let id = report["lab_id"].as_str().expect("lab_id in the report");
    let netns = std::fs::read_dir("/var/run/netns")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(!netns.iter().any(|n| n.starts_with(&format!("bh-{id}"))), "lab {id} left network namespaces: {netns:?}");
    for p in [format!("/sys/fs/cgroup/unified/bh-{id}"), format!("/sys/fs/bpf/bulkhead/bh-{id}"), format!("/run/bulkhead/bh-{id}")] {
        assert!(!std::path::Path::new(&p).exists(), "lab {id} left {p}");
    }
}

#[test]
fn benign_soak_under_protect_takes_no_action() {
    require_root();
    let mut guard = LabIdsGuard::default();
    let (code, r) = soak(&["--minutes", "0.5", "--learn-secs", "8"], &mut guard);
    let pretty = serde_json::to_string_pretty(&r).unwrap();
    assert_eq!(r["actions"].as_array().map(Vec::len), Some(0), "actions on the benign workload:\n{pretty}");
    assert_eq!(r["contained"].as_array().map(Vec::len), Some(0), "pods contained:\n{pretty}");
    assert_eq!(code, 0, "soak failed: {}\n{pretty}", r["failures"]);
    assert_eq!(r["workload_ok"], true, "{pretty}");
    // The run really exercised the detector: requests under protect, cron execs seen, a
    // server re-exec, syscalls counted for both pods, no event lost.
    let p = &r["protect"];
    assert!(p["requests_ok"].as_u64().unwrap() > 500, "too few requests under protect:\n{pretty}");
    assert_eq!(p["requests_failed"], 0, "{pretty}");
    assert!(p["cron_runs"].as_u64().unwrap() >= 10, "too few cron runs under protect:\n{pretty}");
    assert!(p["exec_events"].as_u64().unwrap() >= 30, "too few exec events under protect:\n{pretty}");
    assert_eq!(r["server_restarts"], 1, "{pretty}");
    assert_eq!(r["events_dropped"], 0, "{pretty}");
    for (name, n) in r["syscalls_counted"].as_array().unwrap().iter().map(|v| (v[0].as_str().unwrap(), v[1].as_u64().unwrap())) {
        assert!(n > 1000, "{name}: only {n} syscalls counted:\n{pretty}");
    }
    assert_lab_gone(&r);
}

#[test]
fn soak_reports_an_injected_violation() {
    require_root();
    let mut guard = LabIdsGuard::default();
    let (code, r) = soak(&["--minutes", "0.25", "--learn-secs", "5", "--inject-violation"], &mut guard);
    let pretty = serde_json::to_string_pretty(&r).unwrap();
    assert_eq!(code, 1, "a soak with an injected violation must fail:\n{pretty}");
    let actions = r["actions"].as_array().expect("actions");
    assert_eq!(actions.len(), 1, "exactly the injected exec is an action:\n{pretty}");
    let a = &actions[0];
    assert_eq!(a["path"], "/usr/bin/id", "{pretty}");
    assert_eq!(a["workload"], "soak/web", "{pretty}");
    let kernel: Vec<&str> = a["kernel_actions"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(kernel.contains(&"killed") && kernel.contains(&"isolated"), "{pretty}");
    assert!(r["contained"].as_array().unwrap().iter().any(|c| c == "soak/web: isolated"), "{pretty}");
    // Isolation of the web pod stops the client's requests: the soak sees that too.
    assert!(r["protect"]["requests_failed"].as_u64().unwrap() > 0, "{pretty}");
    assert_eq!(r["workload_ok"], false, "{pretty}");
    assert_lab_gone(&r);
}
