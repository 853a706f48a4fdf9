//! Evaluation on ADFA-LD: the project's model and STIDE n = 3..7 side by side.
//!
//! Protocol (the issue's): learn from `Training_Data_Master` only; score every trace of
//! `Validation_Data_Master` (normal) and `Attack_Data_Master` (attack) with one score; report
//! ROC AUC and the detection rate at 1%, 5% and 10% false alarms on the normal traces.
//!
//! # Evaluation notes: how the model family was chosen
//!
//! The project's model ([`bulkhead_detector::cover`]) learns from the training traces only and has no
//! hyper-parameter, so no figure below fed back into code. The *family* was chosen by a
//! researcher comparing these variants' figures on validation + attack (AUC, DR at 1/5/10%
//! FA), which is the one use of evaluation data; all variants tried are listed:
//!
//! | variant                                                        | AUC   | DR@1/5/10%        |
//! |----------------------------------------------------------------|-------|-------------------|
//! | Markov order 5, mean surprisal (previous model)                | 0.835 | 0.155 0.294 0.446 |
//! | **greedy cover, phrases per syscall (chosen)**                 | 0.844 | 0.160 0.300 0.446 |
//! | matching statistics, mean 1/(1+L)                              | 0.843 | 0.150 0.288 0.457 |
//! | matching statistics, mean -ln((min(L,16)+1)/17)                | 0.843 | 0.178 0.267 0.433 |
//! | LZ cover by training + own prefix, phrases per syscall         | 0.844 | 0.113 0.228 0.434 |
//! | same, c log2(n) / n                                            | 0.841 | 0.083 0.181 0.346 |
//! | n-gram document-frequency rarity, mean, n = 3 / 6 / 8          | 0.800 / 0.816 / 0.821 | 0.149 / 0.020 / 0.050 @1% |
//! | same, max or top-10 mean window, n = 2..8                      | 0.51-0.62 | 0 @1%         |
//! | kNN (1-NN cosine) on sqrt syscall counts, 1-grams / 1+2-grams  | 0.796 / 0.794 | 0.047 / 0.039 @1% |
//! | syscall-set idf, max / sum (normal traces use rarer syscalls)  | 0.459 / 0.281 | 0 @1%     |
//! | rank-average of order-wise df-rarity ensembles (n = 2..8)      | 0.67-0.81 | <= 0.083 @1%  |
//! | rank-average cover + Markov / cover + kNN / Markov + kNN       | 0.840 / 0.832 / 0.827 | 0.141 / 0.054 / 0.106 @1% |
//! | cover, ECDF among the 200 / 100 training traces nearest in length | 0.845 / 0.844 | 0.088 / 0.131 @1% |
//! | GRU language model ([`crate::gru`]), defaults (E32 H64, 8 epochs), mean surprisal | 0.830 | 0.114 0.319 0.493 |
//! | same, max 50-window mean / top-10% mean surprisal               | 0.680 / 0.696 | 0.075 / 0.072 @1% |
//! | GRU H128, 10 epochs, constant step (seed 1 / seed 2 with decay) | 0.847 / 0.837 | 0.146 0.353 0.469 / 0.168 0.366 0.471 |
//! | GRU H128, 6 / 16 epochs                                          | 0.835 / 0.831 | 0.147 0.331 0.493 / 0.066 0.349 0.497 |
//! | GRU H64, 20 epochs / 8 epochs with rare syscalls (1 trace) as unseen | 0.830 / 0.826 | 0.130 0.303 0.466 / 0.072 0.322 0.504 |
//! | GRU, max 10/20/50-window mean (H64 8 ep.; H128 10 ep.)          | 0.61-0.68; 0.66-0.78 | <= 0.09 @1% |
//! | sum of 4 GRU mean surprisals / product cover x GRU (H64 20 ep.)  | 0.831 / 0.839 | 0.125 0.363 0.501 / 0.134 0.304 0.476 |
//! | interpolated Kneser-Ney n-gram (D 0.75), mean surprisal, n = 3 / 5 / 7 | 0.822 / 0.836 / 0.842 | 0.151 / 0.134 / 0.134 @1% |
//! | same, 90% / 99% quantile or max 20-window mean, n = 3..7         | 0.79-0.83 / 0.63-0.72 / 0.65-0.67 | 0.08-0.20 @1% |
//! | cover by the nearest single training trace (833 profiles), k-th nearest, k = 1 / 2 / 5 / 10 | 0.825 / 0.796 / 0.765 / 0.756 | 0.137 / 0.161 / 0.122 / 0.039 @1% |
//! | same, mean of the 3 / 5 / 10 nearest                            | 0.806 / 0.791 / 0.773 | 0.137 / 0.172 / 0.133 @1% |
//! | cover phrases in all (not per syscall) / phrases x sqrt(length) | 0.774 / 0.818 | 0.017 / 0.050 @1% |
//! | trace length alone (a check that length carries no signal)      | 0.477 | 0 @1% |
//! | Witten-Bell 5-gram (Python check of the Markov row), mean / median / 60% quantile surprisal | 0.836 / 0.853 / 0.853 | 0.157 / 0.103 / 0.149 @1% |
//! | same, trimmed means (0-90%, 10-90%, 25-75%, 50-100%) / mean of log1p or sqrt | 0.832-0.835 / 0.833 | 0.14-0.17 @1% |
//! | same, minus 0.25-1.0 x the trace's own adaptive order-3 surprisal (self-predictable loops discounted) | 0.814-0.836 | 0.16-0.17 @1% |
//! | same, per-syscall min or 50/50 mix of training and own-prefix model | 0.821 / 0.828 | 0.079 / 0.064 @1% |
//! | distinct unseen n-grams (types, not occurrences) / distinct n-grams, n = 2..8 | 0.62-0.83 | <= 0.23 @1% |
//! | one calibrated score: min (all must flag) or mean of per-detector ECDF ranks, any 2-4 of WB5 mean, WB5 median, 1-NN cosine on 1-gram / 2-gram bags | 0.789-0.842 | <= 0.166 @1% |
//! | syscalls mapped to 14 kinds by name (time, wait, read, write, fd, stat, fs change, memory, signal, process, credentials, info, net, other), Witten-Bell order 3 / 5 / 8 / 12, mean | 0.744 / 0.823 / 0.832 / 0.839 | <= 0.05 @1% |
//! | same, plus the raw WB5 mean surprisal                           | 0.828-0.841 | 0.12-0.13 @1% |
//! | WB5 mean with syscalls never seen in training left out          | 0.837 | 0.157 @1% |
//!
//! The rows from "Witten-Bell 5-gram" down were computed once, in a throw-away Python
//! script, to test ideas quickly; none came near the goal, so none was ported.
//!
//! # Is it the model or the data?
//!
//! [`crate::learning`] (`bulkhead-adfa --learning-curve`, outside the protocol) holds a quarter
//! of the validation normals out and lets the same model learn from the training traces plus
//! 0 / 25 / 50 / 75 % of the validation normals: AUC 0.839 / 0.877 / 0.885 / 0.898, DR@1%
//! 0.160 / 0.170 / 0.178 / 0.162 (STIDE n=6 beside it: 0.825 / 0.811 / 0.805 / 0.817). The
//! model gains from normal data, but five times the protocol's training data still leaves it
//! short of AUC 0.93, and the 1 % false-alarm tail does not move. The same check with the
//! Witten-Bell 5-gram gave 0.837 / 0.860 / 0.876 / 0.877. A look at the data says why: 100
//! of the 746 attack traces (186) have a validation normal whose bag of syscall pairs is
//! within cosine 0.99 (0.98) of theirs (ADFA-LD records every process of the attacked host
//! during an attack, ordinary ones included); 422 validation normals are exact copies of
//! training traces while the rest spread over programs the training part barely shows.
//!
//! By attack family (the report prints this table; model AUC / STIDE n=7 AUC): Adduser
//! 0.822 / 0.809, Hydra_FTP 0.867 / 0.855, Hydra_SSH 0.853 / 0.836, Java_Meterpreter
//! 0.833 / 0.821, Meterpreter 0.780 / 0.772, Web_Shell 0.867 / 0.852. No family is the
//! bottleneck: every one sits at 0.78-0.87, so no single attack kind that looks like normal
//! service traffic caps the figure; the normal traces' own spread does.
//!
//! Rank-averages and the length calibration use each detector's scores of training traces
//! under 5-fold (cover), 2-fold (Markov) or leave-one-out (df, kNN) models. Every variant
//! sits at 0.80-0.85: the validation normals include a tail of traces unlike any training
//! trace, which any novelty score against the pooled 833 training traces ranks with the
//! attacks. The goal (AUC 0.93, DR@1% 0.30) is not met.
//!
//! The GRU language model (plain Rust, single-threaded training: about 60 s for the defaults,
//! 180-330 s for H128 x 10 epochs on this 2-vCPU VM shared with a build) confirms it:
//! training loss keeps falling with capacity and epochs (0.99 -> 0.69 nats per syscall) while
//! AUC stays at 0.83-0.85, and windowed or top-quantile aggregations of its surprisal rank
//! far worse than the whole-trace mean. One visible cause: 2.6% of validation normals (112
//! traces) contain a syscall absent from training, against 0.4% of attacks; every
//! language-model score puts them at the top of the normals, which alone caps DR at 1% FA.
//! Its defaults were fixed before any evaluation; the other GRU rows were run on
//! validation + attack and are figures, not a tuning. The GRU is kept as an alternative
//! ([`crate::gru`], `--example adfa_gru`) and is not in the table `run_adfa` prints (its
//! training would take the run from seconds to minutes).

