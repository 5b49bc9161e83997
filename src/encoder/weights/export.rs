//! Writing fine-tuned weights back in the input checkpoint's own form: a copy of the input file
//! (same container, tensor names, dtypes, and every other entry: heads, optimizer state, the ONNX
//! graph) in which only the backbone's tensors carry the new values. `embed`, `attack` and the
//! tools the input worked with load the result unchanged.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor};
use prost::Message;

use super::onnx::proto::{tensor_proto::DataType, ModelProto};
use super::{Format, Slot, SlotOp};

/// The file's tensors made from `canonical` (torch layouts, canonical names) through `slots`.
/// Files without a class position (timm) fold the class position into `cls_token`, as they store it.
pub fn file_values(slots: &BTreeMap<String, Slot>, canonical: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    let mut canonical = canonical.clone();
    let pos: Vec<&Slot> = slots.values().filter(|s| s.canonical == "pos_embed").collect();
    let stores_class_pos = |s: &&Slot| !matches!(s.ops.first(), Some(SlotOp::Narrow { dim: 1, start: 1, .. }));
    let folds = !pos.is_empty() && !pos.iter().any(stores_class_pos);
    if folds {
        let pos = canonical.get("pos_embed").ok_or_else(|| anyhow!("no pos_embed to write"))?;
        let cls = canonical.get("cls_token").ok_or_else(|| anyhow!("no cls_token to write"))?;
        let folded = (cls + pos.narrow(1, 0, 1)?)?;
        canonical.insert("cls_token".into(), folded);
    }
    slots
        .iter()
        .map(|(name, slot)| {
            let t = canonical.get(&slot.canonical).ok_or_else(|| anyhow!("no value for '{}' (file tensor '{name}')", slot.canonical))?;
            Ok((name.clone(), slot.apply(t)?))
        })
        .collect()
}

/// Little-endian bytes of `t` in `dtype`.
fn le_bytes(t: &Tensor, dtype: DType) -> Result<Vec<u8>> {
    let t = t.to_dtype(dtype)?.flatten_all()?;
    Ok(match dtype {
        DType::F32 => t.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => t.to_vec1::<f64>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => t.to_vec1::<half::f16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::BF16 => t.to_vec1::<half::bf16>()?.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => bail!("cannot write {other:?} weights"),
    })
}

/// Writes `dst`: the checkpoint `src` with its backbone tensors replaced by `values` (file names).
/// The file is written beside `dst` and renamed into place, so `dst` is whole or absent.
pub fn write_like(src: &Path, format: Format, values: &BTreeMap<String, Tensor>, dst: &Path) -> Result<()> {
    let shown = src.display();
    let bytes = match format {
        Format::Safetensors => safetensors_like(src, values),
        Format::Pth => pth_like(src, values),
        Format::Onnx => onnx_like(src, values),
    }
    .with_context(|| format!("{shown}: writing a copy with new weights to {}", dst.display()))?;
    crate::atomic::write(dst, &bytes)
}

fn check_shape(name: &str, found: &[usize], new: &Tensor) -> Result<()> {
    if found != new.dims() {
        bail!("tensor '{name}' is {found:?} in the file, the new value is {:?}", new.dims());
    }
    Ok(())
}

fn safetensors_like(src: &Path, values: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let buffer = std::fs::read(src)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&buffer)?;
    let file = safetensors::SafeTensors::deserialize(&buffer)?;
    let mut owned: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, view) in file.tensors() {
        let data = match values.get(&name) {
            Some(t) => {
                check_shape(&name, view.shape(), t)?;
                let dtype = match view.dtype() {
                    Dtype::F32 => DType::F32,
                    Dtype::F64 => DType::F64,
                    Dtype::F16 => DType::F16,
                    Dtype::BF16 => DType::BF16,
                    other => bail!("tensor '{name}' is {other:?}, not a float type"),
                };
                le_bytes(t, dtype)?
            }
            None => view.data().to_vec(),
        };
        owned.insert(name, (view.dtype(), view.shape().to_vec(), data));
    }
    if let Some(missing) = values.keys().find(|k| !owned.contains_key(*k)) {
        bail!("tensor '{missing}' is not in the file");
    }
    let views = owned.iter().map(|(n, (d, s, b))| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?))).collect::<Result<Vec<_>>>()?;
    Ok(safetensors::tensor::serialize(views, meta.metadata().clone())?)
}

fn pth_like(src: &Path, values: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let (mut zip, infos) = super::pth::open(src)?;
    // storage entry → (byte offset, new bytes)
    let mut patches: BTreeMap<String, Vec<(usize, Vec<u8>)>> = BTreeMap::new();
    for (name, t) in values {
        let info = infos.iter().find(|i| i.name() == name).ok_or_else(|| anyhow!("tensor '{name}' is not in the file"))?;
        let v = &info.view;
        check_shape(name, &v.shape, t)?;
        if !v.is_contiguous() {
            bail!("tensor '{name}' is stored with strides {:?}; only contiguous tensors can be written back", v.stride);
        }
        let offset = v.offset * v.dtype.size_in_bytes();
        patches.entry(info.path.clone()).or_default().push((offset, le_bytes(t, v.dtype)?));
    }
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..zip.len() {
        let name = zip.by_index_raw(i)?.name()?.to_string();
        match patches.get(&name) {
            Some(list) => {
                let mut data = Vec::new();
                zip.by_index(i)?.read_to_end(&mut data)?;
                for (offset, bytes) in list {
                    let end = offset + bytes.len();
                    if end > data.len() {
                        bail!("storage '{name}' holds {} bytes, a tensor in it needs {end}", data.len());
                    }
                    data[*offset..end].copy_from_slice(bytes);
                }
                // torch.save's layout: stored, data aligned to 64 bytes (memory-mappable).
                let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).with_alignment(64);
                out.start_file(name, opts)?;
                out.write_all(&data)?;
            }
            None => out.raw_copy_file(zip.by_index_raw(i)?)?,
        }
    }
    Ok(out.finish()?.into_inner())
}

fn onnx_like(src: &Path, values: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let buffer = std::fs::read(src)?;
    let mut model = ModelProto::decode(buffer.as_slice()).map_err(|e| anyhow!("not a valid ONNX model: {e}"))?;
    let graph = model.graph.as_mut().ok_or_else(|| anyhow!("ONNX model without a graph"))?;
    let mut written = 0;
    for init in graph.initializer.iter_mut() {
        let Some(t) = values.get(&init.name) else { continue };
        let dims: Vec<usize> = init.dims.iter().map(|&d| d as usize).collect();
        check_shape(&init.name, &dims, t)?;
        let dtype = match DataType::try_from(init.data_type) {
            Ok(DataType::Float) => DType::F32,
            Ok(DataType::Double) => DType::F64,
            Ok(DataType::Float16) => DType::F16,
            Ok(DataType::Bfloat16) => DType::BF16,
            _ => bail!("initializer '{}' is not a float tensor", init.name),
        };
        init.raw_data = le_bytes(t, dtype)?;
        init.float_data.clear();
        init.double_data.clear();
        init.int32_data.clear();
        written += 1;
    }
    if written != values.len() {
        bail!("{} of the {} tensors to write are not initializers of the graph", values.len() - written, values.len());
    }
    Ok(model.encode_to_vec())
}
