//! The on-disk feature cache. One folder per key — a hash of everything that determines the
//! features: the encoder file's contents and load options, the dataset and split, the samples,
//! the transforms and the layout. The folder holds `key.json` (that key, readable) and chunks of
//! [`CHUNK`] samples, `chunk-NNNNNN.safetensors`, each written to a temporary file and renamed:
//! a run killed at any moment leaves only whole chunks, and the next run computes the missing
//! ones and reuses the rest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::{extract, Batch, CachedFeatures, Layout, Request, Source, Targets};
use crate::data::Dataset;

/// Samples per chunk file.
pub const CHUNK: usize = 256;
/// Bumped whenever what a chunk holds, or how features are computed, changes.
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize)]
struct Key {
    format_version: u32,
    source: serde_json::Value,
    dataset: String,
    dataset_len: usize,
    samples: usize,
    /// blake3 of the sample indices.
    indices: String,
    transforms: Vec<String>,
    layout: Layout,
    chunk: usize,
}

/// What [`FeatureCache::load_or_compute`] did.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    pub dir: PathBuf,
    pub chunks_computed: usize,
    pub chunks_reused: usize,
    pub seconds: f64,
}

pub struct FeatureCache {
    root: PathBuf,
}

fn source_key(source: Source) -> Result<serde_json::Value> {
    Ok(match source {
        Source::Pixels => serde_json::json!("pixels"),
        Source::Encoder(enc) => enc.fingerprint()?,
    })
}

impl FeatureCache {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$ROBUST_SSL_CACHE`, else `$XDG_CACHE_HOME/robust-ssl`, else `~/.cache/robust-ssl`, else
    /// `.robust-ssl-cache` in the working folder.
    pub fn default_root() -> PathBuf {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("ROBUST_SSL_CACHE")
            .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("robust-ssl")))
            .or_else(|| env("HOME").map(|p| p.join(".cache").join("robust-ssl")))
            .unwrap_or_else(|| PathBuf::from(".robust-ssl-cache"))
    }

    /// The folder of one key.
    fn dir_for(&self, ds: &dyn Dataset, key: &Key) -> Result<PathBuf> {
        let json = serde_json::to_vec(key)?;
        let hash = blake3::hash(&json).to_hex();
        let kind: String =
            ds.describe().split(':').next().unwrap_or("data").chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        Ok(self.root.join("features").join(format!("{kind}-{}", &hash[..20])))
    }

    /// The features of `req` on `ds`, from the cache (memory-mapped), computing and storing the
    /// chunks that are missing or damaged first.
    pub fn load_or_compute(&self, source: Source, ds: &dyn Dataset, req: &Request) -> Result<(CachedFeatures, CacheReport)> {
        let start = Instant::now();
        if req.indices.is_empty() {
            bail!("{}: no samples to compute features of (empty split)", ds.describe());
        }
        let key = Key {
            format_version: FORMAT_VERSION,
            source: source_key(source)?,
            dataset: ds.describe(),
            dataset_len: ds.len(),
            samples: req.indices.len(),
            indices: blake3::hash(&req.indices.iter().flat_map(|&i| (i as u64).to_le_bytes()).collect::<Vec<u8>>()).to_hex().to_string(),
            transforms: req.transform_names(),
            layout: req.layout,
            chunk: CHUNK,
        };
        let dir = self.dir_for(ds, &key)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create the feature cache folder", dir.display()))?;
        let manifest = dir.join("key.json");
        if !manifest.is_file() {
            crate::atomic::write(&manifest, &serde_json::to_vec_pretty(&key)?)?;
        }
        let bar = crate::progress::bar(req.indices.len() as u64, &format!("features {}", ds.describe()));
        let (mut computed, mut reused) = (0, 0);
        let mut paths = Vec::new();
        let mut first = None;
        for (c, ids) in req.indices.chunks(CHUNK).enumerate() {
            let path = dir.join(format!("chunk-{c:06}.safetensors"));
            // A damaged chunk (unreadable, or of shapes unlike the first chunk's) is computed again.
            let valid = path.is_file()
                && match CachedFeatures::check(&path, ids.len(), req.layout) {
                    Ok(shape) if first.as_ref().is_none_or(|f| *f == shape) => {
                        first = Some(shape);
                        true
                    }
                    Ok(shape) => {
                        let f = first.as_ref().expect("a first chunk");
                        bar.suspend(|| {
                            eprintln!(
                                "warning: {}: cached features of shape {shape:?}, unlike the first chunk's {f:?}; computing it again",
                                path.display()
                            )
                        });
                        false
                    }
                    Err(e) => {
                        bar.suspend(|| eprintln!("warning: {e:#}; computing it again"));
                        false
                    }
                };
            if valid {
                reused += 1;
            } else {
                write_chunk(&path, &extract(source, ds, ids, req.layout, &req.transforms, req.batch_size)?)?;
                computed += 1;
            }
            bar.inc(ids.len() as u64);
            paths.push(path);
        }
        bar.finish_and_clear();
        let features = CachedFeatures::open(&paths, CHUNK, req.indices.len(), req.layout)?;
        let report = CacheReport { dir, chunks_computed: computed, chunks_reused: reused, seconds: start.elapsed().as_secs_f64() };
        Ok((features, report))
    }
}

fn write_chunk(path: &Path, b: &Batch) -> Result<()> {
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("cls".into(), b.cls.clone());
    if let Some(m) = &b.patch_mean {
        t.insert("patch_mean".into(), m.clone());
    }
    if let Some(p) = &b.patch {
        t.insert("patch".into(), p.clone());
    }
    t.insert("grid".into(), Tensor::new(&[b.grid.0 as u32, b.grid.1 as u32], &dev)?);
    let n = b.len();
    match &b.targets {
        Targets::Class(v) => {
            t.insert("class".into(), Tensor::new(v.as_slice(), &dev)?);
        }
        Targets::Segmentation { labels, height, width } => {
            let bytes = labels.iter().map(|&l| u8::try_from(l)).collect::<Result<Vec<u8>, _>>().context("a label above 255")?;
            t.insert("segmentation".into(), Tensor::from_vec(bytes, (n, *height, *width), &dev)?);
        }
        Targets::Depth { metres, height, width } => {
            t.insert("depth".into(), Tensor::from_vec(metres.clone(), (n, *height, *width), &dev)?);
        }
        Targets::None => {}
    }
    crate::atomic::save_safetensors(&t, path)
}
