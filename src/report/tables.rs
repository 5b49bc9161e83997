//! The report's tables, as plain rows of text: the study's table (clean / EmbedAttack / task
//! attack per encoder × task at the study's ε), robustness at every ε, cross-task transfer of the
//! task attacks, the attacks' sanity checks, and the curves' data. Transfer across encoders has
//! its own matrices (`super::transfer`).

use super::per_sample::{figure, worst_case};
use super::plots::{Chart, Series};
use super::results::{format_metric, mean_std, metric_name, values, Results, Setting};
use crate::attacks::embed::EmbedScope;
use crate::attacks::spec::AttackKind;
use crate::attacks::threat::Norm;
use crate::experiment::plan::Condition;
use crate::experiment::store::Predictor;

pub struct Table {
    pub title: String,
    pub note: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The study's table for each attack setting: per encoder × task, the clean figure, then each
/// attack's at the study's ε (mean ± std over seeds when there are several).
pub fn study(r: &Results) -> Vec<Table> {
    let mut out = Vec::new();
    if r.settings().is_empty() {
        let rows = r
            .rows()
            .into_iter()
            .map(|(enc, head, clean)| {
                let m = clean.metric();
                vec![
                    enc,
                    head,
                    metric_name(m).into(),
                    format_metric(m, clean.value(Predictor::Baseline).map(|v| (v, None))),
                    format_metric(m, clean.value(Predictor::Clean).map(|v| (v, None))),
                ]
            })
            .collect();
        out.push(Table {
            title: "Clean performance".into(),
            note: "No attack in this experiment. Baseline: the trivial predictor of the training split.".into(),
            header: ["encoder", "task", "metric", "baseline", "clean"].map(String::from).to_vec(),
            rows,
        });
    }
    for setting in r.settings() {
        let Some((eps, eps_text)) = r.reference_eps(&setting) else { continue };
        let attacks = r.attacks(&setting);
        let mut header = vec!["encoder".into(), "task".into(), "metric".into(), "baseline".into(), "clean".into()];
        let collapsed: Vec<AttackKind> =
            attacks.iter().map(|a| if a.is_task_attack() { AttackKind::Task } else { *a }).fold(Vec::new(), |mut v, a| {
                if !v.contains(&a) {
                    v.push(a);
                }
                v
            });
        header.extend(collapsed.iter().map(|a| a.display_name().to_string()));
        header.push("worst case".into());
        let mut rows = Vec::new();
        for (enc, head, clean) in r.rows() {
            let metric = clean.metric();
            let mut row = vec![
                enc.clone(),
                head.clone(),
                metric_name(metric).into(),
                format_metric(metric, clean.value(Predictor::Baseline).map(|v| (v, None))),
                format_metric(metric, clean.value(Predictor::Clean).map(|v| (v, None))),
            ];
            for col in &collapsed {
                let task = *col == AttackKind::Task;
                let cells: Vec<_> = attacks
                    .iter()
                    .filter(|a| (task && a.is_task_attack()) || *a == col)
                    .flat_map(|a| r.attacked(&enc, &head, &setting, *a, eps))
                    .collect();
                let name = cells
                    .first()
                    .and_then(|c| c.labels.attack)
                    .map(|a| format!(" ({})", a.display_name()))
                    .filter(|_| task)
                    .unwrap_or_default();
                let v = format_metric(metric, mean_std(&values(&cells, Predictor::Adversarial)));
                row.push(if v == "–" { v } else { v + &name });
            }
            row.push(worst_figure(r, &enc, &head, setting.norm, eps, metric));
            rows.push(row);
        }
        out.push(Table {
            title: format!("Robustness at ε = {eps_text}, {}", setting.text()),
            note: format!(
                "Clean and attacked figures of each head on its evaluation samples (worst case: per image, the attack that did worst on it, over every attack on the head at this norm and ε in any setting — see the worst-case table; robust accuracy counts a sample classified correctly on the clean input and under the attack, as AutoAttack and RobustBench do); {}; the task attack is PGD (classification), SegPGD (segmentation) or DepthPGD (depth) against that head. Baseline: the trivial predictor of the training split (majority class, mean depth).",
                match setting.embed_scope {
                    EmbedScope::PerTask => "EmbedAttack runs once per task, on the embedding that task's head reads unless a target is stated (the study's way)",
                    EmbedScope::Shared => "EmbedAttack's perturbation is computed once per image and scored on every task of that image",
                }
            ),
            header,
            rows,
        });
    }
    out
}

/// Each row × attack at every ε of each setting.
pub fn per_eps(r: &Results) -> Vec<Table> {
    let mut out = Vec::new();
    for setting in r.settings() {
        let eps = r.eps_values(&setting);
        let mut header = vec!["encoder".into(), "task".into(), "attack".into(), "clean".into()];
        header.extend(eps.iter().map(|(_, t)| format!("ε {t}")));
        let mut rows = Vec::new();
        for (enc, head, clean) in r.rows() {
            let metric = clean.metric();
            for a in r.attacks(&setting) {
                let mut row = vec![
                    enc.clone(),
                    head.clone(),
                    a.display_name().into(),
                    format_metric(metric, clean.value(Predictor::Clean).map(|v| (v, None))),
                ];
                let mut any = false;
                for (e, _) in &eps {
                    let cells = r.attacked(&enc, &head, &setting, a, *e);
                    any |= !cells.is_empty();
                    row.push(format_metric(metric, mean_std(&values(&cells, Predictor::Adversarial))));
                }
                if any {
                    rows.push(row);
                }
            }
            let mut row = vec![
                enc.clone(),
                head.clone(),
                "worst case (every attack)".into(),
                format_metric(metric, clean.value(Predictor::Clean).map(|v| (v, None))),
            ];
            row.extend(eps.iter().map(|(e, _)| worst_figure(r, &enc, &head, setting.norm, *e, metric)));
            if row[4..].iter().any(|v| v != "–") {
                rows.push(row);
            }
        }
        out.push(Table {
            title: format!("Robustness vs ε, {}", setting.text()),
            note: "The head's primary metric under each attack (mean ± std over seeds), and the worst case per image over every attack on the head at that norm and ε (any setting).".into(),
            header,
            rows,
        });
    }
    out
}

/// Task attacks aimed at one head and scored on the other tasks of the same images (on the
/// encoder that crafted them; across encoders see `super::transfer`).
pub fn cross_task(r: &Results) -> Option<Table> {
    let mut rows = Vec::new();
    for setting in r.settings() {
        let Some((eps, eps_text)) = r.reference_eps(&setting) else { continue };
        for e in r
            .entries
            .iter()
            .filter(|e| !e.aimed_here() && !e.transferred() && e.eps() == Some(eps) && e.setting().as_ref() == Some(&setting))
        {
            let metric = e.metric();
            rows.push(vec![
                e.labels.encoder.clone(),
                format!("{} on {}", e.labels.attack.map_or("?", AttackKind::display_name), e.labels.attacked.clone().unwrap_or_default()),
                r.head_label(e),
                format!("ε {eps_text}, {}, seed {}", setting.text(), e.labels.params.as_ref().map_or(0, |p| p.seed)),
                metric_name(metric).into(),
                format_metric(metric, e.value(Predictor::Clean).map(|v| (v, None))),
                format_metric(metric, e.value(Predictor::Adversarial).map(|v| (v, None))),
            ]);
        }
    }
    (!rows.is_empty()).then(|| Table {
        title: "Cross-task transfer of task attacks".into(),
        note: "A perturbation made against one head, scored on another task of the same images.".into(),
        header: ["encoder", "perturbation", "scored on", "attack", "metric", "clean", "attacked"].map(String::from).to_vec(),
        rows,
    })
}

/// The attacks' checks: the budget and the pixel range held, and how many gradient steps saw a
/// zero or NaN gradient (a sign of gradient masking).
pub fn sanity(r: &Results) -> Table {
    let mut rows = Vec::new();
    for e in r.entries.iter().filter(|e| e.labels.condition == Condition::Attack && e.aimed_here()) {
        let Some(s) = &e.row.result.sanity else { continue };
        let p = e.labels.params.as_ref().expect("attack cells have params");
        rows.push(vec![
            match &e.labels.source_encoder {
                Some(source) => format!("{} (crafted on {source})", e.labels.encoder),
                None => e.labels.encoder.clone(),
            },
            r.head_label(e),
            e.labels.attack.map_or("?", AttackKind::display_name).into(),
            format!("{} ε {} seed {}", Setting::of(p).text(), p.eps_text, p.seed),
            format!("{:.6}", s.max_norm_over_eps),
            format!("[{:.4}, {:.4}]", s.min_pixel, s.max_pixel),
            format!("{} / {} / {} / {}", s.zero_gradients, s.nan_gradients, s.saturated, s.sample_steps),
            format!("{:.5}", e.row.result.mean_objective.unwrap_or(f64::NAN)),
            flags(s),
        ]);
    }
    Table {
        title: "Sanity of the attacks".into(),
        note: "Largest ‖δ‖/ε over every step (at most 1, up to f32 rounding), the pixel range seen, sample-steps with a zero / NaN pixel gradient, evaluations with a saturated softmax (cross-entropy < 2⁻²³: its gradient underflows; the study's logit scaling avoids it), out of all steps; warnings: ε ≥ 1 under L∞ (any pixel value allowed), no gradient step, head outputs that were probabilities already (a softmax at the head's output), samples with a zero gradient at the start, a randomised model (two passes differ), samples only the gradient-free Square broke (possible gradient masking) — AutoAttack's checks.".into(),
        header: ["encoder", "head", "attack", "setting", "max ‖δ‖/ε", "pixels", "zero / NaN / saturated / steps", "mean objective", "warnings"].map(String::from).to_vec(),
        rows,
    }
}

/// The settings and outputs an attack's checks warned about, briefly.
fn flags(s: &crate::attacks::engine::Sanity) -> String {
    let mut f = Vec::new();
    if s.eps_unbounded {
        f.push("ε ≥ 1".to_string());
    }
    if s.no_steps {
        f.push("no steps".to_string());
    }
    if s.probability_outputs > 0 {
        f.push(format!("{} probability outputs", s.probability_outputs));
    }
    if s.zero_start_gradients > 0 {
        f.push(format!("{} zero gradients at the start", s.zero_start_gradients));
    }
    if s.randomized > 0 {
        f.push(format!("randomised model ({} batches)", s.randomized));
    }
    if s.square_successes > 0 {
        f.push(format!("possible gradient masking: Square broke {} more", s.square_successes));
    }
    if f.is_empty() {
        "–".into()
    } else {
        f.join(", ")
    }
}

/// One chart per head label and setting: a line per encoder and attack, clean at ε = 0.
pub fn charts(r: &Results) -> Vec<(String, Chart)> {
    let mut out = Vec::new();
    let mut heads: Vec<String> = Vec::new();
    for (_, h, _) in r.rows() {
        if !heads.contains(&h) {
            heads.push(h);
        }
    }
    for setting in r.settings() {
        let linf = setting.norm == Norm::Linf;
        for head in &heads {
            let mut series = Vec::new();
            let mut metric = "";
            for (enc, h, clean) in r.rows().into_iter().filter(|(_, h, _)| h == head) {
                metric = clean.metric();
                for a in r.attacks(&setting) {
                    let mut points: Vec<(f64, f64)> = clean.value(Predictor::Clean).map(|v| vec![(0.0, v)]).unwrap_or_default();
                    for (e, _) in r.eps_values(&setting) {
                        if let Some((m, _)) = mean_std(&values(&r.attacked(&enc, &h, &setting, a, e), Predictor::Adversarial)) {
                            points.push((if linf { e * 255.0 } else { e }, m));
                        }
                    }
                    if points.len() > 1 {
                        series.push(Series { name: format!("{enc} · {}", a.display_name()), points });
                    }
                }
            }
            if series.is_empty() {
                continue;
            }
            let pct = matches!(metric, "accuracy" | "miou");
            if pct {
                series.iter_mut().for_each(|s| s.points.iter_mut().for_each(|p| p.1 *= 100.0));
            }
            let file = chart_file(head, &setting);
            out.push((
                file,
                Chart {
                    title: format!("{head}: {} vs ε ({})", metric_name(metric), setting.text()),
                    x_label: if linf { "ε (× 1/255)".into() } else { "ε (L2)".into() },
                    y_label: y_label(metric),
                    series,
                },
            ));
        }
    }
    out
}

/// A chart's file name: the head and the setting (the default keeps its short name; others add
/// what differs).
fn chart_file(head: &str, setting: &Setting) -> String {
    let text = setting.text();
    let extra =
        text.split_once(", ").map(|(_, rest)| format!("-{}", rest.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))).unwrap_or_default();
    format!("{}-{}-{}steps{extra}", head.replace(|c: char| !c.is_ascii_alphanumeric(), "_"), setting.norm, setting.steps)
}

