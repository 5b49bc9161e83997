//! The results of a run as the report reads them: the store's cells of the run's plan (cells of
//! earlier versions of the experiment are left out, cells not computed yet are counted), with
//! their labels parsed, and lookups by encoder, task, attack and ε.

use crate::attacks::embed::{Distance, EmbedScope, EmbedTarget};
use crate::attacks::segpgd::SegPgdForm;
use crate::attacks::spec::{AttackKind, AttackSpec, Iterate};
use crate::attacks::threat::Norm;
use crate::choice::Choice;
use crate::experiment::export::{primary_metric, value};
use crate::experiment::plan::Condition;
use crate::experiment::plan::Labels;
use crate::experiment::store::{CellRow, Example, Predictor, Store, Timing};
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

    /// Whether the attack was aimed at this head (its own task attack, on this encoder) or at no
    /// head (EmbedAttack); false for a task attack of another head scored here, and for a
    /// transfer attack crafted on another encoder.
    pub fn own(&self) -> bool {
        self.aimed_here() && !self.transferred()
    }

    /// Whether the attack was aimed at this head's task and head (on whichever encoder crafted
    /// it) or at no head.
    pub fn aimed_here(&self) -> bool {
        match &self.labels.attacked {
            None => true,
            Some(a) => *a == self.labels.task || *a == format!("{}/{}", self.labels.task, self.labels.head),
        }
    }

    /// Whether the perturbation was crafted on another encoder (a transfer attack).
    pub fn transferred(&self) -> bool {
        self.labels.source_encoder.is_some()
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

    /// The attack's setting: attacks in one setting share a table and a chart.
    pub fn setting(&self) -> Option<Setting> {
        self.labels.params.as_ref().map(Setting::of)
    }
}

/// Everything an attack cell was computed under but its kind, ε and seed. Cells of one setting
/// share a table and a chart and are averaged over seeds; cells of different settings are never
/// pooled.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub norm: Norm,
    pub steps: usize,
    /// The step as given (`eps/4`, `2/255`).
    pub step: String,
    pub restarts: usize,
    pub random_start: bool,
    pub embed_target: EmbedTarget,
    pub embed_distance: Distance,
    pub embed_scope: EmbedScope,
    pub segpgd: SegPgdForm,
    pub ce_scaling: bool,
    pub iterate: Iterate,
}

impl Setting {
    pub fn of(p: &AttackSpec) -> Setting {
        Setting {
            norm: p.norm,
            steps: p.steps,
            step: p.step_text.clone(),
            restarts: p.restarts,
            random_start: p.random_start,
            embed_target: p.embed_target,
            embed_distance: p.embed_distance,
            embed_scope: p.embed_scope,
            segpgd: p.segpgd,
            ce_scaling: p.ce_scaling,
            iterate: p.iterate,
        }
    }

    /// `L∞ 20 steps`, then whatever differs from the defaults.
    pub fn text(&self) -> String {
        let d = AttackSpec::new(AttackKind::Embed);
        let mut t = format!("{} {} steps", if self.norm == Norm::Linf { "L∞" } else { "L2" }, self.steps);
        if self.step != d.step_text {
            t += &format!(", step {}", self.step);
        }
        if self.restarts != d.restarts {
            t += &format!(", {} restarts", self.restarts);
        }
        if !self.random_start {
            t += ", no random start";
        }
        if (self.embed_target, self.embed_distance, self.embed_scope) != (d.embed_target, d.embed_distance, d.embed_scope) {
            t += &format!(", EmbedAttack {} on {} tokens by {}", self.embed_scope, self.embed_target, self.embed_distance);
        }
        if self.segpgd != d.segpgd {
            t += &format!(", SegPGD {} form", self.segpgd);
        }
        if self.ce_scaling {
            t += ", PGD logits scaled";
        }
        if self.iterate != d.iterate {
            t += &format!(", {} iterate", self.iterate);
        }
        t
    }
}

pub struct Results {
    pub title: String,
    pub entries: Vec<Entry>,
    /// Cells of the plan not in the store.
    pub missing: usize,
    pub examples: Vec<Example>,
    /// How long each attack cell's work took, by cell key.
    pub timings: std::collections::HashMap<String, Timing>,
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
        Ok(Results { title, entries, missing, examples: store.examples()?, timings: store.timings()?, multi })
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

    /// Every attack setting present (transfer attacks aside), in order of appearance.
    pub fn settings(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        for s in self.entries.iter().filter(|e| !e.transferred()).filter_map(Entry::setting) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// The ε values of a setting (transfer attacks aside), ascending, with their text.
    pub fn eps_values(&self, setting: &Setting) -> Vec<(f64, String)> {
        eps_of(self.entries.iter().filter(|e| !e.transferred() && e.setting().as_ref() == Some(setting)))
    }

    /// The study's ε: 8/255 under L∞ when present, else the largest.
    pub fn reference_eps(&self, setting: &Setting) -> Option<(f64, String)> {
        reference_of(setting, self.eps_values(setting))
    }

    /// The attacked cells of one row, setting, attack and ε (one per seed), own attacks only.
    pub fn attacked(&self, encoder: &str, head: &str, setting: &Setting, attack: AttackKind, eps: f64) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.labels.condition == Condition::Attack && e.own() && e.labels.encoder == encoder && self.head_label(e) == head)
            .filter(|e| e.setting().as_ref() == Some(setting) && e.labels.attack == Some(attack) && e.eps() == Some(eps))
            .collect()
    }

    /// The attacks present in a setting (transfer attacks aside), in a fixed order (embed, the
    /// task attacks, apgd).
    pub fn attacks(&self, setting: &Setting) -> Vec<AttackKind> {
        let present: Vec<AttackKind> = self
            .entries
            .iter()
            .filter(|e| !e.transferred() && e.setting().as_ref() == Some(setting))
            .filter_map(|e| e.labels.attack)
            .collect();
        AttackKind::ALL.iter().copied().filter(|a| present.contains(a)).collect()
    }
}