use std::fmt;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use bulkhead_detector::cover::{CoverTrainer, DEFAULT_MAX_SYSCALLS};
use crate::dataset::{AdfaDataset, read_adfa_zip};
use bulkhead_detector::DetectorError;
use crate::metrics::{RateAtFa, auc, rate_at_fa};
use crate::stide::Stide;

/// False-alarm budgets reported.
pub const FA_BUDGETS: [f64; 3] = [0.01, 0.05, 0.10];

/// STIDE window lengths reported.
pub const STIDE_N: [usize; 5] = [3, 4, 5, 6, 7];

/// The requirement the project's model is measured against (from the issue, not measured).
pub const GOAL_AUC: f64 = 0.93;
/// Required detection rate at 1% false alarms.
pub const GOAL_DR_AT_1PCT: f64 = 0.30;

/// One scored detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorRow {
    /// Detector name, e.g. `model (order 6)` or `stide n=3`.
    pub name: String,
    /// How a trace is scored.
    pub score: String,
    /// ROC AUC (Mann-Whitney, ties one half).
    pub auc: f64,
    /// Detection rate at each budget of [`FA_BUDGETS`].
    pub rates: Vec<RateAtFa>,
}

/// One attack family (the folder name under `Attack_Data_Master/` without its run number)
/// against all the normal validation traces: where the model finds attacks and where not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyRow {
    /// E.g. `Hydra_SSH`.
    pub family: String,
    /// Attack traces of the family.
    pub traces: usize,
    /// The project's model: AUC of this family against the normal traces.
    pub model_auc: f64,
    /// The project's model: detection rate of this family at each budget of [`FA_BUDGETS`]
    /// (thresholds from the normal traces, as for the whole attack set).
    pub model_rates: Vec<f64>,
    /// The best STIDE row overall (by AUC): this family's AUC.
    pub stide_auc: f64,
}

