//! Compiles one node of the 150k-pod synthetic cluster, in a loop, so a profiler can say where
//! a per-node compile's time goes: `perf record -g -- target/release/examples/node_compile 10`,
//! then `perf report --sort sym` (with `--call-graph dwarf` for callers). Arguments: rounds,
//! then what to time: `fresh` (default; from nothing) or `added` (a warm compiler, a replica
//! added on another node and removed again, as the bench's incremental case). Prints each
//! round's time.

use std::time::Instant;

use policy_compiler::{Compiler, Limits};

fn main() {
    let rounds: usize = std::env::args().nth(1).map(|a| a.parse().expect("ROUNDS is a number")).unwrap_or(5);
    let what = std::env::args().nth(2).unwrap_or_else(|| "fresh".into());
    let s = bulkhead_bench::synth::cluster(42);
    let m = s.on_node(0);
    match what.as_str() {
        "fresh" => {
            for _ in 0..rounds {
                let mut c = Compiler::for_node(Limits::per_generation());
                let t = Instant::now();
                let out = c.compile(&m).expect("synthetic model compiles");
                let compiled = t.elapsed();
                drop(c);
                drop(out);
                println!("node 0: compile {:.1} ms (dropping the compiler and its output {:.1} ms more)", compiled.as_secs_f64() * 1e3, (t.elapsed() - compiled).as_secs_f64() * 1e3);
            }
        }
        "added" => {
            let added = s.add_replica_elsewhere(&m);
            let mut c = Compiler::for_node(Limits::per_generation());
            c.compile(&m).expect("synthetic model compiles");
            for i in 0..rounds {
                let next = if i % 2 == 0 { &added } else { &m };
                let t = Instant::now();
                let out = c.compile(next).expect("synthetic model compiles");
                let compiled = t.elapsed();
                drop(out);
                println!("node 0: replica {} {:.1} ms (pod side {:?})", if i % 2 == 0 { "added" } else { "removed" }, compiled.as_secs_f64() * 1e3, c.reused().0);
            }
        }
        other => panic!("unknown mode {other:?}: fresh or added"),
    }
}
