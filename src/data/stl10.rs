//! STL-10 binary (`stl10_binary/`): `{train,test,unlabeled}_X.bin` hold N×3×96×96 u8 images, each
//! channel stored column-major (the official loader transposes); `{train,test}_y.bin` hold labels
//! 1..=10, mapped here to 0..=9.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use memmap2::Mmap;

use super::{no_such_split, Dataset, Sample, Split, Target};

const SIDE: usize = 96;
const IMAGE: usize = 3 * SIDE * SIDE;

pub struct Stl10 {
    root: PathBuf,
    split: Split,
    images: Mmap,
    labels: Option<Vec<u8>>,
}

fn map(path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // SAFETY: read-only map of a file we do not modify.
    unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))
}

impl Stl10 {
    pub fn open(root: &Path, split: Split) -> Result<Self> {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "test",
            Split::Unlabeled => "unlabeled",
            Split::Val => return Err(no_such_split("stl10", split, &["train", "test", "unlabeled"])),
        };
        let xpath = root.join(format!("{prefix}_X.bin"));
        let images = map(&xpath)?;
        if images.is_empty() || images.len() % IMAGE != 0 {
            bail!("{}: {} bytes is not a whole number of 3x96x96 images (truncated?)", xpath.display(), images.len());
        }
        let n = images.len() / IMAGE;
        let labels = if split == Split::Unlabeled {
            None
        } else {
            let ypath = root.join(format!("{prefix}_y.bin"));
            let y = std::fs::read(&ypath).with_context(|| format!("{}: cannot read", ypath.display()))?;
            if y.len() != n {
                bail!("{}: {} labels for {n} images in {}", ypath.display(), y.len(), xpath.display());
            }
            if let Some(i) = y.iter().position(|&l| !(1..=10).contains(&l)) {
                bail!("{}: label {} of image {i} is outside 1..=10", ypath.display(), y[i]);
            }
            Some(y)
        };
        Ok(Self { root: root.to_owned(), split, images, labels })
    }
}

impl Dataset for Stl10 {
    fn len(&self) -> usize {
        self.images.len() / IMAGE
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len() {
            bail!("index {index} out of range ({})", self.len());
        }
        let raw = &self.images[index * IMAGE..][..IMAGE];
        // Stored column-major per channel: value (c, y, x) at c·96² + x·96 + y.
        let mut v = vec![0f32; IMAGE];
        for c in 0..3 {
            for x in 0..SIDE {
                for y in 0..SIDE {
                    v[(c * SIDE + y) * SIDE + x] = raw[(c * SIDE + x) * SIDE + y] as f32 / 255.0;
                }
            }
        }
        let target = match &self.labels {
            Some(y) => Target::Class(y[index] as u32 - 1),
            None => Target::None,
        };
        Ok(Sample { image: Tensor::from_vec(v, (3, SIDE, SIDE), &candle_core::Device::Cpu)?, target })
    }

    fn num_classes(&self) -> Option<usize> {
        Some(10)
    }

    fn describe(&self) -> String {
        format!("stl10:{} [{}]", self.root.display(), self.split)
    }
}
