//! PyTorch `.pth` (zip) checkpoints: plain state dicts and nested training checkpoints, flattened
//! to dotted names (`teacher.backbone.blocks.0.norm1.weight`). Non-tensor values are skipped.
//! The pickle is read by our own restricted unpickler ([`super::pickle`]); every size the file
//! declares is checked against what the archive holds before anything is allocated.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};

use super::pickle::{self, TensorRef};

/// Largest `data.pkl` read (torch's are kilobytes; a ViT-g training checkpoint's a few MB).
const MAX_PICKLE: u64 = 256 << 20;

/// A tensor of the checkpoint: its view of a storage, and that storage's entry in the archive.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub view: TensorRef,
    /// The storage's zip entry (`archive/data/0`).
    pub path: String,
}

impl TensorInfo {
    pub fn name(&self) -> &str {
        &self.view.name
    }
}

/// Every tensor of the checkpoint with its dotted path.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let shown = path.display();
    let (mut zip, infos) = open(path)?;
    infos
        .into_iter()
        .map(|info| {
            let t = read_tensor(&mut zip, &info).with_context(|| format!("{shown}: tensor '{}'", info.name()))?;
            Ok((info.view.name, t))
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
        .filter(|n| n.ends_with("data.pkl"))
        .min_by_key(|n| n.len())
        .ok_or_else(|| anyhow!("{shown}: zip file without a data.pkl entry: not a torch.save checkpoint"))?;
    let dir = PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
    let data = {
        let entry = zip.by_name(&pkl).map_err(|e| anyhow!("{shown}: cannot read {pkl}: {e}"))?;
        if entry.size() > MAX_PICKLE {
            bail!("{shown}: {pkl} declares {} bytes, more than a checkpoint's pickle holds ({MAX_PICKLE})", entry.size());
        }
        let mut data = Vec::new();
        entry.take(MAX_PICKLE + 1).read_to_end(&mut data).map_err(|e| anyhow!("{shown}: cannot read {pkl}: {e}"))?;
        if data.len() as u64 > MAX_PICKLE {
            bail!("{shown}: {pkl} holds more than {MAX_PICKLE} bytes: not a checkpoint's pickle");
        }
        data
    };
    let root = pickle::load(&data).map_err(|e| anyhow!("{shown}: corrupt pickle in {pkl}: {e}"))?;
    let views = pickle::tensors(&root).map_err(|e| anyhow!("{shown}: {e}"))?;
    drop(root);
    if views.is_empty() {
        bail!("{shown}: the checkpoint holds no tensors");
    }
    let infos = views.into_iter().map(|view| TensorInfo { path: format!("{}/{}", dir.display(), view.storage), view }).collect();
    Ok((zip, infos))
}

/// The bytes of storage `info.path` the view reads, checked against the entry's size.
fn read_tensor<R: Read + std::io::Seek>(zip: &mut zip::ZipArchive<R>, info: &TensorInfo) -> Result<Tensor> {
    let v = &info.view;
    let es = v.dtype.size_in_bytes();
    let numel = v.numel()?;
    if numel == 0 {
        return Ok(Tensor::zeros(v.shape.as_slice(), v.dtype, &Device::Cpu)?);
    }
    let entry = zip.by_name(&info.path).map_err(|e| anyhow!("missing storage {} ({e})", info.path))?;
    let declared = v.storage_len.checked_mul(es).ok_or_else(|| anyhow!("a storage of {} elements is too large", v.storage_len))?;
    if (entry.size() as u128) < declared as u128 {
        bail!(
            "storage {} holds {} bytes, but is declared as {} elements of {} bytes (truncated file?)",
            info.path,
            entry.size(),
            v.storage_len,
            es
        );
    }
    // What the view reads, and no more than the entry can deliver (a deflated entry can claim
    // any size; its data cannot inflate more than ~1032 times its compressed length).
    let need = v.extent()?.checked_mul(es).ok_or_else(|| anyhow!("tensor too large"))?;
    let deliverable = entry.compressed_size().saturating_mul(1032).saturating_add(64);
    let mut bytes = Vec::with_capacity(need.min(deliverable as usize));
    entry.take(need as u64).read_to_end(&mut bytes)?;
    if bytes.len() != need {
        bail!("storage {} ends after {} bytes; the tensor needs {need} (truncated file?)", info.path, bytes.len());
    }
    let data = if v.is_contiguous() {
        bytes.split_off(v.offset * es)
    } else {
        // A strided view (a transposed or sliced tensor saved as is): gather it row-major.
        let mut out = Vec::with_capacity(numel * es);
        let mut index = vec![0usize; v.shape.len()];
        for _ in 0..numel {
            let at = v.offset + index.iter().zip(&v.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&bytes[at * es..(at + 1) * es]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < v.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        out
    };
    Ok(Tensor::from_raw_buffer(&data, v.dtype, &v.shape, &Device::Cpu)?)
}
