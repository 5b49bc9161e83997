//! The study's protocol in experiment files: `protocol = "study"` fills sizes, windows, recipes
//! and attack settings, windowed cells give the very figures of the commands, per-step curves are
//! stored and drawn, and `examples/study.toml` (the paper's whole table) plans and is costed on
//! fixture stand-ins of every dataset layout.

mod common;

use std::path::Path;

use common::{fails_with, ok_json, run, tiny_encoder};
use robust_ssl::experiment::store::Store;
use serde_json::Value;

fn fixture(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p).display().to_string()
}

/// `protocol = "study"` in `[run]`: the study's transforms and windows per encoder and task (at a
/// 28-px side here), its attack settings where the file is silent, and whole images through
/// windows in the clean figures and inside the attacks, with the very figures of `eval` and
/// `attack --protocol study` on the run's heads; a window on a classification task, a side that
/// does not fit the patch and an unknown protocol are refused at planning.
#[test]
fn the_study_protocol_in_an_experiment_file() {
    use robust_ssl::experiment::config::Loaded;
    use robust_ssl::experiment::plan::{Plan, Work};
    use robust_ssl::heads::sliding::Window;
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        r#"name = "study"
[run]
protocol = "study"
size = 28
attack_batch_size = 3

[[encoder]]
name = "tiny"
checkpoint = "{enc}"
num_heads = 4

[[task]]
name = "cifar"
task = "cls"
train = {{ dataset = "cifar10:{cifar}" }}
eval = {{ dataset = "cifar10:{cifar}", split = "test", limit = 4 }}
heads = [{{ epochs = 1 }}]

[[task]]
name = "seg"
task = "seg"
train = {{ dataset = "synthetic-seg:8x56" }}
eval = {{ dataset = "synthetic-seg:5x56" }}
heads = [{{ epochs = 2 }}]

[[task]]
name = "depth"
task = "depth"
train = {{ dataset = "synthetic-depth:8x56" }}
eval = {{ dataset = "synthetic-depth:5x56" }}
transforms = "resize40x50,pad14"
heads = [{{ epochs = 2 }}]

[[attack]]
kinds = ["embed", "task"]
eps = ["8/255"]
steps = 2
curve = true
"#,
        enc = tiny_encoder(),
        cifar = fixture("data/cifar-10-batches-bin")
    );
    let path = tmp.path().join("study.toml");
    std::fs::write(&path, &text).unwrap();
    let plan = Plan::new(&Loaded::parse(&path, text.clone()).unwrap()).unwrap();
    let names = |t: usize| plan.transforms(0, t).iter().map(|t| t.describe()).collect::<Vec<_>>().join(",");
    assert_eq!(names(0), "resize-short28,crop28x28,pad14");
    assert_eq!(
        (plan.window(0, 0), plan.window(0, 1), plan.window(0, 2)),
        (None, Some(Window::Slide { crop: 28, stride: 18 }), Some(Window::Whole))
    );
    for item in &plan.items {
        if let Work::Attack { params, .. } = &item.work {
            assert!((params.step_size - 2.0 / 255.0).abs() < 1e-12 && params.step_text == "2/255", "{params:?}");
            assert_eq!(params.iterate, robust_ssl::attacks::spec::Iterate::Last);
            assert_eq!(params.segpgd, robust_ssl::attacks::segpgd::SegPgdForm::Study);
            assert!(params.ce_scaling);
        }
    }
    assert!(plan.heads.iter().all(|h| !h.recipe.augment.is_none()), "the study's head recipes augment");

    let out = tmp.path().join("run");
    let summary = ok_json(&["run", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"]);
    assert_eq!(summary["summary"]["items_run"], plan.items.len(), "{summary}");
    let store = Store::open_existing(&out.join("results.sqlite")).unwrap();
    let cells: Vec<Value> = store.cells().unwrap().into_iter().map(|c| serde_json::to_value(c).unwrap()).collect();
    let cell = |task: &str, attack: Option<&str>| -> &Value {
        cells
            .iter()
            .find(|c| c["labels"]["task"] == task && c["labels"]["attack"].as_str() == attack)
            .unwrap_or_else(|| panic!("no {task} {attack:?} cell"))
    };
    // The run's heads, scored by the commands under the same protocol: the same figures.
    let head_of = |task: &str| -> String {
        std::fs::read_dir(out.join("heads"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .find(|p| serde_json::from_str::<Value>(&std::fs::read_to_string(p).unwrap()).unwrap()["task"] == task)
            .map(|p| p.with_extension("safetensors").display().to_string())
            .unwrap()
    };
    let enc = tiny_encoder();
    for (task, dataset, metric, attack) in
        [("seg", "synthetic-seg:5x56", "miou", "segpgd"), ("depth", "synthetic-depth:5x56", "rmse", "depthpgd")]
    {
        let head = head_of(task);
        let common = [
            "--task",
            task,
            "--checkpoint",
            enc.as_str(),
            "--num-heads",
            "4",
            "--protocol",
            "study",
            "--dataset",
            dataset,
            "--head",
            head.as_str(),
            "--json",
        ];
        let evaluated = ok_json(&[&["eval"][..], &common[..]].concat());
        let clean = cell(task, None)["result"]["clean"]["head"][metric].as_f64().unwrap();
        let e = evaluated["head"][metric].as_f64().unwrap();
        assert!((clean - e).abs() <= 1e-6 * e.abs().max(1.0), "{task}: the run's clean {clean}, eval's {e}");
        let attacked = ok_json(&[&["attack", "--attack", attack, "--steps", "2", "--batch-size", "3"][..], &common[..]].concat());
        let run_cell = &cell(task, Some(attack))["result"];
        // The per-step curve: the starting point and two steps; the last iterate is the attacked one.
        let curve = run_cell["curve"].as_array().unwrap();
        assert_eq!((curve.len(), &curve[2]), (3, &run_cell["adversarial"]["head"]), "{task}: {run_cell}");
        for side in ["clean", "adversarial"] {
            let (r, c) = (run_cell[side]["head"][metric].as_f64().unwrap(), attacked[side]["head"][metric].as_f64().unwrap());
            assert!((r - c).abs() <= 1e-5 * c.abs().max(1.0), "{task} {side}: the run's {r}, the attack command's {c}");
        }
    }

    let report = tmp.path().join("report");
    ok_json(&["report", out.to_str().unwrap(), "--out", report.to_str().unwrap(), "--json"]);
    let curves: Vec<String> =
        std::fs::read_dir(report.join("curves")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    assert!(curves.iter().any(|c| c.starts_with("seg-") && c.ends_with("-per-step.svg")), "{curves:?}");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("mIoU ↑ after each step") && md.contains("| protocol | study |"), "{md}");
    for (name, edit, expected) in [
        (
            "window.toml",
            text.replace("heads = [{ epochs = 1 }]", "heads = [{ epochs = 1 }]\nwindow = \"28:14\""),
            "a window is for the dense tasks",
        ),
        ("side.toml", text.replace("size = 28", "size = 30"), "an image side of 30 px does not fit 14-px patches"),
        ("protocol.toml", text.replace("protocol = \"study\"", "protocol = \"studdy\""), "studdy"),
        ("stride.toml", text.replace("transforms = \"resize40x50,pad14\"", "window = \"14:0\""), "CROP:STRIDE"),
    ] {
        let p = tmp.path().join(name);
        std::fs::write(&p, edit).unwrap();
        fails_with(&["run", p.to_str().unwrap(), "--dry-run"], &[name, expected]);
    }
}

/// `examples/study.toml`, the paper's whole table, planned and costed on fixture stand-ins of
/// every dataset layout (CIFAR-10/100 and STL-10 binaries, ADE20k, Cityscapes, VOC 2012, NYU's
/// labeled .mat) and of its checkpoints (tiny Hugging Face DINOs and DINOv2s): every encoder gets the study's input sizes
/// (DINOv2 518 for classification and the segmentation windows, the 480x640 frame padded to
/// 490x644 for depth; DINO 224 and 480x640), every pass is counted, and the estimate is timed.
#[test]
fn the_study_file_plans_and_costs_on_stand_ins() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/study.toml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Twelve encoders need twelve files (a run keys its work by the weights' hash): copies of the
    // tiny Hugging Face DINO and DINOv2 whose safetensors headers differ by a metadata entry.
    let mut copies = 0;
    let mut copy_of = |model: &str| -> String {
        copies += 1;
        let (src, dst) = (Path::new(&fixture("encoder")).join(model), tmp.path().join(format!("{model}-{copies}")));
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
        let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        header["__metadata__"]["copy"] = copies.to_string().into();
        let mut json = serde_json::to_vec(&header).unwrap();
        json.resize(json.len().div_ceil(8) * 8, b' ');
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out.extend(&bytes[8 + n..]);
        std::fs::write(dst.join("model.safetensors"), out).unwrap();
        dst.join("model.safetensors").display().to_string()
    };
    let mut text = text.clone();
    for (from, to) in [
        ("data/cifar-10-batches-bin", fixture("data/cifar-10-batches-bin")),
        ("data/cifar-100-binary", fixture("data/cifar-100-binary")),
        ("data/stl10_binary", fixture("data/stl10_binary")),
        ("data/ADEChallengeData2016", fixture("data/ADEChallengeData2016")),
        ("data/cityscapes", fixture("data/cityscapes")),
        ("data/VOCdevkit/VOC2012", fixture("data/VOCdevkit/VOC2012")),
        ("data/nyu/nyu_depth_v2_labeled.mat", fixture("data/nyu_mat/nyu_depth_v2_labeled.mat")),
    ] {
        assert!(text.contains(from), "examples/study.toml names {from}");
        text = text.replace(from, &to);
    }
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("checkpoint = \"weights/") {
            Some(rest) if rest.contains("dinov2_") => format!("checkpoint = \"{}\"", copy_of("hf_dinov2")),
            Some(_) => format!("checkpoint = \"{}\"", copy_of("hf_vit_dino")),
            None => l.to_string(),
        })
        .collect();
    let path = tmp.path().join("study.toml");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = ok_json(&["run", path.to_str().unwrap(), "--dry-run", "--json"]);
    let cost = &out["cost"];
    let rows = cost["rows"].as_array().unwrap();
    let encoders: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["encoder"].as_str().unwrap()).collect();
    assert_eq!(encoders.len(), 12, "6 backbones and their DeACL counterparts: {encoders:?}");
    let inputs = |name: &str| -> Vec<String> {
        rows.iter().filter(|r| r["encoder"] == name).map(|r| format!("{}x{}", r["input"][0], r["input"][1])).collect()
    };
    for name in ["DINOv2 ViT-S/14", "DINOv2 ViT-g/14 + DeACL"] {
        let i = inputs(name);
        assert!(i.contains(&"518x518".to_string()) && i.contains(&"490x644".to_string()), "{name}: {i:?}");
    }
    for name in ["DINO ViT-B/16", "DINO ViT-S/16 + DeACL"] {
        let i = inputs(name);
        assert!(i.contains(&"224x224".to_string()) && i.contains(&"480x640".to_string()), "{name}: {i:?}");
    }
    // 7 tasks × (a clean cell, EmbedAttack and the task attack) per encoder.
    assert_eq!(out["cells"], 12 * 7 * 3, "{}", out["cells"]);
    for r in rows {
        assert!(r["forward"].as_u64().unwrap() > 0 && r["hours"].as_f64().unwrap() > 0.0, "{r}");
    }
    // Every attack takes 20 steps (the study's) with one backward each, and scores twice.
    let (fwd, bwd): (u64, u64) =
        rows.iter().map(|r| (r["forward"].as_u64().unwrap(), r["backward"].as_u64().unwrap())).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(bwd > 0 && fwd > bwd + bwd / 10, "forward {fwd}, backward {bwd}");
    assert_eq!(cost["calibrations"].as_array().unwrap().len(), 12);
    assert!(cost["hours"].as_f64().unwrap() > 0.0);
    // The text form: the table and the estimate.
    let (ok, text_out, err) = run(&["run", path.to_str().unwrap(), "--dry-run", "--no-calibrate"]);
    assert!(ok, "{err}");
    assert!(text_out.contains("cost (the whole plan") && text_out.contains("490x644") && text_out.contains("not timed"), "{text_out}");
    // Its commented transfer block, uncommented: DINOv2 ViT-S/14's perturbations scored on the
    // 7 other DINOv2 encoders, on every task, EmbedAttack and the task attack.
    let full = std::fs::read_to_string(&path).unwrap();
    let start = full.find("# [[attack]]").expect("study.toml has a commented transfer block");
    let block: Vec<&str> = full[start..].lines().map(|l| l.strip_prefix("# ").unwrap_or(l)).collect();
    std::fs::write(&path, format!("{}{}", &full[..start], block.join("\n"))).unwrap();
    let out = ok_json(&["run", path.to_str().unwrap(), "--dry-run", "--no-calibrate", "--json"]);
    assert_eq!(out["cells"], 12 * 7 * 3 + 7 * 7 * 2, "{}", out["cells"]);
}
