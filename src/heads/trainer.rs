//! Training a head of any task on features from a [`BatchSource`] (the cache, or recomputed per
//! batch): the head's forward at the targets' size, its task loss, BatchNorm running statistics
//! (momentum 0.1, as torch), and the trivial baseline of the training targets.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use super::head::{Baseline, Head, HeadMeta, Task};
use super::layers::Pooling;
use super::losses::{cross_entropy, depth_loss, valid_mask};
use super::train::{fit, TrainConfig};
use super::upsample::bilinear;
use crate::data::IGNORE;
use crate::features::{Batch, BatchSource, Targets};
use crate::metrics::DepthRange;

/// BatchNorm running-statistics momentum (torch's default).
pub const BN_MOMENTUM: f64 = 0.1;

/// The classification features of a batch for `pooling`.
pub fn pooled(b: &Batch, pooling: Pooling) -> Result<Tensor> {
    Ok(match pooling {
        Pooling::Cls => b.cls.clone(),
        Pooling::ClsMeanPatch => {
            let mean = match (&b.patch_mean, &b.patch) {
                (Some(m), _) => m.clone(),
                (None, Some(p)) => p.mean(1)?,
                (None, None) => bail!("CLS ⊕ mean-patch pooling needs patch tokens (not available for raw pixels)"),
            };
            Tensor::cat(&[&b.cls, &mean], 1)?
        }
    })
}

/// The head's output for a batch: class logits `[B, K]`; segmentation logits `[B, K, H, W]`
/// and depth `[B, H, W]` at `size` (the targets' size). With `train`, BatchNorm uses the batch
/// statistics and returns them.
pub fn forward(head: &Head, b: &Batch, size: (usize, usize), train: bool) -> Result<(Tensor, Option<(Tensor, Tensor)>)> {
    let tokens = || b.patch.as_ref().ok_or_else(|| anyhow::anyhow!("this head needs patch tokens, and the features hold none"));
    Ok(match head {
        Head::Linear(p) => (p.forward(&pooled(b, p.pooling)?)?, None),
        Head::Seg(h) => {
            let (logits, stats) = h.forward(tokens()?, b.grid, train)?;
            (bilinear(&logits, size.0, size.1)?, stats)
        }
        Head::Depth(h) => {
            let (depth, stats) = h.forward(&b.cls, tokens()?, b.grid, train)?;
            (bilinear(&depth, size.0, size.1)?.squeeze(1)?, stats)
        }
    })
}

/// The `(height, width)` of a batch's dense targets (`(0, 0)` for class labels).
pub fn target_size(t: &Targets) -> (usize, usize) {
    match t {
        Targets::Segmentation { height, width, .. } | Targets::Depth { height, width, .. } => (*height, *width),
        _ => (0, 0),
    }
}

/// The task loss of a head output against the batch's targets.
pub fn loss(task: Task, out: &Tensor, targets: &Targets, range: Option<DepthRange>) -> Result<Tensor> {
    let dev = out.device();
    match (task, targets) {
        (Task::Cls, Targets::Class(l)) => cross_entropy(out, &Tensor::new(l.as_slice(), dev)?, IGNORE),
        (_, Targets::Segmentation { height: 0, .. } | Targets::Segmentation { width: 0, .. })
        | (_, Targets::Depth { height: 0, .. } | Targets::Depth { width: 0, .. }) => bail!("targets of an empty size"),
        (Task::Seg, Targets::Segmentation { labels, height, width }) => {
            let n = labels.len() / (height * width);
            cross_entropy(out, &Tensor::from_vec(labels.clone(), (n, *height, *width), dev)?, IGNORE)
        }
        (Task::Depth, Targets::Depth { metres, height, width }) => {
            let n = metres.len() / (height * width);
            let gt = Tensor::from_vec(metres.clone(), (n, *height, *width), dev)?.to_dtype(out.dtype())?;
            let range = range.ok_or_else(|| anyhow::anyhow!("depth loss without a depth range"))?;
            depth_loss(out, &gt, &valid_mask(&gt, range)?)
        }
        (task, t) => bail!("a {task} head cannot learn from {}", t.kind()),
    }
}

/// What the training targets hold, accumulated batch by batch: label counts (ignore index
/// skipped) or the sum of valid depths. Gives the number of classes when the dataset does not say,
/// and the trivial predictor every evaluation is compared with.
#[derive(Debug, Default)]
pub struct TargetStats {
    counts: Vec<u64>,
    depth_sum: f64,
    depth_pixels: u64,
}

impl TargetStats {
    pub fn update(&mut self, task: Task, targets: &Targets, range: Option<DepthRange>) -> Result<()> {
        let mut count = |labels: &[u32]| {
            for &l in labels.iter().filter(|&&l| l != IGNORE) {
                // A label this large is damage (the count vector would take gigabytes).
                if l as usize >= crate::features::MAX_CLASSES {
                    return Err(anyhow::anyhow!("label {l} is beyond any class count ({})", crate::features::MAX_CLASSES));
                }
                if l as usize >= self.counts.len() {
                    self.counts.resize(l as usize + 1, 0);
                }
                self.counts[l as usize] += 1;
            }
            Ok(())
        };
        match (task, targets) {
            (Task::Cls, Targets::Class(l)) => count(l)?,
            (Task::Seg, Targets::Segmentation { labels, .. }) => count(labels)?,
            (Task::Depth, Targets::Depth { metres, .. }) => {
                let range = range.ok_or_else(|| anyhow::anyhow!("no depth range"))?;
                for &d in metres.iter().filter(|&&d| range.is_valid(d)) {
                    self.depth_sum += d as f64;
                    self.depth_pixels += 1;
                }
            }
            (task, t) => bail!("a {task} head cannot learn from {}", t.kind()),
        }
        Ok(())
    }

