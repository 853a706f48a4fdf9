//! The emulated CMDB of one FortiGate: per VDOM, `firewall address`, `firewall addrgrp`,
//! `firewall address6`, `firewall addrgrp6` and `system external-resource` tables stored as the JSON objects the REST API returns, with
//! FortiOS's validation rules (from the 6.4.14 swagger shipped in `fortigate-api` and the CLI
//! reference) and its internal error codes; and the entries pushed to threat feeds
//! ([`super::feed`]).
//!
//! IPv6 as FortiOS keeps it: `address6` objects (`type` `ipprefix` by default, `ip6`
//! "addr/len", stored in canonical form) live in their own table and `addrgrp6` groups hold
//! only `address6` and `addrgrp6` members (an IPv4 address named in an addrgrp6 is "entry
//! not found in datasource", as is an address6 in an addrgrp). Assumed, unverified: an
//! addrgrp6 refuses an empty member list like an addrgrp, and has no member cap (the 6.4
//! swagger gives `maxItems: null`); names are unique across all five tables.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{Map, Value, json};

use super::feed::FeedList;

/// Longest object name (swagger: `maxLength: 79`).
pub const MAX_NAME: usize = 79;
/// Longest comment (swagger: `maxLength: 255`).
pub const MAX_COMMENT: usize = 255;
/// Members per address group in the 6.4 schema (`maxItems: 600`); a FortiOS option.
pub const DEFAULT_MAX_MEMBERS: usize = 600;
/// Longest external-resource name (swagger: `maxLength: 35`; 7.2 CLI reference too).
pub const MAX_FEED_NAME: usize = 35;

/// A refusal as FortiOS reports it: the HTTP status, the internal error code and the CLI's
/// message (`cli_error`, as 7.x builds add it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub http: u16,
    pub code: i64,
    pub cli: String,
}

impl ApiError {
    fn new(http: u16, code: i64, cli: impl Into<String>) -> Self {
        ApiError { http, code, cli: cli.into() }
    }
    /// POST of a name that exists (as an address or a group: they share one namespace).
    /// fortigate-api documents 500 for "object already exists"; the swagger's 424 also
    /// covers duplicates. We answer 500 / -5.
    pub fn duplicate(name: &str) -> Self {
        Self::new(500, -5, format!("A duplicate entry already exists: \"{name}\"\nCommand fail. Return code -5"))
    }
    /// DELETE of an object a group or a policy still references.
    pub fn in_use(name: &str, by: &str) -> Self {
        Self::new(500, -23, format!("entry \"{name}\" is used by {by}\nCommand fail. Return code -23"))
    }
    /// GET/PUT/DELETE of a missing entry.
    pub fn not_found() -> Self {
        Self::new(404, -3, "entry not found")
    }
    /// A member naming no address or group.
    pub fn missing_reference(name: &str) -> Self {
        Self::new(424, -3, format!("entry not found in datasource\n\nvalue parse error before '{name}'\nCommand fail. Return code -3"))
    }
    pub fn invalid_length(what: &str) -> Self {
        Self::new(424, -1, format!("{what}: invalid length\nCommand fail. Return code -1"))
    }
    pub fn invalid_ip(value: &str) -> Self {
        Self::new(424, -8, format!("invalid ip address '{value}'\nCommand fail. Return code -8"))
    }
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(424, -651, format!("{}\nCommand fail. Return code -651", detail.into()))
    }
}

/// Which CMDB table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Address,
    Addrgrp,
    /// `firewall address6`.
    Address6,
    /// `firewall addrgrp6`.
    Addrgrp6,
    /// `system external-resource`: threat feeds.
    ExternalResource,
}

impl Table {
    /// The last path element (`name` in the envelope).
    pub fn name(self) -> &'static str {
        match self {
            Table::Address => "address",
            Table::Addrgrp => "addrgrp",
            Table::Address6 => "address6",
            Table::Addrgrp6 => "addrgrp6",
            Table::ExternalResource => "external-resource",
        }
    }

    /// The path element before it (`path` in the envelope).
    pub fn path(self) -> &'static str {
        match self {
            Table::ExternalResource => "system",
            _ => "firewall",
        }
    }
}

