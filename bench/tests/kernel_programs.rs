//! The real TC programs run through BPF_PROG_TEST_RUN on hand-built frames, with an endpoint
//! written as the agent writes it: anti-spoofing, IPv4 options up to IHL 15, and ICMP errors
//! passing only when they quote a tracked flow; for IPv6 the same plus extension headers up to
//! the bound, fragments, and neighbour discovery. Needs root (loads BPF programs).

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use bulkhead_agent::loader::{Dataplane, programs};
use bulkhead_bench::DataplaneGuard;
use bulkhead_bench::packet::{
    NH_DEST_OPTS, NH_FRAGMENT, NH_HOP_BY_HOP, NH_ROUTING, TCP_ACK, TCP_SYN, icmp6_error_frame, icmp6_frame, icmp_error_frame, tcp6_frame, tcp_frame,
    with_ext_headers, with_ip_options,
};
use bulkhead_common::{ConfigV2, EndpointV4, FlowEventV5, capacity, counters, direction, flow_kind, identity};

/// test_run gives TC programs an skb on the loopback device.
const IFINDEX: u32 = 1;
const RET_DROP: u32 = 2;
const RET_PASS: u32 = u32::MAX;
const POD: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 31, 0, 9);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 30, 0, 254);
/// The endpoint's IPv6 address, a peer's, a router's, and the pod's link-local address.
const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 9);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 0xfe);
const POD6_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x1234);

/// A loaded dataplane in its own pin folder (unloaded on drop, also when a test panics) with
/// one endpoint as the agent writes it.
struct Guard(DataplaneGuard);

impl Guard {
    fn new(tag: &str) -> Guard {
        // SAFETY: trivial syscall.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (loads BPF programs); CI runs it as root");
        let mut g = DataplaneGuard::load(&format!("bhk-{tag}-{}", std::process::id()));
        // Not isolated by any policy: everything the programs do not refuse is allowed.
        let ep = EndpointV4 { identity: [identity::FIRST_ALLOCATED; 2], flags: [0; 2], ipv4_be: POD.octets(), present: 1, identity6: [identity::FIRST_ALLOCATED; 2], ipv6_be: POD6.octets() };
        g.dp().maps.endpoints.insert(IFINDEX, ep).expect("endpoint");
        g.dp().maps.config.set(0, ConfigV2::with_default_timeouts(1), 0).expect("config");
        Guard(g)
    }

    fn dp(&mut self) -> &mut Dataplane {
        self.0.dp()
    }

    fn run(&mut self, prog: &str, frame: &[u8]) -> u32 {
        self.run_n(prog, frame, 1)
    }

    /// Flow events waiting in the ring.
    fn events(&mut self) -> Vec<FlowEventV5> {
        self.dp().maps.flows.as_mut().expect("flow ring").read_all()
    }

    fn run_n(&mut self, prog: &str, frame: &[u8], repeat: u32) -> u32 {
        let p = self.dp().classifier(prog).expect("program");
        p.test_run(TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() }).expect("BPF_PROG_TEST_RUN").return_value
    }

    fn counter(&self, name: &str) -> u64 {
        let c = self.0.0.as_ref().expect("loaded").counters().expect("counters");
        c.iter().find(|(n, _)| n == name).map(|(_, v)| *v).unwrap_or_else(|| panic!("no counter {name}"))
    }
}

#[test]
fn a_spoofed_source_leaving_the_pod_is_dropped_by_tc() {
    let mut g = Guard::new("spoof");
    let spoofed = tcp_frame(Ipv4Addr::new(10, 30, 0, 77), PEER, 40000, 80, TCP_SYN);
    assert_eq!(g.run(programs::FROM_POD, &spoofed), RET_DROP, "spoofed source must be dropped");
    assert_eq!(g.counter("drop_spoofed_source_fail_closed"), 1);
    let own = tcp_frame(POD, PEER, 40000, 80, TCP_SYN);
    assert_eq!(g.run(programs::FROM_POD, &own), RET_PASS, "the pod's own source passes");
    // Towards the pod any source is fine: the check is on what the pod sends.
    let inbound = tcp_frame(Ipv4Addr::new(10, 30, 0, 77), POD, 40000, 80, TCP_SYN);
    assert_eq!(g.run(programs::TO_POD, &inbound), RET_PASS);
}

