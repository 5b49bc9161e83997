//! Parity of the hand-written ViT with PyTorch references (official code restated, timm, Hugging
//! Face transformers, onnxruntime), on fixtures written by tools/gen_encoder_fixtures.py: outputs
//! within 1e-4 max-abs, input gradients of a random projection within 1e-4 relative; and the input
//! gradient against f64 central finite differences.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use robust_ssl::encoder::arch::ArchChoice;
use robust_ssl::encoder::{Encoder, LoadOptions, Outputs, Precision, Tape};
use robust_ssl::perf::input_gradient;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder")
}

#[derive(serde::Deserialize, Debug)]
struct Case {
    name: String,
    checkpoint: String,
    heads: Option<usize>,
    pos_resize: Option<String>,
    backbone: Option<String>,
    expect_source: String,
    #[serde(default)]
    no_grad: bool,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(case: &Case) -> Encoder {
    let opts = LoadOptions {
        arch: ArchChoice::Auto,
        heads: case.heads,
        pos_resize: case.pos_resize.as_deref().map(|s| s.parse().unwrap()),
        prefer: case.backbone.clone(),
        device: Device::Cpu,
        precision: Precision::F32,
    };
    Encoder::load(&fixtures().join(&case.checkpoint), &opts).unwrap_or_else(|e| panic!("{}: {e:#}", case.name))
}

fn expected(case: &Case) -> std::collections::HashMap<String, Tensor> {
    let path = fixtures().join(format!("{}.expected.safetensors", case.name));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn outputs_and_input_gradients_match_pytorch() {
    let cases = cases();
    assert!(cases.len() >= 10, "fixture list is incomplete");
    for case in &cases {
        let enc = load(case);
        let source = serde_json::to_value(enc.info.source).unwrap();
        assert_eq!(source.as_str().unwrap(), case.expect_source, "{}: detected naming", case.name);
        let exp = expected(case);
        // Both paths: the hand-written CPU tape (default) and candle autograd (GPUs, f64).
        for generic in [false, true] {
            let path = if generic { "candle" } else { "tape" };
            let (t, tape) =
                if generic { enc.forward_with_tape_generic(&exp["images"]) } else { enc.forward_with_tape(&exp["images"]) }.unwrap();
            assert_eq!(matches!(tape, Tape::Fast(_)), !generic, "{}: default CPU f32 path should be the tape", case.name);
            let dc = max_abs_diff(&t.cls, &exp["cls"]);
            let dp = max_abs_diff(&t.patch, &exp["patch"]);
            println!("{:24} {path:6} cls {dc:.2e} patch {dp:.2e}", case.name);
            assert!(dc < 1e-4 && dp < 1e-4, "{} ({path}): output differs from PyTorch: cls {dc:e}, patch {dp:e}", case.name);
            if case.no_grad {
                continue;
            }
            let g = enc.backward(&tape, &exp["proj_cls"], &exp["proj_patch"]).unwrap();
            let rel = max_abs_diff(&g, &exp["grad"]) / max_abs(&exp["grad"]);
            println!("{:24} {path:6} input-gradient relative {rel:.2e}", case.name);
            assert!(max_abs(&g) > 0.0, "{}: zero gradient", case.name);
            assert!(rel < 1e-4, "{} ({path}): input gradient differs from PyTorch: relative {rel:e}", case.name);
        }
        // `forward` (no tape) gives the same tokens as the taped forward.
        let plain = enc.forward(&exp["images"]).unwrap();
        let (taped, _) = enc.forward_with_tape(&exp["images"]).unwrap();
        assert_eq!(max_abs_diff(&plain.patch, &taped.patch), 0.0, "{}", case.name);
        // A forward for a caller that reads CLS only (the last block on the CLS rows alone) gives
        // PyTorch's CLS, and NaN for every token it did not compute.
        let cls_only = enc.forward_reading(&exp["images"], Outputs::ClsOnly).unwrap();
        let dc = max_abs_diff(&cls_only.cls, &exp["cls"]);
        assert!(dc < 1e-4, "{} (CLS only): CLS differs from PyTorch: {dc:e}", case.name);
        let nan = cls_only.patch.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_nan());
        assert!(nan, "{}: a CLS-only forward's patch tokens are NaN", case.name);
    }
}

/// `‖a − b‖ / ‖b‖`.
fn relative_l2(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    (d / n).sqrt()
}

/// The bf16 path (bf16 operands, f32 sums) against PyTorch's f32 outputs and gradients. The bound
/// is stated from bf16's unit roundoff u = 2⁻⁹ ≈ 2e-3 (each operand of every product rounded
/// once): the tokens within 8u = 1.6e-2 relative L2 of f32, the pixels' gradient (two passes of
/// rounded products) within 16u = 3.1e-2.
#[test]
fn bf16_outputs_and_gradients_stay_within_the_stated_bound_of_pytorch_f32() {
    if !robust_ssl::encoder::bf16_gemm::supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16, and precision bf16 is refused on it (tested in tests/cli.rs)");
        return;
    }
    let u = 2f32.powi(-9);
    for case in &cases() {
        let enc = load(case).with_precision(Precision::Bf16).unwrap();
        let exp = expected(case);
        let (t, tape) = enc.forward_with_tape(&exp["images"]).unwrap();
        let (dc, dp) = (relative_l2(&t.cls, &exp["cls"]), relative_l2(&t.patch, &exp["patch"]));
        println!("{:24} bf16 cls {dc:.2e} patch {dp:.2e} (bound {:.1e})", case.name, 8.0 * u);
        assert!(dc < 8.0 * u && dp < 8.0 * u, "{}: bf16 tokens too far from PyTorch f32: cls {dc:e}, patch {dp:e}", case.name);
        assert!(dc > 0.0, "{}: bf16 gave the f32 tokens exactly: the bf16 kernel did not run", case.name);
        if case.no_grad {
            continue;
        }
        let g = enc.backward(&tape, &exp["proj_cls"], &exp["proj_patch"]).unwrap();
        let dg = relative_l2(&g, &exp["grad"]);
        println!("{:24} bf16 input-gradient {dg:.2e} (bound {:.1e})", case.name, 16.0 * u);
        assert!(dg < 16.0 * u, "{}: bf16 input gradient too far from PyTorch f32: {dg:e}", case.name);
    }
}

