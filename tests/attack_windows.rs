//! Attacks through windows on the tiny DINOv2: sliding windows and the whole frame centre-padded
//! match finite differences and torch restatements of mmseg's `slide_inference` and DINOv2's
//! depther, and a traced attack shows every iterate without changing the attack.

#[allow(dead_code)] // each test crate uses its own subset
#[path = "common/attacking.rs"]
mod attacking;

use std::path::Path;

use attacking::{check_gradient_at, config, encoder, images, random_dense_heads};
use candle_core::{DType, Device, Tensor};
use robust_ssl::attacks::depthpgd::DepthPgd;
use robust_ssl::attacks::embed::{Distance, EmbedAttack, EmbedTarget};
use robust_ssl::attacks::engine::{attack, AttackConfig, Method};
use robust_ssl::attacks::objective::Objective;
use robust_ssl::attacks::segpgd::{SegPgd, SegPgdForm};
use robust_ssl::attacks::threat::Norm;
use robust_ssl::encoder::{Encoder, Reads};
use robust_ssl::heads::head::Head;
use robust_ssl::heads::layers::{BatchNorm, DepthHead, SegHead};
use robust_ssl::heads::sliding::{tokens_of, Tiling, Window};
use robust_ssl::metrics::DepthRange;

/// Through sliding windows (overlapping, and of a crop that is no patch multiple, so padded), and
/// through the whole image centre-padded (27 × 40 → 28 × 42):
/// every dense objective's pixel gradient — cut into windows, per-window reverse pass, the cut's
/// adjoint — matches f64 finite differences of the stitched, whole-image loss.
#[test]
fn gradients_through_sliding_windows_match_finite_differences() {
    let enc = encoder().to(&Device::Cpu, DType::F64).unwrap();
    let (h, w) = (27, 40);
    let mut rng = robust_ssl::rng::SplitMix64::new(17);
    let x: Vec<f64> = (0..2 * 3 * h * w).map(|_| rng.uniform(0.1, 0.9)).collect();
    let x = Tensor::from_vec(x, (2, 3, h, w), &Device::Cpu).unwrap();
    let (seg, depth) = random_dense_heads(23, DType::F64);
    let mut labels: Vec<u32> = (0..2 * h * w).map(|_| (rng.next_u64() % 5) as u32).collect();
    labels[..40].iter_mut().for_each(|l| *l = 255);
    let mut metres: Vec<f32> = (0..2 * h * w).map(|_| rng.uniform(0.5, 9.0) as f32).collect();
    metres[..100].iter_mut().for_each(|m| *m = 0.0);
    let range = DepthRange { min: 1e-3, max: 10.0 };
    for window in ["21:14", "27:13", "whole"] {
        let tiling = Tiling::new(h, w, window.parse::<Window>().unwrap(), 14).unwrap();
        assert!(tiling.windows() > 1 || tiling.padded != tiling.image, "{window}: windows or padding");
        let windows = Some(&tiling);
        for form in [SegPgdForm::Paper, SegPgdForm::Study] {
            let obj = SegPgd { head: &seg, labels: labels.clone(), height: h, width: w, form };
            check_gradient_at(&enc, &obj, &x, 1, 4, windows);
        }
        let obj =
            DepthPgd { head: &depth, reads: Reads::Final, metres: metres.clone(), height: h, width: w, range, loss: Default::default() };
        check_gradient_at(&enc, &obj, &x, 0, 1, windows);
        let clean = tokens_of(&enc, &(&x * 0.9).unwrap(), windows).unwrap();
        for target in [EmbedTarget::Patch, EmbedTarget::Both] {
            check_gradient_at(&enc, &EmbedAttack::new(&clean, target, Distance::Mse).unwrap(), &x, 0, 1, windows);
        }
    }
}

