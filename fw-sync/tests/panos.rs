//! The PAN-OS backend against the PAN-OS emulator (in-process, HTTPS with a test CA, no
//! root needed): convergence, ownership, drift, batching, busy firewalls, faults, User-ID
//! tags with pagination, Panorama, and credentials kept out of errors.

mod common;

use common::{converge, ips};

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use bulkhead_fw_emulator::FaultConfig;
use bulkhead_fw_emulator::panos::{DEVICE, PanosEmulator, PanosOptions};
use fw_sync::backend::Backend;
use fw_sync::backend::http::{HttpClient, TlsOptions};
use fw_sync::backend::panos::PanosBackend;
use fw_sync::config::{PanosConfig, PanosLocation};
use fw_sync::diff::Diff;
use fw_sync::group::{FirewallState, ObjectRef, TargetKind};
use fw_sync::secret::Secret;

const VSYS: &str = "/config/devices/entry[@name='localhost.localdomain']/vsys/entry[@name='vsys1']";

fn range(prefix: &str, n: usize) -> BTreeSet<IpAddr> {
    (0..n).map(|i| format!("{prefix}.{}.{}", i / 250, i % 250 + 1).parse().expect("test IP")).collect()
}

fn st(n: &str) -> ObjectRef {
    ObjectRef { kind: TargetKind::PanosStaticGroup, name: n.into() }
}

fn dy(n: &str) -> ObjectRef {
    ObjectRef { kind: TargetKind::PanosDynamicTag, name: n.into() }
}

fn emulator(panorama: bool) -> PanosEmulator {
    PanosEmulator::start(PanosOptions { panorama, api_key: "LUFRPT1test-key-42".into(), ..PanosOptions::default() }).expect("emulator starts")
}

fn backend_with(emu: &PanosEmulator, key: &str, location: PanosLocation, target: Option<&str>) -> PanosBackend {
    let config = PanosConfig { url: emu.url(), api_key: Secret::literal(key), location, target: target.map(String::from), registered_ip_timeout: 0 };
    PanosBackend::new("pa", config, &TlsOptions { ca_file: Some(emu.ca_file().to_path_buf()), insecure_skip_verify: false }).expect("backend")
}

fn backend(emu: &PanosEmulator) -> PanosBackend {
    backend_with(emu, "LUFRPT1test-key-42", PanosLocation::Vsys("vsys1".into()), None)
}

fn running(emu: &PanosEmulator, group: &str) -> Option<BTreeSet<IpAddr>> {
    emu.running_static_group("vsys1", &format!("bhfw-{group}"))
}

#[test]
fn converges_static_groups_and_leaves_foreign_objects_alone() {
    let emu = emulator(false);
    // The admin's own objects, one with a confusingly similar name.
    emu.edit_running("set", &format!("{VSYS}/address/entry[@name='admin-host']"), Some("<ip-netmask>192.0.2.1/32</ip-netmask>")).expect("foreign address");
    emu.edit_running("set", &format!("{VSYS}/address-group/entry[@name='admin-group']"), Some("<static><member>admin-host</member></static>")).expect("foreign group");
    emu.edit_running("set", &format!("{VSYS}/address-group/entry[@name='bhfwx']"), Some("<static><member>admin-host</member></static>")).expect("foreign group");
    let foreign = |emu: &PanosEmulator| (emu.running_xml(&format!("{VSYS}/address/entry[@name='admin-host']")), emu.running_xml(&format!("{VSYS}/address-group/entry[@name='admin-group']")), emu.running_xml(&format!("{VSYS}/address-group/entry[@name='bhfwx']")));
    let before = foreign(&emu);

    let mut b = backend(&emu);
    assert!(b.read_owned_state().expect("read").is_empty(), "foreign objects are not owned");
    let mut desired: FirewallState = [(st("web"), ips(&["10.1.0.1", "10.1.0.2"])), (st("db"), ips(&["10.1.0.5"]))].into();
    converge(&mut b, &desired);
    assert_eq!(running(&emu, "web"), Some(ips(&["10.1.0.1", "10.1.0.2"])));
    assert!(emu.running_xml(&format!("{VSYS}/address/entry[@name='bhfw-10.1.0.1']")).contains("<ip-netmask>10.1.0.1/32</ip-netmask>"));

    // 10.1.0.5 moves from db to web; db becomes empty (placeholder member).
    desired = [(st("web"), ips(&["10.1.0.1", "10.1.0.2", "10.1.0.5"])), (st("db"), ips(&[]))].into();
    let d = converge(&mut b, &desired);
    assert_eq!(d.moves(), ips(&["10.1.0.5"]));
    assert_eq!(running(&emu, "db"), Some(ips(&["255.255.255.255"])), "the empty group holds only the placeholder");

    // A group no longer targeted is deleted with the addresses no group uses any more.
    desired = [(st("db"), ips(&["10.1.0.9"]))].into();
    converge(&mut b, &desired);
    assert_eq!(running(&emu, "web"), None);
    assert_eq!(emu.running_xml(&format!("{VSYS}/address/entry[@name='bhfw-10.1.0.1']")), "", "unused owned address deleted");
    assert_eq!(foreign(&emu), before, "foreign objects untouched");
    assert!(!emu.pending_changes(), "everything committed");
}

