//! The last block for a caller that reads only the CLS token (EmbedAttack on CLS, DeACL's teacher
//! and inner attack): every token's keys and values, but the attention of the CLS query alone and
//! the rest of the block (projection, MLP, residuals) on the CLS rows — about a twelfth of a
//! ViT-S/14's work saved, for the same CLS output. The other rows of its output are NaN: nothing
//! may read them, and the reverse pass refuses a gradient on them.

use rayon::prelude::*;

use super::{add_assign, fused, matmul, residual, scaled, Block, BlockTape, Dims, Record};
use crate::encoder::fastmath::{flushing_subnormals, written, zeros, SendPtr};

/// Rows `i·t` (each image's CLS row) of `x` (`[B·T, D]`).
pub(super) fn cls_rows(x: &[f32], z: Dims) -> Vec<f32> {
    x.chunks_exact(z.t * z.d).flat_map(|img| img[..z.d].iter().copied()).collect()
}

impl Block {
    /// [`Block::forward`] with the CLS rows alone past the keys and values (`record`: not
    /// [`Record::ParamGradients`]). The tape's `p` holds the CLS query's attention weights
    /// (`[B·heads, T]`), `x1` and `f` the CLS rows only.
    pub(super) fn forward_cls(&self, x: Vec<f32>, z: Dims, record: Record) -> (Vec<f32>, Option<BlockTape>) {
        assert!(record != Record::ParamGradients, "internal error: weight gradients of a CLS-only block");
        let (b, t, d) = (z.b, z.t, z.d);
        let qkv = self.qkv.forward(&self.ln1.forward(&x), b * t);
        let (o, p) = self.cls_attention(&qkv, z);
        let xc = cls_rows(&x, z);
        let y1 = self.proj.forward_with(&o, b, false);
        let x1 = residual(&xc, &y1, &self.ls1, self.proj.b.as_deref());
        let (f, y2) = self.mlp(&self.ln2.forward(&x1), b, false, record);
        let x2c = residual(&x1, &y2, &self.ls2, self.fc2.b.as_deref());
        let mut x2 = vec![f32::NAN; b * t * d];
        for (img, row) in x2.chunks_exact_mut(t * d).zip(x2c.chunks_exact(d)) {
            img[..d].copy_from_slice(row);
        }
        let tape = (record == Record::InputGradient).then(|| BlockTape { x, qkv, p, x1, f, o: vec![], y1: vec![], y2: vec![] });
        (x2, tape)
    }

    /// The CLS query's attention output `[B, D]` and weights `[B·heads, T]`.
    fn cls_attention(&self, qkv: &[f32], z: Dims) -> (Vec<f32>, Vec<f32>) {
        let (h, t, d) = (self.heads, z.t, z.d);
        let hd = d / h;
        let scale = (hd as f32).powf(-0.5);
        let mut o = vec![0f32; z.b * d];
        let op = SendPtr(o.as_mut_ptr());
        let row = |pp: SendPtr<*mut f32>, bh: usize| {
            flushing_subnormals(|| {
                let (bi, hi) = (bh / h, bh % h);
                let base = bi * t * 3 * d + hi * hd;
                // SAFETY: q is the CLS row's, k and v t×hd views of qkv (row stride 3d); each task
                // writes its own row of p whole (the product does not accumulate) and its own hd
                // columns of o's row bi.
                unsafe {
                    let pr = pp.get().add(bh * t);
                    let q = (qkv.as_ptr().add(base), 3 * d, 1);
                    let k_t = (qkv.as_ptr().add(base + d), 1, 3 * d);
                    matmul(self.precision, (1, t, hd), pr, t, false, q, k_t, false);
                    let pr = std::slice::from_raw_parts_mut(pr, t);
                    fused::softmax_rows(pr, None, t, scale);
                    let v = (qkv.as_ptr().add(base + 2 * d), 3 * d, 1);
                    matmul(self.precision, (1, hd, t), op.get().add(bi * d + hi * hd), d, false, (pr.as_ptr(), t, 1), v, false);
                }
            })
        };
        // SAFETY: the rows of every (image, head) cover p, each written whole by `row`.
        let p = unsafe {
            written(z.b * h * t, |pp: *mut f32| {
                let pp = SendPtr(pp);
                (0..z.b * h).into_par_iter().for_each(|bh| row(pp, bh))
            })
        };
        (o, p)
    }

    /// [`Block::backward`] of [`Block::forward_cls`]: `dx2c` is the gradient of the CLS rows
    /// (`[B, D]`; the other rows were not computed, so none may carry one). Returns `[B·T, D]`.
    pub(super) fn backward_cls(&self, tape: &BlockTape, dx2c: Vec<f32>, z: Dims) -> Vec<f32> {
        let (b, t, d) = (z.b, z.t, z.d);
        let dg = self.fc2.backward(&scaled(&dx2c, &self.ls2), b);
        let mut dx1 = self.ln2.backward(&tape.x1, &self.mlp_in_grad(&tape.f, dg, b));
        add_assign(&mut dx1, &dx2c);
        let d_o = self.proj.backward(&scaled(&dx1, &self.ls1), b);
        let dqkv = self.cls_attention_backward(&tape.qkv, &tape.p, &d_o, z);
        let mut dx = self.ln1.backward(&tape.x, &self.qkv.backward(&dqkv, b * t));
        for (img, row) in dx.chunks_exact_mut(t * d).zip(dx1.chunks_exact(d)) {
            img[..d].iter_mut().zip(row).for_each(|(a, g)| *a += g);
        }
        dx
    }

