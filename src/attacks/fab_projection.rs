//! FAB's projections (AutoAttack's `fab_projections.py`): the smallest step `d`, in L∞ or L2,
//! that takes a point `t` onto the hyperplane `w·x = b` while `t + d` stays in the pixel box
//! [0, 1] — or, where the box does not allow reaching it, the step that gets as close as the box
//! allows. Each works on one row (the reference works on a batch of rows, row by row the same),
//! in f64, with the reference's sort-and-bisect over the coordinates and its guards (10⁻⁸ for a
//! zero weight, 10¹² for "never binds").

/// `ceil(log2 n)`: the reference's bisection steps over `n` sorted coordinates.
fn bisection_steps(n: usize) -> usize {
    (n as f64).log2().ceil().max(0.0) as usize
}

/// Indices of `v` sorted by value, ascending (ties: lower index first).
fn argsort(v: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]).then(a.cmp(&b)));
    order
}

/// The L∞ projection of `t` onto `w·x = b` within [0, 1] (`projection_linf`).
pub fn linf(t: &[f64], w: &[f64], b: f64) -> Vec<f64> {
    let n = t.len();
    let dot: f64 = w.iter().zip(t).map(|(w, t)| w * t).sum();
    let sign = if dot - b >= 0.0 { 1.0 } else { -1.0 };
    let w: Vec<f64> = w.iter().map(|v| v * sign).collect();
    let b = b * sign;
    let a: Vec<f64> = w.iter().map(|&v| if v < 0.0 { 1.0 } else { 0.0 }).collect();
    let nonzero: Vec<f64> = w.iter().map(|&v| if v != 0.0 { 1.0 } else { 0.0 }).collect();
    let mut d: Vec<f64> = (0..n).map(|i| (a[i] - t[i]) * nonzero[i]).collect();
    let p: Vec<f64> = (0..n).map(|i| a[i] - t[i] * (2.0 * a[i] - 1.0)).collect();
    let indp = argsort(&p);
    let b = b - w.iter().zip(t).map(|(w, t)| w * t).sum::<f64>();
    let b0: f64 = w.iter().zip(&d).map(|(w, d)| w * d).sum();
    // Coordinates by p descending: cumulative |w| and cumulative −w·d (plus b0).
    let (mut s, mut sb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut acc_s, mut acc_b) = (0.0, b0);
    for &i in indp.iter().rev() {
        acc_s += w[i].abs();
        acc_b += -w[i] * d[i];
        s.push(acc_s);
        sb.push(acc_b);
    }
    let b2 = sb[n - 1] - s[n - 1] * p[indp[0]];
    let c_l = b - b2 > 0.0;
    let c2 = (b - b0 > 0.0) && !c_l;
    if c_l {
        let lmbd = ((b - sb[n - 1]) / -s[n - 1]).max(0.0);
        for i in 0..n {
            d[i] = (2.0 * a[i] - 1.0) * lmbd;
        }
    } else if c2 {
        let (mut lb, mut ub) = (0.0f64, (n - 1) as f64);
        for _ in 0..bisection_steps(n) {
            let mid = ((lb + ub) / 2.0).floor();
            let k = mid as usize;
            let current = sb[k] - s[k] * p[indp[n - 1 - k]];
            if b - current > 0.0 {
                lb = mid;
            } else {
                ub = mid;
            }
        }
        let k = lb as usize;
        let lmbd = ((b - sb[k]) / -s[k]).max(0.0);
        for i in 0..n {
            d[i] = lmbd.min(d[i]) * a[i] + (-lmbd).max(d[i]) * (1.0 - a[i]);
        }
    }
    d.iter().zip(&nonzero).map(|(d, z)| d * z).collect()
}

