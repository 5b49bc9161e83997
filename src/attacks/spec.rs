//! What an attack is, as a user states it: its kind ([`AttackKind`]: EmbedAttack, a head's own
//! task attack, APGD) and the objective each kind maximises, its threat model and schedule
//! ([`AttackSpec`], with every default written here once, for the command line and experiment
//! files alike), and the engine settings one run of it takes ([`AttackConfig`]). A new attack
//! kind is a variant here and, with a new loss, one objective file.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::depthpgd::DepthPgd;
use super::dlr::Dlr;
use super::embed::{Distance, EmbedScope, EmbedTarget};
use super::objective::Objective;
use super::pgd_ce::CrossEntropy;
use super::seg_losses::{SegLoss, SegObjective};
use super::segpgd::{SegPgd, SegPgdForm};
use super::threat::{parse_amount, Norm, ThreatModel};
use crate::features::Targets;
use crate::heads::head::{Head, Task, TrainedHead};

/// AutoAttack's number of target classes for APGD-T and FAB-T (its standard version).
pub const TARGET_CLASSES: usize = 9;

/// Which attack: EmbedAttack, or a head's task loss maximised with PGD or APGD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttackKind {
    /// EmbedAttack: the distance of the tokens to the clean ones (task-agnostic; one
    /// perturbation per image serves every task of the image).
    Embed,
    /// EmbedAttack's distance maximised with AutoAttack's APGD schedule instead of PGD's fixed
    /// step (MSE or cosine, as `embed_distance` says).
    EmbedApgd,
    /// Each head's own attack: PGD (cls), SegPGD (seg), DepthPGD (depth).
    Task,
    /// Cross-entropy PGD on a linear probe.
    Pgd,
    /// SegPGD on a segmentation head.
    Segpgd,
    /// SigLoss + 0.5·GradLoss on a depth head.
    Depthpgd,
    /// The head's own loss with AutoAttack's APGD schedule (APGD-CE on a classifier).
    Apgd,
    /// APGD on AutoAttack's DLR loss (classification).
    ApgdDlr,
    /// APGD-T: APGD on the targeted DLR loss, at each of the 9 classes the clean logits rank
    /// after the top one, each on the points still robust (classification).
    ApgdT,
    /// FAB-T: AutoAttack's targeted minimum-norm attack at each of the same 9 classes, each on
    /// the points still robust; a point counts where it lies within ε (classification).
    FabT,
    /// Square: AutoAttack's gradient-free random search on the logit margin (classification).
    Square,
    /// AutoAttack's standard ensemble: APGD-CE, APGD-T, FAB-T, Square, each on the points the
    /// ones before left robust (`super::ensemble`).
    AutoAttack,
    /// SEA's ensemble for segmentation: APGD on each of its four losses, the worst case per
    /// image (`super::dense_ensemble`).
    Sea,
    /// CosPGD: per-pixel cross-entropy weighted by the cosine similarity of the softmax to the
    /// one-hot label (segmentation).
    Cospgd,
    /// The depth ensemble: APGD on DepthPGD's loss, the absolute relative error and a
    /// CosPGD-style scaled log error, the worst case per image by RMSE.
    DepthEnsemble,
}
crate::choices!(AttackKind {
    Embed = "embed",
    EmbedApgd = "embed-apgd",
    Task = "task",
    Pgd = "pgd",
    Segpgd = "segpgd",
    Depthpgd = "depthpgd",
    Apgd = "apgd",
    ApgdDlr = "apgd-dlr",
    ApgdT = "apgd-t",
    FabT = "fab-t",
    Square = "square",
    AutoAttack = "autoattack",
    Sea = "sea",
    Cospgd = "cospgd",
    DepthEnsemble = "depth-ensemble",
});

impl AttackKind {
    /// The task attack of a head of `task`.
    pub fn of_task(task: Task) -> AttackKind {
        match task {
            Task::Cls => AttackKind::Pgd,
            Task::Seg => AttackKind::Segpgd,
            Task::Depth => AttackKind::Depthpgd,
        }
    }

    /// What runs against a head of `task`: `task` is that head's own attack; the rest as named.
    pub fn against(self, task: Task) -> AttackKind {
        match self {
            AttackKind::Task => AttackKind::of_task(task),
            k => k,
        }
    }