/// Trace and syscall counts of one dataset part.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PartSize {
    /// Traces.
    pub traces: usize,
    /// Syscalls over all traces.
    pub syscalls: usize,
}

/// Result of [`run_adfa`]; `Display` prints the side-by-side table, serde gives JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdfaReport {
    /// Archive evaluated.
    pub dataset: String,
    /// Training part (normal, learned from).
    pub training: PartSize,
    /// Validation part (normal, evaluated).
    pub validation: PartSize,
    /// Attack part (evaluated).
    pub attack: PartSize,
    /// Distinct normal sequences in the model's covering profile.
    pub profile_sequences: usize,
    /// Normal syscalls in the model's covering profile.
    pub profile_syscalls: usize,
    /// States of the suffix automaton derived from the profile.
    pub profile_states: usize,
    /// Cap on the profile's syscalls.
    pub profile_cap: usize,
    /// The project's model first, then STIDE n = 3..7.
    pub rows: Vec<DetectorRow>,
    /// Per attack family: the model and the best STIDE (named in `family_stide`).
    #[serde(default)]
    pub families: Vec<FamilyRow>,
    /// The STIDE row the families are compared with.
    #[serde(default)]
    pub family_stide: String,
    /// Whether the project's model meets AUC >= 0.93 and DR >= 0.30 at 1% FA.
    pub goal_met: bool,
    /// Wall time of the whole run, reading included.
    pub elapsed_secs: f64,
}