/// `struct __sk_buff` for BPF_PROG_TEST_RUN's ctx_in: all zero (the kernel refuses most
/// fields) but `ifindex` (offset 40), which makes the skb's device that interface.
fn skb_ctx(ifindex: u32) -> [u8; 192] {
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

#[test]
fn an_endpoint_above_the_array_bound_is_found_through_the_hash() {
    // Interface indexes grow with every interface a node ever created, so a busy node passes
    // the array's bound. A fresh network namespace on a thread of its own (gone with the
    // thread, and its veth pair with it) lends test_run a device with such an index.
    const BIG: u32 = capacity::IFINDEX_DIRECT + 4_464;
    let t = std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread, which ends with the test.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        let st = std::process::Command::new("ip")
            .args(["link", "add", "bhk-bigif", "index", &BIG.to_string(), "type", "veth", "peer", "name", "bhk-bigp"])
            .status()
            .expect("running ip");
        assert!(st.success(), "ip link add ... index {BIG}: {st}");
        let mut g = Guard::new("bigif");
        let own = tcp_frame(POD, PEER, 40000, 80, TCP_SYN);
        let ctx = skb_ctx(BIG);
        let run = |g: &mut Guard| {
            let p = g.dp().classifier(programs::FROM_POD).expect("program");
            p.test_run(TestRunOptions { data_in: Some(&own), ctx_in: Some(&ctx), ..TestRunOptions::new() }).expect("BPF_PROG_TEST_RUN").return_value
        };
        assert_eq!(run(&mut g), RET_DROP, "no endpoint at ifindex {BIG} yet: fails closed");
        assert_eq!(g.counter("drop_no_endpoint_fail_closed"), 1);
        let ep = EndpointV4 { identity: [identity::FIRST_ALLOCATED; 2], flags: [0; 2], ipv4_be: POD.octets(), present: 1, identity6: [identity::FIRST_ALLOCATED; 2], ipv6_be: [0; 16] };
        g.dp().maps.endpoints.insert(BIG, ep).expect("endpoint above the bound");
        assert_eq!(g.dp().maps.endpoints.get(BIG).expect("read back"), Some(ep));
        assert!(g.dp().maps.endpoints.ifindexes().expect("list").contains(&BIG), "listed with the array's endpoints");
        assert_eq!(run(&mut g), RET_PASS, "the endpoint at ifindex {BIG} is found");
        // Isolation of such an endpoint lives in the hash half of the isolation table too.
        let iso = bulkhead_common::detect::IsolationV1 { since_ns: 1, cgroup_id: 7, reason: 1, _pad: 0 };
        g.dp().maps.det.isolation.insert(BIG, iso).expect("isolate above the bound");
        assert_eq!(run(&mut g), RET_DROP, "isolated endpoint at ifindex {BIG}");
        assert_eq!(g.counter("drop_isolated_fail_closed"), 1);
        g.dp().maps.det.isolation.remove(BIG).expect("release");
        assert_eq!(run(&mut g), RET_PASS, "released");
        g.dp().maps.endpoints.remove(BIG).expect("remove");
        assert_eq!(run(&mut g), RET_DROP, "removed: fails closed again");
        assert_eq!(g.counter("drop_no_endpoint_fail_closed"), 2);
    });
    t.join().expect("the test thread panicked");
}

#[test]
fn ipv4_options_up_to_the_longest_header_are_parsed() {
    let mut g = Guard::new("opts");
    for words in [1u8, 4, 10] {
        let f = with_ip_options(&tcp_frame(POD, PEER, 40000 + u16::from(words), 80, TCP_SYN), words);
        assert_eq!(g.run(programs::FROM_POD, &f), RET_PASS, "IHL {} must pass", 5 + words);
        // Options must not hide a spoofed source either.
        let spoofed = with_ip_options(&tcp_frame(PEER, PEER, 40000, 80, TCP_SYN), words);
        assert_eq!(g.run(programs::FROM_POD, &spoofed), RET_DROP, "IHL {} spoofed", 5 + words);
    }
    assert_eq!(g.counter("drop_malformed_fail_closed"), 0, "no frame with options counted as malformed");
    // Shorter than its own IHL claims: malformed, fail-closed.
    let mut cut = with_ip_options(&tcp_frame(POD, PEER, 41000, 80, TCP_SYN), 10);
    cut.truncate(14 + 60 + 4);
    assert_eq!(g.run(programs::FROM_POD, &cut), RET_DROP);
    assert_eq!(g.counter("drop_malformed_fail_closed"), 1);
}

#[test]
fn icmp_errors_pass_only_when_they_quote_a_tracked_flow() {
    let mut g = Guard::new("icmp");
    let syn = tcp_frame(POD, PEER, 43000, 8080, TCP_SYN);
    // Fragmentation needed for a flow that was never seen: dropped, counted.
    let untracked = icmp_error_frame(ROUTER, POD, 3, 4, &syn);
    assert_eq!(g.run(programs::TO_POD, &untracked), RET_DROP, "an error quoting no flow must be dropped");
    assert_eq!(g.counter("drop_icmp_unrelated_fail_closed"), 1);
    // The pod opens the flow; now the same error is related and passes.
    assert_eq!(g.run(programs::FROM_POD, &syn), RET_PASS);
    assert_eq!(g.run(programs::TO_POD, &untracked), RET_PASS, "an error quoting the tracked flow passes");
    assert_eq!(g.counter("pass_icmp_related"), 1);
    // Time exceeded quoting the flow's reply direction (the pod's peer answering) passes too.
    let reply = tcp_frame(PEER, POD, 8080, 43000, 0x12);
    assert_eq!(g.run(programs::TO_POD, &icmp_error_frame(ROUTER, POD, 11, 0, &reply)), RET_PASS);
    // The pod itself reporting an error about a tracked flow (port unreachable) passes out.
    assert_eq!(g.run(programs::FROM_POD, &icmp_error_frame(POD, PEER, 3, 3, &reply)), RET_PASS);
    // ... but not with a spoofed outer source.
    assert_eq!(g.run(programs::FROM_POD, &icmp_error_frame(ROUTER, PEER, 3, 3, &reply)), RET_DROP);
    // An error quoting another port of the same peer is not related.
    let other = tcp_frame(POD, PEER, 43000, 9090, TCP_SYN);
    assert_eq!(g.run(programs::TO_POD, &icmp_error_frame(ROUTER, POD, 3, 4, &other)), RET_DROP);
    // An error about an error is never related.
    let err_about_err = icmp_error_frame(ROUTER, POD, 3, 1, &icmp_error_frame(POD, PEER, 3, 3, &reply));
    assert_eq!(g.run(programs::TO_POD, &err_about_err), RET_DROP);
    assert_eq!(g.counter("pass_icmp_related"), 3);
    assert_eq!(g.counter("drop_icmp_unrelated_fail_closed"), 3);
}