/// The L2 projection of `t` onto `w·x = b` within [0, 1] (`projection_l2`).
pub fn l2(t: &[f64], w: &[f64], b: f64) -> Vec<f64> {
    const NEVER: f64 = 1e12;
    const ZERO_W: f64 = 1e-8;
    let n = t.len();
    let c0: f64 = w.iter().zip(t).map(|(w, t)| w * t).sum::<f64>() - b;
    let sign = if c0 >= 0.0 { 1.0 } else { -1.0 };
    let w: Vec<f64> = w.iter().map(|v| v * sign).collect();
    let c = c0 * sign;
    let live: Vec<bool> = w.iter().map(|v| v.abs() > ZERO_W).collect();
    // Where each coordinate hits the box along −w (never, where w is zero).
    let r: Vec<f64> = (0..n)
        .map(|i| {
            if w[i].abs() < ZERO_W {
                return NEVER;
            }
            let v = (t[i] / w[i]).max((t[i] - 1.0) / w[i]).clamp(-NEVER, NEVER);
            if v == -NEVER {
                NEVER
            } else {
                v
            }
        })
        .collect();
    let indr = argsort(&r);
    let mut rs: Vec<f64> = indr.iter().map(|&i| r[i]).collect();
    let mut rs2: Vec<f64> = rs[1..].iter().copied().chain(std::iter::once(0.0)).collect();
    rs.iter_mut().chain(rs2.iter_mut()).filter(|v| **v == NEVER).for_each(|v| *v = 0.0);
    let w3s: Vec<f64> = indr.iter().map(|&i| w[i] * w[i]).collect();
    let w5: f64 = w3s.iter().sum();
    let mut ws = Vec::with_capacity(n);
    let mut acc = 0.0;
    for v in &w3s {
        acc += v;
        ws.push(w5 - acc);
    }
    let mut d: Vec<f64> = (0..n).map(|i| if live[i] { -(r[i] * w[i]) } else { 0.0 }).collect();
    let mut s = Vec::with_capacity(n + 1);
    s.push(-w5 * rs[0]);
    let mut acc = 0.0;
    for j in 0..n {
        acc += (-rs2[j] + rs[j]) * ws[j];
        s.push(acc - w5 * rs[0]);
    }
    let c4 = s[0] + c < 0.0;
    let c3 = d.iter().zip(&w).map(|(d, w)| d * w).sum::<f64>() + c > 0.0;
    if c4 {
        let alpha = c / w5;
        for i in 0..n {
            d[i] = -alpha * w[i];
        }
    } else if !c3 {
        let (mut lb, mut ub) = (0.0f64, (n - 1) as f64);
        for _ in 0..bisection_steps(n) {
            let mid = ((lb + ub) / 2.0).floor();
            if s[mid as usize] + c > 0.0 {
                lb = mid;
            } else {
                ub = mid;
            }
        }
        let k = lb as usize;
        let alpha = if ws[k] == 0.0 { 0.0 } else { (s[k] + c) / ws[k] + rs[k] };
        for i in 0..n {
            // The reference's `alpha > r` keeps d; anything else (a NaN too) moves along w.
            if alpha.partial_cmp(&r[i]) != Some(std::cmp::Ordering::Greater) {
                d[i] = -alpha * w[i];
            }
        }
    }
    d.iter().zip(&live).map(|(d, &l)| if l { *d } else { 0.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point already on the plane needs no step; one a box corner away in L∞ goes straight
    /// there: t = (0.5, 0.5), w = (1, 1), b = 1.5 → d = (0.25, 0.25) in both geometries.
    #[test]
    fn projections_by_hand() {
        let t = [0.5, 0.5];
        for f in [linf, l2] {
            let d = f(&t, &[1.0, 1.0], 1.0);
            assert!(d.iter().all(|v| v.abs() < 1e-12), "{d:?}");
            let d = f(&t, &[1.0, 1.0], 1.5);
            assert!(d.iter().all(|v| (v - 0.25).abs() < 1e-12), "{d:?}");
        }
        // L2 along w = (3, 4) from the origin to 3x + 4y = 1: d = w / 25.
        let d = l2(&[0.0, 0.0], &[3.0, 4.0], 1.0);
        assert!((d[0] - 0.12).abs() < 1e-12 && (d[1] - 0.16).abs() < 1e-12, "{d:?}");
    }
}
