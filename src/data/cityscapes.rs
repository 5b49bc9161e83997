//! Cityscapes fine annotations: `leftImg8bit/<split>/<city>/<name>_leftImg8bit.png` and
//! `gtFine/<split>/<city>/<name>_gtFine_labelIds.png`; label ids map to the 19 train ids of the
//! official benchmark, every other id to the ignore index.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::labels::{files_with_suffix, segmentation_sample};
use super::{item, Dataset, Sample, Split, IGNORE};

/// labelId → trainId (cityscapesScripts `labels.py`); ids not listed are ignored.
const TRAIN_IDS: [(u32, u32); 19] = [
    (7, 0),
    (8, 1),
    (11, 2),
    (12, 3),
    (13, 4),
    (17, 5),
    (19, 6),
    (20, 7),
    (21, 8),
    (22, 9),
    (23, 10),
    (24, 11),
    (25, 12),
    (26, 13),
    (27, 14),
    (28, 15),
    (31, 16),
    (32, 17),
    (33, 18),
];

pub fn train_id(label_id: u32) -> u32 {
    TRAIN_IDS.iter().find(|(l, _)| *l == label_id).map_or(IGNORE, |(_, t)| *t)
}

pub struct Cityscapes {
    root: PathBuf,
    split: Split,
    pairs: Vec<(PathBuf, PathBuf)>,
}

impl Cityscapes {
    pub fn open(root: &Path, split: Split) -> Result<Self> {
        if split == Split::Unlabeled {
            return Err(super::no_such_split("cityscapes", split, &["train", "val", "test"]));
        }
        let images_root = root.join("leftImg8bit").join(split.to_string());
        let mut cities: Vec<PathBuf> = std::fs::read_dir(&images_root)
            .with_context(|| format!("{}: cannot list the {split} split", images_root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        cities.sort();
        let mut pairs = Vec::new();
        for city in cities {
            for img in files_with_suffix(&city, "_leftImg8bit.png")? {
                let name = img.file_name().unwrap_or_default().to_string_lossy().replace("_leftImg8bit.png", "_gtFine_labelIds.png");
                let label = root.join("gtFine").join(split.to_string()).join(city.file_name().unwrap_or_default()).join(name);
                if !label.is_file() {
                    bail!("{}: annotation of {} is missing", label.display(), img.display());
                }
                pairs.push((img, label));
            }
        }
        if pairs.is_empty() {
            bail!("{}: no *_leftImg8bit.png images in the {split} split", images_root.display());
        }
        Ok(Self { root: root.to_owned(), split, pairs })
    }
}

impl Dataset for Cityscapes {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (image, label) = item(&self.pairs, index)?;
        segmentation_sample(image, label, |v| Some(train_id(v)))
    }

    fn num_classes(&self) -> Option<usize> {
        Some(19)
    }

    fn describe(&self) -> String {
        format!("cityscapes:{} [{}]", self.root.display(), self.split)
    }
}
