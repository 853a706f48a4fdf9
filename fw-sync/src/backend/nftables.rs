//! nftables: every target is a pair of named sets in a configured table (default
//! `inet bhfw`): `bhfw-<name>` of type `ipv4_addr` and `bhfw-<name>-v6` of type `ipv6_addr`,
//! created together so rules may name either (`ip saddr @bhfw-web`, `ip6 saddr @bhfw-web-v6`).
//! fw-sync creates the table if it is missing but never deletes it, and never touches its
//! chains or sets without the prefix, so the firewall's own rules can live beside the sets
//! they match on (nft rules can only use sets of their own table). An `ip6` or `inet` table
//! can match the IPv6 set, an `ip` table only holds it.
//!
//! A whole diff is one `nft -f -` run, which the kernel applies as one transaction: every
//! changed set of both families is flushed and refilled, and rules see the old or the new
//! content of all sets, never a mix. Refilling rather than adding and deleting single
//! elements means a hand edit between the read and the apply cannot make the transaction
//! fail.
//!
//! A set of the pair that is missing (an object made by fw-sync before it knew IPv6 has no
//! `-v6` set) is logged when read and created at the object's next change.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::Value;

use super::{Backend, Runner};
use crate::diff::{Action, Diff};
use crate::error::FwSyncError;
use crate::group::{FirewallState, OWNED_PREFIX, ObjectRef, TargetKind, V6_SUFFIX};

/// The element type of a target's set of one family.
const TYPES: [(bool, &str); 2] = [(false, "ipv4_addr"), (true, "ipv6_addr")];

/// The nftables backend.
pub struct NftBackend {
    runner: Runner,
    family: String,
    table: String,
    /// Sets of owned pairs that did not exist at the last read (created at the next change).
    missing: BTreeSet<String>,
}

impl NftBackend {
    /// A backend for sets in `family table`.
    pub fn new(runner: Runner, family: &str, table: &str) -> Self {
        NftBackend { runner, family: family.to_string(), table: table.to_string(), missing: BTreeSet::new() }
    }

    /// The IPv4 set name of a target.
    pub fn set_name(object: &ObjectRef) -> String {
        format!("{OWNED_PREFIX}{}", object.name)
    }

    /// The IPv6 set name of a target: `bhfw-<name>-v6`.
    pub fn set6_name(object: &ObjectRef) -> String {
        format!("{OWNED_PREFIX}{}{V6_SUFFIX}", object.name)
    }

    fn family_set(object: &ObjectRef, v6: bool) -> String {
        if v6 { Self::set6_name(object) } else { Self::set_name(object) }
    }

    /// The `nft -f` batch applying the creates and updates of `diff` (deletes go separately,
    /// since a set still used by a rule cannot be deleted and must not fail the batch).
    pub fn batch(&self, diff: &Diff) -> String {
        let (f, t) = (&self.family, &self.table);
        let mut s = format!("add table {f} {t}\n");
        for c in diff.changes.iter().filter(|c| c.action != Action::Delete) {
            for (v6, ty) in TYPES {
                let set = Self::family_set(&c.object, v6);
                let ours = |ip: &&IpAddr| ip.is_ipv6() == v6;
                if c.action == Action::Create || self.missing.contains(&set) {
                    let _ = writeln!(s, "add set {f} {t} {set} {{ type {ty}; comment \"owned by fw-sync\"; }}");
                } else if !c.add.iter().chain(&c.remove).any(|ip| ours(&ip)) {
                    // This family did not change: its set is left as it is.
                    continue;
                }
                let _ = writeln!(s, "flush set {f} {t} {set}");
                let elems: Vec<String> = c.desired.iter().filter(ours).map(IpAddr::to_string).collect();
                if !elems.is_empty() {
                    let _ = writeln!(s, "add element {f} {t} {set} {{ {} }}", elems.join(", "));
                }
            }
        }
        s
    }

    fn backend_err(&self, set: &str, detail: String) -> FwSyncError {
        FwSyncError::Backend { firewall: self.runner.firewall().to_string(), object: format!("nftables set {} {} {set}", self.family, self.table), detail }
    }

    /// Parses `nft -j list table` output into the owned sets.
    pub fn parse_json(&self, text: &str) -> Result<FirewallState, FwSyncError> {
        self.parse_pairs(text).map(|(state, _)| state)
    }

