//! The project's syscall-behaviour model: *sequence covering* of a stream by the normal
//! sequences of one workload.
//!
//! A stream is parsed greedily, left to right, into phrases: each phrase is the longest
//! run of syscalls, starting where the previous phrase ended, that occurs contiguously in
//! some normal (training) sequence; a syscall never seen in training is a phrase of its own.
//! The anomaly score is the number of phrases per syscall, in `(0, 1]`: normal behaviour is
//! covered by few long stretches of known behaviour, a foreign burst breaks the cover into
//! many short pieces. Unlike an n-gram model there is no order to choose: the matching
//! context is as long as the data allows, and there is no smoothing parameter.
//!
//! Why this model: on ADFA-LD it scored above the variable-order Markov model
//! ([`crate::model`]), n-gram document-frequency rarity, kNN on syscall histograms and their
//! rank-averaged combinations, and on a par with the other covering variants but with the
//! best detection rate at 1% false alarms (see the evaluation notes in [`crate::adfa`]),
//! while needing no hyper-parameter at all, so nothing can be tuned on evaluation data.
//!
//! Memory: the profile holds at most `max_syscalls` normal syscalls, and the suffix
//! automaton derived from them has fewer than `2 * max_syscalls + 2` states and
//! `3 * max_syscalls` transitions. A [`CoverScorer`] keeps one automaton state, two counters
//! and a ring of `window` bits per stream, whatever the stream's length.

use serde::{Deserialize, Serialize};

use crate::error::DetectorError;
use crate::streams::Streams;
use crate::MAX_SYSCALL;

/// Default cap on the normal syscalls one covering profile holds (about 10 MB of automaton
/// per million syscalls; ADFA-LD's training part has 308 k).
pub const DEFAULT_MAX_SYSCALLS: usize = 1 << 21;

/// Separates sequences inside the automaton; above [`MAX_SYSCALL`] so it never matches.
const SEPARATOR: u16 = u16::MAX;

/// Learns a [`CoverProfile`] from normal syscall streams, one syscall at a time, keeping at
/// most `max_syscalls` syscalls (later ones are dropped and counted).
#[derive(Debug, Clone)]
pub struct CoverTrainer(Streams);

impl CoverTrainer {
    /// A trainer holding at most `max_syscalls` (positive) normal syscalls.
    pub fn new(max_syscalls: usize) -> Result<Self, DetectorError> {
        Streams::new(max_syscalls).map(Self)
    }

    /// Learns one syscall of the current stream.
    pub fn push(&mut self, syscall: u16) {
        self.0.push(syscall);
    }

    /// Ends the current stream, so that no phrase can span two streams.
    pub fn end_trace(&mut self) {
        self.0.end_trace();
    }

    /// Learns a whole trace and ends it.
    pub fn train_trace(&mut self, trace: &[u16]) {
        self.0.train_trace(trace);
    }

    /// Syscalls held (never above `max_syscalls`).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was learned yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Syscalls not learned because the cap was reached.
    pub fn dropped(&self) -> u64 {
        self.0.dropped()
    }

    /// The learned profile (an unfinished stream is ended first).
    pub fn finish(self) -> CoverProfile {
        let max = self.0.max_syscalls();
        CoverProfile::from_sequences(max, self.0.finish())
    }
}

/// Learned normal behaviour of one workload for sequence covering: the normal sequences
/// themselves (exact duplicates removed) and the suffix automaton derived from them.
/// Export and import it as YAML ([`CoverProfile::to_yaml`] / [`CoverProfile::from_yaml`]);
/// an edited profile is validated on import, and sequences can be added by hand.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "CoverProfileDoc", into = "CoverProfileDoc")]
pub struct CoverProfile {
    max_syscalls: usize,
    sequences: Vec<Vec<u16>>,
    automaton: Automaton,
}

impl Eq for CoverProfile {}

impl PartialEq for CoverProfile {
    /// The automaton is derived from the sequences, so they alone decide equality.
    fn eq(&self, other: &Self) -> bool {
        self.max_syscalls == other.max_syscalls && self.sequences == other.sequences
    }
}

