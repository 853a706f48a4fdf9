//! The project's syscall-behaviour model: a variable-order Markov model over syscall numbers
//! with Witten-Bell interpolated smoothing, learned from normal behaviour of one workload.
//!
//! Why this model: it is frequency-aware (a syscall that followed a context once in a million
//! is surprising, not merely "seen"), it blends every order from 1 to `order`, so a new long
//! context still gets a calibrated probability from its shorter suffixes, and both learning
//! and scoring consume one syscall at a time with memory bounded by `max_ngrams` (learning)
//! or by `order` and the window (scoring). The score of a syscall is its surprisal
//! `-log2 p(syscall | previous order-1 syscalls)` in bits.

use serde::{Deserialize, Serialize};

use bulkhead_detector::DetectorError;
use crate::ngram::{KeyMap, MAX_GRAM, MAX_SYSCALL, pack, unpack};

/// Syscall numbers the model assumes possible when it has seen nothing: the floor
/// probability of an unseen syscall is `1 / alphabet_size`. Linux x86-64 numbers stay below 512.
pub const DEFAULT_ALPHABET: u32 = 512;

/// Default cap on learned n-grams (all orders together) for one profile.
pub const DEFAULT_MAX_NGRAMS: usize = 1 << 19;

/// Learns a [`Profile`] from syscall streams, one syscall at a time, in bounded memory.
#[derive(Debug, Clone)]
pub struct Trainer {
    order: usize,
    max_ngrams: usize,
    alphabet_size: u32,
    counts: KeyMap<u32>,
    history: History,
    dropped: u64,
}

impl Trainer {
    /// A trainer for n-grams of length `1..=order` (order in `1..=8`) that keeps at most
    /// `max_ngrams` distinct n-grams: once full, unseen n-grams are dropped (and counted)
    /// while counts of known ones keep growing.
    pub fn new(order: usize, max_ngrams: usize) -> Result<Self, DetectorError> {
        check_order(order)?;
        if max_ngrams == 0 {
            return Err(DetectorError::InvalidParameter {
                name: "max_ngrams",
                value: "0".into(),
                reason: "must be positive",
            });
        }
        Ok(Self {
            order,
            max_ngrams,
            alphabet_size: DEFAULT_ALPHABET,
            counts: KeyMap::default(),
            history: History::default(),
            dropped: 0,
        })
    }

    /// Learns one syscall of the current stream.
    pub fn push(&mut self, syscall: u16) {
        let syscall = syscall.min(MAX_SYSCALL);
        self.history.push(syscall, self.order);
        let recent = self.history.recent();
        for len in 1..=recent.len() {
            let key = pack(&recent[recent.len() - len..]);
            let full = self.counts.len() >= self.max_ngrams;
            match self.counts.get_mut(&key) {
                Some(c) => *c = c.saturating_add(1),
                None if !full => {
                    self.counts.insert(key, 1);
                }
                None => self.dropped += 1,
            }
        }
    }

    /// Ends the current stream so that no n-gram spans two traces.
    pub fn end_trace(&mut self) {
        self.history = History::default();
    }

    /// Learns a whole trace and ends it.
    pub fn train_trace(&mut self, trace: &[u16]) {
        for &s in trace {
            self.push(s);
        }
        self.end_trace();
    }

    /// Distinct n-grams held (never above `max_ngrams`).
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether nothing was learned yet.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// N-gram occurrences not learned because the table was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The learned profile.
    pub fn finish(self) -> Profile {
        Profile::from_counts(self.order, self.max_ngrams, self.alphabet_size, self.counts)
    }
}

/// Learned normal behaviour of one workload. Export and import it as YAML with serde
/// (`serde_yaml::to_string` / `Profile::from_yaml`); an edited profile is validated on import.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ProfileDoc", into = "ProfileDoc")]
pub struct Profile {
    order: usize,
    max_ngrams: usize,
    alphabet_size: u32,
    counts: KeyMap<u32>,
    /// Per context (the first len-1 syscalls of an n-gram): total continuations and distinct
    /// continuations. Derived from `counts`, so an edited profile stays consistent.
    contexts: KeyMap<(u64, u32)>,
}

/// One n-gram of a profile as it appears in YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NgramCount {
    /// Syscall numbers separated by spaces, oldest first, e.g. `"5 3 6"`.
    pub seq: String,
    /// How often the sequence was seen in normal behaviour.
    pub count: u32,
}

/// The serialized form of a [`Profile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileDoc {
    /// Format version, currently 1.
    pub format: u32,
    /// Longest n-gram (Markov order + 1).
    pub order: usize,
    /// Cap on the number of n-grams.
    pub max_ngrams: usize,
    /// Floor probability of a never-seen syscall is `1 / alphabet_size`.
    pub alphabet_size: u32,
    /// Learned n-grams, shortest first, then by syscall numbers.
    pub ngrams: Vec<NgramCount>,
}

