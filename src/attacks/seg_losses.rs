//! The segmentation losses of SEA's ensemble and of CosPGD, per image, on the head's logits
//! `[n, K, H, W]` against labels (255 ignored): with p the softmax, y the label, "correct" the
//! pixels whose argmax is still y (held constant within a step), and the sums over an image's
//! labelled pixels divided by their number:
//!
//! - `masked-ce`: cross-entropy on the correct pixels only (SEA);
//! - `masked-balanced-ce`: the same, each pixel weighted by the inverse frequency of its class in
//!   the image (SEA);
//! - `js`: the Jensen–Shannon divergence between p and the one-hot label, on every labelled pixel
//!   (SEA);
//! - `masked-spherical`: −p_y / ‖p‖₂ on the correct pixels (SEA);
//! - `cospgd`: cross-entropy weighted by the cosine similarity of p to the one-hot label,
//!   p_y / ‖p‖₂, held constant (CosPGD).
//!
//! The masks change as pixels are fooled, so losses of different steps are not comparable: the
//! best point is chosen by the image's pixel accuracy.

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
    /// Per pixel, the inverse frequency of its class among the image's labelled pixels.
    balance: Tensor,
    /// Per image, 1 / its number of labelled pixels (0 where none).
    per_image: Tensor,
}

fn masks(logits: &Tensor, labels: &[u32]) -> Result<Masks> {
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
        (vec![0f32; n * k * px], vec![0f32; n * px], vec![0f32; n * px], vec![0f32; n * px]);
    let mut per_image = vec![0f32; n];
    for img in 0..n {
        let ls = &labels[img * px..(img + 1) * px];
        let mut counts = vec![0usize; k];
        ls.iter().filter(|&&l| l != IGNORE).for_each(|&l| counts[l as usize] += 1);
        let labelled: usize = counts.iter().sum();
        per_image[img] = if labelled > 0 { 1.0 / labelled as f32 } else { 0.0 };
        for (j, &l) in ls.iter().enumerate() {
            if l == IGNORE {
                continue;
            }
            let at = img * px + j;
            onehot[(img * k + l as usize) * px + j] = 1.0;
            valid[at] = 1.0;
            correct[at] = f32::from(u8::from(predicted[at] == l));
            balance[at] = labelled as f32 / (counts[l as usize] as f32 * counts.iter().filter(|&&c| c > 0).count() as f32);
        }
    }
    let dev = logits.device();
    let dt = logits.dtype();
    let t = |v: Vec<f32>, shape: &[usize]| -> Result<Tensor> { Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dt)?) };
    Ok(Masks {
        onehot: t(onehot, &[n, k, h, w])?,
        valid: t(valid, &[n, 1, h, w])?,
        correct: t(correct, &[n, 1, h, w])?,
        balance: t(balance, &[n, 1, h, w])?,
        per_image: t(per_image, &[n])?,
    })
}

/// Per-image `loss` `[n]` of `logits` `[n, K, H, W]` against `labels` (`n·H·W`, 255 ignored).
pub fn seg_losses(loss: SegLoss, logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let m = masks(logits, labels)?;
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_p = shifted.broadcast_sub(&log_z)?;
    let p = log_p.exp()?;
    let ce = (&log_p * &m.onehot)?.sum_keepdim(1)?.neg()?; // [n, 1, H, W]
    let p_y = (&p * &m.onehot)?.sum_keepdim(1)?;
    let p_norm = p.sqr()?.sum_keepdim(1)?.sqrt()?;
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
        SegLoss::MaskedSpherical => ((p_y / p_norm)?.neg()? * &m.correct)?,
        SegLoss::CosPgd => ((p_y / p_norm)?.detach() * ce)?.mul(&m.valid)?,
    };
    let (n, _, _, _) = logits.dims4()?;
    Ok((per_pixel.reshape((n, ()))?.sum(D::Minus1)? * &m.per_image)?)
}

/// 1 − each image's pixel accuracy (0 where it has no labelled pixel).
fn pixel_errors(logits: &Tensor, labels: &[u32]) -> Result<Vec<f64>> {
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
}

impl Objective for SegObjective<'_> {
    fn name(&self) -> &'static str {
        self.loss.name()
    }

    fn evaluate(&self, tokens: &Tokens, windows: Option<&Tiling>, active: &[usize], _step: usize, _steps: usize) -> Result<Evaluated> {
        let Head::Seg(_) = self.head else { bail!("the {} loss needs a segmentation head", self.loss.name()) };
        let (h, w) = (self.height, self.width);
        let labels: Vec<u32> = active.iter().flat_map(|&i| self.labels[i * h * w..(i + 1) * h * w].iter().copied()).collect();
        let mut score = Vec::new();
        let (losses, d_cls, d_patch) = losses_and_grads(tokens, |cls, patch| {
            let batch = Batch::from_tokens(cls, patch, tokens.grid);
            let logits = dense_forward(self.head, &batch, (h, w), windows)?;
            score = pixel_errors(&logits, &labels)?;
            seg_losses(self.loss, &logits, &labels)
        })?;
        Ok(Evaluated { losses, d_cls, d_patch, d_prenorm: None, success: None, score: Some(score), saturated: None })
    }
}
