//! The segmentation losses of SEA's ensemble and of CosPGD, per image, on the head's logits
//! `[n, K, H, W]` against labels (255 ignored), as their sources compute them (restated in
//! `tools/gen_sea_fixtures.py`, whose fixture the tests match): with p the softmax, y the label,
//! "correct" the labelled pixels whose argmax is still y (rebuilt at every evaluation, held
//! constant within it), each image's per-pixel terms summed and divided by all its H·W pixels
//! (SEA's `pixel_to_img_loss`; CosPGD's mean):
//!
//! - `masked-ce`: cross-entropy on the correct pixels (SEA's `mask-ce-avg`);
//! - `masked-balanced-ce`: the same, weighted w_y by class (SEA's `mask-ce-bal`; SEA ships fixed
//!   per-dataset weights, here the inverse class frequencies over the labels attacked, summing
//!   to 1 — a stated deviation);
//! - `js`: the Jensen–Shannon divergence between p and the one-hot label, ½[KL(p‖m) + KL(e_y‖m)],
//!   m = (p + e_y)/2, on every labelled pixel (SEA's `js-avg`);
//! - `masked-spherical`: −z_y / ‖z‖₂ on the raw logits, on the correct pixels (SEA's pre-release
//!   `mask-norm-corrlog-avg`; its released ensemble keeps the other three);
//! - `cospgd`: cross-entropy weighted by cos(p, e_y) = p_y / ‖p‖₂, held constant (CosPGD's
//!   `cospgd_scale`).
//!
//! The masks change as pixels are fooled, so losses of different steps are not comparable: the
//! best point is chosen by the image's pixel accuracy, and SEA's APGD decides its step sizes on the
//! plain cross-entropy averaged over the image (`track_loss = "ce-avg"`), which these objectives
//! report as their loss while their gradient is that of the SEA loss.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

use super::objective::{losses_and_grads, Evaluated, Objective};
use crate::data::IGNORE;
use crate::encoder::Tokens;
use crate::features::Batch;
use crate::heads::head::Head;
use crate::heads::sliding::{dense_forward, Tiling};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegLoss {
    MaskedCe,
    MaskedBalancedCe,
    Js,
    MaskedSpherical,
    CosPgd,
}

impl SegLoss {
    /// SEA's four, in its order.
    pub const SEA: [SegLoss; 4] = [SegLoss::MaskedCe, SegLoss::MaskedBalancedCe, SegLoss::Js, SegLoss::MaskedSpherical];

    pub fn name(self) -> &'static str {
        match self {
            SegLoss::MaskedCe => "masked-ce",
            SegLoss::MaskedBalancedCe => "masked-balanced-ce",
            SegLoss::Js => "js",
            SegLoss::MaskedSpherical => "masked-spherical",
            SegLoss::CosPgd => "cospgd",
        }
    }
}

/// What a loss needs of the labels, as constant `[n, K, H, W]` / `[n, 1, H, W]` tensors.
struct Masks {
    onehot: Tensor,
    /// Labelled pixels.
    valid: Tensor,
    /// Labelled pixels still classified right.
    correct: Tensor,
    /// Per pixel, its class's weight (0 where unlabelled).
    balance: Tensor,
}

/// Inverse class frequencies over the labelled pixels of `labels`, normalised to sum 1 (0 for
/// classes absent): the balanced cross-entropy's weights.
pub fn class_weights(labels: &[u32], classes: usize) -> Vec<f64> {
    let mut counts = vec![0usize; classes];
    labels.iter().filter(|&&l| l != IGNORE && (l as usize) < classes).for_each(|&l| counts[l as usize] += 1);
    let inverse: Vec<f64> = counts.iter().map(|&c| if c > 0 { 1.0 / c as f64 } else { 0.0 }).collect();
    let total: f64 = inverse.iter().sum();
    inverse.iter().map(|v| if total > 0.0 { v / total } else { 0.0 }).collect()
}

fn masks(logits: &Tensor, labels: &[u32], weights: &[f64]) -> Result<Masks> {
    let (n, k, h, w) = logits.dims4()?;
    let px = h * w;
    if labels.len() != n * px {
        bail!("{} labels for {n} images of {h}×{w}", labels.len());
    }
    if let Some(l) = labels.iter().find(|&&l| l != IGNORE && l as usize >= k) {
        bail!("label {l} is out of range for {k} classes");
    }
    let predicted = logits.argmax(1)?.flatten_all()?.to_vec1::<u32>()?;
    let (mut onehot, mut valid, mut correct, mut balance) =
        (vec![0f64; n * k * px], vec![0f64; n * px], vec![0f64; n * px], vec![0f64; n * px]);
    if weights.len() != k {
        bail!("{} class weights for {k} classes", weights.len());
    }
    for img in 0..n {
        let ls = &labels[img * px..(img + 1) * px];
        for (j, &l) in ls.iter().enumerate() {
            if l == IGNORE {
                continue;
            }
            let at = img * px + j;
            onehot[(img * k + l as usize) * px + j] = 1.0;
            valid[at] = 1.0;
            correct[at] = f64::from(u8::from(predicted[at] == l));
            balance[at] = weights[l as usize];
        }
    }
    let dev = logits.device();
    let dt = logits.dtype();
    let t = |v: Vec<f64>, shape: &[usize]| -> Result<Tensor> { Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dt)?) };
    Ok(Masks {
        onehot: t(onehot, &[n, k, h, w])?,
        valid: t(valid, &[n, 1, h, w])?,
        correct: t(correct, &[n, 1, h, w])?,
        balance: t(balance, &[n, 1, h, w])?,
    })
}

