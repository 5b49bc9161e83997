//! `robust-ssl finetune deacl|multi`: adversarial fine-tuning of an encoder (see `defense/`),
//! resumable in its output folder, writing the student in the input checkpoint's own form.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::cross_task::task_and_rest;
use super::train_head::OptimizerName;
use super::ModelOptions;
use robust_ssl::attacks::embed::EmbedTarget;
use robust_ssl::attacks::engine::{AttackConfig, Method};
use robust_ssl::attacks::threat::{parse_amount, Norm, ThreatModel};
use robust_ssl::data::transform::Transform;
use robust_ssl::data::{self, Split};
use robust_ssl::defense::deacl::Deacl;
use robust_ssl::defense::multi::{Combine, Multi};
use robust_ssl::defense::recipe::{FinetuneRecipe, RecipeName};
use robust_ssl::defense::run::{finetune, Recipe, RunConfig};
use robust_ssl::encoder::Encoder;
use robust_ssl::experiment::protocol::Protocol;
use robust_ssl::heads::head::{Task, TrainedHead};
use robust_ssl::heads::train::{Schedule, TrainConfig};
use robust_ssl::heads::trainer::check_features;
use robust_ssl::optim::OptimizerKind;

#[derive(Subcommand, Debug)]
pub enum FinetuneCommand {
    /// DeACL: the student follows the frozen teacher on clean images and itself under attack.
    Deacl(DeaclArgs),
    /// Multi-perturbation adversarial training: EmbedAttack and the heads' task attacks together.
    Multi(MultiArgs),
}

/// What every fine-tuning method shares: the encoder, the data, the optimisation, the run folder.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Encoder checkpoint (.pth, .safetensors or .onnx); the student is written in the same form.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub model: ModelOptions,
    /// Training data as KIND:PATH (labels are only used by `multi`).
    #[arg(long)]
    pub dataset: String,
    #[arg(long, default_value = "train")]
    pub split: Split,
    /// A seeded random subset of this many samples.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub subset_seed: u64,
    /// Transforms (default: resize-shortS,cropSxS,padP with S = --size and P the patch size).
    #[arg(long)]
    pub transforms: Option<String>,
    /// Image side of the default transforms (default: the protocol's: 224; the study's 518 for
    /// DINOv2, 224 for DINO).
    #[arg(long)]
    pub size: Option<usize>,
    /// robust-ssl or study: fills the recipe and the image side when they are not given (the
    /// study fine-tunes at its encoder's image size with its DeACL recipe).
    #[arg(long, value_parser = super::choice::<Protocol>(), default_value_t = Protocol::RobustSsl)]
    pub protocol: Protocol,
    /// The settings every option below defaults to: `study` (the study's DeACL: SGD lr 0.5, wd
    /// 5e-4, no momentum, 101 epochs of 512 (128 on each of 4 GPUs), per-epoch warm-up from 0.003 over 10 epochs then
    /// cosine, random crop (padding size/8) + flip, k 2) or `fast` (ours: momentum 0.9, 1 epoch
    /// of 8, cosine per step after a warm-up over a tenth of the steps, no augmentation).
    /// Default: the protocol's (fast; study under --protocol study).
    #[arg(long, value_parser = super::choice::<RecipeName>())]
    pub recipe: Option<RecipeName>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, value_parser = super::choice::<OptimizerName>(), default_value = "sgd")]
    pub optimizer: OptimizerName,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Linear warm-up steps before a per-step cosine decay (replaces the recipe's schedule with
    /// a per-step cosine).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Random training augmentations after the transforms (random-cropHxW, pad-random-cropN,
    /// hflip, flips; `none` for none). Default: the recipe's.
    #[arg(long)]
    pub augment: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Inner attack: budget, step, steps (the reference: L∞ 8/255, 2/255, 5 steps).
    #[arg(long, default_value = "8/255")]
    pub eps: String,
    #[arg(long, default_value = "2/255")]
    pub step_size: String,
    #[arg(long, default_value_t = 5)]
    pub attack_steps: usize,
    #[arg(long, value_parser = super::choice::<Norm>(), default_value = "linf")]
    pub norm: Norm,
    /// Which embedding the attacks and the loss compare.
    #[arg(long, value_parser = super::choice::<EmbedTarget>(), default_value = "cls")]
    pub embedding: EmbedTarget,
    /// Checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    pub save_every: usize,
    /// Run folder: checkpoints, state for resuming, losses.csv.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DeaclArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Weight of the robustness term −k·cos(s(x'), s(x)) (default: the recipe's, 2).
    #[arg(long)]
    pub k: Option<f64>,
}

