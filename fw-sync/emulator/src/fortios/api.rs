//! The REST layer: Bearer-token check, routing of `/api/v2/cmdb/firewall/{address,addrgrp,address6,addrgrp6}`,
//! `/api/v2/cmdb/system/external-resource`, `/api/v2/monitor/system/status` and the threat
//! feed monitor endpoints ([`super::feed`]), query parameters (`vdom`, `filter`, `format`,
//! `start`, `count`, `mkey`) and FortiOS's JSON envelopes.

use std::collections::BTreeMap;

use bulkhead_httpd::{Request, Response, percent_decode};
use serde_json::{Map, Value, json};

use super::feed;
use super::store::{ApiError, Store, Table};

/// What the envelopes and the auth check need to know about the device.
#[derive(Clone, Debug)]
pub struct Device {
    pub token: String,
    /// Accept `?access_token=` (FortiOS `rest-api-key-url-query`, off by default).
    pub access_token_query: bool,
    pub serial: String,
    pub version: String,
    pub build: u32,
    /// The management VDOM: used when a request names none.
    pub management_vdom: String,
}

/// The outcome of one request: the response and, for a change, the VDOM it changed.
pub struct Outcome {
    pub response: Response,
    pub changed_vdom: Option<String>,
}

/// Query parameters, keeping repeated keys (`filter` may be given several times: AND).
pub fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Whether the request carries the API token (header, or query when allowed).
pub fn authorized(dev: &Device, req: &Request, params: &[(String, String)]) -> bool {
    let header = req.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
    match header {
        Some(t) => t == dev.token,
        None => dev.access_token_query && param(params, "access_token") == Some(dev.token.as_str()),
    }
}

/// The web server's answer to a missing or wrong token (not a CMDB envelope).
pub fn unauthorized() -> Response {
    Response::new(401, "text/html", "<html><head><title>401 Unauthorized</title></head><body><h1>Unauthorized</h1></body></html>")
}

/// The web server's answer when it is overloaded: the injected server fault. An HTML 503,
/// not a CMDB envelope, so a client can tell "try again" from a refusal with an error code.
pub fn server_busy() -> Response {
    Response::new(503, "text/html", "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1></body></html>")
}

fn json_response(status: u16, v: &Value) -> Response {
    Response::new(status, "application/json", serde_json::to_vec_pretty(v).expect("JSON values serialise"))
}

