//! The MLP of a block: `fc2(activation(fc1(h)))` forwards and backwards, GELU or SwiGLU, with
//! bf16's fusions (the activation inside the packing of the product that reads it, the reverse
//! pass by blocks of rows that keep `dg` in cache).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{fused, scaled, Block, Precision, Record};
use crate::encoder::fastmath::{exp_f32, written, SendPtr};

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// `silu(f[:, :h]) ⊙ f[:, h:]`.
pub(super) fn swiglu(f: &[f32], h: usize) -> Vec<f32> {
    f.par_chunks(2 * h)
        .flat_map_iter(|r| {
            let (a, b) = r.split_at(h);
            a.iter().zip(b).map(|(&a, &b)| a * sigmoid(a) * b).collect::<Vec<_>>()
        })
        .collect()
}

pub(super) fn swiglu_grad(f: &[f32], g: &[f32], h: usize) -> Vec<f32> {
    f.par_chunks(2 * h)
        .zip(g.par_chunks(h))
        .flat_map_iter(|(r, g)| {
            let (a, b) = r.split_at(h);
            let mut out = vec![0.0; 2 * h];
            for i in 0..h {
                let s = sigmoid(a[i]);
                out[i] = g[i] * b[i] * s * (1.0 + a[i] * (1.0 - s));
                out[h + i] = g[i] * a[i] * s;
            }
            out
        })
        .collect()
}

/// What a tape keeps of the MLP for the reverse pass.
pub(super) enum Kept {
    /// The pre-activation `f = fc1(h)`.
    PreActivation(Vec<f32>),
    /// GELU's slope at `f`, `Φ(f) + f·φ(f)`, rounded to bf16 (bf16, for the pixels' gradient):
    /// the forward has the erf at hand in fc2's packing, and the reverse pass then only multiplies
    /// by it (the erf and exp of every hidden value, a tenth of a bf16 attack step, no longer run
    /// twice). In bf16 it is half the bytes to write and read back; the product it feeds rounds
    /// its operand to bf16 anyway.
    GeluSlope(Vec<u16>),
    /// GELU's slope at `f` in f32 (f32, for the pixels' gradient): computed from the erf the
    /// forward's GELU pass has at hand, so the reverse pass multiplies by it in place instead of
    /// reading `f` back for an erf and an exp of every hidden value (a pass over memory and the
    /// arithmetic saved; the same values bit for bit).
    GeluSlopeF32(Vec<f32>),
    /// Nothing: no reverse pass follows this forward.
    Nothing,
}

impl Kept {
    /// The pre-activation (for the weight gradients, whose tapes keep it).
    pub(super) fn pre_activation(&self) -> &[f32] {
        match self {
            Self::PreActivation(f) => f,
            Self::GeluSlope(_) | Self::GeluSlopeF32(_) | Self::Nothing => {
                panic!("internal error: a tape without the pre-activation read for it")
            }
        }
    }

    /// `dg ⊙ activation'(f)` of row `i` into `out` (GELU only: SwiGLU's gradient has twice the width).
    fn gelu_grad_row(&self, i: usize, dg: &[f32], out: &mut [f32]) {
        let h = dg.len();
        match self {
            Self::PreActivation(f) => fused::gelu_grad_into(&f[i * h..(i + 1) * h], dg, out),
            Self::GeluSlope(s) => fused::times_into(dg, &s[i * h..(i + 1) * h], out),
            Self::GeluSlopeF32(_) => panic!("internal error: an f32 slope read by bf16's rows"),
            Self::Nothing => panic!("internal error: a reverse pass through a forward that kept nothing"),
        }
    }
}

impl Block {
    /// In bf16 the GELU runs inside the packing of the product that reads it (fc2's forward,
    /// fc1's reverse), row by row: its result is never written whole, a pass over memory saved.
    /// (SwiGLU and f32 products keep their own pass.)
    pub(super) fn fuses_activation(&self) -> bool {
        self.precision == Precision::Bf16 && !self.swiglu
    }

    /// `fc2(activation(f))`, with fc2's bias where `bias`.
    fn mlp_out(&self, f: &[f32], rows: usize, bias: bool) -> Vec<f32> {
        let h = self.fc2.inp;
        if self.fuses_activation() {
            return self.fc2.forward_rows(&|i, out| fused::gelu_into(&f[i * h..(i + 1) * h], out), rows, bias);
        }
        self.fc2.forward_with(&self.activation(f), rows, bias)
    }

    /// What the reverse pass keeps of the MLP ([`Kept`]: GELU's slope in bf16 for the pixels'
    /// gradient, in f32 too where fc1 has a bias, nothing without a tape, else the pre-activation
    /// `fc1(h)`) and its output, with fc2's bias where `bias`. A GELU in f32 adds fc1's bias in
    /// its own pass, bf16 in the product's sums (neither writes it before the product: a pass
    /// saved).
    pub(super) fn mlp(&self, h: &[f32], rows: usize, bias: bool, record: Record) -> (Kept, Vec<f32>) {
        if let (false, false, Some(b)) = (self.swiglu, self.fuses_activation(), &self.fc1.b) {
            let mut f = self.fc1.forward_with(h, rows, false);
            if record == Record::ParamGradients {
                let g = fused::bias_gelu(&mut f, b);
                return (Kept::PreActivation(f), self.fc2.forward_with(&g, rows, bias));
            }
            // f becomes the GELU; the reverse pass needs its slope alone.
            let kept = fused::bias_gelu_in_place(&mut f, b, record == Record::InputGradient).map_or(Kept::Nothing, Kept::GeluSlopeF32);
            return (kept, self.fc2.forward_with(&f, rows, bias));
        }
        let f = self.fc1.forward(h, rows);
        match record {
            Record::InputGradient if self.fuses_activation() => self.gelu_slope_and_out(&f, rows, bias),
            Record::Nothing if self.fuses_activation() => (Kept::Nothing, self.mlp_out(&f, rows, bias)),
            _ => {
                let y = self.mlp_out(&f, rows, bias);
                (Kept::PreActivation(f), y)
            }
        }
    }

