//! What the attacks cost: seconds per image of each attack (crafting and scoring, as the run
//! timed each work item), by setting and ε, with the device it ran on.

use super::results::{Results, Setting};
use super::tables::Table;
use crate::attacks::spec::AttackKind;
use crate::choice::Choice;

pub fn table(r: &Results) -> Option<Table> {
    // (encoder, attack, task, setting text, ε text, device) → (seconds, images), one entry per cell key.
    type Group = (String, String, String, String, String, String);
    let mut groups: Vec<(Group, (f64, usize))> = Vec::new();
    for e in &r.entries {
        let (Some(t), Some(p), Some(kind)) = (r.timings.get(&e.row.key), e.labels.params.as_ref(), e.labels.attack) else { continue };
        // A task attack scored on another task's head is the same work: count it where it was aimed.
        if !e.aimed_here() {
            continue;
        }
        let name = match &e.labels.source_encoder {
            Some(s) => format!("{} (crafted on {s})", kind.display_name()),
            None => kind.display_name().to_string(),
        };
        let key = (e.labels.encoder.clone(), name, r.head_label(e), Setting::of(p).text(), p.eps_text.clone(), t.device.clone());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, (s, n))) => {
                *s += t.seconds;
                *n += t.images;
            }
            None => groups.push((key, (t.seconds, t.images))),
        }
    }
    let order = |name: &str| {
        let kind = name.split(" (crafted on").next().unwrap_or(name);
        AttackKind::ALL.iter().position(|k| k.display_name() == kind).unwrap_or(usize::MAX)
    };
    let encoders: Vec<&String> = r.entries.iter().map(|e| &e.labels.encoder).fold(Vec::new(), |mut v, x| {
        if !v.contains(&x) {
            v.push(x);
        }
        v
    });
    let place = |enc: &String| encoders.iter().position(|x| *x == enc);
    groups.sort_by(|a, b| place(&a.0 .0).cmp(&place(&b.0 .0)).then(order(&a.0 .1).cmp(&order(&b.0 .1))).then(a.0 .2.cmp(&b.0 .2)));
    let rows: Vec<Vec<String>> = groups
        .into_iter()
        .map(|((encoder, name, task, setting, eps, device), (s, n))| {
            vec![encoder, name, task, setting, eps, n.to_string(), format!("{:.3}", s / n.max(1) as f64), device]
        })
        .collect();
    (!rows.is_empty()).then(|| Table {
        title: "Cost of the attacks".into(),
        note: "Wall-clock seconds per image of each attack on each task's head: crafting the perturbation and scoring it on every head that reads it (summed over the attack's work items and their batches, divided by the images attacked; one perturbation scored on two tasks, as EmbedAttack on shared images, shows its time on both). An ensemble stops working on a classification sample once a component broke it, so its cost falls with robustness.".into(),
        header: ["encoder", "attack", "task", "setting", "ε", "images", "s / image", "device"].map(String::from).to_vec(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::spec::AttackSpec;
    use crate::experiment::store::Timing;
    use crate::report::results::fixture::{results, Cell};

    /// Two seeds of PGD (2 s and 6 s for 4 images each) are one row of 8 images at 1 s per
    /// image; Square, untimed, has no row.
    #[test]
    fn seconds_per_image_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let cell = |key, kind, seed| {
            let mut spec = AttackSpec::new(kind);
            spec.seed = seed;
            Cell { key, spec, accuracy: 0.5, robust: None }
        };
        let mut r =
            results(dir.path(), vec![cell("a", AttackKind::Pgd, 0), cell("b", AttackKind::Pgd, 1), cell("c", AttackKind::Square, 0)]);
        for (key, seconds) in [("a", 2.0), ("b", 6.0)] {
            r.timings.insert(key.into(), Timing { seconds, images: 4, device: "cpu (2 threads)".into() });
        }
        let t = table(&r).unwrap();
        assert_eq!(t.rows, vec![["e", "PGD", "t", "L∞ 20 steps", "8/255", "8", "1.000", "cpu (2 threads)"].map(String::from).to_vec()]);
    }
}
