//! Transfer attacks across encoders in an experiment: a perturbation crafted on a surrogate
//! encoder (a public backbone) and scored on the heads of another. What the two must share to
//! make that meaningful: the very pixels of every image, seen through the same windows (the
//! perturbation is one tensor of pixels). The plan pairs each attacked head with its counterpart
//! on the surrogate (`Plan::counterpart`).

use anyhow::{bail, Result};

use crate::data::transform::{resizes, same_pixels, Transform};
use crate::heads::sliding::Window;

/// How an encoder sees a task's images: its transforms and its windows.
pub struct View<'a> {
    pub encoder: &'a str,
    pub transforms: Vec<Transform>,
    pub window: Option<Window>,
}

impl View<'_> {
    fn describe(&self) -> String {
        let names = |ts: &[Transform]| ts.iter().map(Transform::describe).collect::<Vec<_>>().join(",");
        match self.window {
            Some(w) => format!("{} through {w}", names(&resizes(&self.transforms))),
            None => names(&self.transforms),
        }
    }

    /// The transforms that make the pixels: windows see whole images, so only the resizes.
    fn pixels(&self) -> Vec<Transform> {
        match self.window {
            Some(_) => resizes(&self.transforms),
            None => self.transforms.clone(),
        }
    }
}

/// Refuses a transfer on task `task`'s images from the `source` view to the `target` one unless
/// both see the same pixels through the same windows.
pub fn check_views(task: &str, source: &View, target: &View) -> Result<()> {
    if source.window != target.window || !same_pixels(&source.pixels(), &target.pixels()) {
        bail!(
            "task '{task}': a transfer attack from encoder '{}' to '{}' needs both to see the same pixels, but '{}' sees {} and \
             '{}' sees {}; give the task its transforms (and window), or [run] size, so that they agree",
            source.encoder,
            target.encoder,
            source.encoder,
            source.describe(),
            target.encoder,
            target.describe()
        );
    }
    Ok(())
}
