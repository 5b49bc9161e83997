//! DeACL against PyTorch (loss and every weight gradient, f64), and `finetune` as a user runs it:
//! killed with SIGKILL and resumed, it ends with the very weights of an uninterrupted run; bad
//! output folders and mismatched runs fail cleanly with nothing overwritten.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use common::{fails_with, ok_json, tiny_encoder};
use robust_ssl::attacks::embed::EmbedTarget;
use robust_ssl::defense::deacl::{deacl_loss, student_pair};
use robust_ssl::defense::student::Student;
use robust_ssl::encoder::{Encoder, LoadOptions};

fn fixture(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p)
}

fn load_f64(path: &Path) -> Encoder {
    let opts = LoadOptions { heads: Some(4), ..Default::default() };
    Encoder::load(path, &opts).unwrap().to(&Device::Cpu, DType::F64).unwrap()
}

#[test]
fn deacl_loss_and_weight_gradients_match_pytorch() {
    let want: HashMap<String, Tensor> = candle_core::safetensors::load(fixture("defense/deacl.safetensors"), &Device::Cpu).unwrap();
    let teacher = load_f64(&fixture("encoder/dinov2_official.pth"));
    let student = Student::new(&load_f64(&fixture("defense/deacl_student.safetensors"))).unwrap();
    let t = teacher.forward(&want["x"]).unwrap();
    let (s, a) = student_pair(&student, &want["x"], &want["x_adv"]).unwrap();
    let (loss, [fidelity, robustness]) = deacl_loss(&s, &t, &a, 2.0, EmbedTarget::Cls).unwrap();
    let scalar = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs().max(1e-12);
    assert!(rel(scalar(&loss), scalar(&want["loss"])) < 1e-10, "loss {} vs {}", scalar(&loss), scalar(&want["loss"]));
    assert!(rel(fidelity, scalar(&want["fidelity"])) < 1e-10 && rel(robustness, scalar(&want["robustness"])) < 1e-10);
    let grads = student.gradients(&loss).unwrap();
    // The gradients, laid out as the checkpoint (official names and layouts).
    let by_name: HashMap<String, Tensor> =
        student.params.iter().map(|(n, v)| (n.clone(), grads.get(v.as_tensor()).unwrap().clone())).collect();
    let as_vit = student.snapshot().unwrap().vit.map_parameters(|name, _| Ok(by_name[name].clone())).unwrap();
    let got = as_vit.checkpoint_tensors().unwrap();
    assert_eq!(got.len(), 34);
    for (name, g) in &got {
        let w = &want[&format!("grad.{name}")];
        let diff = (g - w).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        let scale = w.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
        assert!(scale > 0.0, "{name}: zero reference gradient");
        assert!(diff <= 1e-8 * scale, "{name}: gradient differs by {diff:e} (scale {scale:e})");
    }
}

