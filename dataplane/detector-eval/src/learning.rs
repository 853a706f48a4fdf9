//! A diagnostic **outside the protocol**: how the model's ADFA-LD figures move when it
//! learns from more normal traces than `Training_Data_Master` holds.
//!
//! Why it exists: under the protocol (learn from the 833 training traces, judge the 4,372
//! validation normals and the 746 attacks) every model family tried lands at AUC 0.80-0.85
//! (the notes in [`crate::adfa`]). The false alarms that cap it are validation normals unlike
//! any training trace. If that is a shortage of normal data rather than a weak model, a model
//! that learns from more normal traces should close the gap; if it does not, the data caps
//! the figure. A deployed workload learns for as long as its learning window lasts, so this is
//! also the question an operator asks: does a longer learning window buy detection?
//!
//! Method: a seeded shuffle sets a quarter of the validation normals aside (the held-out
//! normals, the same at every point); each point learns from the training traces plus the
//! first `share x validation` traces of the shuffled remainder, and judges the held-out
//! normals against all the attacks. No figure feeds back into any model: the points, the
//! seed and the STIDE window ([`CURVE_STIDE_N`]) were fixed before the first run.

use std::fmt;

use serde::{Deserialize, Serialize};

use bulkhead_detector::DetectorError;
use bulkhead_detector::cover::{CoverTrainer, DEFAULT_MAX_SYSCALLS};

use crate::adfa::{FA_BUDGETS, score_row};
use crate::dataset::AdfaDataset;
use crate::stide::Stide;

/// Shares of the validation normals added to the training traces, one point each; the
/// remaining quarter is held out.
pub const CURVE_SHARES: [f64; 4] = [0.0, 0.25, 0.5, 0.75];

/// The STIDE window shown beside the model at each point (Forrest et al.'s classic 6).
pub const CURVE_STIDE_N: usize = 6;

/// Seed of the shuffle that picks the held-out quarter.
pub const CURVE_SEED: u64 = 0x5eed_adfa;

/// One point of the curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Validation normals added to the training traces.
    pub added_normal: usize,
    /// Traces learned from (training + added).
    pub learned_traces: usize,
    /// Syscalls the covering profile could not hold (its cap); 0 means all were learned.
    pub dropped_syscalls: u64,
    /// The project's model (sequence cover): AUC, held-out normals against the attacks.
    pub model_auc: f64,
    /// The model's detection rate at each budget of [`FA_BUDGETS`].
    pub model_rates: Vec<f64>,
    /// STIDE n = [`CURVE_STIDE_N`] learned from the same traces: AUC.
    pub stide_auc: f64,
    /// STIDE's detection rate at each budget of [`FA_BUDGETS`].
    pub stide_rates: Vec<f64>,
}

/// Result of [`learning_curve`]; `Display` prints it as a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearningCurve {
    /// Validation normals held out (judged at every point, never learned).
    pub held_out: usize,
    /// Attack traces judged at every point.
    pub attacks: usize,
    /// Seed of the held-out shuffle.
    pub seed: u64,
    /// One point per share of [`CURVE_SHARES`].
    pub points: Vec<CurvePoint>,
}

/// splitmix64: a seeded, dependency-free generator; the shuffle only has to be reproducible.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Splits `0..n` by a seeded Fisher-Yates shuffle into (the pool that points learn from, in
/// shuffled order; the held-out quarter).
pub fn split(n: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    let held = idx.split_off(n - n / 4);
    (idx, held)
}

fn syscalls(t: &crate::dataset::Trace) -> &[u16] {
    &t.syscalls
}

