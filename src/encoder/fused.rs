//! Fused row-wise ops of the attack path (CPU, f32/f64): softmax and LayerNorm with frozen affine
//! parameters. One pass and one buffer per op instead of five to eight candle ops, and a backward
//! that returns only the input gradient. candle's fused `softmax_last_dim`/`layer_norm` have no
//! backward at all (they silently drop gradients), so these are written out with theirs.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Error, Layout, Result, Shape, Tensor};
use num_traits::Float;

use super::fastmath::{self, Fast};

fn slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let (start, end) = l.contiguous_offsets().ok_or_else(|| Error::Msg("fused op: non-contiguous operand".into()))?;
    Ok(&s.as_slice::<T>()?[start..end])
}

fn last_dim(l: &Layout) -> Result<usize> {
    l.dims().last().copied().filter(|&n| n > 0).ok_or_else(|| Error::Msg("fused op: empty last dimension".into()))
}

/// What one op does to one row: `out` from the row of `a` (and of `b`). Implemented by structs,
/// not closures, so that `row` is inlined into the loop compiled for the CPU's widest vectors: a
/// closure there stayed a call, compiled for the baseline (SSE2), and ran 4 lanes wide.
trait RowOp<T>: Sync {
    fn row(&self, a: &[T], b: Option<&[T]>, out: &mut [T]);
}

/// Rows `first..` of `a` (and `b`) through `f` into `out`: the loop of [`rows`].
#[inline(always)]
fn rows_loop<T, F: RowOp<T>>(n: usize, first: usize, a: &[T], b: Option<&[T]>, out: &mut [T], f: &F) {
    for (r, o) in out.chunks_exact_mut(n).enumerate() {
        let start = (first + r) * n;
        f.row(&a[start..start + n], b.map(|b| &b[start..start + n]), o);
    }
}
fastmath::multiversion!(rows_simd [T, F: RowOp<T>] (n: usize, first: usize, a: &[T], b: Option<&[T]>, out: &mut [T], f: &F) => rows_loop);

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

/// Applies `f` to matching rows of the inputs, writing one output row each, in parallel.
fn rows<T: Float + Send + Sync>(n: usize, a: &[T], b: Option<&[T]>, f: impl RowOp<T>) -> Vec<T> {
    super::fastmath::zeroed_chunks(a.len(), n * 16, T::zero(), |c, chunk| rows_simd(n, c * 16, a, b, chunk, &f))
}

macro_rules! dispatch {
    ($s:expr, $l:expr, |$x:ident : $t:ident| $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                let $x = slice::<f32>($s, $l)?;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                let $x = slice::<f64>($s, $l)?;
                CpuStorage::F64($body)
            }
            _ => return Err(Error::Msg("fused op: only f32 and f64".into())),
        }
    };
}

/// The same for ops of two operands of one float type.
macro_rules! dispatch2 {
    ($s1:expr, $l1:expr, $s2:expr, $l2:expr, |$a:ident, $b:ident : $t:ident| $body:expr) => {
        match ($s1, $s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                type $t = f32;
                let ($a, $b) = (slice::<f32>($s1, $l1)?, slice::<f32>($s2, $l2)?);
                CpuStorage::F32($body)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                type $t = f64;
                let ($a, $b) = (slice::<f64>($s1, $l1)?, slice::<f64>($s2, $l2)?);
                CpuStorage::F64($body)
            }
            _ => return Err(Error::Msg("fused op: operands must both be f32 or both f64".into())),
        }
    };
}

/// Softmax over the last dimension.
pub struct Softmax;

/// Softmax of `scale · row`, in place (scale > 0).
#[inline(always)]
pub(super) fn softmax_in_place<T: Fast>(row: &mut [T], scale: T) {
    // Plain loops: `for_each` went through `Iterator::fold`, which was not inlined into the
    // vectorized caller and ran at the baseline's width.
    let max = fastmath::max(row);
    for v in row.iter_mut() {
        *v = ((*v - max) * scale).fast_exp();
    }
    let inv = T::one() / fastmath::sum(row);
    for v in row.iter_mut() {
        *v = *v * inv;
    }
}

