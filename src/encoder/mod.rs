//! Encoders: DINO v1 / DINOv2 ViT backbones loaded from any checkpoint format, as the
//! differentiable front of the pipeline *pixels in [0,1] → normalize → encoder → head*.

pub mod arch;
mod fastmath;
mod frozen_linear;
mod fused;
pub mod layers;
pub mod pos_embed;
pub mod vit;
pub mod weights;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use arch::{ArchChoice, ArchOverrides, VitConfig};
use pos_embed::PosResize;
pub use vit::{Tokens, VisionTransformer};
use weights::{Checkpoint, Format, Source};

/// ImageNet statistics used by DINO and DINOv2.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How to load an encoder.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub arch: ArchChoice,
    /// Number of attention heads when it cannot be read from the file (default: 64-dim heads).
    pub heads: Option<usize>,
    /// Position-embedding resize semantics; default from the checkpoint's source.
    pub pos_resize: Option<PosResize>,
    /// Which backbone of a training checkpoint (`teacher`, `student`); default `teacher`.
    pub prefer: Option<String>,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { arch: ArchChoice::Auto, heads: None, pos_resize: None, prefer: None, device: Device::Cpu }
    }
}

/// Where an encoder came from, for `inspect` and result metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncoderInfo {
    pub file: String,
    pub format: Format,
    pub source: Source,
    pub prefix: String,
    pub other_prefixes: Vec<String>,
    pub arch: Option<String>,
    pub config: VitConfig,
    pub parameters: usize,
    pub pos_resize: PosResize,
    pub default_pos_resize: PosResize,
    pub ignored_tensors: usize,
    /// True when the head count was neither given nor stated by the file (64-dim heads assumed).
    pub heads_assumed: bool,
}

/// A loaded encoder: normalization + ViT.
pub struct Encoder {
    pub vit: VisionTransformer,
    pub info: EncoderInfo,
    mean: Tensor,
    std: Tensor,
}

impl Encoder {
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let mut ckpt = Checkpoint::load(path, opts.prefer.as_deref())?;
        let facts = ckpt.shape_facts()?;
        let over = ArchOverrides {
            arch: match opts.arch {
                ArchChoice::Auto => None,
                ArchChoice::Named(a) => Some(a),
            },
            num_heads: opts.heads,
            ln_eps: ckpt.eps_hint,
        };
        let heads_hint = ckpt.heads_hint(facts.embed_dim);
        let heads_assumed = opts.heads.is_none() && over.arch.is_none() && heads_hint.is_none();
        let config = arch::resolve(&facts, &over, heads_hint).with_context(|| format!("{}", path.display()))?;
        let default_pos_resize = arch::default_pos_resize(ckpt.source, config.num_registers);
        let pos_resize = opts.pos_resize.unwrap_or(default_pos_resize);
        let info = EncoderInfo {
            file: path.display().to_string(),
            format: ckpt.format,
            source: ckpt.source,
            prefix: ckpt.prefix.clone(),
            other_prefixes: ckpt.other_prefixes.clone(),
            arch: config.official_name(),
            config: config.clone(),
            parameters: ckpt.parameter_count(),
            pos_resize,
            default_pos_resize,
            ignored_tensors: ckpt.ignored.len(),
            heads_assumed,
        };
        if heads_assumed && config.official_name().is_none() {
            eprintln!(
                "warning: {}: the file does not state the number of attention heads; assuming 64-dim heads \
                 ({} head(s)) for this custom width {}. Pass --heads if that is wrong.",
                path.display(),
                config.num_heads,
                config.embed_dim
            );
        }
        let vit = VisionTransformer::load(&mut ckpt, config, pos_resize)?;
        let vit = if opts.device.is_cpu() { vit } else { vit.to(&opts.device, DType::F32)? };
        Self::from_vit(vit, info)
    }

    pub fn from_vit(vit: VisionTransformer, info: EncoderInfo) -> Result<Self> {
        let dev = vit.device().clone();
        let dtype = vit.dtype();
        let mean = Tensor::from_slice(&IMAGENET_MEAN, (1, 3, 1, 1), &dev)?.to_dtype(dtype)?;
        let std = Tensor::from_slice(&IMAGENET_STD, (1, 3, 1, 1), &dev)?.to_dtype(dtype)?;
        Ok(Self { vit, info, mean, std })
    }

    /// A copy in another float type / on another device.
    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_vit(self.vit.to(device, dtype)?, self.info.clone())
    }

    pub fn config(&self) -> &VitConfig {
        &self.vit.config
    }

    /// ImageNet normalization, inside the differentiable pipeline.
    pub fn normalize(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(pixels.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?)
    }

    /// `pixels`: `[B, 3, H, W]` in [0, 1] (not normalized).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tokens> {
        let pixels = if pixels.dtype() == self.vit.dtype() { pixels.clone() } else { pixels.to_dtype(self.vit.dtype())? };
        self.vit.forward(&self.normalize(&pixels)?)
    }
}
