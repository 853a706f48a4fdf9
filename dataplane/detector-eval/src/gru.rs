//! A small recurrent language model of syscall streams (one GRU layer), learned from the
//! normal streams of one workload; a syscall's score is its negative log-likelihood
//! `-ln p(syscall | everything before it in the stream)` in nats.
//!
//! Plain Rust, `f32`, no BLAS: an embedding of each syscall, one GRU layer, a softmax over
//! the syscalls seen in training plus one "unseen" class. Training is truncated
//! back-propagation through time over consecutive chunks of each training stream (the hidden
//! state carries over from chunk to chunk, as it does when scoring), Adam, gradient-norm
//! clipping, a fixed number of epochs; everything is seeded, so a run is reproducible.
//!
//! Memory when scoring online: a [`GruScorer`] holds one hidden vector (`hidden` floats), the
//! previous syscall, running sums and a ring of `window` per-syscall scores, whatever the
//! stream's length. The model itself is `(V+2) E + 3 H (E+H) + 6 H + (V+1)(H+1)` floats for
//! `V` syscalls seen in training.
//!
//! Status: an evaluated alternative, **not** the project's model. On ADFA-LD (the issue's
//! protocol, `cargo run --release -p bulkhead-detector-eval --example adfa_gru`) the mean surprisal
//! per syscall lands at AUC 0.83-0.85 for every setting tried, no better than sequence
//! covering ([`bulkhead_detector::cover`], 0.844), so it did not replace it; the figures are in the
//! evaluation notes of [`crate::adfa`]. [`GruConfig::default`] was fixed a priori (embedding
//! 32, hidden 64, 64-step chunks, 4 chunks per Adam step, 8 epochs, step 2e-3 decaying
//! linearly to a tenth, clip 5), not chosen on the evaluation data; the other settings in
//! the notes were looked at on validation + attack, so they are figures, not a selection.

use std::collections::HashMap;

use bulkhead_detector::DetectorError;
use bulkhead_detector::streams::Streams;

/// Hyper-parameters; [`GruConfig::default`] is the fixed a-priori setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GruConfig {
    /// Embedding width.
    pub embed: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Steps per truncated back-propagation chunk.
    pub bptt: usize,
    /// Chunks whose gradients are summed before one Adam step.
    pub chunks_per_step: usize,
    /// Passes over the training streams.
    pub epochs: usize,
    /// Adam step size.
    pub learning_rate: f32,
    /// Gradient norm clip.
    pub clip: f32,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
    /// Syscalls found in fewer training streams than this share the "unseen" class, so that
    /// class learns a probability (1 = only syscalls never seen in training are unseen).
    pub min_streams: usize,
}

impl Default for GruConfig {
    fn default() -> Self {
        Self {
            embed: 32,
            hidden: 64,
            bptt: 64,
            chunks_per_step: 4,
            epochs: 8,
            learning_rate: 2e-3,
            clip: 5.0,
            seed: 1,
            min_streams: 1,
        }
    }
}