/// One VDOM's objects.
#[derive(Clone, Debug, Default)]
pub struct Vdom {
    pub addresses: BTreeMap<String, Map<String, Value>>,
    pub groups: BTreeMap<String, Map<String, Value>>,
    /// `firewall address6` objects.
    pub addresses6: BTreeMap<String, Map<String, Value>>,
    /// `firewall addrgrp6` objects.
    pub groups6: BTreeMap<String, Map<String, Value>>,
    /// `system external-resource` objects.
    pub feeds: BTreeMap<String, Map<String, Value>>,
    /// Entries pushed to each push feed (absent: nothing pushed yet).
    pub feed_lists: BTreeMap<String, FeedList>,
    /// Objects referenced by firewall policies (name -> policy ids): they cannot be deleted.
    pub policy_refs: BTreeMap<String, BTreeSet<u32>>,
    /// Configuration revision, bumped by every change.
    pub revision: u64,
}

/// Every VDOM, and what the API needs to answer for them.
#[derive(Debug)]
pub struct Store {
    pub vdoms: BTreeMap<String, Vdom>,
    pub max_members: usize,
    /// Entries a threat feed holds; more are dropped and the list flagged `overflow`.
    pub max_feed_entries: usize,
    /// Whether `update-method push` and the push API exist (FortiOS 7.2.1+).
    pub push_feeds: bool,
    /// When set, every applied feed command leaves the VDOM's membership in `steps`.
    pub record_steps: bool,
    pub steps: Vec<(String, Membership)>,
    /// Every feed command applied: (vdom, feed, command, entries given).
    pub feed_log: Vec<(String, String, String, usize)>,
    uuid_state: u64,
}

/// Resolved members of every group (addrgrp and addrgrp6) and threat feed of one VDOM (names
/// are unique across the tables); feeds count their single-address entries.
pub type Membership = BTreeMap<String, BTreeSet<IpAddr>>;

/// The membership of a VDOM now.
pub fn membership(v: &Vdom) -> Membership {
    let groups = v.groups.keys().chain(v.groups6.keys()).filter_map(|g| Some((g.clone(), resolve(v, g)?)));
    let feeds = v.feed_lists.iter().map(|(n, l)| (n.clone(), l.single_ips()));
    groups.chain(feeds).collect()
}

const ADDRESS_TYPES: [&str; 8] = ["ipmask", "iprange", "fqdn", "geography", "wildcard", "dynamic", "interface-subnet", "mac"];
/// `firewall address6` types (6.4 swagger).
const ADDRESS6_TYPES: [&str; 7] = ["ipprefix", "iprange", "fqdn", "geography", "dynamic", "template", "mac"];

impl Store {
    /// VDOMs named in `vdoms` (at least `root` when empty); `seed` fixes the UUIDs.
    pub fn new(vdoms: &[String], max_members: usize, seed: u64) -> Store {
        let mut names: Vec<String> = vdoms.to_vec();
        if names.is_empty() {
            names.push("root".into());
        }
        Store {
            vdoms: names.into_iter().map(|v| (v, Vdom::default())).collect(),
            max_members,
            max_feed_entries: super::feed::DEFAULT_MAX_ENTRIES,
            push_feeds: true,
            record_steps: false,
            steps: Vec::new(),
            feed_log: Vec::new(),
            uuid_state: seed | 1,
        }
    }

