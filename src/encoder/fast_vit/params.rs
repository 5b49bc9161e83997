//! The weight gradients of the hand-written CPU path, for fine-tuning: the reverse pass of
//! `mod.rs` extended with `xᵀ·dy` for every linear layer, the LayerNorm and LayerScale parameters,
//! and the tokens the ViT adds (CLS, registers, positions). Sums over rows run in fixed chunks in a
//! fixed order, so a seeded run is bit-reproducible whatever the thread timing.

use rayon::prelude::*;

use super::super::fastmath::written;
use super::{add_assign, fused, matmul, scaled, Block, BlockTape, Dims, FastVit, Lin, Ln, Tape};

/// Rows per partial sum.
const CHUNK: usize = 64;

/// Column sums of `a ⊙ b` (or of `a`), both row-major `[rows, width]`.
fn col_sums(a: &[f32], b: Option<&[f32]>, width: usize) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = a
        .par_chunks(CHUNK * width)
        .enumerate()
        .map(|(c, chunk)| {
            let mut s = vec![0f32; width];
            for (r, row) in chunk.chunks_exact(width).enumerate() {
                match b {
                    Some(b) => {
                        let other = &b[(c * CHUNK + r) * width..][..width];
                        s.iter_mut().zip(row).zip(other).for_each(|((s, x), y)| *s += x * y);
                    }
                    None => s.iter_mut().zip(row).for_each(|(s, x)| *s += x),
                }
            }
            s
        })
        .collect();
    let mut out = vec![0f32; width];
    for p in partials {
        add_assign(&mut out, &p);
    }
    out
}

impl Lin {
    /// `(xᵀ·dy, Σ_rows dy)`: the weight gradient in the `[in, out]` layout, and the bias's.
    fn param_grads(&self, x: &[f32], dy: &[f32], rows: usize) -> (Vec<f32>, Option<Vec<f32>>) {
        // SAFETY: x is rows×inp read transposed (strides 1, inp); dy rows×out; dw inp×out,
        // written whole by the product (not accumulating).
        let dw = unsafe {
            let (xt, g) = ((x.as_ptr(), 1, self.inp), (dy.as_ptr(), self.out, 1));
            written(self.inp * self.out, |dw| matmul(self.precision, (self.inp, self.out, rows), dw, self.out, false, xt, g, true))
        };
        (dw, self.b.as_ref().map(|_| col_sums(dy, None, self.out)))
    }
}