/// splitmix64: enough randomness for initialisation and shuffling, no dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-a, a)`.
    fn uniform(&mut self, a: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * a
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// All weights in one flat vector (so Adam and clipping are one loop), with offsets.
#[derive(Debug, Clone, PartialEq)]
struct Layout {
    e: usize,
    h: usize,
    vin: usize,
    vout: usize,
    emb: usize,
    wx: usize,
    wh: usize,
    bx: usize,
    bh: usize,
    wo: usize,
    bo: usize,
    total: usize,
}

impl Layout {
    fn new(e: usize, h: usize, vocab: usize) -> Self {
        let (vin, vout) = (vocab + 2, vocab + 1);
        let emb = 0;
        let wx = emb + vin * e;
        let wh = wx + e * 3 * h;
        let bx = wh + h * 3 * h;
        let bh = bx + 3 * h;
        let wo = bh + 3 * h;
        let bo = wo + h * vout;
        let total = bo + vout;
        Self {
            e,
            h,
            vin,
            vout,
            emb,
            wx,
            wh,
            bx,
            bh,
            wo,
            bo,
            total,
        }
    }
}

/// Collects normal streams one syscall at a time, holding at most `max_syscalls` (later ones
/// are dropped and counted), then trains a [`GruModel`] on them.
#[derive(Debug, Clone)]
pub struct GruTrainer {
    config: GruConfig,
    streams: Streams,
}

impl GruTrainer {
    /// A trainer holding at most `max_syscalls` (positive) normal syscalls.
    pub fn new(config: GruConfig, max_syscalls: usize) -> Result<Self, DetectorError> {
        Ok(Self { config, streams: Streams::new(max_syscalls)? })
    }

    /// Learns one syscall of the current stream.
    pub fn push(&mut self, syscall: u16) {
        self.streams.push(syscall);
    }

    /// Ends the current stream.
    pub fn end_trace(&mut self) {
        self.streams.end_trace();
    }

    /// Learns a whole trace and ends it.
    pub fn train_trace(&mut self, trace: &[u16]) {
        self.streams.train_trace(trace);
    }

    /// Syscalls held.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether nothing was learned yet.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Syscalls dropped because the cap was reached.
    pub fn dropped(&self) -> u64 {
        self.streams.dropped()
    }

    /// Trains the model on the held streams (an unfinished stream is ended first).
    pub fn finish(self) -> Result<GruModel, DetectorError> {
        let held = self.streams.finish();
        let streams: Vec<&[u16]> = held.iter().map(Vec::as_slice).collect();
        GruModel::train(self.config, &streams)
    }
}

/// A learned GRU language model of one workload's normal syscall streams.
#[derive(Debug, Clone, PartialEq)]
pub struct GruModel {
    config: GruConfig,
    /// Syscall number -> input/output class (1-based; 0 = unseen in training).
    classes: HashMap<u16, u32>,
    layout: Layout,
    w: Vec<f32>,
    /// Mean training loss (nats per syscall) of each epoch.
    epoch_loss: Vec<f64>,
    /// Adam steps over the whole training (for the step-size decay).
    planned_steps: usize,
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `y += a * x`.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Dot product with eight independent lanes so that it vectorises without fast-math.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    let mut s: f32 = lanes.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Activations of one step kept for back-propagation.
#[derive(Clone, Default)]
struct Step {
    input: usize,
    target: usize,
    h_prev: Vec<f32>,
    z: Vec<f32>,
    r: Vec<f32>,
    n: Vec<f32>,
    ghn: Vec<f32>,
    h: Vec<f32>,
    /// Softmax output minus the one-hot target.
    dlogits: Vec<f32>,
}

/// Buffers of one training chunk.
struct Work {
    steps: Vec<Step>,
    s: Scratch,
    dh: Vec<f32>,
    dgx: Vec<f32>,
    dgh: Vec<f32>,
}

/// Scratch for one forward step.
struct Scratch {
    gx: Vec<f32>,
    gh: Vec<f32>,
    logits: Vec<f32>,
}

impl GruModel {
    /// Learns from whole normal streams (each one process's syscalls, in order).
    pub fn train(config: GruConfig, streams: &[&[u16]]) -> Result<Self, DetectorError> {
        let positive = |name: &'static str, v: usize| {
            if v == 0 {
                Err(DetectorError::InvalidParameter {
                    name,
                    value: "0".into(),
                    reason: "must be positive",
                })
            } else {
                Ok(())
            }
        };
        positive("embed", config.embed)?;
        positive("hidden", config.hidden)?;
        positive("bptt", config.bptt)?;
        positive("chunks_per_step", config.chunks_per_step)?;
        let mut in_streams: HashMap<u16, usize> = HashMap::new();
        for s in streams {
            let mut distinct = s.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            distinct
                .into_iter()
                .for_each(|c| *in_streams.entry(c).or_default() += 1);
        }
        let mut seen: Vec<u16> = in_streams
            .into_iter()
            .filter(|&(_, n)| n >= config.min_streams)
            .map(|(c, _)| c)
            .collect();
        seen.sort_unstable();
        let classes: HashMap<u16, u32> = seen
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, i as u32 + 1))
            .collect();
        let layout = Layout::new(config.embed, config.hidden, seen.len());
        let mut rng = Rng(config.seed);
        let mut w = vec![0.0f32; layout.total];
        let (e, h) = (layout.e, layout.h);
        let init =
            |w: &mut [f32], a: f32, rng: &mut Rng| w.iter_mut().for_each(|x| *x = rng.uniform(a));
        init(&mut w[layout.emb..layout.wx], 0.1, &mut rng);
        init(
            &mut w[layout.wx..layout.wh],
            (1.0 / e as f32).sqrt(),
            &mut rng,
        );
        init(
            &mut w[layout.wh..layout.bx],
            (1.0 / h as f32).sqrt(),
            &mut rng,
        );
        init(
            &mut w[layout.wo..layout.bo],
            (1.0 / h as f32).sqrt(),
            &mut rng,
        );
        let mut model = Self {
            config,
            classes,
            layout,
            w,
            epoch_loss: Vec::new(),
            planned_steps: 0,
        };
        let encoded: Vec<Vec<usize>> = streams
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.iter().map(|&c| model.class(c)).collect())
            .collect();
        model.fit(&encoded, &mut rng);
        Ok(model)
    }

    fn class(&self, syscall: u16) -> usize {
        self.classes.get(&syscall).copied().unwrap_or(0) as usize
    }

    fn bos(&self) -> usize {
        self.layout.vin - 1
    }

    /// Mean training loss of each epoch (nats per syscall).
    pub fn epoch_loss(&self) -> &[f64] {
        &self.epoch_loss
    }

    /// Syscalls seen in training.
    pub fn vocabulary(&self) -> usize {
        self.classes.len()
    }

    /// Number of weights.
    pub fn parameters(&self) -> usize {
        self.w.len()
    }

    /// One forward step: updates `h` in place from `input`, fills the step's gates and
    /// leaves the logits in `s.logits`. Returns nothing; callers read what they need.
    #[allow(clippy::needless_range_loop)] // several vectors share one index
    fn forward(&self, input: usize, h: &mut [f32], s: &mut Scratch, keep: Option<&mut Step>) {
        let l = &self.layout;
        let (e, hd) = (l.e, l.h);
        let w = &self.w;
        s.gx.copy_from_slice(&w[l.bx..l.bx + 3 * hd]);
        s.gh.copy_from_slice(&w[l.bh..l.bh + 3 * hd]);
        let x = &w[l.emb + input * e..l.emb + (input + 1) * e];
        for (i, &xi) in x.iter().enumerate() {
            axpy(
                &mut s.gx,
                xi,
                &w[l.wx + i * 3 * hd..l.wx + (i + 1) * 3 * hd],
            );
        }
        for (j, &hj) in h.iter().enumerate() {
            axpy(
                &mut s.gh,
                hj,
                &w[l.wh + j * 3 * hd..l.wh + (j + 1) * 3 * hd],
            );
        }
        let mut keep = keep;
        if let Some(step) = keep.as_deref_mut() {
            step.input = input;
            step.h_prev.clear();
            step.h_prev.extend_from_slice(h);
            step.z.resize(hd, 0.0);
            step.r.resize(hd, 0.0);
            step.n.resize(hd, 0.0);
            step.ghn.resize(hd, 0.0);
        }
        for k in 0..hd {
            let z = sigmoid(s.gx[k] + s.gh[k]);
            let r = sigmoid(s.gx[hd + k] + s.gh[hd + k]);
            let ghn = s.gh[2 * hd + k];
            let n = (s.gx[2 * hd + k] + r * ghn).tanh();
            let hn = (1.0 - z) * n + z * h[k];
            if let Some(step) = keep.as_deref_mut() {
                step.z[k] = z;
                step.r[k] = r;
                step.n[k] = n;
                step.ghn[k] = ghn;
            }
            h[k] = hn;
        }
        s.logits.copy_from_slice(&w[l.bo..l.bo + l.vout]);
        for (j, &hj) in h.iter().enumerate() {
            axpy(
                &mut s.logits,
                hj,
                &w[l.wo + j * l.vout..l.wo + (j + 1) * l.vout],
            );
        }
        if let Some(step) = keep {
            step.h.clear();
            step.h.extend_from_slice(h);
        }
    }

    /// Log-sum-exp of the logits.
    fn log_norm(logits: &[f32]) -> f32 {
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        m + logits.iter().map(|&v| (v - m).exp()).sum::<f32>().ln()
    }

    fn scratch(&self) -> Scratch {
        Scratch {
            gx: vec![0.0; 3 * self.layout.h],
            gh: vec![0.0; 3 * self.layout.h],
            logits: vec![0.0; self.layout.vout],
        }
    }

    fn work(&self) -> Work {
        let hd = self.layout.h;
        Work {
            steps: vec![Step::default(); self.config.bptt],
            s: self.scratch(),
            dh: vec![0.0; hd],
            dgx: vec![0.0; 3 * hd],
            dgh: vec![0.0; 3 * hd],
        }
    }

    /// Forward and backward over `stream[pos..pos + len]` (at most `bptt` steps) from hidden
    /// state `h` (left at the chunk's end): adds the gradient of the summed negative
    /// log-likelihood to `grad` and returns that sum.
    #[allow(clippy::needless_range_loop)] // several vectors share one index
    fn chunk(
        &self,
        stream: &[usize],
        pos: usize,
        len: usize,
        h: &mut [f32],
        grad: &mut [f32],
        work: &mut Work,
    ) -> f64 {
        let l = &self.layout;
        let (e, hd) = (l.e, l.h);
        let Work {
            steps,
            s,
            dh,
            dgx,
            dgh,
        } = work;
        let mut loss = 0.0f64;
        for k in 0..len {
            // Inputs: BOS then the stream; targets: the stream.
            let input = if pos + k == 0 {
                self.bos()
            } else {
                stream[pos + k - 1]
            };
            let target = stream[pos + k];
            let step = &mut steps[k];
            self.forward(input, h, s, Some(step));
            let ln = Self::log_norm(&s.logits);
            loss += (ln - s.logits[target]) as f64;
            step.target = target;
            step.dlogits.clear();
            step.dlogits
                .extend(s.logits.iter().map(|&z| (z - ln).exp()));
            step.dlogits[target] -= 1.0;
        }
        dh.iter_mut().for_each(|x| *x = 0.0);
        for k in (0..len).rev() {
            let st = &steps[k];
            axpy(&mut grad[l.bo..l.bo + l.vout], 1.0, &st.dlogits);
            for j in 0..hd {
                let row = l.wo + j * l.vout..l.wo + (j + 1) * l.vout;
                dh[j] += dot(&self.w[row.clone()], &st.dlogits);
                axpy(&mut grad[row], st.h[j], &st.dlogits);
            }
            for kk in 0..hd {
                let (z, r, n) = (st.z[kk], st.r[kk], st.n[kk]);
                let d = dh[kk];
                let dz = d * (st.h_prev[kk] - n) * z * (1.0 - z);
                let dn = d * (1.0 - z) * (1.0 - n * n);
                let dr = dn * st.ghn[kk] * r * (1.0 - r);
                dgx[kk] = dz;
                dgx[hd + kk] = dr;
                dgx[2 * hd + kk] = dn;
                dgh[kk] = dz;
                dgh[hd + kk] = dr;
                dgh[2 * hd + kk] = dn * r;
                dh[kk] = d * z;
            }
            axpy(&mut grad[l.bx..l.bx + 3 * hd], 1.0, dgx);
            axpy(&mut grad[l.bh..l.bh + 3 * hd], 1.0, dgh);
            let xo = l.emb + st.input * e;
            for i in 0..e {
                let row = l.wx + i * 3 * hd..l.wx + (i + 1) * 3 * hd;
                let dx = dot(&self.w[row.clone()], dgx);
                axpy(&mut grad[row], self.w[xo + i], dgx);
                grad[xo + i] += dx;
            }
            for j in 0..hd {
                let row = l.wh + j * 3 * hd..l.wh + (j + 1) * 3 * hd;
                dh[j] += dot(&self.w[row.clone()], dgh);
                axpy(&mut grad[row], st.h_prev[j], dgh);
            }
        }
        loss
    }

    fn fit(&mut self, streams: &[Vec<usize>], rng: &mut Rng) {
        let c = self.config;
        let l = self.layout.clone();
        let hd = l.h;
        let mut grad = vec![0.0f32; l.total];
        let mut m = vec![0.0f32; l.total];
        let mut v = vec![0.0f32; l.total];
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let mut t = 0i32;
        let mut work = self.work();
        let mut order: Vec<usize> = (0..streams.len()).collect();
        let chunks: usize = streams.iter().map(|s| s.len().div_ceil(c.bptt)).sum();
        self.planned_steps = chunks.div_ceil(c.chunks_per_step) * c.epochs;
        for _ in 0..c.epochs {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let (mut loss_sum, mut loss_n) = (0.0f64, 0usize);
            let mut pending = 0usize;
            for &si in &order {
                let stream = &streams[si];
                let mut h = vec![0.0f32; hd];
                // Inputs: BOS then the stream; targets: the stream.
                let mut pos = 0;
                while pos < stream.len() {
                    let len = c.bptt.min(stream.len() - pos);
                    loss_sum += self.chunk(stream, pos, len, &mut h, &mut grad, &mut work);
                    loss_n += len;
                    pos += len;
                    pending += 1;
                    if pending == c.chunks_per_step {
                        pending = 0;
                        t += 1;
                        self.adam(&mut grad, &mut m, &mut v, t, b1, b2, eps);
                    }
                }
            }
            if pending > 0 {
                t += 1;
                self.adam(&mut grad, &mut m, &mut v, t, b1, b2, eps);
            }
            self.epoch_loss.push(loss_sum / loss_n.max(1) as f64);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn adam(
        &mut self,
        grad: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        t: i32,
        b1: f32,
        b2: f32,
        eps: f32,
    ) {
        let norm = grad.iter().map(|g| g * g).sum::<f32>().sqrt();
        let scale = if norm > self.config.clip {
            self.config.clip / norm
        } else {
            1.0
        };
        // Linear decay to a tenth of the step size over the planned steps.
        let progress = (t as f32 / self.planned_steps.max(1) as f32).min(1.0);
        let base = self.config.learning_rate * (1.0 - 0.9 * progress);
        let lr = base * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        for i in 0..grad.len() {
            let g = grad[i] * scale;
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            self.w[i] -= lr * m[i] / (v[i].sqrt() + eps);
            grad[i] = 0.0;
        }
    }

    /// Per-syscall negative log-likelihoods of a whole stream.
    pub fn surprisals(&self, stream: &[u16]) -> Vec<f32> {
        let mut scorer = GruScorer::new(self, 1);
        stream.iter().map(|&c| scorer.push(c)).collect()
    }

    /// Mean negative log-likelihood per syscall of a whole trace (0 for an empty trace).
    pub fn score_trace(&self, trace: &[u16]) -> f64 {
        let mut scorer = GruScorer::new(self, 1);
        trace.iter().for_each(|&c| {
            scorer.push(c);
        });
        scorer.mean()
    }
}

/// Online scoring of one stream: one syscall at a time, constant memory.
pub struct GruScorer<'m> {
    model: &'m GruModel,
    h: Vec<f32>,
    prev: usize,
    scratch: Scratch,
    sum: f64,
    count: u64,
    ring: Vec<f32>,
    ring_sum: f64,
    max_window: f64,
}