    fn uuid(&mut self) -> String {
        let mut next = || {
            // splitmix64: distinct, reproducible UUID-shaped strings.
            self.uuid_state = self.uuid_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.uuid_state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let (a, b) = (next(), next());
        format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", a >> 32, (a >> 16) & 0xffff, a & 0xfff, b >> 52, b & 0xffff_ffff_ffff)
    }

    /// One VDOM, or the permission error FortiOS gives for a VDOM the admin cannot reach.
    pub fn vdom(&self, name: &str) -> Result<&Vdom, ApiError> {
        self.vdoms.get(name).ok_or_else(|| ApiError::new(403, -14, format!("vdom \"{name}\": permission denied")))
    }

    fn vdom_mut(&mut self, name: &str) -> Result<&mut Vdom, ApiError> {
        self.vdom(name)?;
        Ok(self.vdoms.get_mut(name).expect("checked above"))
    }

    /// Creates an object from a POST body.
    pub fn create(&mut self, vdom: &str, table: Table, body: &Map<String, Value>) -> Result<String, ApiError> {
        let name = body.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        check_name(&name, table)?;
        let v = self.vdom(vdom)?;
        if taken(v, &name) {
            return Err(ApiError::duplicate(&name));
        }
        let uuid = self.uuid();
        let mut obj = defaults(table, &name, &uuid);
        merge(&mut obj, body);
        obj.insert("name".into(), json!(name));
        obj.insert("q_origin_key".into(), json!(name));
        let v = self.vdom(vdom)?;
        let obj = validate(v, table, &name, obj, self.max_members, self.push_feeds)?;
        let v = self.vdom_mut(vdom)?;
        table_of_mut(v, table).insert(name.clone(), obj);
        v.revision += 1;
        Ok(name)
    }

    /// Updates `name` from a PUT body: attributes given replace those stored (a table
    /// attribute such as `member` is replaced whole); a different `name` renames the object
    /// and the references to it.
    pub fn update(&mut self, vdom: &str, table: Table, name: &str, body: &Map<String, Value>) -> Result<String, ApiError> {
        let (max, push) = (self.max_members, self.push_feeds);
        let v = self.vdom(vdom)?;
        let mut obj = table_of(v, table).get(name).cloned().ok_or_else(ApiError::not_found)?;
        let new_name = body.get("name").and_then(Value::as_str).unwrap_or(name).to_string();
        if new_name != name {
            check_name(&new_name, table)?;
            if taken(v, &new_name) {
                return Err(ApiError::duplicate(&new_name));
            }
        }
        let old_kind = (obj.get("type").cloned(), obj.get("update-method").cloned());
        merge(&mut obj, body);
        obj.insert("name".into(), json!(new_name));
        obj.insert("q_origin_key".into(), json!(new_name));
        let obj = validate(v, table, &new_name, obj, max, push)?;
        let v = self.vdom_mut(vdom)?;
        if new_name != name {
            table_of_mut(v, table).remove(name);
            rename_references(v, name, &new_name);
            if let Some(list) = v.feed_lists.remove(name) {
                v.feed_lists.insert(new_name.clone(), list);
            }
        }
        // Pushed entries belong to a push address feed: another type or method drops them.
        if (obj.get("type").cloned(), obj.get("update-method").cloned()) != old_kind {
            v.feed_lists.remove(&new_name);
        }
        table_of_mut(v, table).insert(new_name.clone(), obj);
        v.revision += 1;
        Ok(new_name)
    }

    /// Deletes `name` unless a group or a policy references it.
    pub fn delete(&mut self, vdom: &str, table: Table, name: &str) -> Result<(), ApiError> {
        let v = self.vdom(vdom)?;
        if !table_of(v, table).contains_key(name) {
            return Err(ApiError::not_found());
        }
        if let Some(by) = referrer(v, name) {
            return Err(ApiError::in_use(name, &by));
        }
        let v = self.vdom_mut(vdom)?;
        table_of_mut(v, table).remove(name);
        v.feed_lists.remove(name);
        v.revision += 1;
        Ok(())
    }
}

/// Whether a name is used: addresses, groups (of both families) and external resources share
/// one namespace (the CLI reference: addresses and groups "must all have unique names";
/// the emulator's assumption, unverified for feeds and across the families).
pub fn taken(v: &Vdom, name: &str) -> bool {
    v.addresses.contains_key(name) || v.groups.contains_key(name) || v.addresses6.contains_key(name) || v.groups6.contains_key(name) || v.feeds.contains_key(name)
}

/// The objects of one table.
pub fn table_of(v: &Vdom, table: Table) -> &BTreeMap<String, Map<String, Value>> {
    match table {
        Table::Address => &v.addresses,
        Table::Addrgrp => &v.groups,
        Table::Address6 => &v.addresses6,
        Table::Addrgrp6 => &v.groups6,
        Table::ExternalResource => &v.feeds,
    }
}

fn table_of_mut(v: &mut Vdom, table: Table) -> &mut BTreeMap<String, Map<String, Value>> {
    match table {
        Table::Address => &mut v.addresses,
        Table::Addrgrp => &mut v.groups,
        Table::Address6 => &mut v.addresses6,
        Table::Addrgrp6 => &mut v.groups6,
        Table::ExternalResource => &mut v.feeds,
    }
}

/// Who references `name`: a group (member) or a firewall policy.
pub fn referrer(v: &Vdom, name: &str) -> Option<String> {
    if let Some(g) = v.groups.iter().find(|(_, g)| member_names(g).any(|m| m == name)) {
        return Some(format!("firewall.addrgrp \"{}\"", g.0));
    }
    if let Some(g) = v.groups6.iter().find(|(_, g)| member_names(g).any(|m| m == name)) {
        return Some(format!("firewall.addrgrp6 \"{}\"", g.0));
    }
    v.policy_refs.get(name).and_then(|ids| ids.first()).map(|id| format!("firewall.policy {id}"))
}

fn rename_references(v: &mut Vdom, old: &str, new: &str) {
    for g in v.groups.values_mut().chain(v.groups6.values_mut()) {
        if let Some(Value::Array(members)) = g.get_mut("member") {
            for m in members.iter_mut() {
                if m.get("name").and_then(Value::as_str) == Some(old) {
                    *m = json!({"name": new, "q_origin_key": new});
                }
            }
        }
    }
    if let Some(ids) = v.policy_refs.remove(old) {
        v.policy_refs.insert(new.to_string(), ids);
    }
}

/// The member names of a stored group.
pub fn member_names(g: &Map<String, Value>) -> impl Iterator<Item = &str> {
    g.get("member").and_then(Value::as_array).into_iter().flatten().filter_map(|m| m.get("name").and_then(Value::as_str))
}

fn check_name(name: &str, table: Table) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid("name: empty value"));
    }
    let max = if table == Table::ExternalResource { MAX_FEED_NAME } else { MAX_NAME };
    if name.chars().count() > max {
        return Err(ApiError::invalid_length("name"));
    }
    Ok(())
}

