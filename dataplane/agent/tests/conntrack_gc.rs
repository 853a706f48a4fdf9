//! The conntrack sweep (root): it reads and deletes in batches, so check on a table larger
//! than one batch that exactly the expired entries go and every live one stays.

use std::collections::BTreeSet;

use bulkhead_agent::loader::Dataplane;
use bulkhead_common::{CtKeyV2, CtValueV1, proto};

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
    // 10,000 entries (more than two batches of 4,096); every third one last seen long ago.
    let n = 10_000u32;
    for i in 0..n {
        let last_seen_ns = if i % 3 == 0 { 1 } else { now };
        let v = CtValueV1 { last_seen_ns, created_ns: last_seen_ns, protocol: proto::UDP, ..Default::default() };
        dp.maps.conntrack.insert(key(i), v, 0).expect("insert");
    }
    let removed = bulkhead_agent::gc::sweep(dp).expect("sweep");
    let expired = (0..n).filter(|i| i % 3 == 0).count();
    assert_eq!(removed, expired, "removed {removed}, expected {expired}");
    let left: BTreeSet<CtKeyV2> = dp.maps.conntrack.keys().map(|k| k.expect("key")).collect();
    let want: BTreeSet<CtKeyV2> = (0..n).filter(|i| i % 3 != 0).map(key).collect();
    assert_eq!(left.len(), want.len(), "entries left");
    assert!(left == want, "the live entries are not exactly the ones left");
    assert_eq!(bulkhead_agent::gc::sweep(dp).expect("second sweep"), 0, "a second sweep finds nothing");
}
