//! The agent on the Kubernetes datastore under faults: an object the parser rejects, a
//! broken watch, 5xx answers, an API server that goes down, one that is down at start. None
//! of them may loosen what the kernel enforces. Real packets between lab pods; the API server
//! is the emulator (tests/kube-emulator).
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_e2e::{bulkhead_bin, require_root};
use bulkhead_lab::kube::KubeLab;
use bulkhead_lab::probe::probe;
use bulkhead_lab::topology::Protocol;
use serde_json::json;

const TOPOLOGY: &str = "kind: Topology
name: kube-faults
namespaces:
  - {name: x, labels: {kubernetes.io/metadata.name: x}}
pods:
  - {namespace: x, name: a, ip: 10.240.1.10, labels: {pod: a}}
  - {namespace: x, name: b, ip: 10.240.1.11, labels: {pod: b}}
ports:
  - {port: 80, protocol: TCP, name: serve-80-tcp}
";

const TIMEOUT: Duration = Duration::from_millis(500);

fn deny_ingress_to_a() -> serde_json::Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "deny-a", "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}})
}

/// Waits until b -> a:80 gives `want`; panics with `what` after 10 s.
fn wait_verdict(lab: &bulkhead_lab::Lab, want: bool, what: &str) {
    let b = lab.endpoint("x/b").expect("pod b");
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe(b, Ipv4Addr::new(10, 240, 1, 10), 80, Protocol::Tcp, TIMEOUT) != want {
        assert!(Instant::now() < deadline, "{what}: b -> a:80 never became {}", if want { "allowed" } else { "denied" });
    }
}

/// Waits until the agent's watchers have seen a write the API server answered with `obj`.
fn seen(kube: &KubeLab, obj: &serde_json::Value, written: Instant) {
    let s = |p: &str| obj.pointer(p).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let rv: u64 = s("/metadata/resourceVersion").parse().expect("resourceVersion");
    assert!(kube.handle().wait_seen(&s("/apiVersion"), &s("/kind"), rv, written, Duration::from_secs(10)), "watch never saw {obj}");
}

/// b -> a:80 stays denied for `d` (every probe judged).
fn stays_denied(lab: &bulkhead_lab::Lab, d: Duration, what: &str) {
    let b = lab.endpoint("x/b").expect("pod b");
    let end = Instant::now() + d;
    while Instant::now() < end {
        assert!(!probe(b, Ipv4Addr::new(10, 240, 1, 10), 80, Protocol::Tcp, TIMEOUT), "{what}: b -> a:80 was allowed");
    }
}

/// A lab whose datastore is the API emulator, with a watching agent on it (root).
fn lab_on_the_api(topology: &str) -> (bulkhead_lab::Lab, KubeLab, bulkhead_lab::agent::Agent) {
    require_root();
    let topo = bulkhead_lab::Topology::parse(topology, Path::new("kube_datastore.rs")).expect("topology");
    let opts = bulkhead_lab::LabOptions { server_bin: Some(bulkhead_bin()), ..Default::default() };
    let lab = bulkhead_lab::Lab::create(&topo, &opts).expect("lab");
    let mut ds = bulkhead_lab::datastore::Datastore::for_lab(&lab);
    let mut kube = KubeLab::start(&lab, &mut ds, false).expect("kubernetes datastore");
    let agent = kube.start_agent(&lab, true).expect("agent");
    (lab, kube, agent)
}

