//! The trainable copy of an encoder: every parameter a candle `Var`, a frozen snapshot of the
//! current weights for the attack engine between updates, and the weight gradients of a loss.
//!
//! On the CPU in f32 a forward runs on the encoder's hand-written path and records a tape; the
//! loss's gradient stops at the tokens, and [`Student::gradients`] carries it on to the weights
//! with [`Encoder::param_gradients`]. Elsewhere (f64, GPUs) the forward is candle ops and candle's
//! autograd reaches the variables directly.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::encoder::{Encoder, Tape, Tokens};

/// A fast-path forward awaiting its reverse pass: the weights it ran with, its output and tape.
struct Recorded {
    weights: Encoder,
    output: Var,
    tape: Tape,
}

pub struct Student {
    /// The encoder whose parameters are the variables below.
    encoder: Encoder,
    pub params: Vec<(String, Var)>,
    recorded: Mutex<Vec<Recorded>>,
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
        let encoder = Encoder::from_vit(vit, teacher.info.clone())?.with_precision(teacher.precision())?;
        Ok(Self { encoder, params, recorded: Mutex::new(Vec::new()) })
    }

    /// Tokens of `pixels` in [0,1], differentiable with respect to the parameters (through
    /// [`Student::gradients`]).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tokens> {
        let weights = self.snapshot()?;
        match weights.forward_for_training(pixels)? {
            Some((tokens, output, tape)) => {
                self.recorded.lock().unwrap_or_else(|e| e.into_inner()).push(Recorded { weights, output, tape });
                Ok(tokens)
            }
            None => self.encoder.forward_generic(pixels),
        }
    }

    /// The gradients of `loss` with respect to the parameters, for the forwards since the last
    /// call.
    pub fn gradients(&self, loss: &Tensor) -> Result<GradStore> {
        let mut grads = loss.backward()?;
        let recorded = std::mem::take(&mut *self.recorded.lock().unwrap_or_else(|e| e.into_inner()));
        for r in recorded {
            let Some(d_output) = grads.remove(r.output.as_tensor()) else { continue };
            for (name, g) in r.weights.param_gradients(&r.tape, &d_output)? {
                let var = self.params.iter().find(|(n, _)| *n == name).map(|(_, v)| v).ok_or_else(|| anyhow!("no parameter '{name}'"))?;
                let g = g.to_dtype(var.dtype())?;
                let total = match grads.remove(var.as_tensor()) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                grads.insert(var.as_tensor(), total);
            }
        }
        Ok(grads)
    }

    /// The current weights as a frozen encoder (attacks on the student use it).
    pub fn snapshot(&self) -> Result<Encoder> {
        let vit = self.encoder.vit.map_parameters(|_, t| Ok(t.detach()))?;
        Encoder::from_vit(vit, self.encoder.info.clone())?.with_precision(self.encoder.precision())
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
