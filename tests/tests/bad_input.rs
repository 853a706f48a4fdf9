//! (c) Bad input is rejected with a non-zero exit and a message naming the file and field.
use bulkhead_e2e::{TempDir, require_root, run_bulkhead, workspace_root};

fn bad_topology_dir() -> TempDir {
    let dir = TempDir::new("bad-input");
    let good = std::fs::read_to_string(workspace_root().join("tests/conformance/cases/standard.yaml")).unwrap();
    let bad = good.replace("ip: 10.240.2.10", "ip: 10.240.1.300");
    assert_ne!(good, bad);
    std::fs::write(dir.0.join("standard.yaml"), bad).unwrap();
    std::fs::copy(workspace_root().join("tests/conformance/cases/k8s-01-default-deny-ingress.yaml"), dir.0.join("k8s-01.yaml")).unwrap();
    dir
}

#[test]
fn topology_command_names_file_and_field() {
    let dir = bad_topology_dir();
    let out = run_bulkhead(&["lab", "topology", dir.0.join("standard.yaml").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("standard.yaml: pods[3].ip: \"10.240.1.300\" is not an IPv4 address"), "stderr: {stderr}");
}

#[test]
fn conformance_with_bad_topology_fails_with_message() {
    require_root();
    let dir = bad_topology_dir();
    let out = run_bulkhead(&["lab", "conformance", dir.0.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}");
    assert!(stdout.contains("standard.yaml: pods[3].ip"), "stdout: {stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "stdout: {stdout}");
}
