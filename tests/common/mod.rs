//! Helpers shared by the tests that run the `robust-ssl` binary as a user would.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The tiny DINOv2 fixture (2 blocks, width 64, 4 heads, patch 14).
pub fn tiny_encoder() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder/dinov2_official.pth").display().to_string()
}

/// Runs the binary: (success, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_robust-ssl")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Runs and expects success with JSON on stdout.
pub fn ok_json(args: &[&str]) -> Value {
    let (ok, out, err) = run(args);
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// Runs and expects a clean failure whose message contains every `needle`.
pub fn fails_with(args: &[&str], needles: &[&str]) {
    let (ok, _, err) = run(args);
    assert!(!ok, "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: the error should mention '{n}': {err}");
    }
}

/// A path under tests/fixtures.
pub fn fixture(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p).display().to_string()
}

/// A tiny experiment in `dir`: three tasks (seg and depth on the same scenes), two ε, two seeds, EmbedAttack and task attacks.
pub fn tiny_experiment(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"name = "tiny"
[run]
size = 28
attack_batch_size = 4
examples = 2

[[encoder]]
name = "tiny"
checkpoint = "{enc}"
num_heads = 4

[[task]]
name = "cifar"
task = "cls"
train = {{ dataset = "cifar10:{cifar}" }}
eval = {{ dataset = "cifar10:{cifar}", split = "test" }}
heads = [{{ epochs = 20, batch_size = 4 }}]

[[task]]
name = "seg"
task = "seg"
train = {{ dataset = "synthetic-seg:12x28" }}
eval = {{ dataset = "synthetic-seg:8x28" }}
images = "scenes"
heads = [{{ epochs = 4 }}]

[[task]]
name = "depth"
task = "depth"
train = {{ dataset = "synthetic-depth:12x28" }}
eval = {{ dataset = "synthetic-depth:8x28" }}
images = "scenes"
heads = [{{ epochs = 4 }}]

[[attack]]
kinds = ["embed", "task"]
eps = ["2/255", "8/255"]
steps = 4
seeds = [0, 1]
"#,
        enc = tiny_encoder(),
        cifar = fixture("data/cifar-10-batches-bin")
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}
