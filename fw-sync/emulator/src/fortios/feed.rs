//! External threat feeds (FortiOS 7.2.1+): `system external-resource` objects with
//! `update-method push`, whose entries are changed through the monitor API.
//!
//! Followed:
//! - `POST /api/v2/monitor/system/external-resource/dynamic` with
//!   `{"commands":[{"name":"F","command":"snapshot|add|remove","entries":["10.1.2.3", ...]}]}`
//!   (Fortinet's 7.2.1 "push updates to external threat feeds" guide; the body as hfortix and
//!   Fortinet's GUI sample send it). `snapshot` replaces the list, `add`/`remove` change it.
//! - `GET /api/v2/monitor/system/external-resource/entry-list?mkey=F` answering `results`
//!   with `status`, `resource_file_status`, `entries: [{"entry", "valid"}]`, `valid_count`,
//!   `invalid_count`, `overflow` (the 6.4.14 monitor swagger in `fortigate-api`; a 7.4.2
//!   answer quoted in Fortinet's FortiManager API how-to has the same shape).
//! - The CMDB object: `type address`, `update-method push` (7.2 CLI reference), name at most
//!   35 characters (6.4 swagger, 7.2 CLI reference).
//!
//! Assumed (unverified; change here if a real FortiGate disagrees):
//! - the commands of one request are applied in order, and all are checked before any is
//!   applied (an unknown feed or command refuses the whole request: 424, error -3 / -651);
//! - the three commands are set operations: adding a present entry or removing an absent one
//!   is no error; `remove` matches the entry text exactly;
//! - entries are kept as given (trimmed); a malformed one (not IPv4/IPv6, CIDR or `a-b`
//!   range) is kept and listed with `valid: false`, as entry-list does for feed files;
//! - a feed holds [`DEFAULT_MAX_ENTRIES`] entries (131,072; Fortinet documents the
//!   `overflow` flag, not the number): entries past it are dropped and `overflow` is set;
//! - the success answer is the monitor envelope (`http_method`, `status: success`,
//!   `http_status: 200`, `vdom`, `path: system`, `name: external-resource`,
//!   `action: dynamic`, empty `results`);
//! - entry-list is not paged (`start`/`count` are ignored) and a missing feed is 404, -3;
//! - the push endpoint is absent (404) on a FortiGate before 7.2.1, where `update-method`
//!   is no attribute either.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value, json};

use super::store::{ApiError, MAX_COMMENT, Store, membership};

/// Entries one feed holds (assumed: 128 K lines).
pub const DEFAULT_MAX_ENTRIES: usize = 131_072;

const TYPES: [&str; 4] = ["category", "address", "domain", "malware"];

/// The entries pushed to one feed, in the order they came.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedList {
    pub entries: Vec<String>,
    /// Entries were dropped at the limit.
    pub overflow: bool,
}

impl FeedList {
    /// The valid entries that are one address ("10.1.2.3" or "10.1.2.3/32", "fd00::1" or
    /// "fd00::1/128"): IP address feeds hold both families.
    pub fn single_ips(&self) -> BTreeSet<IpAddr> {
        self.entries
            .iter()
            .filter_map(|e| {
                let (addr, len) = e.split_once('/').map_or((e.as_str(), None), |(a, l)| (a, Some(l)));
                let ip: IpAddr = addr.parse().ok()?;
                len.is_none_or(|l| l == if ip.is_ipv4() { "32" } else { "128" }).then_some(ip)
            })
            .collect()
    }
}

/// Whether FortiOS takes an entry as an address: an IPv4 or IPv6 address, a CIDR, or a
/// range `a-b` with a <= b.
pub fn valid_entry(e: &str) -> bool {
    fn cidr<T: std::str::FromStr>(s: &str, max: u8) -> bool {
        match s.split_once('/') {
            Some((a, len)) => a.parse::<T>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= max),
            None => s.parse::<T>().is_ok(),
        }
    }
    if let Some((a, b)) = e.split_once('-') {
        return match (a.parse::<Ipv4Addr>(), b.parse::<Ipv4Addr>()) {
            (Ok(a), Ok(b)) => a <= b,
            _ => matches!((a.parse::<Ipv6Addr>(), b.parse::<Ipv6Addr>()), (Ok(a), Ok(b)) if a <= b),
        };
    }
    cidr::<Ipv4Addr>(e, 32) || cidr::<Ipv6Addr>(e, 128)
}

