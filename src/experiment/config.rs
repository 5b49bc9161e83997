//! The experiment file (TOML): encoders × tasks (datasets) × heads × attacks × ε × norm × steps ×
//! seeds. Unknown keys and wrong types are refused by the parser with the line they are on; values
//! it cannot judge (an ε that is no amount, a missing checkpoint) are checked here and reported at
//! their line too, before any work starts.
//!
//! The file's tables (`*Table`) keep where each value stood, for those messages; planning turns
//! them into the library's specs (`LoadOptions`, `DataRef`, `HeadOptions`, `AttackSpec`), whose
//! defaults are the command line's too.

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use toml::Spanned;

use super::protocol::Protocol;
use crate::attacks::embed::{Distance, EmbedScope, EmbedTarget};
use crate::attacks::segpgd::SegPgdForm;
use crate::attacks::spec::{AttackKind, AttackSpec, Iterate, StepSize};
use crate::attacks::threat::{parse_amount, Norm};
use crate::encoder::Precision;
use crate::heads::fit::HeadOptions;
use crate::heads::head::Task;
use crate::heads::sliding::Window;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Shown in the report's title.
    pub name: Option<String>,
    #[serde(default)]
    pub run: RunOptions,
    #[serde(rename = "encoder")]
    pub encoders: Vec<EncoderTable>,
    #[serde(rename = "task")]
    pub tasks: Vec<TaskTable>,
    #[serde(rename = "attack", default)]
    pub attacks: Vec<AttackTable>,
}

/// Settings shared by every cell.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunOptions {
    /// robust-ssl (ours, the default) or study: fills every setting the file leaves unset
    /// (`super::protocol`).
    pub protocol: Protocol,
    /// Image side of the default transforms (shorter side resized, centre crop, padded to the
    /// patch); default: the protocol's (224; the study's 518 for DINOv2, 224 for DINO).
    pub size: Option<usize>,
    /// Images attacked together (part of every attack cell's identity: it sets the batches' seeds).
    pub attack_batch_size: usize,
    /// Images per encoder forward when features are computed.
    pub encoder_batch_size: usize,
    /// Example strips kept per attack cell (the first images of its first batch).
    pub examples: usize,
    /// Feature cache folder (default: `cache/` in the run folder).
    pub cache_dir: Option<Spanned<String>>,
    /// Arithmetic of the encoders' matrix products: f32 (default) or bf16 (bf16 operands, f32
    /// sums; CPUs with AVX512-BF16 only). An `[[encoder]]` may set its own.
    pub precision: Precision,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            protocol: Protocol::default(),
            size: None,
            attack_batch_size: AttackSpec::DEFAULT_BATCH_SIZE,
            encoder_batch_size: crate::features::DEFAULT_ENCODER_BATCH,
            examples: 4,
            cache_dir: None,
            precision: Precision::F32,
        }
    }
}

/// An `[[encoder]]`: a checkpoint and how to load it (`LoadOptions`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderTable {
    pub name: Spanned<String>,
    /// .pth, .safetensors or .onnx; relative to the experiment file.
    pub checkpoint: Spanned<String>,
    /// auto (from tensor shapes) or a name such as dinov2_vits14.
    pub arch: Option<Spanned<String>>,
    /// official, size or size-aa (default: from the checkpoint's source).
    pub pos_resize: Option<Spanned<String>>,
    pub num_heads: Option<usize>,
    /// teacher or student, for training checkpoints.
    pub backbone: Option<String>,
    /// f32 or bf16 (default: `[run]`'s): the same checkpoint twice, once in each, puts the two
    /// side by side in the report.
    pub precision: Option<Spanned<Precision>>,
}