    /// Its name in tables: EmbedAttack, PGD, SegPGD, DepthPGD, APGD.
    pub fn display_name(self) -> &'static str {
        match self {
            AttackKind::Embed => "EmbedAttack",
            AttackKind::EmbedApgd => "EmbedAttack (APGD)",
            AttackKind::Task => "task attack",
            AttackKind::Pgd => "PGD",
            AttackKind::Segpgd => "SegPGD",
            AttackKind::Depthpgd => "DepthPGD",
            AttackKind::Apgd => "APGD",
            AttackKind::ApgdDlr => "APGD-DLR",
            AttackKind::ApgdT => "APGD-T",
            AttackKind::FabT => "FAB-T",
            AttackKind::Square => "Square",
            AttackKind::AutoAttack => "AutoAttack",
            AttackKind::Sea => "SEA",
            AttackKind::Cospgd => "CosPGD",
            AttackKind::DepthEnsemble => "depth ensemble",
        }
    }

    /// Whether it runs as several attacks on the points still robust (`super::ensemble`), not
    /// as one run of the engine.
    pub fn is_ensemble(self) -> bool {
        matches!(self, AttackKind::ApgdT | AttackKind::FabT | AttackKind::Square | AttackKind::AutoAttack)
    }

    /// Whether it runs as several APGD attacks on a dense head, the worst case kept per image
    /// (`super::dense_ensemble`).
    pub fn is_dense_ensemble(self) -> bool {
        matches!(self, AttackKind::Sea | AttackKind::DepthEnsemble)
    }

    /// Whether it keeps the best point by design (APGD's restarts from it; an ensemble keeps
    /// each sample's first success): `iterate = last` does not fit.
    pub fn keeps_best(self) -> bool {
        matches!(self, AttackKind::Apgd | AttackKind::ApgdDlr | AttackKind::EmbedApgd) || self.is_ensemble() || self.is_dense_ensemble()
    }

    /// The revision of the kind's definition, part of a cell's key past the first: cells a store
    /// holds from an earlier definition are computed again, never reused (AutoAttack before FAB-T
    /// joined it and Square's schedule became AutoAttack's own, not rescaled).
    pub fn revision(self) -> u32 {
        match self {
            AttackKind::AutoAttack | AttackKind::Square => 2,
            _ => 1,
        }
    }

    /// Whether it is one task's own attack (PGD, SegPGD, DepthPGD).
    pub fn is_task_attack(self) -> bool {
        matches!(self, AttackKind::Pgd | AttackKind::Segpgd | AttackKind::Depthpgd)
    }

    /// Whether the attack maximises a head's loss (all but EmbedAttack).
    pub fn aims_at_head(self) -> bool {
        !self.is_embed()
    }

    /// Whether it is EmbedAttack (PGD or APGD): task-agnostic, on the tokens.
    pub fn is_embed(self) -> bool {
        matches!(self, AttackKind::Embed | AttackKind::EmbedApgd)
    }

    /// Whether it can attack a head of `task` (EmbedAttack needs no head).
    pub fn fits(self, task: Task) -> bool {
        match self {
            AttackKind::Embed | AttackKind::EmbedApgd | AttackKind::Task | AttackKind::Apgd | AttackKind::Square => true,
            AttackKind::ApgdDlr | AttackKind::ApgdT | AttackKind::FabT | AttackKind::AutoAttack => task == Task::Cls,
            AttackKind::Sea | AttackKind::Cospgd => task == Task::Seg,
            AttackKind::DepthEnsemble => task == Task::Depth,
            k => k == AttackKind::of_task(task),
        }
    }

    /// The kinds that fit a head of `task`, by name, comma-separated (for messages).
    pub fn fitting(task: Task) -> String {
        use crate::choice::Choice;
        AttackKind::ALL.iter().filter(|k| k.fits(task)).map(|k| k.name()).collect::<Vec<_>>().join(", ")
    }

    /// The objective it maximises against `head` and its `targets`: the head's own loss — cross-entropy for a linear probe (PGD), SegPGD's
    /// weighted cross-entropy for a segmentation head, SigLoss + GradLoss for a depth head
    /// (DepthPGD). EmbedAttack aims at no head (see `scoring::Aim::Embed`).
    pub fn objective<'a>(self, trained: &'a TrainedHead, targets: &Targets, loss: LossOptions) -> Result<Box<dyn Objective + 'a>> {
        let (head, task) = (&trained.head, trained.meta.task);
        if self.is_embed() || !self.fits(task) {
            bail!("the {self} attack does not fit a {task} head");
        }
        if self.is_ensemble() || self.is_dense_ensemble() {
            bail!("internal error: {self} runs as an ensemble (attacks::ensemble, attacks::dense_ensemble), not as one objective");
        }
        Ok(match (head, targets) {
            (Head::Linear(probe), Targets::Class(l)) if self == AttackKind::ApgdDlr => {
                Box::new(Dlr { probe, labels: l.clone(), targets: None })
            }
            (Head::Linear(probe), Targets::Class(l)) => Box::new(CrossEntropy { probe, labels: l.clone(), scale_logits: loss.ce_scaling }),
            (Head::Seg(_), Targets::Segmentation { labels, height, width }) if self == AttackKind::Cospgd => Box::new(SegObjective {
                head,
                labels: labels.clone(),
                height: *height,
                width: *width,
                loss: SegLoss::CosPgd,
                steer_by_ce: false,
            }),
            (Head::Seg(_), Targets::Segmentation { labels, height, width }) => {
                Box::new(SegPgd { head, labels: labels.clone(), height: *height, width: *width, form: loss.segpgd })
            }
            (Head::Depth(_), Targets::Depth { metres, height, width }) => {
                Box::new(DepthPgd::of(trained, metres, (*height, *width), Default::default())?)
            }
            (_, t) => bail!("the head's task does not fit {}", t.kind()),
        })
    }

    /// How its step evolves.
    pub fn method(self) -> Method {
        if matches!(
            self,
            AttackKind::Apgd
                | AttackKind::ApgdDlr
                | AttackKind::ApgdT
                | AttackKind::FabT
                | AttackKind::AutoAttack
                | AttackKind::EmbedApgd
                | AttackKind::Sea
                | AttackKind::DepthEnsemble
        ) {
            Method::Apgd
        } else {
            Method::Pgd
        }
    }

    /// Its iterations when a user gives none: AutoAttack's 100 for the APGD family and the
    /// ensembles, the study's 20 otherwise (Square counts queries instead: `AttackSpec::queries`).
    pub fn default_steps(self) -> usize {
        if self == AttackKind::Sea {
            AttackSpec::SEA_STEPS
        } else if self.method() == Method::Apgd {
            AttackSpec::AUTOATTACK_STEPS
        } else {
            AttackSpec::DEFAULT_STEPS
        }
    }
}