#[derive(Args, Debug)]
pub struct MultiArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Task heads (from `train-head` on this encoder) whose attacks and losses join the training:
    /// TASK:HEAD, repeatable or comma-separated. Their task must fit --dataset's labels.
    #[arg(long = "heads", required = true, value_delimiter = ',', value_name = "TASK:HEAD")]
    pub task_heads: Vec<String>,
    /// Weight of the consistency term −k·cos(s(x'), s(x)) (default: the recipe's, 2).
    #[arg(long)]
    pub k: Option<f64>,
    /// Weight of the task losses on the perturbed images.
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f64,
    /// How the perturbations' terms combine per sample.
    #[arg(long, value_parser = super::choice::<Combine>(), default_value = "average")]
    pub combine: Combine,
    /// Average: weight of the EmbedAttack perturbation's term.
    #[arg(long, default_value_t = 1.0)]
    pub embed_weight: f64,
    /// Average: weight of each task attack's term.
    #[arg(long, default_value_t = 1.0)]
    pub task_weight: f64,
}

/// Loads `TASK:HEAD` heads for a `width`-wide encoder.
fn load_heads(specs: &[String], width: usize) -> Result<Vec<(String, TrainedHead)>> {
    specs
        .iter()
        .map(|spec| {
            let (task, path) = task_and_rest(spec, "--heads", "expected TASK:HEAD, e.g. cls:probe.safetensors")?;
            let head = TrainedHead::load_for(std::path::Path::new(path), task, &robust_ssl::device::default_device()?)?;
            check_features(&head.meta, width, path)?;
            Ok((path.to_string(), head))
        })
        .collect()
}

impl CommonArgs {
    fn recipe_name(&self) -> RecipeName {
        self.recipe.unwrap_or_else(|| self.protocol.deacl_recipe())
    }

    /// The image side: `--size`, else the protocol's for the teacher.
    fn side(&self, teacher: &Encoder) -> usize {
        self.size.unwrap_or_else(|| match self.protocol {
            Protocol::Study => Protocol::study_side(teacher.config().family),
            Protocol::RobustSsl => robust_ssl::data::transform::DEFAULT_SIZE,
        })
    }

    fn recipe(&self, teacher: &Encoder) -> FinetuneRecipe {
        FinetuneRecipe::named(self.recipe_name(), self.side(teacher))
    }

    /// The recipe's k (the same at every image side).
    fn recipe_k(&self) -> f64 {
        FinetuneRecipe::named(self.recipe_name(), robust_ssl::data::transform::DEFAULT_SIZE).k
    }

    /// The encoder to fine-tune (loaded once; the student is its copy).
    fn teacher(&self) -> Result<Encoder> {
        self.model.load(&self.checkpoint, robust_ssl::device::default_device()?)
    }

    fn inner_attack(&self) -> Result<AttackConfig> {
        Ok(AttackConfig {
            method: Method::Pgd,
            threat: ThreatModel { norm: self.norm, eps: parse_amount(&self.eps).context("--eps")? },
            step_size: parse_amount(&self.step_size).context("--step-size")?,
            steps: self.attack_steps,
            restarts: 1,
            random_start: true,
            seed: self.seed,
            early_stop: false,
            // Adversarial training uses the final iterate (DeACL's reference, PGD adversarial training).
            last_iterate: true,
            evaluate_last: false,
            window: None,
            trace: false,
            queries: robust_ssl::attacks::spec::AttackSpec::DEFAULT_QUERIES,
        })
    }
}

