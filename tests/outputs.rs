//! What a run and an attack give out for papers and dashboards, as a user runs them: `--set`
//! overrides planned as the edited file would be; the JSON-lines event log, the LaTeX tables
//! (compiled with pdflatex) and the per-sample export of a tiny experiment; `attack
//! --save-adversarial` in its three formats with per-sample outcomes; plain progress lines when
//! stderr is not a terminal.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fails_with, ok_json, run, tiny_encoder, tiny_experiment as experiment};
use robust_ssl::experiment::store::Store;
use serde_json::Value;

/// The tiny experiment run once; its event log, LaTeX report and per-sample export.
#[test]
fn a_run_gives_its_event_log_latex_tables_and_per_sample_outcomes() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = experiment(tmp.path());
    let dir = tmp.path().join("run");
    ok_json(&["run", exp.to_str().unwrap(), "--out", dir.to_str().unwrap(), "--json"]);
    check_event_log(&dir.join("events.jsonl"), &dir.join("results.sqlite"));
    check_latex(&dir);
    check_per_sample_export(&dir);
}

/// The run's event log: one JSON object per line, schema 1, a start and an end, a head event per
/// head, a batch event per attack batch, and a cell event per stored cell whose figures are the
/// store's.
fn check_event_log(log: &Path, store: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(events.iter().all(|e| e["schema"] == 1 && e["run"] == "tiny" && e["shard"] == "0/1" && e["time"].as_f64().unwrap() > 1.6e9));
    let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!((kinds[0], *kinds.last().unwrap()), ("start", "end"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|&&k| k == "head").count(), 3);
    assert!(kinds.contains(&"batch"));
    let cells = Store::open_existing(store).unwrap().cells().unwrap();
    let logged: Vec<&Value> = events.iter().filter(|e| e["event"] == "cell").collect();
    assert_eq!(logged.len(), cells.len(), "a cell event per cell");
    for cell in &cells {
        let e = logged.iter().find(|e| e["key"] == cell.key.as_str()).unwrap_or_else(|| panic!("no event for cell {}", cell.key));
        assert_eq!(e["labels"], serde_json::to_value(&cell.labels).unwrap());
        assert_eq!(e["samples"], cell.result.samples);
        for (name, v) in cell.result.clean.head.scalars() {
            assert_eq!(e["clean"][name].as_f64(), Some(v), "cell {}: clean {name}", cell.key);
        }
        if let Some(adv) = &cell.result.adversarial {
            for (name, v) in adv.head.scalars() {
                assert_eq!(e["adversarial"][name].as_f64(), Some(v), "cell {}: adversarial {name}", cell.key);
            }
        }
    }
    let batch = events.iter().find(|e| e["event"] == "batch").unwrap();
    assert!(batch["cells"][0]["adversarial"].is_object() && batch["seconds"].as_f64().unwrap() > 0.0, "{batch}");
}

