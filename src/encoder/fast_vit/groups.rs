//! A batch split over groups of threads: where the batch divides among the threads, each group
//! runs the whole ViT on its own images, and the groups run side by side. Inside a group every
//! op runs on the group's threads alone (one thread each on a 2-core machine), so no product
//! or element-wise pass waits for the other group at its end: a batch of 8 ViT-S/14 images at
//! 224 px ran its forward, reverse pass and a second forward 5–8 % faster in f32 and 10–12 %
//! in bf16 than the whole batch with both threads in every op.
//!
//! The images of a batch never meet in a forward or a pixel gradient (no op sums over the
//! batch), and every product sums over its inner dimension in an order its row count does not
//! change, so a split batch gives the whole batch's values bit for bit (tested). Weight
//! gradients do sum over the batch: a tape for them is never split.

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// How many groups a batch of `b` images splits into over `threads` threads: as many as divide
/// both, so that every group has as many images and as many threads as every other, with at least
/// `least` images in each (1: no split). A product whose rows are one per image (the CLS rows, the
/// patches of a one-patch image) takes another path at a single row (the `gemm` crate's
/// matrix–vector kernel, which sums in another order): such a forward keeps two images a group.
pub(super) fn count(b: usize, threads: usize, least: usize) -> usize {
    let (mut x, mut y) = (b.max(1), threads.max(1));
    while y != 0 {
        (x, y) = (y, x % y);
    }
    (1..=x).rev().find(|g| x % g == 0 && b / g >= least.max(1)).unwrap_or(1)
}

/// One pool of threads for each group.
type Pools = Arc<Vec<ThreadPool>>;

/// The thread pools of the groups, built on first use for each (groups, threads per group) and
/// kept: a group's threads are the same from one forward to the next.
#[derive(Default)]
pub(super) struct Groups {
    pools: Mutex<Vec<((usize, usize), Pools)>>,
}

impl Groups {
    /// The pools of `groups` groups of `each` threads, or none where the system refuses the
    /// threads.
    fn pools(&self, groups: usize, each: usize) -> Option<Pools> {
        // A poisoned lock only means another caller panicked while building; the list is whole.
        let mut known = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, p)) = known.iter().find(|(key, _)| *key == (groups, each)) {
            return Some(p.clone());
        }
        let built = (0..groups)
            .map(|g| ThreadPoolBuilder::new().num_threads(each).thread_name(move |i| format!("robust-ssl group {g}.{i}")).build().ok())
            .collect::<Option<Vec<_>>>()?;
        let built = Arc::new(built);
        known.push(((groups, each), built.clone()));
        Some(built)
    }

    /// `f(g)` for every group `g` in `0..groups` (at least one), side by side, each on its own pool of the
    /// caller's threads divided among the groups; the results in group order. A panic in a group
    /// is the caller's panic. Where the system refuses the threads, the groups run one after
    /// another on the caller's threads: the same values, at the speed of an unsplit batch.
    pub(super) fn run<R: Send>(&self, groups: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
        let each = (rayon::current_num_threads() / groups).max(1);
        let Some(pools) = (groups > 1).then(|| self.pools(groups, each)).flatten() else { return (0..groups).map(f).collect() };
        let f = &f;
        std::thread::scope(|s| {
            let running: Vec<_> = pools.iter().enumerate().map(|(g, pool)| s.spawn(move || pool.install(|| f(g)))).collect();
            running.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_into_equal_groups_of_images_and_threads() {
        assert_eq!(count(8, 2, 1), 2);
        assert_eq!(count(8, 16, 1), 8);
        assert_eq!(count(8, 16, 2), 4);
        assert_eq!(count(12, 8, 1), 4);
        assert_eq!(count(12, 8, 4), 2);
        assert_eq!(count(2, 2, 1), 2);
        assert_eq!(count(2, 2, 2), 1);
        assert_eq!(count(1, 2, 1), 1);
        assert_eq!(count(3, 2, 1), 1);
        assert_eq!(count(8, 1, 1), 1);
        assert_eq!(count(0, 2, 1), 1);
    }

    #[test]
    fn groups_run_side_by_side_on_their_own_threads_in_order() {
        let pool = ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let groups = Groups::default();
        let out = pool.install(|| groups.run(2, |g| (g, rayon::current_num_threads(), std::thread::current().name().map(String::from))));
        assert_eq!(out.len(), 2);
        for (g, (i, threads, name)) in out.into_iter().enumerate() {
            assert_eq!((i, threads), (g, 2));
            assert!(name.unwrap().starts_with(&format!("robust-ssl group {g}.")));
        }
        // The same pools serve the next call; one group runs on the caller's own threads.
        pool.install(|| groups.run(2, |_| ()));
        assert_eq!(groups.pools.lock().unwrap().len(), 1);
        assert_eq!(pool.install(|| groups.run(1, |g| (g, rayon::current_num_threads()))), vec![(0, 4)]);
    }
}