/// Softmax of `scale · row` in place for every row of `n` in `rows`; with `y`, the gradient
/// instead: `rows` holds the output gradients and `y` the outputs.
#[inline(always)]
fn softmax_rows_loop(rows: &mut [f32], y: Option<&[f32]>, n: usize, scale: f32) {
    match y {
        None => {
            for r in rows.chunks_exact_mut(n) {
                softmax_in_place(r, scale);
            }
        }
        Some(y) => {
            for (g, y) in rows.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
                softmax_grad_in_place(g, y, scale);
            }
        }
    }
}
fastmath::multiversion!(pub(super) softmax_rows [] (rows: &mut [f32], y: Option<&[f32]>, n: usize, scale: f32) => softmax_rows_loop);

struct SoftmaxRow;

impl<T: Fast> RowOp<T> for SoftmaxRow {
    #[inline(always)]
    fn row(&self, x: &[T], _: Option<&[T]>, o: &mut [T]) {
        o.copy_from_slice(x);
        softmax_in_place(o, T::one());
    }
}

fn softmax<T: Fast>(n: usize, x: &[T]) -> Vec<T> {
    rows(n, x, None, SoftmaxRow)
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l)?;
        let out = dispatch!(s, l, |x: T| softmax::<T>(n, x));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2(&grad.contiguous()?, SoftmaxGrad)?))
    }
}

/// `dx = y ⊙ (g − Σ g⊙y)` row-wise, from the softmax output `y` and the output gradient `g`.
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l1)?;
        let out = dispatch2!(s1, l1, s2, l2, |y, g: T| softmax_grad::<T>(n, y, g));
        Ok((out, l1.shape().clone()))
    }
}

/// The gradient of softmax(scale · x) in place: `g ← scale · y ⊙ (g − Σ g ⊙ y)`, `y` the output.
#[inline(always)]
pub(super) fn softmax_grad_in_place<T: Float>(g: &mut [T], y: &[T], scale: T) {
    let dot = fastmath::dot(y, g);
    for (g, &y) in g.iter_mut().zip(y) {
        *g = scale * y * (*g - dot);
    }
}

struct SoftmaxGradRow;

impl<T: Float + Sync> RowOp<T> for SoftmaxGradRow {
    #[inline(always)]
    fn row(&self, y: &[T], g: Option<&[T]>, o: &mut [T]) {
        o.copy_from_slice(g.expect("softmax_grad passes g"));
        softmax_grad_in_place(o, y, T::one());
    }
}

fn softmax_grad<T: Float + Send + Sync>(n: usize, y: &[T], g: &[T]) -> Vec<T> {
    rows(n, y, Some(g), SoftmaxGradRow)
}

/// LayerNorm over the last dimension with frozen weight and bias.
pub struct FrozenLayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

fn vec_of<T: candle_core::WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.to_dtype(T::DTYPE)?.to_vec1::<T>()
}

/// Mean and 1/σ of one row.
#[inline(always)]
pub(super) fn moments<T: Float>(x: &[T], eps: T) -> (T, T) {
    let n = T::from(x.len()).unwrap();
    let mean = fastmath::sum(x) / n;
    let var = fastmath::sum_of(x, |v| (v - mean) * (v - mean)) / n;
    (mean, T::one() / (var + eps).sqrt())
}

struct LayerNormRow<'a, T> {
    w: &'a [T],
    b: &'a [T],
    eps: T,
}

impl<T: Float + Sync> RowOp<T> for LayerNormRow<'_, T> {
    #[inline(always)]
    fn row(&self, x: &[T], _: Option<&[T]>, o: &mut [T]) {
        let (mean, rstd) = moments(x, self.eps);
        for (((o, &v), &w), &b) in o.iter_mut().zip(x).zip(self.w).zip(self.b) {
            *o = (v - mean) * rstd * w + b;
        }
    }
}

pub(super) fn layer_norm<T: Float + Send + Sync>(n: usize, x: &[T], w: &[T], b: &[T], eps: T) -> Vec<T> {
    rows(n, x, None, LayerNormRow { w, b, eps })
}

