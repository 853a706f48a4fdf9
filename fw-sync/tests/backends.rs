//! The ipset and nftables backends against the real kernel, each test in its own network
//! namespace (so its sets and tables are its own and vanish with it, even on panic).

mod common;


use common::{Netns, converge, ips, require_root, unique_id};
use fw_sync::backend::{Backend, Runner, ipset::IpsetBackend, nftables::NftBackend};
use fw_sync::diff::Diff;
use fw_sync::group::{FirewallState, ObjectRef, TargetKind};

#[test]
fn ipset_backend_converges_and_touches_only_owned_sets() {
    require_root();
    let ns = Netns::new(format!("fwt-{}-ipset", unique_id()));
    // Sets fw-sync does not own, one with a confusingly similar name.
    ns.exec(&["ipset", "create", "admin-allow", "hash:ip"]);
    ns.exec(&["ipset", "add", "admin-allow", "192.0.2.1"]);
    ns.exec(&["ipset", "create", "bhfwx", "hash:ip"]);
    // A temporary left behind by a crash in the middle of a swap.
    ns.exec(&["ipset", "create", "bhfwtmp-web", "hash:ip", "family", "inet", "maxelem", "1048576"]);
    let foreign_before = ns.exec(&["ipset", "save", "admin-allow"]);

    let mut b = IpsetBackend::new(Runner::new("lab", Some(ns.name.clone())));
    let o = |n: &str| ObjectRef { kind: TargetKind::Ipset, name: n.into() };
    let mut desired: FirewallState = [(o("web"), ips(&["10.1.0.1", "10.1.0.2"])), (o("db"), ips(&["10.1.0.5"]))].into();
    converge(&mut b, &desired);
    assert!(ns.try_exec(&["ipset", "test", "bhfw-web", "10.1.0.2"]));

    // 10.1.0.5 moves from db to web (an address reused by another pod), in one restore.
    let calls = b.calls();
    desired = [(o("web"), ips(&["10.1.0.1", "10.1.0.2", "10.1.0.5"])), (o("db"), ips(&[]))].into();
    let d = converge(&mut b, &desired);
    assert_eq!(d.moves(), ips(&["10.1.0.5"]));
    assert_eq!(b.calls() - calls, 3, "read + one restore + read");

    // Drift by hand: a member added, a set destroyed. Repaired; nothing else touched.
    ns.exec(&["ipset", "add", "bhfw-web", "10.6.6.6"]);
    ns.exec(&["ipset", "destroy", "bhfw-db"]);
    converge(&mut b, &desired);

    // A group no longer targets `db`: its set goes; one still used by a rule is emptied.
    ns.exec(&["iptables", "-A", "FORWARD", "-m", "set", "--match-set", "bhfw-web", "src", "-j", "ACCEPT"]);
    desired = [(o("db"), ips(&["10.1.0.9"]))].into();
    let actual = b.read_owned_state().expect("read");
    b.apply(&Diff::compute(&desired, &actual)).expect("apply with an in-use orphan");
    let after = b.read_owned_state().expect("read");
    assert_eq!(after.get(&o("web")), Some(&ips(&[])), "in-use orphan emptied, not destroyed: {after:?}");

    assert_eq!(ns.exec(&["ipset", "save", "admin-allow"]), foreign_before, "foreign set untouched");
    assert!(ns.try_exec(&["ipset", "list", "-n", "bhfwx"]), "bhfwx is not owned and must stay");
    assert!(!ns.try_exec(&["ipset", "list", "-n", "bhfwtmp-web"]), "no temporary set left");
}

