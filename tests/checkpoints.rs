//! Checkpoints written by the libraries themselves (tests/fixtures/checkpoints, by
//! tools/gen_checkpoint_fixtures.py): transformers `save_pretrained` folders, timm `save_for_hf`
//! and a bare timm state dict, torch.onnx legacy and dynamo exports. Each is loaded with the
//! default flags (plus what its case states): the resize semantics and naming detected, the outputs
//! within 1e-4 (relative to the reference's largest value) of the library's own forward, and the
//! input gradient of a random projection within 1e-4 relative where the reference has one.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use robust_ssl::encoder::{Encoder, LoadOptions, Tape};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints")
}

#[derive(serde::Deserialize, Debug)]
struct Case {
    name: String,
    checkpoint: String,
    heads: Option<usize>,
    pos_resize: Option<String>,
    expect_source: String,
    expect_arch: String,
    expect_pos_resize: String,
    #[serde(default)]
    no_grad: bool,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"))
}

fn options(case: &Case) -> LoadOptions {
    LoadOptions { heads: case.heads, pos_resize: case.pos_resize.as_deref().map(|s| s.parse().unwrap()), ..Default::default() }
}

fn load(case: &Case) -> Encoder {
    Encoder::load(&fixtures().join(&case.checkpoint), &options(case)).unwrap_or_else(|e| panic!("{}: {e:#}", case.name))
}

fn expected(case: &Case) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(format!("{}.expected.safetensors", case.name)), &Device::Cpu).unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Largest difference relative to the reference's largest magnitude.
fn rel_diff(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    max_abs(&(got - want).unwrap()) / max_abs(want).max(f32::MIN_POSITIVE)
}

#[test]
fn every_library_file_loads_with_its_own_semantics_and_matches_its_library() {
    let cases = cases();
    assert!(cases.len() >= 7, "fixture list is incomplete");
    for case in &cases {
        let enc = load(case);
        let info = &enc.info;
        let source = serde_json::to_value(info.source).unwrap();
        assert_eq!(source.as_str().unwrap(), case.expect_source, "{}: detected naming", case.name);
        assert_eq!(info.arch.as_deref().unwrap_or("custom"), case.expect_arch, "{}: architecture", case.name);
        assert_eq!(info.pos_resize.to_string(), case.expect_pos_resize, "{}: resize ({})", case.name, info.default_pos_resize.reason);
        assert_eq!(info.config.num_heads, 4, "{}: heads", case.name);
        assert!(!info.heads_assumed, "{}: the file states its heads", case.name);
        println!("{:20} {} ({})", case.name, info.pos_resize, info.default_pos_resize.reason);
        let exp = expected(case);
        for generic in [false, true] {
            let path = if generic { "candle" } else { "tape" };
            let images = &exp["images"];
            let (t, tape) = if generic { enc.forward_with_tape_generic(images) } else { enc.forward_with_tape(images) }.unwrap();
            assert_eq!(matches!(tape, Tape::Fast(_)), !generic, "{}: default CPU f32 path should be the tape", case.name);
            let (dc, dp) = (rel_diff(&t.cls, &exp["cls"]), rel_diff(&t.patch, &exp["patch"]));
            println!("{:20} {path:6} cls {dc:.2e} patch {dp:.2e} (relative)", case.name);
            assert!(dc < 1e-4 && dp < 1e-4, "{} ({path}): output differs from the library: cls {dc:e}, patch {dp:e}", case.name);
            if case.no_grad {
                continue;
            }
            let g = enc.backward(&tape, &exp["proj_cls"], &exp["proj_patch"]).unwrap();
            let rel = rel_diff(&g, &exp["grad"]);
            println!("{:20} {path:6} input gradient {rel:.2e} (relative)", case.name);
            assert!(max_abs(&g) > 0.0, "{}: zero gradient", case.name);
            assert!(rel < 1e-4, "{} ({path}): input gradient differs from the library: relative {rel:e}", case.name);
        }
    }
}

#[test]
fn a_bare_timm_state_dict_defaults_to_official_and_says_it_cannot_tell() {
    let mut bare = case("timm_dinov2_bare");
    bare.pos_resize = None;
    let enc = load(&bare);
    assert_eq!(enc.info.pos_resize.to_string(), "official");
    let d = &enc.info.default_pos_resize;
    assert!(d.ambiguous, "{}", d.reason);
    assert!(d.reason.contains("timm"), "the reason names the other writer: {}", d.reason);
    // And with the default, the output is not timm's.
    let exp = expected(&case("timm_dinov2_bare"));
    let t = enc.forward(&exp["images"]).unwrap();
    assert!(rel_diff(&t.patch, &exp["patch"]) > 1e-3, "official and size-aa should differ on this grid");
}

