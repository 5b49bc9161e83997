//! The attack engine on a tiny DINOv2 (2 blocks, width 64, patch 14): the budget and the pixel
//! range hold at every step, ε = 0 gives the clean point exactly, seeded runs are bit-identical,
//! objectives' pixel gradients match central finite differences (f64), and on a trained probe
//! the attacked accuracy falls as ε grows.

#[allow(dead_code)] // each test crate uses its own subset
#[path = "common/attacking.rs"]
mod attacking;

use std::path::Path;

use attacking::{check_gradient, check_gradient_at, config, encoder, images, probe_meta, random_dense_heads};
use candle_core::{DType, Device, Tensor};
use robust_ssl::attacks::depthpgd::DepthPgd;
use robust_ssl::attacks::dlr::Dlr;
use robust_ssl::attacks::embed::{Distance, EmbedAttack, EmbedTarget};
use robust_ssl::attacks::engine::{attack, AttackConfig, Method};
use robust_ssl::attacks::objective::Objective;
use robust_ssl::attacks::pgd_ce::CrossEntropy;
use robust_ssl::attacks::segpgd::{SegPgd, SegPgdForm};
use robust_ssl::attacks::threat::{Norm, ThreatModel};
use robust_ssl::data::transform::Transform;
use robust_ssl::encoder::Reads;
use robust_ssl::features::{extract, BatchSource, Layout, Source};
use robust_ssl::heads::head::{Head, HeadMeta, Task};
use robust_ssl::heads::layers::{BatchNorm, DepthHead, Pooling, SegHead};
use robust_ssl::metrics::DepthRange;

fn per_sample_norms(adv: &Tensor, x: &Tensor, t: &ThreatModel) -> Vec<f64> {
    let n = x.dim(0).unwrap();
    let d = (adv - x).unwrap().reshape((n, ())).unwrap().to_vec2::<f32>().unwrap();
    d.iter().map(|row| t.norm_of(row)).collect()
}

#[test]
fn embed_attack_respects_the_budget_and_grows_the_distance() {
    let enc = encoder();
    let x = images(3, 1);
    let clean = enc.forward(&x).unwrap();
    for norm in [Norm::Linf, Norm::L2] {
        let eps = if norm == Norm::Linf { 8.0 / 255.0 } else { 0.5 };
        let obj = EmbedAttack::new(&clean, EmbedTarget::Both, Distance::Mse).unwrap();
        let mut losses = Vec::new();
        for (method, steps) in [(Method::Pgd, 1), (Method::Pgd, 10), (Method::Apgd, 10)] {
            let mut cfg = config(norm, eps, steps, 3);
            cfg.method = method;
            let out = attack(&enc, &obj, &x, &cfg).unwrap();
            let t = ThreatModel { norm, eps };
            for n in per_sample_norms(&out.adversarial, &x, &t) {
                assert!(n <= eps * (1.0 + 1e-5) + 1e-7, "{norm:?}: ‖δ‖ = {n} > ε = {eps}");
            }
            assert!(out.sanity.max_norm_over_eps <= 1.0 + 1e-5 && out.sanity.max_norm_over_eps > 0.5, "{:?}", out.sanity);
            assert!(out.sanity.min_pixel >= 0.0 && out.sanity.max_pixel <= 1.0);
            assert_eq!(out.sanity.sample_steps, 3 * steps, "{method:?}: one gradient step per sample and iteration");
            assert_eq!(out.sanity.nan_gradients, 0);
            assert!(out.sanity.warnings().is_empty());
            assert!(out.loss.iter().all(|&l| l > 0.0));
            losses.push(out.loss.iter().sum::<f64>());
        }
        assert!(losses[1] > losses[0], "{norm:?}: 10 steps ({}) should beat 1 step ({})", losses[1], losses[0]);
        assert!(losses[2] > losses[0], "{norm:?}: APGD, 10 steps ({}) should beat 1 PGD step ({})", losses[2], losses[0]);
    }
}

