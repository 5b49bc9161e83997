//! NYU-Depth-v2 in the folder layout used by depth-estimation toolboxes: RGB images and 16-bit
//! PNG depth maps in millimetres, listed per split in `<split>.txt` (or the BTS names
//! `nyudepthv2_<split>_files_with_gt.txt`), one `rgb depth [focal]` line per sample, paths
//! relative to the dataset folder. The labeled `.mat` (HDF5) is not read yet.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::labels::read_depth_png_mm;
use super::{item, no_such_split, Dataset, Sample, Split, Target};

pub struct NyuFolder {
    root: PathBuf,
    split: Split,
    /// The split list, and per sample its image, its depth map and the list's line naming them.
    list: PathBuf,
    pairs: Vec<(PathBuf, PathBuf, usize)>,
}

impl NyuFolder {
    pub fn open(root: &Path, split: Split) -> Result<Self> {
        let name = match split {
            Split::Train => "train",
            Split::Test => "test",
            _ => return Err(no_such_split("nyu", split, &["train", "test"])),
        };
        let candidates = [root.join(format!("{name}.txt")), root.join(format!("nyudepthv2_{name}_files_with_gt.txt"))];
        let list = candidates
            .iter()
            .find(|p| p.is_file())
            .with_context(|| format!("{}: no split list ({} or {})", root.display(), candidates[0].display(), candidates[1].display()))?;
        let text = std::fs::read_to_string(list).with_context(|| format!("{}: cannot read", list.display()))?;
        let mut pairs = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 2 {
                bail!("{}: line {} should be `rgb depth [focal]`, got {line:?}", list.display(), n + 1);
            }
            let resolve = |f: &str| root.join(f.trim_start_matches('/'));
            let (rgb, depth) = (resolve(fields[0]), resolve(fields[1]));
            for f in [&rgb, &depth] {
                if !f.is_file() {
                    bail!("{}: listed on line {} of {} but missing", f.display(), n + 1, list.display());
                }
            }
            pairs.push((rgb, depth, n + 1));
        }
        if pairs.is_empty() {
            bail!("{}: the split list is empty", list.display());
        }
        Ok(Self { root: root.to_owned(), split, list: list.clone(), pairs })
    }
}

impl Dataset for NyuFolder {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (rgb, depth, line) = item(&self.pairs, index)?;
        let sample = || -> Result<Sample> {
            let image = crate::input::decode_image(rgb)?;
            let (metres, h, w) = read_depth_png_mm(depth)?;
            let (ih, iw) = (image.dim(1)?, image.dim(2)?);
            if (ih, iw) != (h, w) {
                bail!("{}: depth map is {h}x{w} but its image {} is {ih}x{iw}", depth.display(), rgb.display());
            }
            Ok(Sample { image, target: Target::Depth { metres, height: h, width: w } })
        };
        // A wrong line of the list (an image named as a depth map) is the list's fault too.
        sample().with_context(|| format!("sample {index}, listed on line {line} of {}", self.list.display()))
    }

    fn num_classes(&self) -> Option<usize> {
        None
    }

    fn describe(&self) -> String {
        format!("nyu:{} [{}]", self.root.display(), self.split)
    }
}
