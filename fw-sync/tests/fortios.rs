//! The FortiOS backend against the in-process FortiOS emulator (unprivileged): converge,
//! removal-first moves, foreign objects, drift, VDOM isolation, credentials, faults, call
//! counts, and a run through the engine.

mod common;

use common::{converge, ips, reconcile_until};

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use bulkhead_fw_emulator::FaultConfig;
use bulkhead_fw_emulator::fortios::{FortiosEmulator, FortiosOptions};
use fw_sync::backend::Backend;
use fw_sync::backend::fortios::FortiosBackend;
use fw_sync::backend::http::TlsOptions;
use fw_sync::config::FortiosConfig;
use fw_sync::diff::Diff;
use fw_sync::group::{FirewallState, ObjectRef, TargetKind};
use fw_sync::secret::Secret;

const TOKEN: &str = "s3cr3t-fortios-token-0123456789";

fn range(base: u32, n: u32) -> BTreeSet<IpAddr> {
    (0..n).map(|i| IpAddr::V4(Ipv4Addr::from(base + i))).collect()
}

fn o(name: &str) -> ObjectRef {
    ObjectRef { kind: TargetKind::FortiosAddrgrp, name: name.into() }
}

fn emulator(vdoms: &[&str]) -> FortiosEmulator {
    FortiosEmulator::start(FortiosOptions { token: TOKEN.into(), vdoms: vdoms.iter().map(|v| v.to_string()).collect(), seed: 42, ..FortiosOptions::default() })
        .expect("start the FortiOS emulator")
}

fn backend_with(emu: &FortiosEmulator, vdom: &str, token: &str) -> FortiosBackend {
    let config = FortiosConfig { url: emu.url(), token: Secret::literal(token), vdom: vdom.into() };
    FortiosBackend::new("fg", config, &TlsOptions { ca_file: Some(emu.ca_file().to_path_buf()), insecure_skip_verify: false }).expect("backend")
}

fn backend(emu: &FortiosEmulator, vdom: &str) -> FortiosBackend {
    backend_with(emu, vdom, TOKEN)
}

/// The emulator's own view must match too (not just what the backend reads back).
fn assert_on_device(emu: &FortiosEmulator, vdom: &str, desired: &FirewallState) {
    for (obj, want) in desired {
        let mut got = emu.group_members(vdom, &format!("bhfw-{}", obj.name)).unwrap_or_else(|| panic!("group {obj} missing on the device"));
        // An empty group holds the placeholder address 255.255.255.255 (FortiOS refuses empty groups).
        if want.is_empty() {
            assert!(got.remove(&IpAddr::V4(Ipv4Addr::BROADCAST)), "empty group {obj} holds the placeholder");
        }
        assert_eq!(&got, want, "group {obj} on the device");
    }
}

