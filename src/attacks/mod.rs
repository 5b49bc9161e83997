//! Adversarial attacks. *An attack is a threat model times an objective, run over one
//! differentiable pipeline: pixels in [0,1] → normalize → encoder → head.* The threat model
//! ([`threat`]) bounds the perturbation and shapes the step; the objective (one file each:
//! [`embed`], [`pgd_ce`], [`segpgd`], [`depthpgd`]) says what to maximise; [`engine`] runs the projected ascent with
//! restarts, per-sample best points and sanity checks.

mod apgd;
pub mod depthpgd;
pub mod embed;
pub mod engine;
pub mod objective;
pub mod pgd_ce;
pub mod segpgd;
pub mod task;
pub mod threat;
