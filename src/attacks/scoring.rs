//! One attacked batch, scored: the perturbations of a batch of images under one attack setting
//! (EmbedAttack, or the task attack of one of the heads), then the clean and adversarial scores
//! of those images on every head that reads them, each against its own labels. The `attack`
//! command, the experiment runner and multi-perturbation training all attack through
//! [`attack_batch`]; it is where *threat model × objective over normalize → encoder → head*
//! meets the heads that score it.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use super::embed::{Distance, EmbedAttack, EmbedTarget};
use super::engine::{attack_observed, AttackConfig, Outcome};
use super::objective::Objective;
use super::spec::{AttackKind, AttackSpec, LossOptions};
use crate::data::transform::{load_batch, load_images_only, Transform};
use crate::data::Dataset;
use crate::encoder::{Encoder, Tokens};
use crate::features::{targets_of, Batch, Targets};
use crate::heads::evaluate::{Metrics, ScoreState, Scorer};
use crate::heads::head::TrainedHead;
use crate::heads::sample_score::SampleScore;
use crate::heads::sliding::{dense_forward, tokens_of, Tiling};
use crate::heads::trainer::target_size;

/// A head that scores the batch, with its labels of these images and its name for messages.
pub struct ScoredHead<'a> {
    pub head: &'a TrainedHead,
    pub targets: &'a Targets,
    pub name: &'a str,
}

/// What the attack maximises.
#[derive(Clone, Copy)]
pub enum Aim<'a> {
    /// EmbedAttack: the distance of the tokens to `reference` (`None`: the attacked encoder's own
    /// clean tokens of the images).
    Embed { reference: Option<&'a Tokens>, target: EmbedTarget, distance: Distance },
    /// The loss `kind` maximises against scored head `index` and its labels, computed as `loss`
    /// says.
    Head { index: usize, kind: AttackKind, loss: LossOptions },
}

impl Aim<'_> {
    /// The aim of attack setting `spec`: EmbedAttack against the attacked encoder's own clean
    /// tokens, or the loss of scored head `head`.
    pub fn of(spec: &AttackSpec, head: usize) -> Aim<'static> {
        match spec.kind {
            k if k.is_embed() => Aim::Embed { reference: None, target: spec.embed_target, distance: spec.embed_distance },
            kind => Aim::Head { index: head, kind, loss: spec.loss() },
        }
    }
}

/// EmbedAttack's `task` target resolved against the scored heads, which must then share a task.
fn resolve_target(target: EmbedTarget, heads: &[ScoredHead]) -> Result<EmbedTarget> {
    if target != EmbedTarget::Task {
        return Ok(target);
    }
    let Some(first) = heads.first() else { bail!("EmbedAttack's target 'task' needs the attacked task's head") };
    let task = first.head.meta.task;
    if let Some(other) = heads.iter().find(|h| h.head.meta.task != task) {
        bail!(
            "EmbedAttack's target 'task' is one embedding per task, but this perturbation is scored on a {task} and a {} head: \
             state one target (cls, patch, patch-prenorm, both) for a shared perturbation",
            other.head.meta.task
        );
    }
    Ok(target.for_task(task))
}

/// How one head scored the batch: metric counts and outputs, clean and adversarial.
pub struct HeadScores {
    pub clean: ScoreState,
    pub adversarial: ScoreState,
    /// With a traced attack: the scores of every iterate (step 0 = the starting point).
    pub curve: Vec<ScoreState>,
    pub clean_output: Tensor,
    pub adversarial_output: Tensor,
    /// Each image's own score under the attack, in batch order (for the worst case over attacks;
    /// a classifier's is robust accuracy's: right on the clean image and under the attack).
    pub samples: Vec<SampleScore>,
    /// Each image's own score on its clean input, in batch order.
    pub clean_samples: Vec<SampleScore>,
}

/// A per-step curve summed over batches: a scorer per step (step 0 = the starting point).
pub struct Curve<'a> {
    head: &'a TrainedHead,
    name: &'a str,
    steps: Vec<Scorer<'a>>,
}