/// Reads the ADFA-LD zip at `dataset` and evaluates the project's model and STIDE n = 3..7.
pub fn run_adfa(dataset: &Path) -> Result<AdfaReport, DetectorError> {
    run_adfa_keeping_data(dataset).map(|(report, _)| report)
}

/// [`run_adfa`], also handing back the traces read, for further diagnostics on the same
/// data (e.g. [`crate::learning`]) without reading the archive again.
pub fn run_adfa_keeping_data(dataset: &Path) -> Result<(AdfaReport, AdfaDataset), DetectorError> {
    let start = Instant::now();
    let data = read_adfa_zip(dataset)?;
    let mut report = evaluate(&data)?;
    report.dataset = dataset.display().to_string();
    report.elapsed_secs = start.elapsed().as_secs_f64();
    Ok((report, data))
}

/// Evaluates an already loaded dataset (`dataset` and `elapsed_secs` left for the caller).
pub fn evaluate(data: &AdfaDataset) -> Result<AdfaReport, DetectorError> {
    let training: Vec<&[u16]> = data
        .training
        .iter()
        .map(|t| t.syscalls.as_slice())
        .collect();
    let normal: Vec<&[u16]> = data
        .validation
        .iter()
        .map(|t| t.syscalls.as_slice())
        .collect();
    let attack: Vec<&[u16]> = data.attack.iter().map(|t| t.syscalls.as_slice()).collect();

    // The model has no hyper-parameter: nothing is selected, on training data or otherwise.
    let mut trainer = CoverTrainer::new(DEFAULT_MAX_SYSCALLS)?;
    training.iter().for_each(|t| trainer.train_trace(t));
    let profile = trainer.finish();

    let mut scored = vec![score_row(
        "model (cover)".into(),
        "phrases/syscall, greedy cover by training sequences".into(),
        &normal,
        &attack,
        |t| profile.score_trace(t),
    )?];
    for n in STIDE_N {
        let stide = Stide::train(n, training.iter().copied())?;
        scored.push(score_row(
            format!("stide n={n}"),
            "mismatch rate".into(),
            &normal,
            &attack,
            |t| stide.score(t),
        )?);
    }
    let best_stide = (1..scored.len()).max_by(|&a, &b| scored[a].0.auc.total_cmp(&scored[b].0.auc)).unwrap_or(0);
    let families = families(data, &scored[0].1, &scored[0].2, &scored[best_stide].1, &scored[best_stide].2)?;
    let family_stide = scored[best_stide].0.name.clone();
    let rows: Vec<DetectorRow> = scored.into_iter().map(|(r, _, _)| r).collect();
    let model = &rows[0];
    let goal_met = model.auc >= GOAL_AUC && model.rates[0].detection_rate >= GOAL_DR_AT_1PCT;
    let size = |traces: &[&[u16]]| PartSize {
        traces: traces.len(),
        syscalls: traces.iter().map(|t| t.len()).sum(),
    };
    Ok(AdfaReport {
        dataset: String::new(),
        training: size(&training),
        validation: size(&normal),
        attack: size(&attack),
        profile_sequences: profile.sequences(),
        profile_syscalls: profile.len(),
        profile_states: profile.automaton_states(),
        profile_cap: profile.max_syscalls(),
        rows,
        families,
        family_stide,
        goal_met,
        elapsed_secs: 0.0,
    })
}

/// The attack family of a trace: its folder's name without the run number (`Adduser_3` ->
/// `Adduser`); `other` when it has none.
fn family_of(t: &crate::dataset::Trace) -> String {
    let folder = t.attack.as_deref().unwrap_or("other");
    let name = folder.trim_end_matches(|c: char| c.is_ascii_digit()).trim_end_matches('_');
    if name.is_empty() { folder.to_string() } else { name.to_string() }
}