/// The last iterate (adversarial training's choice) is one of the points the best-point
/// bookkeeping saw, so its objective is at most the best one's; it is within the budget, and its
/// loss is reported as not evaluated.
#[test]
#[allow(clippy::needless_range_loop)] // indexes two vectors side by side
fn last_iterate_is_within_budget_and_no_better_than_the_best_point() {
    let enc = encoder();
    let x = images(3, 5);
    let clean = enc.forward(&x).unwrap();
    let obj = EmbedAttack::new(&clean, EmbedTarget::Both, Distance::Mse).unwrap();
    let best = attack(&enc, &obj, &x, &config(Norm::Linf, 8.0 / 255.0, 3, 9)).unwrap();
    let last = attack(&enc, &obj, &x, &AttackConfig { last_iterate: true, ..config(Norm::Linf, 8.0 / 255.0, 3, 9) }).unwrap();
    assert!(last.loss.iter().all(|l| l.is_nan()));
    let t = ThreatModel { norm: Norm::Linf, eps: 8.0 / 255.0 };
    assert!(per_sample_norms(&last.adversarial, &x, &t).iter().all(|&n| n <= t.eps * (1.0 + 1e-5) && n > 0.5 * t.eps));
    // The objective at the last iterate: a zero-step attack from there, against the clean tokens.
    let at = AttackConfig { random_start: false, ..config(Norm::Linf, 8.0 / 255.0, 0, 9) };
    let at_last = attack(&enc, &obj, &last.adversarial, &at).unwrap().loss;
    for i in 0..3 {
        assert!(best.loss[i] >= at_last[i], "sample {i}: best {} < last {}", best.loss[i], at_last[i]);
    }
    // `iterate = last` as a user asks for it: the same point, its objective evaluated.
    let evaluated = AttackConfig { last_iterate: true, evaluate_last: true, ..config(Norm::Linf, 8.0 / 255.0, 3, 9) };
    let shown = attack(&enc, &obj, &x, &evaluated).unwrap();
    let same =
        (&shown.adversarial - &last.adversarial).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(same, 0.0, "the same last iterate");
    for i in 0..3 {
        assert!((shown.loss[i] - at_last[i]).abs() <= 1e-9 * at_last[i].abs().max(1.0), "sample {i}: {} vs {}", shown.loss[i], at_last[i]);
    }
}

