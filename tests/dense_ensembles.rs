//! The dense heads' ensembles (`--attack sea`, `--attack depth-ensemble`) and their losses: each
//! new loss's pixel gradient against finite differences through the whole pipeline; the ensemble
//! keeps per image the worst of its parts (never weaker than any of them, image by image); as a
//! user runs them, they are at least as strong as the task's own attack (SegPGD, DepthPGD) at the
//! same iterations; and they are refused on a head they do not fit.

mod common;

#[path = "common/attacking.rs"]
#[allow(dead_code)]
mod attacking;

use attacking::{check_gradient, encoder, images, random_dense_heads};
use candle_core::DType;
use common::{fails_with, ok_json};
use robust_ssl::attacks::depthpgd::{DepthLoss, DepthPgd};
use robust_ssl::attacks::seg_losses::{SegLoss, SegObjective};
use robust_ssl::encoder::Reads;
use robust_ssl::metrics::DepthRange;

/// Every SEA loss and the depth ensemble's absolute relative error: pixel gradients match central
/// finite differences in f64 (the masks are piecewise constant). CosPGD's and the scaled depth
/// loss hold a weight constant by definition, which finite differences do not: they are checked
/// against their sources' restatements instead (`tests/attacks.rs`, sea_losses fixture).
#[test]
fn new_losses_have_true_gradients() {
    let enc = encoder().to(&candle_core::Device::Cpu, DType::F64).unwrap();
    let x = images(2, 9).to_dtype(DType::F64).unwrap().affine(0.8, 0.1).unwrap();
    let (seg, depth) = random_dense_heads(3, DType::F64);
    let mut rng = robust_ssl::rng::SplitMix64::new(5);
    let labels: Vec<u32> = (0..2 * 28 * 28).map(|i| if i % 17 == 0 { 255 } else { (rng.uniform(0.0, 5.0) as u32).min(4) }).collect();
    for loss in SegLoss::SEA {
        check_gradient(&enc, &SegObjective { head: &seg, labels: labels.clone(), height: 28, width: 28, loss }, &x);
    }
    let metres: Vec<f32> = (0..2 * 28 * 28).map(|i| if i % 13 == 0 { 0.0 } else { 0.5 + rng.uniform(0.0, 4.0) as f32 }).collect();
    let range = DepthRange { min: 1e-3, max: 10.0 };
    let obj = DepthPgd { head: &depth, reads: Reads::Final, metres, height: 28, width: 28, range, loss: DepthLoss::AbsRel };
    check_gradient(&enc, &obj, &x);
}

/// As a user runs them on trained heads of synthetic scenes: the ensembles leave figures no
/// better than the task's own attack at the same iterations, and no better than clean.
#[test]
fn ensembles_are_at_least_as_strong_as_the_task_attack() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = common::tiny_encoder();
    for (task, kind, own, ensemble, metric) in [
        ("seg", "synthetic-seg", "segpgd", "sea", "pixel_accuracy"),
        ("seg", "synthetic-seg", "segpgd", "sea", "miou"),
        ("seg", "synthetic-seg", "segpgd", "cospgd", "miou"),
        ("depth", "synthetic-depth", "depthpgd", "depth-ensemble", "rmse"),
    ] {
        let head = tmp.path().join(format!("{task}.safetensors")).display().to_string();
        if !std::path::Path::new(&head).exists() {
            ok_json(&[
                "train-head",
                "--task",
                task,
                "--checkpoint",
                &enc,
                "--num-heads",
                "4",
                "--dataset",
                &format!("{kind}:32x28"),
                "--size",
                "28",
                "--epochs",
                "20",
                "--lr",
                "1e-2",
                "--out",
                &head,
                "--json",
            ]);
        }
        let data = format!("{kind}:8x28");
        let attack = |name: &str| {
            ok_json(&[
                "attack",
                "--task",
                task,
                "--checkpoint",
                &enc,
                "--num-heads",
                "4",
                "--dataset",
                &data,
                "--size",
                "28",
                "--head",
                &head,
                "--attack",
                name,
                "--eps",
                "8/255",
                "--steps",
                "10",
                "--json",
            ])
        };
        let (mine, theirs) = (attack(ensemble), attack(own));
        let get = |r: &serde_json::Value, which: &str| r[which]["head"][metric].as_f64().unwrap_or_else(|| panic!("{metric} in {r}"));
        let sign = if metric == "rmse" { -1.0 } else { 1.0 };
        assert!(sign * get(&mine, "adversarial") <= sign * get(&mine, "clean"), "{ensemble}: {mine}");
        if ensemble != "cospgd" {
            assert!(
                sign * get(&mine, "adversarial") <= sign * get(&theirs, "adversarial") + 1e-9,
                "{ensemble} vs {own} on {metric}: {} vs {}",
                get(&mine, "adversarial"),
                get(&theirs, "adversarial")
            );
        }
        assert!(mine["sanity"]["max_norm_over_eps"].as_f64().unwrap() <= 1.0 + 1e-5);
    }
    // Ensembles that do not fit the head are refused before any work.
    let head = tmp.path().join("seg.safetensors").display().to_string();
    let data = "synthetic-seg:2x28".to_string();
    for name in ["depth-ensemble", "autoattack", "fab-t"] {
        fails_with(
            &[
                "attack",
                "--task",
                "seg",
                "--checkpoint",
                &enc,
                "--num-heads",
                "4",
                "--dataset",
                &data,
                "--size",
                "28",
                "--head",
                &head,
                "--attack",
                name,
                "--json",
            ],
            &[name, "does not fit a seg head", "sea, cospgd"],
        );
    }
}
