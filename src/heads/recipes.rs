//! The named head recipes: `fast` (robust-ssl's, for quick runs on cached features) and `study`
//! (the study's settings, `conf/task/*.yaml` and `train/trainer.py` of its code). Each fills the
//! options a user leaves unset; the augmented `study` recipes need features recomputed every
//! epoch (an augmented image has features of its own), so they never read the feature cache.
//! Both train for the recipe's epochs and keep the last epoch's head: never a model chosen on
//! the test split (the study's code keeps the epoch with the best test score).

use serde::{Deserialize, Serialize};

use super::head::Task;
use super::train::Schedule;
use crate::data::transform::Transform;
use crate::optim::OptimizerKind;

/// A head recipe by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipeName {
    Fast,
    Study,
}
crate::choices!(RecipeName { Fast = "fast", Study = "study" });

/// Random training augmentation of a head recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    #[default]
    None,
    /// torchvision `RandomCrop(size, padding = size/8)` + `RandomHorizontalFlip` (the study's
    /// classification, `data/transforms.py` ClassificationTranform).
    CropFlip,
    /// A random crop instead of the centre crop, then albumentations `Flip` (horizontal,
    /// vertical or both; the study's SegmentationTransform).
    CropFlips,
    /// A random horizontal flip (depth).
    Flip,
}

impl Augment {
    pub fn is_none(&self) -> bool {
        *self == Augment::None
    }

    /// The training transforms: `transforms` (deterministic, ending with the padding to the
    /// patch) with this augmentation's random steps, placed before the padding.
    pub fn training_transforms(self, transforms: &[Transform]) -> Vec<Transform> {
        let at = transforms.iter().position(|t| matches!(t, Transform::PadToMultiple(_))).unwrap_or(transforms.len());
        let size = transforms[..at].iter().rev().find_map(|t| match t {
            Transform::CenterCrop(h, _) | Transform::Resize(h, _) | Transform::ResizeShort(h) => Some(*h),
            _ => None,
        });
        let (mut head, tail) = (transforms[..at].to_vec(), transforms[at..].to_vec());
        match self {
            Augment::None => {}
            Augment::CropFlip => {
                if let Some(s) = size.filter(|&s| s >= 8) {
                    head.push(Transform::PadRandomCrop(4 * s / 32));
                }
                head.push(Transform::HFlip);
            }
            Augment::CropFlips => {
                for t in head.iter_mut() {
                    if let Transform::CenterCrop(h, w) = *t {
                        *t = Transform::RandomCrop(h, w);
                    }
                }
                head.push(Transform::Flips);
            }
            Augment::Flip => head.push(Transform::HFlip),
        }
        head.extend(tail);
        head
    }
}

/// What a recipe sets for a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Defaults {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub schedule: Schedule,
    pub augment: Augment,
}

/// The settings of recipe `name` for a `task` head.
pub fn defaults(name: RecipeName, task: Task) -> Defaults {
    match (name, task) {
        // Ours: cached features, no augmentation.
        (RecipeName::Fast, Task::Cls) => Defaults {
            epochs: 100,
            batch_size: 256,
            lr: 1e-3,
            optimizer: OptimizerKind::AdamW { weight_decay: 0.0 },
            schedule: Schedule::Cosine,
            augment: Augment::None,
        },
        (RecipeName::Fast, _) => Defaults {
            epochs: 20,
            batch_size: 8,
            lr: 1e-3,
            optimizer: OptimizerKind::AdamW { weight_decay: 1e-4 },
            schedule: Schedule::Poly { power: 1.0 },
            augment: Augment::None,
        },
        // The study: `torch.optim.Adam(lr=0.5)` (no weight decay: AdamW with 0 is the same
        // update), 5 epochs of 128, a constant rate, crop + flip.
        (RecipeName::Study, Task::Cls) => Defaults {
            epochs: 5,
            batch_size: 128,
            lr: 0.5,
            optimizer: OptimizerKind::AdamW { weight_decay: 0.0 },
            schedule: Schedule::Constant,
            augment: Augment::CropFlip,
        },
        // AdamW 1e-3, wd 1e-4, 50 epochs of 16; its poly schedule, (1 − 1/(T − t + 1)), stays at
        // 1 to within 1/(T − t + 1): constant here. Random crop + flips.
        (RecipeName::Study, Task::Seg) => Defaults {
            epochs: 50,
            batch_size: 16,
            lr: 1e-3,
            optimizer: OptimizerKind::AdamW { weight_decay: 1e-4 },
            schedule: Schedule::Constant,
            augment: Augment::CropFlips,
        },
        // AdamW 1e-4, wd 0.01, 20 epochs of 128, constant, horizontal flip.
        (RecipeName::Study, Task::Depth) => Defaults {
            epochs: 20,
            batch_size: 128,
            lr: 1e-4,
            optimizer: OptimizerKind::AdamW { weight_decay: 0.01 },
            schedule: Schedule::Constant,
            augment: Augment::Flip,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn augmentations_go_before_the_padding() {
        let det = crate::data::transform::default_transforms(224, 14);
        let names = |a: Augment| a.training_transforms(&det).iter().map(Transform::describe).collect::<Vec<_>>().join(",");
        assert_eq!(names(Augment::None), "resize-short224,crop224x224,pad14");
        assert_eq!(names(Augment::CropFlip), "resize-short224,crop224x224,pad-random-crop28,hflip,pad14");
        assert_eq!(names(Augment::CropFlips), "resize-short224,random-crop224x224,flips,pad14");
        assert_eq!(names(Augment::Flip), "resize-short224,crop224x224,hflip,pad14");
    }
}
