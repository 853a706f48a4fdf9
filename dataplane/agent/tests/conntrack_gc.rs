//! The conntrack sweep (root): it reads and removes through the tables' memory mapping, so
//! check on a table of many entries that exactly the expired entries go and every live one
//! stays.

use std::collections::BTreeSet;

use bulkhead_agent::loader::Dataplane;
use bulkhead_common::{CtKeyV2, CtValueV2, proto};

/// Unloads (unpins) the dataplane even when an assertion fails.
struct Loaded(Option<Dataplane>);

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some(dp) = self.0.take() {
            dp.unload();
        }
    }
}

fn key(i: u32) -> CtKeyV2 {
    CtKeyV2::of(7, i.to_be_bytes(), 40_000u16.to_be_bytes(), [10, 0, 0, 1], 80u16.to_be_bytes(), proto::UDP)
}

#[test]
fn a_sweep_removes_exactly_the_expired_entries_across_batches() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test loads eBPF maps: run it as root (CI does)");
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/bh-test-gc-{}", std::process::id()));
    let mut g = Loaded(Some(Dataplane::load(&dir).expect("loading the dataplane")));
    let dp = g.0.as_mut().expect("loaded");
    dp.maps.config.set(0, bulkhead_common::ConfigV2::with_default_timeouts(1), 0).expect("config");
    let now = bulkhead_agent::clock::coarse_ns();
    // 10,000 entries; every third one last seen long ago.
    let n = 10_000u32;
    for i in 0..n {
        let last_seen_ns = if i % 3 == 0 { 1 } else { now };
        let v = CtValueV2 { last_seen_ns, created_ns: last_seen_ns, protocol: proto::UDP, ..Default::default() };
        assert!(dp.maps.conntrack.insert(&key(i), &v), "inserting entry {i}: its bucket is full");
    }
    let removed = bulkhead_agent::gc::sweep(dp).expect("sweep").removed;
    let expired = (0..n).filter(|i| i % 3 == 0).count();
    assert_eq!(removed, expired, "removed {removed}, expected {expired}");
    let left: BTreeSet<CtKeyV2> = dp.maps.conntrack.entries().into_iter().map(|e| e.key).collect();
    let want: BTreeSet<CtKeyV2> = (0..n).filter(|i| i % 3 != 0).map(key).collect();
    assert_eq!(left.len(), want.len(), "entries left");
    assert!(left == want, "the live entries are not exactly the ones left");
    assert_eq!(bulkhead_agent::gc::sweep(dp).expect("second sweep").removed, 0, "a second sweep finds nothing");
}

/// With flows reported, an expired entry whose end the datapath did not report becomes an
/// end record, oriented as the flow's origin sent it, with its counts both ways; one the
/// datapath already reported (ENDED) does not.
#[test]
fn expired_flows_become_end_records_once() {
    use bulkhead_common::{config_flags, ct_flags, direction, flow_kind};
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test loads eBPF maps: run it as root (CI does)");
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/bh-test-gcend-{}", std::process::id()));
    let mut g = Loaded(Some(Dataplane::load(&dir).expect("loading the dataplane")));
    let dp = g.0.as_mut().expect("loaded");
    let mut cfg = bulkhead_common::ConfigV2::with_default_timeouts(1);
    cfg.flags |= config_flags::FLOW_RECORDS;
    dp.maps.config.set(0, cfg, 0).expect("config");
    // 10.0.0.9:40000 -> 10.0.0.1:80 sorts the server first: the origin is the key's hi end.
    let k = key(0x0a00_0009);
    assert_eq!(k.addr_lo_be, [10, 0, 0, 1], "the key orders the server first");
    let old = CtValueV2 {
        last_seen_ns: 1,
        created_ns: 1,
        packets_orig: 5,
        bytes_orig: 700,
        packets_reply: 3,
        bytes_reply: 9_000,
        origin_direction: direction::EGRESS,
        protocol: proto::UDP,
        flags: ct_flags::ORIGIN_HI,
        ..Default::default()
    };
    assert!(dp.maps.conntrack.insert(&k, &old), "insert");
    assert!(dp.maps.conntrack.insert(&key(0x0a00_000a), &CtValueV2 { flags: ct_flags::ENDED, ..old }), "insert");
    let sw = bulkhead_agent::gc::sweep(dp).expect("sweep");
    assert_eq!(sw.removed, 2);
    assert_eq!(sw.ended.len(), 1, "the entry already reported is not reported again: {:?}", sw.ended);
    let e = &sw.ended[0];
    assert_eq!((e.kind, e.direction, e.ifindex), (flow_kind::END, direction::EGRESS, 7));
    assert_eq!((&e.saddr_be[..4], e.sport_be, &e.daddr_be[..4], e.dport_be), (&[10, 0, 0, 9][..], 40_000u16.to_be_bytes(), &[10, 0, 0, 1][..], 80u16.to_be_bytes()));
    assert_eq!((e.packets_orig, e.bytes_orig, e.packets_reply, e.bytes_reply), (5, 700, 3, 9_000));
}
