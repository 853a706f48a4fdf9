//! FortiOS threat-feed targets (`fortios-threat-feed`) against the in-process FortiOS
//! emulator: converge, removal-first moves (between feeds and between kinds), foreign feeds,
//! drift, request counts, faults, restarts, FortiOS versions without the push API, and a run
//! through the engine.

mod common;

use common::{ips, reconcile_until};

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

const TOKEN: &str = "s3cr3t-fortios-feed-token-0123";

fn range(base: u32, n: u32) -> BTreeSet<IpAddr> {
    (0..n).map(|i| IpAddr::V4(Ipv4Addr::from(base + i))).collect()
}

fn f(name: &str) -> ObjectRef {
    ObjectRef { kind: TargetKind::FortiosThreatFeed, name: name.into() }
}

fn g(name: &str) -> ObjectRef {
    ObjectRef { kind: TargetKind::FortiosAddrgrp, name: name.into() }
}

fn emulator_of(version: &str) -> FortiosEmulator {
    FortiosEmulator::start(FortiosOptions { token: TOKEN.into(), seed: 7, version: version.into(), ..FortiosOptions::default() }).expect("start the FortiOS emulator")
}

/// A FortiGate with the push API.
fn emulator() -> FortiosEmulator {
    emulator_of("v7.2.5")
}

fn backend(emu: &FortiosEmulator) -> FortiosBackend {
    let config = FortiosConfig { url: emu.url(), token: Secret::literal(TOKEN), vdom: "root".into() };
    FortiosBackend::new("fg", config, &TlsOptions { ca_file: Some(emu.ca_file().to_path_buf()), insecure_skip_verify: false }).expect("backend")
}

/// Read, diff, apply, read again: must equal desired. Returns the requests the apply made.
fn converge(b: &mut dyn Backend, desired: &FirewallState) -> u64 {
    // The read before the apply and the one after are not the apply's requests.
    let actual = b.read_owned_state().expect("read owned state");
    let before = b.calls();
    b.apply(&Diff::compute(desired, &actual)).unwrap_or_else(|e| panic!("apply: {e}"));
    let spent = b.calls() - before;
    let after = b.read_owned_state().expect("read after apply");
    assert!(&after == desired, "state after applying differs:\n{}", Diff::compute(desired, &after));
    spent
}

/// The device holds exactly `desired`'s feeds (as single IPs, no other entry).
fn assert_on_device(emu: &FortiosEmulator, desired: &FirewallState) {
    for (obj, want) in desired.iter().filter(|(o, _)| o.kind == TargetKind::FortiosThreatFeed) {
        let name = format!("bhfw-{}", obj.name);
        let got = emu.feed_entries("root", &name).unwrap_or_else(|| panic!("feed {name} missing on the device"));
        assert_eq!(&got, want, "feed {name} on the device");
        assert_eq!(emu.feed_entry_texts("root", &name).len(), want.len(), "feed {name} holds nothing else");
    }
}

/// Applies a diff against the last known state (an event, no read) and returns its cost.
fn event(b: &mut FortiosBackend, known: &FirewallState, desired: &FirewallState) -> u64 {
    let calls = b.calls();
    b.apply(&Diff::compute(desired, known)).unwrap_or_else(|e| panic!("apply event: {e}"));
    b.calls() - calls
}

