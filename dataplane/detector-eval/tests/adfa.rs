//! End-to-end evaluation on the public ADFA-LD dataset.
//!
//! `/work/shared/datasets/ADFA-LD.zip` (or `$BULKHEAD_ADFA_ZIP`) is not shipped with the
//! repository. When it is absent, the ADFA test says so loudly and checks only the synthetic
//! evaluation below: a pass then does NOT mean the model quality goal was measured.

use std::io::Write;
use std::path::PathBuf;

use bulkhead_detector_eval::adfa::{GOAL_AUC, GOAL_DR_AT_1PCT, evaluate};
use bulkhead_detector_eval::{AdfaDataset, Trace, run_adfa};

fn adfa_path() -> PathBuf {
    std::env::var_os("BULKHEAD_ADFA_ZIP")
        .map(PathBuf::from)
        .unwrap_or_else(bulkhead_detector_eval::dataset::default_adfa_path)
}

/// The dataset's path, or `None` after saying loudly that `what` was not measured.
fn adfa_path_or_skip(what: &str) -> Option<PathBuf> {
    let path = adfa_path();
    if !path.exists() {
        // Written to the real stderr, not eprintln!, so the harness's capture cannot hide it.
        let _ = writeln!(
            std::io::stderr(),
            "ADFA-LD NOT ON THIS MACHINE ({}): {what} NOT measured; only the synthetic evaluation test is meaningful",
            path.display()
        );
        return None;
    }
    Some(path)
}

fn adfa_report_or_skip(what: &str) -> Option<bulkhead_detector_eval::AdfaReport> {
    let path = adfa_path_or_skip(what)?;
    let report = run_adfa(&path).unwrap_or_else(|e| panic!("run_adfa({}): {e}", path.display()));
    println!("{report}");
    Some(report)
}

/// The evaluation runs end to end, prints both detectors side by side, serializes to JSON,
/// stays within its time budget, and the model is at least as good as the best STIDE by AUC.
#[test]
fn adfa_side_by_side_when_dataset_present() {
    let Some(report) = adfa_report_or_skip("side-by-side evaluation") else {
        return;
    };
    let json = serde_json::to_string(&report).expect("report serializes to JSON");
    let back: bulkhead_detector_eval::AdfaReport =
        serde_json::from_str(&json).expect("JSON report parses back");
    // serde_json's default float parsing may differ in the last bit, hence the tolerance.
    for (a, b) in back.rows.iter().zip(&report.rows) {
        assert!(
            a.name == b.name && (a.auc - b.auc).abs() < 1e-12,
            "JSON round trip: {a:?} vs {b:?}"
        );
    }
    assert_eq!(report.rows.len(), 6, "model + stide n=3..7");
    // ADFA-LD's six attack families, every attack trace in one of them.
    let families: Vec<&str> = report.families.iter().map(|r| r.family.as_str()).collect();
    assert_eq!(families, ["Adduser", "Hydra_FTP", "Hydra_SSH", "Java_Meterpreter", "Meterpreter", "Web_Shell"], "{report}");
    assert_eq!(report.families.iter().map(|r| r.traces).sum::<usize>(), report.attack.traces);
    assert!(
        report.elapsed_secs < 60.0,
        "full run took {:.1} s",
        report.elapsed_secs
    );
    let best_stide = report.rows[1..].iter().map(|r| r.auc).fold(0.0, f64::max);
    assert!(
        report.rows[0].auc >= best_stide,
        "model AUC below the best STIDE:\n{report}"
    );
}

