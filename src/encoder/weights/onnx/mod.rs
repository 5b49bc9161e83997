//! ONNX files: the backbone's initializers, named through the graph.
//!
//! Exporters keep parameter names for most initializers but turn Linear weights into anonymous
//! tensors stored `[in, out]` (`onnx::MatMul_*` from the TorchScript exporter, `val_N` from the
//! dynamo exporter); their name comes from the module of the consuming MatMul: the node's name
//! (`/backbone/encoder/layer.0/attention/attention/query/MatMul` →
//! `backbone.encoder.layer.0.attention.attention.query.weight`) or the dynamo exporter's
//! `pkg.torch.onnx.name_scopes` metadata. The class token and the position embedding are found by
//! the graph's structure ([`embed`]): a position embedding split into a class part and a patch
//! grid (`[1,M²,D]` tokens or `[1,D,M,M]` NCHW) is put back together; one baked in by the dynamo
//! exporter, already resized to the export grid, fixes the graph to that grid. The `Resize` of
//! the position grid tells the resize semantics of the library exported.

mod embed;
mod graph;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use prost::Message;

#[allow(clippy::all, dead_code)]
pub(crate) mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
use proto::{tensor_proto::DataType, ModelProto, TensorProto};

use super::naming::{HF_MARKER, OFFICIAL_MARKER};
use super::SlotOp;
use crate::encoder::pos_embed::PosResize;
use embed::Pos;
use graph::{module_of, Graph};

/// The initializers, and the attention head width read off the graph's scaling constant.
pub struct OnnxWeights {
    pub tensors: Vec<(String, Tensor)>,
    pub head_dim: Option<usize>,
    /// (name given here, initializer name, how the initializer is cut from the named tensor).
    pub renamed: Vec<(String, String, Vec<SlotOp>)>,
    /// How the graph resizes its position embedding, when it does.
    pub resize: Option<GraphResize>,
    /// Why the graph's position-embedding resize is none of the known semantics, if so.
    pub resize_unknown: Option<String>,
    /// The patch grid (rows, columns) of a position embedding baked into the graph at export:
    /// the graph runs at that grid only.
    pub fixed_grid: Option<(usize, usize)>,
}

/// The position-embedding resize an ONNX graph performs.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphResize {
    pub semantics: PosResize,
    /// How it was read, e.g. "by scale factors with the +0.1 offset (Resize node '/Resize', scales …)".
    pub how: String,
}

/// Exporters name what they create themselves (`onnx::MatMul_262`, `val_38`, `expand`, `cat_1`);
/// parameters keep their dotted module path.
fn anonymous(name: &str) -> bool {
    name.starts_with("onnx::") || !name.contains('.')
}

/// The file's naming of the backbone, read off the patch convolution's weight.
struct Naming {
    prefix: String,
    hf: bool,
}

impl Naming {
    fn of(conv_weight: &str) -> Option<Self> {
        if let Some(prefix) = conv_weight.strip_suffix(HF_MARKER) {
            return Some(Self { prefix: prefix.into(), hf: true });
        }
        conv_weight.strip_suffix(OFFICIAL_MARKER).map(|prefix| Self { prefix: prefix.into(), hf: false })
    }

    fn cls(&self) -> String {
        format!("{}{}", self.prefix, if self.hf { "embeddings.cls_token" } else { "cls_token" })
    }

    fn pos(&self) -> String {
        format!("{}{}", self.prefix, if self.hf { "embeddings.position_embeddings" } else { "pos_embed" })
    }
}

