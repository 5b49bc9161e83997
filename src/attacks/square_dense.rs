//! Square on the dense heads: the gradient-free check for segmentation and depth. The search is
//! Square's own (`super::square::search`, AutoAttack's schedule and proposals); only what it
//! minimises is ours, per image:
//!
//! - segmentation: the mean over labelled pixels of max(z_y − max_{i≠y} z_i, 0) — Square's
//!   margin, per pixel, counting only pixels still right (0: every pixel fooled, the image is
//!   done). A margin, not a cross-entropy: a saturated softmax hides nothing from it.
//! - depth: minus the image's RMSE against its measured depth (the figure scored); every query is
//!   spent.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::dense_ensemble::badness;
use super::problem::Outcome;
use super::spec::AttackConfig;
use crate::data::IGNORE;
use crate::encoder::Encoder;
use crate::features::{Batch, Targets};
use crate::heads::head::TrainedHead;
use crate::heads::sliding::{dense_forward, tokens_of, Tiling};

/// Per image of `logits` (`[n, K, H, W]`): the mean over labelled pixels of the positive part of
/// z_y − max_{i≠y} z_i (0 for an image without labelled pixels).
pub fn positive_margins(logits: &Tensor, labels: &[u32]) -> Result<Vec<f64>> {
    let (n, k, h, w) = logits.dims4()?;
    let z = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if labels.len() != n * h * w {
        bail!("{} labels for {n} images of {h}×{w}", labels.len());
    }
    let px = h * w;
    (0..n)
        .map(|i| {
            let (mut sum, mut count) = (0.0f64, 0usize);
            for p in 0..px {
                let y = labels[i * px + p];
                if y == IGNORE {
                    continue;
                }
                if y as usize >= k {
                    bail!("label {y} is out of range for {k} classes");
                }
                let at = |c: usize| z[((i * k + c) * h * w) + p] as f64;
                let other = (0..k).filter(|&c| c != y as usize).map(at).fold(f64::NEG_INFINITY, f64::max);
                sum += (at(y as usize) - other).max(0.0);
                count += 1;
            }
            Ok(if count == 0 { 0.0 } else { sum / count as f64 })
        })
        .collect()
}

/// Square against the dense head `trained` with its `targets` of `images`, under `cfg` (threat
/// model, queries, seed, windows). The outcome's loss is what the search maximised (minus its
/// score: the negative mean positive margin, or the RMSE); success is an image with every
/// labelled pixel fooled.
pub fn run(enc: &Encoder, trained: &TrainedHead, targets: &Targets, images: &Tensor, cfg: &AttackConfig) -> Result<Outcome> {
    if cfg.trace {
        bail!("Square records no per-step curve");
    }
    let (_, _, h, w) = images.dims4()?;
    let windows = cfg.window.map(|win| Tiling::new(h, w, win, enc.config().patch_size)).transpose()?;
    let windows = windows.as_ref();
    let seg = matches!(targets, Targets::Segmentation { .. });
    let mut score = |candidates: &Tensor, ids: &[usize]| -> Result<Vec<f64>> {
        let rows = Targets::concat(ids.iter().map(|&i| targets.row(i)).collect())?;
        match &rows {
            Targets::Segmentation { labels, height, width } => {
                let tokens = tokens_of(enc, candidates, windows)?;
                let batch = Batch::read(&tokens, trained.meta.reads())?.to_device(&Device::Cpu)?;
                positive_margins(&dense_forward(&trained.head, &batch, (*height, *width), windows)?, labels)
            }
            // The image's RMSE, as the dense ensembles rank their points.
            Targets::Depth { .. } => Ok(badness(enc, trained, &rows, candidates, windows)?.into_iter().map(|rmse| -rmse).collect()),
            t => bail!("Square on a dense head needs segmentation or depth targets, not {}", t.kind()),
        }
    };
    let found = super::square::search(images, &cfg.threat, cfg.queries, cfg.seed, seg.then_some(0.0), &mut score)?;
    Ok(Outcome {
        adversarial: found.adversarial,
        success: found.score.iter().map(|&s| seg && s <= 0.0).collect(),
        loss: found.score.iter().map(|s| -s).collect(),
        sanity: found.sanity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One image of 1×3 pixels, three classes. Pixel 0: logits (2, 1, 0), label 0 → margin 1;
    /// pixel 1: (0, 3, 1), label 0 → −3, fooled, counts 0; pixel 2 ignored. Mean over the two
    /// labelled pixels: ½. A label beyond the classes is an error.
    #[test]
    fn positive_margins_by_hand() {
        let z = Tensor::from_vec(vec![2f32, 0.0, 9.0, 1.0, 3.0, 9.0, 0.0, 1.0, 9.0], (1, 3, 1, 3), &Device::Cpu).unwrap();
        assert_eq!(positive_margins(&z, &[0, 0, IGNORE]).unwrap(), vec![0.5]);
        assert_eq!(positive_margins(&z, &[IGNORE; 3]).unwrap(), vec![0.0]);
        assert!(positive_margins(&z, &[3, 0, 0]).is_err());
    }
}
