//! Encoder features of a dataset as the heads consume them: computed once, stored on disk keyed by
//! encoder + dataset + transform ([`cache`]), or recomputed for every batch as the reference code
//! does ([`Live`]). Both serve mini-batches through the one [`BatchSource`] trait, so a head trains
//! the same way on either and the benchmark compares like with like.

pub mod cache;
mod extract;
mod mapped;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::transform::Transform;
use crate::encoder::Encoder;
pub use extract::{extract, targets_of, Live};
pub use mapped::{CachedFeatures, ChunkShape, MAX_CLASSES};

/// What is kept per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// CLS and the mean of the patch tokens, `[D]` each (classification).
    Pooled,
    /// CLS `[D]` and every patch token `[P, D]` (segmentation, depth).
    Tokens,
    /// The same before the encoder's final norm (DINOv2's depth heads).
    #[serde(rename = "prenorm-tokens")]
    PreNormTokens,
}

/// Where features come from: an encoder, or the transformed pixels themselves (the raw-pixel
/// baseline of a linear probe: `cls` holds the flattened image).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Encoder(&'a Encoder),
    Pixels,
}

/// Targets of a batch, in the order of its samples.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    Class(Vec<u32>),
    /// `n × height × width` labels, 255 ignored.
    Segmentation {
        labels: Vec<u32>,
        height: usize,
        width: usize,
    },
    /// `n × height × width` metres, 0 where unmeasured.
    Depth {
        metres: Vec<f32>,
        height: usize,
        width: usize,
    },
    None,
}

impl Targets {
    /// The targets of sample `i` alone.
    pub fn row(&self, i: usize) -> Targets {
        match self {
            Self::Class(l) => Self::Class(vec![l[i]]),
            Self::Segmentation { labels, height, width } => {
                let n = height * width;
                Self::Segmentation { labels: labels[i * n..(i + 1) * n].to_vec(), height: *height, width: *width }
            }
            Self::Depth { metres, height, width } => {
                let n = height * width;
                Self::Depth { metres: metres[i * n..(i + 1) * n].to_vec(), height: *height, width: *width }
            }
            Self::None => Self::None,
        }
    }

    /// Concatenates batches of the same kind and size.
    pub fn concat(parts: Vec<Targets>) -> Result<Targets> {
        let mut it = parts.into_iter();
        let Some(mut acc) = it.next() else { return Ok(Self::None) };
        for t in it {
            match (&mut acc, t) {
                (Self::Class(a), Self::Class(b)) => a.extend(b),
                (Self::Segmentation { labels: a, height, width }, Self::Segmentation { labels: b, height: h, width: w })
                    if (*height, *width) == (h, w) =>
                {
                    a.extend(b)
                }
                (Self::Depth { metres: a, height, width }, Self::Depth { metres: b, height: h, width: w })
                    if (*height, *width) == (h, w) =>
                {
                    a.extend(b)
                }
                (Self::None, Self::None) => {}
                (a, b) => bail!("samples of different target kinds or sizes in one batch: {} and {}", a.kind(), b.kind()),
            }
        }
        Ok(acc)
    }

    pub fn kind(&self) -> String {
        match self {
            Self::Class(_) => "class labels".into(),
            Self::Segmentation { height, width, .. } => format!("{height}x{width} label maps"),
            Self::Depth { height, width, .. } => format!("{height}x{width} depth maps"),
            Self::None => "no labels".into(),
        }
    }
}

/// Features and targets of some samples.
pub struct Batch {
    /// `[n, D]` CLS tokens (flattened pixels for [`Source::Pixels`]).
    pub cls: Tensor,
    /// `[n, D]` mean of the patch tokens ([`Layout::Pooled`] from an encoder).
    pub patch_mean: Option<Tensor>,
    /// `[n, P, D]` patch tokens ([`Layout::Tokens`]).
    pub patch: Option<Tensor>,
    /// The patch grid `(h, w)`, `(0, 0)` for pixels.
    pub grid: (usize, usize),
    pub targets: Targets,
}

impl Batch {
    /// CLS and patch tokens straight from the encoder, without targets (attacks, sliding windows).
    pub fn from_tokens(cls: &Tensor, patch: &Tensor, grid: (usize, usize)) -> Batch {
        Batch { cls: cls.clone(), patch_mean: None, patch: Some(patch.clone()), grid, targets: Targets::None }
    }

