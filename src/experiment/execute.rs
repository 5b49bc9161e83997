//! Running a plan (or one shard of it) into a results store: heads trained once and kept as files
//! in the run folder, clean evaluations on cached features, and attacks batch by batch — every
//! finished batch committed with its metric counts, every finished item committed as its cells —
//! so a run killed at any moment resumes where it stopped, and gives the very figures of an
//! uninterrupted run. With `unshared`, the run takes the reference code's way instead (features
//! recomputed for every epoch, one EmbedAttack per task), for the benchmark.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::events::EventLog;
use super::plan::{key_of, Item, Plan, Work};
use super::store::{CellResult, CellRow, CellState, Example, HeadRecord, Store, Timing};
use crate::attacks::engine::AttackConfig;
use crate::attacks::engine::Sanity;
use crate::attacks::scoring::{attack_batch_from, labels_of_same_images, Aim, AttackedBatch, Crafter, Curve, ScoredHead};
use crate::attacks::strips::attack_strip;
use crate::data::transform::{by_size, load_batch, load_images_only, resizes};
use crate::encoder::{Encoder, LoadOptions};
use crate::features::cache::FeatureCache;
use crate::features::{batches, targets_of, Source, Targets};
use crate::heads::evaluate::{evaluate, evaluate_sliding, ScoreState, Scorer};
use crate::heads::fit::fit;
use crate::heads::head::{Task, TrainedHead};
use crate::heads::sample_score::SampleScore;

pub struct Options {
    /// This shard of how many (0/1: everything).
    pub shard: (usize, usize),
    /// The reference code's way: no feature cache, one EmbedAttack per task.
    pub unshared: bool,
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub items_in_shard: usize,
    pub items_done_before: usize,
    pub items_run: usize,
    pub heads_trained: usize,
    pub heads_reused: usize,
    pub batches_resumed: usize,
    pub seconds: f64,
}

/// A run folder: `heads/`, `cache/` (unless the experiment names another), the store.
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn heads(&self) -> PathBuf {
        self.root.join("heads")
    }

    pub fn store_path(&self, shard: (usize, usize)) -> PathBuf {
        self.shard_file("results", "sqlite", shard)
    }

    /// The event log of a shard (`super::events`).
    pub fn events_path(&self, shard: (usize, usize)) -> PathBuf {
        self.shard_file("events", "jsonl", shard)
    }

    /// `STEM.EXT` for an unsharded run, `STEM-shard-I-of-N.EXT` for shard I of N.
    fn shard_file(&self, stem: &str, ext: &str, shard: (usize, usize)) -> PathBuf {
        match shard {
            (_, 1) => self.root.join(format!("{stem}.{ext}")),
            (i, n) => self.root.join(format!("{stem}-shard-{i}-of-{n}.{ext}")),
        }
    }
}

/// One batch's counts: per scored head, clean and adversarial.
#[derive(Serialize, Deserialize)]
struct BatchState {
    scores: Vec<(ScoreState, ScoreState)>,
    /// Per scored head, with a per-step curve: the scores of every iterate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    curves: Vec<Vec<ScoreState>>,
    objective_sum: f64,
    sanity: Sanity,
    /// Per scored head: each image's score (index in the split, score).
    #[serde(default)]
    samples: Vec<Vec<(usize, SampleScore)>>,
    /// Per scored head: each image's score on its clean input.
    #[serde(default)]
    clean_samples: Vec<Vec<(usize, SampleScore)>>,
    /// Seconds spent crafting and scoring the batch.
    #[serde(default)]
    seconds: f64,
}

struct Runner<'a> {
    plan: &'a Plan,
    dir: &'a RunDir,
    store: &'a mut Store,
    unshared: bool,
    cache: FeatureCache,
    summary: Summary,
    bars: crate::progress::Bars,
    events: EventLog,
}

