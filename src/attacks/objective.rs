//! What an attack maximises: an objective scores the encoder's tokens of the samples still being
//! attacked and returns, per sample, the loss and whether the attack has reached its goal, plus the
//! gradient of the summed losses with respect to the tokens (the encoder's reverse pass turns it
//! into a pixel gradient). Each objective lives in its own file.

use anyhow::Result;
use candle_core::{Tensor, Var};

use crate::encoder::{Outputs, PreNorm, Reads, Tokens};
use crate::heads::sliding::Tiling;

/// An objective's verdict on the current adversarial tokens of the active samples.
pub struct Evaluated {
    /// Per active sample, the value being maximised.
    pub losses: Vec<f64>,
    /// Gradient of `Σ losses` with respect to CLS `[n, D]` and the patch tokens `[n, P, D]`.
    pub d_cls: Tensor,
    pub d_patch: Tensor,
    /// And with respect to the tokens before the final norm, where the objective reads them.
    pub d_prenorm: Option<PreNorm>,
    /// Per active sample: the goal is reached (e.g. misclassified); `None` where the objective
    /// has no such notion (embedding distance).
    pub success: Option<Vec<bool>>,
    /// Per active sample: what the best point is chosen by, higher being better for the attack,
    /// where the loss cannot be compared across steps (SegPGD's weights change with the step:
    /// the task metric instead); `None`: the loss.
    pub score: Option<Vec<f64>>,
    /// Per active sample: the softmax was saturated (cross-entropy objectives; see
    /// [`super::problem::SATURATED_CE`]); `None` for other objectives.
    pub saturated: Option<Vec<bool>>,
}

pub trait Objective {
    fn name(&self) -> &'static str;

    /// Scores `tokens` of the samples `active` (indices into the batch the objective was built
    /// for); `step` of `steps` lets schedules such as SegPGD's weight depend on progress. With
    /// `windows`, `tokens` are those of each active image's sliding windows (`m` rows per image,
    /// image by image) and the losses are still one per image.
    fn evaluate(&self, tokens: &Tokens, windows: Option<&Tiling>, active: &[usize], step: usize, steps: usize) -> Result<Evaluated>;

    /// The tokens `evaluate` reads: all of them, unless an objective states it reads only CLS
    /// (the encoder then skips the rest of its last block, and hands back NaN for the others).
    fn outputs(&self) -> Outputs {
        Outputs::All
    }
}

/// The token rows of the images `active`: the images themselves, or each one's `m` windows.
pub fn window_rows(active: &[usize], windows: Option<&Tiling>) -> Vec<usize> {
    let m = windows.map_or(1, Tiling::windows);
    active.iter().flat_map(|&i| (0..m).map(move |j| i * m + j)).collect()
}

/// The rows `active` of a per-sample tensor.
pub fn rows(t: &Tensor, active: &[usize]) -> Result<Tensor> {
    let ids = Tensor::from_vec(active.iter().map(|&i| i as u32).collect::<Vec<_>>(), active.len(), t.device())?;
    Ok(t.contiguous()?.index_select(&ids, 0)?)
}

/// The per-sample losses and their gradients with respect to the tokens an objective read.
pub struct Gradients {
    pub losses: Vec<f64>,
    pub d_cls: Tensor,
    pub d_patch: Tensor,
    pub d_prenorm: Option<PreNorm>,
}

/// Per-sample losses `[n]` of `f(cls, patch)` on the tokens `reads` names, and their gradients
/// with respect to them, by candle autograd on detached copies (no encoder or head weight is
/// tracked); the gradients of the outputs not read are zero / `None`.
pub fn losses_and_grads_of(tokens: &Tokens, reads: Reads, f: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Gradients> {
    let (c, p) = tokens.read(reads)?;
    let cls = Var::from_tensor(&c.detach())?;
    let patch = Var::from_tensor(&p.detach())?;
    let per_sample = f(cls.as_tensor(), patch.as_tensor())?;
    let grads = per_sample.sum_all()?.backward()?;
    let zeros = |v: &Var| v.as_tensor().zeros_like();
    let d_cls = grads.get(cls.as_tensor()).cloned().map_or_else(|| zeros(&cls), Ok)?;
    let d_patch = grads.get(patch.as_tensor()).cloned().map_or_else(|| zeros(&patch), Ok)?;
    let losses = per_sample.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    Ok(match reads {
        Reads::Final => Gradients { losses, d_cls, d_patch, d_prenorm: None },
        Reads::PreNorm => Gradients {
            losses,
            d_cls: tokens.cls.zeros_like()?,
            d_patch: tokens.patch.zeros_like()?,
            d_prenorm: Some(PreNorm { cls: d_cls, patch: d_patch }),
        },
    })
}

/// [`losses_and_grads_of`] on the final-norm tokens: (losses, d_cls, d_patch).
pub fn losses_and_grads(tokens: &Tokens, f: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>) -> Result<(Vec<f64>, Tensor, Tensor)> {
    let g = losses_and_grads_of(tokens, Reads::Final, f)?;
    Ok((g.losses, g.d_cls, g.d_patch))
}