#[test]
fn feeds_are_created_updated_and_deleted_in_few_requests() {
    let emu = emulator();
    let mut b = backend(&emu);
    let mut desired: FirewallState = [(f("web"), ips(&["10.1.0.1", "10.1.0.2"])), (f("db"), ips(&["10.1.0.5"])), (f("empty"), ips(&[]))].into();
    let calls = b.calls();
    let spent = converge(&mut b, &desired);
    assert_eq!(spent, 3 + 1, "three CMDB POSTs (one per new feed) + one push for both lists");
    // A read: 4 GETs (addresses and groups of both families) + 1 GET of the feeds + one
    // entry-list GET per feed (none before the apply, three after).
    assert_eq!(b.calls() - calls - spent, 5 + (5 + 3));
    assert_on_device(&emu, &desired);
    let obj = emu.object("root", "bhfw-web").expect("external resource");
    assert_eq!((obj["type"].as_str(), obj["update-method"].as_str(), obj["status"].as_str()), (Some("address"), Some("push"), Some("enable")), "{obj}");

    let known = desired.clone();
    desired.get_mut(&f("web")).expect("web").insert("10.1.0.3".parse().expect("ip"));
    let one_in = event(&mut b, &known, &desired);
    let known = desired.clone();
    desired.get_mut(&f("web")).expect("web").remove(&"10.1.0.1".parse().expect("ip"));
    let one_out = event(&mut b, &known, &desired);
    println!("threat feed: a 1-pod event (pod added) costs {one_in} request(s), a pod gone {one_out}");
    assert_eq!((one_in, one_out), (1, 1));
    assert_on_device(&emu, &desired);
    assert_eq!(emu.feed_commands().iter().rev().take(2).map(|c| c.2.as_str()).collect::<Vec<_>>(), ["remove", "add"], "small changes are add/remove, not snapshots");

    // A deleted target: emptied and deleted; one a policy uses stays, empty.
    emu.add_policy("root", 3, &["bhfw-db"]).expect("policy using bhfw-db");
    desired = [(f("web"), ips(&["10.1.0.2", "10.1.0.3"]))].into();
    let actual = b.read_owned_state().expect("read");
    b.apply(&Diff::compute(&desired, &actual)).expect("apply deletes");
    assert!(emu.object("root", "bhfw-empty").is_none(), "deleted feed gone");
    assert_eq!(emu.feed_entries("root", "bhfw-db"), Some(BTreeSet::new()), "feed a policy uses is emptied, not deleted");
    emu.remove_policy("root", 3);
    converge(&mut b, &desired);
    assert_eq!(emu.feed_names("root"), ["bhfw-web"]);
    converge(&mut b, &FirewallState::new());
    assert!(emu.feed_names("root").is_empty());
}

#[test]
fn an_address_moving_between_feeds_or_kinds_is_never_in_two_objects() {
    let emu = emulator();
    let mut b = backend(&emu);
    let mut desired: FirewallState =
        [(f("a"), ips(&["10.2.0.1", "10.2.0.5", "10.2.0.6"])), (f("b"), ips(&["10.2.0.2"])), (g("c"), ips(&["10.2.0.7"]))].into();
    converge(&mut b, &desired);
    emu.record_history(true);
    // 10.2.0.5 moves a -> b, 10.2.0.2 leaves b; 10.2.0.6 moves feed a -> group c and
    // 10.2.0.7 group c -> feed b; a gains 10.2.0.9.
    let known = desired.clone();
    desired = [(f("a"), ips(&["10.2.0.1", "10.2.0.9"])), (f("b"), ips(&["10.2.0.5", "10.2.0.7"])), (g("c"), ips(&["10.2.0.6"]))].into();
    let d = Diff::compute(&desired, &known);
    assert_eq!(d.moves(), ips(&["10.2.0.5", "10.2.0.6", "10.2.0.7"]));
    b.apply(&d).expect("apply the moves");
    assert_eq!(b.read_owned_state().expect("read"), desired);
    let history = emu.history();
    assert!(history.len() >= 4, "every command and write recorded: {history:?}");
    for moved in d.moves() {
        for (i, (_, objects)) in history.iter().enumerate() {
            let holders: Vec<_> = objects.iter().filter(|(_, m)| m.contains(&moved)).map(|(o, _)| o.clone()).collect();
            assert!(holders.len() <= 1, "after step {i}, {moved} is in {holders:?}");
        }
    }
    // Feeds only: a move is one request.
    let known = desired.clone();
    desired = [(f("a"), ips(&["10.2.0.1", "10.2.0.9", "10.2.0.5"])), (f("b"), ips(&["10.2.0.7"])), (g("c"), ips(&["10.2.0.6"]))].into();
    let cost = event(&mut b, &known, &desired);
    println!("threat feed: an IP moving between two feeds costs {cost} request(s)");
    assert_eq!(cost, 1);
    let last: Vec<_> = emu.feed_commands().into_iter().rev().take(2).map(|c| (c.1, c.2)).collect();
    assert_eq!(last, [("bhfw-a".to_string(), "add".to_string()), ("bhfw-b".to_string(), "remove".to_string())], "removal first, in one request");
}

