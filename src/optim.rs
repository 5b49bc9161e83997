//! The optimizers of every training loop (heads and encoder fine-tuning): SGD with momentum and
//! weight decay, and AdamW, as torch.optim defines them, over named trainable tensors whose whole
//! state (momentum, Adam moments, step count) can be saved and restored exactly, so a resumed run
//! continues bit for bit.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// Which optimizer, with its settings (the learning rate is given at every step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerKind {
    AdamW { weight_decay: f64 },
    Sgd { momentum: f64, weight_decay: f64 },
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

pub struct Optimizer {
    pub kind: OptimizerKind,
    /// Updates taken so far.
    pub steps: u64,
    /// Per parameter: SGD's velocity, or Adam's first and second moments.
    state: BTreeMap<String, Vec<Tensor>>,
}

impl Optimizer {
    pub fn new(kind: OptimizerKind) -> Self {
        Self { kind, steps: 0, state: BTreeMap::new() }
    }

    /// Parameters named by their position, for a training loop that needs no names.
    pub fn numbered(vars: Vec<Var>) -> Vec<(String, Var)> {
        vars.into_iter().enumerate().map(|(i, v)| (format!("{i:06}"), v)).collect()
    }

    /// One update of every parameter that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, params: &[(String, Var)], grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        for (name, var) in params {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            // Detached: a gradient carries the graph of the step that made it, and the state
            // kept from step to step must not (it would hold every step's activations).
            let (g, w) = (&g.detach(), &var.as_tensor().detach());
            match self.kind {
                OptimizerKind::Sgd { momentum, weight_decay } => {
                    // torch.optim.SGD: g ← g + wd·w; v ← μ·v + g (v = g at first); w ← w − lr·v
                    let g = (g + (w * weight_decay)?)?;
                    let v = match self.state.get(name) {
                        Some(s) if momentum > 0.0 => ((&s[0] * momentum)? + g)?,
                        _ => g,
                    };
                    var.set(&(w - (&v * lr)?)?)?;
                    self.state.insert(name.clone(), vec![v.detach()]);
                }
                OptimizerKind::AdamW { weight_decay } => {
                    // torch.optim.AdamW: w ← w(1 − lr·wd); m, v moments; bias-corrected step.
                    let (m, v) = match self.state.get(name) {
                        Some(s) => (s[0].clone(), s[1].clone()),
                        None => (g.zeros_like()?, g.zeros_like()?),
                    };
                    let m = ((m * BETA1)? + (g * (1.0 - BETA1))?)?;
                    let v = ((v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                    let m_hat = (&m / (1.0 - BETA1.powi(t)))?;
                    let v_hat = (&v / (1.0 - BETA2.powi(t)))?;
                    let decayed = (w * (1.0 - lr * weight_decay))?;
                    var.set(&(decayed - ((m_hat / (v_hat.sqrt()? + ADAM_EPS)?)? * lr)?)?)?;
                    self.state.insert(name.clone(), vec![m.detach(), v.detach()]);
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`NAME#0`, `NAME#1`), for a checkpoint.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.state.iter().flat_map(|(n, s)| s.iter().enumerate().map(move |(i, t)| (format!("{n}#{i}"), t.clone()))).collect()
    }

    /// Restores the state written by [`Optimizer::tensors`].
    pub fn restore(kind: OptimizerKind, steps: u64, tensors: &BTreeMap<String, Tensor>) -> Result<Self> {
        let per = match kind {
            OptimizerKind::Sgd { .. } => 1,
            OptimizerKind::AdamW { .. } => 2,
        };
        let mut state: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
        for (key, t) in tensors {
            let Some((name, i)) = key.rsplit_once('#') else { bail!("optimizer state '{key}' has no #index") };
            let i: usize = i.parse().map_err(|_| anyhow::anyhow!("optimizer state '{key}': bad index"))?;
            if i >= per {
                bail!("optimizer state '{key}': this optimizer keeps {per} tensor(s) per parameter");
            }
            let slot = state.entry(name.to_string()).or_default();
            if slot.len() != i {
                bail!("optimizer state of '{name}' is incomplete");
            }
            slot.push(t.clone());
        }
        if let Some((name, _)) = state.iter().find(|(_, s)| s.len() != per) {
            bail!("optimizer state of '{name}' is incomplete");
        }
        Ok(Self { kind, steps, state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn quadratic_run(kind: OptimizerKind, steps: usize, resume_at: Option<usize>) -> Vec<f32> {
        let w = Var::from_slice(&[1.0f32, -2.0, 0.5], 3, &Device::Cpu).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let mut opt = Optimizer::new(kind);
        for s in 0..steps {
            if Some(s) == resume_at {
                let saved: BTreeMap<String, Tensor> = opt.tensors().into_iter().collect();
                opt = Optimizer::restore(kind, opt.steps, &saved).unwrap();
            }
            let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
            let g = loss.backward().unwrap();
            opt.step(&params, &g, 0.1).unwrap();
        }
        w.as_tensor().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn sgd_and_adamw_by_hand() {
        // loss = ½w² → g = w. SGD μ 0.9, wd 0: v1 = 1, w1 = 0.9; v2 = 0.9 + 0.9 = 1.8, w2 = 0.72.
        let w = quadratic_run(OptimizerKind::Sgd { momentum: 0.9, weight_decay: 0.0 }, 2, None);
        assert!((w[0] - 0.72).abs() < 1e-6, "{w:?}");
        // AdamW's first step moves each weight by lr·sign(g) (bias correction), after decay 1 − lr·wd.
        let w = quadratic_run(OptimizerKind::AdamW { weight_decay: 0.5 }, 1, None);
        assert!((w[0] - (0.95 - 0.1)).abs() < 1e-6 && (w[1] - (-1.9 + 0.1)).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn restored_state_continues_exactly() {
        for kind in [OptimizerKind::Sgd { momentum: 0.9, weight_decay: 5e-4 }, OptimizerKind::AdamW { weight_decay: 0.05 }] {
            assert_eq!(quadratic_run(kind, 6, None), quadratic_run(kind, 6, Some(3)), "{kind:?}");
        }
    }
}
