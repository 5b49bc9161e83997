//! Which part of a plan one process runs: shard `i` of `N`, from `--shard i/N` or a Slurm array
//! job's variables.

use anyhow::{bail, Context, Result};

/// `i/N` (0 <= i < N), or the Slurm array variables when no spec is given.
pub fn shard_spec(spec: Option<&str>) -> Result<(usize, usize)> {
    let parse = |s: &str| -> Result<(usize, usize)> {
        let (i, n) = s.split_once('/').with_context(|| format!("--shard '{s}': expected I/N, e.g. 0/4"))?;
        let (i, n): (usize, usize) = (
            i.trim().parse().with_context(|| format!("--shard '{s}': '{i}' is not a number"))?,
            n.trim().parse().with_context(|| format!("--shard '{s}': '{n}' is not a number"))?,
        );
        if n == 0 || i >= n {
            bail!("--shard '{s}': out of range (shards are 0/N to {}/N, N >= 1)", n.saturating_sub(1));
        }
        Ok((i, n))
    };
    if let Some(s) = spec {
        return parse(s);
    }
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) {
        (Some(id), Some(count)) => {
            let min = var("SLURM_ARRAY_TASK_MIN").unwrap_or_else(|| "0".into());
            let num = |k: &str, v: &str| v.parse::<usize>().with_context(|| format!("{k}='{v}' is not a number"));
            let (id, count, min) =
                (num("SLURM_ARRAY_TASK_ID", &id)?, num("SLURM_ARRAY_TASK_COUNT", &count)?, num("SLURM_ARRAY_TASK_MIN", &min)?);
            let index = id.checked_sub(min).with_context(|| format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"))?;
            parse(&format!("{index}/{count}")).context("from the Slurm array variables")
        }
        _ => Ok((0, 1)),
    }
}
