//! One attack problem: the clean images, the pipeline (normalize → encoder) and the objective;
//! the per-sample best point so far, the outcome, and the sanity checks made at every step
//! (‖δ‖ ≤ ε and x + δ ∈ [0,1] hold; zero or NaN gradients are counted as possible masking).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::objective::{Evaluated, Objective};
use super::threat::ThreatModel;
use crate::encoder::Encoder;
use crate::heads::sliding::Tiling;

/// What the checks saw over the whole attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sanity {
    /// Gradient steps taken (summed over samples).
    pub sample_steps: usize,
    /// Largest ‖δ‖ seen, over ε (at most 1).
    pub max_norm_over_eps: f64,
    pub min_pixel: f64,
    pub max_pixel: f64,
    /// Sample-steps whose pixel gradient was all zero / had a NaN.
    pub zero_gradients: usize,
    pub nan_gradients: usize,
    /// Evaluated sample-points whose softmax was saturated (cross-entropy below [`SATURATED_CE`]: the
    /// true class's probability is 1 to f32 precision, the CE gradient underflows).
    #[serde(default)]
    pub saturated: usize,
    /// The budget was ε ≥ 1 under L∞: every pixel may take any value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub eps_unbounded: bool,
    /// The attack had no gradient step (`steps = 0`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_steps: bool,
    /// Samples whose clean head output was already a probability distribution (each row in
    /// [0, 1] summing to 1): a softmax at the head's output.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub probability_outputs: usize,
    /// Forward passes (per sample) of a gradient-free search (Square).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queries: usize,
    /// Samples that Square broke after the gradient attacks of an ensemble left them robust
    /// (AutoAttack's check: a sign of gradient masking).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub square_successes: usize,
    /// Samples whose pixel gradient was all zero at the attack's starting point (AutoAttack's
    /// `check_zero_gradients`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub zero_start_gradients: usize,
    /// Batches whose two forward passes of the same clean images differed (AutoAttack's
    /// `check_randomized`): a randomised model, for which gradients of one pass mislead.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub randomized: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A cross-entropy under this (f32's epsilon, 2⁻²³) means `1 − p_y` is lost to rounding: the
/// gradient `p − onehot` no longer points where the loss grows.
pub const SATURATED_CE: f64 = 1.1920929e-7;

impl Default for Sanity {
    /// Nothing seen yet: the pixel range starts empty.
    fn default() -> Self {
        Self {
            sample_steps: 0,
            max_norm_over_eps: 0.0,
            min_pixel: 1.0,
            max_pixel: 0.0,
            zero_gradients: 0,
            nan_gradients: 0,
            saturated: 0,
            eps_unbounded: false,
            no_steps: false,
            probability_outputs: 0,
            queries: 0,
            square_successes: 0,
            zero_start_gradients: 0,
            randomized: 0,
        }
    }
}

impl Sanity {
    /// Adds what another attack (another batch) saw.
    pub fn merge(&mut self, o: &Sanity) {
        self.sample_steps += o.sample_steps;
        self.zero_gradients += o.zero_gradients;
        self.nan_gradients += o.nan_gradients;
        self.saturated += o.saturated;
        self.eps_unbounded |= o.eps_unbounded;
        self.no_steps |= o.no_steps;
        self.probability_outputs += o.probability_outputs;
        self.queries += o.queries;
        self.square_successes += o.square_successes;
        self.zero_start_gradients += o.zero_start_gradients;
        self.randomized += o.randomized;
        self.max_norm_over_eps = self.max_norm_over_eps.max(o.max_norm_over_eps);
        self.min_pixel = self.min_pixel.min(o.min_pixel);
        self.max_pixel = self.max_pixel.max(o.max_pixel);
    }

