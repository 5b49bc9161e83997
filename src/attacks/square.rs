//! Square (AutoAttack's `square.py`, margin loss, L∞ and L2): a gradient-free random search, the
//! check that a model's robustness is not gradient masking. Under L∞ each sample starts at
//! vertical stripes of ±ε (one sign per channel and column) and each query adds a square of ±2ε
//! (one sign per channel, the square's place and signs shared by the batch, as the reference
//! draws them), projected back into the ball and the image. Under L2 the start is a grid of the
//! reference's centred-rectangle patterns and each query moves the perturbation's mass between
//! two random windows, staying at norm ε. A proposal is kept where the logit margin
//! z_y − max_{i≠y} z_i fell or went ≤ 0. The squares shrink on the reference's schedule
//! (`p_selection`). Only forward passes: no gradient is ever taken.

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

/// The fraction of pixels a square covers at query `it` (`p_selection`; AutoAttack builds its
/// Square with `resc_schedule=False`: the schedule is not rescaled to the query budget).
pub fn p_selection(it: usize) -> f64 {
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

/// AutoAttack's L2 building block (`eta_rectangles`): on a `rows × cols` patch, nested
/// rectangles around the centre, the k-th adding 1/k², scaled to unit L2 norm.
fn eta_rectangles(rows: usize, cols: usize) -> Vec<f64> {
    let mut d = vec![0.0; rows * cols];
    let (xc, yc) = (rows / 2 + 1, cols / 2 + 1);
    let (mut c0, mut c1) = (xc as isize - 1, yc as isize - 1);
    for k in 0..xc.max(yc) {
        let span = 2 * k as isize + 1;
        let (r0, r1) = (c0.max(0) as usize, (c0 + span).min(rows as isize).max(0) as usize);
        let (q0, q1) = (c1.max(0) as usize, (c1 + span).min(cols as isize).max(0) as usize);
        for r in r0..r1 {
            for q in q0..q1 {
                d[r * cols + q] += 1.0 / ((k + 1) * (k + 1)) as f64;
            }
        }
        c0 -= 1;
        c1 -= 1;
    }
    unit(&mut d);
    d
}

fn unit(d: &mut [f64]) {
    let n = d.iter().map(|v| v * v).sum::<f64>().sqrt();
    if n > 0.0 {
        d.iter_mut().for_each(|v| *v /= n);
    }
}

/// AutoAttack's L2 square (`eta`): the upper half `eta_rectangles`, the lower half its negative,
/// at unit L2 norm, transposed with probability ½; `s × s`, row-major.
fn eta(s: usize, rng: &mut SplitMix64) -> Vec<f64> {
    let top = eta_rectangles(s / 2, s);
    let bottom = eta_rectangles(s - s / 2, s);
    let mut d: Vec<f64> = top.into_iter().chain(bottom.into_iter().map(|v| -v)).collect();
    unit(&mut d);
    if rng.uniform(0.0, 1.0) > 0.5 {
        d = (0..s * s).map(|i| d[(i % s) * s + i / s]).collect();
    }
    d
}

/// `x0 + ε·δ/(‖δ‖₂ + 10⁻¹²)`, clipped to [0, 1] (the reference's `normalize`).
fn on_l2_sphere(x0: &[f32], delta: &[f64], eps: f64) -> Vec<f32> {
    let n = delta.iter().map(|v| v * v).sum::<f64>().sqrt() + 1e-12;
    x0.iter().zip(delta).map(|(&x, d)| (x as f64 + d / n * eps).clamp(0.0, 1.0) as f32).collect()
}

/// L∞ start: vertical stripes of ±ε, one sign per sample, channel and column.
fn linf_start(x: &[Vec<f32>], (c, h, w): (usize, usize, usize), eps: f32, rng: &mut SplitMix64) -> Vec<Vec<f32>> {
    let mut best: Vec<Vec<f32>> = x.to_vec();
    for (b, x0) in best.iter_mut().zip(x) {
        for ch in 0..c {
            for col in 0..w {
                let s = sign(rng) * eps;
                for row in 0..h {
                    let i = ch * h * w + row * w + col;
                    b[i] = (x0[i] + s).clamp(0.0, 1.0);
                }
            }
        }
    }
    best
}

/// L2 start: a grid of `eta` squares of side h/5 (one draw each, shared by the batch), each
/// with a random sign per sample and channel, the whole scaled to norm ε.
fn l2_start(x: &[Vec<f32>], (c, h, w): (usize, usize, usize), eps: f64, rng: &mut SplitMix64) -> Vec<Vec<f32>> {
    let s = h / 5;
    let start = (h - s * 5) / 2;
    let mut delta = vec![vec![0f64; c * h * w]; x.len()];
    let mut vh = start;
    for _ in 0..h / s {
        let mut vw = start;
        for _ in 0..w / s {
            let pattern = eta(s, rng);
            for d in delta.iter_mut() {
                for ch in 0..c {
                    let sg = sign(rng) as f64;
                    for r in 0..s {
                        for q in 0..s {
                            if vh + r < h && vw + q < w {
                                d[ch * h * w + (vh + r) * w + vw + q] += pattern[r * s + q] * sg;
                            }
                        }
                    }
                }
            }
            vw += s;
        }
        vh += s;
    }
    x.iter().zip(&delta).map(|(x0, d)| on_l2_sphere(x0, d, eps)).collect()
}

/// One L2 proposal for each sample `fool` (`attack_single_run`, L2): a new `eta` square of side
/// s at one random place (keeping the direction already there), the old perturbation cleared at
/// a second random place, the mass of both windows redistributed so the whole stays at norm ε.
fn l2_candidates(
    x: &[Vec<f32>],
    best: &[Vec<f32>],
    fool: &[usize],
    (c, h, w): (usize, usize, usize),
    p: f64,
    eps: f64,
    rng: &mut SplitMix64,
) -> Vec<Vec<f32>> {
    let mut s = ((p * (c * h * w) as f64 / c as f64).sqrt().round() as usize).max(3);
    if s.is_multiple_of(2) {
        s += 1;
    }
    let s = s.min(h.min(w));
    let mut place = || ((rng.uniform(0.0, 1.0) * (h - s) as f64) as usize, (rng.uniform(0.0, 1.0) * (w - s) as f64) as usize);
    let ((vh, vw), (vh2, vw2)) = (place(), place());
    let pattern = eta(s, rng);
    let inside = |r: usize, q: usize, (a, b): (usize, usize)| (a..a + s).contains(&r) && (b..b + s).contains(&q);
    fool.iter()
        .map(|&i| {
            let mut delta: Vec<f64> = best[i].iter().zip(&x[i]).map(|(&b, &x)| b as f64 - x as f64).collect();
            let image_norm = delta.iter().map(|v| v * v).sum::<f64>().sqrt();
            for ch in 0..c {
                let at = |r: usize, q: usize| ch * h * w + r * w + q;
                let (mut window, mut union) = (0.0, 0.0);
                for r in 0..h {
                    for q in 0..w {
                        let v = delta[at(r, q)] * delta[at(r, q)];
                        if inside(r, q, (vh, vw)) {
                            window += v;
                        }
                        if inside(r, q, (vh, vw)) || inside(r, q, (vh2, vw2)) {
                            union += v;
                        }
                    }
                }
                let (window, union) = (window.sqrt(), union.sqrt());
                let sg = sign(rng) as f64;
                let mut fresh: Vec<f64> =
                    (0..s * s).map(|k| pattern[k] * sg + delta[at(vh + k / s, vw + k % s)] / (1e-12 + window)).collect();
                let n = fresh.iter().map(|v| v * v).sum::<f64>().sqrt();
                let scale = ((eps * eps - image_norm * image_norm).max(0.0) / c as f64 + union * union).sqrt() / (1e-12 + n);
                fresh.iter_mut().for_each(|v| *v *= scale);
                for r in vh2..vh2 + s {
                    for q in vw2..vw2 + s {
                        delta[at(r, q)] = 0.0;
                    }
                }
                for (k, v) in fresh.into_iter().enumerate() {
                    delta[at(vh + k / s, vw + k % s)] = v;
                }
            }
            on_l2_sphere(&x[i], &delta, eps)
        })
        .collect()
}

/// L∞ proposals: a square of ±2ε at one random place (one sign per channel, shared by the
/// batch), projected back into the ball and the image.
fn linf_candidates(
    x: &[Vec<f32>],
    best: &[Vec<f32>],
    fool: &[usize],
    (c, h, w): (usize, usize, usize),
    p: f64,
    eps: f32,
    rng: &mut SplitMix64,
) -> Vec<Vec<f32>> {
    let s = ((p * (c * h * w) as f64 / c as f64).sqrt().round() as usize).max(1).min(h.min(w));
    let vh = (rng.uniform(0.0, 1.0) * (h - s) as f64) as usize;
    let vw = (rng.uniform(0.0, 1.0) * (w - s) as f64) as usize;
    let signs: Vec<f32> = (0..c).map(|_| 2.0 * eps * sign(rng)).collect();
    fool.iter()
        .map(|&i| {
            let mut v = best[i].clone();
            for (ch, &d) in signs.iter().enumerate() {
                for row in vh..vh + s {
                    for col in vw..vw + s {
                        let k = ch * h * w + row * w + col;
                        v[k] = (v[k] + d).clamp(x[i][k] - eps, x[i][k] + eps).clamp(0.0, 1.0);
                    }
                }
            }
            v
        })
        .collect()
}

/// Square under `threat` (L∞ or L2) on `images` with true `labels`, `queries` queries per sample
/// at most, through `enc` and `probe`. The outcome's loss is −margin at the returned point (> 0:
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
    let mut margin_of = |t: &Tensor, ids: &[usize]| -> Result<Vec<f64>> {
        let ys: Vec<u32> = ids.iter().map(|&i| labels[i]).collect();
        margins(&logits(enc, probe, t)?, &ys)
    };
    let found = search(images, threat, queries, seed, Some(0.0), &mut margin_of)?;
    Ok(Outcome {
        adversarial: found.adversarial,
        success: found.score.iter().map(|&m| m <= 0.0).collect(),
        loss: found.score.iter().map(|m| -m).collect(),
        sanity: found.sanity,
    })
}

