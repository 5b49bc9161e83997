//! The command-line interface: argument types (clap) and one file per command. `main.rs` only
//! parses and dispatches here.

pub mod attack;
pub mod bench;
mod choice;
pub mod convert;
pub mod cross_task;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod export;
pub mod features;
pub mod finetune;
pub mod inspect;
pub mod merge;
pub mod report;
pub mod run;
pub mod train_head;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

pub use choice::choice;

use robust_ssl::device::DeviceChoice;
use robust_ssl::encoder::arch::ArchChoice;
use robust_ssl::encoder::pos_embed::PosResize;
use robust_ssl::encoder::{Encoder, LoadOptions, Precision};

#[derive(Parser)]
#[command(name = "robust-ssl", version, about = "Adversarial robustness of self-supervised ViT encoders across downstream tasks")]
pub struct Cli {
    /// Where tensors live: auto (a CUDA GPU where this binary has CUDA and the machine can run it,
    /// else the CPU), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value_t = DeviceChoice::default(), value_name = "DEVICE")]
    pub device: DeviceChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Embed images: CLS and patch tokens after the final norm, written to a .safetensors file.
    Embed(embed::EmbedArgs),
    /// Write a checkpoint's backbone as .safetensors in Meta's DINOv2 layout (f32, f16 or bf16).
    Convert(convert::ConvertArgs),
    /// Show what a checkpoint holds: architecture, naming, parameter count, resize semantics.
    Inspect(inspect::InspectArgs),
    /// Measure throughput (forward, forward+backward to the input).
    Bench(bench::BenchArgs),
    /// Train a downstream head (linear probe, segmentation, depth) on cached encoder features.
    TrainHead(train_head::TrainHeadArgs),
    /// Score a trained head on a split: accuracy, mIoU or depth errors, beside a trivial baseline.
    Eval(eval::EvalArgs),
    /// Attack a trained head through its encoder: clean and adversarial metrics.
    Attack(attack::AttackArgs),
    /// Adversarially fine-tune an encoder (DeACL; multi-perturbation training), resumable.
    #[command(subcommand)]
    Finetune(finetune::FinetuneCommand),
    /// Run an experiment file (encoders × tasks × attacks × ε …) into a resumable results store.
    Run(run::RunArgs),
    /// Export a run's results as CSV or JSON.
    Export(export::ExportArgs),
    /// Merge shard stores of a run into its results.sqlite.
    Merge(merge::MergeArgs),
    /// Write a run's report: tables, robustness curves, examples (Markdown + HTML).
    Report(report::ReportArgs),
    /// The main job on real assets (fetched through the package registries), with its report.
    Demo(demo::DemoArgs),
}

/// How to build an encoder from a checkpoint; shared by every command that loads one.
#[derive(Args, Debug, Clone)]
pub struct ModelOptions {
    /// Architecture: auto (from tensor shapes) or a name such as dinov2_vits14, dino_vitb16, dinov2_vitg14_reg.
    #[arg(long, default_value = "auto")]
    pub arch: ArchChoice,
    /// Position-embedding resize: official (scale factor, +0.1), size (explicit size), size-aa (antialiased);
    /// default from the checkpoint's source.
    #[arg(long)]
    pub pos_resize: Option<PosResize>,
    /// Number of attention heads, for custom widths (default: 64-dim heads, or what the file states).
    #[arg(long = "num-heads", value_name = "N")]
    pub heads: Option<usize>,
    /// Which backbone of a training checkpoint to use (teacher or student; default teacher).
    #[arg(long)]
    pub backbone: Option<String>,
    /// Arithmetic of the encoder's matrix products: f32, or bf16 operands with f32 sums (CPUs
    /// with AVX512-BF16 only; refused elsewhere).
    #[arg(long, value_parser = choice::<Precision>(), default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl ModelOptions {
    /// The library's load options these flags give.
    pub fn options(&self, device: candle_core::Device) -> LoadOptions {
        LoadOptions {
            arch: self.arch,
            heads: self.heads,
            pos_resize: self.pos_resize,
            prefer: self.backbone.clone(),
            device,
            precision: self.precision,
        }
    }

    pub fn load(&self, checkpoint: &std::path::Path, device: candle_core::Device) -> Result<Encoder> {
        Encoder::load(checkpoint, &self.options(device))
    }
}

/// `--checkpoint FILE` and the model options.
#[derive(Args, Debug, Clone)]
pub struct EncoderArgs {
    /// Checkpoint: official .pth (plain or training checkpoint), timm/Hugging Face .safetensors, or .onnx.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub model: ModelOptions,
}

impl EncoderArgs {
    pub fn load(&self) -> Result<Encoder> {
        self.model.load(&self.checkpoint, robust_ssl::device::default_device()?)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    robust_ssl::device::choose(cli.device)?;
    match cli.command {
        Command::Embed(a) => embed::run(&a),
        Command::Convert(a) => convert::run(&a),
        Command::Inspect(a) => inspect::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::TrainHead(a) => train_head::run(&a),
        Command::Eval(a) => eval::run(&a),
        Command::Attack(a) => attack::run(&a),
        Command::Finetune(c) => finetune::run(&c),
        Command::Run(a) => run::run(&a),
        Command::Export(a) => export::run(&a),
        Command::Merge(a) => merge::run(&a),
        Command::Report(a) => report::run(&a),
        Command::Demo(a) => demo::run(&a),
    }
}
