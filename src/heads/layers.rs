//! The three heads of the study, as plain structs of tensors (`Var`s while training) with a
//! `forward` — the last stage of *normalize → encoder → head*:
//! - [`LinearProbe`]: a linear layer on CLS (or CLS ⊕ mean of the patch tokens);
//! - [`SegHead`]: BatchNorm + 1×1 convolution on the patch grid → class logits `[B,K,h,w]`;
//! - [`DepthHead`]: DINOv2's linear depth head (`dinov2/eval/depth/models/decode_heads/
//!   linear_head.py`): patch ⊕ CLS tokens of the last block *before* the final norm → 1×1 conv to
//!   bins (DINOv2 has no BatchNorm there: its `self.bn` is commented out; ours may add one, the
//!   `bn` form), logits upsampled ×4 (bilinear), ReLU + 0.1, normalised over bins, depth = Σ p·bin
//!   with bins uniform in [min, max] → `[B,1,4h,4w]` (one fused op on the CPU, see `bin_readout`).
//!   DINOv2 upsamples the features before the conv; both are linear (and BatchNorm in evaluation
//!   mode is a per-pixel affine map), so it is the same map, 4× cheaper this way.

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::bin_readout::{readout_generic, BinReadout};

/// BatchNorm over the channel (last) dimension of `[N, C]` rows.
#[derive(Clone)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
}

impl BatchNorm {
    /// `train`: normalise with the batch statistics (biased variance, as torch); otherwise with
    /// the running ones. Returns the output and, when training, the batch mean and unbiased
    /// variance for the running-statistics update.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let (mean, var, stats) = if train {
            let n = x.dim(0)?;
            if n < 2 {
                bail!("BatchNorm in training needs at least 2 rows, got {n}");
            }
            let mean = x.mean_keepdim(0)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred.sqr()?.mean_keepdim(0)?;
            let unbiased = (&var * (n as f64 / (n as f64 - 1.0)))?;
            (mean.clone(), var, Some((mean.squeeze(0)?.detach(), unbiased.squeeze(0)?.detach())))
        } else {
            (self.running_mean.unsqueeze(0)?, self.running_var.unsqueeze(0)?, None)
        };
        let xn = x.broadcast_sub(&mean)?.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok((xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?, stats))
    }
}

/// What the linear probe reads from the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Cls,
    /// CLS ⊕ mean of the patch tokens (DINOv2's linear evaluation option).
    ClsMeanPatch,
}

crate::choices!(Pooling { Cls = "cls", ClsMeanPatch = "cls+mean" });

impl Pooling {
    /// Features `[B, F]` from CLS `[B, D]` and patch tokens `[B, P, D]`.
    pub fn features(&self, cls: &Tensor, patch: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Cls => cls.clone(),
            Self::ClsMeanPatch => Tensor::cat(&[cls, &patch.mean(1)?], 1)?,
        })
    }

    /// The encoder's tokens these features read: CLS alone, or every token.
    pub fn outputs(&self) -> crate::encoder::Outputs {
        match self {
            Self::Cls => crate::encoder::Outputs::ClsOnly,
            Self::ClsMeanPatch => crate::encoder::Outputs::All,
        }
    }
}

pub struct LinearProbe {
    /// `[K, F]`
    pub weight: Tensor,
    pub bias: Tensor,
    pub pooling: Pooling,
}

impl LinearProbe {
    /// Logits `[B, K]` from pooled features `[B, F]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?)
    }
}

pub struct SegHead {
    pub bn: BatchNorm,
    /// `[K, D]`: the 1×1 convolution.
    pub weight: Tensor,
    pub bias: Tensor,
}

impl SegHead {
    /// Logits `[B, K, h, w]` on the patch grid from patch tokens `[B, h·w, D]`.
    pub fn forward(&self, patch: &Tensor, (h, w): (usize, usize), train: bool) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let (b, p, d) = patch.dims3()?;
        if p != h * w {
            bail!("{p} patch tokens for a {h}x{w} grid");
        }
        let (x, stats) = self.bn.forward(&patch.reshape((b * p, d))?, train)?;
        let k = self.weight.dim(0)?;
        let logits = x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?;
        Ok((logits.reshape((b, h, w, k))?.permute((0, 3, 1, 2))?.contiguous()?, stats))
    }
}

pub struct DepthHead {
    /// `None` in DINOv2's form; the `bn` form normalises the 2D features first.
    pub bn: Option<BatchNorm>,
    /// `[bins, 2D]`
    pub weight: Tensor,
    pub bias: Tensor,
    pub min_depth: f64,
    pub max_depth: f64,
}

impl DepthHead {
    /// Bin centres, uniform in [min, max].
    pub fn bins(&self) -> Result<Tensor> {
        let n = self.weight.dim(0)?;
        let step = (self.max_depth - self.min_depth) / (n as f64 - 1.0);
        let v: Vec<f64> = (0..n).map(|i| self.min_depth + step * i as f64).collect();
        Ok(Tensor::from_vec(v, n, self.weight.device())?.to_dtype(self.weight.dtype())?)
    }

    /// Depth `[B, 1, 4h, 4w]` from CLS `[B, D]` and patch tokens `[B, h·w, D]`.
    pub fn forward(&self, cls: &Tensor, patch: &Tensor, (h, w): (usize, usize), train: bool) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
        let (b, p, d) = patch.dims3()?;
        if p != h * w {
            bail!("{p} patch tokens for a {h}x{w} grid");
        }
        let x = Tensor::cat(&[patch, &cls.unsqueeze(1)?.broadcast_as((b, p, d))?], 2)?.reshape((b * p, 2 * d))?;
        let (x, stats) = match &self.bn {
            Some(bn) => bn.forward(&x, train)?,
            None => (x, None),
        };
        let n = self.weight.dim(0)?;
        let logits = x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?.reshape((b, h, w, n))?;
        let depth = if logits.device().is_cpu() {
            let bins = self.bins()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
            logits.contiguous()?.apply_op1(BinReadout::new(bins))?
        } else {
            readout_generic(&logits, &self.bins()?)?
        };
        Ok((depth, stats))
    }
}
