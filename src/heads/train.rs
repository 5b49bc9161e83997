//! Training loop for heads on features already in memory: seeded shuffled mini-batches, AdamW
//! or SGD with momentum and weight decay (`crate::optim`, torch's formulas), learning-rate
//! schedules with linear warm-up (constant, polynomial decay, cosine), and a per-step loss log.

use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::optim::{Optimizer, OptimizerKind};
use crate::rng::shuffled;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// `lr · (1 − t/T)^power` (the segmentation reference uses power 1.0 or 0.9).
    Poly {
        power: f64,
    },
    /// `lr · ½(1 + cos(π t/T))`.
    Cosine,
    /// Set once per epoch, as Lightning steps pl_bolts' `LinearWarmupCosineAnnealingLR` (the
    /// study's DeACL): epoch e < W: `start + e·(lr − start)/(W − 1)`; then
    /// `½·lr·(1 + cos(π (e − W)/(E − W)))`, decaying to 0. `warmup_steps` does not apply.
    EpochWarmupCosine {
        warmup_epochs: usize,
        start_lr: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub schedule: Schedule,
    /// Linear warm-up from 0 over this many steps.
    pub warmup_steps: usize,
    pub seed: u64,
}

impl TrainConfig {
    /// Learning rate at `step` of `total`.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if let Schedule::EpochWarmupCosine { warmup_epochs, start_lr } = self.schedule {
            let per_epoch = (total / self.epochs.max(1)).max(1);
            let e = step / per_epoch;
            if e < warmup_epochs {
                return start_lr + e as f64 * (self.lr - start_lr) / warmup_epochs.saturating_sub(1).max(1) as f64;
            }
            let span = self.epochs.saturating_sub(warmup_epochs).max(1) as f64;
            return 0.5 * self.lr * (1.0 + (std::f64::consts::PI * (e - warmup_epochs) as f64 / span).cos());
        }
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let t = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Poly { power } => self.lr * (1.0 - t).powf(power),
            Schedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            Schedule::EpochWarmupCosine { .. } => unreachable!("handled above"),
        }
    }
}

