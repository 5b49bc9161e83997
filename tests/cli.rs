//! The `robust-ssl` binary as a user calls it: `embed` and `inspect` outputs, and a clear error
//! (naming the file and the problem, exit code 1, no panic) for every kind of bad input.

mod common;

use common::{fails_with, run};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder")
}

fn save(dir: &Path, name: &str, tensors: HashMap<String, Tensor>) -> String {
    let p = dir.join(name);
    candle_core::safetensors::save(&tensors, &p).unwrap();
    p.display().to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn embed_writes_the_reference_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let exp = candle_core::safetensors::load(fixtures().join("dinov2_official.expected.safetensors"), &Device::Cpu).unwrap();
    let input = save(dir.path(), "in.safetensors", HashMap::from([("images".into(), exp["images"].clone())]));
    let out = dir.path().join("out.safetensors");
    let ckpt = s(&fixtures().join("dinov2_official.pth"));
    let (ok, _, err) =
        run(&["embed", "--checkpoint", &ckpt, "--num-heads", "4", "--input", &input, "--output", &s(&out), "--batch-size", "1"]);
    assert!(ok, "{err}");
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    for key in ["cls", "patch"] {
        let d = (&got[key] - &exp[key]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "{key} differs by {d}");
    }
    assert_eq!(got["patch"].dims(), &[2, 12, 64]);
}

#[test]
fn inspect_reports_architecture_naming_and_resize() {
    let ckpt = s(&fixtures().join("dinov2_reg_timm.safetensors"));
    let (ok, out, err) = run(&["inspect", &ckpt, "--num-heads", "4"]);
    assert!(ok, "{err}");
    for want in ["Timm", "registers 4", "size-aa", "parameters:"] {
        assert!(out.contains(want), "missing '{want}' in:\n{out}");
    }
    let (ok, out, _) = run(&["inspect", &s(&fixtures().join("hf_dinov2/model.safetensors")), "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["source"], "huggingface");
    assert_eq!(v["config"]["num_heads"], 4, "heads from config.json");
    assert_eq!(v["pos_resize"], "size");
}

#[test]
fn missing_truncated_and_corrupt_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let img = s(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real/photos/coffee.png"));
    let out = s(&dir.path().join("o.safetensors"));
    fails_with(
        &["embed", "--checkpoint", "/nonexistent/model.pth", "--input", &img, "--output", &out],
        &["/nonexistent/model.pth", "no such file"],
    );
    for name in ["dinov2_official.pth", "dinov2_reg_timm.safetensors", "hf_dinov2.onnx"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let cut = dir.path().join(format!("cut_{name}"));
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        fails_with(&["inspect", &s(&cut)], &[&s(&cut), "corrupt"]);
        let junk = dir.path().join(format!("junk_{name}"));
        std::fs::write(&junk, b"this is not a checkpoint at all, just text").unwrap();
        fails_with(&["inspect", &s(&junk)], &[&s(&junk)]);
    }
    // A file that parses but holds no ViT.
    let other = save(
        dir.path(),
        "other.safetensors",
        HashMap::from([("fc.weight".into(), Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap())]),
    );
    fails_with(&["inspect", &other], &[&other, "no ViT backbone found"]);
}

fn timm_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("dinov2_reg_timm.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn unknown_names_and_shape_mismatches_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = timm_tensors();
    t.insert("blocks.0.attn.rel_pos.weight".into(), Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
    let f = save(dir.path(), "unknown.safetensors", t);
    fails_with(&["inspect", &f, "--num-heads", "4"], &[&f, "blocks.0.attn.rel_pos.weight", "not part of"]);

    let mut t = timm_tensors();
    t.insert("blocks.1.attn.proj.weight".into(), Tensor::zeros((64, 32), candle_core::DType::F32, &Device::Cpu).unwrap());
    let f = save(dir.path(), "shape.safetensors", t);
    fails_with(&["inspect", &f, "--num-heads", "4"], &[&f, "blocks.1.attn.proj.weight", "[64, 32]", "expected [64, 64]"]);

    let mut t = timm_tensors();
    t.remove("blocks.1.norm2.bias");
    let f = save(dir.path(), "missing.safetensors", t);
    fails_with(&["inspect", &f, "--num-heads", "4"], &[&f, "missing tensor 'blocks.1.norm2.bias'"]);

    let f = s(&fixtures().join("dinov2_reg_timm.safetensors"));
    fails_with(&["inspect", &f, "--arch", "dinov2_vits14"], &["embedding width 384", "64"]);
    fails_with(&["inspect", &f, "--arch", "dinov3_vits16"], &["unknown architecture"]);
    fails_with(&["inspect", &f, "--num-heads", "5"], &["5 attention heads do not divide"]);
    fails_with(
        &["inspect", &s(&fixtures().join("dino_v1_train.pth")), "--num-heads", "4", "--backbone", "ema"],
        &["no backbone under 'ema'"],
    );
}

#[test]
fn bad_images_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = s(&fixtures().join("dinov2_official.pth"));
    let out = s(&dir.path().join("o.safetensors"));
    let embed = |input: &str| {
        vec!["embed", "--checkpoint", &ckpt, "--num-heads", "4", "--input", input, "--output", &out]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let fails = |input: &str, needles: &[&str]| {
        let args = embed(input);
        fails_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), needles)
    };
    let cpu = Device::Cpu;
    let odd = save(dir.path(), "odd.safetensors", HashMap::from([("images".into(), Tensor::full(0.5f32, (1, 3, 30, 28), &cpu).unwrap())]));
    fails(&odd, &[&odd, "30x28", "multiples of the patch size 14"]);
    let mut v = vec![0.5f32; 3 * 28 * 28];
    v[100] = f32::NAN;
    let nan = save(dir.path(), "nan.safetensors", HashMap::from([("images".into(), Tensor::from_vec(v, (1, 3, 28, 28), &cpu).unwrap())]));
    fails(&nan, &[&nan, "NaN"]);
    let norm =
        save(dir.path(), "norm.safetensors", HashMap::from([("images".into(), Tensor::full(-1.5f32, (1, 3, 28, 28), &cpu).unwrap())]));
    fails(&norm, &[&norm, "outside [0, 1]"]);
    let wrong =
        save(dir.path(), "wrong.safetensors", HashMap::from([("pixels".into(), Tensor::full(0.5f32, (1, 3, 28, 28), &cpu).unwrap())]));
    fails(&wrong, &[&wrong, "no tensor named 'images'"]);
    let rank = save(dir.path(), "rank.safetensors", HashMap::from([("images".into(), Tensor::full(0.5f32, (3, 28, 28), &cpu).unwrap())]));
    fails(&rank, &[&rank, "expected [N, 3, H, W]"]);
    let png = dir.path().join("broken.png");
    std::fs::write(&png, b"\x89PNG\r\n\x1a\nbroken").unwrap();
    fails(&s(&png), &[&s(&png), "not a decodable image"]);
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails(&s(&empty), &[&s(&empty), "no image files"]);
    fails(&s(&dir.path().join("absent.png")), &["absent.png", "no such file"]);
    // Output into a folder that does not exist.
    let exp = candle_core::safetensors::load(fixtures().join("dinov2_official.expected.safetensors"), &cpu).unwrap();
    let good = save(dir.path(), "good.safetensors", HashMap::from([("images".into(), exp["images"].clone())]));
    fails_with(
        &["embed", "--checkpoint", &ckpt, "--num-heads", "4", "--input", &good, "--output", "/nonexistent/dir/o.safetensors"],
        &["/nonexistent/dir", "does not exist"],
    );
}

/// A checkpoint with a NaN or an infinity in a backbone weight is refused at load, naming the
/// file and the tensor (before: `embed` wrote NaN features and exited 0).
#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let img = s(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real/photos/coffee.png"));
    let out = s(&dir.path().join("o.safetensors"));
    for (bad, name, shown) in [(f32::NAN, "blocks.1.attn.qkv.weight", "NaN"), (f32::INFINITY, "pos_embed", "inf")] {
        let mut t = timm_tensors();
        let v = &t[name];
        let mut values = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values[7] = bad;
        t.insert(name.into(), Tensor::from_vec(values, v.dims(), &Device::Cpu).unwrap());
        let f = save(dir.path(), &format!("{shown}.safetensors"), t);
        fails_with(
            &["embed", "--checkpoint", &f, "--num-heads", "4", "--input", &img, "--output", &out],
            &[&f, name, "1 non-finite value", &format!("first {shown} at flat index 7")],
        );
        assert!(!Path::new(&out).exists(), "nothing written");
    }
}

