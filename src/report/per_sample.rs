//! Results pooled per sample over attacks: the worst case (for each image, the attack that did
//! worst on it — AutoAttack's per-sample worst case, SEA's per-image one; for mIoU, a
//! dataset-level figure, SEA's greedy re-pick of images), the strongest of a
//! family of attacks (every EmbedAttack), and the gradient-free check (images a gradient-free
//! attack broke further than every gradient attack: possible gradient masking).

use std::collections::BTreeMap;

use anyhow::Result;

use super::results::{Entry, Results};
use crate::attacks::spec::AttackKind;
use crate::attacks::threat::Norm;
use crate::experiment::plan::Condition;
use crate::heads::evaluate::Metrics;
use crate::heads::sample_score::{combine, lowest_miou_choice, SampleScore};

/// The worst case over some attack cells of one head.
#[derive(Debug, Clone)]
pub struct WorstCase {
    pub metrics: Metrics,
    /// Cells pooled (those with per-image scores).
    pub pooled: usize,
    /// Cells left out: computed by an older version, without per-image scores.
    pub without_scores: usize,
    pub samples: usize,
}

impl Results {
    /// Every attack cell scored on `head` of `encoder` under one threat model (norm, ε): every
    /// kind, setting and seed, transfer and cross-task attacks included.
    pub fn on_head(&self, encoder: &str, head: &str, norm: Norm, eps: f64) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.labels.condition == Condition::Attack && e.labels.encoder == encoder && self.head_label(e) == head)
            .filter(|e| e.labels.params.as_ref().is_some_and(|p| p.norm == norm && p.eps == eps))
            .collect()
    }

    /// The threat models (norm, ε, ε's text) any attack of the run used, by norm then ε.
    pub fn threats(&self) -> Vec<(Norm, f64, String)> {
        let mut out: Vec<(Norm, f64, String)> = Vec::new();
        for p in self.entries.iter().filter_map(|e| e.labels.params.as_ref()) {
            if !out.iter().any(|(n, e, _)| *n == p.norm && *e == p.eps) {
                out.push((p.norm, p.eps, p.eps_text.clone()));
            }
        }
        out.sort_by(|a, b| (a.0 == Norm::L2).cmp(&(b.0 == Norm::L2)).then(a.1.total_cmp(&b.1)));
        out
    }
}

/// Each image's worst score over `cells`: (image index → (cell's place in `cells`, score)).
fn worst_per_image<'a>(cells: &[&'a Entry]) -> BTreeMap<usize, (usize, &'a SampleScore)> {
    let mut worst: BTreeMap<usize, (usize, &SampleScore)> = BTreeMap::new();
    for (k, e) in cells.iter().enumerate() {
        for (id, s) in e.row.result.per_sample.iter().flatten() {
            match worst.get(id) {
                Some((_, w)) if w.badness() >= s.badness() => {}
                _ => {
                    worst.insert(*id, (k, s));
                }
            }
        }
    }
    worst
}

/// The worst case per image over `cells` (of one head); `None` when no cell has per-image
/// scores.
pub fn worst_case(cells: &[&Entry]) -> Result<Option<WorstCase>> {
    let pooled = cells.iter().filter(|e| e.row.result.per_sample.is_some()).count();
    let worst = worst_per_image(cells);
    if worst.is_empty() {
        return Ok(None);
    }
    let mut metrics = combine(worst.values().map(|(_, s)| *s))?;
    if let Metrics::Seg { miou, iou_per_class, .. } = &mut metrics {
        // mIoU is a dataset-level figure: SEA takes its worst case by re-picking images greedily,
        // from the per-image choice and from each attack alone.
        let ids: Vec<usize> = worst.keys().copied().collect();
        let scored: Vec<BTreeMap<usize, &SampleScore>> =
            cells.iter().map(|e| e.row.result.per_sample.iter().flatten().map(|(id, s)| (*id, s)).collect()).collect();
        let candidates: Vec<Vec<(usize, &SampleScore)>> =
            ids.iter().map(|id| scored.iter().enumerate().filter_map(|(k, m)| m.get(id).map(|s| (k, *s))).collect()).collect();
        let place = |i: usize, k: usize| candidates[i].iter().position(|c| c.0 == k);
        let mut starts = vec![ids.iter().enumerate().map(|(i, id)| place(i, worst[id].0).expect("the chosen cell")).collect::<Vec<_>>()];
        for k in 0..cells.len() {
            if let Some(all) = (0..ids.len()).map(|i| place(i, k)).collect::<Option<Vec<_>>>() {
                starts.push(all);
            }
        }
        let options: Vec<Vec<&SampleScore>> = candidates.iter().map(|c| c.iter().map(|x| x.1).collect()).collect();
        let choice = lowest_miou_choice(&options, &starts)?;
        if let Metrics::Seg { miou: m, iou_per_class: per, .. } = combine(choice.iter().enumerate().map(|(i, &j)| options[i][j]))? {
            (*miou, *iou_per_class) = (m, per);
        }
    }
    Ok(Some(WorstCase { metrics, pooled, without_scores: cells.len() - pooled, samples: worst.len() }))
}

