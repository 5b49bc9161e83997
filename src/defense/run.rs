//! The fine-tuning loop shared by every recipe, and its run folder:
//!
//! - `run.json`: everything that determines the run (checkpoint fingerprint, data, recipe,
//!   hyper-parameters). A folder holding another run is refused; nothing in it is overwritten.
//! - `state.json` → `state-NNNNNN.safetensors`: student weights and optimizer state after step N,
//!   written first, then committed by renaming `state.json` into place. A run killed at any
//!   moment resumes from the last commit and ends with the very weights of an uninterrupted run.
//! - `losses.csv`: step, epoch, learning rate, loss and the recipe's parts, one line per step.
//! - `STEM-RECIPE-stepNNNNNN.EXT` every `save_every` steps and `STEM-RECIPE.EXT` at the end: the
//!   student in the input checkpoint's own format and naming.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::student::Student;
use crate::data::augment::{epoch_seed, load_batch_augmented};
use crate::data::transform::{load_batch, Transform};
use crate::data::Dataset;
use crate::encoder::Encoder;
use crate::features::{targets_of, Targets};
use crate::heads::train::TrainConfig;
use crate::optim::Optimizer;
use crate::rng::shuffled;

/// One mini-batch: images `[B, 3, H, W]` in [0,1] and their labels.
pub struct MiniBatch {
    pub images: Tensor,
    pub targets: Targets,
}

/// What a fine-tuning method computes on a mini-batch.
pub trait Recipe {
    fn name(&self) -> &'static str;
    /// Names of the values logged beside the loss.
    fn parts(&self) -> Vec<String>;
    /// The loss (differentiable with respect to the student's parameters) and its logged parts.
    /// `step` seeds anything random (attack starts), so a resumed run repeats it exactly.
    fn loss(&self, student: &Student, teacher: &Encoder, batch: &MiniBatch, step: u64) -> Result<(Tensor, Vec<f64>)>;
}

pub struct RunConfig {
    pub train: TrainConfig,
    /// Random augmentations after the transforms, drawn per (seed, epoch, sample).
    pub augment: Vec<Transform>,
    /// Write a checkpoint every this many steps (and at the end).
    pub save_every: usize,
    /// Everything else that determines the run (data, recipe options), recorded in `run.json`.
    pub identity: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    step: u64,
    file: String,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub out: String,
    pub total_steps: u64,
    /// The step this invocation started from (0, or where a killed run had got to).
    pub resumed_from: u64,
    /// Losses of the steps run by this invocation.
    pub losses: Vec<f64>,
    /// The student after the last step, in the input's format.
    pub final_checkpoint: String,
    pub checkpoints: Vec<String>,
}

/// The output folder: created if needed, and checked to be writable before any work.
fn prepare_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the output folder", out.display()))?;
    let probe = out.join(format!(".write-probe.{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("{}: the output folder is not writable", out.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// Dotted paths of the leaves where two JSON values differ (`train.epochs`, `run.dataset`).
fn differing(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            let null = serde_json::Value::Null;
            keys.into_iter()
                .flat_map(|k| {
                    let inner = differing(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null));
                    inner.into_iter().map(move |p| if p.is_empty() { k.clone() } else { format!("{k}.{p}") })
                })
                .collect()
        }
        _ if a == b => vec![],
        _ => vec![String::new()],
    }
}

/// `input.ext` → `input-RECIPE{suffix}.ext` in `out`.
fn checkpoint_path(out: &Path, input: &Path, recipe: &str, suffix: &str) -> PathBuf {
    let stem = input.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "encoder".into());
    let ext = input.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    out.join(format!("{stem}-{recipe}{suffix}{ext}"))
}

