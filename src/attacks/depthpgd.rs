//! DepthPGD: the depth head's training objective turned against it — SigLoss + 0.5·GradLoss of
//! the prediction against the ground truth, on valid pixels only (the same mask as the metrics),
//! per image. An image with fewer than two valid pixels has no loss and no gradient.
//!
//! The depth ensemble (`super::dense_ensemble`) maximises two more losses over the same pixels:
//! - `AbsRel`: the mean absolute relative error |p − g| / g, the metric itself;
//! - `Scaled`: CosPGD's idea carried to a scalar output — each pixel's log-depth error |log p −
//!   log g| weighted by how right the pixel still is, 1 − tanh|log p − log g| (held constant), so
//!   the pixels not yet fooled weigh most; averaged over the valid pixels.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::objective::{losses_and_grads_of, Evaluated, Objective};
use crate::encoder::{Reads, Tokens};
use crate::features::Batch;
use crate::heads::head::{Head, TrainedHead};
use crate::heads::losses::{depth_loss, valid_mask, LOG_EPS};
use crate::heads::sliding::{dense_forward, Tiling};
use crate::metrics::DepthRange;

/// Which loss of the prediction against the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DepthLoss {
    /// SigLoss + 0.5·GradLoss (DepthPGD's).
    #[default]
    Sig,
    /// Mean |p − g| / g.
    AbsRel,
    /// Mean (1 − tanh|log p − log g|)·|log p − log g|, the weight held constant.
    Scaled,
}

/// One image's `loss` of prediction `p` against `gt` on the valid pixels `mask` (all `[1, H, W]`).
pub fn depth_objective(loss: DepthLoss, p: &Tensor, gt: &Tensor, mask: &Tensor) -> Result<Tensor> {
    match loss {
        DepthLoss::Sig => depth_loss(p, gt, mask),
        DepthLoss::AbsRel | DepthLoss::Scaled => {
            let n = mask.sum_all()?;
            // Invalid pixels read 1 m so nothing divides by zero; the mask drops them.
            let safe_gt = ((gt * mask)? + (1.0 - mask)?)?;
            let safe_p = ((p * mask)? + (1.0 - mask)?)?.maximum(LOG_EPS)?;
            let per_pixel = match loss {
                DepthLoss::AbsRel => (safe_p - &safe_gt)?.abs()?.div(&safe_gt)?,
                _ => {
                    let err = (safe_p.log()? - safe_gt.log()?)?.abs()?;
                    let weight = (1.0 - err.tanh()?.detach())?;
                    (err * weight)?
                }
            };
            Ok((per_pixel * mask)?.sum_all()?.div(&n)?)
        }
    }
}

pub struct DepthPgd<'a> {
    pub head: &'a Head,
    /// The encoder outputs the head reads (DINOv2's: before the final norm).
    pub reads: Reads,
    /// Ground truth of the whole batch, metres, row-major `B × height × width`.
    pub metres: Vec<f32>,
    pub height: usize,
    pub width: usize,
    pub range: DepthRange,
    pub loss: DepthLoss,
}

impl<'a> DepthPgd<'a> {
    /// `loss` against the depth head of `trained` (its readout and range) on ground truth `metres`.
    pub fn of(trained: &'a TrainedHead, metres: &[f32], (height, width): (usize, usize), loss: DepthLoss) -> Result<DepthPgd<'a>> {
        let range = trained.meta.range().context("a depth head without a depth range")?;
        Ok(DepthPgd { head: &trained.head, reads: trained.meta.reads(), metres: metres.to_vec(), height, width, range, loss })
    }
}

impl Objective for DepthPgd<'_> {
    fn name(&self) -> &'static str {
        match self.loss {
            DepthLoss::Sig => "depthpgd",
            DepthLoss::AbsRel => "depth-absrel",
            DepthLoss::Scaled => "depth-scaled",
        }
    }

    fn evaluate(&self, tokens: &Tokens, windows: Option<&Tiling>, active: &[usize], _step: usize, _steps: usize) -> Result<Evaluated> {
        let Head::Depth(_) = self.head else { bail!("DepthPGD needs a depth head") };
        let (h, w) = (self.height, self.width);
        let g = losses_and_grads_of(tokens, self.reads, |cls, patch| {
            let batch = Batch::from_tokens(cls, patch, tokens.grid);
            let pred = dense_forward(self.head, &batch, (h, w), windows)?; // [n, H, W]
            let per = active
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let gt = Tensor::from_vec(self.metres[i * h * w..(i + 1) * h * w].to_vec(), (1, h, w), pred.device())?
                        .to_dtype(pred.dtype())?;
                    let mask = valid_mask(&gt, self.range)?;
                    let valid = mask.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                    let p = pred.narrow(0, k, 1)?;
                    if valid < 2.0 {
                        return Ok((p.sum_all()? * 0.0)?);
                    }
                    depth_objective(self.loss, &p, &gt, &mask)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::stack(&per, 0)?)
        })?;
        Ok(Evaluated {
            losses: g.losses,
            d_cls: g.d_cls,
            d_patch: g.d_patch,
            d_prenorm: g.d_prenorm,
            success: None,
            score: None,
            saturated: None,
        })
    }
}
