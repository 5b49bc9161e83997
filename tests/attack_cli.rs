//! `robust-ssl attack` as a user runs it on a tiny DINOv2: every attack fits its task, keeps the
//! budget, hurts the metric, and bad input fails cleanly.

mod common;

use common::{fails_with, ok_json, tiny_encoder};

use std::path::Path;

#[test]
fn attacks_hurt_every_task_within_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let (enc, cache) = (tiny_encoder(), tmp.path().display().to_string());
    let cifar = format!("cifar10:{}", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/cifar-10-batches-bin").display());
    let probe = tmp.path().join("probe.safetensors").display().to_string();
    let common = ["--checkpoint", enc.as_str(), "--num-heads", "4", "--cache-dir", cache.as_str()];
    let with =
        |head: &[&str], extra: &[&str]| -> Vec<String> { head.iter().chain(common.iter()).chain(extra).map(|s| s.to_string()).collect() };
    let strs = |v: &Vec<String>| -> Vec<String> { v.clone() };
    let call = |v: Vec<String>| ok_json(&v.iter().map(String::as_str).collect::<Vec<_>>());

    call(strs(&with(
        &["train-head", "--task", "cls"],
        &["--dataset", &cifar, "--size", "28", "--pooling", "cls+mean", "--epochs", "200", "--lr", "5e-2", "--out", &probe, "--json"],
    )));
    // Attack the training split, which the probe fits: clean accuracy is 100%.
    for (attack, eps, distance) in [
        ("pgd", "64/255", "mse"),
        ("apgd", "64/255", "mse"),
        ("embed", "64/255", "mse"),
        ("embed-apgd", "64/255", "mse"),
        ("embed-apgd", "64/255", "cosine"),
        ("pgd", "0", "mse"),
        ("apgd", "0", "mse"),
    ] {
        let r = call(with(
            &["attack", "--task", "cls", "--attack", attack, "--eps", eps, "--steps", "10", "--embed-distance", distance],
            &["--dataset", &cifar, "--split", "train", "--head", &probe, "--json"],
        ));
        assert_eq!(r["clean"]["head"]["accuracy"], 1.0);
        let adv = r["adversarial"]["head"]["accuracy"].as_f64().unwrap();
        assert!(r["sanity"]["max_norm_over_eps"].as_f64().unwrap() <= 1.0 + 1e-5);
        if eps == "0" {
            assert_eq!(adv, 1.0, "ε = 0 changes nothing");
        } else {
            assert!(adv <= 0.5, "{attack} at {eps}: accuracy {adv}");
        }
    }

    // Settings that make the figure meaningless run, but are warned about, in the JSON's sanity
    // report too (before: accepted without a word).
    let (ok, out, err) = common::run(
        &with(
            &["attack", "--task", "cls", "--attack", "pgd", "--eps", "8", "--steps", "0"],
            &["--dataset", &cifar, "--head", &probe, "--json"],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert!(ok, "{err}");
    assert!(err.contains("ε ≥ 1 under L∞") && err.contains("steps = 0"), "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((r["sanity"]["eps_unbounded"].as_bool(), r["sanity"]["no_steps"].as_bool()), (Some(true), Some(true)), "{r}");

    for (task, kind, attack) in [("seg", "synthetic-seg", "segpgd"), ("depth", "synthetic-depth", "depthpgd")] {
        let head = tmp.path().join(format!("{task}.safetensors")).display().to_string();
        let train_spec = format!("{kind}:32x28");
        call(with(
            &["train-head", "--task", task],
            &["--dataset", &train_spec, "--size", "28", "--epochs", "20", "--lr", "1e-2", "--out", &head, "--json"],
        ));
        let val_spec = format!("{kind}:8x28");
        let examples = tmp.path().join(format!("examples-{task}"));
        std::fs::create_dir(&examples).unwrap();
        let ex = examples.display().to_string();
        let r = call(with(
            &["attack", "--task", task, "--attack", attack, "--eps", "32/255", "--steps", "5"],
            &["--dataset", &val_spec, "--head", &head, "--json", "--save-examples", &ex, "--examples", "3"],
        ));
        // Three strips: clean | adversarial | perturbation | clean, adversarial prediction | truth.
        let mut names: Vec<String> =
            std::fs::read_dir(&examples).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        names.sort();
        assert_eq!(names, ["00000", "00001", "00002"].map(|i| format!("{i}-{attack}.png")));
        let strip = image::open(examples.join(&names[0])).unwrap();
        assert_eq!((strip.width(), strip.height()), (6 * 28 + 5 * 4, 28));
        let (clean, adv) = match task {
            "seg" => (r["clean"]["head"]["miou"].as_f64().unwrap(), r["adversarial"]["head"]["miou"].as_f64().unwrap()),
            _ => (-r["clean"]["head"]["rmse"].as_f64().unwrap(), -r["adversarial"]["head"]["rmse"].as_f64().unwrap()),
        };
        assert!(adv < clean, "{attack}: adversarial {adv} should be worse than clean {clean}");
        assert!(r["sanity"]["max_pixel"].as_f64().unwrap() <= 1.0 && r["sanity"]["min_pixel"].as_f64().unwrap() >= 0.0);
    }

    // Whole images through sliding windows: the attack's clean figures are `eval
    // --window`'s (what is attacked is what is scored), the attack hurts them, and one
    // window as large as the image is the plain attack.
    for (task, kind, attack, metric) in [("seg", "synthetic-seg", "segpgd", "miou"), ("depth", "synthetic-depth", "depthpgd", "rmse")] {
        let head = tmp.path().join(format!("{task}.safetensors")).display().to_string();
        let whole = format!("{kind}:4x56");
        let slide = |sub: &str, spec: &str, size: &str, window: Option<&str>, extra: &[&str]| {
            let mut args: Vec<&str> = vec![sub, "--task", task, "--dataset", spec, "--transforms", size, "--head", &head, "--json"];
            if let Some(w) = window {
                args.extend(["--window", w]);
            }
            args.extend(extra);
            call(with(&args, &[]))
        };
        let steps = ["--attack", attack, "--eps", "32/255", "--steps", "3"];
        let attacked = slide("attack", &whole, "resize56x56", Some("28:14"), &steps);
        let evaluated = slide("eval", &whole, "resize56x56", Some("28:14"), &[]);
        // (The same windows, batched differently: equal to f32 rounding.)
        let (a, e) = (attacked["clean"]["head"].as_object().unwrap(), evaluated["head"].as_object().unwrap());
        assert_eq!(a.keys().collect::<Vec<_>>(), e.keys().collect::<Vec<_>>());
        for (k, v) in a {
            match (v.as_f64(), e[k].as_f64()) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{task} {k}: attack's clean {x}, eval's {y}"),
                _ => assert_eq!(v, &e[k], "{task} {k}"),
            }
        }
        let (clean, adv) = (attacked["clean"]["head"][metric].as_f64().unwrap(), attacked["adversarial"]["head"][metric].as_f64().unwrap());
        assert!(if task == "seg" { adv < clean } else { adv > clean }, "{task} through windows: clean {clean}, adversarial {adv}");
        assert!(attacked["sanity"]["max_norm_over_eps"].as_f64().unwrap() <= 1.0 + 1e-5);
        assert_eq!(attacked["config"]["window"], "28:14");
        // The whole frame, centre-padded (50x60 → 56x70 for 14-px patches): attacked as scored.
        let attacked = slide("attack", &whole, "resize50x60", Some("whole"), &steps);
        let evaluated = slide("eval", &whole, "resize50x60", Some("whole"), &[]);
        let (a, e) = (attacked["clean"]["head"][metric].as_f64().unwrap(), evaluated["head"][metric].as_f64().unwrap());
        assert!((a - e).abs() <= 1e-6 * e.abs().max(1.0), "{task} whole: attack's clean {a}, eval's {e}");
        let adv = attacked["adversarial"]["head"][metric].as_f64().unwrap();
        assert!(if task == "seg" { adv < a } else { adv > a }, "{task} whole frame: clean {a}, adversarial {adv}");
        assert_eq!(attacked["config"]["window"], "whole");
        assert!(evaluated["protocol"].as_str().unwrap().contains("centre-padded"), "{evaluated}");
        let small = format!("{kind}:4x28");
        let one = slide("attack", &small, "resize28x28", Some("28:28"), &steps);
        let plain = slide("attack", &small, "resize28x28", None, &steps);
        assert_eq!(
            (&one["clean"], &one["adversarial"]),
            (&plain["clean"], &plain["adversarial"]),
            "{task}: one window is the plain attack"
        );
    }
    // Images of different sizes in one batch (VOC's 20×28 and 24×28 photos): attacked by size,
    // scored at each label's own size, with the evaluation's clean figures.
    let voc = format!("voc2012:{}", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/VOCdevkit/VOC2012").display());
    let voc_head = tmp.path().join("voc.safetensors").display().to_string();
    call(with(
        &["train-head", "--task", "seg"],
        &["--dataset", &voc, "--split", "train", "--size", "28", "--epochs", "5", "--out", &voc_head, "--json"],
    ));
    let on_voc = |sub: &str, extra: &[&str]| {
        let mut args =
            vec![sub, "--task", "seg", "--dataset", &voc, "--split", "train", "--transforms", "resize-short28", "--head", &voc_head];
        args.extend(["--sliding-window", "14:7", "--json"]); // (the flag's older name)
        args.extend(extra);
        call(with(&args, &[]))
    };
    let attacked = on_voc("attack", &["--attack", "segpgd", "--eps", "32/255", "--steps", "2", "--batch-size", "2"]);
    let evaluated = on_voc("eval", &[]);
    assert_eq!(attacked["clean"]["samples"], 2, "{attacked}");
    assert!((attacked["clean"]["head"]["miou"].as_f64().unwrap() - evaluated["head"]["miou"].as_f64().unwrap()).abs() < 1e-6);

    let seg_head = tmp.path().join("seg.safetensors").display().to_string();
    let seg_with = |window: &'static str| -> Vec<&str> {
        vec![
            "attack",
            "--task",
            "seg",
            "--attack",
            "segpgd",
            "--dataset",
            "synthetic-seg:4x28",
            "--head",
            seg_head.as_str(),
            "--window",
            window,
        ]
    };
    for (args, expected) in [
        (vec!["attack", "--task", "cls", "--attack", "pgd", "--dataset", &cifar, "--head", &probe, "--window", "28:14"], "dense heads"),
        (seg_with("0:14"), "CROP:STRIDE"),
        (seg_with("14:0"), "CROP:STRIDE"),
        (seg_with("42:14"), "a 42-pixel sliding window is larger than a 28x28 image"),
    ] {
        let full: Vec<String> = with(&args, &[]);
        fails_with(&full.iter().map(String::as_str).collect::<Vec<_>>(), &[expected]);
    }

    // `--attack task` is the head's own attack: the very figures of naming it (segpgd here).
    let seg_head = tmp.path().join("seg.safetensors").display().to_string();
    let own = |attack: &str| {
        call(with(
            &["attack", "--task", "seg", "--attack", attack, "--eps", "32/255", "--steps", "5"],
            &["--dataset", "synthetic-seg:8x28", "--head", &seg_head, "--json"],
        ))
    };
    let (named, task) = (own("segpgd"), own("task"));
    assert_eq!(named["adversarial"], task["adversarial"]);
    assert_eq!(task["attack"], "task");

    // Cross-task: one EmbedAttack perturbation per image, scored on the seg head and (with the
    // labels of the same scenes' depth dataset) on the depth head, gives each head exactly the
    // figures of attacking it alone with the same seed: the perturbation does not depend on the head.
    let [seg_head, depth_head] = ["seg", "depth"].map(|t| tmp.path().join(format!("{t}.safetensors")).display().to_string());
    let embed = |task: &str, spec: &str, head: &str, extra: &[&str]| {
        let args = [
            &[
                "attack",
                "--task",
                task,
                "--attack",
                "embed",
                "--eps",
                "32/255",
                "--steps",
                "4",
                "--seed",
                "3",
                "--dataset",
                spec,
                "--head",
                head,
                "--json",
                // One stated embedding for every task (by default each task attacks its own).
                "--embed-target",
                "both",
            ],
            extra,
        ]
        .concat();
        call(with(&args, &[]))
    };
    let also = format!("depth:{depth_head}@synthetic-depth:8x28");
    let both = embed("seg", "synthetic-seg:8x28", &seg_head, &["--also", &also]);
    let seg_alone = embed("seg", "synthetic-seg:8x28", &seg_head, &[]);
    let depth_alone = embed("depth", "synthetic-depth:8x28", &depth_head, &[]);
    assert_eq!(both["adversarial"], seg_alone["adversarial"]);
    assert_eq!(both["also"][0]["clean"], depth_alone["clean"]);
    assert_eq!(both["also"][0]["adversarial"], depth_alone["adversarial"]);
    assert_eq!(both["also"][0]["task"], "depth");
    assert!(both["also"][0]["adversarial"]["head"]["rmse"].as_f64().unwrap() > both["also"][0]["clean"]["head"]["rmse"].as_f64().unwrap());
    let also_fails = |spec: &str, also: &str, needles: &[&str]| {
        let (spec, transforms) = spec.split_once(' ').unwrap_or((spec, "resize-short28,crop28x28,pad14"));
        let v = with(
            &[
                "attack",
                "--task",
                "seg",
                "--attack",
                "embed",
                "--dataset",
                spec,
                "--head",
                &seg_head,
                "--also",
                also,
                "--transforms",
                transforms,
            ],
            &[],
        );
        fails_with(&v.iter().map(String::as_str).collect::<Vec<_>>(), needles)
    };
    also_fails(
        "synthetic-seg:8x28",
        &format!("depth:{depth_head}@synthetic-depth:9x28"),
        &["synthetic-depth:9x28", "9 samples", "same images"],
    );
    also_fails(
        "synthetic-seg:8x28",
        &format!("depth:{depth_head}@synthetic-depth:8x56"),
        &["synthetic-depth:8x56", "differs", "same images"],
    );
    also_fails("synthetic-seg:8x28", &format!("depth:{depth_head}"), &["no depth labels", "@KIND:PATH"]);
    also_fails("synthetic-seg:8x28", &format!("cls:{probe}"), &["probe.safetensors", "no cls labels"]);
    also_fails(
        "synthetic-seg:8x28 resize28x28",
        &format!("depth:{depth_head}@synthetic-depth:8x28"),
        &["depth.safetensors", "resize28x28", "same transforms"],
    );
    also_fails("synthetic-seg:8x28", "depth", &["--also", "TASK:HEAD"]);
    also_fails("synthetic-seg:8x28", &format!("size:{depth_head}"), &["unknown task 'size'"]);

    // Bad input: an unparseable budget, an attack that does not fit the head, raw pixels.
    let bad = |extra: &[&str], needles: &[&str]| {
        let v = with(&["attack", "--task", "cls"], extra);
        fails_with(&v.iter().map(String::as_str).collect::<Vec<_>>(), needles)
    };
    bad(&["--attack", "pgd", "--eps", "eight/255", "--dataset", &cifar, "--head", &probe], &["--eps", "eight/255", "8/255"]);
    bad(&["--attack", "pgd", "--step-size", "2/0", "--dataset", &cifar, "--head", &probe], &["--step-size"]);
    bad(&["--attack", "segpgd", "--dataset", &cifar, "--head", &probe], &["segpgd", "does not fit"]);
    bad(&["--attack", "apgd", "--iterate", "last", "--dataset", &cifar, "--head", &probe], &["iterate = last", "APGD"]);
    bad(&["--attack", "pgd", "--dataset", &cifar, "--head", &seg_head], &["seg.safetensors", "seg head"]);
    fails_with(&["attack", "--task", "cls", "--pixels", "--attack", "pgd", "--dataset", &cifar, "--head", &probe], &["encoder"]);
    let nowhere = tmp.path().join("no-such-folder").display().to_string();
    bad(&["--attack", "pgd", "--dataset", &cifar, "--head", &probe, "--save-examples", &nowhere], &["no-such-folder", "does not exist"]);
}

/// `--protocol study` fills what is not given with the study's settings (here at a 56-px side so
/// the tiny model stays fast, and the full 480x640 NYU frame for depth): heads with its recipes
/// and sizes, segmentation scored and attacked through windows of the head's side with the
/// study's overlap, depth on the whole frame centre-padded, attacks with a fixed 2/255 step and
/// the last iterate; a setting given on top wins; bad protocols and sizes are refused first.
#[test]
fn the_study_protocol_fills_what_is_not_given() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let out = |name: &str| tmp.path().join(name).display().to_string();
    let run = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend(["--checkpoint", enc.as_str(), "--num-heads", "4", "--protocol", "study", "--json"]);
        ok_json(&full)
    };
    let seg = out("seg.safetensors");
    let trained = run(&["train-head", "--task", "seg", "--dataset", "synthetic-seg:8x84", "--size", "56", "--epochs", "2", "--out", &seg]);
    let meta = &trained["meta"];
    assert_eq!(meta["transforms"], serde_json::json!(["resize-short56", "crop56x56", "pad14"]), "{meta}");
    assert!(meta["augment"].as_array().unwrap().iter().any(|a| a == "flips"), "the study's crop + flips: {meta}");
    assert_eq!(meta["train"]["batch_size"], 16, "the study's segmentation batch: {meta}");
    let evaluated = run(&["eval", "--task", "seg", "--dataset", "synthetic-seg:4x84", "--head", &seg]);
    let protocol = evaluated["protocol"].as_str().unwrap();
    assert!(protocol.starts_with("study protocol: sliding windows 56:37"), "{protocol}");
    let attacked =
        run(&["attack", "--task", "seg", "--attack", "segpgd", "--steps", "2", "--dataset", "synthetic-seg:4x84", "--head", &seg]);
    let cfg = &attacked["config"];
    assert_eq!((cfg["window"].as_str(), cfg["last_iterate"].as_bool()), (Some("56:37"), Some(true)), "{cfg}");
    assert!((cfg["step_size"].as_f64().unwrap() - 2.0 / 255.0).abs() < 1e-9, "{cfg}");
    assert_eq!(attacked["protocol"], "study");
    // The per-step curve: the starting point, then each step; the last is the attacked figure.
    let traced = run(&[
        "attack",
        "--task",
        "seg",
        "--attack",
        "segpgd",
        "--steps",
        "2",
        "--curve",
        "--dataset",
        "synthetic-seg:4x84",
        "--head",
        &seg,
    ]);
    let curve = traced["curve"].as_array().unwrap();
    assert_eq!(curve.len(), 3, "{traced}");
    assert_eq!(curve[2], traced["adversarial"]["head"], "the last iterate's figures");
    assert_eq!(traced["adversarial"], attacked["adversarial"], "tracing changes nothing");
    let (a, e) = (attacked["clean"]["head"]["miou"].as_f64().unwrap(), evaluated["head"]["miou"].as_f64().unwrap());
    assert!((a - e).abs() < 1e-6, "attacked as scored: {a} vs {e}");
    // Given on top of the protocol: the best point and ε/4.
    let over = run(&[
        "attack",
        "--task",
        "seg",
        "--attack",
        "segpgd",
        "--steps",
        "2",
        "--eps",
        "16/255",
        "--step-size",
        "eps/4",
        "--iterate",
        "best",
        "--window",
        "42:21",
        "--dataset",
        "synthetic-seg:4x84",
        "--head",
        &seg,
    ]);
    let cfg = &over["config"];
    assert_eq!((cfg["window"].as_str(), cfg["last_iterate"].as_bool()), (Some("42:21"), Some(false)), "{cfg}");
    assert!((cfg["step_size"].as_f64().unwrap() - 4.0 / 255.0).abs() < 1e-9, "{cfg}");

    let depth = out("depth.safetensors");
    let trained = run(&["train-head", "--task", "depth", "--dataset", "synthetic-depth:4x56", "--epochs", "1", "--out", &depth]);
    assert_eq!(trained["meta"]["transforms"], serde_json::json!(["resize480x640", "pad14"]), "{}", trained["meta"]);
    let evaluated = run(&["eval", "--task", "depth", "--dataset", "synthetic-depth:2x56", "--head", &depth]);
    assert!(evaluated["protocol"].as_str().unwrap().contains("centre-padded"), "{}", evaluated["protocol"]);
    assert_eq!(evaluated["transforms"], serde_json::json!(["resize480x640"]), "the whole frame: {evaluated}");
    let attacked =
        run(&["attack", "--task", "depth", "--attack", "depthpgd", "--steps", "1", "--dataset", "synthetic-depth:2x56", "--head", &depth]);
    assert_eq!(attacked["config"]["window"], "whole");
    let (a, e) = (attacked["clean"]["head"]["rmse"].as_f64().unwrap(), evaluated["head"]["rmse"].as_f64().unwrap());
    assert!((a - e).abs() <= 1e-6 * e, "attacked as scored: {a} vs {e}");

    for (args, expected) in [
        (vec!["eval", "--task", "seg", "--dataset", "synthetic-seg:4x84", "--head", seg.as_str(), "--protocol", "studdy"], "studdy"),
        (
            vec![
                "train-head",
                "--task",
                "seg",
                "--dataset",
                "synthetic-seg:4x84",
                "--size",
                "50",
                "--out",
                depth.as_str(),
                "--protocol",
                "study",
            ],
            "an image side of 50 px does not fit 14-px patches",
        ),
    ] {
        let mut full = args.clone();
        full.extend(["--checkpoint", enc.as_str(), "--num-heads", "4"]);
        fails_with(&full, &[expected]);
    }
}

