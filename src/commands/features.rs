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
use robust_ssl::experiment::protocol::Protocol;
use robust_ssl::features::cache::{CacheReport, FeatureCache};
use robust_ssl::features::{self, BatchSource, Layout, Request, Source};
use robust_ssl::heads::head::Task;
use robust_ssl::heads::sliding::Window;

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
    /// Default: the protocol's for an encoder (robust-ssl: resize-shortS,cropSxS,padP with S =
    /// --size, P its patch size; study: see --protocol), none for --pixels.
    #[arg(long)]
    pub transforms: Option<String>,
    /// Image side for the default transforms (default: the protocol's: 224; the study's 518 for
    /// DINOv2, 224 for DINO).
    #[arg(long)]
    pub size: Option<usize>,
    /// robust-ssl (ours: 224-px crops, the strongest attack settings) or study (everything the
    /// study does: DINOv2 classification at 518 px and DINO at 224, segmentation through 518:341 /
    /// 224:100 windows over whole images, depth on the whole 480x640 frame centre-padded, its head
    /// recipes, a fixed 2/255 step, the last iterate, its SegPGD form, scaled PGD logits; its
    /// code's bugs left out). Fills only what is not given; the report shows the result.
    #[arg(long, value_parser = super::choice::<Protocol>(), default_value_t = Protocol::RobustSsl)]
    pub protocol: Protocol,
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
    /// `transforms` (from a head file) overrides the protocol's for `task` unless `--transforms`
    /// was given.
    pub fn prepare(&self, splits: &[Split], task: Task, layout: Layout, transforms: Option<&[String]>) -> Result<Prepared> {
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
                Some(enc) => self.protocol.transforms(task, enc.config().family, enc.config().patch_size, self.size)?,
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

    /// The window of `--window`, else the protocol's for `task` and the encoder (none without
    /// one), its crop the image side of `--size`, else of the head's `transforms` (its shorter-side
    /// resize).
    pub fn window(&self, given: Option<Window>, task: Task, enc: Option<&Encoder>, transforms: &[String]) -> Option<Window> {
        let parsed: Vec<Transform> = transforms.iter().filter_map(|t| t.parse().ok()).collect();
        let side = self.size.or_else(|| robust_ssl::data::transform::short_side(&parsed));
        given.or_else(|| enc.and_then(|e| self.protocol.window(task, e.config().family, side)))
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
