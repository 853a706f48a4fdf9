//! Sorting of packed integer keys by radix. The compiler's largest sorts are per local
//! identity: every (peer, rule) pair of its rules' peer sets, tens of thousands of keys each, for
//! every local identity of a node. A comparison sort spent about a tenth of a node's compile
//! there; a radix sort passes over the keys once per byte that varies.

/// Sorts `keys` ascending (the result of `sort_unstable`).
pub(crate) fn sort_u64(keys: &mut Vec<u64>) {
    sort_u64_from(keys, 0);
}

/// Sorts `keys` ascending when they are already ascending in their low `bits` among keys
/// equal above them (each run of equal high parts comes in order): only the high part is
/// sorted, stably.
pub(crate) fn sort_u64_from(keys: &mut Vec<u64>, bits: u32) {
    // Below this a comparison sort is as fast and needs no second buffer.
    if keys.len() < 256 {
        keys.sort_unstable();
        return;
    }
    let (or, and) = keys.iter().fold((0u64, u64::MAX), |(o, a), &k| (o | k, a & k));
    // Bits that differ between keys; bytes where none does need no pass, nor do the bytes of
    // the low part (LSD radix passes are stable: the input's order stands among equal digits).
    let varying = (or & !and) & (u64::MAX << bits);
    passes(keys, |&k| k, varying);
}

/// Sorts `items` by a `u32` key, stably (the result of `sort_by_key`).
pub(crate) fn sort_by_u32_key<T: Copy + Default>(items: &mut Vec<T>, key: impl Fn(&T) -> u32) {
    if items.len() < 256 {
        items.sort_by_key(|t| key(t));
        return;
    }
    let (or, and) = items.iter().fold((0u32, u32::MAX), |(o, a), t| (o | key(t), a & key(t)));
    passes(items, |t| u64::from(key(t)), u64::from(or & !and));
}

/// Stable LSD passes over the bytes of `key` set in `varying` (bytes where no key differs
/// need no pass).
fn passes<T: Copy + Default>(items: &mut Vec<T>, key: impl Fn(&T) -> u64, varying: u64) {
    let mut from = std::mem::take(items);
    let mut to = vec![T::default(); from.len()];
    for byte in 0..8 {
        let shift = byte * 8;
        if (varying >> shift) & 0xff == 0 {
            continue;
        }
        let mut count = [0usize; 256];
        for t in &from {
            count[((key(t) >> shift) & 0xff) as usize] += 1;
        }
        let mut at = 0;
        for c in count.iter_mut() {
            let n = *c;
            *c = at;
            at += n;
        }
        // In input order within a digit: each pass is stable, so the whole sort is.
        for t in &from {
            let d = ((key(t) >> shift) & 0xff) as usize;
            to[count[d]] = *t;
            count[d] += 1;
        }
        std::mem::swap(&mut from, &mut to);
    }
    *items = from;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sorts_as_a_comparison_sort_does(mut keys in proptest::collection::vec(any::<u64>(), 0..2000), mask in any::<u64>(), len in 0usize..2000) {
            // Masked keys share bytes, so some passes are skipped; short inputs take the
            // comparison path.
            keys.truncate(len);
            let mut masked: Vec<u64> = keys.iter().map(|k| k & mask).collect();
            let mut want = masked.clone();
            want.sort_unstable();
            super::sort_u64(&mut masked);
            prop_assert_eq!(masked, want, "mask {:#x}", mask);
        }

        #[test]
        fn sorts_high_parts_keeping_ordered_low_parts(highs in proptest::collection::vec(any::<u32>(), 0..2000), mask in any::<u32>()) {
            // Low parts ascending in input order, as address claims come in model order.
            let mut keys: Vec<u64> = highs.iter().enumerate().map(|(i, h)| u64::from(h & mask) << 32 | i as u64).collect();
            let mut want = keys.clone();
            want.sort_unstable();
            super::sort_u64_from(&mut keys, 32);
            prop_assert_eq!(keys, want, "mask {:#x}", mask);
        }

        #[test]
        fn sorts_by_key_stably(items in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..2000), mask in any::<u32>()) {
            // Masked keys repeat, so stability shows: equal keys keep their input order.
            let items: Vec<(u32, u32)> = items.into_iter().enumerate().map(|(i, (k, _))| (k & mask, i as u32)).collect();
            let mut want = items.clone();
            want.sort_by_key(|t| t.0);
            let mut got = items;
            super::sort_by_u32_key(&mut got, |t| t.0);
            prop_assert_eq!(got, want, "mask {:#x}", mask);
        }
    }
}
