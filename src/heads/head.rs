//! A trained head as one value: which task, its layers, and the metadata that says what it was
//! trained on. Tensor names follow the reference implementations so their head checkpoints map
//! onto ours: `linear.*` (DINOv2 linear classifier), `decode_head.bn.*` +
//! `decode_head.conv_seg.*` (mmseg BNHead) and `decode_head.conv_depth.*` (DINOv2 depth BNHead);
//! 1×1 convolution weights are stored `[out, in, 1, 1]` as there.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::layers::{BatchNorm, DepthHead, LinearProbe, Pooling, SegHead};
use super::train::TrainConfig;
use crate::encoder::Reads;
use crate::metrics::DepthRange;
use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Classification: a linear probe.
    Cls,
    /// Semantic segmentation: BatchNorm + 1×1 convolution.
    Seg,
    /// Monocular depth: DINOv2's BNHead with uniform bins.
    Depth,
}

/// What a `task` head reading `reads` keeps per sample: pooled vectors, or every patch token
/// (after or before the final norm).
pub fn layout_of(task: Task, reads: Reads) -> crate::features::Layout {
    use crate::features::Layout;
    match (task, reads) {
        (Task::Cls, _) => Layout::Pooled,
        (_, Reads::Final) => Layout::Tokens,
        (_, Reads::PreNorm) => Layout::PreNormTokens,
    }
}

crate::choices!(Task { Cls = "cls", Seg = "seg", Depth = "depth" });

/// The depth head's form: DINOv2's linear head (the last block's tokens before the final norm,
/// no BatchNorm: what DINOv2 and the study train, and DINOv2's published heads) or `bn` (final-norm
/// tokens and a BatchNorm on the 2D features: robust-ssl's depth head before it followed DINOv2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthForm {
    Dinov2,
    Bn,
}
crate::choices!(DepthForm { Dinov2 = "dinov2", Bn = "bn" });

/// The trivial predictor of the training split, reported beside every evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// Always the most frequent class (pixels, for segmentation) of the training targets.
    MajorityClass(u32),
    /// Always the mean valid depth of the training targets, in metres.
    MeanDepth(f64),
    /// Not known: the head file carries no training statistics (a published head).
    Unknown,
}

/// What a head file says about its head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadMeta {
    pub task: Task,
    /// Classes (classification, segmentation) or bins (depth).
    pub outputs: usize,
    /// Width of the features the head reads (`D`, or `3·H·W` for the pixel baseline).
    pub feature_dim: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_range: Option<(f64, f64)>,
    /// Depth heads: the form (files written before it existed hold the `bn` form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_form: Option<DepthForm>,
    /// The encoder's identity (file hash, load options), or `"pixels"`.
    pub source: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_arch: Option<String>,
    pub dataset: String,
    pub samples: usize,
    pub transforms: Vec<String>,
    /// The training transforms with their random augmentation, where the recipe had one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub augment: Vec<String>,
    pub train: TrainConfig,
    pub final_loss: f64,
    pub baseline: Baseline,
    pub created_by: String,
}

impl HeadMeta {
    /// A depth head's form (`bn` for files that do not say).
    pub fn depth_form(&self) -> DepthForm {
        self.depth_form.unwrap_or(DepthForm::Bn)
    }

    /// Which encoder outputs the head reads.
    pub fn reads(&self) -> Reads {
        match self.task {
            Task::Depth if self.depth_form() == DepthForm::Dinov2 => Reads::PreNorm,
            _ => Reads::Final,
        }
    }

    /// What its features keep per sample.
    pub fn layout(&self) -> crate::features::Layout {
        layout_of(self.task, self.reads())
    }

    /// A depth head's valid range (`min < depth < max`), as losses and metrics take it.
    pub fn range(&self) -> Option<DepthRange> {
        self.depth_range.map(|(min, max)| DepthRange { min, max })
    }
}

pub enum Head {
    Linear(LinearProbe),
    Seg(SegHead),
    Depth(DepthHead),
}

/// A head and its metadata.
pub struct TrainedHead {
    pub head: Head,
    pub meta: HeadMeta,
}