/// Which samples of a dataset (a `DataRef` once its path is resolved and its split chosen).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataTable {
    /// KIND:PATH (PATH relative to the experiment file), e.g. cifar10:data/cifar-10-batches-bin.
    pub dataset: Spanned<String>,
    /// train, val or test (default: train for training; val, else test, for evaluation).
    pub split: Option<Spanned<String>>,
    /// A seeded random subset of this many samples.
    pub limit: Option<usize>,
    #[serde(default)]
    pub subset_seed: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTable {
    pub name: Spanned<String>,
    /// cls, seg or depth.
    pub task: Task,
    /// Where its heads are trained.
    pub train: DataTable,
    /// Where they are scored and attacked.
    pub eval: DataTable,
    /// Tasks with the same `images` name are scored on the same images (checked pixel for
    /// pixel): a shared EmbedAttack perturbation (`embed_scope = "shared"`) and cross-task scoring serve all of them.
    pub images: Option<Spanned<String>>,
    /// Transforms (resize-shortN, resizeHxW, cropHxW, padN); default: the protocol's, from
    /// `run.size`.
    pub transforms: Option<Spanned<String>>,
    /// Dense tasks: whole images through sliding windows "CROP:STRIDE" or "whole" (centre-padded),
    /// for the clean figures and inside the attacks; default: the protocol's (none for ours).
    pub window: Option<Spanned<String>>,
    /// The heads to train on this task (default: one with the default settings).
    #[serde(default)]
    pub heads: Vec<Spanned<HeadTable>>,
}

/// A head of a task: an optional name and `train-head`'s settings ([`HeadOptions`]; unset ones
/// take the defaults of its recipe).
#[derive(Debug, Default)]
pub struct HeadTable {
    pub name: Option<String>,
    pub options: HeadOptions,
}

impl<'de> Deserialize<'de> for HeadTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) => Some(s),
            Some(other) => return Err(D::Error::custom(format!("a head's name must be a string, not {}", other.type_str()))),
            None => None,
        };
        let options = HeadOptions::deserialize(toml::Value::Table(table)).map_err(|e| D::Error::custom(e.message()))?;
        Ok(HeadTable { name, options })
    }
}

/// One value or a list of them. A wrong value is reported as its own type's error (`'l3' is not
/// one of linf, l2`), at the key's line.
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let value = toml::Value::deserialize(d)?;
        let many = value.is_array();
        let why = |e: toml::de::Error| D::Error::custom(e.message().trim_end().to_string());
        Ok(if many { Self::Many(Vec::<T>::deserialize(value).map_err(why)?) } else { Self::One(T::deserialize(value).map_err(why)?) })
    }
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// An amount as a fraction string ("8/255") or a number (0.5).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "an amount: a fraction like \"8/255\" or a number like 0.5")]
pub enum Amount {
    Text(String),
    Number(f64),
}

impl Amount {
    pub fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Number(v) => format!("{v}"),
        }
    }
}

/// A block of attacks: kinds × ε × norms × steps × seeds; unset settings take
/// [`AttackSpec`]'s defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttackTable {
    pub kinds: Vec<AttackKind>,
    pub eps: Vec<Spanned<Amount>>,
    #[serde(default = "default_norm")]
    pub norm: OneOrMany<Norm>,
    /// Iterations (default: the kind's, 20 or AutoAttack's 100 for the APGD family).
    pub steps: Option<OneOrMany<usize>>,
    /// Square's queries per sample, alone or in AutoAttack (default AutoAttack's 5,000).
    pub queries: Option<usize>,
    /// "eps/K" or an amount (default: the protocol's, eps/4 or the study's 2/255).
    pub step_size: Option<Spanned<String>>,
    #[serde(default = "default_seeds")]
    pub seeds: OneOrMany<u64>,
    #[serde(default = "one")]
    pub restarts: usize,
    #[serde(default = "yes")]
    pub random_start: bool,
    /// EmbedAttack's tokens: task (each task's own, the default), cls, patch, patch-prenorm, both.
    #[serde(default = "embed_target")]
    pub embed_target: EmbedTarget,
    #[serde(default = "mse")]
    pub embed_distance: Distance,
    /// EmbedAttack's scope: per-task (the study's, the default) or shared (one perturbation per
    /// image, scored on every task of the image; needs a stated embed_target).
    #[serde(default = "embed_scope")]
    pub embed_scope: EmbedScope,
    /// SegPGD's form: paper or study (default: the protocol's).
    pub segpgd: Option<SegPgdForm>,
    /// PGD's cross-entropy with the study's logit scaling (default: the protocol's).
    pub ce_scaling: Option<bool>,
    /// The point returned: best or last (default: the protocol's).
    pub iterate: Option<Iterate>,
    /// Record each scored head's metric after every step (the study's per-step evaluation),
    /// drawn as metric-vs-step curves in the report.
    #[serde(default)]
    pub curve: bool,
    /// Transfer: craft the perturbations on this encoder (or each of these), a surrogate such as
    /// a public backbone, and score them on the heads of every other encoder of the file
    /// (EmbedAttack on the surrogate's own embedding; a task attack on its head of the same task).
    pub source_encoder: Option<Spanned<OneOrMany<String>>>,
    /// With `source_encoder`: the encoders scored (default: every other one of the file).
    pub target_encoder: Option<Spanned<OneOrMany<String>>>,
}

