//! Choice of the model's order from normal training data alone.
//!
//! The trace score is the mean surprisal per syscall, i.e. the trace's cross-entropy under the
//! model, so the order is the one with the lowest cross-entropy on normal traces it was not
//! trained on: two-fold cross-validation over the training traces (even / odd positions in
//! name order). No attack or evaluation trace is involved.

use serde::{Deserialize, Serialize};

use bulkhead_detector::DetectorError;
use crate::model::Trainer;

/// Held-out cross-entropy of one candidate order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OrderCandidate {
    /// N-gram length tried.
    pub order: usize,
    /// Mean surprisal per held-out training syscall, in bits.
    pub heldout_bits: f64,
}

/// Outcome of [`select_order`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSelection {
    /// Every candidate with its held-out cross-entropy.
    pub candidates: Vec<OrderCandidate>,
    /// The order with the lowest held-out cross-entropy (the smaller order on a tie).
    pub chosen: usize,
}

/// Picks the order among `orders` by two-fold cross-validated cross-entropy on `traces`.
pub fn select_order(
    traces: &[&[u16]],
    orders: &[usize],
    max_ngrams: usize,
) -> Result<OrderSelection, DetectorError> {
    if traces.len() < 2 || orders.is_empty() {
        return Err(DetectorError::InvalidParameter {
            name: "select_order input",
            value: format!("{} traces, {} orders", traces.len(), orders.len()),
            reason: "needs at least 2 traces and 1 order",
        });
    }
    let fold = |parity: usize| {
        traces
            .iter()
            .enumerate()
            .filter(move |(i, _)| i % 2 == parity)
            .map(|(_, t)| *t)
    };
    let mut candidates = Vec::with_capacity(orders.len());
    for &order in orders {
        let (mut bits, mut syscalls) = (0.0, 0usize);
        for held_out in 0..2 {
            let mut trainer = Trainer::new(order, max_ngrams)?;
            fold(1 - held_out).for_each(|t| trainer.train_trace(t));
            let profile = trainer.finish();
            for t in fold(held_out) {
                bits += profile.score_trace(t) * t.len() as f64;
                syscalls += t.len();
            }
        }
        candidates.push(OrderCandidate {
            order,
            heldout_bits: bits / syscalls.max(1) as f64,
        });
    }
    let chosen = candidates
        .iter()
        .min_by(|a, b| {
            a.heldout_bits
                .total_cmp(&b.heldout_bits)
                .then(a.order.cmp(&b.order))
        })
        .map(|c| c.order)
        .unwrap_or(orders[0]);
    Ok(OrderSelection { candidates, chosen })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_an_order_that_captures_the_structure() {
        // Syscall 9 follows "1 2" but 8 follows "3 2": order 1-2 cannot tell them apart.
        let traces: Vec<Vec<u16>> = (0..10).map(|_| [1, 2, 9, 3, 2, 8].repeat(30)).collect();
        let refs: Vec<&[u16]> = traces.iter().map(Vec::as_slice).collect();
        let sel = select_order(&refs, &[1, 2, 3, 4], 10_000).unwrap();
        assert!(sel.chosen >= 3, "needs two syscalls of context: {sel:?}");
        assert_eq!(sel.candidates.len(), 4);
        assert!(
            select_order(&refs[..1], &[2], 10).is_err(),
            "one trace cannot be split"
        );
    }
}