/// Whole images of uneven sizes through mmseg's sliding windows, against PyTorch
/// (tools/gen_window_fixtures.py restates mmseg's `slide_inference`): the stitched logits, and
/// SegPGD's loss on them with its pixel gradient back through the windows, in f64.
#[test]
fn windows_match_mmseg_slide_inference_and_its_gradient() {
    let f = candle_core::safetensors::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attacks/windows.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let enc = encoder().to(&Device::Cpu, DType::F64).unwrap();
    let bn = BatchNorm {
        weight: f["seg_bn_w"].clone(),
        bias: f["seg_bn_b"].clone(),
        running_mean: f["seg_bn_rm"].clone(),
        running_var: f["seg_bn_rv"].clone(),
        eps: 1e-5,
    };
    let seg = Head::Seg(SegHead { bn, weight: f["seg_w"].clone(), bias: f["seg_b"].clone() });
    let max_abs = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    for i in 0..2 {
        let x = &f[&format!("x{i}")];
        let (_, _, h, w) = x.dims4().unwrap();
        let tiling = Tiling::new(h, w, "56:28".parse().unwrap(), 14).unwrap();
        assert_eq!(tiling.windows(), 4, "image {i}: 2 × 2 windows");
        let (tokens, tape) = enc.forward_with_tape(&tiling.crops(x).unwrap()).unwrap();
        let batch = robust_ssl::features::Batch::read(&tokens, Reads::Final).unwrap();
        let logits = robust_ssl::heads::sliding::dense_forward(&seg, &batch, (h, w), Some(&tiling)).unwrap();
        let want = &f[&format!("logits{i}")];
        let rel = max_abs(&(&logits - want).unwrap()) / max_abs(want);
        assert!(rel < 1e-9, "image {i} ({h}x{w}): stitched logits differ from slide_inference's by {rel:e}");
        let labels: Vec<u32> =
            f[&format!("labels{i}")].flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().map(|&v| v as u32).collect();
        let obj = SegPgd { head: &seg, labels, height: h, width: w, form: SegPgdForm::Paper };
        let ev = obj.evaluate(&tokens, Some(&tiling), &[0], 1, 4).unwrap();
        let want_loss = f[&format!("segpgd_loss{i}")].to_vec1::<f64>().unwrap()[0];
        assert!((ev.losses[0] - want_loss).abs() <= 1e-9 * want_loss.abs(), "image {i}: loss {} vs PyTorch {want_loss}", ev.losses[0]);
        let g = enc.backward_with(&tape, &ev.d_cls, &ev.d_patch, ev.d_prenorm.as_ref()).unwrap();
        let grad = tiling.gather(&g).unwrap();
        let want = &f[&format!("segpgd_grad{i}")];
        let rel = max_abs(&(&grad - want).unwrap()) / max_abs(want);
        assert!(rel < 1e-9, "image {i}: pixel gradient through the windows differs from PyTorch's by {rel:e}");
        eprintln!("image {i} ({h}x{w}): gradient within {rel:e} of PyTorch's (relative to its largest entry)");
    }
}

/// The whole frame centre-padded to the patch multiple, as DINOv2's depther and the study's depth
/// code (tools/gen_window_fixtures.py restates `CenterPadding` on the normalised image and
/// `encode_decode`'s resize to the unpadded size): the depth map, DepthPGD's loss on it and its
/// pixel gradient back through the padding, in f64, for a frame that needs padding (45 × 62 →
/// 56 × 70) and one that does not.
#[test]
fn the_whole_frame_centre_padded_matches_dinov2s_depther_and_its_gradient() {
    let f = candle_core::safetensors::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attacks/windows.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let enc = encoder().to(&Device::Cpu, DType::F64).unwrap();
    let head =
        Head::Depth(DepthHead { bn: None, weight: f["depth_w"].clone(), bias: f["depth_b"].clone(), min_depth: 1e-3, max_depth: 10.0 });
    let max_abs = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    for (i, padded) in [(0, (56, 70)), (1, (42, 56))] {
        let x = &f[&format!("whole_x{i}")];
        let (_, _, h, w) = x.dims4().unwrap();
        let tiling = Tiling::new(h, w, Window::Whole, 14).unwrap();
        assert_eq!(tiling.padded, padded);
        let (tokens, tape) = enc.forward_with_tape(&tiling.crops(x).unwrap()).unwrap();
        let batch = robust_ssl::features::Batch::read(&tokens, Reads::PreNorm).unwrap();
        let depth = robust_ssl::heads::sliding::dense_forward(&head, &batch, (h, w), Some(&tiling)).unwrap();
        let want = &f[&format!("whole_depth{i}")];
        let rel = max_abs(&(&depth - want).unwrap()) / max_abs(want);
        // (Not 1e-9 as for the 56-px windows: these grids are not the checkpoint's 4 × 4, and the
        // position embedding is resized in f32.)
        assert!(rel < 1e-6, "frame {i} ({h}x{w}): depth differs from DINOv2's depther by {rel:e}");
        let metres: Vec<f32> =
            f[&format!("whole_metres{i}")].flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().map(|&v| v as f32).collect();
        let range = DepthRange { min: 1e-3, max: 10.0 };
        let obj = DepthPgd { head: &head, reads: Reads::PreNorm, metres, height: h, width: w, range, loss: Default::default() };
        let ev = obj.evaluate(&tokens, Some(&tiling), &[0], 0, 1).unwrap();
        let want_loss = f[&format!("depthpgd_loss{i}")].to_vec1::<f64>().unwrap()[0];
        assert!((ev.losses[0] - want_loss).abs() <= 1e-6 * want_loss.abs(), "frame {i}: loss {} vs PyTorch {want_loss}", ev.losses[0]);
        let g = enc.backward_with(&tape, &ev.d_cls, &ev.d_patch, ev.d_prenorm.as_ref()).unwrap();
        let grad = tiling.gather(&g).unwrap();
        let want = &f[&format!("depthpgd_grad{i}")];
        let rel = max_abs(&(&grad - want).unwrap()) / max_abs(want);
        assert!(rel < 1e-4, "frame {i}: pixel gradient through the padding differs from PyTorch's by {rel:e}");
        eprintln!("frame {i} ({h}x{w}): gradient within {rel:e} of PyTorch's (relative to its largest entry)");
    }
}