#[test]
fn api_faults_never_loosen_enforcement() {
    let (lab, kube, agent) = lab_on_the_api(TOPOLOGY);
    let emu = kube.emulator();
    wait_verdict(&lab, true, "no policy yet");

    // Written through the API, applied by the watching agent without being asked.
    emu.create(deny_ingress_to_a()).expect("create policy");
    wait_verdict(&lab, false, "deny-a created through the API");

    // Relists with nothing changed never flip a verdict: while every watch is broken and the
    // history compacted (each kind relists through a 410), b -> a stays denied and a -> b
    // stays allowed.
    let (a, b) = (lab.endpoint("x/a").expect("pod a"), lab.endpoint("x/b").expect("pod b"));
    for round in 0..5 {
        emu.compact();
        emu.drop_watches();
        let end = Instant::now() + Duration::from_millis(400);
        while Instant::now() < end {
            assert!(!probe(b, Ipv4Addr::new(10, 240, 1, 10), 80, Protocol::Tcp, TIMEOUT), "relist {round}: b -> a allowed");
            assert!(probe(a, Ipv4Addr::new(10, 240, 1, 11), 80, Protocol::Tcp, TIMEOUT), "relist {round}: a -> b denied");
        }
    }

    // A new version the parser rejects (an unknown field: a typo must not widen a policy).
    // It is reported by kind, namespace/name and field; the last good version stays.
    let mut bad = deny_ingress_to_a();
    bad["spec"]["ingres"] = json!([{}]);
    let t = Instant::now();
    let stored = emu.apply(bad).expect("the API server stores what it does not validate");
    seen(&kube, &stored, t);
    let rep = agent.sync_now().expect("sync with a rejected object");
    let rejected = rep.rejected.join("\n");
    assert!(rejected.contains("NetworkPolicy x/deny-a") && rejected.contains("ingres"), "rejection names the object and field: {rejected}");
    assert!(rejected.contains("last good version stays in force"), "{rejected}");
    // A second, unrelated bad object does not stop the rest from applying either.
    let gnp = json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "broken"},
                     "spec": {"selector": "pod == ", "types": ["Ingress"], "ingress": [{"action": "Allow"}]}});
    let t = Instant::now();
    let stored = emu.create(gnp).expect("create broken gnp");
    seen(&kube, &stored, t);
    let rep = agent.sync_now().expect("sync");
    assert!(rep.rejected.iter().any(|r| r.contains("GlobalNetworkPolicy broken")), "{:?}", rep.rejected);
    stays_denied(&lab, Duration::from_millis(600), "a rejected version must not replace the good one");

    // The watch breaks and the API answers 500 for a while: nothing changes in the kernel.
    emu.fail_next(20, 500);
    emu.compact();
    emu.drop_watches();
    stays_denied(&lab, Duration::from_secs(2), "watch broken, API failing");
    // The API server goes away entirely.
    emu.set_down(true);
    stays_denied(&lab, Duration::from_secs(2), "API server down");
    emu.set_down(false);

    // Back: the fixed policy and then its deletion reach the kernel through the relist.
    emu.apply(deny_ingress_to_a()).expect("fix policy");
    emu.delete("projectcalico.org/v3", "GlobalNetworkPolicy", "", "broken").expect("delete gnp");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.sync_now().expect("sync").rejected.is_empty() {
        assert!(Instant::now() < deadline, "rejections did not clear after the API came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    stays_denied(&lab, Duration::from_millis(300), "after recovery");
    emu.delete("networking.k8s.io/v1", "NetworkPolicy", "x", "deny-a").expect("delete policy");
    wait_verdict(&lab, true, "deny-a deleted through the API");
    drop(agent);
    drop(kube);
}

#[test]
fn api_server_down_at_start_is_an_error_naming_what_was_not_listed() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    let dir = bulkhead_e2e::TempDir::new("kube-down");
    let kc = dir.0.join("kubeconfig");
    std::fs::write(&kc, format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n")).expect("kubeconfig");
    let api = bulkhead_lab::agent::kubernetes::ApiOptions { kubeconfig: Some(kc), ready_timeout: Duration::from_secs(2) };
    let opts = bulkhead_lab::agent::kubernetes::KubeOptions { api, ..Default::default() };
    let err = match bulkhead_lab::agent::kubernetes::KubeDatastore::connect(&opts) {
        Ok(_) => panic!("connected to a server that does not exist"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not listed within") && err.contains("v1 Pod") && err.contains(&port.to_string()), "{err}");
}

/// On the Kubernetes datastore the agent publishes an isolated pod's Quarantine as an API
/// object (labelled with its node), reports fw-sync's answer from the object's status, and
/// deletes it on release.
#[test]
fn an_isolated_pod_is_published_as_a_quarantine_object_and_withdrawn_on_release() {
    use bulkhead_lab::agent::detect::{Actions, Mode, WorkloadSpec};
    let (lab, kube, agent) = lab_on_the_api(&TOPOLOGY.replace("kube-faults", "kube-quarantine").replace("10.240.1.", "10.240.2."));
    let emu = kube.emulator();
    let a = lab.endpoint("x/a").expect("pod a");
    agent
        .detector_monitor(WorkloadSpec {
            name: "x/a".into(),
            cgroup: a.cgroup.clone().expect("cgroup"),
            interface: Some(a.host_veth.clone()),
            mode: Mode::Learn,
            actions: Actions::default(),
            syscalls: false,
            allowed_execs: vec![],
        })
        .expect("monitor");
    agent.detector_isolate("x/a").expect("isolate");
    let node = lab.pin_dir().file_name().expect("instance").to_string_lossy().into_owned();
    let get = || emu.get("bulkhead.io/v1alpha1", "Quarantine", "x", "a").ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    let obj = loop {
        if let Some(o) = get() {
            break o;
        }
        assert!(Instant::now() < deadline, "no Quarantine object for the isolated pod");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (q, st) = bulkhead_kube::quarantine::from_object(&obj).expect("the object parses");
    assert_eq!((q.spec.workload.as_str(), q.spec.addresses.clone()), ("x/a", vec!["10.240.2.10".parse::<std::net::IpAddr>().unwrap()]), "{obj}");
    assert_eq!(q.metadata.labels.get(bulkhead_kube::quarantine::NODE_LABEL), Some(&node));
    assert!(st.is_none(), "no answer yet");
    // fw-sync's answer, as it writes it.
    let status = json!({"sinceUnixMs": q.spec.since_unix_ms, "firewalls": {"fg": {"target": "fortios-addrgrp bhfw-quarantine", "appliedUnixMs": q.spec.since_unix_ms + 42}}});
    emu.patch("bulkhead.io/v1alpha1", "Quarantine", "x", "a", json!({"status": status})).expect("status");
    let det = agent.detector();
    let ev = det
        .wait_event(Duration::from_secs(5), |e| e.kind == "quarantine-perimeter" && e.workload.as_deref() == Some("x/a"))
        .unwrap_or_else(|| panic!("the firewall's answer was not reported: {:?}", det.events()));
    assert_eq!(ev.firewalls, ["fg"], "{ev:?}");
    assert!(ev.detail.as_deref().is_some_and(|d| d.contains("fg (fortios-addrgrp bhfw-quarantine, 42 ms)")), "{ev:?}");
    // Released: the object goes.
    agent.detector_release("x/a").expect("release");
    let deadline = Instant::now() + Duration::from_secs(5);
    while get().is_some() {
        assert!(Instant::now() < deadline, "the Quarantine object outlived the release");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(agent);
    drop(kube);
}
