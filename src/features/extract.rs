//! Computing features: samples decoded and transformed in parallel, stacked, run through the
//! encoder one batch at a time, and pooled for the [`Layout`] asked for.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use super::{Batch, BatchSource, Layout, Request, Source, Targets};
use crate::data::augment::{epoch_seed, load_batch_augmented};
use crate::data::transform::{load_batch, Transform};
use crate::data::{Dataset, Sample, Target};

/// Features and targets of the samples `indices` of `ds`, in that order.
pub fn extract(
    source: Source,
    ds: &dyn Dataset,
    indices: &[usize],
    layout: Layout,
    transforms: &[Transform],
    batch_size: usize,
) -> Result<Batch> {
    extract_with(source, ds, indices, layout, batch_size, &|chunk| load_batch(ds, chunk, transforms))
}

/// [`extract`] with the samples decoded and transformed by `load`.
fn extract_with(
    source: Source,
    ds: &dyn Dataset,
    indices: &[usize],
    layout: Layout,
    batch_size: usize,
    load: &dyn Fn(&[usize]) -> Result<Vec<Sample>>,
) -> Result<Batch> {
    if batch_size == 0 {
        bail!("the encoder batch size must be at least 1");
    }
    let mut parts = Vec::new();
    for chunk in indices.chunks(batch_size) {
        let samples = load(chunk).with_context(|| ds.describe())?;
        parts.push(features_of(source, ds, chunk, samples, layout)?);
    }
    Batch::concat(parts)
}

fn features_of(source: Source, ds: &dyn Dataset, indices: &[usize], samples: Vec<Sample>, layout: Layout) -> Result<Batch> {
    let (h, w) = (samples[0].image.dim(1)?, samples[0].image.dim(2)?);
    for (s, &i) in samples.iter().zip(indices) {
        let (sh, sw) = (s.image.dim(1)?, s.image.dim(2)?);
        if (sh, sw) != (h, w) {
            bail!(
                "{}: sample {i} is {sh}x{sw} after the transforms but sample {} is {h}x{w}; features are stored \
                 per batch, so every image must end the same size: add a crop (e.g. --transforms resize-short224,crop224x224)",
                ds.describe(),
                indices[0]
            );
        }
    }
    let images: Vec<&Tensor> = samples.iter().map(|s| &s.image).collect();
    let images = Tensor::stack(&images, 0)?;
    let targets = targets_of(ds, indices, samples)?;
    match source {
        Source::Pixels => {
            if layout != Layout::Pooled {
                bail!("raw pixels have no patch tokens: the pixel baseline is for classification only");
            }
            let n = images.dim(0)?;
            Ok(Batch { cls: images.reshape((n, ()))?, patch_mean: None, patch: None, grid: (0, 0), targets })
        }
        Source::Encoder(enc) => {
            let tokens = enc.forward(&images.to_device(enc.vit.device())?).with_context(|| ds.describe())?;
            let reads = if layout == Layout::PreNormTokens { crate::encoder::Reads::PreNorm } else { crate::encoder::Reads::Final };
            let (cls, patch) = tokens.read(reads)?;
            let cls = cls.to_device(&Device::Cpu)?.contiguous()?;
            let patch = patch.to_device(&Device::Cpu)?.contiguous()?;
            let (patch_mean, patch) = match layout {
                Layout::Pooled => (Some(patch.mean(1)?), None),
                Layout::Tokens | Layout::PreNormTokens => (None, Some(patch)),
            };
            Ok(Batch { cls, patch_mean, patch, grid: tokens.grid, targets })
        }
    }
}

/// The targets of decoded `samples` (dataset indices `indices`), labels checked against the
/// dataset's class count.
pub fn targets_of(ds: &dyn Dataset, indices: &[usize], samples: Vec<Sample>) -> Result<Targets> {
    let parts = samples
        .into_iter()
        .zip(indices)
        .map(|(s, &i)| {
            Ok(match s.target {
                Target::Class(c) => {
                    if let Some(k) = ds.num_classes() {
                        if c as usize >= k {
                            bail!("{}: sample {i} has label {c}, out of range for {k} classes", ds.describe());
                        }
                    }
                    Targets::Class(vec![c])
                }
                Target::Segmentation { labels, height, width } => Targets::Segmentation { labels, height, width },
                Target::Depth { metres, height, width } => Targets::Depth { metres, height, width },
                Target::None => Targets::None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Targets::concat(parts).with_context(|| ds.describe())
}

/// Features recomputed for every batch, the reference code's way (no cache); with random
/// augmentation, of images augmented afresh every epoch.
pub struct Live<'a> {
    pub source: Source<'a>,
    pub dataset: &'a dyn Dataset,
    /// Dataset indices of the samples served as `0..len()`.
    pub indices: Vec<usize>,
    pub layout: Layout,
    pub transforms: Vec<Transform>,
    pub batch_size: usize,
    /// The training transforms with their random steps (empty: none) and the draws' seed.
    pub augment: Vec<Transform>,
    pub augment_seed: u64,
    pub epoch: usize,
}

impl<'a> Live<'a> {
    pub fn of(source: Source<'a>, dataset: &'a dyn Dataset, r: &Request) -> Live<'a> {
        Live {
            source,
            dataset,
            indices: r.indices.clone(),
            layout: r.layout,
            transforms: r.transforms.clone(),
            batch_size: r.batch_size,
            augment: r.augment.clone(),
            augment_seed: r.augment_seed,
            epoch: 0,
        }
    }

    fn load(&self, ids: &[usize]) -> Result<Vec<Sample>> {
        if self.augment.is_empty() {
            return load_batch(self.dataset, ids, &self.transforms);
        }
        load_batch_augmented(self.dataset, ids, &self.augment, epoch_seed(self.augment_seed, self.epoch))
    }
}

impl BatchSource for Live<'_> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn batch(&mut self, indices: &[usize]) -> Result<Batch> {
        let ids: Vec<usize> = indices.iter().map(|&i| self.indices[i]).collect();
        extract_with(self.source, self.dataset, &ids, self.layout, self.batch_size, &|chunk| self.load(chunk))
    }

    /// Decodes the samples (no encoder); augmented as in the current epoch.
    fn targets(&mut self, indices: &[usize]) -> Result<Targets> {
        let ids: Vec<usize> = indices.iter().map(|&i| self.indices[i]).collect();
        targets_of(self.dataset, &ids, self.load(&ids)?)
    }

    fn set_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
    }

    fn augmented(&self) -> bool {
        !self.augment.is_empty()
    }
}
