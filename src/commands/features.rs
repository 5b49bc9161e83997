//! Arguments shared by the commands that read encoder features of a dataset (`train-head`,
//! `eval`): where the features come from (an encoder or raw pixels), which samples, which
//! transforms, and the feature cache.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::ModelOptions;
use robust_ssl::data::transform::Transform;
use robust_ssl::data::{self, DataRef, Dataset, Split};
use robust_ssl::encoder::Encoder;
use robust_ssl::features::cache::{CacheReport, FeatureCache};
use robust_ssl::features::{self, BatchSource, Layout, Request, Source};

#[derive(Args, Debug, Clone)]
pub struct FeatureArgs {
    /// Encoder checkpoint: official .pth, timm/Hugging Face .safetensors, or .onnx.
    #[arg(long, required_unless_present = "pixels", conflicts_with = "pixels")]
    pub checkpoint: Option<PathBuf>,
    /// Use the transformed pixels themselves as features (the raw-pixel baseline of a linear probe).
    #[arg(long)]
    pub pixels: bool,
    #[command(flatten)]
    pub model: ModelOptions,
    /// Dataset as KIND:PATH, e.g. cifar10:/data/cifar-10-batches-bin, voc2012:/data/VOCdevkit/VOC2012,
    /// fashion-mnist:/usr/share/datasets/fashion-mnist, synthetic-seg:500x224.
    #[arg(long)]
    pub dataset: String,
    /// Split: train, val, test (or unlabeled).
    #[arg(long)]
    pub split: Option<Split>,
    /// Use a seeded random subset of this many samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of the subset.
    #[arg(long, default_value_t = 0)]
    pub subset_seed: u64,
    /// Transforms, comma-separated: resize-shortN, resizeHxW, cropHxW, padN.
    /// Default: resize-shortS,cropSxS,padP for an encoder (S = --size, P = its patch size), none for --pixels.
    #[arg(long)]
    pub transforms: Option<String>,
    /// Image side for the default transforms.
    #[arg(long, default_value_t = robust_ssl::data::transform::DEFAULT_SIZE)]
    pub size: usize,
    /// Feature cache folder (default: $ROBUST_SSL_CACHE, $XDG_CACHE_HOME/robust-ssl or ~/.cache/robust-ssl).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Recompute the features for every batch instead of caching them (the reference code's way).
    #[arg(long)]
    pub no_cache: bool,
    /// Images per encoder forward pass.
    #[arg(long, default_value_t = robust_ssl::features::DEFAULT_ENCODER_BATCH)]
    pub encoder_batch_size: usize,
}

/// An opened dataset and encoder, and the features request on them.
pub struct Prepared {
    pub dataset: Box<dyn Dataset>,
    /// The split opened: `--split`, else the first default the dataset defines.
    pub split: Split,
    pub encoder: Option<Encoder>,
    pub request: Request,
}

impl FeatureArgs {
    /// Opens the dataset (at `--split`, else the first of `splits` it defines) and the encoder;
    /// `transforms` (from a head file) overrides the default ones unless `--transforms` was given.
    pub fn prepare(&self, splits: &[Split], layout: Layout, transforms: Option<&[String]>) -> Result<Prepared> {
        let (dataset, split) = data::open_first(&self.dataset, self.split, splits)?;
        let samples = DataRef { dataset: self.dataset.clone(), split, limit: self.limit, subset_seed: self.subset_seed };
        let encoder = match &self.checkpoint {
            Some(path) => Some(self.model.load(path, robust_ssl::device::default_device()?)?),
            None => None,
        };
        let transforms = match (&self.transforms, transforms) {
            (Some(spec), _) => Transform::parse_list(spec).context("--transforms")?,
            (None, Some(names)) => {
                names.iter().map(|n| n.parse()).collect::<Result<Vec<Transform>>>().context("the head file's transforms")?
            }
            (None, None) => match &encoder {
                Some(enc) => robust_ssl::data::transform::default_transforms(self.size, enc.config().patch_size),
                None => vec![],
            },
        };
        let indices = samples.indices(dataset.len());
        if indices.is_empty() {
            anyhow::bail!("{}: the split is empty (no samples)", dataset.describe());
        }
        let request = Request { layout, transforms, indices, batch_size: self.encoder_batch_size, augment: vec![], augment_seed: 0 };
        Ok(Prepared { dataset, split, encoder, request })
    }

    pub fn cache(&self) -> FeatureCache {
        FeatureCache::new(self.cache_dir.clone().unwrap_or_else(FeatureCache::default_root))
    }
}

impl Prepared {
    pub fn source(&self) -> Source<'_> {
        match &self.encoder {
            Some(e) => Source::Encoder(e),
            None => Source::Pixels,
        }
    }

    /// A batch source over the requested samples: the cache (filled first where needed), or live.
    pub fn batches(&self, args: &FeatureArgs) -> Result<(Box<dyn BatchSource + '_>, Option<CacheReport>)> {
        let cache = (!args.no_cache).then(|| args.cache());
        features::batches(self.source(), self.dataset.as_ref(), &self.request, cache.as_ref())
    }
}
