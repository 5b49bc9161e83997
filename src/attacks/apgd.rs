//! APGD's schedule (AutoAttack's `autopgd_base.py`), for any objective: the step starts at 2ε;
//! each update mixes the projected step with the previous move (momentum, α = 0.75 after the
//! first); at checkpoints spaced 0.22·T, then shrinking by 0.03·T down to 0.06·T, a sample whose
//! loss rose in at most 75% of the steps since the last checkpoint — or whose step was not cut
//! last time and whose best loss did not improve — has its step halved and restarts from its best
//! point. Per-sample bookkeeping of the best point goes through the engine's [`Best`].

use anyhow::Result;

use super::problem::{gather, scatter, select_rows, Best, GradFlags, Problem, Rows, Sanity};
use super::spec::AttackConfig;

/// The checkpoint spacing: first `0.22·T`, decreasing by `0.03·T` per checkpoint, at least `0.06·T`.
pub(super) fn schedule(steps: usize) -> (usize, usize, usize) {
    let first = ((0.22 * steps as f64) as usize).max(1);
    let min = ((0.06 * steps as f64) as usize).max(1);
    let decrease = ((0.03 * steps as f64) as usize).max(1);
    (first, min, decrease)
}

/// AutoAttack's oscillation test over the last `k` steps ending at `j`: the loss rose in at most
/// `0.75·k` of them. Steps before the first count as a loss of 0, as the reference's
/// zero-initialised history reads them.
pub(super) fn oscillates(history: &[f64], j: usize, k: usize) -> bool {
    let at = |t: isize| if t >= 0 { history[t as usize] } else { 0.0 };
    let rises = (0..k).filter(|&c| at(j as isize - c as isize) > at(j as isize - c as isize - 1)).count();
    rises as f64 <= 0.75 * k as f64
}

pub(super) fn apgd(
    p: &Problem,
    cfg: &AttackConfig,
    mut delta: Rows,
    active: Vec<usize>,
    best: &mut Best,
    sanity: &mut Sanity,
    see: &mut super::problem::Seen,
) -> Result<()> {
    let n = active.len();
    see(0, &delta)?;
    let (first, min_span, decrease) = schedule(cfg.steps);
    let mut cur = gather(&delta, &active)?;
    let (ev, grad) = p.evaluate(&cur, &active, 0, cfg.steps, true)?;
    let mut grad = grad.expect("evaluate with gradients");
    p.offer(best, &cur, &active, &ev, sanity)?;
    sanity.zero_start_gradients += GradFlags::of_rows(&grad)?.iter().filter(|f| f.zero).count();
    let mut step = vec![2.0 * p.threat.eps; n];
    let mut previous = cur.clone();
    let mut run_best_loss = ev.losses.clone();
    let mut run_best = cur.clone();
    let mut run_best_grad = grad.clone();
    let mut history = vec![vec![0f64; cfg.steps]; n];
    let mut last_check_loss = run_best_loss.clone();
    let mut reduced_last_check = vec![true; n];
    let (mut span, mut since_check) = (first, 0);
    for it in 0..cfg.steps {
        let alpha = if it > 0 { 0.75 } else { 1.0 };
        let usable: Vec<bool> = GradFlags::of_rows(&grad)?.into_iter().map(|f| f.count(sanity)).collect();
        let momentum = (&cur - &previous)?;
        let z = p.project(&p.threat.step_rows(&cur, &grad, &step)?, &active)?;
        let z = select_rows(&usable, &z, &cur)?;
        p.check(&z, &active, sanity)?;
        let next = ((&cur + ((&z - &cur)? * alpha)?)? + (momentum * (1.0 - alpha))?)?;
        let next = select_rows(&usable, &p.project(&next, &active)?, &cur)?;
        p.check(&next, &active, sanity)?;
        previous = select_rows(&usable, &cur, &previous)?;
        cur = next;
        scatter(&mut delta, &active, &cur)?;
        see(it + 1, &delta)?;
        let (ev, g) = p.evaluate(&cur, &active, it + 1, cfg.steps, true)?;
        grad = g.expect("evaluate with gradients");
        p.offer(best, &cur, &active, &ev, sanity)?;
        let mut improved = vec![false; n];
        for k in 0..n {
            history[k][it] = ev.losses[k];
            if ev.losses[k] > run_best_loss[k] {
                run_best_loss[k] = ev.losses[k];
                improved[k] = true;
            }
        }
        run_best = select_rows(&improved, &cur, &run_best)?;
        run_best_grad = select_rows(&improved, &grad, &run_best_grad)?;
        since_check += 1;
        if since_check == span {
            let mut cut = vec![false; n];
            for k in 0..n {
                let no_improvement = !reduced_last_check[k] && last_check_loss[k] >= run_best_loss[k];
                cut[k] = oscillates(&history[k], it, span) || no_improvement;
                reduced_last_check[k] = cut[k];
                last_check_loss[k] = run_best_loss[k];
                if cut[k] {
                    step[k] /= 2.0;
                }
            }
            cur = select_rows(&cut, &run_best, &cur)?;
            grad = select_rows(&cut, &run_best_grad, &grad)?;
            scatter(&mut delta, &active, &cur)?;
            span = span.saturating_sub(decrease).max(min_span);
            since_check = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's numbers for T = 100: first checkpoint after 22 steps, spans shrinking by 3
    /// to at least 6; for T = 10: 2, 1, 1. The oscillation test by hand.
    #[test]
    fn schedule_and_oscillation_by_hand() {
        assert_eq!(schedule(100), (22, 6, 3));
        assert_eq!(schedule(10), (2, 1, 1));
        assert_eq!(schedule(1), (1, 1, 1));
        // Losses 1, 2, 3, 4: over the last 4 steps (3, 2, 1, 0 against 2, 1, 0 and "−1" = 0) every
        // step rose: 4 > 0.75·4 → no oscillation.
        assert!(!oscillates(&[1.0, 2.0, 3.0, 4.0], 3, 4));
        // Losses 1, 2, 3, 2: rises at steps 2, 1, 0 only: 3 ≤ 3 → oscillation; over the last 2
        // steps one rise: 1 ≤ 1.5 → oscillation.
        let h = [1.0, 2.0, 3.0, 2.0];
        assert!(oscillates(&h, 3, 4));
        assert!(oscillates(&h, 3, 2));
        assert!(oscillates(&[5.0, 4.0, 3.0], 2, 3), "a falling loss oscillates");
    }
}
