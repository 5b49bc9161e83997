//! PGD on classification: maximise the cross-entropy of the linear probe's logits against the
//! true label; a sample succeeds once it is misclassified. With `scale_logits`, the study's form
//! (`DownstreamPGD`): the logits divided by max(1, max_k z_k) of their sample, the divisor held
//! constant, so a confident probe's softmax does not saturate and its gradient does not underflow.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

use super::objective::{losses_and_grads, Evaluated, Objective};
use super::problem::SATURATED_CE;
use crate::encoder::Tokens;
use crate::heads::layers::LinearProbe;
use crate::heads::sliding::Tiling;

pub struct CrossEntropy<'a> {
    pub probe: &'a LinearProbe,
    /// True labels of the whole batch.
    pub labels: Vec<u32>,
    /// The study's logit scaling.
    pub scale_logits: bool,
}

/// Per-sample cross-entropy `[n]` of logits `[n, K]` against `labels`.
pub fn per_sample_ce(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (n, k) = logits.dims2()?;
    if labels.len() != n {
        bail!("{} labels for {n} samples", labels.len());
    }
    let mut onehot = vec![0f32; n * k];
    for (i, &l) in labels.iter().enumerate() {
        if l as usize >= k {
            bail!("label {l} is out of range for {k} classes");
        }
        onehot[i * k + l as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (n, k), logits.device())?.to_dtype(logits.dtype())?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok((shifted.broadcast_sub(&log_z)? * onehot)?.sum(D::Minus1)?.neg()?)
}

impl Objective for CrossEntropy<'_> {
    fn name(&self) -> &'static str {
        "pgd"
    }

    fn outputs(&self) -> crate::encoder::Outputs {
        self.probe.pooling.outputs()
    }

    fn evaluate(&self, tokens: &Tokens, windows: Option<&Tiling>, active: &[usize], _step: usize, _steps: usize) -> Result<Evaluated> {
        if windows.is_some() {
            bail!("a classification attack sees the whole image at once: sliding windows are for the dense heads");
        }
        let labels: Vec<u32> = active.iter().map(|&i| self.labels[i]).collect();
        let mut predicted = Vec::new();
        let (losses, d_cls, d_patch) = losses_and_grads(tokens, |cls, patch| {
            let logits = self.probe.forward(&self.probe.pooling.features(cls, patch)?)?;
            predicted = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            if self.scale_logits {
                let div = logits.max_keepdim(D::Minus1)?.maximum(1.0)?.detach();
                return per_sample_ce(&logits.broadcast_div(&div)?, &labels);
            }
            per_sample_ce(&logits, &labels)
        })?;
        let success = predicted.iter().zip(&labels).map(|(p, l)| p != l).collect();
        let saturated = losses.iter().map(|&l| l < SATURATED_CE).collect();
        Ok(Evaluated { losses, d_cls, d_patch, success: Some(success), score: None, saturated: Some(saturated), d_prenorm: None })
    }
}
