//! Exact (erf) GELU and its gradient on the CPU, with the fusions the fast path uses: GELU with
//! the bias of the product before it, GELU's slope computed beside it from the same erf (kept for
//! a reverse pass that then only multiplies), and the row variants that run inside a product's
//! packing.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Error, Layout, Result, Shape, Tensor};

use super::slice;
use crate::encoder::fastmath::{self, Fast};

/// Exact (erf) GELU, elementwise.
pub struct Gelu;

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `out = f(a, b)` element by element: the loop of [`map`].
#[inline(always)]
fn map_loop<T: Fast, F: Fn(T, T) -> T>(a: &[T], b: Option<&[T]>, out: &mut [T], f: &F) {
    match b {
        Some(b) => {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = f(a, b);
            }
        }
        None => {
            for (o, &a) in out.iter_mut().zip(a) {
                *o = f(a, T::zero());
            }
        }
    }
}
fastmath::multiversion!(map_simd [T: Fast, F: Fn(T, T) -> T] (a: &[T], b: Option<&[T]>, out: &mut [T], f: &F) => map_loop);

/// Elementwise map over one or two equally long slices, in parallel chunks.
fn map<T: Fast>(a: &[T], b: Option<&[T]>, f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    const CHUNK: usize = 1 << 14;
    fastmath::zeroed_chunks(a.len(), CHUNK, T::zero(), |c, o| {
        let range = c * CHUNK..c * CHUNK + o.len();
        map_simd(&a[range.clone()], b.map(|b| &b[range]), o, &f);
    })
}

/// `x·Φ(x)`, Φ the standard normal CDF (the second argument unused: [`map`]'s shape).
#[inline(always)]
fn gelu_of<T: Fast>(x: T, _: T) -> T {
    gelu_value(erf_scaled(x), x)
}

/// `erf(x/√2)`, from which GELU and its slope are both computed.
#[inline(always)]
fn erf_scaled<T: Fast>(x: T) -> T {
    (x * T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap()).fast_erf()
}

/// GELU `x·Φ(x) = x·(1 + e)/2` given `e = erf(x/√2)`.
#[inline(always)]
fn gelu_value<T: Fast>(e: T, x: T) -> T {
    T::from(0.5).unwrap() * x * (T::one() + e)
}

/// `g · (Φ(x) + x·φ(x))`, Φ and φ the standard normal CDF and density.
#[inline(always)]
fn gelu_grad_of<T: Fast>(x: T, g: T) -> T {
    g * gelu_slope(erf_scaled(x), x)
}

/// GELU's derivative `Φ(x) + x·φ(x)` given `e = erf(x/√2)`.
#[inline(always)]
fn gelu_slope<T: Fast>(e: T, x: T) -> T {
    let half = T::from(0.5).unwrap();
    half * (T::one() + e) + x * density(x)
}

/// φ(x), the standard normal density, its exponent `-x²/2` held above -80 (φ ≈ 7e-36 there, a
/// normal f32). Unbounded, φ went subnormal for |x| > 13.2, which the CPU computes in microcode:
/// a GELU gradient over values that large ran 8× slower (measured where a third of them were).
/// Beyond |x| = 12.6 the term `x·φ(x)` is below 1e-33 either way, nothing beside Φ(x).
#[inline(always)]
fn density<T: Fast>(x: T) -> T {
    let c = T::from(FRAC_1_SQRT_2PI).unwrap();
    c * (T::from(-0.5).unwrap() * x * x).max(T::from(-80.0).unwrap()).fast_exp()
}

pub(in crate::encoder) fn gelu<T: Fast>(x: &[T]) -> Vec<T> {
    map(x, None, gelu_of)
}

pub(in crate::encoder) fn gelu_grad<T: Fast>(x: &[T], g: &[T]) -> Vec<T> {
    map(x, Some(g), gelu_grad_of)
}

/// Rows of `f` (of the bias's width) given their bias in place, `f ← f + b`, and the GELU of the
/// result: one pass where a bias written before the product and a GELU after took two.
#[inline(always)]
fn bias_gelu_loop(f: &mut [f32], b: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) {
    for (fr, or) in f.chunks_exact_mut(b.len()).zip(out.chunks_exact_mut(b.len())) {
        for ((x, &bias), o) in fr.iter_mut().zip(b).zip(or) {
            let z = *x + bias;
            *x = z;
            o.write(gelu_of(z, 0.0));
        }
    }
}
fastmath::multiversion!(bias_gelu_simd [] (f: &mut [f32], b: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) => bias_gelu_loop);

