//! How an ONNX graph builds its first tokens, found by structure rather than by name (exporters
//! leave the class token and the position embedding anonymous): the patch convolution, the
//! `Concat` of the class token with the patch tokens, the `Add` of the position embedding, and
//! the `Resize` between the stored position grid and the image's; then what that `Resize` does.

use super::graph::{attribute, attribute_str, Graph};
use super::proto::NodeProto;
use super::GraphResize;
use crate::encoder::pos_embed::PosResize;

/// Ops a tensor passes through unchanged in value (layout and type only).
const LAYOUT_OPS: &[&str] = &["Reshape", "Transpose", "Flatten", "Cast", "Identity", "Squeeze", "Unsqueeze"];
/// Ops between a stored position embedding and its use: layout, slicing, broadcasting, resizing.
const POS_OPS: &[&str] =
    &["Reshape", "Transpose", "Flatten", "Cast", "Identity", "Squeeze", "Unsqueeze", "Slice", "Gather", "Expand", "Resize"];

/// The token stage of a ViT graph.
pub struct Embedding<'a> {
    /// The patch convolution.
    pub conv: &'a NodeProto,
    /// The value the class token comes from (an initializer where the graph stores it).
    pub cls: Option<&'a str>,
    pub pos: Pos<'a>,
    /// The `Resize` of the position grid, if the graph holds one.
    pub resize: Option<&'a NodeProto>,
    /// The graph input the image comes in by.
    pub image: Option<&'a str>,
}

/// Where the position embedding is stored.
pub enum Pos<'a> {
    /// Not found in an initializer.
    Unknown,
    /// One initializer holds it, class position first: used as stored (`fixed`: no resize on the
    /// way, the embedding of one patch grid) or sliced apart and resized in the graph.
    Whole { init: &'a str, fixed: bool },
    /// The class position and the patch grid in two initializers.
    Split { class: &'a str, patch: &'a str },
}

pub fn find<'a>(g: &Graph<'a>) -> Option<Embedding<'a>> {
    let conv = g.proto.node.iter().find(|n| {
        n.op_type == "Conv" && n.input.get(1).and_then(|w| g.initializer(w)).is_some_and(|w| w.dims.len() == 4 && w.dims[1] == 3)
    })?;
    let image = conv.input.first().map(|x| g.trace_back(x, &["Cast", "Identity", "Sub", "Div", "Mul", "Add"]).0);
    let image = image.filter(|x| g.proto.input.iter().any(|i| &i.name == x));
    // Forward from the convolution through layout ops (skipping `Shape` and other side uses) to
    // the Concat that puts the class token first.
    let mut frontier: Vec<&str> = conv.output.iter().map(String::as_str).collect();
    let mut tokens = None;
    'search: for _ in 0..8 {
        let mut next = Vec::new();
        for value in frontier {
            for node in g.consumers(value) {
                if node.op_type == "Concat" {
                    tokens = Some((*node, value));
                    break 'search;
                }
                if LAYOUT_OPS.contains(&node.op_type.as_str()) {
                    next.extend(node.output.iter().map(String::as_str));
                }
            }
        }
        frontier = next;
    }
    let Some((concat, patches)) = tokens else { return Some(Embedding { conv, cls: None, pos: Pos::Unknown, resize: None, image }) };
    let cls = concat.input.iter().find(|i| i.as_str() != patches).map(|v| g.trace_back(v, &["Expand", "Tile", "Cast", "Identity"]).0);
    let cls = cls.filter(|c| g.initializer(c).is_some());
    let joined = concat.output.first().map(String::as_str).unwrap_or("");
    let add = g.consumers(joined).iter().find(|n| n.op_type == "Add").copied();
    let pos_value = add.and_then(|a| a.input.iter().find(|i| i.as_str() != joined));
    let (mut pos, mut resize) = (Pos::Unknown, None);
    if let Some(value) = pos_value {
        let (value, _) = g.trace_back(value, &["Cast", "Identity"]);
        let resize_in = |passed: &[&'a NodeProto]| passed.iter().find(|n| n.op_type == "Resize").copied();
        match g.producer(value) {
            Some(join) if join.op_type == "Concat" && join.input.len() == 2 => {
                let (class, _) = g.trace_back(&join.input[0], POS_OPS);
                let (patch, passed) = g.trace_back(&join.input[1], POS_OPS);
                resize = resize_in(&passed);
                if g.initializer(class).is_some() && g.initializer(patch).is_some() {
                    pos = if class == patch { Pos::Whole { init: class, fixed: false } } else { Pos::Split { class, patch } };
                }
            }
            _ => {
                let (init, passed) = g.trace_back(value, POS_OPS);
                resize = resize_in(&passed);
                if g.initializer(init).is_some() {
                    pos = Pos::Whole { init, fixed: resize.is_none() };
                }
            }
        }
    }
    // A graph whose position embedding could not be traced: its one Resize, if it holds one.
    if matches!(pos, Pos::Unknown) && resize.is_none() {
        let mut all = g.proto.node.iter().filter(|n| n.op_type == "Resize");
        resize = all.next().filter(|_| all.next().is_none());
    }
    Some(Embedding { conv, cls, pos, resize, image })
}

