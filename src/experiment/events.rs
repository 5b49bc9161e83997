//! The run's event log: `events.jsonl` in the run folder (`events-shard-I-of-N.jsonl` for a
//! shard), one JSON object per line, appended as work finishes, for dashboards and data frames
//! (`pandas.read_json(path, lines=True)`, a W&B or TensorBoard logger reading the lines). A killed
//! and resumed run appends to the same file; every line is written whole with one write.
//!
//! Schema 1. Every event has `schema` (1), `event`, `time` (Unix seconds), `run` (the
//! experiment's name) and `shard` (`"I/N"`). Then, by `event`:
//! - `start`: `items` (pending in this shard), `items_done_before`.
//! - `head`: `key`, `head` (`encoder/task/head`), `trained` (false: reused from the run folder).
//! - `batch`: an attack batch committed: `item`, `work` (a description), `batch`, `batches`,
//!   `samples`, `seconds`, `objective_mean`, and `cells`: per cell scored, `key` and `clean`,
//!   `adversarial` (the batch's figures by metric name).
//! - `cell`: a result cell finished: `key`, `labels` (encoder, task, head, dataset, condition,
//!   attack and every attack setting, as the store's JSON export), `samples`, and `clean`,
//!   `adversarial`, `baseline` (figures by metric name; `adversarial` absent for a clean cell).
//! - `end`: `items_run`, `heads_trained`, `heads_reused`, `batches_resumed`, `seconds`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use super::store::{CellRow, Predictor};

pub const SCHEMA: u32 = 1;

pub struct EventLog {
    path: PathBuf,
    file: Mutex<File>,
    run: String,
    shard: String,
}

impl EventLog {
    /// Opens (creates or appends to) `path` for run `run`, shard `(i, n)`.
    pub fn open(path: &Path, run: &str, shard: (usize, usize)) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open the event log for appending", path.display()))?;
        Ok(Self { path: path.to_path_buf(), file: Mutex::new(file), run: run.to_string(), shard: format!("{}/{}", shard.0, shard.1) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event: the common fields, then `fields` (an object).
    pub fn write(&self, event: &str, fields: Value) -> Result<()> {
        let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut line = Map::new();
        line.insert("schema".into(), json!(SCHEMA));
        line.insert("event".into(), json!(event));
        line.insert("time".into(), json!(time));
        line.insert("run".into(), json!(self.run));
        line.insert("shard".into(), json!(self.shard));
        if let Value::Object(f) = fields {
            line.extend(f);
        }
        let mut text = serde_json::to_string(&Value::Object(line))?;
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(text.as_bytes())
            .and_then(|_| file.flush())
            .with_context(|| format!("{}: cannot append an event", self.path.display()))
    }

    /// A finished cell with its labels and figures.
    pub fn cell(&self, row: &CellRow) -> Result<()> {
        let mut fields = Map::new();
        fields.insert("key".into(), json!(row.key));
        fields.insert("labels".into(), serde_json::to_value(&row.labels)?);
        fields.insert("samples".into(), json!(row.result.samples));
        for p in [Predictor::Clean, Predictor::Adversarial, Predictor::Baseline] {
            if let Some(m) = row.result.metrics(p) {
                fields.insert(p.to_string(), m.figure_map());
            }
        }
        self.write("cell", Value::Object(fields))
    }
}
