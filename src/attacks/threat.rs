//! Threat models: how far a perturbation δ may go (‖δ‖∞ ≤ ε or ‖δ‖₂ ≤ ε per image, and x + δ in
//! [0,1]), the ascent step in that geometry (sign of the gradient; gradient over its L2 norm), the
//! projection back, and the uniform random start.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    Linf,
    L2,
}
crate::choices!(Norm { Linf = "linf", L2 = "l2" });

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThreatModel {
    pub norm: Norm,
    pub eps: f64,
}

/// `8/255`, `0.03` or `2e-3`: a non-negative budget or step in pixel units of [0,1].
pub fn parse_amount(s: &str) -> Result<f64> {
    let num = |t: &str| t.trim().parse::<f64>().ok();
    let v = match s.split_once('/') {
        Some((a, b)) => num(a).zip(num(b)).filter(|&(_, b)| b != 0.0).map(|(a, b)| a / b),
        None => num(s),
    };
    match v {
        Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => bail!("'{s}' is not an amount: use a non-negative fraction like 8/255 or a number like 0.03"),
    }
}

impl ThreatModel {
    /// The norm of one image's perturbation in this geometry.
    pub fn norm_of<T: Copy + Into<f64>>(&self, delta: &[T]) -> f64 {
        match self.norm {
            Norm::Linf => delta.iter().fold(0f64, |m, &d| m.max(d.into().abs())),
            Norm::L2 => delta.iter().map(|&d| d.into() * d.into()).sum::<f64>().sqrt(),
        }
    }

    /// Projects every row of `delta` (`[n, per]`, one image's δ each, around the clean rows `x`)
    /// onto the ε-ball, then x + δ onto [0,1] (which only shrinks each coordinate toward 0, so δ
    /// stays in the ball), on their device. L2 norms are summed in f64.
    pub fn project_rows(&self, x: &Tensor, delta: &Tensor) -> Result<Tensor> {
        let d = match self.norm {
            Norm::Linf => {
                let e = self.eps as f32;
                delta.clamp(-e, e)?
            }
            Norm::L2 => {
                let n = l2_rows(delta)?;
                let shrink = n.gt(self.eps)?;
                let k = (Tensor::full(self.eps, n.dims(), n.device())? / &n)?;
                let k = shrink.where_cond(&k, &n.ones_like()?)?.to_dtype(DType::F32)?;
                delta.broadcast_mul(&k.unsqueeze(1)?)?
            }
        };
        Ok(((x + d)?.clamp(0f32, 1f32)? - x)?)
    }

    /// One ascent step of every row of `delta` along the same row of `grad`, row `k` of size
    /// `alpha[k]` (sign for L∞, unit L2 direction for L2), on their device; a zero gradient leaves
    /// the row as it is.
    pub fn step_rows(&self, delta: &Tensor, grad: &Tensor, alpha: &[f64]) -> Result<Tensor> {
        let dev = delta.device();
        let by_row = |k: Tensor| -> Result<Tensor> { Ok(k.to_dtype(DType::F32)?.unsqueeze(1)?) };
        let moved = match self.norm {
            Norm::Linf => {
                let a = by_row(Tensor::new(alpha, dev)?)?;
                grad.sign()?.broadcast_mul(&a)?
            }
            Norm::L2 => {
                let n = l2_rows(grad)?;
                let k = (Tensor::new(alpha, dev)? / &n)?;
                let k = by_row(n.gt(0f64)?.where_cond(&k, &n.zeros_like()?)?)?;
                grad.broadcast_mul(&k)?
            }
        };
        Ok((delta + moved)?)
    }

    /// The norm of every row of `delta` `[n, per]`, in this geometry.
    pub fn norm_rows(&self, delta: &Tensor) -> Result<Vec<f64>> {
        let n = match self.norm {
            Norm::Linf => delta.abs()?.max(1)?.to_dtype(DType::F64)?,
            Norm::L2 => l2_rows(delta)?,
        };
        Ok(n.to_vec1::<f64>()?)
    }

