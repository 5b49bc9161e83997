//! `.safetensors` files (Hugging Face, timm, or our own fine-tuned checkpoints).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::{Device, Tensor};

/// Every tensor of the file.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("{shown}: cannot read"))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| anyhow!("{shown}: not a valid safetensors file (truncated or corrupt?): {e}"))?;
    let mut tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}
