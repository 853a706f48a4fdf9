use super::*;
use std::path::PathBuf;

use bulkhead_httpd::{Handler, Reply, Request, Response};
use serde_json::json;

const FRONTEND: &str = "10.240.10.10";
const API: &str = "10.240.10.11";
const DB: &str = "10.240.20.10";
const OUTSIDE_IP: &str = "10.250.0.2";

fn workload(ip: &str) -> serde_json::Value {
    match ip {
        FRONTEND => json!({"namespace": "shop", "name": "frontend", "labels": {"app": "frontend"}}),
        API => json!({"namespace": "shop", "name": "api", "labels": {"app": "api"}}),
        DB => json!({"namespace": "data", "name": "db", "labels": {"app": "db"}}),
        _ => serde_json::Value::Null,
    }
}

/// One flow record as the agent writes it.
fn rec(kind: &str, direction: &str, src: &str, sport: u16, dst: &str, dport: u16, policy: Option<&str>) -> String {
    let action = if matches!(kind, "denied" | "revoked") { "deny" } else { "allow" };
    let mut v = json!({
        "ts_ns": 1, "kind": kind, "direction": direction, "interface_index": 7, "src": src, "dst": dst, "protocol": 6,
        "src_port": sport, "dst_port": dport,
        "verdict": {"action": action, "tier": "default", "policy": policy, "rule": policy.map(|_| 0), "end_of_tier": policy.is_none(), "log_policy": null, "log_rule": null},
        "staged": null, "drop_reason": null, "local_identity": 0, "peer_identity": 0,
    });
    for (k, ip) in [("src_workload", src), ("dst_workload", dst)] {
        if !workload(ip).is_null() {
            v[k] = workload(ip);
        }
    }
    if kind == "end" {
        v["totals"] = json!({"packets_sent": 4, "bytes_sent": 300, "packets_received": 3, "bytes_received": 200, "duration_ms": 2});
    }
    v.to_string()
}

/// The demo after its policies: frontend -> api allowed (seen at both ends, then ended),
/// frontend -> db let out by nothing (denied at the frontend's egress), api -> db denied at
/// the db's ingress after the api's egress let it out, outside -> frontend allowed.
fn demo_lines() -> Vec<String> {
    vec![
        rec("new-allowed", "egress", FRONTEND, 40001, API, 8080, Some("NetworkPolicy (networking.k8s.io) shop/frontend")),
        rec("new-allowed", "ingress", FRONTEND, 40001, API, 8080, Some("NetworkPolicy (networking.k8s.io) shop/api")),
        rec("denied", "egress", FRONTEND, 40002, DB, 5432, None),
        rec("new-allowed", "egress", API, 40003, DB, 5432, Some("NetworkPolicy (networking.k8s.io) shop/api")),
        rec("denied", "ingress", API, 40003, DB, 5432, None),
        rec("new-allowed", "ingress", OUTSIDE_IP, 40004, FRONTEND, 80, Some("NetworkPolicy (networking.k8s.io) shop/frontend")),
        rec("end", "egress", FRONTEND, 40001, API, 8080, Some("NetworkPolicy (networking.k8s.io) shop/frontend")),
        rec("end", "ingress", FRONTEND, 40001, API, 8080, Some("NetworkPolicy (networking.k8s.io) shop/api")),
        "not json".into(),
    ]
}

fn map_of(lines: &[String]) -> ServiceMap {
    ServiceMap::from_lines(lines.iter().map(String::as_str))
}

fn edge<'a>(m: &'a ServiceMap, from: &str, to: &str, v: Verdict) -> Option<&'a Edge> {
    m.edges.iter().find(|e| e.from == from && e.to == to && e.verdict == v)
}

#[test]
fn workloads_are_grouped_by_namespace_and_outside_comes_first() {
    let m = map_of(&demo_lines());
    assert_eq!(m.records, 8, "the line that is not JSON is skipped");
    let ids: Vec<(&str, &str)> = m.nodes.iter().map(|n| (n.group.as_str(), n.id.as_str())).collect();
    assert_eq!(ids, [("outside", OUTSIDE_IP), ("data", "data/db"), ("shop", "shop/api"), ("shop", "shop/frontend")]);
    let frontend = &m.nodes[3];
    assert_eq!((frontend.name.as_str(), frontend.external, frontend.addresses.clone()), ("frontend", false, vec![FRONTEND.to_string()]));
    assert_eq!(frontend.labels["app"], "frontend");
    assert!(m.nodes[0].external && m.nodes[0].labels.is_empty());
    assert_eq!(m.summary(), "3 workloads, 1 outside address, 4 edges (2 denied)");
}