#[test]
fn resize_semantics_matter_and_default_follows_the_source() {
    let cases = cases();
    let by_name = |n: &str| cases.iter().find(|c| c.name == n).unwrap();
    // The same .pth with its default (official) semantics must NOT reproduce the size-based output.
    let official = load(by_name("dinov2_official"));
    assert_eq!(official.info.pos_resize.to_string(), "official");
    let size_exp = expected(by_name("dinov2_official_size"));
    let t = official.forward(&size_exp["images"]).unwrap();
    assert!(max_abs_diff(&t.patch, &size_exp["patch"]) > 1e-3, "the two semantics should differ");
    assert_eq!(load(by_name("dinov2_reg")).info.pos_resize.to_string(), "size-aa");
    assert_eq!(load(by_name("hf_dinov2")).info.pos_resize.to_string(), "size");
    assert_eq!(load(by_name("hf_dinov2_onnx")).info.pos_resize.to_string(), "size");
}

#[test]
fn training_checkpoints_pick_teacher_by_default() {
    let cases = cases();
    let case = cases.iter().find(|c| c.name == "dino_v1_train").unwrap();
    let enc = load(case);
    assert_eq!(enc.info.prefix, "teacher.backbone.");
    assert_eq!(enc.info.other_prefixes, vec!["student.module.backbone.".to_string()]);
    assert!(enc.info.ignored_tensors > 0);
}

/// Directional derivatives of a random projection against f64 central differences.
#[test]
fn input_gradient_matches_f64_finite_differences() {
    let cases = cases();
    for name in ["dinov2_reg", "dinov2_swiglu_train", "dino_v1_train"] {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        let enc = load(case).to(&Device::Cpu, DType::F64).unwrap();
        let exp = expected(case);
        let f64t = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let (x, pc, pp) = (f64t(&exp["images"]), f64t(&exp["proj_cls"]), f64t(&exp["proj_patch"]));
        let loss = |x: &Tensor| -> f64 {
            let t = enc.forward(x).unwrap();
            let l = ((t.cls * &pc).unwrap().sum_all().unwrap() + (t.patch * &pp).unwrap().sum_all().unwrap()).unwrap();
            l.to_scalar::<f64>().unwrap()
        };
        let (_, g) = input_gradient(&enc, &x, &pc, &pp).unwrap();
        for seed in 0..3u64 {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let u: Vec<f64> = (0..x.elem_count()).map(|_| rng.random_range(-1.0..1.0)).collect();
            let u = Tensor::from_vec(u, x.dims(), &Device::Cpu).unwrap();
            let h = 1e-5;
            let fd = (loss(&(&x + (&u * h).unwrap()).unwrap()) - loss(&(&x - (&u * h).unwrap()).unwrap())) / (2.0 * h);
            let ad = (&g * &u).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            let rel = (fd - ad).abs() / fd.abs().max(1e-12);
            println!("{name} direction {seed}: autograd {ad:.8e} finite-diff {fd:.8e} rel {rel:.1e}");
            assert!(rel < 1e-7, "{name}: gradient disagrees with finite differences: {ad} vs {fd}");
        }
    }
}
