//! What a plan costs before it runs (`run --dry-run`): the encoder's forward and backward passes
//! per encoder and input size, counted from the plan — features for every head's training (every
//! epoch where the recipe augments, once per cached split otherwise), the clean evaluations (once
//! per cached split, or every window of every image), and every attack step of every window of
//! every image — and an estimate in hours from a short calibration of each encoder on the device
//! it would run on, scaled to each input size by the ViT's arithmetic (linear layers grow with
//! the tokens, attention with their square).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde::Serialize;

use super::plan::{Plan, Work};
use crate::data::transform::{load_images_only, resizes, Transform};
use crate::data::DataRef;
use crate::encoder::arch::{FfnKind, VitConfig};
use crate::encoder::{Encoder, LoadOptions};
use crate::heads::sliding::{Tiling, Window};

/// Samples read per split to learn its input sizes and windows per image.
const SIZE_SAMPLES: usize = 8;

/// The passes of one encoder at one input size (what it sees: a padded crop or window).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub encoder: String,
    /// Height × width of the encoder's input.
    pub input: (usize, usize),
    pub forward: u64,
    pub backward: u64,
    /// Estimated hours, from the calibration.
    pub hours: Option<f64>,
}

/// Seconds per image of one encoder at the calibration size, on `device`.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub encoder: String,
    pub device: String,
    pub side: usize,
    pub forward_s: f64,
    pub forward_backward_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub rows: Vec<Row>,
    pub calibrations: Vec<Calibration>,
    pub hours: Option<f64>,
}

/// What the encoder sees of one split: its input size and how many inputs per image.
struct View {
    input: (usize, usize),
    per_image: f64,
}

/// The view of `data` under `transforms` and `window`, from a few of its samples.
fn view(data: &DataRef, transforms: &[Transform], window: Option<Window>, patch: usize) -> Result<(View, usize)> {
    let ds = data.open()?;
    let indices = data.indices(ds.len());
    let n = indices.len();
    let step = (n / SIZE_SAMPLES).max(1);
    let picked: Vec<usize> = indices.iter().step_by(step).take(SIZE_SAMPLES).copied().collect();
    let transforms = if window.is_some() { resizes(transforms) } else { transforms.to_vec() };
    let mut inputs = Vec::new();
    let mut per_image = 0.0;
    for s in load_images_only(ds.as_ref(), &picked, &transforms).with_context(|| ds.describe())? {
        let (_, h, w) = s.image.dims3()?;
        match window {
            Some(win) => {
                let t = Tiling::new(h, w, win, patch).with_context(|| ds.describe())?;
                inputs.push(t.padded);
                per_image += t.windows() as f64;
            }
            None => {
                inputs.push((h.div_ceil(patch) * patch, w.div_ceil(patch) * patch));
                per_image += 1.0;
            }
        }
    }
    let count = inputs.len().max(1);
    Ok((View { input: inputs.first().copied().unwrap_or((0, 0)), per_image: per_image / count as f64 }, n))
}

/// Multiply-adds ×2 of one forward pass of `c` on an `h × w` input.
pub fn flops(c: &VitConfig, (h, w): (usize, usize)) -> f64 {
    let t = ((h / c.patch_size) * (w / c.patch_size) + 1 + c.num_registers) as f64;
    let (d, hidden) = (c.embed_dim as f64, c.ffn_hidden as f64);
    let mlp = match c.ffn {
        FfnKind::SwiGlu => 6.0 * d * hidden,
        _ => 4.0 * d * hidden,
    };
    c.depth as f64 * t * (8.0 * d * d + mlp + 4.0 * t * d)
}