/// `gelu(f + b)`, with `f` left holding `f + b` (the pre-activation a reverse pass reads); `b`
/// broadcast over rows of its width.
pub(in crate::encoder) fn bias_gelu(f: &mut [f32], b: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    assert!(!b.is_empty() && f.len().is_multiple_of(b.len()), "internal error: a bias of another width");
    let width = b.len() * 16;
    let mut out = Vec::with_capacity(f.len());
    out.spare_capacity_mut()[..f.len()].par_chunks_mut(width).zip(f.par_chunks_mut(width)).for_each(|(o, f)| bias_gelu_simd(f, b, o));
    // SAFETY: every chunk of the spare capacity was written whole by `bias_gelu_loop`.
    unsafe { out.set_len(f.len()) };
    out
}

/// Rows of `f` (of the bias's width) turned in place into `gelu(f + b)`, and GELU's derivative
/// `Φ(z) + z·φ(z)` at `z = f + b` into `slope` where given: one pass and one erf, for an f32
/// forward whose reverse pass then only multiplies by the slope. The values are [`gelu_of`]'s and
/// [`gelu_grad_of`]'s (at a gradient of 1), bit for bit.
#[inline(always)]
fn bias_gelu_slope_loop(f: &mut [f32], b: &[f32], slope: Option<&mut [std::mem::MaybeUninit<f32>]>) {
    match slope {
        Some(slope) => {
            for (fr, sr) in f.chunks_exact_mut(b.len()).zip(slope.chunks_exact_mut(b.len())) {
                for ((x, &bias), s) in fr.iter_mut().zip(b).zip(sr) {
                    let z = *x + bias;
                    let e = erf_scaled(z);
                    *x = gelu_value(e, z);
                    s.write(gelu_slope(e, z));
                }
            }
        }
        None => {
            for fr in f.chunks_exact_mut(b.len()) {
                for (x, &bias) in fr.iter_mut().zip(b) {
                    *x = gelu_of(*x + bias, 0.0);
                }
            }
        }
    }
}
fastmath::multiversion!(bias_gelu_slope_simd [] (f: &mut [f32], b: &[f32], slope: Option<&mut [std::mem::MaybeUninit<f32>]>) => bias_gelu_slope_loop);

/// `f ← gelu(f + b)` in place (`b` broadcast over rows of its width), and with `slope` GELU's
/// derivative at `f + b`, returned: see [`bias_gelu_slope_loop`]. Where no reverse pass reads the
/// pre-activation, this writes one buffer less than [`bias_gelu`].
pub(in crate::encoder) fn bias_gelu_in_place(f: &mut [f32], b: &[f32], slope: bool) -> Option<Vec<f32>> {
    use rayon::prelude::*;
    assert!(!b.is_empty() && f.len().is_multiple_of(b.len()), "internal error: a bias of another width");
    let width = b.len() * 16;
    if !slope {
        f.par_chunks_mut(width).for_each(|f| bias_gelu_slope_simd(f, b, None));
        return None;
    }
    let mut out = Vec::with_capacity(f.len());
    out.spare_capacity_mut()[..f.len()]
        .par_chunks_mut(width)
        .zip(f.par_chunks_mut(width))
        .for_each(|(s, f)| bias_gelu_slope_simd(f, b, Some(s)));
    // SAFETY: every chunk of the spare capacity was written whole by `bias_gelu_slope_loop`.
    unsafe { out.set_len(f.len()) };
    Some(out)
}

/// `g ← g ⊙ s` in place, in parallel: GELU's gradient where an f32 forward kept its slope
/// ([`bias_gelu_in_place`]), bit for bit [`gelu_grad`]'s.
pub(in crate::encoder) fn times_in_place(g: &mut [f32], s: &[f32]) {
    use rayon::prelude::*;
    assert_eq!(g.len(), s.len(), "internal error: a slope of another length");
    g.par_chunks_mut(1 << 14).zip(s.par_chunks(1 << 14)).for_each(|(g, s)| times_f32_simd(g, s));
}

