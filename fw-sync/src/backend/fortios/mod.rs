//! FortiOS backend: one FortiGate VDOM through the REST API, with two kinds of target.
//!
//! | kind | FortiOS object | versions | cost of N new IPs |
//! | --- | --- | --- | --- |
//! | `fortios-addrgrp` | `firewall addrgrp` of `firewall address` objects | every version (6.4 too) | one request per new IP, plus one per changed group |
//! | `fortios-threat-feed` | `system external-resource`, `type address`, `update-method push` | 7.2.1 and later | one request per batch of up to 10,000 entries |
//!
//! Use the address group where policies must see ordinary address objects (e.g. to be
//! shown or reused elsewhere) or where the FortiGate runs FortiOS before 7.2.1. Use the
//! threat feed where pods come and go in numbers: 1,000 new pod IPs are one request
//! instead of about a thousand, which is what keeps fw-sync within ten API calls per 1,000
//! pod events. Both are usable in firewall policies as addresses. A firewall may hold
//! targets of both kinds (under different names); see [`feed`] for the feeds.
//!
//! Address groups (see [`layout`] for the objects and their names):
//!
//! Reading is two GETs (owned addresses, owned groups; `filter=name=@bhfw-`), plus the
//! feeds' reads when the FortiGate (its version is in every answer) is 7.2.1 or later.
//! Applying:
//! 1. create (POST) the address objects new IPs need; one object serves every owned group
//!    holding its IP, so N new IPs cost N POSTs once;
//! 2. removal-first: groups losing an IP that another group gains in this diff are written
//!    with their removals only, and deleted groups are deleted, before anything is added;
//! 3. every changed group is written with its complete member list (PUT, or POST when new;
//!    chunks first, then the group itself), removals and additions of the other groups in
//!    one request each;
//! 4. orphaned chunk groups and address objects no owned group uses are deleted. FortiOS
//!    refuses to delete an object something else references (error -23): such an address
//!    is kept (a foreign group or policy uses it), such a target group is emptied instead.
//!
//! With both kinds in one diff, the feeds' removals go first, then the groups, then the
//! feeds' additions, so an IP moving between kinds is never in two objects either.
//!
//! Requests are retried (twice) on transport failures and 5xx answers without a FortiOS
//! error code. A POST whose object exists (e.g. a retry of a POST whose answer was lost) is
//! followed by a PUT of the same body; a PUT of a vanished object by a POST; a DELETE of a
//! missing object succeeds.

mod client;
pub mod feed;
pub mod layout;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::backend::Backend;
use crate::backend::http::{HttpClient, TlsOptions};
use crate::config::FortiosConfig;
use crate::diff::{Action, Diff, ObjectChange};
use crate::error::FwSyncError;
use crate::group::{FirewallState, OWNED_PREFIX, TargetKind};
use client::{Answer, Client};
use feed::Feeds;
use layout::{Layout, Owned, PLACEHOLDER, PLACEHOLDER_IP, address_name, group_name, is_chunk};

/// Members per address group FortiOS accepts (`maxItems` in the 6.4 schema).
pub const DEFAULT_MAX_MEMBERS: usize = 600;

const COMMENT: &str = "managed by bulkhead fw-sync: do not edit";

/// One FortiGate VDOM reached through the FortiOS REST API.
pub struct FortiosBackend {
    client: Client,
    max_members: usize,
    /// Owned objects as last read, updated by every write; None forces a read before apply.
    owned: Option<Owned>,
    /// Owned addresses FortiOS refused to delete as in use (a foreign group or policy); not
    /// tried again until the next read.
    in_use: BTreeSet<String>,
    /// Owned threat feeds as last read (set with `owned`); empty before FortiOS 7.2.1.
    feeds: Feeds,
    /// FortiOS version from the last answer that named it (`v7.2.5` -> (7, 2, 5)).
    version: Option<(u32, u32, u32)>,
    max_feed_entries: usize,
}

impl FortiosBackend {
    /// A backend for firewall `name`.
    pub fn new(name: &str, config: FortiosConfig, tls: &TlsOptions) -> Result<Self, FwSyncError> {
        let http = HttpClient::new(name, &config.url, tls)?;
        Ok(FortiosBackend {
            client: Client::new(http, config.token, &config.vdom),
            max_members: DEFAULT_MAX_MEMBERS,
            owned: None,
            in_use: BTreeSet::new(),
            feeds: Feeds::default(),
            version: None,
            max_feed_entries: feed::DEFAULT_MAX_ENTRIES,
        })
    }

