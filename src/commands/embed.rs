//! `robust-ssl embed`: images in, CLS and patch tokens out (`.safetensors`, written atomically).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
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

pub fn run(a: &EmbedArgs) -> Result<()> {
    robust_ssl::atomic::check_parent(&a.output)?;
    let enc = a.encoder.load()?;
    let batch = load_images(&a.input)?;
    let (n, _, h, w) = batch.images.dims4()?;
    let p = enc.config().patch_size;
    if h % p != 0 || w % p != 0 {
        bail!("{}: images are {h}x{w}, but both sides must be multiples of the patch size {p}", a.input.display());
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let (mut cls, mut patch) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let len = a.batch_size.min(n - start);
        let x = batch.images.narrow(0, start, len)?.to_device(enc.vit.device())?;
        let t = enc.forward(&x)?;
        cls.push(t.cls.to_device(&candle_core::Device::Cpu)?);
        patch.push(t.patch.to_device(&candle_core::Device::Cpu)?);
        start += len;
    }
    let out = HashMap::from([("cls".to_string(), Tensor::cat(&cls, 0)?), ("patch".to_string(), Tensor::cat(&patch, 0)?)]);
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