#[test]
fn drops_are_reported_with_tuple_identities_direction_and_reason_within_a_budget() {
    let mut g = Guard::new("dropev");
    let spoofed = tcp_frame(Ipv4Addr::new(10, 30, 0, 77), PEER, 40001, 80, TCP_SYN);
    assert_eq!(g.run(programs::FROM_POD, &spoofed), RET_DROP);
    let ev = g.events();
    assert_eq!(ev.len(), 1, "one drop, one event: {ev:?}");
    let e = ev[0];
    assert_eq!((e.kind, e.direction, e.drop_reason), (flow_kind::DROPPED, direction::EGRESS, counters::DROP_SPOOFED as u16));
    assert_eq!((e.family, e.saddr(), e.daddr(), u16::from_be_bytes(e.sport_be), u16::from_be_bytes(e.dport_be)), (4, Some(std::net::Ipv4Addr::new(10, 30, 0, 77).into()), Some(PEER.into()), 40001, 80));
    assert_eq!((e.local_identity, e.peer_identity), (identity::FIRST_ALLOCATED, identity::WORLD), "both identities");
    assert!(bulkhead_common::tcp_opens(e.tcp_flags), "the event carries the packet's TCP flags (a bare SYN): {:#x}", e.tcp_flags);
    let mid = tcp_frame(Ipv4Addr::new(10, 30, 0, 77), PEER, 40002, 80, bulkhead_bench::packet::TCP_ACK);
    assert_eq!(g.run(programs::FROM_POD, &mid), RET_DROP);
    let ev = g.events();
    assert!(!bulkhead_common::tcp_opens(ev[0].tcp_flags), "an ACK is no opening packet: {:#x}", ev[0].tcp_flags);
    // An unparseable frame (an IPv4 header behind the IPv6 ethertype) is reported too,
    // without a tuple (family 0).
    let mut v6 = tcp_frame(POD, PEER, 1, 2, TCP_SYN);
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(g.run(programs::TO_POD, &v6), RET_DROP);
    let ev = g.events();
    assert_eq!((ev[0].drop_reason, ev[0].direction), (counters::DROP_IPV6_UNPARSED as u16, direction::INGRESS), "{ev:?}");

    // A flood: every drop counted, events bounded by the per-CPU budget, the rest counted.
    let before = g.counter("drop_spoofed_source_fail_closed");
    assert_eq!(g.run_n(programs::FROM_POD, &spoofed, 5000), RET_DROP);
    assert_eq!(g.counter("drop_spoofed_source_fail_closed") - before, 5000, "every drop counted");
    let sent = g.events().len() as u64;
    let limited = g.counter("drop_events_rate_limited");
    assert!(sent <= u64::from(capacity::DROP_EVENTS_PER_SEC_PER_CPU), "events bounded: {sent}");
    assert_eq!(sent + limited, 5000, "every drop either reported or counted as rate-limited");
}

/// `frame` with its L4 cut after `keep` bytes of IPv4 payload (lengths left as they were).
fn cut_l4(frame: &[u8], keep: usize) -> Vec<u8> {
    frame[..34 + keep].to_vec()
}

#[test]
fn every_parse_failure_fails_closed_under_its_own_reason() {
    let mut g = Guard::new("parse");
    let good = tcp_frame(POD, PEER, 40000, 80, TCP_SYN);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // (A frame shorter than an IPv4 header cannot be tested here: BPF_PROG_TEST_RUN refuses
        // it with EINVAL. A header shorter than its IHL is in the IP options test.)
        ("IP version 6 in an IPv4 frame", with(&|v| v[14] = 0x65), "drop_malformed_fail_closed"),
        ("IHL below 5", with(&|v| v[14] = 0x44), "drop_malformed_fail_closed"),
        ("TCP header cut short", cut_l4(&good, 10), "drop_malformed_fail_closed"),
        ("non-first fragment", with(&|v| v[20..22].copy_from_slice(&0x0010u16.to_be_bytes())), "drop_fragment_fail_closed"),
        ("VLAN-tagged frame", with(&|v| v[12..14].copy_from_slice(&[0x81, 0x00])), "drop_unknown_l2_fail_closed"),
        ("IPv6 ethertype with an IPv4 header", with(&|v| v[12..14].copy_from_slice(&[0x86, 0xdd])), "drop_ipv6_unparsed_fail_closed"),
        ("ICMP error with a cut quote", cut_l4(&icmp_error_frame(ROUTER, POD, 3, 4, &good), 8 + 12), "drop_malformed_fail_closed"),
    ];
    for (what, frame, counter) in cases {
        let before = g.counter(counter);
        let prog = if what.starts_with("ICMP") { programs::TO_POD } else { programs::FROM_POD };
        let p = g.dp().classifier(prog).expect("program");
        let r = p.test_run(TestRunOptions { data_in: Some(&frame), repeat: 1, ..TestRunOptions::new() });
        let r = r.unwrap_or_else(|e| panic!("{what}: BPF_PROG_TEST_RUN: {e:?}")).return_value;
        assert_eq!(r, RET_DROP, "{what} must be dropped");
        assert_eq!(g.counter(counter), before + 1, "{what} counted as {counter}");
    }
    // ARP passes (pods need their gateway), counted.
    let arp = with(&|v| v[12..14].copy_from_slice(&[0x08, 0x06]));
    assert_eq!(g.run(programs::FROM_POD, &arp), RET_PASS);
    assert_eq!(g.counter("pass_arp"), 1);
    // A packet on an interface without an endpoint entry fails closed.
    g.dp().maps.endpoints.remove(IFINDEX).expect("remove endpoint");
    assert_eq!(g.run(programs::FROM_POD, &good), RET_DROP);
    assert_eq!(g.counter("drop_no_endpoint_fail_closed"), 1);
}

