//! `robust-ssl bench`: encoder throughput at a given batch and image size (see BENCHMARKS.md for
//! the PyTorch comparison script).

use anyhow::Result;
use clap::Args;

use super::EncoderArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Square image side in pixels.
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Also time the attack engine over this many PGD steps (0: skip).
    #[arg(long, default_value_t = 0)]
    pub attack_steps: usize,
    /// Also time DeACL fine-tuning over this many steps, after one untimed step (0: skip).
    #[arg(long, default_value_t = 0)]
    pub finetune_steps: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let enc = a.encoder.load()?;
    let mut t = robust_ssl::perf::measure(&enc, a.batch_size, a.size, a.warmup, a.iters.max(1))?;
    if a.attack_steps > 0 {
        t.attack_steps_per_s = Some(robust_ssl::perf::attack_steps_per_s(&enc, a.batch_size, a.size, a.attack_steps)?);
    }
    if a.finetune_steps > 0 {
        t.finetune_steps_per_s = Some(robust_ssl::perf::finetune_steps_per_s(&enc, a.batch_size, a.size, a.finetune_steps)?);
    }
    if a.json {
        println!("{}", serde_json::to_string(&t)?);
    } else {
        println!(
            "{} batch {} @{}px: forward {:.3} s/batch ({:.1} img/s), forward+backward-to-input {:.3} s/batch ({:.1} img/s)",
            enc.info.arch.as_deref().unwrap_or("custom ViT"),
            t.batch,
            t.size,
            t.forward_s,
            t.batch as f64 / t.forward_s,
            t.forward_backward_s,
            t.batch as f64 / t.forward_backward_s
        );
        if let Some(s) = t.attack_steps_per_s {
            println!("attack engine (EmbedAttack, PGD L∞): {s:.3} steps/s ({:.3} s/step)", 1.0 / s);
        }
        if let Some(s) = t.finetune_steps_per_s {
            println!("DeACL fine-tuning (5-step inner PGD, SGD): {s:.3} steps/s ({:.3} s/step)", 1.0 / s);
        }
    }
    Ok(())
}
