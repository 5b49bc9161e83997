//! Transfer attacks across encoders in an experiment (`source_encoder` in an `[[attack]]` block):
//! perturbations crafted on a surrogate and scored on another encoder's heads give the very
//! figures of `robust-ssl attack --source-checkpoint` with the heads the run trained; they stay out
//! of the study's tables and fill the report's transfer matrix; the dry run counts the
//! surrogate's passes; files that cannot transfer are refused at their line before any work.

mod common;

use std::path::{Path, PathBuf};

use common::{fails_with, ok_json, tiny_encoder};
use robust_ssl::experiment::store::Store;
use serde_json::Value;

fn fixture(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p).display().to_string()
}

/// Two tiny DINOv2 encoders (plain and with registers), CIFAR-10 and synthetic scenes; white-box
/// EmbedAttack and task attacks on both, and the same crafted on `reg` and scored on `v2`.
fn experiment(dir: &Path) -> PathBuf {
    let text = format!(
        r#"name = "transfer"
[run]
size = 28
attack_batch_size = 4
examples = 0

[[encoder]]
name = "v2"
checkpoint = "{v2}"
num_heads = 4

[[encoder]]
name = "reg"
checkpoint = "{reg}"
num_heads = 4

[[task]]
name = "cifar"
task = "cls"
train = {{ dataset = "cifar10:{cifar}" }}
eval = {{ dataset = "cifar10:{cifar}", split = "train", limit = 8 }}
heads = [{{ epochs = 30, batch_size = 4, lr = 5e-2 }}]

[[task]]
name = "seg"
task = "seg"
train = {{ dataset = "synthetic-seg:12x28" }}
eval = {{ dataset = "synthetic-seg:4x28" }}
heads = [{{ epochs = 4 }}]

[[attack]]
kinds = ["embed", "task"]
eps = ["8/255"]
steps = 3

[[attack]]
kinds = ["embed", "task"]
eps = ["8/255"]
steps = 3
source_encoder = "reg"
"#,
        v2 = tiny_encoder(),
        reg = fixture("encoder/dinov2_reg.pth"),
        cifar = fixture("data/cifar-10-batches-bin")
    );
    let path = dir.join("transfer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn experiments_transfer_across_encoders() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = experiment(tmp.path());
    let run_dir = tmp.path().join("run");
    let out = ok_json(&["run", exp.to_str().unwrap(), "--out", run_dir.to_str().unwrap(), "--json"]);
    // 2 encoders × 2 tasks: clean, EmbedAttack, task attack; plus reg → v2 for both attacks.
    assert_eq!(out["summary"]["items_run"], 2 * 2 * 3 + 2 * 2, "{out}");
    let store = Store::open_existing(&run_dir.join("results.sqlite")).unwrap();
    let cells: Vec<Value> = store.cells().unwrap().iter().map(|c| serde_json::to_value(c).unwrap()).collect();
    let transfer: Vec<&Value> = cells.iter().filter(|c| c["labels"]["source_encoder"] == "reg").collect();
    assert_eq!(transfer.len(), 4, "EmbedAttack and the task attack on each task, crafted on reg");
    assert!(transfer.iter().all(|c| c["labels"]["encoder"] == "v2"), "scored on v2 only: the surrogate is no target of itself");
    // Robust accuracy counts a sample right on the clean input and under the attack: never above clean.
    for c in cells.iter().filter(|c| c["labels"]["task_kind"] == "cls" && c["labels"]["condition"] == "attack") {
        let acc = |k: &str| c["result"][k]["head"]["accuracy"].as_f64().unwrap();
        assert!(acc("adversarial") <= acc("clean"), "{}", c["labels"]);
    }
    // Crafted on reg, a transferred perturbation is reg's white-box one: the same objective.
    for t in &transfer {
        let white_box = cells
            .iter()
            .find(|c| {
                c["labels"]["encoder"] == "reg"
                    && c["labels"]["task"] == t["labels"]["task"]
                    && c["labels"]["attack"] == t["labels"]["attack"]
                    && c["labels"]["condition"] == "attack"
            })
            .unwrap();
        assert_eq!(t["result"]["mean_objective"], white_box["result"]["mean_objective"], "{}", t["labels"]);
        let v2_clean = cells
            .iter()
            .find(|c| c["labels"]["encoder"] == "v2" && c["labels"]["task"] == t["labels"]["task"] && c["labels"]["condition"] == "clean")
            .unwrap();
        assert_eq!(t["result"]["clean"]["head"], v2_clean["result"]["clean"]["head"], "scored on v2's head");
    }

    // The very figures of the attack command with the run's heads.
    let head = |encoder: &str, task: &str| -> String {
        let (key, _) = store.heads().unwrap().into_iter().find(|(_, r)| r.encoder == encoder && r.task == task).unwrap();
        run_dir.join("heads").join(format!("{key}.safetensors")).display().to_string()
    };
    let cifar = format!("cifar10:{}", fixture("data/cifar-10-batches-bin"));
    for (kind, attack) in [("embed", "embed"), ("pgd", "pgd")] {
        let cell = transfer.iter().find(|c| c["labels"]["task"] == "cifar" && c["labels"]["attack"] == attack).unwrap();
        let mut args = vec![
            "attack",
            "--task",
            "cls",
            "--attack",
            kind,
            "--checkpoint",
            &tiny_encoder(),
            "--num-heads",
            "4",
            "--size",
            "28",
            "--dataset",
            &cifar,
            "--split",
            "train",
            "--limit",
            "8",
            "--head",
            &head("v2", "cifar"),
            "--eps",
            "8/255",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--source-num-heads",
            "4",
            "--json",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(["--source-checkpoint".into(), fixture("encoder/dinov2_reg.pth")]);
        if kind != "embed" {
            args.extend(["--source-head".into(), head("reg", "cifar")]);
        }
        let report = ok_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
        for key in ["clean", "adversarial"] {
            assert_eq!(cell["result"][key]["head"], report[key]["head"], "{kind} {key}");
        }
    }

    // The study's tables keep to white-box cells; the transfer matrix has them.
    let results = robust_ssl::report::results::Results::load(&store).unwrap();
    for setting in results.settings() {
        for attack in results.attacks(&setting) {
            for (enc, head, _) in results.rows() {
                let own = results.attacked(&enc, &head, &setting, attack, 8.0 / 255.0);
                assert!(own.len() <= 1 && own.iter().all(|e| !e.transferred()), "{enc} {head} {attack}");
            }
        }
    }
    let matrices = robust_ssl::report::transfer::matrices(&results);
    assert_eq!(matrices.len(), 4, "cifar and seg × EmbedAttack and the task attack");
    let pgd = matrices.iter().find(|t| t.title.contains("cifar under PGD")).unwrap();
    assert_eq!(pgd.header, ["crafted on ↓ · scored on →", "v2", "reg"]);
    assert_eq!(pgd.rows[0][0], "clean");
    let reg_row = &pgd.rows[1];
    assert_eq!(reg_row[0], "reg");
    let cell = transfer.iter().find(|c| c["labels"]["task"] == "cifar" && c["labels"]["attack"] == "pgd").unwrap();
    let accuracy = cell["result"]["adversarial"]["head"]["accuracy"].as_f64().unwrap();
    assert_eq!(reg_row[1], format!("{:.2} %", accuracy * 100.0), "reg → v2");
    assert!(reg_row[2].ends_with("(white-box)"), "the diagonal: reg on itself: {reg_row:?}");
    let report = ok_json(&["report", run_dir.to_str().unwrap(), "--json"]);
    let md = std::fs::read_to_string(report["markdown"].as_str().unwrap()).unwrap();
    assert!(md.contains("Transfer across encoders: seg under SegPGD"), "{md}");

    // The CSV names the surrogate; the dry run counts its passes.
    let csv = tmp.path().join("cells.csv");
    let (ok, _, err) = common::run(&["export", run_dir.to_str().unwrap(), "--format", "csv", "--out", csv.to_str().unwrap()]);
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",source_encoder") && csv.lines().any(|l| l.ends_with(",reg")));
    let dry = ok_json(&["run", exp.to_str().unwrap(), "--dry-run", "--no-calibrate", "--json"]);
    let backward = |name: &str| -> u64 {
        dry["cost"]["rows"].as_array().unwrap().iter().filter(|r| r["encoder"] == name).map(|r| r["backward"].as_u64().unwrap()).sum()
    };
    // Both encoders attack themselves (4 attacks each); reg also crafts the 4 transferred ones.
    assert_eq!(backward("reg"), 2 * backward("v2"), "{dry}");
    // A third encoder: scored on too by default, not when the block names its targets.
    let third = std::fs::read_to_string(&exp).unwrap().replace(
        "[[task]]\nname = \"cifar\"",
        &format!("[[encoder]]\nname = \"hf\"\ncheckpoint = \"{}\"\n\n[[task]]\nname = \"cifar\"", fixture("encoder/hf_dinov2")),
    );
    let cells = |text: String| {
        std::fs::write(&exp, text).unwrap();
        ok_json(&["run", exp.to_str().unwrap(), "--dry-run", "--no-calibrate", "--json"])["cells"].as_u64().unwrap()
    };
    // Per encoder: 2 clean, 2 × 2 attacked cells; the transfers: 4 cells per target.
    assert_eq!(cells(third.clone()), 3 * 6 + 2 * 4);
    assert_eq!(cells(third.replace("source_encoder = \"reg\"", "source_encoder = \"reg\"\ntarget_encoder = \"v2\"")), 3 * 6 + 4);
}

