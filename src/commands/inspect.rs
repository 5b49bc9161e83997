//! `robust-ssl inspect FILE`: what a checkpoint holds, as text or JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::ModelOptions;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Checkpoint file (.pth, .safetensors, .onnx) or model folder (weights + config.json).
    pub file: PathBuf,
    #[command(flatten)]
    pub model: ModelOptions,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &InspectArgs) -> Result<()> {
    let enc = a.model.load(&a.file, candle_core::Device::Cpu)?;
    let i = &enc.info;
    if a.json {
        println!("{}", serde_json::to_string_pretty(i)?);
        return Ok(());
    }
    let c = &i.config;
    println!("file:            {}", i.file);
    println!("format:          {:?}", i.format);
    println!("naming:          {:?}", i.source);
    println!("architecture:    {}", i.arch.as_deref().unwrap_or("custom (not a released size)"));
    println!("  family {:?}, patch {}, width {}, depth {}, heads {}", c.family, c.patch_size, c.embed_dim, c.depth, c.num_heads);
    println!(
        "  ffn {:?} hidden {}, registers {}, layer scale {}, qkv bias {}",
        c.ffn, c.ffn_hidden, c.num_registers, c.layer_scale, c.qkv_bias
    );
    let grid = match c.fixed_grid {
        Some((rows, cols)) => {
            format!(
                "{rows}x{cols}, fixed ({}x{} px at patch {}: the only size the graph runs at)",
                rows * c.patch_size,
                cols * c.patch_size,
                c.patch_size
            )
        }
        None => format!("{0}x{0} ({1} px at patch {2})", c.pos_grid, c.pos_grid * c.patch_size, c.patch_size),
    };
    println!("  position grid {grid}, LayerNorm eps {:e}", c.ln_eps);
    println!("parameters:      {} ({:.1} M)", i.parameters, i.parameters as f64 / 1e6);
    let d = &i.default_pos_resize;
    if i.pos_resize == d.semantics {
        println!("pos resize:      {} ({})", i.pos_resize, d.reason);
    } else {
        println!("pos resize:      {} (given; the default is {}: {})", i.pos_resize, d.semantics, d.reason);
    }
    if d.ambiguous {
        println!("                 the file cannot tell its writer: pass --pos-resize for another library's semantics");
    }
    if !i.prefix.is_empty() {
        println!("backbone under:  '{}'", i.prefix);
    }
    if !i.other_prefixes.is_empty() {
        println!("also found:      {:?} (choose with --backbone)", i.other_prefixes);
    }
    if i.ignored_tensors > 0 {
        println!("ignored:         {} tensors outside the backbone (heads, mask token, optimizer state)", i.ignored_tensors);
    }
    Ok(())
}