#[test]
fn nftables_backend_converges_in_one_batch_and_touches_only_owned_sets() {
    require_root();
    let ns = Netns::new(format!("fwt-{}-nft", unique_id()));
    let table = format!("t{}", unique_id());
    // The admin's own chain and set live in the table fw-sync writes its sets to.
    ns.exec(&["nft", "add", "table", "inet", &table]);
    ns.exec(&["nft", "add", "set", "inet", &table, "allowed", "{ type ipv4_addr; }"]);
    ns.exec(&["nft", "add", "element", "inet", &table, "allowed", "{ 192.0.2.1 }"]);
    ns.exec(&["nft", "add", "chain", "inet", &table, "admin_forward", "{ type filter hook forward priority 0; policy accept; }"]);
    // Another table with an owned-looking name is not fw-sync's table: never read.
    ns.exec(&["nft", "add", "table", "inet", "other"]);
    ns.exec(&["nft", "add", "set", "inet", "other", "bhfw-web", "{ type ipv4_addr; }"]);

    let mut b = NftBackend::new(Runner::new("lab", Some(ns.name.clone())), "inet", &table);
    let o = |n: &str| ObjectRef { kind: TargetKind::NftablesSet, name: n.into() };
    let mut desired: FirewallState = [(o("web"), ips(&["10.1.0.1", "10.1.0.2"])), (o("db"), ips(&["10.1.0.5"]))].into();
    converge(&mut b, &desired);

    let calls = b.calls();
    desired = [(o("web"), ips(&["10.1.0.1", "10.1.0.5"])), (o("db"), ips(&[]))].into();
    converge(&mut b, &desired);
    assert_eq!(b.calls() - calls, 3, "read + one nft batch + read");

    // Drift by hand, then repair.
    ns.exec(&["nft", "add", "element", "inet", &table, "bhfw-web", "{ 10.6.6.6 }"]);
    ns.exec(&["nft", "delete", "set", "inet", &table, "bhfw-db"]);
    converge(&mut b, &desired);

    // Orphans: `db` is deleted; `web`, used by a rule, is emptied.
    ns.exec(&["nft", "add", "rule", "inet", &table, "admin_forward", "ip", "saddr", "@bhfw-web", "accept"]);
    desired = FirewallState::new();
    let actual = b.read_owned_state().expect("read");
    b.apply(&Diff::compute(&desired, &actual)).expect("apply with an in-use orphan");
    let after = b.read_owned_state().expect("read");
    assert_eq!(after, [(o("web"), ips(&[]))].into(), "in-use orphan emptied, db deleted");

    let listing = ns.exec(&["nft", "list", "table", "inet", &table]);
    assert!(listing.contains("192.0.2.1") && listing.contains("chain admin_forward"), "admin's set and chain untouched:\n{listing}");
    assert!(ns.try_exec(&["nft", "list", "set", "inet", "other", "bhfw-web"]), "other table untouched");
}

#[test]
fn nftables_reads_a_missing_table_as_empty() {
    require_root();
    let ns = Netns::new(format!("fwt-{}-nfe", unique_id()));
    let mut b = NftBackend::new(Runner::new("lab", Some(ns.name.clone())), "inet", "absent");
    assert!(b.read_owned_state().expect("missing table reads as empty").is_empty());
}

#[test]
fn ipset_backend_keeps_ipv6_members_in_the_v6_set() {
    require_root();
    let ns = Netns::new(format!("fwt-{}-ipset6", unique_id()));
    // An object made before fw-sync knew IPv6: its IPv4 set only.
    ns.exec(&["ipset", "create", "bhfw-old", "hash:ip", "family", "inet", "maxelem", "1048576"]);
    ns.exec(&["ipset", "add", "bhfw-old", "10.3.0.9"]);
    let mut b = IpsetBackend::new(Runner::new("lab", Some(ns.name.clone())));
    let o = |n: &str| ObjectRef { kind: TargetKind::Ipset, name: n.into() };
    assert_eq!(b.read_owned_state().expect("read")[&o("old")], ips(&["10.3.0.9"]), "a lone IPv4 set reads as its target");

    let mut desired: FirewallState = [(o("web"), ips(&["10.3.0.1", "fd00:3::1", "fd00:3::2"])), (o("db"), ips(&["10.3.0.5"])), (o("old"), ips(&["10.3.0.9", "fd00:3::9"]))].into();
    converge(&mut b, &desired);
    assert!(ns.exec(&["ipset", "list", "-t", "bhfw-web-v6"]).contains("family inet6"));
    assert!(ns.try_exec(&["ipset", "test", "bhfw-web-v6", "fd00:3::2"]) && ns.try_exec(&["ipset", "test", "bhfw-web", "10.3.0.1"]));
    assert!(ns.try_exec(&["ipset", "list", "-n", "bhfw-db-v6"]), "an IPv4-only target has its (empty) IPv6 set, ready for rules");
    assert!(ns.try_exec(&["ipset", "test", "bhfw-old-v6", "fd00:3::9"]), "the missing half was created at the target's change");

    // An IPv6 address moves from web to db, with a rule on the v6 set meanwhile, in one restore.
    ns.exec(&["ip6tables", "-A", "FORWARD", "-m", "set", "--match-set", "bhfw-web-v6", "src", "-j", "ACCEPT"]);
    let calls = b.calls();
    desired = [(o("web"), ips(&["10.3.0.1", "fd00:3::1"])), (o("db"), ips(&["10.3.0.5", "fd00:3::2"]))].into();
    let d = converge(&mut b, &desired);
    assert_eq!(d.moves(), ips(&["fd00:3::2"]));
    assert_eq!(b.calls() - calls, 3 + 2, "read + one restore + destroy of both halves of `old` + read");
    assert!(!ns.try_exec(&["ipset", "test", "bhfw-web-v6", "fd00:3::2"]) && ns.try_exec(&["ipset", "test", "bhfw-db-v6", "fd00:3::2"]));
    assert!(!ns.try_exec(&["ipset", "list", "-n", "bhfw-old-v6"]) && !ns.try_exec(&["ipset", "list", "-n", "bhfw-old"]), "a deleted target loses both sets");

    // Everything goes; the v6 set a rule uses is emptied instead (and still reads as `web`).
    let actual = b.read_owned_state().expect("read");
    b.apply(&Diff::compute(&FirewallState::new(), &actual)).expect("apply with an in-use set");
    assert_eq!(b.read_owned_state().expect("read"), [(o("web"), ips(&[]))].into());
    let left = ns.exec(&["ipset", "list", "-n"]);
    assert_eq!(left.split_whitespace().collect::<Vec<_>>(), ["bhfw-web-v6"], "only the in-use set is left, and no temporary: {left}");
    assert!(!ns.try_exec(&["ipset", "test", "bhfw-web-v6", "fd00:3::1"]), "emptied");
}

