//! Results out of a store: JSON (every cell with its labels and full result), CSV (one line per
//! cell, predictor and metric: the long format that spreadsheets and data frames pivot, with
//! every attack setting a column, so that no two settings look alike), and per-sample CSV (one
//! line per attack cell, image, predictor and figure).

use std::io::Write;

use super::store::{CellRow, Predictor};
use crate::attacks::spec::AttackSpec;
use crate::heads::head::Task;
use anyhow::Result;

/// A number as JSON writes it (the CSV's columns read as the JSON export's).
fn number(v: f64) -> String {
    serde_json::Value::from(v).to_string()
}

/// The metric a task is ranked by: accuracy, mIoU, depth RMSE.
pub fn primary_metric(task: Task) -> &'static str {
    match task {
        Task::Cls => "accuracy",
        Task::Seg => "miou",
        Task::Depth => "rmse",
    }
}

/// Whether a lower value of the metric is better.
pub fn lower_is_better(metric: &str) -> bool {
    matches!(metric, "rmse" | "abs_rel" | "sq_rel" | "rmse_log" | "log10")
}

/// (predictor, metric, value) of a cell: the clean, adversarial and baseline (the trivial
/// predictor, on the clean images) figures, every scalar metric.
pub fn metrics(cell: &CellRow) -> Vec<(Predictor, &'static str, f64)> {
    [Predictor::Clean, Predictor::Adversarial, Predictor::Baseline]
        .into_iter()
        .flat_map(|p| cell.result.metrics(p).map(|m| m.scalars()).unwrap_or_default().into_iter().map(move |(name, v)| (p, name, v)))
        .collect()
}

/// A cell's value of `metric` for `which` predictor.
pub fn value(cell: &CellRow, which: Predictor, metric: &str) -> Option<f64> {
    cell.result.metrics(which)?.get(metric)
}

/// Every cell with its labels and full result; keys in name order, as the store keeps them.
pub fn write_json(cells: &[CellRow], out: &mut dyn Write) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, &serde_json::to_value(cells)?)?;
    writeln!(out)?;
    Ok(())
}

/// The columns that name a cell, first in both CSV exports.
const IDENTITY: [&str; 6] = ["key", "encoder", "task", "task_kind", "head", "dataset"];

fn identity(c: &CellRow) -> [String; 6] {
    let l = &c.labels;
    [c.key.clone(), l.encoder.clone(), l.task.clone(), l.task_kind.to_string(), l.head.clone(), l.dataset.clone()]
}

pub fn write_csv(cells: &[CellRow], out: &mut dyn Write) -> Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(IDENTITY.iter().chain(&[
        "condition",
        "attack",
        "attacked",
        "norm",
        "eps",
        "eps_text",
        "steps",
        "step_size",
        "seed",
        "samples",
        "predictor",
        "metric",
        "value",
        "step_rule",
        "restarts",
        "random_start",
        "embed_target",
        "embed_distance",
        "embed_scope",
        "segpgd",
        "ce_scaling",
        "iterate",
        "source_encoder",
    ]))?;
    for c in cells {
        let l = &c.labels;
        let p = l.params.as_ref();
        let param = |f: &dyn Fn(&AttackSpec) -> String| p.map(f).unwrap_or_default();
        let samples = c.result.samples.to_string();
        for (which, metric, v) in metrics(c) {
            w.write_record(identity(c).into_iter().chain([
                l.condition.to_string(),
                l.attack.map(|a| a.to_string()).unwrap_or_default(),
                l.attacked.clone().unwrap_or_default(),
                param(&|p| p.norm.to_string()),
                param(&|p| number(p.eps)),
                param(&|p| p.eps_text.clone()),
                param(&|p| p.steps.to_string()),
                param(&|p| number(p.step_size)),
                param(&|p| p.seed.to_string()),
                samples.clone(),
                which.to_string(),
                metric.to_string(),
                format!("{v}"),
                param(&|p| p.step_text.clone()),
                param(&|p| p.restarts.to_string()),
                param(&|p| p.random_start.to_string()),
                param(&|p| p.embed_target.to_string()),
                param(&|p| p.embed_distance.to_string()),
                param(&|p| p.embed_scope.to_string()),
                param(&|p| p.segpgd.to_string()),
                param(&|p| p.ce_scaling.to_string()),
                param(&|p| p.iterate.to_string()),
                l.source_encoder.clone().unwrap_or_default(),
            ]))?;
        }
    }
    w.flush()?;
    Ok(())
}

/// Every attack cell's per-image outcomes: one line per cell, image (its index in the evaluation
/// split), predictor and figure. `clean` is the image's own figure on its clean input; for a
/// classifier `adversarial` `correct` is robust accuracy's (right before and after the attack),
/// for the dense tasks the task's metrics on that image alone. Cells of an older version without
/// per-image scores have no lines.
pub fn write_per_sample_csv(cells: &[CellRow], out: &mut dyn Write) -> Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(IDENTITY.iter().chain(&[
        "attack",
        "attacked",
        "norm",
        "eps",
        "eps_text",
        "steps",
        "seed",
        "index",
        "predictor",
        "metric",
        "value",
    ]))?;
    for c in cells {
        let l = &c.labels;
        let Some(p) = l.params.as_ref() else { continue };
        let sets = [(Predictor::Clean, c.result.per_sample_clean.as_ref()), (Predictor::Adversarial, c.result.per_sample.as_ref())];
        for (which, per) in sets {
            for (index, score) in per.into_iter().flatten() {
                let serde_json::Value::Object(figures) = score.figures()? else { continue };
                for (metric, v) in figures {
                    let value = match v {
                        serde_json::Value::Bool(b) => u8::from(b).to_string(),
                        other => other.to_string(),
                    };
                    w.write_record(identity(c).into_iter().chain([
                        l.attack.map(|a| a.to_string()).unwrap_or_default(),
                        l.attacked.clone().unwrap_or_default(),
                        p.norm.to_string(),
                        number(p.eps),
                        p.eps_text.clone(),
                        p.steps.to_string(),
                        p.seed.to_string(),
                        index.to_string(),
                        which.to_string(),
                        metric,
                        value,
                    ]))?;
                }
            }
        }
    }
    w.flush()?;
    Ok(())
}
