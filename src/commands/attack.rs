//! `robust-ssl attack`: clean and adversarial metrics of a trained head under one attack
//! (EmbedAttack, PGD, SegPGD, DepthPGD), with the attack's sanity report.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use serde::Serialize;

use super::choice;
use super::cross_task::{AlsoHead, AlsoReport, AlsoSpec, CrossTask};
use super::features::FeatureArgs;
use robust_ssl::arrays_out::ArrayWriter;
use robust_ssl::attacks::embed::{Distance, EmbedScope, EmbedTarget};
use robust_ssl::attacks::engine::{AttackConfig, Sanity};
use robust_ssl::attacks::scoring::{attack_batch, attack_batch_from, Aim, Crafter, Curve, ScoredHead};
use robust_ssl::attacks::segpgd::SegPgdForm;
use robust_ssl::attacks::spec::{AttackKind, AttackSpec, Iterate, StepSize};
use robust_ssl::attacks::strips::attack_strip;
use robust_ssl::attacks::threat::{parse_amount, Norm};
use robust_ssl::data::transform::{by_size, load_batch, load_images_only, resizes};
use robust_ssl::data::Split;
use robust_ssl::features::{targets_of, Targets};
use robust_ssl::heads::evaluate::{Evaluation, Metrics, Scorer};
use robust_ssl::heads::head::{Task, TrainedHead};
use robust_ssl::heads::sliding::Window;
use robust_ssl::heads::trainer::check_features;