#[test]
fn conntrack_passes_replies_and_isolation_stops_established_flows_except_the_allow_list() {
    use bulkhead_common::detect::{AllowKeyV2, IsolationV1};
    let mut g = Guard::new("ct-iso");
    // Out and back: the reply of a tracked flow is allowed by conntrack.
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, PEER, 45000, 443, TCP_SYN)), RET_PASS);
    assert_eq!(g.run(programs::TO_POD, &tcp_frame(PEER, POD, 443, 45000, 0x12)), RET_PASS);
    assert_eq!(g.counter("allow_conntrack"), 1, "the reply went through conntrack");
    let dns_out = bulkhead_bench::packet::tcp_frame(POD, ROUTER, 45001, 53, TCP_SYN);
    // Isolated: the established flow stops in both directions; the allow-listed DNS passes.
    g.dp().maps.det.isolation.insert(IFINDEX, IsolationV1 { since_ns: 1, cgroup_id: 7, reason: 1, _pad: 0 }).expect("isolate");
    let allow = AllowKeyV2 { ifindex: IFINDEX, addr_be: ROUTER.octets(), port_be: 53u16.to_be_bytes(), protocol: 6, _pad: 0 };
    g.dp().maps.det.isolation_allow.insert(allow, 1, 0).expect("allow-list");
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, PEER, 45000, 443, 0x10)), RET_DROP, "established flow out stops");
    assert_eq!(g.run(programs::TO_POD, &tcp_frame(PEER, POD, 443, 45000, 0x10)), RET_DROP, "established flow in stops");
    assert_eq!(g.counter("drop_isolated_fail_closed"), 2);
    assert_eq!(g.run(programs::FROM_POD, &dns_out), RET_PASS, "the allow-list still reaches DNS");
    assert_eq!(g.counter("pass_isolation_allowlist"), 1);
    let ev = g.events();
    assert!(ev.iter().filter(|e| e.drop_reason == counters::DROP_ISOLATED as u16).count() == 2, "isolation drops reported: {ev:?}");
    // Released: the flow resumes.
    g.dp().maps.det.isolation.remove(IFINDEX).expect("release");
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, PEER, 45000, 443, 0x10)), RET_PASS);
}

#[test]
fn ipv6_anti_spoofing_allows_the_pods_own_and_link_local_sources_only_and_an_ipv6_only_pod_no_ipv4() {
    let mut g = Guard::new("spoof6");
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, PEER6, 40000, 80, TCP_SYN)), RET_PASS, "the pod's own IPv6 source");
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6_LL, PEER6, 40001, 80, TCP_SYN)), RET_PASS, "a link-local source stays on the link");
    let other = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 2);
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(other, PEER6, 40002, 80, TCP_SYN)), RET_DROP, "another global source");
    // The IPv4 address mapped into IPv6 is not the pod's IPv6 address either.
    let mapped = POD.to_ipv6_mapped();
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(mapped, PEER6, 40003, 80, TCP_SYN)), RET_DROP, "{mapped}");
    // Extension headers must not hide a spoofed source.
    let hidden = with_ext_headers(&tcp6_frame(other, PEER6, 40004, 80, TCP_SYN), &[NH_HOP_BY_HOP, NH_DEST_OPTS], 0);
    assert_eq!(g.run(programs::FROM_POD, &hidden), RET_DROP, "spoofed behind extension headers");
    assert_eq!(g.counter("drop_spoofed_source_fail_closed"), 3);
    // The drop is reported as an IPv6 event with both addresses.
    let ev = g.events();
    let e = ev.last().copied().unwrap_or_else(|| panic!("no drop event: {ev:?}"));
    assert_eq!((e.family, e.saddr(), e.daddr(), e.drop_reason), (6, Some(other.into()), Some(PEER6.into()), counters::DROP_SPOOFED as u16), "{e:?}");
    assert_eq!(e.peer_identity, identity::WORLD6, "an IPv6 address outside every pod and prefix is WORLD6");
    // An IPv6-only endpoint (no IPv4 address: 0.0.0.0 in its entry) sends no IPv4 at all,
    // not even from 0.0.0.0; its IPv6 passes.
    let ep = EndpointV4 { ipv4_be: [0; 4], ..g.dp().maps.endpoints.get(IFINDEX).expect("read").expect("present") };
    g.dp().maps.endpoints.insert(IFINDEX, ep).expect("IPv6-only endpoint");
    let before = g.counter("drop_spoofed_source_fail_closed");
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(Ipv4Addr::UNSPECIFIED, PEER, 40005, 80, TCP_SYN)), RET_DROP, "IPv4 from 0.0.0.0");
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, PEER, 40006, 80, TCP_SYN)), RET_DROP, "IPv4 from its former address");
    assert_eq!(g.counter("drop_spoofed_source_fail_closed"), before + 2);
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, PEER6, 40007, 80, TCP_SYN)), RET_PASS, "its IPv6");
}