/// `report --format latex`: booktabs fragments of the study's table and the ε sweep, and a
/// document that pdflatex (Debian's TeX Live, which scripts/fetch-assets.sh installs) compiles.
fn check_latex(run_dir: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let files = ok_json(&["report", run_dir.to_str().unwrap(), "--format", "LaTeX", "--out", tmp.path().to_str().unwrap(), "--json"]);
    let tables: Vec<String> = files["tables"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    assert!(tables.iter().any(|t| t.ends_with("study-1.tex")) && tables.iter().any(|t| t.ends_with("eps-sweep-1.tex")), "{files}");
    let study = std::fs::read_to_string(tmp.path().join("latex/study-1.tex")).unwrap();
    assert!(study.contains("\\toprule") && study.contains("\\midrule") && study.contains("\\bottomrule"), "{study}");
    assert!(study.contains("tiny & seg & mIoU $\\uparrow$ &"), "{study}");
    let sweep = std::fs::read_to_string(tmp.path().join("latex/eps-sweep-1.tex")).unwrap();
    assert!(sweep.contains("$\\varepsilon$ 2/255 & $\\varepsilon$ 8/255"), "{sweep}");
    let pdflatex = Command::new("pdflatex").arg("--version").output();
    assert!(
        pdflatex.is_ok_and(|o| o.status.success()),
        "no pdflatex: scripts/fetch-assets.sh installs Debian's texlive-latex-base and texlive-latex-recommended"
    );
    let out = Command::new("pdflatex")
        .args(["-interaction=nonstopmode", "-halt-on-error", "report.tex"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pdflatex failed: {}", &log[log.len().saturating_sub(3000)..]);
    assert!(tmp.path().join("report.pdf").metadata().unwrap().len() > 1000);
}

/// Per image: the clean and robust outcomes of each attack cell sum to its accuracies.
fn check_per_sample_export(run_dir: &Path) {
    let (ok, json, err) = run(&["export", run_dir.to_str().unwrap(), "--format", "json"]);
    assert!(ok, "{err}");
    let cells: Vec<Value> = serde_json::from_str(&json).unwrap();
    let (ok, per, err) = run(&["export", run_dir.to_str().unwrap(), "--format", "per-sample"]);
    assert!(ok, "{err}");
    let mut reader = csv::Reader::from_reader(per.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let header = reader.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (key, predictor, metric, value) = (col("key"), col("predictor"), col("metric"), col("value"));
    let cls: Vec<&Value> = cells.iter().filter(|c| c["labels"]["task"] == "cifar" && c["result"]["adversarial"].is_object()).collect();
    assert_eq!(cls.len(), 8);
    for c in cls {
        let samples = c["result"]["samples"].as_u64().unwrap() as f64;
        for (which, figure) in [("clean", &c["result"]["clean"]), ("adversarial", &c["result"]["adversarial"])] {
            let mine: Vec<&csv::StringRecord> = rows
                .iter()
                .filter(|r| r[key] == *c["key"].as_str().unwrap() && &r[predictor] == which && &r[metric] == "correct")
                .collect();
            assert_eq!(mine.len() as f64, samples, "{which} rows of cell {}", c["key"]);
            let right = mine.iter().filter(|r| &r[value] == "1").count() as f64;
            assert_eq!(right / samples, figure["head"]["accuracy"].as_f64().unwrap(), "{which} of cell {}", c["key"]);
        }
    }
    assert!(rows.iter().any(|r| &r[metric] == "miou") && rows.iter().any(|r| &r[metric] == "rmse"), "dense figures per image");
}

/// `--set` edits the file before it is checked: the plan equals that of the file edited by hand
/// (same work-item keys), names match in any case in the file as on the command line, and a bad
/// path, value or key is refused naming the override, before the run folder is made.
#[test]
fn set_overrides_plan_as_the_edited_file_would() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = experiment(tmp.path());
    let good = std::fs::read_to_string(&exp).unwrap();
    let keys = |path: &Path, sets: &[&str]| -> Vec<String> {
        let mut args = vec!["run", path.to_str().unwrap(), "--dry-run", "--no-calibrate", "--json"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = ok_json(&args);
        out["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_string()).collect()
    };
    let by_hand = tmp.path().join("by_hand.toml");
    std::fs::write(
        &by_hand,
        good.replace("size = 28", "size = 56")
            .replace("eps = [\"2/255\", \"8/255\"]", "eps = [\"4/255\"]")
            .replace("kinds = [\"embed\", \"task\"]", "kinds = [\"EMBED\", \"Task\"]\nnorm = \"L2\""),
    )
    .unwrap();
    let set = keys(&exp, &["run.size=56", "attack.0.eps=[\"4/255\"]", "attack.0.kinds=[\"Embed\", \"TASK\"]", "attack.0.norm=L2"]);
    assert_eq!(set, keys(&by_hand, &[]), "--set and the same edit by hand plan the same work");
    assert_ne!(set, keys(&exp, &[]), "the overrides change the plan");

    let out = tmp.path().join("never");
    let refused = |sets: &[&str], needles: &[&str]| {
        let mut args = vec!["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap()];
        for s in sets {
            args.extend(["--set", s]);
        }
        fails_with(&args, needles);
        assert!(!out.exists(), "{sets:?}: the run folder was made before the error");
    };
    refused(&["run.sise=5"], &["tiny.toml", "sise", "--set"]);
    refused(&["attack.3.eps=1"], &["--set attack.3.eps=1", "'attack' has 1 entries"]);
    refused(&["attack.0.norm=l3"], &["'l3' is not one of linf, l2", "--set"]);
    refused(&["run.size=[1,"], &["not a TOML value"]);
}

/// `--save-adversarial` writes every attacked image, its perturbation, label and index, as one
/// safetensors file, an npz archive or npy files, the same arrays in each; the JSON gives each
/// image's outcome before and after, which sum to the reported accuracies; and with stderr not a
/// terminal, progress comes as plain lines.
#[test]
fn adversarial_images_and_per_sample_outcomes_come_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (enc, cache) = (tiny_encoder(), tmp.path().display().to_string());
    let cifar = format!("cifar10:{}", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/cifar-10-batches-bin").display());
    let probe = tmp.path().join("probe.safetensors").display().to_string();
    let common = ["--checkpoint", enc.as_str(), "--num-heads", "4", "--cache-dir", cache.as_str(), "--dataset", cifar.as_str()];
    let train: Vec<&str> = ["train-head", "--task", "cls", "--size", "28", "--epochs", "50", "--lr", "5e-2", "--out", &probe, "--json"]
        .into_iter()
        .chain(common)
        .collect();
    ok_json(&train);
    let attack = |out: &Path| -> (serde_json::Value, String) {
        let args: Vec<&str> = ["attack", "--task", "cls", "--attack", "pgd", "--eps", "8/255", "--steps", "3", "--head", &probe]
            .into_iter()
            .chain(common)
            .chain(["--batch-size", "2", "--json", "--save-adversarial", out.to_str().unwrap()])
            .collect();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_robust-ssl"))
            .args(&args)
            .env("ROBUST_SSL_PROGRESS_SECONDS", "0")
            .env_remove("ROBUST_SSL_PROGRESS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        (serde_json::from_slice(&o.stdout).unwrap(), err)
    };
    let st = tmp.path().join("adv.safetensors");
    let (report, stderr) = attack(&st);
    // Plain progress lines: one per batch (period 0) and a last one.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("progress: pgd attack on cifar10")).collect();
    assert!(lines.len() >= 3 && lines.last().unwrap().contains("(100%)") && lines.last().unwrap().contains("0:00:0"), "{stderr}");
    assert!(!stderr.contains('\r') && !stderr.contains('\u{1b}'), "no terminal control codes: {stderr:?}");

    let arrays = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    let n = report["clean"]["samples"].as_u64().unwrap() as usize;
    assert_eq!(arrays["images"].dims(), [n, 3, 28, 28]);
    assert_eq!(arrays["delta"].dims(), [n, 3, 28, 28]);
    let (images, delta) = (
        arrays["images"].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        arrays["delta"].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert!(images.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(delta.iter().all(|d| d.abs() <= 8.0 / 255.0 + 1e-6) && delta.iter().any(|d| *d != 0.0));
    assert!(images.iter().zip(&delta).all(|(x, d)| (-1e-6..=1.0 + 1e-6).contains(&(x - d))), "images − delta are the clean images");
    let labels = arrays["labels"].to_vec1::<i64>().unwrap();
    let indices = arrays["indices"].to_vec1::<i64>().unwrap();
    assert_eq!(indices, (0..n as i64).collect::<Vec<_>>());
    assert!(labels.iter().all(|&l| (0..10).contains(&l)));

    // Per-sample outcomes sum to the accuracies (robust accuracy: right before and after).
    let per = report["per_sample"].as_array().unwrap();
    assert_eq!(per.len(), n);
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| per.iter().filter(|p| f(p)).count() as f64 / n as f64;
    assert_eq!(count(&|p| p["clean"]["correct"] == true), report["clean"]["head"]["accuracy"].as_f64().unwrap());
    assert_eq!(
        count(&|p| p["clean"]["correct"] == true && p["adversarial"]["correct"] == true),
        report["adversarial"]["head"]["accuracy"].as_f64().unwrap()
    );
    assert_eq!(report["saved"][0], st.to_str().unwrap());

    // The same arrays as .npz and as .npy files (numpy's format 1.0, read back with npyz).
    let npy = |bytes: Vec<u8>| -> (Vec<u64>, Vec<u8>) { (npyz::NpyFile::new(bytes.as_slice()).unwrap().shape().to_vec(), bytes) };
    let raw = |name: &str| -> Vec<u8> {
        let t = &arrays[name];
        match t.dtype() {
            candle_core::DType::F32 => t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => t.flatten_all().unwrap().to_vec1::<i64>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    };
    let same = |name: &str, bytes: Vec<u8>| {
        let (shape, bytes) = npy(bytes);
        assert_eq!(shape, arrays[name].dims().iter().map(|&d| d as u64).collect::<Vec<_>>(), "{name}");
        assert!(bytes.ends_with(&raw(name)), "{name}: the same values");
        assert_eq!((bytes.len() - raw(name).len()) % 64, 0, "{name}: the header is padded to 64 bytes");
    };
    let z = tmp.path().join("adv.npz");
    attack(&z);
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&z).unwrap()).unwrap();
    for name in ["images", "delta", "labels", "indices"] {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(&format!("{name}.npy")).unwrap(), &mut bytes).unwrap();
        same(name, bytes);
    }
    let y = tmp.path().join("adv.npy");
    attack(&y);
    same("images", std::fs::read(&y).unwrap());
    for name in ["delta", "labels", "indices"] {
        same(name, std::fs::read(tmp.path().join(format!("adv_{name}.npy"))).unwrap());
    }
    let leftovers: Vec<_> =
        std::fs::read_dir(tmp.path()).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().to_string_lossy().ends_with(".part")).collect();
    assert!(leftovers.is_empty(), "part files left: {leftovers:?}");
    fails_with(
        &[
            "attack",
            "--task",
            "cls",
            "--attack",
            "pgd",
            "--head",
            &probe,
            "--checkpoint",
            &enc,
            "--num-heads",
            "4",
            "--dataset",
            &cifar,
            "--save-adversarial",
            "x.png",
        ],
        &["x.png", ".safetensors, .npz or .npy"],
    );
}
