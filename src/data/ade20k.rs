//! ADE20k scene parsing (`ADEChallengeData2016`): `images/{training,validation}/*.jpg` and
//! `annotations/{training,validation}/*.png` (gray values 0 = "other" → ignored, 1..=150 →
//! classes 0..=149).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::labels::{files_with_suffix, segmentation_sample};
use super::{item, no_such_split, Dataset, Sample, Split, IGNORE};

pub struct Ade20k {
    root: PathBuf,
    split: Split,
    pairs: Vec<(PathBuf, PathBuf)>,
}

impl Ade20k {
    pub fn open(root: &Path, split: Split) -> Result<Self> {
        let dir = match split {
            Split::Train => "training",
            Split::Val => "validation",
            _ => return Err(no_such_split("ade20k", split, &["train", "val"])),
        };
        let images = files_with_suffix(&root.join("images").join(dir), ".jpg")?;
        if images.is_empty() {
            bail!("{}: no .jpg images in the {split} split", root.join("images").join(dir).display());
        }
        let pairs = images
            .into_iter()
            .map(|img| {
                let stem = img.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                let label = root.join("annotations").join(dir).join(format!("{stem}.png"));
                if !label.is_file() {
                    bail!("{}: annotation of {} is missing", label.display(), img.display());
                }
                Ok((img, label))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { root: root.to_owned(), split, pairs })
    }
}

impl Dataset for Ade20k {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (image, label) = item(&self.pairs, index)?;
        segmentation_sample(image, label, |v| match v {
            0 => Some(IGNORE),
            1..=150 => Some(v - 1),
            _ => None,
        })
    }

    fn num_classes(&self) -> Option<usize> {
        Some(150)
    }

    fn describe(&self) -> String {
        format!("ade20k:{} [{}]", self.root.display(), self.split)
    }
}
