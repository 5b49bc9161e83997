//! The results of a run as the report reads them: the store's cells of the run's plan (cells of
//! earlier versions of the experiment are left out, cells not computed yet are counted), with
//! their labels parsed, and lookups by encoder, task, attack and ε.

use crate::attacks::spec::AttackKind;
use crate::choice::Choice;
use crate::experiment::export::{primary_metric, value};
use crate::experiment::plan::Condition;
use crate::experiment::plan::Labels;
use crate::experiment::store::{CellRow, Example, Predictor, Store};
use anyhow::{Context, Result};

pub struct Entry {
    pub row: CellRow,
    pub labels: Labels,
}

impl Entry {
    /// `task` or `task/head`: the head as tables name it.
    pub fn head_label(&self, multi_head: bool) -> String {
        if multi_head {
            format!("{}/{}", self.labels.task, self.labels.head)
        } else {
            self.labels.task.clone()
        }
    }

    /// Whether the attack was aimed at this head (its own task attack) or at no head
    /// (EmbedAttack); false for a task attack of another head scored here.
    pub fn own(&self) -> bool {
        match &self.labels.attacked {
            None => true,
            Some(a) => *a == self.labels.task || *a == format!("{}/{}", self.labels.task, self.labels.head),
        }
    }

    pub fn metric(&self) -> &'static str {
        primary_metric(self.labels.task_kind)
    }

    /// The primary metric of `which` predictor.
    pub fn value(&self, which: Predictor) -> Option<f64> {
        value(&self.row, which, self.metric())
    }

    pub fn eps(&self) -> Option<f64> {
        self.labels.params.as_ref().map(|p| p.eps)
    }

    /// (norm, steps): attacks in one setting share a table and a chart.
    pub fn setting(&self) -> Option<(String, usize)> {
        self.labels.params.as_ref().map(|p| (p.norm.to_string(), p.steps))
    }
}

pub struct Results {
    pub title: String,
    pub entries: Vec<Entry>,
    /// Cells of the plan not in the store.
    pub missing: usize,
    pub examples: Vec<Example>,
    /// (encoder, task) pairs with more than one head.
    multi: Vec<(String, String)>,
}

impl Results {
    pub fn load(store: &Store) -> Result<Results> {
        let shown = store.path().display().to_string();
        let plan: Vec<(String, Labels)> = match store.meta("plan")? {
            Some(text) => serde_json::from_str(&text).with_context(|| format!("{shown}: the stored plan is not readable"))?,
            None => Vec::new(),
        };
        let title = store.meta("name")?.unwrap_or_else(|| "robust-ssl".into());
        let mut cells: std::collections::HashMap<String, CellRow> = store.cells()?.into_iter().map(|c| (c.key.clone(), c)).collect();
        let mut entries = Vec::new();
        let mut missing = 0;
        for (key, labels) in plan {
            match cells.remove(&key) {
                Some(row) => entries.push(Entry { row, labels }),
                None => missing += 1,
            }
        }
        let mut multi = Vec::new();
        for e in &entries {
            let pair = (e.labels.encoder.clone(), e.labels.task.clone());
            let heads = entries
                .iter()
                .filter(|o| o.labels.encoder == pair.0 && o.labels.task == pair.1)
                .map(|o| &o.labels.head)
                .collect::<std::collections::BTreeSet<_>>();
            if heads.len() > 1 && !multi.contains(&pair) {
                multi.push(pair);
            }
        }
        Ok(Results { title, entries, missing, examples: store.examples()?, multi })
    }

    pub fn head_label(&self, e: &Entry) -> String {
        e.head_label(self.multi.contains(&(e.labels.encoder.clone(), e.labels.task.clone())))
    }

    /// (encoder, head label, entry of the clean cell), in plan order.
    pub fn rows(&self) -> Vec<(String, String, &Entry)> {
        self.entries
            .iter()
            .filter(|e| e.labels.condition == Condition::Clean)
            .map(|e| (e.labels.encoder.clone(), self.head_label(e), e))
            .collect()
    }

