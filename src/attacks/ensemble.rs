//! Attacks that run as several, each on the points the ones before left robust, keeping per
//! sample the first adversarial point found — AutoAttack's `run_standard_evaluation`: a sample
//! the clean model misclassifies is never attacked (it is no robust sample), and one that a
//! component misclassifies leaves the ensemble with that point.
//!
//! - APGD-T (`apgd-t`): APGD on the targeted DLR loss at each of the 9 classes the clean logits
//!   rank after the top one, in that order (`APGDAttack_targeted.perturb`).
//! - FAB-T (`fab-t`): the minimum-norm FAB at the same 9 targets in the same order
//!   (`FABAttack.perturb`, targeted); a point counts where it lies within ε (`super::fab`).
//! - Square (`square`): the gradient-free search alone (`super::square`).
//! - AutoAttack (`autoattack`), its standard version: APGD-CE, APGD-T, FAB-T, Square, each with
//!   AutoAttack's settings (`steps` iterations, 100 by default, for the first three; `queries`
//!   for Square, 5,000). Where Square breaks a sample the gradient attacks left robust, the
//!   sanity report counts it: possible gradient masking.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use super::dlr::{ranked, Dlr};
use super::engine::attack;
use super::objective::rows;
use super::pgd_ce::CrossEntropy;
use super::problem::{Outcome, Sanity};
use super::spec::{AttackConfig, AttackKind, Method};
use crate::encoder::Encoder;
use crate::heads::head::{Head, TrainedHead};
use crate::heads::layers::LinearProbe;

pub use super::spec::TARGET_CLASSES;

/// One attack of an ensemble.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Component {
    ApgdCe,
    ApgdT,
    FabT,
    Square,
}

/// The components of an ensemble kind, in AutoAttack's order.
fn components(kind: AttackKind) -> Result<Vec<Component>> {
    Ok(match kind {
        AttackKind::ApgdT => vec![Component::ApgdT],
        AttackKind::FabT => vec![Component::FabT],
        AttackKind::Square => vec![Component::Square],
        AttackKind::AutoAttack => vec![Component::ApgdCe, Component::ApgdT, Component::FabT, Component::Square],
        k => bail!("internal error: {k} is no ensemble"),
    })
}

/// The ensemble's state over a batch: which samples are still robust and their points so far.
struct Ledger {
    robust: Vec<bool>,
    adversarial: Vec<Tensor>,
    sanity: Sanity,
}

impl Ledger {
    /// Takes a component's outcome on samples `ids`: those it misclassifies (checked on a fresh
    /// forward, as AutoAttack re-predicts) leave with their point. Returns how many it broke.
    fn take(&mut self, ids: &[usize], out: &Outcome, fooled: &[bool]) -> usize {
        self.sanity.merge(&out.sanity);
        let mut broken = 0;
        for (k, &i) in ids.iter().enumerate() {
            if fooled[k] {
                self.robust[i] = false;
                self.adversarial[i] = out.adversarial.get(k).expect("one row per sample");
                broken += 1;
            }
        }
        broken
    }

    fn still_robust(&self) -> Vec<usize> {
        (0..self.robust.len()).filter(|&i| self.robust[i]).collect()
    }
}

