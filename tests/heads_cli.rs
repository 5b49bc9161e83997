//! `train-head` and `eval` as a user runs them, on a tiny DINOv2 (2 blocks, width 64, patch 14):
//! every task learns better than its trivial baseline on held-out synthetic scenes; the feature
//! cache is reused, resumes after a lost chunk, and gives the same head as recomputing features
//! per batch; bad input fails cleanly, naming the file and the problem.

mod common;

use common::{fails_with, ok_json, run, tiny_encoder};

use std::path::{Path, PathBuf};

use serde_json::Value;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data").join(rel)
}

/// `train-head` + `eval --json` on synthetic scenes of one task; returns the evaluation.
fn train_and_eval(task: &str, kind: &str, cache: &Path, out: &Path, extra: &[&str]) -> Value {
    let enc = tiny_encoder();
    let head = out.join(format!("{task}.safetensors")).display().to_string();
    let cache = cache.display().to_string();
    let train_spec = format!("{kind}:48x56");
    let mut args = vec!["train-head", "--task", task, "--checkpoint", &enc, "--num-heads", "4", "--dataset", &train_spec, "--size", "56"];
    args.extend(["--cache-dir", &cache, "--out", &head, "--json"]);
    args.extend(extra);
    let trained = ok_json(&args);
    assert_eq!(trained["steps"], trained["meta"]["train"]["epochs"].as_u64().unwrap() * 6, "48 samples in batches of 8");
    assert!(Path::new(&head).with_extension("json").is_file(), "metadata beside the head");
    let val_spec = format!("{kind}:24x56");
    ok_json(&[
        "eval",
        "--task",
        task,
        "--checkpoint",
        &enc,
        "--num-heads",
        "4",
        "--dataset",
        &val_spec,
        "--cache-dir",
        &cache,
        "--head",
        &head,
        "--json",
    ])
}

#[test]
fn dense_heads_beat_their_baselines_on_held_out_scenes() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = train_and_eval("seg", "synthetic-seg", tmp.path(), tmp.path(), &["--epochs", "40", "--lr", "1e-2"]);
    assert_eq!(seg["dataset"], "synthetic-seg:24x56 [val]", "eval defaults to the val split");
    let (head, base) = (seg["head"]["miou"].as_f64().unwrap(), seg["baseline"]["miou"].as_f64().unwrap());
    assert!(head > base + 0.15, "seg mIoU {head} vs majority-class {base}");
    assert_eq!(seg["head"]["iou_per_class"].as_array().unwrap().len(), 5);

    // Sliding windows: one window as large as the image gives the plain evaluation's figures;
    // overlapping windows (3×3 of 28 px) still beat the baseline.
    let enc = tiny_encoder();
    let (head_file, cache) = (tmp.path().join("seg.safetensors").display().to_string(), tmp.path().display().to_string());
    let slide = |window: &str| {
        ok_json(&[
            "eval",
            "--task",
            "seg",
            "--checkpoint",
            &enc,
            "--num-heads",
            "4",
            "--dataset",
            "synthetic-seg:24x56",
            "--cache-dir",
            &cache,
            "--head",
            &head_file,
            "--window",
            window,
            "--json",
        ])
    };
    for window in ["56:56", "whole"] {
        let whole = slide(window);
        assert!(whole["protocol"].as_str().unwrap().contains("whole images"), "{}", whole["protocol"]);
        let d = (whole["head"]["miou"].as_f64().unwrap() - seg["head"]["miou"].as_f64().unwrap()).abs();
        assert!(d < 1e-3, "{window}: one whole-image window gives mIoU {} vs {}", whole["head"]["miou"], seg["head"]["miou"]);
        assert_eq!(whole["baseline"]["miou"], seg["baseline"]["miou"]);
    }
    let tiled = slide("28:14");
    assert!(tiled["head"]["miou"].as_f64().unwrap() > base + 0.1, "tiled windows: {}", tiled["head"]["miou"]);
    for (window, expected) in [("28", "CROP:STRIDE"), ("112:50", "a 112-pixel sliding window is larger than a 56x56 image")] {
        let args =
            ["eval", "--task", "seg", "--checkpoint", &enc, "--num-heads", "4", "--dataset", "synthetic-seg:4x56", "--head", &head_file];
        fails_with(&[&args[..], &["--window", window]].concat(), &[expected]);
    }

    let depth = train_and_eval("depth", "synthetic-depth", tmp.path(), tmp.path(), &["--epochs", "40", "--lr", "1e-2"]);
    let (head, base) = (depth["head"]["rmse"].as_f64().unwrap(), depth["baseline"]["rmse"].as_f64().unwrap());
    assert!(head < 0.8 * base, "depth RMSE {head} vs mean-depth {base}");
    assert!(depth["head"]["delta1"].as_f64().unwrap() > depth["baseline"]["delta1"].as_f64().unwrap());
    assert_eq!(depth["head"]["images"], 24);
    let depth_file = tmp.path().join("depth.safetensors").display().to_string();
    let whole = ok_json(&[
        "eval",
        "--task",
        "depth",
        "--checkpoint",
        &enc,
        "--num-heads",
        "4",
        "--dataset",
        "synthetic-depth:24x56",
        "--cache-dir",
        &cache,
        "--head",
        &depth_file,
        "--window",
        "56:56",
        "--json",
    ]);
    let d = (whole["head"]["rmse"].as_f64().unwrap() - depth["head"]["rmse"].as_f64().unwrap()).abs();
    assert!(d < 1e-4, "one whole-image window gives depth RMSE {} vs {}", whole["head"]["rmse"], depth["head"]["rmse"]);
}

