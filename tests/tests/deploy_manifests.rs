//! deploy/kubernetes validates offline against the Kubernetes schemas: what `kubectl apply -k
//! deploy/kubernetes` would send, rendered by kustomize and checked strictly (unknown fields
//! fail) by kubernetes-validate, installed by scripts/setup.sh. A broken copy must fail, so the
//! check cannot pass by checking nothing. The CRDs' staleness is checked in the agent
//! (crds::tests) and fw-sync (deploy_files).
use std::process::Command;

use bulkhead_e2e::{TempDir, workspace_root};

const VALIDATE: &str = "/opt/bulkhead/pyenv/bin/kubernetes-validate";
/// The Kubernetes version the manifests target (kubectl on these machines is 1.32).
const VERSION: &str = "1.32.0";

fn rendered() -> String {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(workspace_root().join("deploy/kubernetes"))
        .output()
        .unwrap_or_else(|e| panic!("kubectl kustomize: {e} (kubectl comes with this machine kind)"));
    assert!(out.status.success(), "kubectl kustomize failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn validate(text: &str, tag: &str) -> (bool, String) {
    let dir = TempDir::new(tag);
    let f = dir.0.join("all.yaml");
    std::fs::write(&f, text).expect("write rendered manifests");
    let out = Command::new(VALIDATE)
        .args(["-k", VERSION, "--strict"])
        .arg(&f)
        .output()
        .unwrap_or_else(|e| panic!("{VALIDATE}: {e} (scripts/setup.sh installs kubernetes-validate)"));
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && !log.contains("ERROR") && !log.contains("FAIL"), log)
}

#[test]
fn manifests_validate_offline_and_a_broken_one_does_not() {
    let text = rendered();
    for kind in ["kind: DaemonSet", "kind: Deployment", "kind: ClusterRole", "kind: CustomResourceDefinition", "kind: Namespace"] {
        assert!(text.contains(kind), "the kustomization renders no {kind}");
    }
    let (ok, log) = validate(&text, "deploy-ok");
    assert!(ok, "deploy/kubernetes does not validate:\n{log}");
    let passed = log.matches(" passed for resource ").count();
    assert!(passed >= 20, "only {passed} resources validated:\n{log}");
    let broken = text.replacen("hostNetwork: true", "hostNetwrk: true", 1);
    assert_ne!(broken, text, "the agent DaemonSet sets hostNetwork");
    let (ok, log) = validate(&broken, "deploy-broken");
    assert!(!ok, "a misspelled field passed validation:\n{log}");
}
