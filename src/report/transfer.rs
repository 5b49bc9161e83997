//! Transfer across encoders as matrices: for each head (task), attack and setting, at the study's
//! ε, the figure of every target encoder's head (columns) under the perturbations crafted on
//! every surrogate encoder (rows), beside the clean figure and, on the diagonal, the white-box
//! attack of the encoder on itself where the experiment runs it.

use super::results::{eps_of, format_metric, mean_std, metric_name, reference_of, values, Entry, Results, Setting};
use super::tables::Table;
use crate::attacks::spec::AttackKind;
use crate::experiment::plan::Condition;
use crate::experiment::store::Predictor;

/// The transfer cells: crafted on another encoder, aimed at the scored head's task (or at no
/// head: EmbedAttack).
fn transferred(r: &Results) -> impl Iterator<Item = &Entry> {
    r.entries.iter().filter(|e| e.labels.condition == Condition::Attack && e.transferred() && e.aimed_here())
}

/// One matrix per head label × setting × attack with transfer cells.
pub fn matrices(r: &Results) -> Vec<Table> {
    // (head label, setting, attack) in order of appearance.
    let mut groups: Vec<(String, Setting, AttackKind)> = Vec::new();
    for e in transferred(r) {
        let (Some(setting), Some(attack)) = (e.setting(), e.labels.attack) else { continue };
        let g = (r.head_label(e), setting, attack);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let rows = r.rows();
    let mut out = Vec::new();
    for (head, setting, attack) in groups {
        let cells: Vec<&Entry> = transferred(r)
            .filter(|e| r.head_label(e) == head && e.setting().as_ref() == Some(&setting) && e.labels.attack == Some(attack))
            .collect();
        let Some((eps, eps_text)) = reference_of(&setting, eps_of(cells.iter().copied())) else { continue };
        let at_eps: Vec<&Entry> = cells.into_iter().filter(|e| e.eps() == Some(eps)).collect();
        // Columns: the encoders with this head, in the experiment's order; rows: the surrogates.
        let targets: Vec<(&str, &Entry)> =
            rows.iter().filter(|(_, h, _)| *h == head).map(|(enc, _, clean)| (enc.as_str(), *clean)).collect();
        let mut sources: Vec<&str> = Vec::new();
        for (enc, _) in &targets {
            if at_eps.iter().any(|e| e.labels.source_encoder.as_deref() == Some(*enc)) {
                sources.push(enc);
            }
        }
        for e in &at_eps {
            let s = e.labels.source_encoder.as_deref().expect("transfer cells name their source");
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
        let metric = at_eps.first().map_or("accuracy", |e| e.metric());
        let mut header = vec!["crafted on ↓ · scored on →".to_string()];
        header.extend(targets.iter().map(|(t, _)| t.to_string()));
        let mut table_rows = vec![{
            let mut row = vec!["clean".to_string()];
            row.extend(targets.iter().map(|(_, clean)| format_metric(metric, clean.value(Predictor::Clean).map(|v| (v, None)))));
            row
        }];
        for source in &sources {
            let mut row = vec![source.to_string()];
            for (target, _) in &targets {
                let figure = if source == target {
                    // The white-box attack of the encoder on itself, where the experiment runs it.
                    let own = r.attacked(target, &head, &setting, attack, eps);
                    let v = format_metric(metric, mean_std(&values(&own, Predictor::Adversarial)));
                    if own.is_empty() {
                        v
                    } else {
                        format!("{v} (white-box)")
                    }
                } else {
                    let mine: Vec<&Entry> = at_eps
                        .iter()
                        .copied()
                        .filter(|e| e.labels.source_encoder.as_deref() == Some(*source) && e.labels.encoder == *target)
                        .collect();
                    format_metric(metric, mean_std(&values(&mine, Predictor::Adversarial)))
                };
                row.push(figure);
            }
            table_rows.push(row);
        }
        out.push(Table {
            title: format!("Transfer across encoders: {head} under {} at ε = {eps_text}, {}", attack.display_name(), setting.text()),
            note: format!(
                "{} of each column's {head} head on its evaluation samples (mean ± std over seeds), under perturbations crafted \
                 on the row's encoder — {} — and scored on the column's; the first row is the clean figure, the diagonal the \
                 white-box attack of an encoder on itself where the experiment runs it (– where it does not).",
                metric_name(metric),
                if attack.is_embed() {
                    "EmbedAttack on the surrogate's own embedding"
                } else {
                    "the attack against the surrogate's own head of this task"
                }
            ),
            header,
            rows: table_rows,
        });
    }
    out
}
