//! The linear layers of the fast path: every matrix product of it goes through [`matmul`] (f32 or
//! bf16 operands), and [`Lin`] holds a layer's weight in place, with its forward and its input
//! gradient, and in bf16 the variants whose left operand is computed row by row inside the
//! product's packing (an activation fused into the layer that reads it).

use anyhow::Result;

use super::{floats, shared};
use crate::encoder::bf16_gemm::{gemm_bf16, gemm_bf16_from, gemm_bf16_of, Kernel, Lhs, PackedRhs, Rhs, Start};
use crate::encoder::fastmath::{fill_rows, written};
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

/// Which way a product reads a layer's weight: as stored (`x · Wᵀ`, the forward) or transposed
/// (`dy · W`, the input gradient).
#[derive(Clone, Copy)]
enum Way {
    Forward = 0,
    Backward = 1,
}

pub(super) struct Lin {
    /// `[in, out]`: the candle model's own tensor, read in place.
    pub(super) w_t: shared::SharedF32,
    pub(super) b: Option<Vec<f32>>,
    pub(super) inp: usize,
    pub(super) out: usize,
    pub(super) precision: Precision,
    /// In bf16, for a frozen weight: the weight packed once for each [`Way`], which every product
    /// then reads instead of rounding and laying it out again (a sixth of a bf16 step did that).
    packed: Option<[PackedRhs; 2]>,
}

impl Lin {
    /// `pack`: keep the weight packed for bf16 products ([`FastVit::new`] decides, and only in
    /// bf16: a weight no optimizer writes, within a memory bound).
    pub(super) fn new(l: &Linear, precision: Precision, pack: bool) -> Result<Self> {
        let (inp, out) = l.w_t.dims2()?;
        let w_t = shared::SharedF32::new(&l.w_t)?;
        let packed = pack.then(|| {
            let kernel = Kernel::best();
            // SAFETY: w_t is inp×out row-major; the caller checked the CPU (`Precision::check`).
            unsafe {
                [PackedRhs::new(kernel, (inp, out), (w_t.as_ptr(), out, 1)), PackedRhs::new(kernel, (out, inp), (w_t.as_ptr(), 1, out))]
            }
        });
        Ok(Self { w_t, b: l.b.as_ref().map(floats).transpose()?, inp, out, precision, packed })
    }

    pub(super) fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// `dst = start + lhs · (Wᵀ or W)` for `rows` rows: `lhs` rows×inp forward, rows×out
    /// backward; `start` zero, `dst` itself, or a bias in every row.
    ///
    /// # Safety
    /// `dst` holds rows × (out forward, inp backward) values, row-major (initialized only where
    /// the sums start from `dst`); a strided `lhs`
    /// addresses its whole matrix; an [`Lhs::Rows`] operand only in bf16.
    unsafe fn product(&self, way: Way, rows: usize, dst: *mut f32, start: Start, lhs: Lhs) {
        let (k, n, w) = match way {
            Way::Forward => (self.inp, self.out, (self.w_t.as_ptr(), self.out, 1)),
            Way::Backward => (self.out, self.inp, (self.w_t.as_ptr(), 1, self.out)),
        };
        let kernel = Kernel::best();
        match (&self.packed, lhs, self.precision) {
            (Some(p), lhs, _) => gemm_bf16_from(kernel, (rows, n, k), dst, n, start, lhs, Rhs::Packed(&p[way as usize]), true),
            (None, lhs, Precision::Bf16) => gemm_bf16_from(kernel, (rows, n, k), dst, n, start, lhs, Rhs::Strided(w), true),
            (None, Lhs::Strided(x), Precision::F32) => {
                // The f32 kernel sums onto dst or from zero: a bias is written into dst first.
                if let Start::Bias(b) = start {
                    fill_rows(dst, n, rows, b);
                }
                matmul(self.precision, (rows, n, k), dst, n, !matches!(start, Start::Zero), x, w, true)
            }
            (None, _, Precision::F32) => panic!("internal error: an operand given by rows in f32"),
        }
    }

    /// `x · Wᵀ + b` for `rows` rows.
    pub(super) fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.forward_with(x, rows, true)
    }

    /// `x · Wᵀ`, plus the bias where `bias` (else the caller adds it in a pass of its own).
    pub(super) fn forward_with(&self, x: &[f32], rows: usize, bias: bool) -> Vec<f32> {
        // SAFETY: x is rows×inp row-major; forward_by hands a rows×out buffer.
        unsafe { self.forward_by(rows, bias, |y, acc| self.product(Way::Forward, rows, y, acc, Lhs::Strided((x.as_ptr(), self.inp, 1)))) }
    }

    /// [`Lin::forward_with`] of the matrix whose row `i` `row(i, ·)` writes, computed inside the
    /// bf16 product's packing (bf16 only).
    pub(super) fn forward_rows(&self, row: &(dyn Fn(usize, &mut [f32]) + Sync), rows: usize, bias: bool) -> Vec<f32> {
        // SAFETY: `row` writes the inp values of the row it is given; a rows×out buffer as above.
        unsafe { self.forward_by(rows, bias, |y, acc| self.product(Way::Forward, rows, y, acc, Lhs::Rows(row))) }
    }

    /// `product(y, start)` into `y` (rows×out), its sums starting from the bias in every row
    /// where `bias` and the layer has one, else from zero.
    ///
    /// # Safety
    /// `product` writes rows×out values at `y`, reading none it did not write.
    unsafe fn forward_by(&self, rows: usize, bias: bool, product: impl FnOnce(*mut f32, Start)) -> Vec<f32> {
        let start = self.b.as_deref().filter(|_| bias).map_or(Start::Zero, Start::Bias);
        written(rows * self.out, |y| product(y, start))
    }

    /// `dy · W`: the input gradient only.
    pub(super) fn backward(&self, dy: &[f32], rows: usize) -> Vec<f32> {
        // SAFETY: dy is rows×out row-major; dx rows×inp, written whole (not accumulating).
        unsafe {
            written(rows * self.inp, |dx| self.product(Way::Backward, rows, dx, Start::Zero, Lhs::Strided((dy.as_ptr(), self.out, 1))))
        }
    }

    /// [`Lin::backward`] of the output gradient whose row `i` `row(i, ·)` writes, computed inside
    /// the bf16 product's packing (bf16 only).
    pub(super) fn backward_rows(&self, row: &(dyn Fn(usize, &mut [f32]) + Sync), rows: usize) -> Vec<f32> {
        // SAFETY: `row` writes the out values of the row it is given; dx as in `backward`.
        unsafe { written(rows * self.inp, |dx| self.product(Way::Backward, rows, dx, Start::Zero, Lhs::Rows(row))) }
    }

    /// [`Lin::backward_rows`] into `dx` on the calling thread alone, for a caller that shares
    /// blocks of rows out to the threads itself. Only with the weight packed once (else every
    /// block would pack it again): see [`Lin::is_packed`].
    ///
    /// # Safety
    /// `dx` addresses rows×inp values, row-major, written whole; `row` writes the out values of
    /// the row it is given.
    pub(super) unsafe fn backward_rows_into(&self, row: &(dyn Fn(usize, &mut [f32]) + Sync), rows: usize, dx: *mut f32) {
        let packed = self.packed.as_ref().expect("internal error: a product on one thread with its weight not packed");
        let backward = &packed[Way::Backward as usize];
        gemm_bf16_of(Kernel::best(), (rows, self.inp, self.out), dx, self.inp, false, Lhs::Rows(row), Rhs::Packed(backward), false);
    }
}
