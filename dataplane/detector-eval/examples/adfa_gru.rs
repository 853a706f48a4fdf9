//! Evaluates the GRU language model ([`bulkhead_detector_eval::gru`]) on ADFA-LD with the issue's
//! protocol (learn from Training_Data_Master; normal = Validation_Data_Master, attack =
//! Attack_Data_Master; one score per trace) and prints AUC and DR at 1/5/10% false alarms
//! for the whole-trace mean surprisal and, for comparison, two other aggregations.
//!
//! `cargo run --release -p bulkhead-detector-eval --example adfa_gru [-- ZIP]`; the hyper-parameters
//! default to `GruConfig::default()` and can be overridden with the environment variables
//! `GRU_EMBED`, `GRU_HIDDEN`, `GRU_BPTT`, `GRU_EPOCHS`, `GRU_LR`, `GRU_SEED`,
//! `GRU_MIN_STREAMS`. Training is single-threaded; scoring uses two threads.

use std::path::PathBuf;
use std::time::Instant;

use bulkhead_detector_eval::adfa::FA_BUDGETS;
use bulkhead_detector_eval::gru::{GruConfig, GruModel};
use bulkhead_detector_eval::{auc, rate_at_fa, read_adfa_zip};

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Mean surprisal, highest mean over 50 consecutive syscalls, mean of the top 10%.
fn aggregate(s: &[f32]) -> [f64; 3] {
    let s: Vec<f64> = s.iter().map(|&x| x as f64).collect();
    let n = s.len().max(1) as f64;
    let mean = s.iter().sum::<f64>() / n;
    let w = 50;
    let window = if s.len() < w {
        mean
    } else {
        let mut acc: f64 = s[..w].iter().sum();
        let mut best = acc;
        for i in w..s.len() {
            acc += s[i] - s[i - w];
            best = best.max(acc);
        }
        best / w as f64
    };
    let mut sorted = s.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = (sorted.len() / 10).clamp(1, sorted.len().max(1));
    let top = sorted.iter().take(k).sum::<f64>() / k as f64;
    [mean, window, top]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(bulkhead_detector_eval::dataset::default_adfa_path);
    let start = Instant::now();
    let data = read_adfa_zip(&path)?;
    let part = |p: &[bulkhead_detector_eval::Trace]| -> Vec<Vec<u16>> {
        p.iter().map(|t| t.syscalls.clone()).collect()
    };
    let (training, normal, attack) = (
        part(&data.training),
        part(&data.validation),
        part(&data.attack),
    );
    let d = GruConfig::default();
    let config = GruConfig {
        embed: env("GRU_EMBED", d.embed),
        hidden: env("GRU_HIDDEN", d.hidden),
        bptt: env("GRU_BPTT", d.bptt),
        epochs: env("GRU_EPOCHS", d.epochs),
        learning_rate: env("GRU_LR", d.learning_rate),
        seed: env("GRU_SEED", d.seed),
        min_streams: env("GRU_MIN_STREAMS", d.min_streams),
        ..d
    };
    let t = Instant::now();
    let refs: Vec<&[u16]> = training.iter().map(Vec::as_slice).collect();
    let model = GruModel::train(config, &refs)?;
    println!("{config:?}");
    println!(
        "trained in {:.1} s: {} weights, {} syscalls in the vocabulary, loss per epoch (nats/syscall) {:?}",
        t.elapsed().as_secs_f64(),
        model.parameters(),
        model.vocabulary(),
        model
            .epoch_loss()
            .iter()
            .map(|l| (l * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    let all: Vec<&Vec<u16>> = normal.iter().chain(&attack).collect();
    let half = all.len() / 2;
    let score = |ts: &[&Vec<u16>]| -> Vec<[f64; 3]> {
        ts.iter().map(|t| aggregate(&model.surprisals(t))).collect()
    };
    let mut scores = std::thread::scope(|s| {
        let second = s.spawn(|| score(&all[half..]));
        let mut first = score(&all[..half]);
        first.extend(second.join().expect("scoring thread"));
        first
    });
    let attack_scores = scores.split_off(normal.len());
    for (i, name) in ["mean surprisal", "max 50-window mean", "top-10% mean"]
        .iter()
        .enumerate()
    {
        let n: Vec<f64> = scores.iter().map(|s| s[i]).collect();
        let a: Vec<f64> = attack_scores.iter().map(|s| s[i]).collect();
        print!("{name:<20} AUC {:.4} DR@1/5/10%", auc(&n, &a)?);
        for fa in FA_BUDGETS {
            print!(" {:.3}", rate_at_fa(&n, &a, fa)?.detection_rate);
        }
        println!();
    }
    println!("run time {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