#[test]
fn a_folder_without_weights_is_named_with_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("hf_dinov2_folder/config.json"), dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("README.md"), "weights elsewhere").unwrap();
    let err = match Encoder::load(dir.path(), &LoadOptions::default()) {
        Ok(_) => panic!("a folder without weights should not load"),
        Err(e) => format!("{e:#}"),
    };
    let shown = dir.path().display().to_string();
    for needle in [shown.as_str(), "model.safetensors", "config.json", "README.md"] {
        assert!(err.contains(needle), "'{needle}' missing from: {err}");
    }
}

#[test]
fn onnx_files_say_how_their_graph_resizes() {
    let reason = |name: &str| load(&case(name)).info.default_pos_resize;
    let legacy = reason("meta_dinov2_legacy");
    assert!(!legacy.ambiguous);
    for needle in ["+0.1", "'/Resize'", "1.025", "0.775"] {
        assert!(legacy.reason.contains(needle), "'{needle}' missing from: {}", legacy.reason);
    }
    for name in ["hf_dinov2_dynamo", "meta_dinov2_dynamo"] {
        let baked = reason(name);
        assert!(!baked.ambiguous);
        for needle in ["no Resize", "cat_1", "at that size only"] {
            assert!(baked.reason.contains(needle), "{name}: '{needle}' missing from: {}", baked.reason);
        }
    }
    let hf_legacy = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder/hf_dinov2.onnx");
    let enc = Encoder::load(&hf_legacy, &LoadOptions::default()).unwrap();
    assert_eq!(enc.info.pos_resize.to_string(), "size");
    assert!(enc.info.default_pos_resize.reason.contains("sizes […, 3, 5]"), "{}", enc.info.default_pos_resize.reason);
}

#[test]
fn a_graph_with_a_baked_position_embedding_runs_at_its_export_size_only() {
    for (name, grid, other) in [("meta_dinov2_dynamo", (4, 3), (56, 56)), ("hf_dinov2_dynamo", (3, 5), (42, 56))] {
        let enc = load(&case(name));
        assert_eq!(enc.config().fixed_grid, Some(grid), "{name}");
        let pixels = format!("{}x{} px", grid.0 * 14, grid.1 * 14);
        let x = Tensor::zeros((1, 3, other.0, other.1), candle_core::DType::F32, &Device::Cpu).unwrap();
        for err in [enc.forward(&x).err(), enc.forward_generic(&x).err(), enc.forward_with_tape(&x).err()] {
            let err = format!("{:#}", err.unwrap_or_else(|| panic!("{name}: another size should fail")));
            for needle in [name, pixels.as_str(), "Export the model again", "dynamic input shapes"] {
                assert!(err.contains(needle), "{name}: '{needle}' missing from: {err}");
            }
        }
    }
}

#[test]
fn onnx_weights_written_back_load_again_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["meta_dinov2_legacy", "meta_dinov2_dynamo", "hf_dinov2_dynamo"] {
        let case = case(name);
        let enc = load(&case);
        let mut k = 0.0f64;
        let changed = enc
            .vit
            .map_parameters(|_, t| {
                k += 1.0;
                let ramp = Tensor::arange(0u32, t.elem_count() as u32, t.device())?.to_dtype(t.dtype())?.reshape(t.shape())?;
                Ok(((t * (1.0 + 0.01 * k))? + ((ramp * 1e-3)?.sin()? * 0.01)?)?)
            })
            .unwrap();
        let changed = Encoder::from_vit(changed, enc.info.clone()).unwrap();
        let dst = tmp.path().join(&case.checkpoint);
        changed.save_like_input(&dst).unwrap();
        let back = Encoder::load(&dst, &options(&case)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(back.info.pos_resize, enc.info.pos_resize, "{name}");
        assert_eq!(back.config().fixed_grid, enc.config().fixed_grid, "{name}");
        let values = |e: &Encoder| -> Vec<(String, Vec<f32>)> {
            e.vit.parameters().into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
        };
        for ((n, a), (_, b)) in values(&changed).iter().zip(&values(&back)) {
            assert!(a == b, "{name}: {n} differs after writing back");
        }
        assert!(values(&enc) != values(&back), "{name}: the weights written are the changed ones");
    }
}

