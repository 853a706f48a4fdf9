//! Policy compiler: full compile time against pods x policies, and incremental update time
//! (one Compiler kept warm; one policy changed, one pod relabelled, one pod added), with the
//! size of the resulting map diff. Pure user space, no root needed.
//!
//! Incremental updates alternate between the base model and the changed one, so every
//! measured `compile` is an update by exactly one change from the previous call.
//!
//! Cluster scale (first, `COMPILER_BENCH=scale` runs only that part): what one node's agent
//! compiles ([`Compiler::for_node`]) on the 10k-pod x 1k-policy shape spread over 100 nodes
//! and on a 5,000-node cluster of 150,000 pods and 10,000 policies, per sampled node: time,
//! peak heap (a counting allocator), the entries the node holds and endpoints failing closed;
//! plus a one-policy change on a warm node compiler and, for the 10k shape, the whole-cluster
//! compile (every pod local) for comparison.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bulkhead_bench::synth::{self, Synth};
use bulkhead_bench::{heap, result};
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
    median_of(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn median_of(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

/// Entries the kernel maps hold for a compile (slices, single ports, ranges) and the local
/// endpoints failing closed for capacity.
fn held(out: &Compiled) -> (usize, usize) {
    let l = out.layout();
    let fail_closed = out
        .endpoints
        .values()
        .filter(|e| e.interface.is_some() && e.flags & bulkhead_common::ep_flags::OVERFLOW_FAIL_CLOSED != 0)
        .count();
    for o in out.overflow.iter().take(2) {
        println!("  overflow: {o}");
    }
    (l.len(), fail_closed)
}

fn cluster_scale() {
    let shapes: [(&str, Box<dyn Fn() -> Synth>); 2] =
        [("10kpods_1kpol_100nodes", Box::new(|| synth::model(10_000, 1_000, 42))), ("150kpods_10kpol_5000nodes", Box::new(|| synth::cluster(42)))];
    for (tag, build) in shapes {
        let t = Instant::now();
        let s = build();
        let identities: std::collections::BTreeSet<_> =
            s.model.pods.values().map(|p| (p.namespace.clone(), p.labels.clone())).collect();
        println!(
            "compiler scale {tag}: {} pods, {} label sets, {} policies, {} nodes (model built in {:.1} s)",
            s.model.pods.len(),
            identities.len(),
            s.model.policies.len(),
            s.nodes,
            t.elapsed().as_secs_f64()
        );
        let sample: std::collections::BTreeSet<usize> = [0, 1, s.nodes / 3, s.nodes / 2, s.nodes - 1].into_iter().collect();
        let (mut times, mut peaks, mut entries, mut locals) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut fail_closed = 0;
        for &node in &sample {
            let m = s.on_node(node);
            let ((out, ms), peak) = heap::peak_during(|| {
                let mut c = Compiler::for_node(Limits::per_generation());
                let t = Instant::now();
                let out = compile(&mut c, &m);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                (out, ms)
            });
            // A fresh compiler each time, made and dropped outside the timing: an agent keeps
            // its compiler, so tearing down 150k pods' identities (about 100 ms at 150k) is no
            // part of any compile it waits for.
            let t = median_of(
                (0..3)
                    .map(|_| {
                        let mut c = Compiler::for_node(Limits::per_generation());
                        let t = Instant::now();
                        let out = compile(&mut c, &m);
                        let el = t.elapsed();
                        drop(black_box((c, out)));
                        el
                    })
                    .collect(),
            );
            let (n, fc) = held(&out);
            let local = out.endpoints.values().filter(|e| e.interface.is_some()).count();
            println!(
                "compiler scale {tag} node {node}: {local} local pods, compile {:.1} ms (first {ms:.1} ms), peak heap {:.1} MiB, {n} entries held, {fc} failing closed, ipcache {}",
                t.as_secs_f64() * 1e3,
                peak as f64 / (1 << 20) as f64,
                out.ipcache.len()
            );
            times.push(t.as_secs_f64() * 1e3);
            peaks.push(peak);
            entries.push(n);
            locals.push(local);
            fail_closed += fc;
        }
        let max_f = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        result(&format!("compiler_node_compile_ms_max_{tag}"), format!("{:.1}", max_f(&times)));
        result(&format!("compiler_node_peak_heap_mib_max_{tag}"), format!("{:.1}", *peaks.iter().max().unwrap_or(&0) as f64 / (1 << 20) as f64));
        result(&format!("compiler_node_entries_max_{tag}"), entries.iter().max().unwrap_or(&0));
        result(&format!("compiler_node_local_pods_max_{tag}"), locals.iter().max().unwrap_or(&0));
        result(&format!("compiler_node_fail_closed_{tag}"), fail_closed);

        // A one-policy change on a warm node compiler: the namespace default deny of a local
        // pod, so the change reaches local identities.
        let node = *sample.first().expect("a node");
        let base = s.on_node(node);
        let pod = s.node_of.iter().find(|(_, n)| **n == node).map(|(r, _)| r.clone()).expect("node has pods");
        let changed = Synth::change_default_deny_of(&base, &pod);
        let mut warm = Compiler::for_node(Limits::per_generation());
        let before = compile(&mut warm, &base);
        let after = compile(&mut warm, &changed);
        let d = diff(&before, &after);
        let mut flip = false;
        let t = median_time(7, || {
            flip = !flip;
            black_box(compile(&mut warm, if flip { &base } else { &changed }));
        });
        println!("compiler scale {tag} node {node}: one policy changed: {:.1} ms, diff {}", t.as_secs_f64() * 1e3, diff_size(&d));
        result(&format!("compiler_node_incremental_ms_{tag}"), format!("{:.1}", t.as_secs_f64() * 1e3));

        // A replica added on another node, and removed again: the identities stay, so the
        // compiler patches its pod side (address owners, IP cache) and keeps every verdict.
        let added = s.add_replica_elsewhere(&base);
        compile(&mut warm, &base);
        let before = compile(&mut warm, &added);
        let used = warm.reused();
        let after = compile(&mut warm, &base);
        let d = diff(&before, &after);
        let t = median_time(7, || {
            flip = !flip;
            black_box(compile(&mut warm, if flip { &base } else { &added }));
        });
        println!(
            "compiler scale {tag} node {node}: one pod added on another node: {:.1} ms (pod side {:?}, {} identities' verdicts kept), diff {}",
            t.as_secs_f64() * 1e3,
            used.0,
            used.1,
            diff_size(&d)
        );
        result(&format!("compiler_node_pod_added_ms_{tag}"), format!("{:.1}", t.as_secs_f64() * 1e3));

        if s.model.pods.len() <= 10_000 {
            let ((out, secs), peak) = heap::peak_during(|| {
                let t = Instant::now();
                let out = compile(&mut Compiler::new(Limits::default()), &s.model);
                (out, t.elapsed().as_secs_f64())
            });
            let (n, fc) = held(&out);
            println!(
                "compiler scale {tag}: whole cluster on one node (every pod local): {secs:.2} s, peak heap {:.0} MiB, {n} entries, {fc} failing closed",
                peak as f64 / (1 << 20) as f64
            );
            result(&format!("compiler_cluster_compile_s_{tag}"), format!("{secs:.2}"));
            result(&format!("compiler_cluster_peak_heap_mib_{tag}"), format!("{:.0}", peak as f64 / (1 << 20) as f64));
            result(&format!("compiler_cluster_fail_closed_{tag}"), fc);
        }
    }
}

fn main() {
    cluster_scale();
    if std::env::var("COMPILER_BENCH").as_deref() == Ok("scale") {
        return;
    }
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
