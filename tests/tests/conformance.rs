//! (a) The vendored conformance folder passes for every case the agent supports, and
//! (b) no lab of the run leaves anything behind.
use bulkhead_e2e::{LabIdsGuard, lab_ids, leftovers, require_root, run_bulkhead};

#[test]
fn vendored_conformance_cases_pass() {
    run_folder(&["tests/conformance/cases"], &[], 68);
}

/// The same cases with every step written through the Kubernetes API (an API-server
/// emulator) and read by the agent's Kubernetes datastore.
#[test]
fn vendored_conformance_cases_pass_through_the_kubernetes_datastore() {
    run_folder(&["tests/conformance/cases"], &["--datastore", "kubernetes"], 68);
}

/// Cases that change policy, labels and deletions, with every change arriving through a
/// broken watch, a 410 Gone and a full relist.
#[test]
fn conformance_through_forced_relists() {
    let cases = [
        "tests/conformance/cases/k8s-33-stop-enforcing-after-delete.yaml",
        "tests/conformance/cases/calico-c1-admin-deny-all-ingress.yaml",
        "tests/conformance/cases/calico-c2-lower-priority-number-wins.yaml",
        "tests/conformance/cases/anp-pa17-anp-allow-all-over-np.yaml",
        "tests/conformance/cases/anp-egress-inline-cidr.yaml",
    ];
    run_folder(&cases, &["--datastore", "kubernetes", "--force-relist"], cases.len());
}

fn run_folder(paths: &[&str], extra: &[&str], at_least: usize) {
    require_root();
    // Every kind in the folder is supported now: an unsupported case is a failure.
    let mut args = vec!["lab", "conformance", "--json"];
    args.extend_from_slice(extra);
    args.extend_from_slice(paths);
    let out = run_bulkhead(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr:\n{stderr}"));
    let _guard = LabIdsGuard(lab_ids(&report));
    let cases = report["cases"].as_array().expect("cases array");
    assert!(cases.len() >= at_least, "expected at least {at_least} cases, got {}", cases.len());
    let bad: Vec<String> = cases
        .iter()
        .filter(|c| c["status"].as_str() != Some("passed"))
        .map(|c| format!("{} ({}): {}", c["name"], c["status"], c["error"].as_str().unwrap_or("probe mismatch")))
        .collect();
    assert!(bad.is_empty(), "failing cases:\n{}\n\nrunner output:\n{stderr}", bad.join("\n"));
    assert!(out.status.success(), "exit status {:?}", out.status);
    for id in lab_ids(&report) {
        assert_eq!(leftovers(&id), Vec::<String>::new(), "lab {id} left objects behind");
    }
}