/// A position embedding with the class position only (no patch grid) is refused at load, naming
/// the file and the tensor (it used to pass as a "0x0 grid" and panic at the first forward).
#[test]
fn a_position_embedding_without_a_grid_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("timm_dinov2_hf/model.safetensors");
    let mut t = candle_core::safetensors::load(&src, &Device::Cpu).unwrap();
    let pos = t["pos_embed"].narrow(1, 0, 1).unwrap();
    t.insert("pos_embed".into(), pos);
    let bad = tmp.path().join("no_grid.safetensors");
    candle_core::safetensors::save(&t, &bad).unwrap();
    let err = format!("{:#}", Encoder::load(&bad, &LoadOptions { heads: Some(4), ..Default::default() }).err().unwrap());
    assert!(err.contains("no_grid.safetensors") && err.contains("pos_embed"), "{err}");
}

/// A `.pth` archive with `data.pkl` = `pickle` and one storage `data/0` of `storage` bytes.
fn hand_made_pth(dir: &Path, name: &str, pickle: &[u8], storage: &[u8]) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/data/0", stored).unwrap();
    zip.write_all(storage).unwrap();
    zip.finish().unwrap();
    path
}

/// `{"w": _rebuild_tensor_v2(storage("0", FloatStorage, len), offset, shape, stride, ...)}`, the
/// way torch.save writes a state dict entry (sizes as 8-byte LONG1 integers).
fn state_dict_pickle(len: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Vec<u8> {
    let int = |v: i64| [vec![0x8a, 8], v.to_le_bytes().to_vec()].concat();
    let mut p = b"\x80\x02}q\x00(\x8c\x01wctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    p.extend(b"(\x8c\x07storagectorch\nFloatStorage\n\x8c\x010\x8c\x03cpu");
    p.extend(int(len));
    p.extend(b"tQ");
    p.extend(int(offset));
    p.push(b'(');
    shape.iter().for_each(|&d| p.extend(int(d)));
    p.extend(b"t(");
    stride.iter().for_each(|&d| p.extend(int(d)));
    p.extend(b"t\x89ccollections\nOrderedDict\n)Rt");
    p.extend(b"Ru.");
    p
}

/// Hostile `.pth` files (made by hand, as an adversary would) are errors naming the file: no
/// panic (before: inside candle's pickle reader) and no allocation of what the file declares.
#[test]
fn hostile_pth_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let floats: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    // A well-formed one first: a transposed view (strides [1, 2]) of 6 floats from offset 0.
    let good = hand_made_pth(dir.path(), "good.pth", &state_dict_pickle(6, 0, &[2, 3], &[1, 2]), &floats);
    let t = robust_ssl::encoder::weights::read_all(&good).unwrap();
    assert_eq!(t[0].0, "w");
    assert_eq!(t[0].1.to_vec2::<f32>().unwrap(), vec![vec![0.0, 2.0, 4.0], vec![1.0, 3.0, 5.0]]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "few_args.pth",
            b"\x80\x02}(\x8c\x01wctorch._utils\n_rebuild_tensor_v2\n(K\x01tRu.".to_vec(),
            "_rebuild_tensor_v2 with 1 arguments",
        ),
        ("huge_string.pth", b"\x80\x02X\xff\xff\xff\xff..".to_vec(), "runs past the end"),
        ("huge_storage.pth", state_dict_pickle(1 << 40, 0, &[1 << 20, 1 << 20], &[1 << 20, 1]), "declared as 1099511627776 elements"),
        ("overflow.pth", state_dict_pickle(1 << 40, 0, &[1 << 40, 1 << 40, 1 << 40], &[1, 1, 1]), "too large"),
        ("past_storage.pth", state_dict_pickle(6, 1, &[2, 3], &[3, 1]), "reaches element 7 of a storage of 6"),
        ("negative.pth", state_dict_pickle(6, 0, &[-2, 3], &[3, 1]), "a dimension is -2"),
        ("deep.pth", [b"\x80\x02".to_vec(), vec![b']'; 100_000], vec![b'a'; 99_999], b".".to_vec()].concat(), "nested more than"),
        ("opcode.pth", b"\x80\x02\xfe.".to_vec(), "opcode 0xfe"),
    ];
    for (name, pickle, needle) in cases {
        let path = hand_made_pth(dir.path(), name, &pickle, &floats);
        let err = format!("{:#}", robust_ssl::encoder::weights::read_all(&path).unwrap_err());
        assert!(err.contains(&path.display().to_string()) && err.contains(needle), "{name}: {err}");
    }
}