/// What GET returns for a new object before the body's attributes are applied.
fn defaults(table: Table, name: &str, uuid: &str) -> Map<String, Value> {
    let v = match table {
        Table::Address => json!({
            "name": name, "q_origin_key": name, "uuid": uuid, "subnet": "0.0.0.0 0.0.0.0", "type": "ipmask",
            "comment": "", "associated-interface": "", "color": 0, "allow-routing": "disable", "fabric-object": "disable",
        }),
        Table::Addrgrp => json!({
            "name": name, "q_origin_key": name, "uuid": uuid, "type": "default", "member": [], "comment": "",
            "exclude": "disable", "exclude-member": [], "color": 0, "allow-routing": "disable", "fabric-object": "disable",
        }),
        Table::Address6 => json!({
            "name": name, "q_origin_key": name, "uuid": uuid, "type": "ipprefix", "ip6": "::/0", "start-ip": "::", "end-ip": "::",
            "host-type": "any", "host": "::", "comment": "", "color": 0, "fabric-object": "disable",
        }),
        Table::Addrgrp6 => json!({
            "name": name, "q_origin_key": name, "uuid": uuid, "member": [], "comment": "", "color": 0, "fabric-object": "disable",
        }),
        // The CLI reference's defaults (7.2); `password` is never shown.
        Table::ExternalResource => json!({
            "name": name, "q_origin_key": name, "uuid": uuid, "status": "enable", "type": "category", "update-method": "feed",
            "category": 0, "username": "", "comments": "", "resource": "", "user-agent": "curl/7.58.0",
            "server-identity-check": "none", "refresh-rate": 5, "source-ip": "0.0.0.0", "interface-select-method": "auto", "interface": "",
        }),
    };
    match v {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

fn merge(obj: &mut Map<String, Value>, body: &Map<String, Value>) {
    for (k, v) in body {
        // The key and uuid are the server's; everything else the client may set.
        if k != "q_origin_key" {
            obj.insert(k.clone(), v.clone());
        }
    }
}

/// Checks an object about to be stored and normalises it as FortiOS does (subnet written as
/// "address mask", member entries with `q_origin_key`).
fn validate(v: &Vdom, table: Table, name: &str, mut obj: Map<String, Value>, max_members: usize, push_feeds: bool) -> Result<Map<String, Value>, ApiError> {
    if let Some(c) = obj.get("comment") {
        let c = c.as_str().ok_or_else(|| ApiError::invalid("comment: not a string"))?;
        if c.chars().count() > MAX_COMMENT {
            return Err(ApiError::invalid_length("comment"));
        }
    }
    if let Some(c) = obj.get("color")
        && c.as_u64().is_none_or(|c| c > 32)
    {
        return Err(ApiError::invalid("color: out of range 0-32"));
    }
    match table {
        Table::Address => {
            let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
            if !ADDRESS_TYPES.contains(&kind) {
                return Err(ApiError::invalid(format!("type: invalid value '{kind}'")));
            }
            let subnet = obj.get("subnet").and_then(Value::as_str).ok_or_else(|| ApiError::invalid_ip("(not a string)"))?;
            let (ip, prefix) = parse_subnet(subnet).ok_or_else(|| ApiError::invalid_ip(subnet))?;
            obj.insert("subnet".into(), json!(format!("{ip} {}", prefix_mask(prefix))));
        }
        Table::Address6 => {
            let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
            if !ADDRESS6_TYPES.contains(&kind) {
                return Err(ApiError::invalid(format!("type: invalid value '{kind}'")));
            }
            if kind == "ipprefix" {
                let ip6 = obj.get("ip6").and_then(Value::as_str).ok_or_else(|| ApiError::invalid_ip("(not a string)"))?;
                let (ip, prefix) = parse_prefix6(ip6).ok_or_else(|| ApiError::invalid_ip(ip6))?;
                obj.insert("ip6".into(), json!(format!("{ip}/{prefix}")));
            }
        }
        Table::Addrgrp6 => {
            let members = match obj.get("member") {
                Some(Value::Array(a)) => a.clone(),
                _ => return Err(ApiError::invalid("member: not a list")),
            };
            if members.is_empty() {
                return Err(ApiError::invalid("Attribute 'member' MUST be set."));
            }
            let mut seen = BTreeSet::new();
            let mut out = Vec::with_capacity(members.len());
            for m in &members {
                let m = m.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::invalid("member: entry without a name"))?;
                if m == name || (v.groups6.contains_key(m) && contains_group(&v.groups6, m, name)) {
                    return Err(ApiError::invalid(format!("member: \"{m}\" would make a loop of groups")));
                }
                // The datasource is address6 and addrgrp6 only: IPv4 objects are not found.
                if !v.addresses6.contains_key(m) && !v.groups6.contains_key(m) {
                    return Err(ApiError::missing_reference(m));
                }
                if seen.insert(m.to_string()) {
                    out.push(json!({"name": m, "q_origin_key": m}));
                }
            }
            obj.insert("member".into(), Value::Array(out));
        }
        Table::Addrgrp => {
            let members = match obj.get("member") {
                Some(Value::Array(a)) => a.clone(),
                _ => return Err(ApiError::invalid("member: not a list")),
            };
            // FortiOS refuses a group without members ("Attribute 'member' MUST be set.").
            if members.is_empty() {
                return Err(ApiError::invalid("Attribute 'member' MUST be set."));
            }
            if members.len() > max_members {
                return Err(ApiError::invalid_length(&format!("member: {} entries (at most {max_members})", members.len())));
            }
            let mut seen = BTreeSet::new();
            let mut out = Vec::with_capacity(members.len());
            for m in &members {
                let m = m.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::invalid("member: entry without a name"))?;
                if m == name || (v.groups.contains_key(m) && contains_group(&v.groups, m, name)) {
                    return Err(ApiError::invalid(format!("member: \"{m}\" would make a loop of groups")));
                }
                if !v.addresses.contains_key(m) && !v.groups.contains_key(m) {
                    return Err(ApiError::missing_reference(m));
                }
                // The CLI keeps a member once; the API does the same silently.
                if seen.insert(m.to_string()) {
                    out.push(json!({"name": m, "q_origin_key": m}));
                }
            }
            obj.insert("member".into(), Value::Array(out));
        }
        Table::ExternalResource => super::feed::validate_resource(&obj, push_feeds)?,
    }
    Ok(obj)
}

