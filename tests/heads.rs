//! The heads against a PyTorch restatement (tools/gen_head_fixtures.py), f64: forward values,
//! losses, and gradients with respect to weights and encoder features, with BatchNorm in training
//! and in evaluation mode.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use robust_ssl::heads::layers::{BatchNorm, DepthHead, LinearProbe, Pooling, SegHead};
use robust_ssl::heads::losses::{cross_entropy, depth_loss, valid_mask};
use robust_ssl::heads::upsample::bilinear;
use robust_ssl::metrics::DepthRange;

fn fixture() -> HashMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/heads/heads.expected.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    d / b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap().max(1e-300)
}

fn close(name: &str, a: &Tensor, b: &Tensor) {
    let r = rel(a, b);
    assert!(r < 1e-9, "{name}: relative difference {r:e}");
}

fn var(f: &HashMap<String, Tensor>, k: &str) -> Var {
    Var::from_tensor(&f[k]).unwrap()
}

#[test]
fn linear_probe_matches_torch() {
    let f = fixture();
    let (w, b, cls, patch) = (var(&f, "probe_w"), var(&f, "probe_b"), var(&f, "cls"), var(&f, "patch"));
    let probe = LinearProbe { weight: w.as_tensor().clone(), bias: b.as_tensor().clone(), pooling: Pooling::ClsMeanPatch };
    let logits = probe.forward(&probe.pooling.features(cls.as_tensor(), patch.as_tensor()).unwrap()).unwrap();
    close("logits", &logits, &f["probe_logits"]);
    let labels = f["probe_labels"].to_dtype(DType::U32).unwrap();
    let loss = cross_entropy(&logits, &labels, 255).unwrap();
    close("loss", &loss, &f["probe_loss"]);
    let g = loss.backward().unwrap();
    for (name, v) in [("dw", &w), ("db", &b), ("dcls", &cls), ("dpatch", &patch)] {
        close(name, g.get(v.as_tensor()).unwrap(), &f[&format!("probe_{name}")]);
    }
}

fn bn(f: &HashMap<String, Tensor>, p: &str, w: &Var, b: &Tensor) -> BatchNorm {
    BatchNorm {
        weight: w.as_tensor().clone(),
        bias: b.clone(),
        running_mean: f[&format!("{p}_rm")].clone(),
        running_var: f[&format!("{p}_rv")].clone(),
        eps: 1e-5,
    }
}

#[test]
fn segmentation_head_matches_torch_in_both_batchnorm_modes() {
    let f = fixture();
    for (mode, train) in [("train", true), ("eval", false)] {
        let (w, bn_w, patch) = (var(&f, "seg_w"), var(&f, "seg_bn_w"), var(&f, "patch"));
        let head = SegHead { bn: bn(&f, "seg", &bn_w, &f["seg_bn_b"]), weight: w.as_tensor().clone(), bias: f["seg_b"].clone() };
        let (logits, stats) = head.forward(patch.as_tensor(), (3, 4), train).unwrap();
        assert_eq!(stats.is_some(), train);
        close(&format!("{mode} logits"), &logits, &f[&format!("seg_{mode}_logits")]);
        let up = bilinear(&logits, 7, 9).unwrap();
        let loss = cross_entropy(&up, &f["seg_labels"].to_dtype(DType::U32).unwrap(), 255).unwrap();
        close(&format!("{mode} loss"), &loss, &f[&format!("seg_{mode}_loss")]);
        let g = loss.backward().unwrap();
        close(&format!("{mode} dw"), g.get(w.as_tensor()).unwrap(), &f[&format!("seg_{mode}_dw")]);
        close(&format!("{mode} dbn_w"), g.get(bn_w.as_tensor()).unwrap(), &f[&format!("seg_{mode}_dbn_w")]);
        close(&format!("{mode} dpatch"), g.get(patch.as_tensor()).unwrap(), &f[&format!("seg_{mode}_dpatch")]);
    }
}

#[test]
fn depth_head_matches_dinov2_bnhead() {
    let f = fixture();
    for (mode, train) in [("train", true), ("eval", false)] {
        let (w, bn_w, cls, patch) = (var(&f, "depth_w"), var(&f, "depth_bn_w"), var(&f, "cls"), var(&f, "patch"));
        let head = DepthHead {
            bn: Some(bn(&f, "depth", &bn_w, &f["depth_bn_b"])),
            weight: w.as_tensor().clone(),
            bias: f["depth_b"].clone(),
            min_depth: 1e-3,
            max_depth: 10.0,
        };
        let (depth, _) = head.forward(cls.as_tensor(), patch.as_tensor(), (3, 4), train).unwrap();
        close(&format!("{mode} depth"), &depth, &f[&format!("depth_{mode}_depth")]);
        let pred = bilinear(&depth, 11, 13).unwrap().squeeze(1).unwrap();
        let gt = &f["depth_gt"];
        let loss = depth_loss(&pred, gt, &valid_mask(gt, DepthRange { min: 1e-3, max: 10.0 }).unwrap()).unwrap();
        close(&format!("{mode} loss"), &loss, &f[&format!("depth_{mode}_loss")]);
        let g = loss.backward().unwrap();
        for (name, v) in [("dw", &w), ("dbn_w", &bn_w), ("dcls", &cls), ("dpatch", &patch)] {
            close(&format!("{mode} {name}"), g.get(v.as_tensor()).unwrap(), &f[&format!("depth_{mode}_{name}")]);
        }
    }
}

