//! Multi-perturbation adversarial training, the study's open question: each image gets an
//! EmbedAttack perturbation (against the teacher's clean embedding, as DeACL's) and one task
//! attack per head (PGD, SegPGD or DepthPGD through that frozen head), all on the current student.
//! Per sample and perturbation a, the student pays
//!     ℓ_a = −k·cos(s(x_a), s(x)) + λ·Σ_heads task_loss(h(s(x_a)), y),
//! combined over perturbations as a weighted average or the per-sample worst, plus the fidelity
//! term −cos(s(x), t(x)) that keeps the student close to the teacher on clean images.

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

use super::deacl::similarity;
use super::run::{MiniBatch, Recipe};
use super::student::Student;
use crate::attacks::embed::{Distance, EmbedTarget};
use crate::attacks::engine::AttackConfig;
use crate::attacks::scoring::{attack_batch, Aim, ScoredHead};
use crate::attacks::spec::{AttackKind, LossOptions};
use crate::encoder::{Encoder, Tokens};
use crate::features::{Batch, Targets};
use crate::heads::head::TrainedHead;
use crate::heads::trainer::{forward, loss as task_loss, target_size};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// Σ_a w_a·ℓ_a / Σ_a w_a per sample.
    Average,
    /// max_a ℓ_a per sample (the perturbation that hurts most).
    Worst,
}
crate::choices!(Combine { Average = "average", Worst = "worst" });

pub struct Multi {
    pub heads: Vec<(String, TrainedHead)>,
    pub k: f64,
    /// Weight of the task losses in ℓ_a.
    pub lambda: f64,
    pub embedding: EmbedTarget,
    pub inner: AttackConfig,
    pub combine: Combine,
    /// Weights of the EmbedAttack perturbation and of the task perturbations (average only).
    pub embed_weight: f64,
    pub task_weight: f64,
}

fn rows(t: &Tokens, start: usize, n: usize) -> Result<Tokens> {
    Ok(t.rows(start, n)?)
}

impl Multi {
    /// Per-sample task loss `[n]` of every head on `tokens` (differentiable).
    fn task_losses(&self, tokens: &Tokens, targets: &Targets) -> Result<Tensor> {
        let n = tokens.cls.dim(0)?;
        let dev = tokens.cls.device();
        let mut total = Tensor::zeros(n, tokens.cls.dtype(), dev)?;
        for (_, h) in &self.heads {
            let mut per = Vec::with_capacity(n);
            for i in 0..n {
                let row = rows(tokens, i, 1)?;
                let t = targets.row(i);
                let batch = Batch::from_tokens(&row.cls, &row.patch, row.grid);
                let (out, _) = forward(&h.head, &batch, target_size(&t), false)?;
                per.push(task_loss(h.meta.task, &out, &t, h.meta.range())?.to_dtype(tokens.cls.dtype())?);
            }
            total = (total + Tensor::stack(&per, 0)?)?;
        }
        Ok(total)
    }
}

impl Recipe for Multi {
    fn name(&self) -> &'static str {
        "multi"
    }

    fn parts(&self) -> Vec<String> {
        let mut p = vec!["cos_student_teacher".to_string(), "embed_term".to_string()];
        p.extend(self.heads.iter().map(|(name, _)| format!("task_term:{name}")));
        p
    }

    fn loss(&self, student: &Student, teacher: &Encoder, batch: &MiniBatch, step: u64) -> Result<(Tensor, Vec<f64>)> {
        if self.heads.is_empty() {
            bail!("multi-perturbation training needs at least one task head (--heads)");
        }
        let x = &batch.images;
        let n = x.dim(0)?;
        let t_clean = teacher.forward(x)?;
        let snapshot = student.snapshot()?;
        let seed = crate::rng::stream(self.inner.seed, step);
        // The perturbations: EmbedAttack, then each head's task attack (through that head alone).
        let mut perturbed = vec![x.clone()];
        let embed = Aim::Embed { reference: Some(&t_clean), target: self.embedding, distance: Distance::Cosine };
        perturbed.push(attack_batch(&snapshot, x, embed, &[], &AttackConfig { seed, ..self.inner }, false)?.outcome.adversarial);
        for (i, (name, h)) in self.heads.iter().enumerate() {
            let head = [ScoredHead { head: h, targets: &batch.targets, name }];
            let cfg = AttackConfig { seed: seed.wrapping_add(i as u64 + 1), ..self.inner };
            perturbed.push(
                attack_batch(
                    &snapshot,
                    x,
                    Aim::Head { index: 0, kind: AttackKind::Task, loss: LossOptions::default() },
                    &head,
                    &cfg,
                    false,
                )?
                .outcome
                .adversarial,
            );
        }
        // One student pass over the clean images and every perturbation.
        let all = student.forward(&Tensor::cat(&perturbed, 0)?)?;
        let s_clean = rows(&all, 0, n)?;
        let fidelity = similarity(&s_clean, &t_clean, self.embedding)?;
        let mut terms = Vec::new();
        for a in 1..perturbed.len() {
            let s_a = rows(&all, a * n, n)?;
            let consistency = (similarity(&s_a, &s_clean, self.embedding)? * (-self.k))?;
            let task = (self.task_losses(&s_a, &batch.targets)? * self.lambda)?;
            terms.push((consistency + task)?);
        }
        let stacked = Tensor::stack(&terms, 1)?; // [n, A]
        let combined = match self.combine {
            Combine::Worst => stacked.max(D::Minus1)?,
            Combine::Average => {
                let w: Vec<f64> = (0..terms.len()).map(|a| if a == 0 { self.embed_weight } else { self.task_weight }).collect();
                let sum: f64 = w.iter().sum();
                if sum <= 0.0 {
                    bail!("the perturbation weights sum to {sum}; give --embed-weight or --task-weight a positive value");
                }
                let w = Tensor::from_vec(w.iter().map(|v| v / sum).collect::<Vec<_>>(), (1, terms.len()), x.device())?
                    .to_dtype(stacked.dtype())?;
                stacked.broadcast_mul(&w)?.sum(D::Minus1)?
            }
        };
        let loss = (fidelity.neg()? + combined)?.mean_all()?;
        let scalar = |t: &Tensor| -> Result<f64> { Ok(t.mean_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?) };
        let mut parts = vec![scalar(&fidelity)?];
        for t in &terms {
            parts.push(scalar(t)?);
        }
        Ok((loss, parts))
    }
}