#[test]
fn ipv6_extension_headers_are_walked_up_to_the_bound_and_later_fragments_fail_closed() {
    let mut g = Guard::new("ext6");
    let chains: [&[u8]; 4] = [&[NH_HOP_BY_HOP], &[NH_HOP_BY_HOP, NH_DEST_OPTS], &[NH_HOP_BY_HOP, NH_ROUTING, NH_DEST_OPTS], &[NH_HOP_BY_HOP, NH_ROUTING, NH_DEST_OPTS, NH_FRAGMENT]];
    for (i, chain) in chains.iter().enumerate() {
        let f = with_ext_headers(&tcp6_frame(POD6, PEER6, 41000 + i as u16, 80, TCP_SYN), chain, 0);
        assert_eq!(g.run(programs::FROM_POD, &f), RET_PASS, "chain {chain:?} (a first fragment is judged on its ports)");
    }
    // The judged ports are the transport header's: the flow of the four-header SYN is tracked,
    // so its peer's answer (no extension headers) passes by conntrack.
    let before = g.counter("allow_conntrack");
    assert_eq!(g.run(programs::TO_POD, &tcp6_frame(PEER6, POD6, 80, 41003, 0x12)), RET_PASS);
    assert_eq!(g.counter("allow_conntrack"), before + 1, "the answer found the flow opened behind four extension headers");
    // The kernel writes the key user space computes (gc, revocation and `status` read it):
    // both ends ordered the same way, whichever side sent first.
    for (a, ap, b, bp) in [(POD6, 41003u16, PEER6, 80u16), (PEER6, 80, POD6, 41003)] {
        let k = bulkhead_common::Ct6KeyV1::of(IFINDEX, a.octets(), ap.to_be_bytes(), b.octets(), bp.to_be_bytes(), 6);
        assert!(g.dp().maps.conntrack6.get(&k).is_some(), "no conntrack entry under the user-space key {k:?}");
    }
    // A peer whose address sorts below the pod's: the other order of the key.
    let low = Ipv6Addr::new(0xfd00, 0x1, 0, 0, 0, 0, 0, 1);
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, low, 41020, 80, TCP_SYN)), RET_PASS);
    let k = bulkhead_common::Ct6KeyV1::of(IFINDEX, POD6.octets(), 41020u16.to_be_bytes(), low.octets(), 80u16.to_be_bytes(), 6);
    assert_eq!(k.addr_lo_be, low.octets(), "the lower address first");
    assert!(g.dp().maps.conntrack6.get(&k).is_some(), "no conntrack entry under {k:?}");
    // One header past the bound: not parsed, dropped, counted.
    let five = with_ext_headers(&tcp6_frame(POD6, PEER6, 41010, 80, TCP_SYN), &[NH_HOP_BY_HOP, NH_DEST_OPTS, NH_ROUTING, NH_DEST_OPTS, NH_FRAGMENT], 0);
    assert_eq!(g.run(programs::FROM_POD, &five), RET_DROP, "five extension headers");
    assert_eq!(g.counter("drop_ipv6_unparsed_fail_closed"), 1);
    // A later fragment carries no ports: dropped under its own reason, in both directions.
    let later = with_ext_headers(&tcp6_frame(POD6, PEER6, 41011, 80, TCP_ACK), &[NH_FRAGMENT], 185);
    assert_eq!(g.run(programs::FROM_POD, &later), RET_DROP, "non-first fragment out");
    let later_in = with_ext_headers(&tcp6_frame(PEER6, POD6, 80, 41003, TCP_ACK), &[NH_DEST_OPTS, NH_FRAGMENT], 1);
    assert_eq!(g.run(programs::TO_POD, &later_in), RET_DROP, "non-first fragment in");
    assert_eq!(g.counter("drop_fragment_fail_closed"), 2);
    // An IPv6 header whose version field says 4: dropped as unparsed.
    let mut bad = tcp6_frame(POD6, PEER6, 41012, 80, TCP_SYN);
    bad[14] = 0x40;
    assert_eq!(g.run(programs::FROM_POD, &bad), RET_DROP);
    assert_eq!(g.counter("drop_ipv6_unparsed_fail_closed"), 2);
    assert_eq!(g.counter("drop_malformed_fail_closed"), 0, "none of these counted as malformed");
}

