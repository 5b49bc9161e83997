//! `convert`: a checkpoint's backbone as a .safetensors file in Meta's DINOv2 layout (the names
//! and shapes of the released `dinov2_vit*14` files), in f32, f16 or bf16. For carrying a model
//! where only a small safetensors file travels (`tools/gpu_prepare.sh`), or for reading any
//! supported container (official .pth, timm, Hugging Face, ONNX) with the tools of another library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::{choice, EncoderArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    Bf16,
}
robust_ssl::choices!(StoredDtype { F32 = "f32", F16 = "f16", Bf16 = "bf16" });

#[derive(Args, Debug)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub encoder: EncoderArgs,
    /// The .safetensors file to write.
    #[arg(long)]
    pub output: PathBuf,
    /// The dtype the weights are stored in (they load as f32 either way).
    #[arg(long, value_parser = choice::<StoredDtype>(), default_value_t = StoredDtype::F32)]
    pub dtype: StoredDtype,
}

pub fn run(a: &ConvertArgs) -> Result<()> {
    let enc = a.encoder.load()?;
    let dtype = match a.dtype {
        StoredDtype::F32 => candle_core::DType::F32,
        StoredDtype::F16 => candle_core::DType::F16,
        StoredDtype::Bf16 => candle_core::DType::BF16,
    };
    let tensors = enc
        .vit
        .checkpoint_tensors()?
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_device(&candle_core::Device::Cpu)?.to_dtype(dtype)?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    candle_core::safetensors::save(&tensors, &a.output).with_context(|| format!("{}: cannot write", a.output.display()))?;
    println!(
        "{}: {} tensors of {} ({}), {}",
        a.output.display(),
        tensors.len(),
        enc.info.arch.as_deref().unwrap_or("a custom ViT"),
        a.encoder.checkpoint.display(),
        a.dtype
    );
    Ok(())
}