fn revision(n: u64) -> String {
    // FortiOS shows an opaque 32-hex-digit revision; derive one from the change counter.
    format!("{:016x}{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15), n)
}

fn base(dev: &Device, method: &str, vdom: &str, path: &str, name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("http_method".into(), json!(method));
    m.insert("vdom".into(), json!(vdom));
    m.insert("path".into(), json!(path));
    m.insert("name".into(), json!(name));
    m.insert("serial".into(), json!(dev.serial));
    m.insert("version".into(), json!(dev.version));
    m.insert("build".into(), json!(dev.build));
    m
}

/// The error envelope: `status: error`, `http_status`, `error` and `cli_error`.
pub fn error_envelope(dev: &Device, method: &str, vdom: &str, path: &str, table: &str, mkey: Option<&str>, e: &ApiError) -> Response {
    let mut m = base(dev, method, vdom, path, table);
    m.insert("status".into(), json!("error"));
    m.insert("http_status".into(), json!(e.http));
    m.insert("error".into(), json!(e.code));
    m.insert("cli_error".into(), json!(e.cli));
    if let Some(k) = mkey {
        m.insert("mkey".into(), json!(k));
    }
    json_response(e.http, &Value::Object(m))
}

/// Handles one authorised request against the store.
pub fn handle(dev: &Device, store: &mut Store, req: &Request, params: &[(String, String)]) -> Outcome {
    let method = req.method.as_str();
    let unchanged = |response| Outcome { response, changed_vdom: None };
    if req.path == "/api/v2/monitor/system/status" {
        return unchanged(if method == "GET" { system_status(dev) } else { method_not_allowed(dev, method, "system", "status") });
    }
    let no_path = || {
        let e = ApiError { http: 404, code: -3, cli: format!("no such path {}", req.path) };
        error_envelope(dev, method, &dev.management_vdom, "", "", None, &e)
    };
    if let Some(action) = req.path.strip_prefix("/api/v2/monitor/system/external-resource/") {
        // The push API came with 7.2.1: before it, the endpoint does not exist.
        if !store.push_feeds {
            return unchanged(no_path());
        }
        return monitor_feed(dev, store, req, params, action).unwrap_or_else(|| unchanged(no_path()));
    }
    let cmdb = req.path.strip_prefix("/api/v2/cmdb/");
    // The path was percent-decoded, so a name may hold '/' (e.g. "10.0.0.0/8"): split once.
    let (table_name, mkey) = match cmdb.and_then(|r| r.strip_prefix("firewall/").or_else(|| r.strip_prefix("system/"))).map(|r| r.split_once('/').unwrap_or((r, ""))) {
        Some((t, k)) => (t, Some(k).filter(|k| !k.is_empty())),
        None => return unchanged(no_path()),
    };
    let table = match (cmdb.is_some_and(|r| r.starts_with("system/")), table_name) {
        (false, "address") => Table::Address,
        (false, "addrgrp") => Table::Addrgrp,
        (false, "address6") => Table::Address6,
        (false, "addrgrp6") => Table::Addrgrp6,
        (true, "external-resource") => Table::ExternalResource,
        (_, other) => {
            let e = ApiError { http: 404, code: -3, cli: format!("no such table {other}") };
            return unchanged(error_envelope(dev, method, &dev.management_vdom, "", other, None, &e));
        }
    };
    let vdoms: Vec<String> = match param(params, "vdom") {
        None | Some("") => vec![dev.management_vdom.clone()],
        Some("*") => store.vdoms.keys().cloned().collect(),
        Some(list) => list.split(',').map(str::to_string).collect(),
    };
    if method == "GET" {
        if vdoms.len() == 1 {
            return unchanged(get(dev, store, table, &vdoms[0], mkey, params));
        }
        // Several VDOMs: one envelope each, in a JSON list.
        let list: Vec<Value> = vdoms.iter().map(|v| serde_json::from_slice(&get(dev, store, table, v, mkey, params).body).expect("own JSON")).collect();
        return unchanged(json_response(200, &Value::Array(list)));
    }
    let [vdom] = vdoms.as_slice() else {
        let e = ApiError { http: 400, code: -651, cli: "changes apply to one VDOM at a time".into() };
        return unchanged(error_envelope(dev, method, &dev.management_vdom, table.path(), table.name(), mkey, &e));
    };
    let old = store.vdoms.get(vdom).map(|v| v.revision).unwrap_or(0);
    let result = match (method, mkey) {
        ("POST", None) => body_object(req).and_then(|b| store.create(vdom, table, &b)),
        ("PUT", Some(k)) => body_object(req).and_then(|b| store.update(vdom, table, k, &b)),
        ("DELETE", Some(k)) => store.delete(vdom, table, k).map(|()| k.to_string()),
        _ => return unchanged(method_not_allowed(dev, method, table.path(), table.name())),
    };
    match result {
        Ok(key) => {
            let new = store.vdoms.get(vdom).map(|v| v.revision).unwrap_or(0);
            let mut m = base(dev, method, vdom, table.path(), table.name());
            m.insert("revision".into(), json!(revision(new)));
            m.insert("old_revision".into(), json!(revision(old)));
            m.insert("revision_changed".into(), json!(new != old));
            m.insert("mkey".into(), json!(key));
            m.insert("status".into(), json!("success"));
            m.insert("http_status".into(), json!(200));
            Outcome { response: json_response(200, &Value::Object(m)), changed_vdom: Some(vdom.clone()) }
        }
        Err(e) => unchanged(error_envelope(dev, method, vdom, table.path(), table.name(), mkey, &e)),
    }
}

/// The threat feed monitor endpoints: `dynamic` (POST) and `entry-list` (GET); None for
/// another action.
fn monitor_feed(dev: &Device, store: &mut Store, req: &Request, params: &[(String, String)], action: &str) -> Option<Outcome> {
    let method = req.method.as_str();
    let vdom = param(params, "vdom").filter(|v| !v.is_empty()).unwrap_or(&dev.management_vdom).to_string();
    let expected = match action {
        "dynamic" => "POST",
        "entry-list" => "GET",
        _ => return None,
    };
    let unchanged = |response| Some(Outcome { response, changed_vdom: None });
    if method != expected {
        return unchanged(method_not_allowed(dev, method, "system", "external-resource"));
    }
    let result = if action == "dynamic" {
        serde_json::from_slice::<Value>(&req.body)
            .map_err(|_| ApiError { http: 400, code: -651, cli: "request body is not JSON".into() })
            .and_then(|body| feed::dynamic(store, &vdom, &body))
            .map(|()| json!({}))
    } else {
        feed::entry_list(store, &vdom, param(params, "mkey"))
    };
    let mut m = base(dev, method, &vdom, "system", "external-resource");
    m.insert("action".into(), json!(action));
    match result {
        Ok(results) => {
            m.insert("results".into(), results);
            m.insert("status".into(), json!("success"));
            m.insert("http_status".into(), json!(200));
            let changed = (action == "dynamic").then(|| vdom.clone());
            Some(Outcome { response: json_response(200, &Value::Object(m)), changed_vdom: changed })
        }
        Err(e) => unchanged(error_envelope(dev, method, &vdom, "system", "external-resource", param(params, "mkey"), &e)),
    }
}

fn body_object(req: &Request) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError { http: 400, code: -651, cli: "request body is not a JSON object".into() }),
    }
}

