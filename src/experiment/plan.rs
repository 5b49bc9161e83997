//! The plan of an experiment: every head to train and every work item (a clean evaluation, or
//! an attack whose perturbations are scored on one or more heads), each keyed by a hash of
//! everything that determines it. Expensive work is shared: a head is trained once per encoder
//! and task, and EmbedAttack runs once per encoder, image set and setting, its perturbation
//! scored on every task of those images. Planning opens every dataset and reads every checkpoint
//! (without building the model), so bad input is refused before any work starts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::config::{HeadTable, Loaded};
use super::protocol::Protocol;
use crate::attacks::embed::EmbedScope;
use crate::attacks::spec::{AttackKind, AttackSpec};
use crate::choice::Choice;
use crate::data::transform::{short_side, Transform};
use crate::data::{DataRef, Split};
use crate::encoder::arch::Family;
use crate::encoder::{Encoder, LoadOptions};
use crate::heads::fit::{HeadOptions, HeadRecipe};
use crate::heads::head::Task;
use crate::heads::sliding::Window;

pub struct EncoderEntry {
    pub name: String,
    pub checkpoint: PathBuf,
    /// How it is loaded (the device is chosen when it runs).
    pub options: LoadOptions,
    pub fingerprint: serde_json::Value,
    pub patch_size: usize,
    pub family: Family,
}

pub struct TaskEntry {
    pub name: String,
    pub task: Task,
    pub train: DataRef,
    pub eval: DataRef,
    /// Tasks of one group are scored on the same images.
    pub group: String,
    /// Explicit transforms, else the protocol's for the encoder.
    transforms: Option<Vec<Transform>>,
    /// An explicit window (dense tasks), else the protocol's.
    window: Option<Window>,
    /// Evaluated samples.
    pub eval_samples: usize,
}

pub struct HeadEntry {
    pub key: String,
    pub encoder: usize,
    pub task: usize,
    pub name: String,
    pub recipe: HeadRecipe,
}

/// One attack setting (its kind: `embed`, `task`, `apgd`, …).
pub type AttackParams = AttackSpec;

pub enum Work {
    /// A head's metrics on its evaluation samples.
    Clean { head: usize },
    /// Perturbations of one image set under `params`: EmbedAttack's (no `source`), or the task
    /// attack of the `source` head; scored on every head of `scored` (of `encoder`). A transfer
    /// attack is crafted on encoder `crafter` (EmbedAttack on its embedding, the task attack on
    /// its `source` head) and scored on `encoder`'s heads; else `crafter` is `None` and the
    /// source head is the first scored.
    Attack { encoder: usize, task: usize, params: AttackParams, source: Option<usize>, crafter: Option<usize>, scored: Vec<usize> },
}

/// Whether a cell scores clean images or attacked ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Clean,
    Attack,
}
crate::choices!(Condition { Clean = "clean", Attack = "attack" });

/// What a result row is about, as shown in exports and the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    pub encoder: String,
    pub task: String,
    pub task_kind: Task,
    pub head: String,
    pub dataset: String,
    pub condition: Condition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack: Option<AttackKind>,
    /// The head whose loss the attack maximised (`task/head`); none for EmbedAttack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attacked: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<AttackParams>,
    /// A transfer attack's surrogate: the encoder the perturbation was crafted on (`attacked`
    /// names a head of that encoder); none when crafted on `encoder` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_encoder: Option<String>,
}

pub struct Cell {
    pub key: String,
    pub head: usize,
    pub labels: Labels,
}

pub struct Item {
    pub key: String,
    pub work: Work,
    pub cells: Vec<Cell>,
}

pub struct Plan {
    pub name: String,
    pub protocol: Protocol,
    pub size: Option<usize>,
    pub attack_batch_size: usize,
    pub encoder_batch_size: usize,
    pub examples: usize,
    pub cache_dir: Option<PathBuf>,
    pub encoders: Vec<EncoderEntry>,
    pub tasks: Vec<TaskEntry>,
    pub heads: Vec<HeadEntry>,
    /// Sorted by key.
    pub items: Vec<Item>,
    /// Per (encoder, task): the transforms of its images and its window.
    inputs: BTreeMap<(usize, usize), (Vec<Transform>, Option<Window>)>,
}

