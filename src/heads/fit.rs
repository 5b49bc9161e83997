//! Fitting a head on the features of a training split: one pass over the targets for the class
//! count and the trivial baseline, the metadata that says what the head was trained on, then the
//! training loop. Shared by `train-head` and the experiment runner.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::head::{layout_of, DepthForm, HeadMeta, Task, TrainedHead};
use super::layers::Pooling;
use super::recipes::{defaults, Augment, RecipeName};
use super::train::{Schedule, TrainConfig};
use super::trainer::{train, TargetStats};
use crate::data::Dataset;
use crate::encoder::Reads;
use crate::features::{BatchSource, Request, Source};
use crate::metrics::DepthRange;
use crate::optim::OptimizerKind;

/// Everything but the data that determines a head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadRecipe {
    pub task: Task,
    pub train: TrainConfig,
    /// Linear probe input (classification only).
    pub pooling: Pooling,
    /// Classes (default: what the dataset defines, else the largest label + 1 for cls).
    pub classes: Option<usize>,
    /// Depth bins, uniform over the valid range.
    pub bins: usize,
    /// Valid depths: min < depth < max, in metres (depth only).
    pub depth_range: Option<(f64, f64)>,
    /// Depth only: DINOv2's head (the default) or ours with BatchNorm on final-norm tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_form: Option<DepthForm>,
    /// Random training augmentation (features recomputed every epoch).
    #[serde(default, skip_serializing_if = "Augment::is_none")]
    pub augment: Augment,
}

/// An optimizer by name (command line and experiment files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerName {
    Adamw,
    Sgd,
}
crate::choices!(OptimizerName { Adamw = "adamw", Sgd = "sgd" });

/// A learning-rate schedule by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleName {
    Constant,
    Poly,
    Cosine,
}
crate::choices!(ScheduleName { Constant = "constant", Poly = "poly", Cosine = "cosine" });

/// A head's settings as a user gives them (`train-head`'s options, an experiment file's head);
/// unset ones come from the named recipe (`super::recipes`): `fast` (the default, robust-ssl's:
/// cls AdamW lr 1e-3, cosine, 100 epochs, batch 256; seg and depth AdamW lr 1e-3, weight decay
/// 1e-4, poly, 20 epochs, batch 8; no augmentation, so cached features serve) or `study` (the
/// study's, with its augmentations); SGD momentum 0.9; 256 depth bins over 0.001–10 m.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadOptions {
    pub recipe: Option<RecipeName>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub optimizer: Option<OptimizerName>,
    pub weight_decay: Option<f64>,
    pub momentum: Option<f64>,
    pub schedule: Option<ScheduleName>,
    pub poly_power: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub seed: Option<u64>,
    pub pooling: Option<Pooling>,
    pub classes: Option<usize>,
    pub bins: Option<usize>,
    pub min_depth: Option<f64>,
    pub max_depth: Option<f64>,
    pub depth_form: Option<DepthForm>,
}

impl HeadOptions {
    /// The defaults that do not depend on the task.
    pub const RECIPE: RecipeName = RecipeName::Fast;
    pub const MOMENTUM: f64 = 0.9;
    pub const POLY_POWER: f64 = 1.0;
    pub const WARMUP_STEPS: usize = 0;
    pub const SEED: u64 = 0;
    pub const POOLING: Pooling = Pooling::Cls;
    pub const BINS: usize = 256;
    pub const MIN_DEPTH: f64 = 0.001;
    pub const MAX_DEPTH: f64 = 10.0;
    pub const DEPTH_FORM: DepthForm = DepthForm::Dinov2;

    /// Refuses settings that do not fit a `task` head (a depth option on a classifier, …).
    pub fn check(&self, task: Task) -> Result<()> {
        let depth_only = [
            ("depth_form", self.depth_form.is_some()),
            ("bins", self.bins.is_some()),
            ("min_depth", self.min_depth.is_some()),
            ("max_depth", self.max_depth.is_some()),
        ];
        if task != Task::Depth {
            if let Some((name, _)) = depth_only.iter().find(|(_, given)| *given) {
                bail!("'{name}' is a depth head's setting; this is a {task} head");
            }
        }
        if task != Task::Cls && self.pooling.is_some() {
            bail!("'pooling' is a linear probe's setting; this is a {task} head");
        }
        Ok(())
    }

