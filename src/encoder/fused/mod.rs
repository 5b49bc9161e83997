//! Fused row-wise ops of the attack path (CPU, f32/f64): softmax and LayerNorm with frozen affine
//! parameters. One pass and one buffer per op instead of five to eight candle ops, and a backward
//! that returns only the input gradient. candle's fused `softmax_last_dim`/`layer_norm` have no
//! backward at all (they silently drop gradients), so these are written out with theirs.
//! GELU, and the fusions of its forward and reverse passes, live in `gelu.rs`.

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

mod gelu;
pub use gelu::Gelu;
pub(super) use gelu::{
    bias_gelu, bias_gelu_in_place, gelu, gelu_and_slope_into, gelu_grad, gelu_grad_into, gelu_into, times_in_place, times_into,
};

/// Softmax over the last dimension.
pub struct Softmax;

/// Softmax of `scale · row`, in place (scale > 0).
#[inline(always)]
pub(super) fn softmax_in_place<T: Fast>(row: &mut [T], scale: T) {
    // Plain loops: `for_each` went through `Iterator::fold`, which was not inlined into the
    // vectorized caller and ran at the baseline's width.
    let max = fastmath::max(row);
    let inv = T::one() / exp_and_sum(row, max, scale);
    for v in row.iter_mut() {
        *v = *v * inv;
    }
}

/// `row ← exp((row − max)·scale)`, returning the sum of the new row in [`fastmath::sum`]'s order
/// (8 lanes over the whole chunks, the tail, then the lanes), from the same pass.
#[inline(always)]
fn exp_and_sum<T: Fast>(row: &mut [T], max: T, scale: T) -> T {
    let mut acc = [T::zero(); 8];
    let whole = row.len() - row.len() % 8;
    let (body, tail) = row.split_at_mut(whole);
    // Two chunks of 8 a turn (one 16-lane exp), each added to the lanes in turn.
    let mut pairs = body.chunks_exact_mut(16);
    for c in &mut pairs {
        let mut e = [T::zero(); 16];
        for i in 0..16 {
            e[i] = ((c[i] - max) * scale).fast_exp();
            c[i] = e[i];
        }
        for i in 0..8 {
            acc[i] = acc[i] + e[i];
        }
        for i in 0..8 {
            acc[i] = acc[i] + e[8 + i];
        }
    }
    for c in pairs.into_remainder().chunks_exact_mut(8) {
        for i in 0..8 {
            let e = ((c[i] - max) * scale).fast_exp();
            c[i] = e;
            acc[i] = acc[i] + e;
        }
    }
    let mut s = T::zero();
    for v in tail.iter_mut() {
        *v = ((*v - max) * scale).fast_exp();
        s = s + *v;
    }
    for a in acc {
        s = s + a;
    }
    s
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

/// True where the fused CPU path applies: CPU tensors of f32/f64.
pub fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exp and the sum in one pass are the separate passes bit for bit (every exp, and the
    /// sum in `fastmath::sum`'s order), at widths around the 8- and 16-lane chunks and a ViT's 257.
    #[test]
    fn softmax_with_its_sum_in_the_exp_pass_is_the_separate_passes() {
        fn apart(row: &mut [f32], scale: f32) {
            let max = fastmath::max(row);
            for v in row.iter_mut() {
                *v = ((*v - max) * scale).fast_exp();
            }
            let inv = 1.0 / fastmath::sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
        for w in [1usize, 7, 8, 9, 15, 16, 17, 24, 31, 40, 257] {
            let x: Vec<f32> = (0..6 * w).map(|i| ((i * 37 % 101) as f32) / 10.0 - 5.0).collect();
            let mut a = x.clone();
            a.chunks_exact_mut(w).for_each(|r| apart(r, 0.125));
            let mut b = x.clone();
            softmax_rows(&mut b, None, w, 0.125);
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "width {w}");
            let total: f32 = b[..w].iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "width {w}: a row sums to {total}");
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
}