/// A short stable hash of a JSON value (keys sorted).
pub fn key_of(v: &serde_json::Value) -> String {
    blake3::hash(v.to_string().as_bytes()).to_hex()[..32].to_string()
}

impl Plan {
    /// The transforms of `task`'s images for `encoder`.
    pub fn transforms(&self, encoder: usize, task: usize) -> Vec<Transform> {
        self.inputs[&(encoder, task)].0.clone()
    }

    /// The windows `task`'s images are seen through for `encoder` (dense tasks; `None`: the
    /// transformed image as it is).
    pub fn window(&self, encoder: usize, task: usize) -> Option<Window> {
        self.inputs[&(encoder, task)].1
    }

    /// Every encoder × task's transforms and window: the file's, else the protocol's; an image
    /// side that does not fit an encoder's patch (under the study), a window on a classification
    /// task and tasks of one image set seen differently are refused here.
    fn plan_inputs(&mut self, l: &Loaded) -> Result<()> {
        for (e, enc) in self.encoders.iter().enumerate() {
            for (t, task) in self.tasks.iter().enumerate() {
                let transforms = match &task.transforms {
                    Some(ts) => ts.clone(),
                    None => self
                        .protocol
                        .transforms(task.task, enc.family, enc.patch_size, self.size)
                        .with_context(|| format!("{}: encoder '{}', task '{}'", l.path.display(), enc.name, task.name))?,
                };
                let side = short_side(&transforms).or(self.size);
                let window = task.window.or_else(|| self.protocol.window(task.task, enc.family, side));
                self.inputs.insert((e, t), (transforms, window));
            }
            for (t, task) in self.tasks.iter().enumerate() {
                let Some(o) = (0..t).find(|&o| self.tasks[o].group == task.group) else { continue };
                if self.inputs[&(e, o)].1 != self.inputs[&(e, t)].1 {
                    bail!(
                        "{}: tasks '{}' and '{}' share their images but see them through different windows ({} and {}) for \
                         encoder '{}'; one perturbation per image needs one view of it",
                        l.path.display(),
                        self.tasks[o].name,
                        task.name,
                        self.inputs[&(e, o)].1.map_or("none".into(), |w| w.to_string()),
                        self.inputs[&(e, t)].1.map_or("none".into(), |w| w.to_string()),
                        enc.name
                    );
                }
            }
        }
        Ok(())
    }

    /// The transforms' names (as keys and head files record them).
    fn transform_names(&self, encoder: usize, task: usize) -> Vec<String> {
        self.transforms(encoder, task).iter().map(Transform::describe).collect()
    }

    /// The features request for `data` (a split of `len` samples) of head `head`'s task, on its
    /// encoder; for `training`, with the head recipe's augmentation.
    pub fn request(&self, head: usize, data: &DataRef, len: usize, training: bool) -> crate::features::Request {
        let (encoder, task) = (self.heads[head].encoder, self.heads[head].task);
        let recipe = &self.heads[head].recipe;
        let transforms = self.transforms(encoder, task);
        let augment = if training && !recipe.augment.is_none() { recipe.augment.training_transforms(&transforms) } else { vec![] };
        crate::features::Request {
            layout: recipe.layout(),
            transforms,
            indices: data.indices(len),
            batch_size: self.encoder_batch_size,
            augment,
            augment_seed: recipe.train.seed,
        }
    }