#[test]
fn nftables_backend_keeps_ipv6_members_in_an_ipv6_addr_set() {
    require_root();
    let ns = Netns::new(format!("fwt-{}-nft6", unique_id()));
    let table = format!("t{}", unique_id());
    let mut b = NftBackend::new(Runner::new("lab", Some(ns.name.clone())), "inet", &table);
    let o = |n: &str| ObjectRef { kind: TargetKind::NftablesSet, name: n.into() };
    let mut desired: FirewallState = [(o("web"), ips(&["10.4.0.1", "fd00:4::1", "fd00:4::2"])), (o("db"), ips(&["10.4.0.5"]))].into();
    converge(&mut b, &desired);
    let listing = ns.exec(&["nft", "list", "set", "inet", &table, "bhfw-web-v6"]);
    assert!(listing.contains("type ipv6_addr") && listing.contains("fd00:4::2"), "{listing}");
    assert!(ns.exec(&["nft", "list", "set", "inet", &table, "bhfw-db-v6"]).contains("type ipv6_addr"), "an IPv4-only target has its IPv6 set");

    // A rule matches the IPv6 set; a move between targets is one transaction.
    ns.exec(&["nft", "add", "chain", "inet", &table, "admin_forward", "{ type filter hook forward priority 0; policy accept; }"]);
    ns.exec(&["nft", "add", "rule", "inet", &table, "admin_forward", "ip6", "saddr", "@bhfw-web-v6", "accept"]);
    let calls = b.calls();
    desired = [(o("web"), ips(&["10.4.0.1", "fd00:4::1"])), (o("db"), ips(&["10.4.0.5", "fd00:4::2"]))].into();
    let d = converge(&mut b, &desired);
    assert_eq!(d.moves(), ips(&["fd00:4::2"]));
    assert_eq!(b.calls() - calls, 3, "read + one nft batch + read");

    // A half deleted by hand is back at the target's next change.
    ns.exec(&["nft", "delete", "set", "inet", &table, "bhfw-db-v6"]);
    desired = [(o("web"), ips(&["10.4.0.1", "fd00:4::1"])), (o("db"), ips(&["10.4.0.5", "fd00:4::7"]))].into();
    converge(&mut b, &desired);
    assert!(ns.exec(&["nft", "list", "set", "inet", &table, "bhfw-db-v6"]).contains("fd00:4::7"));

    converge(&mut b, &[(o("web"), ips(&[]))].into());
    let after = ns.exec(&["nft", "list", "table", "inet", &table]);
    assert!(!after.contains("bhfw-db"), "both halves of db deleted:\n{after}");
    assert!(after.contains("set bhfw-web-v6") && !after.contains("fd00:4::1"), "the used v6 set stays, emptied:\n{after}");
}