impl<'a> Curve<'a> {
    pub fn new(head: &'a TrainedHead, name: &'a str) -> Curve<'a> {
        Curve { head, name, steps: Vec::new() }
    }

    /// Adds one batch's scores of every step.
    pub fn add(&mut self, states: &[ScoreState]) -> Result<()> {
        while self.steps.len() < states.len() {
            self.steps.push(Scorer::new(self.head, self.name)?);
        }
        for (scorer, state) in self.steps.iter_mut().zip(states) {
            scorer.merge(state)?;
        }
        Ok(())
    }

    /// The summed scores of every step (to store a batch's).
    pub fn states(&self) -> Vec<ScoreState> {
        self.steps.iter().map(|s| s.state().clone()).collect()
    }

    /// The head's metrics after every step; empty when nothing was traced.
    pub fn finish(self) -> Result<Vec<Metrics>> {
        self.steps.into_iter().map(|s| Ok(s.finish()?.head)).collect()
    }
}

/// The attack's outcome and, when scored, every head's scores in the order given.
pub struct AttackedBatch {
    pub outcome: Outcome,
    pub heads: Vec<HeadScores>,
}

/// Where a perturbation is crafted: an encoder and the heads a task attack's aim indexes — the
/// scored ones, or, for a transfer attack, a surrogate encoder (a public backbone) with its own
/// heads of the same images.
#[derive(Clone, Copy)]
pub struct Crafter<'a> {
    pub enc: &'a Encoder,
    pub heads: &'a [ScoredHead<'a>],
}

/// Attacks `images` (`[B, 3, H, W]` in [0,1]) through `enc` for `aim` under `cfg`; with `score`,
/// scores the clean and the adversarial images on every head of `heads`.
pub fn attack_batch(
    enc: &Encoder,
    images: &Tensor,
    aim: Aim,
    heads: &[ScoredHead],
    cfg: &AttackConfig,
    score: bool,
) -> Result<AttackedBatch> {
    attack_batch_from(Crafter { enc, heads }, enc, images, aim, heads, cfg, score)
}