#[test]
fn classification_head_and_pixel_baseline_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (enc, cache) = (tiny_encoder(), tmp.path().display().to_string());
    let cifar = format!("cifar10:{}", data("cifar-10-batches-bin").display());
    let head = tmp.path().join("probe.safetensors").display().to_string();
    let t = ok_json(&[
        "train-head",
        "--task",
        "cls",
        "--checkpoint",
        &enc,
        "--num-heads",
        "4",
        "--dataset",
        &cifar,
        "--size",
        "28",
        "--pooling",
        "cls+mean",
        "--epochs",
        "200",
        "--lr",
        "5e-2",
        "--cache-dir",
        &cache,
        "--out",
        &head,
        "--json",
    ]);
    assert_eq!(t["meta"]["outputs"], 10);
    assert_eq!(t["meta"]["pooling"], "cls+mean");
    assert_eq!(t["meta"]["transforms"], serde_json::json!(["resize-short28", "crop28x28", "pad14"]));
    assert_eq!(t["train_split"]["head"]["accuracy"], 1.0, "10 samples, 128 features: a linear probe fits them");
    let e = ok_json(&[
        "eval",
        "--task",
        "cls",
        "--checkpoint",
        &enc,
        "--num-heads",
        "4",
        "--dataset",
        &cifar,
        "--cache-dir",
        &cache,
        "--head",
        &head,
        "--json",
    ]);
    assert!(e["dataset"].as_str().unwrap().ends_with("[test]"), "CIFAR has no val split: eval falls back to test");
    assert_eq!(e["head"]["total"], 3);

    let px = tmp.path().join("pixels.safetensors").display().to_string();
    let t = ok_json(&["train-head", "--task", "cls", "--pixels", "--dataset", &cifar, "--cache-dir", &cache, "--out", &px, "--json"]);
    assert_eq!(t["meta"]["feature_dim"], 3 * 32 * 32);
    assert_eq!(t["meta"]["source"], "pixels");
    ok_json(&["eval", "--task", "cls", "--pixels", "--dataset", &cifar, "--cache-dir", &cache, "--head", &px, "--json"]);
    // A pixel head read with encoder features, and the reverse, is refused.
    fails_with(
        &["eval", "--task", "cls", "--checkpoint", &enc, "--num-heads", "4", "--dataset", &cifar, "--head", &px],
        &["pixels.safetensors", "raw pixels"],
    );
    fails_with(&["eval", "--task", "cls", "--pixels", "--dataset", &cifar, "--head", &head], &["probe.safetensors", "encoder features"]);
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn cache_report(v: &Value) -> (u64, u64) {
    (v["cache"]["chunks_computed"].as_u64().unwrap(), v["cache"]["chunks_reused"].as_u64().unwrap())
}