/// Whether group `outer` of `groups` contains group `inner`, directly or through nested groups.
fn contains_group(groups: &BTreeMap<String, Map<String, Value>>, outer: &str, inner: &str) -> bool {
    let mut stack = vec![outer.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(g) = stack.pop() {
        if !seen.insert(g.clone()) {
            continue;
        }
        for m in groups.get(&g).into_iter().flat_map(member_names) {
            if m == inner {
                return true;
            }
            if groups.contains_key(m) {
                stack.push(m.to_string());
            }
        }
    }
    false
}

/// Parses "a.b.c.d m.m.m.m", "a.b.c.d/len" or "a.b.c.d/m.m.m.m" (contiguous masks only).
pub fn parse_subnet(s: &str) -> Option<(Ipv4Addr, u8)> {
    let s = s.trim();
    let (ip, mask) = s.split_once(' ').or_else(|| s.split_once('/')).unwrap_or((s, "32"));
    let ip: Ipv4Addr = ip.trim().parse().ok()?;
    let mask = mask.trim();
    let prefix = if let Ok(m) = mask.parse::<Ipv4Addr>() {
        let bits = u32::from(m);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return None;
        }
        bits.leading_ones() as u8
    } else {
        let p: u8 = mask.parse().ok()?;
        (p <= 32).then_some(p)?
    };
    Some((ip, prefix))
}

