//! The uplink pre-filter with real packets: a "node" network namespace whose interface to an
//! outside network gets the XDP program in driver mode; UDP datagrams from the outside side
//! are received or dropped as the deny list says, over IPv4 and IPv6, counted under their own
//! counters, and the filter survives the command that attached it (pinned link). Needs root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use bulkhead_agent::uplink;
use bulkhead_bench::DataplaneGuard;

/// Two network namespaces joined by a veth pair; removed on drop (also when the test panics).
struct Pair {
    outside: String,
    node: String,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("running ip");
    assert!(st.success(), "ip {}: {st}", args.join(" "));
}

impl Pair {
    /// The pair with IPv4 /24 and IPv6 /64 addresses on both ends (no duplicate address
    /// detection, so IPv6 is usable at once).
    fn new(tag: &str, outside_ip: &str, node_ip: &str, outside_ip6: &str, node_ip6: &str) -> Pair {
        let p = Pair { outside: format!("bhu-{tag}-o"), node: format!("bhu-{tag}-n") };
        ip(&["netns", "add", &p.outside]);
        ip(&["netns", "add", &p.node]);
        ip(&["link", "add", "up0", "netns", &p.node, "type", "veth", "peer", "name", "out0", "netns", &p.outside]);
        for (ns, dev, addr, addr6) in [(&p.outside, "out0", outside_ip, outside_ip6), (&p.node, "up0", node_ip, node_ip6)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "addr", "add", &format!("{addr6}/64"), "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        p
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.outside, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Sends `n` datagrams from the outside namespace to the node; returns how many arrived. A
/// first datagram, not counted, resolves the neighbour: datagrams queued behind an unresolved
/// neighbour beyond its small queue are lost, which once made a run count 19 of 20.
fn delivered(p: &Pair, from: impl Into<IpAddr>, to: impl Into<IpAddr>, n: usize) -> usize {
    let (from, to) = (from.into(), to.into());
    let rx = bulkhead_lab::netns::in_netns(&p.node, move || {
        let s = UdpSocket::bind(SocketAddr::from((to, 0))).expect("bind in node");
        s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        s
    })
    .expect("node netns");
    let port = rx.local_addr().expect("addr").port();
    let send = |count: usize| {
        bulkhead_lab::netns::in_netns(&p.outside, move || {
            let s = UdpSocket::bind(SocketAddr::from((from, 0))).expect("bind outside");
            for i in 0..count {
                s.send_to(format!("datagram {i}").as_bytes(), SocketAddr::from((to, port))).expect("send");
            }
        })
        .expect("outside netns")
    };
    let mut buf = [0u8; 64];
    send(1);
    let _ = rx.recv_from(&mut buf);
    send(n);
    let mut got = 0;
    while rx.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    got
}

#[test]
fn denied_sources_are_dropped_at_the_uplink_before_the_stack() {
    // SAFETY: trivial syscall.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (network namespaces, XDP); CI runs it as root");
    let tag = format!("{}", std::process::id() % 100_000);
    let (outside, node) = (Ipv4Addr::new(10, 79, 3, 1), Ipv4Addr::new(10, 79, 3, 2));
    let (outside6, node6) = (Ipv6Addr::new(0xfd00, 0x79, 3, 0, 0, 0, 0, 1), Ipv6Addr::new(0xfd00, 0x79, 3, 0, 0, 0, 0, 2));
    let pair = Pair::new(&tag, &outside.to_string(), &node.to_string(), &outside6.to_string(), &node6.to_string());
    let mut g = DataplaneGuard::load(&format!("bhu-{tag}"));
    let pins = g.dp().pin_dir().to_path_buf();
    let counter = |g: &DataplaneGuard, name: &str| -> u64 {
        let c = g.0.as_ref().expect("loaded").counters().expect("counters");
        c.iter().find(|(n, _)| n == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("no counter {name}"))
    };

    bulkhead_lab::netns::in_netns(&pair.node, || uplink::attach(&pins, "up0")).expect("node netns").expect("attach in driver mode");
    assert_eq!(uplink::attached(&pins), vec!["up0".to_string()]);
    assert_eq!(delivered(&pair, outside, node, 20), 20, "nothing denied yet: every datagram arrives");
    assert!(counter(&g, "uplink_pass") >= 20, "the filter saw the datagrams");

    // A prefix elsewhere changes nothing; the outside network's prefix drops everything from it.
    uplink::add(&pins, &[uplink::parse_prefix("192.0.2.0/24").expect("prefix")]).expect("add");
    assert_eq!(delivered(&pair, outside, node, 20), 20, "an unrelated prefix denied traffic");
    uplink::add(&pins, &[uplink::parse_prefix("10.79.3.0/24").expect("prefix")]).expect("add");
    let dropped_before = counter(&g, "uplink_drop_denied_source");
    assert_eq!(delivered(&pair, outside, node, 20), 0, "datagrams from a denied prefix reached the node");
    assert!(counter(&g, "uplink_drop_denied_source") - dropped_before >= 20, "drops not counted");
    let listed: Vec<String> = uplink::list(&pins).expect("list").iter().map(|n| n.to_string()).collect();
    assert_eq!(listed, vec!["10.79.3.0/24".to_string(), "192.0.2.0/24".to_string()]);

    // IPv6: the same, from the IPv6 list; an IPv4 prefix never denies IPv6 and the reverse.
    assert_eq!(delivered(&pair, outside6, node6, 20), 20, "IPv6 from the outside: nothing IPv6 denied yet");
    uplink::add(&pins, &[uplink::parse_prefix("fd00:79:3::/64").expect("prefix")]).expect("add IPv6");
    let dropped_before = counter(&g, "uplink_drop_denied_source");
    assert_eq!(delivered(&pair, outside6, node6, 20), 0, "IPv6 datagrams from a denied prefix reached the node");
    assert!(counter(&g, "uplink_drop_denied_source") - dropped_before >= 20, "IPv6 drops not counted");
    uplink::remove(&pins, &[uplink::parse_prefix("10.79.3.0/24").expect("prefix")]).expect("remove");
    assert_eq!(delivered(&pair, outside, node, 20), 20, "the IPv6 prefix denied IPv4");
    uplink::add(&pins, &[uplink::parse_prefix("10.79.3.0/24").expect("prefix")]).expect("add");
    let listed: Vec<String> = uplink::list(&pins).expect("list").iter().map(|n| n.to_string()).collect();
    assert_eq!(listed, vec!["10.79.3.0/24".to_string(), "192.0.2.0/24".to_string(), "fd00:79:3::/64".to_string()]);
    let missing = uplink::remove(&pins, &[uplink::parse_prefix("fd00:79:3::/64").expect("prefix")]).expect("remove IPv6");
    assert!(missing.is_empty());
    assert_eq!(delivered(&pair, outside6, node6, 20), 20, "removed from the IPv6 deny list: traffic flows again");

    // Attaching again replaces the program in place; the deny list stays in force.
    bulkhead_lab::netns::in_netns(&pair.node, || uplink::attach(&pins, "up0")).expect("node netns").expect("re-attach");
    assert_eq!(delivered(&pair, outside, node, 10), 0, "re-attach lost the deny list");

    let missing = uplink::remove(&pins, &[uplink::parse_prefix("10.79.3.0/24").expect("prefix")]).expect("remove");
    assert!(missing.is_empty());
    assert_eq!(delivered(&pair, outside, node, 20), 20, "removed from the deny list: traffic flows again");

    assert!(uplink::detach(&pins, "up0"), "detach");
    assert!(uplink::attached(&pins).is_empty());
    uplink::add(&pins, &[uplink::parse_prefix("10.79.3.0/24").expect("prefix")]).expect("add");
    assert_eq!(delivered(&pair, outside, node, 20), 20, "detached: the deny list no longer applies");
}

#[test]
fn bad_prefixes_are_refused_naming_the_value() {
    for (text, want) in [("10.0.0.1/8", "host bits"), ("10.0.0.0/33", "10.0.0.0/33"), ("not-an-ip", "not-an-ip"), ("2001:db8::1/32", "host bits"), ("2001:db8::/129", "2001:db8::/129")] {
        let e = uplink::parse_prefix(text).expect_err(text).to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
    assert_eq!(uplink::parse_prefix("203.0.113.7").expect("address").to_string(), "203.0.113.7/32");
    assert_eq!(uplink::parse_prefix("2001:db8::7").expect("address").to_string(), "2001:db8::7/128");
}
