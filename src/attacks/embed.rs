//! EmbedAttack: push the encoder's output away from the clean image's, with no task in sight —
//! maximise the distance between adversarial and clean tokens (CLS, patch tokens after or before
//! the final norm, or CLS and patch tokens): the mean squared difference, or one minus the cosine
//! similarity averaged over tokens. The study attacks the embedding each task consumes
//! (`evaluate.py`, `depth_head.py` of its code): CLS for classification, final-norm patch tokens for
//! segmentation, the last block's patch tokens before the final norm for depth — `task` here.

use anyhow::Result;
use candle_core::{Tensor, D};

use super::objective::{losses_and_grads_of, rows, window_rows, Evaluated, Objective};
use crate::encoder::{Outputs, Reads, Tokens};
use crate::heads::sliding::Tiling;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedTarget {
    /// The embedding the attacked task's head consumes (resolved by [`EmbedTarget::for_task`]).
    Task,
    Cls,
    Patch,
    /// Patch tokens before the encoder's final norm.
    PatchPrenorm,
    Both,
}
crate::choices!(EmbedTarget { Task = "task", Cls = "cls", Patch = "patch", PatchPrenorm = "patch-prenorm", Both = "both" });

impl EmbedTarget {
    /// `task` resolved for a head of `task`: CLS for classification, final-norm patch tokens for
    /// segmentation, pre-norm patch tokens for depth (the study's choice); others unchanged.
    pub fn for_task(self, task: crate::heads::head::Task) -> EmbedTarget {
        use crate::heads::head::Task as T;
        match (self, task) {
            (EmbedTarget::Task, T::Cls) => EmbedTarget::Cls,
            (EmbedTarget::Task, T::Seg) => EmbedTarget::Patch,
            (EmbedTarget::Task, T::Depth) => EmbedTarget::PatchPrenorm,
            (t, _) => t,
        }
    }

    /// The encoder's tokens this target compares: CLS alone, or every token.
    pub fn outputs(self) -> Outputs {
        if self == EmbedTarget::Cls {
            Outputs::ClsOnly
        } else {
            Outputs::All
        }
    }
}

/// Where one EmbedAttack perturbation is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedScope {
    /// The study's: one EmbedAttack per task, on that task's embedding, scored on that task.
    PerTask,
    /// Ours: one perturbation per image with a stated target, scored on every task of the image.
    Shared,
}
crate::choices!(EmbedScope { PerTask = "per-task", Shared = "shared" });

impl EmbedScope {
    pub fn shared() -> Self {
        Self::Shared
    }

    pub fn is_shared(&self) -> bool {
        *self == Self::Shared
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distance {
    /// Mean over features of the squared difference (the squared L2 distance / D).
    Mse,
    /// 1 − cos(adversarial, clean), per token, averaged over tokens.
    Cosine,
}
crate::choices!(Distance { Mse = "mse", Cosine = "cosine" });

pub struct EmbedAttack {
    /// Clean tokens of the whole batch: `[B, D]`, `[B, P, D]` (the patch tokens the target
    /// names: after or before the final norm).
    pub clean_cls: Tensor,
    pub clean_patch: Tensor,
    pub target: EmbedTarget,
    pub distance: Distance,
}

impl EmbedAttack {
    /// An error for `task` (resolve it with [`EmbedTarget::for_task`] first) and for pre-norm
    /// tokens the clean forward did not keep.
    pub fn new(clean: &Tokens, target: EmbedTarget, distance: Distance) -> Result<Self> {
        if target == EmbedTarget::Task {
            anyhow::bail!("EmbedAttack target 'task' must be resolved against the attacked task first");
        }
        let (_, patch) = clean.read(Self::reads(target))?;
        Ok(Self { clean_cls: clean.cls.detach(), clean_patch: patch.detach(), target, distance })
    }

    fn reads(target: EmbedTarget) -> Reads {
        if target == EmbedTarget::PatchPrenorm {
            Reads::PreNorm
        } else {
            Reads::Final
        }
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

    fn outputs(&self) -> Outputs {
        self.target.outputs()
    }

    fn evaluate(&self, tokens: &Tokens, windows: Option<&Tiling>, active: &[usize], _step: usize, _steps: usize) -> Result<Evaluated> {
        let ids = window_rows(active, windows);
        if let Some(&last) = ids.last().filter(|&&r| r >= self.clean_cls.dim(0).unwrap_or(0)) {
            anyhow::bail!("EmbedAttack's clean tokens have {} rows, the attacked windows need row {last}", self.clean_cls.dim(0)?);
        }
        let (c0, p0) = (rows(&self.clean_cls, &ids)?, rows(&self.clean_patch, &ids)?);
        let g = losses_and_grads_of(tokens, Self::reads(self.target), |cls, patch| {
            let per_row = match self.target {
                EmbedTarget::Cls => distance(cls, &c0, self.distance)?,
                EmbedTarget::Patch | EmbedTarget::PatchPrenorm => distance(patch, &p0, self.distance)?,
                EmbedTarget::Both => (distance(cls, &c0, self.distance)? + distance(patch, &p0, self.distance)?)?,
                EmbedTarget::Task => anyhow::bail!("EmbedAttack target 'task' was not resolved"),
            };
            // Through windows, an image's distance is the mean over its windows.
            let m = windows.map_or(1, Tiling::windows);
            Ok(if m == 1 { per_row } else { per_row.reshape((active.len(), m))?.mean(1)? })
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