#[test]
fn batches_every_change_into_one_multi_config_and_one_commit() {
    let emu = emulator(false);
    let mut b = backend(&emu);
    let desired: FirewallState = [(st("big"), range("10.20", 1000))].into();
    let actual = b.read_owned_state().expect("read");
    let (calls, requests, commits) = (b.calls(), emu.requests(), emu.commits());
    b.apply(&Diff::compute(&desired, &actual)).expect("apply 1000 IPs");
    let apply_calls = b.calls() - calls;
    eprintln!("apply of 1,000 new IPs into one group: {apply_calls} calls (multi-config + commit + job polls)");
    assert_eq!(emu.requests() - requests, apply_calls, "every request is counted");
    assert_eq!(emu.commits() - commits, 1, "one commit");
    assert!((3..=6).contains(&apply_calls), "multi-config + commit + 1..4 polls, got {apply_calls}");
    assert_eq!(running(&emu, "big").map(|s| s.len()), Some(1000));

    let calls = b.calls();
    assert_eq!(b.read_owned_state().expect("read"), desired);
    assert_eq!(b.calls() - calls, 3, "a read is three shows when no tag is owned");
}

#[test]
fn drift_by_hand_is_repaired() {
    let emu = emulator(false);
    let mut b = backend(&emu);
    let desired: FirewallState = [(st("web"), ips(&["10.1.0.1", "10.1.0.2"])), (st("db"), ips(&["10.1.0.5"]))].into();
    converge(&mut b, &desired);
    // Committed by hand: a member removed, an address re-pointed, a group deleted.
    let g = format!("{VSYS}/address-group/entry[@name='bhfw-web']");
    emu.edit_running("delete", &format!("{g}/static/member[text()='bhfw-10.1.0.2']"), None).expect("drift");
    emu.edit_running("edit", &format!("{VSYS}/address/entry[@name='bhfw-10.1.0.1']"), Some("<entry name='bhfw-10.1.0.1'><ip-netmask>10.6.6.6/32</ip-netmask></entry>")).expect("drift");
    emu.edit_running("delete", &format!("{VSYS}/address-group/entry[@name='bhfw-db']"), None).expect("drift");
    let seen = b.read_owned_state().expect("read drift");
    assert_eq!(seen, [(st("web"), ips(&[]))].into(), "a re-pointed address no longer counts");
    converge(&mut b, &desired);
    assert_eq!(running(&emu, "web"), Some(ips(&["10.1.0.1", "10.1.0.2"])));
    assert_eq!(running(&emu, "db"), Some(ips(&["10.1.0.5"])));

    // An uncommitted candidate edit does not change what is enforced, so nothing is read as drifted.
    emu.edit_candidate("delete", &g, None).expect("candidate edit");
    assert_eq!(b.read_owned_state().expect("read"), desired);
}