/// Transfer attacks (`--source-checkpoint`): crafted on a surrogate encoder, scored on the
/// target's head. With the target itself as the surrogate they are the plain attack, figure for
/// figure (EmbedAttack, and PGD through the same probe as --source-head); from another encoder
/// they keep the budget and name the surrogate; a transferred task attack without the
/// surrogate's head, or EmbedAttack with one, is refused.
#[test]
fn transfer_attacks_are_crafted_on_the_surrogate() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder/dinov2_reg.pth").display().to_string();
    let cifar = format!("cifar10:{}", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/cifar-10-batches-bin").display());
    let (probe, other_probe) = (tmp.path().join("probe.safetensors"), tmp.path().join("other.safetensors"));
    let (probe, other_probe) = (probe.display().to_string(), other_probe.display().to_string());
    for (checkpoint, out) in [(&enc, &probe), (&other, &other_probe)] {
        ok_json(&[
            "train-head",
            "--task",
            "cls",
            "--checkpoint",
            checkpoint,
            "--num-heads",
            "4",
            "--dataset",
            &cifar,
            "--size",
            "28",
            "--epochs",
            "50",
            "--lr",
            "5e-2",
            "--out",
            out,
            "--no-cache",
            "--json",
        ]);
    }
    let attack = |kind: &str, extra: &[&str]| {
        let mut args = vec![
            "attack",
            "--task",
            "cls",
            "--attack",
            kind,
            "--checkpoint",
            &enc,
            "--num-heads",
            "4",
            "--dataset",
            &cifar,
            "--split",
            "train",
            "--head",
            &probe,
            "--eps",
            "32/255",
            "--steps",
            "5",
            "--json",
        ];
        args.extend(extra);
        ok_json(&args)
    };
    for (kind, source) in [("embed", vec![]), ("pgd", vec!["--source-head", probe.as_str()])] {
        let plain = attack(kind, &[]);
        let mut same = vec!["--source-checkpoint", enc.as_str(), "--source-num-heads", "4"];
        same.extend(&source);
        let through_itself = attack(kind, &same);
        assert_eq!((&through_itself["clean"], &through_itself["adversarial"]), (&plain["clean"], &plain["adversarial"]), "{kind}");
        assert!(through_itself["source"]["checkpoint"].as_str().unwrap().ends_with("dinov2_official.pth"));
    }
    let transferred = attack("pgd", &["--source-checkpoint", &other, "--source-num-heads", "4", "--source-head", &other_probe]);
    assert!(transferred["source"]["checkpoint"].as_str().unwrap().ends_with("dinov2_reg.pth"), "{transferred}");
    assert!(transferred["sanity"]["max_norm_over_eps"].as_f64().unwrap() <= 1.0 + 1e-5);
    let embed = attack("embed", &["--source-checkpoint", &other, "--source-num-heads", "4"]);
    assert!(embed["adversarial"]["head"]["accuracy"].as_f64().unwrap() <= embed["clean"]["head"]["accuracy"].as_f64().unwrap());
    let base = [
        "attack",
        "--task",
        "cls",
        "--checkpoint",
        &enc,
        "--num-heads",
        "4",
        "--dataset",
        &cifar,
        "--head",
        &probe,
        "--source-checkpoint",
        &other,
        "--source-num-heads",
        "4",
    ];
    fails_with(&[&base[..], &["--attack", "pgd"]].concat(), &["--source-head"]);
    fails_with(&[&base[..], &["--attack", "embed", "--source-head", &other_probe]].concat(), &["own embedding"]);
}
