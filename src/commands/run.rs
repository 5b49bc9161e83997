//! `robust-ssl run EXP.toml`: plans an experiment (every input checked before any work), runs it
//! or one shard of it into the run folder's results store, resuming whatever a killed run left,
//! and prints the study's table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use robust_ssl::experiment::config::Loaded;
use robust_ssl::experiment::execute::{self, Options, RunDir};
use robust_ssl::experiment::plan::{shard_spec, Plan};
use robust_ssl::experiment::store::Store;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The experiment file (TOML).
    pub experiment: PathBuf,
    /// Run folder: results store, trained heads, feature cache (default: runs/STEM).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run shard I of N (0 <= I < N) into results-shard-I-of-N.sqlite; default from
    /// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (minus SLURM_ARRAY_TASK_MIN) when set.
    #[arg(long)]
    pub shard: Option<String>,
    /// The reference code's way, for the benchmark: features recomputed for every epoch and
    /// evaluation, one EmbedAttack per task instead of one per image set. Same results.
    #[arg(long)]
    pub unshared: bool,
    /// Plan and check only: print the work items and exit.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

/// Plans `path` and opens the run folder's store for `shard`, recording the plan in it.
pub fn prepare(path: &std::path::Path, out: Option<PathBuf>, shard: (usize, usize)) -> Result<(Plan, RunDir, Store)> {
    let loaded = Loaded::read(path)?;
    let plan = Plan::new(&loaded)?;
    let dir = RunDir { root: out.unwrap_or_else(|| execute::default_run_dir(path)) };
    std::fs::create_dir_all(&dir.root).with_context(|| format!("{}: cannot create the run folder", dir.root.display()))?;
    // The store first: a second writer of it is refused before it touches anything.
    let store = Store::open_exclusive(&dir.store_path(shard))?;
    robust_ssl::atomic::write(&dir.root.join("experiment.toml"), loaded.text.as_bytes())
        .with_context(|| format!("{}: the run folder is not writable", dir.root.display()))?;
    store.set_meta("name", &plan.name)?;
    store.set_meta("experiment", &loaded.text)?;
    store.set_meta("plan", &serde_json::to_string(&plan.cells())?)?;
    Ok((plan, dir, store))
}

pub fn run(a: &RunArgs) -> Result<()> {
    let shard = shard_spec(a.shard.as_deref())?;
    if a.dry_run {
        let plan = Plan::new(&Loaded::read(&a.experiment)?)?;
        let items = plan.shard(shard.0, shard.1);
        println!(
            "{}: {} heads, {} work items ({} in shard {}/{}), {} result cells",
            a.experiment.display(),
            plan.heads.len(),
            plan.items.len(),
            items.len(),
            shard.0,
            shard.1,
            plan.cells().len()
        );
        for item in items {
            println!("  {} {}", &item.key[..12], plan.describe(item));
        }
        return Ok(());
    }
    let (plan, dir, mut store) = prepare(&a.experiment, a.out.clone(), shard)?;
    let summary = execute::run(&plan, &dir, &mut store, &Options { shard, unshared: a.unshared })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "run_dir": dir.root, "store": store.path(), "summary": summary }))?
        );
        return Ok(());
    }
    println!(
        "{}: {} of {} work items run ({} done before, {} batches resumed), {} heads trained, {} reused, {:.1} s",
        plan.name,
        summary.items_run,
        summary.items_in_shard,
        summary.items_done_before,
        summary.batches_resumed,
        summary.heads_trained,
        summary.heads_reused,
        summary.seconds
    );
    println!("results: {}", store.path().display());
    if shard.1 == 1 {
        println!("\n{}", robust_ssl::report::page::summary(&store)?);
        println!("report: robust-ssl report {}", dir.root.display());
    } else {
        println!("when every shard is done: robust-ssl merge {} && robust-ssl report {}", dir.root.display(), dir.root.display());
    }
    Ok(())
}
