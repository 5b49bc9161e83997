//! Reading backbone weights from any supported file (`.pth`, `.safetensors`, `.onnx`), finding the
//! backbone inside it, renaming it canonically and reading the architecture off its shapes.

pub mod export;
mod folder;
mod naming;
pub(crate) mod onnx;
pub mod pickle;
pub(crate) mod pth;
mod safetensors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;

use super::arch::{FfnKind, ShapeFacts};
use super::pos_embed::PosResize;
pub use naming::Source;

/// The container format of a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Format {
    #[serde(rename = "pth")]
    Pth,
    #[serde(rename = "safetensors")]
    Safetensors,
    #[serde(rename = "onnx")]
    Onnx,
}

impl Format {
    /// By extension first; by magic bytes for unusual extensions (`.bin`, `.pt`, `.ckpt`).
    pub fn detect(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "pth" | "pt" | "bin" | "ckpt" | "tar" => return Ok(Self::Pth),
            "safetensors" => return Ok(Self::Safetensors),
            "onnx" => return Ok(Self::Onnx),
            _ => {}
        }
        let mut head = [0u8; 4];
        use std::io::Read;
        let n = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?.read(&mut head)?;
        if n >= 2 && &head[..2] == b"PK" {
            Ok(Self::Pth)
        } else {
            bail!("{}: unknown checkpoint format (expected .pth/.pt/.bin, .safetensors or .onnx)", path.display())
        }
    }
}

/// Every tensor of a checkpoint file as the file names it (no backbone search, no renaming).
pub fn read_all(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Ok(match Format::detect(path)? {
        Format::Pth => pth::read(path)?,
        Format::Safetensors => safetensors::read(path)?,
        Format::Onnx => onnx::read(path)?.tensors,
    })
}

/// One step from a canonical tensor (torch layout) towards a tensor as the file stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOp {
    Narrow {
        dim: usize,
        start: usize,
        len: usize,
    },
    /// Swap the two dimensions of a matrix (ONNX MatMul weights are stored `[in, out]`).
    Transpose,
    /// View with another shape (same number of elements).
    Reshape(Vec<usize>),
    /// Reorder the dimensions (an ONNX patch grid stored NCHW: `[1, M, M, D]` → `[1, D, M, M]`).
    Permute(Vec<usize>),
}

/// How one backbone tensor of the file is made from a canonical tensor: `ops` in order. Writing
/// fine-tuned weights back in the file's own naming runs these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub canonical: String,
    pub ops: Vec<SlotOp>,
}

impl Slot {
    pub fn apply(&self, canonical: &Tensor) -> Result<Tensor> {
        let mut t = canonical.clone();
        for op in &self.ops {
            t = match op {
                &SlotOp::Narrow { dim, start, len } => t.narrow(dim, start, len)?,
                SlotOp::Transpose => t.t()?,
                SlotOp::Reshape(dims) => t.contiguous()?.reshape(dims.as_slice())?,
                SlotOp::Permute(order) => t.permute(order.as_slice())?,
            };
        }
        Ok(t.contiguous()?)
    }
}

/// A backbone's tensors under canonical names, with where they came from.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    pub source: Source,
    pub tensors: BTreeMap<String, Tensor>,
    pub origin: BTreeMap<String, String>,
    pub prefix: String,
    pub other_prefixes: Vec<String>,
    pub ignored: Vec<String>,
    /// File name → how that tensor is made from the canonical ones.
    pub slots: BTreeMap<String, Slot>,
    /// From a `config.json` beside the weights (transformers, timm).
    heads_hint: Option<usize>,
    /// The `config.json` beside the weights, when there is one (for messages about what it says).
    pub config_file: Option<String>,
    /// The `config.json` that says timm wrote the file, if one does.
    timm_config: Option<String>,
    /// The resize an ONNX graph performs on its position embedding, if it holds one.
    pub graph_resize: Option<onnx::GraphResize>,
    /// Why an ONNX graph's position-embedding resize is none of the known semantics, if so.
    graph_resize_unknown: Option<String>,
    /// The patch grid (rows, columns) an ONNX graph's baked-in position embedding fixes it to.
    pub fixed_grid: Option<(usize, usize)>,
    /// From an ONNX graph's attention scaling.
    head_dim_hint: Option<usize>,
    pub eps_hint: Option<f64>,
}

/// The resize semantics a checkpoint's own library uses, and how we know.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ResizeDefault {
    pub semantics: PosResize,
    /// Why this semantics, in one sentence.
    pub reason: String,
    /// True when the file cannot tell: another library writes the same file and resizes otherwise.
    pub ambiguous: bool,
}

impl ResizeDefault {
    fn known(semantics: PosResize, reason: impl Into<String>) -> Self {
        Self { semantics, reason: reason.into(), ambiguous: false }
    }
}