/// Normal(0, std) values from a seeded generator (Box–Muller), the same on every machine.
fn normal(n: usize, std: f64, rng: &mut SplitMix64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = rng.uniform(f64::MIN_POSITIVE, 1.0);
            let u2 = rng.uniform(0.0, 1.0);
            (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

fn bn_init(dim: usize, dev: &Device, vars: &mut Vec<Var>) -> Result<BatchNorm> {
    let w = Var::ones(dim, DType::F32, dev)?;
    let b = Var::zeros(dim, DType::F32, dev)?;
    vars.extend([w.clone(), b.clone()]);
    Ok(BatchNorm {
        weight: w.as_tensor().clone(),
        bias: b.as_tensor().clone(),
        running_mean: Tensor::zeros(dim, DType::F32, dev)?,
        running_var: Tensor::ones(dim, DType::F32, dev)?,
        eps: 1e-5,
    })
}

impl Head {
    /// A fresh head for `meta` (weights N(0, 0.01), biases 0, BatchNorm identity, as the
    /// reference heads initialise), and its trainable variables.
    pub fn init(meta: &HeadMeta, seed: u64, dev: &Device) -> Result<(Head, Vec<Var>)> {
        let mut rng = SplitMix64::new(seed ^ 0x4EAD);
        let mut vars = Vec::new();
        let mut linear = |k: usize, f: usize, vars: &mut Vec<Var>| -> Result<(Tensor, Tensor)> {
            let w = Var::from_vec(normal(k * f, 0.01, &mut rng), (k, f), dev)?;
            let b = Var::zeros(k, DType::F32, dev)?;
            vars.extend([w.clone(), b.clone()]);
            Ok((w.as_tensor().clone(), b.as_tensor().clone()))
        };
        let (k, d) = (meta.outputs, meta.feature_dim);
        let head = match meta.task {
            Task::Cls => {
                let pooling = meta.pooling.unwrap_or(Pooling::Cls);
                let f = if pooling == Pooling::ClsMeanPatch { 2 * d } else { d };
                let (weight, bias) = linear(k, f, &mut vars)?;
                Head::Linear(LinearProbe { weight, bias, pooling })
            }
            Task::Seg => {
                let bn = bn_init(d, dev, &mut vars)?;
                let (weight, bias) = linear(k, d, &mut vars)?;
                Head::Seg(SegHead { bn, weight, bias })
            }
            Task::Depth => {
                let (min_depth, max_depth) = meta.depth_range.context("a depth head needs a depth range")?;
                let bn = (meta.depth_form() == DepthForm::Bn).then(|| bn_init(2 * d, dev, &mut vars)).transpose()?;
                let (weight, bias) = linear(k, 2 * d, &mut vars)?;
                Head::Depth(DepthHead { bn, weight, bias, min_depth, max_depth })
            }
        };
        Ok((head, vars))
    }

    /// The BatchNorm of the segmentation and depth heads.
    pub fn batch_norm_mut(&mut self) -> Option<&mut BatchNorm> {
        match self {
            Head::Linear(_) => None,
            Head::Seg(h) => Some(&mut h.bn),
            Head::Depth(h) => h.bn.as_mut(),
        }
    }

    /// Named tensors, for saving.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let conv = |w: &Tensor| -> Result<Tensor> { Ok(w.unsqueeze(2)?.unsqueeze(3)?) };
        let bn = |bn: &BatchNorm| {
            vec![
                ("decode_head.bn.weight".to_string(), bn.weight.clone()),
                ("decode_head.bn.bias".to_string(), bn.bias.clone()),
                ("decode_head.bn.running_mean".to_string(), bn.running_mean.clone()),
                ("decode_head.bn.running_var".to_string(), bn.running_var.clone()),
            ]
        };
        Ok(match self {
            Head::Linear(p) => vec![("linear.weight".into(), p.weight.clone()), ("linear.bias".into(), p.bias.clone())],
            Head::Seg(h) => {
                let mut v = bn(&h.bn);
                v.push(("decode_head.conv_seg.weight".into(), conv(&h.weight)?));
                v.push(("decode_head.conv_seg.bias".into(), h.bias.clone()));
                v
            }
            Head::Depth(h) => {
                let mut v = h.bn.as_ref().map(bn).unwrap_or_default();
                v.push(("decode_head.conv_depth.weight".into(), conv(&h.weight)?));
                v.push(("decode_head.conv_depth.bias".into(), h.bias.clone()));
                v
            }
        })
    }

    /// Rebuilds a head from named tensors, checking every name and shape against `meta`.
    pub fn from_tensors(meta: &HeadMeta, mut t: HashMap<String, Tensor>, file: &str) -> Result<Head> {
        let (k, d) = (meta.outputs, meta.feature_dim);
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let v = t.remove(name).with_context(|| format!("{file}: no tensor '{name}' (is this a {} head?)", meta.task))?;
            if v.dims() != shape {
                bail!("{file}: tensor '{name}' has shape {:?}, expected {shape:?}", v.dims());
            }
            if let Some(what) = crate::encoder::weights::non_finite(&v)? {
                bail!("{file}: tensor '{name}' {what}: the head would predict NaN");
            }
            Ok(v.to_dtype(DType::F32)?)
        };
        let mut bn = |dim: usize| -> Result<BatchNorm> {
            Ok(BatchNorm {
                weight: take("decode_head.bn.weight", &[dim])?,
                bias: take("decode_head.bn.bias", &[dim])?,
                running_mean: take("decode_head.bn.running_mean", &[dim])?,
                running_var: take("decode_head.bn.running_var", &[dim])?,
                eps: 1e-5,
            })
        };
        let head = match meta.task {
            Task::Cls => {
                let pooling = meta.pooling.unwrap_or(Pooling::Cls);
                let f = if pooling == Pooling::ClsMeanPatch { 2 * d } else { d };
                Head::Linear(LinearProbe { weight: take("linear.weight", &[k, f])?, bias: take("linear.bias", &[k])?, pooling })
            }
            Task::Seg => {
                let bn = bn(d)?;
                let weight = take("decode_head.conv_seg.weight", &[k, d, 1, 1])?.reshape((k, d))?;
                Head::Seg(SegHead { bn, weight, bias: take("decode_head.conv_seg.bias", &[k])? })
            }
            Task::Depth => {
                let (min_depth, max_depth) = meta.depth_range.with_context(|| format!("{file}: a depth head without a depth range"))?;
                let bn = (meta.depth_form() == DepthForm::Bn).then(|| bn(2 * d)).transpose()?;
                let weight = take("decode_head.conv_depth.weight", &[k, 2 * d, 1, 1])?.reshape((k, 2 * d))?;
                Head::Depth(DepthHead { bn, weight, bias: take("decode_head.conv_depth.bias", &[k])?, min_depth, max_depth })
            }
        };
        if let Some(extra) = t.keys().next() {
            bail!("{file}: unexpected tensor '{extra}' for a {} head", meta.task);
        }
        Ok(head)
    }

    /// The same head with its tensors on `dev`.
    pub fn to_device(&self, meta: &HeadMeta, dev: &Device) -> Result<Head> {
        let t = self.tensors()?.into_iter().map(|(k, v)| Ok((k, v.to_device(dev)?))).collect::<Result<HashMap<_, _>>>()?;
        Head::from_tensors(meta, t, "(in memory)")
    }
}