/// Computes the curve on a loaded dataset (see the module doc for the method).
pub fn learning_curve(data: &AdfaDataset, seed: u64) -> Result<LearningCurve, DetectorError> {
    let (pool, held) = split(data.validation.len(), seed);
    let held_out: Vec<&[u16]> = held.iter().map(|&i| syscalls(&data.validation[i])).collect();
    let attack: Vec<&[u16]> = data.attack.iter().map(syscalls).collect();
    let mut points = Vec::with_capacity(CURVE_SHARES.len());
    for share in CURVE_SHARES {
        let added = ((share * data.validation.len() as f64) as usize).min(pool.len());
        let learned: Vec<&[u16]> = data
            .training
            .iter()
            .map(syscalls)
            .chain(pool[..added].iter().map(|&i| syscalls(&data.validation[i])))
            .collect();
        let mut trainer = CoverTrainer::new(DEFAULT_MAX_SYSCALLS)?;
        learned.iter().for_each(|t| trainer.train_trace(t));
        let dropped_syscalls = trainer.dropped();
        let profile = trainer.finish();
        let (model, _, _) = score_row(String::new(), String::new(), &held_out, &attack, |t| {
            profile.score_trace(t)
        })?;
        let stide = Stide::train(CURVE_STIDE_N, learned.iter().copied())?;
        let (st, _, _) = score_row(String::new(), String::new(), &held_out, &attack, |t| stide.score(t))?;
        let rates = |r: &crate::adfa::DetectorRow| r.rates.iter().map(|x| x.detection_rate).collect();
        points.push(CurvePoint {
            added_normal: added,
            learned_traces: learned.len(),
            dropped_syscalls,
            model_auc: model.auc,
            model_rates: rates(&model),
            stide_auc: st.auc,
            stide_rates: rates(&st),
        });
    }
    Ok(LearningCurve {
        held_out: held_out.len(),
        attacks: attack.len(),
        seed,
        points,
    })
}

impl fmt::Display for LearningCurve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "learning curve (OUTSIDE the protocol: learns from validation normals too): {} held-out normals vs {} attacks, seed {:#x}",
            self.held_out, self.attacks, self.seed
        )?;
        write!(f, "{:>8} {:>8} {:>8} {:>7}", "added", "learned", "dropped", "AUC")?;
        for fa in FA_BUDGETS {
            write!(f, " {:>7}", format!("DR@{:.0}%", fa * 100.0))?;
        }
        write!(f, "   {:>7}", format!("stide{CURVE_STIDE_N}"))?;
        for fa in FA_BUDGETS {
            write!(f, " {:>7}", format!("DR@{:.0}%", fa * 100.0))?;
        }
        writeln!(f)?;
        for p in &self.points {
            write!(f, "{:>8} {:>8} {:>8} {:>7.4}", p.added_normal, p.learned_traces, p.dropped_syscalls, p.model_auc)?;
            for d in &p.model_rates {
                write!(f, " {d:>7.3}")?;
            }
            write!(f, "   {:>7.4}", p.stide_auc)?;
            for d in &p.stide_rates {
                write!(f, " {d:>7.3}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_seeded_disjoint_and_holds_out_a_quarter() {
        let (pool, held) = split(4372, CURVE_SEED);
        assert_eq!(held.len(), 4372 / 4);
        assert_eq!(pool.len() + held.len(), 4372);
        let mut all: Vec<usize> = pool.iter().chain(&held).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..4372).collect::<Vec<_>>(), "every trace exactly once");
        assert_eq!(split(4372, CURVE_SEED), (pool.clone(), held.clone()), "same seed, same split");
        assert_ne!(split(4372, CURVE_SEED + 1).1, held, "another seed, another held-out set");
        // A shuffle, not the last quarter in order.
        assert!(held.windows(2).any(|w| w[0] > w[1]), "held-out set looks unshuffled: {:?}", &held[..8]);
    }

    #[test]
    fn more_normal_data_is_learned_and_held_out_normals_never_are() {
        // Validation normals of a loop training never shows: learning a share of them must
        // make the held-out ones (same loop) look normal, so the model's AUC rises.
        let trace = |name: String, s: Vec<u16>, attack: Option<&str>| crate::dataset::Trace {
            name,
            attack: attack.map(str::to_string),
            syscalls: s,
        };
        let training = (0..20).map(|i| trace(format!("t{i}"), [3u16, 4, 5, 6].repeat(10 + i), None)).collect();
        let validation = (0..40).map(|i| trace(format!("v{i}"), [13u16, 37, 13, 142].repeat(10 + i % 7), None)).collect();
        let attack = (0..10)
            .map(|i| trace(format!("a{i}"), [162u16, 114, 162, 3].repeat(10 + i), Some("x")))
            .collect();
        let curve = learning_curve(&AdfaDataset { training, validation, attack }, CURVE_SEED).expect("curve");
        println!("{curve}");
        assert_eq!(curve.held_out, 10);
        assert_eq!(curve.points.iter().map(|p| p.added_normal).collect::<Vec<_>>(), [0, 10, 20, 30]);
        assert_eq!(curve.points.iter().map(|p| p.learned_traces).collect::<Vec<_>>(), [20, 30, 40, 50]);
        assert!(curve.points[0].model_auc < 0.75, "unseen loop vs unseen attack: {curve}");
        assert!(curve.points[1].model_auc > 0.99, "the loop learned: {curve}");
    }
}
