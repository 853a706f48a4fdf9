//! The emulator's API behaviours over raw HTTP: what kube-rs's watcher depends on.
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use bulkhead_kube_emulator::{Emulator, Options};
use serde_json::{Value, json};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build().into()
}

fn req(emu: &Emulator, method: &str, path: &str, body: Option<(&str, Value)>) -> (u16, Value) {
    let url = format!("{}{path}", emu.url());
    let a = agent();
    let resp = match (method, body) {
        ("GET", _) => a.get(&url).call(),
        ("DELETE", _) => a.delete(&url).call(),
        ("POST", Some((ct, b))) => a.post(&url).content_type(ct).send(b.to_string()),
        ("PUT", Some((ct, b))) => a.put(&url).content_type(ct).send(b.to_string()),
        ("PATCH", Some((ct, b))) => a.patch(&url).content_type(ct).send(b.to_string()),
        other => panic!("unsupported request {other:?}"),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let code = resp.status().as_u16();
    let text = resp.into_body().read_to_string().unwrap_or_else(|e| panic!("{method} {path}: body: {e}"));
    (code, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}")))
}

/// Reads watch events until `n` arrived or the deadline passed.
fn watch(emu: &Emulator, path: &str, n: usize) -> Vec<Value> {
    let url = format!("{}{path}", emu.url());
    let resp = agent().get(&url).call().unwrap_or_else(|e| panic!("watch {path}: {e}"));
    assert_eq!(resp.status().as_u16(), 200, "watch {path}");
    let mut r = BufReader::new(resp.into_body().into_reader());
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < n && Instant::now() < deadline {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("watch line not JSON ({e}): {line}")));
    }
    out
}

fn ns(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn pod(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": {"nodeName": "n1"}})
}

#[test]
fn crud_with_optimistic_concurrency_and_status_errors() {
    let emu = Emulator::start().expect("start");
    let j = "application/json";
    assert_eq!(req(&emu, "POST", "/api/v1/namespaces", Some((j, ns("x")))).0, 201);
    let (code, created) = req(&emu, "POST", "/api/v1/namespaces/x/pods", Some((j, pod("x", "a", json!({"app": "web"})))));
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["generation"], 1);
    let rv = created["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
    let (code, dup) = req(&emu, "POST", "/api/v1/namespaces/x/pods", Some((j, pod("x", "a", json!({})))));
    assert_eq!((code, dup["reason"].as_str()), (409, Some("AlreadyExists")), "{dup}");
    // An update carrying the current resourceVersion wins; a second one with the same (now
    // stale) version is a 409 Conflict.
    let mut upd = created.clone();
    upd["metadata"]["labels"]["app"] = "db".into();
    let (code, v2) = req(&emu, "PUT", "/api/v1/namespaces/x/pods/a", Some((j, upd.clone())));
    assert_eq!(code, 200, "{v2}");
    assert_ne!(v2["metadata"]["resourceVersion"].as_str(), Some(rv.as_str()));
    let (code, stale) = req(&emu, "PUT", "/api/v1/namespaces/x/pods/a", Some((j, upd)));
    assert_eq!((code, stale["reason"].as_str()), (409, Some("Conflict")), "{stale}");
    let (code, patched) = req(&emu, "PATCH", "/api/v1/namespaces/x/pods/a", Some(("application/merge-patch+json", json!({"metadata": {"labels": {"tier": "fe"}}}))));
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["metadata"]["labels"], json!({"app": "db", "tier": "fe"}));
    let (code, gone) = req(&emu, "GET", "/api/v1/namespaces/x/pods/zzz", None);
    assert_eq!((code, gone["kind"].as_str(), gone["reason"].as_str()), (404, Some("Status"), Some("NotFound")), "{gone}");
    let (code, np) = req(&emu, "POST", "/api/v1/namespaces/nope/pods", Some((j, pod("nope", "b", json!({})))));
    assert_eq!(code, 404, "creating in a missing namespace: {np}");
    let (code, _) = req(&emu, "DELETE", "/api/v1/namespaces/x/pods/a", None);
    assert_eq!(code, 200);
    assert_eq!(req(&emu, "DELETE", "/api/v1/namespaces/x/pods/a", None).0, 404);
}

#[test]
fn list_pages_and_selectors() {
    let emu = Emulator::start().expect("start");
    emu.create(ns("x")).expect("ns");
    for i in 0..5 {
        emu.create(pod("x", &format!("p{i}"), json!({"app": if i % 2 == 0 { "web" } else { "db" }}))).expect("pod");
    }
    let (_, page1) = req(&emu, "GET", "/api/v1/pods?limit=2", None);
    assert_eq!(page1["items"].as_array().map(Vec::len), Some(2), "{page1}");
    let cont = page1["metadata"]["continue"].as_str().expect("continue token").to_string();
    let (_, rest) = req(&emu, "GET", &format!("/api/v1/pods?limit=10&continue={cont}"), None);
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(3), "{rest}");
    assert!(rest["metadata"].get("continue").is_none(), "{rest}");
    let (_, web) = req(&emu, "GET", "/api/v1/namespaces/x/pods?labelSelector=app%20in%20(web)", None);
    assert_eq!(web["items"].as_array().map(Vec::len), Some(3), "{web}");
    let (_, one) = req(&emu, "GET", "/api/v1/pods?fieldSelector=metadata.name%3Dp1,spec.nodeName%3Dn1", None);
    assert_eq!(one["items"].as_array().map(Vec::len), Some(1), "{one}");
    let (code, bad) = req(&emu, "GET", "/api/v1/pods?fieldSelector=spec.bogus%3D1", None);
    assert_eq!(code, 400, "{bad}");
}

