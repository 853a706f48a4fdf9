//! The agent's Prometheus endpoint on a live lab (root): after allowed and denied traffic and
//! a policy change, a scrape shows the kernel's verdicts by reason, the deciding policy's hits,
//! map occupancy against capacity, the policy-programming histogram and the detector's
//! counters; the page parses with Prometheus's own Python client; label values never carry
//! addresses; the endpoint is read-only.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use bulkhead_e2e::LabAgent;
use bulkhead_lab::Protocol;
use bulkhead_lab::probe::probe;

const TOPOLOGY: &str = "
kind: Topology
name: metrics
namespaces:
  - name: mt
    labels: {kubernetes.io/metadata.name: mt}
pods:
  - {namespace: mt, name: client, ip: 10.245.0.10, labels: {app: client}}
  - {namespace: mt, name: other, ip: 10.245.0.11, labels: {app: other}}
  - {namespace: mt, name: server, ip: 10.245.0.12, labels: {app: server}}
ports:
  - {port: 8080, protocol: TCP}
";

const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-client, namespace: mt}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}]
";

const PYTHON: &str = "/opt/bulkhead/pyenv/bin/python3";

fn http(addr: std::net::SocketAddr, method: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "{method} /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {out:?}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("status line: {head:?}"));
    (status, body.to_string())
}

/// The value of the series whose line starts with `series` (name and labels as printed).
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' ')).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn metrics_show_verdicts_policy_hits_occupancy_and_programming_latency() {
    let f = LabAgent::new(TOPOLOGY, "metrics.yaml", false);
    std::fs::write(f.lab.datastore_dir().join("policy.yaml"), POLICY).expect("policy");
    f.agent().sync_now().expect("sync");
    let agent = f.agent();
    let state_dir = std::path::PathBuf::from("/run/bulkhead").join(f.lab.pin_dir().file_name().expect("pin dir name"));
    let server = bulkhead_lab::agent::metrics::serve("127.0.0.1:0", f.lab.pin_dir(), state_dir, Some(agent.detector()), agent.sync_metrics())
        .expect("metrics endpoint");
    assert!(server.addr().ip().is_loopback());
    let pod = |n: &str| f.lab.pods().iter().find(|p| p.key == format!("mt/{n}")).unwrap_or_else(|| panic!("no pod {n}"));
    let server_ip = pod("server").ip;
    for _ in 0..3 {
        assert!(probe(pod("client"), server_ip, 8080, Protocol::Tcp, Duration::from_millis(700)), "client -> server allowed");
        assert!(!probe(pod("other"), server_ip, 8080, Protocol::Tcp, Duration::from_millis(300)), "other -> server denied");
    }

    let (status, page) = http(server.addr(), "GET");
    assert_eq!(status, 200, "{page}");
    let get = |s: &str| value(&page, s).unwrap_or_else(|| panic!("no series {s} in:\n{page}"));
    assert!(get(r#"bulkhead_datapath_packets_total{verdict="drop",reason="policy"}"#) >= 3.0, "the denied SYNs");
    assert!(get(r#"bulkhead_datapath_packets_total{verdict="allow",reason="policy"}"#) >= 3.0, "the allowed SYNs");
    assert!(get(r#"bulkhead_datapath_drops_total{reason="policy",direction="ingress"}"#) >= 3.0, "denied into the server");
    // The policy's rule allowed client's flows; other's were denied by the isolation it
    // implies (no rule of it decided them, so they count in the drops above).
    assert!(get(r#"bulkhead_policy_flows_total{policy="NetworkPolicy (networking.k8s.io) mt/server-from-client",tier="default",verdict="allow"}"#) >= 3.0, "the deciding policy's allows");
    assert_eq!(get(r#"bulkhead_map_entries{map="endpoints"}"#), 3.0);
    assert_eq!(get(r#"bulkhead_map_capacity{map="conntrack"}"#), f64::from(262_144u32));
    assert!(get(r#"bulkhead_map_entries{map="conntrack"}"#) >= 1.0, "the allowed flows are tracked");
    assert!(get("bulkhead_policy_programming_seconds_count") >= 2.0, "the first sync and the policy's");
    assert!(get("bulkhead_policy_revision") >= 1.0);
    assert!(page.contains("# TYPE bulkhead_detector_alerts_total counter"), "{page}");
    assert!(page.contains("\nbulkhead_flow_records_lost_total 0\n"), "records lost behind the ring are a metric: {page}");
    // Bounded labels: no address or pod name in any label value.
    for l in page.lines().filter(|l| !l.starts_with('#')) {
        assert!(!l.contains("10.245.") && !l.contains("mt/client\"") && !l.contains("mt/server\""), "an address or pod as a label: {l}");
    }
    // Prometheus's own parser reads the page.
    let check = Command::new(PYTHON)
        .args(["-c", "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nn = sum(len(f.samples) for f in p(sys.stdin.read()))\nassert n > 20, n\nprint(n)"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e} (scripts/setup.sh installs it)"));
    let mut child = check;
    child.stdin.take().expect("stdin").write_all(page.as_bytes()).expect("write page");
    let out = child.wait_with_output().expect("python");
    assert!(out.status.success(), "prometheus_client rejected the page: {}\n{page}", String::from_utf8_lossy(&out.stderr));

    // Read-only.
    assert_eq!(http(server.addr(), "POST").0, 405);
    assert_eq!(http(server.addr(), "DELETE").0, 405);
}
