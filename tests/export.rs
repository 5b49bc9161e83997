//! Writing fine-tuned weights back in the input checkpoint's own form: for every checkpoint
//! fixture (official .pth, training .pth with teacher and student, timm and Hugging Face
//! .safetensors, ONNX), changed weights written and loaded again come back bit for bit, and the
//! rest of the file is untouched.

use std::path::Path;

use candle_core::Tensor;
use robust_ssl::encoder::{Encoder, LoadOptions};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder").join(name)
}

fn params(e: &Encoder) -> Vec<(String, Vec<f32>)> {
    e.vit.parameters().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

fn load(path: &Path, prefer: Option<&str>) -> Encoder {
    let opts = LoadOptions { heads: Some(4), prefer: prefer.map(String::from), ..Default::default() };
    Encoder::load(path, &opts).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

#[test]
fn changed_weights_round_trip_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    for (file, prefer) in [
        ("dinov2_official.pth", None),
        ("dinov2_reg.pth", None),
        ("dino_v1_train.pth", Some("teacher")),
        ("dinov2_swiglu_train.pth", Some("teacher")),
        ("dinov2_reg_timm.safetensors", None),
        ("hf_dinov2/model.safetensors", None),
        ("hf_vit_dino/model.safetensors", None),
        ("hf_dinov2.onnx", None),
    ] {
        let src = fixture(file);
        let enc = load(&src, prefer);
        // Each parameter changed by its own pattern (the class position too: timm files fold it).
        let mut k = 0.0f64;
        let changed = enc
            .vit
            .map_parameters(|_, t| {
                k += 1.0;
                let ramp = Tensor::arange(0u32, t.elem_count() as u32, t.device())?.to_dtype(t.dtype())?.reshape(t.shape())?;
                Ok(((t * (1.0 + 0.01 * k))? + ((ramp * 1e-4)?.sin()? * 0.01)?)?)
            })
            .unwrap();
        let changed = Encoder::from_vit(changed, enc.info.clone()).unwrap();
        let dir = tmp.path().join(file.replace('/', "_"));
        std::fs::create_dir(&dir).unwrap();
        if let Some(config) = src.parent().map(|d| d.join("config.json")).filter(|c| c.is_file() && file.contains('/')) {
            std::fs::copy(config, dir.join("config.json")).unwrap();
        }
        let dst = dir.join(src.file_name().unwrap());
        changed.save_like_input(&dst).unwrap();
        let back = load(&dst, prefer);
        assert_eq!(back.info.source, enc.info.source, "{file}: same naming");
        assert_eq!(back.info.format, enc.info.format, "{file}: same format");
        let (want, got) = (params(&changed), params(&back));
        for ((name, a), (_, b)) in want.iter().zip(&got) {
            if name == "cls_token" || name == "pos_embed.cls" {
                continue; // compared as their sum below (timm stores only the sum)
            }
            assert!(a == b, "{file}: {name} differs after the round trip");
        }
        let sum = |e: &Encoder| (&e.vit.cls_token + &e.vit.pos_cls).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(sum(&changed), sum(&back), "{file}: class token + position");
        let side = 2 * enc.config().patch_size;
        let x = Tensor::rand(0f32, 1f32, (1, 3, side, side), &candle_core::Device::Cpu).unwrap();
        let (a, b) = (changed.forward(&x).unwrap(), back.forward(&x).unwrap());
        assert_eq!(a.cls.to_vec2::<f32>().unwrap(), b.cls.to_vec2::<f32>().unwrap(), "{file}: same outputs");
        // The written file keeps everything else: the other backbone of a training checkpoint.
        if prefer.is_some() {
            let (orig, kept) = (load(&src, Some("student")), load(&dst, Some("student")));
            assert_eq!(params(&orig), params(&kept), "{file}: the student backbone is untouched");
        }
    }
}

#[test]
fn onnx_copy_keeps_weights_and_size() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("hf_dinov2.onnx");
    let enc = load(&src, None);
    let dst = tmp.path().join("copy.onnx");
    enc.save_like_input(&dst).unwrap();
    let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
    // Unchanged weights: the same initializer values, and a file of about the same size (the
    // graph is carried over; only initializers are re-encoded, as raw data).
    let back = load(&dst, None);
    assert_eq!(params(&enc), params(&back));
    assert!(!b.is_empty() && a.len().abs_diff(b.len()) < a.len() / 10, "sizes {} vs {}", a.len(), b.len());
}