    /// Sets the entries per threat feed the FortiGate accepts.
    pub fn with_max_feed_entries(mut self, max: usize) -> Self {
        self.max_feed_entries = max;
        self
    }

    /// Whether the FortiGate has push threat feeds (7.2.1+; assumed when its version is
    /// not known yet).
    fn has_feeds(&self) -> bool {
        self.version.is_none_or(|v| v >= (7, 2, 1))
    }

    /// Sets the members per group the FortiGate accepts (a per-model limit).
    pub fn with_max_members(mut self, max: usize) -> Self {
        self.max_members = max.max(2);
        self
    }

    fn err(&self, object: &str, detail: impl Into<String>) -> FwSyncError {
        FwSyncError::Backend { firewall: self.client.firewall().to_string(), object: object.to_string(), detail: detail.into() }
    }

    fn owned(&mut self) -> &mut Owned {
        self.owned.as_mut().expect("read before apply")
    }

    /// GETs the owned objects of one table: (name, object) pairs.
    fn list(&mut self, table: &str, format: &str) -> Result<Vec<(String, Value)>, FwSyncError> {
        let path = self.client.path(table, None, &format!("filter=name%3D%40{OWNED_PREFIX}&format={format}"));
        let a = self.client.call("GET", &path, None)?;
        if let Some(v) = a.json.get("version").and_then(Value::as_str).and_then(parse_version) {
            self.version = Some(v);
        }
        let results = match a.json.get("results").and_then(Value::as_array) {
            Some(r) if a.ok() => r,
            _ => return Err(self.client.refused("GET", &path, &a)),
        };
        // The filter matches anywhere in the name: keep only the prefixed ones.
        Ok(results
            .iter()
            .filter_map(|o| Some((o.get("name")?.as_str()?.to_string(), o.clone())))
            .filter(|(n, _)| n.starts_with(OWNED_PREFIX))
            .collect())
    }

    /// Sends a body to `endpoint/name` (e.g. `cmdb/firewall/address`): POST when `exists` is
    /// false (PUT if it turns out to exist), PUT otherwise (POST if it vanished).
    fn upsert(&mut self, endpoint: &str, name: &str, body: &Value, exists: bool) -> Result<(), FwSyncError> {
        let item = self.client.api_path(endpoint, Some(name), "");
        let collection = self.client.api_path(endpoint, None, "");
        let (first, second) = if exists { (("PUT", &item), ("POST", &collection)) } else { (("POST", &collection), ("PUT", &item)) };
        let a = self.client.call(first.0, first.1, Some(body))?;
        if a.ok() {
            return Ok(());
        }
        let retry = if exists { a.missing() } else { a.duplicate() };
        if !retry {
            return Err(self.client.refused(first.0, first.1, &a));
        }
        tracing::debug!(object = name, "{} said {}; trying {}", first.0, a.describe(), second.0);
        let b = self.client.call(second.0, second.1, Some(body))?;
        if b.ok() { Ok(()) } else { Err(self.client.refused(second.0, second.1, &b)) }
    }

    /// DELETEs `table/name`: Ok(true) when gone (or already absent), Ok(false) when FortiOS
    /// says something still uses it.
    fn delete(&mut self, table: &str, name: &str) -> Result<bool, FwSyncError> {
        let path = self.client.path(table, Some(name), "");
        let a: Answer = self.client.call("DELETE", &path, None)?;
        if a.ok() || a.missing() {
            if table == "address" {
                self.owned().addresses.remove(name);
            } else {
                self.owned().groups.remove(name);
            }
            return Ok(true);
        }
        if a.in_use() {
            return Ok(false);
        }
        Err(self.client.refused("DELETE", &path, &a))
    }

    /// Makes `bhfw-<ip>` exist and stand for `ip`.
    fn ensure_address(&mut self, name: &str, ip: Ipv4Addr) -> Result<(), FwSyncError> {
        let current = self.owned().addresses.get(name).copied();
        if current == Some(Some(ip)) {
            return Ok(());
        }
        let body = json!({"name": name, "type": "ipmask", "subnet": format!("{ip} 255.255.255.255"), "comment": COMMENT});
        self.upsert("cmdb/firewall/address", name, &body, current.is_some())?;
        self.owned().addresses.insert(name.to_string(), Some(ip));
        Ok(())
    }

