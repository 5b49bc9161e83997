//! The trainable copy of an encoder: every parameter a candle `Var`, so the candle-ops forward
//! tracks weight gradients, and a frozen snapshot of the current weights for the attack engine's
//! fast path between updates.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use candle_core::{Tensor, Var};

use crate::encoder::{Encoder, Tokens};

pub struct Student {
    /// The encoder whose parameters are the variables below.
    encoder: Encoder,
    pub params: Vec<(String, Var)>,
}

impl Student {
    /// A trainable copy of `teacher` (its weights are copied, the teacher is left as it is).
    pub fn new(teacher: &Encoder) -> Result<Self> {
        let mut params = Vec::new();
        let vit = teacher.vit.map_parameters(|name, t| {
            let v = Var::from_tensor(&t.copy()?)?;
            params.push((name.to_string(), v.clone()));
            Ok(v.as_tensor().clone())
        })?;
        Ok(Self { encoder: Encoder::from_vit(vit, teacher.info.clone())?, params })
    }

    /// Tokens of `pixels` in [0,1], differentiable with respect to the parameters.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tokens> {
        self.encoder.forward_generic(pixels)
    }

    /// The current weights as a frozen encoder (attacks on the student use it).
    pub fn snapshot(&self) -> Result<Encoder> {
        let vit = self.encoder.vit.map_parameters(|_, t| Ok(t.detach()))?;
        Encoder::from_vit(vit, self.encoder.info.clone())
    }

    /// The parameters by name (the ViT's own layout), for a resumable checkpoint.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
    }

    /// Sets every parameter from `tensors` (as written by [`Student::tensors`]); `file` names
    /// where they came from in errors.
    pub fn restore(&self, tensors: &BTreeMap<String, Tensor>, file: &str) -> Result<()> {
        if tensors.len() != self.params.len() {
            bail!("{file}: {} student tensors, this encoder has {} parameters", tensors.len(), self.params.len());
        }
        for (name, var) in &self.params {
            let t = tensors.get(name).ok_or_else(|| anyhow!("{file}: no student tensor '{name}' (a checkpoint of another encoder?)"))?;
            if t.dims() != var.dims() {
                bail!("{file}: student tensor '{name}' is {:?}, this encoder's is {:?}", t.dims(), var.dims());
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Writes the student as a copy of the input checkpoint (same format and naming).
    pub fn save_like_input(&self, dst: &Path) -> Result<()> {
        self.snapshot()?.save_like_input(dst)
    }
}