    /// A uniform random start in the ε-ball: per coordinate in [−ε, ε] for L∞; for L2 a
    /// Gaussian direction at radius ε·u^(1/n), uniform in the ball's volume.
    pub fn random_start(&self, delta: &mut [f32], rng: &mut SplitMix64) {
        match self.norm {
            Norm::Linf => delta.iter_mut().for_each(|d| *d = rng.uniform(-self.eps, self.eps) as f32),
            Norm::L2 => {
                let mut g: Vec<f64> = (0..delta.len())
                    .map(|_| {
                        let (u1, u2) = (rng.uniform(f64::MIN_POSITIVE, 1.0), rng.uniform(0.0, 1.0));
                        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
                    })
                    .collect();
                let n = g.iter().map(|v| v * v).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
                let r = self.eps * rng.uniform(0.0, 1.0).powf(1.0 / delta.len() as f64);
                g.iter_mut().for_each(|v| *v *= r / n);
                delta.iter_mut().zip(g).for_each(|(d, v)| *d = v as f32);
            }
        }
    }
}

/// The L2 norm of every row of `t` `[n, per]`, summed in f64: `[n]`, f64.
fn l2_rows(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F64)?.sqr()?.sum(1)?.sqrt()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_or_say_why() {
        assert_eq!(parse_amount("8/255").unwrap(), 8.0 / 255.0);
        assert_eq!(parse_amount("0.03").unwrap(), 0.03);
        assert_eq!(parse_amount(" 2 / 255 ").unwrap(), 2.0 / 255.0);
        for bad in ["eight", "8/", "8/0", "-1", "nan", "1/x"] {
            assert!(parse_amount(bad).is_err(), "{bad}");
        }
        assert!(parse_amount("8/255x").unwrap_err().to_string().contains("8/255"));
    }

    /// Steps and projections by hand, in both geometries, with the pixel box; rows move by their
    /// own step size and a zero gradient leaves its row alone.
    #[test]
    fn steps_and_projections_by_hand() {
        let dev = candle_core::Device::Cpu;
        let t = |rows: &[[f32; 4]]| Tensor::from_vec(rows.concat(), (rows.len(), 4), &dev).unwrap();
        let v = |t: Tensor| t.to_vec2::<f32>().unwrap();
        let close = |a: Vec<Vec<f32>>, b: &[[f32; 4]]| {
            a.iter().flatten().zip(b.iter().flatten()).for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{a:?} against {b:?}"))
        };
        let linf = ThreatModel { norm: Norm::Linf, eps: 0.1 };
        let x = t(&[[0.5, 0.95, 0.02, 0.5], [0.5; 4]]);
        let d = linf.step_rows(&t(&[[0.0; 4], [0.0; 4]]), &t(&[[1.0, 2.0, -3.0, 0.0], [0.0; 4]]), &[0.25, 0.5]).unwrap();
        assert_eq!(v(d.clone()), [[0.25, 0.25, -0.25, 0.0], [0.0; 4]]);
        close(v(linf.project_rows(&x, &d).unwrap()), &[[0.1, 0.05, -0.02, 0.0], [0.0; 4]]);
        assert_eq!(linf.norm_rows(&t(&[[0.05, -0.1, 0.0, 0.0], [0.0; 4]])).unwrap(), [0.10000000149011612, 0.0]);

        let l2 = ThreatModel { norm: Norm::L2, eps: 0.5 };
        let d = l2.step_rows(&t(&[[0.0; 4], [0.1; 4]]), &t(&[[3.0, 0.0, 4.0, 0.0], [0.0; 4]]), &[1.0, 2.0]).unwrap();
        assert_eq!(v(d.clone()), [[0.6, 0.0, 0.8, 0.0], [0.1; 4]]);
        let p = l2.project_rows(&t(&[[0.5; 4], [0.5; 4]]), &d).unwrap();
        close(v(p.clone()), &[[0.3, 0.0, 0.4, 0.0], [0.1; 4]]);
        let n = l2.norm_rows(&p).unwrap();
        assert!((n[0] - 0.5).abs() < 1e-6 && (n[1] - 0.2).abs() < 1e-6, "{n:?}");

        let mut rng = SplitMix64::new(1);
        for t in [linf, l2] {
            let mut d = vec![0f32; 300];
            t.random_start(&mut d, &mut rng);
            assert!(t.norm_of(&d) <= t.eps * (1.0 + 1e-6) && t.norm_of(&d) > 0.0);
        }
    }
}
