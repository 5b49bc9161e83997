//! Downstream heads and their losses. So far: the differentiable building blocks every head and
//! task attack uses (losses, bilinear upsampling of head outputs).

pub mod losses;
pub mod upsample;
