//! `robust-ssl report`: the report of a run folder as Markdown (with the curves as SVG and PNG
//! files and the example strips as PNG files beside it) and as one self-contained HTML page
//! (every image inlined as a data URI, no script).

use crate::choice::Choice;
use crate::experiment::plan::Condition;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use base64::Engine as _;
use serde::Serialize;

use super::results::Results;
use super::tables::{self, Table};
use crate::experiment::config::Experiment;
use crate::experiment::store::Store;

#[derive(Debug, Serialize)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub charts: usize,
    pub examples: usize,
    pub cells: usize,
    pub missing: usize,
}

/// A figure of the report: its file (relative to the report folder), caption and bytes.
struct Figure {
    file: String,
    caption: String,
    mime: &'static str,
    bytes: Vec<u8>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn markdown_table(t: &Table) -> String {
    let cell = |s: &String| s.replace('|', "\\|");
    let mut out = format!(
        "### {}\n\n{}\n\n| {} |\n|{}\n",
        t.title,
        t.note,
        t.header.iter().map(cell).collect::<Vec<_>>().join(" | "),
        "---|".repeat(t.header.len())
    );
    for r in &t.rows {
        let _ = writeln!(out, "| {} |", r.iter().map(cell).collect::<Vec<_>>().join(" | "));
    }
    out + "\n"
}

fn html_table(t: &Table) -> String {
    let mut out = format!(
        "<h3>{}</h3>\n<p class=\"note\">{}</p>\n<table>\n<tr>{}</tr>\n",
        esc(&t.title),
        esc(&t.note),
        t.header.iter().map(|h| format!("<th>{}</th>", esc(h))).collect::<String>()
    );
    for r in &t.rows {
        let _ = writeln!(out, "<tr>{}</tr>", r.iter().map(|c| format!("<td>{}</td>", esc(c))).collect::<String>());
    }
    out + "</table>\n"
}

fn data_uri(f: &Figure) -> String {
    format!("data:{};base64,{}", f.mime, base64::engine::general_purpose::STANDARD.encode(&f.bytes))
}

/// A figure inlined in the page, with its caption.
fn html_figure(f: &Figure) -> String {
    format!("<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>\n", data_uri(f), esc(&f.caption), esc(&f.caption))
}

/// The example strips of own attacks at each setting's reference ε (first seed), `per_cell` each.
fn example_figures(r: &Results, per_cell: usize) -> Vec<Figure> {
    let mut out = Vec::new();
    for setting in r.settings() {
        let Some((eps, eps_text)) = r.reference_eps(&setting) else { continue };
        let mut seen_seed = std::collections::HashMap::new();
        for e in r.entries.iter().filter(|e| {
            e.labels.condition == Condition::Attack && e.own() && e.eps() == Some(eps) && e.setting().as_ref() == Some(&setting)
        }) {
            let p = e.labels.params.as_ref().expect("attack cells have params");
            let id = (e.labels.encoder.clone(), r.head_label(e), e.labels.attack);
            if *seen_seed.entry(id).or_insert(p.seed) != p.seed {
                continue;
            }
            for x in r.examples.iter().filter(|x| x.cell == e.row.key).take(per_cell) {
                let attack = e.labels.attack.map_or("", |a| a.name());
                let slug = format!("{}-{}-{attack}-{}", e.labels.encoder, r.head_label(e), x.name)
                    .replace(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'), "_");
                out.push(Figure {
                    file: format!("examples/{slug}"),
                    caption: format!(
                        "{} · {} · {attack} ε {eps_text} · sample {}",
                        e.labels.encoder,
                        r.head_label(e),
                        x.name.trim_end_matches(".png")
                    ),
                    mime: "image/png",
                    bytes: x.png.clone(),
                });
            }
        }
    }
    out
}

/// Writes `report.md`, `report.html`, `curves/` and `examples/` into `out`.
pub fn write(store: &Store, out: &Path) -> Result<ReportFiles> {
    let r = Results::load(store)?;
    for sub in ["curves", "examples"] {
        std::fs::create_dir_all(out.join(sub))?;
    }
    let mut tables = tables::study(&r);
    tables.extend(tables::per_eps(&r));
    tables.extend(super::worst_case::table(&r)?);
    tables.extend(tables::cross_task(&r));
    tables.extend(super::transfer::matrices(&r));
    tables.extend(super::cost::table(&r));
    let sanity = tables::sanity(&r);
    // The experiment as the run recorded it (a store without one still gets its report).
    let experiment: Option<Experiment> = store.meta("experiment")?.and_then(|text| toml::from_str(&text).ok());
    let protocol = super::protocol::tables(&r, &store.heads()?, experiment.as_ref());
    let mut charts = Vec::new();
    for (file, chart) in tables::charts(&r).into_iter().chain(tables::step_charts(&r)) {
        let svg = super::plots::svg(&chart)?;
        let png = super::plots::png(&chart)?;
        crate::atomic::write(&out.join(format!("curves/{file}.png")), &png)?;
        charts.push(Figure {
            file: format!("curves/{file}.svg"),
            caption: chart.title.clone(),
            mime: "image/svg+xml",
            bytes: svg.into_bytes(),
        });
    }
    let examples = example_figures(&r, 4);
    for f in charts.iter().chain(&examples) {
        crate::atomic::write(&out.join(&f.file), &f.bytes)?;
    }
    let status = format!(
        "{} result cells{}; {} example strips.",
        r.entries.len(),
        if r.missing > 0 {
            format!(", {} cells of the plan not computed yet (an unfinished run, or shards not merged)", r.missing)
        } else {
            String::new()
        },
        r.examples.len()
    );
    let legend = "Strips: clean | adversarial | perturbation (scaled by 1/2ε around grey) | for dense tasks: clean prediction | adversarial prediction | ground truth.";

    let mut md = format!("# {}\n\nRobustness of self-supervised encoders on every task, by robust-ssl. {status}\n\n", r.title);
    for t in &tables {
        md += &markdown_table(t);
    }
    md += "## Robustness vs ε\n\n";
    for c in &charts {
        let _ = writeln!(md, "![{}]({}) ([PNG]({}))\n", c.caption, c.file, c.file.replace(".svg", ".png"));
    }
    let _ = write!(md, "## Examples\n\n{legend}\n\n");
    for f in &examples {
        let _ = writeln!(md, "{}\n\n![{}]({})\n", f.caption, f.caption, f.file);
    }
    md += &markdown_table(&sanity);
    md += "## Protocol\n\n";
    for t in &protocol {
        md += &markdown_table(t);
    }

    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\nbody{{font-family:sans-serif;margin:2em auto;max-width:72em;color:#222}}\ntable{{border-collapse:collapse;margin:.5em 0 1.5em}}\nth,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}\nth{{background:#f3f3f3}}\n.note{{color:#555;font-size:.9em}}\nfigure{{margin:1em 0}}\nfigcaption{{font-size:.9em;color:#444}}\nimg{{max-width:100%}}\n</style>\n</head>\n<body>\n<h1>{}</h1>\n<p>Robustness of self-supervised encoders on every task, by robust-ssl. {}</p>\n",
        esc(&r.title),
        esc(&r.title),
        esc(&status)
    );
    for t in &tables {
        html += &html_table(t);
    }
    html += "<h2>Robustness vs ε</h2>\n";
    for c in &charts {
        html += &html_figure(c);
    }
    let _ = writeln!(html, "<h2>Examples</h2>\n<p class=\"note\">{}</p>", esc(legend));
    for f in &examples {
        html += &html_figure(f);
    }
    html += &html_table(&sanity);
    html += "<h2>Protocol</h2>\n";
    for t in &protocol {
        html += &html_table(t);
    }
    html += "</body>\n</html>\n";

    let (markdown, page) = (out.join("report.md"), out.join("report.html"));
    crate::atomic::write(&markdown, md.as_bytes())?;
    crate::atomic::write(&page, html.as_bytes())?;
    Ok(ReportFiles { markdown, html: page, charts: charts.len(), examples: examples.len(), cells: r.entries.len(), missing: r.missing })
}

/// The study's table(s) as Markdown, for the summary printed at the end of a run.
pub fn summary(store: &Store) -> Result<String> {
    let r = Results::load(store)?;
    Ok(tables::study(&r).iter().map(markdown_table).collect())
}