/// Parses an `ip6` value "addr/len" (no length: /128).
pub fn parse_prefix6(s: &str) -> Option<(Ipv6Addr, u8)> {
    let s = s.trim();
    let (ip, len) = s.split_once('/').unwrap_or((s, "128"));
    let len: u8 = len.trim().parse().ok()?;
    Some((ip.trim().parse().ok()?, (len <= 128).then_some(len)?))
}

/// The single IPv6 address an `ipprefix` /128 address6 object stands for.
pub fn host_of6(addr: &Map<String, Value>) -> Option<Ipv6Addr> {
    if addr.get("type").and_then(Value::as_str) != Some("ipprefix") {
        return None;
    }
    match parse_prefix6(addr.get("ip6")?.as_str()?)? {
        (ip, 128) => Some(ip),
        _ => None,
    }
}

/// "255.255.255.0" for 24.
pub fn prefix_mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) })
}

/// The single IPv4 address an `ipmask` /32 address object stands for.
pub fn host_of(addr: &Map<String, Value>) -> Option<Ipv4Addr> {
    if addr.get("type").and_then(Value::as_str) != Some("ipmask") {
        return None;
    }
    match parse_subnet(addr.get("subnet")?.as_str()?)? {
        (ip, 32) => Some(ip),
        _ => None,
    }
}

