//! Per-image scores and what the report builds from them, on runs of the tiny DINOv2 (Fashion-MNIST
//! as Debian ships it, synthetic scenes): every attack cell's per-image scores sum back to its own
//! figures; the worst case is, per image, the worst of every attack (for classification
//! AutoAttack's definition: robust only if no attack broke it); Square runs on every task; every
//! attack is timed; and the gradient-free check flags a head whose saturated softmax hides the
//! gradient (a fixture: the trained probe with its logits scaled by 10⁶, as defensive
//! distillation leaves a model) while the same head unscaled is not flagged.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{ok_json, tiny_encoder};
use robust_ssl::choice::Choice;
use robust_ssl::experiment::plan::Condition;
use robust_ssl::experiment::store::Store;
use robust_ssl::heads::evaluate::Metrics;
use robust_ssl::heads::head::{Head, TrainedHead};
use robust_ssl::heads::sample_score::{combine, SampleScore};
use robust_ssl::report::per_sample::{gradient_free_wins, worst_case};
use robust_ssl::report::results::Results;

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

fn experiment(dir: &Path, name: &str, dense: bool, attack: &str) -> PathBuf {
    let mut text = format!(
        r#"name = "{name}"
[run]
size = 28
attack_batch_size = 8
examples = 0

[[encoder]]
name = "tiny"
checkpoint = "{enc}"
num_heads = 4

[[task]]
name = "fm"
task = "cls"
train = {{ dataset = "fashion-mnist:{FASHION}", limit = 300 }}
eval = {{ dataset = "fashion-mnist:{FASHION}", split = "test", limit = 24 }}
heads = [{{ pooling = "cls+mean", epochs = 30 }}]
"#,
        enc = tiny_encoder()
    );
    if dense {
        text += r#"
[[task]]
name = "seg"
task = "seg"
train = { dataset = "synthetic-seg:12x28" }
eval = { dataset = "synthetic-seg:6x28" }
images = "scenes"
heads = [{ epochs = 4 }]

[[task]]
name = "depth"
task = "depth"
train = { dataset = "synthetic-depth:12x28" }
eval = { dataset = "synthetic-depth:6x28" }
images = "scenes"
heads = [{ epochs = 4 }]
"#;
    }
    text += attack;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(exp: &Path, out: &Path) -> Results {
    ok_json(&["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"]);
    ok_json(&["report", out.to_str().unwrap(), "--json"]);
    Results::load(&Store::open_existing(&out.join("results.sqlite")).unwrap()).unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-12 * (1.0 + a.abs()), "{what}: {a} vs {b}");
}

#[test]
fn per_image_scores_sum_to_each_cell_and_the_worst_case_pools_them() {
    let tmp = tempfile::tempdir().unwrap();
    let attack = "\n[[attack]]\nkinds = [\"embed\", \"task\", \"square\"]\neps = [\"4/255\"]\nsteps = 5\nqueries = 60\n";
    let exp = experiment(tmp.path(), "pooled", true, attack);
    let out = tmp.path().join("run");
    let r = run(&exp, &out);
    let attacked: Vec<_> = r.entries.iter().filter(|e| e.labels.condition == Condition::Attack).collect();
    assert!(!attacked.is_empty());
    // Square ran on every task, as the gradient-free check.
    for task in ["fm", "seg", "depth"] {
        assert!(
            attacked.iter().any(|e| e.labels.task == task && e.labels.attack.is_some_and(|a| a.name() == "square")),
            "Square on {task}"
        );
    }
    for e in &attacked {
        let res = &e.row.result;
        let per = res.per_sample.as_ref().unwrap_or_else(|| panic!("{}: no per-image scores", e.row.key));
        assert_eq!(per.len(), res.samples, "{}", e.row.key);
        let summed = combine(per.iter().map(|(_, s)| s)).unwrap();
        let own = &res.adversarial.as_ref().unwrap().head;
        let what = format!("{} {} {:?}", e.labels.task, e.row.key, e.labels.attack);
        match (&summed, own) {
            (Metrics::Cls { correct: a, total: n, .. }, Metrics::Cls { correct: b, total: m, .. }) => assert_eq!((a, n), (b, m), "{what}"),
            (Metrics::Seg { miou: a, pixel_accuracy: pa, .. }, Metrics::Seg { miou: b, pixel_accuracy: pb, .. }) => {
                close(*a, *b, &what);
                close(*pa, *pb, &what);
            }
            (Metrics::Depth { errors: a, images: i, .. }, Metrics::Depth { errors: b, images: j, .. }) => {
                close(a.rmse, b.rmse, &what);
                close(a.abs_rel, b.abs_rel, &what);
                assert_eq!(i, j);
            }
            _ => panic!("{what}: per-image scores of another task"),
        }
        let t = r.timings.get(&e.row.key).unwrap_or_else(|| panic!("{what}: not timed"));
        assert!(t.seconds > 0.0 && t.images == res.samples && t.device.starts_with("cpu"), "{what}: {t:?}");
    }
    for (head, task) in [("fm", "cls"), ("seg", "seg"), ("depth", "depth")] {
        let cells = r.on_head("tiny", head, robust_ssl::attacks::threat::Norm::Linf, 4.0 / 255.0);
        assert!(cells.len() >= 3, "{head}: {} cells", cells.len());
        let w = worst_case(&cells).unwrap().unwrap();
        assert_eq!(w.pooled, cells.len());
        match &w.metrics {
            // AutoAttack's per-sample worst case: an image is robust only if every attack left it
            // correct (and it was correct on the clean input).
            Metrics::Cls { accuracy, .. } => {
                assert_eq!(task, "cls");
                let ids: Vec<usize> = cells[0].row.result.per_sample.as_ref().unwrap().iter().map(|p| p.0).collect();
                let robust = ids
                    .iter()
                    .filter(|id| {
                        cells.iter().all(|c| {
                            let per = c.row.result.per_sample.as_ref().unwrap();
                            matches!(per.iter().find(|p| p.0 == **id).unwrap().1, SampleScore::Cls { correct: true })
                        })
                    })
                    .count();
                close(*accuracy, robust as f64 / ids.len() as f64, "worst-case accuracy");
                for c in &cells {
                    assert!(*accuracy <= c.value(robust_ssl::experiment::store::Predictor::Adversarial).unwrap());
                }
            }
            // Pixel accuracy per image; mIoU, a dataset-level figure, by SEA's greedy re-pick, which
            // starts from each attack alone: no higher than any of them.
            Metrics::Seg { pixel_accuracy, miou, .. } => {
                assert_eq!(task, "seg");
                for c in &cells {
                    let Metrics::Seg { pixel_accuracy: own, miou: own_miou, .. } = &c.row.result.adversarial.as_ref().unwrap().head else {
                        panic!()
                    };
                    assert!(pixel_accuracy <= own, "{pixel_accuracy} > {own}");
                    assert!(miou <= own_miou, "{miou} > {own_miou}");
                }
            }
            Metrics::Depth { errors, .. } => {
                assert_eq!(task, "depth");
                for c in &cells {
                    assert!(errors.rmse >= c.value(robust_ssl::experiment::store::Predictor::Adversarial).unwrap());
                }
            }
        }
    }
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    for needle in [
        "Worst case over every attack",
        "Cost of the attacks",
        "worst case (every attack)",
        "s / image",
        "Square beat every gradient attack on",
    ] {
        assert!(md.contains(needle), "the report lacks '{needle}'");
    }
}

