//! The named fine-tuning recipes: `study` (the study's DeACL, `fine_tune/deacl/deacl.py` and
//! `conf/task/deacl.yaml` of its code) and `fast` (ours, for a quick run on one machine). Every
//! setting a user does not give comes from the recipe chosen; the defaults are written here once.

use crate::data::transform::Transform;
use crate::heads::train::Schedule;

/// A fine-tuning recipe by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipeName {
    Fast,
    Study,
}
crate::choices!(RecipeName { Fast = "fast", Study = "study" });

/// Training settings of a recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct FinetuneRecipe {
    pub name: RecipeName,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Linear warm-up steps before the schedule, as a fraction of all steps (step schedules).
    pub warmup_fraction: f64,
    /// Random training augmentations after the deterministic transforms (image size `size`).
    pub augment: Vec<Transform>,
    /// Robustness weight k of DeACL's second term.
    pub k: f64,
}

impl FinetuneRecipe {
    /// The study's DeACL: SGD lr 0.5, weight decay 5e-4, no momentum (`torch.optim.SGD` without
    /// `momentum`), 101 epochs of batch 512 (its 128 per GPU on 4 GPUs: DDP averages their
    /// gradients, one step of 512 samples), the learning rate set per epoch by pl_bolts'
    /// `LinearWarmupCosineAnnealingLR` (warm-up from 0.003 over 10 epochs, cosine to 0),
    /// torchvision `RandomCrop(size, padding = size/8)` + `RandomHorizontalFlip`, k = 2.
    pub fn study(size: usize) -> Self {
        Self {
            name: RecipeName::Study,
            epochs: 101,
            batch_size: 512,
            lr: 0.5,
            momentum: 0.0,
            weight_decay: 5e-4,
            schedule: Schedule::EpochWarmupCosine { warmup_epochs: 10, start_lr: 0.003 },
            warmup_fraction: 0.0,
            augment: vec![Transform::PadRandomCrop(4 * size / 32), Transform::HFlip],
            k: 2.0,
        }
    }

    /// Ours: the study's optimizer with momentum 0.9, one epoch of batch 8, a cosine schedule per
    /// step after a linear warm-up over a tenth of the steps, no augmentation — a short run that
    /// moves the weights measurably on one CPU.
    pub fn fast() -> Self {
        Self {
            name: RecipeName::Fast,
            epochs: 1,
            batch_size: 8,
            lr: 0.5,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: Schedule::Cosine,
            warmup_fraction: 0.1,
            augment: vec![],
            k: 2.0,
        }
    }

    pub fn named(name: RecipeName, size: usize) -> Self {
        match name {
            RecipeName::Fast => Self::fast(),
            RecipeName::Study => Self::study(size),
        }
    }
}