#[test]
fn zero_budget_is_the_clean_point_and_seeds_are_reproducible() {
    let enc = encoder();
    let x = images(2, 2);
    let clean = enc.forward(&x).unwrap();
    let obj = EmbedAttack::new(&clean, EmbedTarget::Cls, Distance::Cosine).unwrap();
    let out = attack(&enc, &obj, &x, &config(Norm::Linf, 0.0, 3, 1)).unwrap();
    assert_eq!(out.adversarial.flatten_all().unwrap().to_vec1::<f32>().unwrap(), x.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    assert!(out.loss.iter().all(|&l| l.abs() < 1e-6), "{:?}", out.loss);

    for method in [Method::Pgd, Method::Apgd] {
        let mut cfg = config(Norm::Linf, 0.0, 3, 1);
        cfg.method = method;
        let out = attack(&enc, &obj, &x, &cfg).unwrap();
        assert_eq!(
            out.adversarial.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "{method:?}"
        );
        let run = |seed| {
            let mut cfg = config(Norm::Linf, 4.0 / 255.0, 3, seed);
            cfg.method = method;
            attack(&enc, &obj, &x, &cfg).unwrap().adversarial.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(run(5), run(5), "{method:?}: same seed, same adversarial images, bit for bit");
        assert_ne!(run(5), run(6), "{method:?}: another seed, another random start");
    }
}

/// Pixels outside [0, 1], or NaN, are refused before any step.
#[test]
fn images_outside_the_pixel_range_are_refused() {
    let enc = encoder();
    let x = images(2, 2);
    let obj = EmbedAttack::new(&enc.forward(&x).unwrap(), EmbedTarget::Cls, Distance::Cosine).unwrap();
    let mut v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for bad in [1.5f32, -0.1, f32::NAN] {
        v[7] = bad;
        let y = Tensor::from_vec(v.clone(), x.shape(), &Device::Cpu).unwrap();
        let err = attack(&enc, &obj, &y, &config(Norm::Linf, 4.0 / 255.0, 1, 1)).err().expect("refused");
        assert!(err.to_string().contains("must lie in [0, 1]"), "{bad}: {err}");
    }
}

#[test]
fn objective_gradients_match_finite_differences() {
    let enc = encoder().to(&Device::Cpu, DType::F64).unwrap();
    let x = images(2, 4).to_dtype(DType::F64).unwrap().affine(0.8, 0.1).unwrap();
    let clean = enc.forward(&(&x * 0.9).unwrap()).unwrap();
    for (target, distance) in
        [(EmbedTarget::Both, Distance::Mse), (EmbedTarget::Patch, Distance::Cosine), (EmbedTarget::Cls, Distance::Cosine)]
    {
        check_gradient(&enc, &EmbedAttack::new(&clean, target, distance).unwrap(), &x);
    }
    let meta = probe_meta(10, Pooling::ClsMeanPatch);
    let (head, _) = Head::init(&meta, 1, &Device::Cpu).unwrap();
    let Head::Linear(mut probe) = head else { unreachable!() };
    probe.weight = (probe.weight.to_dtype(DType::F64).unwrap() * 50.0).unwrap();
    probe.bias = probe.bias.to_dtype(DType::F64).unwrap();
    // (With scaled logits the divisor is held constant, as in the study's code: that gradient is
    // not the derivative of the loss, so finite differences do not apply; the PyTorch fixture does.)
    check_gradient(&enc, &CrossEntropy { probe: &probe, labels: vec![3, 7], scale_logits: false }, &x);
    check_gradient(&enc, &Dlr { probe: &probe, labels: vec![3, 7], targets: None }, &x);
    check_gradient(&enc, &Dlr { probe: &probe, labels: vec![3, 7], targets: Some(vec![1, 2]) }, &x);

    // Dense objectives with random f64 heads on the 2×2 patch grid, labels and depths at 28×28.
    let (seg, depth) = random_dense_heads(21, DType::F64);
    let mut rng = robust_ssl::rng::SplitMix64::new(9);
    let mut labels: Vec<u32> = (0..2 * 28 * 28).map(|_| (rng.next_u64() % 5) as u32).collect();
    labels[..40].iter_mut().for_each(|l| *l = 255);
    for step in [0, 3] {
        for form in [SegPgdForm::Paper, SegPgdForm::Study] {
            let obj = SegPgd { head: &seg, labels: labels.clone(), height: 28, width: 28, form };
            check_gradient_at(&enc, &obj, &x, step, 4, None);
        }
    }
    let mut metres: Vec<f32> = (0..2 * 28 * 28).map(|_| rng.uniform(0.5, 9.0) as f32).collect();
    metres[..100].iter_mut().for_each(|m| *m = 0.0);
    let range = DepthRange { min: 1e-3, max: 10.0 };
    let obj =
        DepthPgd { head: &depth, reads: Reads::Final, metres: metres.clone(), height: 28, width: 28, range, loss: Default::default() };
    check_gradient(&enc, &obj, &x);
    // DINOv2's form: no BatchNorm, the tokens before the final norm (their own reverse path).
    let Head::Depth(bn_form) = &depth else { unreachable!() };
    let dinov2 =
        Head::Depth(DepthHead { bn: None, weight: bn_form.weight.clone(), bias: bn_form.bias.clone(), min_depth: 1e-3, max_depth: 10.0 });
    check_gradient(
        &enc,
        &DepthPgd { head: &dinov2, reads: Reads::PreNorm, metres, height: 28, width: 28, range, loss: Default::default() },
        &x,
    );
    check_gradient(&enc, &EmbedAttack::new(&clean, EmbedTarget::PatchPrenorm, Distance::Mse).unwrap(), &x);
}

/// One window as large as the image is the plain attack, bit for bit; a classification
/// objective refuses windows.
#[test]
fn an_attack_through_one_window_is_the_plain_attack() {
    let enc = encoder();
    let x = images(2, 8);
    let (seg, _) = random_dense_heads(29, DType::F32);
    let mut rng = robust_ssl::rng::SplitMix64::new(31);
    let labels: Vec<u32> = (0..2 * 28 * 28).map(|_| (rng.next_u64() % 5) as u32).collect();
    let obj = SegPgd { head: &seg, labels, height: 28, width: 28, form: SegPgdForm::Paper };
    let plain = config(Norm::Linf, 8.0 / 255.0, 3, 5);
    let windowed = AttackConfig { window: Some("28:28".parse().unwrap()), ..plain };
    let (a, b) = (attack(&enc, &obj, &x, &plain).unwrap(), attack(&enc, &obj, &x, &windowed).unwrap());
    let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.adversarial), bits(&b.adversarial));
    assert_eq!(a.loss, b.loss);
    let meta = probe_meta(10, Pooling::ClsMeanPatch);
    let (Head::Linear(probe), _) = Head::init(&meta, 1, &Device::Cpu).unwrap() else { unreachable!() };
    let ce = CrossEntropy { probe: &probe, labels: vec![3, 7], scale_logits: false };
    let err = attack(&enc, &ce, &x, &windowed).err().expect("windows refused for classification").to_string();
    assert!(err.contains("sliding windows are for the dense heads"), "{err}");
}

