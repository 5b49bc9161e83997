//! Task metrics, accumulated over a whole split and mergeable across shards:
//! accuracy; mIoU from one dataset-wide confusion matrix (ignore index excluded, mean over the
//! classes that occur in prediction or ground truth); depth errors on one valid mask (RMSE, AbsRel,
//! SqRel, RMSE-log, log10, δ < 1.25, 1.25², 1.25³), computed per image and then averaged.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Top-1 accuracy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accuracy {
    pub correct: u64,
    pub total: u64,
}

impl Accuracy {
    pub fn update(&mut self, predicted: &[u32], labels: &[u32]) -> Result<()> {
        if predicted.len() != labels.len() {
            bail!("{} predictions for {} labels", predicted.len(), labels.len());
        }
        self.correct += predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as u64;
        self.total += labels.len() as u64;
        Ok(())
    }

    pub fn merge(&mut self, other: &Self) {
        self.correct += other.correct;
        self.total += other.total;
    }

    /// `None` before any sample.
    pub fn value(&self) -> Option<f64> {
        (self.total > 0).then(|| self.correct as f64 / self.total as f64)
    }
}

/// A dataset-wide confusion matrix for semantic segmentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub num_classes: usize,
    pub ignore_index: u32,
    /// Row = ground truth, column = prediction.
    pub counts: Vec<u64>,
}

impl ConfusionMatrix {
    pub fn new(num_classes: usize, ignore_index: u32) -> Self {
        Self { num_classes, ignore_index, counts: vec![0; num_classes * num_classes] }
    }

    /// Adds one image (or any set of pixels). Pixels whose label is the ignore index are skipped;
    /// any other label or prediction outside `0..num_classes` is an error, never a silent count.
    pub fn update(&mut self, predicted: &[u32], labels: &[u32]) -> Result<()> {
        if predicted.len() != labels.len() {
            bail!("{} predicted pixels for {} labelled pixels", predicted.len(), labels.len());
        }
        let n = self.num_classes as u32;
        for (&p, &l) in predicted.iter().zip(labels) {
            if l == self.ignore_index {
                continue;
            }
            if l >= n {
                bail!("label {l} is out of range for {n} classes (ignore index {})", self.ignore_index);
            }
            if p >= n {
                bail!("prediction {p} is out of range for {n} classes");
            }
            self.counts[(l * n + p) as usize] += 1;
        }
        Ok(())
    }