    /// [`NftBackend::parse_json`], and the sets missing from owned pairs.
    pub fn parse_pairs(&self, text: &str) -> Result<(FirewallState, BTreeSet<String>), FwSyncError> {
        let v: Value = serde_json::from_str(text).map_err(|e| self.backend_err("*", format!("nft printed invalid JSON: {e}")))?;
        let mut state = FirewallState::new();
        let mut seen = BTreeSet::new();
        let items = v.get("nftables").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for set in items.iter().filter_map(|i| i.get("set")) {
            let Some(name) = set.get("name").and_then(Value::as_str) else { continue };
            let Some(short) = name.strip_prefix(OWNED_PREFIX) else { continue };
            let (short, v6) = match short.strip_suffix(V6_SUFFIX) {
                Some(base) => (base, true),
                None => (short, false),
            };
            let (want, family) = if v6 { ("ipv6_addr", "IPv6") } else { ("ipv4_addr", "IPv4") };
            if set.get("type").and_then(Value::as_str) != Some(want) || set.get("flags").is_some() {
                return Err(self.backend_err(name, format!("is not a plain set of type {want} ({set}): fw-sync leaves it alone; delete it by hand to let fw-sync manage it")));
            }
            let mut members = BTreeSet::new();
            for e in set.get("elem").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                // Plain elements are strings; elements with a comment or counter are objects.
                let text = e.as_str().or_else(|| e.get("elem").and_then(|x| x.get("val")).and_then(Value::as_str));
                let ip = text
                    .and_then(|t| t.parse::<IpAddr>().ok())
                    .filter(|ip| ip.is_ipv6() == v6)
                    .ok_or_else(|| self.backend_err(name, format!("element {e} is not an {family} address")))?;
                members.insert(ip);
            }
            seen.insert(name.to_string());
            state.entry(ObjectRef { kind: TargetKind::NftablesSet, name: short.to_string() }).or_default().extend(members);
        }
        let missing = state.keys().flat_map(|o| [Self::set_name(o), Self::set6_name(o)]).filter(|n| !seen.contains(n)).collect();
        Ok((state, missing))
    }
}

impl Backend for NftBackend {
    fn firewall(&self) -> &str {
        self.runner.firewall()
    }

    fn read_owned_state(&mut self) -> Result<FirewallState, FwSyncError> {
        let (f, t) = (self.family.clone(), self.table.clone());
        match self.runner.run("nft", &["-j", "list", "table", &f, &t], None) {
            Ok(text) => {
                let (state, missing) = self.parse_pairs(&text)?;
                for set in &missing {
                    tracing::warn!(firewall = self.runner.firewall(), %set, "an owned nftables set pair lacks this set (made by an older fw-sync?); it is created at the target's next change");
                }
                self.missing = missing;
                Ok(state)
            }
            // No table yet: nothing owned (the first apply creates it).
            Err(FwSyncError::Command { detail, .. }) if detail.contains("No such file or directory") => {
                self.missing.clear();
                Ok(FirewallState::new())
            }
            Err(e) => Err(e),
        }
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), FwSyncError> {
        if diff.changes.iter().any(|c| c.action != Action::Delete) {
            let batch = self.batch(diff);
            self.runner.run("nft", &["-f", "-"], Some(&batch))?;
            for c in diff.changes.iter().filter(|c| c.action != Action::Delete) {
                self.missing.remove(&Self::set_name(&c.object));
                self.missing.remove(&Self::set6_name(&c.object));
            }
        }
        let (f, t) = (self.family.clone(), self.table.clone());
        for c in diff.changes.iter().filter(|c| c.action == Action::Delete) {
            for set in [Self::set_name(&c.object), Self::set6_name(&c.object)] {
                if self.missing.remove(&set) {
                    continue;
                }
                if let Err(e) = self.runner.run("nft", &["delete", "set", &f, &t, &set], None) {
                    if matches!(&e, FwSyncError::Command { detail, .. } if detail.contains("No such file or directory")) {
                        continue;
                    }
                    // Still used by a rule: emptied, so no group membership survives it.
                    tracing::warn!(firewall = self.runner.firewall(), %set, error = %e, "no group targets this owned set but it is in use; emptying it instead");
                    self.runner.run("nft", &["flush", "set", &f, &t, &set], None)?;
                }
            }
        }
        Ok(())
    }

