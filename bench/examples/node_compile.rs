//! Compiles one node of the 150k-pod synthetic cluster from nothing, in a loop, so a profiler
//! can say where a per-node compile's time goes: `perf record -g --
//! target/release/examples/node_compile 10`, then `perf report --sort sym` (with
//! `--call-graph dwarf` for callers). Argument: rounds. Prints each round's time.

use std::time::Instant;

use policy_compiler::{Compiler, Limits};

fn main() {
    let rounds: usize = std::env::args().nth(1).map(|a| a.parse().expect("ROUNDS is a number")).unwrap_or(5);
    let s = bulkhead_bench::synth::cluster(42);
    let m = s.on_node(0);
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