#[test]
fn neighbour_discovery_and_mld_pass_only_with_their_link_local_hop_limits() {
    let mut g = Guard::new("nd6");
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0xfe);
    let target = ROUTER6.octets();
    // Neighbour solicitation from the pod's link-local address, router solicitation, and the
    // router's neighbour advertisement towards the pod: hop limit 255, as RFC 4861 demands.
    let ns = icmp6_frame(POD6_LL, solicited, 255, 135, 0, &[&[0u8; 4][..], &target].concat());
    let rs = icmp6_frame(POD6_LL, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), 255, 133, 0, &[0; 4]);
    let na = icmp6_frame(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1), POD6_LL, 255, 136, 0, &[&[0x60u8, 0, 0, 0][..], &target].concat());
    assert_eq!(g.run(programs::FROM_POD, &ns), RET_PASS, "neighbour solicitation");
    assert_eq!(g.run(programs::FROM_POD, &rs), RET_PASS, "router solicitation");
    assert_eq!(g.run(programs::TO_POD, &na), RET_PASS, "neighbour advertisement");
    // MLD listener report (v2) at hop limit 1.
    let mld = icmp6_frame(POD6_LL, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16), 1, 143, 0, &[0; 4]);
    assert_eq!(g.run(programs::FROM_POD, &mld), RET_PASS, "MLDv2 report");
    assert_eq!(g.counter("pass_icmpv6_nd"), 4);
    // The same messages with a forwarded hop limit come from off the link: dropped, counted.
    let forwarded_na = icmp6_frame(PEER6, POD6, 64, 136, 0, &[&[0x60u8, 0, 0, 0][..], &target].concat());
    assert_eq!(g.run(programs::TO_POD, &forwarded_na), RET_DROP, "advertisement at hop limit 64");
    let forwarded_ra = icmp6_frame(PEER6, all_nodes, 254, 134, 0, &[0; 12]);
    assert_eq!(g.run(programs::TO_POD, &forwarded_ra), RET_DROP, "router advertisement at hop limit 254");
    let mld_far = icmp6_frame(POD6_LL, Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16), 2, 143, 0, &[0; 4]);
    assert_eq!(g.run(programs::FROM_POD, &mld_far), RET_DROP, "MLD report at hop limit 2");
    assert_eq!(g.counter("drop_icmpv6_nd_forwarded_fail_closed"), 3);
    assert_eq!(g.counter("pass_icmpv6_nd"), 4, "no forwarded message passed as neighbour discovery");
}

#[test]
fn icmpv6_errors_pass_only_when_they_quote_a_tracked_flow() {
    let mut g = Guard::new("icmp6");
    let syn = tcp6_frame(POD6, PEER6, 43000, 8080, TCP_SYN);
    // Packet too big for a flow that was never seen: dropped, counted.
    let too_big = icmp6_error_frame(ROUTER6, POD6, 2, 0, &syn);
    assert_eq!(g.run(programs::TO_POD, &too_big), RET_DROP, "an error quoting no flow must be dropped");
    assert_eq!(g.counter("drop_icmp_unrelated_fail_closed"), 1);
    // The pod opens the flow; the same error is related now and passes.
    assert_eq!(g.run(programs::FROM_POD, &syn), RET_PASS);
    assert_eq!(g.run(programs::TO_POD, &too_big), RET_PASS, "packet too big quoting the tracked flow");
    // Destination unreachable quoting the flow's reply direction passes too, and so does one
    // whose quote carries extension headers before the transport header.
    let reply = tcp6_frame(PEER6, POD6, 8080, 43000, 0x12);
    assert_eq!(g.run(programs::TO_POD, &icmp6_error_frame(ROUTER6, POD6, 1, 3, &reply)), RET_PASS, "unreachable quoting the reply");
    let quoted_ext = with_ext_headers(&syn, &[NH_DEST_OPTS], 0);
    assert_eq!(g.run(programs::TO_POD, &icmp6_error_frame(ROUTER6, POD6, 3, 0, &quoted_ext)), RET_PASS, "time exceeded quoting a packet with a destination-options header");
    assert_eq!(g.counter("pass_icmp_related"), 3);
    // The pod reporting an error about the tracked flow passes out; from a spoofed source not.
    assert_eq!(g.run(programs::FROM_POD, &icmp6_error_frame(POD6, PEER6, 1, 4, &reply)), RET_PASS);
    assert_eq!(g.run(programs::FROM_POD, &icmp6_error_frame(ROUTER6, PEER6, 1, 4, &reply)), RET_DROP, "spoofed outer source");
    // Another port of the same peer is not related; an error about an error never is.
    let other = tcp6_frame(POD6, PEER6, 43000, 9090, TCP_SYN);
    assert_eq!(g.run(programs::TO_POD, &icmp6_error_frame(ROUTER6, POD6, 2, 0, &other)), RET_DROP, "another port");
    let err_about_err = icmp6_error_frame(ROUTER6, POD6, 1, 0, &icmp6_error_frame(POD6, PEER6, 1, 4, &reply));
    assert_eq!(g.run(programs::TO_POD, &err_about_err), RET_DROP, "an error about an error");
    assert_eq!(g.counter("drop_icmp_unrelated_fail_closed"), 3);
    // Echo is judged like ICMP echo: the request opens a flow, the reply passes by conntrack.
    let echo = |s: Ipv6Addr, d: Ipv6Addr, ty: u8| icmp6_frame(s, d, 64, ty, 0, &[0x12, 0x34, 0, 1]);
    assert_eq!(g.run(programs::FROM_POD, &echo(POD6, PEER6, 128)), RET_PASS, "echo request");
    let before = g.counter("allow_conntrack");
    assert_eq!(g.run(programs::TO_POD, &echo(PEER6, POD6, 129)), RET_PASS, "echo reply");
    assert_eq!(g.counter("allow_conntrack"), before + 1, "the echo reply went through conntrack");
}