    /// Lines when many gradients were zero or NaN (a sign of gradient masking), or any
    /// cross-entropy saturated (its gradient underflowed); empty when the attack looks sound.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let bad = self.zero_gradients + self.nan_gradients;
        if self.sample_steps > 0 && bad * 10 > self.sample_steps {
            out.push(format!(
                "{} of {} gradient steps had a zero ({}) or NaN ({}) pixel gradient: possible gradient masking",
                bad, self.sample_steps, self.zero_gradients, self.nan_gradients
            ));
        }
        if self.saturated > 0 {
            out.push(format!(
                "{} of {} gradient steps had a saturated softmax (cross-entropy < 2^-23: the true class's probability \
                 is 1 in f32 and the CE gradient underflows); the study's logit scaling (ce_scaling) avoids it",
                self.saturated, self.sample_steps
            ));
        }
        if self.eps_unbounded {
            out.push(
                "ε ≥ 1 under L∞: every pixel may take any value, so the attack may replace the image whole (budgets are in \
                 pixel units of [0, 1]: 8/255, not 8)"
                    .into(),
            );
        }
        if self.no_steps {
            out.push("steps = 0: no gradient step was taken; the attacked figures are those of the starting point".into());
        }
        if self.square_successes > 0 {
            out.push(format!(
                "possible gradient masking: the gradient-free Square broke {} samples that the gradient attacks before it left \
                 robust (AutoAttack's check: a model whose gradients are sound rarely lets that happen)",
                self.square_successes
            ));
        }
        if self.zero_start_gradients > 0 {
            out.push(format!(
                "{} samples had a zero pixel gradient at the attack's starting point (AutoAttack's check): gradient attacks \
                 cannot move them, and their robustness may be gradient masking",
                self.zero_start_gradients
            ));
        }
        if self.randomized > 0 {
            out.push(format!(
                "in {} batches two forward passes of the same clean images differed (AutoAttack's check): a randomised model, \
                 whose single-pass gradients mislead the attack (average over draws, EOT, before trusting the figure)",
                self.randomized
            ));
        }
        if self.probability_outputs > 0 {
            out.push(format!(
                "{} samples' clean head outputs were already probabilities (each row in [0, 1], summing to 1): a softmax at \
                 the head's output? Cross-entropy over probabilities has weak gradients",
                self.probability_outputs
            ));
        }
        out
    }

    /// Records what the attack's settings alone say is wrong (ε ≥ 1 under L∞, no step).
    pub fn settings(&mut self, threat: &super::threat::ThreatModel, steps: usize) {
        self.eps_unbounded |= threat.norm == super::threat::Norm::Linf && threat.eps >= 1.0;
        self.no_steps |= steps == 0;
    }
}

