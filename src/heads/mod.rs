//! Downstream heads (linear probe, segmentation, depth), their losses and the upsampling of their
//! outputs: the differentiable end of *normalize → encoder → head*.

pub mod bin_readout;
pub mod evaluate;
pub mod file;
pub mod fit;
pub mod head;
pub mod layers;
pub mod losses;
pub mod published;
pub mod recipes;
pub mod sample_score;
pub mod sliding;
pub mod train;
pub mod trainer;
pub mod upsample;
