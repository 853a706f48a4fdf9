//! Hash maps with a fast, non-cryptographic hasher. The compiler hashes labels, names and
//! identity numbers it built itself, a few million times per compile at cluster scale; SipHash's
//! resistance to collision attacks buys nothing there and cost about a tenth of a compile.

/// `std::collections::HashMap` with foldhash.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// `std::collections::HashSet` with foldhash.
pub type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
