//! Cross-task scoring for `robust-ssl attack --also TASK:HEAD[@KIND:PATH]`: the perturbation of
//! each image is computed once (against the attack's own objective; EmbedAttack's needs no head)
//! and scored on further heads of that image's tasks, each against its own labels. A head's
//! dataset must give the very same pixels as the attacked one at every index; that is checked.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::features::Prepared;
use robust_ssl::attacks::scoring::{labels_of_same_images, HeadScores};
use robust_ssl::data::transform::{load_batch, Transform};
use robust_ssl::data::{self, Dataset};
use robust_ssl::features::{targets_of, Targets};
use robust_ssl::heads::evaluate::{Evaluation, Scorer};
use robust_ssl::heads::head::{Task, TrainedHead};
use robust_ssl::heads::trainer::check_features;

/// `TASK:HEAD[@KIND:PATH]`, as given on the command line.
#[derive(Debug, Clone)]
pub struct AlsoSpec {
    pub task: Task,
    pub head: PathBuf,
    /// Where this head's labels come from (default: the attacked dataset).
    pub dataset: Option<String>,
}

/// Splits `TASK:REST` as `flag` takes it; errors quote `s` and show the expected `form`.
pub fn task_and_rest<'a>(s: &'a str, flag: &str, form: &str) -> Result<(Task, &'a str)> {
    let Some((task, rest)) = s.split_once(':') else { bail!("{flag} '{s}': {form}") };
    let task = task.parse::<Task>().map_err(|_| anyhow::anyhow!("{flag} '{s}': unknown task '{task}' (cls, seg, depth); {form}"))?;
    Ok((task, rest))
}

impl FromStr for AlsoSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let form = "expected TASK:HEAD[@KIND:PATH], e.g. depth:depth.safetensors@synthetic-depth:64x224";
        let (task, rest) = task_and_rest(s, "--also", form)?;
        let (head, dataset) = match rest.split_once('@') {
            Some((h, d)) => (h, Some(d.to_string())),
            None => (rest, None),
        };
        if head.is_empty() || dataset.as_deref() == Some("") {
            bail!("--also '{s}': {form}");
        }
        Ok(Self { task, head: PathBuf::from(head), dataset })
    }
}

/// One further head, its file name and where its labels come from.
pub struct AlsoHead {
    pub spec: AlsoSpec,
    pub file: String,
    pub head: TrainedHead,
    dataset: Option<Box<dyn Dataset>>,
}

/// Its clean and adversarial metrics, as reported.
#[derive(Serialize)]
pub struct AlsoReport {
    pub task: Task,
    pub head: String,
    pub dataset: String,
    pub clean: Evaluation,
    pub adversarial: Evaluation,
}

fn fits(task: Task, targets: &Targets) -> bool {
    matches!(
        (task, targets),
        (Task::Cls, Targets::Class(_)) | (Task::Seg, Targets::Segmentation { .. }) | (Task::Depth, Targets::Depth { .. })
    )
}

impl AlsoHead {
    /// Loads the head and opens its dataset at the attacked split, checking that the head reads
    /// this encoder's features of images made the same way, and that the dataset has the labels.
    pub fn open(spec: &AlsoSpec, prep: &Prepared, dim: usize) -> Result<Self> {
        let file = spec.head.display().to_string();
        let head = TrainedHead::load_for(&spec.head, spec.task, &Device::Cpu)?;
        check_features(&head.meta, dim, &file)?;
        let used: Vec<String> = prep.request.transforms.iter().map(Transform::describe).collect();
        if head.meta.transforms != used {
            bail!(
                "{file}: the head was trained on images made with [{}], the attacked images are made with [{}]; cross-task scoring needs heads trained on the same transforms",
                head.meta.transforms.join(","),
                used.join(",")
            );
        }
        let dataset = match &spec.dataset {
            Some(d) => {
                let ds = data::open(d, prep.split).with_context(|| format!("--also {file}"))?;
                if ds.len() != prep.dataset.len() {
                    bail!(
                        "{}: {} samples, but {} has {}; cross-task scoring needs the same images",
                        ds.describe(),
                        ds.len(),
                        prep.dataset.describe(),
                        prep.dataset.len()
                    );
                }
                Some(ds)
            }
            None => None,
        };
        let me = Self { spec: spec.clone(), file, head, dataset };
        let first = &prep.request.indices[..1];
        let ds = me.dataset.as_deref().unwrap_or(prep.dataset.as_ref());
        let probe = targets_of(ds, first, load_batch(ds, first, &[])?)?;
        if !fits(spec.task, &probe) {
            bail!(
                "{}: its samples carry no {} labels for {}; name a dataset that does with {}@KIND:PATH",
                me.describe(prep),
                spec.task,
                me.file,
                spec.head.display()
            );
        }
        Ok(me)
    }

    fn describe(&self, prep: &Prepared) -> String {
        self.dataset.as_ref().unwrap_or(&prep.dataset).describe()
    }

    /// This head's labels for `ids` (None: the attacked dataset's own), after checking
    /// that its dataset gives exactly the attacked `images`.
    pub fn labels(&self, prep: &Prepared, ids: &[usize], images: &Tensor) -> Result<Option<Targets>> {
        let Some(ds) = &self.dataset else { return Ok(None) };
        Ok(Some(labels_of_same_images(ds.as_ref(), ids, &prep.request.transforms, images, &prep.dataset.describe(), false)?))
    }
}

/// The further heads and their running scores, clean and adversarial.
pub struct CrossTask<'a> {
    heads: &'a [AlsoHead],
    scores: Vec<(Scorer<'a>, Scorer<'a>)>,
}

impl<'a> CrossTask<'a> {
    pub fn new(heads: &'a [AlsoHead]) -> Result<Self> {
        let scores = heads.iter().map(|h| Ok((Scorer::new(&h.head, &h.file)?, Scorer::new(&h.head, &h.file)?))).collect::<Result<_>>()?;
        Ok(Self { heads, scores })
    }

    /// Adds one batch's scores of the further heads, in their order.
    pub fn add(&mut self, scores: &[HeadScores]) -> Result<()> {
        for ((c, a), s) in self.scores.iter_mut().zip(scores) {
            c.merge(&s.clean)?;
            a.merge(&s.adversarial)?;
        }
        Ok(())
    }

    pub fn finish(self, prep: &Prepared) -> Result<Vec<AlsoReport>> {
        self.heads
            .iter()
            .zip(self.scores)
            .map(|(h, (c, a))| {
                Ok(AlsoReport {
                    task: h.spec.task,
                    head: h.file.clone(),
                    dataset: h.describe(prep),
                    clean: c.finish()?,
                    adversarial: a.finish()?,
                })
            })
            .collect()
    }
}
