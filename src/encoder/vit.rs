//! The DINO / DINOv2 vision transformer: plain structs holding tensors, a `load` and a `forward`.
//!
//! Forward (as the official `prepare_tokens_with_masks` + blocks + norm):
//! patchify → linear patch embedding → prepend CLS → add (resized) position embedding →
//! insert register tokens after CLS → blocks (pre-norm attention and FFN, optional LayerScale) →
//! final LayerNorm → CLS token and patch tokens (registers dropped).

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::arch::{FfnKind, VitConfig};
use super::layers::{cast, gelu, softmax_last, LayerNorm, Linear};
use super::pos_embed::{resize_matrix_2d, PosResize};
use super::weights::Checkpoint;

pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

impl Attention {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let h = self.num_heads;
        let hd = d / h;
        let qkv = self.qkv.forward(x)?.reshape((b, n, 3, h, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * (hd as f64).powf(-0.5))?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let attn = softmax_last(&q.matmul(&k.t()?)?)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b, n, d))?;
        self.proj.forward(&out)
    }
}

pub struct Ffn {
    pub kind: FfnKind,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Ffn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = match self.kind {
            FfnKind::Mlp => gelu(&h)?,
            FfnKind::SwiGlu => {
                let half = h.dim(candle_core::D::Minus1)? / 2;
                let x1 = h.narrow(candle_core::D::Minus1, 0, half)?;
                let x2 = h.narrow(candle_core::D::Minus1, half, half)?;
                (x1.silu()? * x2)?
            }
        };
        self.fc2.forward(&h)
    }
}

pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub ls1: Option<Tensor>,
    pub norm2: LayerNorm,
    pub ffn: Ffn,
    pub ls2: Option<Tensor>,
}

fn layer_scale(x: Tensor, gamma: &Option<Tensor>) -> candle_core::Result<Tensor> {
    match gamma {
        Some(g) => x.broadcast_mul(g),
        None => Ok(x),
    }
}

impl Block {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + layer_scale(self.attn.forward(&self.norm1.forward(x)?)?, &self.ls1)?)?;
        &x + layer_scale(self.ffn.forward(&self.norm2.forward(&x)?)?, &self.ls2)?
    }
}

/// The encoder's outputs: CLS and patch tokens after the final norm, and the same tokens before
/// it (the last block's output: DINOv2's `get_intermediate_layers(norm=False)`, what its depth
/// heads read).
pub struct Tokens {
    /// `[B, D]`
    pub cls: Tensor,
    /// `[B, P, D]`, row-major over the patch grid, registers excluded.
    pub patch: Tensor,
    /// Before the final norm; `None` where the forward did not keep it (fine-tuning).
    pub prenorm: Option<PreNorm>,
    /// Patch grid (rows, columns).
    pub grid: (usize, usize),
}

/// CLS `[B, D]` and patch tokens `[B, P, D]` before the final norm (or gradients of that shape).
pub struct PreNorm {
    pub cls: Tensor,
    pub patch: Tensor,
}

impl PreNorm {
    pub fn detach(&self) -> PreNorm {
        PreNorm { cls: self.cls.detach(), patch: self.patch.detach() }
    }
}

/// Which of the encoder's outputs a head or an attack reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// After the final norm.
    Final,
    /// Before it (DINOv2's depth heads, the study's depth EmbedAttack).
    PreNorm,
}

impl Tokens {
    /// `n` samples from `start` (every output).
    pub fn rows(&self, start: usize, n: usize) -> candle_core::Result<Tokens> {
        let prenorm = match &self.prenorm {
            Some(p) => Some(PreNorm { cls: p.cls.narrow(0, start, n)?, patch: p.patch.narrow(0, start, n)? }),
            None => None,
        };
        Ok(Tokens { cls: self.cls.narrow(0, start, n)?, patch: self.patch.narrow(0, start, n)?, prenorm, grid: self.grid })
    }

    /// The same tokens cut off from the graph.
    pub fn detach(&self) -> Tokens {
        Tokens { cls: self.cls.detach(), patch: self.patch.detach(), prenorm: self.prenorm.as_ref().map(PreNorm::detach), grid: self.grid }
    }