    /// Every attack setting (norm, steps) present, in order of appearance.
    pub fn settings(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for s in self.entries.iter().filter_map(Entry::setting) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// The ε values of a setting, ascending, with their text.
    pub fn eps_values(&self, setting: &(String, usize)) -> Vec<(f64, String)> {
        let mut v: Vec<(f64, String)> = Vec::new();
        for e in self.entries.iter().filter(|e| e.setting().as_ref() == Some(setting)) {
            let p = e.labels.params.as_ref().expect("attack cells have params");
            if !v.iter().any(|(x, _)| *x == p.eps) {
                v.push((p.eps, p.eps_text.clone()));
            }
        }
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    /// The study's ε: 8/255 under L∞ when present, else the largest.
    pub fn reference_eps(&self, setting: &(String, usize)) -> Option<(f64, String)> {
        let all = self.eps_values(setting);
        all.iter().find(|(e, _)| setting.0 == "linf" && (e - 8.0 / 255.0).abs() < 1e-12).cloned().or_else(|| all.last().cloned())
    }

    /// The attacked cells of one row, setting, attack and ε (one per seed), own attacks only.
    pub fn attacked(&self, encoder: &str, head: &str, setting: &(String, usize), attack: AttackKind, eps: f64) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.labels.condition == Condition::Attack && e.own() && e.labels.encoder == encoder && self.head_label(e) == head)
            .filter(|e| e.setting().as_ref() == Some(setting) && e.labels.attack == Some(attack) && e.eps() == Some(eps))
            .collect()
    }

    /// The attacks present in a setting, in a fixed order (embed, the task attacks, apgd).
    pub fn attacks(&self, setting: &(String, usize)) -> Vec<AttackKind> {
        let present: Vec<AttackKind> =
            self.entries.iter().filter(|e| e.setting().as_ref() == Some(setting)).filter_map(|e| e.labels.attack).collect();
        AttackKind::ALL.iter().copied().filter(|a| present.contains(a)).collect()
    }
}

/// Mean and (sample) standard deviation; `None` for no values.
pub fn mean_std(values: &[f64]) -> Option<(f64, Option<f64>)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.len() > 1).then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some((mean, std))
}

/// A metric for a table: accuracy and mIoU in %, errors as they are.
pub fn format_metric(metric: &str, v: Option<(f64, Option<f64>)>) -> String {
    let Some((m, s)) = v else { return "–".into() };
    let pct = matches!(metric, "accuracy" | "miou" | "pixel_accuracy" | "delta1" | "delta2" | "delta3");
    let (scale, digits, unit) = if pct {
        (100.0, 2, " %")
    } else if metric == "rmse" {
        (1.0, 3, " m")
    } else {
        (1.0, 3, "")
    };
    match s {
        Some(s) => format!("{:.*} ± {:.*}{unit}", digits, m * scale, digits, s * scale),
        None => format!("{:.*}{unit}", digits, m * scale),
    }
}

/// What a metric's name means in a table header.
pub fn metric_name(metric: &str) -> &'static str {
    match metric {
        "accuracy" => "accuracy ↑",
        "miou" => "mIoU ↑",
        "rmse" => "RMSE ↓",
        _ => "value",
    }
}

/// Values of cells' `which` figures.
pub fn values(cells: &[&Entry], which: Predictor) -> Vec<f64> {
    cells.iter().filter_map(|e| e.value(which)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean and sample standard deviation by hand: [0.5, 0.7] → 0.6 ± √0.02; one value has no
    /// spread; accuracy and mIoU print in %, RMSE in metres.
    #[test]
    fn mean_std_and_formats_by_hand() {
        let (m, s) = mean_std(&[0.5, 0.7]).unwrap();
        assert!((m - 0.6).abs() < 1e-15 && (s.unwrap() - 0.02f64.sqrt()).abs() < 1e-15);
        assert_eq!(mean_std(&[0.25]), Some((0.25, None)));
        assert_eq!(mean_std(&[]), None);
        assert_eq!(format_metric("accuracy", Some((0.8125, None))), "81.25 %");
        assert_eq!(format_metric("miou", mean_std(&[0.5, 0.7])), "60.00 ± 14.14 %");
        assert_eq!(format_metric("rmse", Some((0.6654, None))), "0.665 m");
        assert_eq!(format_metric("rmse", None), "–");
    }
}