#[test]
fn converges_and_costs_one_request_per_object() {
    let emu = emulator(&["root"]);
    let mut b = backend(&emu, "root");
    let mut desired: FirewallState = [(o("web"), ips(&["10.1.0.1", "10.1.0.2"])), (o("db"), ips(&["10.1.0.5"]))].into();
    let calls = b.calls();
    converge(&mut b, &desired);
    // A read is 4 GETs (address, address6, addrgrp, addrgrp6): read + 3 address POSTs + 2
    // group POSTs + read. An IPv4-only target makes no IPv6 object.
    assert_eq!(b.calls() - calls, 4 + 3 + 2 + 4);
    assert_eq!(emu.names6("root"), (vec![], vec![]));
    assert_on_device(&emu, "root", &desired);
    let addr = emu.object("root", "bhfw-10.1.0.1").expect("address object");
    assert_eq!((addr["type"].as_str(), addr["subnet"].as_str()), (Some("ipmask"), Some("10.1.0.1 255.255.255.255")));

    // A 1-pod event without a read: one POST of the address, one PUT of the group.
    desired.get_mut(&o("web")).expect("web").insert("10.1.0.3".parse().expect("ip"));
    let known = b.read_owned_state().expect("read");
    let calls = b.calls();
    b.apply(&Diff::compute(&desired, &known)).expect("apply one pod");
    assert_eq!(b.calls() - calls, 2, "1-pod add");
    // A pod gone: one PUT of the group, one DELETE of its address.
    desired.get_mut(&o("web")).expect("web").remove(&"10.1.0.1".parse().expect("ip"));
    let calls = b.calls();
    let known = b.read_owned_state().expect("read");
    b.apply(&Diff::compute(&desired, &known)).expect("apply pod gone");
    assert_eq!(b.calls() - calls, 4 + 2, "read (4 GETs) + PUT group + DELETE address");
    assert!(emu.object("root", "bhfw-10.1.0.1").is_none(), "unused address object deleted");

    // Emptied group keeps existing with the placeholder; a deleted group goes with its addresses.
    desired = [(o("web"), ips(&[]))].into();
    converge(&mut b, &desired);
    assert_eq!(emu.group_member_names("root", "bhfw-web"), Some(vec!["bhfw-~none".to_string()]));
    assert!(emu.object("root", "bhfw-db").is_none() && emu.object("root", "bhfw-10.1.0.5").is_none());
    converge(&mut b, &FirewallState::new());
    let (addrs, groups) = emu.names("root");
    assert!(addrs.is_empty() && groups.is_empty(), "everything owned is gone: {addrs:?} {groups:?}");
}

#[test]
fn an_address_moving_between_groups_is_never_in_both() {
    let emu = emulator(&["root"]);
    let mut b = backend(&emu, "root");
    let mut desired: FirewallState = [(o("a"), ips(&["10.2.0.1", "10.2.0.5"])), (o("b"), ips(&["10.2.0.2"]))].into();
    converge(&mut b, &desired);
    emu.record_history(true);
    let log_start = emu.request_log().len();
    // 10.2.0.5 moves from a to b; a also gains 10.2.0.9 and b loses 10.2.0.2 (a swap-like mix).
    desired = [(o("a"), ips(&["10.2.0.1", "10.2.0.9"])), (o("b"), ips(&["10.2.0.5"]))].into();
    let calls = b.calls();
    let d = converge(&mut b, &desired);
    assert_eq!(d.moves(), ips(&["10.2.0.5"]));
    let history = emu.history();
    assert!(!history.is_empty());
    let moved: IpAddr = "10.2.0.5".parse().expect("ip");
    for (i, (_, groups)) in history.iter().enumerate() {
        let holders: Vec<_> = groups.iter().filter(|(_, m)| m.contains(&moved)).map(|(g, _)| g.clone()).collect();
        assert!(holders.len() <= 1, "after change {i}, {moved} is in {holders:?}");
    }
    // Both groups end as desired, and 10.2.0.5's address object was reused, not recreated.
    assert_on_device(&emu, "root", &desired);
    let posts: Vec<_> = emu.request_log().into_iter().skip(log_start).filter(|r| r.method == "POST").map(|r| r.path).collect();
    assert_eq!(posts, ["/api/v2/cmdb/firewall/address"], "only 10.2.0.9 is new");
    // 4 GETs + POST 10.2.0.9 + PUT a (-.5) + PUT b (+.5 -.2) + PUT a (+.9) + DELETE 10.2.0.2 + 4 GETs.
    assert_eq!(b.calls() - calls, 4 + 5 + 4);
}