fn load_state(out: &Path, student: &Student, train: &TrainConfig) -> Result<Option<(u64, Optimizer)>> {
    let state_json = out.join("state.json");
    if !state_json.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&state_json).with_context(|| format!("{}: cannot read", state_json.display()))?;
    let state: StateFile =
        serde_json::from_str(&text).with_context(|| format!("{}: not a state file of this tool", state_json.display()))?;
    let file = out.join(&state.file);
    let shown = file.display().to_string();
    let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu)
        .map_err(|e| anyhow!("{shown}: cannot read the checkpoint ({e})"))?;
    let mut weights = BTreeMap::new();
    let mut opt = BTreeMap::new();
    for (name, t) in tensors {
        match name.split_once('/') {
            Some(("student", n)) => weights.insert(n.to_string(), t),
            Some(("optim", n)) => opt.insert(n.to_string(), t),
            _ => bail!("{shown}: unexpected tensor '{name}' (not a checkpoint of this tool)"),
        };
    }
    student.restore(&weights, &shown)?;
    let dev = student.params.first().map(|(_, v)| v.device().clone()).unwrap_or(candle_core::Device::Cpu);
    let opt = opt.into_iter().map(|(n, t)| Ok((n, t.to_device(&dev)?))).collect::<Result<BTreeMap<_, _>>>()?;
    let optimizer = Optimizer::restore(train.optimizer, state.step, &opt).with_context(|| shown.clone())?;
    Ok(Some((state.step, optimizer)))
}

fn save_state(out: &Path, step: u64, student: &Student, opt: &Optimizer) -> Result<()> {
    let name = format!("state-{step:06}.safetensors");
    let mut tensors = std::collections::HashMap::new();
    for (n, t) in student.tensors() {
        tensors.insert(format!("student/{n}"), t);
    }
    for (n, t) in opt.tensors() {
        tensors.insert(format!("optim/{n}"), t);
    }
    crate::atomic::save_safetensors(&tensors, &out.join(&name))?;
    crate::atomic::write(&out.join("state.json"), serde_json::to_string_pretty(&StateFile { step, file: name.clone() })?.as_bytes())?;
    // Older states are no longer needed once the new one is committed.
    for entry in std::fs::read_dir(out)?.flatten() {
        let n = entry.file_name().to_string_lossy().to_string();
        if n.starts_with("state-") && n.ends_with(".safetensors") && n != name {
            std::fs::remove_file(entry.path()).ok();
        }
    }
    Ok(())
}

/// Keeps the header and the lines of steps before `step` (a resumed run rewrites the rest).
fn truncate_log(path: &Path, header: &str, step: u64) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut text = format!("{header}\n");
    for line in old.lines().skip(1) {
        if line.split(',').next().and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s < step) {
            text.push_str(line);
            text.push('\n');
        }
    }
    crate::atomic::write(path, text.as_bytes())
}

