//! FAB-T, AutoAttack's targeted Fast Adaptive Boundary attack (`fab_base.py`,
//! `attack_single_run` with `is_targeted`; `fab_pt.py`'s `get_diff_logits_grads_batch_targeted`):
//! a minimum-norm attack. Its objective is the gap between the target's and the true class's
//! logit, g(x) = z_t − z_y; each step linearises g at the current point x₁ and projects both x₁
//! and the clean x₀ onto the plane g = 0 within the pixel box ([`super::fab_projection`]), then
//! moves to a mix of the two projections, overshot by η:
//!
//!   x₁ ← clip₀₁( (x₁ + η·d₁)(1 − α) + (x₀ + η·d₂)·α ),  α = min(max(‖d₁‖/(‖d₁‖ + ‖d₂‖), 0), α_max)
//!
//! (norms at least 10⁻⁸). Wherever the new point is misclassified, it is kept if nearer x₀ than
//! the best so far, and x₁ steps back towards x₀ by β. The run starts at the clean point (the
//! standard version's one restart has no random start) and takes every iteration: it searches for
//! the smallest perturbation, so a sample counts as broken only where the point found is within ε.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

use super::dlr::pick;
use super::fab_projection;
use super::objective::{losses_and_grads, Evaluated, Objective};
use super::problem::{GradFlags, Outcome, Problem, Sanity};
use super::threat::{Norm, ThreatModel};
use crate::encoder::{Encoder, Tokens};
use crate::heads::layers::LinearProbe;
use crate::heads::sliding::Tiling;

/// AutoAttack's FAB settings: the largest weight of the clean point's projection, the
/// overshoot, the backward step.
pub const ALPHA_MAX: f64 = 0.1;
pub const ETA: f64 = 1.05;
pub const BETA: f64 = 0.9;

/// FAB-T's objective: z_t − z_y, per sample, and its gradient; success: misclassified.
pub struct LogitGap<'a> {
    pub probe: &'a LinearProbe,
    pub labels: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Objective for LogitGap<'_> {
    fn name(&self) -> &'static str {
        "fab-t"
    }

    fn outputs(&self) -> crate::encoder::Outputs {
        self.probe.pooling.outputs()
    }

    fn evaluate(&self, tokens: &Tokens, windows: Option<&Tiling>, active: &[usize], _step: usize, _steps: usize) -> Result<Evaluated> {
        if windows.is_some() {
            bail!("a classification attack sees the whole image at once: sliding windows are for the dense heads");
        }
        let labels: Vec<usize> = active.iter().map(|&i| self.labels[i] as usize).collect();
        let targets: Vec<usize> = active.iter().map(|&i| self.targets[i] as usize).collect();
        let mut predicted = Vec::new();
        let (losses, d_cls, d_patch) = losses_and_grads(tokens, |cls, patch| {
            let logits = self.probe.forward(&self.probe.pooling.features(cls, patch)?)?;
            let k = logits.dim(D::Minus1)?;
            if let Some(c) = labels.iter().chain(&targets).find(|&&c| c >= k) {
                bail!("class {c} is out of range for {k} classes");
            }
            predicted = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            Ok((pick(&logits, &targets)? - pick(&logits, &labels)?)?)
        })?;
        let success = predicted.iter().zip(&labels).map(|(&p, &l)| p as usize != l).collect();
        Ok(Evaluated { losses, d_cls, d_patch, success: Some(success), score: None, saturated: None, d_prenorm: None })
    }
}

/// What FAB needs of a model: at a batch of points (rows of pixels), the gaps g = z_t − z_y and
/// their pixel gradients, and the predicted classes.
pub trait Gaps {
    fn gaps(&mut self, points: &[Vec<f32>]) -> Result<(Vec<f64>, Vec<Vec<f32>>)>;
    fn predict(&mut self, points: &[Vec<f32>]) -> Result<Vec<u32>>;
}

