//! nftables: every target is a named set `bhfw-<name>` of type `ipv4_addr` in a configured
//! table (default `inet bhfw`). fw-sync creates the table if it is missing but never deletes
//! it, and never touches its chains or sets without the prefix, so the firewall's own rules
//! can live beside the sets they match on (nft rules can only use sets of their own table).
//!
//! A whole diff is one `nft -f -` run, which the kernel applies as one transaction: every
//! changed set is flushed and refilled, and rules see the old or the new content of all sets,
//! never a mix. Refilling rather than adding and deleting single elements means a hand edit
//! between the read and the apply cannot make the transaction fail.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde_json::Value;

use super::{Backend, Runner};
use crate::diff::{Action, Diff};
use crate::error::FwSyncError;
use crate::group::{FirewallState, OWNED_PREFIX, ObjectRef, TargetKind};

/// The nftables backend.
pub struct NftBackend {
    runner: Runner,
    family: String,
    table: String,
}

impl NftBackend {
    /// A backend for sets in `family table`.
    pub fn new(runner: Runner, family: &str, table: &str) -> Self {
        NftBackend { runner, family: family.to_string(), table: table.to_string() }
    }

    /// The set name of a target.
    pub fn set_name(object: &ObjectRef) -> String {
        format!("{OWNED_PREFIX}{}", object.name)
    }

    /// The `nft -f` batch applying the creates and updates of `diff` (deletes go separately,
    /// since a set still used by a rule cannot be deleted and must not fail the batch).
    pub fn batch(&self, diff: &Diff) -> String {
        let (f, t) = (&self.family, &self.table);
        let mut s = format!("add table {f} {t}\n");
        for c in diff.changes.iter().filter(|c| c.action != Action::Delete) {
            let set = Self::set_name(&c.object);
            if c.action == Action::Create {
                let _ = writeln!(s, "add set {f} {t} {set} {{ type ipv4_addr; comment \"owned by fw-sync\"; }}");
            }
            let _ = writeln!(s, "flush set {f} {t} {set}");
            if !c.desired.is_empty() {
                let elems: Vec<String> = c.desired.iter().map(Ipv4Addr::to_string).collect();
                let _ = writeln!(s, "add element {f} {t} {set} {{ {} }}", elems.join(", "));
            }
        }
        s
    }

    fn backend_err(&self, set: &str, detail: String) -> FwSyncError {
        FwSyncError::Backend { firewall: self.runner.firewall().to_string(), object: format!("nftables set {} {} {set}", self.family, self.table), detail }
    }

    /// Parses `nft -j list table` output into the owned sets.
    pub fn parse_json(&self, text: &str) -> Result<FirewallState, FwSyncError> {
        let v: Value = serde_json::from_str(text).map_err(|e| self.backend_err("*", format!("nft printed invalid JSON: {e}")))?;
        let mut state = FirewallState::new();
        let items = v.get("nftables").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for set in items.iter().filter_map(|i| i.get("set")) {
            let Some(name) = set.get("name").and_then(Value::as_str) else { continue };
            let Some(short) = name.strip_prefix(OWNED_PREFIX) else { continue };
            if set.get("type").and_then(Value::as_str) != Some("ipv4_addr") || set.get("flags").is_some() {
                return Err(self.backend_err(name, format!("is not a plain set of type ipv4_addr ({set}): fw-sync leaves it alone; delete it by hand to let fw-sync manage it")));
            }
            let mut members = BTreeSet::new();
            for e in set.get("elem").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                // Plain elements are strings; elements with a comment or counter are objects.
                let text = e.as_str().or_else(|| e.get("elem").and_then(|x| x.get("val")).and_then(Value::as_str));
                let ip = text.and_then(|t| t.parse::<Ipv4Addr>().ok()).ok_or_else(|| self.backend_err(name, format!("element {e} is not an IPv4 address")))?;
                members.insert(ip);
            }
            state.insert(ObjectRef { kind: TargetKind::NftablesSet, name: short.to_string() }, members);
        }
        Ok(state)
    }
}

impl Backend for NftBackend {
    fn firewall(&self) -> &str {
        self.runner.firewall()
    }

    fn read_owned_state(&mut self) -> Result<FirewallState, FwSyncError> {
        let (f, t) = (self.family.clone(), self.table.clone());
        match self.runner.run("nft", &["-j", "list", "table", &f, &t], None) {
            Ok(text) => self.parse_json(&text),
            // No table yet: nothing owned (the first apply creates it).
            Err(FwSyncError::Command { detail, .. }) if detail.contains("No such file or directory") => Ok(FirewallState::new()),
            Err(e) => Err(e),
        }
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), FwSyncError> {
        if diff.changes.iter().any(|c| c.action != Action::Delete) {
            let batch = self.batch(diff);
            self.runner.run("nft", &["-f", "-"], Some(&batch))?;
        }
        let (f, t) = (self.family.clone(), self.table.clone());
        for c in diff.changes.iter().filter(|c| c.action == Action::Delete) {
            let set = Self::set_name(&c.object);
            if let Err(e) = self.runner.run("nft", &["delete", "set", &f, &t, &set], None) {
                // Still used by a rule: emptied, so no group membership survives it.
                tracing::warn!(firewall = self.runner.firewall(), %set, error = %e, "no group targets this owned set but it is in use; emptying it instead");
                self.runner.run("nft", &["flush", "set", &f, &t, &set], None)?;
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
        let s = backend().parse_json(json).expect("parses");
        let names: Vec<_> = s.iter().map(|(o, m)| (o.name.as_str(), m.len())).collect();
        assert_eq!(names, [("empty", 0), ("web", 2)]);
        let bad = r#"{"nftables": [{"set": {"name": "bhfw-x", "type": "ipv4_addr", "flags": ["interval"]}}]}"#;
        let e = backend().parse_json(bad).expect_err("interval set").to_string();
        assert!(e.contains("firewall fw: nftables set inet bhfw bhfw-x: is not a plain set"), "{e}");
    }

    #[test]
    fn one_batch_refills_changed_sets() {
        let o = |n: &str| ObjectRef { kind: TargetKind::NftablesSet, name: n.into() };
        let ip = |s: &str| -> Ipv4Addr { s.parse().expect("ip") };
        let actual: FirewallState = [(o("a"), [ip("10.0.0.1"), ip("10.0.0.5")].into()), (o("gone"), [].into())].into();
        let desired: FirewallState = [(o("a"), [ip("10.0.0.1")].into()), (o("b"), [ip("10.0.0.5")].into())].into();
        let batch = backend().batch(&Diff::compute(&desired, &actual));
        assert_eq!(
            batch,
            "add table inet bhfw\nflush set inet bhfw bhfw-a\nadd element inet bhfw bhfw-a { 10.0.0.1 }\nadd set inet bhfw bhfw-b { type ipv4_addr; comment \"owned by fw-sync\"; }\nflush set inet bhfw bhfw-b\nadd element inet bhfw bhfw-b { 10.0.0.5 }\n"
        );
    }
}
