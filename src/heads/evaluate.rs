//! Evaluating a trained head on a split: its task metrics over every sample, and the same metrics
//! for the trivial baseline stored with the head (majority class, mean training depth), so each
//! figure comes with the number it must beat.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::head::{Baseline, HeadMeta, Task, TrainedHead};
use super::sliding::{predict, Window};
use super::trainer::{check_features, forward, target_size};
use super::upsample::bilinear;
use crate::data::transform::{load_images_only, Transform};
use crate::data::{Dataset, Target, IGNORE};
use crate::encoder::Encoder;
use crate::features::{BatchSource, Targets};
use crate::metrics::{Accuracy, ConfusionMatrix, DepthErrors, DepthMetrics, DepthRange};

/// Metrics of one predictor on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum Metrics {
    Cls {
        accuracy: f64,
        correct: u64,
        total: u64,
    },
    Seg {
        miou: f64,
        pixel_accuracy: f64,
        iou_per_class: Vec<Option<f64>>,
    },
    Depth {
        #[serde(flatten)]
        errors: DepthErrors,
        images: u64,
        images_without_valid_pixels: u64,
        /// Errors are per image, then averaged over images.
        averaging: String,
    },
}

impl Metrics {
    /// The scalar figures by name, in name order (counts left out; an undefined figure, NaN,
    /// too).
    pub fn scalars(&self) -> Vec<(&'static str, f64)> {
        let mut out = self.figures();
        out.retain(|(_, v)| !v.is_nan());
        out
    }

    /// Every scalar figure by name, in name order, NaN included.
    pub fn figures(&self) -> Vec<(&'static str, f64)> {
        match self {
            Metrics::Cls { accuracy, .. } => vec![("accuracy", *accuracy)],
            Metrics::Seg { miou, pixel_accuracy, .. } => vec![("miou", *miou), ("pixel_accuracy", *pixel_accuracy)],
            Metrics::Depth { errors: e, .. } => vec![
                ("abs_rel", e.abs_rel),
                ("delta1", e.delta1),
                ("delta2", e.delta2),
                ("delta3", e.delta3),
                ("log10", e.log10),
                ("rmse", e.rmse),
                ("rmse_log", e.rmse_log),
                ("sq_rel", e.sq_rel),
            ],
        }
    }

    /// The scalar figures as a JSON object by name (NaN figures left out), for per-sample and
    /// event outputs.
    pub fn figure_map(&self) -> serde_json::Value {
        serde_json::Value::Object(self.scalars().into_iter().map(|(k, v)| (k.to_string(), serde_json::json!(v))).collect())
    }

    /// One scalar figure by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.scalars().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub samples: usize,
    pub head: Metrics,
    pub baseline: Metrics,
    pub baseline_kind: Baseline,
}

/// Accumulates one predictor's metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Acc {
    Cls(Accuracy),
    Seg(ConfusionMatrix),
    Depth(DepthMetrics, DepthRange),
}

impl Acc {
    fn new(meta: &HeadMeta) -> Result<Self> {
        Ok(match meta.task {
            Task::Cls => Acc::Cls(Accuracy::default()),
            Task::Seg => Acc::Seg(ConfusionMatrix::new(meta.outputs, IGNORE)),
            Task::Depth => {
                let (min, max) = meta.depth_range.ok_or_else(|| anyhow::anyhow!("a depth head without a depth range"))?;
                Acc::Depth(DepthMetrics::default(), DepthRange { min, max })
            }
        })
    }

    /// `pred`: classes per sample or pixel, or depth per pixel (f32 bits via `depth`).
    fn update(&mut self, classes: &[u32], depth: &[f32], targets: &Targets) -> Result<()> {
        match (self, targets) {
            (Acc::Cls(a), Targets::Class(l)) => a.update(classes, l),
            (Acc::Seg(m), Targets::Segmentation { labels, .. }) => m.update(classes, labels),
            (Acc::Depth(m, range), Targets::Depth { metres, height, width }) => {
                let per = height * width;
                for (p, g) in depth.chunks(per).zip(metres.chunks(per)) {
                    m.update(p, g, *range)?;
                }
                Ok(())
            }
            (_, t) => bail!("the head cannot be scored on {}", t.kind()),
        }
    }

