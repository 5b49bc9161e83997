//! The linear layers of the fast path: every matrix product of it goes through [`matmul`] (f32 or
//! bf16 operands), and [`Lin`] holds a layer's weight in place, with its forward and its input
//! gradient, and in bf16 the variants whose left operand is computed row by row inside the
//! product's packing (an activation fused into the layer that reads it).

use anyhow::Result;

use super::{floats, shared};
use crate::encoder::bf16_gemm::{gemm_bf16, gemm_bf16_of, Kernel, Lhs};
use crate::encoder::fastmath::{by_chunks, written};
use crate::encoder::frozen_linear::gemm_f32;
use crate::encoder::layers::Linear;
use crate::encoder::precision::Precision;

/// `dst[m,n] (+)= lhs[m,k] · rhs[k,n]` in `precision`: [`gemm_f32`], or [`gemm_bf16`] (bf16
/// operands, f32 sums) — every matrix product of this path goes through here.
///
/// # Safety
/// As [`gemm_f32`]; bf16 only where [`Precision::check`] passed (the kernel asserts it).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(
    precision: Precision,
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    parallel: bool,
) {
    match precision {
        Precision::F32 => gemm_f32(dims, dst, dst_rs, accumulate, lhs, rhs, parallel),
        Precision::Bf16 => gemm_bf16(dims, dst, dst_rs, accumulate, lhs, rhs, parallel),
    }
}

pub(super) struct Lin {
    /// `[in, out]`: the candle model's own tensor, read in place.
    pub(super) w_t: shared::SharedF32,
    pub(super) b: Option<Vec<f32>>,
    pub(super) inp: usize,
    pub(super) out: usize,
    pub(super) precision: Precision,
}

impl Lin {
    pub(super) fn new(l: &Linear, precision: Precision) -> Result<Self> {
        let (inp, out) = l.w_t.dims2()?;
        Ok(Self { w_t: shared::SharedF32::new(&l.w_t)?, b: l.b.as_ref().map(floats).transpose()?, inp, out, precision })
    }

    /// `x · Wᵀ + b` for `rows` rows.
    pub(super) fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (x, w) = ((x.as_ptr(), self.inp, 1), (self.w_t.as_ptr(), self.out, 1));
        // SAFETY: x is rows×inp, w_t inp×out, y rows×out, all row-major.
        unsafe { self.forward_by(rows, |y, acc| matmul(self.precision, (rows, self.out, self.inp), y, self.out, acc, x, w, true)) }
    }

    /// [`Lin::forward`] of the matrix whose row `i` `row(i, ·)` writes, computed inside the bf16
    /// product's packing (bf16 only).
    pub(super) fn forward_rows(&self, row: &(dyn Fn(usize, &mut [f32]) + Sync), rows: usize) -> Vec<f32> {
        let w = (self.w_t.as_ptr(), self.out, 1);
        // SAFETY: w_t is inp×out, y rows×out; `row` writes the inp values of the row it is given.
        unsafe {
            self.forward_by(rows, |y, acc| {
                gemm_bf16_of(Kernel::best(), (rows, self.out, self.inp), y, self.out, acc, Lhs::Rows(row), w, true)
            })
        }
    }

    /// `y` (rows×out) holding the bias in every row, then `product(y, accumulate)` onto it; with
    /// no bias, the product writes all of `y`.
    ///
    /// # Safety
    /// `product` writes rows×out values at `y` (adding to them where told to accumulate).
    unsafe fn forward_by(&self, rows: usize, product: impl FnOnce(*mut f32, bool)) -> Vec<f32> {
        match &self.b {
            Some(b) => {
                let mut y = by_chunks(rows * self.out, self.out, |_, r| {
                    for (r, b) in r.iter_mut().zip(b) {
                        r.write(*b);
                    }
                });
                product(y.as_mut_ptr(), true);
                y
            }
            None => written(rows * self.out, |y| product(y, false)),
        }
    }

    /// `dy · W`: the input gradient only.
    pub(super) fn backward(&self, dy: &[f32], rows: usize) -> Vec<f32> {
        // SAFETY: dy is rows×out; W = w_tᵀ read through strides (1, out); dx rows×inp, written
        // whole by the product (not accumulating).
        unsafe {
            let (g, w) = ((dy.as_ptr(), self.out, 1), (self.w_t.as_ptr(), 1, self.out));
            written(rows * self.inp, |dx| matmul(self.precision, (rows, self.inp, self.out), dx, self.inp, false, g, w, true))
        }
    }

    /// [`Lin::backward`] of the output gradient whose row `i` `row(i, ·)` writes, computed inside
    /// the bf16 product's packing (bf16 only).
    pub(super) fn backward_rows(&self, row: &(dyn Fn(usize, &mut [f32]) + Sync), rows: usize) -> Vec<f32> {
        let w = (self.w_t.as_ptr(), 1, self.out);
        // SAFETY: as `backward`; `row` writes the out values of the row it is given.
        unsafe {
            written(rows * self.inp, |dx| {
                gemm_bf16_of(Kernel::best(), (rows, self.inp, self.out), dx, self.inp, false, Lhs::Rows(row), w, true)
            })
        }
    }
}
