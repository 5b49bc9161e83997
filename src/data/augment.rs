//! Random training augmentations, as the study's recipes use them: torchvision's
//! `RandomCrop(size, padding)` + `RandomHorizontalFlip` (classification, DeACL), albumentations'
//! `RandomCrop` + `Flip` (segmentation: horizontal, vertical or both), a horizontal flip (depth).
//! Every draw comes from a generator seeded by (run seed, epoch, sample index), so a resumed run
//! sees the very crops and flips of an uninterrupted one. Targets move with their image.

use anyhow::{bail, Result};

use rayon::prelude::*;

use super::transform::{crop, Transform};
use super::{Dataset, Sample, Target, IGNORE};
use crate::rng::SplitMix64;

/// The generator stream of the augmentations' draws (apart from the shuffle's).
const STREAM: u64 = 0xA06;

/// The seed of epoch `epoch`'s augmentation draws in a run seeded with `seed`, for
/// [`load_batch_augmented`].
pub fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    crate::rng::stream(crate::rng::epoch(seed, epoch), STREAM)
}

/// Uniform integer in `0..=max`.
fn upto(rng: &mut SplitMix64, max: usize) -> usize {
    (rng.next_u64() % (max as u64 + 1)) as usize
}

/// A fair coin.
fn coin(rng: &mut SplitMix64) -> bool {
    rng.next_u64() >> 63 == 1
}

/// A `ch × cw` window at a uniformly drawn place (albumentations `RandomCrop`).
pub fn random_crop(s: Sample, ch: usize, cw: usize, rng: &mut SplitMix64) -> Result<Sample> {
    let (h, w) = (s.image.dim(1)?, s.image.dim(2)?);
    if ch > h || cw > w {
        bail!("cannot crop {ch}x{cw} at random from a {h}x{w} image");
    }
    let (top, left) = (upto(rng, h - ch), upto(rng, w - cw));
    crop(s, top, left, ch, cw)
}

/// torchvision `RandomCrop(size = the image's own, padding = p)`: `p` zeros on every side (labels
/// ignored, depth unmeasured), then a window of the original size at a uniform offset.
pub fn pad_random_crop(s: Sample, p: usize, rng: &mut SplitMix64) -> Result<Sample> {
    let (h, w) = (s.image.dim(1)?, s.image.dim(2)?);
    let image = s.image.pad_with_zeros(1, p, p)?.pad_with_zeros(2, p, p)?;
    fn grow<T: Copy>(d: &[T], h: usize, w: usize, p: usize, fill: T) -> Vec<T> {
        let pw = w + 2 * p;
        let mut out = vec![fill; (h + 2 * p) * pw];
        for y in 0..h {
            out[(y + p) * pw + p..(y + p) * pw + p + w].copy_from_slice(&d[y * w..(y + 1) * w]);
        }
        out
    }
    let target = match s.target {
        Target::Segmentation { labels, height, width } => {
            Target::Segmentation { labels: grow(&labels, height, width, p, IGNORE), height: height + 2 * p, width: width + 2 * p }
        }
        Target::Depth { metres, height, width } => {
            Target::Depth { metres: grow(&metres, height, width, p, 0.0), height: height + 2 * p, width: width + 2 * p }
        }
        other => other,
    };
    let (top, left) = (upto(rng, 2 * p), upto(rng, 2 * p));
    crop(Sample { image, target }, top, left, h, w)
}

/// Mirrors the image and its dense target: left–right and/or top–bottom.
pub fn flip(s: Sample, horizontal: bool, vertical: bool) -> Result<Sample> {
    let mut image = s.image;
    let dev = image.device().clone();
    let reversed = |n: usize| candle_core::Tensor::from_vec((0..n as u32).rev().collect::<Vec<u32>>(), n, &dev);
    if horizontal {
        let idx = reversed(image.dim(2)?)?;
        image = image.index_select(&idx, 2)?;
    }
    if vertical {
        let idx = reversed(image.dim(1)?)?;
        image = image.index_select(&idx, 1)?;
    }
    fn mirror<T: Copy>(d: &[T], h: usize, w: usize, horizontal: bool, vertical: bool) -> Vec<T> {
        (0..h * w)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                let (y, x) = (if vertical { h - 1 - y } else { y }, if horizontal { w - 1 - x } else { x });
                d[y * w + x]
            })
            .collect()
    }
    let target = match s.target {
        Target::Segmentation { labels, height, width } => {
            Target::Segmentation { labels: mirror(&labels, height, width, horizontal, vertical), height, width }
        }
        Target::Depth { metres, height, width } => {
            Target::Depth { metres: mirror(&metres, height, width, horizontal, vertical), height, width }
        }
        other => other,
    };
    Ok(Sample { image, target })
}

/// torchvision `RandomHorizontalFlip(p = 0.5)`.
pub fn random_hflip(s: Sample, rng: &mut SplitMix64) -> Result<Sample> {
    let h = coin(rng);
    flip(s, h, false)
}

/// albumentations `Flip(p = 0.5)`: with probability ½, one of horizontal, vertical or both,
/// equally likely.
pub fn random_flips(s: Sample, rng: &mut SplitMix64) -> Result<Sample> {
    if !coin(rng) {
        return Ok(s);
    }
    match upto(rng, 2) {
        0 => flip(s, true, false),
        1 => flip(s, false, true),
        _ => flip(s, true, true),
    }
}

/// `t` applied with draws from `rng` where it is random; a deterministic one ignores `rng`.
pub fn apply_seeded(t: &Transform, s: Sample, rng: &mut SplitMix64) -> Result<Sample> {
    match *t {
        Transform::RandomCrop(h, w) => random_crop(s, h, w, rng),
        Transform::PadRandomCrop(p) => pad_random_crop(s, p, rng),
        Transform::HFlip => random_hflip(s, rng),
        Transform::Flips => random_flips(s, rng),
        _ => t.apply(s),
    }
}

/// Like `super::transform::load_batch`, drawing the random transforms of sample `i` from a
/// generator seeded by `seed` and `i` (pass a seed that differs per epoch): the same draws on
/// every run and resume.
pub fn load_batch_augmented(ds: &dyn Dataset, indices: &[usize], transforms: &[Transform], seed: u64) -> Result<Vec<Sample>> {
    indices
        .par_iter()
        .map(|&i| {
            let mut rng = SplitMix64::new(crate::rng::stream(seed, i as u64));
            transforms.iter().try_fold(ds.get(i)?, |s, t| apply_seeded(t, s, &mut rng))
        })
        .collect()
}
