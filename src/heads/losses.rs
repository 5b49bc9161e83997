//! Task losses, as the study defines them, differentiable in candle:
//! - cross-entropy with an ignore index (mean over the counted pixels or samples);
//! - SigLoss: g = log pred − log gt on valid pixels, √(Var(g) + 0.15·mean(g)²), Var unbiased as
//!   `torch.var` in the reference code;
//! - GradLoss: on d = log pred − log gt, at 4 scales (stride-2 subsampling), Σ|∂x d| + Σ|∂y d|
//!   over neighbour pairs both valid, divided by the number of valid pixels at that scale; summed
//!   over scales. (The reference code's version indexes the wrong axes and is always 0.)

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

/// `log pred − log gt` where valid, 0 elsewhere: invalid pixels never reach a log (a 0 or
/// negative value there would give NaN, and NaN·0 is still NaN).
fn log_ratio(pred: &Tensor, gt: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let outside = (1.0 - mask)?;
    let safe = |t: &Tensor| -> Result<Tensor> { Ok(((t * mask)? + &outside)?) };
    Ok(((safe(pred)?.log()? - safe(gt)?.log()?)? * mask)?)
}

/// Multi-scale gradient-matching loss on `[B, H, W]` maps.
pub fn grad_loss(pred: &Tensor, gt: &Tensor, mask: &Tensor, scales: usize) -> Result<Tensor> {
    let mut d = log_ratio(pred, gt, mask)?;
    let mut m = mask.clone();
    let mut total = Tensor::zeros((), pred.dtype(), pred.device())?;
    for s in 0..scales {
        if s > 0 {
            d = subsample(&d)?;
            m = subsample(&m)?;
        }
        let (_, h, w) = d.dims3()?;
        let n = m.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if n == 0.0 || h < 2 || w < 2 {
            continue;
        }
        let dx = (d.narrow(2, 1, w - 1)? - d.narrow(2, 0, w - 1)?)?.abs()?;
        let mx = (m.narrow(2, 1, w - 1)? * m.narrow(2, 0, w - 1)?)?;
        let dy = (d.narrow(1, 1, h - 1)? - d.narrow(1, 0, h - 1)?)?.abs()?;
        let my = (m.narrow(1, 1, h - 1)? * m.narrow(1, 0, h - 1)?)?;
        let term = (((dx * mx)?.sum_all()? + (dy * my)?.sum_all()?)? / n)?;
        total = (total + term)?;
    }
    Ok(total)
}

/// Every second row and column, starting at 0.
fn subsample(x: &Tensor) -> Result<Tensor> {
    let (b, h, w) = x.dims3()?;
    let rows: Vec<u32> = (0..h as u32).step_by(2).collect();
    let cols: Vec<u32> = (0..w as u32).step_by(2).collect();
    let (nr, nc) = (rows.len(), cols.len());
    let rows = Tensor::from_vec(rows, nr, x.device())?;
    let cols = Tensor::from_vec(cols, nc, x.device())?;
    Ok(x.index_select(&rows, 1)?.index_select(&cols, 2)?.reshape((b, nr, nc))?)
}

/// The depth objective of the study (training and DepthPGD): SigLoss + 0.5·GradLoss.
pub fn depth_loss(pred: &Tensor, gt: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok((sig_loss(pred, gt, mask)? + (grad_loss(pred, gt, mask, 4)? * 0.5)?)?)
}
