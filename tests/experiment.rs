//! `robust-ssl run / merge / export / report` on a tiny experiment (the tiny DINOv2 encoder, CIFAR-10
//! fixture files, synthetic scenes): a run killed at random moments resumes to the very store of
//! an uninterrupted run; two shards merged equal one unsharded run; the reference code's way
//! (`--unshared`) gives the same results; an attack cell equals the `attack` command on the same
//! head; the HTML report opens in headless Chromium with every image loaded and no console
//! message; bad experiment files are refused at their line before any work.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{fails_with, ok_json, run, tiny_encoder, tiny_experiment as experiment};
use rand::{Rng, SeedableRng};
use robust_ssl::experiment::store::Store;
use serde_json::Value;

/// The finished content of a store: cells, example strips and head records (no partial batches).
fn content(store: &Path) -> Content {
    let s = Store::open_existing(store).unwrap();
    let cells = s.cells().unwrap().into_iter().map(|c| serde_json::to_value(c).unwrap()).collect();
    let examples = s.examples().unwrap().into_iter().map(|e| (e.cell, e.name, e.png)).collect();
    let heads = s.heads().unwrap().into_iter().map(|(key, record)| (key, serde_json::to_string(&record).unwrap())).collect();
    (cells, examples, heads)
}

type Content = (Vec<Value>, Vec<(String, String, Vec<u8>)>, Vec<(String, String)>);

/// Asserts two stores' content equal, naming the first difference (not dumping both).
fn assert_same(got: &Content, want: &Content, what: &str) {
    assert_eq!(got.0.len(), want.0.len(), "{what}: cell count");
    for (g, w) in got.0.iter().zip(&want.0) {
        assert!(g == w, "{what}: cell {} differs:\n{g}\n{w}", w["key"]);
    }
    assert_eq!(got.1.len(), want.1.len(), "{what}: example count");
    for (g, w) in got.1.iter().zip(&want.1) {
        assert!(g == w, "{what}: example {} {} differs (or is missing)", w.0, w.1);
    }
    assert_eq!(got.2, want.2, "{what}: heads");
}

