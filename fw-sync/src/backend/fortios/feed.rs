//! FortiOS external threat feeds (`fortios-threat-feed` targets): a target `T` is the CMDB
//! object `system external-resource` `bhfw-T` of `type address` and `update-method push`
//! (FortiOS 7.2.1+), whose entries are pushed in batches through
//! `POST /api/v2/monitor/system/external-resource/dynamic`:
//! `{"commands":[{"name":"bhfw-T","command":"snapshot|add|remove","entries":["10.1.2.3", ...]}]}`.
//! A policy uses the feed as a source or destination address, like an address group. One
//! feed holds both families: FortiOS's IP address feeds take IPv4 and IPv6 entries and serve
//! IPv4 and IPv6 policies alike, so a dual-stack target is one feed.
//!
//! Reading is one CMDB GET (owned feeds) plus one `entry-list` GET per feed. Applying:
//! 1. create (POST) the feeds that do not exist yet (rare: once per target);
//! 2. one `dynamic` POST carrying every feed's commands, all removals first: each feed's
//!    `remove` (or `snapshot` of what it keeps plus its non-moving additions) comes before
//!    any `add` of an address another object loses in the same diff. FortiOS applies the
//!    commands of a request in order, so an address moving between feeds is never in both,
//!    even if it applied them one by one. Requests over [`MAX_ENTRIES_PER_REQUEST`] entries
//!    are split, in order, so the removals still go first;
//! 3. delete (DELETE) the feeds of deleted targets, emptied by step 2 first: a feed a
//!    policy still uses (error -23) stays, empty.
//!
//! `snapshot` or `add`/`remove`: `add`/`remove` cost entries in proportion to the change, so a
//! 1-pod event is a one-entry request whatever the feed's size; `snapshot` replaces the
//! whole list, so it is used only where it is no larger than the change (a new feed, a
//! change bigger than the feed) or where entries fw-sync cannot name as addresses (CIDRs,
//! ranges, invalid lines an admin pushed) must go. A restart therefore never begins with a
//! snapshot of an empty list: the feed is read, and only what differs is pushed.
//!
//! All three commands are set operations (adding a present entry or removing an absent one
//! changes nothing), so a request retried after a lost answer does no harm.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{Value, json};

use super::client::Client;
use crate::diff::{Action, ObjectChange};
use crate::error::FwSyncError;
use crate::group::{FirewallState, OWNED_PREFIX, ObjectRef, TargetKind};

/// The CMDB table of external resources.
pub const TABLE: &str = "cmdb/system/external-resource";
const DYNAMIC: &str = "monitor/system/external-resource/dynamic";
const ENTRY_LIST: &str = "monitor/system/external-resource/entry-list";
/// Longest external-resource name (6.4 schema `maxLength: 35`, 7.2 CLI reference).
pub const MAX_NAME: usize = 35;
/// Entries one feed may hold. Fortinet documents an overflow flag, not the number; 131,072
/// (128 K lines) is the figure we assume. A larger target is refused before anything is sent.
pub const DEFAULT_MAX_ENTRIES: usize = 131_072;
/// Entries per `dynamic` request: keeps a request body near 160 KB (no documented limit;
/// FortiOS answers 413 to bodies it finds too large).
pub const MAX_ENTRIES_PER_REQUEST: usize = 10_000;

/// `bhfw-<target>`.
pub fn feed_name(target: &str) -> String {
    format!("{OWNED_PREFIX}{target}")
}

/// One owned feed's entries as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Feed {
    /// Single addresses and the text FortiOS stores for each ("10.1.2.3", "10.1.2.3/32",
    /// "fd00::1", "fd00::1/128"): a `remove` names that text.
    pub ips: BTreeMap<IpAddr, String>,
    /// Entries that are not one address (CIDRs, ranges, invalid lines, a second spelling of
    /// an address): not pod IPs, dropped at the feed's next change.
    pub extras: Vec<String>,
}

/// The owned feeds of a VDOM, as read and kept up to date by every write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Feeds {
    pub feeds: BTreeMap<String, Feed>,
    /// `bhfw-` external resources that are not push address feeds: never changed.
    pub misfits: BTreeSet<String>,
}

/// One command of a `dynamic` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub name: String,
    pub command: &'static str,
    pub entries: Vec<String>,
}

impl Command {
    fn new(name: &str, command: &'static str, entries: Vec<String>) -> Self {
        Command { name: name.to_string(), command, entries }
    }

    fn json(&self) -> Value {
        json!({"name": self.name, "command": self.command, "entries": self.entries})
    }
}

/// What an apply does to the feeds, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Feeds to create.
    pub create: Vec<String>,
    /// Removals (and snapshots without moving addresses): before anything is added.
    pub first: Vec<Command>,
    /// Additions of addresses other objects lose in this diff, and plain additions.
    pub then: Vec<Command>,
    /// Feeds to delete (emptied by `first`).
    pub delete: Vec<String>,
}