fn head_tensors(path: &str) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = t.into_iter().map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn feature_cache_is_reused_resumes_and_matches_recomputing() {
    let tmp = tempfile::tempdir().unwrap();
    let (enc, cache) = (tiny_encoder(), tmp.path().join("cache").display().to_string());
    let head = |n: &str| tmp.path().join(n).display().to_string();
    // 300 scenes: two chunks of the cache.
    let base = [
        "train-head",
        "--task",
        "seg",
        "--checkpoint",
        &enc,
        "--num-heads",
        "4",
        "--dataset",
        "synthetic-seg:300x28",
        "--size",
        "28",
        "--epochs",
        "2",
    ];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };

    let first = ok_json(&strs(&with(&["--cache-dir", &cache, "--out", &head("a.safetensors"), "--json"])));
    assert_eq!(cache_report(&first), (2, 0));
    let again = ok_json(&strs(&with(&["--cache-dir", &cache, "--out", &head("b.safetensors"), "--json"])));
    assert_eq!(cache_report(&again), (0, 2), "the second run computes nothing");
    assert_eq!(head_tensors(&head("a.safetensors")), head_tensors(&head("b.safetensors")), "same seed, same head");

    // A run killed after its first chunk: the second chunk is missing, a temporary file is left.
    let dir = PathBuf::from(first["cache"]["dir"].as_str().unwrap());
    std::fs::remove_file(dir.join("chunk-000001.safetensors")).unwrap();
    std::fs::write(dir.join("chunk-000001.tmp"), b"half a chunk").unwrap();
    let resumed = ok_json(&strs(&with(&["--cache-dir", &cache, "--out", &head("c.safetensors"), "--json"])));
    assert_eq!(cache_report(&resumed), (1, 1));
    assert_eq!(head_tensors(&head("a.safetensors")), head_tensors(&head("c.safetensors")));
    // A damaged chunk is computed again, with a warning.
    std::fs::write(dir.join("chunk-000000.safetensors"), b"garbage").unwrap();
    let (ok, out, err) = run(&strs(&with(&["--cache-dir", &cache, "--out", &head("d.safetensors"), "--json"])));
    assert!(ok && err.contains("chunk-000000.safetensors"), "{err}");
    assert_eq!(cache_report(&serde_json::from_str(&out).unwrap()), (1, 1));
    // Chunks that are valid safetensors of the wrong ranks or sizes are computed again too
    // (before: panics, a division by zero, or a class count taken from a label of 2^31).
    let chunk0 = dir.join("chunk-000000.safetensors");
    let good = candle_core::safetensors::load(&chunk0, &candle_core::Device::Cpu).unwrap();
    let seg = &good["segmentation"];
    let (n, h, w) = seg.dims3().unwrap();
    let cpu = candle_core::Device::Cpu;
    let damaged: Vec<(&str, &str, candle_core::Tensor)> = vec![
        ("rank-2 segmentation", "segmentation", seg.reshape((n, h * w)).unwrap()),
        ("0-dim patch_mean", "patch_mean", candle_core::Tensor::new(1f32, &cpu).unwrap()),
        ("segmentation of height 0", "segmentation", candle_core::Tensor::zeros((n, 0, w), candle_core::DType::U8, &cpu).unwrap()),
        ("a class label of 2^31", "class", candle_core::Tensor::full(1u32 << 31, n, &cpu).unwrap()),
        ("a 0x5 grid", "grid", candle_core::Tensor::new(&[0u32, 5], &cpu).unwrap()),
    ];
    for (what, name, t) in damaged {
        let mut tensors = good.clone();
        tensors.insert(name.to_string(), t);
        candle_core::safetensors::save(&tensors, &chunk0).unwrap();
        let (ok, out, err) = run(&strs(&with(&["--cache-dir", &cache, "--out", &head("d.safetensors"), "--json"])));
        assert!(ok && err.contains("chunk-000000.safetensors") && err.contains("computing it again"), "{what}: {err}");
        assert_eq!(cache_report(&serde_json::from_str(&out).unwrap()), (1, 1), "{what}");
        assert_eq!(head_tensors(&head("a.safetensors")), head_tensors(&head("d.safetensors")), "{what}");
    }

    // Another transform is another key.
    let other = ok_json(&strs(&with(&["--cache-dir", &cache, "--out", &head("e.safetensors"), "--transforms", "resize28x28", "--json"])));
    assert_eq!(cache_report(&other), (2, 0));

    // Features recomputed per batch (the reference way) train the same head, up to float noise.
    let live = ok_json(&strs(&with(&["--no-cache", "--out", &head("f.safetensors"), "--json"])));
    assert!(live["cache"].is_null());
    for ((name, a), (_, b)) in head_tensors(&head("a.safetensors")).iter().zip(head_tensors(&head("f.safetensors"))) {
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d < 1e-4, "{name}: cached and recomputed features give heads {d} apart");
    }
}