const FORMAT: u32 = 1;

impl Profile {
    fn from_counts(
        order: usize,
        max_ngrams: usize,
        alphabet_size: u32,
        counts: KeyMap<u32>,
    ) -> Self {
        let mut contexts: KeyMap<(u64, u32)> = KeyMap::default();
        for (&key, &count) in &counts {
            let entry = contexts.entry(key >> 16).or_default();
            entry.0 += count as u64;
            entry.1 += 1;
        }
        Self {
            order,
            max_ngrams,
            alphabet_size,
            counts,
            contexts,
        }
    }

    /// Longest n-gram used.
    pub fn order(&self) -> usize {
        self.order
    }

    /// Number of n-grams held.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether the profile has learned nothing.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Cap on the number of n-grams.
    pub fn max_ngrams(&self) -> usize {
        self.max_ngrams
    }

    /// Probability of `syscall` after `history` (oldest first; only the last `order-1` are
    /// used). Witten-Bell interpolation from order 1 upwards: each order mixes its maximum
    /// likelihood estimate with the lower-order estimate, weighting the latter by how many
    /// distinct continuations the context has had, and stops at the first unseen context.
    pub fn probability(&self, history: &[u16], syscall: u16) -> f64 {
        let syscall = syscall.min(MAX_SYSCALL);
        let history = &history[history.len().saturating_sub(self.order - 1)..];
        let mut p = 1.0 / self.alphabet_size as f64;
        for ctx_len in 0..self.order.min(history.len() + 1) {
            let ctx = pack(&history[history.len() - ctx_len..]);
            let Some(&(total, types)) = self.contexts.get(&ctx) else {
                break;
            };
            let seen = self
                .counts
                .get(&((ctx << 16) | (syscall as u128 + 1)))
                .copied()
                .unwrap_or(0);
            p = (seen as f64 + types as f64 * p) / (total as f64 + types as f64);
        }
        p
    }

    /// Surprisal in bits of `syscall` after `history`.
    pub fn surprisal(&self, history: &[u16], syscall: u16) -> f64 {
        -self.probability(history, syscall).log2()
    }

    /// Mean surprisal per syscall of a whole trace (bits); 0 for an empty trace. This is the
    /// per-trace anomaly score evaluated on ADFA-LD.
    pub fn score_trace(&self, trace: &[u16]) -> f64 {
        let mut scorer = Scorer::new(self, 1);
        for &s in trace {
            scorer.push(s);
        }
        scorer.mean()
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

impl From<Profile> for ProfileDoc {
    fn from(p: Profile) -> Self {
        let mut grams: Vec<(Vec<u16>, u32)> =
            p.counts.iter().map(|(&k, &c)| (unpack(k), c)).collect();
        grams.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
        let ngrams = grams
            .into_iter()
            .map(|(seq, count)| NgramCount {
                seq: seq.iter().map(u16::to_string).collect::<Vec<_>>().join(" "),
                count,
            })
            .collect();
        Self {
            format: FORMAT,
            order: p.order,
            max_ngrams: p.max_ngrams,
            alphabet_size: p.alphabet_size,
            ngrams,
        }
    }
}

impl TryFrom<ProfileDoc> for Profile {
    type Error = DetectorError;

    fn try_from(doc: ProfileDoc) -> Result<Self, DetectorError> {
        let invalid =
            |field: String, reason: String| DetectorError::InvalidProfile { field, reason };
        if doc.format != FORMAT {
            return Err(invalid(
                "format".into(),
                format!("{} is not the supported format {FORMAT}", doc.format),
            ));
        }
        check_order(doc.order).map_err(|e| invalid("order".into(), e.to_string()))?;
        if doc.alphabet_size < 2 {
            return Err(invalid(
                "alphabet_size".into(),
                format!("{} must be at least 2", doc.alphabet_size),
            ));
        }
        if doc.ngrams.len() > doc.max_ngrams {
            return Err(invalid(
                "ngrams".into(),
                format!(
                    "{} n-grams exceed max_ngrams {}",
                    doc.ngrams.len(),
                    doc.max_ngrams
                ),
            ));
        }
        let mut counts = KeyMap::default();
        for (i, g) in doc.ngrams.iter().enumerate() {
            let field = || format!("ngrams[{i}] ({:?})", g.seq);
            let seq = g
                .seq
                .split_whitespace()
                .map(|t| {
                    t.parse::<u16>()
                        .ok()
                        .filter(|&n| n <= MAX_SYSCALL)
                        .ok_or_else(|| invalid(field(), format!("{t:?} is not a syscall number")))
                })
                .collect::<Result<Vec<u16>, _>>()?;
            if seq.is_empty() || seq.len() > doc.order {
                return Err(invalid(
                    field(),
                    format!("length {} is outside 1..={}", seq.len(), doc.order),
                ));
            }
            if g.count == 0 {
                return Err(invalid(field(), "count must be positive".into()));
            }
            if counts.insert(pack(&seq), g.count).is_some() {
                return Err(invalid(field(), "appears twice".into()));
            }
        }
        Ok(Profile::from_counts(
            doc.order,
            doc.max_ngrams,
            doc.alphabet_size,
            counts,
        ))
    }
}

/// Scores one workload's syscall stream online against a profile, in constant memory: the
/// last `order-1` syscalls and a ring of the last `window` surprisals.
#[derive(Debug, Clone)]
pub struct Scorer<'p> {
    profile: &'p Profile,
    history: History,
    count: u64,
    total: f64,
    ring: Vec<f32>,
    ring_next: usize,
    ring_sum: f64,
    max_window_mean: f64,
}

impl<'p> Scorer<'p> {
    /// A scorer whose windowed score averages the last `window` (at least 1) surprisals.
    pub fn new(profile: &'p Profile, window: usize) -> Self {
        Self {
            profile,
            history: History::default(),
            count: 0,
            total: 0.0,
            ring: Vec::with_capacity(window.max(1)),
            ring_next: 0,
            ring_sum: 0.0,
            max_window_mean: 0.0,
        }
    }

