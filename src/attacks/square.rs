//! Square (AutoAttack's `square.py`, L∞, margin loss): a gradient-free random search, the check
//! that a model's robustness is not gradient masking. Each sample starts at vertical stripes of
//! ±ε (one sign per channel and column); each query adds a square of ±2ε (one sign per channel,
//! the square's place and signs shared by the batch, as the reference draws them), projected back
//! into the ball and the image, and keeps it where the logit margin z_y − max_{i≠y} z_i fell or
//! went ≤ 0. The squares shrink on the reference's schedule (`p_selection`, rescaled to the
//! query budget). Only forward passes: no gradient is ever taken.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use super::problem::{Outcome, Sanity};
use super::threat::{Norm, ThreatModel};
use crate::encoder::Encoder;
use crate::heads::layers::LinearProbe;
use crate::rng::SplitMix64;

/// AutoAttack's initial fraction of pixels a square covers.
pub const P_INIT: f64 = 0.8;

/// The logits `[n, K]` of `images` (`[n, 3, H, W]` in [0,1]) through the encoder and the probe.
pub fn logits(enc: &Encoder, probe: &LinearProbe, images: &Tensor) -> Result<Tensor> {
    let tokens = enc.forward(images)?;
    let device = probe.weight.device();
    let features = probe.pooling.features(&tokens.cls.to_device(device)?, &tokens.patch.to_device(device)?)?;
    probe.forward(&features.to_dtype(probe.weight.dtype())?)
}

/// Per row of `logits`: z_y − max_{i≠y} z_i (≤ 0: misclassified, or a tie).
pub fn margins(logits: &Tensor, labels: &[u32]) -> Result<Vec<f64>> {
    let rows = logits.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    if rows.len() != labels.len() {
        bail!("{} labels for {} samples", labels.len(), rows.len());
    }
    Ok(rows
        .iter()
        .zip(labels)
        .map(|(z, &y)| {
            let others = z.iter().enumerate().filter(|&(k, _)| k != y as usize).map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max);
            z[y as usize] - others
        })
        .collect())
}

/// The fraction of pixels a square covers at query `it` of `queries` (`p_selection`, with the
/// schedule rescaled to 10,000 queries as the reference's `resc_schedule`).
pub fn p_selection(it: usize, queries: usize) -> f64 {
    let it = (it as f64 / queries as f64 * 10000.0) as usize;
    let div = match it {
        0..=10 => 1.0,
        11..=50 => 2.0,
        51..=200 => 4.0,
        201..=500 => 8.0,
        501..=1000 => 16.0,
        1001..=2000 => 32.0,
        2001..=4000 => 64.0,
        4001..=6000 => 128.0,
        6001..=8000 => 256.0,
        _ => 512.0,
    };
    P_INIT / div
}

/// ±1 with probability ½ each (the reference's `sign(2·rand − 1)`).
fn sign(rng: &mut SplitMix64) -> f32 {
    if rng.uniform(-1.0, 1.0) >= 0.0 {
        1.0
    } else {
        -1.0
    }
}