/// A traced attack shows every iterate — the starting point, then one per step — without
/// changing the attack: the same outcome bit for bit; PGD's last iterate is the last shown, APGD
/// shows as many; the starting point is within the budget; restarts are refused.
#[test]
fn a_traced_attack_shows_every_iterate_and_changes_nothing() {
    let enc = encoder();
    let x = images(2, 41);
    let (seg, _) = random_dense_heads(43, DType::F32);
    let mut rng = robust_ssl::rng::SplitMix64::new(47);
    let labels: Vec<u32> = (0..2 * 28 * 28).map(|_| (rng.next_u64() % 5) as u32).collect();
    let obj = SegPgd { head: &seg, labels, height: 28, width: 28, form: SegPgdForm::Paper };
    let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (method, last_iterate) in [(Method::Pgd, true), (Method::Pgd, false), (Method::Apgd, false)] {
        let plain = AttackConfig { method, last_iterate, evaluate_last: true, ..config(Norm::Linf, 8.0 / 255.0, 4, 5) };
        let traced = AttackConfig { trace: true, ..plain };
        let mut seen: Vec<(usize, Tensor)> = Vec::new();
        let a = attack(&enc, &obj, &x, &plain).unwrap();
        let b = robust_ssl::attacks::engine::attack_observed(&enc, &obj, &x, &traced, &mut |step, t| {
            seen.push((step, t.clone()));
            Ok(())
        })
        .unwrap();
        assert_eq!((bits(&a.adversarial), &a.loss), (bits(&b.adversarial), &b.loss), "{method:?}: tracing changes nothing");
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), (0..=4).collect::<Vec<_>>(), "{method:?}");
        let start = (&seen[0].1 - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(start > 0.0 && start <= 8.0 / 255.0 + 1e-6, "{method:?}: the random start, within ε: {start}");
        if last_iterate {
            assert_eq!(bits(&seen[4].1), bits(&b.adversarial), "the last iterate is the last shown");
        }
        let mut untouched = 0;
        attack_observed_count(&enc, &obj, &x, &plain, &mut untouched);
        assert_eq!(untouched, 0, "an untraced attack shows nothing");
    }
    let restarts = AttackConfig { trace: true, restarts: 2, ..config(Norm::Linf, 8.0 / 255.0, 2, 5) };
    let err = robust_ssl::attacks::engine::attack_observed(&enc, &obj, &x, &restarts, &mut |_, _| Ok(())).err().unwrap().to_string();
    assert!(err.contains("restarts = 1"), "{err}");
}

fn attack_observed_count(enc: &Encoder, obj: &dyn Objective, x: &Tensor, cfg: &AttackConfig, count: &mut usize) {
    robust_ssl::attacks::engine::attack_observed(enc, obj, x, cfg, &mut |_, _| {
        *count += 1;
        Ok(())
    })
    .unwrap();
}