/// Every float initializer with a name derived from the graph where it had none. Anonymous
/// initializers that are not backbone weights (shape constants, attention masks, scales) are left out.
pub fn read(path: &Path) -> Result<OnnxWeights> {
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("{shown}: cannot read"))?;
    let model =
        ModelProto::decode(bytes.as_slice()).map_err(|e| anyhow!("{shown}: not a valid ONNX model (truncated or corrupt?): {e}"))?;
    let graph = model.graph.ok_or_else(|| anyhow!("{shown}: ONNX model without a graph"))?;
    let g = Graph::new(&graph);
    let tensor = |name: &str| -> Result<Option<Tensor>> {
        match g.initializer(name) {
            Some(init) => to_tensor(init).with_context(|| format!("{shown}: initializer '{name}'")),
            None => Ok(None),
        }
    };

    // Modules that own named parameters, to complete a scope the exporter shortened
    // (`blocks.0.attn.qkv` in a graph whose parameters are `backbone.blocks.0.attn.qkv.*`).
    let modules: BTreeSet<&str> =
        graph.initializer.iter().filter(|t| !anonymous(&t.name)).filter_map(|t| t.name.rsplit_once('.').map(|(m, _)| m)).collect();
    let embedding = embed::find(&g);
    let naming = embedding.as_ref().and_then(|e| e.conv.input.get(1)).and_then(|w| Naming::of(w));
    let full_module = |scope: String| -> String {
        if scope.is_empty() || modules.contains(scope.as_str()) {
            return scope;
        }
        let dotted = format!(".{scope}");
        if let Some(m) = modules.iter().find(|m| m.ends_with(&dotted)) {
            return m.to_string();
        }
        match &naming {
            Some(n) if !scope.starts_with(&n.prefix) => format!("{}{scope}", n.prefix),
            _ => scope,
        }
    };

    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut renamed = Vec::new();
    // Anonymous initializers of the token stage: initializer → (name given, its tensor, ops), or
    // `None` where it is already part of a tensor put together.
    let mut given: HashMap<String, Option<(String, Tensor, Vec<SlotOp>)>> = HashMap::new();
    let (mut resize, mut resize_unknown, mut fixed_grid) = (None, None, None);
    if let (Some(e), Some(naming)) = (&embedding, &naming) {
        if let Some(cls) = e.cls.filter(|c| anonymous(c)) {
            if let Some(t) = tensor(cls)? {
                given.insert(cls.into(), Some((naming.cls(), t, vec![])));
            }
        }
        let mut grid = None;
        match e.pos {
            Pos::Whole { init, fixed } if anonymous(init) => {
                let t = tensor(init)?.filter(|t| t.rank() == 3 && t.dim(0).ok() == Some(1));
                let Some(t) = t else { bail!("{shown}: the position embedding '{init}' is not a float tensor [1, 1+N, D]") };
                if fixed {
                    let n = t.dim(1)?.saturating_sub(1);
                    let (rows, cols, pixels) = export_grid(&g, e, n).map_err(|why| anyhow!("{shown}: {why}"))?;
                    fixed_grid = Some((rows, cols));
                    resize = Some(baked_resize(&g, naming, init, (rows, cols), pixels));
                } else {
                    grid = square(t.dim(1)?.saturating_sub(1));
                }
                given.insert(init.into(), Some((naming.pos(), t, vec![])));
            }
            Pos::Split { class, patch } if anonymous(class) && anonymous(patch) => {
                let c = tensor(class)?.filter(|c| c.rank() == 3 && c.dims()[..2] == [1, 1]);
                let (Some(c), Some(p)) = (c, tensor(patch)?) else {
                    bail!("{shown}: the position embedding's parts '{class}' (class, [1, 1, D]) and '{patch}' (patch grid) are not float tensors of those shapes")
                };
                let (patch_tokens, m, ops) = patch_tokens(&p, c.dim(2)?).map_err(|why| anyhow!("{shown}: initializer '{patch}': {why}"))?;
                grid = Some(m);
                let name = naming.pos();
                renamed.push((name.clone(), class.to_string(), vec![SlotOp::Narrow { dim: 1, start: 0, len: 1 }]));
                renamed.push((name.clone(), patch.to_string(), ops));
                out.push((name, Tensor::cat(&[&c, &patch_tokens], 1)?));
                given.insert(class.into(), None);
                given.insert(patch.into(), None);
            }
            _ => grid = named_grid(&graph),
        }
        if let (Some(node), None) = (e.resize, &resize) {
            match grid.ok_or_else(|| format!("the grid that Resize node '{}' resizes is unknown", node.name)) {
                Ok(m) => match embed::resize_semantics(&g, node, m) {
                    Ok(r) => resize = Some(r),
                    Err(why) => resize_unknown = Some(why),
                },
                Err(why) => resize_unknown = Some(why),
            }
        }
    }

    for init in &graph.initializer {
        if let Some(token_stage) = given.remove(&init.name) {
            if let Some((name, t, ops)) = token_stage {
                renamed.push((name.clone(), init.name.clone(), ops));
                out.push((name, t));
            }
            continue;
        }
        let Some(t) = tensor(&init.name)? else { continue }; // integer shape constants and the like
        if !anonymous(&init.name) {
            out.push((init.name.clone(), t));
            continue;
        }
        // A Linear: MatMul(x, W [in, out]), or Gemm(x, W, b) with W [out, in] where transB is set.
        let linear = g.consumers(&init.name).iter().find_map(|n| {
            let at = n.input.iter().position(|i| *i == init.name)?;
            match (n.op_type.as_str(), at) {
                ("MatMul", 1) => Some((*n, "weight", true)),
                ("Gemm", 1) => Some((*n, "weight", graph::attribute(n, "transB").is_none_or(|a| a.i == 0))),
                ("Gemm", 2) => Some((*n, "bias", false)),
                _ => None,
            }
        });
        match linear {
            Some((node, "weight", transposed)) if t.rank() == 2 => {
                let name = format!("{}.weight", full_module(module_of(node)));
                let (ops, t) = if transposed { (vec![SlotOp::Transpose], t.t()?.contiguous()?) } else { (vec![], t) };
                renamed.push((name.clone(), init.name.clone(), ops));
                out.push((name, t));
            }
            Some((node, "bias", _)) if t.rank() == 1 => {
                let name = format!("{}.bias", full_module(module_of(node)));
                renamed.push((name.clone(), init.name.clone(), vec![]));
                out.push((name, t));
            }
            _ => {} // constants of the graph: attention masks, scales
        }
    }
    Ok(OnnxWeights { tensors: out, head_dim: head_dim(&g), renamed, resize, resize_unknown, fixed_grid })
}

