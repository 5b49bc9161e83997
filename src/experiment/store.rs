//! The results store: one SQLite file (a run folder's `results.sqlite`, or a shard's).
//!
//! - `cells`: one finished result per key (the hash of everything that determines it), with its
//!   labels and result as JSON; written in one transaction per work item, never rewritten.
//! - `partials`: a work item's finished batches (their metric counts), so a killed item resumes
//!   at its next batch; removed in the transaction that commits the item's cells.
//! - `examples`: PNG strips of attacks, committed with the batch that made them.
//! - `heads`: what each trained head reported (the head itself is a file in `heads/`).
//! - `timings`: how long each attack cell's work took, kept apart from the cells (a rerun or
//!   another shard computes the same cell in another time).
//! - `meta`: the plan (every cell's key and labels) and the experiment's text.
//!
//! SQLite's journal with `synchronous=FULL` makes every commit survive a kill at any moment.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::plan::Labels;
use crate::attacks::engine::Sanity;
use crate::heads::evaluate::{Evaluation, Metrics};
use crate::heads::fit::HeadRecipe;
use crate::heads::head::Baseline;
use crate::heads::sample_score::SampleScore;

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The writer's lock ([`Store::open_exclusive`]), held as long as the store is open.
    _lock: Option<std::fs::File>,
}

/// Whether a cell is finished, as [`Store::cell_state`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub enum CellState {
    Missing,
    Done,
    /// Present but not readable back (why): a run computes it again.
    Unreadable(String),
}

/// One finished cell: what it is about and what came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellRow {
    pub key: String,
    pub labels: Labels,
    pub result: CellResult,
}

/// A cell's figures: a head's metrics on clean images, and for an attack cell the same on the
/// attacked images with the attack's objective and sanity checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// Images scored.
    pub samples: usize,
    pub clean: Evaluation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adversarial: Option<Evaluation>,
    /// Mean over images of the objective at the chosen adversarial points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_objective: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanity: Option<Sanity>,
    /// With a per-step curve: the head's metrics after every step (0 = the starting point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<Vec<Metrics>>,
    /// An attack cell's score of each image (by its index in the evaluation split), for the
    /// worst case over attacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sample: Option<Vec<(usize, SampleScore)>>,
    /// An attack cell's score of each image on its clean input (a classifier: `correct` on the
    /// clean image; `per_sample`'s is robust accuracy's, correct before and after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sample_clean: Option<Vec<(usize, SampleScore)>>,
}

/// How long an attack cell's work item took: crafting and scoring its images (every cell of one
/// item, e.g. one EmbedAttack scored on three heads, shares the item's time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub seconds: f64,
    pub images: usize,
    /// `cpu`, `cuda:0`, ...
    pub device: String,
}

impl Timing {
    pub fn per_image(&self) -> f64 {
        self.seconds / self.images.max(1) as f64
    }
}

impl CellResult {
    /// The metrics of `which` predictor: the head on clean or attacked images, or the trivial
    /// baseline (on the clean images).
    pub fn metrics(&self, which: Predictor) -> Option<&Metrics> {
        match which {
            Predictor::Clean => Some(&self.clean.head),
            Predictor::Adversarial => self.adversarial.as_ref().map(|a| &a.head),
            Predictor::Baseline => Some(&self.clean.baseline),
        }
    }
}

/// What the store keeps of a trained head: its identity and how training ended (no timings, so
/// a rerun or another shard writes the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadRecord {
    pub encoder: String,
    pub task: String,
    pub head: String,
    pub samples: usize,
    pub final_loss: f64,
    pub baseline: Baseline,
    pub recipe: HeadRecipe,
}

