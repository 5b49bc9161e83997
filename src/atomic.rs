//! Writing files so that a run killed at any moment leaves either the old file or the whole new
//! one: write beside the target under a temporary name unique to this process, then rename.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// `.NAME.PID.tmp` beside `path`.
pub fn tmp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Fails, naming `path`, when the folder it would be written to does not exist.
pub fn check_parent(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("{}: the output folder {} does not exist", path.display(), dir.display());
    }
    Ok(())
}

/// Renames the finished temporary file `tmp` to `path`.
pub fn commit(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_beside(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    commit(&tmp, path)
}

/// Writes candle tensors as `.safetensors` to `path` atomically.
pub fn save_safetensors(tensors: &std::collections::HashMap<String, candle_core::Tensor>, path: &Path) -> Result<()> {
    let tmp = tmp_beside(path);
    candle_core::safetensors::save(tensors, &tmp).with_context(|| format!("{}: cannot write", tmp.display()))?;
    commit(&tmp, path)
}