#[test]
fn foreign_objects_are_untouched_and_in_use_objects_are_kept() {
    let emu = emulator(&["root"]);
    emu.put_address("root", "admin-host", "192.0.2.1/32", "the admin's").expect("foreign address");
    emu.put_address("root", "xbhfw-10.3.0.1", "10.3.0.1/32", "look-alike").expect("look-alike");
    emu.put_group("root", "admins", &["admin-host"]).expect("foreign group");
    let foreign_before = (emu.object("root", "admin-host"), emu.object("root", "admins"), emu.object("root", "xbhfw-10.3.0.1"));
    let mut b = backend(&emu, "root");
    let mut desired: FirewallState = [(o("web"), ips(&["10.3.0.1", "10.3.0.2"])), (o("db"), ips(&["10.3.0.3"]))].into();
    converge(&mut b, &desired);

    // The admin puts one of fw-sync's addresses in their own group, and uses bhfw-db in a policy.
    emu.put_group("root", "admins", &["admin-host", "bhfw-10.3.0.2"]).expect("foreign group using an owned address");
    emu.add_policy("root", 7, &["bhfw-db"]).expect("policy");
    desired = [(o("web"), ips(&["10.3.0.1"]))].into();
    let actual = b.read_owned_state().expect("read");
    b.apply(&Diff::compute(&desired, &actual)).expect("apply with in-use objects");
    assert!(emu.object("root", "bhfw-10.3.0.2").is_some(), "address a foreign group uses is kept");
    assert_eq!(emu.group_member_names("root", "bhfw-db"), Some(vec!["bhfw-~none".into()]), "group a policy uses is emptied, not deleted");
    assert!(emu.object("root", "bhfw-10.3.0.3").is_none());
    let after = b.read_owned_state().expect("read");
    assert_eq!(after, [(o("web"), ips(&["10.3.0.1"])), (o("db"), ips(&[]))].into());

    emu.put_group("root", "admins", &["admin-host"]).expect("admin restores their group");
    assert_eq!((emu.object("root", "admin-host"), emu.object("root", "admins"), emu.object("root", "xbhfw-10.3.0.1")), foreign_before, "foreign objects untouched");
    // Once the foreign reference is gone, the next apply cleans the orphan up.
    emu.remove_policy("root", 7);
    converge(&mut b, &desired);
    assert!(emu.object("root", "bhfw-10.3.0.2").is_none() && emu.object("root", "bhfw-db").is_none());
}

#[test]
fn drift_by_hand_is_repaired() {
    let emu = emulator(&["root"]);
    let mut b = backend(&emu, "root");
    let desired: FirewallState = [(o("web"), ips(&["10.4.0.1", "10.4.0.2"])), (o("db"), ips(&["10.4.0.3"]))].into();
    converge(&mut b, &desired);
    // An extra owned address added to a group, a member's subnet edited, a group deleted.
    emu.put_address("root", "bhfw-10.6.6.6", "10.6.6.6/32", "").expect("hand-made address");
    emu.put_group("root", "bhfw-web", &["bhfw-10.4.0.1", "bhfw-10.4.0.2", "bhfw-10.6.6.6"]).expect("hand edit");
    emu.put_address("root", "bhfw-10.4.0.2", "10.9.9.9/32", "").expect("subnet edited");
    emu.delete_object("root", "bhfw-db").expect("group deleted by hand");
    let seen = b.read_owned_state().expect("read drifted");
    assert_eq!(seen.get(&o("web")), Some(&ips(&["10.4.0.1", "10.9.9.9", "10.6.6.6"])), "the backend reads what the firewall enforces");
    converge(&mut b, &desired);
    assert_on_device(&emu, "root", &desired);
    assert!(emu.object("root", "bhfw-10.6.6.6").is_none(), "hand-made owned address no longer used: deleted");
}

#[test]
fn a_vdom_is_isolated_from_the_others() {
    let emu = emulator(&["root", "dmz"]);
    let mut root = backend(&emu, "root");
    converge(&mut root, &[(o("web"), ips(&["10.5.0.1"]))].into());
    let root_before = emu.names("root");
    let mut dmz = backend(&emu, "dmz");
    assert!(dmz.read_owned_state().expect("read dmz").is_empty(), "root's objects are not dmz's");
    let desired: FirewallState = [(o("web"), ips(&["10.5.0.2"])), (o("db"), ips(&["10.5.0.1"]))].into();
    converge(&mut dmz, &desired);
    assert_on_device(&emu, "dmz", &desired);
    converge(&mut dmz, &FirewallState::new());
    assert_eq!(emu.names("root"), root_before, "nothing in root touched");
    assert_eq!(emu.group_members("root", "bhfw-web"), Some(ips(&["10.5.0.1"])));
    assert!(emu.request_log().iter().all(|r| r.query.get("vdom").is_some_and(|v| v == "root" || v == "dmz")), "every request names its VDOM");

    let mut missing = backend(&emu, "nope");
    let e = missing.read_owned_state().expect_err("unknown VDOM").to_string();
    assert!(e.contains("fg") && e.contains("vdom=nope") && e.contains("HTTP 403"), "{e}");
}

