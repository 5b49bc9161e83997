//! Results out of a store: JSON (every cell with its labels and full result) and CSV (one line
//! per cell, predictor and metric: the long format that spreadsheets and data frames pivot).

use std::io::Write;

use anyhow::Result;
use serde_json::Value;

use super::store::CellRow;

/// The metric a task is ranked by: accuracy, mIoU, depth RMSE.
pub fn primary_metric(task_kind: &str) -> &'static str {
    match task_kind {
        "cls" => "accuracy",
        "seg" => "miou",
        _ => "rmse",
    }
}

/// Whether a lower value of the metric is better.
pub fn lower_is_better(metric: &str) -> bool {
    matches!(metric, "rmse" | "abs_rel" | "sq_rel" | "rmse_log" | "log10")
}

/// (predictor, metric, value) of a cell: `clean`, `adversarial` and `baseline` (the trivial
/// predictor, on the clean images), every scalar metric.
pub fn metrics(cell: &CellRow) -> Vec<(&'static str, String, f64)> {
    let mut out = Vec::new();
    let mut scalars = |which: &'static str, v: Option<&Value>| {
        if let Some(Value::Object(m)) = v {
            for (k, x) in m {
                if let Some(f) = x.as_f64().filter(|_| !matches!(k.as_str(), "correct" | "total" | "images" | "images_without_valid_pixels")) {
                    out.push((which, k.clone(), f));
                }
            }
        }
    };
    scalars("clean", cell.result.pointer("/clean/head"));
    scalars("adversarial", cell.result.pointer("/adversarial/head"));
    scalars("baseline", cell.result.pointer("/clean/baseline"));
    out
}

/// A cell's value of `metric` for `which` (clean, adversarial, baseline).
pub fn value(cell: &CellRow, which: &str, metric: &str) -> Option<f64> {
    let at = if which == "baseline" { "/clean/baseline".to_string() } else { format!("/{which}/head") };
    cell.result.pointer(&at)?.get(metric)?.as_f64()
}

pub fn write_json(cells: &[CellRow], out: &mut dyn Write) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, cells)?;
    writeln!(out)?;
    Ok(())
}

pub fn write_csv(cells: &[CellRow], out: &mut dyn Write) -> Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "key", "encoder", "task", "task_kind", "head", "dataset", "condition", "attack", "attacked", "norm", "eps", "eps_text", "steps", "step_size",
        "seed", "samples", "predictor", "metric", "value",
    ])?;
    for c in cells {
        let l = |k: &str| match c.labels.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        };
        let p = |k: &str| match c.labels.pointer(&format!("/params/{k}")) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        let samples = c.result.get("samples").map(|v| v.to_string()).unwrap_or_default();
        for (which, metric, v) in metrics(c) {
            w.write_record([
                c.key.clone(), l("encoder"), l("task"), l("task_kind"), l("head"), l("dataset"), l("condition"), l("attack"), l("attacked"), p("norm"), p("eps"),
                p("eps_text"), p("steps"), p("step_size"), p("seed"), samples.clone(), which.to_string(), metric, format!("{v}"),
            ])?;
        }
    }
    w.flush()?;
    Ok(())
}
