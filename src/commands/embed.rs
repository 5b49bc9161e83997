//! `robust-ssl embed`: images in, CLS and patch tokens out (`.safetensors`, written atomically).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use clap::Args;

use super::EncoderArgs;
use robust_ssl::input::load_images;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub encoder: EncoderArgs,
    /// Images: a .safetensors file with tensor `images` (f32 [N,3,H,W] in [0,1]), an image file, or a folder.
    #[arg(long)]
    pub input: PathBuf,
    /// Output .safetensors with `cls` [N,D] and `patch` [N,P,D].
    #[arg(long)]
    pub output: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

/// CLS `[N, D]` and patch tokens `[N, P, D]` (after the final norm) of `images` `[N, 3, H, W]`
/// in [0, 1], `batch_size` images per forward pass.
pub fn embed(enc: &robust_ssl::encoder::Encoder, images: &Tensor, batch_size: usize) -> Result<(Tensor, Tensor)> {
    let (n, _, h, w) = images.dims4()?;
    let p = enc.config().patch_size;
    if h % p != 0 || w % p != 0 {
        bail!("images are {h}x{w}, but both sides must be multiples of the patch size {p}");
    }
    if batch_size == 0 {
        bail!("the batch size must be at least 1");
    }
    let (mut cls, mut patch) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        let x = images.narrow(0, start, len)?.to_device(enc.vit.device())?;
        let t = enc.forward(&x)?;
        cls.push(t.cls.to_device(&candle_core::Device::Cpu)?);
        patch.push(t.patch.to_device(&candle_core::Device::Cpu)?);
        start += len;
    }
    Ok((Tensor::cat(&cls, 0)?, Tensor::cat(&patch, 0)?))
}

pub fn run(a: &EmbedArgs) -> Result<()> {
    robust_ssl::atomic::check_parent(&a.output)?;
    let enc = a.encoder.load()?;
    let batch = load_images(&a.input)?;
    let (n, _, h, w) = batch.images.dims4()?;
    let p = enc.config().patch_size;
    let (cls, patch) = embed(&enc, &batch.images, a.batch_size).with_context(|| a.input.display().to_string())?;
    let out = HashMap::from([("cls".to_string(), cls), ("patch".to_string(), patch)]);
    robust_ssl::atomic::save_safetensors(&out, &a.output)?;
    eprintln!(
        "embedded {n} image(s) of {h}x{w} with {}: cls [{n}, {d}], patch [{n}, {}, {d}] -> {}",
        enc.info.arch.as_deref().unwrap_or("custom ViT"),
        (h / p) * (w / p),
        a.output.display(),
        d = enc.config().embed_dim
    );
    Ok(())
}
