//! Port ranges as LPM prefixes over the 16 port bits of a policy key.

use bulkhead_common::PORT_KEY_FIXED_BITS;

/// A port prefix: `port` with its low `16 - bits` bits zero; covers `port..port + 2^(16-bits)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortPrefix {
    pub port: u16,
    /// Significant port bits, 0..=16.
    pub bits: u8,
}

impl PortPrefix {
    /// Prefix length of the whole port key (48..=64).
    pub fn key_prefix_len(self) -> u32 {
        PORT_KEY_FIXED_BITS + u32::from(self.bits)
    }

    pub fn contains(self, port: u16) -> bool {
        port & port_mask(self.bits) == self.port
    }
}

/// Mask keeping the top `bits` of a port.
pub fn port_mask(bits: u8) -> u16 {
    if bits == 0 { 0 } else { u16::MAX << (16 - u32::from(bits.min(16))) }
}

/// The minimal set of aligned prefixes covering exactly `start..=end` (empty if `start > end`).
/// Greedy from the left is minimal: each step takes the largest aligned block that starts at
/// the cursor and does not pass `end`.
pub fn port_prefixes(start: u16, end: u16) -> Vec<PortPrefix> {
    let mut out = Vec::new();
    let (mut cur, end) = (u32::from(start), u32::from(end));
    while cur <= end {
        let mut size_log = if cur == 0 { 16 } else { cur.trailing_zeros().min(16) };
        while cur + (1 << size_log) - 1 > end {
            size_log -= 1;
        }
        out.push(PortPrefix { port: cur as u16, bits: (16 - size_log) as u8 });
        cur += 1 << size_log;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(start: u16, end: u16) {
        let prefixes = port_prefixes(start, end);
        for p in &prefixes {
            assert_eq!(p.port & !port_mask(p.bits), 0, "{p:?} not aligned for {start}..={end}");
        }
        // Disjoint and exactly covering: count covered ports, compare with the range size.
        let total: u64 = prefixes.iter().map(|p| 1u64 << (16 - p.bits)).sum();
        assert_eq!(total, u64::from(end) - u64::from(start) + 1, "size of {start}..={end}");
        for probe in [start, end, start.wrapping_sub(1), end.wrapping_add(1), start / 2 + end / 2] {
            let inside = (start..=end).contains(&probe);
            let covered = prefixes.iter().filter(|p| p.contains(probe)).count();
            assert_eq!(covered, usize::from(inside), "port {probe} in {start}..={end}: {prefixes:?}");
        }
    }

    #[test]
    fn exhaustive_small_ranges() {
        for start in 0..=70u16 {
            for end in start..=70u16 {
                check(start, end);
                let covered: Vec<u16> =
                    (0..=80).filter(|&p| port_prefixes(start, end).iter().any(|x| x.contains(p))).collect();
                assert_eq!(covered, (start..=end).collect::<Vec<_>>(), "{start}..={end}");
            }
        }
    }

    #[test]
    fn big_ranges() {
        for (s, e) in [(0, 65535), (1, 65535), (1024, 65535), (80, 8080), (32768, 60999), (65535, 65535), (0, 0)] {
            check(s, e);
        }
        assert_eq!(port_prefixes(0, 65535), vec![PortPrefix { port: 0, bits: 0 }], "whole space is one /80");
        assert_eq!(port_prefixes(1024, 65535).len(), 6, "1024..=65535 = 1024/6,2048/5,..,32768/1");
        assert_eq!(port_prefixes(80, 80), vec![PortPrefix { port: 80, bits: 16 }]);
        assert_eq!(PortPrefix { port: 80, bits: 16 }.key_prefix_len(), 64);
        // Worst case for 16 bits is 30 prefixes.
        assert_eq!(port_prefixes(1, 65534).len(), 30);
    }

    #[test]
    fn empty_when_reversed() {
        assert!(port_prefixes(10, 9).is_empty(), "start > end covers nothing");
    }
}
