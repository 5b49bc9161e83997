//! Defences: adversarial fine-tuning of the encoder itself. DeACL (a frozen teacher, a trainable
//! student pulled towards the teacher on clean images and towards itself under an embedding
//! attack) and multi-perturbation adversarial training (embedding and task attacks together, with
//! the task heads in the loss). Each run is resumable bit for bit from its last checkpoint, and
//! writes the student in the input checkpoint's own form.

pub mod deacl;
pub mod multi;
pub mod recipe;
pub mod run;
pub mod student;