/// The serialized form of a [`CoverProfile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverProfileDoc {
    /// Format version, currently 1.
    pub format: u32,
    /// Cap on the syscalls over all sequences.
    pub max_syscalls: usize,
    /// Normal sequences, each as syscall numbers separated by spaces, e.g. `"5 3 6"`.
    pub sequences: Vec<String>,
}

const FORMAT: u32 = 1;

impl CoverProfile {
    fn from_sequences(max_syscalls: usize, mut sequences: Vec<Vec<u16>>) -> Self {
        // Sorting makes the profile (and its YAML) independent of training order; duplicates
        // add nothing to what can be covered.
        sequences.sort();
        sequences.dedup();
        let automaton = Automaton::build(&sequences);
        Self {
            max_syscalls,
            sequences,
            automaton,
        }
    }

    /// Normal sequences held (after removing duplicates).
    pub fn sequences(&self) -> usize {
        self.sequences.len()
    }

    /// Normal syscalls held over all sequences.
    pub fn len(&self) -> usize {
        self.sequences.iter().map(Vec::len).sum()
    }

    /// Whether the profile has learned nothing.
    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Cap on the syscalls held.
    pub fn max_syscalls(&self) -> usize {
        self.max_syscalls
    }

    /// States of the derived suffix automaton (fewer than `2 * len() + 2`).
    pub fn automaton_states(&self) -> usize {
        self.automaton.len.len()
    }

    /// Number of phrases in the greedy cover of `trace` (0 for an empty trace).
    pub fn phrases(&self, trace: &[u16]) -> usize {
        let mut scorer = CoverScorer::new(self, 1);
        trace.iter().for_each(|&s| {
            scorer.push(s);
        });
        scorer.phrases() as usize
    }

    /// Phrases per syscall of a whole trace, in `(0, 1]`; 0 for an empty trace. This is the
    /// per-trace anomaly score evaluated on ADFA-LD.
    pub fn score_trace(&self, trace: &[u16]) -> f64 {
        let mut scorer = CoverScorer::new(self, 1);
        trace.iter().for_each(|&s| {
            scorer.push(s);
        });
        scorer.rate()
    }

    /// Advances one stream's `cursor` by one syscall; returns whether the syscall starts a
    /// new phrase. The same step as [`CoverScorer::push`], for callers that keep many streams
    /// (one per thread of a workload) and their own windows, without borrowing the profile.
    pub fn step(&self, cursor: &mut CoverCursor, syscall: u16) -> bool {
        let syscall = syscall.min(MAX_SYSCALL);
        let extended = if cursor.0 == ROOT { None } else { self.automaton.next(cursor.0, syscall) };
        match extended {
            Some(next) => {
                cursor.0 = next;
                false
            }
            None => {
                // An unseen syscall leaves the state at the root, so the next syscall also
                // starts a phrase: each unseen syscall is a phrase of its own.
                cursor.0 = self.automaton.next(ROOT, syscall).unwrap_or(ROOT);
                true
            }
        }
    }

    /// Whether `syscall` occurs anywhere in the normal sequences.
    pub fn knows(&self, syscall: u16) -> bool {
        self.automaton.next(ROOT, syscall.min(MAX_SYSCALL)).is_some()
    }

    /// A profile that has learned nothing yet, holding at most `max_syscalls` later.
    pub fn empty(max_syscalls: usize) -> Self {
        Self::from_sequences(max_syscalls, Vec::new())
    }

    /// This profile with `extra` normal sequences added, as far as the cap allows; returns it
    /// and the number of syscalls that did not fit (dropped, for the caller to count).
    pub fn extended(&self, extra: Vec<Vec<u16>>) -> (Self, u64) {
        let mut held = self.len();
        let mut dropped = 0u64;
        let mut sequences = self.sequences.clone();
        for mut seq in extra {
            if held + seq.len() > self.max_syscalls {
                dropped += seq.len() as u64;
                continue;
            }
            seq.iter_mut().for_each(|s| *s = (*s).min(MAX_SYSCALL));
            held += seq.len();
            sequences.push(seq);
        }
        (Self::from_sequences(self.max_syscalls, sequences), dropped)
    }

