//! The ViT's attack path on the CPU in f32, written out by hand: a forward that records what the
//! reverse pass needs (a tape), and a reverse pass that returns only the gradient with respect to
//! the pixels — a vector–Jacobian product. No autograd graph, no weight gradients, no head-split
//! copies (q·kᵀ and P·v read the qkv buffer through strides), one (batch, head) pair per task.
//!
//! `linear.rs` holds the linear layers and the one entry of every matrix product (f32 or bf16);
//! `mlp.rs` holds the MLP both ways (GELU or SwiGLU), with bf16's fusions;
//! `params.rs` extends the reverse pass with the weight gradients, for fine-tuning;
//! `cls_only.rs` holds the last block for callers that read the CLS token alone;
//! `groups.rs` splits a batch over groups of threads, each running the whole ViT on its images.
//!
//! The candle model in `vit.rs` is the generic path (GPUs, f64) and the reference this one is
//! tested against (`tests/encoder_parity.rs`, `tests/defense.rs`).

mod cls_only;
mod groups;
mod linear;
mod mlp;
mod params;
mod shared;

use std::mem::MaybeUninit;

use anyhow::Result;
use candle_core::Tensor;
use rayon::prelude::*;

use super::arch::FfnKind;
use super::fastmath::{by_chunks, flushing_subnormals, SendPtr};
use super::fused;
use super::layers::LayerNorm;
use super::precision::Precision;
use super::vit::VisionTransformer;
use super::{Outputs, IMAGENET_MEAN, IMAGENET_STD};
use linear::{matmul, Lin};

fn floats(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

struct Ln {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl Ln {
    fn new(l: &LayerNorm) -> Result<Self> {
        Ok(Self { w: floats(&l.weight)?, b: floats(&l.bias)?, eps: l.eps as f32 })
    }
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        fused::layer_norm(self.w.len(), x, &self.w, &self.b, self.eps)
    }
    fn backward(&self, x: &[f32], g: &[f32]) -> Vec<f32> {
        fused::layer_norm_grad(self.w.len(), x, g, &self.w, self.eps)
    }
    /// `out += ` [`Ln::backward`]: where the residual's gradient `out` goes round the norm.
    fn backward_onto(&self, x: &[f32], g: &[f32], out: &mut [f32]) {
        fused::layer_norm_grad_onto(self.w.len(), x, g, &self.w, self.eps, out)
    }
}

/// `x + γ ⊙ (y + b)` (γ and b per channel, or 1 and 0): a branch's bias added here, in the
/// pass that reads the branch, rather than written before its product (a pass saved).
fn residual(x: &[f32], y: &[f32], gamma: &Option<Vec<f32>>, bias: Option<&[f32]>) -> Vec<f32> {
    let Some(width) = gamma.as_ref().map(|g| g.len()).or(bias.map(|b| b.len())) else {
        // SAFETY: each chunk is zipped with x's and y's chunks of the same length, and written whole.
        return unsafe {
            by_chunks(x.len(), 1 << 14, |i, o| {
                let start = i * (1 << 14);
                for ((o, x), y) in o.iter_mut().zip(&x[start..]).zip(&y[start..]) {
                    o.write(x + y);
                }
            })
        };
    };
    // With γ = 1 and b = 0 the sums are those of `x + y` and `x + γ ⊙ y`, bit for bit.
    let ones = vec![1f32; width];
    let zeros = vec![0f32; width];
    let (g, b) = (gamma.as_deref().unwrap_or(&ones), bias.unwrap_or(&zeros));
    // SAFETY: each chunk (one row) is zipped with x's and y's rows, and written whole.
    unsafe {
        by_chunks(x.len(), width, |i, o| {
            let (x, y) = (&x[i * width..i * width + o.len()], &y[i * width..i * width + o.len()]);
            for ((((o, x), y), g), b) in o.iter_mut().zip(x).zip(y).zip(g).zip(b) {
                o.write(x + g * (y + b));
            }
        })
    }
}

/// `g ⊙ γ` row-wise (or a copy).
fn scaled(g: &[f32], gamma: &Option<Vec<f32>>) -> Vec<f32> {
    match gamma {
        // SAFETY: each chunk is zipped with g's chunk of the same length, and written whole.
        Some(s) => unsafe {
            by_chunks(g.len(), s.len(), |i, o| {
                for ((o, g), s) in o.iter_mut().zip(&g[i * s.len()..]).zip(s) {
                    o.write(g * s);
                }
            })
        },
        None => g.to_vec(),
    }
}

fn add_assign(a: &mut [f32], b: &[f32]) {
    a.par_iter_mut().zip(b).for_each(|(a, b)| *a += b);
}

struct Block {
    ln1: Ln,
    qkv: Lin,
    proj: Lin,
    ls1: Option<Vec<f32>>,
    ln2: Ln,
    fc1: Lin,
    fc2: Lin,
    ls2: Option<Vec<f32>>,
    swiglu: bool,
    heads: usize,
    precision: Precision,
}

/// What a block's reverse pass needs from its forward.
struct BlockTape {
    x: Vec<f32>,
    qkv: Vec<f32>,
    p: Vec<f32>,
    x1: Vec<f32>,
    f: mlp::Kept,
    /// Kept for the weight gradients only (empty otherwise): the attention output, and what the
    /// two residual branches add before LayerScale.
    o: Vec<f32>,
    y1: Vec<f32>,
    y2: Vec<f32>,
}

/// What a forward keeps for a reverse pass.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Record {
    Nothing,
    /// Enough for the pixels' gradient (attacks).
    InputGradient,
    /// Enough for the weights' gradients too (fine-tuning).
    ParamGradients,
}