/// Checks an external resource about to be stored.
pub fn validate_resource(obj: &Map<String, Value>, push_feeds: bool) -> Result<(), ApiError> {
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("");
    if !TYPES.contains(&s("type")) {
        return Err(ApiError::invalid(format!("type: invalid value '{}'", s("type"))));
    }
    match s("update-method") {
        "feed" if s("resource").is_empty() => return Err(ApiError::invalid("Attribute 'resource' MUST be set.")),
        "feed" => {}
        "push" if push_feeds => {}
        other => return Err(ApiError::invalid(format!("update-method: invalid value '{other}'"))),
    }
    if s("comments").chars().count() > MAX_COMMENT {
        return Err(ApiError::invalid_length("comments"));
    }
    if let Some(r) = obj.get("refresh-rate")
        && r.as_u64().is_none_or(|r| !(1..=43200).contains(&r))
    {
        return Err(ApiError::invalid("refresh-rate: out of range 1-43200"));
    }
    Ok(())
}

/// One parsed command.
struct Command {
    name: String,
    command: String,
    entries: Vec<String>,
}

fn parse_commands(body: &Value) -> Result<Vec<Command>, ApiError> {
    let bad = |why: &str| ApiError { http: 400, code: -651, cli: why.to_string() };
    let list = body.get("commands").and_then(Value::as_array).filter(|l| !l.is_empty()).ok_or_else(|| bad("commands: a non-empty list is required"))?;
    list.iter()
        .map(|c| {
            let name = c.get("name").and_then(Value::as_str).ok_or_else(|| bad("commands[].name is required"))?;
            let command = c.get("command").and_then(Value::as_str).filter(|c| ["snapshot", "add", "remove"].contains(c)).ok_or_else(|| bad("commands[].command must be snapshot, add or remove"))?;
            let entries = c.get("entries").and_then(Value::as_array).ok_or_else(|| bad("commands[].entries must be a list"))?;
            let entries = entries.iter().map(|e| e.as_str().map(|s| s.trim().to_string()).ok_or_else(|| bad("commands[].entries holds strings"))).collect::<Result<_, _>>()?;
            Ok(Command { name: name.to_string(), command: command.to_string(), entries })
        })
        .collect()
}

/// `POST .../external-resource/dynamic`: checks every command, then applies them in order.
pub fn dynamic(store: &mut Store, vdom: &str, body: &Value) -> Result<(), ApiError> {
    let commands = parse_commands(body)?;
    let v = store.vdom(vdom)?;
    for c in &commands {
        let Some(feed) = v.feeds.get(&c.name) else {
            return Err(ApiError { http: 424, code: -3, cli: format!("external resource \"{}\" not found", c.name) });
        };
        if feed.get("update-method").and_then(Value::as_str) != Some("push") {
            return Err(ApiError::invalid(format!("external resource \"{}\" does not use update-method push", c.name)));
        }
    }
    let max = store.max_feed_entries;
    for c in commands {
        let v = store.vdoms.get_mut(vdom).expect("checked above");
        let list = v.feed_lists.entry(c.name.clone()).or_default();
        match c.command.as_str() {
            "snapshot" => {
                list.entries.clear();
                add(list, &c.entries);
            }
            "add" => add(list, &c.entries),
            _ => {
                let gone: BTreeSet<&str> = c.entries.iter().map(String::as_str).collect();
                list.entries.retain(|e| !gone.contains(e.as_str()));
            }
        }
        list.overflow = list.entries.len() > max;
        list.entries.truncate(max);
        store.feed_log.push((vdom.to_string(), c.name, c.command, c.entries.len()));
        if store.record_steps {
            let m = membership(&store.vdoms[vdom]);
            store.steps.push((vdom.to_string(), m));
        }
    }
    Ok(())
}

fn add(list: &mut FeedList, entries: &[String]) {
    let mut have: BTreeSet<String> = list.entries.iter().cloned().collect();
    for e in entries {
        if !e.is_empty() && have.insert(e.clone()) {
            list.entries.push(e.clone());
        }
    }
}