/// Per-image `loss` `[n]` of `logits` `[n, K, H, W]` against `labels` (`n·H·W`, 255 ignored),
/// with the balanced cross-entropy's class `weights` (`K`; see [`class_weights`]).
pub fn seg_losses(loss: SegLoss, logits: &Tensor, labels: &[u32], weights: &[f64]) -> Result<Tensor> {
    Ok(losses_and_ce(loss, logits, labels, weights)?.0)
}

/// [`seg_losses`] and, from the same pass, SEA's tracking loss: the plain cross-entropy over the
/// labelled pixels, per image, divided by all its H·W pixels (`ce-avg`).
fn losses_and_ce(loss: SegLoss, logits: &Tensor, labels: &[u32], weights: &[f64]) -> Result<(Tensor, Vec<f64>)> {
    let m = masks(logits, labels, weights)?;
    let (n, _, h, w) = logits.dims4()?;
    let per_image = |t: Tensor| -> Result<Tensor> { Ok((t.reshape((n, ()))?.sum(D::Minus1)? / (h * w) as f64)?) };
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_p = shifted.broadcast_sub(&log_z)?;
    let p = log_p.exp()?;
    let ce = (&log_p * &m.onehot)?.sum_keepdim(1)?.neg()?; // [n, 1, H, W]
    let ce_avg = per_image(ce.detach())?.to_dtype(candle_core::DType::F64)?.to_vec1()?;
    let pick = |t: &Tensor| -> Result<Tensor> { Ok((t * &m.onehot)?.sum_keepdim(1)?) };
    let norm = |t: &Tensor| -> Result<Tensor> { Ok(t.sqr()?.sum_keepdim(1)?.sqrt()?) };
    let per_pixel = match loss {
        SegLoss::MaskedCe => (ce * &m.correct)?,
        SegLoss::MaskedBalancedCe => ((ce * &m.correct)? * &m.balance)?,
        SegLoss::Js => {
            // ½ KL(p ‖ m) + ½ KL(e_y ‖ m), m = (p + e_y)/2; 0·log 0 = 0.
            let mid = ((&p + &m.onehot)? * 0.5)?;
            let log_mid = mid.clamp(1e-30, f64::INFINITY)?.log()?;
            let kl_p = (&p * (&log_p - &log_mid)?)?.sum_keepdim(1)?;
            let kl_y = (&m.onehot * log_mid.neg()?)?.sum_keepdim(1)?;
            (((kl_p + kl_y)? * 0.5)? * &m.valid)?
        }
        SegLoss::MaskedSpherical => ((pick(logits)? / norm(logits)?)?.neg()? * &m.correct)?,
        SegLoss::CosPgd => ((pick(&p)? / norm(&p)?)?.detach() * ce)?.mul(&m.valid)?,
    };
    Ok((per_image(per_pixel)?, ce_avg))
}

/// 1 − each image's pixel accuracy (0 where it has no labelled pixel).
pub(super) fn pixel_errors(logits: &Tensor, labels: &[u32]) -> Result<Vec<f64>> {
    let (n, _, h, w) = logits.dims4()?;
    let predicted = logits.argmax(1)?.flatten_all()?.to_vec1::<u32>()?;
    Ok((0..n)
        .map(|i| {
            let range = i * h * w..(i + 1) * h * w;
            let (l, p) = (&labels[range.clone()], &predicted[range]);
            let labelled = l.iter().filter(|&&v| v != IGNORE).count();
            let right = l.iter().zip(p).filter(|(l, p)| **l != IGNORE && l == p).count();
            if labelled == 0 {
                0.0
            } else {
                1.0 - right as f64 / labelled as f64
            }
        })
        .collect())
}

/// One of these losses as an attack objective on a segmentation head.
pub struct SegObjective<'a> {
    pub head: &'a Head,
    /// Labels of the whole batch, row-major `B × height × width`.
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
    pub loss: SegLoss,
    /// Report SEA's tracking loss (plain CE over the image) instead of the loss itself, as SEA's
    /// APGD steers its step size (the gradient stays the loss's).
    pub steer_by_ce: bool,
}

impl Objective for SegObjective<'_> {
    fn name(&self) -> &'static str {
        self.loss.name()
    }

    fn evaluate(&self, tokens: &Tokens, windows: Option<&Tiling>, active: &[usize], _step: usize, _steps: usize) -> Result<Evaluated> {
        let Head::Seg(_) = self.head else { bail!("the {} loss needs a segmentation head", self.loss.name()) };
        let (h, w) = (self.height, self.width);
        let labels: Vec<u32> = active.iter().flat_map(|&i| self.labels[i * h * w..(i + 1) * h * w].iter().copied()).collect();
        let (mut score, mut track) = (Vec::new(), Vec::new());
        let (losses, d_cls, d_patch) = losses_and_grads(tokens, |cls, patch| {
            let batch = Batch::from_tokens(cls, patch, tokens.grid);
            let logits = dense_forward(self.head, &batch, (h, w), windows)?;
            score = pixel_errors(&logits, &labels)?;
            // The balanced weights from every label of the batch: the same at every step.
            let weights = class_weights(&self.labels, logits.dim(1)?);
            let (per_image, ce) = losses_and_ce(self.loss, &logits, &labels, &weights)?;
            track = ce;
            Ok(per_image)
        })?;
        let losses = if self.steer_by_ce { track } else { losses };
        Ok(Evaluated { losses, d_cls, d_patch, d_prenorm: None, success: None, score: Some(score), saturated: None })
    }
}