#[test]
fn transfers_that_cannot_be_made_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = experiment(tmp.path());
    let good = std::fs::read_to_string(&exp).unwrap();
    let try_with = |text: String, needles: &[&str]| {
        let p = tmp.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        fails_with(&["run", p.to_str().unwrap(), "--dry-run", "--no-calibrate"], needles);
    };
    try_with(good.replace("source_encoder = \"reg\"", "source_encoder = \"regs\""), &["bad.toml:", "'regs' is no [[encoder]]", "v2, reg"]);
    try_with(good.replace("source_encoder = \"reg\"", "source_encoder = []"), &["names no encoder"]);
    try_with(good.replace("source_encoder = \"reg\"", "target_encoder = \"v2\""), &["bad.toml:", "state their source_encoder"]);
    try_with(good.replace("source_encoder = \"reg\"", "source_encoder = \"reg\"\ntarget_encoder = [\"reg\"]"), &["names only the source"]);
    // One encoder: nothing to transfer to.
    let one = good.replace(&format!("[[encoder]]\nname = \"v2\"\ncheckpoint = \"{}\"\nnum_heads = 4\n", tiny_encoder()), "");
    try_with(one, &["needs another encoder"]);
    // A DINO with 8-px patches pads the 28-px crop to 32: not the pixels the other encoder sees.
    let p8 = good
        .replace(&fixture("encoder/dinov2_reg.pth"), &fixture("encoder/dino_v1_p8.pth"))
        .replace("num_heads = 4\n\n[[task]]", "\n[[task]]");
    try_with(p8, &["task 'cifar'", "from encoder 'reg' to 'v2'", "same pixels", "pad8", "pad14"]);
}
