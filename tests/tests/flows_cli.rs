//! `bulkhead flows` against a running agent with real packets (root): flow records named
//! after the pods at both ends, filtered by verdict, pod, namespace, label, port; as a table
//! and as JSON lines; followed live; a filter that cannot match is refused naming it.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_e2e::{LabAgent, bulkhead_bin, run_bulkhead};
use bulkhead_lab::Protocol;
use bulkhead_lab::agent::detect::{Actions, Mode, WorkloadSpec};
use bulkhead_lab::probe::probe;

const TOPOLOGY: &str = "
kind: Topology
name: flows
namespaces:
  - name: fl
    labels: {kubernetes.io/metadata.name: fl}
pods:
  - {namespace: fl, name: a, ip: 10.245.0.10, labels: {app: a}}
  - {namespace: fl, name: b, ip: 10.245.0.11, labels: {app: b}}
  - {namespace: fl, name: c, ip: 10.245.0.12, labels: {app: c}}
ports:
  - {port: 8080, protocol: TCP}
";
/// c admits a only.
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-a, namespace: fl}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]
";
const T: Duration = Duration::from_millis(500);

fn flows(instance: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["flows", "--instance", instance, "--last", "1000"];
    all.extend_from_slice(args);
    let out = run_bulkhead(&all);
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[test]
fn flows_are_named_after_pods_filtered_followed_and_bad_filters_refused() {
    let f = LabAgent::new(TOPOLOGY, "flows.yaml", false);
    std::fs::write(f.lab.datastore_dir().join("policy.yaml"), POLICY).expect("policy");
    f.agent().sync_now().expect("sync");
    let instance = f.lab.pin_dir().file_name().expect("instance").to_string_lossy().into_owned();
    // Every new flow of a monitored workload is reported (learn mode: nothing is judged).
    for p in f.lab.pods() {
        f.agent()
            .detector_monitor(WorkloadSpec {
                name: p.key.clone(),
                cgroup: p.cgroup.clone().expect("cgroup"),
                interface: Some(p.host_veth.clone()),
                mode: Mode::Learn,
                actions: Actions::default(),
                syscalls: false,
                allowed_execs: vec![],
            })
            .expect("monitor");
    }
    let pod = |n: &str| f.lab.pods().iter().find(|p| p.key == format!("fl/{n}")).expect("pod").clone();
    assert!(probe(&pod("a"), pod("c").ip, 8080, Protocol::Tcp, T), "a reaches c");
    assert!(!probe(&pod("b"), pod("c").ip, 8080, Protocol::Tcp, T), "b is denied");

    // The agent writes the log within its tick; wait for the denied flow.
    let deadline = Instant::now() + Duration::from_secs(5);
    let denied = loop {
        let (code, out, err) = flows(&instance, &["--verdict", "denied", "-o", "jsonl"]);
        assert_eq!(code, 0, "{err}");
        let l = lines(&out);
        if !l.is_empty() {
            break l;
        }
        assert!(Instant::now() < deadline, "no denied flow in the log");
        std::thread::sleep(Duration::from_millis(100));
    };
    for v in &denied {
        assert_eq!(v["kind"], "denied", "{v}");
        assert_eq!((v["src_workload"]["name"].as_str(), v["dst_workload"]["name"].as_str()), (Some("b"), Some("c")), "{v}");
        assert_eq!(v["dst_workload"]["labels"]["app"], "c", "{v}");
        assert_eq!(v["dst_port"], 8080);
    }
    // By pod: only flows with a at one end, among them a's allowed flow to c.
    let (_, out, _) = flows(&instance, &["--pod", "fl/a", "-o", "jsonl"]);
    let of_a = lines(&out);
    assert!(!of_a.is_empty() && of_a.iter().all(|v| v["src_workload"]["name"] == "a" || v["dst_workload"]["name"] == "a"), "{out}");
    assert!(of_a.iter().any(|v| v["kind"] == "new-allowed" && v["dst_workload"]["name"] == "c"), "{out}");
    // The a -> c connection ended (the probe closes it): one end record at each end's
    // interface, oriented as a opened it, with packets and bytes both ways.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ends = loop {
        let (_, out, _) = flows(&instance, &["--verdict", "end", "--pod", "fl/c", "-o", "jsonl"]);
        let l = lines(&out);
        if l.len() >= 2 || Instant::now() > deadline {
            break l;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ends.len(), 2, "one end record at a's egress and one at c's ingress: {ends:?}");
    for v in &ends {
        assert_eq!((v["src_workload"]["name"].as_str(), v["dst_workload"]["name"].as_str(), v["dst_port"].as_u64()), (Some("a"), Some("c"), Some(8080)), "{v}");
        let t = &v["totals"];
        // SYN, ACK, the payload, FIN at least one way; SYN-ACK, the echo, FIN the other.
        assert!(t["packets_sent"].as_u64() >= Some(3) && t["packets_received"].as_u64() >= Some(2), "{v}");
        // The probe's payload is more than 20 bytes of text each way, over 40+ byte headers.
        assert!(t["bytes_sent"].as_u64() > Some(3 * 40 + 20) && t["bytes_received"].as_u64() > Some(2 * 40 + 20), "{v}");
    }
    assert_eq!(ends.iter().map(|v| v["direction"].as_str().unwrap_or("?")).collect::<std::collections::BTreeSet<_>>(), ["egress", "ingress"].into(), "{ends:?}");
    let (_, table, _) = flows(&instance, &["--verdict", "end", "--pod", "fl/c"]);
    assert!(table.contains("fl/a (10.245.0.10:") && table.contains("received") && table.contains(" ms"), "{table}");
    // Label and verdict together; a namespace with no flows; another port.
    // b's flow leaves b (its egress is open) and is denied at c's ingress: two observation
    // points, as in Hubble.
    let (_, out, _) = flows(&instance, &["--label", "app=c", "--verdict", "allowed", "--direction", "ingress", "-o", "jsonl"]);
    let into_c = lines(&out);
    assert!(!into_c.is_empty() && into_c.iter().all(|v| v["kind"] == "new-allowed" && v["direction"] == "ingress"), "{out}");
    assert!(into_c.iter().all(|v| v["src_workload"]["name"] == "a"), "only a is admitted into c: {out}");
    let (_, out, _) = flows(&instance, &["--policy", "c-from-a", "-o", "jsonl"]);
    let by_policy = lines(&out);
    assert!(!by_policy.is_empty() && by_policy.iter().all(|v| v["verdict"]["policy"].as_str().is_some_and(|p| p.ends_with("fl/c-from-a"))), "{out}");
    assert_eq!(flows(&instance, &["--namespace", "elsewhere", "-o", "jsonl"]).1, "");
    assert_eq!(flows(&instance, &["--port", "9999", "-o", "jsonl"]).1, "");
    // One JSON array; and the table names the pods and the decision.
    let (_, out, _) = flows(&instance, &["--verdict", "denied", "-o", "json"]);
    let arr: serde_json::Value = serde_json::from_str(&out).expect("one JSON array");
    assert_eq!(arr.as_array().map(Vec::len), Some(denied.len()));
    let (_, table, _) = flows(&instance, &["--verdict", "denied"]);
    assert!(table.contains("fl/b (10.245.0.11:") && table.contains("-> fl/c (10.245.0.12:8080)") && table.contains("deny"), "{table}");

    // Bad filters: exit 2, the flag and value named, nothing printed.
    for (args, want) in [(&["--port", "http"][..], "--port \"http\""), (&["--verdict", "maybe"][..], "--verdict \"maybe\""), (&["--label", "app"][..], "--label \"app\"")] {
        let (code, out, err) = flows(&instance, args);
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }

    // Follow: a new denied flow shows up on the live stream.
    let mut child = Command::new(bulkhead_bin())
        .args(["flows", "--instance", &instance, "--follow", "--last", "0", "--verdict", "denied", "-o", "jsonl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bulkhead flows --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let followed = (|| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let _ = probe(&pod("b"), pod("c").ip, 8080, Protocol::Tcp, Duration::from_millis(200));
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
                return Some(l);
            }
        }
        None
    })();
    let _ = child.kill();
    let _ = child.wait();
    let l = followed.expect("--follow printed no new denied flow");
    let v: serde_json::Value = serde_json::from_str(&l).expect("a JSON line");
    assert_eq!((v["kind"].as_str(), v["src_workload"]["name"].as_str()), (Some("denied"), Some("b")), "{l}");
}