/// FAB's search from the clean points `x0` with true `labels`, `steps` iterations in `norm`'s
/// geometry: per sample the nearest misclassified point found and its distance (∞, `None` where
/// none was). Zero and NaN gradients are counted in `sanity`.
pub fn search(
    model: &mut dyn Gaps,
    x0: &[Vec<f32>],
    labels: &[u32],
    norm: Norm,
    steps: usize,
    sanity: &mut Sanity,
) -> Result<Vec<(f64, Option<Vec<f32>>)>> {
    let n = x0.len();
    let geometry = ThreatModel { norm, eps: 0.0 };
    let origin: Vec<Vec<f64>> = x0.iter().map(|r| r.iter().map(|&v| v as f64).collect()).collect();
    let mut x1: Vec<Vec<f32>> = x0.to_vec();
    let mut found: Vec<(f64, Option<Vec<f32>>)> = vec![(f64::INFINITY, None); n];
    let project = |t: &[f64], w: &[f64], b: f64| match norm {
        Norm::Linf => fab_projection::linf(t, w, b),
        Norm::L2 => fab_projection::l2(t, w, b),
    };
    for _ in 0..steps {
        let (gaps, grads) = model.gaps(&x1)?;
        for i in 0..n {
            if !GradFlags::of(&grads[i]).count(sanity) {
                continue;
            }
            let wv: Vec<f64> = grads[i].iter().map(|&v| v as f64).collect();
            let here: Vec<f64> = x1[i].iter().map(|&v| v as f64).collect();
            // The plane where the linearised gap vanishes: w·x = w·x₁ − g(x₁).
            let b = -gaps[i] + wv.iter().zip(&here).map(|(w, x)| w * x).sum::<f64>();
            let d1 = project(&here, &wv, b);
            let d2 = project(&origin[i], &wv, b);
            let a1 = geometry.norm_of(&d1).max(1e-8);
            let a2 = geometry.norm_of(&d2).max(1e-8);
            let alpha = (a1 / (a1 + a2)).clamp(0.0, ALPHA_MAX);
            for k in 0..here.len() {
                let v = (here[k] + ETA * d1[k]) * (1.0 - alpha) + (origin[i][k] + d2[k] * ETA) * alpha;
                x1[i][k] = v.clamp(0.0, 1.0) as f32;
            }
        }
        let predicted = model.predict(&x1)?;
        for i in 0..n {
            if predicted[i] == labels[i] {
                continue;
            }
            let moved: Vec<f32> = x1[i].iter().zip(&x0[i]).map(|(a, b)| a - b).collect();
            let t = geometry.norm_of(&moved);
            if t < found[i].0 {
                found[i] = (t, Some(x1[i].clone()));
            }
            for (v, o) in x1[i].iter_mut().zip(&origin[i]) {
                *v = (*o + (*v as f64 - o) * BETA) as f32;
            }
        }
    }
    Ok(found)
}

/// The pipeline as FAB sees it: pixels → normalize → encoder → probe, gaps towards `targets`.
struct Pipeline<'a> {
    problem: Problem<'a>,
    probe: &'a LinearProbe,
}

impl Pipeline<'_> {
    fn batch(&self, points: &[Vec<f32>]) -> Result<Tensor> {
        let (c, h, w) = self.problem.dims;
        Ok(Tensor::from_vec(points.concat(), (points.len(), c, h, w), &candle_core::Device::Cpu)?)
    }
}

impl Gaps for Pipeline<'_> {
    fn gaps(&mut self, points: &[Vec<f32>]) -> Result<(Vec<f64>, Vec<Vec<f32>>)> {
        let p = &self.problem;
        let at = Tensor::from_vec(points.concat(), (points.len(), p.per), p.x.device())?;
        let all: Vec<usize> = (0..points.len()).collect();
        let (ev, grad) = p.evaluate(&(at - &p.x)?, &all, 0, 1, true)?;
        Ok((ev.losses, grad.expect("evaluate with gradients").to_vec2()?))
    }

    fn predict(&mut self, points: &[Vec<f32>]) -> Result<Vec<u32>> {
        let logits = super::square::logits(self.problem.enc, self.probe, &self.batch(points)?)?;
        Ok(logits.argmax(1)?.to_vec1::<u32>()?)
    }
}

/// One FAB-T run on every sample of `images` (`[n, 3, H, W]` in [0,1]) with true `labels`,
/// towards `targets`, for `steps` iterations under `threat`'s norm. The outcome holds per sample
/// the nearest misclassified point found (the clean image where none was), its loss the distance
/// to the clean image (∞ where none was found), and success where that point is within ε.
pub fn run(
    enc: &Encoder,
    probe: &LinearProbe,
    images: &Tensor,
    labels: &[u32],
    targets: &[u32],
    threat: &ThreatModel,
    steps: usize,
) -> Result<Outcome> {
    let (n, c, h, w) = images.dims4()?;
    let x: Vec<Vec<f32>> = images.to_dtype(candle_core::DType::F32)?.flatten_from(1)?.to_vec2()?;
    let objective = LogitGap { probe, labels: labels.to_vec(), targets: targets.to_vec() };
    let clean = Tensor::from_vec(x.concat(), (n, c * h * w), enc.vit.device())?;
    let problem = Problem { enc, objective: &objective, x: clean, per: c * h * w, dims: (c, h, w), threat: *threat, windows: None };
    let mut sanity = Sanity::default();
    let found = search(&mut Pipeline { problem, probe }, &x, labels, threat.norm, steps, &mut sanity)?;
    sanity.settings(threat, steps);
    // FAB's `perturb`: a point beyond ε does not count (compared in f32, as the reference's).
    let within = |d: f64| d.is_finite() && (d as f32) <= threat.eps as f32;
    for (d, _) in &found {
        if within(*d) && threat.eps > 0.0 {
            sanity.max_norm_over_eps = sanity.max_norm_over_eps.max(d / threat.eps);
        }
    }
    let flat: Vec<f32> = found.iter().zip(&x).flat_map(|((_, p), x)| p.clone().unwrap_or_else(|| x.clone())).collect();
    Ok(Outcome {
        adversarial: Tensor::from_vec(flat, (n, c, h, w), images.device())?,
        loss: found.iter().map(|(d, _)| *d).collect(),
        success: found.iter().map(|(d, _)| within(*d)).collect(),
        sanity,
    })
}
