//! STIDE (Forrest, Hofmeyr et al.): the set of length-n syscall windows seen in normal
//! training traces. The baseline the project's model is compared with.

use bulkhead_detector::DetectorError;
use crate::ngram::{KeySet, MAX_GRAM, pack};

/// A STIDE database of n-grams.
#[derive(Debug, Clone)]
pub struct Stide {
    n: usize,
    db: KeySet,
}

impl Stide {
    /// Learns the n-grams of `traces`; `n` must be in `1..=8`.
    pub fn train<'a>(
        n: usize,
        traces: impl IntoIterator<Item = &'a [u16]>,
    ) -> Result<Self, DetectorError> {
        if n == 0 || n > MAX_GRAM {
            return Err(DetectorError::InvalidParameter {
                name: "stide n",
                value: n.to_string(),
                reason: "must be in 1..=8",
            });
        }
        let mut db = KeySet::default();
        for trace in traces {
            db.extend(trace.windows(n).map(pack));
        }
        Ok(Self { n, db })
    }

    /// Window length.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of distinct n-grams in the database.
    pub fn len(&self) -> usize {
        self.db.len()
    }

    /// Whether the database is empty.
    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }

    /// Mismatch rate: the fraction of the trace's n-gram occurrences (sliding, step 1) that
    /// are not in the database. A trace shorter than n has no window and scores 0.
    pub fn score(&self, trace: &[u16]) -> f64 {
        let windows = trace.len().saturating_sub(self.n - 1);
        if windows == 0 {
            return 0.0;
        }
        let misses = trace
            .windows(self.n)
            .filter(|w| !self.db.contains(&pack(w)))
            .count();
        misses as f64 / windows as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toy_traces_score_their_mismatch_rate() {
        let normal: Vec<u16> = vec![1, 2, 3, 1, 2, 3, 1, 2, 3];
        let stide = Stide::train(3, [normal.as_slice()]).unwrap();
        assert_eq!(stide.len(), 3, "windows 123, 231, 312");
        assert_eq!(
            stide.score(&[2, 3, 1, 2]),
            0.0,
            "a seen stream has no mismatch"
        );
        // Windows 123, 239, 391, 912, 123: three of five are new.
        let s = stide.score(&[1, 2, 3, 9, 1, 2, 3]);
        assert!((s - 3.0 / 5.0).abs() < 1e-12, "planted 9: {s}");
        assert_eq!(stide.score(&[7, 7]), 0.0, "shorter than n");
        assert!(
            Stide::train(0, [normal.as_slice()]).is_err(),
            "n = 0 is rejected"
        );
        assert!(
            Stide::train(9, [normal.as_slice()]).is_err(),
            "n = 9 is rejected"
        );
    }

    #[test]
    fn windows_do_not_span_traces() {
        let a: Vec<u16> = vec![1, 2];
        let b: Vec<u16> = vec![3, 4];
        let stide = Stide::train(2, [a.as_slice(), b.as_slice()]).unwrap();
        assert_eq!(
            stide.score(&[2, 3]),
            1.0,
            "2->3 only appears across the trace boundary"
        );
    }
}
