//! (a) The vendored conformance folder passes for every case the agent supports, and
//! (b) no lab of the run leaves anything behind.
use bulkhead_e2e::{LabIdsGuard, lab_ids, leftovers, require_root, run_bulkhead};

#[test]
fn vendored_conformance_cases_pass() {
    require_root();
    // Every kind in the folder is supported now: an unsupported case is a failure.
    let out = run_bulkhead(&["lab", "conformance", "tests/conformance/cases", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr:\n{stderr}"));
    let _guard = LabIdsGuard(lab_ids(&report));
    let cases = report["cases"].as_array().expect("cases array");
    assert!(cases.len() >= 60, "expected the whole vendored folder, got {} cases", cases.len());
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
