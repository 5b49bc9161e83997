//! `robust-ssl report RUN_DIR`: the study's tables, robustness-vs-ε curves (SVG and PNG) and
//! example images of a run, as Markdown and one self-contained HTML page; or its tables as
//! booktabs LaTeX (`--format latex`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReportFormat {
    Html,
    Latex,
}
robust_ssl::choices!(ReportFormat { Html = "html", Latex = "latex" });

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run folder (its results.sqlite) or a store file.
    pub run: PathBuf,
    /// Report folder (default: RUN_DIR/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// html: report.md and report.html with the curves and examples; latex: the study's table,
    /// the ε sweep and the worst case as booktabs tables (latex/*.tex) and report.tex.
    #[arg(long, value_parser = super::choice::<ReportFormat>(), default_value_t = ReportFormat::Html)]
    pub format: ReportFormat,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &ReportArgs) -> Result<()> {
    let store = super::export::store_of(&a.run)?;
    let base = if a.run.is_dir() { a.run.clone() } else { a.run.parent().map(PathBuf::from).unwrap_or_default() };
    let out = a.out.clone().unwrap_or_else(|| base.join("report"));
    if a.format == ReportFormat::Latex {
        let files = robust_ssl::report::latex::write(&store, &out)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&files)?);
        } else {
            println!("{} cells, {} tables{}", files.cells, files.tables.len(), missing(files.missing));
            println!("  {} (pdflatex; the tables alone in {})", files.document.display(), out.join("latex").display());
        }
        return Ok(());
    }
    let files = robust_ssl::report::page::write(&store, &out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&files)?);
    } else {
        println!("{} cells, {} charts, {} example strips{}", files.cells, files.charts, files.examples, missing(files.missing));
        println!("  {}\n  {}", files.markdown.display(), files.html.display());
    }
    Ok(())
}

fn missing(n: usize) -> String {
    if n > 0 {
        format!(" ({n} cells of the plan missing)")
    } else {
        String::new()
    }
}