/// A probe whose logits for the true class lead by hundreds: the softmax saturates, the sanity
/// checks count it and say so; with the study's logit scaling nothing saturates.
#[test]
fn saturated_cross_entropy_is_reported() {
    let enc = encoder();
    let x = images(2, 4);
    let meta = probe_meta(10, Pooling::Cls);
    let (head, _) = Head::init(&meta, 1, &Device::Cpu).unwrap();
    let Head::Linear(mut probe) = head else { unreachable!() };
    let tokens = enc.forward(&x).unwrap();
    // Class 0's weight is the first image's CLS direction, scaled far up; the labels are the
    // classes the probe predicts, so the true-class CE is ~0.
    let cls = tokens.cls.to_vec2::<f32>().unwrap();
    let mut w = vec![0f32; 10 * 64];
    for (k, row) in cls.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            w[k * 64 + j] = v * 1e3;
        }
    }
    probe.weight = Tensor::from_vec(w, (10, 64), &Device::Cpu).unwrap();
    let logits = probe.forward(&tokens.cls).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let cfg = config(Norm::Linf, 1.0 / 255.0, 3, 0);
    let plain = attack(&enc, &CrossEntropy { probe: &probe, labels: logits.clone(), scale_logits: false }, &x, &cfg).unwrap();
    assert!(plain.sanity.saturated > 0, "{:?}", plain.sanity);
    let lines = plain.sanity.warnings();
    assert!(lines.iter().any(|l| l.contains("saturated softmax") && l.contains("ce_scaling")), "{lines:?}");
    // Its gradient underflowed to zero at the start: AutoAttack's zero-gradient check says so.
    assert_eq!(plain.sanity.zero_start_gradients, 2, "{:?}", plain.sanity);
    assert!(lines.iter().any(|l| l.contains("2 samples had a zero pixel gradient at the attack's starting point")), "{lines:?}");
    let scaled = attack(&enc, &CrossEntropy { probe: &probe, labels: logits, scale_logits: true }, &x, &cfg).unwrap();
    assert_eq!(scaled.sanity.saturated, 0, "{:?}", scaled.sanity);
    assert_eq!(scaled.sanity.zero_start_gradients, 0, "{:?}", scaled.sanity);
}