/// Runs shard `opts.shard` of `plan` in `dir`, recording into `store`.
pub fn run(plan: &Plan, dir: &RunDir, store: &mut Store, opts: &Options) -> Result<Summary> {
    let t0 = Instant::now();
    std::fs::create_dir_all(dir.heads()).with_context(|| format!("{}: cannot create", dir.heads().display()))?;
    let cache = FeatureCache::new(plan.cache_dir.clone().unwrap_or_else(|| dir.root.join("cache")));
    let items = plan.shard(opts.shard.0, opts.shard.1);
    let mut pending = Vec::new();
    let mut summary = Summary { items_in_shard: items.len(), ..Default::default() };
    for item in items {
        let mut done = true;
        for c in &item.cells {
            match store.cell_state(&c.key)? {
                CellState::Done => {}
                CellState::Missing => done = false,
                CellState::Unreadable(why) => {
                    eprintln!(
                        "warning: {}: cell {} ({}) cannot be read back ({why}); computing it again",
                        store.path().display(),
                        c.key,
                        plan.describe(item)
                    );
                    done = false;
                }
            }
        }
        if done {
            summary.items_done_before += 1;
        } else {
            pending.push(item);
        }
    }
    let bars = crate::progress::Bars::new();
    let events = EventLog::open(&dir.events_path(opts.shard), &plan.name, opts.shard)?;
    events.write("start", json!({ "items": pending.len(), "items_done_before": summary.items_done_before }))?;
    let mut r = Runner { plan, dir, store, unshared: opts.unshared, cache, summary, bars, events };
    let overall = r.bars.add(crate::progress::bar(pending.len() as u64, "experiment"));
    for e in 0..plan.encoders.len() {
        let mine: Vec<&Item> = pending.iter().copied().filter(|i| item_encoder(plan, i) == e).collect();
        if mine.is_empty() {
            continue;
        }
        let entry = &plan.encoders[e];
        let enc = load(plan, e)?;
        let mut heads = std::collections::BTreeMap::new();
        for h in plan.heads_of(&mine) {
            overall.set_message(format!("{} · training the {} head", entry.name, plan.head_label(h)));
            heads.insert(h, r.head(h, &enc)?);
        }
        // The surrogates of transfer attacks scored here, with the heads of them attacked.
        let mut surrogates = std::collections::BTreeMap::new();
        for (c, source_heads) in plan.crafters_of(&mine) {
            let surrogate = load(plan, c)?;
            for h in source_heads {
                overall.set_message(format!("{} · training the {} head", plan.encoders[c].name, plan.head_label(h)));
                heads.insert(h, r.head(h, &surrogate)?);
            }
            surrogates.insert(c, surrogate);
        }
        for item in mine {
            overall.set_message(plan.describe(item));
            r.item(item, &enc, &heads, &surrogates)?;
            r.summary.items_run += 1;
            overall.inc(1);
        }
    }
    overall.finish_and_clear();
    r.summary.seconds = t0.elapsed().as_secs_f64();
    let s = &r.summary;
    r.events.write(
        "end",
        json!({ "items_run": s.items_run, "heads_trained": s.heads_trained, "heads_reused": s.heads_reused,
                "batches_resumed": s.batches_resumed, "seconds": s.seconds }),
    )?;
    Ok(r.summary)
}

/// Encoder `e` of the plan, on the run's device.
fn load(plan: &Plan, e: usize) -> Result<Encoder> {
    let entry = &plan.encoders[e];
    Ok(Encoder::load(&entry.checkpoint, &LoadOptions { device: crate::device::default_device()?, ..entry.options.clone() })?
        .with_fingerprint(entry.fingerprint.clone()))
}

fn item_encoder(plan: &Plan, item: &Item) -> usize {
    match &item.work {
        Work::Clean { head } => plan.heads[*head].encoder,
        Work::Attack { encoder, .. } => *encoder,
    }
}