/// How a head's loss is computed, where its sources differ.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossOptions {
    /// SegPGD's form.
    pub segpgd: SegPgdForm,
    /// PGD's cross-entropy on logits divided by max(1, max logit) (the study's).
    pub ce_scaling: bool,
}

/// Which point an attack returns per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Iterate {
    /// The best point seen (ours): the highest loss, or for SegPGD the lowest mIoU.
    #[default]
    Best,
    /// The last iterate (the study's).
    Last,
}
crate::choices!(Iterate { Best = "best", Last = "last" });

impl Iterate {
    pub fn is_best(&self) -> bool {
        *self == Iterate::Best
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How a step size is given: a fraction of ε (`eps/4`), or an amount (`2/255`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepSize {
    EpsOver(f64),
    Absolute(f64),
}

impl StepSize {
    /// The default: ε/4.
    pub const DEFAULT: StepSize = StepSize::EpsOver(4.0);

    pub fn at(self, eps: f64) -> f64 {
        match self {
            Self::EpsOver(k) => eps / k,
            Self::Absolute(v) => v,
        }
    }

    /// `eps/K` or a positive amount such as `2/255`.
    pub fn parse(text: &str) -> Result<StepSize> {
        let text = text.trim();
        let parsed = match text.strip_prefix("eps/") {
            Some(k) => k.trim().parse::<f64>().ok().filter(|k| *k > 0.0 && k.is_finite()).map(StepSize::EpsOver),
            None => parse_amount(text).ok().filter(|v| *v > 0.0).map(StepSize::Absolute),
        };
        parsed.ok_or_else(|| anyhow::anyhow!("step_size '{text}' is neither eps/K nor a positive amount like 2/255"))
    }
}

/// One attack setting: the kind, the threat model, the schedule and the seed. Part of every
/// result's identity (serialised into its key and labels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackSpec {
    pub kind: AttackKind,
    pub norm: Norm,
    pub eps: f64,
    /// ε as the user wrote it (`8/255`).
    pub eps_text: String,
    pub step_size: f64,
    /// The step as the user gave it (`eps/4`, the default, or an amount such as `2/255`): cells of
    /// one setting share it across ε. Not part of the identity while it is the default.
    #[serde(default = "default_step_text", skip_serializing_if = "is_default_step")]
    pub step_text: String,
    pub steps: usize,
    pub seed: u64,
    /// Runs from fresh random starts; each sample keeps its best point over all of them.
    pub restarts: usize,
    pub random_start: bool,
    /// EmbedAttack: which tokens (`task`: the embedding of the task scored), which distance,
    /// and where one perturbation is scored (`per-task`, the study's, or `shared` by every task of
    /// the images: ours). Results stored before the scope existed were shared.
    pub embed_target: EmbedTarget,
    pub embed_distance: Distance,
    #[serde(default = "EmbedScope::shared", skip_serializing_if = "EmbedScope::is_shared")]
    pub embed_scope: EmbedScope,
    /// SegPGD's form (`paper`, the default, or `study`); not part of a setting's identity while
    /// it is the default, so results stored before it existed keep their keys.
    #[serde(default, skip_serializing_if = "SegPgdForm::is_paper")]
    pub segpgd: SegPgdForm,
    /// PGD's cross-entropy with the study's logit scaling (default off).
    #[serde(default, skip_serializing_if = "is_false")]
    pub ce_scaling: bool,
    /// The point returned: `best` (default) or `last`.
    #[serde(default, skip_serializing_if = "Iterate::is_best")]
    pub iterate: Iterate,
    /// Record the task metric of every scored head after every step (the study's per-step
    /// evaluation; one more forward pass per step).
    #[serde(default, skip_serializing_if = "is_false")]
    pub curve: bool,
    /// Square's budget of queries per sample (AutoAttack's 5,000), alone or in AutoAttack; not
    /// part of a setting's identity while it is the default.
    #[serde(default = "default_queries", skip_serializing_if = "is_default_queries")]
    pub queries: usize,
}

fn default_queries() -> usize {
    AttackSpec::DEFAULT_QUERIES
}

fn is_default_queries(q: &usize) -> bool {
    *q == AttackSpec::DEFAULT_QUERIES
}

/// The default step as written: `eps/4`.
pub fn default_step_text() -> String {
    "eps/4".into()
}

/// The step as a setting names it: as the user gave it, else the default.
pub fn step_text(given: Option<&str>) -> String {
    given.map_or_else(default_step_text, |s| s.trim().to_string())
}

fn is_default_step(s: &String) -> bool {
    *s == default_step_text()
}

impl AttackSpec {
    /// The study's threat model: L∞, ε = 8/255.
    pub const DEFAULT_EPS: &'static str = "8/255";
    pub const DEFAULT_NORM: Norm = Norm::Linf;
    pub const DEFAULT_STEPS: usize = 20;
    /// AutoAttack's iterations for APGD (its `n_iter`).
    pub const AUTOATTACK_STEPS: usize = 100;
    /// SEA's iterations per loss (its three radii together: 90 + 90 + 120).
    pub const SEA_STEPS: usize = 300;
    /// AutoAttack's queries for Square in its standard version.
    pub const DEFAULT_QUERIES: usize = 5000;
    pub const DEFAULT_SEED: u64 = 0;
    pub const DEFAULT_RESTARTS: usize = 1;
    /// The study's: each task's own embedding, one EmbedAttack per task.
    pub const DEFAULT_EMBED_TARGET: EmbedTarget = EmbedTarget::Task;
    pub const DEFAULT_EMBED_SCOPE: EmbedScope = EmbedScope::PerTask;
    pub const DEFAULT_EMBED_DISTANCE: Distance = Distance::Mse;
    /// Images attacked together (each batch's seed derives from the setting's).
    pub const DEFAULT_BATCH_SIZE: usize = 8;

    /// A `kind` attack with every other setting at its default.
    pub fn new(kind: AttackKind) -> AttackSpec {
        let eps = parse_amount(Self::DEFAULT_EPS).expect("a valid default");
        AttackSpec {
            kind,
            norm: Self::DEFAULT_NORM,
            eps,
            eps_text: Self::DEFAULT_EPS.into(),
            step_size: StepSize::DEFAULT.at(eps),
            step_text: default_step_text(),
            steps: kind.default_steps(),
            seed: Self::DEFAULT_SEED,
            restarts: Self::DEFAULT_RESTARTS,
            random_start: true,
            embed_target: Self::DEFAULT_EMBED_TARGET,
            embed_distance: Self::DEFAULT_EMBED_DISTANCE,
            embed_scope: Self::DEFAULT_EMBED_SCOPE,
            segpgd: SegPgdForm::Paper,
            ce_scaling: false,
            iterate: Iterate::Best,
            curve: false,
            queries: Self::DEFAULT_QUERIES,
        }
    }

    /// The engine settings for batch `batch` of a run (each batch's seed derives from the
    /// setting's); `early_stop` for classification, where a misclassified sample is done.
    pub fn engine(&self, batch: usize, early_stop: bool) -> AttackConfig {
        AttackConfig {
            method: self.kind.method(),
            threat: ThreatModel { norm: self.norm, eps: self.eps },
            step_size: self.step_size,
            steps: self.steps,
            restarts: self.restarts,
            random_start: self.random_start,
            seed: crate::rng::stream(self.seed, batch as u64),
            early_stop,
            last_iterate: self.iterate == Iterate::Last,
            evaluate_last: true,
            window: None,
            trace: self.curve,
            queries: self.queries,
        }
    }

    /// Encoder passes per image of one run of the attack, (forward, backward), at most: every
    /// step a forward and a backward; the classification ensembles count every component and
    /// target as if no sample broke early (FAB-T adds a forward per step, Square a forward per
    /// query), the dense ensembles every loss and one scoring pass each.
    pub fn passes_per_image(&self) -> (f64, f64) {
        let (t, r) = (self.steps as f64, self.restarts.max(1) as f64);
        let targets = TARGET_CLASSES as f64;
        let (forward, backward) = match self.kind {
            AttackKind::ApgdT => (targets * t, targets * t),
            AttackKind::FabT => (targets * 2.0 * t, targets * t),
            AttackKind::Square => (self.queries as f64, 0.0),
            AttackKind::AutoAttack => (t + targets * t + targets * 2.0 * t + self.queries as f64, t + targets * t + targets * t),
            AttackKind::Sea => (4.0 * (t + 1.0), 4.0 * t),
            AttackKind::DepthEnsemble => (3.0 * (t + 1.0), 3.0 * t),
            _ => (t * r, t * r),
        };
        (forward, backward)
    }

    /// How its head loss is computed.
    pub fn loss(&self) -> LossOptions {
        LossOptions { segpgd: self.segpgd, ce_scaling: self.ce_scaling }
    }

    /// Refuses settings the engine cannot run.
    pub fn check(&self) -> Result<()> {
        if self.kind.is_embed() && self.embed_scope == EmbedScope::Shared && self.embed_target == EmbedTarget::Task {
            bail!("a shared EmbedAttack perturbation is scored on every task of its images: it needs one stated embed_target (cls, patch, patch-prenorm or both), not 'task'");
        }
        if self.curve && self.restarts > 1 {
            bail!("a per-step curve follows one run of the attack: it needs restarts = 1, not {}", self.restarts);
        }
        if self.iterate == Iterate::Last && self.kind.keeps_best() {
            bail!("iterate = last does not fit {}, which keeps its best point by design; use pgd or task", self.kind.display_name());
        }
        if (self.kind.is_ensemble() || self.kind.is_dense_ensemble()) && self.curve {
            bail!("{} runs several attacks on the points still robust: it records no per-step curve", self.kind.display_name());
        }
        if self.queries == 0 && matches!(self.kind, AttackKind::Square | AttackKind::AutoAttack) {
            bail!("Square needs at least one query (queries = 0)");
        }
        Ok(())
    }
}

/// How the step size evolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A fixed step.
    Pgd,
    /// AutoAttack's APGD: momentum 0.75 and a step size halved at checkpoints where the loss
    /// oscillates or stopped improving, restarting from the best point.
    Apgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AttackConfig {
    pub method: Method,
    pub threat: ThreatModel,
    pub step_size: f64,
    pub steps: usize,
    /// Runs from fresh random starts; each sample keeps its best point over all of them.
    pub restarts: usize,
    pub random_start: bool,
    pub seed: u64,
    /// Samples that reach the goal stop being attacked.
    pub early_stop: bool,
    /// PGD returns its last iterate, not the best point.
    pub last_iterate: bool,
    /// With `last_iterate`, the objective at the last iterate is evaluated (one forward pass);
    /// without (DeACL's inner attack, as the reference trains), the outcome's losses are NaN.
    pub evaluate_last: bool,
    /// Sliding windows the attack goes through (dense heads), as the evaluation's; `None`: one
    /// forward per image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::heads::sliding::Window>,
    /// Show every iterate (the starting point, then after each step) to the caller's observer
    /// (`engine::attack_observed`): per-step curves.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub trace: bool,
    /// Square's queries per sample.
    pub queries: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::choice::Choice;

    #[test]
    fn kinds_by_name_and_what_they_attack() {
        for k in AttackKind::ALL {
            assert_eq!(k.name().parse::<AttackKind>().unwrap(), *k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.name(), "results store kinds by their names");
        }
        assert_eq!(AttackKind::Task.against(Task::Seg), AttackKind::Segpgd);
        assert_eq!(AttackKind::Apgd.against(Task::Cls), AttackKind::Apgd);
        assert!(AttackKind::Segpgd.fits(Task::Seg) && !AttackKind::Segpgd.fits(Task::Depth));
        assert!(AttackKind::Embed.fits(Task::Depth) && !AttackKind::Embed.aims_at_head());
        assert_eq!(AttackKind::Apgd.method(), Method::Apgd);
        assert_eq!(AttackKind::Depthpgd.method(), Method::Pgd);
    }

    /// Passes per image by hand: AutoAttack at 100 iterations and 5,000 queries runs APGD-CE
    /// (100 forward + backward), APGD-T over 9 targets (900 + 900), FAB-T over 9 targets (1,800
    /// forward: two per step, 900 backward) and Square (5,000 forward); SEA at 300: four losses.
    #[test]
    fn passes_per_image_by_hand() {
        assert_eq!(AttackSpec::new(AttackKind::AutoAttack).passes_per_image(), (7800.0, 1900.0));
        assert_eq!(AttackSpec::new(AttackKind::Sea).passes_per_image(), (1204.0, 1200.0));
        assert_eq!(AttackSpec::new(AttackKind::Pgd).passes_per_image(), (20.0, 20.0));
        assert_eq!(AttackSpec::new(AttackKind::Square).passes_per_image(), (5000.0, 0.0));
    }

    /// The study's threat model by default: L∞, 8/255, step ε/4 = 2/255, 20 steps; a batch's seed
    /// derives from the setting's, batch 0 keeping it.
    #[test]
    fn defaults_and_batch_seeds() {
        let s = AttackSpec::new(AttackKind::Pgd);
        assert_eq!((s.norm, s.eps, s.steps, s.restarts), (Norm::Linf, 8.0 / 255.0, 20, 1));
        assert!((s.step_size - 2.0 / 255.0).abs() < 1e-15);
        assert_eq!(s.engine(0, true).seed, s.seed);
        assert_ne!(s.engine(1, true).seed, s.engine(2, true).seed);
        assert!(s.engine(0, true).early_stop && !s.engine(0, false).early_stop);
        assert_eq!(StepSize::parse("eps/2").unwrap().at(0.5), 0.25);
        assert_eq!(StepSize::parse("1/255").unwrap().at(0.5), 1.0 / 255.0);
        assert!(StepSize::parse("eps/0").is_err() && StepSize::parse("-1").is_err());
    }
}
