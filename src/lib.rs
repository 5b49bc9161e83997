//! robust-ssl: adversarial robustness of self-supervised ViT encoders (DINO, DINOv2) on every
//! downstream task.
//!
//! *An attack is a threat model times an objective, run over one differentiable pipeline:
//! pixels in [0,1] → normalize → encoder → head.* This crate holds that pipeline and everything
//! that feeds it.

pub mod arrays_out;
pub mod atomic;
pub mod attacks;
pub mod choice;
pub mod data;
pub mod defense;
pub mod device;
pub mod encoder;
pub mod experiment;
pub mod features;
pub mod heads;
pub mod input;
pub mod metrics;
pub mod optim;
pub mod perf;
pub mod progress;
pub mod report;
pub mod resize;
pub mod rng;
