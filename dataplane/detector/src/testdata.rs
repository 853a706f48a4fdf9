//! Synthetic syscall traces shared by the models' unit tests (here and in the evaluation
//! crate).

/// Deterministic pseudo-random syscalls (xorshift), so tests need no dependency.
pub fn noise(seed: u64, n: usize, alphabet: u16) -> Vec<u16> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % alphabet as u64) as u16
        })
        .collect()
}

/// Normal behaviour: a loop of open/read/close with occasional stat, like a small server.
pub fn normal_trace(seed: u64, len: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(len + 5);
    let r = noise(seed, len, 10);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(&[2, 0, 0, 3]);
        if r[i % r.len()] < 3 {
            out.push(4);
        }
        i += 1;
    }
    out.truncate(len);
    out
}
