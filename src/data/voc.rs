//! PASCAL VOC 2012 segmentation (`VOCdevkit/VOC2012`): `JPEGImages/<id>.jpg`,
//! `SegmentationClass/<id>.png` (palette indices: 0 background … 20, 255 object borders = ignore),
//! split lists in `ImageSets/Segmentation/{train,val,trainval}.txt`. 21 classes, background kept.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::labels::segmentation_sample;
use super::{item, no_such_split, Dataset, Sample, Split, IGNORE};

pub struct Voc {
    root: PathBuf,
    split: Split,
    ids: Vec<String>,
}

impl Voc {
    pub fn open(root: &Path, split: Split) -> Result<Self> {
        let list = match split {
            Split::Train => "train",
            Split::Val => "val",
            _ => return Err(no_such_split("voc2012", split, &["train", "val"])),
        };
        let path = root.join("ImageSets/Segmentation").join(format!("{list}.txt"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read the split list", path.display()))?;
        let ids: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        if ids.is_empty() {
            bail!("{}: the split list is empty", path.display());
        }
        for id in &ids {
            for f in [root.join("JPEGImages").join(format!("{id}.jpg")), root.join("SegmentationClass").join(format!("{id}.png"))] {
                if !f.is_file() {
                    bail!("{}: listed in {} but missing", f.display(), path.display());
                }
            }
        }
        Ok(Self { root: root.to_owned(), split, ids })
    }
}

impl Dataset for Voc {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let id = item(&self.ids, index)?;
        let image = self.root.join("JPEGImages").join(format!("{id}.jpg"));
        let label = self.root.join("SegmentationClass").join(format!("{id}.png"));
        segmentation_sample(&image, &label, |v| (v <= 20 || v == IGNORE).then_some(v))
    }

    fn num_classes(&self) -> Option<usize> {
        Some(21)
    }

    fn describe(&self) -> String {
        format!("voc2012:{} [{}]", self.root.display(), self.split)
    }
}