    /// Exports the profile as YAML.
    pub fn to_yaml(&self) -> Result<String, DetectorError> {
        Ok(serde_yaml::to_string(self)?)
    }

    /// Imports (and validates) a profile from YAML.
    pub fn from_yaml(text: &str) -> Result<Self, DetectorError> {
        Ok(serde_yaml::from_str(text)?)
    }
}

impl From<CoverProfile> for CoverProfileDoc {
    fn from(p: CoverProfile) -> Self {
        Self {
            format: FORMAT,
            max_syscalls: p.max_syscalls,
            sequences: p
                .sequences
                .iter()
                .map(|s| s.iter().map(u16::to_string).collect::<Vec<_>>().join(" "))
                .collect(),
        }
    }
}

impl TryFrom<CoverProfileDoc> for CoverProfile {
    type Error = DetectorError;

    fn try_from(doc: CoverProfileDoc) -> Result<Self, DetectorError> {
        let invalid =
            |field: String, reason: String| DetectorError::InvalidProfile { field, reason };
        if doc.format != FORMAT {
            return Err(invalid(
                "format".into(),
                format!("{} is not the supported format {FORMAT}", doc.format),
            ));
        }
        let mut sequences = Vec::with_capacity(doc.sequences.len());
        let mut total = 0usize;
        for (i, text) in doc.sequences.iter().enumerate() {
            let field = || format!("sequences[{i}]");
            let seq = text
                .split_whitespace()
                .map(|t| {
                    t.parse::<u16>()
                        .ok()
                        .filter(|&n| n <= MAX_SYSCALL)
                        .ok_or_else(|| invalid(field(), format!("{t:?} is not a syscall number")))
                })
                .collect::<Result<Vec<u16>, _>>()?;
            if seq.is_empty() {
                return Err(invalid(field(), "empty sequence".into()));
            }
            total += seq.len();
            sequences.push(seq);
        }
        if total > doc.max_syscalls {
            return Err(invalid(
                "sequences".into(),
                format!("{total} syscalls exceed max_syscalls {}", doc.max_syscalls),
            ));
        }
        Ok(CoverProfile::from_sequences(doc.max_syscalls, sequences))
    }
}

/// Where one stream stands in its current phrase of a [`CoverProfile`] (see
/// [`CoverProfile::step`]); the default is the start of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoverCursor(u32);

/// Scores one workload's syscall stream online against a [`CoverProfile`], in constant
/// memory: the automaton state of the current phrase, counters, and one bit per syscall of
/// the last `window` syscalls (whether it started a phrase).
#[derive(Debug, Clone)]
pub struct CoverScorer<'p> {
    profile: &'p CoverProfile,
    state: u32,
    count: u64,
    phrases: u64,
    ring: Vec<bool>,
    ring_next: usize,
    ring_phrases: usize,
    max_window_rate: f64,
}

impl<'p> CoverScorer<'p> {
    /// A scorer whose windowed rate covers the last `window` (at least 1) syscalls.
    pub fn new(profile: &'p CoverProfile, window: usize) -> Self {
        Self {
            profile,
            state: ROOT,
            count: 0,
            phrases: 0,
            ring: Vec::with_capacity(window.max(1)),
            ring_next: 0,
            ring_phrases: 0,
            max_window_rate: 0.0,
        }
    }