#[test]
fn a_wrong_token_is_a_clear_error_without_the_token() {
    let emu = emulator(&["root"]);
    let wrong = "wrong-token-do-not-print-me";
    let mut b = backend_with(&emu, "root", wrong);
    let e = b.read_owned_state().expect_err("wrong token").to_string();
    assert!(e.contains("firewall fg") && e.contains("GET /api/v2/cmdb/firewall/address") && e.contains("401") && e.contains("token was refused"), "{e}");
    assert!(!e.contains(wrong) && !e.contains(TOKEN), "{e}");
    let e = b.apply(&Diff::compute(&[(o("web"), ips(&["10.7.0.1"]))].into(), &FirewallState::new())).expect_err("apply refused").to_string();
    assert!(!e.contains(wrong), "{e}");
    assert!(emu.names("root").0.is_empty(), "nothing created");
    assert!(emu.request_log().iter().all(|r| r.status == 401 && !r.query.values().any(|v| v.contains(wrong))), "token only in the header");
}

#[test]
fn faults_are_retried_and_reconciles_converge_without_lost_updates() {
    let emu = emulator(&["root"]);
    emu.faults().set(FaultConfig { latency: std::time::Duration::ZERO, error_rate: 0.15, reset_rate: 0.15 });
    let mut b = backend(&emu, "root");
    // Ten successive desired states (pods coming, going, moving); each is reconciled until
    // it holds, and the device must then show exactly it.
    for round in 0..10u32 {
        let web = range(0x0a08_0000 + round * 3, 12);
        let db = range(0x0a08_0000 + round * 3 + 12, 5);
        let desired: FirewallState = [(o("web"), web), (o("db"), db), (o(&format!("g{}", round % 3)), range(0x0a09_0000 + round, 2))].into();
        reconcile_until(&mut b, &desired, 20);
        assert_on_device(&emu, "root", &desired);
    }
    let (errors, resets) = emu.faults().injected();
    assert!(errors > 10 && resets > 10, "faults were injected: {errors} 5xx, {resets} resets");
    emu.faults().set(FaultConfig::default());
    // No orphans left once the faults stop.
    let state = b.read_owned_state().expect("read");
    converge(&mut b, &state);
    let (addrs, _) = emu.names("root");
    let used: usize = state.values().flatten().collect::<BTreeSet<_>>().len();
    assert_eq!(addrs.len(), used, "one address object per IP in use: {addrs:?}");
}

#[test]
fn a_thousand_new_ips_in_one_group_and_large_groups_in_chunks() {
    let emu = emulator(&["root"]);
    let mut b = backend(&emu, "root");
    let ips1000 = range(0x0a10_0000, 1000);
    let desired: FirewallState = [(o("big"), ips1000.clone())].into();
    let actual = b.read_owned_state().expect("read");
    let calls = b.calls();
    b.apply(&Diff::compute(&desired, &actual)).expect("apply 1,000 IPs");
    let apply_calls = b.calls() - calls;
    println!("apply of 1,000 new IPs into one group: {apply_calls} requests");
    // 1,000 address POSTs, one chunk group, the group: FortiOS caps a group at 600 members.
    assert_eq!(apply_calls, 1002);
    assert_eq!(emu.group_members("root", "bhfw-big"), Some(ips1000.clone()));
    assert!(emu.group_member_names("root", "bhfw-big").expect("group").len() <= 600);
    assert_eq!(b.read_owned_state().expect("read"), desired);

    // One pod more and one pod less: each touches one container.
    let mut desired2 = desired.clone();
    let set = desired2.get_mut(&o("big")).expect("big");
    set.insert("10.17.0.1".parse().expect("ip"));
    set.remove(&IpAddr::V4(Ipv4Addr::from(0x0a10_0000u32)));
    let calls = b.calls();
    b.apply(&Diff::compute(&desired2, &desired)).expect("apply one in, one out");
    assert_eq!(b.calls() - calls, 3, "POST address + PUT one container + DELETE address");
    assert_eq!(emu.group_members("root", "bhfw-big").as_ref(), desired2.get(&o("big")));
}