/// The scores of candidate images (`[m, 3, H, W]`) standing for samples `ids`, one per row.
pub type Scores<'a> = dyn FnMut(&Tensor, &[usize]) -> Result<Vec<f64>> + 'a;

/// What the search found: each sample's best point and its score, and the checks.
pub struct Found {
    pub adversarial: Tensor,
    pub score: Vec<f64>,
    pub sanity: Sanity,
}

/// Square's random search on `images` (`[n, 3, H, W]` in [0,1]) under `threat`, `queries`
/// queries per sample at most, minimising `score` (the scores of a batch of candidate images, the
/// samples they stand for given by index). A sample whose score reached `done_at` (≤) is left
/// alone (the margin ≤ 0 of a misclassified sample); `None`: every query is spent. A proposal is
/// kept where the score fell or reached `done_at`.
pub fn search(images: &Tensor, threat: &ThreatModel, queries: usize, seed: u64, done_at: Option<f64>, score: &mut Scores) -> Result<Found> {
    let (n, c, h, w) = images.dims4()?;
    if threat.norm == Norm::L2 && h.min(w) < 5 {
        bail!("Square's L2 form tiles the image in squares of a fifth of its height: it needs images of at least 5×5 pixels, not {h}×{w}");
    }
    let dims = (c, h, w);
    let x: Vec<Vec<f32>> = images.to_dtype(DType::F32)?.flatten_from(1)?.to_vec2()?;
    let mut rng = SplitMix64::new(seed);
    let mut score_of = |rows: &[&Vec<f32>], ids: &[usize]| -> Result<Vec<f64>> {
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let t = Tensor::from_vec(flat, (rows.len(), c, h, w), images.device())?;
        let s = score(&t, ids)?;
        if s.len() != ids.len() {
            bail!("internal error: {} scores for {} candidates", s.len(), ids.len());
        }
        Ok(s)
    };
    let done = |m: f64| done_at.is_some_and(|d| m <= d);
    let mut best = match threat.norm {
        Norm::Linf => linf_start(&x, dims, threat.eps as f32, &mut rng),
        Norm::L2 => l2_start(&x, dims, threat.eps, &mut rng),
    };
    let all: Vec<usize> = (0..n).collect();
    let mut margin_min = score_of(&best.iter().collect::<Vec<_>>(), &all)?;
    let mut loss_min = margin_min.clone();
    let mut queried = n;
    for it in 0..queries {
        let fool: Vec<usize> = (0..n).filter(|&i| !done(margin_min[i])).collect();
        if fool.is_empty() {
            break;
        }
        let p = p_selection(it);
        let candidates = match threat.norm {
            Norm::Linf => linf_candidates(&x, &best, &fool, dims, p, threat.eps as f32, &mut rng),
            Norm::L2 => l2_candidates(&x, &best, &fool, dims, p, threat.eps, &mut rng),
        };
        let margin = score_of(&candidates.iter().collect::<Vec<_>>(), &fool)?;
        queried += fool.len();
        for ((&i, m), v) in fool.iter().zip(margin).zip(candidates) {
            let improved = m < loss_min[i];
            if improved {
                loss_min[i] = m;
            }
            if improved || done(m) {
                margin_min[i] = m;
                best[i] = v;
            }
        }
    }
    let mut sanity = Sanity::default();
    sanity.settings(threat, queries);
    for (b, x0) in best.iter().zip(&x) {
        let delta: Vec<f32> = b.iter().zip(x0).map(|(a, z)| a - z).collect();
        let norm = threat.norm_of(&delta);
        if norm > threat.eps * (1.0 + 1e-5) + 1e-7 {
            bail!("internal error: Square left the ε-ball (‖δ‖ = {norm}, ε = {})", threat.eps);
        }
        sanity.max_norm_over_eps = sanity.max_norm_over_eps.max(if threat.eps > 0.0 { norm / threat.eps } else { 0.0 });
        for &v in b {
            sanity.min_pixel = sanity.min_pixel.min(v as f64);
            sanity.max_pixel = sanity.max_pixel.max(v as f64);
        }
    }
    sanity.queries = queried;
    let flat: Vec<f32> = best.into_iter().flatten().collect();
    Ok(Found { adversarial: Tensor::from_vec(flat, (n, c, h, w), images.device())?, score: margin_min, sanity })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's schedule as AutoAttack runs it (not rescaled): p_init up to query 10,
    /// halved from 11, a quarter from 51, ..., p_init/64 from 2,001 to 4,000, p_init/128 up to
    /// 6,000 (AutoAttack's 5,000 queries end there), p_init/512 past 8,000.
    #[test]
    fn the_square_schedule_is_the_references() {
        assert_eq!(p_selection(0), 0.8);
        assert_eq!(p_selection(10), 0.8);
        assert_eq!(p_selection(11), 0.4);
        assert_eq!(p_selection(51), 0.8 / 4.0);
        assert_eq!(p_selection(4000), 0.8 / 64.0);
        assert_eq!(p_selection(4999), 0.8 / 128.0);
        assert_eq!(p_selection(8001), 0.8 / 512.0);
    }

    /// Margins by hand: logits (1, 3, 2) for class 1 → 3 − 2 = 1; for class 0 → 1 − 3 = −2.
    #[test]
    fn margins_by_hand() {
        let z = Tensor::new(&[[1f32, 3.0, 2.0], [1.0, 3.0, 2.0]], &candle_core::Device::Cpu).unwrap();
        assert_eq!(margins(&z, &[1, 0]).unwrap(), vec![1.0, -2.0]);
    }
}