    /// CLS and patch tokens as `reads` says; an error where the pre-norm ones were not kept.
    pub fn read(&self, reads: Reads) -> anyhow::Result<(&Tensor, &Tensor)> {
        match (reads, &self.prenorm) {
            (Reads::Final, _) => Ok((&self.cls, &self.patch)),
            (Reads::PreNorm, Some(p)) => Ok((&p.cls, &p.patch)),
            (Reads::PreNorm, None) => anyhow::bail!("the tokens before the final norm were not kept by this forward"),
        }
    }
}

pub struct VisionTransformer {
    pub config: VitConfig,
    pub pos_resize: PosResize,
    /// `[3·p·p, D]`: the patch convolution as a matmul over flattened (c, ky, kx) patches.
    pub patch_embed: Linear,
    pub cls_token: Tensor,
    /// `[1, 1, D]` position of the class token.
    pub pos_cls: Tensor,
    /// `[M·M, D]` position grid.
    pub pos_patch: Tensor,
    pub register_tokens: Option<Tensor>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    /// The checkpoint the weights were loaded from (for messages).
    pub file: String,
    resize_cache: Mutex<HashMap<(usize, usize, DType), Option<Tensor>>>,
}

impl VisionTransformer {
    /// Takes every backbone tensor out of `ckpt`, checking each shape against `config`.
    pub fn load(ckpt: &mut Checkpoint, config: VitConfig, pos_resize: PosResize) -> Result<Self> {
        let d = config.embed_dim;
        let p = config.patch_size;
        let m = config.pos_grid;
        let eps = config.ln_eps;
        let f32 = |t: Tensor| t.to_dtype(DType::F32);
        let ln = |ckpt: &mut Checkpoint, name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                weight: f32(ckpt.take(&format!("{name}.weight"), &[d])?)?,
                bias: f32(ckpt.take(&format!("{name}.bias"), &[d])?)?,
                eps,
            })
        };
        let linear = |ckpt: &mut Checkpoint, name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let w = f32(ckpt.take(&format!("{name}.weight"), &[out, inp])?)?;
            let b = if bias {
                Some(f32(ckpt.take(&format!("{name}.bias"), &[out])?)?)
            } else {
                ckpt.take_opt(&format!("{name}.bias"), &[out])?.map(f32).transpose()?
            };
            Ok(Linear::new(w, b)?)
        };

        let pw = f32(ckpt.take("patch_embed.proj.weight", &[d, 3, p, p])?)?.reshape((d, 3 * p * p))?;
        let pb = f32(ckpt.take("patch_embed.proj.bias", &[d])?)?;
        let patch_embed = Linear::new(pw, Some(pb))?;
        let cls_token = f32(ckpt.take("cls_token", &[1, 1, d])?)?;
        let positions = match config.fixed_grid {
            Some((rows, cols)) => rows * cols,
            None => m * m,
        };
        let pos = f32(ckpt.take("pos_embed", &[1, 1 + positions, d])?)?;
        let pos_cls = pos.narrow(1, 0, 1)?.contiguous()?;
        let pos_patch = pos.narrow(1, 1, positions)?.squeeze(0)?.contiguous()?;
        let r = config.num_registers;
        let register_tokens = if r > 0 { Some(f32(ckpt.take("register_tokens", &[1, r, d])?)?) } else { None };
        let hidden = config.ffn_hidden;
        let fc1_out = match config.ffn {
            FfnKind::Mlp => hidden,
            FfnKind::SwiGlu => 2 * hidden,
        };
        let mut blocks = Vec::with_capacity(config.depth);
        for i in 0..config.depth {
            let pre = format!("blocks.{i}");
            let ls = |ckpt: &mut Checkpoint, n: &str| -> Result<Option<Tensor>> {
                if config.layer_scale {
                    Ok(Some(f32(ckpt.take(&format!("{pre}.{n}.gamma"), &[d])?)?))
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                norm1: ln(ckpt, &format!("{pre}.norm1"))?,
                attn: Attention {
                    qkv: linear(ckpt, &format!("{pre}.attn.qkv"), 3 * d, d, config.qkv_bias)?,
                    proj: linear(ckpt, &format!("{pre}.attn.proj"), d, d, true)?,
                    num_heads: config.num_heads,
                },
                ls1: ls(ckpt, "ls1")?,
                norm2: ln(ckpt, &format!("{pre}.norm2"))?,
                ffn: Ffn {
                    kind: config.ffn,
                    fc1: linear(ckpt, &format!("{pre}.mlp.fc1"), fc1_out, d, true)?,
                    fc2: linear(ckpt, &format!("{pre}.mlp.fc2"), d, hidden, true)?,
                },
                ls2: ls(ckpt, "ls2")?,
            });
        }
        let norm = ln(ckpt, "norm")?;
        if let Some(name) = ckpt.tensors.keys().next() {
            bail!("{}: tensor '{}' is not used by {config}", ckpt.path.display(), ckpt.source_name(name));
        }
        Ok(Self {
            config,
            pos_resize,
            patch_embed,
            cls_token,
            pos_cls,
            pos_patch,
            register_tokens,
            blocks,
            norm,
            file: ckpt.path.display().to_string(),
            resize_cache: Mutex::new(HashMap::new()),
        })
    }

    /// A copy on another device and/or in another float type (f64 for finite differences).
    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        self.map_parameters(|_, t| Ok(cast(t, device, dtype)?))
    }

    /// Every parameter with its canonical name, in the layout this struct keeps it (linear
    /// weights transposed `[in, out]`, the patch convolution flattened to `[3·p·p, D]`, the
    /// position embedding split into `pos_embed.cls` and `pos_embed.patch`).
    pub fn parameters(&self) -> Vec<(String, &Tensor)> {
        fn linear<'a>(out: &mut Vec<(String, &'a Tensor)>, name: &str, l: &'a Linear) {
            out.push((format!("{name}.weight"), &l.w_t));
            if let Some(b) = &l.b {
                out.push((format!("{name}.bias"), b));
            }
        }
        fn ln<'a>(out: &mut Vec<(String, &'a Tensor)>, name: &str, l: &'a LayerNorm) {
            out.push((format!("{name}.weight"), &l.weight));
            out.push((format!("{name}.bias"), &l.bias));
        }
        let mut out: Vec<(String, &Tensor)> = Vec::new();
        linear(&mut out, "patch_embed.proj", &self.patch_embed);
        out.push(("cls_token".into(), &self.cls_token));
        out.push(("pos_embed.cls".into(), &self.pos_cls));
        out.push(("pos_embed.patch".into(), &self.pos_patch));
        if let Some(r) = &self.register_tokens {
            out.push(("register_tokens".into(), r));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let pre = format!("blocks.{i}");
            ln(&mut out, &format!("{pre}.norm1"), &b.norm1);
            linear(&mut out, &format!("{pre}.attn.qkv"), &b.attn.qkv);
            linear(&mut out, &format!("{pre}.attn.proj"), &b.attn.proj);
            if let Some(g) = &b.ls1 {
                out.push((format!("{pre}.ls1.gamma"), g));
            }
            ln(&mut out, &format!("{pre}.norm2"), &b.norm2);
            linear(&mut out, &format!("{pre}.mlp.fc1"), &b.ffn.fc1);
            linear(&mut out, &format!("{pre}.mlp.fc2"), &b.ffn.fc2);
            if let Some(g) = &b.ls2 {
                out.push((format!("{pre}.ls2.gamma"), g));
            }
        }
        ln(&mut out, "norm", &self.norm);
        out
    }

    /// A copy whose every parameter is `f(name, parameter)` (names as [`Self::parameters`]).
    pub fn map_parameters(&self, mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<Self> {
        let mut f = |name: String, t: &Tensor| f(&name, t);
        let linear = |f: &mut dyn FnMut(String, &Tensor) -> Result<Tensor>, name: &str, l: &Linear| -> Result<Linear> {
            Ok(Linear { w_t: f(format!("{name}.weight"), &l.w_t)?, b: l.b.as_ref().map(|b| f(format!("{name}.bias"), b)).transpose()? })
        };
        let ln = |f: &mut dyn FnMut(String, &Tensor) -> Result<Tensor>, name: &str, l: &LayerNorm| -> Result<LayerNorm> {
            Ok(LayerNorm { weight: f(format!("{name}.weight"), &l.weight)?, bias: f(format!("{name}.bias"), &l.bias)?, eps: l.eps })
        };
        let patch_embed = linear(&mut f, "patch_embed.proj", &self.patch_embed)?;
        let cls_token = f("cls_token".into(), &self.cls_token)?;
        let pos_cls = f("pos_embed.cls".into(), &self.pos_cls)?;
        let pos_patch = f("pos_embed.patch".into(), &self.pos_patch)?;
        let register_tokens = self.register_tokens.as_ref().map(|r| f("register_tokens".into(), r)).transpose()?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let pre = format!("blocks.{i}");
            blocks.push(Block {
                norm1: ln(&mut f, &format!("{pre}.norm1"), &b.norm1)?,
                attn: Attention {
                    qkv: linear(&mut f, &format!("{pre}.attn.qkv"), &b.attn.qkv)?,
                    proj: linear(&mut f, &format!("{pre}.attn.proj"), &b.attn.proj)?,
                    num_heads: b.attn.num_heads,
                },
                ls1: b.ls1.as_ref().map(|g| f(format!("{pre}.ls1.gamma"), g)).transpose()?,
                norm2: ln(&mut f, &format!("{pre}.norm2"), &b.norm2)?,
                ffn: Ffn {
                    kind: b.ffn.kind,
                    fc1: linear(&mut f, &format!("{pre}.mlp.fc1"), &b.ffn.fc1)?,
                    fc2: linear(&mut f, &format!("{pre}.mlp.fc2"), &b.ffn.fc2)?,
                },
                ls2: b.ls2.as_ref().map(|g| f(format!("{pre}.ls2.gamma"), g)).transpose()?,
            });
        }
        let norm = ln(&mut f, "norm", &self.norm)?;
        Ok(Self {
            config: self.config.clone(),
            pos_resize: self.pos_resize,
            patch_embed,
            cls_token,
            pos_cls,
            pos_patch,
            register_tokens,
            blocks,
            norm,
            file: self.file.clone(),
            resize_cache: Mutex::new(HashMap::new()),
        })
    }

    /// The parameters as a checkpoint holds them: canonical names (official DINOv2) and torch
    /// layouts (`[out, in]` weights, `[D, 3, p, p]` patch convolution, one `[1, 1+M², D]`
    /// position embedding).
    pub fn checkpoint_tensors(&self) -> Result<std::collections::BTreeMap<String, Tensor>> {
        let (d, p) = (self.config.embed_dim, self.config.patch_size);
        let mut out = std::collections::BTreeMap::new();
        for (name, t) in self.parameters() {
            let t = t.detach();
            match name.as_str() {
                "pos_embed.cls" | "pos_embed.patch" => {}
                "patch_embed.proj.weight" => {
                    out.insert(name, t.t()?.contiguous()?.reshape((d, 3, p, p))?);
                }
                n if n.ends_with(".weight") && t.rank() == 2 => {
                    out.insert(name, t.t()?.contiguous()?);
                }
                _ => {
                    out.insert(name, t);
                }
            }
        }
        out.insert("pos_embed".into(), Tensor::cat(&[&self.pos_cls.detach(), &self.pos_patch.detach().unsqueeze(0)?], 1)?);
        Ok(out)
    }

    pub fn device(&self) -> &Device {
        self.cls_token.device()
    }

    pub fn dtype(&self) -> DType {
        self.cls_token.dtype()
    }

    /// The position embedding of the patch grid `h × w`, `[h·w, D]`.
    pub fn patch_positions(&self, h: usize, w: usize) -> candle_core::Result<Tensor> {
        match self.resize_matrix(h, w)? {
            Some(r) => r.matmul(&self.pos_patch),
            None => Ok(self.pos_patch.clone()),
        }
    }

    /// The gradient of the native position embedding given `g`, that of the `h × w` grid's
    /// (`[h·w, D]`): the resize's transpose applied to it.
    pub fn pos_patch_gradient(&self, h: usize, w: usize, g: &Tensor) -> candle_core::Result<Tensor> {
        let g = g.to_dtype(self.dtype())?;
        match self.resize_matrix(h, w)? {
            Some(r) => r.t()?.matmul(&g),
            None => Ok(g),
        }
    }

    /// `[h·w, M·M]`: the linear map from the native grid to `h × w` (`None`: the same grid).
    /// A fixed grid has no other: any other grid is an error.
    fn resize_matrix(&self, h: usize, w: usize) -> candle_core::Result<Option<Tensor>> {
        if let Some(grid) = self.config.fixed_grid {
            return match grid == (h, w) {
                true => Ok(None),
                false => Err(candle_core::Error::Msg(self.fixed_grid_error(h, w))),
            };
        }
        let m = self.config.pos_grid;
        let key = (h, w, self.dtype());
        Ok({
            let mut cache = self.resize_cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let r = resize_matrix_2d(self.pos_resize, m, h, w)
                        .map(|v| Tensor::from_vec(v, (h * w, m * m), self.device())?.to_dtype(self.dtype()))
                        .transpose()?;
                    cache.insert(key, r.clone());
                    r
                }
            }
        })
    }

    /// Why a model fixed to one patch grid cannot run on the `h × w` one.
    fn fixed_grid_error(&self, h: usize, w: usize) -> String {
        let p = self.config.patch_size;
        let (rows, cols) = self.config.fixed_grid.unwrap_or_default();
        format!(
            "{}: the graph was exported for {}x{} px images (a {rows}x{cols} patch grid) with its position embedding \
             computed for that size only; it cannot run on {}x{} px images ({h}x{w} patches). Export the model again at \
             the size you need, or with dynamic input shapes so that the graph keeps its position-embedding resize",
            self.file,
            rows * p,
            cols * p,
            h * p,
            w * p
        )
    }

    /// `(B, H, W)` of an image batch `[B, 3, H, W]` whose sides are positive multiples of the patch
    /// (and give the one grid a fixed-grid model runs at).
    pub fn check_images(&self, dims: &[usize]) -> Result<(usize, usize, usize)> {
        let p = self.config.patch_size;
        let &[b, c, h, w] = dims else { bail!("expected images [N, 3, H, W], got {dims:?}") };
        if c != 3 {
            bail!("expected 3 colour channels, got {c}");
        }
        if h % p != 0 || w % p != 0 || h == 0 || w == 0 {
            bail!("image size {h}x{w} is not a positive multiple of the patch size {p}");
        }
        if self.config.fixed_grid.is_some_and(|grid| grid != (h / p, w / p)) {
            bail!("{}", self.fixed_grid_error(h / p, w / p));
        }
        Ok((b, h, w))
    }

    /// `x`: normalized images `[B, 3, H, W]`, H and W multiples of the patch size.
    pub fn forward(&self, x: &Tensor) -> Result<Tokens> {
        let p = self.config.patch_size;
        let d = self.config.embed_dim;
        let (b, hh, ww) = self.check_images(x.dims())?;
        let (h, w) = (hh / p, ww / p);
        let patches = x.reshape((b, 3, h, p, w, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((b, h * w, 3 * p * p))?;
        let tokens = self.patch_embed.forward(&patches)?;
        let tokens = tokens.broadcast_add(&self.patch_positions(h, w)?.unsqueeze(0)?)?;
        let cls = (&self.cls_token + &self.pos_cls)?.broadcast_as((b, 1, d))?;
        let mut parts = vec![cls];
        if let Some(reg) = &self.register_tokens {
            parts.push(reg.broadcast_as((b, reg.dim(1)?, d))?);
        }
        parts.push(tokens);
        let mut x = Tensor::cat(&parts, 1)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let pre = x;
        let x = self.norm.forward(&pre)?;
        let skip = 1 + self.config.num_registers;
        let prenorm = PreNorm { cls: pre.narrow(1, 0, 1)?.squeeze(1)?, patch: pre.narrow(1, skip, h * w)? };
        Ok(Tokens { cls: x.narrow(1, 0, 1)?.squeeze(1)?, patch: x.narrow(1, skip, h * w)?, prenorm: Some(prenorm), grid: (h, w) })
    }
}