#[test]
fn chunks_grow_shrink_and_disappear_with_a_small_member_limit() {
    let emu = FortiosEmulator::start(FortiosOptions { token: TOKEN.into(), max_members: 4, ..FortiosOptions::default() }).expect("emulator");
    let mut b = backend(&emu, "root").with_max_members(4);
    for n in [3u32, 13, 7, 16, 2, 0, 9] {
        let desired: FirewallState = [(o("web"), range(0x0a20_0000, n)), (o("db"), range(0x0a20_0000 + 100, n / 2))].into();
        converge(&mut b, &desired);
        assert_on_device(&emu, "root", &desired);
        let (_, groups) = emu.names("root");
        let chunks = groups.iter().filter(|g| g.starts_with("bhfw-~")).count();
        let most = if n <= 4 { 0 } else { (n as usize).div_ceil(3) };
        assert!(chunks <= most, "{n} IPs: no leftover chunks: {groups:?}");
    }
    let desired: FirewallState = [(o("web"), range(0x0a20_0000, 17))].into();
    let actual = b.read_owned_state().expect("read");
    let e = b.apply(&Diff::compute(&desired, &actual)).expect_err("17 > 4 x 4").to_string();
    assert!(e.contains("fortios-addrgrp web") && e.contains("do not fit"), "{e}");
}