    /// Writes group `name` with `members` unless it already has them.
    fn write_group(&mut self, name: &str, members: Vec<String>, comment: &str) -> Result<(), FwSyncError> {
        if self.owned().has_members(name, &members) {
            return Ok(());
        }
        if members.iter().any(|m| m == PLACEHOLDER) {
            self.ensure_address(PLACEHOLDER, PLACEHOLDER_IP)?;
        }
        let exists = self.owned().groups.contains_key(name);
        let body = json!({"name": name, "member": members.iter().map(|m| json!({"name": m})).collect::<Vec<_>>(), "comment": comment});
        self.upsert("cmdb/firewall/addrgrp", name, &body, exists)?;
        self.owned().groups.insert(name.to_string(), members);
        Ok(())
    }

    /// Brings `target`'s group and chunks to `to`: chunks first (so the group never names a
    /// missing one), then the group, then chunks it no longer uses are deleted.
    fn write_layout(&mut self, target: &str, to: &Layout) -> Result<(), FwSyncError> {
        let top = group_name(target);
        let old_chunks = self.owned().chunks_of(&top);
        for (chunk, ips) in &to.chunks {
            let members = ips.iter().map(|ip| address_name(*ip)).collect();
            self.write_group(chunk, members, &format!("{COMMENT} (part of {top})"))?;
        }
        self.write_group(&top, to.top_members(), COMMENT)?;
        for chunk in old_chunks.iter().filter(|c| !to.chunks.contains_key(*c)) {
            if !self.delete("addrgrp", chunk)? {
                tracing::debug!(object = %chunk, "chunk group in use elsewhere; kept");
            }
        }
        Ok(())
    }

    /// Deletes `target`'s group and chunks; a group a policy still uses is emptied instead.
    fn delete_target(&mut self, target: &str) -> Result<(), FwSyncError> {
        let top = group_name(target);
        if !self.owned().groups.contains_key(&top) {
            return Ok(());
        }
        let chunks = self.owned().chunks_of(&top);
        if !self.delete("addrgrp", &top)? {
            tracing::warn!(object = %top, "group is still used (by a policy?): emptied instead of deleted");
            self.write_group(&top, vec![PLACEHOLDER.to_string()], COMMENT)?;
        }
        for chunk in chunks {
            self.delete("addrgrp", &chunk)?;
        }
        Ok(())
    }

    /// Deletes owned chunks no group references, then owned addresses no group uses.
    fn collect_garbage(&mut self) -> Result<(), FwSyncError> {
        let orphans: Vec<String> = {
            let o = self.owned();
            let used = o.referenced();
            o.groups.keys().filter(|g| is_chunk(g) && !used.contains(g.as_str())).cloned().collect()
        };
        for chunk in orphans {
            self.delete("addrgrp", &chunk)?;
        }
        let unused: Vec<String> = {
            let o = self.owned.as_ref().expect("read before apply");
            let used = o.referenced();
            o.addresses.keys().filter(|a| !used.contains(a.as_str()) && !self.in_use.contains(*a)).cloned().collect()
        };
        for addr in unused {
            if !self.delete("address", &addr)? {
                tracing::debug!(object = %addr, "address still used by an object fw-sync does not own; kept");
                self.in_use.insert(addr);
            }
        }
        Ok(())
    }

    /// Applies a diff of both kinds with every removal before any addition: the feeds'
    /// removals, then the address groups (removal-first among themselves), then the feeds'
    /// additions; feeds of deleted targets go last. Feeds alone take one `dynamic` request.
    fn apply_all(&mut self, diff: &Diff) -> Result<(), FwSyncError> {
        let (feeds, groups): (Vec<&ObjectChange>, Vec<&ObjectChange>) = diff.changes.iter().partition(|c| c.object.kind == TargetKind::FortiosThreatFeed);
        if feeds.is_empty() {
            return self.apply_changes(diff);
        }
        if !self.has_feeds() {
            let (major, minor, patch) = self.version.unwrap_or_default();
            return Err(self.err(&feeds[0].object.to_string(), format!("FortiOS v{major}.{minor}.{patch} has no push threat feeds (7.2.1 or later); use a fortios-addrgrp target")));
        }
        let moves = diff.moves();
        let owned = self.owned.as_ref().expect("read before apply");
        let plan = feed::plan(&feeds, &self.feeds, &moves, self.max_feed_entries, |n| owned.groups.contains_key(n) || owned.addresses.contains_key(n))
            .map_err(|(object, why)| self.err(&object, why))?;
        for name in &plan.create {
            self.upsert(feed::TABLE, name, &feed::create_body(name, COMMENT), false)?;
            self.feeds.feeds.entry(name.clone()).or_default();
        }
        if groups.is_empty() {
            feed::push(&mut self.client, &mut self.feeds, plan.first.into_iter().chain(plan.then).collect())?;
        } else {
            feed::push(&mut self.client, &mut self.feeds, plan.first)?;
            self.apply_changes(&Diff { changes: groups.into_iter().cloned().collect() })?;
            feed::push(&mut self.client, &mut self.feeds, plan.then)?;
        }
        for name in &plan.delete {
            let path = self.client.api_path(feed::TABLE, Some(name), "");
            let a = self.client.call("DELETE", &path, None)?;
            if a.ok() || a.missing() {
                self.feeds.feeds.remove(name);
            } else if a.in_use() {
                tracing::warn!(object = %name, "threat feed is still used (by a policy?): emptied instead of deleted");
            } else {
                return Err(self.client.refused("DELETE", &path, &a));
            }
        }
        Ok(())
    }

