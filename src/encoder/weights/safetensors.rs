//! `.safetensors` files (Hugging Face, timm, or our own fine-tuned checkpoints), and the hints a
//! Hugging Face `config.json` beside them gives (heads, LayerNorm eps).

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

/// What a Hugging Face `config.json` beside the weights says about the architecture.
#[derive(Debug, Default, Clone)]
pub struct ConfigHints {
    pub num_heads: Option<usize>,
    pub ln_eps: Option<f64>,
}

/// Reads `config.json` next to `weights` when there is one.
pub fn config_hints(weights: &Path) -> Result<ConfigHints> {
    let Some(config) = weights.parent().map(|d| d.join("config.json")).filter(|p| p.is_file()) else {
        return Ok(ConfigHints::default());
    };
    let text = std::fs::read_to_string(&config).with_context(|| format!("{}: cannot read", config.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", config.display()))?;
    Ok(ConfigHints {
        num_heads: json.get("num_attention_heads").and_then(|v| v.as_u64()).map(|v| v as usize),
        ln_eps: json.get("layer_norm_eps").and_then(|v| v.as_f64()),
    })
}
