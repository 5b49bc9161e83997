//! SegPGD: per-pixel cross-entropy of the segmentation head, with correctly and wrongly
//! classified pixels weighted (1 − λ_t) and λ_t, λ_t = t / (2T): early steps push the pixels still
//! right, later ones keep the fooled ones fooled. Ignored pixels (255) count nowhere; the sum is
//! divided by the number of labelled pixels of the image.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

use super::objective::{losses_and_grads, Evaluated, Objective};
use crate::data::IGNORE;
use crate::encoder::Tokens;
use crate::features::Batch;
use crate::heads::head::Head;
use crate::heads::trainer::forward;

pub struct SegPgd<'a> {
    pub head: &'a Head,
    /// Labels of the whole batch, row-major `B × height × width`.
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
}

impl Objective for SegPgd<'_> {
    fn name(&self) -> &'static str {
        "segpgd"
    }

    fn evaluate(&self, tokens: &Tokens, active: &[usize], step: usize, steps: usize) -> Result<Evaluated> {
        let Head::Seg(_) = self.head else { bail!("SegPGD needs a segmentation head") };
        let (h, w) = (self.height, self.width);
        let labels: Vec<u32> = active.iter().flat_map(|&i| self.labels[i * h * w..(i + 1) * h * w].iter().copied()).collect();
        let lambda = step as f64 / (2.0 * steps.max(1) as f64);
        let (losses, d_cls, d_patch) = losses_and_grads(tokens, |cls, patch| {
            let batch = Batch::from_tokens(cls, patch, tokens.grid);
            let (logits, _) = forward(self.head, &batch, (h, w), false)?; // [n, K, H, W]
            let (n, k) = (logits.dim(0)?, logits.dim(1)?);
            let predicted = logits.argmax(1)?.flatten_all()?.to_vec1::<u32>()?;
            let mut onehot = vec![0f32; n * k * h * w];
            let mut weight = vec![0f32; n * h * w];
            for (p, (&l, &pred)) in labels.iter().zip(&predicted).enumerate() {
                if l == IGNORE {
                    continue;
                }
                if l as usize >= k {
                    bail!("label {l} is out of range for {k} classes");
                }
                let (img, pix) = (p / (h * w), p % (h * w));
                onehot[(img * k + l as usize) * h * w + pix] = 1.0;
                weight[p] = if pred == l { (1.0 - lambda) as f32 } else { lambda as f32 };
            }
            let valid: Vec<f32> = labels.chunks(h * w).map(|c| c.iter().filter(|&&l| l != IGNORE).count().max(1) as f32).collect();
            let dev = logits.device();
            let onehot = Tensor::from_vec(onehot, (n, k, h, w), dev)?.to_dtype(logits.dtype())?;
            let weight = Tensor::from_vec(weight, (n, h, w), dev)?.to_dtype(logits.dtype())?;
            let max = logits.max_keepdim(1)?.detach();
            let shifted = logits.broadcast_sub(&max)?;
            let log_p = shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(1)?.log()?)?;
            let ce = (log_p * onehot)?.sum(1)?.neg()?; // [n, H, W]
            let per_image = (ce * weight)?.flatten_from(1)?.sum(D::Minus1)?;
            Ok(per_image.div(&Tensor::from_vec(valid, n, dev)?.to_dtype(per_image.dtype())?)?)
        })?;
        Ok(Evaluated { losses, d_cls, d_patch, success: None })
    }
}
