//! ICMP errors and IPv4 options with real packets: path-MTU discovery works under default
//! deny (the "fragmentation needed" error quoting an allowed flow passes as related), and
//! packets with the longest legal IPv4 header are judged on their ports. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    time::Duration,
};

mod common;
use common::*;

/// Default deny both ways in namespace x; pod 1 may reach pod 2 on TCP 8080 and UDP 5353.
const POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p1-out, namespace: x}
spec:
  podSelector: {matchLabels: {app: p1}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: p2}}}], ports: [{port: 8080, protocol: TCP}, {port: 5353, protocol: UDP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p2-in, namespace: x}
spec:
  podSelector: {matchLabels: {app: p2}}
  policyTypes: [Ingress]
  ingress: [{from: [{podSelector: {matchLabels: {app: p1}}}], ports: [{port: 8080, protocol: TCP}, {port: 5353, protocol: UDP}]}]
";

fn counter(agent: &bulkhead_agent::Agent, name: &str) -> u64 {
    let c = agent.counters().expect("counters");
    c.iter().find(|(k, _)| k == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("no counter {name}: {c:?}"))
}

#[test]
fn a_tcp_transfer_over_a_smaller_mtu_path_completes_under_default_deny() {
    let t = Topo::create();
    std::fs::write(t.dir.join("policy.yaml"), POLICY).expect("write policy");
    let (agent, _pins) = start_agent(&t);
    tcp_echo(&t, 2, 8080);
    // The node forwards to pod 2 over a 1200-byte path (locked, so forwarding honours it),
    // while both pods have 1500-byte links: pod 1 learns the path MTU only from the node's
    // ICMP "fragmentation needed", which pod 1's default-deny ingress must let through.
    ip(&["-n", &t.node(), "route", "replace", "10.99.0.2/32", "dev", &t.veth(2), "mtu", "lock", "1200"]);
    let related_before = counter(&agent, "pass_icmp_related");
    let payload: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let got = t.in_pod(1, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::new(10, 99, 0, 2), 8080)), Duration::from_secs(2))
            .expect("connect to pod 2 (allowed)");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut r = s.try_clone().expect("clone");
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0;
            while n < buf.len() {
                match r.read(&mut buf[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            buf.truncate(n);
            buf
        });
        s.write_all(&payload).expect("send 256 KiB over the small-MTU path");
        reader.join().expect("reader")
    });
    assert_eq!(got.len(), expected.len(), "the transfer stalled: {} of {} bytes echoed (path-MTU blackhole?)", got.len(), expected.len());
    assert!(got == expected, "echoed bytes differ");
    assert!(counter(&agent, "pass_icmp_related") > related_before, "the fragmentation-needed error passed as related traffic");
}

/// A UDP socket in pod 1 that sends every datagram with a 40-byte IPv4 option (record route,
/// the longest legal header: IHL 15).
fn udp_with_options() -> UdpSocket {
    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let mut opt = [0u8; 40];
    opt[0] = 7; // record route
    opt[1] = 39;
    opt[2] = 4;
    // SAFETY: valid socket and buffer.
    let rc = unsafe { libc::setsockopt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_OPTIONS, opt.as_ptr().cast(), opt.len() as u32) };
    assert_eq!(rc, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
    s.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
    s
}

#[test]
fn packets_with_the_longest_ipv4_header_are_judged_on_their_ports() {
    let t = Topo::create();
    std::fs::write(t.dir.join("policy.yaml"), POLICY).expect("write policy");
    let (agent, _pins) = start_agent(&t);
    udp_echo(&t, 2, 5353);
    udp_echo(&t, 2, 5354);
    let malformed_before = counter(&agent, "drop_malformed_fail_closed");
    let roundtrip = |port: u16| {
        t.in_pod(1, move || {
            let s = udp_with_options();
            s.send_to(b"hello", (Ipv4Addr::new(10, 99, 0, 2), port)).expect("send");
            let mut buf = [0u8; 16];
            matches!(s.recv_from(&mut buf), Ok((5, _)))
        })
    };
    assert!(roundtrip(5353), "allowed port with IP options: the datagram and its reply must pass");
    assert!(!roundtrip(5354), "denied port with IP options: must be dropped by policy");
    assert_eq!(counter(&agent, "drop_malformed_fail_closed"), malformed_before, "no packet with options counted as malformed");
    assert!(counter(&agent, "deny_policy") >= 1, "the denied port was judged by policy");
}
