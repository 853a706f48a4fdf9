//! IPv6 end to end, on a dual-stack lab with a running agent: an established IPv6 TCP
//! connection is cut by a policy change that revokes it (the datapath judges tracked IPv6
//! flows again, as IPv4 ones), while the IPv4 side follows its own rules; flow events carry
//! IPv6 addresses.
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use bulkhead_e2e::LabAgent;
use bulkhead_lab::PodNetns;
use bulkhead_lab::probe::probe;
use bulkhead_lab::topology::Protocol;

const TOPOLOGY: &str = "
kind: Topology
name: v6e2e
namespaces:
  - name: six
    labels: {kubernetes.io/metadata.name: six}
pods:
  - {namespace: six, name: client, ip: 10.245.0.10, ip6: 'fd00:245::10', labels: {app: client}}
  - {namespace: six, name: server, ip: 10.245.0.11, ip6: 'fd00:245::11', labels: {app: server}}
ports:
  - {port: 8080, protocol: TCP}
";

/// Ingress to the server from the client on 8080, both families.
const ALLOW: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-in, namespace: six}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{port: 8080, protocol: TCP}]
";

/// The same policy narrowed to IPv4 sources: the IPv6 flow is revoked, IPv4 stays allowed.
const V4_ONLY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-in, namespace: six}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from: [{ipBlock: {cidr: 10.245.0.0/24}}]
      ports: [{port: 8080, protocol: TCP}]
";

const T: Duration = Duration::from_millis(700);

fn pod<'a>(f: &'a LabAgent, name: &str) -> &'a PodNetns {
    f.lab.pods().iter().find(|p| p.key.ends_with(name)).unwrap_or_else(|| panic!("no pod {name}"))
}

fn apply(f: &LabAgent, yaml: &str) {
    let mut ds = bulkhead_lab::datastore::Datastore::for_lab(&f.lab);
    ds.apply(yaml).unwrap_or_else(|e| panic!("policy applies: {e}"));
    ds.flush().expect("datastore written");
    f.agent().sync_now().expect("agent syncs");
}

/// A TCP connection opened from inside `from`'s namespace (the socket stays in it).
fn connect(from: &PodNetns, to: IpAddr, port: u16) -> TcpStream {
    let addr = SocketAddr::new(to, port);
    bulkhead_lab::netns::in_netns(&from.netns, move || TcpStream::connect_timeout(&addr, T))
        .expect("enter the pod's namespace")
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Whether one line goes to the echo server and back within `T`.
fn echoes(s: &mut TcpStream, what: &str) -> bool {
    let msg = format!("ipv6 e2e {what}\n");
    s.set_read_timeout(Some(T)).expect("timeout");
    if s.write_all(msg.as_bytes()).is_err() {
        return false;
    }
    let mut got = vec![0u8; msg.len()];
    let mut n = 0;
    while n < got.len() {
        match s.read(&mut got[n..]) {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    got == msg.as_bytes()
}

fn counter(f: &LabAgent, name: &str) -> u64 {
    f.agent().counters().expect("counters").into_iter().find(|(n, _)| n == name).map_or(0, |(_, v)| v)
}

#[test]
fn an_established_ipv6_connection_is_cut_by_a_policy_that_revokes_it() {
    let f = LabAgent::new(TOPOLOGY, "v6e2e.yaml", false);
    apply(&f, ALLOW);
    let (client, server) = (pod(&f, "client"), pod(&f, "server"));
    let server6 = IpAddr::V6(server.ip6.expect("dual-stack server"));

    let mut s6 = connect(client, server6, 8080);
    assert!(echoes(&mut s6, "before"), "the allowed IPv6 connection carries data");
    let mut s4 = connect(client, server.ip.into(), 8080);
    assert!(echoes(&mut s4, "before v4"), "the allowed IPv4 connection carries data");
    let revoked_before = counter(&f, "ct_reeval_deny");

    apply(&f, V4_ONLY);
    assert!(!echoes(&mut s6, "after"), "the IPv6 connection opened under the old policy is cut by the new one");
    assert!(counter(&f, "ct_reeval_deny") > revoked_before, "the revocation is counted");
    assert!(echoes(&mut s4, "after v4"), "the IPv4 connection is still allowed by the IPv4 block");
    assert!(!probe(client, server6, 8080, Protocol::Tcp, T), "a new IPv6 connection is denied");
    assert!(probe(client, server.ip, 8080, Protocol::Tcp, T), "a new IPv4 connection is allowed");

    // Back to the first policy: IPv6 works again, through a fresh connection.
    apply(&f, ALLOW);
    assert!(probe(client, server6, 8080, Protocol::Tcp, T), "IPv6 allowed again");
}
