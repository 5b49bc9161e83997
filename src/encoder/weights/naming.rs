//! Name maps: from official DINO/DINOv2, timm and Hugging Face names to one canonical naming
//! (the official DINOv2 one with flat `blocks.N`, `mlp.fc1/fc2` for both FFN kinds).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::{Slot, SlotOp};

/// Which naming a checkpoint uses; it also decides the default position-embedding resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Source {
    /// facebookresearch/dino and dinov2 (hub weights and training checkpoints).
    #[serde(rename = "official")]
    Official,
    /// timm's DINOv2 conversions (`reg_token`, class position folded into `cls_token`).
    #[serde(rename = "timm")]
    Timm,
    /// Hugging Face transformers `Dinov2Model` / `ViTModel`.
    #[serde(rename = "huggingface")]
    HuggingFace,
    /// An ONNX graph exported from a Hugging Face model.
    #[serde(rename = "onnx")]
    Onnx,
}

pub(super) const OFFICIAL_MARKER: &str = "patch_embed.proj.weight";
pub(super) const HF_MARKER: &str = "embeddings.patch_embeddings.projection.weight";

/// The canonical tensors of one backbone.
pub struct Canonical {
    pub tensors: BTreeMap<String, Tensor>,
    /// canonical name → name in the file, for error messages.
    pub origin: BTreeMap<String, String>,
    /// The prefix the backbone was found under (`teacher.backbone.`, ``, ...).
    pub prefix: String,
    /// Other prefixes holding a backbone (e.g. `student.` beside `teacher.`).
    pub other_prefixes: Vec<String>,
    pub hf_naming: bool,
    pub timm_naming: bool,
    /// Names in the file that are not part of the backbone (heads, optimizer state, mask token).
    pub ignored: Vec<String>,
    /// How each backbone tensor of the input is cut from a canonical one (for writing back).
    pub slots: BTreeMap<String, Slot>,
}

