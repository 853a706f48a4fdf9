//! Detection metrics over per-trace scores (higher = more anomalous).

use serde::{Deserialize, Serialize};

use bulkhead_detector::DetectorError;

/// ROC AUC as the Mann-Whitney statistic: the probability that a random attack trace scores
/// higher than a random normal one, ties counting one half (midranks).
pub fn auc(normal: &[f64], attack: &[f64]) -> Result<f64, DetectorError> {
    non_empty("auc", normal, attack)?;
    let mut all: Vec<(f64, bool)> = normal
        .iter()
        .map(|&s| (s, false))
        .chain(attack.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut attack_rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        // 1-based ranks i+1..=j share their mean.
        let midrank = (i + 1 + j) as f64 / 2.0;
        attack_rank_sum += midrank * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (n, a) = (normal.len() as f64, attack.len() as f64);
    Ok((attack_rank_sum - a * (a + 1.0) / 2.0) / (a * n))
}

/// Detection rate at a false-alarm budget, with the threshold that achieved it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateAtFa {
    /// False-alarm budget asked for (fraction of normal traces).
    pub target_fa: f64,
    /// A trace alarms when its score is strictly greater than this.
    pub threshold: f64,
    /// Fraction of attack traces that alarm.
    pub detection_rate: f64,
    /// Fraction of normal traces that alarm (never above `target_fa`).
    pub false_alarm_rate: f64,
}

/// Detection rate when the threshold is set from the normal scores so that at most
/// `floor(target_fa * normals)` normal traces score strictly above it. The threshold is a
/// normal trace's score; normal traces tied with it do not alarm, so when many normal traces
/// tie (e.g. STIDE's many zeros) the achieved false-alarm rate can be well below the budget
/// and the detection rate is the honest one for that budget, not an interpolation.
pub fn rate_at_fa(
    normal: &[f64],
    attack: &[f64],
    target_fa: f64,
) -> Result<RateAtFa, DetectorError> {
    non_empty("detection rate", normal, attack)?;
    let mut sorted = normal.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    // The epsilon keeps e.g. 0.29 * 100 from flooring to 28.
    let allowed = ((target_fa * sorted.len() as f64) + 1e-9).floor() as usize;
    let threshold = if allowed >= sorted.len() {
        f64::NEG_INFINITY
    } else {
        sorted[sorted.len() - 1 - allowed]
    };
    let above = |xs: &[f64]| xs.iter().filter(|&&s| s > threshold).count() as f64 / xs.len() as f64;
    Ok(RateAtFa {
        target_fa,
        threshold,
        detection_rate: above(attack),
        false_alarm_rate: above(normal),
    })
}

fn non_empty(metric: &'static str, normal: &[f64], attack: &[f64]) -> Result<(), DetectorError> {
    if normal.is_empty() {
        return Err(DetectorError::EmptyScores {
            metric,
            class: "normal",
        });
    }
    if attack.is_empty() {
        return Err(DetectorError::EmptyScores {
            metric,
            class: "attack",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn auc_known_values() {
        let perfect = auc(&[0.0, 1.0], &[2.0, 3.0]).unwrap();
        assert!(close(perfect, 1.0), "separated classes: {perfect}");
        let inverted = auc(&[2.0, 3.0], &[0.0, 1.0]).unwrap();
        assert!(close(inverted, 0.0), "inverted classes: {inverted}");
        // Pairs (n, a): (1,2) win, (1,0) loss, (3,2) loss, (3,0) loss -> 1/4.
        let quarter = auc(&[1.0, 3.0], &[2.0, 0.0]).unwrap();
        assert!(close(quarter, 0.25), "mixed: {quarter}");
    }

    #[test]
    fn auc_counts_ties_as_half() {
        let all_tied = auc(&[1.0, 1.0, 1.0], &[1.0, 1.0]).unwrap();
        assert!(close(all_tied, 0.5), "all tied: {all_tied}");
        // Pairs: (0,0) tie=.5, (0,2) win, (2,0) loss, (2,2) tie=.5 -> 2/4.
        let partly = auc(&[0.0, 2.0], &[0.0, 2.0]).unwrap();
        assert!(close(partly, 0.5), "partly tied: {partly}");
        // (1 vs 1) tie .5, (1 vs 2) win -> 1.5/2.
        let one_tie = auc(&[1.0], &[1.0, 2.0]).unwrap();
        assert!(close(one_tie, 0.75), "one tie: {one_tie}");
    }

    #[test]
    fn rate_at_fa_uses_normal_quantile_strictly() {
        let normal: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let attack = [98.5, 97.5, 50.0, 200.0];
        // 1% of 100 = 1 normal may alarm: threshold is the second largest normal, 98.
        let r = rate_at_fa(&normal, &attack, 0.01).unwrap();
        assert_eq!(r.threshold, 98.0, "{r:?}");
        assert!(
            close(r.false_alarm_rate, 0.01) && close(r.detection_rate, 0.5),
            "{r:?}"
        );
        let r = rate_at_fa(&normal, &attack, 0.29).unwrap();
        assert_eq!(r.threshold, 70.0, "0.29 * 100 must allow 29 alarms: {r:?}");
    }

    #[test]
    fn rate_at_fa_ties_never_exceed_budget() {
        // 95 normals tie at 0: a 10% budget cannot be spent without alarming all 95.
        let normal: Vec<f64> = std::iter::repeat_n(0.0, 95)
            .chain((1..=5).map(|i| i as f64))
            .collect();
        let r = rate_at_fa(&normal, &[0.0, 0.5, 6.0], 0.10).unwrap();
        assert_eq!(r.threshold, 0.0, "{r:?}");
        assert!(
            close(r.false_alarm_rate, 0.05),
            "only the 5 untied normals alarm: {r:?}"
        );
        assert!(close(r.detection_rate, 2.0 / 3.0), "{r:?}");
        assert!(
            rate_at_fa(&[], &[1.0], 0.1).is_err(),
            "empty normals must be an error"
        );
    }
}