impl<'m> GruScorer<'m> {
    /// A scorer with a sliding window of `window` (at least 1) syscalls.
    pub fn new(model: &'m GruModel, window: usize) -> Self {
        Self {
            model,
            h: vec![0.0; model.layout.h],
            prev: model.bos(),
            scratch: model.scratch(),
            sum: 0.0,
            count: 0,
            ring: vec![0.0; window.max(1)],
            ring_sum: 0.0,
            max_window: 0.0,
        }
    }

    /// Scores the next syscall: its negative log-likelihood in nats.
    pub fn push(&mut self, syscall: u16) -> f32 {
        let class = self.model.class(syscall);
        self.model
            .forward(self.prev, &mut self.h, &mut self.scratch, None);
        let logits = &self.scratch.logits;
        let nll = GruModel::log_norm(logits) - logits[class];
        self.prev = class;
        let slot = (self.count % self.ring.len() as u64) as usize;
        self.ring_sum += nll as f64 - self.ring[slot] as f64;
        self.ring[slot] = nll;
        self.sum += nll as f64;
        self.count += 1;
        if self.count >= self.ring.len() as u64 {
            self.max_window = self.max_window.max(self.window_mean());
        }
        nll
    }

    /// Mean score per syscall since the start (0 before any syscall).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }

