//! FortiOS backend: one FortiGate VDOM through the REST API, with two kinds of target.
//!
//! | kind | FortiOS object | versions | cost of N new IPs |
//! | --- | --- | --- | --- |
//! | `fortios-addrgrp` | `firewall addrgrp` of `firewall address` objects, and for IPv6 `firewall addrgrp6` of `firewall address6` objects | every version (6.4 too) | one request per new IP, plus one per changed group |
//! | `fortios-threat-feed` | `system external-resource`, `type address`, `update-method push` (one feed holds both families) | 7.2.1 and later | one request per batch of up to 10,000 entries |
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
//! Reading is four GETs (owned addresses and groups of each family; `filter=name=@bhfw-`),
//! plus the feeds' reads when the FortiGate (its version is in every answer) is 7.2.1 or
//! later.
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
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::backend::Backend;
use crate::backend::http::{HttpClient, TlsOptions};
use crate::config::FortiosConfig;
use crate::diff::{Action, Diff, ObjectChange};
use crate::error::FwSyncError;
use crate::group::{FirewallState, OWNED_PREFIX, TargetKind};
use client::{Answer, Client};
use feed::Feeds;
use layout::{Fam, Layout, Owned, address_name, group_name, is_chunk};

/// Members per address group FortiOS accepts (`maxItems` in the 6.4 schema).
pub const DEFAULT_MAX_MEMBERS: usize = 600;

const COMMENT: &str = "managed by bulkhead fw-sync: do not edit";

/// One FortiGate VDOM reached through the FortiOS REST API.
pub struct FortiosBackend {
    client: Client,
    max_members: usize,
    /// Owned objects of each family's tables as last read (indexed by [`Fam::idx`]), updated
    /// by every write; None forces a read before apply.
    owned: Option<[Owned; 2]>,
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

    fn owned(&mut self, fam: Fam) -> &mut Owned {
        &mut self.owned.as_mut().expect("read before apply")[fam.idx()]
    }

