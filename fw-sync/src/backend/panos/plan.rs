//! Turns a [`Diff`] into the operations of one strict multi-config transaction, in an order
//! PAN-OS accepts: groups go, the addresses changed groups use are set, changed groups are
//! replaced whole, tags are created or removed, and last, addresses no owned group uses any
//! more go. The transaction is committed at once, so an address moving between groups is
//! never in both on the running config.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use super::api::esc;
use super::{DESCRIPTION, PLACEHOLDER, PLACEHOLDER_IP, address_name};
use crate::diff::{Action, Diff};
use crate::group::{FirewallState, OWNED_PREFIX, TargetKind};

/// Why an operation is there (to fall back when PAN-OS refuses a delete of an object still
/// in use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    DeleteGroup(String),
    DeleteAddress(IpAddr),
    Other,
}

/// One operation of a multi-config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub action: &'static str,
    pub xpath: String,
    pub element: String,
    pub purpose: Purpose,
}

impl Op {
    fn new(action: &'static str, xpath: String, element: String, purpose: Purpose) -> Op {
        Op { action, xpath, element, purpose }
    }
}

/// What the plan must not do again after PAN-OS refused it (reference count not zero).
#[derive(Debug, Default)]
pub(crate) struct Pinned {
    /// Owned groups still used by a rule or another group: emptied instead of deleted.
    pub groups: BTreeSet<String>,
    /// Owned addresses still used elsewhere: kept.
    pub addresses: BTreeSet<IpAddr>,
}

/// The operations for the static groups and tags of `diff`. `known` is the owned state
/// before it (to tell which addresses stay in use), `orphans` owned addresses no group uses,
/// `foreign_refs` owned address names that objects fw-sync does not own refer to.
pub(crate) fn plan(base: &str, diff: &Diff, known: &FirewallState, orphans: &BTreeSet<IpAddr>, foreign_refs: &BTreeSet<String>, pinned: &Pinned) -> Vec<Op> {
    let group_xpath = |name: &str| format!("{base}/address-group/entry[@name='{OWNED_PREFIX}{name}']");
    let statics = diff.changes.iter().filter(|c| c.object.kind == TargetKind::PanosStaticGroup);
    let (mut deletes, mut groups) = (Vec::new(), Vec::new());
    let mut needed = BTreeSet::new();
    let mut need_placeholder = false;
    for c in statics {
        let name = &c.object.name;
        let delete = c.action == Action::Delete && !pinned.groups.contains(name);
        if delete {
            deletes.push(Op::new("delete", group_xpath(name), String::new(), Purpose::DeleteGroup(name.clone())));
            continue;
        }
        // The group is replaced whole (`edit`) with every member it must have, and every one
        // of those addresses is (re)set: the diff is against the RUNNING config, while the
        // candidate may still hold a failed apply's uncommitted changes (members added or
        // addresses deleted), which a member-by-member change would commit along with it.
        needed.extend(c.desired.iter().copied());
        // PAN-OS refuses to commit a static group without members: an empty group holds the
        // placeholder, which goes again as soon as it has a real member.
        let mut members: Vec<String> = c.desired.iter().map(|ip| address_name(*ip)).collect();
        if members.is_empty() {
            need_placeholder = true;
            members.push(PLACEHOLDER.into());
        }
        let mut el = format!("<entry name=\"{OWNED_PREFIX}{}\"><static>", esc(name));
        for m in members {
            let _ = write!(el, "<member>{}</member>", esc(&m));
        }
        el.push_str("</static></entry>");
        groups.push(Op::new("edit", group_xpath(name), el, Purpose::Other));
    }
    let mut ops = deletes;
    if !needed.is_empty() || need_placeholder {
        let mut el = String::new();
        for ip in &needed {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            let _ = write!(el, "<entry name=\"{}\"><ip-netmask>{ip}/{len}</ip-netmask><description>{DESCRIPTION}</description></entry>", address_name(*ip));
        }
        if need_placeholder {
            let _ = write!(el, "<entry name=\"{PLACEHOLDER}\"><ip-netmask>{PLACEHOLDER_IP}/32</ip-netmask><description>{DESCRIPTION} (stands in for no member)</description></entry>");
        }
        ops.push(Op::new("set", format!("{base}/address"), el, Purpose::Other));
    }
    ops.append(&mut groups);
    for c in diff.changes.iter().filter(|c| c.object.kind == TargetKind::PanosDynamicTag) {
        let xpath = format!("{base}/tag/entry[@name='{OWNED_PREFIX}{}']", c.object.name);
        match c.action {
            Action::Create => ops.push(Op::new("set", xpath, format!("<comments>{DESCRIPTION}</comments>"), Purpose::Other)),
            Action::Delete => ops.push(Op::new("delete", xpath, String::new(), Purpose::Other)),
            Action::Update => {}
        }
    }
    // Addresses in use after the diff: every static group's members as they will be.
    let mut after_state: BTreeMap<&str, &BTreeSet<IpAddr>> =
        known.iter().filter(|(o, _)| o.kind == TargetKind::PanosStaticGroup).map(|(o, m)| (o.name.as_str(), m)).collect();
    let empty = BTreeSet::new();
    for c in diff.changes.iter().filter(|c| c.object.kind == TargetKind::PanosStaticGroup) {
        after_state.insert(&c.object.name, if c.action == Action::Delete { &empty } else { &c.desired });
    }
    let in_use: BTreeSet<IpAddr> = after_state.values().flat_map(|m| m.iter().copied()).collect();
    let candidates: BTreeSet<IpAddr> =
        diff.changes.iter().filter(|c| c.object.kind == TargetKind::PanosStaticGroup).flat_map(|c| c.remove.iter().copied()).chain(orphans.iter().copied()).collect();
    for ip in candidates {
        if in_use.contains(&ip) || pinned.addresses.contains(&ip) || foreign_refs.contains(&address_name(ip)) {
            continue;
        }
        ops.push(Op::new("delete", format!("{base}/address/entry[@name='{}']", address_name(ip)), String::new(), Purpose::DeleteAddress(ip)));
    }
    ops
}

