//! The agent against real packets: two pods in network namespaces, a real TCP connection held
//! open across policy changes, and a bad policy file that must change nothing. Needs root.

use std::{
    io::Read,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

mod common;
use common::*;

const DENY_INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {app: p2}}, policyTypes: [Ingress]}\n";

#[test]
fn policy_changes_reach_established_flows_and_bad_input_changes_nothing() {
    let t = Topo::create();
    let (agent, pin_dir) = start_agent(&t);
    tcp_echo(&t, 2, 8080);

    let mut held = connect(&t).expect("no policy: pod 1 connects to pod 2");

    // A spoofed source address is dropped by TC's anti-spoofing check.
    ip(&["-n", &t.pod(1), "addr", "add", "10.99.0.77/32", "dev", "eth0"]);
    let spoofed = t.in_pod(1, || {
        let s = socket_bound_to(Ipv4Addr::new(10, 99, 0, 77));
        s.connect_timeout(&SocketAddr::from((Ipv4Addr::new(10, 99, 0, 2), 8080)).into(), Duration::from_millis(500)).is_ok()
    });
    assert!(!spoofed, "a connection from an address that is not the pod's must not pass");
    let flows = agent.recent_flows().expect("flows");
    assert!(
        flows.iter().any(|f| f.kind == "dropped" && f.drop_reason == Some("drop_spoofed_source_fail_closed") && f.src == "10.99.0.77" && f.direction == "egress"),
        "the spoofed SYN is reported with tuple, direction and reason: {flows:?}"
    );
    assert!(echo_once(&mut held), "no policy: echo on the new connection");

    // Deny all ingress to pod 2: the held connection's next packet is judged again and dropped.
    std::fs::write(t.dir.join("policy.yaml"), DENY_INGRESS).expect("write policy");
    agent.sync_now().expect("deny policy applies");
    assert!(!echo_once(&mut held), "deny policy: the established connection must stop");
    assert!(connect(&t).is_none(), "deny policy: a new connection must fail");

    // A bad document: rejected with file and field named, the deny stays enforced.
    std::fs::write(
        t.dir.join("zz-bad.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}\n",
    )
    .expect("write bad");
    let report = agent.sync_now().expect("a bad file is rejected on its own; the sync goes on");
    let err = report.rejected.join("\n");
    assert!(err.contains("zz-bad.yaml") && err.contains("port"), "rejection names file and field: {err}");
    assert!(connect(&t).is_none(), "after a rejected change the deny still holds");
    std::fs::remove_file(t.dir.join("zz-bad.yaml")).expect("rm bad");

    // Remove the deny: new connections work again, and the held connection (its conntrack
    // entry was dropped with the deny) is judged as a new flow and resumes: TCP retransmits
    // what was dropped and the echo comes back.
    std::fs::remove_file(t.dir.join("policy.yaml")).expect("rm policy");
    agent.sync_now().expect("policy removal applies");
    held.set_read_timeout(Some(Duration::from_secs(8))).expect("timeout");
    let mut buf = [0u8; 4];
    assert!(
        matches!(held.read_exact(&mut buf), Ok(()) if &buf == b"ping"),
        "the held connection resumes once the policy allows it again"
    );
    let mut again = connect(&t).expect("policy removed: connect works again");
    assert!(echo_once(&mut again), "policy removed: echo works");

    let counters = agent.counters().expect("counters");
    let get = |n: &str| counters.iter().find(|(k, _)| k == n).map(|(_, v)| *v).unwrap_or(0);
    assert!(get("ct_reeval_deny") >= 1, "the held flow was judged again and denied: {counters:?}");
    assert!(get("deny_policy") >= 1, "new flows were denied: {counters:?}");
    assert!(get("drop_spoofed_source_fail_closed") >= 1, "TC dropped the spoofed SYN: {counters:?}");
    drop(agent);
    assert!(!pin_dir.exists(), "agent removed its pins");
}

#[test]
fn a_policy_file_written_to_disk_is_enforced_without_a_restart() {
    let t = Topo::create();
    let (agent, pin_dir) = start_agent_watching(&t, true);
    tcp_echo(&t, 2, 8080);
    assert!(connect(&t).is_some(), "no policy: connect works");

    // Written to a temporary name and renamed in, as tools that write atomically do.
    std::fs::write(t.dir.join(".policy.tmp"), DENY_INGRESS).expect("write");
    std::fs::rename(t.dir.join(".policy.tmp"), t.dir.join("policy.yaml")).expect("rename");
    let denied = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        connect(&t).is_none()
    });
    assert!(denied, "the watched datastore change was never enforced");
    drop(agent);
    assert!(!pin_dir.exists(), "agent removed its pins");
}