    /// Consumes one syscall; returns whether it starts a new phrase (the known stretch of
    /// behaviour before it cannot be extended by it).
    pub fn push(&mut self, syscall: u16) -> bool {
        let mut cursor = CoverCursor(self.state);
        let starts = self.profile.step(&mut cursor, syscall);
        self.state = cursor.0;
        self.count += 1;
        self.phrases += starts as u64;
        let window = self.ring.capacity();
        if self.ring.len() < window {
            self.ring.push(starts);
        } else {
            self.ring_phrases -= self.ring[self.ring_next] as usize;
            self.ring[self.ring_next] = starts;
            self.ring_next = (self.ring_next + 1) % window;
        }
        self.ring_phrases += starts as usize;
        if self.ring.len() == window {
            self.max_window_rate = self.max_window_rate.max(self.window_rate());
        }
        starts
    }

    /// Phrases since the start (or the last reset).
    pub fn phrases(&self) -> u64 {
        self.phrases
    }

    /// Phrases per syscall since the start (or the last reset); 0 before any syscall.
    pub fn rate(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.phrases as f64 / self.count as f64
        }
    }

    /// Phrases per syscall over the last `window` syscalls (fewer at the start).
    pub fn window_rate(&self) -> f64 {
        if self.ring.is_empty() {
            0.0
        } else {
            self.ring_phrases as f64 / self.ring.len() as f64
        }
    }

    /// Highest full-window rate seen so far: the running alarm score of a long-lived workload.
    pub fn max_window_rate(&self) -> f64 {
        self.max_window_rate
    }

    /// Syscalls consumed since the start (or the last reset).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes held by this scorer beyond the profile; constant for its whole life.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.ring.capacity() * std::mem::size_of::<bool>()
    }

    /// Starts a new stream (e.g. a new process of the workload).
    pub fn reset(&mut self) {
        let window = self.ring.capacity();
        *self = CoverScorer::new(self.profile, window);
    }
}

const ROOT: u32 = 0;

/// Suffix automaton of a set of sequences: the smallest automaton accepting exactly their
/// substrings (Blumer et al.), built online in linear time. Transitions are kept per state
/// in a short list because most states have one or two.
#[derive(Debug, Clone, Default)]
struct Automaton {
    next: Vec<Vec<(u16, u32)>>,
    link: Vec<u32>,
    len: Vec<u32>,
}

impl Automaton {
    fn build(sequences: &[Vec<u16>]) -> Self {
        let total: usize = sequences.iter().map(|s| s.len() + 1).sum();
        let mut a = Automaton {
            next: Vec::with_capacity(2 * total + 2),
            link: Vec::with_capacity(2 * total + 2),
            len: Vec::with_capacity(2 * total + 2),
        };
        a.add_state(0, u32::MAX, Vec::new());
        let mut last = ROOT;
        for seq in sequences {
            for &s in seq {
                last = a.extend(last, s);
            }
            // The separator is never looked up, so no substring spans two sequences.
            last = a.extend(last, SEPARATOR);
        }
        a
    }

    fn add_state(&mut self, len: u32, link: u32, next: Vec<(u16, u32)>) -> u32 {
        self.len.push(len);
        self.link.push(link);
        self.next.push(next);
        (self.len.len() - 1) as u32
    }

    fn next(&self, state: u32, symbol: u16) -> Option<u32> {
        self.next[state as usize]
            .iter()
            .find(|t| t.0 == symbol)
            .map(|t| t.1)
    }

    fn set(&mut self, state: u32, symbol: u16, to: u32) {
        let edges = &mut self.next[state as usize];
        match edges.iter_mut().find(|t| t.0 == symbol) {
            Some(t) => t.1 = to,
            None => edges.push((symbol, to)),
        }
    }

    /// Appends `symbol` to the string ending in state `last`; returns the new last state.
    fn extend(&mut self, last: u32, symbol: u16) -> u32 {
        let cur = self.add_state(self.len[last as usize] + 1, ROOT, Vec::new());
        let mut p = Some(last);
        while let Some(state) = p {
            if self.next(state, symbol).is_some() {
                break;
            }
            self.set(state, symbol, cur);
            p = self.parent(state);
        }
        let Some(p) = p else {
            return cur;
        };
        let q = self
            .next(p, symbol)
            .expect("loop stopped on an existing edge");
        if self.len[p as usize] + 1 == self.len[q as usize] {
            self.link[cur as usize] = q;
            return cur;
        }
        let clone = self.add_state(
            self.len[p as usize] + 1,
            self.link[q as usize],
            self.next[q as usize].clone(),
        );
        let mut p = Some(p);
        while let Some(state) = p {
            if self.next(state, symbol) != Some(q) {
                break;
            }
            self.set(state, symbol, clone);
            p = self.parent(state);
        }
        self.link[q as usize] = clone;
        self.link[cur as usize] = clone;
        cur
    }