/// The fast CPU path's weight gradients (f32, hand-written reverse pass) against candle autograd
/// through the generic path in f64 — itself checked against PyTorch above — on every kind of ViT:
/// LayerScale, registers, SwiGLU, DINO v1, and a grid that resizes the position embedding.
#[test]
fn fast_weight_gradients_match_autograd() {
    let cases = [
        ("dinov2_official.pth", Some(4), 42),
        ("dinov2_reg.pth", Some(4), 28),
        ("dinov2_swiglu_train.pth", Some(3), 28),
        ("dino_v1_p8.pth", None, 24),
    ];
    for (file, heads, size) in cases {
        let opts = LoadOptions { heads, ..Default::default() };
        let enc32 = Encoder::load(&fixture(&format!("encoder/{file}")), &opts).unwrap();
        let enc64 = enc32.to(&Device::Cpu, DType::F64).unwrap();
        let x = Tensor::rand(0f32, 1f32, (2, 3, size, size), &Device::Cpu).unwrap();
        let x_adv = (&x + Tensor::rand(-0.03f32, 0.03f32, x.dims(), &Device::Cpu).unwrap()).unwrap().clamp(0f32, 1f32).unwrap();
        let mut grads = Vec::new();
        for enc in [&enc32, &enc64] {
            let teacher = Encoder::from_vit(enc.vit.map_parameters(|_, t| Ok((t * 0.9).unwrap())).unwrap(), enc.info.clone()).unwrap();
            let student = Student::new(enc).unwrap();
            let (x, x_adv) = (x.to_dtype(enc.vit.dtype()).unwrap(), x_adv.to_dtype(enc.vit.dtype()).unwrap());
            let t = teacher.forward(&x).unwrap();
            let (s, a) = student_pair(&student, &x, &x_adv).unwrap();
            let (loss, _) = deacl_loss(&s, &t, &a, 2.0, EmbedTarget::Both).unwrap();
            let g = student.gradients(&loss).unwrap();
            let by_name: HashMap<String, Tensor> = student
                .params
                .iter()
                .map(|(n, v)| {
                    (n.clone(), g.get(v.as_tensor()).unwrap_or_else(|| panic!("{file}: no gradient for {n}")).to_dtype(DType::F64).unwrap())
                })
                .collect();
            grads.push(by_name);
        }
        assert_eq!(grads[0].len(), grads[1].len());
        for (name, want) in &grads[1] {
            let got = &grads[0][name];
            let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
            assert!(scale > 0.0, "{file} {name}: zero reference gradient");
            assert!(diff <= 1e-4 * scale, "{file} {name}: gradient differs by {diff:e} (scale {scale:e})");
        }
    }
}

fn finetune_args<'a>(enc: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let base = ["finetune", "deacl", "--checkpoint", enc, "--num-heads", "4", "--dataset", "synthetic-seg:48x28", "--size", "28"];
    // The study's recipe (no momentum, per-epoch warm-up, random crop + flip), shortened.
    let train = [
        "--recipe",
        "study",
        "--batch-size",
        "2",
        "--epochs",
        "2",
        "--lr",
        "0.05",
        "--save-every",
        "5",
        "--seed",
        "4",
        "--out",
        out,
        "--json",
    ];
    base.iter().chain(train.iter()).chain(extra).copied().collect()
}

/// The study's DeACL schedule, epoch by epoch, as pl_bolts' own scheduler computes it
/// (tools/gen_deacl_schedule_fixture.py): the full 101-epoch run and a small one.
#[test]
fn study_schedule_matches_pl_bolts() {
    use robust_ssl::heads::train::{Schedule, TrainConfig};
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("defense/deacl_study_lr.json")).unwrap()).unwrap();
    for c in cases.as_array().unwrap() {
        let epochs = c["epochs"].as_u64().unwrap() as usize;
        let cfg = TrainConfig {
            epochs,
            batch_size: 1,
            lr: c["lr"].as_f64().unwrap(),
            optimizer: robust_ssl::optim::OptimizerKind::Sgd { momentum: 0.0, weight_decay: 5e-4 },
            schedule: Schedule::EpochWarmupCosine {
                warmup_epochs: c["warmup_epochs"].as_u64().unwrap() as usize,
                start_lr: c["start_lr"].as_f64().unwrap(),
            },
            warmup_steps: 0,
            seed: 0,
        };
        let per_epoch = 3;
        for (e, want) in c["lr_per_epoch"].as_array().unwrap().iter().enumerate() {
            for j in 0..per_epoch {
                let got = cfg.lr_at(e * per_epoch + j, epochs * per_epoch);
                assert!((got - want.as_f64().unwrap()).abs() < 1e-12, "{} epoch {e}: {got} vs {want}", c["name"]);
            }
        }
    }
    let study = robust_ssl::defense::recipe::FinetuneRecipe::study(224);
    assert_eq!((study.epochs, study.batch_size, study.lr, study.momentum, study.weight_decay), (101, 512, 0.5, 0.0, 5e-4));
    assert_eq!(study.schedule, Schedule::EpochWarmupCosine { warmup_epochs: 10, start_lr: 0.003 });
}