    fn merge(&mut self, other: &Acc) -> Result<()> {
        match (self, other) {
            (Acc::Cls(a), Acc::Cls(b)) => a.merge(b),
            (Acc::Seg(a), Acc::Seg(b)) => a.merge(b)?,
            (Acc::Depth(a, ra), Acc::Depth(b, rb)) if ra == rb => a.merge(b),
            _ => bail!("cannot merge the counts of different tasks or depth ranges"),
        }
        Ok(())
    }

    fn finish(self) -> Result<Metrics> {
        Ok(match self {
            Acc::Cls(a) => Metrics::Cls { accuracy: a.value().unwrap_or(f64::NAN), correct: a.correct, total: a.total },
            Acc::Seg(m) => Metrics::Seg {
                miou: m.miou().ok_or_else(|| anyhow::anyhow!("no labelled pixel in the split: mIoU is undefined"))?,
                pixel_accuracy: m.pixel_accuracy().unwrap_or(f64::NAN),
                iou_per_class: m.iou_per_class(),
            },
            Acc::Depth(m, range) => Metrics::Depth {
                errors: m.mean().ok_or_else(|| {
                    anyhow::anyhow!("no image of the split has a valid depth pixel ({} < depth < {} m)", range.min, range.max)
                })?,
                images: m.images,
                images_without_valid_pixels: m.images_without_valid_pixels,
                averaging: "per image, then mean over images".into(),
            },
        })
    }
}

/// Scores `head` (and its baseline) on every sample of `source`, `batch_size` at a time.
pub fn evaluate(head: &TrainedHead, source: &mut dyn BatchSource, batch_size: usize, dev: &Device, file: &str) -> Result<Evaluation> {
    if source.is_empty() {
        bail!("nothing to evaluate: the split is empty");
    }
    let meta = &head.meta;
    let model = head.head.to_device(meta, dev)?;
    let mut scorer = Scorer::new(head, file)?;
    let all: Vec<usize> = (0..source.len()).collect();
    for (i, idx) in all.chunks(batch_size.max(1)).enumerate() {
        let b = source.batch(idx)?;
        if i == 0 {
            check_features(meta, b.cls.dim(1)?, file)?;
        }
        let b = b.to_device(dev)?;
        let (out, _) = forward(&model, &b, target_size(&b.targets), false)?;
        scorer.add(&out, &b.targets, idx.len())?;
    }
    scorer.finish()
}

/// Accumulates the metrics of a head's outputs, and of its baseline's constant prediction, over
/// batches.
pub struct Scorer<'a> {
    head: &'a TrainedHead,
    file: &'a str,
    state: ScoreState,
}

/// A scorer's running counts (head and baseline): stored per batch and merged, so an evaluation
/// split over batches, runs or shards gives the very figures of one pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreState {
    acc: Acc,
    base: Acc,
    samples: usize,
}

impl<'a> Scorer<'a> {
    pub fn new(head: &'a TrainedHead, file: &'a str) -> Result<Self> {
        Ok(Self { head, file, state: ScoreState { acc: Acc::new(&head.meta)?, base: Acc::new(&head.meta)?, samples: 0 } })
    }

    /// The counts so far.
    pub fn state(&self) -> &ScoreState {
        &self.state
    }

    /// Adds counts taken elsewhere (another batch, run or shard) of the same head.
    pub fn merge(&mut self, other: &ScoreState) -> Result<()> {
        self.state.acc.merge(&other.acc).map_err(|e| anyhow::anyhow!("{}: {e}", self.file))?;
        self.state.base.merge(&other.base)?;
        self.state.samples += other.samples;
        Ok(())
    }

    /// One batch of `n` samples: class logits `[n, K]` / `[n, K, H, W]`, or depth `[n, H, W]`,
    /// at the targets' size.
    pub fn add(&mut self, out: &Tensor, targets: &Targets, n: usize) -> Result<()> {
        let file = self.file;
        self.check_finite(out, n)?;
        match self.head.meta.task {
            Task::Cls | Task::Seg => self.add_classes(&out.argmax(1)?.flatten_all()?.to_vec1::<u32>()?, targets, n),
            Task::Depth => {
                let ScoreState { acc, base, samples } = &mut self.state;
                *samples += n;
                let depth = out.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                acc.update(&[], &depth, targets)?;
                match self.head.meta.baseline {
                    Baseline::MeanDepth(m) => base.update(&[], &vec![m as f32; depth.len()], targets),
                    Baseline::Unknown => Ok(()),
                    Baseline::MajorityClass(_) => bail!("{file}: baseline of the wrong kind"),
                }
            }
        }
    }