fn default_norm() -> OneOrMany<Norm> {
    OneOrMany::One(AttackSpec::DEFAULT_NORM)
}
fn default_seeds() -> OneOrMany<u64> {
    OneOrMany::One(AttackSpec::DEFAULT_SEED)
}
fn one() -> usize {
    AttackSpec::DEFAULT_RESTARTS
}
fn yes() -> bool {
    true
}
fn embed_target() -> EmbedTarget {
    AttackSpec::DEFAULT_EMBED_TARGET
}
fn embed_scope() -> EmbedScope {
    AttackSpec::DEFAULT_EMBED_SCOPE
}
fn mse() -> Distance {
    AttackSpec::DEFAULT_EMBED_DISTANCE
}

/// The parsed file, its text and where it lies (for messages and relative paths).
pub struct Loaded {
    pub experiment: Experiment,
    pub path: PathBuf,
    pub text: String,
}

impl Loaded {
    /// Reads and parses `path`; syntax, unknown keys and wrong types are reported at their line.
    pub fn read(path: &Path) -> Result<Self> {
        Self::read_with(path, &[])
    }

    /// Reads `path` with `--set PATH=VALUE` overrides applied ([`super::overrides`]), then checks
    /// the edited text exactly as a file.
    pub fn read_with(path: &Path, sets: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the experiment file", path.display()))?;
        let text = super::overrides::apply(&text, path, sets)?;
        let loaded = Self::parse(path, text);
        match sets.is_empty() {
            true => loaded,
            false => loaded.context("the file with its --set values (each edited line ends in '# --set')"),
        }
    }

    pub fn parse(path: &Path, text: String) -> Result<Self> {
        let experiment: Experiment = toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let me = Self { experiment, path: path.to_path_buf(), text };
        me.check()?;
        Ok(me)
    }

    /// `FILE:LINE:COLUMN` of a span, for messages.
    pub fn at(&self, span: Range<usize>) -> String {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
        format!("{}:{line}:{column}", self.path.display())
    }

    /// An error at a value's line.
    pub fn error<T>(&self, value: &Spanned<T>, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: {what}", self.at(value.span()))
    }

