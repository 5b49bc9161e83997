//! Sample transforms: resize (images bilinear with antialiasing, as torchvision; labels and depth
//! nearest), centre crop, padding to a patch multiple (labels padded with the ignore index, depth
//! with 0 = invalid), seeded shuffling and parallel decoding of a batch.

use anyhow::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;

use super::{Dataset, Sample, Target, IGNORE};
use crate::resize::{apply_separable, interpolate, interpolate_antialias, nearest_indices, Filter};

/// One step of a preprocessing pipeline; `describe` keys feature caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Resize so the shorter side is this many pixels (aspect kept).
    ResizeShort(usize),
    /// Resize to exactly (height, width).
    Resize(usize, usize),
    CenterCrop(usize, usize),
    /// Pad bottom and right up to a multiple of this (the patch size).
    PadToMultiple(usize),
    /// Random (training only, see `super::augment`): a window at a random place.
    RandomCrop(usize, usize),
    /// Random: pad this many zeros on every side, then a window of the original size.
    PadRandomCrop(usize),
    /// Random: a horizontal flip with probability ½.
    HFlip,
    /// Random: with probability ½ a horizontal, vertical or double flip.
    Flips,
}

impl Transform {
    pub fn describe(&self) -> String {
        match self {
            Self::ResizeShort(s) => format!("resize-short{s}"),
            Self::Resize(h, w) => format!("resize{h}x{w}"),
            Self::CenterCrop(h, w) => format!("crop{h}x{w}"),
            Self::PadToMultiple(p) => format!("pad{p}"),
            Self::RandomCrop(h, w) => format!("random-crop{h}x{w}"),
            Self::PadRandomCrop(p) => format!("pad-random-crop{p}"),
            Self::HFlip => "hflip".into(),
            Self::Flips => "flips".into(),
        }
    }

    /// Draws at random (a training augmentation).
    pub fn is_random(&self) -> bool {
        matches!(self, Self::RandomCrop(..) | Self::PadRandomCrop(_) | Self::HFlip | Self::Flips)
    }

    /// Parses a comma-separated list in the [`Transform::describe`] syntax
    /// (`resize-short224,crop224x224,pad14`); the empty string is no transform.
    pub fn parse_list(spec: &str) -> Result<Vec<Self>> {
        spec.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect()
    }

    pub fn apply(&self, s: Sample) -> Result<Sample> {
        let (h, w) = (s.image.dim(1)?, s.image.dim(2)?);
        match *self {
            Self::ResizeShort(short) => {
                let k = short as f64 / h.min(w) as f64;
                resize(s, ((h as f64 * k).round() as usize).max(1), ((w as f64 * k).round() as usize).max(1))
            }
            Self::Resize(oh, ow) => resize(s, oh, ow),
            Self::CenterCrop(ch, cw) => {
                if ch > h || cw > w {
                    bail!("cannot crop {ch}x{cw} from a {h}x{w} image");
                }
                crop(s, (h - ch) / 2, (w - cw) / 2, ch, cw)
            }
            Self::PadToMultiple(p) => pad(s, h.div_ceil(p) * p, w.div_ceil(p) * p),
            Self::RandomCrop(..) | Self::PadRandomCrop(_) | Self::HFlip | Self::Flips => {
                bail!("'{}' is a random training augmentation; it applies only where a training seed is given", self.describe())
            }
        }
    }
}

/// Largest side a transform may produce or pad by (16384: 4x a DINOv2 high-resolution input).
pub const MAX_SIDE: usize = 16384;

impl std::str::FromStr for Transform {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        // Sides in (0, MAX_SIDE]: a typo of a few zeros must not allocate gigabytes.
        let num = |v: &str| v.parse::<usize>().ok().filter(|&n| n > 0 && n <= MAX_SIDE);
        let pair = |v: &str| v.split_once('x').and_then(|(h, w)| Some((num(h)?, num(w)?)));
        let parsed = if s == "hflip" {
            Some(Self::HFlip)
        } else if s == "flips" {
            Some(Self::Flips)
        } else if let Some(v) = s.strip_prefix("random-crop") {
            pair(v).map(|(h, w)| Self::RandomCrop(h, w))
        } else if let Some(v) = s.strip_prefix("pad-random-crop") {
            num(v).map(Self::PadRandomCrop)
        } else if let Some(v) = s.strip_prefix("resize-short") {
            num(v).map(Self::ResizeShort)
        } else if let Some(v) = s.strip_prefix("resize") {
            pair(v).map(|(h, w)| Self::Resize(h, w))
        } else if let Some(v) = s.strip_prefix("crop") {
            pair(v).map(|(h, w)| Self::CenterCrop(h, w))
        } else if let Some(v) = s.strip_prefix("pad") {
            num(v).map(Self::PadToMultiple)
        } else {
            None
        };
        parsed.ok_or_else(|| anyhow::anyhow!("unknown transform '{s}'; expected resize-shortN, resizeHxW, cropHxW, padN, or the training augmentations random-cropHxW, pad-random-cropN, hflip, flips (0 < N <= {MAX_SIDE})"))
    }
}