/// Geometry of one forward: batch, tokens per image, width.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    d: usize,
}

impl Block {
    /// `softmax(q·kᵀ·scale)` of one (image, head) into `pbh` (`t×t`, written whole before it is
    /// read): the attention weights, returned as that buffer, now initialized.
    ///
    /// # Safety
    /// `base` must address that (image, head)'s q inside `qkv`, of `t` rows of stride `3d`.
    unsafe fn probabilities<'a>(&self, qkv: &[f32], base: usize, z: Dims, pbh: &'a mut [MaybeUninit<f32>]) -> &'a [f32] {
        let (t, d) = (z.t, z.d);
        assert_eq!(pbh.len(), t * t, "internal error: an attention-weight buffer of another size");
        let hd = d / self.heads;
        let scale = (hd as f32).powf(-0.5);
        let q = (qkv.as_ptr().add(base), 3 * d, 1);
        let k_t = (qkv.as_ptr().add(base + d), 1, 3 * d);
        matmul(self.precision, (t, t, hd), pbh.as_mut_ptr().cast(), t, false, q, k_t, false);
        // SAFETY: the product (no accumulation) wrote all t×t.
        let pbh = std::slice::from_raw_parts_mut(pbh.as_mut_ptr().cast::<f32>(), t * t);
        fused::softmax_rows(pbh, None, t, scale);
        pbh
    }

    /// The attention output `[B·T, D]`, and the attention weights of every (image, head) where
    /// `keep` (else empty: the reverse pass computes them again).
    fn attention(&self, qkv: &[f32], z: Dims, keep: bool) -> (Vec<f32>, Vec<f32>) {
        let (h, t, d) = (self.heads, z.t, z.d);
        let hd = d / h;
        // o and p are written whole below (every (image, head) block), not zeroed first.
        let mut o: Vec<f32> = Vec::with_capacity(z.b * t * d);
        let mut p: Vec<f32> = Vec::with_capacity(if keep { z.b * h * t * t } else { 0 });
        let (op, pp) = (SendPtr(o.as_mut_ptr()), SendPtr(p.as_mut_ptr()));
        (0..z.b * h).into_par_iter().for_each_init(
            || if keep { vec![] } else { vec![MaybeUninit::uninit(); t * t] },
            |scratch, bh| {
                flushing_subnormals(|| {
                    let (bi, hi) = (bh / h, bh % h);
                    let base = bi * t * 3 * d + hi * hd;
                    // SAFETY: q, k, v are t×hd views of qkv (row stride 3d); each task writes its own
                    // t×hd block of o (columns hi·hd.., rows of image bi) and its own t×t block of p
                    // (or its own scratch).
                    unsafe {
                        let own = || std::slice::from_raw_parts_mut(pp.get().add(bh * t * t).cast(), t * t);
                        let pbh = self.probabilities(qkv, base, z, if keep { own() } else { &mut scratch[..] });
                        let v = (qkv.as_ptr().add(base + 2 * d), 3 * d, 1);
                        matmul(self.precision, (t, hd, t), op.get().add(bi * t * d + hi * hd), d, false, (pbh.as_ptr(), t, 1), v, false);
                    }
                })
            },
        );
        // SAFETY: the heads of every image cover o's columns and every row, and the (image, head)
        // blocks cover p where kept (the products do not accumulate).
        unsafe {
            o.set_len(z.b * t * d);
            if keep {
                p.set_len(z.b * h * t * t);
            }
        }
        (o, p)
    }

    /// `p`: the forward's attention weights, or empty (computed again here, one (image, head) at
    /// a time).
    fn attention_backward(&self, qkv: &[f32], p: &[f32], d_o: &[f32], z: Dims) -> Vec<f32> {
        let (h, t, d) = (self.heads, z.t, z.d);
        let hd = d / h;
        let scale = (hd as f32).powf(-0.5);
        let kept = !p.is_empty();
        // Written whole below: each task writes the q, k and v blocks of its (image, head).
        let mut dqkv: Vec<f32> = Vec::with_capacity(z.b * t * 3 * d);
        let dp = SendPtr(dqkv.as_mut_ptr());
        (0..z.b * h).into_par_iter().for_each_init(
            || (vec![0f32; t * t], if kept { vec![] } else { vec![MaybeUninit::uninit(); t * t] }),
            |(ds, again), bh| {
                flushing_subnormals(|| {
                    let (bi, hi) = (bh / h, bh % h);
                    let base = bi * t * 3 * d + hi * hd;
                    // SAFETY: read-only views of qkv, p and d_o; each task writes only the t×hd
                    // blocks of dqkv at its own (image, head) and its own scratch.
                    unsafe {
                        let pbh = if kept { &p[bh * t * t..(bh + 1) * t * t] } else { self.probabilities(qkv, base, z, again) };
                        let dob = (d_o.as_ptr().add(bi * t * d + hi * hd), d, 1);
                        let v_t = (qkv.as_ptr().add(base + 2 * d), 1, 3 * d);
                        matmul(self.precision, (t, t, hd), ds.as_mut_ptr(), t, false, dob, v_t, false);
                        fused::softmax_rows(ds, Some(pbh), t, scale);
                        let p_t = (pbh.as_ptr(), 1, t);
                        matmul(self.precision, (t, hd, t), dp.get().add(base + 2 * d), 3 * d, false, p_t, dob, false);
                        let k = (qkv.as_ptr().add(base + d), 3 * d, 1);
                        matmul(self.precision, (t, hd, t), dp.get().add(base), 3 * d, false, (ds.as_ptr(), t, 1), k, false);
                        let q = (qkv.as_ptr().add(base), 3 * d, 1);
                        matmul(self.precision, (t, hd, t), dp.get().add(base + d), 3 * d, false, (ds.as_ptr(), 1, t), q, false);
                    }
                })
            },
        );
        // SAFETY: the q, k and v blocks of every (image, head) cover dqkv (the products do not
        // accumulate).
        unsafe { dqkv.set_len(z.b * t * 3 * d) };
        dqkv
    }

    /// `keep_p`: record the attention weights in the tape (else a reverse pass computes them
    /// again); only with a tape.
    fn forward(&self, x: Vec<f32>, z: Dims, record: Record, keep_p: bool) -> (Vec<f32>, Option<BlockTape>) {
        let rows = z.b * z.t;
        let qkv = self.qkv.forward(&self.ln1.forward(&x), rows);
        let (o, p) = self.attention(&qkv, z, keep_p);
        // The branches' biases are added by the residual sums, except where the tape keeps the
        // branches themselves (for LayerScale's weight gradient), which must hold them.
        let late = record != Record::ParamGradients;
        let y1 = self.proj.forward_with(&o, rows, !late);
        let x1 = residual(&x, &y1, &self.ls1, self.proj.b.as_deref().filter(|_| late));
        let (f, y2) = self.mlp(&self.ln2.forward(&x1), rows, !late, record);
        let x2 = residual(&x1, &y2, &self.ls2, self.fc2.b.as_deref().filter(|_| late));
        let tape = match record {
            Record::Nothing => None,
            Record::InputGradient => Some(BlockTape { x, qkv, p, x1, f, o: vec![], y1: vec![], y2: vec![] }),
            Record::ParamGradients => Some(BlockTape { x, qkv, p, x1, f, o, y1, y2 }),
        };
        (x2, tape)
    }

    fn backward(&self, tape: &BlockTape, dx2: Vec<f32>, z: Dims) -> Vec<f32> {
        let rows = z.b * z.t;
        let dh2 = self.mlp_grad(&tape.f, &dx2, rows);
        // Each residual's gradient takes the norm's onto it (one pass, not a write and a sum).
        let mut dx1 = dx2;
        self.ln2.backward_onto(&tape.x1, &dh2, &mut dx1);
        let d_o = self.proj.backward(&scaled(&dx1, &self.ls1), rows);
        let dqkv = self.attention_backward(&tape.qkv, &tape.p, &d_o, z);
        let mut dx = dx1;
        self.ln1.backward_onto(&tape.x, &self.qkv.backward(&dqkv, rows), &mut dx);
        dx
    }
}

