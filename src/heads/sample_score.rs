//! One sample's result under an attack, kept per sample so results can be combined across attacks:
//! the worst case over every attack run on an image (AutoAttack's per-sample worst case, SEA's
//! per-image one) and the gradient-masking check (a gradient-free attack beating every gradient
//! attack on a sample). Scores of many samples sum back into the task's metrics exactly as one
//! pass over them would.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::evaluate::Metrics;
use super::head::{Task, TrainedHead};
use crate::data::IGNORE;
use crate::features::Targets;
use crate::metrics::{depth_errors, Accuracy, ConfusionMatrix, DepthErrors, DepthMetrics, DepthRange};

/// One sample's figures: its classification outcome (robust accuracy's: correct on the clean
/// input and under the attack), its segmentation's (label, prediction) pixel counts, or its depth
/// errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum SampleScore {
    Cls {
        correct: bool,
    },
    Seg {
        classes: usize,
        /// (label, prediction, pixels) for every pair that occurs; ignored pixels left out.
        pairs: Vec<(u32, u32, u64)>,
    },
    Depth {
        /// `None` for an image without a valid depth pixel.
        errors: Option<DepthErrors>,
    },
}

impl SampleScore {
    /// The image's own figures, for per-sample outputs: `correct` for a classifier; the task's
    /// metrics on this image alone for the dense tasks (mIoU over the classes it shows).
    pub fn figures(&self) -> Result<serde_json::Value> {
        Ok(match self {
            SampleScore::Cls { correct } => serde_json::json!({ "correct": correct }),
            other => combine(std::iter::once(other))?.figure_map(),
        })
    }

    /// How badly the sample is predicted, for the worst case: 1 for a misclassified sample, the
    /// fraction of wrong pixels (SEA's per-image choice), the image's RMSE. Higher is worse.
    pub fn badness(&self) -> f64 {
        match self {
            SampleScore::Cls { correct } => f64::from(u8::from(!correct)),
            SampleScore::Seg { pairs, .. } => {
                let total: u64 = pairs.iter().map(|p| p.2).sum();
                let wrong: u64 = pairs.iter().filter(|p| p.0 != p.1).map(|p| p.2).sum();
                if total == 0 {
                    0.0
                } else {
                    wrong as f64 / total as f64
                }
            }
            SampleScore::Depth { errors } => errors.map_or(f64::NEG_INFINITY, |e| e.rmse),
        }
    }

    /// The scores of a batch of `n` samples from a head's outputs (logits `[n, K]` /
    /// `[n, K, H, W]`, depth `[n, H, W]`) against their targets; for a classifier, `clean` (its
    /// clean logits) makes a clean mistake count as a mistake, as robust accuracy is defined.
    pub fn of_batch(head: &TrainedHead, out: &Tensor, clean: Option<&Tensor>, targets: &Targets, file: &str) -> Result<Vec<SampleScore>> {
        let meta = &head.meta;
        match (meta.task, targets) {
            (Task::Cls, Targets::Class(labels)) => {
                let adv = out.argmax(1)?.to_vec1::<u32>()?;
                let cln = match clean {
                    Some(c) => c.argmax(1)?.to_vec1::<u32>()?,
                    None => labels.clone(),
                };
                if adv.len() != labels.len() || cln.len() != labels.len() {
                    bail!("{file}: {} predictions for {} labels", adv.len(), labels.len());
                }
                Ok(adv.iter().zip(&cln).zip(labels).map(|((a, c), l)| SampleScore::Cls { correct: a == l && c == l }).collect())
            }
            (Task::Seg, Targets::Segmentation { labels, height, width }) => {
                let classes = out.argmax(1)?.flatten_all()?.to_vec1::<u32>()?;
                let per = height * width;
                if classes.len() != labels.len() || per == 0 {
                    bail!("{file}: {} predicted pixels for {} labelled pixels", classes.len(), labels.len());
                }
                classes
                    .chunks(per)
                    .zip(labels.chunks(per))
                    .map(|(p, l)| {
                        let mut m = ConfusionMatrix::new(meta.outputs, IGNORE);
                        m.update(p, l).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
                        let k = meta.outputs;
                        let pairs =
                            (0..k * k).filter(|&i| m.counts[i] > 0).map(|i| ((i / k) as u32, (i % k) as u32, m.counts[i])).collect();
                        Ok(SampleScore::Seg { classes: k, pairs })
                    })
                    .collect()
            }
            (Task::Depth, Targets::Depth { metres, height, width }) => {
                let Some((min, max)) = meta.depth_range else { bail!("{file}: a depth head without a depth range") };
                let depth = out.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let per = height * width;
                if depth.len() != metres.len() || per == 0 {
                    bail!("{file}: {} predicted depths for {} measured pixels", depth.len(), metres.len());
                }
                depth
                    .chunks(per)
                    .zip(metres.chunks(per))
                    .map(|(p, g)| Ok(SampleScore::Depth { errors: depth_errors(p, g, DepthRange { min, max })? }))
                    .collect()
            }
            (task, t) => bail!("{file}: a {task} head cannot be scored on {}", t.kind()),
        }
    }
}

