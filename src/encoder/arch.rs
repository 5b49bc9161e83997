//! What a ViT backbone *is*: its hyper-parameters, the named architectures of DINO v1 and DINOv2,
//! and the inference of an architecture from the shapes of a checkpoint's tensors.

use std::fmt;

use anyhow::{bail, Result};

/// The self-supervised family a backbone comes from (only a label: the maths is shared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Family {
    #[serde(rename = "dino")]
    DinoV1,
    #[serde(rename = "dinov2")]
    DinoV2,
}

/// The feed-forward network of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FfnKind {
    /// fc1 → exact (erf) GELU → fc2.
    Mlp,
    /// w12 → chunk → silu(x1)·x2 → w3 (DINOv2 ViT-g).
    SwiGlu,
}

/// Every hyper-parameter the forward pass needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VitConfig {
    pub family: Family,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// Hidden width of the FFN (for SwiGLU: the width of one half of w12's output).
    pub ffn_hidden: usize,
    pub ffn: FfnKind,
    pub num_registers: usize,
    pub layer_scale: bool,
    pub qkv_bias: bool,
    /// Side of the square grid the position embedding was trained on (37 for DINOv2 at 518 px);
    /// 0 where the grid is fixed.
    pub pos_grid: usize,
    /// The only patch grid (rows, columns) the model runs at: an ONNX graph exported with its
    /// position embedding computed for one input size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_grid: Option<(usize, usize)>,
    pub ln_eps: f64,
}

impl VitConfig {
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// The official name of this architecture when it is one of the released ones.
    pub fn official_name(&self) -> Option<String> {
        let size = match (self.embed_dim, self.depth) {
            (384, 12) => "s",
            (768, 12) => "b",
            (1024, 24) => "l",
            (1536, 40) => "g",
            _ => return None,
        };
        let prefix = match self.family {
            Family::DinoV1 => "dino",
            Family::DinoV2 => "dinov2",
        };
        let reg = if self.num_registers > 0 { "_reg" } else { "" };
        Some(format!("{prefix}_vit{size}{}{reg}", self.patch_size))
    }
}

/// A named architecture as given to `--arch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedArch {
    pub family: Family,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub ffn: FfnKind,
    pub num_registers: usize,
}

/// The names `--arch` accepts besides `auto`.
pub const ARCH_NAMES: &[&str] = &[
    "dino_vits16",
    "dino_vits8",
    "dino_vitb16",
    "dino_vitb8",
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vitl14",
    "dinov2_vitg14",
    "dinov2_vits14_reg",
    "dinov2_vitb14_reg",
    "dinov2_vitl14_reg",
    "dinov2_vitg14_reg",
];

impl NamedArch {
    pub fn parse(name: &str) -> Result<Self> {
        let (base, num_registers) = match name.strip_suffix("_reg") {
            Some(base) => (base, 4),
            None => (name, 0),
        };
        let (family, rest) = if let Some(rest) = base.strip_prefix("dinov2_vit") {
            (Family::DinoV2, rest)
        } else if let Some(rest) = base.strip_prefix("dino_vit") {
            (Family::DinoV1, rest)
        } else {
            bail!("unknown architecture '{name}'; expected auto or one of: {}", ARCH_NAMES.join(", "))
        };
        let (size, patch) = rest.split_at(1.min(rest.len()));
        let patch_size: usize = patch.parse().unwrap_or(0);
        let (embed_dim, depth, num_heads) = match size {
            "s" => (384, 12, 6),
            "b" => (768, 12, 12),
            "l" => (1024, 24, 16),
            "g" => (1536, 40, 24),
            _ => (0, 0, 0),
        };
        let valid = match family {
            Family::DinoV1 => matches!(patch_size, 8 | 16) && matches!(size, "s" | "b") && num_registers == 0,
            Family::DinoV2 => patch_size == 14 && embed_dim > 0,
        };
        if !valid {
            bail!("unknown architecture '{name}'; expected auto or one of: {}", ARCH_NAMES.join(", "))
        }
        let ffn = if size == "g" { FfnKind::SwiGlu } else { FfnKind::Mlp };
        Ok(Self { family, patch_size, embed_dim, depth, num_heads, ffn, num_registers })
    }
}

/// `--arch auto` or a named architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchChoice {
    Auto,
    Named(NamedArch),
}

impl std::str::FromStr for ArchChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            Ok(Self::Auto)
        } else {
            Ok(Self::Named(NamedArch::parse(s)?))
        }
    }
}

/// The usual number of heads for a width: every released DINO/DINOv2 ViT uses 64-dim heads.
pub fn default_heads(embed_dim: usize) -> usize {
    if embed_dim.is_multiple_of(64) {
        embed_dim / 64
    } else {
        1
    }
}

/// Shapes read off a checkpoint, from which the architecture is inferred.
#[derive(Debug, Clone)]
pub struct ShapeFacts {
    pub embed_dim: usize,
    pub patch_size: usize,
    pub depth: usize,
    pub ffn_hidden: usize,
    pub ffn: FfnKind,
    pub num_registers: usize,
    pub layer_scale: bool,
    pub qkv_bias: bool,
    /// Side of the square position grid (0 when `fixed_grid` is set).
    pub pos_grid: usize,
    /// The one patch grid (rows, columns) a position embedding baked in at export fixes.
    pub fixed_grid: Option<(usize, usize)>,
}

