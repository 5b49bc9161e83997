//! Threat models: how far a perturbation δ may go (‖δ‖∞ ≤ ε or ‖δ‖₂ ≤ ε per image, and x + δ in
//! [0,1]), the ascent step in that geometry (sign of the gradient; gradient over its L2 norm), the
//! projection back, and the uniform random start.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

    /// Projects one image's δ onto the ε-ball, then x + δ onto [0,1] (which only shrinks each
    /// coordinate toward 0, so δ stays in the ball).
    pub fn project(&self, x: &[f32], delta: &mut [f32]) {
        match self.norm {
            Norm::Linf => {
                let e = self.eps as f32;
                delta.iter_mut().for_each(|d| *d = d.clamp(-e, e));
            }
            Norm::L2 => {
                let n = self.norm_of(delta);
                if n > self.eps {
                    let k = (self.eps / n) as f32;
                    delta.iter_mut().for_each(|d| *d *= k);
                }
            }
        }
        for (d, &xi) in delta.iter_mut().zip(x) {
            *d = (xi + *d).clamp(0.0, 1.0) - xi;
        }
    }

    /// One ascent step of size `alpha` along `grad` (sign for L∞, unit L2 direction for L2); a
    /// zero gradient leaves δ as it is.
    pub fn step(&self, delta: &mut [f32], grad: &[f32], alpha: f64) {
        match self.norm {
            Norm::Linf => {
                let a = alpha as f32;
                for (d, &g) in delta.iter_mut().zip(grad) {
                    if g != 0.0 {
                        *d += a * g.signum();
                    }
                }
            }
            Norm::L2 => {
                let n = grad.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>().sqrt();
                if n > 0.0 {
                    let k = (alpha / n) as f32;
                    delta.iter_mut().zip(grad).for_each(|(d, &g)| *d += k * g);
                }
            }
        }
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

    /// Steps and projections by hand, in both geometries, with the pixel box.
    #[test]
    fn steps_and_projections_by_hand() {
        let linf = ThreatModel { norm: Norm::Linf, eps: 0.1 };
        let x = [0.5f32, 0.95, 0.02, 0.5];
        let mut d = [0.0f32; 4];
        linf.step(&mut d, &[1.0, 2.0, -3.0, 0.0], 0.25);
        assert_eq!(d, [0.25, 0.25, -0.25, 0.0]);
        linf.project(&x, &mut d);
        let want = [0.1f32, 0.05, -0.02, 0.0];
        d.iter().zip(want).for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{d:?}"));

        let l2 = ThreatModel { norm: Norm::L2, eps: 0.5 };
        let mut d = [0.0f32; 4];
        l2.step(&mut d, &[3.0, 0.0, 4.0, 0.0], 1.0);
        assert_eq!(d, [0.6, 0.0, 0.8, 0.0]);
        l2.project(&[0.5; 4], &mut d);
        assert!((l2.norm_of(&d) - 0.5).abs() < 1e-6 && (d[0] - 0.3).abs() < 1e-6 && (d[2] - 0.4).abs() < 1e-6);

        let mut rng = SplitMix64::new(1);
        for t in [linf, l2] {
            let mut d = vec![0f32; 300];
            t.random_start(&mut d, &mut rng);
            assert!(t.norm_of(&d) <= t.eps * (1.0 + 1e-6) && t.norm_of(&d) > 0.0);
        }
    }
}