#[test]
fn an_isolated_endpoint_stops_its_ipv6_flows_except_its_ipv6_allow_list() {
    use bulkhead_common::detect::IsolationV1;
    let mut g = Guard::new("iso6");
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, PEER6, 45000, 443, TCP_SYN)), RET_PASS);
    assert_eq!(g.run(programs::TO_POD, &tcp6_frame(PEER6, POD6, 443, 45000, 0x12)), RET_PASS);
    g.dp().maps.det.isolation.insert(IFINDEX, IsolationV1 { since_ns: 1, cgroup_id: 7, reason: 1, _pad: 0 }).expect("isolate");
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, PEER6, 45000, 443, TCP_ACK)), RET_DROP, "established IPv6 flow out stops");
    assert_eq!(g.run(programs::TO_POD, &tcp6_frame(PEER6, POD6, 443, 45000, TCP_ACK)), RET_DROP, "established IPv6 flow in stops");
    assert_eq!(g.counter("drop_isolated_fail_closed"), 2);
    // The allow-list's exact IPv6 entries: this endpoint's DNS server, and one for every
    // isolated endpoint; an IPv4 entry of the same port does not open IPv6.
    use bulkhead_common::detect::{AllowKey6V1, AllowKeyV2};
    let dns6 = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 0x35);
    let ntp6 = Ipv6Addr::new(0xfd00, 0x30, 0, 0, 0, 0, 0, 0x7b);
    g.dp().maps.det.isolation_allow6.insert(AllowKey6V1 { ifindex: IFINDEX, addr_be: dns6.octets(), port_be: 53u16.to_be_bytes(), protocol: 6, _pad: 0 }, 1, 0).expect("allow-list");
    g.dp().maps.det.isolation_allow6.insert(AllowKey6V1 { ifindex: 0, addr_be: ntp6.octets(), port_be: 123u16.to_be_bytes(), protocol: 6, _pad: 0 }, 1, 0).expect("allow-list");
    g.dp().maps.det.isolation_allow.insert(AllowKeyV2 { ifindex: IFINDEX, addr_be: ROUTER.octets(), port_be: 853u16.to_be_bytes(), protocol: 6, _pad: 0 }, 1, 0).expect("allow-list");
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, dns6, 45001, 53, TCP_SYN)), RET_PASS, "this endpoint's IPv6 entry");
    assert_eq!(g.run(programs::TO_POD, &tcp6_frame(dns6, POD6, 53, 45001, 0x12)), RET_PASS, "its answer");
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, ntp6, 45002, 123, TCP_SYN)), RET_PASS, "the entry for every endpoint");
    assert_eq!(g.counter("pass_isolation_allowlist"), 3);
    for (what, frame) in [
        ("another address, same port", tcp6_frame(POD6, PEER6, 45003, 53, TCP_SYN)),
        ("the allowed address, another port", tcp6_frame(POD6, dns6, 45004, 54, TCP_SYN)),
        ("the port of an IPv4 entry", tcp6_frame(POD6, ROUTER6, 45005, 853, TCP_SYN)),
    ] {
        assert_eq!(g.run(programs::FROM_POD, &frame), RET_DROP, "{what}");
    }
    assert_eq!(g.counter("drop_isolated_fail_closed"), 5);
    // Any-address entries (IPv4 keys with 0.0.0.0) cover IPv6 too.
    g.dp().maps.det.isolation_allow.insert(AllowKeyV2 { ifindex: IFINDEX, addr_be: [0; 4], port_be: 54u16.to_be_bytes(), protocol: 6, _pad: 0 }, 1, 0).expect("allow-list");
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, dns6, 45006, 54, TCP_SYN)), RET_PASS, "any-address entry");
    g.dp().maps.det.isolation.remove(IFINDEX).expect("release");
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, PEER6, 45000, 443, TCP_ACK)), RET_PASS, "released");
}

#[test]
fn protect_mode_drops_an_unlearned_new_flow_before_it_leaves_and_isolates_in_tc() {
    use bulkhead_common::detect::{isolation_reason, watch_flags};
    let mut g = Guard::new("learned");
    // The agent's keys: what TC looks up must be what the agent writes.
    let key = |addr: std::net::IpAddr, port: u16, protocol: u8| bulkhead_agent::detect::learned::key(IFINDEX, addr, port, protocol);
    // The profile: PEER on TCP 443 (both families), the peer entries beside.
    for k in [key(PEER.into(), 443, 6), key(PEER.into(), 0, 0), key(PEER6.into(), 443, 6), key(PEER6.into(), 0, 0)] {
        g.dp().maps.det.learned.insert(k, 1, 0).expect("learned entry");
    }
    // Report only (learn, monitor, or protect without isolating network findings): nothing dropped.
    g.dp().maps.flow_watch.set(IFINDEX, watch_flags::REPORT, 0).expect("watch");
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, ROUTER, 40000, 80, TCP_SYN)), RET_PASS, "monitor mode observes only");
    // New peers isolate: a learned destination passes, a new port of the learned peer too.
    g.dp().maps.flow_watch.set(IFINDEX, watch_flags::REPORT | watch_flags::DROP_NEW_PEER, 0).expect("watch");
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, PEER, 40001, 443, TCP_SYN)), RET_PASS, "learned destination");
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, PEER6, 40001, 443, TCP_SYN)), RET_PASS, "learned IPv6 destination");
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, PEER, 40002, 22, TCP_SYN)), RET_PASS, "a new port alone does not drop without DROP_NEW_PORT");
    // A packet picked up mid-stream is not an opening: not judged here.
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, ROUTER, 40003, 80, TCP_ACK)), RET_PASS, "mid-stream");
    assert!(g.dp().maps.det.isolation.get(IFINDEX).expect("read").is_none(), "nothing isolated yet");
    let _ = g.events();
    // The exfiltration: the SYN to a peer never seen is dropped, the endpoint isolated, one event.
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, ROUTER, 40004, 4444, TCP_SYN)), RET_DROP, "the first packet never leaves");
    assert_eq!(g.counter("deny_detector_unlearned_flow"), 1);
    let iso = g.dp().maps.det.isolation.get(IFINDEX).expect("read").expect("TC isolated the endpoint");
    assert_eq!(iso.reason, isolation_reason::UNLEARNED_FLOW);
    let ev = g.events();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].drop_reason, ev[0].daddr(), u16::from_be_bytes(ev[0].dport_be)), (flow_kind::DROPPED, counters::DENY_DETECTOR_UNLEARNED as u16, Some(ROUTER.into()), 4444));
    // From now on isolation stops even the learned destination.
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, PEER, 40005, 443, TCP_SYN)), RET_DROP);
    // New ports isolate too: released, the scan's first probe on the learned peer is dropped.
    g.dp().maps.det.isolation.remove(IFINDEX).expect("release");
    g.dp().maps.flow_watch.set(IFINDEX, watch_flags::REPORT | watch_flags::DROP_NEW_PEER | watch_flags::DROP_NEW_PORT, 0).expect("watch");
    assert_eq!(g.run(programs::FROM_POD, &tcp_frame(POD, PEER, 40006, 23, TCP_SYN)), RET_DROP, "a new port on a learned peer");
    g.dp().maps.det.isolation.remove(IFINDEX).expect("release");
    assert_eq!(g.run(programs::FROM_POD, &tcp6_frame(POD6, ROUTER6, 40007, 443, TCP_SYN)), RET_DROP, "an IPv6 peer never seen");
    assert_eq!(g.counter("deny_detector_unlearned_flow"), 3);
    // Inbound flows are not this decision's (new inbound clients only alert).
    g.dp().maps.det.isolation.remove(IFINDEX).expect("release");
    assert_eq!(g.run(programs::TO_POD, &tcp_frame(ROUTER, POD, 40008, 8080, TCP_SYN)), RET_PASS, "inbound");
}