#[test]
fn bad_input_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (enc, cache) = (tiny_encoder(), tmp.path().display().to_string());
    let cifar = format!("cifar10:{}", data("cifar-10-batches-bin").display());
    let out = tmp.path().join("h.safetensors").display().to_string();
    let common = ["--checkpoint", &enc, "--num-heads", "4", "--cache-dir", &cache];
    let train = |task: &str, ds: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["train-head", "--task", task].iter().map(|s| s.to_string()).collect();
        v.extend(common.iter().map(|s| s.to_string()));
        v.extend(["--dataset", ds, "--out", &out].iter().map(|s| s.to_string()));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = |v: &Vec<String>| -> Vec<String> { v.clone() };
    let check = |v: Vec<String>, needles: &[&str]| fails_with(&v.iter().map(String::as_str).collect::<Vec<_>>(), needles);

    // Labels beyond the class count, an empty subset, a missing output folder, a bad transform.
    check(a(&train("cls", &cifar, &["--size", "28", "--classes", "2"])), &["out of range for 2 classes"]);
    check(a(&train("cls", &cifar, &["--limit", "0"])), &["cifar-10-batches-bin", "empty"]);
    // An option that does not fit the task.
    check(a(&train("cls", &cifar, &["--depth-form", "bn"])), &["--depth-form", "depth head", "--task is cls"]);
    let nowhere = tmp.path().join("no/such/dir/h.safetensors").display().to_string();
    check(
        vec![
            "train-head".into(),
            "--task".into(),
            "cls".into(),
            "--pixels".into(),
            "--dataset".into(),
            cifar.clone(),
            "--out".into(),
            nowhere,
        ],
        &["does not exist"],
    );
    check(a(&train("cls", &cifar, &["--transforms", "resize-short28,flip"])), &["unknown transform 'flip'"]);
    // Images left at different sizes cannot be batched; a corrupt JPEG is named.
    let voc = format!("voc2012:{}", data("VOCdevkit/VOC2012").display());
    check(a(&train("seg", &voc, &["--transforms", "pad4"])), &["VOC2012", "add a crop"]);
    let broken = tmp.path().join("VOC2012");
    copy_dir(&data("VOCdevkit/VOC2012"), &broken);
    let jpg = broken.join("JPEGImages/2007_000032.jpg");
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() / 3]).unwrap();
    check(a(&train("seg", &format!("voc2012:{}", broken.display()), &["--size", "28"])), &["2007_000032.jpg"]);
    // Pixels for a dense task.
    check(
        vec![
            "train-head".into(),
            "--task".into(),
            "seg".into(),
            "--pixels".into(),
            "--dataset".into(),
            "synthetic-seg:4x28".into(),
            "--out".into(),
            out.clone(),
        ],
        &["--pixels"],
    );

    // Head files: missing, truncated, of another task, of another encoder width.
    let (ok, _, err) =
        run(&train("seg", "synthetic-seg:8x28", &["--size", "28", "--epochs", "1"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    let eval = |head: &str, task: &str, ckpt: &str| -> Vec<String> {
        let heads = if ckpt.contains("swiglu") { "3" } else { "4" };
        [
            "eval",
            "--task",
            task,
            "--checkpoint",
            ckpt,
            "--num-heads",
            heads,
            "--dataset",
            "synthetic-seg:4x28",
            "--size",
            "28",
            "--cache-dir",
            &cache,
            "--head",
            head,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let missing = tmp.path().join("missing.safetensors").display().to_string();
    check(eval(&missing, "seg", &enc), &["missing.safetensors"]);
    check(eval(&out, "cls", &enc), &["h.safetensors", "seg head", "--task is cls"]);
    let cut = tmp.path().join("cut.safetensors").display().to_string();
    let bytes = std::fs::read(&out).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    check(eval(&cut, "seg", &enc), &["cut.safetensors", "truncated or corrupt"]);
    // A NaN in a head's weights is refused at load, naming the tensor (before: "accuracy 0%", exit 0).
    let nan = tmp.path().join("nan.safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let at = st.tensor("decode_head.conv_seg.bias").unwrap().data().as_ptr() as usize - bytes.as_ptr() as usize;
    let mut poisoned = bytes.clone();
    poisoned[at + 4..at + 8].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&nan, &poisoned).unwrap();
    check(
        eval(&nan.display().to_string(), "seg", &enc),
        &["nan.safetensors", "decode_head.conv_seg.bias", "non-finite", "NaN at flat index 1"],
    );
    let narrow = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder/dinov2_swiglu_train.pth").display().to_string();
    check(eval(&out, "seg", &narrow), &["h.safetensors", "64-wide features", "gives 48"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// The `study` recipe: the study's settings for each task (unless an option is given), its
/// augmentations drawn afresh every epoch from the seed (the features are recomputed, the cache
/// is not used), the same head on a second run, and a different head than the same settings
/// without augmentation; the head file records the training transforms.
#[test]
fn study_recipes_augment_and_recompute_features() {
    use robust_ssl::heads::fit::HeadOptions;
    use robust_ssl::heads::head::Task;
    use robust_ssl::heads::recipes::{Augment, RecipeName};
    use robust_ssl::optim::OptimizerKind;
    let study = |task| HeadOptions { recipe: Some(RecipeName::Study), ..Default::default() }.recipe(task);
    let (c, s, d) = (study(Task::Cls), study(Task::Seg), study(Task::Depth));
    assert_eq!((c.train.epochs, c.train.batch_size, c.train.lr, c.augment), (5, 128, 0.5, Augment::CropFlip));
    assert_eq!((s.train.epochs, s.train.batch_size, s.train.lr, s.augment), (50, 16, 1e-3, Augment::CropFlips));
    assert_eq!(s.train.optimizer, OptimizerKind::AdamW { weight_decay: 1e-4 });
    assert_eq!((d.train.epochs, d.train.batch_size, d.train.lr, d.augment), (20, 128, 1e-4, Augment::Flip));
    assert_eq!(d.train.optimizer, OptimizerKind::AdamW { weight_decay: 0.01 });
    let fast = HeadOptions::default().recipe(Task::Seg);
    assert_eq!((fast.train.epochs, fast.train.batch_size, fast.augment), (20, 8, Augment::None));

    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let cache = tmp.path().join("cache");
    let train = |name: &str, recipe: &str| -> (Value, String) {
        let head = tmp.path().join(format!("{name}.safetensors")).display().to_string();
        let cache = cache.display().to_string();
        let args = [
            "train-head",
            "--task",
            "seg",
            "--recipe",
            recipe,
            "--checkpoint",
            &enc,
            "--num-heads",
            "4",
            "--dataset",
            "synthetic-seg:16x56",
            "--size",
            "56",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "1e-2",
            "--schedule",
            "constant",
            "--weight-decay",
            "1e-4",
            "--cache-dir",
            &cache,
            "--out",
            &head,
            "--json",
        ];
        (ok_json(&args), head)
    };
    let (a, a_file) = train("a", "study");
    let (_, b_file) = train("b", "study");
    let (plain, plain_file) = train("plain", "fast");
    assert_eq!(a["meta"]["augment"], serde_json::json!(["resize-short56", "random-crop56x56", "flips", "pad14"]));
    assert!(a["cache"].is_null(), "augmented training recomputes features: {}", a["cache"]);
    assert!(plain["meta"].get("augment").is_none() && !plain["cache"].is_null());
    assert_eq!(head_tensors(&a_file), head_tensors(&b_file), "the augmentation draws come from the seed");
    assert_ne!(head_tensors(&a_file), head_tensors(&plain_file), "the augmentation changes what the head learns");
}