/// Host addresses of a group (an addrgrp or an addrgrp6), through nested groups of its table
/// (non-host members are skipped).
pub fn resolve(v: &Vdom, group: &str) -> Option<BTreeSet<IpAddr>> {
    let v6 = !v.groups.contains_key(group);
    let groups = if v6 { &v.groups6 } else { &v.groups };
    groups.get(group)?;
    let host = |m: &str| -> Option<IpAddr> {
        if v6 { v.addresses6.get(m).and_then(host_of6).map(IpAddr::V6) } else { v.addresses.get(m).and_then(host_of).map(IpAddr::V4) }
    };
    let mut out = BTreeSet::new();
    let mut stack = vec![group.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(g) = stack.pop() {
        if !seen.insert(g.clone()) {
            continue;
        }
        for m in groups.get(&g).into_iter().flat_map(member_names) {
            if let Some(ip) = host(m) {
                out.insert(ip);
            } else if groups.contains_key(m) {
                stack.push(m.to_string());
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("test body must be an object"),
        }
    }

    #[test]
    fn subnets_parse_and_normalise() {
        assert_eq!(parse_subnet("10.1.2.3 255.255.255.255"), Some(("10.1.2.3".parse().expect("ip"), 32)));
        assert_eq!(parse_subnet("10.1.2.0/24"), Some(("10.1.2.0".parse().expect("ip"), 24)));
        assert_eq!(parse_subnet("10.1.2.0/255.255.0.0"), Some(("10.1.2.0".parse().expect("ip"), 16)));
        assert_eq!(parse_subnet("10.1.2.0 255.0.255.0"), None, "non-contiguous mask");
        assert_eq!(parse_subnet("10.1.2.300/32"), None);
        assert_eq!(prefix_mask(24).to_string(), "255.255.255.0");
        assert_eq!(prefix_mask(0).to_string(), "0.0.0.0");
    }

    #[test]
    fn groups_need_existing_members_and_block_deletes() {
        let mut s = Store::new(&[], 2, 1);
        s.create("root", Table::Address, &body(json!({"name": "a", "subnet": "10.0.0.1/32"}))).expect("create a");
        let stored = &s.vdoms["root"].addresses["a"];
        assert_eq!(stored["subnet"], "10.0.0.1 255.255.255.255");
        assert_eq!(s.create("root", Table::Address, &body(json!({"name": "a"}))).expect_err("duplicate").code, -5);
        assert_eq!(s.create("root", Table::Addrgrp, &body(json!({"name": "a", "member": [{"name": "a"}]}))).expect_err("shared namespace").code, -5);
        let e = s.create("root", Table::Addrgrp, &body(json!({"name": "g", "member": [{"name": "nope"}]}))).expect_err("missing member");
        assert_eq!((e.http, e.code), (424, -3));
        assert_eq!(s.create("root", Table::Addrgrp, &body(json!({"name": "g", "member": []}))).expect_err("empty").code, -651);
        s.create("root", Table::Addrgrp, &body(json!({"name": "g", "member": [{"name": "a"}]}))).expect("group");
        let e = s.delete("root", Table::Address, "a").expect_err("in use");
        assert_eq!((e.http, e.code), (500, -23), "{e:?}");
        s.create("root", Table::Addrgrp, &body(json!({"name": "outer", "member": [{"name": "g"}]}))).expect("nested");
        assert_eq!(resolve(&s.vdoms["root"], "outer"), Some(["10.0.0.1".parse::<IpAddr>().expect("ip")].into()));
        let e = s.update("root", Table::Addrgrp, "g", &body(json!({"member": [{"name": "outer"}]}))).expect_err("loop");
        assert_eq!(e.code, -651);
        s.create("root", Table::Address, &body(json!({"name": "b", "subnet": "10.0.0.2/32"}))).expect("b");
        s.create("root", Table::Address, &body(json!({"name": "c", "subnet": "10.0.0.3/32"}))).expect("c");
        let e = s.update("root", Table::Addrgrp, "g", &body(json!({"member": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}))).expect_err("over max");
        assert_eq!(e.code, -1);
        assert_eq!(s.create("root", Table::Address, &body(json!({"name": "x".repeat(80)}))).expect_err("long").code, -1);
        assert_eq!(s.create("root", Table::Address, &body(json!({"name": "y", "subnet": "1.2.3"}))).expect_err("bad ip").code, -8);
        assert_eq!(s.create("dmz", Table::Address, &body(json!({"name": "y"}))).expect_err("no vdom").http, 403);
    }

    #[test]
    fn ipv6_lives_in_its_own_tables() {
        let mut s = Store::new(&[], 2, 1);
        s.create("root", Table::Address6, &body(json!({"name": "a6", "ip6": "FD00:9:0::1/128"}))).expect("address6");
        let stored = &s.vdoms["root"].addresses6["a6"];
        assert_eq!((stored["type"].clone(), stored["ip6"].clone()), (json!("ipprefix"), json!("fd00:9::1/128")), "canonical form");
        for bad in ["fd00:9::zz/128", "fd00:9::1/129", "10.0.0.1/32"] {
            let e = s.create("root", Table::Address6, &body(json!({"name": "bad", "ip6": bad}))).expect_err(bad);
            assert_eq!((e.http, e.code), (424, -8), "{bad}: {e:?}");
        }
        assert_eq!(s.create("root", Table::Address6, &body(json!({"name": "t", "type": "ipmask"}))).expect_err("v4 type").code, -651);
        s.create("root", Table::Address, &body(json!({"name": "a4", "subnet": "10.0.0.1/32"}))).expect("address");
        // One namespace: an address6 cannot take an address's name.
        assert_eq!(s.create("root", Table::Address6, &body(json!({"name": "a4", "ip6": "fd00::2/128"}))).expect_err("taken").code, -5);
        // An addrgrp6 takes address6 members only, and an addrgrp no address6.
        let e = s.create("root", Table::Addrgrp6, &body(json!({"name": "g6", "member": [{"name": "a4"}]}))).expect_err("v4 member");
        assert_eq!((e.http, e.code), (424, -3));
        let e = s.create("root", Table::Addrgrp, &body(json!({"name": "g4", "member": [{"name": "a6"}]}))).expect_err("v6 member");
        assert_eq!((e.http, e.code), (424, -3));
        assert_eq!(s.create("root", Table::Addrgrp6, &body(json!({"name": "g6", "member": []}))).expect_err("empty").code, -651);
        s.create("root", Table::Addrgrp6, &body(json!({"name": "g6", "member": [{"name": "a6"}]}))).expect("addrgrp6");
        s.create("root", Table::Addrgrp6, &body(json!({"name": "outer6", "member": [{"name": "g6"}]}))).expect("nested addrgrp6");
        assert_eq!(resolve(&s.vdoms["root"], "outer6"), Some(["fd00:9::1".parse::<IpAddr>().expect("ip")].into()));
        assert_eq!(s.update("root", Table::Addrgrp6, "g6", &body(json!({"member": [{"name": "outer6"}]}))).expect_err("loop").code, -651);
        let e = s.delete("root", Table::Address6, "a6").expect_err("in use");
        assert!(e.code == -23 && e.cli.contains("firewall.addrgrp6 \"g6\""), "{e:?}");
        assert_eq!(membership(&s.vdoms["root"])["g6"].len(), 1);
    }

    #[test]
    fn rename_follows_references() {
        let mut s = Store::new(&["root".into()], 600, 1);
        s.create("root", Table::Address, &body(json!({"name": "a", "subnet": "10.0.0.1/32"}))).expect("a");
        s.create("root", Table::Addrgrp, &body(json!({"name": "g", "member": [{"name": "a"}]}))).expect("g");
        s.update("root", Table::Address, "a", &body(json!({"name": "a2"}))).expect("rename");
        assert_eq!(member_names(&s.vdoms["root"].groups["g"]).collect::<Vec<_>>(), ["a2"]);
    }
}