impl CustomOp1 for FrozenLayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l)?;
        if self.weight.elem_count() != n {
            return Err(Error::Msg(format!("layer norm: width {n}, weight has {}", self.weight.elem_count())));
        }
        let out = dispatch!(s, l, |x: T| layer_norm(n, x, &vec_of::<T>(&self.weight)?, &vec_of::<T>(&self.bias)?, self.eps as T));
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = LayerNormGrad { weight: self.weight.clone(), eps: self.eps };
        Ok(Some(arg.contiguous()?.apply_op2(&grad.contiguous()?, op)?))
    }
}

/// `dx = rstd · (gw − mean(gw) − x̂ · mean(gw ⊙ x̂))` with `gw = g ⊙ weight`.
struct LayerNormGrad {
    weight: Tensor,
    eps: f64,
}

struct LayerNormGradRow<'a, T> {
    w: &'a [T],
    eps: T,
    /// Add the gradient onto what `out` holds instead of writing it.
    onto: bool,
}

impl<T: Float + Sync> RowOp<T> for LayerNormGradRow<'_, T> {
    #[inline(always)]
    fn row(&self, x: &[T], g: Option<&[T]>, o: &mut [T]) {
        let (g, w) = (g.expect("layer_norm_grad passes g"), self.w);
        let nf = T::from(x.len()).unwrap();
        let (mean, rstd) = moments(x, self.eps);
        // Sixteen partial sums each, over whole chunks (they vectorize; one running sum stays
        // scalar, and an `i % 8` index did not vectorize at AVX-512's width).
        const L: usize = 16;
        let (mut s1, mut s2) = ([T::zero(); L], [T::zero(); L]);
        let whole = x.len() - x.len() % L;
        for ((x, g), w) in x[..whole].chunks_exact(L).zip(g.chunks_exact(L)).zip(w.chunks_exact(L)) {
            for i in 0..L {
                let gw = g[i] * w[i];
                s1[i] = s1[i] + gw;
                s2[i] = s2[i] + gw * (x[i] - mean) * rstd;
            }
        }
        for i in whole..x.len() {
            let gw = g[i] * w[i];
            s1[i - whole] = s1[i - whole] + gw;
            s2[i - whole] = s2[i - whole] + gw * (x[i] - mean) * rstd;
        }
        let (mut t1, mut t2) = (T::zero(), T::zero());
        for i in 0..L {
            t1 = t1 + s1[i];
            t2 = t2 + s2[i];
        }
        let (s1, s2) = (t1, t2);
        let (m1, m2) = (s1 / nf, s2 / nf);
        for (((o, &v), &g), &w) in o.iter_mut().zip(x).zip(g).zip(w) {
            let d = rstd * (g * w - m1 - (v - mean) * rstd * m2);
            *o = if self.onto { *o + d } else { d };
        }
    }
}

pub(super) fn layer_norm_grad<T: Float + Send + Sync>(n: usize, x: &[T], g: &[T], w: &[T], eps: T) -> Vec<T> {
    rows(n, x, Some(g), LayerNormGradRow { w, eps, onto: false })
}

/// `out += layer_norm_grad(x, g)`, rows of `n`, in one pass: the reverse pass of a LayerNorm on
/// a residual stream, whose gradient adds to the one the residual carries round it (written apart
/// and summed in a second pass before; the same sums, `a + b` for `b + a`).
pub(super) fn layer_norm_grad_onto<T: Float + Send + Sync>(n: usize, x: &[T], g: &[T], w: &[T], eps: T, out: &mut [T]) {
    use rayon::prelude::*;
    assert!(x.len() == out.len() && g.len() == out.len(), "internal error: a LayerNorm gradient onto a buffer of another size");
    let f = LayerNormGradRow { w, eps, onto: true };
    out.par_chunks_mut(n * 16).enumerate().for_each(|(c, chunk)| rows_simd(n, c * 16, x, Some(g), chunk, &f));
}