/// A failed apply can leave uncommitted changes in the candidate (its multi-config went
/// through, its commit did not). The next apply diffs against the running config, so it must
/// not commit those leftovers along with its own change.
#[test]
fn leftovers_of_a_failed_apply_in_the_candidate_are_not_committed() {
    let emu = emulator(false);
    let mut b = backend(&emu);
    converge(&mut b, &[(st("web"), ips(&["10.1.0.1", "10.1.0.2"]))].into());
    // What a failed apply left: 10.1.0.9 joined web, 10.1.0.2's address object was deleted.
    let g = format!("{VSYS}/address-group/entry[@name='bhfw-web']");
    emu.edit_candidate("set", &format!("{VSYS}/address"), Some("<entry name='bhfw-10.1.0.9'><ip-netmask>10.1.0.9/32</ip-netmask></entry>")).expect("leftover address");
    emu.edit_candidate("set", &format!("{g}/static"), Some("<member>bhfw-10.1.0.9</member>")).expect("leftover member");
    emu.edit_candidate("delete", &format!("{g}/static/member[text()='bhfw-10.1.0.2']"), None).expect("leftover removal");
    emu.edit_candidate("delete", &format!("{VSYS}/address/entry[@name='bhfw-10.1.0.2']"), None).expect("leftover delete");
    // The pod behind 10.1.0.9 is gone again; one new pod arrives.
    let desired: FirewallState = [(st("web"), ips(&["10.1.0.1", "10.1.0.2", "10.1.0.3"]))].into();
    converge(&mut b, &desired);
    assert_eq!(running(&emu, "web"), Some(ips(&["10.1.0.1", "10.1.0.2", "10.1.0.3"])), "exactly the desired members are enforced");
}

#[test]
fn owned_objects_still_used_by_others_are_emptied_or_kept() {
    let emu = emulator(false);
    let mut b = backend(&emu);
    let desired: FirewallState = [(st("old"), ips(&["10.1.0.1", "10.1.0.2"]))].into();
    converge(&mut b, &desired);
    // The admin nests the owned group and reuses an owned address in his own group.
    emu.edit_running("set", &format!("{VSYS}/address-group/entry[@name='admin']"), Some("<static><member>bhfw-old</member><member>bhfw-10.1.0.2</member></static>")).expect("admin group");
    let actual = b.read_owned_state().expect("read");
    b.apply(&Diff::compute(&FirewallState::new(), &actual)).expect("apply with objects in use");
    assert_eq!(running(&emu, "old"), Some(ips(&["255.255.255.255"])), "in-use group emptied, not deleted");
    assert_eq!(emu.running_xml(&format!("{VSYS}/address/entry[@name='bhfw-10.1.0.1']")), "", "unused address deleted");
    assert!(!emu.running_xml(&format!("{VSYS}/address/entry[@name='bhfw-10.1.0.2']")).is_empty(), "address in use kept");
    assert_eq!(b.read_owned_state().expect("read"), [(st("old"), ips(&[]))].into());
}

/// Starts a commit job as another client would (the candidate must differ).
fn foreign_commit(emu: &PanosEmulator) {
    emu.edit_candidate("set", &format!("{VSYS}/address/entry[@name='other-{}']", emu.requests()), Some("<ip-netmask>192.0.2.7/32</ip-netmask>")).expect("candidate change");
    let tls = TlsOptions { ca_file: Some(emu.ca_file().to_path_buf()), insecure_skip_verify: false };
    let mut c = HttpClient::new("other", &emu.url(), &tls).expect("client");
    let body = "type=commit&cmd=%3Ccommit%3E%3C%2Fcommit%3E";
    let r = c.send("POST", "/api/", &[("X-PAN-KEY", "LUFRPT1test-key-42")], Some(("application/x-www-form-urlencoded", body.as_bytes())), "commit").expect("commit");
    assert!(r.body.contains("enqueued"), "{}", r.body);
}