/// A chart's axis for `metric`: percentages for accuracy and mIoU.
fn y_label(metric: &str) -> String {
    match metric {
        "accuracy" => "accuracy (%)".into(),
        "miou" => "mIoU (%)".into(),
        _ => "RMSE (m)".into(),
    }
}

/// Metric-vs-step curves of the attacks that recorded one (the study's per-step evaluation): a
/// chart per head and setting, a line per encoder, attack and ε (the first seed's), step 0 being
/// the starting point.
pub fn step_charts(r: &Results) -> Vec<(String, Chart)> {
    let mut groups: Vec<(String, Setting, &'static str, Vec<Series>)> = Vec::new();
    for e in r.entries.iter().filter(|e| e.labels.condition == Condition::Attack && e.own()) {
        let (Some(curve), Some(setting), Some(params)) = (&e.row.result.curve, e.setting(), &e.labels.params) else { continue };
        let metric = e.metric();
        let scale = if matches!(metric, "accuracy" | "miou") { 100.0 } else { 1.0 };
        let points: Vec<(f64, f64)> = curve
            .iter()
            .enumerate()
            .filter_map(|(step, m)| m.figures().into_iter().find(|(n, _)| *n == metric).map(|(_, v)| (step as f64, v * scale)))
            .collect();
        let head = r.head_label(e);
        let attack = e.labels.attack.map_or("attack".to_string(), |a| a.display_name().to_string());
        let name = format!("{} · {attack} · ε {}", e.labels.encoder, params.eps_text);
        let at = match groups.iter().position(|g| g.0 == head && g.1 == setting) {
            Some(i) => i,
            None => {
                groups.push((head, setting, metric, Vec::new()));
                groups.len() - 1
            }
        };
        if !groups[at].3.iter().any(|s| s.name == name) {
            groups[at].3.push(Series { name, points });
        }
    }
    groups
        .into_iter()
        .map(|(head, setting, metric, series)| {
            let file = format!("{}-per-step", chart_file(&head, &setting));
            let chart = Chart {
                title: format!("{head}: {} after each step ({})", metric_name(metric), setting.text()),
                x_label: "step".into(),
                y_label: y_label(metric),
                series,
            };
            (file, chart)
        })
        .collect()
}

/// The worst case per image over every attack on one head at (norm, ε), formatted; "–" where no
/// cell has per-image scores.
fn worst_figure(r: &Results, encoder: &str, head: &str, norm: Norm, eps: f64, metric: &str) -> String {
    let worst = worst_case(&r.on_head(encoder, head, norm, eps)).ok().flatten();
    format_metric(metric, worst.and_then(|w| figure(&w, metric)).map(|v| (v, None)))
}
