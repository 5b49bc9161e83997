//! A linear layer with frozen weights as a single candle op, for the attack path.
//!
//! Forward: one gemm with the bias fused in. Backward: the input gradient only. candle's own
//! matmul backward always computes the weight gradient too (`xᵀ·g`), as many FLOPs as the forward
//! product, which an attack throws away. Used on the CPU when the weights are plain tensors; a
//! trainable weight (a `Var`, or anything derived from one) takes candle's ordinary path.

use candle_core::{CpuStorage, CustomOp1, Error, Layout, Result, Shape, Storage, StorageRef, Tensor};

pub struct FrozenLinear {
    /// `[in, out]`, contiguous.
    pub w_t: Tensor,
    /// `[out]`
    pub b: Option<Tensor>,
}

fn cpu_slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let (start, end) = l.contiguous_offsets().ok_or_else(|| Error::Msg("frozen linear: non-contiguous operand".into()))?;
    Ok(&s.as_slice::<T>()?[start..end])
}

fn bias_slice<'a, T: candle_core::WithDType>(b: &'a Option<(StorageRef<'_>, &Layout)>) -> Result<Option<&'a [T]>> {
    match b {
        Some((g, l)) => match &**g {
            Storage::Cpu(c) => Ok(Some(cpu_slice::<T>(c, l)?)),
            _ => Err(Error::Msg("frozen linear: bias not on the CPU".into())),
        },
        None => Ok(None),
    }
}

/// `dst[m,n] (+)= lhs[m,k] · rhs[k,n]` for f32 with arbitrary row/column strides (in elements),
/// so transposed and head-strided operands need no copy. `accumulate` adds to `dst`.
///
/// # Safety
/// Every pointer must address the whole matrix its strides describe, and `dst` must not alias
/// `lhs` or `rhs` nor be written concurrently where the views overlap.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    parallel: bool,
) {
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}

/// `dst[m,n] = x[m,k] · w[k,n] (+ b[n])`, row-major.
#[allow(clippy::too_many_arguments)]
fn gemm_bias<T: Copy + Default + Send + Sync + 'static>(x: &[T], w: &[T], b: Option<&[T]>, m: usize, n: usize, k: usize, one: T) -> Vec<T> {
    use rayon::prelude::*;
    let mut dst = super::fastmath::zeros(m * n);
    if let Some(b) = b {
        dst.par_chunks_mut(n).for_each(|row| row.copy_from_slice(b));
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the slices hold m·k, k·n and m·n elements in row-major order (checked by the caller).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            b.is_some(),
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            one,
            one,
            false,
            false,
            false,
            par,
        );
    }
    dst
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.dims();
        let k = *dims.last().ok_or_else(|| Error::Msg("frozen linear: scalar input".into()))?;
        let (wk, n) = self.w_t.dims2()?;
        if wk != k {
            return Err(Error::Msg(format!("frozen linear: input width {k}, weight expects {wk}")));
        }
        let m = l.shape().elem_count() / k;
        let (wg, wl) = self.w_t.storage_and_layout();
        let Storage::Cpu(ws) = &*wg else { return Err(Error::Msg("frozen linear: weight not on the CPU".into())) };
        let bg = self.b.as_ref().map(|b| b.storage_and_layout());
        let out = match s {
            CpuStorage::F32(_) => {
                CpuStorage::F32(gemm_bias(cpu_slice::<f32>(s, l)?, cpu_slice::<f32>(ws, wl)?, bias_slice::<f32>(&bg)?, m, n, k, 1.0))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(gemm_bias(cpu_slice::<f64>(s, l)?, cpu_slice::<f64>(ws, wl)?, bias_slice::<f64>(&bg)?, m, n, k, 1.0))
            }
            _ => return Err(Error::Msg("frozen linear: only f32 and f64".into())),
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = n;
        Ok((out, Shape::from(out_dims)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (k, n) = self.w_t.dims2()?;
        let rows = grad_res.elem_count() / n;
        let g = grad_res.reshape((rows, n))?.matmul(&self.w_t.t()?)?;
        Ok(Some(g.reshape((arg.elem_count() / k, k))?.reshape(arg.shape())?))
    }
}
