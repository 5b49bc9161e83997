//! Task losses, as DINOv2's evaluation (and the study after it) defines them, differentiable in
//! candle, on one valid-pixel mask (`min < gt < max`, the metrics' mask; DINOv2 uses `gt > 0`):
//! - cross-entropy with an ignore index (mean over the counted pixels or samples);
//! - SigLoss (DINOv2's `SigLoss`): g = log(pred + ε) − log(gt + ε), ε = 0.001, over the valid
//!   pixels of the batch; √(Var(g) + 0.15·mean(g)²), Var unbiased as `torch.var`;
//! - GradLoss (DINOv2's `GradientLoss`, after MegaDepth): on each image's own map
//!   d = log(pred + ε) − log(gt + ε), at the scales subsampled from the full map with strides
//!   1, 2, 4, 6, Σ|d(y, x) − d(y, x + 2)| + Σ|d(y, x) − d(y + 2, x)| over pairs of pixels two
//!   apart that are both valid, divided by the valid pixels at that scale; summed over scales,
//!   then averaged over the images. A scale without a valid pixel adds nothing (DINOv2 would
//!   divide by zero there). The study's copy of it slices the batch and channel axes of a
//!   `[B, 1, H, W]` map instead of the image's: on DepthPGD's `[1, H, W]` maps only a vertical
//!   term survives. We compute the loss as DINOv2 defines it.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};

use crate::metrics::DepthRange;

/// `logits` `[N, K, ...]`, `labels` `[N, ...]` (u32 values; `ignore` skipped). Mean over counted.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, ignore: u32) -> Result<Tensor> {
    let k = logits.dim(1)?;
    // Move classes last: [N, ..., K] flattened to [M, K].
    let rank = logits.rank();
    let mut perm: Vec<usize> = (0..rank).filter(|&d| d != 1).collect();
    perm.push(1);
    let flat = logits.permute(perm)?.contiguous()?.reshape(((), k))?;
    let labels = labels.flatten_all()?.to_vec1::<u32>()?;
    if labels.len() != flat.dim(0)? {
        bail!("{} labels for {} predictions", labels.len(), flat.dim(0)?);
    }
    let mut onehot = vec![0f32; labels.len() * k];
    let mut counted = 0usize;
    for (i, &l) in labels.iter().enumerate() {
        if l == ignore {
            continue;
        }
        if l as usize >= k {
            bail!("label {l} is out of range for {k} classes");
        }
        onehot[i * k + l as usize] = 1.0;
        counted += 1;
    }
    if counted == 0 {
        bail!("every label is the ignore index {ignore}: the loss is undefined");
    }
    let onehot = Tensor::from_vec(onehot, flat.dims(), flat.device())?.to_dtype(flat.dtype())?;
    let max = flat.max_keepdim(D::Minus1)?.detach();
    let shifted = flat.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_p = shifted.broadcast_sub(&log_z)?;
    Ok(((log_p * onehot)?.sum_all()? * (-1.0 / counted as f64))?)
}

/// Valid-pixel mask of `gt` as 0/1 in the dtype of `gt`: the pixels [`DepthRange::is_valid`]
/// accepts (`min < gt < max`; NaN fails both comparisons), the one mask of losses and metrics.
pub fn valid_mask(gt: &Tensor, range: DepthRange) -> Result<Tensor> {
    Ok((gt.gt(range.min)? * gt.lt(range.max)?)?.to_dtype(gt.dtype())?)
}

/// DINOv2's ε inside the logs of SigLoss and GradLoss ("avoid grad explode").
pub const LOG_EPS: f64 = 0.001;

/// The subsampling strides of GradLoss's scales, from the full map.
pub const GRAD_STRIDES: [usize; 4] = [1, 2, 4, 6];

/// SigLoss over the valid pixels of the whole batch.
pub fn sig_loss(pred: &Tensor, gt: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let n = mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if n < 2.0 {
        bail!("SigLoss needs at least 2 valid pixels, got {n}");
    }
    let g = log_ratio(pred, gt, mask)?;
    let mean = (g.sum_all()? / n)?;
    let centred = (g.broadcast_sub(&mean)? * mask)?;
    let var = (centred.sqr()?.sum_all()? / (n - 1.0))?;
    Ok((var + (mean.sqr()? * 0.15)?)?.sqrt()?)
}

/// `log(pred + ε) − log(gt + ε)` where valid, 0 elsewhere: invalid pixels never reach a log (a
/// negative or NaN value there would give NaN, and NaN·0 is still NaN).
fn log_ratio(pred: &Tensor, gt: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let outside = (1.0 - mask)?;
    let safe = |t: &Tensor| -> Result<Tensor> { Ok((((t * mask)? + &outside)? + LOG_EPS)?) };
    Ok(((safe(pred)?.log()? - safe(gt)?.log()?)? * mask)?)
}

/// GradLoss on `[B, H, W]` maps at the first `scales` of [`GRAD_STRIDES`] (all four in training
/// and DepthPGD), averaged over the images.
pub fn grad_loss(pred: &Tensor, gt: &Tensor, mask: &Tensor, scales: usize) -> Result<Tensor> {
    let (b, _, _) = pred.dims3()?;
    let d = log_ratio(pred, gt, mask)?;
    // Per image [B]: every image of the batch at once.
    let mut total = Tensor::zeros(b, pred.dtype(), pred.device())?;
    for &stride in GRAD_STRIDES.iter().take(scales) {
        let (d, m) = (subsample(&d, stride)?, subsample(mask, stride)?);
        let (_, h, w) = d.dims3()?;
        // Valid pixels per image, at least 1: an image with none at this scale has no valid pair
        // either (its sum is 0), so it adds nothing.
        let n = m.sum((1, 2))?.maximum(1.0)?;
        let mut pairs = Tensor::zeros(b, pred.dtype(), pred.device())?;
        if w > 2 {
            let dx = (d.narrow(2, 2, w - 2)? - d.narrow(2, 0, w - 2)?)?.abs()?;
            pairs = (pairs + (dx * (m.narrow(2, 2, w - 2)? * m.narrow(2, 0, w - 2)?)?)?.sum((1, 2))?)?;
        }
        if h > 2 {
            let dy = (d.narrow(1, 2, h - 2)? - d.narrow(1, 0, h - 2)?)?.abs()?;
            pairs = (pairs + (dy * (m.narrow(1, 2, h - 2)? * m.narrow(1, 0, h - 2)?)?)?.sum((1, 2))?)?;
        }
        total = (total + pairs.div(&n)?)?;
    }
    Ok(total.mean_all()?)
}

/// Every `stride`-th row and column, starting at 0 (`x[:, ::stride, ::stride]`).
fn subsample(x: &Tensor, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(x.clone());
    }
    let (b, h, w) = x.dims3()?;
    let rows: Vec<u32> = (0..h as u32).step_by(stride).collect();
    let cols: Vec<u32> = (0..w as u32).step_by(stride).collect();
    let (nr, nc) = (rows.len(), cols.len());
    let rows = Tensor::from_vec(rows, nr, x.device())?;
    let cols = Tensor::from_vec(cols, nc, x.device())?;
    Ok(x.index_select(&rows, 1)?.index_select(&cols, 2)?.reshape((b, nr, nc))?)
}

/// The depth objective of the study (training and DepthPGD): SigLoss + 0.5·GradLoss.
pub fn depth_loss(pred: &Tensor, gt: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok((sig_loss(pred, gt, mask)? + (grad_loss(pred, gt, mask, 4)? * 0.5)?)?)
}