    /// GELU's slope at `f` (in bf16, for the reverse pass) and `fc2(gelu(f))`, with fc2's bias
    /// where `bias`: GELU and its slope from one erf, inside fc2's packing.
    fn gelu_slope_and_out(&self, f: &[f32], rows: usize, bias: bool) -> (Kept, Vec<f32>) {
        let width = self.fc2.inp;
        let mut y = Vec::new();
        // SAFETY: the packing asks for each row once, and that call writes row i of the slope
        // (rows×width) whole, reading none of it.
        let slope = unsafe {
            written::<u16>(rows * width, |sp| {
                let sp = SendPtr(sp.cast::<MaybeUninit<u16>>());
                let row = |i: usize, out: &mut [f32]| {
                    let s = std::slice::from_raw_parts_mut(sp.get().add(i * width), width);
                    fused::gelu_and_slope_into(&f[i * width..(i + 1) * width], out, s)
                };
                y = self.fc2.forward_rows(&row, rows, bias);
            })
        };
        (Kept::GeluSlope(slope), y)
    }

    /// The gradient at norm2's output given `dx2`, the block's output gradient: back through
    /// LayerScale, fc2, the activation and fc1.
    pub(super) fn mlp_grad(&self, f: &Kept, dx2: &[f32], rows: usize) -> Vec<f32> {
        if self.fuses_activation() && self.fc1.is_packed() && self.fc2.is_packed() {
            return self.mlp_grad_by_rows(f, dx2, rows);
        }
        let dg = self.fc2.backward(&scaled(dx2, &self.ls2), rows);
        self.mlp_in_grad(f, dg, rows)
    }

    /// [`Block::mlp_grad`] in bf16 by blocks of rows, each block on one thread through both
    /// products: its `dg = (γ2 ⊙ dx2)·W2` stays in cache for GELU's gradient in fc1's packing,
    /// where the whole-matrix way wrote `dg` out (rows × hidden floats) and read it back; γ2 is
    /// applied in fc2's packing. The same products on the same operands: the same values.
    fn mlp_grad_by_rows(&self, f: &Kept, dx2: &[f32], rows: usize) -> Vec<f32> {
        const ROWS: usize = 64;
        let (d, h) = (self.fc2.out, self.fc2.inp);
        let ls2 = self.ls2.as_deref();
        // SAFETY: each block writes all of its own rows of the result (rows×d), and nothing else.
        unsafe {
            written(rows * d, |out: *mut f32| {
                let out = SendPtr(out);
                (0..rows.div_ceil(ROWS)).into_par_iter().for_each_init(Vec::new, |dg: &mut Vec<f32>, block| {
                    let (r0, n) = (block * ROWS, ROWS.min(rows - block * ROWS));
                    dg.resize(ROWS * h, 0.0);
                    let scaled_row = |i: usize, o: &mut [f32]| {
                        let g = &dx2[(r0 + i) * d..(r0 + i + 1) * d];
                        match ls2 {
                            Some(s) => o.iter_mut().zip(g).zip(s).for_each(|((o, g), s)| *o = g * s),
                            None => o.copy_from_slice(g),
                        }
                    };
                    self.fc2.backward_rows_into(&scaled_row, n, dg.as_mut_ptr());
                    let dg = &dg[..n * h];
                    let grad_row = |i: usize, o: &mut [f32]| f.gelu_grad_row(r0 + i, &dg[i * h..(i + 1) * h], o);
                    self.fc1.backward_rows_into(&grad_row, n, out.get().add(r0 * d));
                });
            })
        }
    }

    /// The input gradient of `fc1` given `dg`, the gradient of the activation's output.
    pub(super) fn mlp_in_grad(&self, f: &Kept, mut dg: Vec<f32>, rows: usize) -> Vec<f32> {
        let h = self.fc2.inp;
        if self.fuses_activation() {
            return self.fc1.backward_rows(&|i, out| f.gelu_grad_row(i, &dg[i * h..(i + 1) * h], out), rows);
        }
        if let Kept::GeluSlopeF32(s) = f {
            fused::times_in_place(&mut dg, &s[..rows * h]);
            return self.fc1.backward(&dg, rows);
        }
        let f = f.pre_activation();
        let df = if self.swiglu { swiglu_grad(f, &dg, h) } else { fused::gelu_grad(f, &dg) };
        self.fc1.backward(&df, rows)
    }

    pub(super) fn activation(&self, f: &[f32]) -> Vec<f32> {
        if self.swiglu {
            swiglu(f, self.fc2.inp)
        } else {
            fused::gelu(f)
        }
    }
}
