//! `robust-ssl merge RUN_DIR [SHARD.sqlite ...]`: combines shard stores (default: the run
//! folder's results-shard-*.sqlite) into the run folder's results.sqlite. Cells present in more
//! than one must agree; the merged store equals an unsharded run's.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use robust_ssl::experiment::store::Store;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The run folder whose results.sqlite receives the shards.
    pub run: PathBuf,
    /// Shard stores (default: RUN/results-shard-*.sqlite).
    pub shards: Vec<PathBuf>,
}

pub fn run(a: &MergeArgs) -> Result<()> {
    if !a.run.is_dir() {
        bail!("{}: no such run folder", a.run.display());
    }
    let mut shards = a.shards.clone();
    if shards.is_empty() {
        for entry in std::fs::read_dir(&a.run)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("results-shard-") && name.ends_with(".sqlite") {
                shards.push(entry.path());
            }
        }
        shards.sort();
    }
    if shards.is_empty() {
        bail!("{}: no shard stores (results-shard-I-of-N.sqlite) to merge", a.run.display());
    }
    let mut target = Store::open_exclusive(&a.run.join("results.sqlite"))?;
    for s in &shards {
        let count = target.merge_from(&Store::open_existing(s)?)?;
        println!(
            "{}: {} cells added, {} already present, {} example strips{}",
            s.display(),
            count.cells,
            count.same,
            count.examples,
            if count.unfinished_batches > 0 {
                format!("; {} batches of unfinished items left behind (rerun that shard)", count.unfinished_batches)
            } else {
                String::new()
            }
        );
    }
    println!("merged into {}", target.path().display());
    Ok(())
}