    fn apply_changes(&mut self, diff: &Diff) -> Result<(), FwSyncError> {
        let moves = diff.moves();
        let cap = self.max_members;
        // (target, layout after removals when they must go first, final layout)
        let mut plans: Vec<(String, Option<Layout>, Layout)> = Vec::new();
        let mut deletes = Vec::new();
        for c in &diff.changes {
            let target = c.object.name.as_str();
            let what = format!("{} {target}", c.object.kind);
            if c.object.kind != TargetKind::FortiosAddrgrp {
                return Err(self.err(&what, "not a FortiOS address group"));
            }
            if target.parse::<Ipv4Addr>().is_ok() || target.contains('~') || group_name(target).len() > layout::MAX_NAME {
                return Err(self.err(&what, "name clashes with fw-sync's address objects (bhfw-<ip>) or is too long; rename the target"));
            }
            if c.action == Action::Delete {
                deletes.push(target.to_string());
                continue;
            }
            let owned = self.owned.as_ref().expect("read before apply");
            let before = owned.layout(target);
            let kept = before.clone().unwrap_or_default().keep(&c.desired);
            let after = kept
                .with(&c.desired, cap, target, |n| owned.groups.contains_key(n) || owned.addresses.contains_key(n))
                .map_err(|e| self.err(&what, e))?;
            // Back under the limit: fold the chunks into the group (one PUT, chunks deleted).
            let after = if after.chunks.is_empty() || c.desired.len() > cap { after } else { Layout { direct: c.desired.clone(), chunks: Default::default() } };
            let first = (before.is_some() && c.remove.iter().any(|ip| moves.contains(ip))).then_some(kept);
            plans.push((target.to_string(), first, after));
        }
        let mut needed: BTreeSet<Ipv4Addr> = BTreeSet::new();
        for (_, _, after) in &plans {
            needed.extend(after.ips());
        }
        for ip in needed {
            self.ensure_address(&address_name(ip), ip)?;
        }
        for (target, first, _) in &plans {
            if let Some(kept) = first {
                self.write_layout(target, kept)?;
            }
        }
        for target in &deletes {
            self.delete_target(target)?;
        }
        for (target, _, after) in &plans {
            self.write_layout(target, after)?;
        }
        self.collect_garbage()
    }
}

/// "v7.2.5" -> (7, 2, 5).
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.trim_start_matches('v').split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

impl Backend for FortiosBackend {
    fn firewall(&self) -> &str {
        self.client.firewall()
    }

    fn read_owned_state(&mut self) -> Result<FirewallState, FwSyncError> {
        let mut owned = Owned::default();
        for (name, o) in self.list("address", "name%7Ctype%7Csubnet")? {
            let host = (o.get("type").and_then(Value::as_str) == Some("ipmask"))
                .then(|| o.get("subnet").and_then(Value::as_str).and_then(layout::host_of_subnet))
                .flatten();
            owned.addresses.insert(name, host);
        }
        for (name, o) in self.list("addrgrp", "name%7Cmember")? {
            let members = o.get("member").and_then(Value::as_array).into_iter().flatten();
            owned.groups.insert(name, members.filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_string)).collect());
        }
        let mut state = owned.state();
        // The version came with the GETs above: FortiOS before 7.2.1 has no push feeds.
        let feeds = if self.has_feeds() { feed::read(&mut self.client)? } else { Feeds::default() };
        state.extend(feeds.state());
        self.feeds = feeds;
        self.owned = Some(owned);
        self.in_use.clear();
        Ok(state)
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), FwSyncError> {
        if diff.is_empty() {
            return Ok(());
        }
        if self.owned.is_none() {
            self.read_owned_state()?;
        }
        let result = self.apply_all(diff);
        if result.is_err() {
            // Part of it may be applied and the cache may be off: read again before the next.
            self.owned = None;
        }
        result
    }

    fn calls(&self) -> u64 {
        self.client.calls()
    }
}