/// The ViT's weights as plain f32 buffers.
pub struct FastVit {
    patch: usize,
    d: usize,
    registers: usize,
    pe: Lin,
    cls: Vec<f32>,
    regs: Vec<f32>,
    blocks: Vec<Block>,
    norm: Ln,
    /// The most the tape may spend on attention weights (every block's `B·heads·T²` floats);
    /// above, the reverse pass computes them again, one (image, head) at a time.
    attention_tape_bytes: usize,
    groups: groups::Groups,
}

/// [`FastVit`]'s bound on the attention weights an f32 tape keeps: a ViT-S/14 at 224 px and
/// batch 8 keeps them (152 MB); a ViT-L/14 at 518 px, even at batch 1 (2.9 GB), does not. A bf16
/// tape keeps none ([`FastVit::new`]).
pub const ATTENTION_TAPE_BYTES: usize = 1 << 30;

/// The most bf16 spends on weights packed once ([`Lin`]'s cache): a ViT-S/14 keeps them (88 MB), a
/// ViT-B/14 too (344 MB); a ViT-L/14 (1.2 GB) and a ViT-g/14 (4.4 GB) pack on every product.
pub const PACKED_WEIGHTS_BYTES: usize = 1 << 30;

/// What the reverse pass needs from a forward: one part for each group of images the batch was
/// split into ([`groups`]), in batch order.
pub struct Tape {
    grid: (usize, usize),
    parts: Vec<Part>,
    /// The last block ran on the CLS rows only ([`Outputs::ClsOnly`]).
    cls_only: bool,
}