#[test]
fn foreign_feeds_and_objects_are_untouched() {
    let emu = emulator();
    emu.put_feed("root", "threats", "address", "push").expect("foreign push feed");
    emu.push_feed("root", "threats", "snapshot", &["198.51.100.1", "10.3.0.1"]).expect("foreign entries");
    emu.put_feed("root", "xbhfw-web", "address", "push").expect("look-alike");
    emu.put_feed("root", "bhfw-urls", "domain", "feed").expect("owned-looking feed of another type");
    emu.put_address("root", "admin-host", "192.0.2.1/32", "").expect("foreign address");
    let before = (emu.object("root", "threats"), emu.feed_entry_texts("root", "threats"), emu.object("root", "xbhfw-web"), emu.object("root", "bhfw-urls"), emu.object("root", "admin-host"));
    let mut b = backend(&emu);
    assert!(b.read_owned_state().expect("read").is_empty(), "nothing owned yet");
    let desired: FirewallState = [(f("web"), ips(&["10.3.0.1", "10.3.0.2"]))].into();
    converge(&mut b, &desired);
    converge(&mut b, &FirewallState::new());
    let after = (emu.object("root", "threats"), emu.feed_entry_texts("root", "threats"), emu.object("root", "xbhfw-web"), emu.object("root", "bhfw-urls"), emu.object("root", "admin-host"));
    assert_eq!(after, before, "foreign objects untouched");
    // A target whose name is taken by a feed that is not a push address feed: a clear refusal.
    let actual = b.read_owned_state().expect("read");
    let e = b.apply(&Diff::compute(&[(f("urls"), ips(&["10.3.0.9"]))].into(), &actual)).expect_err("misfit").to_string();
    assert!(e.contains("fortios-threat-feed urls") && e.contains("not an address feed with update-method push"), "{e}");
    assert_eq!(emu.object("root", "bhfw-urls"), before.3);
}

#[test]
fn drift_by_hand_is_repaired() {
    let emu = emulator();
    let mut b = backend(&emu);
    let desired: FirewallState = [(f("web"), range(0x0a04_0000, 20)), (f("db"), ips(&["10.4.1.1"]))].into();
    converge(&mut b, &desired);
    // An admin adds an IP and a CIDR, removes one IP, and deletes a feed.
    emu.push_feed("root", "bhfw-web", "add", &["10.6.6.6", "10.7.0.0/16"]).expect("hand add");
    emu.push_feed("root", "bhfw-web", "remove", &["10.4.0.3"]).expect("hand remove");
    emu.delete_object("root", "bhfw-db").expect("hand delete");
    let seen = b.read_owned_state().expect("read drifted");
    let mut drifted = range(0x0a04_0000, 20);
    drifted.remove(&"10.4.0.3".parse().expect("ip"));
    drifted.insert("10.6.6.6".parse().expect("ip"));
    assert_eq!(seen.get(&f("web")), Some(&drifted), "the backend reads single IPs as the firewall holds them");
    converge(&mut b, &desired);
    assert_on_device(&emu, &desired);
    assert!(!emu.feed_entry_texts("root", "bhfw-web").contains(&"10.7.0.0/16".to_string()), "the CIDR went with the repair");
}

