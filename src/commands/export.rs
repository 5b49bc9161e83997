//! `robust-ssl export RUN_DIR`: the results store as CSV (long format: one line per cell,
//! predictor and metric), JSON (every cell with its labels and full result), or per-sample CSV
//! (one line per attack cell, image, predictor and figure).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use robust_ssl::experiment::export::{write_csv, write_json, write_per_sample_csv};
use robust_ssl::experiment::store::Store;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Csv,
    Json,
    /// Each attack cell's images: clean and attacked figures per image.
    PerSample,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A run folder (its results.sqlite) or a store file.
    pub run: PathBuf,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The store of a run folder, or the store file itself.
pub fn store_of(run: &Path) -> Result<Store> {
    let path = if run.is_dir() { run.join("results.sqlite") } else { run.to_path_buf() };
    Store::open_existing(&path)
}

pub fn run(a: &ExportArgs) -> Result<()> {
    let cells = store_of(&a.run)?.cells()?;
    let mut buf = Vec::new();
    match a.format {
        Format::Csv => write_csv(&cells, &mut buf)?,
        Format::Json => write_json(&cells, &mut buf)?,
        Format::PerSample => write_per_sample_csv(&cells, &mut buf)?,
    }
    match &a.out {
        Some(p) => robust_ssl::atomic::write(p, &buf).with_context(|| format!("{}: cannot write the export", p.display()))?,
        None => std::io::Write::write_all(&mut std::io::stdout(), &buf)?,
    }
    Ok(())
}
