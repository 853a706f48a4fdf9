//! fw-sync on the Kubernetes datastore (the API-server emulator) with two replicas electing a
//! leader on a Lease, writing to the FortiOS emulator: only the leader writes, a pod's new IP
//! reaches the firewall from an API event, and when the leader stops the other takes over.
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bulkhead_fw_emulator::fortios::{FortiosEmulator, FortiosOptions};
use bulkhead_kube_emulator::Emulator;
use common::{TempDir, ips, wait_for};
use fw_sync::config::{DaemonConfig, KubeSource};
use serde_json::json;

const TOKEN: &str = "s3cr3t-fortios-token-0123456789";

fn pod(name: &str, ip: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "x", "labels": {"app": "web"}}, "status": {"podIP": ip}})
}

#[test]
fn replicas_elect_one_writer_and_follow_api_events() {
    let fg = FortiosEmulator::start(FortiosOptions { token: TOKEN.into(), vdoms: vec!["root".into()], seed: 7, ..FortiosOptions::default() }).expect("fortios emulator");
    let api = Emulator::start().expect("api emulator");
    let crd_text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/crds/addressgroup.yaml")).expect("crd file");
    let crd: serde_json::Value = serde_yaml::from_str(&crd_text).expect("crd yaml");
    api.create(crd).expect("install the AddressGroup CRD");
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})).expect("ns");
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fw"}})).expect("ns fw");
    api.create(pod("a", "10.31.0.1")).expect("pod");
    api.create(json!({"apiVersion": "bulkhead.io/v1alpha1", "kind": "AddressGroup", "metadata": {"name": "web"},
                      "spec": {"podSelector": "app == 'web'", "targets": [{"firewall": "fg", "kind": "fortios-addrgrp", "name": "web"}]}}))
        .expect("address group");

    let tmp = TempDir::new("kube");
    std::fs::write(tmp.0.join("token"), TOKEN).expect("token");
    std::fs::write(tmp.0.join("kubeconfig"), api.kubeconfig()).expect("kubeconfig");
    let text = format!(
        "firewalls:\n- name: fg\n  type: fortios\n  fortios: {{url: '{}', vdom: root, token: {{file: token}}}}\n  tls: {{caFile: '{}'}}\ndatastore: kubernetes\n",
        fg.url(),
        fg.ca_file().display()
    );
    let base = DaemonConfig::parse("c.yaml", &text, &tmp.0).expect("config");
    assert!(base.kubernetes.is_some(), "datastore: kubernetes selects the API");
    let replica = |id: &str| {
        let mut c = base.clone();
        let mut e = bulkhead_kube::lease::Election::new("fw", "fw-sync", id);
        e.lease_duration = Duration::from_secs(2);
        e.renew_every = Duration::from_millis(300);
        c.kubernetes = Some(KubeSource { kubeconfig: Some(tmp.0.join("kubeconfig")), election: Some(e) });
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || fw_sync::daemon::run_until(c, fw_sync::metrics::Metrics::default(), &s));
        (stop, t)
    };
    let (stop_a, a) = replica("replica-a");
    let (stop_b, b) = replica("replica-b");
    wait_for("the first sync", || fg.group_members("root", "bhfw-web") == Some(ips(&["10.31.0.1"])));
    let holder = |api: &Emulator| api.get("coordination.k8s.io/v1", "Lease", "fw", "fw-sync").ok().and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string));
    let leader = holder(&api).expect("a lease holder");

    // A pod's IP changes in the API: the group follows.
    let took = {
        let t0 = Instant::now();
        api.patch("v1", "Pod", "x", "a", json!({"status": {"podIP": "10.31.0.2"}})).expect("patch pod");
        wait_for("the new IP on the firewall", || fg.group_members("root", "bhfw-web") == Some(ips(&["10.31.0.2"])));
        t0.elapsed()
    };
    eprintln!("API event -> firewall group updated: {took:?}");

    // The leader stops: the other replica takes over after the lease expires and writes.
    let (stop_leader, stop_other, leader_thread, other_thread) =
        if leader == "replica-a" { (stop_a, stop_b, a, b) } else { (stop_b, stop_a, b, a) };
    stop_leader.store(true, Ordering::SeqCst);
    leader_thread.join().expect("leader thread").expect("leader stops cleanly");
    wait_for("the other replica to take the lease", || holder(&api).is_some_and(|h| h != leader));
    api.create(pod("b", "10.31.0.3")).expect("pod b");
    wait_for("the new leader's write", || fg.group_members("root", "bhfw-web") == Some(ips(&["10.31.0.2", "10.31.0.3"])));
    stop_other.store(true, Ordering::SeqCst);
    other_thread.join().expect("other thread").expect("stops cleanly");
}