#[inline(always)]
fn times_f32_loop(g: &mut [f32], s: &[f32]) {
    for (g, &s) in g.iter_mut().zip(s) {
        *g *= s;
    }
}
fastmath::multiversion!(times_f32_simd [] (g: &mut [f32], s: &[f32]) => times_f32_loop);

/// [`gelu`] of one row into `out`, on the calling thread (inside a product's packing).
pub(in crate::encoder) fn gelu_into(x: &[f32], out: &mut [f32]) {
    map_simd(x, None, out, &gelu_of);
}

/// [`gelu`] of one row into `out`, and GELU's derivative `Φ(x) + x·φ(x)` rounded to bf16 into
/// `slope`, from one erf: for a bf16 forward whose reverse pass then only multiplies by it. The
/// values are [`gelu_of`]'s and [`gelu_grad_of`]'s (at a gradient of 1) rounded, bit for bit.
pub(in crate::encoder) fn gelu_and_slope_into(x: &[f32], out: &mut [f32], slope: &mut [std::mem::MaybeUninit<u16>]) {
    gelu_and_slope_simd(x, out, slope)
}

#[inline(always)]
fn gelu_and_slope_loop(x: &[f32], out: &mut [f32], slope: &mut [std::mem::MaybeUninit<u16>]) {
    for ((&v, o), s) in x.iter().zip(out).zip(slope) {
        let e = erf_scaled(v);
        *o = gelu_value(e, v);
        s.write(crate::encoder::bf16_pack::round_bf16(gelu_slope(e, v)));
    }
}
fastmath::multiversion!(gelu_and_slope_simd [] (x: &[f32], out: &mut [f32], slope: &mut [std::mem::MaybeUninit<u16>]) => gelu_and_slope_loop);

/// `g ⊙ s` of one row into `out`, on the calling thread, `s` in bf16: GELU's gradient where the
/// forward kept its slope ([`gelu_and_slope_into`]).
pub(in crate::encoder) fn times_into(g: &[f32], s: &[u16], out: &mut [f32]) {
    times_simd(g, s, out)
}

#[inline(always)]
fn times_loop(g: &[f32], s: &[u16], out: &mut [f32]) {
    for ((o, &g), &s) in out.iter_mut().zip(g).zip(s) {
        *o = g * f32::from_bits((s as u32) << 16);
    }
}
fastmath::multiversion!(times_simd [] (g: &[f32], s: &[u16], out: &mut [f32]) => times_loop);

/// [`gelu_grad`] of one row into `out`, on the calling thread.
pub(in crate::encoder) fn gelu_grad_into(x: &[f32], g: &[f32], out: &mut [f32]) {
    map_simd(x, Some(g), out, &gelu_grad_of);
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch!(s, l, |x: T| gelu::<T>(x));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2(&grad.contiguous()?, GeluGrad)?))
    }
}

struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = dispatch2!(s1, l1, s2, l2, |x, g: T| gelu_grad::<T>(x, g));
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    /// GELU's gradient against its definition in f64 (`Φ(x) + x·φ(x)`, libm's erf and exp) out to
    /// |x| = 40, and the density it uses never subnormal there (the slow path it keeps out of).
    #[test]
    fn gelu_grad_is_the_derivative_far_out_without_subnormals() {
        for i in -4000..=4000 {
            let x = i as f32 / 100.0;
            let xf = x as f64;
            let phi = (-0.5 * xf * xf).exp() * super::FRAC_1_SQRT_2PI;
            let exact = 0.5 * (1.0 + libm::erf(xf / std::f64::consts::SQRT_2)) + xf * phi;
            let got = super::gelu_grad_of(x, 1.0f32);
            assert!((got as f64 - exact).abs() <= 1e-6, "gelu'({x}) = {got}, not {exact}");
            let d = super::density(x);
            assert!(!d.is_subnormal(), "φ({x}) = {d:e} is subnormal");
            if x.abs() < 12.0 {
                // f32 rounds -x²/2 to ~6e-8 of itself: 4e-6 of φ at x = 12.
                assert!((d as f64 - phi).abs() <= 1e-5 * phi, "φ({x}) = {d:e}, not {phi:e}");
            }
        }
    }

    /// The forward's GELU and slope from one erf: GELU is [`gelu_of`]'s (and [`gelu_into`]'s)
    /// bit for bit, the slope [`gelu_grad_of`]'s at a gradient of 1 rounded to bf16 (to nearest
    /// even), and the reverse pass multiplies the gradient by that.
    #[test]
    fn gelu_and_slope_are_gelu_and_its_gradient_rounded_to_bf16() {
        let x: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) / 97.0).collect();
        let g: Vec<f32> = (0..4001).map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0).collect();
        let (mut slope, mut y, mut dx) = (vec![std::mem::MaybeUninit::uninit(); x.len()], vec![0f32; x.len()], vec![0f32; x.len()]);
        super::gelu_and_slope_into(&x, &mut y, &mut slope);
        // SAFETY: gelu_and_slope_into wrote every slope.
        let slope: Vec<u16> = slope.iter().map(|s| unsafe { s.assume_init() }).collect();
        super::times_into(&g, &slope, &mut dx);
        let mut plain = vec![0f32; x.len()];
        super::gelu_into(&x, &mut plain);
        for i in 0..x.len() {
            assert_eq!(y[i].to_bits(), super::gelu_of(x[i], 0.0).to_bits(), "gelu({})", x[i]);
            assert_eq!(plain[i].to_bits(), y[i].to_bits(), "gelu({}) without its slope", x[i]);
            let rounded = f32::from_bits((crate::encoder::bf16_gemm::round_bf16(super::gelu_grad_of(x[i], 1.0)) as u32) << 16);
            assert_eq!(dx[i].to_bits(), (g[i] * rounded).to_bits(), "gelu'({}) · {}", x[i], g[i]);
        }
    }

    /// The f32 forward's GELU in place and its slope from one erf: GELU is [`bias_gelu`]'s, and
    /// the reverse pass's `g ⊙ slope` is [`gelu_grad`]'s at `f + b`, bit for bit (the f32 path's
    /// parity with PyTorch rests on those two); without the slope GELU alone, the same.
    #[test]
    fn gelu_in_place_and_its_slope_are_bias_gelu_and_gelu_grad() {
        let (rows, width) = (41, 24);
        let f: Vec<f32> = (0..rows * width).map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0).collect();
        let b: Vec<f32> = (0..width).map(|j| (j as f32 - 12.0) / 7.0).collect();
        let g: Vec<f32> = (0..rows * width).map(|i| ((i * 53 % 89) as f32 - 44.0) / 5.0).collect();
        let mut z = f.clone();
        let want = super::bias_gelu(&mut z, &b);
        let want_grad = super::gelu_grad(&z, &g);
        let (mut y, mut y_alone) = (f.clone(), f.clone());
        let slope = super::bias_gelu_in_place(&mut y, &b, true).expect("a slope asked for");
        assert!(super::bias_gelu_in_place(&mut y_alone, &b, false).is_none());
        let mut dx = g.clone();
        super::times_in_place(&mut dx, &slope);
        for i in 0..f.len() {
            assert_eq!(y[i].to_bits(), want[i].to_bits(), "gelu({}) at {i}", z[i]);
            assert_eq!(y_alone[i].to_bits(), want[i].to_bits(), "gelu({}) without its slope at {i}", z[i]);
            assert_eq!(dx[i].to_bits(), want_grad[i].to_bits(), "gelu'({}) · {} at {i}", z[i], g[i]);
        }
    }

    /// `bias_gelu` against GELU's definition in f64 (`x·Φ(x)`, `Φ(x) = (1 + erf(x/√2))/2`, as
    /// PyTorch's exact `nn.GELU`), over rows spanning several parallel chunks; `f` keeps `f + b`.
    #[test]
    fn bias_gelu_is_the_gelu_of_the_biased_rows() {
        let (rows, width) = (37, 24);
        let mut f: Vec<f32> = (0..rows * width).map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0).collect();
        let b: Vec<f32> = (0..width).map(|j| (j as f32 - 12.0) / 7.0).collect();
        let before = f.clone();
        let g = super::bias_gelu(&mut f, &b);
        for (i, (&x, &y)) in before.iter().zip(&g).enumerate() {
            let z = x + b[i % width];
            assert_eq!(f[i], z, "f + b at {i}");
            let exact = 0.5 * z as f64 * (1.0 + libm::erf(z as f64 / std::f64::consts::SQRT_2));
            assert!((y as f64 - exact).abs() <= 1e-6 * (1.0 + exact.abs()), "gelu({z}) = {y}, not {exact}");
        }
    }
}