/// Fine-tunes a student copy of `teacher` on `indices` of `ds` with `recipe`, in `out`.
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    recipe: &dyn Recipe,
    teacher: &Encoder,
    ds: &dyn Dataset,
    indices: &[usize],
    transforms: &[Transform],
    cfg: &RunConfig,
    out: &Path,
) -> Result<Outcome> {
    let t = &cfg.train;
    if indices.is_empty() || t.batch_size == 0 || t.epochs == 0 {
        bail!("nothing to train: {} samples, batch size {}, {} epochs", indices.len(), t.batch_size, t.epochs);
    }
    prepare_dir(out)?;
    let identity = serde_json::json!({
        "recipe": recipe.name(),
        "teacher": teacher.fingerprint()?,
        "train": t,
        "run": cfg.identity,
    });
    let run_json = out.join("run.json");
    if run_json.exists() {
        let text = std::fs::read_to_string(&run_json).with_context(|| format!("{}: cannot read", run_json.display()))?;
        let old: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", run_json.display()))?;
        let keys = differing(&old, &identity);
        if !keys.is_empty() {
            bail!(
                "{}: this folder holds a run with other settings (they differ in: {}); nothing was overwritten. \
                 Use another --out, or the same checkpoint, data and options to resume it",
                out.display(),
                keys.join(", ")
            );
        }
    } else {
        crate::atomic::write(&run_json, serde_json::to_string_pretty(&identity)?.as_bytes())?;
    }

    let student = Student::new(teacher)?;
    let (start, mut opt) = match load_state(out, &student, t)? {
        Some((step, opt)) => (step, opt),
        None => (0, Optimizer::new(t.optimizer)),
    };
    let n = indices.len();
    let per_epoch = n.div_ceil(t.batch_size);
    let total = (per_epoch * t.epochs) as u64;
    let input = Path::new(&teacher.info.file);
    if let Some(config) = input.parent().map(|d| d.join("config.json")).filter(|c| c.is_file()) {
        std::fs::copy(&config, out.join("config.json"))
            .with_context(|| format!("{}: cannot copy beside the checkpoints", config.display()))?;
    }
    let header = ["step", "epoch", "lr", "loss"].iter().map(|s| s.to_string()).chain(recipe.parts()).collect::<Vec<_>>().join(",");
    let log_path = out.join("losses.csv");
    truncate_log(&log_path, &header, start)?;
    let mut log =
        std::fs::OpenOptions::new().append(true).open(&log_path).with_context(|| format!("{}: cannot append", log_path.display()))?;

    let bar = crate::progress::bar(total, &format!("{} fine-tuning", recipe.name()));
    bar.set_position(start);
    let mut losses = Vec::new();
    let mut checkpoints = Vec::new();
    let dev = teacher.vit.device().clone();
    for step in start..total {
        let (epoch, b) = ((step as usize) / per_epoch, (step as usize) % per_epoch);
        let order = shuffled(n, crate::rng::epoch(t.seed, epoch));
        let ids: Vec<usize> = order[b * t.batch_size..((b + 1) * t.batch_size).min(n)].iter().map(|&i| indices[i]).collect();
        let samples = if cfg.augment.is_empty() {
            load_batch(ds, &ids, transforms)?
        } else {
            let all: Vec<Transform> = transforms.iter().chain(&cfg.augment).cloned().collect();
            load_batch_augmented(ds, &ids, &all, epoch_seed(t.seed, epoch))?
        };
        let images = Tensor::stack(&samples.iter().map(|s| &s.image).collect::<Vec<_>>(), 0)
            .with_context(|| format!("{}: images of different sizes after the transforms", ds.describe()))?
            .to_device(&dev)?;
        let targets = targets_of(ds, &ids, samples)?;
        let (loss, parts) = recipe.loss(&student, teacher, &MiniBatch { images, targets }, step)?;
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            bail!("the loss became {value} at step {step}");
        }
        let lr = t.lr_at(step as usize, total as usize);
        let grads = student.gradients(&loss)?;
        opt.step(&student.params, &grads, lr)?;
        let row = [format!("{step}"), format!("{epoch}"), format!("{lr:e}"), format!("{value}")]
            .into_iter()
            .chain(parts.iter().map(|p| format!("{p}")));
        writeln!(log, "{}", row.collect::<Vec<_>>().join(",")).with_context(|| format!("{}: cannot append", log_path.display()))?;
        losses.push(value);
        bar.set_message(format!("{} fine-tuning, loss {value:.4}", recipe.name()));
        bar.inc(1);
        let done = step + 1;
        if done % cfg.save_every.max(1) as u64 == 0 || done == total {
            let path = checkpoint_path(out, input, recipe.name(), &format!("-step{done:06}"));
            student.save_like_input(&path)?;
            checkpoints.push(path.display().to_string());
            log.flush()?;
            save_state(out, done, &student, &opt)?;
        }
    }
    bar.finish_and_clear();
    let final_path = checkpoint_path(out, input, recipe.name(), "");
    student.save_like_input(&final_path)?;
    Ok(Outcome {
        out: out.display().to_string(),
        total_steps: total,
        resumed_from: start,
        losses,
        final_checkpoint: final_path.display().to_string(),
        checkpoints,
    })
}