fn square(n: usize) -> Option<usize> {
    let m = (n as f64).sqrt().round() as usize;
    (m * m == n && m > 0).then_some(m)
}

/// The side of the grid of a named position embedding `[1, 1+M², D]` (or `[1, M², D]`).
fn named_grid(graph: &proto::GraphProto) -> Option<usize> {
    let pos = graph.initializer.iter().find(|t| t.name.ends_with("pos_embed") || t.name.ends_with("position_embeddings"))?;
    let n = *pos.dims.get(1)? as usize;
    square(n.saturating_sub(1)).or_else(|| square(n))
}

/// A patch grid stored `[1, M², D]`, `[1, D, M, M]` (NCHW) or `[1, M, M, D]` as `[1, M², D]`, its
/// side, and the ops that cut it back out of the whole embedding `[1, 1+M², D]`.
fn patch_tokens(p: &Tensor, d: usize) -> std::result::Result<(Tensor, usize, Vec<SlotOp>), String> {
    let dims = p.dims().to_vec();
    let bad = || format!("shape {dims:?} is not a patch grid [1, M*M, {d}], [1, {d}, M, M] or [1, M, M, {d}]");
    let tokens = |t: candle_core::Result<Tensor>| t.and_then(|t| t.contiguous()).map_err(|e| e.to_string());
    match *dims.as_slice() {
        [1, n, dd] if dd == d => {
            let m = square(n).ok_or_else(bad)?;
            Ok((p.clone(), m, vec![SlotOp::Narrow { dim: 1, start: 1, len: n }]))
        }
        [1, dd, a, b] if dd == d && a == b => {
            let ops =
                vec![SlotOp::Narrow { dim: 1, start: 1, len: a * b }, SlotOp::Reshape(vec![1, a, b, d]), SlotOp::Permute(vec![0, 3, 1, 2])];
            Ok((tokens(p.permute((0, 2, 3, 1)).and_then(|t| t.contiguous()).and_then(|t| t.reshape((1, a * b, d))))?, a, ops))
        }
        [1, a, b, dd] if dd == d && a == b => {
            let ops = vec![SlotOp::Narrow { dim: 1, start: 1, len: a * b }, SlotOp::Reshape(vec![1, a, b, d])];
            Ok((tokens(p.reshape((1, a * b, d)))?, a, ops))
        }
        _ => Err(bad()),
    }
}

