//! The two protocols a run can follow, as one switch: `robust-ssl` (ours, the default: 224-px
//! crops, the strongest attack settings, shared work) and `study` (everything the study does:
//! DINOv2 classification at 518 px and DINO at 224; segmentation on whole images through 518/341
//! or 224/100 windows; depth on the whole 480×640 frame, centre-padded; its head and DeACL
//! recipes; a fixed step of 2/255, the last iterate, its SegPGD form and PGD's logit scaling;
//! EmbedAttack per task) with the study code's bugs left out (see `report::protocol`). A protocol
//! only fills what a user leaves unset: any setting can be overridden on top of either.

use anyhow::{bail, Result};

use crate::attacks::segpgd::SegPgdForm;
use crate::attacks::spec::{Iterate, StepSize};
use crate::data::transform::{default_transforms, Transform, DEFAULT_SIZE};
use crate::encoder::arch::Family;
use crate::heads::head::Task;
use crate::heads::recipes::RecipeName;
use crate::heads::sliding::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    RobustSsl,
    Study,
}
crate::choices!(Protocol { RobustSsl = "robust-ssl", Study = "study" });

/// The study's NYU frame (its `DepthEstimationTransform`: `A.Resize(480, 640)`).
pub const STUDY_DEPTH_FRAME: (usize, usize) = (480, 640);

/// What a protocol sets for the attacks it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttackDefaults {
    pub step: StepSize,
    pub iterate: Iterate,
    pub segpgd: SegPgdForm,
    pub ce_scaling: bool,
}

impl Protocol {
    /// The study's image side for an encoder family (its `image_size`: 518 for DINOv2, 224 for
    /// DINO).
    pub fn study_side(family: Family) -> usize {
        match family {
            Family::DinoV2 => 518,
            Family::DinoV1 => DEFAULT_SIZE,
        }
    }

    /// The deterministic transforms of a `task`'s images for an encoder of `family` and `patch`
    /// (`side` overrides the protocol's image side). Under the study, classification and
    /// segmentation resize the shorter side to the family's side (segmentation heads train on
    /// crops of it and are scored through windows over the whole resized image); depth takes the
    /// 480×640 frame. A side that is no multiple of the patch is refused under the study (its
    /// inputs are whole patch grids: 518 = 37 × 14).
    pub fn transforms(self, task: Task, family: Family, patch: usize, side: Option<usize>) -> Result<Vec<Transform>> {
        match self {
            Protocol::RobustSsl => Ok(default_transforms(side.unwrap_or(DEFAULT_SIZE), patch)),
            Protocol::Study => {
                let s = side.unwrap_or_else(|| Self::study_side(family));
                if patch == 0 || !s.is_multiple_of(patch) {
                    bail!(
                        "an image side of {s} px does not fit {patch}-px patches: the study's inputs are whole patch grids \
                         ({} for this encoder); give a multiple of {patch}",
                        Self::study_side(family)
                    );
                }
                Ok(match task {
                    Task::Cls | Task::Seg => default_transforms(s, patch),
                    Task::Depth => {
                        let (h, w) = STUDY_DEPTH_FRAME;
                        vec![Transform::Resize(h, w), Transform::PadToMultiple(patch)]
                    }
                })
            }
        }
    }

    /// How a dense task sees whole images under this protocol: the study's windows for
    /// segmentation (its encoder's image size as the crop, its `stride_size` as the stride: 518:341
    /// for DINOv2, 224:100 for DINO; with another `side`, a crop of that side and the same
    /// overlap), the whole centre-padded frame for depth; `None`: the transformed image as it is
    /// (ours, and classification).
    pub fn window(self, task: Task, family: Family, side: Option<usize>) -> Option<Window> {
        match (self, task) {
            (Protocol::RobustSsl, _) | (_, Task::Cls) => None,
            (Protocol::Study, Task::Seg) => {
                let (crop, stride) = match family {
                    Family::DinoV2 => (518, 341),
                    Family::DinoV1 => (224, 100),
                };
                Some(match side {
                    Some(s) if s != crop => Window::Slide { crop: s, stride: ((s * stride + crop / 2) / crop).max(1) },
                    _ => Window::Slide { crop, stride },
                })
            }
            (Protocol::Study, Task::Depth) => Some(Window::Whole),
        }
    }