/// DINOv2's published linear heads, read in their own layout (mmcv checkpoints: `state_dict`
/// with `decode_head.conv_depth.*` / `decode_head.bn.*` + `decode_head.conv_seg.*`), against a
/// torch restatement of DINOv2's head forward (tools/gen_dinov2_head_fixtures.py): outputs at the
/// image size and the gradients with respect to the tokens the head reads.
#[test]
fn dinov2_published_heads_load_and_match_their_restatement() {
    use robust_ssl::features::Batch;
    use robust_ssl::heads::head::{Baseline, DepthForm, Task, TrainedHead};
    use robust_ssl::heads::trainer::forward;
    let rel64 = |a: &Tensor, b: &Tensor| rel(&a.to_dtype(DType::F64).unwrap(), &b.to_dtype(DType::F64).unwrap());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/heads/dinov2");
    for (file, task) in [("depth_linear", Task::Depth), ("seg_linear", Task::Seg)] {
        let head = TrainedHead::load_for(&dir.join(format!("{file}.pth")), task, &Device::Cpu).unwrap();
        let m = &head.meta;
        assert_eq!((m.feature_dim, m.baseline), (32, Baseline::Unknown), "{file}");
        if task == Task::Depth {
            assert_eq!((m.outputs, m.depth_range, m.depth_form), (256, Some((0.001, 10.0)), Some(DepthForm::Dinov2)));
            assert_eq!(m.reads(), robust_ssl::encoder::Reads::PreNorm, "DINOv2's depth head reads the tokens before the final norm");
        } else {
            assert_eq!((m.outputs, m.reads()), (21, robust_ssl::encoder::Reads::Final));
        }
        let f = candle_core::safetensors::load(dir.join(format!("{file}.expected.safetensors")), &Device::Cpu).unwrap();
        let (b, gh, gw, d) = f["patch_tokens"].dims4().unwrap();
        let patch = Var::from_tensor(&f["patch_tokens"].reshape((b, gh * gw, d)).unwrap()).unwrap();
        let cls = Var::from_tensor(&f["cls"]).unwrap();
        let batch = Batch::from_tokens(cls.as_tensor(), patch.as_tensor(), (gh, gw));
        let (h, w) = (f["out"].dim(2).unwrap(), f["out"].dim(3).unwrap());
        let (out, _) = forward(&head.head, &batch, (h, w), false).unwrap();
        let out = if out.rank() == 3 { out.unsqueeze(1).unwrap() } else { out };
        let r = rel64(&out, &f["out"]);
        assert!(r < 1e-5, "{file}: output differs from DINOv2's by {r:e} (relative max-abs)");
        let grads = (&out * &f["proj"]).unwrap().sum_all().unwrap().backward().unwrap();
        let g_patch = grads.get(patch.as_tensor()).unwrap().reshape((b, gh, gw, d)).unwrap();
        let r = rel64(&g_patch, &f["grad_patch"]);
        assert!(r < 1e-4, "{file}: patch-token gradient differs by {r:e}");
        if task == Task::Depth {
            let r = rel64(grads.get(cls.as_tensor()).unwrap(), &f["grad_cls"]);
            assert!(r < 1e-4, "{file}: CLS gradient differs by {r:e}");
        }
        eprintln!("{file}: output and token gradients within 1e-4 of DINOv2's forward");
    }
    // The wrong task, and a file of another layout, are named.
    let err = format!("{:#}", TrainedHead::load_for(&dir.join("depth_linear.pth"), Task::Seg, &Device::Cpu).err().unwrap());
    assert!(err.contains("depth_linear.pth") && err.contains("depth head"), "{err}");
    let encoder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder/dinov2_official.pth");
    let err = format!("{:#}", TrainedHead::load(&encoder, &Device::Cpu).err().unwrap());
    assert!(err.contains("dinov2_official.pth") && err.contains("not a head file"), "{err}");
    // A head of another width is refused before any work.
    let head = TrainedHead::load(&dir.join("seg_linear.pth"), &Device::Cpu).unwrap();
    let err = robust_ssl::heads::trainer::check_features(&head.meta, 64, "seg_linear.pth").unwrap_err().to_string();
    assert!(err.contains("32-wide") && err.contains("seg_linear.pth"), "{err}");
}

/// A head output with a NaN is refused by the scorer, naming the head (before: the NaN row's
/// argmax scored as a wrong class, "accuracy 0%", exit 0).
#[test]
fn non_finite_outputs_are_not_scored() {
    use robust_ssl::features::Targets;
    use robust_ssl::heads::evaluate::Scorer;
    use robust_ssl::heads::head::{Task, TrainedHead};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/heads/dinov2");
    let head = TrainedHead::load_for(&dir.join("seg_linear.pth"), Task::Seg, &Device::Cpu).unwrap();
    let targets = Targets::Segmentation { labels: vec![1; 4], height: 2, width: 2 };
    let mut out = vec![0f32; 21 * 4];
    let finite = Tensor::from_vec(out.clone(), (1, 21, 2, 2), &Device::Cpu).unwrap();
    let mut scorer = Scorer::new(&head, "seg_linear.pth").unwrap();
    scorer.add(&finite, &targets, 1).unwrap();
    out[5] = f32::NAN;
    let nan = Tensor::from_vec(out, (1, 21, 2, 2), &Device::Cpu).unwrap();
    let err = scorer.add(&nan, &targets, 1).unwrap_err().to_string();
    assert!(err.contains("seg_linear.pth") && err.contains("NaN"), "{err}");
}
