//! AutoAttack's difference-of-logits-ratio losses on a linear probe (`autopgd_base.py`,
//! `dlr_loss` and `dlr_loss_targeted`), invariant to shifts and scalings of the logits, so a
//! confident probe cannot hide behind a saturated softmax. With the logits sorted descending
//! (π₁ the top class):
//!
//! - untargeted: −(z_y − max_{i≠y} z_i) / (z_π₁ − z_π₃ + 10⁻¹²)
//! - targeted at t: −(z_y − z_t) / (z_π₁ − ½(z_π₃ + z_π₄) + 10⁻¹²)
//!
//! The sorted logits carry the gradient as torch's `sort` does (through the values at those
//! places). A sample succeeds once it is misclassified, targeted or not (robust accuracy).

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

use super::objective::{losses_and_grads, Evaluated, Objective};
use crate::encoder::Tokens;
use crate::heads::layers::LinearProbe;
use crate::heads::sliding::Tiling;

pub struct Dlr<'a> {
    pub probe: &'a LinearProbe,
    /// True labels of the whole batch.
    pub labels: Vec<u32>,
    /// Targeted (APGD-T): the class each sample of the batch is pushed towards.
    pub targets: Option<Vec<u32>>,
}

/// The classes of a row of logits in descending order; ties keep the lower index first.
pub(super) fn ranked(z: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    order
}

/// `Σ_k z[i, k] · [k = picks[i]]`: the logit of one class per row, differentiable.
pub(super) fn pick(logits: &Tensor, picks: &[usize]) -> Result<Tensor> {
    let (n, k) = logits.dims2()?;
    let mut m = vec![0f32; n * k];
    for (i, &c) in picks.iter().enumerate() {
        m[i * k + c] = 1.0;
    }
    let mask = Tensor::from_vec(m, (n, k), logits.device())?.to_dtype(logits.dtype())?;
    Ok((logits * mask)?.sum(D::Minus1)?)
}

/// Per-sample DLR losses `[n]` of `logits` `[n, K]` against `labels`, targeted at `targets`.
pub fn dlr_losses(logits: &Tensor, labels: &[u32], targets: Option<&[u32]>) -> Result<Tensor> {
    let (n, k) = logits.dims2()?;
    let need = if targets.is_some() { 4 } else { 3 };
    if k < need {
        bail!("the DLR loss needs at least {need} classes (its denominator reads the {need}rd largest logit); this head has {k}");
    }
    if labels.len() != n || targets.is_some_and(|t| t.len() != n) {
        bail!("{} labels for {n} samples", labels.len());
    }
    if let Some(&l) = labels.iter().chain(targets.unwrap_or(&[])).find(|&&l| l as usize >= k) {
        bail!("class {l} is out of range for {k} classes");
    }
    let order: Vec<Vec<usize>> = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?.iter().map(|z| ranked(z)).collect();
    let nth = |j: usize| -> Vec<usize> { order.iter().map(|o| o[j]).collect() };
    let true_logit = pick(logits, &labels.iter().map(|&l| l as usize).collect::<Vec<_>>())?;
    let top = pick(logits, &nth(0))?;
    let third = pick(logits, &nth(2))?;
    let eps = 1e-12;
    match targets {
        None => {
            // The largest other logit: the second when the true class leads, else the first.
            let other: Vec<usize> = order.iter().zip(labels).map(|(o, &l)| if o[0] == l as usize { o[1] } else { o[0] }).collect();
            let numerator = (true_logit - pick(logits, &other)?)?;
            let denominator = ((top - third)? + eps)?;
            Ok(numerator.div(&denominator)?.neg()?)
        }
        Some(t) => {
            let target_logit = pick(logits, &t.iter().map(|&c| c as usize).collect::<Vec<_>>())?;
            let fourth = pick(logits, &nth(3))?;
            let numerator = (true_logit - target_logit)?;
            let denominator = ((top - ((third + fourth)? * 0.5)?)? + eps)?;
            Ok(numerator.div(&denominator)?.neg()?)
        }
    }
}

impl Objective for Dlr<'_> {
    fn name(&self) -> &'static str {
        if self.targets.is_some() {
            "apgd-t"
        } else {
            "apgd-dlr"
        }
    }

    fn outputs(&self) -> crate::encoder::Outputs {
        self.probe.pooling.outputs()
    }

    fn evaluate(&self, tokens: &Tokens, windows: Option<&Tiling>, active: &[usize], _step: usize, _steps: usize) -> Result<Evaluated> {
        if windows.is_some() {
            bail!("a classification attack sees the whole image at once: sliding windows are for the dense heads");
        }
        let labels: Vec<u32> = active.iter().map(|&i| self.labels[i]).collect();
        let targets: Option<Vec<u32>> = self.targets.as_ref().map(|t| active.iter().map(|&i| t[i]).collect());
        let mut predicted = Vec::new();
        let (losses, d_cls, d_patch) = losses_and_grads(tokens, |cls, patch| {
            let logits = self.probe.forward(&self.probe.pooling.features(cls, patch)?)?;
            predicted = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            dlr_losses(&logits, &labels, targets.as_deref())
        })?;
        let success = predicted.iter().zip(&labels).map(|(p, l)| p != l).collect();
        Ok(Evaluated { losses, d_cls, d_patch, success: Some(success), score: None, saturated: None, d_prenorm: None })
    }
}