pub fn run(cmd: &FinetuneCommand) -> Result<()> {
    let c = match cmd {
        FinetuneCommand::Deacl(a) => &a.common,
        FinetuneCommand::Multi(a) => &a.common,
    };
    // Refused before the run folder is written, so the same folder serves a corrected run.
    if !matches!(c.embedding, EmbedTarget::Cls | EmbedTarget::Patch | EmbedTarget::Both) {
        bail!("--embedding {}: fine-tuning compares the cls, patch or both embeddings", c.embedding);
    }
    match cmd {
        FinetuneCommand::Deacl(a) => {
            let k = a.k.unwrap_or(a.common.recipe_k());
            let recipe = Deacl { k, embedding: a.common.embedding, inner: a.common.inner_attack()? };
            let extra = serde_json::json!({ "k": k });
            go(&a.common, &a.common.teacher()?, &recipe, extra)
        }
        FinetuneCommand::Multi(a) => {
            let c = &a.common;
            let teacher = c.teacher()?;
            let heads = load_heads(&a.task_heads, teacher.config().embed_dim)?;
            let fingerprints: Vec<serde_json::Value> =
                heads.iter().map(|(p, h)| serde_json::json!({ "head": p, "task": h.meta.task, "trained": h.meta.final_loss })).collect();
            let k = a.k.unwrap_or(c.recipe_k());
            let recipe = Multi {
                heads,
                k,
                lambda: a.lambda,
                embedding: c.embedding,
                inner: c.inner_attack()?,
                combine: a.combine,
                embed_weight: a.embed_weight,
                task_weight: a.task_weight,
            };
            let extra = serde_json::json!({ "k": k, "lambda": a.lambda, "combine": a.combine, "embed_weight": a.embed_weight, "task_weight": a.task_weight, "heads": fingerprints });
            go(c, &teacher, &recipe, extra)
        }
    }
}

fn go(c: &CommonArgs, teacher: &Encoder, recipe: &dyn Recipe, extra: serde_json::Value) -> Result<()> {
    let samples = data::DataRef { dataset: c.dataset.clone(), split: c.split, limit: c.limit, subset_seed: c.subset_seed };
    let ds = samples.open()?;
    let transforms = match &c.transforms {
        Some(spec) => Transform::parse_list(spec).context("--transforms")?,
        None => c.protocol.transforms(Task::Cls, teacher.config().family, teacher.config().patch_size, Some(c.side(teacher)))?,
    };
    let indices = samples.indices(ds.len());
    let r = c.recipe(teacher);
    let (epochs, batch_size) = (c.epochs.unwrap_or(r.epochs), c.batch_size.unwrap_or(r.batch_size));
    let weight_decay = c.weight_decay.unwrap_or(r.weight_decay);
    let steps = indices.len().div_ceil(batch_size.max(1)) * epochs;
    let (schedule, warmup_steps) = match c.warmup_steps {
        Some(w) => (Schedule::Cosine, w),
        None => (r.schedule, (steps as f64 * r.warmup_fraction) as usize),
    };
    let train = TrainConfig {
        epochs,
        batch_size,
        lr: c.lr.unwrap_or(r.lr),
        optimizer: match c.optimizer {
            OptimizerName::Sgd => OptimizerKind::Sgd { momentum: c.momentum.unwrap_or(r.momentum), weight_decay },
            OptimizerName::Adamw => OptimizerKind::AdamW { weight_decay },
        },
        schedule,
        warmup_steps,
        seed: c.seed,
    };
    let augment = match c.augment.as_deref() {
        Some("none") => vec![],
        Some(spec) => Transform::parse_list(spec).context("--augment")?,
        None => r.augment.clone(),
    };
    if let Some(t) = augment.iter().find(|t| !t.is_random()) {
        bail!("--augment: '{}' is not a random augmentation; deterministic steps belong in --transforms", t.describe());
    }
    if let Some(t) = transforms.iter().find(|t| t.is_random()) {
        bail!("--transforms: '{}' is a random augmentation; give it with --augment", t.describe());
    }
    let inner = c.inner_attack()?;
    let identity = serde_json::json!({
        "dataset": ds.describe(),
        "samples": indices.len(),
        "subset_seed": c.subset_seed,
        "transforms": transforms.iter().map(Transform::describe).collect::<Vec<_>>(),
        "recipe": c.recipe_name(),
        "augment": augment.iter().map(Transform::describe).collect::<Vec<_>>(),
        "inner_attack": inner,
        "embedding": c.embedding,
        "save_every": c.save_every,
        "recipe_options": extra,
    });
    let cfg = RunConfig { train, augment, save_every: c.save_every, identity };
    let outcome = finetune(recipe, teacher, ds.as_ref(), &indices, &transforms, &cfg, &c.out)?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        let ran = outcome.losses.len();
        if outcome.resumed_from > 0 {
            println!("resumed at step {} of {}", outcome.resumed_from, outcome.total_steps);
        }
        if let (Some(first), Some(last)) = (outcome.losses.first(), outcome.losses.last()) {
            println!("{ran} step(s): loss {first:.5} → {last:.5}");
        }
        println!("student: {}", outcome.final_checkpoint);
        println!("losses per step: {}", c.out.join("losses.csv").display());
    }
    Ok(())
}