/// The patch grid of the graph's fixed input size, checked against the `n` positions of a
/// position embedding baked in at export, and the input size in pixels.
fn export_grid(g: &Graph, e: &embed::Embedding, n: usize) -> std::result::Result<(usize, usize, (usize, usize)), String> {
    let patch = e.conv.input.get(1).and_then(|w| g.initializer(w)).and_then(|w| w.dims.get(2)).map(|&p| p as usize).unwrap_or(0);
    let dims = e.image.and_then(|x| g.input_dims(x));
    let baked = "the position embedding is baked into the graph (no Resize node: the exporter computed it for one input size)";
    let (h, w) = match dims.as_deref() {
        Some(&[_, _, Some(h), Some(w)]) => (h, w),
        _ => return Err(format!("{baked}, but the graph input has no fixed size [N, 3, H, W] to tell its patch grid ({n} positions)")),
    };
    if patch == 0 || h % patch != 0 || w % patch != 0 || (h / patch) * (w / patch) != n {
        return Err(format!("{baked}, but its {n} patch positions do not fit the {h}x{w} px input at patch {patch}"));
    }
    Ok((h / patch, w / patch, (h, w)))
}

/// The graph's resize of a position embedding baked in at export: none at run time. The
/// semantics recorded are those of the library that computed it (the classes the exporter lists,
/// else the naming), though they change nothing at the one grid the graph runs at.
fn baked_resize(g: &Graph, naming: &Naming, init: &str, grid: (usize, usize), pixels: (usize, usize)) -> GraphResize {
    let classes = g.proto.node.iter().find_map(|n| graph::metadata(n, "pkg.torch.onnx.class_hierarchy")).unwrap_or("");
    let (semantics, library) = if classes.contains("'timm.") {
        (PosResize::SizeAntialias, "timm")
    } else if classes.contains("'transformers.") || naming.hf {
        (PosResize::Size, "transformers")
    } else {
        (PosResize::Official, "Meta's DINO code")
    };
    let how = format!(
        "once, at export time: the graph holds no Resize node; initializer '{init}' is the position embedding the \
         exporter computed for the {}x{} patch grid of its {}x{} px input, so the file runs at that size only \
         ({semantics} is how {library} resizes, which made it)",
        grid.0, grid.1, pixels.0, pixels.1
    );
    GraphResize { semantics, how }
}