    /// The gradient `[B·T, 3D]` of q (CLS rows; zero elsewhere), k and v given the CLS rows'
    /// attention-output gradient `d_o` (`[B, D]`).
    fn cls_attention_backward(&self, qkv: &[f32], p: &[f32], d_o: &[f32], z: Dims) -> Vec<f32> {
        let (h, t, d) = (self.heads, z.t, z.d);
        let hd = d / h;
        let scale = (hd as f32).powf(-0.5);
        let mut dqkv = zeros::<f32>(z.b * t * 3 * d);
        let dp = SendPtr(dqkv.as_mut_ptr());
        (0..z.b * h).into_par_iter().for_each_init(
            || vec![0f32; t],
            |ds, bh| {
                flushing_subnormals(|| {
                    let (bi, hi) = (bh / h, bh % h);
                    let base = bi * t * 3 * d + hi * hd;
                    let pr = &p[bh * t..(bh + 1) * t];
                    // SAFETY: read-only views of qkv, p and d_o; each task writes only the q (CLS
                    // row), k and v blocks of its own (image, head).
                    unsafe {
                        let dob = (d_o.as_ptr().add(bi * d + hi * hd), hd, 1);
                        let v_t = (qkv.as_ptr().add(base + 2 * d), 1, 3 * d);
                        matmul(self.precision, (1, t, hd), ds.as_mut_ptr(), t, false, dob, v_t, false);
                        fused::softmax_rows(ds, Some(pr), t, scale);
                        // dV = pᵀ·dO and dK = dSᵀ·q: outer products (k = 1).
                        matmul(self.precision, (t, hd, 1), dp.get().add(base + 2 * d), 3 * d, false, (pr.as_ptr(), 1, 1), dob, false);
                        let q = (qkv.as_ptr().add(base), 3 * d, 1);
                        matmul(self.precision, (t, hd, 1), dp.get().add(base + d), 3 * d, false, (ds.as_ptr(), 1, 1), q, false);
                        let k = (qkv.as_ptr().add(base + d), 3 * d, 1);
                        matmul(self.precision, (1, hd, t), dp.get().add(base), 3 * d, false, (ds.as_ptr(), t, 1), k, false);
                    }
                })
            },
        );
        dqkv
    }
}

#[cfg(test)]
mod tests {
    use super::super::{FastVit, Record};
    use crate::encoder::precision::Precision;
    use crate::encoder::{Encoder, LoadOptions, Outputs};

    /// On every block kind (LayerScale, registers, SwiGLU, DINO v1), the CLS-only last block gives
    /// the whole path's CLS tokens (after and before the final norm) and the pixels' gradient of
    /// a loss on them (f32 within rounding; bf16 within a looser bound: its products of one row
    /// sum in another order), and NaN on every row it skipped.
    #[test]
    fn the_cls_only_last_block_gives_the_whole_paths_cls_and_gradient() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder");
        let mut precisions = vec![(Precision::F32, 1e-5)];
        if crate::encoder::bf16_gemm::supported() {
            precisions.push((Precision::Bf16, 1e-2));
        }
        for (file, heads) in [("dinov2_official.pth", 4), ("dinov2_reg.pth", 4), ("dinov2_swiglu_train.pth", 3), ("dino_v1_train.pth", 4)] {
            let enc = Encoder::load(&dir.join(file), &LoadOptions { heads: Some(heads), ..Default::default() }).unwrap();
            let (b, side, d) = (2, 2 * enc.config().patch_size, enc.config().embed_dim);
            let t = 1 + enc.config().num_registers + 4;
            let pos = enc.vit.patch_positions(2, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let pixels: Vec<f32> = (0..b * 3 * side * side).map(|i| ((i * 37 % 101) as f32) / 100.0).collect();
            // A gradient on the CLS rows only, after and before the final norm.
            let d_out: Vec<f32> =
                (0..b * t * d).map(|i| if (i / d) % t == 0 { ((i * 13 % 29) as f32 - 14.0) / 10.0 } else { 0.0 }).collect();
            let d_pre: Vec<f32> = d_out.iter().map(|g| g * 0.5).collect();
            for &(precision, tol) in &precisions {
                let fast = FastVit::new(&enc.vit, precision).unwrap();
                let run = |outputs| {
                    let (out, pre, tape) = fast.forward(&pixels, (b, side, side), &pos, Record::InputGradient, outputs).unwrap();
                    let g = fast.backward(&tape.unwrap(), &d_out, Some(&d_pre));
                    (out, pre, g)
                };
                let (out, pre, g) = run(Outputs::All);
                let (out_c, pre_c, g_c) = run(Outputs::ClsOnly);
                let rel = |a: &[f32], b: &[f32]| {
                    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
                };
                for (full, cls) in [(&out, &out_c), (&pre, &pre_c)] {
                    for i in 0..b {
                        let row = i * t * d;
                        let e = rel(&cls[row..row + d], &full[row..row + d]);
                        assert!(e <= tol, "{file} {precision:?}: CLS of image {i} off by {e:e}");
                        assert!(cls[row + d..row + t * d].iter().all(|v| v.is_nan()), "{file}: a skipped row is not NaN");
                    }
                }
                assert!(g.iter().any(|&v| v != 0.0));
                let e = rel(&g_c, &g);
                assert!(e <= tol, "{file} {precision:?}: the pixels' gradient off by {e:e}");
            }
        }
    }
}