/// Trains `vars` for `cfg.epochs` over `n` samples: `loss_of(epoch, indices)` gives the loss of
/// one mini-batch (sample indices in the seeded order of that epoch). Returns the loss of every step.
pub fn fit(vars: Vec<Var>, n: usize, cfg: &TrainConfig, mut loss_of: impl FnMut(usize, &[usize]) -> Result<Tensor>) -> Result<Vec<f64>> {
    if n == 0 || cfg.batch_size == 0 || cfg.epochs == 0 {
        bail!("nothing to train: {n} samples, batch size {}, {} epochs", cfg.batch_size, cfg.epochs);
    }
    let params = Optimizer::numbered(vars);
    let mut opt = Optimizer::new(cfg.optimizer);
    let per_epoch = n.div_ceil(cfg.batch_size);
    let total = per_epoch * cfg.epochs;
    let mut losses = Vec::with_capacity(total);
    for epoch in 0..cfg.epochs {
        let order = shuffled(n, crate::rng::epoch(cfg.seed, epoch));
        for (b, batch) in order.chunks(cfg.batch_size).enumerate() {
            let lr = cfg.lr_at(epoch * per_epoch + b, total);
            let loss = loss_of(epoch, batch)?;
            let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                bail!("the loss became {value} at epoch {epoch}, step {b}");
            }
            let grads = loss.backward()?;
            opt.step(&params, &grads, lr)?;
            losses.push(value);
        }
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    use crate::heads::layers::{LinearProbe, Pooling};
    use crate::heads::losses::cross_entropy;

    fn config(optimizer: OptimizerKind) -> TrainConfig {
        TrainConfig { epochs: 30, batch_size: 16, lr: 0.05, optimizer, schedule: Schedule::Cosine, warmup_steps: 3, seed: 7 }
    }

    #[test]
    fn schedules_by_hand() {
        let mut c = config(OptimizerKind::AdamW { weight_decay: 0.0 });
        c.lr = 1.0;
        c.warmup_steps = 2;
        assert_eq!(c.lr_at(0, 12), 0.5);
        assert_eq!(c.lr_at(1, 12), 1.0);
        assert!((c.lr_at(2, 12) - 1.0).abs() < 1e-12, "cosine starts at lr");
        assert!((c.lr_at(7, 12) - 0.5).abs() < 1e-12, "half way down at the middle");
        c.schedule = Schedule::Poly { power: 1.0 };
        assert!((c.lr_at(7, 12) - 0.5).abs() < 1e-12);
        c.schedule = Schedule::Constant;
        assert_eq!(c.lr_at(11, 12), 1.0);
    }

    /// Two separable Gaussian blobs: a linear probe learns them with either optimizer, and the same
    /// seed gives the same weights bit for bit.
    fn train(optimizer: OptimizerKind) -> (f64, Vec<f64>, Vec<f32>) {
        let dev = Device::Cpu;
        let n = 64;
        let mut feats = Vec::new();
        let mut labels = Vec::new();
        let mut rng = crate::rng::SplitMix64::new(3);
        for i in 0..n {
            let c = (i % 2) as f64;
            feats.extend((0..8).map(|k| (if k == 0 { 2.0 * c - 1.0 } else { 0.0 } + rng.uniform(-0.5, 0.5)) as f32));
            labels.push(c as u32);
        }
        let x = Tensor::from_vec(feats, (n, 8), &dev).unwrap();
        let w = Var::zeros((2, 8), DType::F32, &dev).unwrap();
        let b = Var::zeros(2, DType::F32, &dev).unwrap();
        let losses = fit(vec![w.clone(), b.clone()], n, &config(optimizer), |_, idx| {
            let ids = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), &dev)?;
            let y = Tensor::from_vec(idx.iter().map(|&i| labels[i]).collect::<Vec<_>>(), idx.len(), &dev)?;
            let probe = LinearProbe { weight: w.as_tensor().clone(), bias: b.as_tensor().clone(), pooling: Pooling::Cls };
            cross_entropy(&probe.forward(&x.index_select(&ids, 0)?)?, &y, 255)
        })
        .unwrap();
        let pred = x.matmul(&w.as_tensor().t().unwrap()).unwrap().broadcast_add(b.as_tensor()).unwrap().argmax(1).unwrap();
        let correct = pred.to_vec1::<u32>().unwrap().iter().zip(&labels).filter(|(p, l)| p == l).count();
        (correct as f64 / n as f64, losses, w.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
    }

    #[test]
    fn probe_learns_and_training_is_reproducible() {
        for opt in [OptimizerKind::AdamW { weight_decay: 1e-4 }, OptimizerKind::Sgd { momentum: 0.9, weight_decay: 5e-4 }] {
            let (acc, losses, w) = train(opt);
            assert!(acc > 0.95, "{opt:?}: accuracy {acc}");
            assert!(losses.last().unwrap() < &(losses[0] * 0.3), "{opt:?}: loss {} -> {}", losses[0], losses.last().unwrap());
            assert_eq!(losses.len(), 30 * 4);
            let (_, losses2, w2) = train(opt);
            assert_eq!((losses, w), (losses2, w2), "{opt:?}: same seed, same run");
        }
    }

    #[test]
    fn sgd_step_by_hand() {
        // One parameter, loss = w²/2 → gradient w. wd 0.1, momentum 0.5, lr 0.1, w0 = 1:
        // step 1: g = 1 + 0.1 = 1.1, v = 1.1, w = 1 − 0.11 = 0.89
        // step 2: g = 0.89 + 0.089 = 0.979, v = 0.55 + 0.979 = 1.529, w = 0.89 − 0.1529 = 0.7371
        let w = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 1,
            lr: 0.1,
            optimizer: OptimizerKind::Sgd { momentum: 0.5, weight_decay: 0.1 },
            schedule: Schedule::Constant,
            warmup_steps: 0,
            seed: 0,
        };
        fit(vec![w.clone()], 1, &cfg, |_, _| Ok((w.as_tensor().sqr()? * 0.5)?.sum_all()?)).unwrap();
        let got = w.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((got - 0.7371).abs() < 1e-12, "{got}");
    }
}