#[test]
fn a_thousand_new_ips_cost_a_handful_of_requests() {
    let emu = emulator();
    let mut b = backend(&emu);
    let desired: FirewallState = [(f("big"), range(0x0a10_0000, 1000))].into();
    let create = converge(&mut b, &desired);
    let more: FirewallState = [(f("big"), range(0x0a10_0000, 2000))].into();
    let calls = b.calls();
    let update = converge(&mut b, &more);
    let with_reads = b.calls() - calls;
    println!("threat feed: 1,000 new IPs cost {create} requests in a new feed, {update} in an existing one ({with_reads} with the reads before and after)");
    assert!(create <= 5 && update <= 5, "create {create}, update {update}");
    assert_eq!((create, update), (2, 1), "CMDB POST + one push; one push");
    assert_on_device(&emu, &more);
    // 25,000 new IPs are split into requests of at most 10,000 entries.
    let huge: FirewallState = [(f("big"), range(0x0a10_0000, 27_000))].into();
    assert_eq!(converge(&mut b, &huge), 3);
    assert_eq!(emu.feed_entries("root", "bhfw-big").map(|s| s.len()), Some(27_000));
    // Over the feed's entry limit: refused before anything is sent.
    let mut small = backend(&emu).with_max_feed_entries(100);
    let actual = small.read_owned_state().expect("read");
    let calls = small.calls();
    let e = small.apply(&Diff::compute(&[(f("big"), range(0x0a10_0000, 101))].into(), &actual)).expect_err("over the limit").to_string();
    assert!(e.contains("over the 100 entries"), "{e}");
    assert_eq!(small.calls(), calls, "nothing sent");
}

#[test]
fn faults_are_retried_and_reconciles_converge_without_lost_updates() {
    let emu = emulator();
    emu.faults().set(FaultConfig { latency: std::time::Duration::ZERO, error_rate: 0.15, reset_rate: 0.15 });
    let mut b = backend(&emu);
    for round in 0..12u32 {
        let web = range(0x0a08_0000 + round * 3, 40);
        let db = range(0x0a08_0000 + round * 3 + 40, 5);
        let desired: FirewallState = [(f("web"), web), (f("db"), db), (f(&format!("f{}", round % 3)), range(0x0a09_0000 + round, 2))].into();
        reconcile_until(&mut b, &desired, 20);
        assert_on_device(&emu, &desired);
        assert_eq!(emu.feed_names("root").len(), desired.len(), "round {round}: no leftover feed: {:?}", emu.feed_names("root"));
    }
    let (errors, resets) = emu.faults().injected();
    assert!(errors > 5 && resets > 5, "faults were injected: {errors} 5xx, {resets} resets");
}

#[test]
fn a_restarted_backend_pushes_only_the_difference() {
    let emu = emulator();
    let old = range(0x0a0c_0000, 500);
    converge(&mut backend(&emu), &[(f("web"), old.clone())].into());
    let pushes_before = emu.feed_commands().len();
    emu.record_history(true);
    // A new process: nothing cached; three pods gone, five new.
    let mut b = backend(&emu);
    let new: BTreeSet<IpAddr> = old.iter().skip(3).copied().chain(range(0x0a0d_0000, 5)).collect();
    let desired: FirewallState = [(f("web"), new.clone())].into();
    converge(&mut b, &desired);
    let commands: Vec<_> = emu.feed_commands().into_iter().skip(pushes_before).map(|c| (c.2, c.3)).collect();
    assert_eq!(commands, [("remove".to_string(), 3), ("add".to_string(), 5)], "only the difference is pushed");
    let kept: BTreeSet<_> = old.intersection(&new).copied().collect();
    for (i, (_, objects)) in emu.history().iter().enumerate() {
        let web = objects.get("bhfw-web").expect("feed present throughout");
        assert!(web.is_superset(&kept), "after step {i} the feed lacks addresses it keeps");
    }
}

#[test]
fn fortios_before_7_2_1_has_no_feeds_and_pays_nothing_for_them() {
    let emu = emulator_of("v6.4.14");
    let mut b = backend(&emu);
    let calls = b.calls();
    b.read_owned_state().expect("read");
    assert_eq!(b.calls() - calls, 4, "addresses and groups (of both families) only");
    let e = b.apply(&Diff::compute(&[(f("web"), ips(&["10.5.0.1"]))].into(), &FirewallState::new())).expect_err("no push feeds").to_string();
    assert!(e.contains("v6.4.14 has no push threat feeds") && e.contains("fortios-addrgrp"), "{e}");
    assert!(emu.feed_names("root").is_empty());
    assert!(emu.put_feed("root", "x", "address", "push").is_err(), "update-method push is unknown before 7.2.1");
}