    /// Plans `loaded`, opening every dataset and reading every checkpoint to check them.
    pub fn new(l: &Loaded) -> Result<Plan> {
        let x = &l.experiment;
        let mut encoders = Vec::new();
        for e in &x.encoders {
            let checkpoint = l.resolve(e.checkpoint.get_ref());
            let options = LoadOptions {
                arch: e.arch.as_ref().map_or(Ok(crate::encoder::arch::ArchChoice::Auto), |a| a.get_ref().parse())?,
                pos_resize: e.pos_resize.as_ref().map(|p| p.get_ref().parse()).transpose()?,
                heads: e.num_heads,
                prefer: e.backbone.clone(),
                device: candle_core::Device::Cpu,
                precision: e.precision.as_ref().map_or(x.run.precision, |p| *p.get_ref()),
            };
            if let Err(err) = options.precision.check(&candle_core::Device::Cpu, candle_core::DType::F32) {
                return Err(match &e.precision {
                    Some(p) => l.error(p, format!("{err:#}")),
                    None => l.error(&e.checkpoint, format!("{err:#} (precision from [run])")),
                });
            }
            // Read, not built: the runner builds each encoder once, when its work starts.
            let info = Encoder::describe(&checkpoint, &options).map_err(|err| l.error(&e.checkpoint, format!("{err:#}")))?;
            encoders.push(EncoderEntry {
                name: e.name.get_ref().clone(),
                checkpoint,
                fingerprint: Encoder::fingerprint_of(&info, options.precision)?,
                patch_size: info.config.patch_size,
                family: info.config.family,
                options,
            });
        }
        let mut tasks: Vec<TaskEntry> = Vec::new();
        for t in &x.tasks {
            let data = |d: &super::config::DataTable, defaults: &[Split]| -> Result<(DataRef, usize)> {
                let dataset = l.resolve_dataset(&d.dataset)?;
                let split = d.split.as_ref().map(|s| s.get_ref().parse()).transpose()?;
                let (ds, split) = crate::data::open_first(&dataset, split, defaults).map_err(|e| l.error(&d.dataset, format!("{e:#}")))?;
                let r = DataRef { dataset, split, limit: d.limit, subset_seed: d.subset_seed };
                let n = r.indices(ds.len()).len();
                if n == 0 {
                    return Err(l.error(&d.dataset, format!("{}: the {split} split is empty", ds.describe())));
                }
                Ok((r, n))
            };
            let (train, _) = data(&t.train, &[Split::Train])?;
            let (eval, eval_samples) = data(&t.eval, &[Split::Val, Split::Test])?;
            let group = t
                .images
                .as_ref()
                .map(|g| format!("images:{}", g.get_ref()))
                .unwrap_or_else(|| serde_json::to_string(&eval).expect("plain data"));
            let transforms = t.transforms.as_ref().map(|s| Transform::parse_list(s.get_ref())).transpose()?;
            let window = l.window(t)?;
            if let (Some(_), Task::Cls, Some(w)) = (window, t.task, &t.window) {
                return Err(l.error(w, "a window is for the dense tasks (seg, depth): a classifier sees the whole image at once"));
            }
            if let Some(other) = tasks.iter().find(|o| o.group == group) {
                if other.eval_samples != eval_samples || other.transforms != transforms {
                    let g = t.images.as_ref().expect("only named groups can differ");
                    return Err(l.error(g, format!(
                        "task '{}' shares images '{}' with task '{}', but evaluates {eval_samples} samples{} where it evaluates {}; tasks of one image set need the same samples and transforms",
                        t.name.get_ref(), g.get_ref(), other.name, if other.transforms != transforms { " with other transforms" } else { "" }, other.eval_samples
                    )));
                }
            }
            tasks.push(TaskEntry { name: t.name.get_ref().clone(), task: t.task, train, eval, group, transforms, window, eval_samples });
        }
        let mut plan = Plan {
            name: x.name.clone().unwrap_or_else(|| l.path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()),
            protocol: x.run.protocol,
            size: x.run.size,
            attack_batch_size: x.run.attack_batch_size,
            encoder_batch_size: x.run.encoder_batch_size,
            examples: x.run.examples,
            cache_dir: x.run.cache_dir.as_ref().map(|c| l.resolve(c.get_ref())),
            encoders,
            tasks,
            heads: Vec::new(),
            items: Vec::new(),
            inputs: BTreeMap::new(),
        };
        plan.plan_inputs(l)?;
        plan.plan_heads(l)?;
        plan.plan_items(l)?;
        Ok(plan)
    }

