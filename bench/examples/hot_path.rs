//! Runs one datapath path through BPF_PROG_TEST_RUN in a loop, so a profiler can say where its
//! time goes: `perf record -a -g -- target/release/examples/hot_path 10000 deny v6 10`, then
//! `perf report --sort sym`. Arguments: rule count, path (the labels of
//! `bulkhead_bench::datapath::PathKind`), family (v4 or v6), seconds. Needs root.

use std::time::{Duration, Instant};

use bulkhead_bench::datapath::{Bench, Family, PathKind, REPEAT, Shape, remove_stale_pins};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: hot_path RULES PATH v4|v6 SECONDS (PATH: noop, deny_new_flow, deny_new_flow_world, established, egress_deny_new_flow, egress_established, reply)";
    let [rules, path, family, seconds] = args.as_slice() else { panic!("{usage}") };
    let rules: usize = rules.parse().unwrap_or_else(|_| panic!("RULES {rules:?} is not a number; {usage}"));
    let kinds = [PathKind::Noop, PathKind::Deny, PathKind::DenyWorld, PathKind::Established, PathKind::EgressDeny, PathKind::EgressEstablished, PathKind::Reply];
    let path = kinds.into_iter().find(|k| k.label() == path).unwrap_or_else(|| panic!("unknown PATH {path:?}; {usage}"));
    let family = match family.as_str() {
        "v4" => Family::V4,
        "v6" => Family::V6,
        f => panic!("unknown family {f:?}; {usage}"),
    };
    let seconds: u64 = seconds.parse().unwrap_or_else(|_| panic!("SECONDS {seconds:?} is not a number; {usage}"));
    remove_stale_pins();
    let mut b = Bench::new(rules, Shape::NetworkPolicies);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut ns = Vec::new();
    while Instant::now() < end {
        ns.push(b.run_path_in(path, family, REPEAT).kernel_ns);
    }
    ns.sort_unstable();
    println!("{} {family:?} @ {rules} rules: median {} ns over {} calls of {REPEAT} runs", path.label(), ns[ns.len() / 2], ns.len());
}
