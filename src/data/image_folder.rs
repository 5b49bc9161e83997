//! ImageFolder: `root/<class>/<image>` (or `root/<split>/<class>/<image>` when split folders
//! exist), classes numbered in sorted folder-name order, as torchvision does.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{item, Dataset, Sample, Split, Target};
use crate::input::{has_image_extension, IMAGE_EXTENSIONS};

pub struct ImageFolder {
    root: PathBuf,
    split: Split,
    pub classes: Vec<String>,
    items: Vec<(PathBuf, u32)>,
}

impl ImageFolder {
    pub fn open(root: &Path, split: Split) -> Result<Self> {
        let split_dir = root.join(split.to_string());
        let base = if split_dir.is_dir() { split_dir } else { root.to_owned() };
        let mut classes: Vec<PathBuf> = std::fs::read_dir(&base)
            .with_context(|| format!("{}: cannot list", base.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && !["train", "val", "test"].contains(&p.file_name().unwrap_or_default().to_str().unwrap_or("")))
            .collect();
        classes.sort();
        if classes.is_empty() {
            bail!("{}: no class folders (expected <root>/<class>/<image>)", base.display());
        }
        let mut items = Vec::new();
        for (c, dir) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("{}: cannot list", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| has_image_extension(p))
                .collect();
            files.sort();
            items.extend(files.into_iter().map(|f| (f, c as u32)));
        }
        if items.is_empty() {
            bail!("{}: the class folders hold no images ({})", base.display(), IMAGE_EXTENSIONS.join(", "));
        }
        let classes = classes.iter().map(|d| d.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
        Ok(Self { root: base, split, classes, items })
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let (path, class) = item(&self.items, index)?;
        Ok(Sample { image: crate::input::decode_image(path)?, target: Target::Class(*class) })
    }

    fn num_classes(&self) -> Option<usize> {
        Some(self.classes.len())
    }

    fn describe(&self) -> String {
        format!("imagefolder:{} [{}]", self.root.display(), self.split)
    }
}