impl Feed {
    /// Applies one command as FortiOS does, keeping this copy equal to the device's list.
    pub fn apply(&mut self, c: &Command) {
        match c.command {
            "snapshot" => {
                *self = Feed::default();
                c.entries.iter().for_each(|e| self.insert(e));
            }
            "add" => c.entries.iter().for_each(|e| self.insert(e)),
            _ => {
                let gone: BTreeSet<&str> = c.entries.iter().map(String::as_str).collect();
                self.ips.retain(|_, text| !gone.contains(text.as_str()));
                self.extras.retain(|e| !gone.contains(e.as_str()));
            }
        }
    }

    fn insert(&mut self, entry: &str) {
        match single_ip(entry) {
            Some(ip) if !self.ips.contains_key(&ip) => {
                self.ips.insert(ip, entry.to_string());
            }
            Some(ip) if self.ips[&ip] == entry => {}
            _ if self.extras.iter().any(|e| e == entry) => {}
            _ => self.extras.push(entry.to_string()),
        }
    }

    /// Every entry's text.
    fn texts(&self) -> Vec<String> {
        self.ips.values().cloned().chain(self.extras.iter().cloned()).collect()
    }
}

/// "10.1.2.3" or "10.1.2.3/32"; "fd00::1" or "fd00::1/128".
fn single_ip(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    let (ip, len) = e.split_once('/').map_or((e, None), |(a, l)| (a, Some(l)));
    let ip: IpAddr = ip.parse().ok()?;
    let full = if ip.is_ipv4() { "32" } else { "128" };
    len.is_none_or(|l| l == full).then_some(ip)
}

/// Reads the owned feeds: the CMDB list, then each feed's entries.
pub fn read(client: &mut Client) -> Result<Feeds, FwSyncError> {
    let path = client.api_path(TABLE, None, &format!("filter=name%3D%40{OWNED_PREFIX}&format=name%7Ctype%7Cupdate-method"));
    let a = client.call("GET", &path, None)?;
    let Some(results) = a.json.get("results").and_then(Value::as_array).filter(|_| a.ok()) else {
        return Err(client.refused("GET", &path, &a));
    };
    let mut out = Feeds::default();
    for o in results {
        let Some(name) = o.get("name").and_then(Value::as_str).filter(|n| n.starts_with(OWNED_PREFIX)) else { continue };
        let s = |k| o.get(k).and_then(Value::as_str);
        if s("type") == Some("address") && s("update-method") == Some("push") {
            out.feeds.insert(name.to_string(), Feed::default());
        } else {
            out.misfits.insert(name.to_string());
        }
    }
    let names: Vec<String> = out.feeds.keys().cloned().collect();
    for name in names {
        let feed = read_entries(client, &name)?;
        out.feeds.insert(name, feed);
    }
    Ok(out)
}

fn read_entries(client: &mut Client, name: &str) -> Result<Feed, FwSyncError> {
    let path = client.api_path(ENTRY_LIST, None, &format!("mkey={}", super::client::encode(name)));
    let a = client.call("GET", &path, None)?;
    let Some(r) = a.json.get("results").filter(|_| a.ok()) else {
        return Err(client.refused("GET", &path, &a));
    };
    let entries = r.get("entries").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let count = |k| r.get(k).and_then(Value::as_u64);
    if let (Some(v), Some(i)) = (count("valid_count"), count("invalid_count"))
        && (v + i) as usize != entries.len()
    {
        // A paged or truncated answer would make fw-sync push what is already there and
        // miss what must go: refuse it rather than act on half a list.
        let detail = format!("entry list of {name} holds {} entries but counts {v} valid + {i} invalid", entries.len());
        return Err(FwSyncError::Backend { firewall: client.firewall().to_string(), object: format!("GET {path}"), detail });
    }
    if r.get("overflow").and_then(Value::as_bool) == Some(true) {
        tracing::warn!(feed = name, "FortiOS reports the feed over its entry limit: entries were dropped");
    }
    let mut feed = Feed::default();
    for e in entries {
        let Some(text) = e.get("entry").and_then(Value::as_str) else { continue };
        if e.get("valid").and_then(Value::as_bool) == Some(true) {
            feed.insert(text);
        } else {
            feed.extras.push(text.to_string());
        }
    }
    Ok(feed)
}

impl Feeds {
    /// What the engine sees: every owned feed with its addresses.
    pub fn state(&self) -> FirewallState {
        self.feeds
            .iter()
            .filter_map(|(n, f)| {
                let target = n.strip_prefix(OWNED_PREFIX)?;
                Some((ObjectRef { kind: TargetKind::FortiosThreatFeed, name: target.to_string() }, f.ips.keys().copied().collect()))
            })
            .collect()
    }
}