    /// The folder relative paths start from.
    pub fn base(&self) -> PathBuf {
        self.path.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| PathBuf::from("."))
    }

    /// A path of the file, relative to the file's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base().join(p)
        }
    }

    /// `KIND:PATH` with PATH resolved (synthetic datasets have no path).
    pub fn resolve_dataset(&self, spec: &Spanned<String>) -> Result<String> {
        let s = spec.get_ref();
        let Some((kind, path)) = s.split_once(':') else {
            return Err(self.error(spec, format!("dataset '{s}' should be KIND:PATH with KIND one of {}", crate::data::KINDS.join(", "))));
        };
        if !crate::data::KINDS.contains(&kind) {
            return Err(self.error(spec, format!("unknown dataset kind '{kind}'; expected one of {}", crate::data::KINDS.join(", "))));
        }
        if kind.starts_with("synthetic-") {
            return Ok(s.clone());
        }
        let p = self.resolve(path);
        if !p.exists() {
            return Err(self.error(spec, format!("{}: no such file or folder (dataset {kind})", p.display())));
        }
        let p = std::fs::canonicalize(&p).unwrap_or(p);
        Ok(format!("{kind}:{}", p.display()))
    }

    /// Step size of an attack block.
    pub fn step_size(&self, a: &AttackTable) -> Result<StepSize> {
        let Some(s) = &a.step_size else { return Ok(self.experiment.run.protocol.attack_defaults().step) };
        StepSize::parse(s.get_ref()).map_err(|err| self.error(s, err))
    }

    /// The window a task states, checked at its line.
    pub fn window(&self, t: &TaskTable) -> Result<Option<Window>> {
        t.window.as_ref().map(|w| w.get_ref().parse().map_err(|err| self.error(w, err))).transpose()
    }

    /// The ε values of an attack block.
    pub fn eps(&self, a: &AttackTable) -> Result<Vec<(f64, String)>> {
        a.eps
            .iter()
            .map(|e| {
                let text = e.get_ref().text();
                let v = parse_amount(&text).map_err(|err| self.error(e, err))?;
                Ok((v, text))
            })
            .collect()
    }

    /// The encoder names of an attack block's `key` (source_encoder, target_encoder), checked
    /// to be the file's.
    pub fn encoder_names(&self, names: Option<&Spanned<OneOrMany<String>>>, key: &str) -> Result<Vec<String>> {
        let Some(spanned) = names else { return Ok(Vec::new()) };
        let list = spanned.get_ref().to_vec();
        if list.is_empty() {
            return Err(self.error(spanned, format!("{key} names no encoder: give one name or a list of them")));
        }
        let known: Vec<&str> = self.experiment.encoders.iter().map(|e| e.name.get_ref().as_str()).collect();
        if let Some(name) = list.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(self.error(spanned, format!("{key} '{name}' is no [[encoder]] of this file (they are: {})", known.join(", "))));
        }
        Ok(list)
    }

    /// What can be judged from the file alone: names, lists, amounts, paths.
    fn check(&self) -> Result<()> {
        let x = &self.experiment;
        let file = self.path.display();
        if x.encoders.is_empty() {
            bail!("{file}: no [[encoder]]: name at least one encoder checkpoint");
        }
        if x.tasks.is_empty() {
            bail!("{file}: no [[task]]: name at least one task (cls, seg or depth) with its train and eval data");
        }
        let r = &x.run;
        if r.size == Some(0) || r.attack_batch_size == 0 || r.encoder_batch_size == 0 {
            bail!("{file}: [run] size, attack_batch_size and encoder_batch_size must be at least 1");
        }
        unique(self, x.encoders.iter().map(|e| &e.name), "encoder")?;
        unique(self, x.tasks.iter().map(|t| &t.name), "task")?;
        for e in &x.encoders {
            let p = self.resolve(e.checkpoint.get_ref());
            if !p.exists() {
                return Err(self.error(&e.checkpoint, format!("{}: no such checkpoint file or model folder", p.display())));
            }
            if let Some(a) = &e.arch {
                a.get_ref().parse::<crate::encoder::arch::ArchChoice>().map_err(|err| self.error(a, err))?;
            }
            if let Some(p) = &e.pos_resize {
                p.get_ref().parse::<crate::encoder::pos_embed::PosResize>().map_err(|err| self.error(p, err))?;
            }
        }
        for t in &x.tasks {
            for d in [&t.train, &t.eval] {
                self.resolve_dataset(&d.dataset)?;
                if let Some(s) = &d.split {
                    s.get_ref().parse::<crate::data::Split>().map_err(|err| self.error(s, err))?;
                }
            }
            if let Some(tr) = &t.transforms {
                crate::data::transform::Transform::parse_list(tr.get_ref()).map_err(|err| self.error(tr, format!("{err:#}")))?;
            }
            let mut names: Vec<&Spanned<HeadTable>> = Vec::new();
            for h in &t.heads {
                if let Some(first) = h.get_ref().name.as_ref().and_then(|n| names.iter().find(|o| o.get_ref().name.as_ref() == Some(n))) {
                    let what = format!(
                        "a second head named '{}' in task '{}' (the first is at {})",
                        first.get_ref().name.as_deref().unwrap_or(""),
                        t.name.get_ref(),
                        self.at(first.span())
                    );
                    return Err(self.error(h, what));
                }
                h.get_ref().options.check(t.task).map_err(|err| self.error(h, err))?;
                names.push(h);
            }
        }
        for a in &x.attacks {
            if a.kinds.is_empty() || a.eps.is_empty() {
                bail!("{file}: an [[attack]] block needs at least one of kinds (embed, task, apgd) and one eps");
            }
            self.eps(a)?;
            self.step_size(a)?;
            if a.steps.as_ref().is_some_and(|s| s.to_vec().contains(&0)) || a.seeds.to_vec().is_empty() || a.restarts == 0 {
                bail!("{file}: an [[attack]] block needs steps >= 1, restarts >= 1 and at least one seed");
            }
            if a.queries == Some(0) {
                bail!("{file}: an [[attack]] block needs queries >= 1 (Square's budget)");
            }
            if a.curve && a.restarts > 1 {
                bail!("{file}: an [[attack]] block with curve = true follows one run of each attack: it needs restarts = 1");
            }
            if let Some(k) = a.kinds.iter().find(|k| a.iterate == Some(Iterate::Last) && k.keeps_best()) {
                bail!("{file}: an [[attack]] block with iterate = \"last\" cannot run {k}, which keeps its best point by design");
            }
            if let Some(k) = a.kinds.iter().find(|k| a.curve && k.is_ensemble()) {
                bail!("{file}: an [[attack]] block with curve = true cannot run {k}: an ensemble records no per-step curve");
            }
            let sources = self.encoder_names(a.source_encoder.as_ref(), "source_encoder")?;
            let targets = self.encoder_names(a.target_encoder.as_ref(), "target_encoder")?;
            if let (Some(t), [only]) = (&a.target_encoder, sources.as_slice()) {
                if targets.iter().all(|n| n == only) {
                    return Err(
                        self.error(t, format!("target_encoder names only the source, '{only}': a transfer is scored on another encoder"))
                    );
                }
            }
            match (&a.source_encoder, &a.target_encoder) {
                (None, Some(t)) => return Err(self.error(t, "target_encoder is for transfer attacks: state their source_encoder too")),
                (Some(s), _) if x.encoders.len() < 2 => {
                    return Err(self.error(s, "a transfer attack needs another encoder to score on: this file has one [[encoder]]"))
                }
                _ => {}
            }
            if a.kinds.iter().any(|k| k.is_embed()) && a.embed_scope == EmbedScope::Shared && a.embed_target == EmbedTarget::Task {
                bail!(
                    "{file}: an [[attack]] block with embed_scope = \"shared\" scores one perturbation on every task of the images: \
                     state its embed_target (cls, patch, patch-prenorm or both); \"task\" is one embedding per task"
                );
            }
        }
        if let Some(c) = &r.cache_dir {
            let p = self.resolve(c.get_ref());
            if p.exists() && !p.is_dir() {
                return Err(self.error(c, format!("{}: not a folder", p.display())));
            }
        }
        Ok(())
    }
}

/// Refuses two entries of the same name.
fn unique<'a>(l: &Loaded, names: impl Iterator<Item = &'a Spanned<String>>, what: &str) -> Result<()> {
    let mut seen: Vec<&Spanned<String>> = Vec::new();
    for n in names {
        if n.get_ref().trim().is_empty() {
            return Err(l.error(n, format!("an empty {what} name")));
        }
        if let Some(first) = seen.iter().find(|s| s.get_ref() == n.get_ref()) {
            return Err(l.error(n, format!("a second {what} named '{}' (the first is at {})", n.get_ref(), l.at(first.span()))));
        }
        seen.push(n);
    }
    Ok(())
}
