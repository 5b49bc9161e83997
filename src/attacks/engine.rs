//! The one attack engine: projected gradient ascent in pixel space on *normalize → encoder →
//! head*, for any [`Objective`] under any [`ThreatModel`]. Uniform random start, restarts,
//! per-sample bookkeeping of the best point (highest loss, or the first that reaches the goal),
//! per-sample early stop (samples that reached the goal leave the batch), and sanity checks at
//! every step: ‖δ‖ ≤ ε and x + δ ∈ [0,1] hold, and zero or NaN gradients are counted as possible
//! gradient masking.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::objective::Objective;
use super::threat::ThreatModel;
use crate::data::synthetic::SplitMix64;
use crate::encoder::Encoder;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AttackConfig {
    pub threat: ThreatModel,
    pub step_size: f64,
    pub steps: usize,
    /// Runs from fresh random starts; each sample keeps its best point over all of them.
    pub restarts: usize,
    pub random_start: bool,
    pub seed: u64,
    /// Samples that reach the goal stop being attacked.
    pub early_stop: bool,
}

/// What the checks saw over the whole attack.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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
}

impl Sanity {
    /// A line when many gradients were zero or NaN (a sign of gradient masking), else `None`.
    pub fn warning(&self) -> Option<String> {
        let bad = self.zero_gradients + self.nan_gradients;
        (self.sample_steps > 0 && bad * 10 > self.sample_steps).then(|| {
            format!(
                "{} of {} gradient steps had a zero ({}) or NaN ({}) pixel gradient: possible gradient masking",
                bad, self.sample_steps, self.zero_gradients, self.nan_gradients
            )
        })
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
struct Best {
    delta: Vec<Vec<f32>>,
    loss: Vec<f64>,
    success: Vec<bool>,
}

impl Best {
    fn offer(&mut self, i: usize, delta: &[f32], loss: f64, success: bool) {
        // A point that reaches the goal beats any that does not; among equals, the higher loss.
        let better = (success && !self.success[i]) || (success == self.success[i] && loss > self.loss[i]);
        if better {
            self.delta[i].copy_from_slice(delta);
            self.loss[i] = loss;
            self.success[i] = success;
        }
    }
}

/// Attacks `images` (`[B, 3, H, W]` in [0,1]) for `objective` through `enc`.
pub fn attack(enc: &Encoder, objective: &dyn Objective, images: &Tensor, cfg: &AttackConfig) -> Result<Outcome> {
    let (b, c, h, w) = images.dims4()?;
    let per = c * h * w;
    let x: Vec<f32> = images.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
    if x.iter().any(|v| !(0.0..=1.0).contains(v)) {
        bail!("attack input pixels must lie in [0, 1]");
    }
    let dev = enc.vit.device().clone();
    let t = cfg.threat;
    let mut best = Best { delta: vec![vec![0f32; per]; b], loss: vec![f64::NEG_INFINITY; b], success: vec![false; b] };
    let mut sanity = Sanity { min_pixel: 1.0, max_pixel: 0.0, ..Default::default() };
    for restart in 0..cfg.restarts.max(1) {
        let mut rng = SplitMix64::new(cfg.seed ^ (restart as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut delta = vec![vec![0f32; per]; b];
        for (i, d) in delta.iter_mut().enumerate() {
            if cfg.random_start && t.eps > 0.0 {
                t.random_start(d, &mut rng);
            }
            t.project(&x[i * per..(i + 1) * per], d);
        }
        let mut active: Vec<usize> = (0..b).filter(|&i| !(cfg.early_stop && best.success[i])).collect();
        for step in 0..=cfg.steps {
            if active.is_empty() {
                break;
            }
            let last = step == cfg.steps;
            let pixels: Vec<f32> = active.iter().flat_map(|&i| x[i * per..(i + 1) * per].iter().zip(&delta[i]).map(|(a, d)| a + d)).collect();
            let input = Tensor::from_vec(pixels, (active.len(), c, h, w), &Device::Cpu)?.to_device(&dev)?;
            let (tokens, tape) = enc.forward_with_tape(&input)?;
            let ev = objective.evaluate(&tokens, &active, step, cfg.steps)?;
            for (k, &i) in active.iter().enumerate() {
                let ok = ev.success.as_ref().is_some_and(|s| s[k]);
                best.offer(i, &delta[i], ev.losses[k], ok);
            }
            let reached: Vec<bool> = match &ev.success {
                Some(s) if cfg.early_stop => s.clone(),
                _ => vec![false; active.len()],
            };
            if last {
                break;
            }
            let grad: Vec<f32> = enc.backward(&tape, &ev.d_cls, &ev.d_patch)?.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
            for (k, &i) in active.iter().enumerate() {
                if reached[k] {
                    continue;
                }
                let g = &grad[k * per..(k + 1) * per];
                sanity.sample_steps += 1;
                if g.iter().any(|v| v.is_nan()) {
                    sanity.nan_gradients += 1;
                    continue;
                }
                if g.iter().all(|&v| v == 0.0) {
                    sanity.zero_gradients += 1;
                }
                let xi = &x[i * per..(i + 1) * per];
                t.step(&mut delta[i], g, cfg.step_size);
                t.project(xi, &mut delta[i]);
                check(&t, xi, &delta[i], &mut sanity)?;
            }
            active = active.iter().zip(&reached).filter(|(_, &r)| !r).map(|(&i, _)| i).collect();
        }
    }
    let adv: Vec<f32> = (0..b).flat_map(|i| x[i * per..(i + 1) * per].iter().zip(&best.delta[i]).map(|(a, d)| a + d).collect::<Vec<_>>()).collect();
    Ok(Outcome { adversarial: Tensor::from_vec(adv, (b, c, h, w), &Device::Cpu)?, loss: best.loss, success: best.success, sanity })
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