impl Checkpoint {
    /// The resize semantics of the library that wrote this file: read off an ONNX graph's
    /// `Resize` node; register models (Meta, timm, transformers alike: size-based, antialiased);
    /// the naming or a `config.json` beside the file. A bare official-named state dict is written
    /// alike by Meta's code and timm: `official`, marked ambiguous.
    pub fn default_resize(&self, num_registers: usize) -> ResizeDefault {
        if let Some(r) = &self.graph_resize {
            return ResizeDefault::known(r.semantics, format!("the graph resizes its position embedding {}", r.how));
        }
        if num_registers > 0 {
            let why = "a register model: Meta's DINOv2, timm and transformers all resize by size with antialiasing";
            return ResizeDefault::known(PosResize::SizeAntialias, why);
        }
        match self.source {
            Source::Timm => ResizeDefault::known(
                PosResize::SizeAntialias,
                match &self.timm_config {
                    Some(config) => format!("{config} says timm wrote it; timm resizes by size with antialiasing"),
                    None => "timm's naming; timm resizes by size with antialiasing".into(),
                },
            ),
            Source::HuggingFace => ResizeDefault::known(PosResize::Size, "transformers' naming; transformers resizes by size, no antialiasing"),
            Source::Onnx => ResizeDefault {
                semantics: PosResize::Size,
                reason: match &self.graph_resize_unknown {
                    Some(why) => format!("{why}, which none of official, size and size-aa reproduces; assuming transformers' size-based resize"),
                    None => "the graph holds no position-embedding Resize (exported at its trained grid), so its library cannot be told; assuming transformers' size-based resize".into(),
                },
                ambiguous: true,
            },
            Source::Official if !self.prefix.is_empty() => ResizeDefault::known(
                PosResize::Official,
                format!("a training checkpoint of Meta's code (backbone under '{}'): scale factor with the +0.1 offset", self.prefix),
            ),
            Source::Official => ResizeDefault {
                semantics: PosResize::Official,
                reason: "a bare state dict in the official naming, which Meta's code and timm write alike; assuming Meta's scale factor with the +0.1 offset (timm's is size-aa)".into(),
                ambiguous: true,
            },
        }
    }
}

impl Checkpoint {
    /// Reads `path`; `prefer` selects among several backbones in one file (`teacher`, `student`).
    /// `path` may be a model folder as transformers and timm write them (weights + `config.json`).
    pub fn load(path: &Path, prefer: Option<&str>) -> Result<Self> {
        let path = folder::weights_file(path)?;
        let path = path.as_path();
        let format = Format::detect(path)?;
        let mut head_dim_hint = None;
        let (mut graph_resize, mut graph_resize_unknown, mut fixed_grid) = (None, None, None);
        let mut renamed = Vec::new();
        let raw = match format {
            Format::Pth => pth::read(path)?,
            Format::Safetensors => safetensors::read(path)?,
            Format::Onnx => {
                let w = onnx::read(path)?;
                head_dim_hint = w.head_dim;
                graph_resize = w.resize;
                graph_resize_unknown = w.resize_unknown;
                fixed_grid = w.fixed_grid;
                renamed = w.renamed;
                w.tensors
            }
        };
        let mut canon = naming::canonicalize(raw, prefer, fixed_grid.is_some()).with_context(|| format!("{}", path.display()))?;
        // ONNX: the names canonicalized were given by us; the file's own names are further back.
        let given: Vec<(String, Slot)> = renamed.iter().filter_map(|(g, _, _)| Some((g.clone(), canon.slots.remove(g)?))).collect();
        for (name, file_name, post) in renamed {
            if let Some((_, slot)) = given.iter().find(|(g, _)| *g == name) {
                canon.slots.insert(file_name, Slot { canonical: slot.canonical.clone(), ops: [slot.ops.clone(), post].concat() });
            }
        }
        let hints = match format {
            Format::Onnx => Default::default(),
            _ => folder::config_hints(path)?,
        };
        let timm_config = hints.file.clone().filter(|_| hints.writer == Some(folder::Writer::Timm));
        let source = match format {
            Format::Onnx => Source::Onnx,
            _ if canon.hf_naming => Source::HuggingFace,
            _ if canon.timm_naming || timm_config.is_some() => Source::Timm,
            _ => Source::Official,
        };
        Ok(Self {
            path: path.to_owned(),
            format,
            source,
            tensors: canon.tensors,
            origin: canon.origin,
            prefix: canon.prefix,
            other_prefixes: canon.other_prefixes,
            ignored: canon.ignored,
            slots: canon.slots,
            heads_hint: hints.num_heads,
            config_file: hints.file.clone(),
            timm_config,
            graph_resize,
            graph_resize_unknown,
            fixed_grid,
            head_dim_hint,
            eps_hint: hints.ln_eps,
        })
    }

    /// Number of heads the file itself states (config.json) or implies (ONNX attention scaling).
    pub fn heads_hint(&self, embed_dim: usize) -> Option<usize> {
        self.heads_hint.or(self.head_dim_hint.filter(|&hd| hd > 0 && embed_dim.is_multiple_of(hd)).map(|hd| embed_dim / hd))
    }