    /// Consumes one syscall and returns its surprisal in bits.
    pub fn push(&mut self, syscall: u16) -> f64 {
        let s = self.profile.surprisal(self.history.recent(), syscall);
        self.history.push(
            syscall.min(MAX_SYSCALL),
            self.profile.order.saturating_sub(1).max(1),
        );
        self.count += 1;
        self.total += s;
        let window = self.ring.capacity();
        if self.ring.len() < window {
            self.ring.push(s as f32);
        } else {
            self.ring_sum -= self.ring[self.ring_next] as f64;
            self.ring[self.ring_next] = s as f32;
            self.ring_next = (self.ring_next + 1) % window;
        }
        self.ring_sum += s as f32 as f64;
        if self.ring.len() == window {
            self.max_window_mean = self.max_window_mean.max(self.window_mean());
        }
        s
    }

    /// Mean surprisal per syscall since the start (or the last reset).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total / self.count as f64
        }
    }

    /// Mean surprisal of the last `window` syscalls (fewer at the start).
    pub fn window_mean(&self) -> f64 {
        if self.ring.is_empty() {
            0.0
        } else {
            self.ring_sum / self.ring.len() as f64
        }
    }

    /// Highest full-window mean seen so far: the running alarm score of a long-lived workload.
    pub fn max_window_mean(&self) -> f64 {
        self.max_window_mean
    }

    /// Syscalls consumed since the start (or the last reset).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes held by this scorer beyond the profile; constant for its whole life.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.ring.capacity() * std::mem::size_of::<f32>()
    }

    /// Starts a new stream (e.g. a new process of the workload).
    pub fn reset(&mut self) {
        let window = self.ring.capacity();
        *self = Scorer::new(self.profile, window);
    }
}

/// The last syscalls of a stream, oldest first.
#[derive(Debug, Clone, Copy, Default)]
struct History {
    buf: [u16; MAX_GRAM],
    len: usize,
}

impl History {
    /// Appends `s`, keeping at most `keep` syscalls.
    fn push(&mut self, s: u16, keep: usize) {
        if self.len == keep {
            self.buf.copy_within(1..keep, 0);
            self.len -= 1;
        }
        self.buf[self.len] = s;
        self.len += 1;
    }

    fn recent(&self) -> &[u16] {
        &self.buf[..self.len]
    }
}

