//! PyTorch `.pth` (zip) checkpoints: plain state dicts and nested training checkpoints, flattened
//! to dotted names (`teacher.backbone.blocks.0.norm1.weight`). Non-tensor values are skipped.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{Device, Tensor};

/// Every tensor of the checkpoint with its dotted path.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let shown = path.display();
    let (mut zip, infos) = open(path)?;
    infos
        .into_iter()
        .map(|info| {
            let t = read_tensor(&mut zip, &info).with_context(|| format!("{shown}: tensor '{}'", info.name))?;
            Ok((info.name, t))
        })
        .collect()
}

/// The zip archive and where each tensor lives in it (storage entry, offset, shape, dtype).
pub fn open(path: &Path) -> Result<(zip::ZipArchive<BufReader<File>>, Vec<TensorInfo>)> {
    let shown = path.display();
    let file = File::open(path).with_context(|| format!("{shown}: cannot open"))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        anyhow!(
            "{shown}: not a PyTorch zip checkpoint ({e}); the file is truncated or corrupt, or a \
             legacy pre-1.6 .pth (re-save it with torch.save)"
        )
    })?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect::<Vec<String>>()
        .into_iter()
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| anyhow!("{shown}: zip file without a data.pkl entry: not a torch.save checkpoint"))?;
    let dir = PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
    let obj = {
        let entry = zip.by_name(&pkl).with_context(|| format!("{shown}: cannot read {pkl}"))?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut BufReader::new(entry))
            .and_then(|_| stack.finalize())
            .map_err(|e| anyhow!("{shown}: corrupt pickle in {pkl}: {e}"))?
    };
    let mut infos = Vec::new();
    flatten(obj, "", &dir, &mut infos);
    if infos.is_empty() {
        bail!("{shown}: the checkpoint holds no tensors");
    }
    Ok((zip, infos))
}

fn flatten(obj: Object, prefix: &str, dir: &Path, out: &mut Vec<TensorInfo>) {
    let obj = match obj {
        // A scripted module or an object whose state is a dict.
        Object::Build { callable, args } => match *callable {
            Object::Dict(_) => *callable,
            _ => *args,
        },
        obj => obj,
    };
    let Object::Dict(entries) = obj else { return };
    for (key, value) in entries {
        let Ok(key) = key.unicode() else { continue };
        if key == "_metadata" {
            continue;
        }
        let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
        match value {
            v @ (Object::Dict(_) | Object::Build { .. }) => flatten(v, &name, dir, out),
            v => {
                if let Ok(Some(info)) = v.into_tensor_info(Object::Unicode(name), dir) {
                    out.push(info)
                }
            }
        }
    }
}

fn read_tensor<R: std::io::Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, info: &TensorInfo) -> Result<Tensor> {
    let layout = &info.layout;
    let fortran = layout.is_fortran_contiguous();
    if !layout.is_contiguous() && !fortran {
        bail!("non-contiguous storage layout {layout:?} is not supported");
    }
    let mut reader = zip.by_name(&info.path).with_context(|| format!("missing storage {}", info.path))?;
    let skip = (layout.start_offset() * info.dtype.size_in_bytes()) as u64;
    std::io::copy(&mut reader.by_ref().take(skip), &mut std::io::sink())?;
    let dims = layout.dims().to_vec();
    let numel: usize = dims.iter().product();
    let mut bytes = vec![0u8; numel * info.dtype.size_in_bytes()];
    reader.read_exact(&mut bytes).context("storage shorter than the tensor (truncated file?)")?;
    if fortran && !layout.is_contiguous() && dims.len() > 1 {
        let reversed: Vec<usize> = dims.iter().rev().copied().collect();
        let t = Tensor::from_raw_buffer(&bytes, info.dtype, &reversed, &Device::Cpu)?;
        let perm: Vec<usize> = (0..dims.len()).rev().collect();
        Ok(t.permute(perm)?.contiguous()?)
    } else {
        Ok(Tensor::from_raw_buffer(&bytes, info.dtype, &dims, &Device::Cpu)?)
    }
}