    pub fn merge(&mut self, other: &Self) -> Result<()> {
        if other.num_classes != self.num_classes || other.ignore_index != self.ignore_index {
            bail!("cannot merge confusion matrices of {} and {} classes", self.num_classes, other.num_classes);
        }
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn at(&self, truth: usize, pred: usize) -> u64 {
        self.counts[truth * self.num_classes + pred]
    }

    /// IoU of each class; `None` for a class absent from both prediction and ground truth.
    pub fn iou_per_class(&self) -> Vec<Option<f64>> {
        (0..self.num_classes)
            .map(|c| {
                let tp = self.at(c, c);
                let truth: u64 = (0..self.num_classes).map(|p| self.at(c, p)).sum();
                let pred: u64 = (0..self.num_classes).map(|t| self.at(t, c)).sum();
                let union = truth + pred - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean IoU over the classes with a non-empty union; `None` when no pixel was counted.
    pub fn miou(&self) -> Option<f64> {
        let ious: Vec<f64> = self.iou_per_class().into_iter().flatten().collect();
        (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
    }

    /// Fraction of counted (non-ignored) pixels predicted correctly.
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        let correct: u64 = (0..self.num_classes).map(|c| self.at(c, c)).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }
}

/// Depth errors of one image, on its valid pixels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DepthErrors {
    pub rmse: f64,
    pub abs_rel: f64,
    pub sq_rel: f64,
    pub rmse_log: f64,
    pub log10: f64,
    pub delta1: f64,
    pub delta2: f64,
    pub delta3: f64,
}

impl DepthErrors {
    fn fields(&mut self) -> [&mut f64; 8] {
        let e = self;
        [&mut e.rmse, &mut e.abs_rel, &mut e.sq_rel, &mut e.rmse_log, &mut e.log10, &mut e.delta1, &mut e.delta2, &mut e.delta3]
    }

    fn add(&mut self, other: &Self) {
        let mut o = *other;
        for (a, b) in self.fields().into_iter().zip(o.fields()) {
            *a += *b;
        }
    }

    fn divided(mut self, k: f64) -> Self {
        self.fields().into_iter().for_each(|v| *v /= k);
        self
    }
}

/// The valid-pixel range: `min < gt < max` (NYU: 0.001 m to 10 m).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DepthRange {
    pub min: f64,
    pub max: f64,
}

impl DepthRange {
    pub fn is_valid(&self, gt: f32) -> bool {
        let g = gt as f64;
        g.is_finite() && g > self.min && g < self.max
    }
}

/// Errors of one image on the pixels where the ground truth is valid; `None` when none is.
/// The same mask serves clean and attacked predictions (it depends on the ground truth only).
pub fn depth_errors(pred: &[f32], gt: &[f32], range: DepthRange) -> Result<Option<DepthErrors>> {
    if pred.len() != gt.len() {
        bail!("{} predicted depths for {} ground-truth pixels", pred.len(), gt.len());
    }
    let mut e = DepthErrors::default();
    let mut n = 0usize;
    for (&p, &g) in pred.iter().zip(gt) {
        if !range.is_valid(g) {
            continue;
        }
        let (p, g) = (p as f64, g as f64);
        if !(p.is_finite() && p > 0.0) {
            bail!("predicted depth {p} is not a positive finite number");
        }
        let d = p - g;
        e.rmse += d * d;
        e.abs_rel += d.abs() / g;
        e.sq_rel += d * d / g;
        e.rmse_log += (p.ln() - g.ln()).powi(2);
        e.log10 += (p.log10() - g.log10()).abs();
        let ratio = (p / g).max(g / p);
        e.delta1 += f64::from(u8::from(ratio < 1.25));
        e.delta2 += f64::from(u8::from(ratio < 1.25f64.powi(2)));
        e.delta3 += f64::from(u8::from(ratio < 1.25f64.powi(3)));
        n += 1;
    }
    if n == 0 {
        return Ok(None);
    }
    let mut e = e.divided(n as f64);
    e.rmse = e.rmse.sqrt();
    e.rmse_log = e.rmse_log.sqrt();
    Ok(Some(e))
}

/// Per-image depth errors averaged over images (images without a valid pixel are skipped and
/// counted apart).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DepthMetrics {
    sum: DepthErrors,
    pub images: u64,
    pub images_without_valid_pixels: u64,
}

impl DepthMetrics {
    pub fn update(&mut self, pred: &[f32], gt: &[f32], range: DepthRange) -> Result<()> {
        self.add_image(depth_errors(pred, gt, range)?);
        Ok(())
    }

    /// One image's errors (`None`: it has no valid pixel).
    pub fn add_image(&mut self, errors: Option<DepthErrors>) {
        match errors {
            Some(e) => {
                self.sum.add(&e);
                self.images += 1;
            }
            None => self.images_without_valid_pixels += 1,
        }
    }

    pub fn merge(&mut self, other: &Self) {
        self.sum.add(&other.sum);
        self.images += other.images;
        self.images_without_valid_pixels += other.images_without_valid_pixels;
    }

