//! An index over an ONNX graph: which node produces and which nodes consume each value, the
//! constants (initializers and `Constant` nodes), node attributes, and the module each node ran
//! in as torch's exporters record it.

use std::collections::HashMap;

use candle_core::DType;

use super::proto::{tensor_proto::DataType, type_proto, AttributeProto, GraphProto, NodeProto, TensorProto};

pub struct Graph<'a> {
    pub proto: &'a GraphProto,
    producer: HashMap<&'a str, &'a NodeProto>,
    consumers: HashMap<&'a str, Vec<&'a NodeProto>>,
    initializers: HashMap<&'a str, &'a TensorProto>,
}

impl<'a> Graph<'a> {
    pub fn new(proto: &'a GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        for node in &proto.node {
            for out in &node.output {
                producer.insert(out.as_str(), node);
            }
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                consumers.entry(input.as_str()).or_default().push(node);
            }
        }
        let initializers = proto.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        Self { proto, producer, consumers, initializers }
    }

    pub fn producer(&self, value: &str) -> Option<&'a NodeProto> {
        self.producer.get(value).copied()
    }

    pub fn consumers(&self, value: &str) -> &[&'a NodeProto] {
        self.consumers.get(value).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn initializer(&self, value: &str) -> Option<&'a TensorProto> {
        self.initializers.get(value).copied()
    }

    /// The value `value` comes from when followed back through nodes of the `through` op types
    /// (their first input), with the nodes passed, nearest first.
    pub fn trace_back(&self, value: &'a str, through: &[&str]) -> (&'a str, Vec<&'a NodeProto>) {
        let mut value = value;
        let mut passed = Vec::new();
        while let Some(node) = self.producer(value).filter(|n| through.contains(&n.op_type.as_str())) {
            let Some(input) = node.input.first().filter(|i| !i.is_empty()) else { break };
            if passed.len() > 64 {
                break;
            }
            passed.push(node);
            value = input.as_str();
        }
        (value, passed)
    }

    /// The numbers a constant value holds (an initializer or a `Constant` node's output).
    pub fn floats(&self, value: &str) -> Option<Vec<f64>> {
        if let Some(t) = self.initializer(value) {
            return tensor_floats(t);
        }
        let node = self.producer(value).filter(|n| n.op_type == "Constant")?;
        let a = node.attribute.first()?;
        match a.name.as_str() {
            "value" => tensor_floats(a.t.as_ref()?),
            "value_float" => Some(vec![a.f as f64]),
            "value_floats" => Some(a.floats.iter().map(|&v| v as f64).collect()),
            "value_int" => Some(vec![a.i as f64]),
            "value_ints" => Some(a.ints.iter().map(|&v| v as f64).collect()),
            _ => None,
        }
    }

    /// `value` as a list of integers where they are constants: a `Concat` of constant and
    /// computed parts shows the computed parts as `…` (`[…, 3, 5]`).
    pub fn describe_ints(&self, value: &str) -> String {
        let part = |v: &str| match self.floats(v) {
            Some(xs) => xs.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(", "),
            None => "…".into(),
        };
        let parts: Vec<String> = match self.producer(value).filter(|n| n.op_type == "Concat") {
            Some(concat) => concat.input.iter().map(|v| part(v)).collect(),
            None => vec![part(value)],
        };
        match parts.iter().all(|p| p == "…") {
            true => "computed in the graph".into(),
            false => format!("[{}]", parts.join(", ")),
        }
    }

    /// The dimensions of a graph input (`None` for a symbolic or unknown one).
    pub fn input_dims(&self, value: &str) -> Option<Vec<Option<usize>>> {
        let info = self.proto.input.iter().find(|i| i.name == value)?;
        let Some(type_proto::Value::TensorType(t)) = info.r#type.as_ref()?.value.as_ref() else { return None };
        let dims = t.shape.as_ref()?.dim.iter().map(|d| match &d.value {
            Some(super::proto::tensor_shape_proto::dimension::Value::DimValue(v)) if *v > 0 => Some(*v as usize),
            _ => None,
        });
        Some(dims.collect())
    }
}

/// A float or integer tensor's values as f64 (`None` for other types or missing data).
fn tensor_floats(t: &TensorProto) -> Option<Vec<f64>> {
    if let Ok(Some(x)) = super::to_tensor(t) {
        return x.flatten_all().and_then(|x| x.to_dtype(DType::F64)).and_then(|x| x.to_vec1::<f64>()).ok();
    }
    let numel = t.dims.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))?;
    let raw = |width: usize| (Some(t.raw_data.len()) == numel.checked_mul(width)).then_some(t.raw_data.chunks_exact(width));
    match DataType::try_from(t.data_type).ok()? {
        DataType::Int64 if !t.int64_data.is_empty() => Some(t.int64_data.iter().map(|&v| v as f64).collect()),
        DataType::Int64 => Some(raw(8)?.map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64).collect()),
        DataType::Int32 if !t.int32_data.is_empty() => Some(t.int32_data.iter().map(|&v| v as f64).collect()),
        DataType::Int32 => Some(raw(4)?.map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64).collect()),
        _ => None,
    }
}

pub fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub fn attribute_str(node: &NodeProto, name: &str) -> Option<String> {
    attribute(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

pub fn metadata<'a>(node: &'a NodeProto, key: &str) -> Option<&'a str> {
    node.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

/// The module a node ran in, fully qualified where the exporter says so: torch's dynamo exporter
/// lists the scopes in `pkg.torch.onnx.name_scopes` (`['', 'backbone.blocks.0', …,
/// 'backbone.blocks.0.attn.qkv', 'linear']` → `backbone.blocks.0.attn.qkv`); the TorchScript
/// exporter names nodes by their scope (`/blocks.0/attn/qkv/MatMul` → `blocks.0.attn.qkv`).
pub fn module_of(node: &NodeProto) -> String {
    if let Some(scopes) = metadata(node, "pkg.torch.onnx.name_scopes") {
        let scopes = parse_str_list(scopes);
        return match scopes.len() {
            0 | 1 => String::new(),
            n => scopes[n - 2].clone(),
        };
    }
    let parts: Vec<&str> = node.name.trim_start_matches('/').split('/').collect();
    parts[..parts.len().saturating_sub(1)].join(".")
}

/// A Python list of strings as `repr` writes it: `['', 'a.b', "c'd"]`.
pub fn parse_str_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\'' && c != '"' {
            continue;
        }
        let mut item = String::new();
        while let Some(d) = chars.next() {
            match d {
                '\\' => item.extend(chars.next()),
                d if d == c => break,
                d => item.push(d),
            }
        }
        out.push(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_from_scopes_or_name() {
        let mut node = NodeProto { name: "/blocks.3/mlp/fc1/MatMul".into(), ..Default::default() };
        assert_eq!(module_of(&node), "blocks.3.mlp.fc1");
        node.metadata_props.push(super::super::proto::StringStringEntryProto {
            key: "pkg.torch.onnx.name_scopes".into(),
            value: "['', 'backbone.blocks.0', 'backbone.blocks.0.attn', 'backbone.blocks.0.attn.qkv', 'linear']".into(),
        });
        assert_eq!(module_of(&node), "backbone.blocks.0.attn.qkv");
        assert_eq!(parse_str_list(r#"['', "it's", 'a\'b']"#), vec!["", "it's", "a'b"]);
    }
}