    /// Whether an owned address or group of either family has this name.
    fn name_taken(owned: &[Owned; 2], name: &str) -> bool {
        owned.iter().any(|o| o.groups.contains_key(name) || o.addresses.contains_key(name))
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
            let fam = if table.ends_with('6') { Fam::V6 } else { Fam::V4 };
            if table.starts_with("address") {
                self.owned(fam).addresses.remove(name);
            } else {
                self.owned(fam).groups.remove(name);
            }
            return Ok(true);
        }
        if a.in_use() {
            return Ok(false);
        }
        Err(self.client.refused("DELETE", &path, &a))
    }

    /// Makes `bhfw-<ip>` exist and stand for `ip`: an `address` `ipmask` /32, or an
    /// `address6` `ipprefix` /128.
    fn ensure_address(&mut self, name: &str, ip: IpAddr) -> Result<(), FwSyncError> {
        let fam = Fam::of(&ip);
        let current = self.owned(fam).addresses.get(name).copied();
        if current == Some(Some(ip)) {
            return Ok(());
        }
        let body = match ip {
            IpAddr::V4(_) => json!({"name": name, "type": "ipmask", "subnet": format!("{ip} 255.255.255.255"), "comment": COMMENT}),
            IpAddr::V6(_) => json!({"name": name, "type": "ipprefix", "ip6": format!("{ip}/128"), "comment": COMMENT}),
        };
        self.upsert(&format!("cmdb/firewall/{}", fam.address_table()), name, &body, current.is_some())?;
        self.owned(fam).addresses.insert(name.to_string(), Some(ip));
        Ok(())
    }

    /// Writes group `name` of the family's table with `members` unless it already has them.
    fn write_group(&mut self, fam: Fam, name: &str, members: Vec<String>, comment: &str) -> Result<(), FwSyncError> {
        if self.owned(fam).has_members(name, &members) {
            return Ok(());
        }
        if members.iter().any(|m| m == fam.placeholder()) {
            self.ensure_address(fam.placeholder(), fam.placeholder_ip())?;
        }
        let exists = self.owned(fam).groups.contains_key(name);
        let body = json!({"name": name, "member": members.iter().map(|m| json!({"name": m})).collect::<Vec<_>>(), "comment": comment});
        self.upsert(&format!("cmdb/firewall/{}", fam.group_table()), name, &body, exists)?;
        self.owned(fam).groups.insert(name.to_string(), members);
        Ok(())
    }

    /// Brings `target`'s group and chunks of one family to `to`: chunks first (so the group
    /// never names a missing one), then the group, then chunks it no longer uses are deleted.
    fn write_layout(&mut self, fam: Fam, target: &str, to: &Layout) -> Result<(), FwSyncError> {
        let top = group_name(target, fam);
        let old_chunks = self.owned(fam).chunks_of(&top);
        for (chunk, ips) in &to.chunks {
            let members = ips.iter().map(|ip| address_name(*ip)).collect();
            self.write_group(fam, chunk, members, &format!("{COMMENT} (part of {top})"))?;
        }
        self.write_group(fam, &top, to.top_members(fam), COMMENT)?;
        for chunk in old_chunks.iter().filter(|c| !to.chunks.contains_key(*c)) {
            if !self.delete(fam.group_table(), chunk)? {
                tracing::debug!(object = %chunk, "chunk group in use elsewhere; kept");
            }
        }
        Ok(())
    }

    /// Deletes `target`'s group and chunks of one family; a group a policy still uses is
    /// emptied instead.
    fn delete_target(&mut self, fam: Fam, target: &str) -> Result<(), FwSyncError> {
        let top = group_name(target, fam);
        if !self.owned(fam).groups.contains_key(&top) {
            return Ok(());
        }
        let chunks = self.owned(fam).chunks_of(&top);
        if !self.delete(fam.group_table(), &top)? {
            tracing::warn!(object = %top, family = fam.name(), "group is still used (by a policy?): emptied instead of deleted");
            self.write_group(fam, &top, vec![fam.placeholder().to_string()], COMMENT)?;
        }
        for chunk in chunks {
            self.delete(fam.group_table(), &chunk)?;
        }
        Ok(())
    }

    /// Deletes owned chunks no group references, then owned addresses no group uses, in
    /// both families' tables.
    fn collect_garbage(&mut self) -> Result<(), FwSyncError> {
        for fam in Fam::BOTH {
            let orphans: Vec<String> = {
                let o = self.owned(fam);
                let used = o.referenced();
                o.groups.keys().filter(|g| is_chunk(g) && !used.contains(g.as_str())).cloned().collect()
            };
            for chunk in orphans {
                self.delete(fam.group_table(), &chunk)?;
            }
            let unused: Vec<String> = {
                let o = &self.owned.as_ref().expect("read before apply")[fam.idx()];
                let used = o.referenced();
                o.addresses.keys().filter(|a| !used.contains(a.as_str()) && !self.in_use.contains(*a)).cloned().collect()
            };
            for addr in unused {
                if !self.delete(fam.address_table(), &addr)? {
                    tracing::debug!(object = %addr, family = fam.name(), "address still used by an object fw-sync does not own; kept");
                    self.in_use.insert(addr);
                }
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
        let plan = feed::plan(&feeds, &self.feeds, &moves, self.max_feed_entries, |n| Self::name_taken(owned, n))
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
        // (family, target, layout after removals when they must go first, final layout)
        let mut plans: Vec<(Fam, String, Option<Layout>, Layout)> = Vec::new();
        let mut deletes = Vec::new();
        for c in &diff.changes {
            let target = c.object.name.as_str();
            let what = format!("{} {target}", c.object.kind);
            if c.object.kind != TargetKind::FortiosAddrgrp {
                return Err(self.err(&what, "not a FortiOS address group"));
            }
            if layout::looks_like_address(target) || target.contains('~') || group_name(target, Fam::V6).len() > layout::MAX_NAME {
                return Err(self.err(&what, "name clashes with fw-sync's address objects (bhfw-<ip>) or is too long; rename the target"));
            }
            if c.action == Action::Delete {
                deletes.push(target.to_string());
                continue;
            }
            for fam in Fam::BOTH {
                let desired: BTreeSet<IpAddr> = c.desired.iter().filter(|ip| Fam::of(ip) == fam).copied().collect();
                let owned = self.owned.as_ref().expect("read before apply");
                let before = owned[fam.idx()].layout(target);
                // The IPv4 group always exists; the addrgrp6 once the target has had an
                // IPv6 member.
                if fam == Fam::V6 && before.is_none() && desired.is_empty() {
                    continue;
                }
                let kept = before.clone().unwrap_or_default().keep(&desired);
                let chunk_target = format!("{target}{}", fam.suffix());
                let after = kept.with(&desired, cap, &chunk_target, |n| Self::name_taken(owned, n)).map_err(|e| self.err(&format!("{what} ({})", fam.name()), e))?;
                // Back under the limit: fold the chunks into the group (one PUT, chunks deleted).
                let after = if after.chunks.is_empty() || desired.len() > cap { after } else { Layout { direct: desired.clone(), chunks: Default::default() } };
                let first = (before.is_some() && c.remove.iter().any(|ip| Fam::of(ip) == fam && moves.contains(ip))).then_some(kept);
                plans.push((fam, target.to_string(), first, after));
            }
        }
        let mut needed: BTreeSet<IpAddr> = BTreeSet::new();
        for (_, _, _, after) in &plans {
            needed.extend(after.ips());
        }
        for ip in needed {
            self.ensure_address(&address_name(ip), ip)?;
        }
        for (fam, target, first, _) in &plans {
            if let Some(kept) = first {
                self.write_layout(*fam, target, kept)?;
            }
        }
        for target in &deletes {
            for fam in Fam::BOTH {
                self.delete_target(fam, target)?;
            }
        }
        for (fam, target, _, after) in &plans {
            self.write_layout(*fam, target, after)?;
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
        let mut owned = [Owned::new(Fam::V4), Owned::new(Fam::V6)];
        for (name, o) in self.list("address", "name%7Ctype%7Csubnet")? {
            let host = (o.get("type").and_then(Value::as_str) == Some("ipmask"))
                .then(|| o.get("subnet").and_then(Value::as_str).and_then(layout::host_of_subnet))
                .flatten();
            owned[0].addresses.insert(name, host.map(IpAddr::V4));
        }
        for (name, o) in self.list("address6", "name%7Ctype%7Cip6")? {
            let host = (o.get("type").and_then(Value::as_str) == Some("ipprefix")).then(|| o.get("ip6").and_then(Value::as_str).and_then(layout::host_of_ip6)).flatten();
            owned[1].addresses.insert(name, host.map(IpAddr::V6));
        }
        for fam in Fam::BOTH {
            for (name, o) in self.list(fam.group_table(), "name%7Cmember")? {
                let members = o.get("member").and_then(Value::as_array).into_iter().flatten();
                owned[fam.idx()].groups.insert(name, members.filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_string)).collect());
            }
        }
        // A target's members are those of its group and of its addrgrp6.
        let mut state = owned[0].state();
        for (object, ips) in owned[1].state() {
            state.entry(object).or_default().extend(ips);
        }
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
