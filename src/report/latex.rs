//! `robust-ssl report --format latex`: the study's table, the ε sweep and the worst-case table as
//! booktabs LaTeX, one fragment per table in `latex/` (to `\input` into a paper that uses the
//! packages `booktabs` and `graphicx`; a table wider than the line is shrunk to it), and
//! `report.tex`, a document that inputs them all and compiles on its own (`pdflatex report.tex`;
//! packages of TeX Live's latex-base and latex-recommended only).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::results::Results;
use super::tables::{self, Table};
use crate::experiment::store::Store;

#[derive(Debug, Serialize)]
pub struct LatexFiles {
    /// The document that inputs every table.
    pub document: PathBuf,
    /// One fragment per table.
    pub tables: Vec<PathBuf>,
    pub cells: usize,
    pub missing: usize,
}

/// Text as LaTeX: its special characters escaped, the report's symbols as math.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '~' => out.push_str(r"\textasciitilde{}"),
            '^' => out.push_str(r"\textasciicircum{}"),
            '<' => out.push_str("$<$"),
            '>' => out.push_str("$>$"),
            'ε' => out.push_str(r"$\varepsilon$"),
            'δ' => out.push_str(r"$\delta$"),
            '±' => out.push_str(r"$\pm$"),
            '×' => out.push_str(r"$\times$"),
            '≤' => out.push_str(r"$\leq$"),
            '≥' => out.push_str(r"$\geq$"),
            '↑' => out.push_str(r"$\uparrow$"),
            '↓' => out.push_str(r"$\downarrow$"),
            '→' => out.push_str(r"$\rightarrow$"),
            '‖' => out.push_str(r"$\|$"),
            '·' => out.push_str(r"$\cdot$"),
            '∞' => out.push_str(r"$\infty$"),
            '–' => out.push_str("--"),
            '−' => out.push_str("$-$"),
            '—' => out.push_str("---"),
            ' ' => out.push(' '),
            c if c.is_ascii() => out.push(c),
            // Anything else pdflatex's default fonts may lack: its code point, visibly.
            c => {
                let _ = write!(out, "[U+{:04X}]", c as u32);
            }
        }
    }
    out
}

/// One booktabs table: left-aligned text columns, right-aligned figures.
pub fn table(t: &Table, label: &str) -> String {
    let figure = |s: &str| s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '–');
    let align: String = (0..t.header.len())
        .map(|j| {
            let numeric = !t.rows.is_empty() && t.rows.iter().all(|r| r.get(j).is_none_or(|v| figure(v)));
            if numeric {
                'r'
            } else {
                'l'
            }
        })
        .collect();
    let line = |cells: &[String]| cells.iter().map(|c| escape(c)).collect::<Vec<_>>().join(" & ") + r" \\";
    let mut out = format!("% robust-ssl: {}\n", t.title.replace('\n', " "));
    out += "\\begin{table}[htbp]\n\\centering\n\\small\n";
    let _ = writeln!(out, "\\caption{{{}. {}}}", escape(&t.title), escape(&t.note));
    let _ = writeln!(out, "\\label{{tab:{label}}}");
    // Shrunk to the line width only when wider.
    out += "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n";
    let _ = writeln!(out, "\\begin{{tabular}}{{{align}}}\n\\toprule\n{}\n\\midrule", line(&t.header));
    for r in &t.rows {
        let _ = writeln!(out, "{}", line(r));
    }
    out += "\\bottomrule\n\\end{tabular}%\n}\n\\end{table}\n";
    out
}

/// Writes `latex/*.tex` and `report.tex` in `out`.
pub fn write(store: &Store, out: &Path) -> Result<LatexFiles> {
    let r = Results::load(store)?;
    let dir = out.join("latex");
    std::fs::create_dir_all(&dir)?;
    let mut named: Vec<(String, Table)> = Vec::new();
    for (i, t) in tables::study(&r).into_iter().enumerate() {
        named.push((format!("study-{}", i + 1), t));
    }
    for (i, t) in tables::per_eps(&r).into_iter().enumerate() {
        named.push((format!("eps-sweep-{}", i + 1), t));
    }
    for (i, t) in super::worst_case::table(&r)?.into_iter().enumerate() {
        named.push((format!("worst-case-{}", i + 1), t));
    }
    let mut files = Vec::new();
    let mut doc = String::from(
        "% robust-ssl report: pdflatex report.tex\n\\documentclass[a4paper,landscape]{article}\n\\usepackage[utf8]{inputenc}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\setlength{\\textwidth}{24cm}\n\\setlength{\\oddsidemargin}{-1cm}\n\\begin{document}\n",
    );
    let _ = writeln!(doc, "\\section*{{{}}}", escape(&r.title));
    if r.missing > 0 {
        let _ = writeln!(doc, "{} cells of the plan are not computed yet.\n", r.missing);
    }
    for (i, (name, t)) in named.iter().enumerate() {
        let path = dir.join(format!("{name}.tex"));
        crate::atomic::write(&path, table(t, &format!("robust-ssl-{name}")).as_bytes())?;
        let _ = writeln!(doc, "\\input{{latex/{name}}}");
        // Floats are placed a page at a time (LaTeX holds at most 18 waiting).
        if i % 4 == 3 {
            doc += "\\clearpage\n";
        }
        files.push(path);
    }
    doc += "\\end{document}\n";
    let document = out.join("report.tex");
    crate::atomic::write(&document, doc.as_bytes())?;
    Ok(LatexFiles { document, tables: files, cells: r.entries.len(), missing: r.missing })
}

#[cfg(test)]
mod tests {
    #[test]
    fn special_characters_and_symbols_are_escaped() {
        assert_eq!(super::escape("81.25 % ± 1_2 & #3"), r"81.25 \% $\pm$ 1\_2 \& \#3");
        assert_eq!(super::escape("ε = 8/255, L∞ ‖δ‖ ≤ 1 – x"), r"$\varepsilon$ = 8/255, L$\infty$ $\|$$\delta$$\|$ $\leq$ 1 -- x");
        assert_eq!(super::escape(r"a\b{c}~^"), r"a\textbackslash{}b\{c\}\textasciitilde{}\textasciicircum{}");
        assert_eq!(super::escape("日"), "[U+65E5]");
    }
}