    fn plan_heads(&mut self, l: &Loaded) -> Result<()> {
        for e in 0..self.encoders.len() {
            for (t, spec) in l.experiment.tasks.iter().enumerate() {
                let task = self.tasks[t].task;
                let default = HeadTable::default();
                let specs: Vec<&HeadTable> =
                    if spec.heads.is_empty() { vec![&default] } else { spec.heads.iter().map(|h| h.get_ref()).collect() };
                for (k, h) in specs.iter().enumerate() {
                    let options = HeadOptions { recipe: h.options.recipe.or(Some(self.protocol.head_recipe())), ..h.options.clone() };
                    let recipe = options.recipe(task);
                    recipe
                        .check()
                        .map_err(|err| anyhow::anyhow!("{}: task '{}', head {}: {err}", l.path.display(), spec.name.get_ref(), k + 1))?;
                    let name = h.name.clone().unwrap_or_else(|| if specs.len() == 1 { "head".into() } else { format!("head{}", k + 1) });
                    let key = key_of(&serde_json::json!({
                        "what": "head",
                        "encoder": self.encoders[e].fingerprint,
                        "train": self.tasks[t].train,
                        "transforms": self.transform_names(e, t),
                        "recipe": recipe,
                        "encoder_batch_size": self.encoder_batch_size,
                    }));
                    self.heads.push(HeadEntry { key, encoder: e, task: t, name, recipe });
                }
            }
        }
        Ok(())
    }

    /// Head `h`'s counterpart on encoder `encoder`: the head of the same task at the same place
    /// in the task's list (heads are planned alike for every encoder).
    fn counterpart(&self, h: usize, encoder: usize) -> usize {
        let task = self.heads[h].task;
        let of = |e: usize| (0..self.heads.len()).filter(move |&o| self.heads[o].encoder == e && self.heads[o].task == task);
        let place = of(self.heads[h].encoder).position(|o| o == h).expect("a head is among its encoder's");
        of(encoder).nth(place).expect("every encoder has the same heads")
    }

    /// `task/head` (or the task alone when it has one head), for tables.
    pub fn head_label(&self, h: usize) -> String {
        let head = &self.heads[h];
        let siblings = self.heads.iter().filter(|o| o.encoder == head.encoder && o.task == head.task).count();
        let task = &self.tasks[head.task].name;
        if siblings == 1 {
            task.clone()
        } else {
            format!("{task}/{}", head.name)
        }
    }

    fn labels(&self, h: usize, condition: Condition, attack: Option<(&AttackParams, Option<usize>)>, crafter: Option<usize>) -> Labels {
        let head = &self.heads[h];
        let t = &self.tasks[head.task];
        Labels {
            encoder: self.encoders[head.encoder].name.clone(),
            task: t.name.clone(),
            task_kind: t.task,
            head: head.name.clone(),
            dataset: format!("{} ({})", t.eval.dataset, t.eval.split),
            condition,
            attack: attack.map(|(p, source)| match source {
                Some(s) => p.kind.against(self.tasks[self.heads[s].task].task),
                None => p.kind,
            }),
            attacked: attack.and_then(|(_, s)| s).map(|s| self.head_label(s)),
            params: attack.map(|(p, _)| p.clone()),
            source_encoder: crafter.map(|c| self.encoders[c].name.clone()),
        }
    }