/// Finds the backbone in a flat list of named tensors and renames it canonically.
/// `prefer` picks among several backbones (e.g. `student`); the default prefers `teacher`.
/// `class_position`: the position embedding is known to hold the class position first (an ONNX
/// graph's, whose patch grid need not be square); otherwise a `pos_embed` of a square number of
/// positions is timm's without it.
pub fn canonicalize(raw: Vec<(String, Tensor)>, prefer: Option<&str>, class_position: bool) -> Result<Canonical> {
    let mut prefixes: Vec<(String, bool)> = Vec::new();
    for (name, _) in &raw {
        for (marker, hf) in [(OFFICIAL_MARKER, false), (HF_MARKER, true)] {
            if let Some(p) = name.strip_suffix(marker) {
                if p.is_empty() || p.ends_with('.') {
                    prefixes.push((p.to_owned(), hf));
                }
            }
        }
    }
    if prefixes.is_empty() {
        let sample: Vec<&str> = raw.iter().take(6).map(|(n, _)| n.as_str()).collect();
        bail!(
            "no ViT backbone found: expected a tensor named '…{OFFICIAL_MARKER}' (official/timm) or \
             '…{HF_MARKER}' (Hugging Face); the file has names like {sample:?}"
        );
    }
    let score = |p: &str| -> (bool, bool, usize) {
        let wanted = match prefer {
            Some(want) => p.split('.').any(|s| s == want),
            None => p.contains("teacher"),
        };
        (!wanted, p.contains("student"), p.len())
    };
    prefixes.sort_by_key(|(p, _)| score(p));
    if let Some(want) = prefer {
        if !prefixes[0].0.split('.').any(|s| s == want) {
            let found: Vec<&str> = prefixes.iter().map(|(p, _)| p.as_str()).collect();
            bail!("no backbone under '{want}'; backbones were found under {found:?}");
        }
    }
    let (prefix, hf) = prefixes[0].clone();
    let other_prefixes = prefixes[1..].iter().map(|(p, _)| p.clone()).collect();

    let mut out = Canonical {
        tensors: BTreeMap::new(),
        origin: BTreeMap::new(),
        prefix: prefix.clone(),
        other_prefixes,
        hf_naming: hf,
        timm_naming: false,
        ignored: Vec::new(),
        slots: BTreeMap::new(),
    };
    let mut unknown = Vec::new();
    let mut qkv_parts: BTreeMap<(usize, String), [Option<Tensor>; 3]> = BTreeMap::new();
    for (name, tensor) in raw {
        let Some(local) = name.strip_prefix(&prefix) else {
            out.ignored.push(name);
            continue;
        };
        let mapped = if hf { map_hf(local) } else { map_official(local) };
        match mapped {
            Mapped::To(canon) => {
                if local == "reg_token" {
                    out.timm_naming = true;
                }
                out.slots.insert(name.clone(), Slot { canonical: canon.clone(), ops: vec![] });
                out.origin.insert(canon.clone(), name);
                out.tensors.insert(canon, tensor);
            }
            Mapped::Qkv(block, part, which) => {
                let canonical = format!("blocks.{block}.attn.qkv.{part}");
                let len = tensor.dim(0)?;
                out.slots.insert(
                    name.clone(),
                    Slot { canonical: canonical.clone(), ops: vec![SlotOp::Narrow { dim: 0, start: which * len, len }] },
                );
                out.origin.insert(canonical, name);
                qkv_parts.entry((block, part)).or_default()[which] = Some(tensor);
            }
            Mapped::Ignore => out.ignored.push(name),
            Mapped::Unknown => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        bail!(
            "{} tensor name(s) under the backbone prefix '{prefix}' are not part of a DINO/DINOv2 ViT: {:?}",
            unknown.len(),
            &unknown[..unknown.len().min(8)]
        );
    }
    for ((block, part), [q, k, v]) in qkv_parts {
        match (q, k, v) {
            (Some(q), Some(k), Some(v)) => {
                out.tensors.insert(format!("blocks.{block}.attn.qkv.{part}"), Tensor::cat(&[q, k, v], 0)?);
            }
            _ => bail!("block {block}: attention {part} needs query, key and value; one is missing"),
        }
    }
    // timm without class position: `pos_embed` holds only the M×M grid and `cls_token` already
    // includes its position; canonical form carries a zero class position.
    if let Some(pos) = out.tensors.get("pos_embed").filter(|_| !class_position) {
        let n = pos.dim(1)?;
        let side = (n as f64).sqrt().round() as usize;
        if side * side == n && n > 1 {
            let zeros = pos.narrow(1, 0, 1)?.zeros_like()?;
            let pos = Tensor::cat(&[&zeros, pos], 1)?;
            out.tensors.insert("pos_embed".into(), pos);
            for slot in out.slots.values_mut().filter(|s| s.canonical == "pos_embed") {
                slot.ops.insert(0, SlotOp::Narrow { dim: 1, start: 1, len: n });
            }
            out.timm_naming = true;
        }
    }
    Ok(out)
}

enum Mapped {
    To(String),
    /// (block, "weight"|"bias", 0 = query, 1 = key, 2 = value)
    Qkv(usize, String, usize),
    Ignore,
    Unknown,
}

const BLOCK_PARAMS: &[&str] = &[
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "ls1.gamma",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "ls2.gamma",
];

fn map_official(local: &str) -> Mapped {
    match local {
        "cls_token" | "pos_embed" | "patch_embed.proj.weight" | "patch_embed.proj.bias" | "norm.weight" | "norm.bias" => {
            return Mapped::To(local.into())
        }
        "register_tokens" | "reg_token" => return Mapped::To("register_tokens".into()),
        "mask_token" | "head.weight" | "head.bias" | "fc_norm.weight" | "fc_norm.bias" => return Mapped::Ignore,
        _ => {}
    }
    let Some(rest) = local.strip_prefix("blocks.") else { return Mapped::Unknown };
    let mut parts = rest.splitn(3, '.');
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else { return Mapped::Unknown };
    let Ok(first) = a.parse::<usize>() else { return Mapped::Unknown };
    // Chunked training checkpoints: blocks.<chunk>.<global index>.<param>.
    let (index, param) = match (b.parse::<usize>(), parts.next()) {
        (Ok(global), Some(param)) => (global, param.to_owned()),
        (Err(_), Some(tail)) => (first, format!("{b}.{tail}")),
        _ => return Mapped::Unknown,
    };
    let param = param.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2.");
    if BLOCK_PARAMS.contains(&param.as_str()) {
        Mapped::To(format!("blocks.{index}.{param}"))
    } else {
        Mapped::Unknown
    }
}

fn map_hf(local: &str) -> Mapped {
    match local {
        "embeddings.cls_token" => return Mapped::To("cls_token".into()),
        "embeddings.position_embeddings" => return Mapped::To("pos_embed".into()),
        "embeddings.register_tokens" => return Mapped::To("register_tokens".into()),
        "embeddings.patch_embeddings.projection.weight" => return Mapped::To("patch_embed.proj.weight".into()),
        "embeddings.patch_embeddings.projection.bias" => return Mapped::To("patch_embed.proj.bias".into()),
        "layernorm.weight" => return Mapped::To("norm.weight".into()),
        "layernorm.bias" => return Mapped::To("norm.bias".into()),
        "embeddings.mask_token" => return Mapped::Ignore,
        _ => {}
    }
    if local.starts_with("pooler.") || local.starts_with("classifier.") {
        return Mapped::Ignore;
    }
    // Hub checkpoints: encoder.layer.N; transformers 5 ViTModel: layers.N.
    let Some(rest) = ["encoder.layer.", "encoder.layers.", "layers."].iter().find_map(|p| local.strip_prefix(p)) else {
        return Mapped::Unknown;
    };
    let Some((index, param)) = rest.split_once('.') else { return Mapped::Unknown };
    let Ok(index) = index.parse::<usize>() else { return Mapped::Unknown };
    let Some((module, kind)) = param.rsplit_once('.') else { return Mapped::Unknown };
    let qkv = |which| Mapped::Qkv(index, kind.to_owned(), which);
    let canon = match module {
        // legacy (Hub) names, then transformers 5 names
        "attention.attention.query" | "attention.q_proj" => return qkv(0),
        "attention.attention.key" | "attention.k_proj" => return qkv(1),
        "attention.attention.value" | "attention.v_proj" => return qkv(2),
        "norm1" | "layernorm_before" => "norm1",
        "norm2" | "layernorm_after" => "norm2",
        "attention.output.dense" | "attention.o_proj" => "attn.proj",
        "layer_scale1" if kind == "lambda1" => return Mapped::To(format!("blocks.{index}.ls1.gamma")),
        "layer_scale2" if kind == "lambda1" => return Mapped::To(format!("blocks.{index}.ls2.gamma")),
        "mlp.fc1" | "mlp.weights_in" | "intermediate.dense" => "mlp.fc1",
        "mlp.fc2" | "mlp.weights_out" | "output.dense" => "mlp.fc2",
        _ => return Mapped::Unknown,
    };
    if kind == "weight" || kind == "bias" {
        Mapped::To(format!("blocks.{index}.{canon}.{kind}"))
    } else {
        Mapped::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(m: Mapped) -> String {
        match m {
            Mapped::To(s) => s,
            Mapped::Qkv(b, p, w) => format!("qkv {b} {p} {w}"),
            Mapped::Ignore => "ignore".into(),
            Mapped::Unknown => "unknown".into(),
        }
    }

    #[test]
    fn official_names_including_chunks_and_swiglu() {
        assert_eq!(name(map_official("blocks.3.attn.qkv.weight")), "blocks.3.attn.qkv.weight");
        assert_eq!(name(map_official("blocks.1.7.ls2.gamma")), "blocks.7.ls2.gamma");
        assert_eq!(name(map_official("blocks.39.mlp.w12.weight")), "blocks.39.mlp.fc1.weight");
        assert_eq!(name(map_official("blocks.0.mlp.w3.bias")), "blocks.0.mlp.fc2.bias");
        assert_eq!(name(map_official("reg_token")), "register_tokens");
        assert_eq!(name(map_official("mask_token")), "ignore");
        assert_eq!(name(map_official("blocks.0.attn.q.weight")), "unknown");
    }

    #[test]
    fn hf_names() {
        assert_eq!(name(map_hf("encoder.layer.2.attention.attention.key.bias")), "qkv 2 bias 1");
        assert_eq!(name(map_hf("encoder.layer.2.layer_scale1.lambda1")), "blocks.2.ls1.gamma");
        assert_eq!(name(map_hf("encoder.layer.0.layernorm_after.weight")), "blocks.0.norm2.weight");
        assert_eq!(name(map_hf("encoder.layer.0.intermediate.dense.weight")), "blocks.0.mlp.fc1.weight");
        assert_eq!(name(map_hf("encoder.layer.0.mlp.weights_out.bias")), "blocks.0.mlp.fc2.bias");
        assert_eq!(name(map_hf("encoder.layer.1.attention.v_proj.weight")), "qkv 1 weight 2");
        assert_eq!(name(map_hf("layers.3.attention.o_proj.bias")), "blocks.3.attn.proj.bias");
        assert_eq!(name(map_hf("pooler.dense.weight")), "ignore");
        assert_eq!(name(map_hf("encoder.layer.0.foo.weight")), "unknown");
    }
}
