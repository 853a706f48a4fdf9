//! The emulator checked by the real clients: kubectl (apply, get, get -w, label, delete) and
//! the official Python client (list and watch). Both are installed by scripts/setup.sh.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_kube_emulator::Emulator;

const PYTHON: &str = "/opt/bulkhead/pyenv/bin/python3";

struct Kubectl {
    _dir: TempDir,
    kubeconfig: std::path::PathBuf,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("bh-kemu-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tempdir");
    TempDir(d)
}

impl Kubectl {
    fn new(emu: &Emulator, tag: &str) -> Self {
        let dir = tempdir(tag);
        let kubeconfig = dir.0.join("kubeconfig");
        std::fs::write(&kubeconfig, emu.kubeconfig()).expect("kubeconfig");
        Kubectl { _dir: dir, kubeconfig }
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig).env("HOME", self._dir.0.as_os_str()).args(args);
        c
    }
    fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut c = self.cmd(args);
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("kubectl {args:?}: {e} (kubectl comes with this machine kind)"));
        if let Some(text) = stdin {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("kubectl output");
        let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubectl {args:?} failed: {e}\n{o}");
        o.into_owned()
    }
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-b, namespace: x}\nspec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {pod: PEER}}}]}]}\n";
const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: tiers.projectcalico.org}\nspec:\n  group: projectcalico.org\n  scope: Cluster\n  names: {plural: tiers, singular: tier, kind: Tier}\n  versions: [{name: v3, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}]\n";

#[test]
fn kubectl_apply_get_watch_label_delete() {
    let emu = Emulator::start().expect("start");
    let k = Kubectl::new(&emu, "kubectl");
    assert!(k.run(&["apply", "--validate=false", "-f", "-"], Some(NS)).contains("namespace/x created"));
    let out = k.run(&["apply", "--validate=false", "-f", "-"], Some(&NP.replace("PEER", "b")));
    assert!(out.contains("networkpolicy.networking.k8s.io/allow-b created"), "{out}");
    // A second apply with a change is a patch of the existing object.
    let out = k.run(&["apply", "--validate=false", "-f", "-"], Some(&NP.replace("PEER", "c")));
    assert!(out.contains("configured"), "{out}");
    let got = k.run(&["get", "netpol", "-n", "x", "allow-b", "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_str(&got).expect("json");
    assert_eq!(v["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["pod"], "c", "{got}");
    assert_eq!(v["metadata"]["generation"], 2, "{got}");
    // CRD, then a custom object through the discovered kind.
    k.run(&["apply", "--validate=false", "-f", "-"], Some(CRD));
    let out = k.run(&["apply", "--validate=false", "-f", "-"], Some("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n"));
    assert!(out.contains("tier.projectcalico.org/security created"), "{out}");
    assert!(k.run(&["get", "tiers"], None).contains("security"));
    // get -w: the list, then live changes (read on a thread so a missing line fails, not hangs).
    let mut w = k.cmd(&["get", "netpol", "-n", "x", "-w", "--no-headers", "-o", "custom-columns=NAME:.metadata.name,TEAM:.metadata.labels.team"]);
    w.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = w.spawn().expect("kubectl get -w");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = vec![rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default()];
    k.run(&["label", "netpol", "-n", "x", "allow-b", "team=red"], None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !seen.iter().any(|l| l.contains("red")) {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen[0].starts_with("allow-b") && seen[0].contains("<none>"), "{seen:?}");
    assert!(seen.iter().any(|l| l.starts_with("allow-b") && l.contains("red")), "the label change did not reach get -w: {seen:?}");
    let labels = k.run(&["get", "netpol", "-n", "x", "--show-labels"], None);
    assert!(labels.contains("team=red"), "{labels}");
    // delete waits (list + watch on the name) until the object is gone.
    let out = k.run(&["delete", "netpol", "-n", "x", "allow-b"], None);
    assert!(out.contains("deleted"), "{out}");
    assert!(emu.get("networking.k8s.io/v1", "NetworkPolicy", "x", "allow-b").is_err());
}

const PY: &str = r#"
import json, sys
from kubernetes import client, config, watch
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
v1.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "py"}})
v1.create_namespaced_pod("py", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"app": "web"}},
                                "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
pods = v1.list_namespaced_pod("py", label_selector="app=web")
rv = pods.metadata.resource_version
names = [p.metadata.name for p in pods.items]
v1.patch_namespaced_pod("a", "py", {"metadata": {"labels": {"tier": "fe"}}})
v1.delete_namespaced_pod("a", "py")
events = []
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_pod, "py", resource_version=rv, timeout_seconds=2):
    events.append([ev["type"], ev["object"].metadata.name])
    if len(events) == 2:
        w.stop()
try:
    v1.read_namespaced_pod("a", "py")
    status = 200
except client.exceptions.ApiException as e:
    status = e.status
print(json.dumps({"names": names, "events": events, "after_delete": status}))
"#;

#[test]
fn python_client_list_and_watch() {
    let emu = Emulator::start().expect("start");
    let dir = tempdir("py");
    let kc = dir.0.join("kubeconfig");
    std::fs::write(&kc, emu.kubeconfig()).expect("kubeconfig");
    let out = Command::new(PYTHON)
        .args(["-c", PY, kc.to_str().expect("utf8")])
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e} (scripts/setup.sh installs the kubernetes client)"));
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python client failed: {e}\n{o}");
    let v: serde_json::Value = serde_json::from_str(o.trim()).unwrap_or_else(|err| panic!("{err}: {o}"));
    assert_eq!(v["names"], serde_json::json!(["a"]), "{o}");
    assert_eq!(v["events"], serde_json::json!([["MODIFIED", "a"], ["DELETED", "a"]]), "{o}");
    assert_eq!(v["after_delete"], 404, "{o}");
}