impl CellResult {
    /// The first figure that is not a finite number (JSON would store it as `null`), named.
    pub fn non_finite(&self) -> Option<String> {
        for (which, e) in [("clean", Some(&self.clean)), ("adversarial", self.adversarial.as_ref())] {
            for (part, m) in e.into_iter().flat_map(|e| [("head", &e.head), ("baseline", &e.baseline)]) {
                if let Some((name, v)) = m.figures().into_iter().find(|(_, v)| !v.is_finite()) {
                    return Some(format!("{which} {part} {name} = {v}"));
                }
            }
        }
        for (step, m) in self.curve.iter().flatten().enumerate() {
            if let Some((name, v)) = m.figures().into_iter().find(|(_, v)| !v.is_finite()) {
                return Some(format!("step {step} {name} = {v}"));
            }
        }
        let mut others = self.mean_objective.map(|v| ("mean objective", v)).into_iter().collect::<Vec<_>>();
        if let Some(s) = &self.sanity {
            others.extend([("largest ‖δ‖/ε", s.max_norm_over_eps), ("smallest pixel", s.min_pixel), ("largest pixel", s.max_pixel)]);
        }
        others.into_iter().find(|(_, v)| !v.is_finite()).map(|(name, v)| format!("{name} = {v}"))
    }
}

/// Who predicted: the head on clean images, the head on attacked images, the trivial baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Predictor {
    Clean,
    Adversarial,
    Baseline,
}
crate::choices!(Predictor { Clean = "clean", Adversarial = "adversarial", Baseline = "baseline" });

/// As stored: JSON with its keys in order, so equal rows are equal text (merges compare text).
fn stored<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_value(v)?.to_string())
}

/// One example strip of a cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub cell: String,
    pub name: String,
    pub png: Vec<u8>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, labels TEXT NOT NULL, result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS partials (item TEXT NOT NULL, batch INTEGER NOT NULL, state TEXT NOT NULL, PRIMARY KEY (item, batch));