    /// The largest label seen + 1.
    pub fn classes_seen(&self) -> usize {
        self.counts.len()
    }

    /// The trivial predictor for `task` with `classes` classes; an error for a label beyond them.
    pub fn baseline(&self, task: Task, classes: usize, range: Option<DepthRange>) -> Result<Baseline> {
        if task == Task::Depth {
            if self.depth_pixels == 0 {
                let r = range.ok_or_else(|| anyhow::anyhow!("no depth range"))?;
                bail!("no valid depth pixel in the training targets (valid: {} < depth < {} m)", r.min, r.max);
            }
            return Ok(Baseline::MeanDepth(self.depth_sum / self.depth_pixels as f64));
        }
        if self.counts.len() > classes {
            bail!("label {} is out of range for {classes} classes", self.counts.len() - 1);
        }
        let count = |c: usize| self.counts.get(c).copied().unwrap_or(0);
        let best = (0..classes).max_by_key(|&c| (count(c), std::cmp::Reverse(c))).unwrap_or(0);
        Ok(Baseline::MajorityClass(best as u32))
    }
}

/// Trains a fresh head described by `meta` on every sample of `source`. Returns the head and
/// the loss of every step.
pub fn train(meta: &HeadMeta, source: &mut dyn BatchSource, cfg: &TrainConfig, dev: &Device) -> Result<(Head, Vec<f64>)> {
    let (mut head, vars) = Head::init(meta, cfg.seed, dev)?;
    let range = meta.range();
    if meta.task != Task::Cls && cfg.batch_size < 2 && source.len() > 1 {
        bail!("BatchNorm heads need a batch size of at least 2");
    }
    let steps = source.len().div_ceil(cfg.batch_size.max(1)) * cfg.epochs;
    let what = if source.augmented() { " (augmented: features recomputed every epoch)" } else { "" };
    let bar = crate::progress::bar(steps as u64, &format!("training the {} head{what}", meta.task));
    let mut current = None;
    let losses = fit(vars, source.len(), cfg, |epoch, indices| {
        if current != Some(epoch) {
            source.set_epoch(epoch);
            current = Some(epoch);
        }
        bar.inc(1);
        let b = source.batch(indices)?.to_device(dev)?;
        let (out, stats) = forward(&head, &b, target_size(&b.targets), true)?;
        if let (Some((mean, var)), Some(bn)) = (stats, head.batch_norm_mut()) {
            bn.running_mean = ((&bn.running_mean * (1.0 - BN_MOMENTUM))? + (mean * BN_MOMENTUM)?)?;
            bn.running_var = ((&bn.running_var * (1.0 - BN_MOMENTUM))? + (var * BN_MOMENTUM)?)?;
        }
        loss(meta.task, &out, &b.targets, range)
    })?;
    bar.finish_and_clear();
    Ok((head, losses))
}

/// Checks a loaded head against the features it is about to read.
pub fn check_features(meta: &HeadMeta, d: usize, file: &str) -> Result<()> {
    if d != meta.feature_dim {
        bail!(
            "{file}: the head reads {}-wide features but the {} gives {d}: it was trained on another encoder ({})",
            meta.feature_dim,
            if meta.source.is_string() { "pixel input" } else { "encoder" },
            meta.encoder_arch.as_deref().unwrap_or("see its .json")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Baselines by hand: the majority label (ignored pixels skipped, ties to the lower class),
    /// a label beyond the classes refused, the mean over valid depths only.
    #[test]
    fn target_stats_by_hand() {
        let mut s = TargetStats::default();
        let seg = |labels: Vec<u32>| Targets::Segmentation { height: 1, width: labels.len(), labels };
        s.update(Task::Seg, &seg(vec![0, 2, 2, 255, 255, 255]), None).unwrap();
        s.update(Task::Seg, &seg(vec![0, 1, 1, 255, 255, 255]), None).unwrap();
        assert_eq!(s.classes_seen(), 3);
        // counts: 0 → 2, 1 → 2, 2 → 2: a three-way tie goes to class 0.
        assert_eq!(s.baseline(Task::Seg, 4, None).unwrap(), Baseline::MajorityClass(0));
        s.update(Task::Seg, &seg(vec![2]), None).unwrap();
        assert_eq!(s.baseline(Task::Seg, 4, None).unwrap(), Baseline::MajorityClass(2));
        let err = s.baseline(Task::Seg, 2, None).unwrap_err().to_string();
        assert!(err.contains("label 2 is out of range for 2 classes"), "{err}");
        assert!(s.update(Task::Cls, &seg(vec![1]), None).is_err(), "a segmentation map is not a class label");

        let range = Some(DepthRange { min: 0.001, max: 10.0 });
        let mut d = TargetStats::default();
        d.update(Task::Depth, &Targets::Depth { metres: vec![0.0, 2.0, 4.0, 12.0, f32::NAN, 3.0], height: 2, width: 3 }, range).unwrap();
        assert_eq!(d.baseline(Task::Depth, 256, range).unwrap(), Baseline::MeanDepth(3.0));
        let empty = TargetStats::default();
        assert!(empty.baseline(Task::Depth, 256, range).unwrap_err().to_string().contains("no valid depth"));
    }
}
