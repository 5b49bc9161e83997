//! Model folders as Hugging Face transformers (`save_pretrained`) and timm (`save_for_hf`) write
//! them: the weights file inside, and the `config.json` beside it (who wrote the folder, what it
//! states about the architecture).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Weight files a model folder may hold, in the order they are preferred.
const WEIGHT_FILES: &[&str] = &["model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "model.onnx"];

/// `path` itself when it is a file; the weights inside it when it is a model folder.
pub fn weights_file(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    if !path.is_dir() {
        return Ok(path.to_owned());
    }
    if let Some(found) = WEIGHT_FILES.iter().map(|f| path.join(f)).find(|p| p.is_file()) {
        return Ok(found);
    }
    let mut names: Vec<String> = std::fs::read_dir(path)
        .with_context(|| format!("{}: cannot list the folder", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    if names.iter().any(|n| n.ends_with(".index.json")) {
        bail!("{}: sharded weights (an *.index.json) are not supported; save the model as one file", path.display());
    }
    bail!("{}: a model folder must hold one of {WEIGHT_FILES:?}; it holds {names:?}", path.display())
}

/// The library that wrote a model folder, told by its `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// timm: `architecture` (one name) and `pretrained_cfg`.
    Timm,
    /// transformers: `model_type` / `architectures`.
    Transformers,
}

/// What a `config.json` beside the weights says.
#[derive(Debug, Default, Clone)]
pub struct ConfigHints {
    pub writer: Option<Writer>,
    pub num_heads: Option<usize>,
    pub ln_eps: Option<f64>,
    /// The `config.json` read, for messages.
    pub file: Option<String>,
}

/// Reads `config.json` next to `weights` when there is one.
pub fn config_hints(weights: &Path) -> Result<ConfigHints> {
    let Some(config) = weights.parent().map(|d| d.join("config.json")).filter(|p| p.is_file()) else {
        return Ok(ConfigHints::default());
    };
    let text = std::fs::read_to_string(&config).with_context(|| format!("{}: cannot read", config.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", config.display()))?;
    let writer = if json.get("architecture").is_some_and(|v| v.is_string()) || json.get("pretrained_cfg").is_some() {
        Some(Writer::Timm)
    } else if json.get("model_type").is_some() || json.get("architectures").is_some() {
        Some(Writer::Transformers)
    } else {
        None
    };
    // timm keeps its constructor overrides under `model_args`.
    let args = json.get("model_args");
    let num_heads = json.get("num_attention_heads").or(args.and_then(|a| a.get("num_heads")));
    Ok(ConfigHints {
        writer,
        num_heads: num_heads.and_then(|v| v.as_u64()).map(|v| v as usize),
        ln_eps: json.get("layer_norm_eps").and_then(|v| v.as_f64()),
        file: Some(config.display().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(text: &str) -> ConfigHints {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        config_hints(&dir.path().join("model.safetensors")).unwrap()
    }

    #[test]
    fn a_folder_gives_its_weights_or_says_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let err = format!("{:#}", weights_file(dir.path()).unwrap_err());
        assert!(err.contains("model.safetensors") && err.contains("notes.txt"), "{err}");
        std::fs::write(dir.path().join("model.safetensors"), "x").unwrap();
        assert_eq!(weights_file(dir.path()).unwrap(), dir.path().join("model.safetensors"));
        assert!(format!("{:#}", weights_file(&dir.path().join("nope")).unwrap_err()).contains("no such file"));
    }

    #[test]
    fn tells_timm_from_transformers() {
        let t = hints(
            r#"{"architecture": "vit_small_patch14_dinov2", "num_classes": 0, "pretrained_cfg": {}, "model_args": {"num_heads": 4}}"#,
        );
        assert_eq!((t.writer, t.num_heads), (Some(Writer::Timm), Some(4)));
        let h = hints(r#"{"model_type": "dinov2", "num_attention_heads": 6, "layer_norm_eps": 1e-6}"#);
        assert_eq!((h.writer, h.num_heads, h.ln_eps), (Some(Writer::Transformers), Some(6), Some(1e-6)));
        assert_eq!(hints("{}").writer, None);
    }
}