#[derive(Args, Debug)]
pub struct AttackArgs {
    #[arg(long, value_parser = choice::<Task>())]
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
    /// embed (EmbedAttack), task (the head's own), pgd (cls), segpgd (seg), depthpgd (depth), or apgd
    /// (the head's own loss with APGD's schedule).
    #[arg(long, value_parser = choice::<AttackKind>())]
    pub attack: AttackKind,
    /// Budget, as a fraction (8/255) or a number.
    #[arg(long, default_value = AttackSpec::DEFAULT_EPS)]
    pub eps: String,
    /// Step size: eps/K or an amount (default: the protocol's, eps/4 or the study's 2/255; APGD
    /// starts at 2ε and sets its own).
    #[arg(long)]
    pub step_size: Option<String>,
    /// Iterations (default: 20; AutoAttack's 100 for apgd, apgd-dlr, apgd-t and autoattack).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Square's queries per sample, alone or in autoattack.
    #[arg(long, default_value_t = AttackSpec::DEFAULT_QUERIES)]
    pub queries: usize,
    #[arg(long, value_parser = choice::<Norm>(), default_value_t = AttackSpec::DEFAULT_NORM)]
    pub norm: Norm,
    #[arg(long, default_value_t = AttackSpec::DEFAULT_RESTARTS)]
    pub restarts: usize,
    /// Start at δ = 0 instead of a uniform random point of the ball.
    #[arg(long)]
    pub no_random_start: bool,
    #[arg(long, default_value_t = AttackSpec::DEFAULT_SEED)]
    pub seed: u64,
    /// EmbedAttack: which tokens (task: the head's own — CLS for cls, final-norm patch tokens for
    /// seg, pre-norm patch tokens for depth; or cls, patch, patch-prenorm, both) and which
    /// distance (mse, cosine).
    #[arg(long, value_parser = choice::<EmbedTarget>(), default_value_t = AttackSpec::DEFAULT_EMBED_TARGET)]
    pub embed_target: EmbedTarget,
    #[arg(long, value_parser = choice::<Distance>(), default_value_t = AttackSpec::DEFAULT_EMBED_DISTANCE)]
    pub embed_distance: Distance,
    /// SegPGD's form: paper (the SegPGD paper's, weighted sum over labelled pixels) or study (the
    /// study's code: weighted means over correct and over wrong pixels).
    /// (Default: the protocol's, paper or study.)
    #[arg(long = "segpgd", value_parser = choice::<SegPgdForm>())]
    pub segpgd: Option<SegPgdForm>,
    /// PGD's cross-entropy on logits divided by max(1, max logit), as the study's code
    /// (`--ce-scaling` or `--ce-scaling true|false`; default: the protocol's, on for the study).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub ce_scaling: Option<bool>,
    /// The point returned per image: best (the best seen) or last (the last iterate, the study's);
    /// default: the protocol's.
    #[arg(long, value_parser = choice::<Iterate>())]
    pub iterate: Option<Iterate>,
    /// A transfer attack: craft the perturbation on this encoder instead (a public backbone as a
    /// surrogate) and score it on --checkpoint's head. EmbedAttack uses the surrogate's own
    /// embedding; a task attack needs --source-head, a head of the same task on the surrogate.
    #[arg(long)]
    pub source_checkpoint: Option<PathBuf>,
    /// The surrogate's head that a transferred task attack maximises the loss of.
    #[arg(long, requires = "source_checkpoint")]
    pub source_head: Option<PathBuf>,
    /// The surrogate's attention heads, for custom widths (default: 64-dim heads or what the file states).
    #[arg(long, requires = "source_checkpoint")]
    pub source_num_heads: Option<usize>,
    /// Record the head's metric after every step (the study's per-step evaluation; one more
    /// forward pass per step), printed as a curve.
    #[arg(long)]
    pub curve: bool,
    /// Images attacked together.
    #[arg(long, default_value_t = AttackSpec::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Dense heads: attack and score whole images through sliding windows CROP:STRIDE in pixels or
    /// `whole` (centre-padded), as `eval --window`: the attack's forward and gradient go through
    /// the very windows the evaluation averages; scored at each label's own size. Images get the
    /// head's resizes only (or --transforms); images of one size are attacked together.
    #[arg(long = "window", alias = "sliding-window")]
    pub window: Option<Window>,
    /// Write PNG strips (clean | adversarial | perturbation | predictions | ground truth) here.
    #[arg(long)]
    pub save_examples: Option<PathBuf>,
    /// Write every attacked image here: `images` (adversarial, `[N,3,H,W]` in [0,1]), `delta`
    /// (adversarial − clean), `labels` (class ids, label maps, or depth in metres) and `indices`
    /// (in the split). FILE.safetensors, FILE.npz (numpy's np.load), or FILE.npy (images; the
    /// others beside it as FILE_delta.npy, FILE_labels.npy, FILE_indices.npy).
    #[arg(long, value_name = "FILE")]
    pub save_adversarial: Option<PathBuf>,
    /// How many images get a strip.
    #[arg(long, default_value_t = 8)]
    pub examples: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
pub struct Report {
    head: String,
    dataset: String,
    /// A transfer attack's surrogate: its checkpoint and, for a task attack, its head.
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<serde_json::Value>,
    /// robust-ssl or study: what filled the settings not given.
    protocol: robust_ssl::experiment::protocol::Protocol,
    attack: AttackKind,
    config: AttackConfig,
    clean: Evaluation,
    adversarial: Evaluation,
    /// Mean over images of the objective at the chosen adversarial points.
    mean_objective: f64,
    sanity: Sanity,
    /// With --curve: the head's metrics after every step (0 = the starting point).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    curve: Vec<Metrics>,
    /// The same perturbations scored on the `--also` heads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    also: Vec<AlsoReport>,
    /// Each image (its index in the split): its own figures on the clean and the attacked input
    /// (a classifier's attacked `correct` is robust accuracy's: right before and after), as the
    /// store keeps them.
    per_sample: Vec<serde_json::Value>,
    /// With --save-adversarial: the files written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    saved: Vec<PathBuf>,
}

impl AttackArgs {
    /// The attack setting the flags give.
    fn spec(&self) -> Result<AttackSpec> {
        let eps = parse_amount(&self.eps).context("--eps")?;
        let protocol = self.features.protocol;
        let defaults = protocol.attack_defaults();
        let step = match &self.step_size {
            Some(s) => StepSize::parse(s).context("--step-size")?,
            None => defaults.step,
        };
        Ok(AttackSpec {
            kind: self.attack,
            norm: self.norm,
            eps,
            eps_text: self.eps.clone(),
            step_size: step.at(eps),
            step_text: robust_ssl::attacks::spec::step_text(self.step_size.as_deref().or(protocol.step_text())),
            steps: self.steps.unwrap_or(self.attack.default_steps()),
            seed: self.seed,
            restarts: self.restarts,
            random_start: !self.no_random_start,
            // `task`: the attacked head's embedding (the `--also` heads score that perturbation).
            embed_target: self.embed_target.for_task(self.task),
            embed_distance: self.embed_distance,
            embed_scope: if self.also.is_empty() { EmbedScope::PerTask } else { EmbedScope::Shared },
            segpgd: self.segpgd.unwrap_or(defaults.segpgd),
            ce_scaling: self.ce_scaling.unwrap_or(defaults.ce_scaling),
            iterate: self.iterate.unwrap_or(protocol.iterate(self.attack)),
            curve: self.curve,
            queries: self.queries,
        })
    }
}

pub fn run(a: &AttackArgs) -> Result<()> {
    let (report, spec) = execute(a)?;
    print(a, &report, &spec)
}

/// Runs the attack the flags describe (warnings printed on stderr); the report and the setting.
pub fn execute(a: &AttackArgs) -> Result<(Report, AttackSpec)> {
    let f = &a.features;
    if f.pixels {
        bail!("attacks need an encoder (--checkpoint), not --pixels");
    }
    let spec = a.spec()?;
    spec.check()?;
    if !spec.kind.fits(a.task) {
        bail!("--attack {} does not fit a {} head; these do: {}", spec.kind, a.task, AttackKind::fitting(a.task));
    }
    let early_stop = a.task == Task::Cls;
    let file = a.head.display().to_string();
    let head = TrainedHead::load_for(&a.head, a.task, &Device::Cpu)?;
    let mut prep = f.prepare(&[Split::Val, Split::Test], a.task, head.meta.layout(), Some(&head.meta.transforms))?;
    let window = f.window(a.window, a.task, prep.encoder.as_ref(), &head.meta.transforms);
    if window.is_some() {
        if a.task == Task::Cls {
            bail!("--window is for the dense heads (seg, depth): a classifier sees the whole image at once");
        }
        if !a.also.is_empty() || a.save_examples.is_some() || a.save_adversarial.is_some() {
            bail!("--window does not combine with --also, --save-examples or --save-adversarial yet");
        }
    }
    if window.is_some() && f.transforms.is_none() {
        // Windows see whole images: of the head's transforms, only the resizes apply.
        prep.request.transforms = resizes(&prep.request.transforms);
    }
    let prep = prep;
    let enc = prep.encoder.as_ref().context("attacks need an encoder")?;
    let source = Surrogate::open(a, enc)?;
    let engine = |b: usize| AttackConfig { window, ..spec.engine(b, early_stop) };
    let cfg = engine(0);
    check_features(&head.meta, enc.config().embed_dim, &file)?;
    let ds = prep.dataset.as_ref();
    let also = a.also.iter().map(|spec| AlsoHead::open(spec, &prep, enc.config().embed_dim)).collect::<Result<Vec<_>>>()?;
    let mut cross = CrossTask::new(&also)?;
    let (mut clean_scores, mut adv_scores) = (Scorer::new(&head, &file)?, Scorer::new(&head, &file)?);
    let mut sanity_all = Sanity::default();
    let mut objective_sum = 0.0;
    let mut saved = 0;
    let mut curve = Curve::new(&head, &file);
    if let Some(dir) = &a.save_examples {
        if !dir.is_dir() {
            bail!("{}: the --save-examples folder does not exist", dir.display());
        }
    }
    let mut arrays = match &a.save_adversarial {
        Some(p) => Some(ArrayWriter::create(p, &["images", "delta", "labels", "indices"])?),
        None => None,
    };
    let mut per_sample = Vec::new();
    let bar = robust_ssl::progress::bar(prep.request.indices.len() as u64, &format!("{} attack on {}", a.attack, ds.describe()));
    let mut b = 0;
    for chunk in prep.request.indices.chunks(a.batch_size.max(1)) {
        // Whole images of one size (and labels of one size) are attacked together.
        let groups = match window {
            Some(_) => by_size(chunk, load_images_only(ds, chunk, &prep.request.transforms)?),
            None => vec![(chunk.to_vec(), load_batch(ds, chunk, &prep.request.transforms)?)],
        };
        for (ids, samples) in groups {
            let ids = ids.as_slice();
            let images = Tensor::stack(&samples.iter().map(|s| &s.image).collect::<Vec<_>>(), 0)
                .with_context(|| format!("{}: images of different sizes after the transforms", ds.describe()))?;
            let targets = targets_of(ds, ids, samples)?;
            let also_targets = also.iter().map(|h| h.labels(&prep, ids, &images)).collect::<Result<Vec<Option<Targets>>>>()?;
            let mut heads = vec![ScoredHead { head: &head, targets: &targets, name: &file }];
            heads.extend(also.iter().zip(&also_targets).map(|(h, t)| ScoredHead {
                head: &h.head,
                targets: t.as_ref().unwrap_or(&targets),
                name: &h.file,
            }));
            let done = match &source {
                None => attack_batch(enc, &images, Aim::of(&spec, 0), &heads, &engine(b), true)?,
                Some(s) => {
                    let own: Vec<ScoredHead> =
                        s.head.iter().map(|h| ScoredHead { head: h, targets: &targets, name: &s.head_file }).collect();
                    let crafter = Crafter { enc: &s.enc, heads: &own };
                    attack_batch_from(crafter, enc, &images, Aim::of(&spec, 0), &heads, &engine(b), true)?
                }
            };
            b += 1;
            curve.add(&done.heads[0].curve)?;
            clean_scores.merge(&done.heads[0].clean)?;
            adv_scores.merge(&done.heads[0].adversarial)?;
            cross.add(&done.heads[1..])?;
            if let Some(dir) = &a.save_examples {
                let outs = (&done.heads[0].clean_output, &done.heads[0].adversarial_output);
                saved += save_examples(
                    dir,
                    a.attack,
                    ids,
                    &images,
                    &done.outcome.adversarial,
                    outs,
                    &targets,
                    spec.eps,
                    a.examples.saturating_sub(saved),
                )?;
            }
            let scored = &done.heads[0];
            for ((id, c), adv) in ids.iter().zip(&scored.clean_samples).zip(&scored.samples) {
                per_sample.push(serde_json::json!({ "index": id, "clean": c.figures()?, "adversarial": adv.figures()? }));
            }
            if let Some(w) = arrays.as_mut() {
                save_arrays(w, ids, &images, &done.outcome.adversarial, &targets)?;
            }
            objective_sum += done.outcome.loss.iter().sum::<f64>();
            sanity_all.merge(&done.outcome.sanity);
            bar.inc(ids.len() as u64);
        }
    }
    bar.finish_and_clear();
    let saved = match arrays {
        Some(w) => w.finish()?,
        None => Vec::new(),
    };
    for w in sanity_all.warnings() {
        eprintln!("warning: {w}");
    }
    let report = Report {
        head: file.clone(),
        dataset: ds.describe(),
        source: source
            .as_ref()
            .map(|s| serde_json::json!({ "checkpoint": s.enc.info.file, "head": s.head.as_ref().map(|_| &s.head_file) })),
        protocol: f.protocol,
        attack: a.attack,
        config: cfg,
        clean: clean_scores.finish()?,
        adversarial: adv_scores.finish()?,
        mean_objective: objective_sum / prep.request.indices.len() as f64,
        sanity: sanity_all,
        curve: curve.finish()?,
        also: cross.finish(&prep)?,
        per_sample,
        saved,
    };
    Ok((report, spec))
}

fn print(a: &AttackArgs, report: &Report, spec: &AttackSpec) -> Result<()> {
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let step = if a.attack.method() == robust_ssl::attacks::spec::Method::Apgd {
            "from 2ε, adaptive".to_string()
        } else {
            format!("{:.5}", spec.step_size)
        };
        println!(
            "{} attack ({}, ε {:.5}, step {step}, {} steps, {} restart(s)) on {} with {}",
            a.attack,
            a.norm,
            spec.eps,
            spec.steps,
            a.restarts.max(1),
            report.dataset,
            report.head
        );
        println!("  clean:       {}", super::eval::one_line(&report.clean.head));
        println!("  adversarial: {}", super::eval::one_line(&report.adversarial.head));
        for (step, m) in report.curve.iter().enumerate() {
            println!("  step {step:>3}:    {}", super::eval::one_line(m));
        }
        println!(
            "  baseline:    {} ({})",
            super::eval::one_line(&report.clean.baseline),
            super::eval::baseline_name(&report.clean.baseline_kind)
        );
        for h in &report.also {
            println!("  also {} on {}:", h.head, h.dataset);
            println!("    clean:       {}", super::eval::one_line(&h.clean.head));
            println!("    adversarial: {}", super::eval::one_line(&h.adversarial.head));
        }
        println!(
            "  objective {:.5} on average; largest ‖δ‖/ε {:.4}; pixels in [{:.4}, {:.4}]",
            report.mean_objective, report.sanity.max_norm_over_eps, report.sanity.min_pixel, report.sanity.max_pixel
        );
        for p in &report.saved {
            println!("  adversarial images: {}", p.display());
        }
    }
    Ok(())
}

