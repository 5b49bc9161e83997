//! The worst-case table: for each head and threat model, the strongest single attack, the
//! strongest EmbedAttack and the worst case per sample over every attack run on the head, with
//! the gradient-free check (images only Square broke that far: possible gradient masking).

use anyhow::Result;

use super::per_sample::{figure, gradient_free_wins, worst_case};
use super::results::{format_metric, metric_name, Results};
use super::tables::Table;
use crate::attacks::spec::AttackKind;
use crate::attacks::threat::Norm;
use crate::experiment::store::Predictor;

pub fn table(r: &Results) -> Result<Option<Table>> {
    let mut rows = Vec::new();
    for (enc, head, clean) in r.rows() {
        let metric = clean.metric();
        let lower_is_worse = metric != "rmse";
        for (norm, eps, eps_text) in r.threats() {
            let cells = r.on_head(&enc, &head, norm, eps);
            let Some(worst) = worst_case(&cells)? else { continue };
            // The strongest single cell by its own figure.
            let strongest = cells.iter().filter_map(|e| e.value(Predictor::Adversarial).map(|v| (v, e))).min_by(|a, b| {
                if lower_is_worse {
                    a.0.total_cmp(&b.0)
                } else {
                    b.0.total_cmp(&a.0)
                }
            });
            let embed: Vec<_> = cells.iter().filter(|e| e.labels.attack.is_some_and(AttackKind::is_embed)).copied().collect();
            let embed = worst_case(&embed)?.and_then(|w| figure(&w, metric));
            let check = match gradient_free_wins(&cells) {
                Some((0, n)) => format!("0 of {n}"),
                Some((k, n)) => format!("{k} of {n}: possible gradient masking"),
                None => "– (no Square)".into(),
            };
            rows.push(vec![
                enc.clone(),
                head.clone(),
                format!("{} {eps_text}", if norm == Norm::Linf { "L∞" } else { "L2" }),
                metric_name(metric).into(),
                format_metric(metric, clean.value(Predictor::Clean).map(|v| (v, None))),
                strongest.map_or("–".into(), |(v, e)| {
                    format!("{} ({})", format_metric(metric, Some((v, None))), e.labels.attack.map_or("?", AttackKind::display_name))
                }),
                format_metric(metric, embed.map(|v| (v, None))),
                format_metric(metric, figure(&worst, metric).map(|v| (v, None))),
                if worst.without_scores > 0 {
                    format!("{} (+{} without per-image scores)", worst.pooled, worst.without_scores)
                } else {
                    worst.pooled.to_string()
                },
                check,
            ]);
        }
    }
    Ok((!rows.is_empty()).then(|| Table {
        title: "Worst case over every attack".into(),
        note: "For each image, the attack that did worst on it (misclassified — correct on the clean input and under the attack counts as robust; the lowest pixel accuracy; the highest RMSE), over every attack cell scored on the head at that norm and ε: every kind, setting, seed, transfer and cross-task attack. The strongest single attack is the cell with the worst figure of its own; the strongest EmbedAttack pools every EmbedAttack variant per image. For segmentation the per-image choice is by pixel accuracy, so the pooled mIoU can exceed the strongest single attack's. Gradient-free check: images on which Square did strictly worse than every gradient attack (AutoAttack's ensemble, which holds Square, counts as neither); any is a sign of gradient masking.".into(),
        header: ["encoder", "task", "threat", "metric", "clean", "strongest attack", "strongest EmbedAttack", "worst case", "attacks pooled", "Square beat every gradient attack on"]
            .map(String::from)
            .to_vec(),
        rows,
    }))
}