/// Square under `threat` (L∞) on `images` with true `labels`, `queries` queries per sample at
/// most, through `enc` and `probe`. The outcome's loss is −margin at the returned point (> 0:
/// misclassified); success is a margin ≤ 0.
pub fn attack(
    enc: &Encoder,
    probe: &LinearProbe,
    images: &Tensor,
    labels: &[u32],
    threat: &ThreatModel,
    queries: usize,
    seed: u64,
) -> Result<Outcome> {
    if threat.norm != Norm::Linf {
        bail!("Square is implemented for L∞ only so far; its L2 form (AutoAttack's) is not available yet");
    }
    let (n, c, h, w) = images.dims4()?;
    let per = c * h * w;
    let x: Vec<Vec<f32>> = images.to_dtype(DType::F32)?.flatten_from(1)?.to_vec2()?;
    let eps = threat.eps as f32;
    let mut rng = SplitMix64::new(seed);
    let margin_of = |rows: &[&Vec<f32>], ids: &[usize]| -> Result<Vec<f64>> {
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let t = Tensor::from_vec(flat, (rows.len(), c, h, w), images.device())?;
        let ys: Vec<u32> = ids.iter().map(|&i| labels[i]).collect();
        margins(&logits(enc, probe, &t)?, &ys)
    };
    let clamp = |v: f32, x0: f32| v.clamp(x0 - eps, x0 + eps).clamp(0.0, 1.0);
    // Vertical stripes: one sign per sample, channel and column.
    let mut best: Vec<Vec<f32>> = x.clone();
    for b in best.iter_mut().zip(&x) {
        let (b, x0) = b;
        for ch in 0..c {
            for col in 0..w {
                let s = sign(&mut rng) * eps;
                for row in 0..h {
                    let i = ch * h * w + row * w + col;
                    b[i] = (x0[i] + s).clamp(0.0, 1.0);
                }
            }
        }
    }
    let all: Vec<usize> = (0..n).collect();
    let mut margin_min = margin_of(&best.iter().collect::<Vec<_>>(), &all)?;
    let mut loss_min = margin_min.clone();
    let mut queried = n;
    if !margin_min.iter().all(|&m| m < 0.0) {
        for it in 0..queries {
            let fool: Vec<usize> = (0..n).filter(|&i| margin_min[i] > 0.0).collect();
            if fool.is_empty() {
                break;
            }
            let p = p_selection(it, queries);
            let s = ((p * per as f64 / c as f64).sqrt().round() as usize).max(1).min(h.min(w));
            let vh = (rng.uniform(0.0, 1.0) * (h - s) as f64) as usize;
            let vw = (rng.uniform(0.0, 1.0) * (w - s) as f64) as usize;
            let signs: Vec<f32> = (0..c).map(|_| 2.0 * eps * sign(&mut rng)).collect();
            let candidates: Vec<Vec<f32>> = fool
                .iter()
                .map(|&i| {
                    let mut v = best[i].clone();
                    for (ch, &d) in signs.iter().enumerate() {
                        for row in vh..vh + s {
                            for col in vw..vw + s {
                                let k = ch * h * w + row * w + col;
                                v[k] = clamp(v[k] + d, x[i][k]);
                            }
                        }
                    }
                    v
                })
                .collect();
            let margin = margin_of(&candidates.iter().collect::<Vec<_>>(), &fool)?;
            queried += fool.len();
            for ((&i, m), v) in fool.iter().zip(margin).zip(candidates) {
                let improved = m < loss_min[i];
                if improved {
                    loss_min[i] = m;
                }
                if improved || m <= 0.0 {
                    margin_min[i] = m;
                    best[i] = v;
                }
            }
            if margin_min.iter().all(|&m| m <= 0.0) {
                break;
            }
        }
    }
    let mut sanity = Sanity::default();
    sanity.settings(threat, queries);
    for (b, x0) in best.iter().zip(&x) {
        let norm = b.iter().zip(x0).map(|(a, z)| (a - z).abs()).fold(0f32, f32::max) as f64;
        sanity.max_norm_over_eps = sanity.max_norm_over_eps.max(if threat.eps > 0.0 { norm / threat.eps } else { 0.0 });
        for &v in b {
            sanity.min_pixel = sanity.min_pixel.min(v as f64);
            sanity.max_pixel = sanity.max_pixel.max(v as f64);
        }
    }
    sanity.queries = queried;
    let flat: Vec<f32> = best.into_iter().flatten().collect();
    Ok(Outcome {
        adversarial: Tensor::from_vec(flat, (n, c, h, w), images.device())?,
        loss: margin_min.iter().map(|m| -m).collect(),
        success: margin_min.iter().map(|&m| m <= 0.0).collect(),
        sanity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's schedule at 5,000 queries (rescaled to 10,000): p_init up to query 5,
    /// halved from query 6 (rescaled 12), a quarter at query 100 (rescaled 200), ... and p_init/512 past query 4,000 (rescaled 8,002).
    #[test]
    fn the_square_schedule_is_the_references() {
        assert_eq!(p_selection(0, 5000), 0.8);
        assert_eq!(p_selection(5, 5000), 0.8);
        assert_eq!(p_selection(6, 5000), 0.4);
        assert_eq!(p_selection(100, 5000), 0.8 / 4.0);
        assert_eq!(p_selection(4000, 5000), 0.8 / 256.0);
        assert_eq!(p_selection(4001, 5000), 0.8 / 512.0);
        assert_eq!(p_selection(11, 10000), 0.4);
    }

    /// Margins by hand: logits (1, 3, 2) for class 1 → 3 − 2 = 1; for class 0 → 1 − 3 = −2.
    #[test]
    fn margins_by_hand() {
        let z = Tensor::new(&[[1f32, 3.0, 2.0], [1.0, 3.0, 2.0]], &candle_core::Device::Cpu).unwrap();
        assert_eq!(margins(&z, &[1, 0]).unwrap(), vec![1.0, -2.0]);
    }
}