/// The trained probe of a run folder with its logits scaled by `factor`.
fn scale_probe(heads: &Path, factor: f64) {
    let files: Vec<PathBuf> = std::fs::read_dir(heads)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut head = TrainedHead::load(&files[0], &Device::Cpu).unwrap();
    let Head::Linear(probe) = &mut head.head else { panic!("a probe") };
    probe.weight = (&probe.weight * factor).unwrap();
    probe.bias = (&probe.bias * factor).unwrap();
    head.save(&files[0]).unwrap();
}

#[test]
fn a_saturated_softmax_is_flagged_as_gradient_masking_and_a_plain_head_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let attack = "\n[[attack]]\nkinds = [\"pgd\", \"apgd\", \"square\"]\neps = [\"4/255\", \"8/255\"]\nsteps = 10\nqueries = 1000\n";
    let exp = experiment(tmp.path(), "masking", false, attack);
    let linf = robust_ssl::attacks::threat::Norm::Linf;
    let adversarial = robust_ssl::experiment::store::Predictor::Adversarial;
    let seen = |cells: &[&robust_ssl::report::results::Entry]| -> Vec<String> {
        cells.iter().map(|c| format!("{:?} {:?}", c.labels.attack, c.value(adversarial))).collect()
    };

    let plain = tmp.path().join("plain");
    let r = run(&exp, &plain);
    for eps in [4.0 / 255.0, 8.0 / 255.0] {
        let cells = r.on_head("tiny", "fm", linf, eps);
        let (wins, of) = gradient_free_wins(&cells).unwrap();
        eprintln!("plain at {eps}: Square beat every gradient attack on {wins} of {of}: {:?}", seen(&cells));
        assert_eq!(wins, 0, "Square beat every gradient attack on {wins} of {of} images of a plain probe at {eps}");
    }
    let md = std::fs::read_to_string(plain.join("report/report.md")).unwrap();
    assert!(!md.contains(": possible gradient masking"), "{md}");

    // The same probe, its softmax saturated: cross-entropy's gradient underflows to zero.
    let masked = tmp.path().join("masked");
    std::fs::create_dir_all(masked.join("heads")).unwrap();
    for f in std::fs::read_dir(plain.join("heads")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, masked.join("heads").join(f.file_name().unwrap())).unwrap();
    }
    scale_probe(&masked.join("heads"), 1e6);
    let r = run(&exp, &masked);
    let md = std::fs::read_to_string(masked.join("report/report.md")).unwrap();
    let clean = r.rows()[0].2.value(robust_ssl::experiment::store::Predictor::Clean).unwrap();
    for eps in [4.0 / 255.0, 8.0 / 255.0] {
        let cells = r.on_head("tiny", "fm", linf, eps);
        let (wins, of) = gradient_free_wins(&cells).unwrap();
        eprintln!("masked at {eps}: Square beat every gradient attack on {wins} of {of}: {:?}", seen(&cells));
        assert!(wins > 0, "no image flagged out of {of} at {eps} (clean accuracy {clean}): {:?}", seen(&cells));
        assert!(md.contains(&format!("{wins} of {of}: possible gradient masking")), "{md}");
        // AutoAttack's other check sees it too: gradients that are zero at the start.
        let zero_start: usize = cells.iter().filter_map(|c| c.row.result.sanity.as_ref()).map(|s| s.zero_start_gradients).sum();
        assert!(zero_start > 0, "no zero gradient at the start");
    }
}
