//! AutoAttack's attacks as a user runs them (`attack --attack apgd-dlr | apgd-t | fab-t | square |
//! autoattack`, `kinds = [...]` in experiment files) on a probe of the tiny DINOv2 trained on ten
//! CIFAR-format images: an ensemble is never weaker than its parts (each runs on the points the
//! ones before left robust), Square takes no gradient and holds the budget, robust accuracy never
//! exceeds clean accuracy, and settings that do not fit are refused before any work.

mod common;

#[path = "common/attacking.rs"]
#[allow(dead_code)]
mod attacking;

use std::path::Path;

use candle_core::Device;
use common::{fails_with, ok_json};
use robust_ssl::attacks::spec::{AttackKind, AttackSpec};
use robust_ssl::heads::head::{Head, TrainedHead};
use robust_ssl::heads::layers::Pooling;
use serde_json::Value;

fn cifar() -> String {
    format!("cifar10:{}", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/cifar-10-batches-bin").display())
}

/// A probe that fits the ten training images, and the attack command on them.
fn setup(dir: &Path) -> impl Fn(&str, &str, &[&str]) -> Value {
    let probe = dir.join("probe.safetensors").display().to_string();
    ok_json(&[
        "train-head",
        "--task",
        "cls",
        "--checkpoint",
        &common::tiny_encoder(),
        "--num-heads",
        "4",
        "--dataset",
        &cifar(),
        "--size",
        "28",
        "--pooling",
        "cls+mean",
        "--epochs",
        "200",
        "--lr",
        "5e-2",
        "--out",
        &probe,
        "--json",
    ]);
    move |kind: &str, eps: &str, extra: &[&str]| {
        let enc = common::tiny_encoder();
        let mut args = vec!["attack", "--task", "cls", "--checkpoint", &enc, "--num-heads", "4", "--size", "28", "--dataset"];
        let data = cifar();
        args.extend([data.as_str(), "--split", "train", "--head", &probe, "--attack", kind, "--eps", eps, "--json"]);
        args.extend(extra);
        ok_json(&args)
    }
}

fn accuracy(r: &Value, which: &str) -> f64 {
    r[which]["head"]["accuracy"].as_f64().unwrap()
}

#[test]
fn ensembles_are_never_weaker_than_their_parts() {
    let tmp = tempfile::tempdir().unwrap();
    let attack = setup(tmp.path());
    let mut broken_somewhere = false;
    for (norm, eps) in [("linf", "1/255"), ("linf", "2/255"), ("linf", "4/255"), ("l2", "0.1"), ("l2", "0.3")] {
        let short = ["--steps", "10", "--queries", "200", "--norm", norm];
        let auto = attack("autoattack", eps, &short);
        let parts: Vec<(&str, Value)> = ["apgd", "apgd-t", "fab-t", "square"].iter().map(|k| (*k, attack(k, eps, &short))).collect();
        assert_eq!(accuracy(&auto, "clean"), 1.0, "the probe fits its training images");
        for (kind, r) in &parts {
            // Each part runs first on every clean-correct sample in its own run; in the ensemble
            // APGD-CE runs first on the same samples with the same seed: the ensemble can only
            // break more.
            assert!(accuracy(&auto, "adversarial") <= accuracy(r, "adversarial"), "{eps}: autoattack vs {kind}: {auto} {r}");
            assert!(accuracy(r, "adversarial") <= accuracy(r, "clean"), "{kind} at {eps}");
            assert!(r["sanity"]["max_norm_over_eps"].as_f64().unwrap() <= 1.0 + 1e-5, "{kind} at {eps}");
        }
        let apgd = &parts[0].1;
        broken_somewhere |= accuracy(&auto, "adversarial") < 1.0;
        // AutoAttack's own first part is APGD-CE (`--attack apgd` with the same seed and steps).
        assert!(accuracy(&auto, "adversarial") <= accuracy(apgd, "adversarial"));
        // Square is gradient-free: no gradient step, its forward passes counted.
        let square = &parts[3].1;
        assert_eq!(square["sanity"]["sample_steps"], 0, "{square}");
        assert!(square["sanity"]["queries"].as_u64().unwrap() >= 10, "{square}");
    }
    assert!(broken_somewhere, "at 4/255 the tiny probe is broken");
    // FAB-T searches for the nearest misclassified point: at a large budget it finds one for
    // (nearly) every sample, and what it returns stays within the budget.
    let fab = attack("fab-t", "64/255", &["--steps", "10"]);
    assert!(accuracy(&fab, "adversarial") < 0.5, "{fab}");
    assert!(fab["sanity"]["max_norm_over_eps"].as_f64().unwrap() <= 1.0 + 1e-5, "{fab}");
    // At a budget as large as the image's range Square breaks samples too: it searches, it is no no-op.
    let square = attack("square", "64/255", &["--queries", "300"]);
    assert!(accuracy(&square, "adversarial") < 1.0, "{square}");
}

#[test]
fn ensemble_settings_that_do_not_fit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = tmp.path().join("probe.safetensors").display().to_string();
    ok_json(&[
        "train-head",
        "--task",
        "cls",
        "--checkpoint",
        &common::tiny_encoder(),
        "--num-heads",
        "4",
        "--dataset",
        &cifar(),
        "--size",
        "28",
        "--epochs",
        "2",
        "--out",
        &probe,
        "--json",
    ]);
    let base = ["attack", "--task", "cls", "--checkpoint", &common::tiny_encoder(), "--num-heads", "4", "--size", "28", "--dataset"];
    let data = cifar();
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(&[data.as_str(), "--split", "train", "--head", &probe]).chain(extra).map(|s| s.to_string()).collect()
    };
    let fails = |extra: &[&str], needles: &[&str]| {
        let args = with(extra);
        fails_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), needles);
    };
    fails(&["--attack", "autoattack", "--iterate", "last"], &["iterate = last", "AutoAttack"]);
    fails(&["--attack", "apgd-t", "--curve"], &["APGD-T", "per-step curve"]);
    fails(&["--attack", "square", "--queries", "0"], &["at least one query"]);

    // APGD-T targets the 9 classes after the top one: a 5-class probe cannot have them.
    let meta = attacking::probe_meta(5, Pooling::Cls);
    let (head, _) = Head::init(&meta, 1, &Device::Cpu).unwrap();
    let trained = TrainedHead { head, meta };
    let enc = attacking::encoder();
    let x = attacking::images(2, 1);
    let cfg = AttackSpec::new(AttackKind::ApgdT).engine(0, true);
    for kind in [AttackKind::ApgdT, AttackKind::FabT, AttackKind::AutoAttack] {
        let err = robust_ssl::attacks::ensemble::run(kind, &enc, &trained, &[0, 1], &x, &cfg).err().unwrap().to_string();
        assert!(err.contains("at least 10 classes") && err.contains("has 5") && err.contains("apgd-dlr"), "{err}");
    }
    // The DLR losses need 3 (untargeted) or 4 (targeted) classes.
    let two = attacking::probe_meta(2, Pooling::Cls);
    let (Head::Linear(probe), _) = Head::init(&two, 1, &Device::Cpu).unwrap() else { unreachable!() };
    let logits = candle_core::Tensor::zeros((1, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = robust_ssl::attacks::dlr::dlr_losses(&logits, &[0], None).err().unwrap().to_string();
    assert!(err.contains("at least 3 classes"), "{err}");
    drop(probe);
}

/// The kinds by name in an experiment file: only the classification task gets them; iterations
/// default to AutoAttack's 100 unless the block says otherwise.
#[test]
fn experiments_plan_the_ensembles_on_classifiers() {
    use robust_ssl::experiment::config::Loaded;
    use robust_ssl::experiment::plan::{Plan, Work};
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("aa.toml");
    let text = format!(
        r#"[run]
size = 28
[[encoder]]
name = "tiny"
checkpoint = "{enc}"
num_heads = 4
[[task]]
name = "cifar"
task = "cls"
train = {{ dataset = "{cifar}" }}
eval = {{ dataset = "{cifar}", split = "test" }}
[[task]]
name = "seg"
task = "seg"
train = {{ dataset = "synthetic-seg:4x28" }}
eval = {{ dataset = "synthetic-seg:4x28" }}
[[attack]]
kinds = ["autoattack", "apgd-t", "fab-t", "apgd-dlr", "square", "task"]
eps = ["8/255"]
"#,
        enc = common::tiny_encoder(),
        cifar = cifar()
    );
    let plan = Plan::new(&Loaded::parse(&path, text.clone()).unwrap()).unwrap();
    let attacks: Vec<(AttackKind, usize, usize)> = plan
        .items
        .iter()
        .filter_map(|i| match &i.work {
            Work::Attack { params, source: Some(s), .. } => Some((i.cells[0].labels.attack.unwrap(), plan.heads[*s].task, params.steps)),
            _ => None,
        })
        .collect();
    for kind in [AttackKind::AutoAttack, AttackKind::ApgdT, AttackKind::FabT, AttackKind::ApgdDlr] {
        let on: Vec<_> = attacks.iter().filter(|a| a.0 == kind).collect();
        assert_eq!(on.len(), 1, "{kind}: on the classifier only: {attacks:?}");
        assert_eq!(on[0].1, 0);
    }
    // Square, the gradient-free check, runs on every task.
    let mut square: Vec<usize> = attacks.iter().filter(|a| a.0 == AttackKind::Square).map(|a| a.1).collect();
    square.sort();
    assert_eq!(square, [0, 1], "Square on both tasks: {attacks:?}");
    assert!(attacks.iter().any(|a| a.0 == AttackKind::AutoAttack && a.2 == 100), "AutoAttack's 100 iterations: {attacks:?}");
    assert!(attacks.iter().any(|a| a.0 == AttackKind::Segpgd && a.2 == 20), "the study's 20 for SegPGD: {attacks:?}");
    let err = format!("{:#}", Loaded::parse(&path, text.replace("eps = [\"8/255\"]", "eps = [\"8/255\"]\ncurve = true")).err().unwrap());
    assert!(err.contains("curve = true") && err.contains("autoattack"), "{err}");
}