#[test]
fn killed_run_resumes_to_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_s, b_s) = (a.display().to_string(), b.display().to_string());
    let whole = ok_json(&finetune_args(&enc, &a_s, &[]));
    assert_eq!(whole["total_steps"], 48);
    assert_eq!(whole["resumed_from"], 0);

    // The same run, killed (SIGKILL) once it is past a checkpoint, then started again.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_robust-ssl"))
        .args(finetune_args(&enc, &b_s, &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let log = b.join("losses.csv");
    let lines = || std::fs::read_to_string(&log).map(|s| s.lines().count()).unwrap_or(0);
    while lines() < 13 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(b.join("state.json")).unwrap()).unwrap();
    let reached = state["step"].as_u64().unwrap();
    assert!(reached > 0 && reached < 48, "killed at step {reached}: the kill should land mid-run");
    let resumed = ok_json(&finetune_args(&enc, &b_s, &[]));
    assert_eq!(resumed["resumed_from"].as_u64().unwrap(), reached);
    let file = |dir: &Path| std::fs::read(dir.join("dinov2_official-deacl.pth")).unwrap();
    assert!(file(&a) == file(&b), "resumed weights differ from the uninterrupted run's");
    assert_eq!(std::fs::read_to_string(a.join("losses.csv")).unwrap(), std::fs::read_to_string(&log).unwrap());
    // The student loads as the input did and has moved away from the teacher.
    let (t, s) = (load_f64(Path::new(&enc)), load_f64(&a.join("dinov2_official-deacl.pth")));
    assert_ne!(t.vit.cls_token.to_vec3::<f64>().unwrap(), s.vit.cls_token.to_vec3::<f64>().unwrap());
    let losses: Vec<f64> = whole["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(losses.iter().all(|l| l.is_finite() && *l >= -3.0 - 1e-6 && *l <= 3.0 + 1e-6), "{losses:?}");

    // The run names its recipe (as given, else the protocol's); another run in the same folder is
    // refused, and nothing is overwritten.
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["run"]["recipe"], "study", "{run}");
    let before = file(&a);
    fails_with(
        &finetune_args(&enc, &a_s, &["--k", "1"]),
        &["holds a run with other settings", "run.recipe_options.k", "nothing was overwritten"],
    );
    assert!(file(&a) == before);
    // A damaged checkpoint is named.
    std::fs::write(b.join("state.json"), r#"{"step": 5, "file": "state-000005.safetensors"}"#).unwrap();
    fails_with(&finetune_args(&enc, &b_s, &[]), &["state-000005.safetensors", "cannot read the checkpoint"]);
    // An output folder that cannot be created.
    let blocked = tmp.path().join("file");
    std::fs::write(&blocked, b"").unwrap();
    let inside = blocked.join("out").display().to_string();
    fails_with(&finetune_args(&enc, &inside, &[]), &["cannot create the output folder"]);
}

#[test]
fn multi_perturbation_training_runs_and_reduces_to_deacl() {
    let tmp = tempfile::tempdir().unwrap();
    let enc = tiny_encoder();
    let cifar = format!("cifar10:{}", fixture("data/cifar-10-batches-bin").display());
    let probe = tmp.path().join("probe.safetensors").display().to_string();
    let common = ["--checkpoint", enc.as_str(), "--num-heads", "4"];
    let mut train = vec![
        "train-head",
        "--task",
        "cls",
        "--dataset",
        &cifar,
        "--size",
        "28",
        "--epochs",
        "50",
        "--lr",
        "5e-2",
        "--out",
        &probe,
        "--json",
    ];
    train.extend(common);
    ok_json(&train);
    let run = |recipe: &str, out: &str, extra: &[&str]| -> serde_json::Value {
        let mut v = vec![
            "finetune",
            recipe,
            "--dataset",
            &cifar,
            "--size",
            "28",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--lr",
            "0.02",
            "--seed",
            "1",
            "--out",
            out,
            "--json",
        ];
        v.extend(common);
        v.extend(extra);
        ok_json(&v)
    };
    let dir = |n: &str| tmp.path().join(n).display().to_string();
    let head = format!("cls:{probe}");
    // Embedding term only (λ = 0, task perturbations weighted 0): the DeACL loss, step for step.
    let deacl = run("deacl", &dir("deacl"), &[]);
    let only_embed = run("multi", &dir("multi0"), &["--heads", &head, "--lambda", "0", "--task-weight", "0"]);
    let (a, b) = (deacl["losses"].as_array().unwrap(), only_embed["losses"].as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4, "{x} vs {y}");
    }
    // With the task terms: worst-of is at least the average at every step's start (same weights).
    for combine in ["average", "worst"] {
        let r = run("multi", &dir(combine), &["--heads", &head, "--combine", combine]);
        assert!(r["losses"].as_array().unwrap().iter().all(|l| l.as_f64().unwrap().is_finite()));
        let log = std::fs::read_to_string(tmp.path().join(combine).join("losses.csv")).unwrap();
        assert!(log.starts_with(&format!("step,epoch,lr,loss,cos_student_teacher,embed_term,task_term:{probe}")), "{log}");
    }
    let first = |n: &str| -> f64 {
        std::fs::read_to_string(tmp.path().join(n).join("losses.csv"))
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .nth(3)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(first("worst") >= first("average") - 1e-6, "worst {} < average {}", first("worst"), first("average"));
    // A head whose task does not fit the data, and a malformed --heads.
    let seg = format!("seg:{probe}");
    let mut v = vec!["finetune", "multi", "--dataset", &cifar, "--size", "28", "--out", "/tmp/unused-multi", "--heads", &seg];
    v.extend(common);
    fails_with(&v, &["probe.safetensors"]);
    let mut v = vec!["finetune", "multi", "--dataset", &cifar, "--size", "28", "--out", "/tmp/unused-multi", "--heads", "probe"];
    v.extend(common);
    fails_with(&v, &["TASK:HEAD"]);
}

/// A bf16 teacher gives a bf16 student (and snapshots): fine-tuning runs in the precision asked
/// for, and its weight gradients stay near f32's (bf16 products: within 16·2⁻⁹ relative L2).
#[test]
fn a_bf16_teacher_fine_tunes_in_bf16() {
    use robust_ssl::encoder::Precision;
    if !robust_ssl::encoder::bf16_gemm::supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let path = fixture("encoder/dinov2_official.pth");
    let opts = LoadOptions { heads: Some(4), ..Default::default() };
    let x = Tensor::rand(0f32, 1f32, (2, 3, 28, 28), &Device::Cpu).unwrap();
    let grads = |precision: Precision| {
        let teacher = Encoder::load(&path, &LoadOptions { precision, ..opts.clone() }).unwrap();
        let student = Student::new(&teacher).unwrap();
        assert_eq!(student.snapshot().unwrap().precision(), precision);
        let loss = student.forward(&x).unwrap().cls.sqr().unwrap().sum_all().unwrap();
        let g = student.gradients(&loss).unwrap();
        let (_, v) = &student.params[student.params.iter().position(|(n, _)| n.ends_with("mlp.fc1.weight")).unwrap()];
        g.get(v.as_tensor()).unwrap().clone()
    };
    let (g32, g16) = (grads(Precision::F32), grads(Precision::Bf16));
    let rel = ((&g16 - &g32).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
        / g32.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
    .sqrt();
    assert!(rel > 0.0 && rel < 16.0 * 2f32.powi(-9), "bf16 weight gradient relative L2 {rel:e}");
}
