//! `robust-ssl train-head`: trains a linear probe, segmentation head or depth head on encoder
//! features of a dataset (cached on disk, or recomputed per batch with `--no-cache`) and writes it
//! as `.safetensors` + JSON metadata.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::features::FeatureArgs;
use robust_ssl::data::Split;
use robust_ssl::heads::evaluate::{evaluate, Evaluation};
use robust_ssl::heads::fit::{fit, HeadOptions, HeadRecipe};
pub use robust_ssl::heads::fit::{OptimizerName, ScheduleName};
use robust_ssl::heads::head::{DepthForm, HeadMeta, Task};
use robust_ssl::heads::layers::Pooling;
use robust_ssl::heads::recipes::RecipeName;

#[derive(Args, Debug)]
pub struct TrainHeadArgs {
    #[arg(long, value_parser = super::choice::<Task>())]
    pub task: Task,
    #[command(flatten)]
    pub features: FeatureArgs,
    /// Output head file (.safetensors; the metadata is also written beside it as .json).
    #[arg(long)]
    pub out: PathBuf,
    /// The settings every option below defaults to: fast (ours: cached features, no
    /// augmentation; cls AdamW 1e-3, cosine, 100 epochs of 256; seg and depth AdamW 1e-3, wd
    /// 1e-4, poly, 20 epochs of 8) or study (the study's: cls Adam 0.5, 5 epochs of 128, crop +
    /// flip; seg AdamW 1e-3, wd 1e-4, 50 epochs of 16, random crop + flips; depth AdamW 1e-4, wd
    /// 0.01, 20 epochs of 128, flip; features recomputed every epoch). Both keep the last epoch.
    /// Default: the protocol's (fast, or study under --protocol study).
    #[arg(long, value_parser = super::choice::<RecipeName>())]
    pub recipe: Option<RecipeName>,
    /// Passes over the training samples.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Samples per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, value_parser = super::choice::<OptimizerName>())]
    pub optimizer: Option<OptimizerName>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = HeadOptions::MOMENTUM)]
    pub momentum: f64,
    /// Learning-rate schedule (default: the recipe's).
    #[arg(long, value_parser = super::choice::<ScheduleName>())]
    pub schedule: Option<ScheduleName>,
    /// Exponent of the poly schedule.
    #[arg(long, default_value_t = HeadOptions::POLY_POWER)]
    pub poly_power: f64,
    #[arg(long, default_value_t = HeadOptions::WARMUP_STEPS)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = HeadOptions::SEED)]
    pub seed: u64,
    /// Linear-probe input: cls, or cls+mean (CLS ⊕ mean of the patch tokens).
    #[arg(long, value_parser = super::choice::<Pooling>(), default_value_t = HeadOptions::POOLING)]
    pub pooling: Pooling,
    /// Number of classes (default: what the dataset defines, else the largest label + 1).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Depth bins, uniform in [--min-depth, --max-depth].
    #[arg(long, default_value_t = HeadOptions::BINS)]
    pub bins: usize,
    /// Depth range in metres: pixels with min < depth < max are valid (NYU: 0.001 to 10).
    #[arg(long, default_value_t = HeadOptions::MIN_DEPTH)]
    pub min_depth: f64,
    #[arg(long, default_value_t = HeadOptions::MAX_DEPTH)]
    pub max_depth: f64,
    /// Depth head: dinov2 (DINOv2's linear head: the last block's tokens before the final norm,
    /// no BatchNorm; the default) or bn (final-norm tokens, BatchNorm on the features).
    #[arg(long, value_parser = super::choice::<DepthForm>())]
    pub depth_form: Option<DepthForm>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Summary<'a> {
    head: String,
    meta: &'a HeadMeta,
    steps: usize,
    first_loss: f64,
    train_seconds: f64,
    feature_seconds: Option<f64>,
    cache: Option<robust_ssl::features::cache::CacheReport>,
    train_split: Option<Evaluation>,
}