/// Head width from the first attention's scaling: `q·hd^-0.5` (one Mul), `q·hd^-0.25` and
/// `k·hd^-0.25` (two Muls, as transformers exports), or `/ √hd` (Div). The first attention is told
/// by the module its nodes ran in (node names or the dynamo exporter's scopes); the scale is a
/// `Constant` node or a scalar initializer.
fn head_dim(g: &Graph) -> Option<usize> {
    let scalar = |v: &str| g.floats(v).filter(|x| x.len() == 1).map(|x| x[0]);
    let first_attention = |n: &&proto::NodeProto| {
        let scope = format!(".{}.", module_of(n));
        (scope.contains(".attn.") || scope.contains("attention."))
            && (scope.contains(".layer.0.") || scope.contains(".layers.0.") || scope.contains(".blocks.0."))
    };
    let mut muls: Vec<f64> = Vec::new();
    let mut divs: Vec<f64> = Vec::new();
    for node in g.proto.node.iter().filter(|n| n.op_type == "Mul" || n.op_type == "Div").filter(first_attention) {
        for c in node.input.iter().filter_map(|i| scalar(i)) {
            match node.op_type.as_str() {
                "Mul" if c > 0.0 && c < 1.0 => muls.push(c),
                "Div" if c > 1.0 => divs.push(c),
                _ => {}
            }
        }
    }
    let integral = |x: f64| (x.round() - x).abs() < 1e-3 * x.max(1.0) && x >= 1.0;
    let candidate = match (muls.as_slice(), divs.as_slice()) {
        ([a, b, ..], _) if (a - b).abs() < 1e-9 => a.powi(-4),
        ([a], _) => a.powi(-2),
        ([], [d, ..]) => d * d,
        _ => return None,
    };
    integral(candidate).then(|| candidate.round() as usize)
}

fn to_tensor(t: &TensorProto) -> Result<Option<Tensor>> {
    if t.dims.iter().any(|&d| d < 0) {
        bail!("has a negative dimension {:?}", t.dims);
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    if t.data_location == proto::tensor_proto::DataLocation::External as i32 {
        bail!("external tensor data is not supported; save the model with all tensors inside the file");
    }
    let dtype = match DataType::try_from(t.data_type) {
        Ok(DataType::Float) => DType::F32,
        Ok(DataType::Double) => DType::F64,
        Ok(DataType::Float16) => DType::F16,
        Ok(DataType::Bfloat16) => DType::BF16,
        _ => return Ok(None),
    };
    let numel = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| anyhow!("shape {dims:?} is too large"))?;
    let tensor = if !t.raw_data.is_empty() {
        if Some(t.raw_data.len()) != numel.checked_mul(dtype.size_in_bytes()) {
            bail!("holds {} bytes, shape {dims:?} of {dtype:?} needs {numel} values", t.raw_data.len());
        }
        Tensor::from_raw_buffer(&t.raw_data, dtype, &dims, &Device::Cpu)?
    } else if dtype == DType::F32 && t.float_data.len() == numel {
        Tensor::from_slice(&t.float_data, dims.as_slice(), &Device::Cpu)?
    } else if dtype == DType::F64 && t.double_data.len() == numel {
        Tensor::from_slice(&t.double_data, dims.as_slice(), &Device::Cpu)?
    } else {
        bail!("shape {dims:?} but its data is missing or of another length");
    };
    Ok(Some(tensor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_grids_in_every_layout_come_back_as_tokens() {
        let d = 3; // unlike the grid side, so that the layouts differ
        let tokens = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((1, 4, d)).unwrap();
        let nchw = tokens.reshape((1, 2, 2, d)).unwrap().permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
        let nhwc = tokens.reshape((1, 2, 2, d)).unwrap();
        let whole = Tensor::cat(&[&Tensor::zeros((1, 1, d), DType::F32, &Device::Cpu).unwrap(), &tokens], 1).unwrap();
        for stored in [&tokens, &nchw, &nhwc] {
            let (t, m, ops) = patch_tokens(stored, d).unwrap();
            assert_eq!((t.to_vec3::<f32>().unwrap(), m), (tokens.to_vec3::<f32>().unwrap(), 2));
            let back = super::super::Slot { canonical: "pos_embed".into(), ops }.apply(&whole).unwrap();
            assert_eq!(back.dims(), stored.dims());
            assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), stored.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        assert!(patch_tokens(&Tensor::zeros((1, 5, d), DType::F32, &Device::Cpu).unwrap(), d).unwrap_err().contains("[1, 5, 3]"));
    }
}