    /// The mean over images; `None` before any image with valid pixels.
    pub fn mean(&self) -> Option<DepthErrors> {
        (self.images > 0).then(|| self.sum.divided(self.images as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn accuracy_counts_and_merges() {
        let mut a = Accuracy::default();
        assert_eq!(a.value(), None);
        a.update(&[1, 2, 3, 4], &[1, 0, 3, 0]).unwrap();
        let mut b = Accuracy::default();
        b.update(&[7], &[7]).unwrap();
        a.merge(&b);
        close(a.value().unwrap(), 3.0 / 5.0);
        assert!(a.update(&[1], &[1, 2]).is_err());
    }

    #[test]
    fn miou_by_hand_with_ignored_pixels_and_absent_classes() {
        // 4 classes, ignore 255. Class 3 never appears (neither truth nor prediction); the
        // predictions on the two ignored pixels must not count.
        let truth = [0, 0, 0, 1, 1, 2, 255, 255];
        let pred = [0, 0, 1, 1, 2, 2, 1, 0];
        let mut m = ConfusionMatrix::new(4, 255);
        m.update(&pred, &truth).unwrap();
        // class 0: tp 2, truth 3, pred 2 -> union 3 -> 2/3
        // class 1: tp 1, truth 2, pred 2 -> union 3 -> 1/3
        // class 2: tp 1, truth 1, pred 2 -> union 2 -> 1/2
        // class 3: union 0 -> excluded from the mean
        let iou = m.iou_per_class();
        close(iou[0].unwrap(), 2.0 / 3.0);
        close(iou[1].unwrap(), 1.0 / 3.0);
        close(iou[2].unwrap(), 0.5);
        assert_eq!(iou[3], None);
        close(m.miou().unwrap(), (2.0 / 3.0 + 1.0 / 3.0 + 0.5) / 3.0);
        close(m.pixel_accuracy().unwrap(), 4.0 / 6.0);
        // A class predicted but absent from the ground truth counts, with IoU 0.
        let mut m2 = ConfusionMatrix::new(4, 255);
        m2.update(&[3, 0], &[0, 0]).unwrap();
        assert_eq!(m2.iou_per_class()[3], Some(0.0));
        close(m2.miou().unwrap(), (0.5 + 0.0) / 2.0);
    }

    #[test]
    fn confusion_matrix_is_dataset_wide_not_a_mean_of_images() {
        // Image A: class 0 perfect on 1 pixel; image B: class 0 wrong on 3 pixels.
        let mut m = ConfusionMatrix::new(2, 255);
        m.update(&[0], &[0]).unwrap();
        m.update(&[1, 1, 1], &[0, 0, 0]).unwrap();
        // class 0: tp 1, truth 4, pred 1 -> 1/4; class 1: tp 0, pred 3 -> 0. Per-image averaging
        // would give something else entirely.
        close(m.miou().unwrap(), (0.25 + 0.0) / 2.0);
        let mut shard = ConfusionMatrix::new(2, 255);
        shard.update(&[0], &[0]).unwrap();
        let mut other = ConfusionMatrix::new(2, 255);
        other.update(&[1, 1, 1], &[0, 0, 0]).unwrap();
        shard.merge(&other).unwrap();
        assert_eq!(shard, m);
    }

    #[test]
    fn out_of_range_labels_are_errors() {
        let mut m = ConfusionMatrix::new(3, 255);
        let err = m.update(&[0], &[7]).unwrap_err().to_string();
        assert!(err.contains("label 7") && err.contains("3 classes"), "{err}");
        assert!(m.update(&[9], &[1]).is_err());
        assert!(m.update(&[0, 0], &[0]).is_err());
        assert_eq!(m.miou(), None, "nothing was counted");
        assert!(ConfusionMatrix::new(3, 255).merge(&ConfusionMatrix::new(4, 255)).is_err());
    }

    #[test]
    fn depth_errors_by_hand_on_the_valid_mask() {
        let range = DepthRange { min: 1e-3, max: 10.0 };
        // Valid: gt 1 (pred 2) and gt 4 (pred 4); invalid: gt 0 and gt 12 (their preds ignored).
        let gt = [1.0, 4.0, 0.0, 12.0];
        let pred = [2.0, 4.0, 5.0, 1.0];
        let e = depth_errors(&pred, &gt, range).unwrap().unwrap();
        close(e.rmse, (1.0f64 / 2.0).sqrt());
        close(e.abs_rel, (1.0 + 0.0) / 2.0);
        close(e.sq_rel, (1.0 + 0.0) / 2.0);
        close(e.rmse_log, ((2f64.ln()).powi(2) / 2.0).sqrt());
        close(e.log10, 2f64.log10() / 2.0);
        close(e.delta1, 0.5);
        close(e.delta2, 0.5);
        // The first pixel's ratio is 2: above 1.25, 1.25² = 1.5625 and 1.25³ = 1.953125.
        close(e.delta3, 0.5);
    }

    #[test]
    fn per_image_mean_and_images_without_valid_pixels() {
        let range = DepthRange { min: 1e-3, max: 10.0 };
        let mut m = DepthMetrics::default();
        m.update(&[2.0], &[1.0], range).unwrap(); // rmse 1
        m.update(&[3.0, 3.0], &[3.0, 3.0], range).unwrap(); // rmse 0
        m.update(&[1.0], &[0.0], range).unwrap(); // no valid pixel
        let mean = m.mean().unwrap();
        close(mean.rmse, 0.5);
        assert_eq!((m.images, m.images_without_valid_pixels), (2, 1));
        assert!(m.update(&[-1.0], &[1.0], range).is_err(), "negative depth is an error");
        assert_eq!(DepthMetrics::default().mean(), None);
    }
}