/// Plans the feed changes of a diff. `moves` are the addresses some object of the diff loses
/// and another gains; `taken` says whether a name is used by an owned address or group.
pub fn plan(changes: &[&ObjectChange], feeds: &Feeds, moves: &BTreeSet<IpAddr>, max_entries: usize, taken: impl Fn(&str) -> bool) -> Result<Plan, (String, String)> {
    let mut p = Plan::default();
    for c in changes {
        let target = c.object.name.as_str();
        let name = feed_name(target);
        let fail = |why: String| (c.object.to_string(), why);
        if name.len() > MAX_NAME || super::layout::looks_like_address(target) || target.contains('~') {
            return Err(fail(format!("{name} is over FortiOS's {MAX_NAME} characters or clashes with fw-sync's address objects; rename the target")));
        }
        if feeds.misfits.contains(&name) {
            return Err(fail(format!("external resource {name} exists but is not an address feed with update-method push; fw-sync leaves it alone")));
        }
        if taken(&name) {
            return Err(fail(format!("{name} is also an address or address group fw-sync owns; targets of both kinds need different names")));
        }
        let current = feeds.feeds.get(&name);
        if c.action == Action::Delete {
            if let Some(f) = current {
                let all = f.texts();
                if !all.is_empty() {
                    p.first.push(Command::new(&name, "remove", all));
                }
                p.delete.push(name);
            }
            continue;
        }
        if c.desired.len() > max_entries {
            return Err(fail(format!("{} addresses are over the {max_entries} entries a feed holds", c.desired.len())));
        }
        let empty = Feed::default();
        let f = current.unwrap_or(&empty);
        if current.is_none() {
            p.create.push(name.clone());
        }
        let to_remove: Vec<String> = f.ips.iter().filter(|(ip, _)| !c.desired.contains(ip)).map(|(_, t)| t.clone()).collect();
        let to_add: Vec<IpAddr> = c.desired.iter().filter(|ip| !f.ips.contains_key(ip)).copied().collect();
        let (moving, plain): (Vec<IpAddr>, Vec<IpAddr>) = to_add.iter().partition(|ip| moves.contains(ip));
        let keep: Vec<String> = c.desired.iter().filter(|ip| !moving.contains(ip)).map(|ip| f.ips.get(ip).cloned().unwrap_or_else(|| ip.to_string())).collect();
        let snapshot = (current.is_none() || !f.extras.is_empty() || to_add.len() + to_remove.len() > c.desired.len())
            && !keep.is_empty()
            && keep.len() <= MAX_ENTRIES_PER_REQUEST;
        let texts = |ips: &[IpAddr]| ips.iter().map(IpAddr::to_string).collect::<Vec<_>>();
        if snapshot {
            p.first.push(Command::new(&name, "snapshot", keep));
        } else {
            let gone: Vec<String> = to_remove.into_iter().chain(f.extras.iter().cloned()).collect();
            if !gone.is_empty() {
                p.first.push(Command::new(&name, "remove", gone));
            }
            if !plain.is_empty() {
                p.then.push(Command::new(&name, "add", texts(&plain)));
            }
        }
        if !moving.is_empty() {
            p.then.push(Command::new(&name, "add", texts(&moving)));
        }
    }
    Ok(p)
}

/// Splits commands, in order, into request bodies of at most `cap` entries; `add` and
/// `remove` may be cut in pieces, a snapshot never is (the plan keeps it under `cap`).
pub fn batches(commands: Vec<Command>, cap: usize) -> Vec<Vec<Command>> {
    let mut out: Vec<Vec<Command>> = Vec::new();
    let mut room = 0;
    for c in commands {
        if c.command == "snapshot" || c.entries.is_empty() {
            if room < c.entries.len().max(1) {
                out.push(Vec::new());
                room = cap;
            }
            room = room.saturating_sub(c.entries.len().max(1));
            out.last_mut().expect("a batch was opened").push(c);
            continue;
        }
        let mut rest = c.entries.as_slice();
        while !rest.is_empty() {
            if room == 0 {
                out.push(Vec::new());
                room = cap;
            }
            let (now, later) = rest.split_at(room.min(rest.len()));
            room -= now.len();
            out.last_mut().expect("a batch was opened").push(Command::new(&c.name, c.command, now.to_vec()));
            rest = later;
        }
    }
    out
}

/// Sends commands (in requests of at most [`MAX_ENTRIES_PER_REQUEST`] entries), updating
/// `feeds` after each accepted request.
pub fn push(client: &mut Client, feeds: &mut Feeds, commands: Vec<Command>) -> Result<(), FwSyncError> {
    for batch in batches(commands, MAX_ENTRIES_PER_REQUEST) {
        let path = client.api_path(DYNAMIC, None, "");
        let body = json!({"commands": batch.iter().map(Command::json).collect::<Vec<_>>()});
        let a = client.call("POST", &path, Some(&body))?;
        if !a.ok() {
            return Err(client.refused("POST", &path, &a));
        }
        for c in &batch {
            feeds.feeds.entry(c.name.clone()).or_default().apply(c);
        }
    }
    Ok(())
}

/// The body creating feed `name`.
pub fn create_body(name: &str, comment: &str) -> Value {
    json!({"name": name, "type": "address", "update-method": "push", "status": "enable", "comments": comment})
}

#[cfg(test)]
#[path = "feed_tests.rs"]
mod tests;