#[test]
fn watch_resumes_replays_bookmarks_and_answers_410_in_the_stream() {
    let emu = Emulator::start_with(Options { bookmark_every: Duration::from_millis(200), ..Default::default() }).expect("start");
    emu.create(ns("x")).expect("ns");
    let a = emu.create(pod("x", "a", json!({"app": "web"}))).expect("pod");
    let rv_a: u64 = a["metadata"]["resourceVersion"].as_str().and_then(|r| r.parse().ok()).expect("rv");
    emu.patch("v1", "Pod", "x", "a", json!({"metadata": {"labels": {"app": "db"}}})).expect("patch");
    emu.delete("v1", "Pod", "x", "a").expect("delete");
    // History after rv_a: MODIFIED then DELETED; then an idle stream gets a bookmark.
    let ev = watch(&emu, &format!("/api/v1/namespaces/x/pods?&watch=true&allowWatchBookmarks=true&resourceVersion={rv_a}"), 3);
    let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap_or("?")).collect();
    assert_eq!(types, ["MODIFIED", "DELETED", "BOOKMARK"], "{ev:?}");
    // Through a selector, leaving the selection is a DELETED event.
    let ev = watch(&emu, &format!("/api/v1/pods?watch=1&labelSelector=app%3Dweb&resourceVersion={rv_a}"), 1);
    assert_eq!(ev[0]["type"], "DELETED", "{ev:?}");
    // Streaming list: the current state, then the end-of-initial-events bookmark.
    emu.create(pod("x", "b", json!({}))).expect("pod b");
    let ev = watch(&emu, "/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true", 2);
    assert_eq!(ev[0]["type"], "ADDED", "{ev:?}");
    assert_eq!(ev[1]["type"], "BOOKMARK", "{ev:?}");
    assert_eq!(ev[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true", "{ev:?}");
    // After compaction the old version is gone: 200, then an ERROR event carrying 410.
    emu.compact();
    let ev = watch(&emu, &format!("/api/v1/pods?watch=true&resourceVersion={rv_a}"), 1);
    assert_eq!(ev[0]["type"], "ERROR", "{ev:?}");
    assert_eq!(ev[0]["object"]["code"], 410, "{ev:?}");
}

#[test]
fn crds_serve_their_kinds_and_appear_in_discovery() {
    let emu = Emulator::start().expect("start");
    emu.create(ns("x")).expect("ns");
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "tiers.projectcalico.org"},
        "spec": {"group": "projectcalico.org", "scope": "Cluster", "names": {"plural": "tiers", "singular": "tier", "kind": "Tier"},
                 "versions": [{"name": "v3", "served": true, "storage": true}]}});
    assert_eq!(req(&emu, "GET", "/apis/projectcalico.org/v3/tiers", None).0, 404);
    emu.create(crd).expect("crd");
    let (_, groups) = req(&emu, "GET", "/apis", None);
    assert!(groups["groups"].as_array().expect("groups").iter().any(|g| g["name"] == "projectcalico.org"), "{groups}");
    let (code, t) = req(&emu, "POST", "/apis/projectcalico.org/v3/tiers", Some(("application/json", json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "security"}, "spec": {"order": 100}}))));
    assert_eq!(code, 201, "{t}");
    emu.delete("apiextensions.k8s.io/v1", "CustomResourceDefinition", "", "tiers.projectcalico.org").expect("delete crd");
    assert_eq!(req(&emu, "GET", "/apis/projectcalico.org/v3/tiers", None).0, 404);
}

#[test]
fn faults_5xx_and_dropped_watches() {
    let emu = Emulator::start().expect("start");
    emu.fail_next(1, 503);
    assert_eq!(req(&emu, "GET", "/api/v1/namespaces", None).0, 503);
    assert_eq!(req(&emu, "GET", "/api/v1/namespaces", None).0, 200);
    let url = format!("{}/api/v1/namespaces?watch=true", emu.url());
    let resp = agent().get(&url).call().expect("watch");
    let mut r = BufReader::new(resp.into_body().into_reader());
    let deadline = Instant::now() + Duration::from_secs(5);
    while emu.open_watches() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    emu.drop_watches();
    let mut line = String::new();
    // A broken stream ends without the chunked terminator: an error, not a clean end.
    let res = r.read_line(&mut line);
    assert!(res.is_err() || line.is_empty(), "stream went on: {line:?}");
}
