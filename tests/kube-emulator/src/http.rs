//! Routing of API requests: discovery, collections, objects and watches.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bulkhead_httpd::{Reply, Request, Response};
use serde_json::{Value, json};

use crate::Shared;
use crate::select::{FieldSelector, LabelSelector};
use crate::store::{ApiError, ResourceType, Subscription};

/// Events a watch may have queued before it counts as too slow and is cut off.
const WATCH_QUEUE: usize = 100_000;

fn json_reply(code: u16, v: &Value) -> Reply {
    Reply::Respond(Response::new(code, "application/json", v.to_string()))
}

fn error_reply(e: &ApiError) -> Reply {
    json_reply(e.code, &e.status())
}

pub(crate) fn handle(sh: &Arc<Shared>, r: &Request) -> Reply {
    sh.requests.fetch_add(1, Ordering::Relaxed);
    if sh.down.load(Ordering::SeqCst) {
        return Reply::Reset;
    }
    if let Some(code) = sh.fail_next.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
        return error_reply(&ApiError::new(code, "InternalError", format!("injected failure ({code})")));
    }
    let segs: Vec<&str> = r.path.split('/').filter(|s| !s.is_empty()).collect();
    let q = bulkhead_httpd::parse_form(&r.query);
    match route(sh, r, &segs, &q) {
        Ok(reply) => reply,
        Err(e) => error_reply(&e),
    }
}

fn route(sh: &Arc<Shared>, r: &Request, segs: &[&str], q: &BTreeMap<String, String>) -> Result<Reply, ApiError> {
    let get = r.method == "GET";
    match segs {
        ["version"] if get => Ok(json_reply(
            200,
            &json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-bulkhead-emulator", "platform": "linux/amd64",
                    "goVersion": "none", "compiler": "none", "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z"}),
        )),
        ["healthz"] | ["readyz"] | ["livez"] if get => Ok(Reply::Respond(Response::text(200, "ok"))),
        ["api"] if get => Ok(json_reply(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": r.header("host").unwrap_or("")}]}),
        )),
        ["apis"] if get => Ok(json_reply(200, &group_list(sh))),
        ["apis", g] if get => {
            let list = group_list(sh);
            let found = list["groups"].as_array().and_then(|gs| gs.iter().find(|x| x["name"] == *g).cloned());
            let mut grp = found.ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))?;
            grp["kind"] = "APIGroup".into();
            grp["apiVersion"] = "v1".into();
            Ok(json_reply(200, &grp))
        }
        ["api", "v1"] if get => resource_list(sh, "", "v1"),
        ["apis", g, v] if get => resource_list(sh, g, v),
        ["api", "v1", rest @ ..] => resource(sh, r, "", "v1", rest, q),
        ["apis", g, v, rest @ ..] => resource(sh, r, g, v, rest, q),
        _ => Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    }
}

