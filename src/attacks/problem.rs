//! One attack problem: the clean images, the pipeline (normalize → encoder) and the objective;
//! the per-sample best point so far, the outcome, and the sanity checks made at every step
//! (‖δ‖ ≤ ε and x + δ ∈ [0,1] hold; zero or NaN gradients are counted as possible masking).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::objective::{Evaluated, Objective};
use super::threat::ThreatModel;
use crate::encoder::Encoder;

/// What the checks saw over the whole attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sanity {
    /// Gradient steps taken (summed over samples).
    pub sample_steps: usize,
    /// Largest ‖δ‖ seen, over ε (at most 1).
    pub max_norm_over_eps: f64,
    pub min_pixel: f64,
    pub max_pixel: f64,
    /// Sample-steps whose pixel gradient was all zero / had a NaN.
    pub zero_gradients: usize,
    pub nan_gradients: usize,
    /// Evaluated sample-points whose softmax was saturated (cross-entropy below [`SATURATED_CE`]: the
    /// true class's probability is 1 to f32 precision, the CE gradient underflows).
    #[serde(default)]
    pub saturated: usize,
}

/// A cross-entropy under this (f32's epsilon, 2⁻²³) means `1 − p_y` is lost to rounding: the
/// gradient `p − onehot` no longer points where the loss grows.
pub const SATURATED_CE: f64 = 1.1920929e-7;

impl Default for Sanity {
    /// Nothing seen yet: the pixel range starts empty.
    fn default() -> Self {
        Self { sample_steps: 0, max_norm_over_eps: 0.0, min_pixel: 1.0, max_pixel: 0.0, zero_gradients: 0, nan_gradients: 0, saturated: 0 }
    }
}

impl Sanity {
    /// Adds what another attack (another batch) saw.
    pub fn merge(&mut self, o: &Sanity) {
        self.sample_steps += o.sample_steps;
        self.zero_gradients += o.zero_gradients;
        self.nan_gradients += o.nan_gradients;
        self.saturated += o.saturated;
        self.max_norm_over_eps = self.max_norm_over_eps.max(o.max_norm_over_eps);
        self.min_pixel = self.min_pixel.min(o.min_pixel);
        self.max_pixel = self.max_pixel.max(o.max_pixel);
    }

    /// Lines when many gradients were zero or NaN (a sign of gradient masking), or any
    /// cross-entropy saturated (its gradient underflowed); empty when the attack looks sound.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let bad = self.zero_gradients + self.nan_gradients;
        if self.sample_steps > 0 && bad * 10 > self.sample_steps {
            out.push(format!(
                "{} of {} gradient steps had a zero ({}) or NaN ({}) pixel gradient: possible gradient masking",
                bad, self.sample_steps, self.zero_gradients, self.nan_gradients
            ));
        }
        if self.saturated > 0 {
            out.push(format!(
                "{} of {} gradient steps had a saturated softmax (cross-entropy < 2^-23: the true class's probability \
                 is 1 in f32 and the CE gradient underflows); the study's logit scaling (ce_scaling) avoids it",
                self.saturated, self.sample_steps
            ));
        }
        out
    }
}

pub struct Outcome {
    /// `[B, 3, H, W]`, the chosen adversarial images.
    pub adversarial: Tensor,
    /// Per sample: the objective at the chosen point, and whether it reached the goal.
    pub loss: Vec<f64>,
    pub success: Vec<bool>,
    pub sanity: Sanity,
}

/// Per-sample best point so far.
pub(super) struct Best {
    pub(super) delta: Vec<Vec<f32>>,
    pub(super) loss: Vec<f64>,
    /// What points are compared by: the loss, or the objective's score.
    pub(super) score: Vec<f64>,
    pub(super) success: Vec<bool>,
}

impl Best {
    /// No point yet, for `b` samples of `per` values.
    pub(super) fn new(b: usize, per: usize) -> Best {
        Best {
            delta: vec![vec![0f32; per]; b],
            loss: vec![f64::NEG_INFINITY; b],
            score: vec![f64::NEG_INFINITY; b],
            success: vec![false; b],
        }
    }

    pub(super) fn offer(&mut self, i: usize, delta: &[f32], loss: f64, score: f64, success: bool) {
        // A point that reaches the goal beats any that does not; among equals, the higher score.
        let better = (success && !self.success[i]) || (success == self.success[i] && score > self.score[i]);
        if better {
            self.delta[i].copy_from_slice(delta);
            self.loss[i] = loss;
            self.score[i] = score;
            self.success[i] = success;
        }
    }
}