/// Whether two forward passes of the same images gave different tokens: some sample's
/// ‖a − b‖ > 10⁻⁴·‖a‖ (AutoAttack compares L2-normalised outputs at 10⁻⁴).
pub fn passes_differ(a: &crate::encoder::Tokens, b: &crate::encoder::Tokens) -> Result<bool> {
    for (x, y) in [(&a.cls, &b.cls), (&a.patch, &b.patch)] {
        let (x, y) = (x.flatten_from(1)?.to_dtype(candle_core::DType::F64)?, y.flatten_from(1)?.to_dtype(candle_core::DType::F64)?);
        let gap = (&x - &y)?.sqr()?.sum(1)?.sqrt()?.to_vec1::<f64>()?;
        let size = x.sqr()?.sum(1)?.sqrt()?.to_vec1::<f64>()?;
        if gap.iter().zip(&size).any(|(g, s)| matches!(g.partial_cmp(&(1e-4 * s)), Some(std::cmp::Ordering::Greater) | None)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Samples of class scores `[n, K]` or `[n, K, H, W]` whose every row (over K) is in [0, 1] and
/// sums to 1 within 10⁻³: outputs that are probabilities already.
pub fn probability_rows(out: &Tensor) -> Result<usize> {
    if out.rank() < 2 || out.dim(1)? < 2 {
        return Ok(0);
    }
    let out = out.to_dtype(candle_core::DType::F32)?;
    let in_range = out.ge(0f32)?.mul(&out.le(1f32)?)?.to_dtype(candle_core::DType::F32)?.min_keepdim(1)?;
    let sums_to_one = (out.sum_keepdim(1)? - 1.0)?.abs()?.le(1e-3f32)?.to_dtype(candle_core::DType::F32)?;
    let per_sample = (in_range * sums_to_one)?.flatten_from(1)?.min(1)?.to_vec1::<f32>()?;
    Ok(per_sample.iter().filter(|&&v| v > 0.5).count())
}

pub struct Outcome {
    /// `[B, 3, H, W]`, the chosen adversarial images.
    pub adversarial: Tensor,
    /// Per sample: the objective at the chosen point, and whether it reached the goal.
    pub loss: Vec<f64>,
    pub success: Vec<bool>,
    pub sanity: Sanity,
}

/// Per-sample best point so far; each sample's δ a `[1, per]` row on the encoder's device.
pub(super) struct Best {
    pub(super) delta: Vec<Tensor>,
    pub(super) loss: Vec<f64>,
    /// What points are compared by: the loss, or the objective's score.
    pub(super) score: Vec<f64>,
    pub(super) success: Vec<bool>,
}

impl Best {
    /// No point yet (δ = 0), for `b` samples of `per` values on `device`.
    pub(super) fn new(b: usize, per: usize, device: &Device) -> Result<Best> {
        let zero = Tensor::zeros((1, per), DType::F32, device)?;
        Ok(Best { delta: vec![zero; b], loss: vec![f64::NEG_INFINITY; b], score: vec![f64::NEG_INFINITY; b], success: vec![false; b] })
    }

    /// Offers sample `i`'s point `delta` (`[1, per]`).
    pub(super) fn offer(&mut self, i: usize, delta: &Tensor, loss: f64, score: f64, success: bool) -> Result<()> {
        // A point that reaches the goal beats any that does not; among equals, the higher score.
        let better = (success && !self.success[i]) || (success == self.success[i] && score > self.score[i]);
        if better {
            // Its own storage of its own values: a row of the step's batch would keep the whole
            // batch alive (candle's `copy` clones the whole storage a view looks into).
            self.delta[i] = delta.force_contiguous()?;
            self.loss[i] = loss;
            self.score[i] = score;
            self.success[i] = success;
        }
        Ok(())
    }
}

/// Every sample's δ, one `[1, per]` row each, on the encoder's device: the schedules work on the
/// active ones as one `[n, per]` tensor ([`gather`]) and put the result back ([`scatter`]).
pub(super) type Rows = Vec<Tensor>;

/// The rows `active` as one `[n, per]` tensor.
pub(super) fn gather(rows: &Rows, active: &[usize]) -> Result<Tensor> {
    let picked: Vec<&Tensor> = active.iter().map(|&i| &rows[i]).collect();
    Ok(Tensor::cat(&picked, 0)?)
}

/// Row `k` of `batch` `[n, per]` becomes sample `active[k]`'s row.
pub(super) fn scatter(rows: &mut Rows, active: &[usize], batch: &Tensor) -> Result<()> {
    for (k, &i) in active.iter().enumerate() {
        rows[i] = batch.narrow(0, k, 1)?;
    }
    Ok(())
}

/// Rows of `on_true` where `mask[k]`, else of `on_false` (both `[n, per]`).
pub(super) fn select_rows(mask: &[bool], on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
    if mask.iter().all(|&m| m) {
        return Ok(on_true.clone());
    }
    if !mask.iter().any(|&m| m) {
        return Ok(on_false.clone());
    }
    let m: Vec<u8> = mask.iter().map(|&m| m as u8).collect();
    let m = Tensor::from_vec(m, (mask.len(), 1), on_true.device())?.broadcast_as(on_true.shape())?;
    Ok(m.where_cond(on_true, on_false)?)
}

/// What the schedules call with each iterate: the step and every sample's δ.
pub(super) type Seen<'a> = dyn FnMut(usize, &Rows) -> Result<()> + 'a;

/// A gradient row's state: NaN somewhere (unusable), or all zero.
#[derive(Clone, Copy)]
pub(super) struct GradFlags {
    pub(super) nan: bool,
    pub(super) zero: bool,
}

impl GradFlags {
    /// The flags of every row of `grad` `[n, per]` (one transfer of `n` values).
    pub(super) fn of_rows(grad: &Tensor) -> Result<Vec<GradFlags>> {
        // One reduction: a row's |g| sums to NaN where it holds a NaN, and to 0 only where every
        // value is 0 (an infinity sums to infinity: usable, as before).
        let sums = grad.abs()?.sum(1)?.to_vec1::<f32>()?;
        Ok(sums.into_iter().map(|s| GradFlags { nan: s.is_nan(), zero: s == 0.0 }).collect())
    }

    /// The flags of one gradient on the host.
    pub(super) fn of(g: &[f32]) -> GradFlags {
        let nan = g.iter().any(|v| v.is_nan());
        GradFlags { nan, zero: !nan && g.iter().all(|&v| v == 0.0) }
    }

    /// Counts a gradient step with this gradient (zero or NaN); `false` when it is unusable (NaN).
    pub(super) fn count(self, sanity: &mut Sanity) -> bool {
        sanity.sample_steps += 1;
        if self.nan {
            sanity.nan_gradients += 1;
            return false;
        }
        if self.zero {
            sanity.zero_gradients += 1;
        }
        true
    }
}

/// One attack problem: the clean images, the pipeline and the objective. The schedules keep every
/// per-sample δ, gradient and best point on the encoder's device; only per-sample scalars (losses,
/// flags, norms) come back to the host at each step.
pub(super) struct Problem<'a> {
    pub(super) enc: &'a Encoder,
    pub(super) objective: &'a dyn Objective,
    /// Clean pixels `[B, per]` on the encoder's device.
    pub(super) x: Tensor,
    pub(super) per: usize,
    pub(super) dims: (usize, usize, usize),
    pub(super) threat: ThreatModel,
    /// Sliding windows the pipeline cuts each image into (the attack then goes through exactly
    /// the windows the evaluation averages); `None`: one forward per image.
    pub(super) windows: Option<Tiling>,
}

impl Problem<'_> {
    /// The clean rows `active`, `[n, per]`.
    pub(super) fn clean(&self, active: &[usize]) -> Result<Tensor> {
        if active.len() == self.x.dim(0)? && active.iter().enumerate().all(|(k, &i)| k == i) {
            return Ok(self.x.clone());
        }
        super::objective::rows(&self.x, active)
    }

    /// The whole batch at `delta`: `[B, C, H, W]` on the encoder's device.
    pub(super) fn images(&self, delta: &Rows) -> Result<Tensor> {
        let (c, h, w) = self.dims;
        let all: Vec<usize> = (0..delta.len()).collect();
        Ok((&self.x + gather(delta, &all)?)?.reshape((delta.len(), c, h, w))?)
    }

    /// The objective at `x + delta` for the samples `active` (`delta` `[n, per]`, their rows), and
    /// with `grad` the pixel gradient of each (`[n, per]`, on the device): the pipeline *pixels →
    /// normalize → encoder → head* forward (the encoder normalizes; the objective holds the head),
    /// then back.
    pub(super) fn evaluate(
        &self,
        delta: &Tensor,
        active: &[usize],
        step: usize,
        steps: usize,
        grad: bool,
    ) -> Result<(Evaluated, Option<Tensor>)> {
        let (c, h, w) = self.dims;
        let input = (self.clean(active)? + delta)?.reshape((active.len(), c, h, w))?;
        let windows = self.windows.as_ref();
        let input = match windows {
            Some(t) => t.crops(&input)?,
            None => input,
        };
        if !grad {
            let tokens = self.enc.forward_reading(&input, self.objective.outputs())?;
            return Ok((self.objective.evaluate(&tokens, windows, active, step, steps)?, None));
        }
        let (tokens, tape) = self.enc.forward_with_tape_reading(&input, self.objective.outputs())?;
        let ev = self.objective.evaluate(&tokens, windows, active, step, steps)?;
        let g = self.enc.backward_with(&tape, &ev.d_cls, &ev.d_patch, ev.d_prenorm.as_ref())?;
        let g = match windows {
            Some(t) => t.gather(&g)?,
            None => g,
        };
        let g = g.to_dtype(DType::F32)?.reshape((active.len(), self.per))?;
        Ok((ev, Some(g)))
    }

    /// Records what the objective said of the active samples' current points `delta` (`[n, per]`),
    /// and counts the saturated ones.
    pub(super) fn offer(&self, best: &mut Best, delta: &Tensor, active: &[usize], ev: &Evaluated, sanity: &mut Sanity) -> Result<()> {
        sanity.saturated += ev.saturated.as_ref().map_or(0, |s| s.iter().filter(|&&s| s).count());
        for (k, &i) in active.iter().enumerate() {
            let score = ev.score.as_ref().map_or(ev.losses[k], |s| s[k]);
            best.offer(i, &delta.narrow(0, k, 1)?, ev.losses[k], score, ev.success.as_ref().is_some_and(|s| s[k]))?;
        }
        Ok(())
    }

    /// Projects the rows `delta` (`[n, per]`) of the samples `active` onto the ball and the pixel box.
    pub(super) fn project(&self, delta: &Tensor, active: &[usize]) -> Result<Tensor> {
        self.threat.project_rows(&self.clean(active)?, delta)
    }

    /// The budget and the pixel range hold for the rows `delta` of the samples `active`; a
    /// violation is a bug, never a result.
    pub(super) fn check(&self, delta: &Tensor, active: &[usize], s: &mut Sanity) -> Result<()> {
        let t = &self.threat;
        for n in t.norm_rows(delta)? {
            if n > t.eps * (1.0 + 1e-5) + 1e-7 {
                bail!("internal error: ‖δ‖ = {n} exceeds ε = {}", t.eps);
            }
            if t.eps > 0.0 {
                s.max_norm_over_eps = s.max_norm_over_eps.max(n / t.eps);
            }
        }
        let pixels = (self.clean(active)? + delta)?.flatten_all()?;
        let range = Tensor::stack(&[pixels.min(0)?, pixels.max(0)?], 0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        for p in &range {
            if !(0.0..=1.0).contains(p) {
                bail!("internal error: an adversarial pixel left [0, 1]: {p}");
            }
        }
        s.min_pixel = s.min_pixel.min(range[0]);
        s.max_pixel = s.max_pixel.max(range[1]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::threat::{Norm, ThreatModel};

    #[test]
    fn settings_and_outputs_that_make_a_figure_meaningless_are_warned_about() {
        let quiet = |s: &Sanity| s.warnings().is_empty();
        let mut s = Sanity::default();
        s.settings(&ThreatModel { norm: Norm::Linf, eps: 8.0 / 255.0 }, 10);
        s.settings(&ThreatModel { norm: Norm::L2, eps: 3.0 }, 10);
        assert!(quiet(&s), "{:?}", s.warnings());
        s.settings(&ThreatModel { norm: Norm::Linf, eps: 8.0 }, 10);
        assert!(s.warnings().iter().any(|w| w.contains("ε ≥ 1 under L∞")), "{:?}", s.warnings());
        let mut t = Sanity::default();
        t.settings(&ThreatModel { norm: Norm::Linf, eps: 0.03 }, 0);
        assert!(t.warnings().iter().any(|w| w.contains("steps = 0")), "{:?}", t.warnings());
        // Merged over batches, and kept through the store's JSON; absent fields read as clear.
        let mut m = Sanity::default();
        m.merge(&s);
        m.merge(&t);
        let back: Sanity = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert!(back.eps_unbounded && back.no_steps);
        let old = serde_json::json!({"sample_steps": 1, "max_norm_over_eps": 1.0, "min_pixel": 0.0, "max_pixel": 1.0, "zero_gradients": 0, "nan_gradients": 0});
        assert!(quiet(&serde_json::from_value(old).unwrap()));
        assert!(!serde_json::to_string(&Sanity::default()).unwrap().contains("eps_unbounded"), "clear flags are not stored");
    }

    /// AutoAttack's randomised-model check on tokens: equal passes are not flagged, a change
    /// above 10⁻⁴ of a sample's norm is, rounding below it is not.
    #[test]
    fn passes_that_differ_are_a_randomised_model() {
        let dev = Device::Cpu;
        let tokens = |cls: &[f32], p: f32| crate::encoder::Tokens {
            cls: Tensor::from_slice(cls, (1, cls.len()), &dev).unwrap(),
            patch: Tensor::full(p, (1, 2, cls.len()), &dev).unwrap(),
            prenorm: None,
            grid: (1, 2),
        };
        let a = tokens(&[3.0, 4.0], 1.0);
        assert!(!passes_differ(&a, &tokens(&[3.0, 4.0], 1.0)).unwrap());
        assert!(!passes_differ(&a, &tokens(&[3.0, 4.0001], 1.0)).unwrap(), "2e-5 of the norm is rounding");
        assert!(passes_differ(&a, &tokens(&[3.0, 4.01], 1.0)).unwrap());
        assert!(passes_differ(&a, &tokens(&[3.0, 4.0], 1.1)).unwrap(), "patch tokens count too");
        let s = Sanity { randomized: 1, ..Sanity::default() };
        assert!(s.warnings().iter().any(|w| w.contains("randomised model")), "{:?}", s.warnings());
    }

    /// A kept best point holds its own row and nothing more: with a copy of the step's whole
    /// batch per sample, memory grew with the square of the batch.
    #[test]
    fn a_best_point_keeps_its_row_alone() {
        let (b, per) = (4, 6);
        let batch = Tensor::arange(0f32, (b * per) as f32, &Device::Cpu).unwrap().reshape((b, per)).unwrap();
        let mut best = Best::new(b, per, &Device::Cpu).unwrap();
        best.offer(2, &batch.narrow(0, 2, 1).unwrap(), 1.0, 1.0, false).unwrap();
        let kept = &best.delta[2];
        assert_eq!(kept.to_vec2::<f32>().unwrap(), batch.narrow(0, 2, 1).unwrap().to_vec2::<f32>().unwrap());
        let (storage, layout) = kept.storage_and_layout();
        let held = match &*storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.len(),
            _ => unreachable!("an f32 tensor on the CPU"),
        };
        assert_eq!((held, layout.start_offset()), (per, 0), "the kept row holds {held} values");
    }

    /// Per row, as the host's check reads one gradient: NaN anywhere (even beside an infinity) is
    /// unusable, all zeros is zero, an infinity or a lone tiny value is neither.
    #[test]
    fn gradient_rows_are_flagged_as_the_host_flags_one() {
        let rows: [[f32; 3]; 6] = [
            [0.0, 0.0, 0.0],
            [0.0, -0.0, 1e-45],
            [f32::NAN, 0.0, 0.0],
            [f32::INFINITY, f32::NAN, 1.0],
            [f32::INFINITY, f32::NEG_INFINITY, 0.0],
            [-2.0, 0.5, 0.0],
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (6, 3), &Device::Cpu).unwrap();
        let got: Vec<(bool, bool)> = GradFlags::of_rows(&t).unwrap().iter().map(|f| (f.nan, f.zero)).collect();
        let want: Vec<(bool, bool)> = rows.iter().map(|r| GradFlags::of(r)).map(|f| (f.nan, f.zero)).collect();
        assert_eq!(got, want);
        assert_eq!(want, [(false, true), (false, false), (true, false), (true, false), (false, false), (false, false)]);
    }

    #[test]
    fn outputs_that_are_probabilities_are_counted() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, -1.0, 0.5], [0.2, 0.3, 0.1]], &dev).unwrap();
        assert_eq!(probability_rows(&logits).unwrap(), 0, "rows in [0,1] that do not sum to 1 are logits");
        let probs = candle_nn::ops::softmax(&logits, 1).unwrap();
        assert_eq!(probability_rows(&probs).unwrap(), 2);
        // Dense: [n, K, H, W], a sample counts when every pixel's row is a distribution.
        let dense = probs.t().unwrap().reshape((1, 3, 1, 2)).unwrap();
        assert_eq!(probability_rows(&dense).unwrap(), 1);
        let mixed = Tensor::cat(&[&dense, &Tensor::ones((1, 3, 1, 2), candle_core::DType::F32, &dev).unwrap()], 0).unwrap();
        assert_eq!(probability_rows(&mixed).unwrap(), 1);
        let mut s = Sanity { probability_outputs: 2, ..Sanity::default() };
        assert!(s.warnings().iter().any(|w| w.contains("2 samples' clean head outputs were already probabilities")));
        s.probability_outputs = 0;
        assert!(s.warnings().is_empty());
    }
}
