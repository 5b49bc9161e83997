//! Adversarial attacks. *An attack is a threat model times an objective, run over one
//! differentiable pipeline: pixels in [0,1] → normalize → encoder → head.* The threat model
//! ([`threat`]) bounds the perturbation and shapes the step; the objective (one file each:
//! [`embed`], [`pgd_ce`], [`dlr`], [`segpgd`], [`depthpgd`]) says what to maximise; [`engine`] runs the
//! projected ascent (PGD, or APGD's schedule in `apgd.rs`) over one [`problem`] with restarts,
//! per-sample best points and sanity checks; [`ensemble`] runs several attacks on the points
//! still robust (AutoAttack's way), [`fab`] the minimum-norm FAB-T, [`square`] the gradient-free search. [`spec`] names an attack, holds its defaults and
//! picks its objective; [`scoring`] attacks a batch and scores it on every head of its images;
//! [`strips`] draws what an attacked batch looks like.

mod apgd;
pub mod dense_ensemble;
pub mod depthpgd;
pub mod dlr;
pub mod embed;
pub mod engine;
pub mod ensemble;
pub mod fab;
pub mod fab_projection;
pub mod objective;
pub mod pgd_ce;
pub mod problem;
pub mod scoring;
pub mod seg_losses;
pub mod segpgd;
pub mod spec;
pub mod square;
pub mod square_dense;
pub mod strips;
pub mod threat;
