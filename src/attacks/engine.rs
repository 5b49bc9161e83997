//! The one attack engine: projected gradient ascent in pixel space on *normalize → encoder →
//! head*, for any [`Objective`] under any [`ThreatModel`], with a fixed step (PGD) or AutoAttack's
//! schedule (APGD, in `apgd.rs`). Uniform random start, restarts,
//! per-sample bookkeeping of the best point (highest loss, or the first that reaches the goal),
//! per-sample early stop (samples that reached the goal leave the batch), and sanity checks at
//! every step: ‖δ‖ ≤ ε and x + δ ∈ [0,1] hold, and zero or NaN gradients are counted as possible
//! gradient masking.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

use super::objective::Objective;
use super::problem::{gather, scatter, select_rows, Best, GradFlags, Problem, Rows, Seen};

use crate::encoder::Encoder;
use crate::heads::sliding::Tiling;
use crate::rng::SplitMix64;

pub use super::problem::{Outcome, Sanity};
pub use super::spec::{AttackConfig, Method};

/// Sees every iterate of a traced attack (`cfg.trace`): the step (0 = the starting point) and
/// the whole batch's current images `[B, 3, H, W]`.
pub type Observer<'a> = dyn FnMut(usize, &Tensor) -> Result<()> + 'a;

/// Attacks `images` (`[B, 3, H, W]` in [0,1]) for `objective` through `enc`.
pub fn attack(enc: &Encoder, objective: &dyn Objective, images: &Tensor, cfg: &AttackConfig) -> Result<Outcome> {
    attack_observed(enc, objective, images, cfg, &mut |_, _| Ok(()))
}

/// [`attack`] whose first run starts at `start` (`[B, 3, H, W]`, projected into the budget around
/// `images`) instead of a random point: a schedule that continues from an earlier attack's points.
pub fn attack_from(enc: &Encoder, objective: &dyn Objective, images: &Tensor, start: &Tensor, cfg: &AttackConfig) -> Result<Outcome> {
    run(enc, objective, images, Some(start), cfg, &mut |_, _| Ok(()))
}

/// [`attack`], showing `observe` every iterate when `cfg.trace` (one run: restarts = 1).
pub fn attack_observed(
    enc: &Encoder,
    objective: &dyn Objective,
    images: &Tensor,
    cfg: &AttackConfig,
    observe: &mut Observer,
) -> Result<Outcome> {
    run(enc, objective, images, None, cfg, observe)
}

fn run(
    enc: &Encoder,
    objective: &dyn Objective,
    images: &Tensor,
    start: Option<&Tensor>,
    cfg: &AttackConfig,
    observe: &mut Observer,
) -> Result<Outcome> {
    if cfg.trace && cfg.restarts > 1 {
        bail!("a traced attack follows one run: restarts = 1, not {}", cfg.restarts);
    }
    let (b, c, h, w) = images.dims4()?;
    let per = c * h * w;
    let dev = enc.vit.device();
    let x = images.to_dtype(DType::F32)?.reshape((b, per))?.to_device(dev)?;
    // Smallest, largest, and how many are NaN: one transfer.
    let nan = x.ne(&x)?.to_dtype(DType::F32)?.sum_all()?;
    let seen = Tensor::stack(&[x.flatten_all()?.min(0)?, x.flatten_all()?.max(0)?, nan], 0)?.to_vec1::<f32>()?;
    if seen[2] > 0.0 || !(0.0..=1.0).contains(&seen[0]) || !(0.0..=1.0).contains(&seen[1]) {
        bail!("attack input pixels must lie in [0, 1]");
    }
    let windows = cfg.window.map(|win| Tiling::new(h, w, win, enc.config().patch_size)).transpose()?;
    let p = Problem { enc, objective, x, per, dims: (c, h, w), threat: cfg.threat, windows };
    let mut best = Best::new(b, per, dev)?;
    let mut sanity = Sanity::default();
    sanity.settings(&cfg.threat, cfg.steps);
    let start = match start {
        Some(s) if s.dims() != images.dims() => bail!("internal error: the starting points do not match the images"),
        Some(s) => Some((s.to_dtype(DType::F32)?.reshape((b, per))?.to_device(dev)? - &p.x)?),
        None => None,
    };
    let all: Vec<usize> = (0..b).collect();
    for restart in 0..cfg.restarts.max(1) {
        // The random start is drawn on the host (the same numbers on every device), once a run.
        let mut rng = SplitMix64::new(crate::rng::stream(cfg.seed, restart as u64));
        let first = match start.as_ref().filter(|_| restart == 0) {
            Some(s) => s.clone(),
            None => {
                let mut init = vec![0f32; b * per];
                if cfg.random_start && p.threat.eps > 0.0 {
                    init.chunks_mut(per).for_each(|d| p.threat.random_start(d, &mut rng));
                }
                Tensor::from_vec(init, (b, per), dev)?
            }
        };
        let first = p.project(&first, &all)?;
        p.check(&first, &all, &mut sanity)?;
        let mut delta: Rows = vec![first.clone(); b];
        scatter(&mut delta, &all, &first)?;
        // Samples that reached the goal in an earlier restart are not attacked again.
        let active: Vec<usize> = (0..b).filter(|&i| !(cfg.early_stop && best.success[i])).collect();
        if active.is_empty() {
            break;
        }
        let mut see = |step: usize, delta: &Rows| -> Result<()> {
            if cfg.trace {
                observe(step, &p.images(delta)?)?;
            }
            Ok(())
        };
        match cfg.method {
            Method::Pgd => pgd(&p, cfg, delta, active, &mut best, &mut sanity, &mut see)?,
            Method::Apgd => super::apgd::apgd(&p, cfg, delta, active, &mut best, &mut sanity, &mut see)?,
        }
    }
    Ok(Outcome { adversarial: p.images(&best.delta)?, loss: best.loss, success: best.success, sanity })
}

