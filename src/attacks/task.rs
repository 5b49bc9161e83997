//! The task attack of a head: its own loss as the objective — cross-entropy for a linear probe
//! (PGD), SegPGD's weighted cross-entropy for a segmentation head, SigLoss + GradLoss for a depth
//! head (DepthPGD).

use anyhow::{bail, Context, Result};

use super::depthpgd::DepthPgd;
use super::objective::Objective;
use super::pgd_ce::CrossEntropy;
use super::segpgd::SegPgd;
use crate::features::Targets;
use crate::heads::head::Head;
use crate::metrics::DepthRange;

/// The task objective of `head` against `targets` (a depth head needs its valid `range`).
pub fn task_objective<'a>(head: &'a Head, targets: &Targets, range: Option<DepthRange>) -> Result<Box<dyn Objective + 'a>> {
    Ok(match (head, targets) {
        (Head::Linear(probe), Targets::Class(l)) => Box::new(CrossEntropy { probe, labels: l.clone() }),
        (Head::Seg(_), Targets::Segmentation { labels, height, width }) => Box::new(SegPgd { head, labels: labels.clone(), height: *height, width: *width }),
        (Head::Depth(_), Targets::Depth { metres, height, width }) => {
            let range = range.context("a depth head without a depth range")?;
            Box::new(DepthPgd { head, metres: metres.clone(), height: *height, width: *width, range })
        }
        (_, t) => bail!("the head's task does not fit {}", t.kind()),
    })
}