    /// A NaN output has no argmax worth scoring ("accuracy 0%"): refused, naming the head.
    fn check_finite(&self, out: &Tensor, n: usize) -> Result<()> {
        if !out.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?.is_finite() {
            bail!(
                "{}: the head's outputs for a batch of {n} samples hold NaN or infinite values (non-finite features?); nothing was scored",
                self.file
            );
        }
        Ok(())
    }

    /// One batch of `n` samples' predicted classes (per sample or pixel).
    fn add_classes(&mut self, classes: &[u32], targets: &Targets, n: usize) -> Result<()> {
        let ScoreState { acc, base, samples } = &mut self.state;
        *samples += n;
        acc.update(classes, &[], targets)?;
        match self.head.meta.baseline {
            Baseline::MajorityClass(c) => base.update(&vec![c; classes.len()], &[], targets),
            Baseline::Unknown => Ok(()),
            Baseline::MeanDepth(_) => bail!("{}: baseline of the wrong kind", self.file),
        }
    }

    /// One attacked batch of a classifier as robust accuracy is defined (AutoAttack's and
    /// RobustBench's): a sample counts as correct only if it is classified correctly on the clean
    /// input *and* under the attack — a clean mistake stays a mistake, whatever the attack did.
    /// Dense heads are scored on `adversarial` as it is.
    pub fn add_robust(&mut self, adversarial: &Tensor, clean: &Tensor, targets: &Targets, n: usize) -> Result<()> {
        let Targets::Class(labels) = targets else { return self.add(adversarial, targets, n) };
        if self.head.meta.task != Task::Cls {
            return self.add(adversarial, targets, n);
        }
        let (adv, cln) = (adversarial.argmax(1)?.to_vec1::<u32>()?, clean.argmax(1)?.to_vec1::<u32>()?);
        if adv.len() != labels.len() || cln.len() != labels.len() {
            bail!("{}: {} adversarial and {} clean predictions for {} labels", self.file, adv.len(), cln.len(), labels.len());
        }
        self.check_finite(adversarial, n)?;
        // Where the clean prediction is wrong, it is the prediction scored.
        let robust: Vec<u32> = adv.iter().zip(&cln).zip(labels).map(|((&a, &c), &l)| if c == l { a } else { c }).collect();
        self.add_classes(&robust, targets, n)
    }

    pub fn finish(self) -> Result<Evaluation> {
        let ScoreState { acc, base, samples } = self.state;
        Ok(Evaluation { samples, head: acc.finish()?, baseline: base.finish()?, baseline_kind: self.head.meta.baseline })
    }
}

/// Scores a dense head on whole images with sliding-window inference: each sample's image goes
/// through `transforms` (resizes only; its label is left at its own size), windows over it
/// through encoder and head, and the averaged output is resized bilinearly to the label and
/// scored there, as the reference evaluations do.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_sliding(
    head: &TrainedHead,
    enc: &Encoder,
    ds: &dyn Dataset,
    indices: &[usize],
    transforms: &[Transform],
    window: Window,
    batch: usize,
    file: &str,
) -> Result<Evaluation> {
    let meta = &head.meta;
    if meta.task == Task::Cls {
        bail!("sliding-window inference is for the dense heads (seg, depth)");
    }
    if indices.is_empty() {
        bail!("nothing to evaluate: the split is empty");
    }
    check_features(meta, enc.config().embed_dim, file)?;
    let model = head.head.to_device(meta, enc.vit.device())?;
    let mut scorer = Scorer::new(head, file)?;
    let bar = crate::progress::bar(indices.len() as u64, &format!("sliding-window {} {}", meta.task, ds.describe()));
    for &i in indices {
        let sample = load_images_only(ds, &[i], transforms)?.pop().expect("one sample");
        let (targets, (h, w)) = match sample.target {
            Target::Segmentation { labels, height, width } => (Targets::Segmentation { labels, height, width }, (height, width)),
            Target::Depth { metres, height, width } => (Targets::Depth { metres, height, width }, (height, width)),
            other => bail!("{}: sample {i} has {other:?} targets, not dense ones", ds.describe()),
        };
        let out = predict(enc, &model, meta.reads(), &sample.image, window, batch)?;
        let out = bilinear(&out.unsqueeze(0)?, h, w)?;
        let out = if meta.task == Task::Depth { out.squeeze(1)? } else { out };
        scorer.add(&out, &targets, 1)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    scorer.finish()
}