fn check_order(order: usize) -> Result<(), DetectorError> {
    if order == 0 || order > MAX_GRAM {
        return Err(DetectorError::InvalidParameter {
            name: "order",
            value: order.to_string(),
            reason: "must be in 1..=8",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_detector::testdata::{noise, normal_trace};

    fn trained(order: usize) -> Profile {
        let mut t = Trainer::new(order, DEFAULT_MAX_NGRAMS).unwrap();
        for seed in 1..20 {
            t.train_trace(&normal_trace(seed, 400));
        }
        t.finish()
    }

    #[test]
    fn planted_anomaly_scores_higher() {
        let profile = trained(4);
        let normal = normal_trace(99, 400);
        let mut attacked = normal.clone();
        // A shell spawn (fork, execve, dup2) planted in the middle, in a known context.
        attacked.splice(200..200, [57, 59, 33, 33, 59]);
        let (n, a) = (profile.score_trace(&normal), profile.score_trace(&attacked));
        assert!(
            a > n + 0.1,
            "planted anomaly must raise the mean surprisal: normal {n}, attacked {a}"
        );
        // Reordering known syscalls is also anomalous for a sequence model, not for a histogram.
        let mut shuffled = normal.clone();
        shuffled[100..140].reverse();
        let s = profile.score_trace(&shuffled);
        assert!(s > n, "reordered known syscalls: normal {n}, reordered {s}");
    }

    #[test]
    fn probabilities_form_a_distribution() {
        let profile = trained(3);
        for history in [&[][..], &[2][..], &[0, 0][..], &[3, 2][..], &[250, 251][..]] {
            let total: f64 = (0..DEFAULT_ALPHABET as u16)
                .map(|s| profile.probability(history, s))
                .sum();
            assert!(
                (total - 1.0).abs() < 1e-9,
                "p(.|{history:?}) sums to {total}"
            );
        }
        assert!(
            profile.probability(&[2, 0], 0) > 0.5,
            "learned continuation must be likely"
        );
    }

    #[test]
    fn scorer_matches_batch_score_and_windows() {
        let profile = trained(4);
        let trace = normal_trace(7, 300);
        let mut scorer = Scorer::new(&profile, 50);
        let each: Vec<f64> = trace.iter().map(|&s| scorer.push(s)).collect();
        let batch = profile.score_trace(&trace);
        assert!(
            (scorer.mean() - batch).abs() < 1e-12,
            "online mean {} vs batch {batch}",
            scorer.mean()
        );
        let last: f64 = each[each.len() - 50..].iter().sum::<f64>() / 50.0;
        assert!(
            (scorer.window_mean() - last).abs() < 1e-4,
            "window {} vs {last}",
            scorer.window_mean()
        );
        assert!(scorer.max_window_mean() >= scorer.window_mean());
        scorer.reset();
        assert_eq!(
            (scorer.count(), scorer.mean()),
            (0, 0.0),
            "reset starts a new stream"
        );
    }

    #[test]
    fn trainer_stays_under_cap_after_millions_of_syscalls() {
        let cap = 5_000;
        let mut t = Trainer::new(6, cap).unwrap();
        for (i, chunk) in noise(42, 3_000_000, 300).chunks(10_000).enumerate() {
            t.train_trace(chunk);
            assert!(
                t.len() <= cap,
                "after chunk {i}: {} n-grams > cap {cap}",
                t.len()
            );
        }
        assert!(
            t.dropped() > 0,
            "random streams must overflow a {cap} table"
        );
        let profile = t.finish();
        assert!(profile.len() <= profile.max_ngrams());
    }

    #[test]
    fn scorer_memory_is_constant_over_millions_of_syscalls() {
        let profile = trained(5);
        let mut scorer = Scorer::new(&profile, 64);
        let before = scorer.memory_bytes();
        for s in noise(3, 2_000_000, 400) {
            scorer.push(s);
        }
        assert_eq!(scorer.memory_bytes(), before, "scorer memory grew");
        assert_eq!(scorer.count(), 2_000_000);
        assert!(
            scorer.mean().is_finite() && scorer.mean() > 0.0,
            "mean {}",
            scorer.mean()
        );
    }

    #[test]
    fn yaml_round_trip_gives_identical_scores() {
        let profile = trained(4);
        let yaml = profile.to_yaml().unwrap();
        assert!(
            yaml.contains("seq: 2 0 0 3"),
            "n-grams are readable in YAML:\n{}",
            &yaml[..yaml.len().min(400)]
        );
        let back = Profile::from_yaml(&yaml).unwrap_or_else(|e| panic!("re-import: {e}"));
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
        let profile = trained(3);
        let yaml = profile.to_yaml().unwrap();
        let bad = yaml.replacen("seq: 2 0 0", "seq: 2 0 x", 1);
        let err = Profile::from_yaml(&bad).expect_err("a non-numeric syscall must be rejected");
        assert!(
            err.to_string().contains("\"x\""),
            "error names the token: {err}"
        );
        let too_long = yaml.replacen("seq: 2 0 0", "seq: 2 0 0 3", 1);
        assert!(
            Profile::from_yaml(&too_long).is_err(),
            "an n-gram longer than order must be rejected"
        );
        // Teaching the profile a new behaviour by hand lowers its surprisal.
        let taught = yaml.replacen("ngrams:\n", "ngrams:\n- seq: 0 0 9\n  count: 1000\n", 1);
        let taught =
            Profile::from_yaml(&taught).unwrap_or_else(|e| panic!("hand-added n-gram: {e}"));
        assert!(
            taught.surprisal(&[0, 0], 9) < profile.surprisal(&[0, 0], 9),
            "edit must take effect"
        );
    }

    #[test]
    fn bad_parameters_are_rejected() {
        assert!(Trainer::new(0, 10).is_err());
        assert!(Trainer::new(9, 10).is_err());
        assert!(Trainer::new(3, 0).is_err());
    }
}
