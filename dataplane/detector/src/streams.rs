//! Normal syscall streams gathered for training, under a cap: what every trainer (the cover
//! model here, the evaluation's models beside it) holds before it builds its model.

use crate::DetectorError;

/// Streams of syscalls, at most `max_syscalls` in all (later ones are dropped and counted).
/// Syscall numbers above [`crate::MAX_SYSCALL`] are held as it.
#[derive(Debug, Clone)]
pub struct Streams {
    max_syscalls: usize,
    held: usize,
    streams: Vec<Vec<u16>>,
    current: Vec<u16>,
    dropped: u64,
}

impl Streams {
    /// Holding at most `max_syscalls` (positive) syscalls.
    pub fn new(max_syscalls: usize) -> Result<Self, DetectorError> {
        if max_syscalls == 0 {
            return Err(DetectorError::InvalidParameter { name: "max_syscalls", value: "0".into(), reason: "must be positive" });
        }
        Ok(Self { max_syscalls, held: 0, streams: Vec::new(), current: Vec::new(), dropped: 0 })
    }

    /// One syscall of the current stream.
    pub fn push(&mut self, syscall: u16) {
        if self.held >= self.max_syscalls {
            self.dropped += 1;
            return;
        }
        self.current.push(syscall.min(crate::MAX_SYSCALL));
        self.held += 1;
    }

    /// Ends the current stream, so that no pattern can span two streams.
    pub fn end_trace(&mut self) {
        if !self.current.is_empty() {
            self.streams.push(std::mem::take(&mut self.current));
        }
    }

    /// A whole trace, ended.
    pub fn train_trace(&mut self, trace: &[u16]) {
        trace.iter().for_each(|&s| self.push(s));
        self.end_trace();
    }

    /// Syscalls held (never above `max_syscalls`).
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether nothing was held yet.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Syscalls not held because the cap was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The cap.
    pub fn max_syscalls(&self) -> usize {
        self.max_syscalls
    }

    /// The streams (an unfinished one ended first).
    pub fn finish(mut self) -> Vec<Vec<u16>> {
        self.end_trace();
        self.streams
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_drops_and_counts_and_streams_stay_apart() {
        let mut s = Streams::new(5).expect("streams");
        s.train_trace(&[1, 2, 3]);
        s.push(4);
        s.push(5);
        s.push(6);
        assert_eq!((s.len(), s.dropped()), (5, 1));
        assert_eq!(s.finish(), vec![vec![1, 2, 3], vec![4, 5]]);
        assert!(Streams::new(0).is_err());
    }
}