    fn parent(&self, state: u32) -> Option<u32> {
        (state != ROOT).then(|| self.link[state as usize])
    }

    /// Whether `seq` occurs contiguously in one of the sequences.
    #[cfg(test)]
    fn contains(&self, seq: &[u16]) -> bool {
        let mut state = ROOT;
        for &s in seq {
            match self.next(state, s) {
                Some(n) => state = n,
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{noise, normal_trace};

    fn trained() -> CoverProfile {
        let mut t = CoverTrainer::new(DEFAULT_MAX_SYSCALLS).unwrap();
        for seed in 1..20 {
            t.train_trace(&normal_trace(seed, 400));
        }
        t.finish()
    }

    /// Every substring of every sequence, and nothing spanning two sequences, is accepted.
    #[test]
    fn automaton_accepts_exactly_the_substrings() {
        let seqs = vec![vec![1u16, 2, 1, 2, 3], vec![3, 1, 1]];
        let a = Automaton::build(&seqs);
        for s in &seqs {
            for i in 0..s.len() {
                for j in i + 1..=s.len() {
                    assert!(a.contains(&s[i..j]), "{:?} is a substring", &s[i..j]);
                }
            }
        }
        for absent in [&[2u16, 2][..], &[3, 3], &[3, 3, 1], &[1, 2, 3, 1], &[4]] {
            assert!(!a.contains(absent), "{absent:?} must be rejected");
        }
        assert!(a.len.len() < 2 * (5 + 1 + 3 + 1) + 2, "state bound");
    }

    /// Brute force: the greedy cover agrees with a naive longest-match parse.
    #[test]
    fn greedy_cover_matches_naive_parse() {
        let seqs: Vec<Vec<u16>> = (0..4).map(|s| noise(s + 1, 60, 4)).collect();
        let mut t = CoverTrainer::new(1000).unwrap();
        seqs.iter().for_each(|s| t.train_trace(s));
        let profile = t.finish();
        let occurs = |w: &[u16]| seqs.iter().any(|s| s.windows(w.len()).any(|x| x == w));
        for seed in 10..30 {
            let trace = noise(seed, 80, 5);
            let (mut naive, mut i) = (0, 0);
            while i < trace.len() {
                let mut l = 1;
                while i + l < trace.len() && occurs(&trace[i..i + l + 1]) {
                    l += 1;
                }
                naive += 1;
                i += l;
            }
            assert_eq!(profile.phrases(&trace), naive, "seed {seed}: {trace:?}");
        }
    }

    #[test]
    fn planted_anomaly_scores_higher() {
        let profile = trained();
        let normal = normal_trace(99, 400);
        let mut attacked = normal.clone();
        attacked.splice(200..200, [57, 59, 33, 33, 59]);
        let (n, a) = (profile.score_trace(&normal), profile.score_trace(&attacked));
        assert!(
            a > n,
            "planted syscalls must break the cover: normal {n}, attacked {a}"
        );
        let mut shuffled = normal.clone();
        shuffled[100..140].reverse();
        let s = profile.score_trace(&shuffled);
        assert!(s > n, "reordered known syscalls: normal {n}, reordered {s}");
        assert_eq!(
            profile.score_trace(&[500, 501, 502]),
            1.0,
            "unseen syscalls are one phrase each"
        );
        assert_eq!(profile.score_trace(&[]), 0.0, "empty trace");
    }

    #[test]
    fn scorer_windows_and_resets() {
        let profile = trained();
        let mut trace = normal_trace(7, 300);
        trace.extend(noise(7, 50, 300));
        let mut scorer = CoverScorer::new(&profile, 50);
        let starts: Vec<bool> = trace.iter().map(|&s| scorer.push(s)).collect();
        assert_eq!(scorer.rate(), profile.score_trace(&trace), "online = batch");
        let last = starts[starts.len() - 50..].iter().filter(|&&b| b).count() as f64 / 50.0;
        assert_eq!(scorer.window_rate(), last, "window of the last 50");
        assert!(
            scorer.max_window_rate() >= scorer.window_rate() && scorer.window_rate() > 0.5,
            "the random tail must dominate the window: {}",
            scorer.window_rate()
        );
        scorer.reset();
        assert_eq!((scorer.count(), scorer.rate()), (0, 0.0), "reset");
    }

    #[test]
    fn memory_is_bounded() {
        let cap = 50_000;
        let mut t = CoverTrainer::new(cap).unwrap();
        for chunk in noise(42, 300_000, 300).chunks(10_000) {
            t.train_trace(chunk);
            assert!(t.len() <= cap, "{} syscalls > cap {cap}", t.len());
        }
        assert_eq!(t.dropped(), 250_000, "syscalls beyond the cap are dropped");
        let profile = t.finish();
        assert!(
            profile.automaton_states() < 2 * (cap + 5) + 2,
            "{} states",
            profile.automaton_states()
        );
        let mut scorer = CoverScorer::new(&profile, 64);
        let before = scorer.memory_bytes();
        noise(3, 1_000_000, 400).into_iter().for_each(|s| {
            scorer.push(s);
        });
        assert_eq!(scorer.memory_bytes(), before, "scorer memory grew");
        assert_eq!(scorer.count(), 1_000_000);
    }

    #[test]
    fn yaml_round_trip_gives_identical_scores() {
        let profile = trained();
        let yaml = profile.to_yaml().unwrap();
        assert!(
            yaml.contains("2 0 0 3"),
            "sequences are readable in YAML:\n{}",
            &yaml[..yaml.len().min(400)]
        );
        let back = CoverProfile::from_yaml(&yaml).unwrap_or_else(|e| panic!("re-import: {e}"));
        assert_eq!(back, profile, "round trip must preserve the profile");
        for seed in [5u64, 6, 7] {
            let mut trace = normal_trace(seed, 300);
            trace.extend(noise(seed, 50, 300));
            let (a, b) = (profile.score_trace(&trace), back.score_trace(&trace));
            assert_eq!(a.to_bits(), b.to_bits(), "seed {seed}: {a} vs {b}");
        }
    }

    #[test]
    fn edited_yaml_is_validated_and_used() {
        let profile = trained();
        let yaml = profile.to_yaml().unwrap();
        let bad = yaml.replacen("2 0 0 3", "2 0 x 3", 1);
        let err = CoverProfile::from_yaml(&bad).expect_err("non-numeric syscall must fail");
        assert!(
            err.to_string().contains("\"x\""),
            "error names the token: {err}"
        );
        let over = yaml.replacen(
            &format!("max_syscalls: {DEFAULT_MAX_SYSCALLS}"),
            "max_syscalls: 10",
            1,
        );
        assert!(
            CoverProfile::from_yaml(&over).is_err(),
            "more syscalls than the cap must be rejected"
        );
        // Teaching the profile a new behaviour by hand makes it one phrase.
        let new = [57u16, 59, 33, 33, 59];
        let taught = yaml.replacen("sequences:\n", "sequences:\n- 57 59 33 33 59\n", 1);
        let taught =
            CoverProfile::from_yaml(&taught).unwrap_or_else(|e| panic!("hand-added sequence: {e}"));
        assert_eq!(
            (profile.phrases(&new), taught.phrases(&new)),
            (5, 1),
            "edit must take effect"
        );
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(CoverTrainer::new(0).is_err());
    }
}