#[test]
fn a_busy_firewall_is_retried_and_a_long_lock_is_a_clear_error() {
    let emu = emulator(false);
    let mut b = backend(&emu);
    // A commit in progress: the strict multi-config is refused until it ends.
    emu.set_commit_duration(Duration::from_millis(400));
    foreign_commit(&emu);
    let desired: FirewallState = [(st("web"), ips(&["10.1.0.1"]))].into();
    converge(&mut b, &desired);
    emu.set_commit_duration(Duration::from_millis(20));

    // A lock released after a while: retried, then applied.
    emu.hold_config_lock("other-admin");
    let desired: FirewallState = [(st("web"), ips(&["10.1.0.2"]))].into();
    let actual = b.read_owned_state().expect("reads work under a lock");
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(400));
            emu.release_config_lock();
        });
        b.apply(&Diff::compute(&desired, &actual)).expect("applied once the lock is released");
    });
    assert_eq!(running(&emu, "web"), Some(ips(&["10.1.0.2"])));

    // A lock held longer than the retry budget: a clear error; the next apply converges.
    b.set_busy_budget(Duration::from_millis(300));
    emu.hold_config_lock("other-admin");
    let desired: FirewallState = [(st("web"), ips(&["10.1.0.3"]))].into();
    let actual = b.read_owned_state().expect("read");
    let e = b.apply(&Diff::compute(&desired, &actual)).expect_err("lock held too long").to_string();
    assert!(e.starts_with("firewall pa: config multi-config") && e.contains("locked by other-admin") && e.contains("still refused after"), "{e}");
    emu.release_config_lock();
    converge(&mut b, &desired);
}

#[test]
fn a_failing_commit_names_the_job_and_its_details() {
    let emu = emulator(false);
    let mut b = backend(&emu);
    // Another admin left a broken group in the candidate; the full commit carries it.
    emu.edit_candidate("set", &format!("{VSYS}/address-group/entry[@name='broken']"), Some("<static><member>nowhere</member></static>")).expect("candidate");
    let desired: FirewallState = [(st("web"), ips(&["10.1.0.1"]))].into();
    let e = b.apply(&Diff::compute(&desired, &FirewallState::new())).expect_err("commit fails").to_string();
    assert!(e.starts_with("firewall pa: commit: job ") && e.contains("ended FAIL") && e.contains("'nowhere' is not a valid reference"), "{e}");
    assert_eq!(running(&emu, "web"), None, "nothing became running");
    emu.edit_candidate("delete", &format!("{VSYS}/address-group/entry[@name='broken']"), None).expect("fixed by hand");
    converge(&mut b, &desired);
}

#[test]
fn faults_may_fail_an_apply_but_reconciling_converges_without_lost_updates() {
    let emu = emulator(false);
    let mut b = backend(&emu);
    emu.faults().set(FaultConfig { latency: Duration::ZERO, error_rate: 0.15, reset_rate: 0.15 });
    let states: Vec<FirewallState> = vec![
        [(st("a"), range("10.30", 40)), (st("b"), ips(&["10.31.0.1"])), (dy("t"), ips(&["10.32.0.1", "10.32.0.2"]))].into(),
        [(st("a"), range("10.30", 20)), (st("b"), range("10.30", 45)), (dy("t"), ips(&["10.32.0.2", "10.32.0.3"]))].into(),
        [(st("b"), ips(&["10.31.0.2"])), (dy("t"), ips(&[]))].into(),
    ];
    let mut failures = 0;
    for desired in &states {
        let mut done = false;
        for _ in 0..40 {
            let step = b.read_owned_state().and_then(|actual| {
                let d = Diff::compute(desired, &actual);
                if d.is_empty() { Ok(true) } else { b.apply(&d).map(|()| false) }
            });
            match step {
                Ok(true) => {
                    done = true;
                    break;
                }
                Ok(false) => {}
                Err(e) => {
                    failures += 1;
                    let shown = e.to_string();
                    assert!(shown.starts_with("firewall pa: ") && !shown.contains("test-key"), "{shown}");
                }
            }
        }
        assert!(done, "no convergence to {desired:?} under faults");
    }
    let (errors, resets) = emu.faults().injected();
    eprintln!("faults injected: {errors} server errors, {resets} resets; {failures} reconcile steps failed");
    assert!(errors + resets > 0, "faults were injected");
    emu.faults().set(FaultConfig::default());
    let last = &states[2];
    assert_eq!(b.read_owned_state().expect("read"), *last);
    assert_eq!(running(&emu, "b"), Some(ips(&["10.31.0.2"])));
    assert_eq!(running(&emu, "a"), None);
    assert!(emu.registered_ips("bhfw-t").is_empty());
}

