//! `robust-ssl report RUN_DIR`: the study's tables, robustness-vs-ε curves (SVG and PNG) and
//! example images of a run, as Markdown and one self-contained HTML page.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run folder (its results.sqlite) or a store file.
    pub run: PathBuf,
    /// Report folder (default: RUN_DIR/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &ReportArgs) -> Result<()> {
    let store = super::export::store_of(&a.run)?;
    let base = if a.run.is_dir() { a.run.clone() } else { a.run.parent().map(PathBuf::from).unwrap_or_default() };
    let out = a.out.clone().unwrap_or_else(|| base.join("report"));
    let files = robust_ssl::report::page::write(&store, &out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&files)?);
    } else {
        println!(
            "{} cells, {} charts, {} example strips{}",
            files.cells,
            files.charts,
            files.examples,
            if files.missing > 0 { format!(" ({} cells of the plan missing)", files.missing) } else { String::new() }
        );
        println!("  {}\n  {}", files.markdown.display(), files.html.display());
    }
    Ok(())
}
