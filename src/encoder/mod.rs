//! Encoders: DINO v1 / DINOv2 ViT backbones loaded from any checkpoint format, as the
//! differentiable front of the pipeline *pixels in [0,1] → normalize → encoder → head*.

pub mod amx;
pub mod arch;
pub mod bf16_gemm;
mod bf16_pack;
mod fast_vit;
mod fastmath;
pub mod frozen_linear;
mod fused;
pub mod layers;
pub mod pos_embed;
pub mod precision;
pub mod vit;
pub mod weights;

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use arch::{ArchChoice, ArchOverrides, VitConfig};
use fast_vit::Record;
use pos_embed::PosResize;
pub use precision::Precision;
pub use vit::{PreNorm, Reads, Tokens, VisionTransformer};
use weights::{Checkpoint, Format, Source};

/// ImageNet statistics used by DINO and DINOv2.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How to load an encoder.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub arch: ArchChoice,
    /// Number of attention heads when it cannot be read from the file (default: 64-dim heads).
    pub heads: Option<usize>,
    /// Position-embedding resize semantics; default from the checkpoint's source.
    pub pos_resize: Option<PosResize>,
    /// Which backbone of a training checkpoint (`teacher`, `student`); default `teacher`.
    pub prefer: Option<String>,
    pub device: Device,
    /// The arithmetic of the matrix products (bf16: CPU with AVX512-BF16 only, checked on load).
    pub precision: Precision,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { arch: ArchChoice::Auto, heads: None, pos_resize: None, prefer: None, device: Device::Cpu, precision: Precision::F32 }
    }
}

/// Where an encoder came from, for `inspect` and result metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncoderInfo {
    pub file: String,
    pub format: Format,
    pub source: Source,
    pub prefix: String,
    pub other_prefixes: Vec<String>,
    pub arch: Option<String>,
    pub config: VitConfig,
    pub parameters: usize,
    pub pos_resize: PosResize,
    /// What the file's own library uses, and how we know (`pos_resize` unless a flag overrode it).
    pub default_pos_resize: weights::ResizeDefault,
    pub ignored_tensors: usize,
    /// True when the head count was neither given nor stated by the file (64-dim heads assumed).
    pub heads_assumed: bool,
    /// How each backbone tensor of the file is cut from the canonical ones (for writing back).
    #[serde(skip)]
    pub slots: std::collections::BTreeMap<String, weights::Slot>,
}

/// A loaded encoder: normalization + ViT.
pub struct Encoder {
    pub vit: VisionTransformer,
    pub info: EncoderInfo,
    mean: Tensor,
    std: Tensor,
    /// The hand-written f32 CPU path, built on first use (`None` where it does not apply).
    fast: OnceLock<Option<fast_vit::FastVit>>,
    /// [`Encoder::fingerprint`], computed once.
    fingerprint: OnceLock<serde_json::Value>,
    precision: Precision,
}

/// The blake3 of the checkpoint file (not its name or place) and how it was loaded.
fn fingerprint(info: &EncoderInfo, dtype: DType, precision: Precision) -> Result<serde_json::Value> {
    let file = Path::new(&info.file);
    let hash = blake3::Hasher::new()
        .update_mmap_rayon(file)
        .with_context(|| format!("{}: cannot read the encoder file to fingerprint it", file.display()))?
        .finalize();
    let mut f = serde_json::json!({
        "blake3": hash.to_hex().to_string(),
        "prefix": info.prefix,
        "pos_resize": info.pos_resize,
        "config": info.config,
        "dtype": format!("{dtype:?}"),
    });
    // Only where it is not the default, so that f32 keys stay those of earlier stores.
    if precision != Precision::F32 {
        f["precision"] = serde_json::json!(precision);
    }
    Ok(f)
}

/// Which tokens a forward's caller reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outputs {
    All,
    /// The CLS token alone (e.g. an EmbedAttack on CLS): the fast path's last block then computes
    /// the CLS rows only past the keys and values, and every other token comes back NaN.
    ClsOnly,
}

/// What the fast path's forward gives: `[B,T,D]` after and before the final norm.
struct FastOutput {
    all: Tensor,
    pre: Tensor,
    grid: (usize, usize),
    tape: Option<fast_vit::Tape>,
}

