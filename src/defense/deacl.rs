//! DeACL's objective. Teacher t (frozen), student s (trained), adversarial x' from a 5-step PGD
//! that maximises 1 − cos(s(x'), t(x)) (EmbedAttack with the cosine distance, against the
//! teacher's clean embedding); the student minimises
//! `−cos(s(x), t(x)) − k·cos(s(x'), s(x))`, averaged over the batch (k = 2 in the reference).

use anyhow::Result;
use candle_core::{Tensor, D};

use super::run::{MiniBatch, Recipe};
use super::student::Student;
use crate::attacks::embed::{Distance, EmbedAttack, EmbedTarget};
use crate::attacks::engine::{attack, AttackConfig};
use crate::encoder::{Encoder, Tokens};

/// Per-sample cosine similarity of two embeddings: of the CLS tokens, of the patch tokens
/// (averaged over tokens), or their sum.
pub fn similarity(a: &Tokens, b: &Tokens, which: EmbedTarget) -> Result<Tensor> {
    let cos = |x: &Tensor, y: &Tensor| -> Result<Tensor> {
        let dot = (x * y)?.sum(D::Minus1)?;
        let norms = (x.sqr()?.sum(D::Minus1)?.sqrt()? * y.sqr()?.sum(D::Minus1)?.sqrt()?)?;
        let c = (dot / (norms + 1e-12)?)?;
        Ok(if c.rank() == 2 { c.mean(1)? } else { c })
    };
    Ok(match which {
        EmbedTarget::Cls => cos(&a.cls, &b.cls)?,
        EmbedTarget::Patch => cos(&a.patch, &b.patch)?,
        EmbedTarget::Both => (cos(&a.cls, &b.cls)? + cos(&a.patch, &b.patch)?)?,
        other => anyhow::bail!("fine-tuning compares the cls, patch or both embeddings, not '{other}'"),
    })
}

/// The DeACL loss of one batch and its two similarities (batch means).
pub fn deacl_loss(s_clean: &Tokens, t_clean: &Tokens, s_adv: &Tokens, k: f64, which: EmbedTarget) -> Result<(Tensor, [f64; 2])> {
    let fidelity = similarity(s_clean, t_clean, which)?.mean_all()?;
    let robustness = similarity(s_adv, s_clean, which)?.mean_all()?;
    let loss = (fidelity.neg()? - (&robustness * k)?)?;
    let parts = [
        fidelity.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?,
        robustness.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?,
    ];
    Ok((loss, parts))
}

/// Student tokens of `clean` and `adversarial` from one forward pass over both.
pub fn student_pair(student: &Student, clean: &Tensor, adversarial: &Tensor) -> Result<(Tokens, Tokens)> {
    let n = clean.dim(0)?;
    let both = student.forward(&Tensor::cat(&[clean, adversarial], 0)?)?;
    let part = |start| -> Result<Tokens> { Ok(both.rows(start, n)?) };
    Ok((part(0)?, part(n)?))
}

pub struct Deacl {
    pub k: f64,
    /// Which embedding the attack and the loss compare.
    pub embedding: EmbedTarget,
    /// The inner attack (the reference: L∞, ε 8/255, step 2/255, 5 steps, random start, the
    /// last iterate kept).
    pub inner: AttackConfig,
}

impl Recipe for Deacl {
    fn name(&self) -> &'static str {
        "deacl"
    }

    fn parts(&self) -> Vec<String> {
        vec!["cos_student_teacher".into(), "cos_adversarial_clean".into()]
    }

    fn loss(&self, student: &Student, teacher: &Encoder, batch: &MiniBatch, step: u64) -> Result<(Tensor, Vec<f64>)> {
        // The teacher's tokens that the attack and the loss compare, and no others.
        let t_clean = teacher.forward_reading(&batch.images, self.embedding.outputs())?;
        let objective = EmbedAttack::new(&t_clean, self.embedding, Distance::Cosine)?;
        let cfg = AttackConfig { seed: crate::rng::stream(self.inner.seed, step), ..self.inner };
        let adv = attack(&student.snapshot()?, &objective, &batch.images, &cfg)?.adversarial;
        let (s_clean, s_adv) = student_pair(student, &batch.images, &adv)?;
        let (loss, parts) = deacl_loss(&s_clean, &t_clean, &s_adv, self.k, self.embedding)?;
        Ok((loss, parts.to_vec()))
    }
}