/// Flow records on: each new flow is one record and a TCP flow's end one more, with its
/// packets and bytes both ways, oriented as the pod opened it; a flood of new flows past the
/// ring's room loses records, and every lost one is counted.
#[test]
fn flow_records_report_ends_with_counts_and_count_what_a_flood_loses() {
    use bulkhead_common::config_flags;
    let mut g = Guard::new("records");
    let mut cfg = g.dp().maps.config.get(&0, 0).expect("config");
    cfg.flags |= config_flags::FLOW_RECORDS;
    g.dp().maps.config.set(0, cfg, 0).expect("config");
    const FIN_ACK: u8 = 0x11;
    let out = [tcp_frame(POD, PEER, 41000, 80, TCP_SYN), tcp_frame(POD, PEER, 41000, 80, TCP_ACK), tcp_frame(POD, PEER, 41000, 80, FIN_ACK)];
    let back = [tcp_frame(PEER, POD, 80, 41000, TCP_SYN | TCP_ACK), tcp_frame(PEER, POD, 80, 41000, FIN_ACK)];
    assert_eq!(g.run(programs::FROM_POD, &out[0]), RET_PASS);
    assert_eq!(g.run(programs::TO_POD, &back[0]), RET_PASS);
    assert_eq!(g.run(programs::FROM_POD, &out[1]), RET_PASS);
    assert_eq!(g.run(programs::FROM_POD, &out[2]), RET_PASS);
    assert!(g.events().iter().all(|e| e.kind == flow_kind::NEW_ALLOWED), "one FIN is no end yet");
    // The peer's FIN ends it: reported from the reply, oriented as the pod opened it.
    assert_eq!(g.run(programs::TO_POD, &back[1]), RET_PASS);
    let ends: Vec<FlowEventV5> = g.events().into_iter().filter(|e| e.kind == flow_kind::END).collect();
    assert_eq!(ends.len(), 1, "{ends:?}");
    let e = ends[0];
    assert_eq!((e.saddr(), e.daddr(), u16::from_be_bytes(e.sport_be), u16::from_be_bytes(e.dport_be), e.direction), (Some(POD.into()), Some(PEER.into()), 41000, 80, direction::EGRESS));
    let (olen, blen): (u64, u64) = (out.iter().map(|f| f.len() as u64).sum(), back.iter().map(|f| f.len() as u64).sum());
    assert_eq!((e.packets_orig, e.packets_reply), (3, 2));
    // Lengths as TC sees them (the frame; the kernel may count a padded minimum).
    assert!(e.bytes_orig >= olen - 3 * 14 && e.bytes_reply >= blen - 2 * 14, "{e:?}");
    // A last ACK after the end reports nothing more.
    assert_eq!(g.run(programs::FROM_POD, &out[1]), RET_PASS);
    assert!(g.events().is_empty());

    // 20,000 new flows against a ring of about 7,300 records: what is not in the ring is
    // counted, none silently.
    let (sent0, lost0) = (g.counter("flow_events_sent"), g.counter("flow_events_dropped"));
    for i in 0..20_000u32 {
        let f = tcp_frame(POD, PEER, 1024 + (i % 60_000) as u16, 443 + (i / 60_000) as u16, TCP_SYN);
        assert_eq!(g.run(programs::FROM_POD, &f), RET_PASS);
    }
    let read = g.events().len() as u64;
    let (sent, lost) = (g.counter("flow_events_sent") - sent0, g.counter("flow_events_dropped") - lost0);
    assert!(lost > 0, "the flood must overflow the ring for this test to mean anything");
    assert_eq!((read, read + lost), (sent, 20_000), "every record is in the ring or counted lost");
}