/// One attack problem: the clean images, the pipeline and the objective.
pub(super) struct Problem<'a> {
    pub(super) enc: &'a Encoder,
    pub(super) objective: &'a dyn Objective,
    /// Clean pixels, `B × per` row-major.
    pub(super) x: Vec<f32>,
    pub(super) per: usize,
    pub(super) dims: (usize, usize, usize),
    pub(super) threat: ThreatModel,
}

impl Problem<'_> {
    pub(super) fn clean(&self, i: usize) -> &[f32] {
        &self.x[i * self.per..(i + 1) * self.per]
    }

    /// The objective at `x + delta[i]` for the samples `active`, and with `grad` the pixel
    /// gradient of each (`per` values per active sample): the pipeline *pixels → normalize →
    /// encoder → head* forward (the encoder normalizes; the objective holds the head), then back.
    pub(super) fn evaluate(
        &self,
        delta: &[Vec<f32>],
        active: &[usize],
        step: usize,
        steps: usize,
        grad: bool,
    ) -> Result<(Evaluated, Vec<f32>)> {
        let (c, h, w) = self.dims;
        let pixels: Vec<f32> = active.iter().flat_map(|&i| self.clean(i).iter().zip(&delta[i]).map(|(a, d)| a + d)).collect();
        let input = Tensor::from_vec(pixels, (active.len(), c, h, w), &Device::Cpu)?.to_device(self.enc.vit.device())?;
        if !grad {
            let tokens = self.enc.forward(&input)?;
            return Ok((self.objective.evaluate(&tokens, active, step, steps)?, Vec::new()));
        }
        let (tokens, tape) = self.enc.forward_with_tape(&input)?;
        let ev = self.objective.evaluate(&tokens, active, step, steps)?;
        let g = self
            .enc
            .backward_with(&tape, &ev.d_cls, &ev.d_patch, ev.d_prenorm.as_ref())?
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        Ok((ev, g))
    }

    /// Records what the objective said of the active samples' current points, and counts the
    /// saturated ones.
    pub(super) fn offer(&self, best: &mut Best, delta: &[Vec<f32>], active: &[usize], ev: &Evaluated, sanity: &mut Sanity) {
        sanity.saturated += ev.saturated.as_ref().map_or(0, |s| s.iter().filter(|&&s| s).count());
        for (k, &i) in active.iter().enumerate() {
            let score = ev.score.as_ref().map_or(ev.losses[k], |s| s[k]);
            best.offer(i, &delta[i], ev.losses[k], score, ev.success.as_ref().is_some_and(|s| s[k]));
        }
    }

    /// Counts a zero or NaN gradient; `false` when it is unusable (NaN).
    pub(super) fn usable(g: &[f32], sanity: &mut Sanity) -> bool {
        sanity.sample_steps += 1;
        if g.iter().any(|v| v.is_nan()) {
            sanity.nan_gradients += 1;
            return false;
        }
        if g.iter().all(|&v| v == 0.0) {
            sanity.zero_gradients += 1;
        }
        true
    }

    /// Projects sample `i`'s δ onto the ball and the pixel box, and checks both hold.
    pub(super) fn project(&self, i: usize, delta: &mut [f32], sanity: &mut Sanity) -> Result<()> {
        self.threat.project(self.clean(i), delta);
        check(&self.threat, self.clean(i), delta, sanity)
    }
}

/// The budget and the pixel range hold after a step; a violation is a bug, never a result.
fn check(t: &ThreatModel, x: &[f32], delta: &[f32], s: &mut Sanity) -> Result<()> {
    let n = t.norm_of(delta);
    if n > t.eps * (1.0 + 1e-5) + 1e-7 {
        bail!("internal error: ‖δ‖ = {n} exceeds ε = {}", t.eps);
    }
    if t.eps > 0.0 {
        s.max_norm_over_eps = s.max_norm_over_eps.max(n / t.eps);
    }
    for (&a, &d) in x.iter().zip(delta) {
        let p = (a + d) as f64;
        if !(0.0..=1.0).contains(&p) {
            bail!("internal error: an adversarial pixel left [0, 1]: {p}");
        }
        s.min_pixel = s.min_pixel.min(p);
        s.max_pixel = s.max_pixel.max(p);
    }
    Ok(())
}
