//! Head files: `HEAD.safetensors` holding the tensors, with the metadata as JSON both inside its
//! header (`__metadata__["robust_ssl_head"]`, the copy that is read back) and beside it in
//! `HEAD.json` for people and scripts. Both are written to temporary files and renamed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors, View};

use super::head::{Head, HeadMeta, TrainedHead};

const META_KEY: &str = "robust_ssl_head";

/// An f32 tensor as bytes, for the safetensors writer.
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for F32View {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The JSON file written beside `path`.
pub fn sidecar(path: &Path) -> PathBuf {
    path.with_extension("json")
}

impl TrainedHead {
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::atomic::check_parent(path)?;
        let json = serde_json::to_string_pretty(&self.meta)?;
        let mut views = Vec::new();
        for (name, t) in self.head.tensors()? {
            let v = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            views.push((name, F32View { shape: t.dims().to_vec(), bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect() }));
        }
        let tmp = crate::atomic::tmp_beside(path);
        safetensors::serialize_to_file(views, Some(HashMap::from([(META_KEY.to_string(), json.clone())])), &tmp)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        crate::atomic::commit(&tmp, path)?;
        crate::atomic::write(&sidecar(path), (json + "\n").as_bytes())
    }

    /// [`TrainedHead::load`], refusing a head of another task than `task`.
    pub fn load_for(path: &Path, task: super::head::Task, dev: &Device) -> Result<TrainedHead> {
        let head = Self::load(path, dev)?;
        if head.meta.task != task {
            bail!("{}: this is a {} head, but --task is {task}", path.display(), head.meta.task);
        }
        Ok(head)
    }

    /// A head file of ours, or one of DINOv2's published linear heads (a torch checkpoint).
    pub fn load(path: &Path, dev: &Device) -> Result<TrainedHead> {
        if super::published::is_torch_file(path) {
            return super::published::load(path, dev);
        }
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).with_context(|| format!("{shown}: cannot read the head file"))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{shown}: not a valid safetensors file (truncated or corrupt?): {e}"))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
        let json =
            header.metadata().as_ref().and_then(|m| m.get(META_KEY)).with_context(|| {
                format!("{shown}: no robust-ssl head metadata in this file (was it written by `robust-ssl train-head`?)")
            })?;
        let meta: HeadMeta = serde_json::from_str(json).with_context(|| format!("{shown}: unreadable head metadata"))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                bail!("{shown}: tensor '{name}' is {:?}, expected F32", view.dtype());
            }
            let data: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            tensors.insert(name, Tensor::from_vec(data, view.shape(), dev)?);
        }
        let head = Head::from_tensors(&meta, tensors, &shown)?;
        Ok(TrainedHead { head, meta })
    }
}
