//! Shared by the attack tests: the tiny DINOv2 (2 blocks, width 64, patch 14), random images and
//! dense heads, the engine's settings, and the finite-difference check of an objective's pixel
//! gradient through the whole pipeline.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use robust_ssl::attacks::engine::{AttackConfig, Method};
use robust_ssl::attacks::objective::Objective;
use robust_ssl::attacks::threat::{Norm, ThreatModel};
use robust_ssl::encoder::{Encoder, LoadOptions};
use robust_ssl::heads::head::{Baseline, Head, HeadMeta, Task};
use robust_ssl::heads::layers::{BatchNorm, DepthHead, Pooling, SegHead};
use robust_ssl::heads::sliding::Tiling;
use robust_ssl::heads::train::{Schedule, TrainConfig};
use robust_ssl::optim::OptimizerKind;

pub fn encoder() -> Encoder {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder/dinov2_official.pth");
    Encoder::load(&p, &LoadOptions { heads: Some(4), ..Default::default() }).unwrap()
}

pub fn images(n: usize, seed: u64) -> Tensor {
    let mut rng = robust_ssl::rng::SplitMix64::new(seed);
    let v: Vec<f32> = (0..n * 3 * 28 * 28).map(|_| rng.uniform(0.0, 1.0) as f32).collect();
    Tensor::from_vec(v, (n, 3, 28, 28), &Device::Cpu).unwrap()
}

pub fn config(norm: Norm, eps: f64, steps: usize, seed: u64) -> AttackConfig {
    let step_size = if norm == Norm::Linf { eps / 4.0 } else { eps / 2.0 };
    AttackConfig {
        method: Method::Pgd,
        threat: ThreatModel { norm, eps },
        step_size,
        steps,
        restarts: 1,
        random_start: true,
        seed,
        early_stop: false,
        last_iterate: false,
        evaluate_last: false,
        window: None,
        trace: false,
        queries: robust_ssl::attacks::spec::AttackSpec::DEFAULT_QUERIES,
    }
}

/// The objective's pixel gradient (objective → tokens → encoder reverse pass) against central
/// finite differences of its summed loss along a random direction, in f64.
pub fn check_gradient(enc: &Encoder, obj: &dyn Objective, x: &Tensor) {
    check_gradient_at(enc, obj, x, 0, 1, None)
}

/// With `windows`, the pixels go through the windows' cut, the encoder's reverse pass per window
/// and the cut's adjoint, as the attack engine does.
pub fn check_gradient_at(enc: &Encoder, obj: &dyn Objective, x: &Tensor, step: usize, steps: usize, windows: Option<&Tiling>) {
    let active: Vec<usize> = (0..x.dim(0).unwrap()).collect();
    let cut = |t: &Tensor| windows.map_or_else(|| t.clone(), |w| w.crops(t).unwrap());
    let (tokens, tape) = enc.forward_with_tape(&cut(x)).unwrap();
    let ev = obj.evaluate(&tokens, windows, &active, step, steps).unwrap();
    let g = enc.backward_with(&tape, &ev.d_cls, &ev.d_patch, ev.d_prenorm.as_ref()).unwrap();
    let g = windows.map_or_else(|| g.clone(), |w| w.gather(&g).unwrap());
    // A fixed random direction (seeded: the test must not depend on the run).
    let mut rng = robust_ssl::rng::SplitMix64::new(11);
    let v: Vec<f64> = (0..x.elem_count()).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let v = Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap();
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    let scale = norm(&g) * norm(&v);
    let analytic = (g * &v).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    let h = 1e-5;
    let loss_at =
        |t: &Tensor| -> f64 { obj.evaluate(&enc.forward(&cut(t)).unwrap(), windows, &active, step, steps).unwrap().losses.iter().sum() };
    let plus = loss_at(&(x + (&v * h).unwrap()).unwrap());
    let minus = loss_at(&(x - (&v * h).unwrap()).unwrap());
    let numeric = (plus - minus) / (2.0 * h);
    // Relative to the derivative itself, or (when the direction happens to be nearly orthogonal to
    // the gradient) to the largest value it could take, ‖g‖·‖v‖.
    let err = (analytic - numeric).abs();
    assert!(numeric.abs() > 1e-8, "{}: the test needs a non-zero derivative", obj.name());
    assert!(
        err < 1e-6 * numeric.abs() + 1e-9 * scale,
        "{}: analytic {analytic} vs finite differences {numeric} (error {err:e}, ‖g‖‖v‖ {scale:e})",
        obj.name()
    );
}

/// Random f64 dense heads on the fixture encoder's 64-dim tokens: segmentation (5 classes) and
/// depth (16 bins), each with BatchNorm.
pub fn random_dense_heads(seed: u64, dtype: DType) -> (Head, Head) {
    let rng = std::cell::RefCell::new(robust_ssl::rng::SplitMix64::new(seed));
    let t = |dims: &[usize], scale: f64| {
        let v: Vec<f64> = (0..dims.iter().product::<usize>()).map(|_| rng.borrow_mut().uniform(-scale, scale) * 1.7).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    };
    let bn = |d: usize| BatchNorm {
        weight: t(&[d], 0.1).affine(1.0, 1.0).unwrap(),
        bias: t(&[d], 0.1),
        running_mean: t(&[d], 0.1),
        running_var: t(&[d], 0.1).abs().unwrap().affine(1.0, 0.5).unwrap(),
        eps: 1e-5,
    };
    let seg = Head::Seg(SegHead { bn: bn(64), weight: t(&[5, 64], 0.5), bias: t(&[5], 0.1) });
    let depth =
        Head::Depth(DepthHead { bn: Some(bn(128)), weight: t(&[16, 128], 0.5), bias: t(&[16], 0.1), min_depth: 1e-3, max_depth: 10.0 });
    (seg, depth)
}

/// The metadata of a linear probe on the 64-wide test encoder.
pub fn probe_meta(classes: usize, pooling: Pooling) -> HeadMeta {
    HeadMeta {
        task: Task::Cls,
        outputs: classes,
        feature_dim: 64,
        pooling: Some(pooling),
        depth_range: None,
        depth_form: None,
        source: serde_json::json!("test"),
        encoder_file: None,
        encoder_arch: None,
        dataset: "test".into(),
        samples: 0,
        transforms: vec![],
        augment: vec![],
        train: TrainConfig {
            epochs: 300,
            batch_size: 16,
            lr: 0.05,
            optimizer: OptimizerKind::AdamW { weight_decay: 0.0 },
            schedule: Schedule::Constant,
            warmup_steps: 0,
            seed: 0,
        },
        final_loss: 0.0,
        baseline: Baseline::MajorityClass(0),
        created_by: "test".into(),
    }
}