/// The gradient-free check over the cells of one head and threat model: the images on which a
/// gradient-free attack (Square) did strictly worse than every gradient attack run on them, and
/// the images both kinds scored. `None` without both kinds. AutoAttack's ensemble, which holds
/// Square, counts as neither.
pub fn gradient_free_wins(cells: &[&Entry]) -> Option<(usize, usize)> {
    let kind = |e: &&&Entry| e.labels.attack;
    let free: Vec<&Entry> = cells.iter().filter(|e| kind(e) == Some(AttackKind::Square)).copied().collect();
    let white: Vec<&Entry> =
        cells.iter().filter(|e| !matches!(kind(e), Some(AttackKind::Square | AttackKind::AutoAttack) | None)).copied().collect();
    let (free, white) = (worst_per_image(&free), worst_per_image(&white));
    if free.is_empty() || white.is_empty() {
        return None;
    }
    let both: Vec<usize> = free.keys().filter(|id| white.contains_key(id)).copied().collect();
    let wins = both.iter().filter(|id| free[id].1.badness() > white[id].1.badness()).count();
    Some((wins, both.len()))
}

/// The primary figure of a worst case, for a table.
pub fn figure(w: &WorstCase, metric: &str) -> Option<f64> {
    w.metrics.get(metric)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::spec::AttackSpec;
    use crate::report::results::fixture::{results, Cell};

    /// Four images under PGD, APGD, Square and AutoAttack (robust: ✓). PGD breaks image 1, APGD
    /// image 0, Square image 2, AutoAttack image 0: by AutoAttack's per-sample worst case only
    /// image 3 is robust (25%), though no attack alone leaves less than 75%. Square beat every
    /// gradient attack on image 2 only (AutoAttack, which holds Square, is neither side).
    #[test]
    fn worst_case_and_gradient_free_check_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let cells = [
            ("pgd", AttackKind::Pgd, [true, false, true, true]),
            ("apgd", AttackKind::Apgd, [false, true, true, true]),
            ("square", AttackKind::Square, [true, true, false, true]),
            ("aa", AttackKind::AutoAttack, [false, true, true, true]),
        ]
        .map(|(key, kind, robust)| Cell { key, spec: AttackSpec::new(kind), accuracy: 0.75, robust: Some(robust) });
        let r = results(dir.path(), cells.into());
        let eps = AttackSpec::new(AttackKind::Pgd).eps;
        let cells = r.on_head("e", "t", Norm::Linf, eps);
        assert_eq!(cells.len(), 4);
        let w = worst_case(&cells).unwrap().unwrap();
        assert_eq!((w.pooled, w.without_scores, w.samples), (4, 0, 4));
        assert_eq!(figure(&w, "accuracy"), Some(0.25));
        assert_eq!(gradient_free_wins(&cells), Some((1, 4)));
        // Without Square there is nothing to check; another ε has no cell.
        let no_square: Vec<&Entry> = cells.iter().filter(|e| e.labels.attack != Some(AttackKind::Square)).copied().collect();
        assert_eq!(gradient_free_wins(&no_square), None);
        assert!(r.on_head("e", "t", Norm::Linf, 2.0 * eps).is_empty());
        assert!(worst_case(&[]).unwrap().is_none());
    }
}