/// What [`Encoder::backward`] needs from [`Encoder::forward_with_tape`].
pub enum Tape {
    /// The hand-written CPU path.
    Fast(fast_vit::Tape),
    /// candle autograd (GPUs, f64): the input variable and the outputs it produced.
    Autograd { input: Var, tokens: Tokens },
}

impl Encoder {
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let (mut ckpt, info) = Self::read(path, opts)?;
        if info.heads_assumed && info.config.official_name().is_none() {
            eprintln!(
                "warning: {}: the file does not state the number of attention heads; assuming 64-dim heads \
                 ({} head(s)) for this custom width {}. Pass --num-heads if that is wrong.",
                path.display(),
                info.config.num_heads,
                info.config.embed_dim
            );
        }
        if opts.pos_resize.is_none() && info.default_pos_resize.ambiguous {
            eprintln!(
                "note: {}: position-embedding resize '{}': {}. Pass --pos-resize {} if the file came from elsewhere.",
                info.file,
                info.pos_resize,
                info.default_pos_resize.reason,
                if info.pos_resize == PosResize::Official { "size-aa" } else { "official or size-aa" }
            );
        }
        let vit = VisionTransformer::load(&mut ckpt, info.config.clone(), info.pos_resize).map_err(|e| name_the_file(e, &info.file))?;
        let vit = if opts.device.is_cpu() { vit } else { vit.to(&opts.device, DType::F32)? };
        Self::from_vit(vit, info)?.with_precision(opts.precision)
    }

    /// This encoder with its matrix products in `precision`, where it runs ([`Precision::check`]).
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        precision.check(self.vit.device(), self.vit.dtype()).map_err(|e| anyhow!("{}: {e}", self.info.file))?;
        self.precision = precision;
        self.fast = OnceLock::new();
        self.fingerprint = OnceLock::new();
        Ok(self)
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// What loading `path` would give, without building the model: the architecture, the
    /// resize semantics, the naming (for planning, which needs no weights on a device).
    pub fn describe(path: &Path, opts: &LoadOptions) -> Result<EncoderInfo> {
        Ok(Self::read(path, opts)?.1)
    }

    /// The identity of the weights `info` describes, as [`Encoder::fingerprint`] gives it for
    /// the model built from them (whose parameters are always f32).
    pub fn fingerprint_of(info: &EncoderInfo, precision: Precision) -> Result<serde_json::Value> {
        fingerprint(info, DType::F32, precision)
    }

    fn read(path: &Path, opts: &LoadOptions) -> Result<(Checkpoint, EncoderInfo)> {
        let ckpt = Checkpoint::load(path, opts.prefer.as_deref())?;
        let facts = ckpt.shape_facts().map_err(|e| name_the_file(e, &ckpt.path.display().to_string()))?;
        let over = ArchOverrides {
            arch: match opts.arch {
                ArchChoice::Auto => None,
                ArchChoice::Named(a) => Some(a),
            },
            num_heads: opts.heads,
            ln_eps: ckpt.eps_hint,
        };
        let heads_hint = ckpt.heads_hint(facts.embed_dim);
        let heads_assumed = opts.heads.is_none() && over.arch.is_none() && heads_hint.is_none();
        // What a config.json says is that file's fault, unless the flags overrode it.
        let heads_from_config = opts.heads.is_none() && over.arch.is_none() && heads_hint.is_some();
        let blamed = ckpt.config_file.clone().filter(|_| heads_from_config).unwrap_or_else(|| path.display().to_string());
        let config = arch::resolve(&facts, &over, heads_hint).with_context(|| blamed)?;
        let default_pos_resize = ckpt.default_resize(config.num_registers);
        let pos_resize = opts.pos_resize.unwrap_or(default_pos_resize.semantics);
        let info = EncoderInfo {
            // The weights file itself (inside a model folder when a folder was given).
            file: ckpt.path.display().to_string(),
            format: ckpt.format,
            source: ckpt.source,
            prefix: ckpt.prefix.clone(),
            other_prefixes: ckpt.other_prefixes.clone(),
            arch: config.official_name(),
            config: config.clone(),
            parameters: ckpt.parameter_count(),
            pos_resize,
            default_pos_resize,
            ignored_tensors: ckpt.ignored.len(),
            heads_assumed,
            slots: ckpt.slots.clone(),
        };
        Ok((ckpt, info))
    }

    pub fn from_vit(vit: VisionTransformer, info: EncoderInfo) -> Result<Self> {
        let dev = vit.device().clone();
        let dtype = vit.dtype();
        let mean = Tensor::from_slice(&IMAGENET_MEAN, (1, 3, 1, 1), &dev)?.to_dtype(dtype)?;
        let std = Tensor::from_slice(&IMAGENET_STD, (1, 3, 1, 1), &dev)?.to_dtype(dtype)?;
        Ok(Self { vit, info, mean, std, fast: OnceLock::new(), fingerprint: OnceLock::new(), precision: Precision::F32 })
    }

    /// A copy in another float type / on another device.
    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        Self::from_vit(self.vit.to(device, dtype)?, self.info.clone())
    }

    /// The identity of these weights for cache keys and head metadata: the blake3 of the
    /// checkpoint file (not its name or place) and how it was loaded. Hashed once per encoder.
    /// It names the file the weights came from: weights changed in memory (fine-tuning) must be
    /// saved and loaded again before their features are cached.
    pub fn fingerprint(&self) -> Result<serde_json::Value> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f.clone());
        }
        let f = fingerprint(&self.info, self.vit.dtype(), self.precision)?;
        Ok(self.fingerprint.get_or_init(|| f).clone())
    }

    /// This encoder, its fingerprint already known from [`Encoder::fingerprint_of`] on the same
    /// file and options (planning hashed the file; the run need not read it again).
    pub fn with_fingerprint(self, known: serde_json::Value) -> Self {
        let _ = self.fingerprint.set(known);
        self
    }

    /// Writes these weights to `dst` as a copy of the checkpoint they were loaded from: same
    /// format, names and dtypes, every non-backbone entry kept (see [`weights::export`]).
    pub fn save_like_input(&self, dst: &Path) -> Result<()> {
        let values = weights::export::file_values(&self.info.slots, &self.vit.checkpoint_tensors()?)?;
        weights::export::write_like(Path::new(&self.info.file), self.info.format, &values, dst)
    }

    pub fn config(&self) -> &VitConfig {
        &self.vit.config
    }

    /// ImageNet normalization, inside the differentiable pipeline.
    pub fn normalize(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(pixels.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?)
    }

    fn fast(&self) -> Result<Option<&fast_vit::FastVit>> {
        if let Some(f) = self.fast.get() {
            return Ok(f.as_ref());
        }
        let usable = self.vit.device().is_cpu() && self.vit.dtype() == DType::F32;
        let built = if usable { Some(fast_vit::FastVit::new(&self.vit, self.precision)?) } else { None };
        Ok(self.fast.get_or_init(|| built).as_ref())
    }

    /// The fast path's output `[B,T,D]` (registers included), the same before the final norm,
    /// its patch grid and tape.
    fn fast_forward(&self, fast: &fast_vit::FastVit, pixels: &Tensor, record: Record, outputs: Outputs) -> Result<FastOutput> {
        let (b, h, w) = self.vit.check_images(pixels.dims())?;
        let p = self.config().patch_size;
        let (gh, gw) = (h / p, w / p);
        let pos = self.vit.patch_positions(gh, gw)?.flatten_all()?.to_vec1::<f32>()?;
        let px = pixels.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (out, pre, tape) = fast.forward(&px, (b, h, w), &pos, record, outputs)?;
        let (d, r) = (self.config().embed_dim, self.config().num_registers);
        let shape = (b, 1 + r + gh * gw, d);
        Ok(FastOutput {
            all: Tensor::from_vec(out, shape, &Device::Cpu)?,
            pre: Tensor::from_vec(pre, shape, &Device::Cpu)?,
            grid: (gh, gw),
            tape,
        })
    }

    /// The CLS and patch tokens of an output `[B,T,D]`, and of the same before the final norm.
    fn tokens_of(&self, all: &Tensor, pre: Option<&Tensor>, grid: (usize, usize)) -> Result<Tokens> {
        let skip = 1 + self.config().num_registers;
        let split = |t: &Tensor| -> Result<(Tensor, Tensor)> { Ok((t.narrow(1, 0, 1)?.squeeze(1)?, t.narrow(1, skip, grid.0 * grid.1)?)) };
        let (cls, patch) = split(all)?;
        let prenorm = pre.map(split).transpose()?.map(|(cls, patch)| PreNorm { cls, patch });
        Ok(Tokens { cls, patch, prenorm, grid })
    }

    fn fast_tokens(
        &self,
        fast: &fast_vit::FastVit,
        pixels: &Tensor,
        record: Record,
        outputs: Outputs,
    ) -> Result<(Tokens, Option<fast_vit::Tape>)> {
        let o = self.fast_forward(fast, pixels, record, outputs)?;
        Ok((self.tokens_of(&o.all, Some(&o.pre), o.grid)?, o.tape))
    }

    /// Forward for fine-tuning on the fast path (CPU, f32; `None` elsewhere): the tokens, computed
    /// from `output` (`[B,T,D]`, a variable: the loss's gradient with respect to it is what
    /// [`Encoder::param_gradients`] takes), and the tape.
    pub fn forward_for_training(&self, pixels: &Tensor) -> Result<Option<(Tokens, Var, Tape)>> {
        match self.fast()? {
            Some(fast) if pixels.device().is_cpu() => {
                let o = self.fast_forward(fast, pixels, Record::ParamGradients, Outputs::All)?;
                let output = Var::from_tensor(&o.all)?;
                let tokens = self.tokens_of(output.as_tensor(), None, o.grid)?;
                Ok(Some((tokens, output, Tape::Fast(o.tape.expect("tape requested")))))
            }
            _ => Ok(None),
        }
    }

    /// Every weight's gradient (by [`VisionTransformer::parameters`] name, in its shape) given
    /// the gradient of the output of [`Encoder::forward_for_training`].
    pub fn param_gradients(&self, tape: &Tape, d_output: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let (Tape::Fast(t), Some(fast)) = (tape, self.fast()?) else { bail!("weight gradients need the fast path's tape") };
        let g = fast.param_gradients(t, d_output.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        let shapes: std::collections::HashMap<String, Vec<usize>> =
            self.vit.parameters().into_iter().map(|(n, p)| (n, p.dims().to_vec())).collect();
        let mut out = Vec::with_capacity(g.named.len() + 1);
        for (name, v) in g.named {
            let shape = shapes.get(&name).ok_or_else(|| anyhow!("gradient of an unknown parameter '{name}'"))?;
            out.push((name, Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?));
        }
        let (gh, gw) = t.grid();
        let pos = Tensor::from_vec(g.pos_grid, (gh * gw, self.config().embed_dim), &Device::Cpu)?;
        out.push(("pos_embed.patch".into(), self.vit.pos_patch_gradient(gh, gw, &pos)?));
        Ok(out)
    }

    /// `pixels`: `[B, 3, H, W]` in [0, 1] (not normalized).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tokens> {
        self.forward_reading(pixels, Outputs::All)
    }

    /// [`Encoder::forward`] for a caller that reads only `outputs` (the others may be NaN).
    pub fn forward_reading(&self, pixels: &Tensor, outputs: Outputs) -> Result<Tokens> {
        match self.fast()? {
            Some(fast) if pixels.device().is_cpu() => Ok(self.fast_tokens(fast, pixels, Record::Nothing, outputs)?.0),
            _ => self.forward_generic(pixels),
        }
    }

    /// Forward that keeps what [`Encoder::backward`] needs.
    pub fn forward_with_tape(&self, pixels: &Tensor) -> Result<(Tokens, Tape)> {
        self.forward_with_tape_reading(pixels, Outputs::All)
    }

    /// [`Encoder::forward_with_tape`] for a caller that reads only `outputs` (the others may be
    /// NaN, and [`Encoder::backward`] takes no gradient on them).
    pub fn forward_with_tape_reading(&self, pixels: &Tensor, outputs: Outputs) -> Result<(Tokens, Tape)> {
        match self.fast()? {
            Some(fast) if pixels.device().is_cpu() => {
                let (tokens, tape) = self.fast_tokens(fast, pixels, Record::InputGradient, outputs)?;
                Ok((tokens, Tape::Fast(tape.expect("tape requested"))))
            }
            _ => self.forward_with_tape_generic(pixels),
        }
    }

    /// The candle-autograd version of [`Encoder::forward_with_tape`].
    pub fn forward_with_tape_generic(&self, pixels: &Tensor) -> Result<(Tokens, Tape)> {
        let input = Var::from_tensor(&pixels.to_dtype(self.vit.dtype())?)?;
        let tokens = self.forward_generic(input.as_tensor())?;
        Ok((tokens.detach(), Tape::Autograd { input, tokens }))
    }

    /// The gradient with respect to the pixels of `Σ cls⊙d_cls + Σ patch⊙d_patch` (a
    /// vector–Jacobian product): what every attack step needs. No weight gradients.
    pub fn backward(&self, tape: &Tape, d_cls: &Tensor, d_patch: &Tensor) -> Result<Tensor> {
        self.backward_with(tape, d_cls, d_patch, None)
    }

    /// [`Encoder::backward`] plus `Σ pre⊙d_pre` over the tokens before the final norm.
    pub fn backward_with(&self, tape: &Tape, d_cls: &Tensor, d_patch: &Tensor, d_pre: Option<&PreNorm>) -> Result<Tensor> {
        match tape {
            Tape::Fast(t) => {
                let fast = self.fast()?.ok_or_else(|| anyhow!("fast path unavailable"))?;
                let (b, d) = d_cls.dims2()?;
                let (gh, gw) = t.grid();
                if d_patch.dims() != [b, gh * gw, d] {
                    bail!("patch gradient has shape {:?}, expected [{b}, {}, {d}]", d_patch.dims(), gh * gw);
                }
                let r = self.config().num_registers;
                let zeros = Tensor::zeros((b, r, d), DType::F32, &Device::Cpu)?;
                let rows = |c: &Tensor, p: &Tensor| -> Result<Vec<f32>> {
                    if p.dims() != [b, gh * gw, d] || c.dims() != [b, d] {
                        bail!("token gradients of shapes {:?}, {:?}, expected [{b}, {d}], [{b}, {}, {d}]", c.dims(), p.dims(), gh * gw);
                    }
                    let all = Tensor::cat(&[&c.to_dtype(DType::F32)?.unsqueeze(1)?, &zeros, &p.to_dtype(DType::F32)?], 1)?;
                    Ok(all.flatten_all()?.to_vec1::<f32>()?)
                };
                if t.cls_only() {
                    let unread = [Some(d_patch), d_pre.map(|g| &g.patch)];
                    for g in unread.into_iter().flatten() {
                        if g.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()? != 0.0 {
                            bail!("internal error: a gradient on the patch tokens of a CLS-only forward");
                        }
                    }
                }
                let d_pre = d_pre.map(|g| rows(&g.cls, &g.patch)).transpose()?;
                let g = fast.backward(t, &rows(d_cls, d_patch)?, d_pre.as_deref());
                let p = self.config().patch_size;
                Ok(Tensor::from_vec(g, (b, 3, gh * p, gw * p), &Device::Cpu)?)
            }
            Tape::Autograd { input, tokens } => {
                let mut loss = ((&tokens.cls * d_cls)?.sum_all()? + (&tokens.patch * d_patch)?.sum_all()?)?;
                if let Some(g) = d_pre {
                    let pre = tokens.prenorm.as_ref().ok_or_else(|| anyhow!("the tape holds no tokens before the final norm"))?;
                    loss = ((loss + (&pre.cls * &g.cls)?.sum_all()?)? + (&pre.patch * &g.patch)?.sum_all()?)?;
                }
                let grads = loss.backward()?;
                grads.get(input.as_tensor()).cloned().ok_or_else(|| anyhow!("no gradient reached the input"))
            }
        }
    }

    /// The candle-ops forward (GPUs, f64, trainable weights).
    pub fn forward_generic(&self, pixels: &Tensor) -> Result<Tokens> {
        let pixels = if pixels.dtype() == self.vit.dtype() { pixels.clone() } else { pixels.to_dtype(self.vit.dtype())? };
        self.vit.forward(&self.normalize(&pixels)?)
    }
}

/// `e`, with `file` in front unless its message names it already.
fn name_the_file(e: anyhow::Error, file: &str) -> anyhow::Error {
    if format!("{e:#}").contains(file) {
        e
    } else {
        e.context(file.to_string())
    }
}