/// A transfer attack's surrogate encoder and, for a task attack, its head.
struct Surrogate {
    enc: robust_ssl::encoder::Encoder,
    head: Option<TrainedHead>,
    head_file: String,
}

impl Surrogate {
    /// The surrogate of `--source-checkpoint` (on `target`'s device), checked against the attack.
    fn open(a: &AttackArgs, target: &robust_ssl::encoder::Encoder) -> Result<Option<Surrogate>> {
        let Some(path) = &a.source_checkpoint else { return Ok(None) };
        let opts =
            robust_ssl::encoder::LoadOptions { heads: a.source_num_heads, device: target.vit.device().clone(), ..Default::default() };
        let enc = robust_ssl::encoder::Encoder::load(path, &opts)?;
        let head_file = a.source_head.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let head = match &a.source_head {
            Some(p) => {
                let head = TrainedHead::load_for(p, a.task, &Device::Cpu)?;
                check_features(&head.meta, enc.config().embed_dim, &head_file)?;
                Some(head)
            }
            None => None,
        };
        match (a.attack, &head) {
            (kind, Some(_)) if kind.is_embed() => {
                bail!("--source-head is for task attacks: a transferred EmbedAttack uses the source encoder's own embedding")
            }
            (kind, None) if kind.is_embed() => {}
            (_, Some(_)) => {}
            (kind, None) => bail!(
                "--attack {kind} crafted on {} maximises the loss of a head on that encoder: give it with --source-head \
                 (a {} head trained on --source-checkpoint)",
                path.display(),
                a.task
            ),
        }
        Ok(Some(Surrogate { enc, head, head_file }))
    }
}