impl Runner<'_> {
    /// The feature cache, or none for the reference code's way (features recomputed per batch).
    fn cache(&self) -> Option<&FeatureCache> {
        (!self.unshared).then_some(&self.cache)
    }

    /// Head `h`: loaded from the run folder, or trained (on cached features) and saved there.
    fn head(&mut self, h: usize, enc: &Encoder) -> Result<TrainedHead> {
        let plan = self.plan;
        let entry = &plan.heads[h];
        let path = self.dir.heads().join(format!("{}.safetensors", entry.key));
        if path.is_file() {
            match TrainedHead::load(&path, &Device::Cpu) {
                Ok(head) => {
                    self.store.put_head(&entry.key, &head_record(plan, h, &head))?;
                    self.summary.heads_reused += 1;
                    self.events.write("head", json!({ "key": entry.key, "head": plan.head_label(h), "trained": false }))?;
                    return Ok(head);
                }
                Err(e) => self.bars.println(format!("warning: {e:#}; training the head again"))?,
            }
        }
        let task = &plan.tasks[entry.task];
        let ds = task.train.open()?;
        let request = plan.request(h, &task.train, ds.len(), true);
        let (mut features, _) = batches(Source::Encoder(enc), ds.as_ref(), &request, self.cache())?;
        let fitted = fit(&entry.recipe, Source::Encoder(enc), ds.as_ref(), &request, features.as_mut(), &crate::device::default_device()?)?;
        fitted.head.save(&path)?;
        self.store.put_head(&entry.key, &head_record(plan, h, &fitted.head))?;
        self.summary.heads_trained += 1;
        self.events.write("head", json!({ "key": entry.key, "head": plan.head_label(h), "trained": true }))?;
        Ok(fitted.head)
    }

    fn item(
        &mut self,
        item: &Item,
        enc: &Encoder,
        heads: &std::collections::BTreeMap<usize, TrainedHead>,
        surrogates: &std::collections::BTreeMap<usize, Encoder>,
    ) -> Result<()> {
        match &item.work {
            Work::Clean { head } => self.clean(item, enc, &heads[head]),
            Work::Attack { scored, source: None, crafter: None, .. } if self.unshared && scored.len() > 1 => {
                // The reference code's way: EmbedAttack once per task.
                for (k, &h) in scored.iter().enumerate() {
                    self.attack(item, enc, &[(h, &heads[&h], item.cells[k].key.as_str())], None)?;
                }
                Ok(())
            }
            Work::Attack { scored, source, crafter, .. } => {
                let list: Vec<(usize, &TrainedHead, &str)> =
                    scored.iter().zip(&item.cells).map(|(&h, c)| (h, &heads[&h], c.key.as_str())).collect();
                let surrogate = crafter.map(|c| (&surrogates[&c], source.map(|s| &heads[&s])));
                self.attack(item, enc, &list, surrogate)
            }
        }
    }

    fn clean(&mut self, item: &Item, enc: &Encoder, head: &TrainedHead) -> Result<()> {
        let plan = self.plan;
        let Work::Clean { head: h } = item.work else { unreachable!() };
        let entry = &plan.heads[h];
        let task = &plan.tasks[entry.task];
        let ds = task.eval.open()?;
        let request = plan.request(h, &task.eval, ds.len(), false);
        let file = format!("head {} of {}", plan.head_label(h), plan.encoders[entry.encoder].name);
        let evaluation = match plan.window(entry.encoder, entry.task) {
            // Whole images through windows: features per window, computed (the cache holds
            // features of fixed-size images), scored at each label's own size.
            Some(window) => {
                self.bars.println(format!(
                    "note: {}: {}; the features are computed for each window, not cached",
                    plan.describe(item),
                    window.describe()
                ))?;
                let resizes = resizes(&request.transforms);
                evaluate_sliding(head, enc, ds.as_ref(), &request.indices, &resizes, window, plan.encoder_batch_size, &file)?
            }
            None => {
                let (mut features, _) = batches(Source::Encoder(enc), ds.as_ref(), &request, self.cache())?;
                evaluate(head, features.as_mut(), 64, &crate::device::default_device()?, &file)?
            }
        };
        let cell = &item.cells[0];
        let result = CellResult {
            samples: evaluation.samples,
            clean: evaluation,
            adversarial: None,
            mean_objective: None,
            sanity: None,
            curve: None,
            per_sample: None,
            per_sample_clean: None,
        };
        let row = CellRow { key: cell.key.clone(), labels: cell.labels.clone(), result };
        self.store.put_cells(&item.key, std::slice::from_ref(&row))?;
        self.events.cell(&row)
    }

    /// Attacks the item's images batch by batch and scores the perturbations on `scored`
    /// (head index, head, cell key): resumes after the last committed batch. A transfer attack
    /// crafts on its `surrogate` (the encoder, and the head of it a task attack maximises).
    fn attack(
        &mut self,
        item: &Item,
        enc: &Encoder,
        scored: &[(usize, &TrainedHead, &str)],
        surrogate: Option<(&Encoder, Option<&TrainedHead>)>,
    ) -> Result<()> {
        let plan = self.plan;
        let Work::Attack { encoder, task: images_task, params, source, .. } = &item.work else { unreachable!() };
        let exec = key_of(&serde_json::json!({ "item": item.key, "cells": scored.iter().map(|s| s.2).collect::<Vec<_>>() }));
        let images_ref = &plan.tasks[*images_task].eval;
        let images_ds = images_ref.open()?;
        let indices = images_ref.indices(images_ds.len());
        let window = plan.window(*encoder, *images_task);
        let transforms = match window {
            Some(_) => resizes(&plan.transforms(*encoder, *images_task)),
            None => plan.transforms(*encoder, *images_task),
        };
        // Each scored head reads labels from its own task's data (checked to be the same images).
        let label_sets = scored
            .iter()
            .map(|&(h, _, _)| {
                let r = &plan.tasks[plan.heads[h].task].eval;
                if r == images_ref {
                    Ok(None)
                } else {
                    r.open().map(Some)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let batches: Vec<&[usize]> = indices.chunks(plan.attack_batch_size).collect();
        // Finished batches that read back; one that does not is computed again.
        let mut done = std::collections::BTreeMap::new();
        for (b, text) in self.store.partials(&exec)? {
            match serde_json::from_str::<BatchState>(&text) {
                Ok(_) => {
                    done.insert(b, ());
                }
                Err(e) => self.bars.println(format!(
                    "warning: {}: batch {b} of {} cannot be read back ({e}); computing it again",
                    self.store.path().display(),
                    plan.describe(item)
                ))?,
            }
        }
        self.summary.batches_resumed += done.len();
        let bar = self.bars.add(crate::progress::bar(batches.len() as u64, "  batches"));
        bar.set_position(done.len() as u64);
        // The attacked head's place among the crafter's heads: the scored ones, or the surrogate's one.
        let attacked_at = match surrogate {
            Some(_) => 0,
            None => source.map_or(0, |s| scored.iter().position(|x| x.0 == s).expect("the source is scored")),
        };
        for (b, ids) in batches.iter().enumerate() {
            if done.contains_key(&b) {
                continue;
            }
            // Whole images (windows) are attacked by size, each at its own size; else one batch.
            let groups = match window {
                Some(_) => by_size(ids, load_images_only(images_ds.as_ref(), ids, &transforms)?),
                None => vec![(ids.to_vec(), load_batch(images_ds.as_ref(), ids, &transforms)?)],
            };
            let started = Instant::now();
            let single = groups.len() == 1;
            let mut per_image: Vec<Vec<(usize, SampleScore)>> = vec![Vec::new(); scored.len()];
            let mut per_image_clean: Vec<Vec<(usize, SampleScore)>> = vec![Vec::new(); scored.len()];
            let mut merged: Vec<(Scorer, Scorer)> =
                scored.iter().map(|&(_, head, cell)| Ok((Scorer::new(head, cell)?, Scorer::new(head, cell)?))).collect::<Result<_>>()?;
            let (mut sanity, mut objective_sum) = (Sanity::default(), 0.0);
            let mut curves: Vec<Curve> = scored.iter().map(|&(_, head, cell)| Curve::new(head, cell)).collect();
            let mut examples = Vec::new();
            for (group_ids, samples) in groups {
                let group_ids = group_ids.as_slice();
                let images = Tensor::stack(&samples.iter().map(|s| &s.image).collect::<Vec<_>>(), 0)
                    .with_context(|| format!("{}: images of different sizes after the transforms", images_ds.describe()))?;
                let own = targets_of(images_ds.as_ref(), group_ids, samples)?;
                let targets = label_sets
                    .iter()
                    .map(|ds| match ds {
                        None => Ok(own.clone()),
                        Some(ds) => {
                            labels_of_same_images(ds.as_ref(), group_ids, &transforms, &images, &images_ds.describe(), window.is_some())
                        }
                    })
                    .collect::<Result<Vec<Targets>>>()?;
                let aim = Aim::of(params, attacked_at);
                let heads: Vec<ScoredHead> =
                    scored.iter().zip(&targets).map(|(&(_, head, cell), targets)| ScoredHead { head, targets, name: cell }).collect();
                let early_stop = source.is_some_and(|s| plan.tasks[plan.heads[s].task].task == Task::Cls);
                let cfg = AttackConfig { window, ..params.engine(b, early_stop) };
                // The surrogate's head reads the labels of its task: the images' own.
                let own_heads: Vec<ScoredHead> =
                    surrogate.and_then(|(_, h)| h).map(|head| ScoredHead { head, targets: &own, name: "surrogate" }).into_iter().collect();
                let crafter = match surrogate {
                    Some((s, _)) => Crafter { enc: s, heads: &own_heads },
                    None => Crafter { enc, heads: &heads },
                };
                let done = attack_batch_from(crafter, enc, &images, aim, &heads, &cfg, true)?;
                // Example strips from the first batch when it is one view of one size.
                if b == 0 && single && window.is_none() {
                    examples = strips(plan.examples, group_ids, &images, &done, &heads, params.eps)?;
                }
                for ((((c, a), curve), s), per) in merged.iter_mut().zip(curves.iter_mut()).zip(&done.heads).zip(per_image.iter_mut()) {
                    c.merge(&s.clean)?;
                    a.merge(&s.adversarial)?;
                    curve.add(&s.curve)?;
                    per.extend(group_ids.iter().copied().zip(s.samples.iter().cloned()));
                }
                for (s, per) in done.heads.iter().zip(per_image_clean.iter_mut()) {
                    per.extend(group_ids.iter().copied().zip(s.clean_samples.iter().cloned()));
                }
                sanity.merge(&done.outcome.sanity);
                objective_sum += done.outcome.loss.iter().sum::<f64>();
            }
            let scores = merged.iter().map(|(c, a)| (c.state().clone(), a.state().clone())).collect();
            let curves = if params.curve { curves.iter().map(Curve::states).collect() } else { Vec::new() };
            let state = BatchState {
                scores,
                curves,
                objective_sum,
                sanity,
                samples: per_image,
                clean_samples: per_image_clean,
                seconds: started.elapsed().as_secs_f64(),
            };
            self.store.put_partial(&exec, b, &serde_json::to_string(&state)?, &examples)?;
            let cells: Vec<Value> = merged
                .into_iter()
                .zip(scored)
                .map(|((c, a), &(_, _, cell))| {
                    Ok(json!({ "key": cell, "clean": c.finish()?.head.figure_map(), "adversarial": a.finish()?.head.figure_map() }))
                })
                .collect::<Result<_>>()?;
            self.events.write(
                "batch",
                json!({ "item": exec, "work": plan.describe(item), "batch": b, "batches": batches.len(), "samples": ids.len(),
                        "seconds": state.seconds, "objective_mean": state.objective_sum / ids.len().max(1) as f64, "cells": cells }),
            )?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        self.bars.remove(&bar);
        // Every batch is committed: merge their counts in batch order into the cells.
        let states = self.store.partials(&exec)?;
        let found: Vec<usize> = states.iter().map(|(b, _)| *b).collect();
        if found != (0..batches.len()).collect::<Vec<_>>() {
            // Only another writer could have removed them; the store's lock makes that an error.
            anyhow::bail!(
                "{}: {} has {} of its {} batches committed (batches {found:?}); its cells are not committed from part of \
                 its images. Run again to compute the missing batches.",
                self.store.path().display(),
                plan.describe(item),
                found.len(),
                batches.len()
            );
        }
        let mut sanity = Sanity::default();
        let mut objective_sum = 0.0;
        let mut merged: Vec<(Scorer, Scorer)> =
            scored.iter().map(|&(_, head, cell)| Ok((Scorer::new(head, cell)?, Scorer::new(head, cell)?))).collect::<Result<_>>()?;
        let mut curves: Vec<Curve> = scored.iter().map(|&(_, head, cell)| Curve::new(head, cell)).collect();
        let mut per_sample: Vec<Vec<(usize, SampleScore)>> = vec![Vec::new(); scored.len()];
        let mut per_sample_clean: Vec<Vec<(usize, SampleScore)>> = vec![Vec::new(); scored.len()];
        let mut seconds = 0.0;
        for (b, text) in &states {
            let s: BatchState =
                serde_json::from_str(text).with_context(|| format!("{}: batch {b} of item {exec}", self.store.path().display()))?;
            sanity.merge(&s.sanity);
            objective_sum += s.objective_sum;
            for ((c, a), (sc, sa)) in merged.iter_mut().zip(&s.scores) {
                c.merge(sc)?;
                a.merge(sa)?;
            }
            for (curve, states) in curves.iter_mut().zip(&s.curves) {
                curve.add(states)?;
            }
            for (per, batch) in per_sample.iter_mut().zip(s.samples) {
                per.extend(batch);
            }
            for (per, batch) in per_sample_clean.iter_mut().zip(s.clean_samples) {
                per.extend(batch);
            }
            seconds += s.seconds;
        }
        let samples = indices.len();
        let mut rows = Vec::new();
        let timing = Timing { seconds, images: samples, device: crate::device::describe(enc.vit.device()) };
        let complete = |per: &mut Vec<(usize, SampleScore)>| {
            per.sort_by_key(|p| p.0);
            per.len() == samples && per.windows(2).all(|w| w[0].0 < w[1].0)
        };
        for (((((c, a), curve), &(_, _, cell)), mut per), mut per_clean) in
            merged.into_iter().zip(curves).zip(scored).zip(per_sample).zip(per_sample_clean)
        {
            // Batches of an older version carry no per-image scores: then the cell has none.
            let (whole, whole_clean) = (complete(&mut per), complete(&mut per_clean));
            let labels = &item.cells.iter().find(|x| x.key == cell).expect("a cell of the item").labels;
            let result = CellResult {
                samples,
                clean: c.finish()?,
                adversarial: Some(a.finish()?),
                mean_objective: Some(objective_sum / samples as f64),
                sanity: Some(sanity.clone()),
                curve: if params.curve { Some(curve.finish()?) } else { None },
                per_sample: whole.then_some(per),
                per_sample_clean: whole_clean.then_some(per_clean),
            };
            self.store.put_timing(cell, &timing)?;
            rows.push(CellRow { key: cell.to_string(), labels: labels.clone(), result });
        }
        for w in sanity.warnings() {
            self.bars.println(format!("warning: {}: {w}", plan.describe(item)))?;
        }
        self.store.put_cells(&exec, &rows)?;
        rows.iter().try_for_each(|row| self.events.cell(row))
    }
}

/// The example strips of the first `count` images of an attacked batch, for every scored head.
fn strips(count: usize, ids: &[usize], images: &Tensor, done: &AttackedBatch, heads: &[ScoredHead], eps: f64) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    for (h, s) in heads.iter().zip(&done.heads) {
        for (j, id) in ids.iter().take(count).enumerate() {
            let (suffix, png) =
                attack_strip(j, images, &done.outcome.adversarial, (&s.clean_output, &s.adversarial_output), h.targets, eps)?;
            examples.push(Example { cell: h.name.to_string(), name: format!("{id:05}{suffix}.png"), png });
        }
    }
    Ok(examples)
}

/// The store's record of head `h` of the plan.
fn head_record(plan: &Plan, h: usize, head: &TrainedHead) -> HeadRecord {
    let e = &plan.heads[h];
    HeadRecord {
        encoder: plan.encoders[e.encoder].name.clone(),
        task: plan.tasks[e.task].name.clone(),
        head: e.name.clone(),
        samples: head.meta.samples,
        final_loss: head.meta.final_loss,
        baseline: head.meta.baseline,
        recipe: e.recipe,
    }
}

/// The run folder of an experiment file: `runs/STEM` beside the working folder.
pub fn default_run_dir(experiment: &Path) -> PathBuf {
    PathBuf::from("runs").join(experiment.file_stem().unwrap_or_default())
}
