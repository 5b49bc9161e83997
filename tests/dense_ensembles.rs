//! The dense heads' ensembles (`--attack sea`, `--attack depth-ensemble`) and their losses: each
//! new loss's pixel gradient against finite differences through the whole pipeline; the ensemble
//! keeps per image the worst of its parts (never weaker than any of them, image by image); as a
//! user runs them, they are at least as strong as the task's own attack (SegPGD, DepthPGD) at the
//! same iterations; Square searches on both dense heads without a gradient; and the ensembles are
//! refused on a head they do not fit.

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
        check_gradient(&enc, &SegObjective { head: &seg, labels: labels.clone(), height: 28, width: 28, loss, steer_by_ce: false }, &x);
    }
    let metres: Vec<f32> = (0..2 * 28 * 28).map(|i| if i % 13 == 0 { 0.0 } else { 0.5 + rng.uniform(0.0, 4.0) as f32 }).collect();
    let range = DepthRange { min: 1e-3, max: 10.0 };
    let obj = DepthPgd { head: &depth, reads: Reads::Final, metres, height: 28, width: 28, range, loss: DepthLoss::AbsRel };
    check_gradient(&enc, &obj, &x);
}

/// SEA's later radii start where the earlier stopped: `attack_from` begins at the given points,
/// projected into the new ball (no step: exactly those points, clipped to ε).
#[test]
fn a_stage_starts_from_the_points_given() {
    let enc = encoder();
    let x = images(2, 3);
    let (seg, _) = random_dense_heads(4, DType::F32);
    let labels: Vec<u32> = (0..2 * 28 * 28).map(|i| (i % 5) as u32).collect();
    let obj = SegObjective { head: &seg, labels, height: 28, width: 28, loss: SegLoss::MaskedCe, steer_by_ce: true };
    let start = (&x + 0.05).unwrap().clamp(0f32, 1f32).unwrap();
    let mut cfg = attacking::config(robust_ssl::attacks::threat::Norm::Linf, 0.02, 0, 0);
    cfg.method = robust_ssl::attacks::engine::Method::Apgd;
    let out = robust_ssl::attacks::engine::attack_from(&enc, &obj, &x, &start, &cfg).unwrap();
    let want = (&x + 0.02).unwrap().clamp(0f32, 1f32).unwrap();
    let gap = (out.adversarial - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(gap < 1e-6, "{gap}");
}

/// SEA's four losses and CosPGD's, value and logit gradient, against their sources' definitions
/// restated in PyTorch (tools/gen_sea_fixtures.py; checked there against the sources' own
/// functions): per image, the mean over all its pixels; masks and CosPGD's weight held.
#[test]
fn losses_match_sea_and_cospgd() {
    let f = candle_core::safetensors::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attacks/sea_losses.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let logits = candle_core::Var::from_tensor(&f["logits"]).unwrap();
    let labels: Vec<u32> = f["labels"].flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().map(|&v| v as u32).collect();
    let weights: Vec<f64> = f["class_weights"].to_vec1().unwrap();
    assert!(labels.contains(&255), "the fixture has ignored pixels");
    for (name, loss) in [
        ("masked_ce", SegLoss::MaskedCe),
        ("masked_balanced_ce", SegLoss::MaskedBalancedCe),
        ("js", SegLoss::Js),
        ("masked_spherical", SegLoss::MaskedSpherical),
        ("cospgd", SegLoss::CosPgd),
    ] {
        let per_image = robust_ssl::attacks::seg_losses::seg_losses(loss, logits.as_tensor(), &labels, &weights).unwrap();
        let got: Vec<f64> = per_image.to_vec1().unwrap();
        let want: Vec<f64> = f[&format!("{name}_losses")].to_vec1().unwrap();
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-12 + 1e-9 * b.abs(), "{name}: {got:?} vs {want:?}");
        }
        let grads = per_image.sum_all().unwrap().backward().unwrap();
        let g: Vec<f64> = grads.get(logits.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f64> = f[&format!("{name}_grad")].flatten_all().unwrap().to_vec1().unwrap();
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = g.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-9 * scale.max(1.0), "{name}: gradient off by {worst} (largest {scale})");
    }
}

/// `attack` on the tiny DINOv2 with a head of `task` and `--attack kind`, as JSON.
fn args(task: &str, head: &str, data: &str, kind: &str, extra: &[&str]) -> Vec<String> {
    let enc = common::tiny_encoder();
    let mut v = vec!["attack", "--task", task, "--checkpoint", &enc, "--num-heads", "4", "--dataset", data, "--size", "28", "--head", head];
    v.extend(["--attack", kind, "--json"]);
    v.extend(extra);
    v.iter().map(|s| s.to_string()).collect()
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
            ok_json(&args(task, &head, &data, name, &["--eps", "8/255", "--steps", "10"]).iter().map(String::as_str).collect::<Vec<_>>())
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
    // Square, the gradient-free check, on both dense heads: it searches (the figure worsens),
    // takes no gradient step and holds the budget.
    for (task, kind, metric) in [("seg", "synthetic-seg", "pixel_accuracy"), ("depth", "synthetic-depth", "rmse")] {
        let head = tmp.path().join(format!("{task}.safetensors")).display().to_string();
        let data = format!("{kind}:8x28");
        let r = ok_json(
            &args(task, &head, &data, "square", &["--eps", "8/255", "--queries", "200"]).iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let get = |which: &str| r[which]["head"][metric].as_f64().unwrap_or_else(|| panic!("{metric} in {r}"));
        let sign = if metric == "rmse" { -1.0 } else { 1.0 };
        assert!(sign * get("adversarial") < sign * get("clean"), "Square on {task}: {r}");
        assert_eq!(r["sanity"]["sample_steps"], 0, "{r}");
        assert!(r["sanity"]["queries"].as_u64().unwrap() >= 8 * 200, "every query spent on {task}: {r}");
        assert!(r["sanity"]["max_norm_over_eps"].as_f64().unwrap() <= 1.0 + 1e-5);
    }
    // Ensembles that do not fit the head are refused before any work.
    let head = tmp.path().join("seg.safetensors").display().to_string();
    let data = "synthetic-seg:2x28".to_string();
    for name in ["depth-ensemble", "autoattack", "fab-t"] {
        fails_with(
            &args("seg", &head, &data, name, &[]).iter().map(String::as_str).collect::<Vec<_>>(),
            &[name, "does not fit a seg head", "sea, cospgd"],
        );
    }
}