fn run_to_end(exp: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["run", exp.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    ok_json(&args)
}

#[test]
fn experiment_runs_resume_shard_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = experiment(tmp.path());
    let (a, b, c, d) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"), tmp.path().join("d"));

    // Uninterrupted: every item runs, every head is trained once.
    let t0 = Instant::now();
    let first = run_to_end(&exp, &a, &[]);
    let uninterrupted = t0.elapsed();
    let s = &first["summary"];
    assert_eq!(s["items_run"], s["items_in_shard"], "{first}");
    assert_eq!(s["heads_trained"], 3, "{first}");
    let reference = content(&a.join("results.sqlite"));
    // 3 clean + EmbedAttack: 2 image sets × 2 ε × 2 seeds (cifar: 1 head, scenes: 2 heads) +
    // task attacks: 3 heads × 2 ε × 2 seeds, each scored on its own head and the other task of
    // its images (seg ↔ depth).
    assert_eq!(reference.0.len(), 3 + 4 * (1 + 2) + 4 * (1 + 2 + 2), "cells");
    assert!(!reference.1.is_empty(), "example strips stored");
    // A second run finds everything done.
    let again = run_to_end(&exp, &a, &[]);
    assert_eq!(again["summary"]["items_run"], 0, "{again}");
    assert_same(&content(&a.join("results.sqlite")), &reference, "a second run");

    // Killed at random moments, then resumed: the same store.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let bin = env!("CARGO_BIN_EXE_robust-ssl");
    let mut kills = 0;
    for _ in 0..5 {
        let wait = uninterrupted.mul_f64(rng.random_range(0.1..0.9));
        let mut child = Command::new(bin)
            .args(["run", exp.to_str().unwrap(), "--out", b.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 3, "only {kills} of 5 runs were still going when killed");
    let resumed = run_to_end(&exp, &b, &[]);
    assert!(resumed["summary"]["items_done_before"].as_u64().unwrap() > 0, "the killed runs committed nothing: {resumed}");
    assert_same(&content(&b.join("results.sqlite")), &reference, "killed and resumed");

    // Two runs on one run folder at once (a job resubmitted while the first still runs): the
    // second is refused, naming the holder, and the store is the uninterrupted run's (before:
    // both exited 0 and cells were committed from half of their batches).
    let e = tmp.path().join("e");
    let spawn = || {
        Command::new(bin)
            .args(["run", exp.to_str().unwrap(), "--out", e.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (one, two) = (spawn(), spawn());
    let outcomes = [one.wait_with_output().unwrap(), two.wait_with_output().unwrap()];
    let refused: Vec<String> =
        outcomes.iter().filter(|o| !o.status.success()).map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).collect();
    assert_eq!(refused.len(), 1, "exactly one of two concurrent runs is refused: {refused:?}");
    let store_e = e.join("results.sqlite").display().to_string();
    for needle in [store_e.as_str(), "another process is writing", "pid ", "robust-ssl run"] {
        assert!(refused[0].contains(needle), "the refusal should mention '{needle}': {}", refused[0]);
    }
    assert_same(&content(&e.join("results.sqlite")), &reference, "two concurrent runs");
    check_damaged_stores(&exp, &e, &reference);

    // Two shards (the second from the Slurm array variables), merged: the same store.
    run_to_end(&exp, &c, &["--shard", "0/2"]);
    let out = Command::new(bin)
        .args(["run", exp.to_str().unwrap(), "--out", c.to_str().unwrap(), "--json"])
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(c.join("results-shard-0-of-2.sqlite").is_file() && c.join("results-shard-1-of-2.sqlite").is_file());
    let (ok, text, err) = run(&["merge", c.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(text.contains("merged into"), "{text}");
    assert_same(&content(&c.join("results.sqlite")), &reference, "merged shards");

    // The reference code's way (no feature cache, EmbedAttack once per task): the same results.
    let unshared = run_to_end(&exp, &d, &["--unshared"]);
    assert_eq!(unshared["summary"]["items_run"], first["summary"]["items_run"]);
    let d = content(&d.join("results.sqlite"));
    assert_same(&(d.0, reference.1.clone(), reference.2.clone()), &reference, "--unshared");

    check_against_attack_command(&a);
    check_exports(&a);
    check_report_in_chromium(&a);
}

/// A SegPGD cell (all 8 scenes in one batch at seed 0, so the batch seed is the setting's)
/// equals `robust-ssl attack` with the head the run trained, including the depth head scored on
/// the same perturbations.
fn check_against_attack_command(run_dir: &Path) {
    let head_of = |task: &str| -> String {
        std::fs::read_dir(run_dir.join("heads"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .find(|p| serde_json::from_str::<Value>(&std::fs::read_to_string(p).unwrap()).unwrap()["task"] == task)
            .map(|p| p.with_extension("safetensors").display().to_string())
            .unwrap()
    };
    let (seg, depth) = (head_of("seg"), head_of("depth"));
    let report = ok_json(&[
        "attack",
        "--task",
        "seg",
        "--checkpoint",
        &tiny_encoder(),
        "--num-heads",
        "4",
        "--size",
        "28",
        "--head",
        &seg,
        "--dataset",
        "synthetic-seg:8x28",
        "--attack",
        "segpgd",
        "--eps",
        "8/255",
        "--steps",
        "4",
        "--seed",
        "0",
        "--batch-size",
        "8",
        "--also",
        &format!("depth:{depth}@synthetic-depth:8x28"),
        "--json",
    ]);
    // The run attacks in batches of 4: its batch seeds differ, so compare with a one-batch run.
    let one_batch = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(run_dir.join("experiment.toml")).unwrap().replace("attack_batch_size = 4", "attack_batch_size = 8");
    let exp = one_batch.path().join("one.toml");
    std::fs::write(&exp, text).unwrap();
    run_to_end(&exp, &one_batch.path().join("run"), &[]);
    // The cells as the JSON export writes them.
    let cells8: Vec<serde_json::Value> = Store::open_existing(&one_batch.path().join("run/results.sqlite"))
        .unwrap()
        .cells()
        .unwrap()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let find = |task: &str| {
        cells8
            .iter()
            .find(|c| {
                c["labels"]["task"] == task
                    && c["labels"]["attack"] == "segpgd"
                    && c["labels"]["params"]["eps_text"] == "8/255"
                    && c["labels"]["params"]["seed"] == 0
            })
            .unwrap_or_else(|| panic!("no segpgd cell for {task}"))["result"]
            .clone()
    };
    let (seg_cell, depth_cell) = (find("seg"), find("depth"));
    for key in ["clean", "adversarial"] {
        assert_eq!(seg_cell[key]["head"], report[key]["head"], "seg {key}");
        assert_eq!(depth_cell[key]["head"], report["also"][0][key]["head"], "depth {key}");
    }
    assert_eq!(seg_cell["mean_objective"], report["mean_objective"]);
}

/// A store row that cannot be read back (a result stored as JSON null by an older version) is
/// named with the way out, and a run computes it again; a garbled page is found at open, naming
/// the file and the way out (before: `run` passed, `export` failed with no file name).
fn check_damaged_stores(exp: &Path, run_dir: &Path, reference: &Content) {
    let store = run_dir.join("results.sqlite");
    let shown = store.display().to_string();
    let key: String = {
        let db = rusqlite::Connection::open(&store).unwrap();
        let key: String = db.query_row("SELECT key FROM cells WHERE labels LIKE '%\"condition\":\"clean\"%'", [], |r| r.get(0)).unwrap();
        db.execute("UPDATE cells SET result = 'null' WHERE key = ?1", [&key]).unwrap();
        key
    };
    fails_with(&["export", run_dir.to_str().unwrap()], &[&shown, &format!("cell {key} cannot be read back"), "run the experiment again"]);
    let (ok, _, err) = run(&["run", exp.to_str().unwrap(), "--out", run_dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains(&format!("cell {key}")) && err.contains("computing it again"), "{err}");
    assert_same(&content(&store), reference, "an unreadable cell computed again");

    let saved = std::fs::read(&store).unwrap();
    let mut bytes = saved.clone();
    let page = bytes.len() / 4096 / 2 * 4096;
    bytes[page..page + 4096].fill(0x55);
    std::fs::write(&store, &bytes).unwrap();
    for args in [
        vec!["export", run_dir.to_str().unwrap()],
        vec!["report", run_dir.to_str().unwrap()],
        vec!["run", exp.to_str().unwrap(), "--out", run_dir.to_str().unwrap()],
    ] {
        fails_with(&args, &[&shown, "the results store is damaged", &format!("mv {shown} {shown}.damaged")]);
    }
    std::fs::write(&store, &saved).unwrap();
}

fn check_exports(run_dir: &Path) {
    let (ok, csv, err) = run(&["export", run_dir.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("key,encoder,task,task_kind,head,dataset,condition,attack"));
    let accuracy_rows = csv.lines().filter(|l| l.contains(",cifar,cls,") && l.contains(",clean,accuracy,")).count();
    assert_eq!(accuracy_rows, 1 + 8, "the clean cell and 8 attack cells of the cifar head give a clean accuracy");
    let (ok, json, err) = run(&["export", run_dir.to_str().unwrap(), "--format", "json"]);
    assert!(ok, "{err}");
    let cells: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(cells.len(), 3 + 12 + 20);
    fails_with(&["export", "/nonexistent/run"], &["/nonexistent/run", "no results store"]);
}

/// The HTML report in headless Chromium: a probe appended to a copy records how many images
/// loaded; any console message fails the test (the page has no script of its own).
fn check_report_in_chromium(run_dir: &Path) {
    let files = ok_json(&["report", run_dir.to_str().unwrap(), "--json"]);
    assert_eq!(files["missing"], 0);
    assert!(files["charts"].as_u64().unwrap() >= 3, "{files}");
    let html = std::fs::read_to_string(files["html"].as_str().unwrap()).unwrap();
    assert!(!html.contains("<script"), "the report should need no script");
    assert!(!html.contains("src=\"curves/") && !html.contains("src=\"examples/"), "every image inlined");
    let md = std::fs::read_to_string(files["markdown"].as_str().unwrap()).unwrap();
    assert!(md.contains("| tiny | seg | mIoU ↑ |"), "{md}");
    // The Protocol section: this run's settings beside the study's, read from the run.
    let protocol = &md[md.find("## Protocol").expect("a Protocol section")..];
    assert!(protocol.contains("| SegPGD form | paper |") && protocol.contains("| point returned | best | last |"), "{protocol}");
    assert!(protocol.contains("| model selection | the last epoch |") && protocol.contains("without ImageNet normalisation"), "{protocol}");
    assert!(protocol.contains("| encoder arithmetic | f32 | f32 (its code runs PyTorch without autocast) |"), "{protocol}");
    let probe = "<script>window.addEventListener('load', () => { const all = [...document.images]; \
        document.body.setAttribute('data-images', all.length); \
        document.body.setAttribute('data-broken', all.filter(i => !i.complete || i.naturalWidth === 0).length); });</script>";
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("probe.html");
    std::fs::write(&page, html.replace("</body>", &format!("{probe}</body>"))).unwrap();
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()));
    let chromium = chromium.expect("no headless Chromium: scripts/fetch-assets.sh installs Debian's chromium");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", tmp.path().join("profile").display()))
        .args(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let (dom, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "chromium failed: {log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let body = dom.split("<body").nth(1).and_then(|b| b.split('>').next()).unwrap_or_else(|| panic!("no body in {dom}"));
    let attr = |k: &str| {
        body.split(&format!("{k}=\""))
            .nth(1)
            .and_then(|v| v.split('"').next())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no {k} in <body{body}>"))
    };
    let expected = files["charts"].as_u64().unwrap() as usize + files["examples"].as_u64().unwrap() as usize;
    assert_eq!(attr("data-images"), expected, "every chart and example is an image");
    assert_eq!(attr("data-broken"), 0, "images that did not load");
}

/// Bad experiment files fail before any work, naming the file and line.
#[test]
fn bad_experiments_are_refused_at_their_line() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(experiment(tmp.path())).unwrap();
    let out = tmp.path().join("never");
    let try_with = |name: &str, text: String, needles: &[&str]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        fails_with(&["run", p.to_str().unwrap(), "--out", out.to_str().unwrap()], needles);
        assert!(!out.exists(), "{name}: the run folder was created before the error");
    };
    let line_of = |needle: &str| good.lines().position(|l| l.contains(needle)).unwrap() + 1;
    try_with(
        "unknown.toml",
        good.replace("examples = 2", "examples = 2\nexampels = 3"),
        &["unknown.toml", &format!("line {}", line_of("examples = 2") + 1), "exampels"],
    );
    try_with("type.toml", good.replace("steps = 4", "steps = \"four\""), &["type.toml", &format!("line {}", line_of("steps = 4"))]);
    try_with("eps.toml", good.replace("\"8/255\"", "\"8/25x\""), &[&format!("eps.toml:{}:", line_of("eps = ")), "8/25x", "not an amount"]);
    try_with(
        "path.toml",
        good.replace("cifar10:", "cifar10:/no/such/cifar"),
        &[&format!("path.toml:{}:", line_of("name = \"cifar\"") + 2), "/no/such/cifar", "no such file"],
    );
    try_with("kind.toml", good.replace("synthetic-depth:12x28", "nyu-depth:12x28"), &["kind.toml", "unknown dataset kind 'nyu-depth'"]);
    try_with("twice.toml", good.replace("name = \"depth\"", "name = \"seg\""), &["twice.toml", "a second task named 'seg'"]);
    try_with("ckpt.toml", good.replace("dinov2_official.pth", "missing.pth"), &["ckpt.toml", "missing.pth", "no such checkpoint file"]);
    try_with(
        "option.toml",
        good.replacen("heads = [{ epochs = 4 }]", "heads = [{ epochs = 4, depth_form = \"bn\" }]", 1),
        &["option.toml:", "'depth_form' is a depth head's setting", "seg head"],
    );
    try_with(
        "group.toml",
        good.replace("synthetic-depth:8x28", "synthetic-depth:6x28"),
        &["group.toml", "shares images 'scenes'", "6 samples"],
    );
    fails_with(
        &["run", tmp.path().join("tiny.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--shard", "2/2"],
        &["--shard '2/2'", "out of range"],
    );
    fails_with(
        &["run", tmp.path().join("tiny.toml").to_str().unwrap(), "--out", out.to_str().unwrap(), "--shard", "x/2"],
        &["--shard 'x/2'"],
    );
    assert!(!out.exists());
    fails_with(&["run", "/no/such.toml"], &["/no/such.toml", "cannot read the experiment file"]);
}

/// The plan shares work: one EmbedAttack item per task and setting (the study's scope), or per
/// image set when shared (scored on every task of those images), one head per encoder and task, and keys that depend on what determines a
/// result only (a renamed task keeps its heads' keys; another ε adds items without changing any).
#[test]
fn the_plan_shares_work_and_keys_are_stable() {
    use robust_ssl::experiment::config::Loaded;
    use robust_ssl::experiment::plan::{Plan, Work};
    let tmp = tempfile::tempdir().unwrap();
    let path = experiment(tmp.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let plan = Plan::new(&Loaded::parse(&path, text.clone()).unwrap()).unwrap();
    assert_eq!(plan.heads.len(), 3);
    let embed_items = |p: &Plan| -> Vec<usize> {
        p.items.iter().filter(|i| matches!(&i.work, Work::Attack { source: None, .. })).map(|i| i.cells.len()).collect()
    };
    // The study's scope by default: one EmbedAttack per task on its own embedding.
    let embed = embed_items(&plan);
    assert_eq!(embed.len(), 3 * 2 * 2, "3 tasks × 2 ε × 2 seeds");
    assert!(embed.iter().all(|&cells| cells == 1), "each task's EmbedAttack is scored on that task alone");
    // The shared scope: one perturbation per image set, on a stated embedding, scored on every task.
    let shared_text = text.replace("seeds = [0, 1]", "seeds = [0, 1]\nembed_scope = \"shared\"\nembed_target = \"both\"");
    let shared = Plan::new(&Loaded::parse(&path, shared_text.clone()).unwrap()).unwrap();
    let embed = embed_items(&shared);
    assert_eq!(embed.len(), 2 * 2 * 2, "2 image sets × 2 ε × 2 seeds");
    assert!(embed.contains(&2), "the scenes' EmbedAttack is scored on seg and depth");
    let err = format!("{:#}", Loaded::parse(&path, shared_text.replace("embed_target = \"both\"", "")).err().unwrap());
    assert!(err.contains("embed_scope = \"shared\"") && err.contains("embed_target"), "{err}");
    let more = Plan::new(&Loaded::parse(&path, text.replace("\"8/255\"]", "\"8/255\", \"4/255\"]")).unwrap()).unwrap();
    let keys = |p: &Plan| p.items.iter().map(|i| i.key.clone()).collect::<std::collections::BTreeSet<_>>();
    assert!(keys(&plan).is_subset(&keys(&more)) && keys(&more).len() > keys(&plan).len());
    let heads = |p: &Plan| p.heads.iter().map(|h| h.key.clone()).collect::<Vec<_>>();
    let renamed = Plan::new(&Loaded::parse(&path, text.replace("name = \"seg\"", "name = \"segmentation\"")).unwrap()).unwrap();
    assert_eq!(heads(&renamed), heads(&plan));
    let retrained =
        Plan::new(&Loaded::parse(&path, text.replace("heads = [{ epochs = 4 }]", "heads = [{ epochs = 5 }]")).unwrap()).unwrap();
    assert_ne!(heads(&retrained), heads(&plan));
}

/// A cell's key carries the revision of its attack's definition past the first, so a store's
/// cells from an earlier definition are computed again: Square's keys (revision 2) are not those
/// the same experiment had before revisions existed (pinned below, from that code), while
/// SegPGD's (revision 1) still are. The scenes' keys do not depend on where the repository is.
#[test]
fn an_attack_of_a_new_revision_gets_new_keys() {
    use robust_ssl::attacks::spec::AttackKind;
    use robust_ssl::experiment::config::Loaded;
    use robust_ssl::experiment::plan::{Plan, Work};
    let tmp = tempfile::tempdir().unwrap();
    let path = experiment(tmp.path());
    let text =
        std::fs::read_to_string(&path).unwrap().replace("kinds = [\"embed\", \"task\"]", "kinds = [\"task\", \"square\"]\nqueries = 20");
    let plan = Plan::new(&Loaded::parse(&path, text).unwrap()).unwrap();
    let key = |kind: AttackKind, eps: &str| -> Vec<String> {
        let mut keys: Vec<String> = plan
            .items
            .iter()
            .filter(|i| matches!(&i.work, Work::Attack { params, task, .. } if params.kind == kind && plan.tasks[*task].name == "seg" && params.eps_text == eps))
            .map(|i| i.key.clone())
            .collect();
        keys.sort();
        keys
    };
    // Pinned from this experiment's plan with every revision at 1 (the keys before revisions).
    let before_square = ["4739d0ac4df8ebb24b21767068758a26", "f5a403ea07841db8e2e304e9569506e9"];
    let segpgd = ["0afccdc9dcc905a106617630bea685e5", "3ed5ce77ad27674179220477ddb068fc"];
    assert_eq!(AttackKind::Square.revision(), 2);
    let square = key(AttackKind::Square, "8/255");
    assert_eq!(square.len(), 2, "two seeds");
    assert!(square.iter().all(|k| !before_square.contains(&k.as_str())), "Square's cells of revision 1 would be reused: {square:?}");
    assert_eq!(AttackKind::Segpgd.revision(), 1);
    assert_eq!(key(AttackKind::Task, "8/255"), segpgd, "the keys of an unrevised attack changed: stores would recompute them");
}

/// `precision = "bf16"` on an encoder gives it keys of its own (f32 keys stay those pinned above);
/// where the CPU cannot run bf16, or the kernel is disabled, the file is refused at that line.
#[test]
fn a_bf16_encoder_gets_keys_of_its_own_or_is_refused_at_its_line() {
    use robust_ssl::experiment::config::Loaded;
    use robust_ssl::experiment::plan::Plan;
    let tmp = tempfile::tempdir().unwrap();
    let path = experiment(tmp.path());
    let f32_text = std::fs::read_to_string(&path).unwrap();
    let bf16_text = f32_text.replace("num_heads = 4\n", "num_heads = 4\nprecision = \"bf16\"\n");
    assert_ne!(f32_text, bf16_text);
    let keys = |text: &str| -> Vec<String> {
        Plan::new(&Loaded::parse(&path, text.to_string()).unwrap()).unwrap().items.iter().map(|i| i.key.clone()).collect()
    };
    if robust_ssl::encoder::bf16_gemm::supported() {
        let (a, b) = (keys(&f32_text), keys(&bf16_text));
        assert_eq!(a.len(), b.len());
        assert!(a.iter().all(|k| !b.contains(k)), "a bf16 encoder's work shares keys with the f32 one's");
    } else {
        let err = format!("{:#}", Plan::new(&Loaded::parse(&path, bf16_text).unwrap()).err().unwrap());
        assert!(err.contains("AVX512-BF16") && err.contains("tiny.toml:"), "{err}");
    }
    // Refused whatever the CPU when the kernel is disabled: from [run], at the encoder's line.
    std::fs::write(&path, f32_text.replace("[run]\n", "[run]\nprecision = \"bf16\"\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_robust-ssl"))
        .args(["run", "--dry-run", "--no-calibrate", &path.display().to_string()])
        .env(robust_ssl::encoder::bf16_gemm::DISABLE_ENV, "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("AVX512-BF16")
            && err.contains("ROBUST_SSL_DISABLE_BF16")
            && err.contains("tiny.toml:")
            && err.contains("precision from [run]"),
        "{err}"
    );
}