/// `[3,H,W]` resized with `filter`, antialiased or not, as torch's `F.interpolate` would.
pub fn resize_image(image: &Tensor, oh: usize, ow: usize, filter: Filter, antialias: bool) -> Result<Tensor> {
    let (c, h, w) = image.dims3()?;
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        bail!("cannot resize a {h}x{w} image to {oh}x{ow}: a side is empty");
    }
    let (ry, rx) = if antialias {
        (interpolate_antialias(filter, h, oh), interpolate_antialias(filter, w, ow))
    } else {
        (interpolate(filter, h, oh, h as f64 / oh as f64), interpolate(filter, w, ow, w as f64 / ow as f64))
    };
    let data = image.flatten_all()?.to_vec1::<f32>()?;
    let out = apply_separable(&data, c, (h, w), &ry, &rx);
    Ok(Tensor::from_vec(out, (c, oh, ow), &candle_core::Device::Cpu)?)
}

/// Nearest resize of a row-major map (labels, depth), as torch's `nearest` mode.
pub fn resize_nearest<T: Copy>(data: &[T], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<T> {
    let (iy, ix) = (nearest_indices(h, oh), nearest_indices(w, ow));
    iy.iter().flat_map(|&y| ix.iter().map(move |&x| data[y * w + x])).collect()
}

fn map_target(
    t: Target,
    f: impl Fn(&[u32], usize, usize) -> (Vec<u32>, usize, usize),
    g: impl Fn(&[f32], usize, usize) -> (Vec<f32>, usize, usize),
) -> Target {
    match t {
        Target::Segmentation { labels, height, width } => {
            let (labels, height, width) = f(&labels, height, width);
            Target::Segmentation { labels, height, width }
        }
        Target::Depth { metres, height, width } => {
            let (metres, height, width) = g(&metres, height, width);
            Target::Depth { metres, height, width }
        }
        other => other,
    }
}

fn resize(s: Sample, oh: usize, ow: usize) -> Result<Sample> {
    let image = resize_image(&s.image, oh, ow, Filter::Bilinear, true)?;
    let target = map_target(
        s.target,
        |l, h, w| (resize_nearest(l, (h, w), (oh, ow)), oh, ow),
        |d, h, w| (resize_nearest(d, (h, w), (oh, ow)), oh, ow),
    );
    Ok(Sample { image, target })
}

pub(super) fn crop(s: Sample, top: usize, left: usize, ch: usize, cw: usize) -> Result<Sample> {
    let image = s.image.narrow(1, top, ch)?.narrow(2, left, cw)?.contiguous()?;
    fn cut<T: Copy>(d: &[T], w: usize, top: usize, left: usize, ch: usize, cw: usize) -> Vec<T> {
        (top..top + ch).flat_map(|y| d[y * w + left..y * w + left + cw].iter().copied()).collect()
    }
    let target = map_target(s.target, |l, _, w| (cut(l, w, top, left, ch, cw), ch, cw), |d, _, w| (cut(d, w, top, left, ch, cw), ch, cw));
    Ok(Sample { image, target })
}

fn pad(s: Sample, ph: usize, pw: usize) -> Result<Sample> {
    let (_, h, w) = s.image.dims3()?;
    let image = s.image.pad_with_zeros(1, 0, ph - h)?.pad_with_zeros(2, 0, pw - w)?;
    fn grow<T: Copy>(d: &[T], h: usize, w: usize, ph: usize, pw: usize, fill: T) -> Vec<T> {
        let mut out = vec![fill; ph * pw];
        for y in 0..h {
            out[y * pw..y * pw + w].copy_from_slice(&d[y * w..(y + 1) * w]);
        }
        out
    }
    let target = map_target(s.target, |l, h, w| (grow(l, h, w, ph, pw, IGNORE), ph, pw), |d, h, w| (grow(d, h, w, ph, pw, 0.0), ph, pw));
    Ok(Sample { image, target })
}

/// The image side of the default transforms.
pub const DEFAULT_SIZE: usize = 224;

/// The default transforms for an encoder: shorter side to `size`, centre crop `size`², padded
/// to a multiple of the patch.
pub fn default_transforms(size: usize, patch: usize) -> Vec<Transform> {
    vec![Transform::ResizeShort(size), Transform::CenterCrop(size, size), Transform::PadToMultiple(patch)]
}

/// The side a shorter-side resize of `transforms` gives (the image side of the default and the
/// study's transforms).
pub fn short_side(transforms: &[Transform]) -> Option<usize> {
    transforms.iter().find_map(|t| match t {
        Transform::ResizeShort(s) => Some(*s),
        _ => None,
    })
}

/// Of `transforms`, the resizes only: what whole-image (windowed) evaluation and attacks keep
/// of a head's transforms (crops and padding are the windows' business).
pub fn resizes(transforms: &[Transform]) -> Vec<Transform> {
    transforms.iter().copied().filter(|t| matches!(t, Transform::ResizeShort(_) | Transform::Resize(..))).collect()
}

/// Whether two transform lists give every image the same pixels: equal but for paddings to a
/// patch multiple that add nothing (each after a fixed-size crop or resize that is already a
/// multiple of it), as two encoders of different patches see one 224² crop.
pub fn same_pixels(a: &[Transform], b: &[Transform]) -> bool {
    if a == b {
        return true;
    }
    let unpadded = |ts: &[Transform]| ts.iter().copied().filter(|t| !matches!(t, Transform::PadToMultiple(_))).collect::<Vec<_>>();
    let pads_add_nothing = |ts: &[Transform]| {
        let mut size = None;
        ts.iter().all(|t| match *t {
            Transform::Resize(h, w) | Transform::CenterCrop(h, w) => {
                size = Some((h, w));
                true
            }
            Transform::PadToMultiple(p) => size.is_some_and(|(h, w)| p > 0 && h % p == 0 && w % p == 0),
            _ => {
                size = None;
                true
            }
        })
    };
    unpadded(a) == unpadded(b) && pads_add_nothing(a) && pads_add_nothing(b)
}

/// Decodes the samples at `indices` in parallel, in order, and transforms their images only:
/// targets stay at their own size (whole-image evaluation scores at label resolution).
pub fn load_images_only(ds: &dyn Dataset, indices: &[usize], transforms: &[Transform]) -> Result<Vec<Sample>> {
    indices
        .par_iter()
        .map(|&i| {
            let raw = ds.get(i)?;
            let image = transforms.iter().try_fold(Sample { image: raw.image, target: Target::None }, |s, t| t.apply(s))?.image;
            Ok(Sample { image, target: raw.target })
        })
        .collect()
}

/// Samples `ids` grouped by image size and label size (in order of first appearance): whole
/// images of one size are attacked together.
pub fn by_size(ids: &[usize], samples: Vec<Sample>) -> Vec<(Vec<usize>, Vec<Sample>)> {
    let size = |s: &Sample| {
        let t = match &s.target {
            Target::Segmentation { height, width, .. } | Target::Depth { height, width, .. } => (*height, *width),
            _ => (0, 0),
        };
        (s.image.dims().to_vec(), t)
    };
    let mut groups: Vec<(Vec<usize>, Vec<Sample>)> = Vec::new();
    for (&i, s) in ids.iter().zip(samples) {
        match groups.iter_mut().find(|(_, g)| size(&g[0]) == size(&s)) {
            Some((gi, gs)) => {
                gi.push(i);
                gs.push(s);
            }
            None => groups.push((vec![i], vec![s])),
        }
    }
    groups
}

/// Decodes and transforms the samples at `indices` in parallel, in order. Random transforms are
/// refused here (evaluation, cached features): see `super::augment::load_batch_augmented`.
pub fn load_batch(ds: &dyn Dataset, indices: &[usize], transforms: &[Transform]) -> Result<Vec<Sample>> {
    indices.par_iter().map(|&i| transforms.iter().try_fold(ds.get(i)?, |s, t| t.apply(s))).collect()
}