/// The task's metrics over `samples`, as one pass over them scores them.
pub fn combine<'a>(samples: impl IntoIterator<Item = &'a SampleScore>) -> Result<Metrics> {
    let mut samples = samples.into_iter().peekable();
    let Some(first) = samples.peek() else { bail!("no sample to combine") };
    Ok(match first {
        SampleScore::Cls { .. } => {
            let mut a = Accuracy::default();
            for s in samples {
                let SampleScore::Cls { correct } = s else { bail!("samples of different tasks") };
                a.correct += u64::from(*correct);
                a.total += 1;
            }
            Metrics::Cls { accuracy: a.value().unwrap_or(f64::NAN), correct: a.correct, total: a.total }
        }
        SampleScore::Seg { classes, .. } => {
            let mut m = ConfusionMatrix::new(*classes, IGNORE);
            for s in samples {
                let SampleScore::Seg { classes: k, pairs } = s else { bail!("samples of different tasks") };
                if *k != m.num_classes {
                    bail!("samples scored on {k} and {} classes", m.num_classes);
                }
                for &(l, p, c) in pairs {
                    if l as usize >= *k || p as usize >= *k {
                        bail!("a pixel count of class {l} predicted as {p} is out of range for {k} classes");
                    }
                    m.counts[l as usize * k + p as usize] += c;
                }
            }
            Metrics::Seg {
                miou: m.miou().ok_or_else(|| anyhow::anyhow!("no labelled pixel: mIoU is undefined"))?,
                pixel_accuracy: m.pixel_accuracy().unwrap_or(f64::NAN),
                iou_per_class: m.iou_per_class(),
            }
        }
        SampleScore::Depth { .. } => {
            let mut m = DepthMetrics::default();
            for s in samples {
                let SampleScore::Depth { errors } = s else { bail!("samples of different tasks") };
                m.add_image(*errors);
            }
            Metrics::Depth {
                errors: m.mean().ok_or_else(|| anyhow::anyhow!("no image with a valid depth pixel"))?,
                images: m.images,
                images_without_valid_pixels: m.images_without_valid_pixels,
                averaging: "per image, then mean over images".into(),
            }
        }
    })
}

/// Per-class pixel counts of a selection of segmentation scores: true positives, labelled and
/// predicted pixels, for mIoU in O(classes) as one image's choice changes.
struct ClassCounts {
    tp: Vec<i64>,
    truth: Vec<i64>,
    predicted: Vec<i64>,
}