/// The tape of one group of images.
struct Part {
    z: Dims,
    blocks: Vec<BlockTape>,
    last: Vec<f32>,
    /// The normalized patches `[B·P, 3·p·p]` (for the weight gradients only; empty otherwise).
    patches: Vec<f32>,
}

impl Tape {
    /// Patch grid (rows, columns) of the forward.
    pub fn grid(&self) -> (usize, usize) {
        self.grid
    }

    /// The one part of a tape for weight gradients (never split).
    fn whole(&self) -> &Part {
        assert_eq!(self.parts.len(), 1, "internal error: a tape for weight gradients split over groups of images");
        &self.parts[0]
    }

    /// The forward computed the CLS token only: the reverse pass takes no gradient on the others.
    pub fn cls_only(&self) -> bool {
        self.cls_only
    }
}

impl FastVit {
    /// `precision`: checked by the caller ([`Precision::check`]).
    pub fn new(vit: &VisionTransformer, precision: Precision) -> Result<Self> {
        let c = &vit.config;
        let cls = floats(&(&vit.cls_token + &vit.pos_cls)?)?;
        let regs = vit.register_tokens.as_ref().map(floats).transpose()?.unwrap_or_default();
        let opt = |t: &Option<Tensor>| t.as_ref().map(floats).transpose();
        // bf16 keeps every weight packed (4 bytes a weight, both ways) where none is trainable (an
        // optimizer step would leave the packing stale) and they fit the bound.
        let linears = vit.blocks.iter().flat_map(|b| [&b.attn.qkv, &b.attn.proj, &b.ffn.fc1, &b.ffn.fc2]).chain([&vit.patch_embed]);
        let (frozen, weights) = linears.fold((true, 0), |(f, n), l| (f && !l.w_t.track_op(), n + l.w_t.elem_count()));
        let pack = precision == Precision::Bf16 && frozen && 4 * weights <= PACKED_WEIGHTS_BYTES;
        let blocks = vit
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    ln1: Ln::new(&b.norm1)?,
                    qkv: Lin::new(&b.attn.qkv, precision, pack)?,
                    proj: Lin::new(&b.attn.proj, precision, pack)?,
                    ls1: opt(&b.ls1)?,
                    ln2: Ln::new(&b.norm2)?,
                    fc1: Lin::new(&b.ffn.fc1, precision, pack)?,
                    fc2: Lin::new(&b.ffn.fc2, precision, pack)?,
                    ls2: opt(&b.ls2)?,
                    swiglu: b.ffn.kind == FfnKind::SwiGlu,
                    heads: b.attn.num_heads,
                    precision,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch: c.patch_size,
            d: c.embed_dim,
            registers: c.num_registers,
            pe: Lin::new(&vit.patch_embed, precision, pack)?,
            cls,
            regs,
            blocks,
            norm: Ln::new(&vit.norm)?,
            attention_tape_bytes: match precision {
                Precision::F32 => ATTENTION_TAPE_BYTES,
                // bf16's products are fast enough that reading the kept weights back from memory
                // (152 MB at ViT-S/14, 224 px, batch 8) cost more than their product and softmax
                // again, one (image, head) at a time in cache: its attack ran 7–10 % faster
                // computing them again (f32: 1 % slower, so it keeps them).
                Precision::Bf16 => 0,
            },
            groups: groups::Groups::default(),
        })
    }

    /// `pixels`: `[B,3,H,W]` in [0,1], sides checked by the caller; `pos`: the position
    /// embedding of the patch grid `[P,D]`.
    /// Returns the final tokens `[B,T,D]`, the same before the final norm, and, unless `record`
    /// is `Nothing`, the tape. With [`Outputs::ClsOnly`] (and no weight gradients recorded) the
    /// last block computes the CLS rows only, and the other rows of both outputs are NaN.
    /// The batch is split over groups of threads where it divides among them ([`groups`]),
    /// except for weight gradients.
    pub fn forward(
        &self,
        pixels: &[f32],
        (b, hh, ww): (usize, usize, usize),
        pos: &[f32],
        record: Record,
        outputs: Outputs,
    ) -> Result<(Vec<f32>, Vec<f32>, Option<Tape>)> {
        let p = self.patch;
        debug_assert!(hh % p == 0 && ww % p == 0, "checked by VisionTransformer::check_images");
        let (gh, gw) = (hh / p, ww / p);
        let t = 1 + self.registers + gh * gw;
        // The attention weights' bound is the whole batch's, however it is split.
        let weights: usize = self.blocks.iter().map(|k| b * k.heads * t * t * std::mem::size_of::<f32>()).sum();
        let keep_p = record != Record::Nothing && weights <= self.attention_tape_bytes;
        let cls_only = outputs == Outputs::ClsOnly && record != Record::ParamGradients;
        // Two images a group at least where a product has a row per image ([`groups::count`]).
        let least = if cls_only || gh * gw == 1 { 2 } else { 1 };
        let groups = if record == Record::ParamGradients { 1 } else { groups::count(b, rayon::current_num_threads(), least) };
        let (each, image) = (b / groups, 3 * hh * ww);
        let parts = self.groups.run(groups, |g| {
            let px = &pixels[g * each * image..(g + 1) * each * image];
            self.forward_part(px, (each, hh, ww), pos, record, cls_only, keep_p)
        });
        // The groups' outputs one after another (the first group's buffers, grown).
        let mut parts = parts.into_iter();
        let (mut out, mut pre, first) = parts.next().expect("at least one group");
        let mut tapes: Vec<Part> = first.into_iter().collect();
        for (o, x, part) in parts {
            out.extend_from_slice(&o);
            pre.extend_from_slice(&x);
            tapes.extend(part);
        }
        let tape = (record != Record::Nothing).then_some(Tape { grid: (gh, gw), parts: tapes, cls_only });
        Ok((out, pre, tape))
    }

    /// [`FastVit::forward`] of one group of images, on the calling thread's pool.
    fn forward_part(
        &self,
        pixels: &[f32],
        (b, hh, ww): (usize, usize, usize),
        pos: &[f32],
        record: Record,
        cls_only: bool,
        keep_p: bool,
    ) -> (Vec<f32>, Vec<f32>, Option<Part>) {
        let (p, d) = (self.patch, self.d);
        let (gh, gw) = (hh / p, ww / p);
        let np = gh * gw;
        let t = 1 + self.registers + np;
        let mut patches = vec![0f32; b * np * 3 * p * p];
        patches.par_chunks_mut(3 * p * p).enumerate().for_each(|(i, row)| {
            let (bi, pi) = (i / np, i % np);
            let (py, px) = (pi / gw, pi % gw);
            for c in 0..3 {
                let plane = &pixels[(bi * 3 + c) * hh * ww..];
                for ky in 0..p {
                    let src = &plane[(py * p + ky) * ww + px * p..][..p];
                    let dst = &mut row[(c * p + ky) * p..][..p];
                    for (o, v) in dst.iter_mut().zip(src) {
                        *o = (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                    }
                }
            }
        });
        let tokens = self.pe.forward(&patches, b * np);
        let mut x = vec![0f32; b * t * d];
        x.par_chunks_mut(t * d).enumerate().for_each(|(bi, img)| {
            img[..d].copy_from_slice(&self.cls);
            img[d..(1 + self.registers) * d].copy_from_slice(&self.regs);
            let rows = &mut img[(1 + self.registers) * d..];
            for ((o, tk), ps) in rows.iter_mut().zip(&tokens[bi * np * d..(bi + 1) * np * d]).zip(pos) {
                *o = tk + ps;
            }
        });
        let z = Dims { b, t, d };
        let mut tapes = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let (next, tape) =
                if cls_only && i + 1 == self.blocks.len() { block.forward_cls(x, z, record) } else { block.forward(x, z, record, keep_p) };
            tapes.extend(tape);
            x = next;
        }
        let out = self.norm.forward(&x);
        let patches = if record == Record::ParamGradients { patches } else { vec![] };
        let part = (record != Record::Nothing).then(|| Part { z, blocks: tapes, last: x.clone(), patches });
        (out, x, part)
    }

    /// The pixels' gradient `[B,3,H,W]` given the gradients of the final tokens `[B,T,D]` and,
    /// where an objective reads them, of the tokens before the final norm (same shape). After a
    /// CLS-only forward only the CLS rows of both are read (the caller checks the others are zero).
    pub fn backward(&self, tape: &Tape, d_out: &[f32], d_pre: Option<&[f32]>) -> Vec<f32> {
        // Each group's images on the group's threads, as in the forward (groups of equal size).
        let groups = tape.parts.len();
        let n = d_out.len() / groups;
        assert_eq!(n, tape.parts[0].z.b * tape.parts[0].z.t * self.d, "internal error: token gradients of another batch than the tape's");
        let span = |g: usize| g * n..(g + 1) * n;
        let parts = self.groups.run(groups, |g| self.backward_part(tape, &tape.parts[g], &d_out[span(g)], d_pre.map(|d| &d[span(g)])));
        if groups == 1 {
            return parts.into_iter().next().expect("one group");
        }
        parts.concat()
    }

    /// [`FastVit::backward`] of one group of images.
    fn backward_part(&self, tape: &Tape, part: &Part, d_out: &[f32], d_pre: Option<&[f32]>) -> Vec<f32> {
        let (p, d, z) = (self.patch, self.d, part.z);
        let (gh, gw) = tape.grid;
        let np = gh * gw;
        let mut blocks = self.blocks.iter().zip(&part.blocks).rev();
        let mut dx = if tape.cls_only {
            let mut dxc = self.norm.backward(&cls_only::cls_rows(&part.last, z), &cls_only::cls_rows(d_out, z));
            if let Some(d_pre) = d_pre {
                add_assign(&mut dxc, &cls_only::cls_rows(d_pre, z));
            }
            let (block, bt) = blocks.next().expect("a CLS-only forward ran a last block");
            block.backward_cls(bt, dxc, z)
        } else {
            let mut dx = self.norm.backward(&part.last, d_out);
            if let Some(d_pre) = d_pre {
                add_assign(&mut dx, d_pre);
            }
            dx
        };
        for (block, bt) in blocks {
            dx = block.backward(bt, dx, z);
        }
        let skip = 1 + self.registers;
        let d_tokens: Vec<f32> = dx.chunks_exact(z.t * d).flat_map(|img| img[skip * d..].iter().copied()).collect();
        let d_patches = self.pe.backward(&d_tokens, z.b * np);
        let (hh, ww) = (gh * p, gw * p);
        let mut d_pixels = vec![0f32; z.b * 3 * hh * ww];
        d_pixels.par_chunks_mut(hh * ww).enumerate().for_each(|(plane, out)| {
            let (bi, c) = (plane / 3, plane % 3);
            for pi in 0..np {
                let (py, px) = (pi / gw, pi % gw);
                let row = &d_patches[(bi * np + pi) * 3 * p * p..];
                for ky in 0..p {
                    let src = &row[(c * p + ky) * p..][..p];
                    let dst = &mut out[(py * p + ky) * ww + px * p..][..p];
                    for (o, v) in dst.iter_mut().zip(src) {
                        *o = v / IMAGENET_STD[c];
                    }
                }
            }
        });
        d_pixels
    }
}

#[cfg(test)]
mod tests;