/// The `<multi-config>` element, operation ids counting from 1.
pub(crate) fn multi_config_element(ops: &[Op]) -> String {
    let mut out = String::from("<multi-config>");
    for (i, op) in ops.iter().enumerate() {
        let id = i + 1;
        if op.element.is_empty() {
            let _ = write!(out, "<{a} id=\"{id}\" xpath=\"{x}\"/>", a = op.action, x = esc(&op.xpath));
        } else {
            let _ = write!(out, "<{a} id=\"{id}\" xpath=\"{x}\">{e}</{a}>", a = op.action, x = esc(&op.xpath), e = op.element);
        }
    }
    out.push_str("</multi-config>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::ObjectRef;

    fn ips(l: &[&str]) -> BTreeSet<IpAddr> {
        l.iter().map(|s| s.parse().expect("test IP")).collect()
    }

    #[test]
    fn a_move_is_one_ordered_transaction_and_unused_addresses_go_last() {
        let o = |n: &str| ObjectRef { kind: TargetKind::PanosStaticGroup, name: n.into() };
        let known: FirewallState = [(o("a"), ips(&["10.0.0.1", "10.0.0.5"])), (o("b"), ips(&["10.0.0.2"])), (o("c"), ips(&["10.0.0.1"]))].into();
        let desired: FirewallState = [(o("a"), ips(&[])), (o("b"), ips(&["10.0.0.2", "10.0.0.5"])), (o("c"), ips(&["10.0.0.1"]))].into();
        let diff = Diff::compute(&desired, &known);
        let ops = plan("/B", &diff, &known, &ips(&["10.9.9.9"]), &BTreeSet::new(), &Pinned::default());
        let shown: Vec<String> = ops.iter().map(|o| format!("{} {}", o.action, o.xpath)).collect();
        assert_eq!(
            shown,
            [
                "set /B/address",
                "edit /B/address-group/entry[@name='bhfw-a']",
                "edit /B/address-group/entry[@name='bhfw-b']",
                // 10.0.0.1 stays in use by c, 10.0.0.5 moved to b; only the orphan goes.
                "delete /B/address/entry[@name='bhfw-10.9.9.9']",
            ]
        );
        // Every address a changed group uses is set again (the candidate may lack one).
        for ip in ["10.0.0.2", "10.0.0.5"] {
            assert!(ops[0].element.contains(&format!("<entry name=\"bhfw-{ip}\"><ip-netmask>{ip}/32</ip-netmask>")), "{}", ops[0].element);
        }
        assert!(ops[0].element.contains("bhfw-empty-group"), "placeholder address for the emptied group");
        assert_eq!(ops[1].element, "<entry name=\"bhfw-a\"><static><member>bhfw-empty-group</member></static></entry>");
        assert_eq!(ops[2].element, "<entry name=\"bhfw-b\"><static><member>bhfw-10.0.0.2</member><member>bhfw-10.0.0.5</member></static></entry>");
        let el = multi_config_element(&ops[3..]);
        assert_eq!(el, "<multi-config><delete id=\"1\" xpath=\"/B/address/entry[@name=&apos;bhfw-10.9.9.9&apos;]\"/></multi-config>");
    }

    #[test]
    fn ipv6_members_are_host_addresses_in_the_same_group() {
        let o = |n: &str| ObjectRef { kind: TargetKind::PanosStaticGroup, name: n.into() };
        let known: FirewallState = [(o("a"), ips(&["10.0.0.1", "fd00:9::5"]))].into();
        let desired: FirewallState = [(o("a"), ips(&["10.0.0.1", "fd00:9::6"]))].into();
        let diff = Diff::compute(&desired, &known);
        let ops = plan("/B", &diff, &known, &BTreeSet::new(), &BTreeSet::new(), &Pinned::default());
        let shown: Vec<String> = ops.iter().map(|o| format!("{} {}", o.action, o.xpath)).collect();
        assert_eq!(shown, ["set /B/address", "edit /B/address-group/entry[@name='bhfw-a']", "delete /B/address/entry[@name='bhfw-fd00-9--5']"]);
        assert!(ops[0].element.contains("<entry name=\"bhfw-fd00-9--6\"><ip-netmask>fd00:9::6/128</ip-netmask>"), "{}", ops[0].element);
        assert!(ops[0].element.contains("<entry name=\"bhfw-10.0.0.1\"><ip-netmask>10.0.0.1/32</ip-netmask>"), "{}", ops[0].element);
        assert_eq!(ops[1].element, "<entry name=\"bhfw-a\"><static><member>bhfw-10.0.0.1</member><member>bhfw-fd00-9--6</member></static></entry>");
        assert_eq!(ops[2].purpose, Purpose::DeleteAddress("fd00:9::5".parse().expect("ip")));
    }

    #[test]
    fn address_names_read_back_only_as_fw_sync_writes_them() {
        use super::super::{address_name, address_of_name, is_host_value};
        for ip in ["10.1.2.3", "fd00:9::1", "2001:db8::", "::1", "fd00:1:2:3:4:5:6:7"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(address_of_name(&address_name(ip)), Some(ip), "{ip}");
        }
        assert_eq!(address_name("fd00:9::1".parse().expect("ip")), "bhfw-fd00-9--1");
        for name in ["bhfw-empty-group", "bhfw-web", "bhfw-FD00-9--1", "bhfw-fd00-0009--1", "bhfw-fd00:9::1", "other-10.0.0.1"] {
            assert_eq!(address_of_name(name), None, "{name}");
        }
        assert!(is_host_value("fd00:9::1/128", "fd00:9::1".parse().expect("ip")));
        assert!(is_host_value("FD00:9:0::1", "fd00:9::1".parse().expect("ip")));
        assert!(!is_host_value("fd00:9::1/64", "fd00:9::1".parse().expect("ip")));
        assert!(!is_host_value("10.0.0.1/128", "10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn a_pinned_group_is_emptied_instead_of_deleted() {
        let o = ObjectRef { kind: TargetKind::PanosStaticGroup, name: "old".into() };
        let known: FirewallState = [(o.clone(), ips(&["10.0.0.1"]))].into();
        let diff = Diff::compute(&FirewallState::new(), &known);
        let mut pinned = Pinned::default();
        let ops = plan("/B", &diff, &known, &BTreeSet::new(), &BTreeSet::new(), &pinned);
        assert_eq!(ops.iter().map(|o| &o.purpose).collect::<Vec<_>>(), [&Purpose::DeleteGroup("old".into()), &Purpose::DeleteAddress("10.0.0.1".parse().expect("ip"))]);
        pinned.groups.insert("old".into());
        let ops = plan("/B", &diff, &known, &BTreeSet::new(), &BTreeSet::new(), &pinned);
        assert!(ops.iter().all(|o| o.purpose != Purpose::DeleteGroup("old".into())));
        assert!(ops.iter().any(|o| o.element == "<entry name=\"bhfw-old\"><static><member>bhfw-empty-group</member></static></entry>"), "{ops:?}");
    }
}