/// Appends a batch to the --save-adversarial arrays.
fn save_arrays(w: &mut ArrayWriter, ids: &[usize], clean: &Tensor, adv: &Tensor, targets: &Targets) -> Result<()> {
    let adv = adv.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?;
    let clean = clean.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?;
    let row = adv.dims()[1..].to_vec();
    w.append_f32("images", &row, &adv.flatten_all()?.to_vec1::<f32>()?)?;
    w.append_f32("delta", &row, &(&adv - &clean)?.flatten_all()?.to_vec1::<f32>()?)?;
    match targets {
        Targets::Class(l) => w.append_i64("labels", &[], &l.iter().map(|&v| i64::from(v)).collect::<Vec<_>>())?,
        Targets::Segmentation { labels, height, width } => {
            w.append_i64("labels", &[*height, *width], &labels.iter().map(|&v| i64::from(v)).collect::<Vec<_>>())?
        }
        Targets::Depth { metres, height, width } => w.append_f32("labels", &[*height, *width], metres)?,
        Targets::None => bail!("--save-adversarial: the dataset has no labels to save"),
    }
    w.append_i64("indices", &[], &ids.iter().map(|&i| i as i64).collect::<Vec<_>>())
}

/// Writes up to `budget` strips for this batch; returns how many.
#[allow(clippy::too_many_arguments)]
fn save_examples(
    dir: &std::path::Path,
    attack: AttackKind,
    ids: &[usize],
    clean: &Tensor,
    adv: &Tensor,
    outs: (&Tensor, &Tensor),
    targets: &Targets,
    eps: f64,
    budget: usize,
) -> Result<usize> {
    let n = ids.len().min(budget);
    for (k, id) in ids.iter().take(n).enumerate() {
        let (suffix, png) = attack_strip(k, clean, adv, outs, targets, eps)?;
        robust_ssl::atomic::write(&dir.join(format!("{id:05}-{attack}{suffix}.png")), &png)?;
    }
    Ok(n)
}