/// [`attack_batch`] with the perturbation crafted by `crafter` (EmbedAttack on its encoder's own
/// embedding, or the loss of one of its heads) and scored through `enc` on `heads`: a transfer
/// attack when the encoders differ.
pub fn attack_batch_from(
    crafter: Crafter,
    enc: &Encoder,
    images: &Tensor,
    aim: Aim,
    heads: &[ScoredHead],
    cfg: &AttackConfig,
    score: bool,
) -> Result<AttackedBatch> {
    let own_reference = matches!(aim, Aim::Embed { reference: None, .. });
    let (_, _, h, w) = images.dims4()?;
    // What is attacked is what is scored: the same windows (or the one whole view) for both.
    let windows = cfg.window.map(|win| Tiling::new(h, w, win, enc.config().patch_size)).transpose()?;
    let windows = windows.as_ref();
    let same = std::ptr::eq(crafter.enc, enc);
    let clean = if score || (own_reference && same) { Some(tokens_of(enc, images, windows)?) } else { None };
    let crafter_windows = cfg.window.map(|win| Tiling::new(h, w, win, crafter.enc.config().patch_size)).transpose()?;
    let crafter_clean = if own_reference && !same { Some(tokens_of(crafter.enc, images, crafter_windows.as_ref())?) } else { None };
    // One objective for the engine, or an ensemble run on the points still robust (AutoAttack's way).
    let objective: Result<Box<dyn Objective>, (AttackKind, &ScoredHead)> = match aim {
        Aim::Embed { reference, target, distance } => {
            let reference = reference.or(crafter_clean.as_ref()).or(clean.as_ref()).expect("clean tokens computed for EmbedAttack");
            Ok(Box::new(EmbedAttack::new(reference, resolve_target(target, heads)?, distance)?))
        }
        Aim::Head { index, kind, loss } => {
            let Some(h) = crafter.heads.get(index) else {
                bail!("internal error: the attacked head {index} is not among the {} given", crafter.heads.len())
            };
            if kind.is_ensemble() || kind.is_dense_ensemble() {
                Err((kind, h))
            } else {
                Ok(kind.objective(h.head, h.targets, loss)?)
            }
        }
    };
    // AutoAttack's check for a randomised model: a second pass of the same clean images.
    let randomized = match clean.as_ref().filter(|_| score) {
        Some(tokens) => super::problem::passes_differ(tokens, &tokens_of(enc, images, windows)?)?,
        None => false,
    };
    let n = images.dim(0)?;
    // How head `h` scores images whose tokens are `tokens`: clean, or attacked (a classifier's
    // robust accuracy counts a sample only where its clean output was right too).
    let score_on = |h: &ScoredHead, tokens: &Tokens, clean_output: Option<&Tensor>| -> Result<(ScoreState, Tensor)> {
        let batch = Batch::read(tokens, h.head.meta.reads())?.to_device(&Device::Cpu)?;
        let out = dense_forward(&h.head.head, &batch, target_size(h.targets), windows)?;
        let mut scorer = Scorer::new(h.head, h.name)?;
        match clean_output {
            Some(c) => scorer.add_robust(&out, c, h.targets, n)?,
            None => scorer.add(&out, h.targets, n)?,
        }
        Ok((scorer.state().clone(), out))
    };
    // The clean scores first: the attacked ones (and every step of a curve) are counted against them.
    let clean_scores = match clean.as_ref().filter(|_| score) {
        Some(tokens) => heads.iter().map(|h| score_on(h, tokens, None)).collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    // Per-step curves: every iterate scored on every head (one more forward pass per step).
    let mut curves: Vec<Vec<ScoreState>> = vec![Vec::new(); heads.len()];
    let mut observe = |_step: usize, current: &Tensor| -> Result<()> {
        if !score {
            return Ok(());
        }
        let tokens = tokens_of(enc, current, windows)?;
        for ((h, curve), (_, clean_output)) in heads.iter().zip(curves.iter_mut()).zip(&clean_scores) {
            curve.push(score_on(h, &tokens, Some(clean_output))?.0);
        }
        Ok(())
    };
    let mut outcome = match &objective {
        Ok(objective) => attack_observed(crafter.enc, objective.as_ref(), images, cfg, &mut observe)?,
        Err((kind, h)) if kind.is_dense_ensemble() => super::dense_ensemble::run(*kind, crafter.enc, h.head, h.targets, images, cfg)?,
        Err((AttackKind::Square, h)) if !matches!(h.targets, Targets::Class(_)) => {
            super::square_dense::run(crafter.enc, h.head, h.targets, images, cfg)?
        }
        Err((kind, h)) => {
            let Targets::Class(labels) = h.targets else { bail!("{} attacks a classifier", kind.display_name()) };
            super::ensemble::run(*kind, crafter.enc, h.head, labels, images, cfg)?
        }
    };
    outcome.sanity.randomized += usize::from(randomized);
    if !score {
        return Ok(AttackedBatch { outcome, heads: Vec::new() });
    }
    let adversarial = tokens_of(enc, &outcome.adversarial, windows)?;
    let mut scored = Vec::with_capacity(heads.len());
    for ((h, curve), (c, clean_output)) in heads.iter().zip(curves).zip(clean_scores) {
        if h.head.meta.task != crate::heads::head::Task::Depth {
            outcome.sanity.probability_outputs += super::problem::probability_rows(&clean_output)?;
        }
        let (a, adversarial_output) = score_on(h, &adversarial, Some(&clean_output))?;
        let samples = SampleScore::of_batch(h.head, &adversarial_output, Some(&clean_output), h.targets, h.name)?;
        let clean_samples = SampleScore::of_batch(h.head, &clean_output, None, h.targets, h.name)?;
        scored.push(HeadScores { clean: c, adversarial: a, curve, clean_output, adversarial_output, samples, clean_samples });
    }
    Ok(AttackedBatch { outcome, heads: scored })
}

/// The targets of samples `ids` of `ds` (after `transforms`; with `whole_images`, the images'
/// only, the labels kept at their own size as windows score them), after checking that they are
/// the very `images` attacked (taken from the dataset `attacked`): cross-task scoring needs the
/// same pixels.
pub fn labels_of_same_images(
    ds: &dyn Dataset,
    ids: &[usize],
    transforms: &[Transform],
    images: &Tensor,
    attacked: &str,
    whole_images: bool,
) -> Result<Targets> {
    let samples = if whole_images { load_images_only(ds, ids, transforms)? } else { load_batch(ds, ids, transforms)? };
    for (k, s) in samples.iter().enumerate() {
        let image = images.get(k)?;
        let same = s.image.dims() == image.dims() && s.image.flatten_all()?.to_vec1::<f32>()? == image.flatten_all()?.to_vec1::<f32>()?;
        if !same {
            bail!(
                "{}: image {} differs from image {} of {attacked}; cross-task scoring needs the same images",
                ds.describe(),
                ids[k],
                ids[k]
            );
        }
    }
    targets_of(ds, ids, samples)
}
