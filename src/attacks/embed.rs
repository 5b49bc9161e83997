//! EmbedAttack: push the encoder's output away from the clean image's, with no task in sight —
//! maximise the distance between adversarial and clean tokens (CLS, patch tokens, or both): the
//! mean squared difference, or one minus the cosine similarity averaged over tokens.

use anyhow::Result;
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::objective::{losses_and_grads, rows, Evaluated, Objective};
use crate::encoder::Tokens;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedTarget {
    Cls,
    Patch,
    Both,
}
crate::choices!(EmbedTarget { Cls = "cls", Patch = "patch", Both = "both" });

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Mean over features of the squared difference (the squared L2 distance / D).
    Mse,
    /// 1 − cos(adversarial, clean), per token, averaged over tokens.
    Cosine,
}
crate::choices!(Distance { Mse = "mse", Cosine = "cosine" });

pub struct EmbedAttack {
    /// Clean tokens of the whole batch: `[B, D]`, `[B, P, D]`.
    pub clean_cls: Tensor,
    pub clean_patch: Tensor,
    pub target: EmbedTarget,
    pub distance: Distance,
}

impl EmbedAttack {
    pub fn new(clean: &Tokens, target: EmbedTarget, distance: Distance) -> Self {
        Self { clean_cls: clean.cls.detach(), clean_patch: clean.patch.detach(), target, distance }
    }
}

/// Per-sample distance of `x` to `x0` (`[n, D]` or `[n, P, D]`), averaged over everything but
/// the sample axis.
fn distance(x: &Tensor, x0: &Tensor, d: Distance) -> Result<Tensor> {
    let per = match d {
        Distance::Mse => (x - x0)?.sqr()?.mean(D::Minus1)?,
        Distance::Cosine => {
            let dot = (x * x0)?.sum(D::Minus1)?;
            let norms = (x.sqr()?.sum(D::Minus1)?.sqrt()? * x0.sqr()?.sum(D::Minus1)?.sqrt()?)?;
            (1.0 - (dot / (norms + 1e-12)?)?)?
        }
    };
    Ok(if per.rank() == 2 { per.mean(1)? } else { per })
}

impl Objective for EmbedAttack {
    fn name(&self) -> &'static str {
        "embed"
    }

    fn evaluate(&self, tokens: &Tokens, active: &[usize], _step: usize, _steps: usize) -> Result<Evaluated> {
        let (c0, p0) = (rows(&self.clean_cls, active)?, rows(&self.clean_patch, active)?);
        let (losses, d_cls, d_patch) = losses_and_grads(tokens, |cls, patch| {
            Ok(match self.target {
                EmbedTarget::Cls => distance(cls, &c0, self.distance)?,
                EmbedTarget::Patch => distance(patch, &p0, self.distance)?,
                EmbedTarget::Both => (distance(cls, &c0, self.distance)? + distance(patch, &p0, self.distance)?)?,
            })
        })?;
        Ok(Evaluated { losses, d_cls, d_patch, success: None, score: None, saturated: None })
    }
}
