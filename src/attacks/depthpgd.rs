//! DepthPGD: the depth head's training objective turned against it — SigLoss + 0.5·GradLoss of
//! the prediction against the ground truth, on valid pixels only (the same mask as the metrics),
//! per image. An image with fewer than two valid pixels has no loss and no gradient.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::objective::{losses_and_grads_of, Evaluated, Objective};
use crate::encoder::{Reads, Tokens};
use crate::features::Batch;
use crate::heads::head::Head;
use crate::heads::losses::{depth_loss, valid_mask};
use crate::heads::sliding::{dense_forward, Tiling};
use crate::metrics::DepthRange;

pub struct DepthPgd<'a> {
    pub head: &'a Head,
    /// The encoder outputs the head reads (DINOv2's: before the final norm).
    pub reads: Reads,
    /// Ground truth of the whole batch, metres, row-major `B × height × width`.
    pub metres: Vec<f32>,
    pub height: usize,
    pub width: usize,
    pub range: DepthRange,
}

impl Objective for DepthPgd<'_> {
    fn name(&self) -> &'static str {
        "depthpgd"
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
                    depth_loss(&p, &gt, &mask)
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