#[test]
fn the_engine_drives_feed_targets() {
    use fw_sync::config::DaemonConfig;
    use fw_sync::engine::{Engine, Mode};

    let emu = emulator();
    let dir = std::env::temp_dir().join(format!("fwsync-fortios-feed-engine-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("ds")).expect("temp dir");
    let _cleanup = Cleanup(dir.clone());
    std::fs::write(dir.join("token"), TOKEN).expect("token file");
    let cfg = format!(
        "firewalls:\n- name: fg\n  type: fortios\n  fortios: {{url: '{}', vdom: root, token: {{file: token}}}}\n  tls: {{caFile: '{}'}}\ndatastore: ds\n",
        emu.url(),
        emu.ca_file().display()
    );
    let config = DaemonConfig::parse("c.yaml", &cfg, &dir).expect("config");
    let write = |pods: &[(&str, &str)]| {
        let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {name: web}\nspec:\n  podSelector: app == 'web'\n  targets:\n  - {firewall: fg, kind: fortios-threat-feed, name: web}\n  - {firewall: fg, kind: fortios-addrgrp, name: web-grp}\n");
        for (name, ip) in pods {
            y += &format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: web}}}}\nstatus: {{podIP: {ip}}}\n");
        }
        std::fs::write(dir.join("ds/all.yaml"), y).expect("datastore");
        fw_sync::source::load(&dir.join("ds")).expect("snapshot")
    };
    let fortios = match &config.firewalls[0].kind {
        fw_sync::config::FirewallKind::Fortios(c) => c.clone(),
        other => panic!("not fortios: {other:?}"),
    };
    let b = FortiosBackend::new("fg", fortios, &config.firewalls[0].tls).expect("backend");
    let mut e = Engine::new(config, vec![Box::new(b)]);
    let r = e.sync(&write(&[("a", "10.31.0.1")]), Mode::Reconcile).expect("first sync");
    assert!(r[0].error.is_none(), "{r:?}");
    assert_eq!(emu.feed_entries("root", "bhfw-web"), Some(ips(&["10.31.0.1"])));
    assert_eq!(emu.group_members("root", "bhfw-web-grp"), Some(ips(&["10.31.0.1"])));
    let r = e.sync(&write(&[("a", "10.31.0.1"), ("b", "10.31.0.2")]), Mode::Event).expect("event");
    assert_eq!(r[0].calls, 1 + 2, "a 1-pod event: one push for the feed, POST address + PUT group for the group: {r:?}");
    assert_eq!(emu.feed_entries("root", "bhfw-web"), Some(ips(&["10.31.0.1", "10.31.0.2"])));
}

struct Cleanup(std::path::PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn one_feed_carries_both_families() {
    let emu = emulator();
    let mut b = backend(&emu);
    let mut desired: FirewallState = [(f("web"), ips(&["10.9.0.1", "fd00:9::1", "fd00:9::2"]))].into();
    converge(&mut b, &desired);
    assert_eq!(emu.feed_entries("root", "bhfw-web"), Some(desired[&f("web")].clone()));
    // An IPv6 entry pushed by hand as /128 is the same address: removing it names that text.
    emu.push_feed("root", "bhfw-web", "add", &["fd00:9::3/128"]).expect("hand push");
    desired = [(f("web"), ips(&["10.9.0.1", "fd00:9::1"]))].into();
    converge(&mut b, &desired);
    assert_eq!(emu.feed_entry_texts("root", "bhfw-web").len(), 2, "{:?}", emu.feed_entry_texts("root", "bhfw-web"));
    assert_eq!(emu.feed_entries("root", "bhfw-web"), Some(desired[&f("web")].clone()));
}