impl ClassCounts {
    fn apply(&mut self, s: &SampleScore, sign: i64) {
        let SampleScore::Seg { pairs, .. } = s else { return };
        for &(l, p, c) in pairs {
            let c = sign * c as i64;
            if l == p {
                self.tp[l as usize] += c;
            }
            self.truth[l as usize] += c;
            self.predicted[p as usize] += c;
        }
    }

    /// Mean IoU over the classes with a non-empty union (as [`ConfusionMatrix::miou`]).
    fn miou(&self) -> f64 {
        let ious: Vec<f64> = (0..self.tp.len())
            .filter_map(|c| {
                let union = self.truth[c] + self.predicted[c] - self.tp[c];
                (union > 0).then(|| self.tp[c] as f64 / union as f64)
            })
            .collect();
        if ious.is_empty() {
            f64::NAN
        } else {
            ious.iter().sum::<f64>() / ious.len() as f64
        }
    }
}

/// The lowest mIoU a choice of one score per image reaches: SEA's way of taking the worst case of
/// a dataset-level figure over attacks (`worse_only.py`, `worst_case_miou`: passes over the
/// images, each image switched to another attack's prediction wherever that lowers the whole
/// selection's mIoU, until a pass gains nothing). SEA starts from its first loss on every image
/// and passes in shuffled order; here the start is the lowest of `starts` (each a choice per
/// image, an index into that image's `candidates`), the passes go in image order (at most 1,000,
/// SEA's cap), and a switch must lower the mIoU reached so far (SEA's published code compares
/// with the value before the image's first switch, and can switch back: see
/// `tools/gen_worst_miou_fixture.py`). Returns the choice; its mIoU is never above any start's,
/// and on that fixture never above SEA's.
pub fn lowest_miou_choice(candidates: &[Vec<&SampleScore>], starts: &[Vec<usize>]) -> Result<Vec<usize>> {
    let Some(SampleScore::Seg { classes, .. }) = candidates.iter().flatten().next() else {
        bail!("the lowest mIoU needs segmentation scores")
    };
    if starts.is_empty() || starts.iter().any(|s| s.len() != candidates.len() || s.iter().zip(candidates).any(|(&k, c)| k >= c.len())) {
        bail!("internal error: a start choice does not fit the candidates");
    }
    let k = *classes;
    if candidates.iter().flatten().any(|s| !matches!(s, SampleScore::Seg { classes, pairs } if *classes == k && pairs.iter().all(|p| (p.0 as usize) < k && (p.1 as usize) < k))) {
        bail!("segmentation scores of different class counts, or of another task");
    }
    let counts_of = |choice: &[usize]| {
        let mut c = ClassCounts { tp: vec![0; k], truth: vec![0; k], predicted: vec![0; k] };
        for (i, &j) in choice.iter().enumerate() {
            c.apply(candidates[i][j], 1);
        }
        c
    };
    let mut choice = starts.iter().min_by(|a, b| counts_of(a).miou().total_cmp(&counts_of(b).miou())).expect("at least one start").clone();
    let mut counts = counts_of(&choice);
    let mut current = counts.miou();
    for _ in 0..1000 {
        let mut changed = false;
        for (i, options) in candidates.iter().enumerate() {
            for (j, option) in options.iter().enumerate() {
                if j == choice[i] {
                    continue;
                }
                counts.apply(options[choice[i]], -1);
                counts.apply(option, 1);
                let m = counts.miou();
                if m < current {
                    current = m;
                    choice[i] = j;
                    changed = true;
                } else {
                    counts.apply(option, -1);
                    counts.apply(options[choice[i]], 1);
                }
            }
        }
        if !changed {
            break;
        }
    }
    Ok(choice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(pairs: &[(u32, u32, u64)]) -> SampleScore {
        SampleScore::Seg { classes: 3, pairs: pairs.to_vec() }
    }

    /// Two images of three classes by hand. A: labels (0, 0, 1, ignored), predictions (0, 1, 1, 2);
    /// B: labels (2, 2, 1, 0), predictions (2, 0, 1, 0). Confusion (truth × prediction): row 0 = (2,
    /// 1, 0), row 1 = (0, 2, 0), row 2 = (1, 0, 1). IoU: 2/(3+3−2) = ½, 2/(2+3−2) = ⅔, 1/(2+1−1) =
    /// ½; mIoU 5/9; pixel accuracy 5/7. Wrong fractions: ⅓ and ¼.
    #[test]
    fn segmentation_scores_sum_to_the_confusion_by_hand() {
        let a = seg(&[(0, 0, 1), (0, 1, 1), (1, 1, 1)]);
        let b = seg(&[(0, 0, 1), (1, 1, 1), (2, 0, 1), (2, 2, 1)]);
        assert!((a.badness() - 1.0 / 3.0).abs() < 1e-15 && (b.badness() - 0.25).abs() < 1e-15);
        let Metrics::Seg { miou, pixel_accuracy, iou_per_class } = combine([&a, &b]).unwrap() else { panic!() };
        assert!((miou - 5.0 / 9.0).abs() < 1e-15, "{miou}");
        assert!((pixel_accuracy - 5.0 / 7.0).abs() < 1e-15);
        assert_eq!(iou_per_class, vec![Some(0.5), Some(2.0 / 3.0), Some(0.5)]);
        // A count outside the classes, or scores of two tasks, is an error, not a number.
        assert!(combine([&seg(&[(3, 0, 1)])]).is_err());
        assert!(combine([&a, &SampleScore::Cls { correct: true }]).is_err());
        assert!(combine(std::iter::empty::<&SampleScore>()).is_err());
    }

    /// Robust accuracy counts the correct samples: 2 of 3. Depth averages per image and counts
    /// an image without a valid pixel apart: RMSE 1 and 3 → 2.
    #[test]
    fn classification_and_depth_scores_by_hand() {
        let c = [true, false, true].map(|correct| SampleScore::Cls { correct });
        assert_eq!(c[1].badness(), 1.0);
        let Metrics::Cls { accuracy, correct, total } = combine(&c).unwrap() else { panic!() };
        assert_eq!((correct, total), (2, 3));
        assert!((accuracy - 2.0 / 3.0).abs() < 1e-15);
        let e = |rmse: f64| Some(DepthErrors { rmse, ..DepthErrors::default() });
        let d = [SampleScore::Depth { errors: e(1.0) }, SampleScore::Depth { errors: None }, SampleScore::Depth { errors: e(3.0) }];
        assert_eq!(d[2].badness(), 3.0);
        assert_eq!(d[1].badness(), f64::NEG_INFINITY);
        let Metrics::Depth { errors, images, images_without_valid_pixels, .. } = combine(&d).unwrap() else { panic!() };
        assert_eq!((errors.rmse, images, images_without_valid_pixels), (2.0, 2, 1));
    }

    /// Two images, two attacks. Image 0: attack A fools 1 of its 2 class-0 pixels (as class 1),
    /// attack B none but turns its class-1 pixel into class 0. Image 1: A leaves everything,
    /// B fools one class-1 pixel. Picking per image by pixel accuracy takes A on image 0 (½
    /// wrong vs ⅓) and B on image 1; the greedy re-pick starts from the lowest of that and each
    /// attack alone, and ends no higher than any of them.
    #[test]
    fn the_greedy_lowest_miou_is_never_above_its_starts() {
        let s = |pairs: &[(u32, u32, u64)]| SampleScore::Seg { classes: 2, pairs: pairs.to_vec() };
        let a0 = s(&[(0, 0, 1), (0, 1, 1)]);
        let b0 = s(&[(0, 0, 2), (1, 0, 1)]);
        let a1 = s(&[(1, 1, 2), (0, 0, 2)]);
        let b1 = s(&[(1, 1, 1), (1, 0, 1), (0, 0, 2)]);
        let candidates = vec![vec![&a0, &b0], vec![&a1, &b1]];
        let miou = |choice: &[usize]| {
            let Metrics::Seg { miou, .. } = combine(choice.iter().enumerate().map(|(i, &j)| candidates[i][j])).unwrap() else { panic!() };
            miou
        };
        let starts = vec![vec![0, 1], vec![0, 0], vec![1, 1]];
        let choice = lowest_miou_choice(&candidates, &starts).unwrap();
        let best_start = starts.iter().map(|c| miou(c)).fold(f64::INFINITY, f64::min);
        assert!(miou(&choice) <= best_start, "{} > {best_start}", miou(&choice));
        // Exhaustively, the lowest of the four choices is found here.
        let all = [[0, 0], [0, 1], [1, 0], [1, 1]].map(|c| miou(&c));
        assert_eq!(miou(&choice), all.iter().copied().fold(f64::INFINITY, f64::min), "{all:?}");
        assert!(lowest_miou_choice(&candidates, &[vec![0]]).is_err());
        assert!(lowest_miou_choice(&[vec![&SampleScore::Cls { correct: true }]], &[vec![0]]).is_err());
    }

    /// SEA's own worst-case mIoU (`worse_only.py`, restated in `tools/gen_worst_miou_fixture.py`)
    /// on random maps: our mIoU of SEA's selection, of its start and of the per-image pick is
    /// SEA's figure, and our search, from SEA's start or from each attack alone and the per-image
    /// pick, ends no higher than SEA's search does (SEA's, as published, can switch an image back
    /// to its earlier attack after a better one within the same pass: see the generator).
    #[test]
    fn the_lowest_miou_is_at_least_as_low_as_seas_worst_case() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!("../../tests/fixtures/attacks/worst_miou.json")).unwrap();
        for case in fixture["cases"].as_array().unwrap() {
            let classes = case["classes"].as_u64().unwrap() as usize;
            let scores: Vec<Vec<SampleScore>> = case["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|image| {
                    image
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| SampleScore::Seg { classes, pairs: serde_json::from_value(p.clone()).unwrap() })
                        .collect()
                })
                .collect();
            let candidates: Vec<Vec<&SampleScore>> = scores.iter().map(|s| s.iter().collect()).collect();
            let choice_of =
                |key: &str| -> Vec<usize> { case[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect() };
            let miou = |choice: &[usize]| {
                let Metrics::Seg { miou, .. } = combine(choice.iter().enumerate().map(|(i, &j)| candidates[i][j])).unwrap() else {
                    panic!()
                };
                miou
            };
            let (n, attacks) = (candidates.len(), candidates[0].len());
            let sea = case["sea_miou"].as_f64().unwrap();
            assert!((miou(&choice_of("sea_selection")) - sea).abs() < 1e-12, "{} vs SEA {sea}", miou(&choice_of("sea_selection")));
            assert!((miou(&vec![0; n]) - case["first_attack_miou"].as_f64().unwrap()).abs() < 1e-12);
            let pick = choice_of("per_image_pick");
            assert!((miou(&pick) - case["per_image_pick_miou"].as_f64().unwrap()).abs() < 1e-12);
            // From SEA's own start (its first attack on every image) the search alone does as well.
            let from_first = miou(&lowest_miou_choice(&candidates, &[vec![0; n]]).unwrap());
            assert!(from_first <= sea + 1e-12, "{n} images: ours from SEA's start {from_first} > SEA's {sea}");
            let mut starts: Vec<Vec<usize>> = (0..attacks).map(|a| vec![a; n]).collect();
            starts.push(pick);
            let ours = miou(&lowest_miou_choice(&candidates, &starts).unwrap());
            assert!(ours <= sea + 1e-12, "{n} images: ours {ours} > SEA's {sea}");
            eprintln!("{n} images: SEA's {sea:.6}, ours from its start {from_first:.6}, from every start {ours:.6}");
        }
    }
}