/// A probe trained on 10 CIFAR-format images: clean accuracy 100%; PGD accuracy falls as ε grows
/// and early stop leaves the misclassified samples alone.
#[test]
fn pgd_accuracy_falls_as_epsilon_grows() {
    let enc = encoder();
    let ds = robust_ssl::data::open(
        &format!("cifar10:{}", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/cifar-10-batches-bin").display()),
        robust_ssl::data::Split::Train,
    )
    .unwrap();
    let transforms = [Transform::Resize(28, 28)];
    let idx: Vec<usize> = (0..ds.len()).collect();
    let feats = extract(Source::Encoder(&enc), ds.as_ref(), &idx, Layout::Pooled, &transforms, 8).unwrap();
    let robust_ssl::features::Targets::Class(labels) = feats.targets.clone() else { panic!() };
    struct Mem(robust_ssl::features::Batch);
    impl BatchSource for Mem {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn batch(&mut self, i: &[usize]) -> anyhow::Result<robust_ssl::features::Batch> {
            assert_eq!(i.len(), self.len(), "one full batch");
            let mut order: Vec<usize> = i.to_vec();
            order.sort_unstable();
            assert_eq!(order, (0..self.len()).collect::<Vec<_>>());
            let ids = Tensor::from_vec(i.iter().map(|&k| k as u32).collect::<Vec<_>>(), i.len(), &Device::Cpu)?;
            let robust_ssl::features::Targets::Class(l) = &self.0.targets else { unreachable!() };
            Ok(robust_ssl::features::Batch {
                cls: self.0.cls.index_select(&ids, 0)?,
                patch_mean: Some(self.0.patch_mean.as_ref().unwrap().index_select(&ids, 0)?),
                patch: None,
                grid: self.0.grid,
                targets: robust_ssl::features::Targets::Class(i.iter().map(|&k| l[k]).collect()),
            })
        }
        fn targets(&mut self, _: &[usize]) -> anyhow::Result<robust_ssl::features::Targets> {
            Ok(self.0.targets.clone())
        }
    }
    let meta = probe_meta(10, Pooling::ClsMeanPatch);
    let (head, _) = robust_ssl::heads::trainer::train(&meta, &mut Mem(feats), &meta.train, &Device::Cpu).unwrap();
    let Head::Linear(probe) = head else { unreachable!() };
    let samples = robust_ssl::data::transform::load_batch(ds.as_ref(), &idx, &transforms).unwrap();
    let x = Tensor::stack(&samples.iter().map(|s| &s.image).collect::<Vec<_>>(), 0).unwrap();
    let obj = CrossEntropy { probe: &probe, labels: labels.clone(), scale_logits: false };
    for method in [Method::Pgd, Method::Apgd] {
        let mut accuracy = Vec::new();
        for eps in [0.0, 2.0 / 255.0, 16.0 / 255.0, 64.0 / 255.0] {
            let mut cfg = config(Norm::Linf, eps, 10, 0);
            cfg.step_size = eps / 4.0;
            cfg.early_stop = true;
            cfg.method = method;
            let out = attack(&enc, &obj, &x, &cfg).unwrap();
            accuracy.push(out.success.iter().filter(|&&s| !s).count() as f64 / labels.len() as f64);
        }
        eprintln!("{method:?} accuracy at ε = 0, 2, 16, 64 (/255): {accuracy:?}");
        assert_eq!(accuracy[0], 1.0, "the probe fits its 10 training images");
        assert!(accuracy.windows(2).all(|w| w[1] <= w[0]), "{method:?}: accuracy must not rise with ε: {accuracy:?}");
        assert!(accuracy[3] < 0.5, "{method:?}: at 64/255 most images are fooled: {accuracy:?}");
    }
}

/// Every objective's per-sample loss and pixel gradient against PyTorch on the same tiny model,
/// in f64 (tools/gen_attack_fixtures.py): within 1e-6 relative (the issue asks 1e-4).
#[test]
fn objectives_match_pytorch() {
    let f = candle_core::safetensors::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attacks/objectives.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let enc = encoder().to(&Device::Cpu, DType::F64).unwrap();
    let (x, clean) = (&f["x"], enc.forward(&f["x0"]).unwrap());
    let u32s = |t: &Tensor| -> Vec<u32> { t.flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().map(|&v| v as u32).collect() };
    let bn = |p: &str| BatchNorm {
        weight: f[&format!("{p}_bn_w")].clone(),
        bias: f[&format!("{p}_bn_b")].clone(),
        running_mean: f[&format!("{p}_bn_rm")].clone(),
        running_var: f[&format!("{p}_bn_rv")].clone(),
        eps: 1e-5,
    };
    let probe =
        robust_ssl::heads::layers::LinearProbe { weight: f["probe_w"].clone(), bias: f["probe_b"].clone(), pooling: Pooling::ClsMeanPatch };
    let seg = Head::Seg(SegHead { bn: bn("seg"), weight: f["seg_w"].clone(), bias: f["seg_b"].clone() });
    let depth = Head::Depth(DepthHead {
        bn: Some(bn("depth")),
        weight: f["depth_w"].clone(),
        bias: f["depth_b"].clone(),
        min_depth: 1e-3,
        max_depth: 10.0,
    });
    // DINOv2's linear depth head: the same conv, no BatchNorm, on the tokens before the final norm.
    let dinov2 =
        Head::Depth(DepthHead { bn: None, weight: f["depth_w"].clone(), bias: f["depth_b"].clone(), min_depth: 1e-3, max_depth: 10.0 });
    let range = DepthRange { min: 1e-3, max: 10.0 };
    let metres: Vec<f32> = f["depth_metres"].flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().map(|&v| v as f32).collect();
    let cases: Vec<(&str, Box<dyn Objective>, usize, usize)> = vec![
        ("embed_both_mse", Box::new(EmbedAttack::new(&clean, EmbedTarget::Both, Distance::Mse).unwrap()), 0, 1),
        ("embed_cls_cosine", Box::new(EmbedAttack::new(&clean, EmbedTarget::Cls, Distance::Cosine).unwrap()), 0, 1),
        ("embed_patch_cosine", Box::new(EmbedAttack::new(&clean, EmbedTarget::Patch, Distance::Cosine).unwrap()), 0, 1),
        ("ce", Box::new(CrossEntropy { probe: &probe, labels: u32s(&f["probe_labels"]), scale_logits: false }), 0, 1),
        ("ce_scaled", Box::new(CrossEntropy { probe: &probe, labels: u32s(&f["probe_labels"]), scale_logits: true }), 0, 1),
        ("segpgd", Box::new(SegPgd { head: &seg, labels: u32s(&f["seg_labels"]), height: 56, width: 56, form: SegPgdForm::Paper }), 3, 4),
        (
            "segpgd_study",
            Box::new(SegPgd { head: &seg, labels: u32s(&f["seg_labels"]), height: 56, width: 56, form: SegPgdForm::Study }),
            3,
            4,
        ),
        (
            "depthpgd",
            Box::new(DepthPgd {
                head: &depth,
                reads: Reads::Final,
                metres: metres.clone(),
                height: 56,
                width: 56,
                range,
                loss: Default::default(),
            }),
            0,
            1,
        ),
        (
            "depthpgd_dinov2",
            Box::new(DepthPgd { head: &dinov2, reads: Reads::PreNorm, metres, height: 56, width: 56, range, loss: Default::default() }),
            0,
            1,
        ),
        ("embed_patch_prenorm_mse", Box::new(EmbedAttack::new(&clean, EmbedTarget::PatchPrenorm, Distance::Mse).unwrap()), 0, 1),
        ("dlr", Box::new(Dlr { probe: &probe, labels: u32s(&f["probe_labels"]), targets: None }), 0, 1),
        ("dlr_top", Box::new(Dlr { probe: &probe, labels: u32s(&f["dlr_top_labels"]), targets: None }), 0, 1),
        ("dlr_targeted", Box::new(Dlr { probe: &probe, labels: u32s(&f["dlr_top_labels"]), targets: Some(u32s(&f["dlr_targets"])) }), 0, 1),
    ];
    let max_abs = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    for (name, obj, step, steps) in cases {
        let (tokens, tape) = enc.forward_with_tape(x).unwrap();
        let ev = obj.evaluate(&tokens, None, &[0, 1], step, steps).unwrap();
        let want = f[&format!("{name}_losses")].to_vec1::<f64>().unwrap();
        for (g, w) in ev.losses.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs(), "{name}: loss {g} vs PyTorch {w}");
        }
        let grad = enc.backward_with(&tape, &ev.d_cls, &ev.d_patch, ev.d_prenorm.as_ref()).unwrap();
        let want = &f[&format!("{name}_grad")];
        let rel = max_abs(&(&grad - want).unwrap()) / max_abs(want);
        let loss_rel = ev
            .losses
            .iter()
            .zip(&f[&format!("{name}_losses")].to_vec1::<f64>().unwrap())
            .map(|(g, w)| (g - w).abs() / w.abs())
            .fold(0f64, f64::max);
        eprintln!("{name}: loss within {loss_rel:.1e}, pixel gradient within {rel:.1e} of PyTorch (relative)");
        assert!(rel < 1e-6, "{name}: pixel gradient differs from PyTorch by {rel:e} (relative max-abs)");
    }
    // The hand-written f32 CPU path's reverse pass through the tokens before the final norm.
    let fast = encoder();
    let x32 = x.to_dtype(DType::F32).unwrap();
    let clean32 = fast.forward(&f["x0"].to_dtype(DType::F32).unwrap()).unwrap();
    let head32 = dinov2.to_device(&probe_meta_depth(), &Device::Cpu).unwrap();
    let metres: Vec<f32> = f["depth_metres"].flatten_all().unwrap().to_vec1::<f64>().unwrap().iter().map(|&v| v as f32).collect();
    let cases: Vec<(&str, Box<dyn Objective>)> = vec![
        (
            "depthpgd_dinov2",
            Box::new(DepthPgd { head: &head32, reads: Reads::PreNorm, metres, height: 56, width: 56, range, loss: Default::default() }),
        ),
        ("embed_patch_prenorm_mse", Box::new(EmbedAttack::new(&clean32, EmbedTarget::PatchPrenorm, Distance::Mse).unwrap())),
    ];
    for (name, obj) in cases {
        let (tokens, tape) = fast.forward_with_tape(&x32).unwrap();
        let ev = obj.evaluate(&tokens, None, &[0, 1], 0, 1).unwrap();
        let grad = fast.backward_with(&tape, &ev.d_cls, &ev.d_patch, ev.d_prenorm.as_ref()).unwrap().to_dtype(DType::F64).unwrap();
        let want = &f[&format!("{name}_grad")];
        let rel = max_abs(&(&grad - want).unwrap()) / max_abs(want);
        eprintln!("{name} (f32 fast path): pixel gradient within {rel:.1e} of PyTorch (relative)");
        assert!(rel < 1e-3, "{name}: the f32 fast path's pixel gradient differs from PyTorch by {rel:e}");
    }
}

