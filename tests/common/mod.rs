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
