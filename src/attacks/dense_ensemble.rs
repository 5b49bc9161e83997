//! Ensembles for the dense heads: several APGD runs on one head, each maximising its own loss
//! from the clean images, and per image the worst case by the task's own measure — the SEA way
//! of evaluating segmentation (`sea`), and its counterpart for depth (`depth-ensemble`):
//!
//! - `sea`: APGD on SEA's four losses (`super::seg_losses`) with SEA's schedule of shrinking radii
//!   (2ε, 1.5ε, ε; 300 iterations by default), per image the point with the lowest pixel accuracy
//!   (SEA's choice for its accuracy; for its mIoU SEA re-picks greedily over the whole dataset,
//!   which we do not: the mIoU here is that of the accuracy's worst case);
//! - `depth-ensemble`: APGD on DepthPGD's loss, on the absolute relative error and on the
//!   CosPGD-style scaled log error (`super::depthpgd`), per image the point with the largest
//!   RMSE.
//!
//! Every component keeps its own best point per image (APGD's bookkeeping); the ensemble then
//! scores each component's points once and keeps the worst per image, so it is never weaker, image
//! by image, than any of its parts.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::depthpgd::{DepthLoss, DepthPgd};
use super::engine::{attack, attack_from};
use super::objective::Objective;
use super::problem::{Outcome, Sanity};
use super::seg_losses::{pixel_errors, SegLoss, SegObjective};
use super::spec::{AttackConfig, AttackKind, Method};
use super::threat::ThreatModel;
use crate::encoder::Encoder;
use crate::features::{Batch, Targets};
use crate::heads::head::{Head, TrainedHead};
use crate::heads::sliding::{dense_forward, tokens_of, Tiling};
use crate::metrics::depth_errors;

/// The objectives of ensemble `kind` against `trained` and its `targets`, named.
fn components<'a>(kind: AttackKind, trained: &'a TrainedHead, targets: &Targets) -> Result<Vec<Box<dyn Objective + 'a>>> {
    let head = &trained.head;
    Ok(match (kind, head, targets) {
        (AttackKind::Sea, Head::Seg(_), Targets::Segmentation { labels, height, width }) => SegLoss::SEA
            .iter()
            .map(|&loss| {
                Box::new(SegObjective { head, labels: labels.clone(), height: *height, width: *width, loss, steer_by_ce: true })
                    as Box<dyn Objective>
            })
            .collect(),
        (AttackKind::DepthEnsemble, Head::Depth(_), Targets::Depth { metres, height, width }) => {
            [DepthLoss::Sig, DepthLoss::AbsRel, DepthLoss::Scaled]
                .iter()
                .map(|&loss| Ok(Box::new(DepthPgd::of(trained, metres, (*height, *width), loss)?) as Box<dyn Objective>))
                .collect::<Result<_>>()?
        }
        (k, _, t) => bail!("{} does not fit a {} head ({} targets)", k.display_name(), trained.meta.task, t.kind()),
    })
}

/// Per image, how badly the head does on `images` (higher: worse): 1 − pixel accuracy for
/// segmentation, RMSE for depth (0 where an image has no labelled pixel).
pub(super) fn badness(
    enc: &Encoder,
    trained: &TrainedHead,
    targets: &Targets,
    images: &Tensor,
    windows: Option<&Tiling>,
) -> Result<Vec<f64>> {
    let tokens = tokens_of(enc, images, windows)?;
    let batch = Batch::read(&tokens, trained.meta.reads())?.to_device(&Device::Cpu)?;
    match targets {
        Targets::Segmentation { labels, height, width } => {
            pixel_errors(&dense_forward(&trained.head, &batch, (*height, *width), windows)?, labels)
        }
        Targets::Depth { metres, height, width } => {
            let range = trained.meta.range().context("a depth head without a depth range")?;
            let out = dense_forward(&trained.head, &batch, (*height, *width), windows)?;
            let pred = out.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
            let px = height * width;
            (0..images.dim(0)?)
                .map(|i| Ok(depth_errors(&pred[i * px..(i + 1) * px], &metres[i * px..(i + 1) * px], range)?.map_or(0.0, |e| e.rmse)))
                .collect()
        }
        t => bail!("internal error: a dense ensemble on {} targets", t.kind()),
    }
}

