//! DINOv2's published linear heads, read in their own layout: the mmcv checkpoints
//! (`{meta, state_dict, optimizer}`) of `dinov2_vit*14_{nyu,kitti}_linear_head.pth` —
//! `decode_head.conv_depth.{weight [256, 2D, 1, 1], bias}`, no BatchNorm, read on the last block's
//! tokens before the final norm — and `dinov2_vit*14_{ade20k,voc2012}_linear_head.pth` —
//! `decode_head.bn.*` + `decode_head.conv_seg.*` on the final-norm patch tokens. A published
//! file carries no training statistics, so no trivial baseline; its depth range is NYU's
//! (0.001–10 m) unless its name says KITTI (0.001–80 m), as DINOv2's configs define them.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use super::head::{Baseline, DepthForm, Head, HeadMeta, Task, TrainedHead};
use super::layers::Pooling;
use super::train::{Schedule, TrainConfig};
use crate::data::transform::{default_transforms, Transform, DEFAULT_SIZE};
use crate::optim::OptimizerKind;

/// NYU's and KITTI's depth ranges in DINOv2's depth configs (`dinov2/hub/depthers.py`).
pub const NYU_RANGE: (f64, f64) = (0.001, 10.0);
pub const KITTI_RANGE: (f64, f64) = (0.001, 80.0);

/// DINOv2's patch size, for the default transforms of a published head.
const PATCH: usize = 14;

/// Whether `path` holds a torch pickle (a zip archive), not one of our head files.
pub fn is_torch_file(path: &Path) -> bool {
    let mut magic = [0u8; 2];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok() && &magic == b"PK"
}

/// Reads a published DINOv2 linear head.
pub fn load(path: &Path, dev: &Device) -> Result<TrainedHead> {
    let shown = path.display().to_string();
    let raw = crate::encoder::weights::pth::read(path)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in raw {
        let local = name.strip_prefix("state_dict.").unwrap_or(&name);
        if local.starts_with("decode_head.") && !local.ends_with("num_batches_tracked") {
            tensors.insert(local.to_string(), t.to_device(dev)?);
        }
    }
    let dims = |n: &str| tensors.get(n).map(|t| t.dims().to_vec());
    let (task, outputs, feature_dim) = match (dims("decode_head.conv_depth.weight"), dims("decode_head.conv_seg.weight")) {
        (Some(d), None) if d.len() == 4 && d[1] % 2 == 0 => (Task::Depth, d[0], d[1] / 2),
        (None, Some(d)) if d.len() == 4 => (Task::Seg, d[0], d[1]),
        (Some(d), None) => bail!("{shown}: 'decode_head.conv_depth.weight' has shape {d:?}, expected [bins, 2·D, 1, 1]"),
        (Some(_), Some(_)) => bail!("{shown}: both a depth and a segmentation head in one file"),
        _ => {
            let mut found: Vec<&String> = tensors.keys().collect();
            found.sort();
            bail!(
                "{shown}: not a head file: neither robust-ssl's (safetensors with its metadata) nor DINOv2's published layout \
                 ('decode_head.conv_depth.*' or 'decode_head.conv_seg.*' under 'state_dict'); decode_head tensors found: {found:?}"
            )
        }
    };
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let depth_range = (task == Task::Depth).then(|| if name.contains("kitti") { KITTI_RANGE } else { NYU_RANGE });
    if let Some((min, max)) = depth_range {
        eprintln!(
            "note: {shown}: DINOv2's published depth head; bins over {min}–{max} m ({}, from the file name)",
            if max == KITTI_RANGE.1 { "KITTI" } else { "NYU; a KITTI head's name says kitti" }
        );
    }
    let meta = HeadMeta {
        task,
        outputs,
        feature_dim,
        pooling: None::<Pooling>,
        depth_range,
        depth_form: (task == Task::Depth).then_some(DepthForm::Dinov2),
        source: serde_json::json!({ "published": name }),
        encoder_file: None,
        encoder_arch: None,
        dataset: format!("DINOv2's published head {name}"),
        samples: 0,
        transforms: default_transforms(DEFAULT_SIZE, PATCH).iter().map(Transform::describe).collect(),
        augment: vec![],
        train: TrainConfig {
            epochs: 0,
            batch_size: 0,
            lr: 0.0,
            optimizer: OptimizerKind::AdamW { weight_decay: 0.0 },
            schedule: Schedule::Constant,
            warmup_steps: 0,
            seed: 0,
        },
        final_loss: f64::NAN,
        baseline: Baseline::Unknown,
        created_by: "DINOv2 (published)".into(),
    };
    let head = Head::from_tensors(&meta, tensors, &shown)?;
    Ok(TrainedHead { head, meta })
}
