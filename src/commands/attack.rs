//! `robust-ssl attack`: clean and adversarial metrics of a trained head under one attack
//! (EmbedAttack, PGD, SegPGD, DepthPGD), with the attack's sanity report.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::cross_task::{AlsoHead, AlsoReport, AlsoSpec, CrossTask};
use super::features::FeatureArgs;
use crate::attacks::embed::{Distance, EmbedAttack, EmbedTarget};
use crate::attacks::engine::{attack, AttackConfig, Method, Sanity};
use crate::attacks::objective::Objective;
use crate::attacks::task::task_objective;
use crate::attacks::threat::{parse_amount, Norm, ThreatModel};
use crate::data::transform::load_batch;
use crate::data::Split;
use crate::features::{targets_of, Batch, Targets};
use crate::heads::evaluate::{Evaluation, Scorer};
use crate::heads::head::{Head, Task, TrainedHead};
use crate::heads::trainer::{check_features, forward, target_size};
use crate::metrics::DepthRange;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttackKind {
    /// Maximise the distance of the tokens to the clean ones (task-agnostic).
    Embed,
    /// Cross-entropy PGD on the linear probe.
    Pgd,
    /// SegPGD on the segmentation head.
    Segpgd,
    /// SigLoss + 0.5·GradLoss on the depth head.
    Depthpgd,
    /// The task's own loss (cross-entropy, SegPGD's, DepthPGD's) with AutoAttack's APGD schedule.
    Apgd,
}

#[derive(Args, Debug)]
pub struct AttackArgs {
    #[arg(long, value_enum)]
    pub task: Task,
    #[command(flatten)]
    pub features: FeatureArgs,
    /// Head file written by `train-head`.
    #[arg(long)]
    pub head: PathBuf,
    /// Also score the same perturbations on this head (repeatable): TASK:HEAD, with the labels of
    /// --dataset, or TASK:HEAD@KIND:PATH, with the labels of another dataset of the same images
    /// (synthetic-seg:NxS and synthetic-depth:NxS render the same scenes).
    #[arg(long, value_name = "TASK:HEAD[@KIND:PATH]")]
    pub also: Vec<AlsoSpec>,
    #[arg(long, value_enum)]
    pub attack: AttackKind,
    /// Budget, as a fraction (8/255) or a number.
    #[arg(long, default_value = "8/255")]
    pub eps: String,
    /// Step size (default: ε/4; APGD starts at 2ε and sets its own).
    #[arg(long)]
    pub step_size: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, value_enum, default_value = "linf")]
    pub norm: Norm,
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Start at δ = 0 instead of a uniform random point of the ball.
    #[arg(long)]
    pub no_random_start: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// EmbedAttack: which tokens (cls, patch, both) and which distance (mse, cosine).
    #[arg(long, value_enum, default_value = "both")]
    pub embed_target: EmbedTarget,
    #[arg(long, value_enum, default_value = "mse")]
    pub embed_distance: Distance,
    /// Images attacked together.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Write PNG strips (clean | adversarial | perturbation | predictions | ground truth) here.
    #[arg(long)]
    pub save_examples: Option<PathBuf>,
    /// How many images get a strip.
    #[arg(long, default_value_t = 8)]
    pub examples: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    head: String,
    dataset: String,
    attack: AttackKind,
    config: AttackConfig,
    clean: Evaluation,
    adversarial: Evaluation,
    /// Mean over images of the objective at the chosen adversarial points.
    mean_objective: f64,
    sanity: Sanity,
    /// The same perturbations scored on the `--also` heads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    also: Vec<AlsoReport>,
}

fn objective_for<'a>(a: &AttackArgs, head: &'a Head, clean: &crate::encoder::Tokens, targets: &Targets, range: Option<DepthRange>) -> Result<Box<dyn Objective + 'a>> {
    let kind = match (a.attack, a.task) {
        (AttackKind::Apgd, Task::Cls) => AttackKind::Pgd,
        (AttackKind::Apgd, Task::Seg) => AttackKind::Segpgd,
        (AttackKind::Apgd, Task::Depth) => AttackKind::Depthpgd,
        (k, _) => k,
    };
    let fits = matches!((kind, head), (AttackKind::Pgd, Head::Linear(_)) | (AttackKind::Segpgd, Head::Seg(_)) | (AttackKind::Depthpgd, Head::Depth(_)));
    match kind {
        AttackKind::Embed => Ok(Box::new(EmbedAttack::new(clean, a.embed_target, a.embed_distance))),
        _ if fits => task_objective(head, targets, range),
        kind => bail!("--attack {} does not fit a {} head (pgd: cls, segpgd: seg, depthpgd: depth, embed: any)", format!("{kind:?}").to_lowercase(), a.task),
    }
}