#[test]
fn dynamic_tags_register_unregister_and_read_back_page_by_page() {
    let emu = emulator(false);
    let mut b = backend(&emu);
    // Foreign registrations: another tag on an owned IP, and a foreign tag.
    let big = range("10.40", 1200);
    let mut desired: FirewallState = [(dy("web"), big.clone()), (dy("db"), ips(&["10.41.0.1"])), (st("g"), ips(&["10.41.0.1"]))].into();
    converge(&mut b, &desired);
    assert_eq!(emu.registered_ips("bhfw-web"), big);
    let calls = b.calls();
    b.read_owned_state().expect("read");
    assert_eq!(b.calls() - calls, 3 + 3, "three shows + three pages of 500 registered IPs");

    // 10.41.0.1 moves from db to web; web drops 200 IPs; db stays as an empty tag.
    let mut web: BTreeSet<IpAddr> = big.iter().copied().skip(200).collect();
    web.insert("10.41.0.1".parse().expect("ip"));
    desired = [(dy("web"), web.clone()), (dy("db"), ips(&[])), (st("g"), ips(&["10.41.0.1"]))].into();
    let d = converge(&mut b, &desired);
    assert_eq!(d.moves(), ips(&["10.41.0.1"]));
    assert_eq!(emu.registered_ips("bhfw-web"), web);
    assert!(emu.registered_ips("bhfw-db").is_empty());

    // Drift: an IP unregistered by hand (or expired) is registered again.
    desired.remove(&dy("db"));
    converge(&mut b, &desired);
    assert!(emu.running_xml(&format!("{VSYS}/tag/entry[@name='bhfw-db']")).is_empty(), "tag object deleted");
    assert!(emu.running_xml(&format!("{VSYS}/tag/entry[@name='bhfw-web']")).contains("managed by fw-sync"));
}

#[test]
fn registered_ip_timeouts_expire_and_reconcile_registers_again() {
    let emu = emulator(false);
    let config = PanosConfig { url: emu.url(), api_key: Secret::literal("LUFRPT1test-key-42"), location: PanosLocation::Vsys("vsys1".into()), target: None, registered_ip_timeout: 60 };
    let mut b = PanosBackend::new("pa", config, &TlsOptions { ca_file: Some(emu.ca_file().to_path_buf()), insecure_skip_verify: false }).expect("backend");
    let desired: FirewallState = [(dy("t"), ips(&["10.50.0.1"]))].into();
    converge(&mut b, &desired);
    emu.advance_clock(Duration::from_secs(61));
    assert!(emu.registered_ips("bhfw-t").is_empty(), "expired");
    assert_eq!(b.read_owned_state().expect("read"), [(dy("t"), ips(&[]))].into());
    converge(&mut b, &desired);
}