    fn calls(&self) -> u64 {
        self.runner.calls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> NftBackend {
        NftBackend::new(Runner::new("fw", None), "inet", "bhfw")
    }

    #[test]
    fn reads_only_owned_sets() {
        let json = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}}, {"table": {"family": "inet", "name": "bhfw", "handle": 1}},
            {"set": {"family": "inet", "name": "bhfw-web", "table": "bhfw", "type": "ipv4_addr", "handle": 2, "elem": ["10.0.0.1", {"elem": {"val": "10.0.0.2", "comment": "x"}}]}},
            {"set": {"family": "inet", "name": "allowed", "table": "bhfw", "type": "ipv4_addr", "handle": 3, "elem": ["10.0.0.3"]}},
            {"set": {"family": "inet", "name": "bhfw-empty", "table": "bhfw", "type": "ipv4_addr", "handle": 4}}]}"#;
        let (s, missing) = backend().parse_pairs(json).expect("parses");
        let names: Vec<_> = s.iter().map(|(o, m)| (o.name.as_str(), m.len())).collect();
        assert_eq!(names, [("empty", 0), ("web", 2)]);
        assert_eq!(missing, ["bhfw-empty-v6".to_string(), "bhfw-web-v6".to_string()].into());
        let bad = r#"{"nftables": [{"set": {"name": "bhfw-x", "type": "ipv4_addr", "flags": ["interval"]}}]}"#;
        let e = backend().parse_json(bad).expect_err("interval set").to_string();
        assert!(e.contains("firewall fw: nftables set inet bhfw bhfw-x: is not a plain set"), "{e}");
    }

    #[test]
    fn reads_ipv6_sets_into_their_target() {
        let json = r#"{"nftables": [{"set": {"family": "inet", "name": "bhfw-web", "table": "bhfw", "type": "ipv4_addr", "elem": ["10.0.0.1"]}},
            {"set": {"family": "inet", "name": "bhfw-web-v6", "table": "bhfw", "type": "ipv6_addr", "elem": ["fd00::1", {"elem": {"val": "fd00::2", "counter": {}}}]}}]}"#;
        let (s, missing) = backend().parse_pairs(json).expect("parses");
        let web = &s[&ObjectRef { kind: TargetKind::NftablesSet, name: "web".into() }];
        assert_eq!(web.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.0.0.1", "fd00::1", "fd00::2"]);
        assert!(missing.is_empty(), "{missing:?}");
        let bad = r#"{"nftables": [{"set": {"name": "bhfw-x-v6", "type": "ipv4_addr"}}]}"#;
        let e = backend().parse_json(bad).expect_err("wrong type").to_string();
        assert!(e.contains("nftables set inet bhfw bhfw-x-v6: is not a plain set of type ipv6_addr"), "{e}");
        let bad = r#"{"nftables": [{"set": {"name": "bhfw-x-v6", "type": "ipv6_addr", "elem": ["fd00::zz"]}}]}"#;
        let e = backend().parse_json(bad).expect_err("bad element").to_string();
        assert!(e.contains("bhfw-x-v6: element \"fd00::zz\" is not an IPv6 address"), "{e}");
    }

    #[test]
    fn one_batch_refills_the_changed_family() {
        let o = |n: &str| ObjectRef { kind: TargetKind::NftablesSet, name: n.into() };
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let actual: FirewallState = [(o("a"), [ip("10.0.0.1"), ip("fd00::5")].into())].into();
        let desired: FirewallState = [(o("a"), [ip("10.0.0.1"), ip("fd00::6")].into()), (o("b"), [ip("fd00::5")].into())].into();
        let batch = backend().batch(&Diff::compute(&desired, &actual));
        assert_eq!(
            batch,
            "add table inet bhfw\nflush set inet bhfw bhfw-a-v6\nadd element inet bhfw bhfw-a-v6 { fd00::6 }\nadd set inet bhfw bhfw-b { type ipv4_addr; comment \"owned by fw-sync\"; }\nflush set inet bhfw bhfw-b\nadd set inet bhfw bhfw-b-v6 { type ipv6_addr; comment \"owned by fw-sync\"; }\nflush set inet bhfw bhfw-b-v6\nadd element inet bhfw bhfw-b-v6 { fd00::5 }\n"
        );
    }

    #[test]
    fn one_batch_refills_changed_sets() {
        let o = |n: &str| ObjectRef { kind: TargetKind::NftablesSet, name: n.into() };
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let actual: FirewallState = [(o("a"), [ip("10.0.0.1"), ip("10.0.0.5")].into()), (o("gone"), [].into())].into();
        let desired: FirewallState = [(o("a"), [ip("10.0.0.1")].into()), (o("b"), [ip("10.0.0.5")].into())].into();
        let batch = backend().batch(&Diff::compute(&desired, &actual));
        assert_eq!(
            batch,
            "add table inet bhfw\nflush set inet bhfw bhfw-a\nadd element inet bhfw bhfw-a { 10.0.0.1 }\nadd set inet bhfw bhfw-b { type ipv4_addr; comment \"owned by fw-sync\"; }\nflush set inet bhfw bhfw-b\nadd element inet bhfw bhfw-b { 10.0.0.5 }\nadd set inet bhfw bhfw-b-v6 { type ipv6_addr; comment \"owned by fw-sync\"; }\nflush set inet bhfw bhfw-b-v6\n"
        );
    }
}