/// SEA's APGD schedule (`apgd_largereps`): 30% of the iterations at radius 2ε from a random start,
/// 30% at 1.5ε, 40% at ε, each stage starting at the previous one's best point projected into its
/// ball; the last stage's points are the outcome (the earlier stages' sanity is kept in `sanity`).
fn large_radii(enc: &Encoder, objective: &dyn Objective, images: &Tensor, cfg: &AttackConfig, sanity: &mut Sanity) -> Result<Outcome> {
    let first = (0.3 * cfg.steps as f64).round() as usize;
    let stages = [(2.0, first), (1.5, first), (1.0, cfg.steps.saturating_sub(2 * first))];
    let mut current: Option<Outcome> = None;
    for (k, (scale, steps)) in stages.into_iter().enumerate() {
        // Too few iterations for three radii: the larger ones are left out, never ε itself.
        if steps == 0 && k < 2 {
            continue;
        }
        let stage = AttackConfig {
            threat: ThreatModel { eps: cfg.threat.eps * scale, ..cfg.threat },
            steps,
            random_start: current.is_none() && cfg.random_start,
            ..*cfg
        };
        let out = match &current {
            None => attack(enc, objective, images, &stage)?,
            Some(previous) => {
                let mut out = attack_from(enc, objective, images, &previous.adversarial, &stage)?;
                // A later radius starts where every pixel may already be fooled: a masked loss's
                // gradient is rightly zero there, no sign of masking.
                out.sanity.zero_start_gradients = 0;
                out
            }
        };
        if let Some(previous) = current.take() {
            sanity.merge(&previous.sanity);
        }
        current = Some(out);
    }
    Ok(current.expect("three stages"))
}

/// Runs dense ensemble `kind` against `trained` on `images` with `targets`, through `enc`, each
/// component with APGD for `cfg.steps` iterations (its own seed stream) from the clean images.
/// The outcome's loss is each image's badness at the returned point.
pub fn run(
    kind: AttackKind,
    enc: &Encoder,
    trained: &TrainedHead,
    targets: &Targets,
    images: &Tensor,
    cfg: &AttackConfig,
) -> Result<Outcome> {
    if cfg.trace {
        bail!("{} runs several attacks and keeps the worst per image: it records no per-step curve", kind.display_name());
    }
    let parts = components(kind, trained, targets)?;
    let (n, _, h, w) = images.dims4()?;
    let windows = cfg.window.map(|win| Tiling::new(h, w, win, enc.config().patch_size)).transpose()?;
    let mut worst: Vec<f64> = vec![f64::NEG_INFINITY; n];
    let mut chosen: Vec<Tensor> = (0..n).map(|i| images.get(i)).collect::<candle_core::Result<_>>()?;
    let mut sanity = Sanity::default();
    for (c, objective) in parts.iter().enumerate() {
        let run = AttackConfig {
            method: Method::Apgd,
            early_stop: false,
            last_iterate: false,
            seed: crate::rng::stream(cfg.seed, c as u64),
            ..*cfg
        };
        let out = if kind == AttackKind::Sea {
            large_radii(enc, objective.as_ref(), images, &run, &mut sanity)?
        } else {
            attack(enc, objective.as_ref(), images, &run)?
        };
        sanity.merge(&out.sanity);
        let bad = badness(enc, trained, targets, &out.adversarial, windows.as_ref())?;
        for i in 0..n {
            if bad[i] > worst[i] {
                worst[i] = bad[i];
                chosen[i] = out.adversarial.get(i)?;
            }
        }
    }
    Ok(Outcome { adversarial: Tensor::stack(&chosen, 0)?, loss: worst, success: vec![false; n], sanity })
}