    /// The head recipe (`heads::recipes`).
    pub fn head_recipe(self) -> RecipeName {
        match self {
            Protocol::RobustSsl => RecipeName::Fast,
            Protocol::Study => RecipeName::Study,
        }
    }

    /// The DeACL recipe (`defense::recipe`).
    pub fn deacl_recipe(self) -> crate::defense::recipe::RecipeName {
        match self {
            Protocol::RobustSsl => crate::defense::recipe::RecipeName::Fast,
            Protocol::Study => crate::defense::recipe::RecipeName::Study,
        }
    }

    /// The attack settings: ours (step ε/4, the best point seen, SegPGD as its paper defines it,
    /// logits as they are) or the study's (2/255 at every ε, the last iterate, its SegPGD means,
    /// logits divided by max(1, max logit)).
    pub fn attack_defaults(self) -> AttackDefaults {
        match self {
            Protocol::RobustSsl => {
                AttackDefaults { step: StepSize::DEFAULT, iterate: Iterate::Best, segpgd: SegPgdForm::Paper, ce_scaling: false }
            }
            Protocol::Study => AttackDefaults {
                step: StepSize::Absolute(2.0 / 255.0),
                iterate: Iterate::Last,
                segpgd: SegPgdForm::Study,
                ce_scaling: true,
            },
        }
    }

    /// The point an attack of `kind` returns: the protocol's, except APGD, which restarts from
    /// its best point by design and always returns it.
    pub fn iterate(self, kind: crate::attacks::spec::AttackKind) -> Iterate {
        if kind.keeps_best() {
            Iterate::Best
        } else {
            self.attack_defaults().iterate
        }
    }

    /// The step as a user would write it (kept in cell keys and the report).
    pub fn step_text(self) -> Option<&'static str> {
        match self {
            Protocol::RobustSsl => None,
            Protocol::Study => Some("2/255"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The study's sizes, windows and attack settings, as its code sets them
    /// (`conf/ssl_model/dino_v2_*.yaml` image_size 518; `data/transforms.py`; `attack.py`).
    #[test]
    fn the_study_protocol_is_the_studys_settings() {
        let names = |t: Vec<Transform>| t.iter().map(Transform::describe).collect::<Vec<_>>().join(",");
        let study = Protocol::Study;
        assert_eq!(names(study.transforms(Task::Cls, Family::DinoV2, 14, None).unwrap()), "resize-short518,crop518x518,pad14");
        assert_eq!(names(study.transforms(Task::Cls, Family::DinoV1, 16, None).unwrap()), "resize-short224,crop224x224,pad16");
        assert_eq!(names(study.transforms(Task::Depth, Family::DinoV2, 14, None).unwrap()), "resize480x640,pad14");
        assert_eq!(
            names(Protocol::RobustSsl.transforms(Task::Cls, Family::DinoV2, 14, None).unwrap()),
            "resize-short224,crop224x224,pad14"
        );
        let err = study.transforms(Task::Seg, Family::DinoV2, 14, Some(520)).unwrap_err().to_string();
        assert!(err.contains("520 px does not fit 14-px patches"), "{err}");
        assert_eq!(study.window(Task::Seg, Family::DinoV2, None), Some(Window::Slide { crop: 518, stride: 341 }));
        assert_eq!(study.window(Task::Seg, Family::DinoV1, None), Some(Window::Slide { crop: 224, stride: 100 }));
        assert_eq!(study.window(Task::Seg, Family::DinoV2, Some(56)), Some(Window::Slide { crop: 56, stride: 37 }));
        assert_eq!(study.window(Task::Depth, Family::DinoV1, None), Some(Window::Whole));
        assert_eq!(study.window(Task::Cls, Family::DinoV2, None), None);
        assert_eq!(Protocol::RobustSsl.window(Task::Seg, Family::DinoV2, None), None);
        let a = study.attack_defaults();
        assert_eq!((a.step.at(16.0 / 255.0), a.iterate, a.segpgd, a.ce_scaling), (2.0 / 255.0, Iterate::Last, SegPgdForm::Study, true));
        assert_eq!(Protocol::RobustSsl.attack_defaults().step.at(8.0 / 255.0), 2.0 / 255.0);
        assert!("studdy".parse::<Protocol>().is_err());
    }
}