    fn plan_items(&mut self, l: &Loaded) -> Result<()> {
        let mut items = Vec::new();
        for h in 0..self.heads.len() {
            let head = &self.heads[h];
            let mut id = serde_json::json!({
                "what": "clean",
                "head": head.key,
                "eval": self.tasks[head.task].eval,
                "transforms": self.transform_names(head.encoder, head.task),
            });
            if let Some(w) = self.window(head.encoder, head.task) {
                id["window"] = w.to_string().into();
            }
            let key = key_of(&id);
            let cells = vec![Cell { key: key.clone(), head: h, labels: self.labels(h, Condition::Clean, None, None) }];
            items.push(Item { key, work: Work::Clean { head: h }, cells });
        }
        // (setting, for a transfer attack: the encoder it is crafted on and those it is scored on)
        let mut settings: Vec<(AttackParams, Option<usize>, Vec<usize>)> = Vec::new();
        let index =
            |names: Vec<String>| -> Vec<usize> { names.iter().filter_map(|n| self.encoders.iter().position(|e| &e.name == n)).collect() };
        for a in &l.experiment.attacks {
            let crafters: Vec<Option<usize>> = match &a.source_encoder {
                None => vec![None],
                Some(_) => index(l.encoder_names(a.source_encoder.as_ref(), "source_encoder")?).into_iter().map(Some).collect(),
            };
            let targets: Vec<usize> = match &a.target_encoder {
                None => (0..self.encoders.len()).collect(),
                Some(_) => index(l.encoder_names(a.target_encoder.as_ref(), "target_encoder")?),
            };
            let step = l.step_size(a)?;
            let step_text =
                crate::attacks::spec::step_text(a.step_size.as_ref().map(|s| s.get_ref().as_str()).or(self.protocol.step_text()));
            let defaults = self.protocol.attack_defaults();
            for &kind in &a.kinds {
                for norm in a.norm.to_vec() {
                    for (eps, eps_text) in l.eps(a)? {
                        for steps in a.steps.as_ref().map_or_else(|| vec![kind.default_steps()], |s| s.to_vec()) {
                            for seed in a.seeds.to_vec() {
                                let p = AttackParams {
                                    kind,
                                    norm,
                                    eps,
                                    eps_text: eps_text.clone(),
                                    step_size: step.at(eps),
                                    step_text: step_text.clone(),
                                    steps,
                                    seed,
                                    restarts: a.restarts,
                                    random_start: a.random_start,
                                    embed_target: a.embed_target,
                                    embed_distance: a.embed_distance,
                                    embed_scope: a.embed_scope,
                                    segpgd: a.segpgd.unwrap_or(defaults.segpgd),
                                    ce_scaling: a.ce_scaling.unwrap_or(defaults.ce_scaling),
                                    iterate: a.iterate.unwrap_or(self.protocol.iterate(kind)),
                                    curve: a.curve,
                                    queries: a.queries.unwrap_or(AttackSpec::DEFAULT_QUERIES),
                                };
                                for &crafter in &crafters {
                                    match settings.iter_mut().find(|(q, c, _)| q == &p && *c == crafter) {
                                        Some((_, _, scored_on)) => {
                                            let more: Vec<usize> = targets.iter().copied().filter(|t| !scored_on.contains(t)).collect();
                                            scored_on.extend(more);
                                        }
                                        None => settings.push((p.clone(), crafter, targets.clone())),
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        for e in 0..self.encoders.len() {
            // Image sets: the first task of each group gives the images, in file order.
            let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (t, task) in self.tasks.iter().enumerate() {
                groups.entry(task.group.as_str()).or_default().push(t);
            }
            for (p, crafter, scored_on) in &settings {
                // A transfer attack is scored on its targets but its surrogate.
                if *crafter == Some(e) || (crafter.is_some() && !scored_on.contains(&e)) {
                    continue;
                }
                for members in groups.values() {
                    if let Some(c) = *crafter {
                        for &t in members {
                            let view = |e: usize| super::transfer::View {
                                encoder: &self.encoders[e].name,
                                transforms: self.transforms(e, t),
                                window: self.window(e, t),
                            };
                            super::transfer::check_views(&self.tasks[t].name, &view(c), &view(e))
                                .with_context(|| l.path.display().to_string())?;
                        }
                    }
                    let heads_of = |ts: &[usize]| -> Vec<usize> {
                        (0..self.heads.len()).filter(|&h| self.heads[h].encoder == e && ts.contains(&self.heads[h].task)).collect()
                    };
                    let all = heads_of(members);
                    // (the head attacked, or none for EmbedAttack; the task whose images; the heads scored)
                    let runs: Vec<(Option<usize>, usize, Vec<usize>)> = if p.kind.aims_at_head() {
                        all.iter()
                            .filter(|&&h| p.kind.fits(self.tasks[self.heads[h].task].task))
                            .map(|&h| (Some(h), self.heads[h].task, all.clone()))
                            .collect()
                    } else if p.embed_scope == EmbedScope::PerTask {
                        // The study's: one EmbedAttack per task, on that task's embedding.
                        members.iter().map(|&t| (None, t, heads_of(&[t]))).filter(|(_, _, s)| !s.is_empty()).collect()
                    } else {
                        vec![(None, members[0], all.clone())]
                    };
                    for (attacked, images_task, scored) in runs {
                        let mut scored = scored;
                        if let Some(s) = attacked {
                            scored.retain(|&h| h != s);
                            scored.insert(0, s);
                        }
                        // The head whose loss is maximised: the attacked one, or its counterpart on the surrogate.
                        let source = match *crafter {
                            Some(c) => attacked.map(|h| self.counterpart(h, c)),
                            None => attacked,
                        };
                        let mut id = serde_json::json!({
                            "what": "attack",
                            "encoder": self.encoders[e].fingerprint,
                            "images": self.tasks[images_task].eval,
                            "transforms": self.transform_names(e, images_task),
                            "params": p,
                            "batch": self.attack_batch_size,
                            "source": source.map(|s| &self.heads[s].key),
                        });
                        if let Some(w) = self.window(e, images_task) {
                            id["window"] = w.to_string().into();
                        }
                        if p.kind.revision() > 1 {
                            id["revision"] = p.kind.revision().into();
                        }
                        if let Some(c) = *crafter {
                            id["crafted_on"] = self.encoders[c].fingerprint.clone();
                        }
                        let key = key_of(&id);
                        let cells = scored
                            .iter()
                            .map(|&h| Cell {
                                key: key_of(&serde_json::json!({ "item": key, "head": self.heads[h].key, "labels": self.tasks[self.heads[h].task].eval })),
                                head: h,
                                labels: self.labels(h, Condition::Attack, Some((p, source)), *crafter),
                            })
                            .collect();
                        items.push(Item {
                            key,
                            work: Work::Attack { encoder: e, task: images_task, params: p.clone(), source, crafter: *crafter, scored },
                            cells,
                        });
                    }
                }
            }
        }
        items.sort_by(|a, b| a.key.cmp(&b.key));
        if items.windows(2).any(|w| w[0].key == w[1].key) {
            bail!("{}: two work items have the same identity (a repeated task or attack setting?)", l.path.display());
        }
        self.items = items;
        Ok(())
    }

    /// Every cell of the plan, (key, labels), in the experiment's order: by encoder, task and
    /// head as the file lists them, clean before attacked.
    pub fn cells(&self) -> Vec<(&str, &Labels)> {
        let mut cells: Vec<&Cell> = self.items.iter().flat_map(|i| &i.cells).collect();
        cells.sort_by_key(|c| (self.heads[c.head].encoder, self.heads[c.head].task, c.head, c.labels.condition != Condition::Clean));
        cells.into_iter().map(|c| (c.key.as_str(), &c.labels)).collect()
    }

    /// The items of shard `index` of `count` (every `count`-th of the key-sorted list).
    pub fn shard(&self, index: usize, count: usize) -> Vec<&Item> {
        self.items.iter().enumerate().filter(|(i, _)| i % count == index).map(|(_, it)| it).collect()
    }

    /// The heads the items use.
    pub fn heads_of(&self, items: &[&Item]) -> Vec<usize> {
        let mut heads: Vec<usize> = items
            .iter()
            .flat_map(|i| match &i.work {
                Work::Clean { head } => vec![*head],
                Work::Attack { scored, .. } => scored.clone(),
            })
            .collect();
        heads.sort_unstable();
        heads.dedup();
        heads
    }

    /// The surrogates the items craft transfer attacks on, each with its heads that their task
    /// attacks maximise.
    pub fn crafters_of(&self, items: &[&Item]) -> BTreeMap<usize, Vec<usize>> {
        let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for item in items {
            if let Work::Attack { crafter: Some(c), source, .. } = &item.work {
                let heads = out.entry(*c).or_default();
                if let Some(s) = source.filter(|s| !heads.contains(s)) {
                    heads.push(s);
                }
            }
        }
        out
    }

    pub fn describe(&self, item: &Item) -> String {
        match &item.work {
            Work::Clean { head } => format!("{} · {} · clean", self.encoders[self.heads[*head].encoder].name, self.head_label(*head)),
            Work::Attack { encoder, params, source, crafter, scored, .. } => {
                let c = &item.cells[0].labels;
                let on = match source {
                    Some(s) => self.head_label(*s),
                    None => scored.iter().map(|&h| self.head_label(h)).collect::<Vec<_>>().join("+"),
                };
                let from = crafter.map(|c| format!(" crafted on {}", self.encoders[c].name)).unwrap_or_default();
                format!(
                    "{} · {on} · {}{from} ε {} ({} steps, seed {})",
                    self.encoders[*encoder].name,
                    c.attack.map_or("?", |k| k.name()),
                    params.eps_text,
                    params.steps,
                    params.seed
                )
            }
        }
    }
}