impl TrainHeadArgs {
    fn recipe_name(&self) -> RecipeName {
        self.recipe.unwrap_or_else(|| self.features.protocol.head_recipe())
    }

    fn recipe(&self) -> HeadRecipe {
        HeadOptions {
            recipe: Some(self.recipe_name()),
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            optimizer: self.optimizer,
            weight_decay: self.weight_decay,
            momentum: Some(self.momentum),
            schedule: self.schedule,
            poly_power: Some(self.poly_power),
            warmup_steps: Some(self.warmup_steps),
            seed: Some(self.seed),
            pooling: Some(self.pooling),
            classes: self.classes,
            bins: Some(self.bins),
            min_depth: Some(self.min_depth),
            max_depth: Some(self.max_depth),
            depth_form: self.depth_form,
        }
        .recipe(self.task)
    }
}

pub fn run(a: &TrainHeadArgs) -> Result<()> {
    let f = &a.features;
    if a.task != Task::Cls && f.pixels {
        bail!("--pixels is the linear-probe baseline: it only works with --task cls");
    }
    if a.depth_form.is_some() && a.task != Task::Depth {
        bail!("--depth-form is a depth head's option; --task is {}", a.task);
    }
    let recipe = a.recipe();
    recipe.check().map_err(|e| anyhow::anyhow!("{e} (--min-depth, --max-depth, --bins, --epochs, --batch-size, --lr)"))?;
    robust_ssl::atomic::check_parent(&a.out)?;
    let mut prep = f.prepare(&[Split::Train], a.task, recipe.layout(), None)?;
    if !recipe.augment.is_none() {
        if prep.encoder.is_none() {
            bail!("--recipe {}: augmented training needs an encoder (--checkpoint)", a.recipe_name());
        }
        prep.request.augment = recipe.augment.training_transforms(&prep.request.transforms);
        prep.request.augment_seed = recipe.train.seed;
    }
    let dev = robust_ssl::device::default_device()?;

    let t0 = Instant::now();
    let (mut source, cache) = prep.batches(f)?;
    let feature_seconds = cache.as_ref().map(|_| t0.elapsed().as_secs_f64());
    let fitted = fit(&recipe, prep.source(), prep.dataset.as_ref(), &prep.request, source.as_mut(), &dev)?;
    let trained = fitted.head;
    trained.save(&a.out)?;
    let train_split = match (&cache, source.as_mut()) {
        (Some(_), s) => Some(evaluate(&trained, s, 64, &dev, &a.out.display().to_string())?),
        (None, _) => None,
    };
    let summary = Summary {
        head: a.out.display().to_string(),
        meta: &trained.meta,
        steps: fitted.losses.len(),
        first_loss: fitted.losses[0],
        train_seconds: fitted.seconds,
        feature_seconds,
        cache,
        train_split,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let m = s.meta;
    println!(
        "trained a {} head on {} ({} samples, {})",
        m.task,
        m.dataset,
        m.samples,
        m.encoder_arch.as_deref().unwrap_or(if m.source.is_string() { "raw pixels" } else { "custom ViT" })
    );
    if let Some(c) = &s.cache {
        println!(
            "  features: {} chunk(s) computed, {} reused, {:.1} s ({})",
            c.chunks_computed,
            c.chunks_reused,
            c.seconds,
            c.dir.display()
        );
    } else {
        println!("  features: recomputed for every batch (--no-cache)");
    }
    println!("  {} steps in {:.1} s, loss {:.4} -> {:.4}", s.steps, s.train_seconds, s.first_loss, m.final_loss);
    if let Some(e) = &s.train_split {
        println!("  on the training samples: {}", super::eval::one_line(&e.head));
        println!("  baseline ({}): {}", super::eval::baseline_name(&e.baseline_kind), super::eval::one_line(&e.baseline));
    }
    println!("  -> {} (+ {})", s.head, robust_ssl::heads::file::sidecar(std::path::Path::new(&s.head)).display());
}