#[test]
fn one_flow_seen_at_both_ends_is_one_edge_and_a_denial_anywhere_makes_it_denied() {
    let m = map_of(&demo_lines());
    assert_eq!(m.edges.len(), 4, "{:#?}", m.edges);
    let fa = edge(&m, "shop/frontend", "shop/api", Verdict::Allowed).expect("frontend -> api");
    assert_eq!((fa.flows, fa.port, fa.protocol.as_str(), fa.bytes), (1, Some(8080), "tcp", 500), "the end seen at both ends counts once");
    // An allowed flow is decided by the destination's admission; both points are listed.
    assert_eq!((fa.policy.as_deref(), fa.rule, fa.tier.as_deref()), (Some("NetworkPolicy (networking.k8s.io) shop/api"), Some(0), Some("default")));
    assert_eq!(fa.decisions.iter().map(|d| d.direction.as_str()).collect::<Vec<_>>(), ["egress", "ingress"]);
    assert_eq!(fa.decided_by, "allow at ingress: NetworkPolicy (networking.k8s.io) shop/api rule 0");
    // The api's egress let the flow out, the db's ingress denied it: one denied edge.
    assert!(edge(&m, "shop/api", "data/db", Verdict::Allowed).is_none());
    let ad = edge(&m, "shop/api", "data/db", Verdict::Denied).expect("api -> db denied");
    assert_eq!((ad.flows, ad.policy.as_deref(), ad.decided_by.as_str()), (1, None, "deny at ingress: end of tier default"));
    let fd = edge(&m, "shop/frontend", "data/db", Verdict::Denied).expect("frontend -> db denied");
    assert_eq!((fd.tier.as_deref(), fd.decisions.len()), (Some("default"), 1));
    assert!(m.edges.iter().all(|e| e.current));
    assert!(edge(&m, OUTSIDE_IP, "shop/frontend", Verdict::Allowed).is_some());
}

#[test]
fn a_later_verdict_supersedes_an_earlier_one_on_the_same_port() {
    let mut lines = vec![
        rec("new-allowed", "egress", FRONTEND, 41000, DB, 5432, None),
        rec("new-allowed", "ingress", FRONTEND, 41000, DB, 5432, None),
        rec("new-allowed", "egress", FRONTEND, 41001, DB, 5432, None),
    ];
    lines.extend(demo_lines());
    let m = map_of(&lines);
    let before = edge(&m, "shop/frontend", "data/db", Verdict::Allowed).expect("allowed before the policy");
    let after = edge(&m, "shop/frontend", "data/db", Verdict::Denied).expect("denied after");
    assert_eq!((before.flows, before.current, after.current), (2, false, true));
    assert_eq!(before.decided_by, "allow at egress: end of tier default", "the last flow's, seen at its egress only");
    assert!(m.summary().ends_with(", 1 earlier verdict"), "{}", m.summary());
}

#[test]
fn revoked_and_dropped_flows_have_their_verdicts() {
    let mut dropped: serde_json::Value = serde_json::from_str(&rec("dropped", "ingress", OUTSIDE_IP, 1, DB, 5432, None)).unwrap();
    dropped["drop_reason"] = json!("drop_spoofed_source_fail_closed");
    let m = map_of(&[rec("new-allowed", "ingress", API, 2, DB, 5432, Some("NetworkPolicy (networking.k8s.io) data/db")), rec("revoked", "ingress", API, 2, DB, 5432, None), dropped.to_string()]);
    assert!(edge(&m, "shop/api", "data/db", Verdict::Denied).is_some(), "a revoked flow is denied: {:#?}", m.edges);
    let d = edge(&m, OUTSIDE_IP, "data/db", Verdict::Dropped).expect("dropped");
    assert_eq!((d.drop_reason.as_deref(), d.decided_by.as_str()), (Some("drop_spoofed_source_fail_closed"), "dropped: drop_spoofed_source_fail_closed"));
}

