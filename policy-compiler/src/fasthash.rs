//! Hash maps with a fast, non-cryptographic hasher. The compiler hashes labels, names and
//! identity numbers it built itself, a few million times per compile at cluster scale; SipHash's
//! resistance to collision attacks buys nothing there and cost about a tenth of a compile.

/// `std::collections::HashMap` with foldhash.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// `std::collections::HashSet` with foldhash.
pub type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// A key with its hash computed once. A map of these hashes a `u64` when it grows or probes,
/// not the key: the compiler's grouping keys hold label maps, whose hashing is most of a
/// lookup, and a growing map would hash every key again.
#[derive(Clone, Debug)]
pub(crate) struct Prehashed<K> {
    pub hash: u64,
    pub key: K,
}

impl<K: std::hash::Hash> Prehashed<K> {
    /// `key` with its hash by `state` (one state per map: equal keys must get equal hashes).
    pub fn new(state: &foldhash::fast::RandomState, key: K) -> Self {
        use std::hash::BuildHasher;
        Prehashed { hash: state.hash_one(&key), key }
    }
}

impl<K> std::hash::Hash for Prehashed<K> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash);
    }
}

impl<K: PartialEq> PartialEq for Prehashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for Prehashed<K> {}