/// `bench` says what it measured on: the CPU model and the SIMD extensions /proc/cpuinfo lists,
/// and which kernels our matrix products ran, in JSON and in text.
#[test]
fn bench_names_the_machine_and_its_kernels() {
    let ckpt = s(&fixtures().join("dinov2_official.pth"));
    let args = ["bench", "--checkpoint", &ckpt, "--num-heads", "4", "--batch-size", "1", "--size", "28", "--iters", "1", "--warmup", "0"];
    let out = common::ok_json(&[&args[..], &["--json"]].concat());
    let m = &out["machine"];
    assert!(out["forward_s"].as_f64().unwrap() > 0.0 && m["threads"].as_u64().unwrap() >= 1, "{out}");
    let features: Vec<&str> = m["features"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo.lines().find(|l| l.starts_with("flags")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
    for f in &features {
        assert!(flags.contains(f), "{f} reported but not in /proc/cpuinfo");
    }
    assert_eq!(features.contains(&"avx512f"), flags.contains(&"avx512f"));
    let kernels = m["gemm_kernels"].as_str().unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(kernels.starts_with("AVX-512"), flags.contains(&"avx512f"), "{kernels}");
    }
    let (ok, text, err) = common::run(&args);
    assert!(ok, "{err}");
    assert!(text.lines().any(|l| l.starts_with("machine: ") && l.contains(kernels)), "{text}");
}

/// `--precision bf16` runs where the CPU has AVX512-BF16 (and says so in the bench) and is refused,
/// naming the file and the reason, where it has not or the kernel is disabled.
#[test]
fn precision_bf16_runs_where_the_cpu_can_and_is_refused_elsewhere() {
    let ckpt = s(&fixtures().join("dinov2_official.pth"));
    let args = [
        "bench",
        "--checkpoint",
        &ckpt,
        "--num-heads",
        "4",
        "--batch-size",
        "1",
        "--size",
        "28",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--precision",
        "bf16",
    ];
    if robust_ssl::encoder::bf16_gemm::supported() {
        let out = common::ok_json(&[&args[..], &["--json"]].concat());
        assert_eq!(out["precision"], "bf16", "{out}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_robust-ssl"))
        .args(args)
        .env(robust_ssl::encoder::bf16_gemm::DISABLE_ENV, "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("dinov2_official.pth") && err.contains("AVX512-BF16") && err.contains("use precision f32"), "{err}");
}

/// `--device` takes auto, cpu, cuda or cuda:N in any case; `cuda` on a binary built without CUDA
/// is refused with how to build one, and `cpu` runs.
#[test]
fn the_device_is_chosen_by_name_and_cuda_without_it_says_how_to_get_it() {
    let ckpt = s(&fixtures().join("dinov2_official.pth"));
    let args = ["bench", "--checkpoint", &ckpt, "--num-heads", "4", "--batch-size", "1", "--size", "28", "--iters", "1", "--warmup", "0"];
    let out = common::ok_json(&[&["--device", "CPU"][..], &args[..], &["--json"]].concat());
    assert!(out["machine"]["device"].as_str().unwrap().starts_with("cpu"), "{out}");
    fails_with(&[&args[..], &["--device", "tpu"]].concat(), &["'tpu' is not a device", "cuda:N"]);
    // Named choices in any case; a wrong one lists the names.
    let out = common::ok_json(&[&args[..], &["--precision", "F32", "--json"]].concat());
    assert_eq!(out["precision"], "f32");
    fails_with(&[&args[..], &["--precision", "f16"]].concat(), &["'f16'", "--precision", "f32", "bf16"]);
    if !cfg!(feature = "cuda") {
        fails_with(&[&args[..], &["--device", "cuda:1"]].concat(), &["--device cuda:1", "built without CUDA", "scripts/build-cuda.sh"]);
    }
}

/// `convert` writes the backbone in Meta's layout: in f32 the tokens are those of the original
/// file bit for bit; in f16 within f16's rounding of the weights.
#[test]
fn convert_writes_a_backbone_that_embeds_as_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let exp = candle_core::safetensors::load(fixtures().join("dinov2_official.expected.safetensors"), &Device::Cpu).unwrap();
    let input = save(dir.path(), "in.safetensors", HashMap::from([("images".into(), exp["images"].clone())]));
    let embed = |ckpt: &str, name: &str| {
        let out = dir.path().join(name);
        let (ok, _, err) = run(&["embed", "--checkpoint", ckpt, "--num-heads", "4", "--input", &input, "--output", &s(&out)]);
        assert!(ok, "{err}");
        candle_core::safetensors::load(&out, &Device::Cpu).unwrap()
    };
    let original = s(&fixtures().join("dinov2_official.pth"));
    let want = embed(&original, "original.safetensors");
    for (dtype, bound) in [("f32", 0.0), ("f16", 2e-2)] {
        let converted = dir.path().join(format!("{dtype}.safetensors"));
        let (ok, text, err) =
            run(&["convert", "--checkpoint", &original, "--num-heads", "4", "--output", &s(&converted), "--dtype", dtype]);
        assert!(ok && text.contains(dtype), "{text}{err}");
        let stored = candle_core::safetensors::load(&converted, &Device::Cpu).unwrap();
        assert!(stored.contains_key("blocks.0.attn.qkv.weight") && stored.contains_key("pos_embed"), "{:?}", stored.keys());
        assert_eq!(format!("{:?}", stored["blocks.0.attn.qkv.weight"].dtype()), dtype.to_uppercase());
        let got = embed(&s(&converted), &format!("tokens-{dtype}.safetensors"));
        for key in ["cls", "patch"] {
            let d = (&got[key] - &want[key]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d <= bound, "{dtype} {key} differs by {d}");
        }
    }
}

/// `bench --parity` prints the figures two devices must agree on, from seeded inputs: the same
/// on every run, finite, one attack loss per sample.
#[test]
fn parity_figures_are_seeded() {
    let ckpt = s(&fixtures().join("dinov2_official.pth"));
    let args = ["bench", "--checkpoint", &ckpt, "--num-heads", "4", "--batch-size", "2", "--size", "28", "--attack-steps", "2", "--parity"];
    let (a, b) = (common::ok_json(&args), common::ok_json(&args));
    assert_eq!(a, b);
    assert_eq!(a["attack_losses"].as_array().unwrap().len(), 2, "{a}");
    for key in ["projection", "gradient_norm", "gradient_projection"] {
        assert!(a[key].as_f64().is_some_and(|v| v.is_finite() && v != 0.0), "{key}: {a}");
    }
}
