//! What must change on a firewall: desired state against the state actually read (or last
//! applied), object by object.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use crate::group::{FirewallState, ObjectRef, count_by_family};

/// What happens to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// The object does not exist yet.
    Create,
    /// The object exists with other members.
    Update,
    /// fw-sync owns the object but no group targets it any more.
    Delete,
}

/// The change to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectChange {
    pub object: ObjectRef,
    pub action: Action,
    /// Addresses to add (all of `desired` for a create).
    pub add: BTreeSet<IpAddr>,
    /// Addresses to remove (all current members for a delete).
    pub remove: BTreeSet<IpAddr>,
    /// The complete member list after the change (empty for a delete), for backends that
    /// replace an object whole.
    pub desired: BTreeSet<IpAddr>,
}

/// Every change on one firewall.
///
/// Contract for backends: every address in some `remove` must have left its object before
/// any address in some `add` enters its object, so an IP reused by another pod is never in
/// its old and its new group at once. Backends that apply everything in one atomic
/// transaction meet this trivially; others apply [`Diff::removals`] first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Creates and updates (in object order), then deletes.
    pub changes: Vec<ObjectChange>,
}

impl Diff {
    /// Compares desired to actual. Objects in `actual` that are not desired are deleted.
    pub fn compute(desired: &FirewallState, actual: &FirewallState) -> Diff {
        let mut changes = Vec::new();
        for (object, want) in desired {
            let (action, have) = match actual.get(object) {
                Some(have) if have == want => continue,
                Some(have) => (Action::Update, have.clone()),
                None => (Action::Create, BTreeSet::new()),
            };
            changes.push(ObjectChange {
                object: object.clone(),
                action,
                add: want.difference(&have).copied().collect(),
                remove: have.difference(want).copied().collect(),
                desired: want.clone(),
            });
        }
        for (object, have) in actual {
            if !desired.contains_key(object) {
                changes.push(ObjectChange {
                    object: object.clone(),
                    action: Action::Delete,
                    add: BTreeSet::new(),
                    remove: have.clone(),
                    desired: BTreeSet::new(),
                });
            }
        }
        Diff { changes }
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Removals from objects that stay, as (object, address): what a non-atomic backend
    /// applies first.
    pub fn removals(&self) -> impl Iterator<Item = (&ObjectRef, IpAddr)> {
        self.changes
            .iter()
            .filter(|c| c.action == Action::Update)
            .flat_map(|c| c.remove.iter().map(move |ip| (&c.object, *ip)))
    }

    /// Addresses removed from one object and added to another in this diff (an IP reused by
    /// another pod, or a pod relabelled).
    pub fn moves(&self) -> BTreeSet<IpAddr> {
        let removed: BTreeSet<_> = self.changes.iter().flat_map(|c| c.remove.iter().copied()).collect();
        self.changes.iter().flat_map(|c| c.add.iter().copied()).filter(|ip| removed.contains(ip)).collect()
    }

    /// Number of addresses added plus removed (objects deleted count their members).
    pub fn size(&self) -> usize {
        self.changes.iter().map(|c| c.add.len() + c.remove.len()).sum()
    }

    /// [`Diff::size`] by family: (IPv4, IPv6).
    pub fn size_by_family(&self) -> (usize, usize) {
        count_by_family(self.changes.iter().flat_map(|c| c.add.iter().chain(&c.remove)))
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return writeln!(f, "  (in step)");
        }
        for c in &self.changes {
            let verb = match c.action {
                Action::Create => "create",
                Action::Update => "update",
                Action::Delete => "delete",
            };
            write!(f, "  {verb} {}:", c.object)?;
            for ip in &c.remove {
                write!(f, " -{ip}")?;
            }
            for ip in &c.add {
                write!(f, " +{ip}")?;
            }
            if c.action == Action::Create && c.add.is_empty() {
                write!(f, " (empty)")?;
            }
            // Where a change touches IPv6, say how many of each family it moves: an operator
            // reading a long line of mixed addresses sees at once which objects (ipset and
            // nftables `-v6` sets, FortiOS addrgrp6) are written.
            let (n4, n6) = count_by_family(c.add.iter().chain(&c.remove));
            if n6 > 0 {
                write!(f, " [ipv4 {n4}, ipv6 {n6}]")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::TargetKind;

    fn obj(name: &str) -> ObjectRef {
        ObjectRef { kind: TargetKind::Ipset, name: name.into() }
    }
    fn set(ips: &[&str]) -> BTreeSet<IpAddr> {
        ips.iter().map(|s| s.parse().expect("test IP")).collect()
    }

    #[test]
    fn dual_stack_changes_name_the_family() {
        let desired: FirewallState = [(obj("a"), set(&["10.0.0.1", "fd00::1", "fd00::2"])), (obj("b"), set(&["10.0.0.2"]))].into();
        let actual: FirewallState = [(obj("a"), set(&["10.0.0.1", "fd00::3"])), (obj("b"), set(&["10.0.0.3"]))].into();
        let d = Diff::compute(&desired, &actual);
        assert_eq!(d.to_string(), "  update ipset a: -fd00::3 +fd00::1 +fd00::2 [ipv4 0, ipv6 3]\n  update ipset b: -10.0.0.3 +10.0.0.2\n");
        assert_eq!(d.size_by_family(), (2, 3));
        // An IPv6 address moving between objects is a move like an IPv4 one.
        let actual: FirewallState = [(obj("a"), set(&["fd00::9"])), (obj("b"), set(&[]))].into();
        let desired: FirewallState = [(obj("a"), set(&[])), (obj("b"), set(&["fd00::9"]))].into();
        let d = Diff::compute(&desired, &actual);
        assert_eq!(d.moves(), set(&["fd00::9"]));
        assert_eq!(d.removals().map(|(o, ip)| (o.name.as_str(), ip)).collect::<Vec<_>>(), [("a", "fd00::9".parse().expect("ip"))]);
    }

    #[test]
    fn creates_updates_and_deletes() {
        let desired: FirewallState = [(obj("a"), set(&["10.0.0.1", "10.0.0.2"])), (obj("b"), set(&[])), (obj("c"), set(&["10.0.0.9"]))].into();
        let actual: FirewallState = [(obj("a"), set(&["10.0.0.2", "10.0.0.3"])), (obj("c"), set(&["10.0.0.9"])), (obj("old"), set(&["10.0.0.4"]))].into();
        let d = Diff::compute(&desired, &actual);
        let summary: Vec<_> = d.changes.iter().map(|c| (c.object.name.as_str(), c.action, c.add.len(), c.remove.len())).collect();
        assert_eq!(summary, [("a", Action::Update, 1, 1), ("b", Action::Create, 0, 0), ("old", Action::Delete, 0, 1)], "{d}");
        assert_eq!(d.to_string(), "  update ipset a: -10.0.0.3 +10.0.0.1\n  create ipset b: (empty)\n  delete ipset old: -10.0.0.4\n");
        assert!(Diff::compute(&desired, &desired).is_empty());
    }

    #[test]
    fn a_moving_address_is_listed_as_a_removal() {
        // 10.0.0.5 was in `a` (pod deleted) and now belongs to a new pod in `b`.
        let actual: FirewallState = [(obj("a"), set(&["10.0.0.1", "10.0.0.5"])), (obj("b"), set(&["10.0.0.2"]))].into();
        let desired: FirewallState = [(obj("a"), set(&["10.0.0.1"])), (obj("b"), set(&["10.0.0.2", "10.0.0.5"]))].into();
        let d = Diff::compute(&desired, &actual);
        assert_eq!(d.moves(), set(&["10.0.0.5"]));
        let removals: Vec<_> = d.removals().map(|(o, ip)| (o.name.clone(), ip)).collect();
        assert_eq!(removals, [("a".to_string(), "10.0.0.5".parse().expect("ip"))]);
    }
}