impl Ln {
    /// `(Σ g ⊙ x̂, Σ g)` over the rows, x̂ the normalized input.
    fn param_grads(&self, x: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let d = self.w.len();
        let partials: Vec<(Vec<f32>, Vec<f32>)> = x
            .par_chunks(CHUNK * d)
            .zip(g.par_chunks(CHUNK * d))
            .map(|(xc, gc)| {
                let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                for (xr, gr) in xc.chunks_exact(d).zip(gc.chunks_exact(d)) {
                    let (mean, rstd) = fused::moments(xr, self.eps);
                    for i in 0..d {
                        dw[i] += gr[i] * (xr[i] - mean) * rstd;
                        db[i] += gr[i];
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
        for (w, b) in partials {
            add_assign(&mut dw, &w);
            add_assign(&mut db, &b);
        }
        (dw, db)
    }
}

/// Gradients by parameter name, as [`crate::encoder::vit::VisionTransformer::parameters`] names
/// them (weights in its `[in, out]` layout), except the patch position embedding: its gradient
/// is given on the grid of the forward (`pos_grid`, `[P, D]`), the caller maps it back through
/// the resize.
pub struct ParamGrads {
    pub named: Vec<(String, Vec<f32>)>,
    pub pos_grid: Vec<f32>,
}

impl ParamGrads {
    fn linear(&mut self, name: &str, (w, b): (Vec<f32>, Option<Vec<f32>>)) {
        self.named.push((format!("{name}.weight"), w));
        if let Some(b) = b {
            self.named.push((format!("{name}.bias"), b));
        }
    }

    fn norm(&mut self, name: &str, (w, b): (Vec<f32>, Vec<f32>)) {
        self.named.push((format!("{name}.weight"), w));
        self.named.push((format!("{name}.bias"), b));
    }
}

impl Block {
    /// The reverse pass of [`Block::backward`] that also fills in this block's weight gradients.
    fn backward_params(&self, tape: &BlockTape, dx2: Vec<f32>, z: Dims, pre: &str, out: &mut ParamGrads) -> Vec<f32> {
        let (rows, d) = (z.b * z.t, z.d);
        assert!(!tape.o.is_empty(), "the forward did not record for weight gradients");
        let dy2 = scaled(&dx2, &self.ls2);
        if self.ls2.is_some() {
            out.named.push((format!("{pre}.ls2.gamma"), col_sums(&dx2, Some(&tape.y2), d)));
        }
        out.linear(&format!("{pre}.mlp.fc2"), self.fc2.param_grads(&self.activation(tape.f.pre_activation()), &dy2, rows));
        let dg = self.fc2.backward(&dy2, rows);
        let df = if self.swiglu {
            super::mlp::swiglu_grad(tape.f.pre_activation(), &dg, self.fc2.inp)
        } else {
            fused::gelu_grad(tape.f.pre_activation(), &dg)
        };
        out.linear(&format!("{pre}.mlp.fc1"), self.fc1.param_grads(&self.ln2.forward(&tape.x1), &df, rows));
        let dh2 = self.fc1.backward(&df, rows);
        out.norm(&format!("{pre}.norm2"), self.ln2.param_grads(&tape.x1, &dh2));
        let mut dx1 = dx2;
        self.ln2.backward_onto(&tape.x1, &dh2, &mut dx1);
        let dy1 = scaled(&dx1, &self.ls1);
        if self.ls1.is_some() {
            out.named.push((format!("{pre}.ls1.gamma"), col_sums(&dx1, Some(&tape.y1), d)));
        }
        out.linear(&format!("{pre}.attn.proj"), self.proj.param_grads(&tape.o, &dy1, rows));
        let d_o = self.proj.backward(&dy1, rows);
        let dqkv = self.attention_backward(&tape.qkv, &tape.p, &d_o, z);
        out.linear(&format!("{pre}.attn.qkv"), self.qkv.param_grads(&self.ln1.forward(&tape.x), &dqkv, rows));
        let dh1 = self.qkv.backward(&dqkv, rows);
        out.norm(&format!("{pre}.norm1"), self.ln1.param_grads(&tape.x, &dh1));
        let mut dx = dx1;
        self.ln1.backward_onto(&tape.x, &dh1, &mut dx);
        dx
    }
}

impl FastVit {
    /// Every weight's gradient given the gradients of the final tokens `[B,T,D]`; the tape
    /// must come from a forward with [`super::Record::ParamGradients`].
    pub fn param_gradients(&self, tape: &Tape, d_out: Vec<f32>) -> ParamGrads {
        let (d, part) = (self.d, tape.whole());
        let z = part.z;
        let np = tape.grid.0 * tape.grid.1;
        let mut out = ParamGrads { named: Vec::new(), pos_grid: vec![] };
        out.norm("norm", self.norm.param_grads(&part.last, &d_out));
        let mut dx = self.norm.backward(&part.last, &d_out);
        for (i, (block, bt)) in self.blocks.iter().zip(&part.blocks).enumerate().rev() {
            dx = block.backward_params(bt, dx, z, &format!("blocks.{i}"), &mut out);
        }
        // The added tokens: their gradients summed over the batch, in image order.
        let skip = 1 + self.registers;
        let mut added = vec![0f32; z.t * d];
        for img in dx.chunks_exact(z.t * d) {
            add_assign(&mut added, img);
        }
        out.named.push(("cls_token".into(), added[..d].to_vec()));
        out.named.push(("pos_embed.cls".into(), added[..d].to_vec()));
        if self.registers > 0 {
            out.named.push(("register_tokens".into(), added[d..skip * d].to_vec()));
        }
        out.pos_grid = added[skip * d..].to_vec();
        let d_tokens: Vec<f32> = dx.chunks_exact(z.t * d).flat_map(|img| img[skip * d..].iter().copied()).collect();
        assert!(!part.patches.is_empty(), "the forward did not record for weight gradients");
        out.linear("patch_embed.proj", self.pe.param_grads(&part.patches, &d_tokens, z.b * np));
        out
    }
}