/// What a `Resize` of the `m × m` position grid computes, in our terms, or why none of them.
/// `official`: bicubic scale factors `(g + 0.1) / m`; `size`: an output size (or scale factors
/// exactly `g / m`); `size-aa`: the same with the `antialias` attribute set.
pub fn resize_semantics(g: &Graph, node: &NodeProto, m: usize) -> Result<GraphResize, String> {
    let what = format!("Resize node '{}'", node.name);
    let mode = attribute_str(node, "mode").unwrap_or_else(|| "nearest".into());
    let a = attribute(node, "cubic_coeff_a").map(|a| a.f).unwrap_or(-0.75);
    let coordinates = attribute_str(node, "coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into());
    let antialias = attribute(node, "antialias").is_some_and(|a| a.i != 0);
    if mode != "cubic" || (a + 0.75).abs() > 1e-6 {
        return Err(format!("{what} interpolates '{mode}' (cubic_coeff_a {a}), not bicubic with A = -0.75"));
    }
    if coordinates != "half_pixel" && coordinates != "pytorch_half_pixel" {
        return Err(format!("{what} maps coordinates by '{coordinates}', not half_pixel"));
    }
    let aa = if antialias { ", antialiased" } else { "" };
    let input = |i: usize| node.input.get(i).map(String::as_str).filter(|v| !v.is_empty());
    // Opset 10 has [X, scales]; opset 11 and later [X, roi, scales, sizes].
    let (scales, sizes) = if node.input.len() == 2 { (input(1), None) } else { (input(2), input(3)) };
    if let Some(sizes) = sizes {
        let semantics = if antialias { PosResize::SizeAntialias } else { PosResize::Size };
        return Ok(GraphResize { semantics, how: format!("to an output size, bicubic{aa} ({what}, sizes {})", g.describe_ints(sizes)) });
    }
    let Some(scales) = scales else { return Err(format!("{what} has neither scales nor sizes")) };
    let Some(values) = g.floats(scales).filter(|v| v.len() >= 2) else {
        return Err(format!("{what} computes its scales in the graph (exported with dynamic shapes?)"));
    };
    let spatial = &values[values.len() - 2..];
    let near = |x: f64| (x - x.round()).abs() < 1e-4 && x.round() >= 1.0;
    let shown: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    if spatial.iter().all(|&s| near(s * m as f64)) {
        let semantics = if antialias { PosResize::SizeAntialias } else { PosResize::Size };
        let grid: Vec<String> = spatial.iter().map(|&s| format!("{}/{m}", (s * m as f64).round())).collect();
        return Ok(GraphResize {
            semantics,
            how: format!("by scale factors g/M, bicubic{aa} ({what}, scales {shown:?} = {})", grid.join(", ")),
        });
    }
    if spatial.iter().all(|&s| near(s * m as f64 - 0.1)) && !antialias {
        let grid: Vec<String> = spatial.iter().map(|&s| format!("({}+0.1)/{m}", (s * m as f64 - 0.1).round())).collect();
        let how = format!("by scale factors with the +0.1 offset, bicubic ({what}, scales {shown:?} = {})", grid.join(", "));
        return Ok(GraphResize { semantics: PosResize::Official, how });
    }
    Err(format!("{what} scales the {m}x{m} grid by {shown:?}{aa}: neither (g+0.1)/{m} without antialiasing nor g/{m}"))
}