#[test]
fn the_engine_drives_the_backend() {
    use fw_sync::config::DaemonConfig;
    use fw_sync::engine::{Engine, Mode};

    let emu = emulator(&["root"]);
    let dir = std::env::temp_dir().join(format!("fwsync-fortios-engine-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("ds")).expect("temp dir");
    let _cleanup = Cleanup(dir.clone());
    std::fs::write(dir.join("token"), TOKEN).expect("token file");
    let cfg = format!(
        "firewalls:\n- name: fg\n  type: fortios\n  fortios: {{url: '{}', vdom: root, token: {{file: token}}}}\n  tls: {{caFile: '{}'}}\ndatastore: ds\n",
        emu.url(),
        emu.ca_file().display()
    );
    let config = DaemonConfig::parse("c.yaml", &cfg, &dir).expect("config");
    let write = |pods: &[(&str, &str, &str)]| {
        let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {name: web}\nspec:\n  podSelector: app == 'web'\n  targets:\n  - {firewall: fg, kind: fortios-addrgrp, name: web}\n");
        for (name, app, ip) in pods {
            y += &format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\nstatus: {{podIP: {ip}}}\n");
        }
        std::fs::write(dir.join("ds/all.yaml"), y).expect("datastore");
        fw_sync::source::load(&dir.join("ds")).expect("snapshot")
    };
    let b = FortiosBackend::new("fg", match &config.firewalls[0].kind {
        fw_sync::config::FirewallKind::Fortios(c) => c.clone(),
        other => panic!("not fortios: {other:?}"),
    }, &config.firewalls[0].tls)
    .expect("backend");
    let mut e = Engine::new(config, vec![Box::new(b)]);
    let r = e.sync(&write(&[("a", "web", "10.30.0.1"), ("b", "db", "10.30.0.2")]), Mode::Reconcile).expect("first sync");
    assert!(r[0].error.is_none(), "{r:?}");
    assert_eq!(emu.group_members("root", "bhfw-web"), Some(ips(&["10.30.0.1"])));
    let r = e.sync(&write(&[("a", "web", "10.30.0.1"), ("c", "web", "10.30.0.3")]), Mode::Event).expect("event");
    assert_eq!(r[0].calls, 2, "a 1-pod event: POST address + PUT group: {r:?}");
    emu.put_group("root", "bhfw-web", &["bhfw-10.30.0.1"]).expect("drift");
    let r = e.sync(&write(&[("a", "web", "10.30.0.1"), ("c", "web", "10.30.0.3")]), Mode::Reconcile).expect("reconcile");
    assert!(r[0].drift && r[0].error.is_none(), "{r:?}");
    assert_eq!(emu.group_members("root", "bhfw-web"), Some(ips(&["10.30.0.1", "10.30.0.3"])));
}

struct Cleanup(std::path::PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn ipv6_members_go_to_address6_objects_in_an_addrgrp6() {
    let emu = emulator(&["root"]);
    let mut b = backend(&emu, "root");
    let v4_of = |s: &BTreeSet<IpAddr>| s.iter().filter(|ip| ip.is_ipv4()).copied().collect::<BTreeSet<_>>();
    let v6_of = |s: &BTreeSet<IpAddr>| s.iter().filter(|ip| ip.is_ipv6()).copied().collect::<BTreeSet<_>>();
    let mut desired: FirewallState = [(o("web"), ips(&["10.7.0.1", "fd00:7::1", "fd00:7::2"])), (o("db"), ips(&["fd00:7::5"]))].into();
    converge(&mut b, &desired);
    assert_eq!(emu.group_members("root", "bhfw-web"), Some(v4_of(&desired[&o("web")])));
    assert_eq!(emu.group_members("root", "bhfw-web-v6"), Some(v6_of(&desired[&o("web")])));
    assert_eq!(emu.group_members("root", "bhfw-db-v6"), Some(ips(&["fd00:7::5"])));
    // The IPv4 group of an IPv6-only target holds the placeholder.
    assert_eq!(emu.group_member_names("root", "bhfw-db"), Some(vec!["bhfw-~none".to_string()]));
    let addr = emu.object("root", "bhfw-fd00-7--1").expect("address6 object");
    assert_eq!((addr["type"].as_str(), addr["ip6"].as_str()), (Some("ipprefix"), Some("fd00:7::1/128")));
    assert!(emu.names("root").0.iter().all(|n| !n.contains("fd00")), "no IPv6 address in the IPv4 table");

    // fd00:7::5 moves from db to web, never in both addrgrp6 groups at once.
    emu.record_history(true);
    desired = [(o("web"), ips(&["10.7.0.1", "fd00:7::1", "fd00:7::5"])), (o("db"), ips(&[]))].into();
    let d = converge(&mut b, &desired);
    assert_eq!(d.moves(), ips(&["fd00:7::5"]));
    let moved: IpAddr = "fd00:7::5".parse().expect("ip");
    for (i, (_, groups)) in emu.history().iter().enumerate() {
        let holders: Vec<_> = groups.iter().filter(|(_, m)| m.contains(&moved)).map(|(g, _)| g.clone()).collect();
        assert!(holders.len() <= 1, "after change {i}, {moved} is in {holders:?}");
    }
    // The emptied addrgrp6 stays, holding the IPv6 placeholder; the unused address6 went.
    assert_eq!(emu.group_member_names("root", "bhfw-db-v6"), Some(vec!["bhfw-~none6".to_string()]));
    assert!(emu.object("root", "bhfw-fd00-7--2").is_none(), "unused address6 deleted");

    // Drift in the addrgrp6 by hand is repaired.
    emu.put_address6("root", "admin6", "fd00:7::99/128", "").expect("admin address6");
    emu.put_group6("root", "bhfw-web-v6", &["admin6"]).expect("drift");
    converge(&mut b, &desired);
    assert_eq!(emu.group_members("root", "bhfw-web-v6"), Some(ips(&["fd00:7::1", "fd00:7::5"])));

    // Everything owned goes, in both families' tables; the admin's address6 stays.
    converge(&mut b, &FirewallState::new());
    assert_eq!(emu.names6("root"), (vec!["admin6".to_string()], vec![]));
    assert_eq!(emu.names("root"), (vec![], vec![]));
}