    /// Mean over the last `window` syscalls (fewer at the start).
    pub fn window_mean(&self) -> f64 {
        let n = self.count.min(self.ring.len() as u64);
        if n == 0 {
            0.0
        } else {
            self.ring_sum / n as f64
        }
    }

    /// Highest full-window mean so far (the whole-stream mean if the stream is shorter).
    pub fn max_window_mean(&self) -> f64 {
        if self.count < self.ring.len() as u64 {
            self.mean()
        } else {
            self.max_window
        }
    }

    /// Syscalls scored.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(epochs: usize) -> GruConfig {
        GruConfig {
            embed: 4,
            hidden: 5,
            bptt: 6,
            chunks_per_step: 1,
            epochs,
            learning_rate: 1e-2,
            clip: 5.0,
            seed: 7,
            min_streams: 1,
        }
    }

    /// The analytic gradient of a chunk matches central finite differences.
    #[test]
    fn gradient_matches_finite_differences() {
        let streams: [&[u16]; 2] = [&[3, 1, 4, 1, 5, 9, 2, 6], &[2, 7, 1, 8]];
        let mut model = GruModel::train(tiny(0), &streams).unwrap();
        // Non-zero biases so every path is exercised.
        let mut rng = Rng(3);
        model.w.iter_mut().for_each(|x| *x += rng.uniform(0.3));
        let stream: Vec<usize> = streams[0].iter().map(|&c| model.class(c)).collect();
        let loss = |m: &GruModel| {
            let mut h = vec![0.0; m.layout.h];
            let mut g = vec![0.0; m.layout.total];
            let mut work = m.work();
            // Two chunks, the second starting from the first one's hidden state.
            m.chunk(&stream, 0, 6, &mut h, &mut g, &mut work)
                + m.chunk(&stream, 6, 2, &mut h, &mut g, &mut work)
        };
        let mut grad = vec![0.0; model.layout.total];
        let mut h = vec![0.0; model.layout.h];
        let mut work = model.work();
        model.chunk(&stream, 0, 6, &mut h, &mut grad, &mut work);
        // The second chunk's gradient does not flow into the first (truncation), so check
        // the first chunk alone against finite differences of the first chunk's loss.
        let loss_first = |m: &GruModel| {
            let mut h = vec![0.0; m.layout.h];
            let mut g = vec![0.0; m.layout.total];
            m.chunk(&stream, 0, 6, &mut h, &mut g, &mut m.work())
        };
        assert!(loss(&model) > loss_first(&model));
        let mut checked = 0;
        for i in (0..model.layout.total).step_by(3) {
            let eps = 1e-2f32;
            let orig = model.w[i];
            model.w[i] = orig + eps;
            let up = loss_first(&model);
            model.w[i] = orig - eps;
            let down = loss_first(&model);
            model.w[i] = orig;
            let numeric = (up - down) / (2.0 * eps as f64);
            let analytic = grad[i] as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 2e-2 * numeric.abs().max(analytic.abs()),
                "weight {i}: numeric {numeric} analytic {analytic}"
            );
            checked += 1;
        }
        assert!(checked > 50);
    }

    /// Learns a repeated pattern: a normal stream scores far below a shuffled one and below
    /// a stream with a syscall never seen; the online scorer agrees with the whole-trace score.
    #[test]
    fn learns_a_pattern_and_scores_online() {
        let normal: Vec<u16> = [5u16, 3, 6, 6, 63, 3, 5, 4].repeat(12);
        let streams = vec![normal.as_slice(); 6];
        let config = GruConfig {
            epochs: 30,
            hidden: 16,
            embed: 8,
            bptt: 16,
            ..GruConfig::default()
        };
        let model = GruModel::train(config, &streams).unwrap();
        let losses = model.epoch_loss();
        assert!(losses.last().unwrap() < &(losses[0] * 0.5), "{losses:?}");
        let foreign: Vec<u16> = [63u16, 4, 5, 6, 3, 3, 5, 6].repeat(12);
        let mut unseen = normal.clone();
        unseen[40] = 200;
        let (n, f, u) = (
            model.score_trace(&normal),
            model.score_trace(&foreign),
            model.score_trace(&unseen),
        );
        assert!(
            n < 0.5 && f > 2.0 * n && u > n,
            "normal {n} foreign {f} unseen {u}"
        );
        let mut scorer = GruScorer::new(&model, 8);
        normal.iter().for_each(|&c| {
            scorer.push(c);
        });
        assert!((scorer.mean() - n).abs() < 1e-9);
        assert!(scorer.max_window_mean() >= scorer.window_mean() - 1e-9);
        assert_eq!(scorer.count(), normal.len() as u64);
        assert_eq!(model.surprisals(&normal).len(), normal.len());
    }

    #[test]
    fn rejects_zero_sizes_and_is_reproducible() {
        let s: [&[u16]; 1] = [&[1, 2, 3, 1, 2, 3]];
        for c in [
            GruConfig {
                hidden: 0,
                ..tiny(1)
            },
            GruConfig {
                embed: 0,
                ..tiny(1)
            },
            GruConfig { bptt: 0, ..tiny(1) },
        ] {
            assert!(GruModel::train(c, &s).is_err());
        }
        assert_eq!(
            GruModel::train(tiny(3), &s).unwrap(),
            GruModel::train(tiny(3), &s).unwrap()
        );
    }
}