impl CustomOp2 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l1)?;
        let out = dispatch2!(s1, l1, s2, l2, |x, g: T| layer_norm_grad::<T>(n, x, g, &vec_of::<T>(&self.weight)?, self.eps as T));
        Ok((out, l1.shape().clone()))
    }
}

/// Exact (erf) GELU, elementwise.
pub struct Gelu;

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Elementwise map over one or two equally long slices, in parallel chunks.
fn map<T: Fast>(a: &[T], b: Option<&[T]>, f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    const CHUNK: usize = 1 << 14;
    super::fastmath::zeroed_chunks(a.len(), CHUNK, T::zero(), |c, o| {
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

pub(super) fn gelu<T: Fast>(x: &[T]) -> Vec<T> {
    map(x, None, gelu_of)
}

pub(super) fn gelu_grad<T: Fast>(x: &[T], g: &[T]) -> Vec<T> {
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
pub(super) fn bias_gelu(f: &mut [f32], b: &[f32]) -> Vec<f32> {
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
pub(super) fn bias_gelu_in_place(f: &mut [f32], b: &[f32], slope: bool) -> Option<Vec<f32>> {
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
pub(super) fn times_in_place(g: &mut [f32], s: &[f32]) {
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
pub(super) fn gelu_into(x: &[f32], out: &mut [f32]) {
    map_simd(x, None, out, &gelu_of);
}

/// [`gelu`] of one row into `out`, and GELU's derivative `Φ(x) + x·φ(x)` rounded to bf16 into
/// `slope`, from one erf: for a bf16 forward whose reverse pass then only multiplies by it. The
/// values are [`gelu_of`]'s and [`gelu_grad_of`]'s (at a gradient of 1) rounded, bit for bit.
pub(super) fn gelu_and_slope_into(x: &[f32], out: &mut [f32], slope: &mut [std::mem::MaybeUninit<u16>]) {
    gelu_and_slope_simd(x, out, slope)
}

#[inline(always)]
fn gelu_and_slope_loop(x: &[f32], out: &mut [f32], slope: &mut [std::mem::MaybeUninit<u16>]) {
    for ((&v, o), s) in x.iter().zip(out).zip(slope) {
        let e = erf_scaled(v);
        *o = gelu_value(e, v);
        s.write(super::bf16_pack::round_bf16(gelu_slope(e, v)));
    }
}
fastmath::multiversion!(gelu_and_slope_simd [] (x: &[f32], out: &mut [f32], slope: &mut [std::mem::MaybeUninit<u16>]) => gelu_and_slope_loop);

/// `g ⊙ s` of one row into `out`, on the calling thread, `s` in bf16: GELU's gradient where the
/// forward kept its slope ([`gelu_and_slope_into`]).
pub(super) fn times_into(g: &[f32], s: &[u16], out: &mut [f32]) {
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
pub(super) fn gelu_grad_into(x: &[f32], g: &[f32], out: &mut [f32]) {
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

/// True where the fused CPU path applies: CPU tensors of f32/f64.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
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

    /// A LayerNorm's gradient added onto a residual's in one pass is the gradient written apart
    /// plus that residual, bit for bit, over rows spanning several parallel chunks (a width off
    /// the vector length, for the rows' tails).
    #[test]
    fn layer_norm_grad_onto_a_residual_is_the_gradient_plus_the_residual() {
        let (rows, n) = (37, 40);
        let x: Vec<f32> = (0..rows * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 9.0).collect();
        let g: Vec<f32> = (0..rows * n).map(|i| ((i * 53 % 89) as f32 - 44.0) / 5.0).collect();
        let r: Vec<f32> = (0..rows * n).map(|i| ((i * 29 % 71) as f32 - 35.0) / 3.0).collect();
        let w: Vec<f32> = (0..n).map(|j| (j as f32 - 20.0) / 7.0).collect();
        let apart = super::layer_norm_grad(n, &x, &g, &w, 1e-6);
        let mut onto = r.clone();
        super::layer_norm_grad_onto(n, &x, &g, &w, 1e-6, &mut onto);
        for i in 0..rows * n {
            assert_eq!(onto[i].to_bits(), (apart[i] + r[i]).to_bits(), "at {i}");
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