CREATE TABLE IF NOT EXISTS examples (cell TEXT NOT NULL, name TEXT NOT NULL, png BLOB NOT NULL, PRIMARY KEY (cell, name));
CREATE TABLE IF NOT EXISTS heads (key TEXT PRIMARY KEY, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS timings (cell TEXT PRIMARY KEY, info TEXT NOT NULL);
";

impl Store {
    /// Opens (or creates) the store at `path` for reading, or for writing by a caller that holds
    /// no lock (tests, reports); a damaged file is refused with the way out.
    pub fn open(path: &Path) -> Result<Store> {
        Self::open_with(path, None)
    }

    /// Opens (or creates) the store at `path` for a writer that must be alone: a run, a merge.
    /// The lock is the file `PATH.lock` (the system drops it when the process ends, however it
    /// ends); a second writer is refused with the holder's pid, host, start and command.
    pub fn open_exclusive(path: &Path) -> Result<Store> {
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("{}: cannot create the store's lock file", lock_path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                // The holder writes who it is just after taking the lock: give it a moment.
                use std::io::{Read, Seek};
                let mut holder = String::new();
                for _ in 0..40 {
                    holder.clear();
                    let _ = file.rewind().and_then(|_| file.read_to_string(&mut holder));
                    if !holder.trim().is_empty() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                let holder = holder.trim();
                bail!(
                    "{}: another process is writing this results store ({}); wait for it to finish, or give this run another \
                     --out or --shard. Nothing was changed.",
                    path.display(),
                    if holder.is_empty() { "its lock file is empty" } else { holder }
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("{}: cannot lock the results store", lock_path.display()))
            }
        }
        use std::io::{Seek, Write};
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let holder = format!("pid {} on {} since unix time {since}: {command}", std::process::id(), host.trim());
        // Best effort: the lock itself is what excludes; the text only names the holder.
        let _ = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(holder.as_bytes()));
        Self::open_with(path, Some(file))
    }

    fn open_with(path: &Path, lock: Option<std::fs::File>) -> Result<Store> {
        let shown = path.display().to_string();
        let conn = Connection::open(path).with_context(|| format!("{shown}: cannot open the results store"))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        let damaged = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "{shown}: the results store is damaged ({e}). Move it aside (mv {shown} {shown}.damaged) and run the experiment \
                 again: the trained heads and cached features in the run folder are kept, only the results are computed again"
            )
        };
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| damaged(&e))?;
        if check != "ok" {
            return Err(damaged(&format!("SQLite's check: {check}")));
        }
        conn.execute_batch("PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL;")
            .with_context(|| format!("{shown}: not a results store (or not writable)"))?;
        conn.execute_batch(SCHEMA).with_context(|| format!("{shown}: not a results store of this tool"))?;
        Ok(Store { conn, path: path.to_path_buf(), _lock: lock })
    }

    /// Opens an existing store without creating one.
    pub fn open_existing(path: &Path) -> Result<Store> {
        if !path.is_file() {
            bail!("{}: no results store here", path.display());
        }
        let store = Store::open(path)?;
        store
            .conn
            .query_row("SELECT count(*) FROM cells", [], |_| Ok(()))
            .with_context(|| format!("{}: not a results store of this tool", path.display()))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn context(&self) -> String {
        self.path.display().to_string()
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional().with_context(|| self.context())
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)", params![key, value])
            .with_context(|| self.context())?;
        Ok(())
    }

    pub fn has_cell(&self, key: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM cells WHERE key = ?1", [key], |_| Ok(()))
            .optional()
            .with_context(|| self.context())?
            .is_some())
    }

    /// Whether cell `key` is finished and reads back whole.
    pub fn cell_state(&self, key: &str) -> Result<CellState> {
        let row: Option<(String, String)> = self
            .conn
            .query_row("SELECT labels, result FROM cells WHERE key = ?1", [key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .with_context(|| self.context())?;
        let Some((labels, result)) = row else { return Ok(CellState::Missing) };
        let read =
            serde_json::from_str::<Labels>(&labels).map(|_| ()).and_then(|_| serde_json::from_str::<CellResult>(&result).map(|_| ()));
        Ok(match read {
            Ok(()) => CellState::Done,
            Err(e) => CellState::Unreadable(e.to_string()),
        })
    }

    /// Every finished cell, by key.
    pub fn cells(&self) -> Result<Vec<CellRow>> {
        let mut st = self.conn.prepare("SELECT key, labels, result FROM cells ORDER BY key")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        rows.map(|row| {
            let (key, labels, result) = row?;
            let unreadable = || {
                format!(
                    "{}: cell {key} cannot be read back; run the experiment again (robust-ssl run EXP --out RUN_FOLDER): a run \
                     computes every cell it cannot read",
                    self.context()
                )
            };
            Ok(CellRow {
                labels: serde_json::from_str(&labels).with_context(unreadable)?,
                result: serde_json::from_str(&result).with_context(unreadable)?,
                key,
            })
        })
        .collect()
    }

    /// The finished batches of a work item: (batch, state JSON), in batch order.
    pub fn partials(&self, item: &str) -> Result<Vec<(usize, String)>> {
        let mut st = self.conn.prepare("SELECT batch, state FROM partials WHERE item = ?1 ORDER BY batch")?;
        let rows = st.query_map([item], |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, String>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Commits one batch of an item with the example strips it made, in one transaction.
    pub fn put_partial(&mut self, item: &str, batch: usize, state: &str, examples: &[Example]) -> Result<()> {
        let ctx = self.context();
        let tx = self.conn.transaction().with_context(|| ctx.clone())?;
        tx.execute("INSERT OR REPLACE INTO partials (item, batch, state) VALUES (?1, ?2, ?3)", params![item, batch as i64, state])?;
        for e in examples {
            tx.execute("INSERT OR REPLACE INTO examples (cell, name, png) VALUES (?1, ?2, ?3)", params![e.cell, e.name, e.png])?;
        }
        tx.commit().with_context(|| format!("{ctx}: cannot commit"))?;
        Ok(())
    }

    /// Commits an item's cells and drops its partial batches, in one transaction.
    pub fn put_cells(&mut self, item: &str, cells: &[CellRow]) -> Result<()> {
        let ctx = self.context();
        let tx = self.conn.transaction().with_context(|| ctx.clone())?;
        for c in cells {
            if let Some(what) = c.result.non_finite() {
                bail!(
                    "{ctx}: cell {} ({} · {} · {}) has a non-finite figure, {what}; nothing of its work item was committed, so a \
                     resumed run computes it again",
                    c.key,
                    c.labels.encoder,
                    c.labels.task,
                    c.labels.head
                );
            }
            tx.execute(
                "INSERT OR REPLACE INTO cells (key, labels, result) VALUES (?1, ?2, ?3)",
                params![c.key, stored(&c.labels)?, stored(&c.result)?],
            )?;
        }
        tx.execute("DELETE FROM partials WHERE item = ?1", [item])?;
        tx.commit().with_context(|| format!("{ctx}: cannot commit"))?;
        Ok(())
    }

    /// Records how long cell `cell`'s work took (replacing an earlier run's).
    pub fn put_timing(&self, cell: &str, timing: &Timing) -> Result<()> {
        self.conn
            .execute("INSERT OR REPLACE INTO timings (cell, info) VALUES (?1, ?2)", params![cell, stored(timing)?])
            .with_context(|| self.context())?;
        Ok(())
    }

    /// Every recorded timing, by cell key (one that does not read back is left out).
    pub fn timings(&self) -> Result<std::collections::HashMap<String, Timing>> {
        let mut st = self.conn.prepare("SELECT cell, info FROM timings")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (cell, info) = row?;
            if let Ok(t) = serde_json::from_str(&info) {
                out.insert(cell, t);
            }
        }
        Ok(out)
    }

    pub fn examples(&self) -> Result<Vec<Example>> {
        let mut st = self.conn.prepare("SELECT cell, name, png FROM examples ORDER BY cell, name")?;
        let rows = st.query_map([], |r| Ok(Example { cell: r.get(0)?, name: r.get(1)?, png: r.get(2)? }))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn put_head(&self, key: &str, record: &HeadRecord) -> Result<()> {
        self.conn
            .execute("INSERT OR REPLACE INTO heads (key, info) VALUES (?1, ?2)", params![key, stored(record)?])
            .with_context(|| self.context())?;
        Ok(())
    }

    /// Every trained head's record, by key.
    pub fn heads(&self) -> Result<Vec<(String, HeadRecord)>> {
        let mut st = self.conn.prepare("SELECT key, info FROM heads ORDER BY key")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|row| {
            let (key, info) = row?;
            let record = serde_json::from_str(&info).with_context(|| format!("{}: head {key} cannot be read back", self.context()))?;
            Ok((key, record))
        })
        .collect()
    }

    /// Adds everything finished in `other` (another shard of the same experiment). A cell, head
    /// or example present in both must be identical; unfinished batches are not carried over.
    pub fn merge_from(&mut self, other: &Store) -> Result<MergeCount> {
        let (me, them) = (self.context(), other.context());
        let plan = other.meta("plan")?;
        match (self.meta("plan")?, &plan) {
            (Some(a), Some(b)) if &a != b => bail!("{them}: a shard of another experiment than {me} (their plans differ)"),
            _ => {}
        }
        let mut count = MergeCount::default();
        let tx = self.conn.transaction()?;
        for (k, v) in [("plan", plan), ("experiment", other.meta("experiment")?)] {
            if let Some(v) = v {
                tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)", params![k, v])?;
            }
        }
        for c in other.cells()? {
            let (labels, result) = (stored(&c.labels)?, stored(&c.result)?);
            let old: Option<(String, String)> =
                tx.query_row("SELECT labels, result FROM cells WHERE key = ?1", [&c.key], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            match old {
                Some(o) if o != (labels.clone(), result.clone()) => {
                    bail!("{them}: cell {} differs from the one in {me}; the shards did not compute the same experiment", c.key)
                }
                Some(_) => count.same += 1,
                None => {
                    tx.execute("INSERT INTO cells (key, labels, result) VALUES (?1, ?2, ?3)", params![c.key, labels, result])?;
                    count.cells += 1;
                }
            }
        }
        for e in other.examples()? {
            let old: Option<Vec<u8>> =
                tx.query_row("SELECT png FROM examples WHERE cell = ?1 AND name = ?2", params![e.cell, e.name], |r| r.get(0)).optional()?;
            match old {
                Some(o) if o != e.png => bail!("{them}: example {} of cell {} differs from the one in {me}", e.name, e.cell),
                Some(_) => {}
                None => {
                    tx.execute("INSERT INTO examples (cell, name, png) VALUES (?1, ?2, ?3)", params![e.cell, e.name, e.png])?;
                    count.examples += 1;
                }
            }
        }
        for (k, t) in other.timings()? {
            tx.execute("INSERT OR IGNORE INTO timings (cell, info) VALUES (?1, ?2)", params![k, stored(&t)?])?;
        }
        for (k, record) in other.heads()? {
            tx.execute("INSERT OR IGNORE INTO heads (key, info) VALUES (?1, ?2)", params![k, stored(&record)?])?;
        }
        count.unfinished_batches = other.conn.query_row("SELECT count(*) FROM partials", [], |r| r.get::<_, i64>(0))? as usize;
        tx.commit().with_context(|| format!("{me}: cannot commit the merge"))?;
        Ok(count)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct MergeCount {
    /// Cells added.
    pub cells: usize,
    /// Cells already present, identical.
    pub same: usize,
    pub examples: usize,
    /// Batches of unfinished items in the source (not merged: rerun that shard to finish them).
    pub unfinished_batches: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::plan::Condition;
    use crate::heads::head::Task;

    /// One writer at a time: a second is refused naming the holder; the lock goes with the first.
    #[test]
    fn a_second_writer_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.sqlite");
        let first = Store::open_exclusive(&path).unwrap();
        let err = Store::open_exclusive(&path).err().expect("a second writer is refused").to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains(&format!("pid {}", std::process::id())), "{err}");
        Store::open(&path).expect("readers are not locked out");
        drop(first);
        Store::open_exclusive(&path).expect("the lock goes with its holder");
    }

    /// A NaN figure is refused, naming the store and the cell, and leaves the store as it was.
    #[test]
    fn non_finite_results_are_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.sqlite");
        let mut store = Store::open(&path).unwrap();
        let eval = |accuracy: f64| Evaluation {
            samples: 2,
            head: Metrics::Cls { accuracy, correct: 1, total: 2 },
            baseline: Metrics::Cls { accuracy: 0.5, correct: 1, total: 2 },
            baseline_kind: Baseline::MajorityClass(0),
        };
        let labels = Labels {
            encoder: "e".into(),
            task: "t".into(),
            task_kind: Task::Cls,
            head: "h".into(),
            dataset: "d".into(),
            condition: Condition::Clean,
            attack: None,
            attacked: None,
            params: None,
            source_encoder: None,
        };
        let row = |accuracy| CellRow {
            key: "k".into(),
            labels: labels.clone(),
            result: CellResult {
                samples: 2,
                clean: eval(accuracy),
                adversarial: None,
                mean_objective: None,
                sanity: None,
                curve: None,
                per_sample: None,
                per_sample_clean: None,
            },
        };
        let err = store.put_cells("item", &[row(f64::NAN)]).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("cell k") && err.contains("clean head accuracy = NaN"), "{err}");
        assert!(store.cells().unwrap().is_empty());
        store.put_cells("item", &[row(0.5)]).unwrap();
        assert_eq!(store.cells().unwrap().len(), 1);
    }
}