    /// The recipe of a `task` head with these settings.
    pub fn recipe(&self, task: Task) -> HeadRecipe {
        let d = defaults(self.recipe.unwrap_or(Self::RECIPE), task);
        let weight_decay = self.weight_decay.unwrap_or(match d.optimizer {
            OptimizerKind::AdamW { weight_decay } | OptimizerKind::Sgd { weight_decay, .. } => weight_decay,
        });
        let momentum = self.momentum.unwrap_or(Self::MOMENTUM);
        let power = self.poly_power.unwrap_or(Self::POLY_POWER);
        let train = TrainConfig {
            epochs: self.epochs.unwrap_or(d.epochs),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            lr: self.lr.unwrap_or(d.lr),
            optimizer: match (self.optimizer, d.optimizer) {
                (Some(OptimizerName::Adamw), _) | (None, OptimizerKind::AdamW { .. }) => OptimizerKind::AdamW { weight_decay },
                (Some(OptimizerName::Sgd), _) | (None, OptimizerKind::Sgd { .. }) => OptimizerKind::Sgd { momentum, weight_decay },
            },
            schedule: match self.schedule {
                None => match d.schedule {
                    Schedule::Poly { .. } => Schedule::Poly { power },
                    s => s,
                },
                Some(ScheduleName::Constant) => Schedule::Constant,
                Some(ScheduleName::Poly) => Schedule::Poly { power },
                Some(ScheduleName::Cosine) => Schedule::Cosine,
            },
            warmup_steps: self.warmup_steps.unwrap_or(Self::WARMUP_STEPS),
            seed: self.seed.unwrap_or(Self::SEED),
        };
        HeadRecipe {
            task,
            train,
            pooling: self.pooling.unwrap_or(Self::POOLING),
            classes: self.classes,
            bins: self.bins.unwrap_or(Self::BINS),
            depth_range: (task == Task::Depth)
                .then(|| (self.min_depth.unwrap_or(Self::MIN_DEPTH), self.max_depth.unwrap_or(Self::MAX_DEPTH))),
            depth_form: (task == Task::Depth).then(|| self.depth_form.unwrap_or(Self::DEPTH_FORM)),
            augment: d.augment,
        }
    }
}

impl HeadRecipe {
    /// Refuses settings no head can train with.
    pub fn check(&self) -> Result<()> {
        if let Some((min, max)) = self.depth_range {
            if !(min >= 0.0 && max > min && self.bins >= 2) {
                bail!("need 0 <= min depth < max depth and at least 2 bins (got {min}, {max}, {})", self.bins);
            }
        } else if self.task == Task::Depth {
            bail!("a depth head needs a depth range");
        }
        if self.train.epochs == 0 || self.train.batch_size == 0 {
            bail!("a head needs at least one epoch and a batch size of at least 1");
        }
        if !(self.train.lr.is_finite() && self.train.lr > 0.0) {
            bail!("the learning rate must be positive (got {})", self.train.lr);
        }
        Ok(())
    }

    /// What the head's features keep per sample.
    pub fn layout(&self) -> crate::features::Layout {
        let reads = if self.depth_form == Some(DepthForm::Dinov2) { Reads::PreNorm } else { Reads::Final };
        layout_of(self.task, reads)
    }

    fn range(&self) -> Option<DepthRange> {
        self.depth_range.map(|(min, max)| DepthRange { min, max })
    }
}

/// A fitted head, the loss of every step and the training time.
pub struct Fitted {
    pub head: TrainedHead,
    pub losses: Vec<f64>,
    pub seconds: f64,
}

/// Fits a head by `recipe` on the `features` of `request`'s samples of `ds` (from `source`).
pub fn fit(
    recipe: &HeadRecipe,
    source: Source,
    ds: &dyn Dataset,
    request: &Request,
    features: &mut dyn BatchSource,
    dev: &Device,
) -> Result<Fitted> {
    recipe.check()?;
    let task = recipe.task;
    let range = recipe.range();
    // One pass over the training targets (not their features): class count and baseline.
    let mut stats = TargetStats::default();
    let all: Vec<usize> = (0..features.len()).collect();
    for ids in all.chunks(256) {
        stats.update(task, &features.targets(ids)?, range)?;
    }
    let outputs = match task {
        Task::Depth => recipe.bins,
        _ => match (recipe.classes, ds.num_classes()) {
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) if task == Task::Cls => stats.classes_seen(),
            (None, None) => bail!("{}: the number of classes is unknown; pass --classes", ds.describe()),
        },
    };
    let (feature_dim, source_id, encoder_file, encoder_arch) = match source {
        Source::Encoder(enc) => (enc.config().embed_dim, enc.fingerprint()?, Some(enc.info.file.clone()), enc.info.arch.clone()),
        Source::Pixels => (features.batch(&[0])?.cls.dim(1)?, serde_json::json!("pixels"), None, None),
    };
    let mut meta = HeadMeta {
        task,
        outputs,
        feature_dim,
        pooling: (task == Task::Cls).then_some(recipe.pooling),
        depth_range: recipe.depth_range,
        depth_form: recipe.depth_form,
        source: source_id,
        encoder_file,
        encoder_arch,
        dataset: ds.describe(),
        samples: request.indices.len(),
        transforms: request.transform_names(),
        augment: request.augment.iter().map(crate::data::transform::Transform::describe).collect(),
        train: recipe.train,
        final_loss: f64::NAN,
        baseline: stats.baseline(task, outputs, range)?,
        created_by: format!("robust-ssl {}", env!("CARGO_PKG_VERSION")),
    };
    let t0 = Instant::now();
    let (head, losses) = train(&meta, features, &recipe.train, dev)?;
    meta.final_loss = *losses.last().expect("at least one step");
    Ok(Fitted { head: TrainedHead { head, meta }, losses, seconds: t0.elapsed().as_secs_f64() })
}
