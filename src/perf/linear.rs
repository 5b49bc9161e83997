//! The linear layers' speed against the machine's peak: the encoder's own matrix shapes (rows =
//! batch × tokens) through the kernels the attack path runs, f32 and bf16, and the peak each
//! could reach, measured by a loop of independent multiply-adds in registers on every thread
//! (the most the cores retire with no memory traffic: a measured ceiling, not a data-sheet one).

use std::time::Instant;

use anyhow::Result;

use crate::encoder::arch::{FfnKind, VitConfig};
use crate::encoder::bf16_gemm;
use crate::encoder::frozen_linear::gemm_f32;

/// One matrix product of the encoder, timed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerSpeed {
    /// Which layer and pass: `qkv`, `fc1 (dx)`, ...
    pub layer: String,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub f32_gflops: f64,
    /// Of the f32 peak, in percent.
    pub f32_of_peak: f64,
    pub bf16_gflops: Option<f64>,
    /// Of the bf16 peak, in percent.
    pub bf16_of_peak: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LinearSpeed {
    /// GFLOP/s of f32 fused multiply-adds in registers on every thread at once.
    pub peak_f32_gflops: f64,
    /// The same for `vdpbf16ps` (two bf16 products and their sum per f32 lane), where the CPU has it.
    pub peak_bf16_gflops: Option<f64>,
    /// How the peaks were found, in words.
    pub peak_method: &'static str,
    pub layers: Vec<LayerSpeed>,
}

const PEAK_METHOD: &str = "12 independent chains of 512-bit FMA (AVX-512; 256-bit on AVX2) or vdpbf16ps per thread, in registers (bf16 on AMX: four independent tdpbf16ps on loaded tiles), every rayon thread at once; flops = 2 per multiply-add; best of 3";

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    /// Multiply-adds retired: `iters × 12 chains × lanes`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: usize) -> (f32, f64) {
        let (a, b) = (_mm512_set1_ps(std::hint::black_box(0.999)), _mm512_set1_ps(std::hint::black_box(1e-3)));
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        (acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum(), (iters * 12 * 16 * 2) as f64)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: usize) -> (f32, f64) {
        let (a, b) = (_mm256_set1_ps(std::hint::black_box(0.999)), _mm256_set1_ps(std::hint::black_box(1e-3)));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0f32; 8];
        let mut s = 0.0;
        for v in acc {
            _mm256_storeu_ps(out.as_mut_ptr(), v);
            s += out.iter().sum::<f32>();
        }
        (s, (iters * 12 * 8 * 2) as f64)
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(iters: usize) -> (f32, f64) {
        let one: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80u16 as i16));
        let small: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3a83u16 as i16));
        let mut acc = [_mm512_set1_ps(1.0); 12];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, one, small);
            }
        }
        (acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum(), (iters * 12 * 32 * 2) as f64)
    }
}

/// GFLOP/s of `kernel` run on every rayon thread at once, best of 3.
fn all_threads(kernel: fn(usize) -> (f32, f64)) -> f64 {
    let iters = 2_000_000;
    (0..3)
        .map(|_| {
            let t0 = Instant::now();
            let flops: f64 = rayon::broadcast(|_| {
                let (sink, flops) = kernel(iters);
                std::hint::black_box(sink);
                flops
            })
            .iter()
            .sum();
            flops / t0.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn peaks() -> (f64, Option<f64>) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each kernel runs only where the CPU has its instructions.
        let f32_peak = if is_x86_feature_detected!("avx512f") {
            all_threads(|n| unsafe { peak::fma512(n) })
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            all_threads(|n| unsafe { peak::fma256(n) })
        } else {
            f64::NAN
        };
        let bf16_peak = bf16_gemm::supported().then(|| match bf16_gemm::Kernel::best() {
            bf16_gemm::Kernel::Amx => all_threads(|n| unsafe { crate::encoder::amx::peak(n / 16) }),
            bf16_gemm::Kernel::Dpbf16 => all_threads(|n| unsafe { peak::dpbf16(n) }),
        });
        (f32_peak, bf16_peak)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (f64::NAN, None)
    }
}

/// Median seconds of `f` over 5 runs after one.
fn seconds(mut f: impl FnMut()) -> f64 {
    f();
    let mut ts: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[2]
}

/// The encoder's linear layers at `rows` rows (batch × tokens), forward (`x·W`), input gradient
/// (`dy·Wᵀ`, what an attack's reverse pass runs) and weight gradient (`xᵀ·dy`, fine-tuning), through
/// the fast path's kernels.
pub fn measure(config: &VitConfig, rows: usize) -> Result<LinearSpeed> {
    let (peak_f32, peak_bf16) = peaks();
    let d = config.embed_dim;
    let hidden = config.ffn_hidden;
    let fc1_out = match config.ffn {
        FfnKind::SwiGlu => 2 * hidden,
        _ => hidden,
    };
    let shapes = [("qkv", d, 3 * d), ("proj", d, d), ("fc1", d, fc1_out), ("fc2", hidden, d)];
    let mut layers = Vec::new();
    for (name, inp, out) in shapes {
        // (pass, m, k, n, lhs transposed): the forward x·W, the input gradient dy·Wᵀ (attacks),
        // and the weight gradient xᵀ·dy (fine-tuning: x read transposed, k = the rows).
        for (pass, m, k, n, transposed) in [("", rows, inp, out, false), (" (dx)", rows, out, inp, false), (" (dw)", inp, rows, out, true)]
        {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            let w: Vec<f32> = (0..k * n).map(|i| ((i * 104_729) % 1000) as f32 * 1e-3 - 0.5).collect();
            let mut y = vec![0f32; m * n];
            let flops = 2.0 * (m * k * n) as f64;
            // The lhs as the kernels read it: m×k row-major, or (dw) a row-major k×m read transposed.
            let lhs = if transposed { (x.as_ptr(), 1, m) } else { (x.as_ptr(), k, 1) };
            // SAFETY: x holds m×k values, w k×n, y m×n, all separate; the strides stay inside them.
            let f32_s = seconds(|| unsafe { gemm_f32((m, n, k), y.as_mut_ptr(), n, false, lhs, (w.as_ptr(), n, 1), true) });
            let bf16_s = bf16_gemm::supported()
                .then(|| seconds(|| unsafe { bf16_gemm::gemm_bf16((m, n, k), y.as_mut_ptr(), n, false, lhs, (w.as_ptr(), n, 1), true) }));
            let (f32_gflops, bf16_gflops) = (flops / f32_s / 1e9, bf16_s.map(|s| flops / s / 1e9));
            layers.push(LayerSpeed {
                layer: format!("{name}{pass}"),
                m,
                k,
                n,
                f32_gflops,
                f32_of_peak: 100.0 * f32_gflops / peak_f32,
                bf16_gflops,
                bf16_of_peak: bf16_gflops.zip(peak_bf16).map(|(g, p)| 100.0 * g / p),
            });
        }
    }
    Ok(LinearSpeed { peak_f32_gflops: peak_f32, peak_bf16_gflops: peak_bf16, peak_method: PEAK_METHOD, layers })
}