pub fn run(a: &AttackArgs) -> Result<()> {
    let f = &a.features;
    if f.pixels {
        bail!("attacks need an encoder (--checkpoint), not --pixels");
    }
    let eps = parse_amount(&a.eps).context("--eps")?;
    let step_size = match &a.step_size {
        Some(s) => parse_amount(s).context("--step-size")?,
        None => eps / 4.0,
    };
    let cfg = AttackConfig {
        method: if a.attack == AttackKind::Apgd { Method::Apgd } else { Method::Pgd },
        threat: ThreatModel { norm: a.norm, eps },
        step_size,
        steps: a.steps,
        restarts: a.restarts,
        random_start: !a.no_random_start,
        seed: a.seed,
        early_stop: a.task == Task::Cls,
        last_iterate: false,
    };
    let file = a.head.display().to_string();
    let head = TrainedHead::load_for(&a.head, a.task, &Device::Cpu)?;
    let prep = f.prepare(&[Split::Val, Split::Test], a.task.layout(), Some(&head.meta.transforms))?;
    let enc = prep.encoder.as_ref().context("attacks need an encoder")?;
    check_features(&head.meta, enc.config().embed_dim, &file)?;
    let ds = prep.dataset.as_ref();
    let also = a.also.iter().map(|spec| AlsoHead::open(spec, &prep, enc.config().embed_dim)).collect::<Result<Vec<_>>>()?;
    let mut cross = CrossTask::new(&also)?;
    let range = head.meta.depth_range.map(|(min, max)| DepthRange { min, max });
    let (mut clean_scores, mut adv_scores) = (Scorer::new(&head, &file)?, Scorer::new(&head, &file)?);
    let mut sanity_all = Sanity::default();
    let mut objective_sum = 0.0;
    let mut saved = 0;
    if let Some(dir) = &a.save_examples {
        if !dir.is_dir() {
            bail!("{}: the --save-examples folder does not exist", dir.display());
        }
    }
    let bar = crate::progress::bar(prep.request.indices.len() as u64, &format!("{:?} attack on {}", a.attack, ds.describe()));
    for ids in prep.request.indices.chunks(a.batch_size.max(1)) {
        let samples = load_batch(ds, ids, &prep.request.transforms)?;
        let images = Tensor::stack(&samples.iter().map(|s| &s.image).collect::<Vec<_>>(), 0)
            .with_context(|| format!("{}: images of different sizes after the transforms", ds.describe()))?;
        let targets = targets_of(ds, ids, samples)?;
        let size = target_size(&targets);
        let score = |images: &Tensor, scorer: &mut Scorer| -> Result<(crate::encoder::Tokens, Batch, Tensor)> {
            let tokens = enc.forward(&images.to_device(enc.vit.device())?)?;
            let batch = Batch::from_tokens(&tokens.cls, &tokens.patch, tokens.grid).to_device(&Device::Cpu)?;
            let (out, _) = forward(&head.head, &batch, size, false)?;
            scorer.add(&out, &targets, ids.len())?;
            Ok((tokens, batch, out))
        };
        let (clean, clean_batch, clean_out) = score(&images, &mut clean_scores)?;
        let objective = objective_for(a, &head.head, &clean, &targets, range)?;
        let out = attack(enc, objective.as_ref(), &images, &cfg)?;
        let (_, adv_batch, adv_out) = score(&out.adversarial, &mut adv_scores)?;
        cross.add(&prep, ids, &images, &targets, &clean_batch, &adv_batch)?;
        if let Some(dir) = &a.save_examples {
            saved += save_examples(dir, a, ids, &images, &out.adversarial, (&clean_out, &adv_out), &targets, eps, a.examples.saturating_sub(saved))?;
        }
        objective_sum += out.loss.iter().sum::<f64>();
        sanity_all.merge(&out.sanity);
        bar.inc(ids.len() as u64);
    }
    bar.finish_and_clear();
    if let Some(w) = sanity_all.warning() {
        eprintln!("warning: {w}");
    }
    let report = Report {
        head: file.clone(),
        dataset: ds.describe(),
        attack: a.attack,
        config: cfg,
        clean: clean_scores.finish()?,
        adversarial: adv_scores.finish()?,
        mean_objective: objective_sum / prep.request.indices.len() as f64,
        sanity: sanity_all,
        also: cross.finish(&prep)?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let step = if cfg.method == Method::Apgd { "from 2ε, adaptive".to_string() } else { format!("{step_size:.5}") };
        println!("{:?} attack ({:?}, ε {:.5}, step {step}, {} steps, {} restart(s)) on {} with {}", a.attack, a.norm, eps, a.steps, a.restarts.max(1), report.dataset, report.head);
        println!("  clean:       {}", super::eval::one_line(&report.clean.head));
        println!("  adversarial: {}", super::eval::one_line(&report.adversarial.head));
        println!("  baseline:    {} ({})", super::eval::one_line(&report.clean.baseline), super::eval::baseline_name(&report.clean.baseline_kind));
        for h in &report.also {
            println!("  also {} on {}:", h.head, h.dataset);
            println!("    clean:       {}", super::eval::one_line(&h.clean.head));
            println!("    adversarial: {}", super::eval::one_line(&h.adversarial.head));
        }
        println!("  objective {:.5} on average; largest ‖δ‖/ε {:.4}; pixels in [{:.4}, {:.4}]", report.mean_objective, report.sanity.max_norm_over_eps, report.sanity.min_pixel, report.sanity.max_pixel);
    }
    Ok(())
}

/// Writes up to `budget` strips for this batch; returns how many.
#[allow(clippy::too_many_arguments)]
fn save_examples(dir: &std::path::Path, a: &AttackArgs, ids: &[usize], clean: &Tensor, adv: &Tensor, outs: (&Tensor, &Tensor), targets: &Targets, eps: f64, budget: usize) -> Result<usize> {
    let attack = format!("{:?}", a.attack).to_lowercase();
    let n = ids.len().min(budget);
    for (k, id) in ids.iter().take(n).enumerate() {
        let (suffix, png) = crate::report::strips::attack_strip(k, clean, adv, outs, targets, eps)?;
        crate::atomic::write(&dir.join(format!("{id:05}-{attack}{suffix}.png")), &png)?;
    }
    Ok(n)
}