#[test]
fn many_outside_addresses_share_one_node_beyond_the_busiest() {
    let lines: Vec<String> = (0..MAX_EXTERNAL + 5)
        .flat_map(|i| {
            // Address i opens i+1 flows: the 5 least busy are folded.
            (0..=i).map(move |f| rec("new-allowed", "ingress", &format!("192.0.2.{}", i + 1), 1000 + f as u16, FRONTEND, 80, None))
        })
        .collect();
    let m = map_of(&lines);
    let outside: Vec<&Node> = m.nodes.iter().filter(|n| n.external).collect();
    assert_eq!(outside.len(), MAX_EXTERNAL + 1);
    let other = outside.iter().find(|n| n.id == OTHER_ADDRESSES).expect("folded node");
    assert_eq!(other.addresses, ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"]);
    assert_eq!(edge(&m, OTHER_ADDRESSES, "shop/frontend", Verdict::Allowed).map(|e| e.flows), Some(15));
}

#[test]
fn verdicts_have_their_colours_in_the_svg() {
    assert_eq!(colour(Verdict::Allowed), "#2e7d32");
    assert_eq!(colour(Verdict::Denied), "#c62828");
    let m = map_of(&demo_lines());
    let svg = render_svg(&m);
    let denied = svg.lines().find(|l| l.contains(r#"data-from="shop/frontend" data-to="data/db" data-verdict="denied""#)).expect("the denied edge");
    assert!(denied.contains(r##"stroke="#c62828""##) && denied.contains("url(#arrow-denied)"), "{denied}");
    let allowed = svg.lines().find(|l| l.contains(r#"data-to="shop/api" data-verdict="allowed""#)).expect("the allowed edge");
    assert!(allowed.contains(r##"stroke="#2e7d32""##), "{allowed}");
    assert!(svg.contains("8080/tcp · shop/api") && svg.contains("5432/tcp · end of tier default"), "{svg}");
}

#[test]
fn the_svg_is_well_formed_escaped_and_deterministic() {
    let mut lines = demo_lines();
    let mut odd: serde_json::Value = serde_json::from_str(&rec("new-allowed", "ingress", API, 3, FRONTEND, 80, Some("x <&> \"y\""))).unwrap();
    odd["dst_workload"]["labels"]["note"] = json!("<script>");
    lines.push(odd.to_string());
    let m = map_of(&lines);
    let svg = render_svg(&m);
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"") && svg.ends_with("</svg>\n"));
    assert!(!svg.contains("<&>") && svg.contains("x &lt;&amp;&gt; &quot;y&quot;"), "{svg}");
    for tag in ["g", "text", "marker", "defs", "title"] {
        let open = svg.matches(&format!("<{tag}>")).count() + svg.matches(&format!("<{tag} ")).count();
        assert_eq!(open, svg.matches(&format!("</{tag}>")).count(), "<{tag}> balanced");
    }
    for n in ["shop/frontend", "shop/api", "data/db", OUTSIDE_IP] {
        assert!(svg.contains(&format!("data-node=\"{n}\"")), "{n}");
    }
    assert_eq!(svg, render_svg(&map_of(&lines)), "same map, same picture");
    // Every node inside its group's column; every edge drawn.
    let l = layout(&m);
    for (n, b) in m.nodes.iter().zip(&l.nodes) {
        let g = l.groups.iter().find(|g| g.name == n.group).expect("group");
        assert!(b.x >= g.x && b.x + b.w <= g.x + g.w && b.y >= g.y && b.y + b.h <= g.y + g.h, "{n:?}");
    }
    assert!(l.edges.iter().all(|e| e.d.starts_with('M')));
    assert!(render_svg(&ServiceMap::default()).contains("0 workloads"));
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bh-servicemap-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn the_map_reads_the_tail_of_the_log_and_its_rotated_predecessor() {
    let d = temp_dir("tail");
    let log = d.join("flows.jsonl");
    // More than one read chunk, and a last line still being written.
    let filler: String = (0..60_000).map(|i| format!("{{\"kind\":\"filler\",\"n\":{i}}}\n")).collect();
    std::fs::write(&log, format!("{filler}{}\n{{\"kind\":\"new-al", demo_lines()[..8].join("\n"))).expect("log");
    let tail = tail_lines(&log, 10).expect("tail");
    assert_eq!(tail.len(), 10);
    assert_eq!(tail[0], "{\"kind\":\"filler\",\"n\":59998}");
    assert_eq!(ServiceMap::from_flow_log(&log, 8).expect("map").edges, map_of(&demo_lines()).edges);
    // Just rotated: the current file is short, the older records are in `.1`.
    std::fs::rename(&log, d.join("flows.jsonl.1")).expect("rotate");
    std::fs::write(&log, rec("denied", "ingress", OUTSIDE_IP, 9, DB, 5432, None) + "\n").expect("new log");
    let m = ServiceMap::from_flow_log(&log, 9).expect("map");
    assert_eq!((m.records, m.edges.len()), (9, 5));
    assert!(ServiceMap::from_flow_log(&d.join("missing.jsonl"), 10).is_err());
    let _ = std::fs::remove_dir_all(&d);
}

fn request(method: &str, path: &str) -> Request {
    Request { method: method.into(), path: path.into(), query: String::new(), headers: BTreeMap::new(), body: vec![], peer: "127.0.0.1:1".parse().unwrap() }
}

fn answer(h: &Handler, method: &str, path: &str) -> Response {
    match h(&request(method, path)) {
        Reply::Respond(r) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_server_answers_the_page_the_model_and_nothing_else() {
    let d = temp_dir("serve");
    let h = handler(d.clone());
    // No flow log yet: an empty map saying why.
    let empty: serde_json::Value = serde_json::from_slice(&answer(&h, "GET", API_PATH).body).expect("JSON");
    assert!(empty["note"].as_str().is_some_and(|n| n.contains("flows.jsonl")), "{empty}");
    std::fs::write(d.join("flows.jsonl"), demo_lines().join("\n") + "\n").expect("log");
    let page = answer(&h, "GET", "/");
    assert_eq!(page.status, 200);
    let body = String::from_utf8_lossy(&page.body);
    assert!(body.contains("id=\"edge-details\"") && body.contains("id=\"status\"") && body.contains("api/servicemap"));
    assert!(!body.contains("src=\"http") && !body.contains("href=\"http"), "nothing from elsewhere");
    let api = answer(&h, "GET", API_PATH);
    assert_eq!(api.headers[0].1, "application/json");
    let v: serde_json::Value = serde_json::from_slice(&api.body).expect("JSON");
    assert_eq!((v["nodes"].as_array().map(Vec::len), v["edges"].as_array().map(Vec::len)), (Some(4), Some(4)));
    assert_eq!(v["layout"]["edges"].as_array().map(Vec::len), Some(4));
    assert_eq!(v["summary"], "3 workloads, 1 outside address, 4 edges (2 denied)");
    assert!(v["note"].is_null());
    assert!(String::from_utf8_lossy(&answer(&h, "GET", SVG_PATH).body).starts_with("<svg"));
    assert_eq!(answer(&h, "GET", "/etc/passwd").status, 404);
    assert_eq!(answer(&h, "POST", "/").status, 405);
    assert_eq!(answer(&h, "DELETE", API_PATH).status, 405);
    let _ = std::fs::remove_dir_all(&d);
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

#[test]
fn the_agent_metrics_endpoint_serves_the_map_too() {
    let d = temp_dir("metrics");
    std::fs::write(d.join("flows.jsonl"), demo_lines().join("\n") + "\n").expect("log");
    let server = crate::metrics::serve("127.0.0.1:0", d.join("no-pins"), d.clone(), None, crate::metrics::SyncMetrics::default()).expect("endpoint");
    let page = http_get(server.addr(), "/");
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("id=\"edge-details\""), "{page}");
    let api = http_get(server.addr(), API_PATH);
    assert!(api.starts_with("HTTP/1.1 200") && api.contains("\"verdict\":\"denied\""), "{api}");
    assert!(http_get(server.addr(), "/nothing").starts_with("HTTP/1.1 404"));
    drop(server);
    let _ = std::fs::remove_dir_all(&d);
}
