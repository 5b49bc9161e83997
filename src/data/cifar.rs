//! CIFAR-10 and CIFAR-100 in the binary version (`cifar-10-batches-bin/`, `cifar-100-binary/`):
//! fixed-size records of label byte(s) + 3072 planar RGB bytes (32×32, row-major per plane).
//! CIFAR-100 records carry the coarse then the fine label; the fine label is the target.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use super::{no_such_split, planar_u8_to_tensor, Dataset, Sample, Split, Target};

const PIXELS: usize = 3 * 32 * 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
        }
    }
    fn label_bytes(self) -> usize {
        match self {
            Self::Cifar10 => 1,
            Self::Cifar100 => 2,
        }
    }
    fn classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }
    fn files(self, split: Split) -> Result<Vec<&'static str>> {
        Ok(match (self, split) {
            (Self::Cifar10, Split::Train) => {
                vec!["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"]
            }
            (Self::Cifar10, Split::Test) => vec!["test_batch.bin"],
            (Self::Cifar100, Split::Train) => vec!["train.bin"],
            (Self::Cifar100, Split::Test) => vec!["test.bin"],
            _ => return Err(no_such_split(self.name(), split, &["train", "test"])),
        })
    }
}

pub struct Cifar {
    variant: Variant,
    root: PathBuf,
    split: Split,
    files: Vec<(PathBuf, Mmap)>,
    /// Cumulative record counts, one entry per file.
    ends: Vec<usize>,
}

impl Cifar {
    pub fn open(root: &Path, variant: Variant, split: Split) -> Result<Self> {
        let record = variant.label_bytes() + PIXELS;
        let mut files = Vec::new();
        let mut ends = Vec::new();
        let mut total = 0;
        for name in variant.files(split)? {
            let path = root.join(name);
            let file = std::fs::File::open(&path)
                .with_context(|| format!("{}: cannot open ({} {split} split)", path.display(), variant.name()))?;
            // SAFETY: read-only map of a file we do not modify; a concurrent truncation by another
            // process is outside what a dataset reader can guard against.
            let map = unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?;
            if map.is_empty() || map.len() % record != 0 {
                bail!(
                    "{}: {} bytes is not a whole number of {}-byte {} records (truncated or not a binary CIFAR file?)",
                    path.display(),
                    map.len(),
                    record,
                    variant.name()
                );
            }
            for (i, r) in map.chunks_exact(record).enumerate() {
                let label = r[variant.label_bytes() - 1] as usize;
                let coarse_ok = variant == Variant::Cifar10 || (r[0] as usize) < 20;
                if label >= variant.classes() || !coarse_ok {
                    bail!("{}: record {i} has label {label} (coarse {}), outside the {} classes", path.display(), r[0], variant.classes());
                }
            }
            total += map.len() / record;
            ends.push(total);
            files.push((path, map));
        }
        Ok(Self { variant, root: root.to_owned(), split, files, ends })
    }
}

impl Dataset for Cifar {
    fn len(&self) -> usize {
        self.ends.last().copied().unwrap_or(0)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let f = self.ends.iter().position(|&e| index < e).with_context(|| format!("index {index} out of range ({})", self.len()))?;
        let start = if f == 0 { 0 } else { self.ends[f - 1] };
        let lb = self.variant.label_bytes();
        let record = &self.files[f].1[(index - start) * (lb + PIXELS)..][..lb + PIXELS];
        Ok(Sample { image: planar_u8_to_tensor(&record[lb..], 3, 32, 32)?, target: Target::Class(record[lb - 1] as u32) })
    }

    fn num_classes(&self) -> Option<usize> {
        Some(self.variant.classes())
    }

    fn describe(&self) -> String {
        format!("{}:{} [{}]", self.variant.name(), self.root.display(), self.split)
    }
}
