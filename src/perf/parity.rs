//! Figures two devices (or two builds) must agree on, from the same seeded inputs: a random
//! projection of the encoder's tokens, the pixel gradient of that projection, and the per-sample
//! losses an attack ends with. `bench --parity` prints them; `tools/gpu_check.sh` compares the
//! CUDA binary's figures with its own CPU path's.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::encoder::Encoder;
use crate::rng::SplitMix64;

#[derive(Debug, Serialize)]
pub struct Parity {
    pub device: String,
    pub batch: usize,
    pub size: usize,
    /// Σ cls·P_cls + Σ patch·P_patch for fixed random P.
    pub projection: f64,
    /// ‖∂projection/∂pixels‖₂ and the gradient's own projection onto a fixed random direction.
    pub gradient_norm: f64,
    pub gradient_projection: f64,
    /// The study's PGD (EmbedAttack on CLS and patch tokens, L∞ 8/255, step 2/255, seed 0) after
    /// `attack_steps` steps: each sample's loss at the chosen point.
    pub attack_steps: usize,
    pub attack_losses: Vec<f64>,
}

/// `n` values from `seed`, uniform in `[lo, hi)`, as a host tensor of `shape`.
fn seeded(seed: u64, shape: &[usize], lo: f64, hi: f64) -> Result<Tensor> {
    let mut rng = SplitMix64::new(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.uniform(lo, hi) as f32).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

pub fn parity(enc: &Encoder, batch: usize, size: usize, attack_steps: usize) -> Result<Parity> {
    use crate::attacks::embed::{Distance, EmbedAttack, EmbedTarget};
    let dev = enc.vit.device();
    let c = enc.config();
    let (d, n) = (c.embed_dim, (size / c.patch_size).pow(2));
    let x = seeded(1, &[batch, 3, size, size], 0.0, 1.0)?;
    let pc = seeded(2, &[batch, d], -1.0, 1.0)?.to_device(dev)?;
    let pp = seeded(3, &[batch, n, d], -1.0, 1.0)?.to_device(dev)?;
    let direction = seeded(4, &[batch, 3, size, size], -1.0, 1.0)?;
    let (projection, g) = super::input_gradient(enc, &x.to_device(dev)?, &pc, &pp)?;
    let g = g.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let gradient_norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    let gradient_projection = (g * direction.to_dtype(DType::F64)?)?.sum_all()?.to_scalar::<f64>()?;
    let clean = crate::heads::sliding::tokens_of(enc, &x, None)?;
    let objective = EmbedAttack::new(&clean, EmbedTarget::Both, Distance::Mse)?;
    let out = crate::attacks::engine::attack(enc, &objective, &x, &super::study_pgd(attack_steps))?;
    Ok(Parity {
        device: crate::device::describe(dev),
        batch,
        size,
        projection,
        gradient_norm,
        gradient_projection,
        attack_steps,
        attack_losses: out.loss,
    })
}
