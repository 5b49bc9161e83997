//! SegPGD: per-pixel cross-entropy of the segmentation head, with correctly and wrongly
//! classified pixels weighted (1 − λ_t) and λ_t, λ_t = t / (2T), t = 0…T−1: early steps push the
//! pixels still right, later ones keep the fooled ones fooled. Ignored pixels (255) count nowhere.
//! Two published forms, per image:
//! - `paper` (the SegPGD paper's, the default): [(1 − λ_t)·Σ_correct CE + λ_t·Σ_wrong CE] divided
//!   by the number of labelled pixels;
//! - `study` (the study's code, `evaluators/attack.py`): (1 − λ_t)·mean_correct CE +
//!   λ_t·mean_wrong CE (an empty set adds nothing; the source's mean would be NaN there). Its
//!   per-pixel weights differ from the paper's by the ratio of correct to wrong pixels. The study
//!   takes the mean over the whole batch and applies CE to window-averaged softmax
//!   probabilities; we take each image's own, on logits.
//!
//! The loss changes with λ_t, so losses of different steps cannot be compared: the best point is
//! chosen by the task metric, 1 − the image's mIoU (over the classes present in its labels or
//! predictions).

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

use super::objective::{losses_and_grads, Evaluated, Objective};
use crate::data::IGNORE;
use crate::encoder::Tokens;
use crate::features::Batch;
use crate::heads::head::Head;
use crate::heads::sliding::{dense_forward, Tiling};
use crate::metrics::ConfusionMatrix;

/// Which of SegPGD's two published forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegPgdForm {
    /// The SegPGD paper's: weighted sum over the labelled pixels, divided by their number.
    #[default]
    Paper,
    /// The study's code: weighted means over the correct and over the wrong pixels.
    Study,
}
crate::choices!(SegPgdForm { Paper = "paper", Study = "study" });

impl SegPgdForm {
    pub fn is_paper(&self) -> bool {
        *self == SegPgdForm::Paper
    }
}

pub struct SegPgd<'a> {
    pub head: &'a Head,
    /// Labels of the whole batch, row-major `B × height × width`.
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
    pub form: SegPgdForm,
}

/// 1 − the mIoU of one image's prediction (the metrics' own confusion matrix: classes in its
/// labels or predictions, labelled pixels only); 0 for an image without labelled pixels.
fn miou_loss(labels: &[u32], predicted: &[u32], k: usize) -> Result<f64> {
    let mut m = ConfusionMatrix::new(k, IGNORE);
    m.update(predicted, labels)?;
    Ok(m.miou().map_or(0.0, |miou| 1.0 - miou))
}

impl Objective for SegPgd<'_> {
    fn name(&self) -> &'static str {
        "segpgd"
    }

    fn evaluate(&self, tokens: &Tokens, windows: Option<&Tiling>, active: &[usize], step: usize, steps: usize) -> Result<Evaluated> {
        let Head::Seg(_) = self.head else { bail!("SegPGD needs a segmentation head") };
        let (h, w) = (self.height, self.width);
        let labels: Vec<u32> = active.iter().flat_map(|&i| self.labels[i * h * w..(i + 1) * h * w].iter().copied()).collect();
        let lambda = step as f64 / (2.0 * steps.max(1) as f64);
        let mut score = Vec::with_capacity(active.len());
        let (losses, d_cls, d_patch) = losses_and_grads(tokens, |cls, patch| {
            let batch = Batch::from_tokens(cls, patch, tokens.grid);
            let logits = dense_forward(self.head, &batch, (h, w), windows)?; // [n, K, H, W]
            let (n, k) = (logits.dim(0)?, logits.dim(1)?);
            let predicted = logits.argmax(1)?.flatten_all()?.to_vec1::<u32>()?;
            if let Some(l) = labels.iter().find(|&&l| l != IGNORE && l as usize >= k) {
                bail!("label {l} is out of range for {k} classes");
            }
            let mut onehot = vec![0f32; n * k * h * w];
            let mut weight = vec![0f64; n * h * w];
            for img in 0..n {
                let px = img * h * w..(img + 1) * h * w;
                let (l, p) = (&labels[px.clone()], &predicted[px.clone()]);
                score.push(miou_loss(l, p, k)?);
                let right = l.iter().zip(p).filter(|(l, p)| **l != IGNORE && l == p).count();
                let labelled = l.iter().filter(|&&l| l != IGNORE).count();
                // Per-pixel weights of correct and wrong pixels.
                let (wc, ww) = match self.form {
                    SegPgdForm::Paper => {
                        let n = labelled.max(1) as f64;
                        ((1.0 - lambda) / n, lambda / n)
                    }
                    SegPgdForm::Study => {
                        let mean = |count: usize| if count > 0 { 1.0 / count as f64 } else { 0.0 };
                        ((1.0 - lambda) * mean(right), lambda * mean(labelled - right))
                    }
                };
                for (pix, (&l, &pr)) in l.iter().zip(p).enumerate() {
                    if l == IGNORE {
                        continue;
                    }
                    onehot[(img * k + l as usize) * h * w + pix] = 1.0;
                    weight[img * h * w + pix] = if pr == l { wc } else { ww };
                }
            }
            let dev = logits.device();
            let onehot = Tensor::from_vec(onehot, (n, k, h, w), dev)?.to_dtype(logits.dtype())?;
            let weight = Tensor::from_vec(weight, (n, h, w), dev)?.to_dtype(logits.dtype())?;
            let max = logits.max_keepdim(1)?.detach();
            let shifted = logits.broadcast_sub(&max)?;
            let log_p = shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(1)?.log()?)?;
            let ce = (log_p * onehot)?.sum(1)?.neg()?; // [n, H, W]
            Ok((ce * weight)?.flatten_from(1)?.sum(D::Minus1)?)
        })?;
        Ok(Evaluated { losses, d_cls, d_patch, success: None, score: Some(score), saturated: None, d_prenorm: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By hand: labels [0, 0, 1, 1, 255], predicted [0, 1, 1, 1, 0]: class 0 IoU 1/2 (one hit,
    /// two labelled, one predicted), class 1 IoU 2/3; the ignored pixel counts nowhere.
    #[test]
    fn miou_loss_by_hand() {
        let l = miou_loss(&[0, 0, 1, 1, IGNORE], &[0, 1, 1, 1, 0], 3).unwrap();
        assert!((l - (1.0 - (0.5 + 2.0 / 3.0) / 2.0)).abs() < 1e-15, "{l}");
        assert_eq!(miou_loss(&[2, 2], &[2, 2], 3).unwrap(), 0.0);
        assert_eq!(miou_loss(&[IGNORE], &[1], 3).unwrap(), 0.0);
    }
}