fn method_not_allowed(dev: &Device, method: &str, path: &str, name: &str) -> Response {
    let mut m = base(dev, method, &dev.management_vdom, path, name);
    m.insert("status".into(), json!("error"));
    m.insert("http_status".into(), json!(405));
    json_response(405, &Value::Object(m))
}

fn system_status(dev: &Device) -> Response {
    let mut m = base(dev, "GET", &dev.management_vdom, "system", "status");
    m.insert("action".into(), json!(""));
    m.insert("status".into(), json!("success"));
    m.insert("http_status".into(), json!(200));
    m.insert(
        "results".into(),
        json!({"model_name": "FortiGate", "model_number": "VM64", "model": "FGVM64", "hostname": "bulkhead-emulator", "log_disk_status": "available"}),
    );
    json_response(200, &Value::Object(m))
}

fn get(dev: &Device, store: &Store, table: Table, vdom: &str, mkey: Option<&str>, params: &[(String, String)]) -> Response {
    let v = match store.vdom(vdom) {
        Ok(v) => v,
        Err(e) => return error_envelope(dev, "GET", vdom, table.path(), table.name(), mkey, &e),
    };
    let objects = super::store::table_of(v, table);
    let mut results: Vec<&Map<String, Value>> = match mkey {
        Some(k) => match objects.get(k) {
            Some(o) => vec![o],
            None => return error_envelope(dev, "GET", vdom, table.path(), table.name(), Some(k), &ApiError::not_found()),
        },
        None => objects.values().collect(),
    };
    let mut filters = Vec::new();
    for f in params.iter().filter(|(k, _)| k == "filter").map(|(_, v)| v) {
        match parse_filter(f) {
            Some(f) => filters.push(f),
            None => {
                let e = ApiError { http: 400, code: -651, cli: format!("invalid filter {f:?}") };
                return error_envelope(dev, "GET", vdom, table.path(), table.name(), mkey, &e);
            }
        }
    }
    results.retain(|o| filters.iter().all(|any| any.iter().any(|c| c.matches(o))));
    let matched = results.len();
    let start: usize = param(params, "start").and_then(|s| s.parse().ok()).unwrap_or(0);
    let count: Option<usize> = param(params, "count").and_then(|s| s.parse().ok());
    let page: Vec<&Map<String, Value>> = results.into_iter().skip(start).take(count.unwrap_or(usize::MAX)).collect();
    let format: Option<Vec<&str>> = param(params, "format").map(|f| f.split('|').collect());
    let shown: Vec<Value> = page
        .iter()
        .map(|o| match &format {
            Some(keys) => Value::Object(o.iter().filter(|(k, _)| keys.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()),
            None => Value::Object((*o).clone()),
        })
        .collect();
    let mut m = base(dev, "GET", vdom, table.path(), table.name());
    m.insert("revision".into(), json!(revision(v.revision)));
    if let Some(k) = mkey {
        m.insert("mkey".into(), json!(k));
    }
    m.insert("results".into(), Value::Array(shown));
    m.insert("matched_count".into(), json!(matched));
    m.insert("next_idx".into(), json!((start + page.len()).saturating_sub(1)));
    m.insert("action".into(), json!(""));
    m.insert("status".into(), json!("success"));
    m.insert("http_status".into(), json!(200));
    json_response(200, &Value::Object(m))
}

/// One `key<op>pattern` condition of a filter.
#[derive(Debug, PartialEq)]
pub struct Condition {
    key: String,
    op: &'static str,
    pattern: String,
}

/// Operators, two-character ones first so `<=` is not read as `<`.
const OPS: [&str; 8] = ["==", "!=", "=@", "!@", "<=", ">=", "<", ">"];

/// Parses one `filter` value: conditions separated by `,` (OR).
pub fn parse_filter(f: &str) -> Option<Vec<Condition>> {
    f.split(',')
        .map(|c| {
            (0..c.len()).find_map(|i| {
                let op = OPS.iter().find(|op| c[i..].starts_with(**op))?;
                (i > 0).then(|| Condition { key: c[..i].to_string(), op, pattern: c[i + op.len()..].to_string() })
            })
        })
        .collect()
}

impl Condition {
    fn matches(&self, obj: &Map<String, Value>) -> bool {
        let value = match obj.get(&self.key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return self.op == "!=" || self.op == "!@",
        };
        let (v, p) = (value.to_lowercase(), self.pattern.to_lowercase());
        let numeric = || Some((v.parse::<f64>().ok()?, p.parse::<f64>().ok()?));
        let cmp = match numeric() {
            Some((a, b)) => a.partial_cmp(&b),
            None => Some(v.cmp(&p)),
        };
        use std::cmp::Ordering::*;
        match self.op {
            "==" => v == p,
            "!=" => v != p,
            "=@" => v.contains(&p),
            "!@" => !v.contains(&p),
            "<=" => matches!(cmp, Some(Less | Equal)),
            ">=" => matches!(cmp, Some(Greater | Equal)),
            "<" => cmp == Some(Less),
            ">" => cmp == Some(Greater),
            _ => false,
        }
    }
}

/// Query string without the credential (for the request log).
pub fn redacted_query(params: &[(String, String)]) -> BTreeMap<String, String> {
    params.iter().filter(|(k, _)| k != "access_token").cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn dev() -> Device {
        Device { token: "tok".into(), access_token_query: false, serial: "FGVMTEST".into(), version: "v6.4.14".into(), build: 2093, management_vdom: "root".into() }
    }

    fn req(method: &str, target: &str, body: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.into(),
            path: percent_decode(path),
            query: query.into(),
            headers: [("authorization".to_string(), "Bearer tok".to_string())].into(),
            body: body.as_bytes().to_vec(),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        }
    }

    fn call(store: &mut Store, method: &str, target: &str, body: &str) -> (u16, Value) {
        let r = req(method, target, body);
        let params = query_params(&r.query);
        assert!(authorized(&dev(), &r, &params));
        let out = handle(&dev(), store, &r, &params);
        (out.response.status, serde_json::from_slice(&out.response.body).unwrap_or(Value::Null))
    }

    #[test]
    fn envelopes_and_routing() {
        let mut s = Store::new(&["root".into(), "dmz".into()], 600, 3);
        let (st, v) = call(&mut s, "POST", "/api/v2/cmdb/firewall/address?vdom=dmz", r#"{"name":"bhfw-10.0.0.1","subnet":"10.0.0.1/32"}"#);
        assert_eq!(st, 200, "{v}");
        for (k, want) in [("http_method", json!("POST")), ("status", json!("success")), ("mkey", json!("bhfw-10.0.0.1")), ("vdom", json!("dmz")), ("path", json!("firewall")), ("name", json!("address")), ("revision_changed", json!(true))] {
            assert_eq!(v[k], want, "{k} in {v}");
        }
        let (st, v) = call(&mut s, "GET", "/api/v2/cmdb/firewall/address?vdom=dmz&filter=name%3D%40BHFW-&format=name|subnet", "");
        assert_eq!(st, 200);
        assert_eq!(v["results"], json!([{"name": "bhfw-10.0.0.1", "subnet": "10.0.0.1 255.255.255.255"}]), "{v}");
        assert_eq!((v["version"].clone(), v["build"].clone()), (json!("v6.4.14"), json!(2093)));
        let (_, v) = call(&mut s, "GET", "/api/v2/cmdb/firewall/address", "");
        assert_eq!((v["vdom"].clone(), v["results"].clone()), (json!("root"), json!([])), "management VDOM by default");
        let (st, v) = call(&mut s, "POST", "/api/v2/cmdb/firewall/address?vdom=dmz", r#"{"name":"bhfw-10.0.0.1"}"#);
        assert_eq!((st, v["status"].clone(), v["http_status"].clone(), v["error"].clone()), (500, json!("error"), json!(500), json!(-5)), "{v}");
        let (st, v) = call(&mut s, "DELETE", "/api/v2/cmdb/firewall/addrgrp/none?vdom=dmz", "");
        assert_eq!((st, v["http_status"].clone()), (404, json!(404)));
        let (st, _) = call(&mut s, "GET", "/api/v2/cmdb/firewall/address/x?vdom=nope", "");
        assert_eq!(st, 403);
        let (st, _) = call(&mut s, "PUT", "/api/v2/cmdb/firewall/address", "{}");
        assert_eq!(st, 405);
        let (st, v) = call(&mut s, "GET", "/api/v2/cmdb/firewall/address?vdom=*", "");
        assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(2)), "{v}");
        let (st, v) = call(&mut s, "GET", "/api/v2/monitor/system/status", "");
        assert_eq!((st, v["results"]["model"].clone()), (200, json!("FGVM64")));
        let (st, v) = call(&mut s, "POST", "/api/v2/cmdb/firewall/address", "not json");
        assert_eq!((st, v["status"].clone()), (400, json!("error")));
    }

    #[test]
    fn filters_paging_and_auth() {
        assert_eq!(parse_filter("name=@bhfw-").expect("parses").len(), 1);
        assert_eq!(parse_filter("color<=3,name==a").expect("parses").len(), 2);
        assert!(parse_filter("novalue").is_none());
        let mut s = Store::new(&[], 600, 3);
        for i in 0..5 {
            call(&mut s, "POST", "/api/v2/cmdb/firewall/address", &format!(r#"{{"name":"a{i}","subnet":"10.0.0.{i}/32","color":{i}}}"#));
        }
        let (_, v) = call(&mut s, "GET", "/api/v2/cmdb/firewall/address?filter=color%3E%3D2&filter=color!%3D4&start=1&count=5", "");
        let names: Vec<_> = v["results"].as_array().expect("list").iter().map(|o| o["name"].clone()).collect();
        assert_eq!(names, [json!("a3")], "{v}");
        let mut r = req("GET", "/api/v2/cmdb/firewall/address?access_token=tok", "");
        r.headers.clear();
        let p = query_params(&r.query);
        assert!(!authorized(&dev(), &r, &p), "query token refused by default");
        assert!(authorized(&Device { access_token_query: true, ..dev() }, &r, &p));
        r.headers.insert("authorization".into(), "Bearer wrong".into());
        assert!(!authorized(&dev(), &r, &p));
        assert_eq!(redacted_query(&p).len(), 0);
    }
}