/// Per attack family, in name order: the model's and the STIDE row's scores of its traces
/// against all the normal ones.
fn families(data: &AdfaDataset, normal: &[f64], attack: &[f64], stide_normal: &[f64], stide_attack: &[f64]) -> Result<Vec<FamilyRow>, DetectorError> {
    let mut by: std::collections::BTreeMap<String, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, t) in data.attack.iter().enumerate() {
        by.entry(family_of(t)).or_default().push(i);
    }
    by.into_iter()
        .map(|(family, idx)| {
            let m: Vec<f64> = idx.iter().map(|&i| attack[i]).collect();
            let st: Vec<f64> = idx.iter().map(|&i| stide_attack[i]).collect();
            Ok(FamilyRow {
                traces: idx.len(),
                model_auc: auc(normal, &m)?,
                model_rates: FA_BUDGETS.iter().map(|&fa| rate_at_fa(normal, &m, fa).map(|r| r.detection_rate)).collect::<Result<_, _>>()?,
                stide_auc: auc(stide_normal, &st)?,
                family,
            })
        })
        .collect()
}

/// Scores both classes with `score`, splitting the traces over two threads (the scorers are
/// read-only) because scoring 2.4 M syscalls dominates the run.
pub(crate) fn score_row(
    name: String,
    score_desc: String,
    normal: &[&[u16]],
    attack: &[&[u16]],
    score: impl Fn(&[u16]) -> f64 + Sync,
) -> Result<(DetectorRow, Vec<f64>, Vec<f64>), DetectorError> {
    let score_all = |traces: &[&[u16]]| -> Vec<f64> {
        let mid = traces.len() / 2;
        std::thread::scope(|s| {
            let first = s.spawn(|| traces[..mid].iter().map(|t| score(t)).collect::<Vec<f64>>());
            let mut second: Vec<f64> = traces[mid..].iter().map(|t| score(t)).collect();
            let mut all = first.join().expect("scoring thread panicked");
            all.append(&mut second);
            all
        })
    };
    let (n, a) = (score_all(normal), score_all(attack));
    let row = DetectorRow {
        name,
        score: score_desc,
        auc: auc(&n, &a)?,
        rates: FA_BUDGETS
            .iter()
            .map(|&fa| rate_at_fa(&n, &a, fa))
            .collect::<Result<_, _>>()?,
    };
    Ok((row, n, a))
}

impl fmt::Display for AdfaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ADFA-LD: {}", self.dataset)?;
        writeln!(
            f,
            "train {} traces ({} syscalls); normal = validation {} traces ({} syscalls); attack {} traces ({} syscalls)",
            self.training.traces,
            self.training.syscalls,
            self.validation.traces,
            self.validation.syscalls,
            self.attack.traces,
            self.attack.syscalls
        )?;
        writeln!(
            f,
            "model: sequence covering, no hyper-parameter; profile {} distinct training sequences, {} syscalls (cap {}), suffix automaton {} states",
            self.profile_sequences, self.profile_syscalls, self.profile_cap, self.profile_states
        )?;
        writeln!(f)?;
        write!(f, "{:<18} {:>7}", "detector", "AUC")?;
        for fa in FA_BUDGETS {
            write!(f, " {:>16}", format!("DR@{:.0}%FA (FA)", fa * 100.0))?;
        }
        writeln!(f, "  score")?;
        for r in &self.rows {
            write!(f, "{:<18} {:>7.4}", r.name, r.auc)?;
            for rate in &r.rates {
                write!(
                    f,
                    " {:>16}",
                    format!("{:.3} ({:.3})", rate.detection_rate, rate.false_alarm_rate)
                )?;
            }
            writeln!(f, "  {}", r.score)?;
        }
        if !self.families.is_empty() {
            writeln!(f)?;
            write!(f, "{:<18} {:>6} {:>7}", "attack family", "traces", "AUC")?;
            for fa in FA_BUDGETS {
                write!(f, " {:>8}", format!("DR@{:.0}%", fa * 100.0))?;
            }
            writeln!(f, "  (model)  AUC ({})", self.family_stide)?;
            for r in &self.families {
                write!(f, "{:<18} {:>6} {:>7.4}", r.family, r.traces, r.model_auc)?;
                for d in &r.model_rates {
                    write!(f, " {d:>8.3}")?;
                }
                writeln!(f, "           {:.4}", r.stide_auc)?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "goal for the model: AUC >= {GOAL_AUC} and DR@1%FA >= {GOAL_DR_AT_1PCT}: {}",
            if self.goal_met { "MET" } else { "NOT MET" }
        )?;
        write!(f, "run time {:.1} s", self.elapsed_secs)
    }
}