/// The metadata of DINOv2's 16-bin depth head on the 64-wide test encoder.
fn probe_meta_depth() -> HeadMeta {
    HeadMeta {
        task: Task::Depth,
        outputs: 16,
        depth_range: Some((1e-3, 10.0)),
        depth_form: Some(robust_ssl::heads::head::DepthForm::Dinov2),
        pooling: None,
        ..probe_meta(16, Pooling::Cls)
    }
}

/// Robust accuracy as AutoAttack and RobustBench define it, by hand: labels 0 1 2 3, clean
/// predictions 0 1 0 3 (the third wrong), adversarial 1 1 2 0. Only the second sample is right on
/// the clean input and under the attack: 25%, where counting the adversarial predictions alone
/// gives 50% (the third sample "recovered" by the attack is no robust sample).
#[test]
fn robust_accuracy_needs_the_clean_prediction_right_too() {
    use robust_ssl::features::Targets;
    use robust_ssl::heads::evaluate::{Metrics, Scorer};
    let meta = probe_meta(4, Pooling::Cls);
    let (head, _) = Head::init(&meta, 1, &Device::Cpu).unwrap();
    let trained = robust_ssl::heads::head::TrainedHead { head, meta };
    let onehot = |preds: &[u32]| {
        let v: Vec<f32> = preds.iter().flat_map(|&c| (0..4).map(move |j| if j == c { 1.0 } else { 0.0 })).collect();
        Tensor::from_vec(v, (preds.len(), 4), &Device::Cpu).unwrap()
    };
    let targets = Targets::Class(vec![0, 1, 2, 3]);
    let (clean, adversarial) = (onehot(&[0, 1, 0, 3]), onehot(&[1, 1, 2, 0]));
    let accuracy = |robust: bool| {
        let mut s = Scorer::new(&trained, "probe").unwrap();
        if robust {
            s.add_robust(&adversarial, &clean, &targets, 4).unwrap();
        } else {
            s.add(&adversarial, &targets, 4).unwrap();
        }
        match s.finish().unwrap().head {
            Metrics::Cls { accuracy, .. } => accuracy,
            m => panic!("{m:?}"),
        }
    };
    assert_eq!(accuracy(false), 0.5);
    assert_eq!(accuracy(true), 0.25);
}
