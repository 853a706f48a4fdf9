//! Packing of short syscall sequences into one integer key.
//!
//! Hash tables keyed by `u128` are several times faster and smaller than tables keyed by
//! `Vec<u16>`, which matters because scoring does one lookup per order per syscall.

use std::hash::{BuildHasherDefault, Hasher};

/// Longest sequence a key can hold: 8 slots of 16 bits.
pub const MAX_GRAM: usize = 8;

pub use bulkhead_detector::MAX_SYSCALL;

/// Packs `seq` (at most [`MAX_GRAM`] syscalls, each at most [`MAX_SYSCALL`]) into a key.
/// Each syscall is stored +1, so sequences of different lengths never share a key and the
/// empty sequence is 0.
pub fn pack(seq: &[u16]) -> u128 {
    debug_assert!(
        seq.len() <= MAX_GRAM,
        "sequence of {} is longer than {MAX_GRAM}",
        seq.len()
    );
    seq.iter()
        .fold(0u128, |acc, &s| (acc << 16) | (s as u128 + 1))
}

/// Inverse of [`pack`].
pub fn unpack(mut key: u128) -> Vec<u16> {
    let mut out = Vec::with_capacity(MAX_GRAM);
    while key != 0 {
        out.push((key & 0xffff) as u16 - 1);
        key >>= 16;
    }
    out.reverse();
    out
}

/// Multiply-fold hasher for `u128` keys: the keys are already well spread in their low bits
/// and SipHash's DoS resistance buys nothing for a table built from trusted training data.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u128(&mut self, v: u128) {
        let folded = (v as u64) ^ ((v >> 64) as u64).rotate_left(29);
        self.0 = (self.0 ^ folded)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(31);
    }
}

/// Hash map keyed by packed sequences.
pub type KeyMap<V> = std::collections::HashMap<u128, V, BuildHasherDefault<KeyHasher>>;
/// Hash set of packed sequences.
pub type KeySet = std::collections::HashSet<u128, BuildHasherDefault<KeyHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_and_separates_lengths() {
        for seq in [
            vec![],
            vec![0],
            vec![0, 0],
            vec![5, 3, 6],
            vec![MAX_SYSCALL; MAX_GRAM],
        ] {
            assert_eq!(unpack(pack(&seq)), seq, "round trip of {seq:?}");
        }
        assert_ne!(pack(&[0]), pack(&[0, 0]), "[0] and [0,0] must differ");
        assert_eq!(pack(&[]), 0, "empty sequence is the empty context");
    }
}
