//! `robust-ssl run EXP.toml`: plans an experiment (every input checked before any work), runs it
//! or one shard of it into the run folder's results store, resuming whatever a killed run left,
//! and prints the study's table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use robust_ssl::experiment::config::Loaded;
use robust_ssl::experiment::cost::{self, Cost};
use robust_ssl::experiment::execute::{self, Options, RunDir};
use robust_ssl::experiment::plan::Plan;
use robust_ssl::experiment::shard::shard_spec;
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
    /// Plan and check only: print the work items and their cost (encoder passes per encoder and
    /// input size, and hours estimated from a short calibration of each encoder) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: count the passes without timing the encoders.
    #[arg(long, requires = "dry_run")]
    pub no_calibrate: bool,
    #[arg(long)]
    pub json: bool,
    /// Override a value of the file: a dotted path (an index picks an `[[attack]]`, `[[task]]`,
    /// ... or an array entry) and a TOML value, a bare word being a string; repeatable, later
    /// wins. The edited file is checked like the file and recorded in the run folder.
    /// E.g. --set run.size=518 --set 'attack.0.eps=["4/255"]'
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
}

/// Plans `path` (with its `--set` overrides) and opens the run folder's store for `shard`, recording the plan in it.
pub fn prepare(path: &std::path::Path, sets: &[String], out: Option<PathBuf>, shard: (usize, usize)) -> Result<(Plan, RunDir, Store)> {
    let loaded = Loaded::read_with(path, sets)?;
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
        let plan = Plan::new(&Loaded::read_with(&a.experiment, &a.set)?)?;
        let items = plan.shard(shard.0, shard.1);
        let cost =
            if a.no_calibrate { Cost { rows: cost::count(&plan)?, calibrations: Vec::new(), hours: None } } else { cost::estimate(&plan)? };
        if a.json {
            let items: Vec<_> = items.iter().map(|i| serde_json::json!({ "key": i.key, "work": plan.describe(i) })).collect();
            let out = serde_json::json!({ "heads": plan.heads.len(), "items": items, "cells": plan.cells().len(), "cost": cost });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
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
        print_cost(&cost);
        return Ok(());
    }
    let (plan, dir, store, summary) = execute(a, shard)?;
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

/// Plans and runs shard `shard` of the experiment (not a dry run).
pub fn execute(a: &RunArgs, shard: (usize, usize)) -> Result<(Plan, RunDir, Store, execute::Summary)> {
    let (plan, dir, mut store) = prepare(&a.experiment, &a.set, a.out.clone(), shard)?;
    let summary = execute::run(&plan, &dir, &mut store, &Options { shard, unshared: a.unshared })?;
    Ok((plan, dir, store, summary))
}

/// The cost table: passes per encoder and input size, the estimate, and what it was timed on.
fn print_cost(cost: &Cost) {
    println!("\ncost (the whole plan; encoder passes per input size):");
    println!("  {:<24} {:>11} {:>14} {:>14} {:>10}", "encoder", "input", "forward", "backward", "hours");
    for r in &cost.rows {
        let hours = r.hours.map_or("–".to_string(), |h| format!("{h:.2}"));
        println!("  {:<24} {:>11} {:>14} {:>14} {:>10}", r.encoder, format!("{}x{}", r.input.0, r.input.1), r.forward, r.backward, hours);
    }
    match cost.hours {
        Some(h) => {
            println!("  estimate: {h:.2} hours on this machine, one process (heads' own training and data loading not counted)");
            for c in &cost.calibrations {
                println!(
                    "  calibration: {} at {}x{} on {}: {:.4} s forward, {:.4} s forward + backward per image",
                    c.encoder, c.side, c.side, c.device, c.forward_s, c.forward_backward_s
                );
            }
        }
        None => println!("  (not timed: --no-calibrate)"),
    }
}
