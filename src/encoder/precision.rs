//! The arithmetic of the encoder's matrix products: f32 throughout (the default, the reference),
//! or bf16 operands with f32 sums (`--precision bf16`, PyTorch autocast's trade) on CPUs with
//! AVX512-BF16 (on AMX tiles where the CPU has them too). Everything else (normalizations,
//! softmax, activations, residuals, the heads, the attack's bookkeeping) stays f32 in both.

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

crate::choices!(Precision { F32 = "f32", Bf16 = "bf16" });

impl Precision {
    /// Whether this precision runs here: bf16 needs the hand-written CPU path (an f32 model on the
    /// CPU) and a CPU with AVX512-BF16; the error says which is missing.
    pub fn check(self, device: &candle_core::Device, dtype: candle_core::DType) -> Result<()> {
        if self == Self::F32 {
            return Ok(());
        }
        if !device.is_cpu() || dtype != candle_core::DType::F32 {
            bail!(
                "precision bf16 runs on the CPU only (the model is {dtype:?} on {}); use precision f32 there",
                crate::device::describe(device)
            );
        }
        if !super::bf16_gemm::supported() {
            let cpu = crate::device::cpuinfo("model name").unwrap_or_else(|| "unknown model".into());
            let why = if std::env::var_os(super::bf16_gemm::DISABLE_ENV).is_some() {
                format!("{} is set", super::bf16_gemm::DISABLE_ENV)
            } else {
                format!("this one ({cpu}) lacks it")
            };
            bail!("precision bf16 needs a CPU with AVX512-BF16 (vdpbf16ps), and {why}; use precision f32");
        }
        Ok(())
    }
}
