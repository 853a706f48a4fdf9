//! Policy compiler: full compile time against pods x policies, and incremental update time
//! (one Compiler kept warm; one policy changed, one pod relabelled, one pod added), with the
//! size of the resulting map diff. Pure user space, no root needed.
//!
//! Incremental updates alternate between the base model and the changed one, so every
//! measured `compile` is an update by exactly one change from the previous call.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bulkhead_bench::result;
use bulkhead_bench::synth::{self, Synth};
use criterion::{BenchmarkId, Criterion, Throughput};
use policy_compiler::{Compiled, CompiledDiff, Compiler, Limits, Model, diff};

const SIZES: [(usize, usize); 3] = [(100, 10), (1_000, 100), (10_000, 1_000)];

fn diff_size(d: &CompiledDiff) -> String {
    format!(
        "endpoints +{}/-{} ipcache +{}/-{} policy +{}/-{}",
        d.endpoints.upserts.len(),
        d.endpoints.removals.len(),
        d.ipcache.upserts.len(),
        d.ipcache.removals.len(),
        d.policy.upserts.len(),
        d.policy.removals.len()
    )
}

fn total(d: &CompiledDiff) -> usize {
    d.endpoints.upserts.len()
        + d.endpoints.removals.len()
        + d.ipcache.upserts.len()
        + d.ipcache.removals.len()
        + d.policy.upserts.len()
        + d.policy.removals.len()
}

fn compile(c: &mut Compiler, m: &Model) -> Compiled {
    c.compile(m).expect("synthetic model compiles")
}

/// Median wall time of `runs` calls of `f`.
fn median_time(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut v: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    for (pods, policies) in SIZES {
        let tag = format!("{pods}pods_{policies}pol");
        let s: Synth = synth::model(pods, policies, 42);
        let base = &s.model;

        let mut fresh = Compiler::new(Limits::default());
        let out = compile(&mut fresh, base);
        let identities: std::collections::BTreeSet<u32> = out.endpoints.values().map(|e| e.identity).collect();
        println!(
            "compiler {tag}: {} endpoints, {} identities, {} ipcache, {} policy entries, {} overflow",
            out.endpoints.len(),
            identities.len(),
            out.ipcache.len(),
            out.policy.len(),
            out.overflow.len()
        );
        result(&format!("compiler_policy_entries_{tag}"), out.policy.len());
        result(&format!("compiler_identities_{tag}"), identities.len());

        // The 10k-pod shape (dense ipBlock excepts: hundreds of CIDR regions per endpoint)
        // takes tens of seconds per compile: measured once each, outside criterion, so the
        // whole bench stays within minutes.
        let big = pods >= 10_000;
        // Quotable medians outside criterion (criterion prints its own estimates below).
        let full_runs = if big { 1 } else { 15 };
        let t = median_time(full_runs, || {
            black_box(compile(&mut Compiler::new(Limits::default()), base));
        });
        result(&format!("compiler_full_compile_ms_{tag}"), format!("{:.3}", t.as_secs_f64() * 1e3));

        if !big {
            let mut group = c.benchmark_group("compiler_full");
            group.throughput(Throughput::Elements(pods as u64));
            group.bench_function(BenchmarkId::from_parameter(&tag), |b| {
                b.iter(|| black_box(compile(&mut Compiler::new(Limits::default()), base)))
            });
            group.finish();
        }

        let mut scenarios: Vec<(&str, Model)> = vec![
            ("change_one_policy", s.change_one_policy()),
            ("relabel_one_pod", s.relabel_one_pod()),
            ("add_one_pod", s.add_one_pod()),
        ];
        if big {
            scenarios.truncate(1);
        }
        let mut group = c.benchmark_group("compiler_incremental");
        for (name, changed) in &scenarios {
            // Diff size of the change, from a warm compiler.
            let mut warm = Compiler::new(Limits::default());
            let before = compile(&mut warm, base);
            let after = compile(&mut warm, changed);
            let d = diff(&before, &after);
            println!("compiler {tag} {name}: diff {}", diff_size(&d));
            result(&format!("compiler_diff_entries_{name}_{tag}"), total(&d));

            let mut flip = false;
            let t = median_time(2 * full_runs + 1, || {
                flip = !flip;
                black_box(compile(&mut warm, if flip { base } else { changed }));
            });
            result(&format!("compiler_incremental_ms_{name}_{tag}"), format!("{:.3}", t.as_secs_f64() * 1e3));
            let t = median_time(full_runs, || {
                black_box(diff(&before, &after));
            });
            result(&format!("compiler_diff_ms_{name}_{tag}"), format!("{:.3}", t.as_secs_f64() * 1e3));

            if !big {
                group.bench_function(BenchmarkId::new(*name, &tag), |b| {
                    b.iter(|| {
                        flip = !flip;
                        black_box(compile(&mut warm, if flip { base } else { changed }))
                    })
                });
            }
        }
        group.finish();
    }
    c.final_summary();
}