fn group_list(sh: &Shared) -> Value {
    let st = sh.lock();
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in st.types.iter().filter(|t| !t.group.is_empty()) {
        let vs = groups.entry(&t.group).or_default();
        if !vs.contains(&t.version.as_str()) {
            vs.push(&t.version);
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(sh: &Shared, group: &str, version: &str) -> Result<Reply, ApiError> {
    let st = sh.lock();
    let types: Vec<&ResourceType> = st.types.iter().filter(|t| t.group == group && t.version == version).collect();
    if types.is_empty() {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
    let mut resources = Vec::new();
    for t in types {
        resources.push(json!({"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
                              "verbs": verbs, "shortNames": t.short_names}));
        if t.kind == "Pod" || t.kind == "CustomResourceDefinition" {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                                  "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Ok(json_reply(200, &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})))
}

/// `rest` after the group/version: `[plural]`, `[plural, name]`, `[plural, name, sub]` or the
/// same under `namespaces/<ns>/`.
fn resource(sh: &Arc<Shared>, r: &Request, group: &str, version: &str, rest: &[&str], q: &BTreeMap<String, String>) -> Result<Reply, ApiError> {
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] if !matches!(*plural, "status" | "finalize") => (*ns, {
            let mut v = vec![*plural];
            v.extend_from_slice(more);
            v
        }),
        other => ("", other.to_vec()),
    };
    let plural = rest.first().copied().ok_or_else(|| ApiError::new(404, "NotFound", "no resource named"))?;
    let t = sh
        .lock()
        .find_type(group, version, plural)
        .ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))?;
    if !t.namespaced && !ns.is_empty() {
        return Err(ApiError::new(404, "NotFound", format!("{} is not namespaced", t.plural)));
    }
    let name = rest.get(1).copied();
    if rest.len() > 3 || rest.get(2).is_some_and(|s| *s != "status") {
        return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource"));
    }
    let body = || -> Result<Value, ApiError> {
        let ct = r.header("content-type").unwrap_or("application/json");
        if !(ct.contains("json") || ct.contains("yaml")) {
            // Protobuf and CBOR are not spoken here; clients fall back to JSON on a 415.
            return Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct:?})")));
        }
        if ct.contains("yaml") {
            let y: serde_yaml::Value = serde_yaml::from_slice(&r.body).map_err(|e| ApiError::bad_request(format!("the body is not YAML: {e}")))?;
            serde_json::to_value(y).map_err(|e| ApiError::bad_request(e.to_string()))
        } else {
            serde_json::from_slice(&r.body).map_err(|e| ApiError::bad_request(format!("the body is not JSON ({ct}): {e}")))
        }
    };
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    match (r.method.as_str(), name) {
        ("GET", None) if watching => watch(sh, &t, ns, q),
        ("GET", None) => list(sh, &t, ns, q),
        ("GET", Some(n)) => Ok(json_reply(200, &sh.lock().get(&t, ns, n)?)),
        ("POST", None) => Ok(json_reply(201, &sh.lock().create(&t, ns, body()?)?)),
        ("PUT", Some(n)) => Ok(json_reply(200, &sh.lock().replace(&t, ns, n, body()?)?)),
        ("PATCH", Some(n)) => {
            let ct = r.header("content-type").unwrap_or("");
            let apply = ct.starts_with("application/apply-patch");
            if apply && q.get("fieldManager").is_none_or(|f| f.is_empty()) {
                return Err(ApiError::invalid("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"));
            }
            if !(apply || ct.starts_with("application/merge-patch+json") || ct.starts_with("application/strategic-merge-patch+json")) {
                return Err(ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {ct:?})")));
            }
            Ok(json_reply(200, &sh.lock().patch(&t, ns, n, body()?, apply)?))
        }
        ("DELETE", Some(n)) => Ok(json_reply(200, &sh.lock().delete(&t, ns, n)?)),
        (m, _) => Err(ApiError::new(405, "MethodNotAllowed", format!("{m} is not supported on this path"))),
    }
}

fn selectors(t: &ResourceType, q: &BTreeMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or("")).map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""), &t.kind).map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn list(sh: &Shared, t: &ResourceType, ns: &str, q: &BTreeMap<String, String>) -> Result<Reply, ApiError> {
    let (labels, fields) = selectors(t, q)?;
    let st = sh.lock();
    let (start, rv) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let (rv, i) = c.split_once('-').and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<usize>().ok()?))).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
            if rv < st.compacted {
                return Err(ApiError::new(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter."));
            }
            (i, rv)
        }
        None => (0, st.rv),
    };
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|(k, _)| k.0 == t.id() && (ns.is_empty() || k.1 == ns))
        .map(|(_, o)| o)
        .filter(|o| labels.matches(o) && fields.matches(o))
        .map(|o| {
            let mut o = o.clone();
            o["apiVersion"] = t.api_version().into();
            o
        })
        .collect();
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    let next = start.saturating_add(page.len());
    if next < items.len() {
        meta["continue"] = format!("{rv}-{next}").into();
        meta["remainingItemCount"] = (items.len() - next).into();
    }
    Ok(json_reply(200, &json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(), "metadata": meta, "items": page})))
}