/// Overrides the user may give on top of what the checkpoint says.
#[derive(Debug, Clone, Default)]
pub struct ArchOverrides {
    pub arch: Option<NamedArch>,
    pub num_heads: Option<usize>,
    pub ln_eps: Option<f64>,
}

/// Combine the shapes found in a checkpoint with `--arch`/`--num-heads`; a named architecture that
/// disagrees with the shapes is an error that says which quantity differs.
pub fn resolve(facts: &ShapeFacts, over: &ArchOverrides, heads_hint: Option<usize>) -> Result<VitConfig> {
    if let Some(named) = over.arch {
        let checks = [
            ("embedding width", named.embed_dim, facts.embed_dim),
            ("patch size", named.patch_size, facts.patch_size),
            ("depth (number of blocks)", named.depth, facts.depth),
            ("register tokens", named.num_registers, facts.num_registers),
        ];
        for (what, expected, found) in checks {
            if expected != found {
                bail!("--arch expects {what} {expected} but the checkpoint has {found}");
            }
        }
        if named.ffn != facts.ffn {
            bail!("--arch expects a {:?} feed-forward network but the checkpoint has {:?}", named.ffn, facts.ffn);
        }
    }
    let family = match over.arch {
        Some(named) => named.family,
        None if facts.patch_size == 14 || facts.layer_scale || facts.num_registers > 0 => Family::DinoV2,
        None => Family::DinoV1,
    };
    let num_heads = over.num_heads.or(over.arch.map(|a| a.num_heads)).or(heads_hint).unwrap_or_else(|| default_heads(facts.embed_dim));
    if num_heads == 0 || !facts.embed_dim.is_multiple_of(num_heads) {
        bail!("{num_heads} attention heads do not divide the embedding width {}", facts.embed_dim);
    }
    Ok(VitConfig {
        family,
        patch_size: facts.patch_size,
        embed_dim: facts.embed_dim,
        depth: facts.depth,
        num_heads,
        ffn_hidden: facts.ffn_hidden,
        ffn: facts.ffn,
        num_registers: facts.num_registers,
        layer_scale: facts.layer_scale,
        qkv_bias: facts.qkv_bias,
        pos_grid: facts.pos_grid,
        fixed_grid: facts.fixed_grid,
        ln_eps: over.ln_eps.unwrap_or(1e-6),
    })
}

impl VitConfig {
    /// `4x4`, or `4x3 (fixed)` for a model that runs at one grid only.
    pub fn pos_grid_text(&self) -> String {
        match self.fixed_grid {
            Some((rows, cols)) => format!("{rows}x{cols} (fixed)"),
            None => format!("{0}x{0}", self.pos_grid),
        }
    }
}

impl fmt::Display for VitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.official_name().unwrap_or_else(|| "custom".into());
        write!(
            f,
            "{name}: {:?}, patch {}, width {}, depth {}, heads {}, ffn {:?} ({}), registers {}, \
             layer scale {}, position grid {}, LayerNorm eps {:e}",
            self.family,
            self.patch_size,
            self.embed_dim,
            self.depth,
            self.num_heads,
            self.ffn,
            self.ffn_hidden,
            self.num_registers,
            self.layer_scale,
            self.pos_grid_text(),
            self.ln_eps
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_named_arch() {
        for name in ARCH_NAMES {
            let a = NamedArch::parse(name).unwrap();
            assert_eq!(a.embed_dim / a.num_heads, 64, "{name}");
        }
        assert!(NamedArch::parse("dino_vitg14").is_err());
        assert!(NamedArch::parse("dinov2_vits16").is_err());
        assert!(NamedArch::parse("resnet50").is_err());
        let g = NamedArch::parse("dinov2_vitg14_reg").unwrap();
        assert_eq!((g.embed_dim, g.depth, g.ffn, g.num_registers), (1536, 40, FfnKind::SwiGlu, 4));
    }

    #[test]
    fn named_arch_must_match_shapes() {
        let facts = ShapeFacts {
            embed_dim: 384,
            patch_size: 14,
            depth: 12,
            ffn_hidden: 1536,
            ffn: FfnKind::Mlp,
            num_registers: 0,
            layer_scale: true,
            qkv_bias: true,
            pos_grid: 37,
            fixed_grid: None,
        };
        let ok = ArchOverrides { arch: Some(NamedArch::parse("dinov2_vits14").unwrap()), ..Default::default() };
        let cfg = resolve(&facts, &ok, None).unwrap();
        assert_eq!(cfg.official_name().as_deref(), Some("dinov2_vits14"));
        let bad = ArchOverrides { arch: Some(NamedArch::parse("dinov2_vitb14").unwrap()), ..Default::default() };
        let err = resolve(&facts, &bad, None).unwrap_err().to_string();
        assert!(err.contains("embedding width 768") && err.contains("384"), "{err}");
    }
}