/// `GET .../external-resource/entry-list?mkey=F`: the `results` object.
pub fn entry_list(store: &Store, vdom: &str, mkey: Option<&str>) -> Result<Value, ApiError> {
    let v = store.vdom(vdom)?;
    let Some(name) = mkey.filter(|m| !m.is_empty()) else {
        return Err(ApiError { http: 400, code: -651, cli: "mkey is required".into() });
    };
    let feed = v.feeds.get(name).ok_or_else(ApiError::not_found)?;
    let list = v.feed_lists.get(name).cloned().unwrap_or_default();
    let entries: Vec<Value> = list.entries.iter().map(|e| json!({"entry": e, "valid": valid_entry(e)})).collect();
    let valid = entries.iter().filter(|e| e["valid"] == true).count();
    let enabled = feed.get("status").and_then(Value::as_str) != Some("disable");
    Ok(json!({
        "status": if enabled { "success" } else { "disable" },
        "resource_file_status": if list.entries.is_empty() { "unavailable" } else { "downloaded" },
        "entries": entries,
        "valid_count": valid,
        "invalid_count": list.entries.len() - valid,
        "overflow": list.overflow,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        let mut s = Store::new(&[], 600, 1);
        let body = |n: &str, m: &str| match json!({"name": n, "type": "address", "update-method": m, "resource": "https://x/y"}) {
            Value::Object(o) => o,
            _ => unreachable!("object literal"),
        };
        s.create("root", super::super::store::Table::ExternalResource, &body("f", "push")).expect("push feed");
        s.create("root", super::super::store::Table::ExternalResource, &body("pulled", "feed")).expect("pulled feed");
        s
    }

    #[test]
    fn entries_are_validated_like_feed_lines() {
        for ok in ["10.1.2.3", "10.1.2.0/24", "10.1.2.1-10.1.2.9", "2001:db8::1", "2001:db8::/64"] {
            assert!(valid_entry(ok), "{ok}");
        }
        for bad in ["10.1.2.300", "10.1.2.0/33", "10.1.2.9-10.1.2.1", "example.com", ""] {
            assert!(!valid_entry(bad), "{bad}");
        }
    }

    #[test]
    fn commands_apply_in_order_and_refuse_as_a_whole() {
        let mut s = store();
        let push = |s: &mut Store, body: Value| dynamic(s, "root", &body);
        push(&mut s, json!({"commands": [{"name": "f", "command": "snapshot", "entries": ["10.0.0.1", "10.0.0.2", "bogus"]}, {"name": "f", "command": "remove", "entries": ["10.0.0.2", "10.0.0.99"]}, {"name": "f", "command": "add", "entries": ["10.0.0.1", " 10.0.0.3 "]}]})).expect("push");
        let r = entry_list(&s, "root", Some("f")).expect("list");
        assert_eq!(r["entries"], json!([{"entry": "10.0.0.1", "valid": true}, {"entry": "bogus", "valid": false}, {"entry": "10.0.0.3", "valid": true}]), "{r}");
        assert_eq!((r["valid_count"].clone(), r["invalid_count"].clone(), r["overflow"].clone()), (json!(2), json!(1), json!(false)));
        let before = s.vdoms["root"].feed_lists.clone();
        let e = push(&mut s, json!({"commands": [{"name": "f", "command": "add", "entries": ["10.0.0.7"]}, {"name": "nope", "command": "add", "entries": []}]})).expect_err("unknown feed");
        assert_eq!((e.http, e.code), (424, -3));
        assert_eq!(push(&mut s, json!({"commands": [{"name": "pulled", "command": "add", "entries": []}]})).expect_err("not push").code, -651);
        assert_eq!(push(&mut s, json!({"commands": [{"name": "f", "command": "replace", "entries": []}]})).expect_err("bad command").http, 400);
        assert_eq!(s.vdoms["root"].feed_lists, before, "a refused request changes nothing");
        s.max_feed_entries = 3;
        push(&mut s, json!({"commands": [{"name": "f", "command": "add", "entries": ["10.0.0.4", "10.0.0.5"]}]})).expect("overflowing push");
        let r = entry_list(&s, "root", Some("f")).expect("list");
        assert_eq!((r["entries"].as_array().map(Vec::len), r["overflow"].clone()), (Some(3), json!(true)));
        assert_eq!(entry_list(&s, "root", Some("none")).expect_err("missing").http, 404);
    }
}