#[test]
fn panorama_device_group_is_committed_and_pushed() {
    let emu = emulator(true);
    let mut b = backend_with(&emu, "LUFRPT1test-key-42", PanosLocation::DeviceGroup("dg1".into()), Some("007951000012345"));
    let desired: FirewallState = [(st("web"), ips(&["10.60.0.1", "10.60.0.2"])), (dy("web"), ips(&["10.60.0.1"]))].into();
    converge(&mut b, &desired);
    assert_eq!(emu.running_static_group("dg1", "bhfw-web"), Some(ips(&["10.60.0.1", "10.60.0.2"])));
    assert_eq!(emu.pushed_static_group("dg1", "bhfw-web"), Some(ips(&["10.60.0.1", "10.60.0.2"])), "pushed by commit-all");
    assert_eq!(emu.pushes(), 1);
    assert!(emu.running_xml(&format!("{DEVICE}/device-group/entry[@name='dg1']/address/entry[@name='bhfw-10.60.0.1']")).contains("10.60.0.1/32"));
    assert_eq!(emu.registered_ips_on("007951000012345", "bhfw-web"), ips(&["10.60.0.1"]), "User-ID sent to the target firewall");
}

#[test]
fn a_wrong_api_key_is_a_clear_error_without_the_key() {
    let emu = emulator(false);
    let mut b = backend_with(&emu, "LUFRPT1wrong-secret-99", PanosLocation::Vsys("vsys1".into()), None);
    let e = b.read_owned_state().expect_err("wrong key").to_string();
    assert!(e.starts_with("firewall pa: config show ") && e.contains("Invalid Credential") && e.contains("403"), "{e}");
    assert!(!e.contains("wrong-secret") && !e.contains("test-key"), "the key leaks: {e}");
    let e = b.apply(&Diff::compute(&[(st("x"), ips(&["10.0.0.1"]))].into(), &FirewallState::new())).expect_err("wrong key").to_string();
    assert!(e.contains("Invalid Credential") && !e.contains("wrong-secret"), "{e}");
}

#[test]
fn ipv6_members_are_host_objects_in_the_same_group_and_registered_ips() {
    let emu = emulator(false);
    let mut b = backend(&emu);
    let mut desired: FirewallState = [(st("web"), ips(&["10.8.0.1", "fd00:8::1"])), (st("db"), ips(&["fd00:8::5"])), (dy("app"), ips(&["10.8.1.1", "fd00:8:1::1"]))].into();
    converge(&mut b, &desired);
    assert_eq!(running(&emu, "web"), Some(ips(&["10.8.0.1", "fd00:8::1"])), "one group holds both families");
    assert!(emu.running_xml(&format!("{VSYS}/address/entry[@name='bhfw-fd00-8--1']")).contains("<ip-netmask>fd00:8::1/128</ip-netmask>"));
    assert_eq!(emu.registered_ips("bhfw-app"), ips(&["10.8.1.1", "fd00:8:1::1"]));

    // An IPv6 address moves from db to web; an IPv6 registered IP changes.
    desired = [(st("web"), ips(&["10.8.0.1", "fd00:8::1", "fd00:8::5"])), (st("db"), ips(&[])), (dy("app"), ips(&["10.8.1.1", "fd00:8:1::2"]))].into();
    let d = converge(&mut b, &desired);
    assert_eq!(d.moves(), ips(&["fd00:8::5"]));
    assert_eq!(running(&emu, "web"), Some(ips(&["10.8.0.1", "fd00:8::1", "fd00:8::5"])));
    assert_eq!(emu.registered_ips("bhfw-app"), ips(&["10.8.1.1", "fd00:8:1::2"]));

    // An owned-looking IPv6 object with another value (edited by hand) is not taken as the host.
    emu.edit_running("edit", &format!("{VSYS}/address/entry[@name='bhfw-fd00-8--1']"), Some("<entry name='bhfw-fd00-8--1'><ip-netmask>fd00:8::/64</ip-netmask></entry>")).expect("hand edit");
    let read = b.read_owned_state().expect("read");
    assert_eq!(read[&st("web")], ips(&["10.8.0.1", "fd00:8::5"]), "a /64 is not the pod's host address");
    converge(&mut b, &desired);
    assert!(emu.running_xml(&format!("{VSYS}/address/entry[@name='bhfw-fd00-8--1']")).contains("<ip-netmask>fd00:8::1/128</ip-netmask>"), "repaired");
    converge(&mut b, &FirewallState::new());
    assert_eq!(running(&emu, "web"), None);
}