fn watch(sh: &Arc<Shared>, t: &ResourceType, ns: &str, q: &BTreeMap<String, String>) -> Result<Reply, ApiError> {
    let (labels, fields) = selectors(t, q)?;
    let bookmarks = matches!(q.get("allowWatchBookmarks").map(String::as_str), Some("true" | "1"));
    let initial = matches!(q.get("sendInitialEvents").map(String::as_str), Some("true" | "1"));
    let timeout = q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(1800);
    let from = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let (tx, rx) = mpsc::sync_channel::<Value>(WATCH_QUEUE);
    let sub = Subscription { type_id: t.id(), namespace: (!ns.is_empty()).then(|| ns.to_string()), labels, fields, tx };
    let bookmark = |rv: u64, end_of_initial: bool| {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if end_of_initial {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {"kind": t.kind, "apiVersion": t.api_version(), "metadata": meta}})
    };
    // Everything the stream starts with is decided under the lock, together with subscribing,
    // so no event falls between the replay and the live stream.
    let mut first: Vec<Value> = Vec::new();
    {
        let mut st = sh.lock();
        let current = |st: &crate::Store| -> Vec<Value> {
            st.objects
                .iter()
                .filter(|(k, _)| k.0 == t.id() && (ns.is_empty() || k.1 == ns))
                .filter(|(_, o)| sub.labels.matches(o) && sub.fields.matches(o))
                .map(|(_, o)| {
                    let mut o = o.clone();
                    o["apiVersion"] = t.api_version().into();
                    json!({"type": "ADDED", "object": o})
                })
                .collect()
        };
        if initial {
            first = current(&st);
            first.push(bookmark(st.rv, true));
        } else if from.is_empty() || from == "0" {
            first = current(&st);
        } else {
            let rv: u64 = from.parse().map_err(|_| ApiError::bad_request(format!("resourceVersion: Invalid value: {from:?}")))?;
            if rv < st.compacted {
                let gone = ApiError::new(410, "Expired", format!("too old resource version: {rv} ({})", st.compacted + 1));
                first = vec![json!({"type": "ERROR", "object": gone.status()})];
                let frames = first.iter().map(|f| format!("{f}\n")).collect::<String>();
                return Ok(Reply::Stream(
                    Response::new(200, "application/json", ""),
                    Box::new(move |send| send(frames.as_bytes())),
                ));
            }
            for (e, old) in st.history.iter().filter(|(e, _)| e.rv > rv) {
                if let Some(mut w) = sub.translate(e, old.as_ref()) {
                    w["object"]["apiVersion"] = t.api_version().into();
                    first.push(w);
                }
            }
        }
        st.subs.push(sub);
    }
    let shared_epoch = sh.watch_epoch.load(Ordering::SeqCst);
    let every = sh.bookmark_every;
    let sh = sh.clone();
    let (api_version, kind) = (t.api_version(), t.kind.clone());
    Ok(Reply::Stream(
        Response::new(200, "application/json", ""),
        Box::new(move |send| {
            let deadline = Instant::now() + Duration::from_secs(timeout);
            for f in first {
                send(format!("{f}\n").as_bytes())?;
            }
            let mut last_sent = Instant::now();
            let broken = || sh.watch_epoch.load(Ordering::SeqCst) != shared_epoch;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(());
                }
                match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                    Ok(mut ev) => {
                        ev["object"]["apiVersion"] = api_version.clone().into();
                        send(format!("{ev}\n").as_bytes())?;
                        last_sent = Instant::now();
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if broken() {
                            return Err(std::io::Error::other("watch dropped by the emulator"));
                        }
                        if bookmarks && last_sent.elapsed() >= every {
                            // Under the lock nothing new is published: with the queue empty,
                            // every event up to the current resourceVersion has been sent.
                            let frame = {
                                let st = sh.lock();
                                match rx.try_recv() {
                                    Ok(mut ev) => {
                                        ev["object"]["apiVersion"] = api_version.clone().into();
                                        ev
                                    }
                                    Err(_) => json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                                                     "metadata": {"resourceVersion": st.rv.to_string()}}}),
                                }
                            };
                            send(format!("{frame}\n").as_bytes())?;
                            last_sent = Instant::now();
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if broken() {
                            return Err(std::io::Error::other("watch dropped by the emulator"));
                        }
                        return Ok(());
                    }
                }
            }
        }),
    ))
}