/// The learning-curve diagnostic (outside the protocol) on the real data: every point judges the
/// same held-out quarter of the validation normals, learns everything it was given, and the
/// model gains from more normal data (the evidence that the protocol's 833 training traces,
/// not the model alone, cap the figure; see `bulkhead_detector_eval::learning`).
#[test]
fn adfa_learning_curve_when_dataset_present() {
    let Some(path) = adfa_path_or_skip("learning curve") else {
        return;
    };
    let data = bulkhead_detector_eval::read_adfa_zip(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let curve = bulkhead_detector_eval::learning_curve(&data, bulkhead_detector_eval::learning::CURVE_SEED)
        .unwrap_or_else(|e| panic!("learning curve on {}: {e}", path.display()));
    println!("{curve}");
    assert_eq!((curve.held_out, curve.attacks), (data.validation.len() / 4, data.attack.len()), "{curve}");
    assert_eq!(curve.points.len(), 4, "{curve}");
    for p in &curve.points {
        assert_eq!(p.learned_traces, data.training.len() + p.added_normal, "{curve}");
        assert_eq!(p.dropped_syscalls, 0, "the profile's cap must hold every learned syscall: {curve}");
    }
    let (first, last) = (&curve.points[0], &curve.points[3]);
    assert!(last.model_auc > first.model_auc, "more normal data must help the model:\n{curve}");
}

/// The quality goal: AUC >= 0.93 and DR >= 0.30 at 1% false alarms.
///
/// Ignored because the goal is NOT met yet (measured: AUC 0.844, DR@1%FA 0.160 with the
/// sequence-covering model; 0.835 / 0.155 with the earlier order-5 variable-order Markov
/// model; 0.898 even when it also learns from three quarters of the validation normals, see
/// `adfa_learning_curve_when_dataset_present`). Run it with
/// `cargo test -p bulkhead-detector-eval --release -- --ignored` to see where the model stands.
#[test]
#[ignore = "detector quality goal not met (cover model: AUC 0.844 < 0.93, DR@1% 0.160 < 0.30); the goal is reported blocked"]
fn adfa_model_quality_goal_when_dataset_present() {
    let Some(report) = adfa_report_or_skip("model quality goal") else {
        return;
    };
    let model = &report.rows[0];
    assert!(
        model.auc >= GOAL_AUC && model.rates[0].detection_rate >= GOAL_DR_AT_1PCT,
        "goal AUC >= {GOAL_AUC} and DR@1%FA >= {GOAL_DR_AT_1PCT} not met by {}: AUC {:.4}, DR@1% {:.3}\n{report}",
        model.name,
        model.auc,
        model.rates[0].detection_rate
    );
}

/// Synthetic stand-in with the same shape as ADFA-LD: normal traces follow one program's
/// loops, attack traces splice in a foreign syscall sequence.
#[test]
fn synthetic_evaluation_separates_planted_attacks() {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut rand = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let normal = |id: usize, rand: &mut dyn FnMut(u64) -> u64| {
        let mut s = vec![59u16, 12, 9, 21];
        while s.len() < 300 {
            match rand(4) {
                0 => s.extend([3, 0, 1, 6]),
                1 => s.extend([4, 3, 0, 6]),
                2 => s.extend([232, 0, 1]),
                _ => s.extend([9, 11]),
            }
        }
        Trace {
            name: format!("n{id}"),
            attack: None,
            syscalls: s,
        }
    };
    let training: Vec<Trace> = (0..60).map(|i| normal(i, &mut rand)).collect();
    let validation: Vec<Trace> = (0..200).map(|i| normal(1000 + i, &mut rand)).collect();
    let attack: Vec<Trace> = (0..50)
        .map(|i| {
            let mut t = normal(2000 + i, &mut rand);
            let at = 20 + rand(200) as usize;
            t.syscalls
                .splice(at..at, [57, 33, 33, 59, 42, 41, 49, 50, 43]);
            t.attack = Some("planted".into());
            t
        })
        .collect();
    let report = evaluate(&AdfaDataset {
        training,
        validation,
        attack,
    })
    .expect("evaluate synthetic data");
    println!("{report}");
    let model = &report.rows[0];
    assert!(model.auc > 0.95, "planted attacks must separate: {model:?}");
    assert!(model.rates[0].detection_rate > 0.5, "DR@1%FA: {model:?}");
    assert!(
        report.to_string().contains("stide n=7"),
        "table lists STIDE rows:\n{report}"
    );
    // One family ("planted"), which is all the attacks: its figures are the whole set's.
    assert_eq!(report.families.len(), 1, "{report}");
    let fam = &report.families[0];
    assert_eq!((fam.family.as_str(), fam.traces), ("planted", 50));
    assert!((fam.model_auc - model.auc).abs() < 1e-12, "{fam:?} vs {model:?}");
}