/// Fixed-step projected gradient ascent; with early stop, samples leave once they reach the goal.
fn pgd(
    p: &Problem,
    cfg: &AttackConfig,
    mut delta: Rows,
    mut active: Vec<usize>,
    best: &mut Best,
    sanity: &mut Sanity,
    see: &mut Seen,
) -> Result<()> {
    for step in 0..=cfg.steps {
        see(step, &delta)?;
        if active.is_empty() {
            // Every sample reached the goal: the later iterates are this one.
            for later in step + 1..=cfg.steps {
                see(later, &delta)?;
            }
            break;
        }
        let last = step == cfg.steps;
        let d = gather(&delta, &active)?;
        if last && cfg.last_iterate {
            let ev = if cfg.evaluate_last { Some(p.evaluate(&d, &active, step, cfg.steps, false)?.0) } else { None };
            for (k, &i) in active.iter().enumerate() {
                best.delta[i] = d.narrow(0, k, 1)?.force_contiguous()?;
                best.loss[i] = ev.as_ref().map_or(f64::NAN, |e| e.losses[k]);
                best.success[i] = ev.as_ref().and_then(|e| e.success.as_ref()).is_some_and(|s| s[k]);
            }
            break;
        }
        let (ev, grad) = p.evaluate(&d, &active, step, cfg.steps, !last)?;
        p.offer(best, &d, &active, &ev, sanity)?;
        let reached: Vec<bool> = match &ev.success {
            Some(s) if cfg.early_stop => s.clone(),
            _ => vec![false; active.len()],
        };
        let Some(grad) = grad.filter(|_| !last) else { break };
        let flags = GradFlags::of_rows(&grad)?;
        if step == 0 {
            sanity.zero_start_gradients += flags.iter().filter(|f| f.zero).count();
        }
        let moves: Vec<bool> = flags.iter().zip(&reached).map(|(f, &r)| !r && f.count(sanity)).collect();
        let stepped = p.threat.step_rows(&d, &grad, &vec![cfg.step_size; active.len()])?;
        let next = select_rows(&moves, &p.project(&stepped, &active)?, &d)?;
        p.check(&next, &active, sanity)?;
        scatter(&mut delta, &active, &next)?;
        // A sample that leaves keeps its row in storage of its own, not a view that would keep
        // this step's whole batch alive for the rest of the attack.
        for (&i, _) in active.iter().zip(&reached).filter(|(_, &r)| r) {
            delta[i] = delta[i].force_contiguous()?;
        }
        active = active.iter().zip(&reached).filter(|(_, &r)| !r).map(|(&i, _)| i).collect();
    }
    Ok(())
}