    /// The file's own name for a canonical tensor name.
    pub fn source_name(&self, canonical: &str) -> String {
        self.origin.get(canonical).cloned().unwrap_or_else(|| format!("{}{canonical}", self.prefix))
    }

    fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| anyhow!("{}: missing tensor '{}'", self.path.display(), self.source_name(name)))
    }

    fn dims(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.get(name)?.dims().to_vec())
    }

    /// Reads the architecture off the tensor shapes.
    pub fn shape_facts(&self) -> Result<ShapeFacts> {
        let file = self.path.display();
        let cls = self.dims("cls_token")?;
        let embed_dim = *cls.last().ok_or_else(|| anyhow!("{file}: cls_token is a scalar"))?;
        let pe = self.dims("patch_embed.proj.weight")?;
        if pe.len() != 4 || pe[0] != embed_dim || pe[1] != 3 || pe[2] != pe[3] {
            bail!("{file}: tensor '{}' has shape {pe:?}, expected [{embed_dim}, 3, p, p]", self.source_name("patch_embed.proj.weight"));
        }
        let mut depth = 0;
        while self.tensors.contains_key(&format!("blocks.{depth}.norm1.weight")) {
            depth += 1;
        }
        if depth == 0 {
            bail!("{file}: the backbone has no transformer blocks");
        }
        if let Some(extra) = self.tensors.keys().find(|k| {
            k.strip_prefix("blocks.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i >= depth)
        }) {
            bail!("{file}: block indices are not contiguous: found '{}' after {depth} blocks", self.source_name(extra));
        }
        let fc1 = self.dims("blocks.0.mlp.fc1.weight")?;
        let fc2 = self.dims("blocks.0.mlp.fc2.weight")?;
        if fc1.len() != 2 || fc2.len() != 2 {
            bail!("{file}: FFN weights of block 0 are not matrices ({fc1:?}, {fc2:?})");
        }
        let ffn_hidden = fc2[1];
        let ffn = if fc1[0] == 2 * ffn_hidden { FfnKind::SwiGlu } else { FfnKind::Mlp };
        let num_registers = match self.tensors.get("register_tokens") {
            Some(t) => t.dim(1)?,
            None => 0,
        };
        let pos = self.dims("pos_embed")?;
        let n = pos.get(1).copied().unwrap_or(0).saturating_sub(1);
        if let Some((rows, cols)) = self.fixed_grid {
            if pos.len() != 3 || rows * cols != n || pos[2] != embed_dim {
                bail!(
                    "{file}: tensor '{}' has shape {pos:?}, expected [1, 1 + {rows}*{cols}, {embed_dim}] for the graph's fixed {rows}x{cols} grid",
                    self.source_name("pos_embed")
                );
            }
        }
        let pos_grid = if self.fixed_grid.is_some() { 0 } else { (n as f64).sqrt().round() as usize };
        if self.fixed_grid.is_none() && (pos.len() != 3 || pos_grid == 0 || pos_grid * pos_grid != n || pos[2] != embed_dim) {
            bail!(
                "{file}: tensor '{}' has shape {pos:?}, expected [1, 1 + M*M, {embed_dim}] for a square grid",
                self.source_name("pos_embed")
            );
        }
        Ok(ShapeFacts {
            embed_dim,
            patch_size: pe[2],
            depth,
            ffn_hidden,
            ffn,
            num_registers,
            layer_scale: self.tensors.contains_key("blocks.0.ls1.gamma"),
            qkv_bias: self.tensors.contains_key("blocks.0.attn.qkv.bias"),
            pos_grid,
            fixed_grid: self.fixed_grid,
        })
    }

    /// Removes a tensor, checking its shape; the error names the file, the tensor (in the file's
    /// own naming), the expected and the found shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name)?.clone();
        if t.dims() != shape {
            bail!("{}: tensor '{}' has shape {:?}, expected {:?}", self.path.display(), self.source_name(name), t.dims(), shape);
        }
        if let Some(what) = non_finite(&t)? {
            bail!("{}: tensor '{}' {what}: the encoder would compute NaN features", self.path.display(), self.source_name(name));
        }
        self.tensors.remove(name);
        Ok(t)
    }

    /// Like [`Checkpoint::take`] for tensors that may be absent.
    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.tensors.contains_key(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Total number of parameters in the backbone.
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }
}

/// `None` when every value of a float tensor is finite; else what is wrong, e.g. "holds 3
/// non-finite values (NaN or infinite), the first NaN at flat index 17". Weights like these are
/// refused at load: they would turn every feature, and so every figure, into NaN.
pub fn non_finite(t: &Tensor) -> Result<Option<String>> {
    if !t.dtype().is_float() {
        return Ok(None);
    }
    let v = t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    let Some(first) = v.iter().position(|x| !x.is_finite()) else { return Ok(None) };
    let count = v.iter().filter(|x| !x.is_finite()).count();
    Ok(Some(format!(
        "holds {count} non-finite value{} (NaN or infinite), the first {} at flat index {first}",
        if count == 1 { "" } else { "s" },
        v[first]
    )))
}