/// The agents' Quarantines from the API: the quarantine group on the firewall follows them,
/// and fw-sync answers in each Quarantine's status (the agent reads it back).
#[test]
fn quarantines_from_the_api_reach_the_firewall_and_get_a_status() {
    let fg = FortiosEmulator::start(FortiosOptions { token: TOKEN.into(), vdoms: vec!["root".into()], seed: 9, ..FortiosOptions::default() }).expect("fortios emulator");
    let api = Emulator::start().expect("api emulator");
    let crd = |file: &str| -> serde_json::Value {
        let path = format!("{}/../deploy/kubernetes/crds/{file}", env!("CARGO_MANIFEST_DIR"));
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    api.create(crd("addressgroup.yaml")).expect("AddressGroup CRD");
    api.create(crd("quarantine.yaml")).expect("Quarantine CRD");
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})).expect("ns");
    api.create(pod("a", "10.31.0.1")).expect("pod");

    let tmp = TempDir::new("kube-q");
    std::fs::write(tmp.0.join("token"), TOKEN).expect("token");
    std::fs::write(tmp.0.join("kubeconfig"), api.kubeconfig()).expect("kubeconfig");
    let text = format!(
        "firewalls:\n- name: fg\n  type: fortios\n  fortios: {{url: '{}', vdom: root, token: {{file: token}}}}\n  tls: {{caFile: '{}'}}\n  batchWindow: 0ms\ndatastore: kubernetes\nquarantine: {{name: quarantine}}\n",
        fg.url(),
        fg.ca_file().display()
    );
    let mut config = DaemonConfig::parse("c.yaml", &text, &tmp.0).expect("config");
    config.kubernetes = Some(KubeSource { kubeconfig: Some(tmp.0.join("kubeconfig")), election: None });
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || fw_sync::daemon::run_until(config, fw_sync::metrics::Metrics::default(), &s));
    // FortiOS refuses empty groups: an empty quarantine holds the placeholder.
    wait_for("the empty quarantine group", || fg.group_members("root", "bhfw-quarantine").is_some());

    // What the agent writes when it isolates pod a.
    let q = bulkhead_kube::quarantine::Quarantine::new("node-1", "x/a", "violation", vec!["isolated".into()], vec!["10.31.0.1".parse().unwrap()], bulkhead_kube::quarantine::now_unix_ms());
    api.create(serde_json::to_value(&q).expect("json")).expect("create the Quarantine");
    wait_for("the pod's address in the quarantine group", || fg.group_members("root", "bhfw-quarantine") == Some(ips(&["10.31.0.1"])));
    wait_for("fw-sync's status on the Quarantine", || {
        api.get("bulkhead.io/v1alpha1", "Quarantine", "x", "a").ok().is_some_and(|o| {
            let (_, st) = bulkhead_kube::quarantine::from_object(&o).expect("the object parses");
            st.is_some_and(|st| st.since_unix_ms == q.spec.since_unix_ms && st.firewalls.get("fg").is_some_and(|f| f.applied_unix_ms.is_some() && f.target.contains("bhfw-quarantine")))
        })
    });
    // Released: deleted by the agent, the address leaves the group.
    api.delete("bulkhead.io/v1alpha1", "Quarantine", "x", "a").expect("delete");
    wait_for("the address gone from the quarantine group", || fg.group_members("root", "bhfw-quarantine").is_some_and(|m| !m.contains(&"10.31.0.1".parse().unwrap())));
    stop.store(true, Ordering::SeqCst);
    t.join().expect("thread").expect("stops cleanly");
}
