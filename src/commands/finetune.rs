//! `robust-ssl finetune deacl|multi`: adversarial fine-tuning of an encoder (see `defense/`),
//! resumable in its output folder, writing the student in the input checkpoint's own form.

use std::path::PathBuf;

use anyhow::{Context, Result};
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
use robust_ssl::defense::run::{finetune, Recipe, RunConfig};
use robust_ssl::encoder::Encoder;
use robust_ssl::heads::head::TrainedHead;
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
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Learning rate (the DeACL reference: SGD 0.5 at batch 128).
    #[arg(long, default_value_t = 0.5)]
    pub lr: f64,
    #[arg(long, value_parser = super::choice::<OptimizerName>(), default_value = "sgd")]
    pub optimizer: OptimizerName,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Linear warm-up steps before the cosine decay (default: a tenth of the steps).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
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
    /// Weight of the robustness term −k·cos(s(x'), s(x)).
    #[arg(long, default_value_t = 2.0)]
    pub k: f64,
}

#[derive(Args, Debug)]
pub struct MultiArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Task heads (from `train-head` on this encoder) whose attacks and losses join the training:
    /// TASK:HEAD, repeatable or comma-separated. Their task must fit --dataset's labels.
    #[arg(long = "heads", required = true, value_delimiter = ',', value_name = "TASK:HEAD")]
    pub task_heads: Vec<String>,
    /// Weight of the consistency term −k·cos(s(x'), s(x)).
    #[arg(long, default_value_t = 2.0)]
    pub k: f64,
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
        })
    }
}

pub fn run(cmd: &FinetuneCommand) -> Result<()> {
    match cmd {
        FinetuneCommand::Deacl(a) => {
            let recipe = Deacl { k: a.k, embedding: a.common.embedding, inner: a.common.inner_attack()? };
            let extra = serde_json::json!({ "k": a.k });
            go(&a.common, &a.common.teacher()?, &recipe, extra)
        }
        FinetuneCommand::Multi(a) => {
            let c = &a.common;
            let teacher = c.teacher()?;
            let heads = load_heads(&a.task_heads, teacher.config().embed_dim)?;
            let fingerprints: Vec<serde_json::Value> =
                heads.iter().map(|(p, h)| serde_json::json!({ "head": p, "task": h.meta.task, "trained": h.meta.final_loss })).collect();
            let recipe = Multi {
                heads,
                k: a.k,
                lambda: a.lambda,
                embedding: c.embedding,
                inner: c.inner_attack()?,
                combine: a.combine,
                embed_weight: a.embed_weight,
                task_weight: a.task_weight,
            };
            let extra = serde_json::json!({ "k": a.k, "lambda": a.lambda, "combine": a.combine, "embed_weight": a.embed_weight, "task_weight": a.task_weight, "heads": fingerprints });
            go(c, &teacher, &recipe, extra)
        }
    }
}

fn go(c: &CommonArgs, teacher: &Encoder, recipe: &dyn Recipe, extra: serde_json::Value) -> Result<()> {
    let samples = data::DataRef { dataset: c.dataset.clone(), split: c.split, limit: c.limit, subset_seed: c.subset_seed };
    let ds = samples.open()?;
    let transforms = match &c.transforms {
        Some(spec) => Transform::parse_list(spec).context("--transforms")?,
        None => robust_ssl::data::transform::default_transforms(c.size, teacher.config().patch_size),
    };
    let indices = samples.indices(ds.len());
    let steps = indices.len().div_ceil(c.batch_size.max(1)) * c.epochs;
    let train = TrainConfig {
        epochs: c.epochs,
        batch_size: c.batch_size,
        lr: c.lr,
        optimizer: match c.optimizer {
            OptimizerName::Sgd => OptimizerKind::Sgd { momentum: c.momentum, weight_decay: c.weight_decay },
            OptimizerName::Adamw => OptimizerKind::AdamW { weight_decay: c.weight_decay },
        },
        schedule: Schedule::Cosine,
        warmup_steps: c.warmup_steps.unwrap_or(steps / 10),
        seed: c.seed,
    };
    let inner = c.inner_attack()?;
    let identity = serde_json::json!({
        "dataset": ds.describe(),
        "samples": indices.len(),
        "subset_seed": c.subset_seed,
        "transforms": transforms.iter().map(Transform::describe).collect::<Vec<_>>(),
        "inner_attack": inner,
        "embedding": c.embedding,
        "save_every": c.save_every,
        "recipe_options": extra,
    });
    let cfg = RunConfig { train, save_every: c.save_every, identity };
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
