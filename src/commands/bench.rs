//! `robust-ssl bench`: encoder throughput at a given batch and image size (see BENCHMARKS.md for
//! the PyTorch comparison script).

use anyhow::Result;
use clap::Args;

use super::EncoderArgs;
use robust_ssl::heads::sliding::{Tiling, Window};

/// `HxW` in pixels.
fn parse_hw(s: &str) -> Result<(usize, usize), String> {
    s.split_once('x')
        .and_then(|(h, w)| Some((h.parse().ok()?, w.parse().ok()?)))
        .filter(|&(h, w): &(usize, usize)| h > 0 && w > 0)
        .ok_or_else(|| format!("'{s}' should be HxW in pixels, e.g. 224x448"))
}

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
    /// Also time the attack engine over this many PGD steps (0: skip): the second of two such
    /// attacks, the first paying the process's one-time costs.
    #[arg(long, default_value_t = 0)]
    pub attack_steps: usize,
    /// With --attack-steps: also time the attack on whole images of --image through these
    /// windows (CROP:STRIDE, or whole), against the one-crop attack at CROP.
    #[arg(long)]
    pub window: Option<Window>,
    /// Whole-image size for --window, HxW (default: --size square).
    #[arg(long, value_parser = parse_hw)]
    pub image: Option<(usize, usize)>,
    /// Also time DeACL fine-tuning over this many steps, after one untimed step (0: skip).
    #[arg(long, default_value_t = 0)]
    pub finetune_steps: usize,
    /// Also time the encoder's linear layers alone (f32 and, where the CPU has AVX512-BF16,
    /// bf16) at batch × tokens rows, against the machine's measured peak.
    #[arg(long)]
    pub linear: bool,
    #[arg(long)]
    pub json: bool,
    /// Print only the figures two devices must agree on (seeded inputs: a random projection of the
    /// tokens, its pixel gradient, the per-sample losses of --attack-steps PGD steps) as JSON.
    #[arg(long)]
    pub parity: bool,
}

pub fn run(a: &BenchArgs) -> Result<()> {
    let enc = a.encoder.load()?;
    if a.parity {
        let p = robust_ssl::perf::parity::parity(&enc, a.batch_size, a.size, a.attack_steps)?;
        println!("{}", serde_json::to_string(&p)?);
        return Ok(());
    }
    let mut t = robust_ssl::perf::measure(&enc, a.batch_size, a.size, a.warmup, a.iters.max(1))?;
    if a.attack_steps > 0 {
        t.attack_steps_per_s = Some(robust_ssl::perf::attack_steps_per_s(&enc, a.batch_size, a.size, a.attack_steps)?);
    }
    let mut windowed = None;
    if let (Some(window), true) = (a.window, a.attack_steps > 0) {
        let image = a.image.unwrap_or((a.size, a.size));
        let tiling = Tiling::new(image.0, image.1, window, enc.config().patch_size)?;
        let crop = tiling.padded;
        let one = robust_ssl::perf::window_attack_steps_per_s(&enc, a.batch_size, crop, None, a.attack_steps)?;
        let whole = robust_ssl::perf::window_attack_steps_per_s(&enc, a.batch_size, image, Some(window), a.attack_steps)?;
        windowed = Some(serde_json::json!({
            "window": window, "image": image, "windows": tiling.windows(), "crop": crop,
            "one_crop_steps_per_s": one, "whole_image_steps_per_s": whole, "cost_ratio": one / whole,
        }));
    }
    if a.finetune_steps > 0 {
        t.finetune_steps_per_s = Some(robust_ssl::perf::finetune_steps_per_s(&enc, a.batch_size, a.size, a.finetune_steps)?);
    }
    let linear = if a.linear {
        let c = enc.config();
        let rows = a.batch_size * ((a.size / c.patch_size).pow(2) + 1 + c.num_registers);
        Some(robust_ssl::perf::linear::measure(c, rows)?)
    } else {
        None
    };
    if a.json {
        let mut out = serde_json::to_value(&t)?;
        if let Some(l) = &linear {
            out["linear"] = serde_json::to_value(l)?;
        }
        if let Some(w) = &windowed {
            out["windows"] = w.clone();
        }
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "{} ({}) batch {} @{}px: forward {:.3} s/batch ({:.1} img/s), forward+backward-to-input {:.3} s/batch ({:.1} img/s)",
            enc.info.arch.as_deref().unwrap_or("custom ViT"),
            t.precision,
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
        if let Some(w) = &windowed {
            println!(
                "attack through {} windows of {} over {:?}: {:.3} steps/s against {:.3} on one crop: {:.2}x the cost per image",
                w["windows"], w["window"], w["image"], w["whole_image_steps_per_s"], w["one_crop_steps_per_s"], w["cost_ratio"]
            );
        }
        if let Some(s) = t.finetune_steps_per_s {
            println!("DeACL fine-tuning (5-step inner PGD, SGD): {s:.3} steps/s ({:.3} s/step)", 1.0 / s);
        }
        if let Some(l) = &linear {
            print_linear(l);
        }
        let m = &t.machine;
        println!(
            "machine: {}, {}; CPU features: {}; matrix products: {} kernels; bf16 products: {}",
            if m.cpu.is_empty() { "unknown CPU" } else { &m.cpu },
            m.device,
            if m.features.is_empty() { "none of AVX2/AVX-512/AMX".to_string() } else { m.features.join(" ") },
            m.gemm_kernels,
            m.bf16_kernel.unwrap_or("none (no AVX512-BF16)")
        );
    }
    Ok(())
}

fn print_linear(l: &robust_ssl::perf::linear::LinearSpeed) {
    let bf16_peak = l.peak_bf16_gflops.map_or("no AVX512-BF16".to_string(), |p| format!("{p:.0} GFLOP/s"));
    println!("linear layers; peak f32 {:.0} GFLOP/s, bf16 {bf16_peak} ({})", l.peak_f32_gflops, l.peak_method);
    println!("| layer | m×k×n | f32 GFLOP/s | of f32 peak | bf16 GFLOP/s | of bf16 peak |");
    println!("|---|---|---|---|---|---|");
    for r in &l.layers {
        let bf16 = |v: Option<f64>, unit: &str| v.map_or("—".to_string(), |v| format!("{v:.0}{unit}"));
        println!(
            "| {} | {}×{}×{} | {:.0} | {:.0} % | {} | {} |",
            r.layer,
            r.m,
            r.k,
            r.n,
            r.f32_gflops,
            r.f32_of_peak,
            bf16(r.bf16_gflops, ""),
            bf16(r.bf16_of_peak, " %")
        );
    }
}