/// The ε values of `entries`, ascending, with their text.
pub fn eps_of<'a>(entries: impl Iterator<Item = &'a Entry>) -> Vec<(f64, String)> {
    let mut v: Vec<(f64, String)> = Vec::new();
    for e in entries {
        let p = e.labels.params.as_ref().expect("attack cells have params");
        if !v.iter().any(|(x, _)| *x == p.eps) {
            v.push((p.eps, p.eps_text.clone()));
        }
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The study's ε among `all` (ascending): 8/255 under L∞ when present, else the largest.
pub fn reference_of(setting: &Setting, all: Vec<(f64, String)>) -> Option<(f64, String)> {
    all.iter().find(|(e, _)| setting.norm == Norm::Linf && (e - 8.0 / 255.0).abs() < 1e-12).cloned().or_else(|| all.last().cloned())
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

/// Hand-built results for the report's tests: classification attack cells of one head in a store.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;
    use crate::experiment::plan::{Condition, Labels};
    use crate::experiment::store::{CellResult, CellRow};
    use crate::heads::evaluate::{Evaluation, Metrics};
    use crate::heads::head::{Baseline, Task};
    use crate::heads::sample_score::SampleScore;

    /// One attack cell of head `head` of task `t` on encoder `e`: its key, spec, and robust
    /// accuracy as a figure or as per-image outcomes (4 images, all clean-correct).
    pub struct Cell {
        pub key: &'static str,
        pub spec: AttackSpec,
        pub accuracy: f64,
        pub robust: Option<[bool; 4]>,
    }

    /// The results of `cells`, with the store (kept open in `dir`) they were read from.
    pub fn results(dir: &std::path::Path, cells: Vec<Cell>) -> Results {
        let mut store = Store::open(&dir.join("results.sqlite")).unwrap();
        let eval = |a: f64| Evaluation {
            samples: 4,
            head: Metrics::Cls { accuracy: a, correct: (a * 4.0) as u64, total: 4 },
            baseline: Metrics::Cls { accuracy: 0.25, correct: 1, total: 4 },
            baseline_kind: Baseline::MajorityClass(0),
        };
        let mut plan = Vec::new();
        for c in cells {
            let labels = Labels {
                encoder: "e".into(),
                task: "t".into(),
                task_kind: Task::Cls,
                head: "head".into(),
                dataset: "d".into(),
                condition: Condition::Attack,
                attack: Some(c.spec.kind),
                attacked: Some("t".into()),
                params: Some(c.spec),
                source_encoder: None,
            };
            let per_sample = c.robust.map(|r| r.iter().enumerate().map(|(i, &correct)| (i, SampleScore::Cls { correct })).collect());
            let result = CellResult {
                samples: 4,
                clean: eval(1.0),
                adversarial: Some(eval(c.accuracy)),
                mean_objective: Some(1.0),
                sanity: None,
                curve: None,
                per_sample,
                per_sample_clean: None,
            };
            store.put_cells(c.key, &[CellRow { key: c.key.into(), labels: labels.clone(), result }]).unwrap();
            plan.push((c.key.to_string(), labels));
        }
        store.set_meta("plan", &serde_json::to_string(&plan).unwrap()).unwrap();
        Results::load(&store).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{results, Cell};
    use super::*;

    /// Two attack cells that differ only in their step are two settings, never one mean ± std;
    /// the same setting at two seeds is one.
    #[test]
    fn settings_that_differ_are_never_pooled() {
        let dir = tempfile::tempdir().unwrap();
        let cells = [("a", "eps/4", 0, 0.5), ("b", "eps/4", 1, 0.25), ("c", "2/255", 0, 0.0)].map(|(key, step, seed, accuracy)| {
            let mut spec = AttackSpec::new(AttackKind::Pgd);
            (spec.step_text, spec.seed) = (step.to_string(), seed);
            Cell { key, spec, accuracy, robust: None }
        });
        let r = results(dir.path(), cells.into());
        let settings = r.settings();
        assert_eq!(settings.len(), 2, "{settings:?}");
        assert_eq!(settings[0].text(), "L∞ 20 steps");
        assert_eq!(settings[1].text(), "L∞ 20 steps, step 2/255");
        let eps = 8.0 / 255.0;
        assert_eq!(values(&r.attacked("e", "t", &settings[0], AttackKind::Pgd, eps), Predictor::Adversarial), [0.5, 0.25]);
        assert_eq!(values(&r.attacked("e", "t", &settings[1], AttackKind::Pgd, eps), Predictor::Adversarial), [0.0]);
    }

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