/// Runs ensemble `kind` against the linear probe of `trained` on `images` (`[B, 3, H, W]` in
/// [0,1]) with true `labels`, through `enc`, under `cfg` (its threat model, iterations, restarts,
/// seed and Square's queries). The outcome's loss is −margin (z_y − max_{i≠y} z_i) at each
/// returned point (> 0: misclassified); success is a misclassified point.
pub fn run(kind: AttackKind, enc: &Encoder, trained: &TrainedHead, labels: &[u32], images: &Tensor, cfg: &AttackConfig) -> Result<Outcome> {
    let Head::Linear(probe) = &trained.head else { bail!("{} attacks a classifier's linear probe", kind.display_name()) };
    if cfg.window.is_some() || cfg.trace {
        bail!("{} sees whole images at once and records no per-step curve", kind.display_name());
    }
    let parts = components(kind)?;
    let classes = probe.weight.dim(0)?;
    if (parts.contains(&Component::ApgdT) || parts.contains(&Component::FabT)) && classes < TARGET_CLASSES + 1 {
        bail!(
            "{} targets the {TARGET_CLASSES} classes ranked after the top one (AutoAttack's standard): it needs at least {} classes, \
             and this head has {classes}; use apgd-dlr (untargeted) instead",
            kind.display_name(),
            TARGET_CLASSES + 1
        );
    }
    let n = images.dim(0)?;
    let clean = super::square::logits(enc, probe, images)?;
    let predicted = clean.argmax(1)?.to_vec1::<u32>()?;
    let mut ledger = Ledger {
        robust: predicted.iter().zip(labels).map(|(p, l)| p == l).collect(),
        adversarial: (0..n).map(|i| images.get(i)).collect::<candle_core::Result<_>>()?,
        sanity: Sanity::default(),
    };
    let apgd = AttackConfig { method: Method::Apgd, early_stop: true, last_iterate: false, ..*cfg };
    for part in parts {
        let ids = ledger.still_robust();
        if ids.is_empty() {
            break;
        }
        match part {
            Component::ApgdCe => {
                let (sub, ys) = subset(images, labels, &ids)?;
                let out = attack(enc, &CrossEntropy { probe, labels: ys.clone(), scale_logits: false }, &sub, &apgd)?;
                let fooled = fooled(enc, probe, &out.adversarial, &ys)?;
                ledger.take(&ids, &out, &fooled);
            }
            Component::ApgdT | Component::FabT => {
                // Each target on the samples still robust, the targets ranked by the clean logits.
                let ranks: Vec<Vec<usize>> = clean.to_dtype(DType::F32)?.to_vec2::<f32>()?.iter().map(|z| ranked(z)).collect();
                for target in 2..=TARGET_CLASSES + 1 {
                    let ids = ledger.still_robust();
                    if ids.is_empty() {
                        break;
                    }
                    let (sub, ys) = subset(images, labels, &ids)?;
                    let targets: Vec<u32> = ids.iter().map(|&i| ranks[i][target - 1] as u32).collect();
                    let out = if part == Component::ApgdT {
                        let cfg = AttackConfig { seed: crate::rng::stream(cfg.seed, target as u64), ..apgd };
                        attack(enc, &Dlr { probe, labels: ys.clone(), targets: Some(targets) }, &sub, &cfg)?
                    } else {
                        super::fab::run(enc, probe, &sub, &ys, &targets, &cfg.threat, cfg.steps)?
                    };
                    // FAB's point may lie beyond ε (it searches for the nearest): only those within count.
                    let within = |k: usize| part != Component::FabT || out.success[k];
                    let fooled: Vec<bool> =
                        fooled(enc, probe, &out.adversarial, &ys)?.iter().enumerate().map(|(k, f)| *f && within(k)).collect();
                    ledger.take(&ids, &out, &fooled);
                }
            }
            Component::Square => {
                let (sub, ys) = subset(images, labels, &ids)?;
                let out = super::square::attack(enc, probe, &sub, &ys, &cfg.threat, cfg.queries, cfg.seed)?;
                let fooled = fooled(enc, probe, &out.adversarial, &ys)?;
                let broken = ledger.take(&ids, &out, &fooled);
                if kind == AttackKind::AutoAttack {
                    ledger.sanity.square_successes += broken;
                }
            }
        }
    }
    let adversarial = Tensor::stack(&ledger.adversarial, 0)?;
    let final_margins = super::square::margins(&super::square::logits(enc, probe, &adversarial)?, labels)?;
    let mut sanity = ledger.sanity;
    sanity.settings(&cfg.threat, cfg.steps.max(cfg.queries));
    Ok(Outcome {
        adversarial,
        loss: final_margins.iter().map(|m| -m).collect(),
        success: ledger.robust.iter().map(|r| !r).collect(),
        sanity,
    })
}

/// The images and labels of samples `ids`.
fn subset(images: &Tensor, labels: &[u32], ids: &[usize]) -> Result<(Tensor, Vec<u32>)> {
    Ok((rows(images, ids)?, ids.iter().map(|&i| labels[i]).collect()))
}

/// Per image: the probe misclassifies it.
fn fooled(enc: &Encoder, probe: &LinearProbe, images: &Tensor, labels: &[u32]) -> Result<Vec<bool>> {
    let predicted = super::square::logits(enc, probe, images)?.argmax(1)?.to_vec1::<u32>()?;
    Ok(predicted.iter().zip(labels).map(|(p, l)| p != l).collect())
}