    /// The encoder outputs a head reading `reads` takes, as a batch without targets.
    pub fn read(tokens: &crate::encoder::Tokens, reads: crate::encoder::Reads) -> anyhow::Result<Batch> {
        let (cls, patch) = tokens.read(reads)?;
        Ok(Batch::from_tokens(cls, patch, tokens.grid))
    }

    pub fn len(&self) -> usize {
        self.cls.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins batches of the same layout and size.
    pub fn concat(parts: Vec<Batch>) -> Result<Batch> {
        if parts.is_empty() {
            bail!("no batches to join");
        }
        let grid = parts[0].grid;
        if parts.iter().any(|p| p.grid != grid) {
            bail!("batches with different patch grids cannot be joined");
        }
        let cat = |f: &dyn Fn(&Batch) -> Option<&Tensor>| -> Result<Option<Tensor>> {
            let ts: Vec<&Tensor> = parts.iter().filter_map(f).collect();
            Ok(if ts.is_empty() { None } else { Some(Tensor::cat(&ts, 0)?) })
        };
        let cls = cat(&|b| Some(&b.cls))?.expect("at least one batch");
        let patch_mean = cat(&|b| b.patch_mean.as_ref())?;
        let patch = cat(&|b| b.patch.as_ref())?;
        let targets = Targets::concat(parts.into_iter().map(|p| p.targets).collect())?;
        Ok(Batch { cls, patch_mean, patch, grid, targets })
    }

    pub fn to_device(&self, dev: &Device) -> Result<Batch> {
        let mv = |t: &Tensor| t.to_device(dev);
        Ok(Batch {
            cls: mv(&self.cls)?,
            patch_mean: self.patch_mean.as_ref().map(mv).transpose()?,
            patch: self.patch.as_ref().map(mv).transpose()?,
            grid: self.grid,
            targets: self.targets.clone(),
        })
    }
}

/// Serves mini-batches of features by sample index (`0..len()`).
pub trait BatchSource {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn batch(&mut self, indices: &[usize]) -> Result<Batch>;
    /// The targets of the samples at `indices`, without their features where that is cheaper.
    fn targets(&mut self, indices: &[usize]) -> Result<Targets>;
    /// Training moved on to `epoch` (augmented sources draw new crops and flips).
    fn set_epoch(&mut self, _epoch: usize) {}
    /// Whether every epoch recomputes the features of freshly augmented images.
    fn augmented(&self) -> bool {
        false
    }
}

/// Images per encoder forward pass when features are computed.
pub const DEFAULT_ENCODER_BATCH: usize = 8;

/// What defines a set of features, besides the encoder and the dataset.
#[derive(Debug, Clone)]
pub struct Request {
    pub layout: Layout,
    pub transforms: Vec<Transform>,
    /// Which samples of the dataset, in order (a seeded subset or all).
    pub indices: Vec<usize>,
    /// Images per encoder forward pass.
    pub batch_size: usize,
    /// Training with random augmentation: the full transform list (random steps included) and
    /// the seed of the draws; empty for fixed features.
    pub augment: Vec<Transform>,
    pub augment_seed: u64,
}

impl Request {
    pub fn transform_names(&self) -> Vec<String> {
        self.transforms.iter().map(Transform::describe).collect()
    }
}

/// Features of `request`'s samples of `ds`: read through `cache` (computed and stored first where
/// missing), or, with no cache, recomputed for every batch they are asked for (the reference
/// code's way).
pub fn batches<'a>(
    source: Source<'a>,
    ds: &'a dyn crate::data::Dataset,
    request: &Request,
    cache: Option<&cache::FeatureCache>,
) -> Result<(Box<dyn BatchSource + 'a>, Option<cache::CacheReport>)> {
    if !request.augment.is_empty() {
        // Augmented images have features of their own: nothing to cache.
        return Ok((Box::new(Live::of(source, ds, request)), None));
    }
    match cache {
        Some(c) => {
            let (features, report) = c.load_or_compute(source, ds, request)?;
            Ok((Box::new(features), Some(report)))
        }
        None => Ok((Box::new(Live::of(source, ds, request)), None)),
    }
}