/// Counts the passes of `plan` per encoder and input size.
pub fn count(plan: &Plan) -> Result<Vec<Row>> {
    let mut rows: BTreeMap<(usize, (usize, usize)), Row> = BTreeMap::new();
    let mut add = |e: usize, input: (usize, usize), forward: f64, backward: f64| {
        let r = rows.entry((e, input)).or_insert_with(|| Row { encoder: plan.encoders[e].name.clone(), input, ..Row::default() });
        r.forward += forward.round() as u64;
        r.backward += backward.round() as u64;
    };
    let mut views: BTreeMap<String, (usize, (usize, usize), f64, usize)> = BTreeMap::new();
    let mut view_of = |e: usize, t: usize, data: &DataRef, window: Option<Window>| -> Result<((usize, usize), f64, usize)> {
        let transforms = plan.transforms(e, t);
        let key =
            serde_json::json!([e, data, transforms.iter().map(Transform::describe).collect::<Vec<_>>(), window.map(|w| w.to_string())])
                .to_string();
        if let Some(&(_, input, per, n)) = views.get(&key) {
            return Ok((input, per, n));
        }
        let (v, n) = view(data, &transforms, window, plan.encoders[e].patch_size)?;
        views.insert(key, (e, v.input, v.per_image, n));
        Ok((v.input, v.per_image, n))
    };
    // Cached features are computed once per encoder, split and transforms.
    let mut cached: BTreeSet<String> = BTreeSet::new();
    for head in &plan.heads {
        let (e, t) = (head.encoder, head.task);
        let data = &plan.tasks[t].train;
        let (input, _, n) = view_of(e, t, data, None)?;
        if head.recipe.augment.is_none() {
            let key = serde_json::json!([e, data, plan.transforms(e, t).iter().map(Transform::describe).collect::<Vec<_>>()]).to_string();
            if cached.insert(key) {
                add(e, input, n as f64, 0.0);
            }
        } else {
            add(e, input, (n * head.recipe.train.epochs) as f64, 0.0);
        }
    }
    for item in &plan.items {
        match &item.work {
            Work::Clean { head } => {
                let (e, t) = (plan.heads[*head].encoder, plan.heads[*head].task);
                let data = &plan.tasks[t].eval;
                let window = plan.window(e, t);
                let (input, per, n) = view_of(e, t, data, window)?;
                let key =
                    serde_json::json!([e, data, plan.transforms(e, t).iter().map(Transform::describe).collect::<Vec<_>>()]).to_string();
                if window.is_some() || cached.insert(key) {
                    add(e, input, n as f64 * per, 0.0);
                }
            }
            Work::Attack { encoder, task, params, crafter, .. } => {
                let data = &plan.tasks[*task].eval;
                let (input, per, n) = view_of(*encoder, *task, data, plan.window(*encoder, *task))?;
                let (fwd, bwd) = params.passes_per_image();
                // The attack's passes (`AttackSpec::passes_per_image`; on the surrogate for a
                // transfer attack, which also sees the clean images once); then the clean and
                // adversarial scoring.
                match crafter {
                    None => add(*encoder, input, n as f64 * per * (fwd + 2.0), n as f64 * per * bwd),
                    Some(c) => {
                        add(*c, input, n as f64 * per * (fwd + 1.0), n as f64 * per * bwd);
                        add(*encoder, input, n as f64 * per * 2.0, 0.0);
                    }
                }
            }
        }
    }
    Ok(rows.into_values().collect())
}

/// Times each encoder of `rows` once (a batch of 2 at the smallest input side used, at most 224
/// px) and estimates every row's hours from it, scaled by [`flops`].
pub fn calibrate(plan: &Plan, rows: &mut [Row]) -> Result<(Vec<Calibration>, f64)> {
    let device = crate::device::default_device()?;
    let mut calibrations = Vec::new();
    let mut total = 0.0;
    for (e, entry) in plan.encoders.iter().enumerate() {
        let mine: Vec<usize> = (0..rows.len()).filter(|&r| rows[r].encoder == entry.name).collect();
        if mine.is_empty() {
            continue;
        }
        let enc = Encoder::load(&entry.checkpoint, &LoadOptions { device: device.clone(), ..entry.options.clone() })
            .with_context(|| format!("encoder '{}'", entry.name))?;
        let c = enc.config().clone();
        let smallest = mine.iter().map(|&r| rows[r].input.0.min(rows[r].input.1)).min().unwrap_or(224);
        let side = match c.fixed_grid {
            Some((gh, _)) => gh * c.patch_size,
            None => (smallest.clamp(2 * c.patch_size, 224) / c.patch_size) * c.patch_size,
        };
        let t = crate::perf::measure(&enc, 2, side, 1, 1).with_context(|| format!("calibrating encoder '{}'", entry.name))?;
        let (fwd, fb) = (t.forward_s / 2.0, t.forward_backward_s / 2.0);
        let at = flops(&c, (side, side));
        for &r in &mine {
            let scale = flops(&c, rows[r].input) / at;
            let seconds = rows[r].forward as f64 * fwd * scale + rows[r].backward as f64 * (fb - fwd).max(0.0) * scale;
            rows[r].hours = Some(seconds / 3600.0);
            total += seconds / 3600.0;
        }
        calibrations.push(Calibration {
            encoder: plan.encoders[e].name.clone(),
            device: format!("{device:?}"),
            side,
            forward_s: fwd,
            forward_backward_s: fb,
        });
    }
    Ok((calibrations, total))
}

/// The plan's cost, calibrated.
pub fn estimate(plan: &Plan) -> Result<Cost> {
    let mut rows = count(plan)?;
    let (calibrations, hours) = calibrate(plan, &mut rows)?;
    Ok(Cost { rows, calibrations, hours: Some(hours) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ViT-S/16 at 224 (DeiT-S: 197 tokens, 12 layers of 384 wide with a 1536 MLP) is published at
    /// 4.6 GFLOPs, counted as multiply-adds (patch embedding and head included, ~0.1 G of it).
    #[test]
    fn flops_of_a_vit_small() {
        let c = VitConfig {
            family: crate::encoder::arch::Family::DinoV2,
            patch_size: 16,
            embed_dim: 384,
            depth: 12,
            num_heads: 6,
            ffn_hidden: 1536,
            ffn: FfnKind::Mlp,
            num_registers: 0,
            layer_scale: true,
            qkv_bias: true,
            pos_grid: 37,
            fixed_grid: None,
            ln_eps: 1e-6,
        };
        let g = flops(&c, (224, 224)) / 2e9;
        assert!((g - 4.5).abs() < 0.1, "{g} G multiply-adds");
        assert!(flops(&c, (512, 512)) / flops(&c, (224, 224)) > (1025.0 / 197.0), "attention grows faster than the tokens");
    }
}
