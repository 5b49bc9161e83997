//! ONNX files: the backbone's initializers, named through the graph.
//!
//! Exporters keep parameter names for most initializers but turn MatMul weights into anonymous
//! `onnx::MatMul_*` tensors stored `[in, out]`; their name comes from the consuming node
//! (`/backbone/encoder/layer.0/attention/attention/query/MatMul` →
//! `backbone.encoder.layer.0.attention.attention.query.weight`). A position embedding split by the
//! exporter into a `[1,1,D]` (class) and a `[1,M²,D]` (patch) initializer is put back together.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use prost::Message;

#[allow(clippy::all, dead_code)]
pub(crate) mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
use proto::{tensor_proto::DataType, ModelProto, TensorProto};

use super::SlotOp;
use crate::encoder::pos_embed::PosResize;

/// The initializers, and the attention head width read off the graph's scaling constant.
pub struct OnnxWeights {
    pub tensors: Vec<(String, Tensor)>,
    pub head_dim: Option<usize>,
    /// (name given here, initializer name, how the initializer is cut from the named tensor).
    pub renamed: Vec<(String, String, Vec<SlotOp>)>,
    /// How the graph resizes its position embedding, when it does.
    pub resize: Option<GraphResize>,
}

/// The position-embedding resize an ONNX graph performs.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphResize {
    pub semantics: PosResize,
    /// How it was read, e.g. "by scale factor (Resize node '/Resize', scales)".
    pub how: String,
}

/// Every float initializer with a name derived from the graph where it had none.
pub fn read(path: &Path) -> Result<OnnxWeights> {
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("{shown}: cannot read"))?;
    let model =
        ModelProto::decode(bytes.as_slice()).map_err(|e| anyhow!("{shown}: not a valid ONNX model (truncated or corrupt?): {e}"))?;
    let graph = model.graph.ok_or_else(|| anyhow!("{shown}: ONNX model without a graph"))?;

    let mut consumers: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
    for node in &graph.node {
        for input in &node.input {
            consumers.entry(input.as_str()).or_default().push((node.op_type.as_str(), node.name.as_str()));
        }
    }

    let mut out = Vec::new();
    let mut renamed = Vec::new();
    // Per position embedding: its class part and its patch part, each with its file name.
    type Part = Option<(String, Tensor)>;
    let mut pos_parts: HashMap<String, (Part, Part)> = HashMap::new();
    for init in &graph.initializer {
        let Some(tensor) = to_tensor(init).with_context(|| format!("{shown}: initializer '{}'", init.name))? else {
            continue; // integer shape constants and the like
        };
        let anonymous = init.name.starts_with("onnx::") || !init.name.contains('.');
        if !anonymous {
            out.push((init.name.clone(), tensor));
            continue;
        }
        let Some(&(op, node)) = consumers.get(init.name.as_str()).and_then(|c| c.first()) else {
            continue;
        };
        let scope = scope_of(node);
        match (op, tensor.rank()) {
            ("MatMul", 2) => {
                let name = format!("{scope}.weight");
                renamed.push((name.clone(), init.name.clone(), vec![SlotOp::Transpose]));
                out.push((name, tensor.t()?.contiguous()?))
            }
            (_, 3) if scope.ends_with("embeddings") && tensor.dim(0)? == 1 => {
                let key = format!("{scope}.position_embeddings");
                let entry = pos_parts.entry(key).or_default();
                if tensor.dim(1)? == 1 {
                    entry.0 = Some((init.name.clone(), tensor));
                } else {
                    entry.1 = Some((init.name.clone(), tensor));
                }
            }
            _ => out.push((init.name.clone(), tensor)),
        }
    }
    for (name, parts) in pos_parts {
        match parts {
            (Some((cls_name, cls)), Some((patch_name, patch))) => {
                renamed.push((name.clone(), cls_name, vec![SlotOp::Narrow { dim: 1, start: 0, len: 1 }]));
                renamed.push((name.clone(), patch_name, vec![SlotOp::Narrow { dim: 1, start: 1, len: patch.dim(1)? }]));
                out.push((name, Tensor::cat(&[cls, patch], 1)?))
            }
            (None, Some((patch_name, patch))) => {
                renamed.push((name.clone(), patch_name, vec![]));
                out.push((name, patch))
            }
            (Some(_), None) => bail!("{shown}: found the class part of '{name}' but not its patch grid"),
            (None, None) => {}
        }
    }
    Ok(OnnxWeights { tensors: out, head_dim: head_dim(&graph), renamed, resize: None })
}

/// Head width from the first attention's scaling: `q·hd^-0.5` (one Mul), `q·hd^-0.25` and
/// `k·hd^-0.25` (two Muls, as transformers exports), or `/ √hd` (Div).
fn head_dim(graph: &proto::GraphProto) -> Option<usize> {
    let mut scalars: HashMap<&str, f64> = HashMap::new();
    for node in graph.node.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(out), Some(t)) = (node.output.first(), node.attribute.first().and_then(|a| a.t.as_ref())) {
            if let Ok(Some(v)) = to_tensor(t) {
                if v.elem_count() == 1 {
                    if let Ok(x) = v.flatten_all().and_then(|v| v.to_dtype(DType::F64)).and_then(|v| v.to_vec1::<f64>()) {
                        scalars.insert(out.as_str(), x[0]);
                    }
                }
            }
        }
    }
    let first_attention = |n: &&proto::NodeProto| {
        n.name.contains("attention") || n.name.contains("/attn/")
    } && (n.name.contains("layer.0/") || n.name.contains("blocks.0/"));
    let mut muls: Vec<f64> = Vec::new();
    let mut divs: Vec<f64> = Vec::new();
    for node in graph.node.iter().filter(first_attention) {
        for input in &node.input {
            if let Some(&c) = scalars.get(input.as_str()) {
                match node.op_type.as_str() {
                    "Mul" if c > 0.0 && c < 1.0 => muls.push(c),
                    "Div" if c > 1.0 => divs.push(c),
                    _ => {}
                }
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

/// `/backbone/encoder/layer.0/attention/attention/query/MatMul` → `backbone.encoder.layer.0.attention.attention.query`.
fn scope_of(node_name: &str) -> String {
    let parts: Vec<&str> = node_name.trim_start_matches('/').split('/').collect();
    parts[..parts.len().saturating_sub(1)].join(".")
}

fn to_tensor(t: &TensorProto) -> Result<Option<Tensor>> {
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
    let numel: usize = dims.iter().product();
    let tensor = if !t.raw_data.is_empty() {
        if t.raw_data.len() != numel * dtype.size_in_bytes() {
            bail!("holds {} bytes, shape {dims:?} needs {}", t.raw_data.len(), numel * dtype.size_in_bytes());
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
    #[test]
    fn scope_drops_the_op() {
        assert_eq!(
            super::scope_of("/backbone/encoder/layer.0/attention/attention/query/MatMul"),
            "backbone.encoder.layer.0.attention.attention.query"
        );
        assert_eq!(super::scope_of("/blocks.3/mlp/fc1/MatMul"), "blocks.3.mlp.fc1");
    }
}
