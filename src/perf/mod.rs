//! Throughput measurement of the encoder: forward, and forward + backward to the input pixels
//! (what every attack step needs). Timings only; correctness lives in the tests.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Tensor};

pub mod linear;
pub mod parity;

use crate::device::synchronize;
use crate::encoder::Encoder;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Timing {
    pub batch: usize,
    pub size: usize,
    pub iters: usize,
    /// The arithmetic of the encoder's matrix products.
    pub precision: crate::encoder::Precision,
    /// Median seconds per batch.
    pub forward_s: f64,
    pub forward_backward_s: f64,
    /// PGD steps per second of the attack engine (EmbedAttack, L∞, whole batch), when measured.
    pub attack_steps_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune_steps_per_s: Option<f64>,
    /// What the figures were measured on.
    pub machine: Machine,
}

/// The machine a benchmark ran on: ratios against PyTorch move with the CPU, so every figure
/// says which.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo (empty where there is none).
    pub cpu: String,
    pub threads: usize,
    /// The SIMD extensions of the CPU that matter to the kernels, as /proc/cpuinfo names them.
    pub features: Vec<String>,
    /// The kernels our matrix products run (the gemm crate dispatches at run time).
    pub gemm_kernels: &'static str,
    /// The kernel of `--precision bf16`'s products, where the CPU runs one.
    pub bf16_kernel: Option<&'static str>,
    pub device: String,
}

impl Machine {
    pub fn of(device: &candle_core::Device) -> Self {
        let field = crate::device::cpuinfo;
        let flags = field("flags").unwrap_or_default();
        let wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"];
        let features: Vec<String> = wanted.iter().filter(|w| flags.split_whitespace().any(|f| f == **w)).map(|w| w.to_string()).collect();
        #[cfg(target_arch = "x86_64")]
        let gemm_kernels = if std::arch::is_x86_feature_detected!("avx512f") {
            "AVX-512 (x86-64-v4)"
        } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            "AVX2 + FMA (x86-64-v3)"
        } else {
            "SSE2 (baseline)"
        };
        #[cfg(not(target_arch = "x86_64"))]
        let gemm_kernels = "the target's baseline";
        Self {
            cpu: field("model name").unwrap_or_default(),
            threads: rayon::current_num_threads(),
            features,
            gemm_kernels,
            bf16_kernel: crate::encoder::bf16_gemm::supported().then(|| crate::encoder::bf16_gemm::Kernel::best().describe()),
            device: crate::device::describe(device),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Gradient of a fixed random projection of both outputs with respect to the pixels.
pub fn input_gradient(enc: &Encoder, pixels: &Tensor, proj_cls: &Tensor, proj_patch: &Tensor) -> Result<(f64, Tensor)> {
    let (t, tape) = enc.forward_with_tape(pixels)?;
    let loss = ((t.cls * proj_cls)?.sum_all()? + (t.patch * proj_patch)?.sum_all()?)?;
    let g = enc.backward(&tape, proj_cls, proj_patch)?;
    Ok((loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, g))
}

pub fn measure(enc: &Encoder, batch: usize, size: usize, warmup: usize, iters: usize) -> Result<Timing> {
    let dev = enc.vit.device();
    let p = enc.config().patch_size;
    let d = enc.config().embed_dim;
    let n = (size / p) * (size / p);
    let x = Tensor::rand(0f32, 1f32, (batch, 3, size, size), dev)?;
    let pc = Tensor::randn(0f32, 1f32, (batch, d), dev)?;
    let pp = Tensor::randn(0f32, 1f32, (batch, n, d), dev)?;
    let mut fwd = Vec::new();
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let t = enc.forward(&x)?;
        let _ = t.cls.sum_all()?.to_scalar::<f32>()?;
        synchronize(dev)?;
        if i >= warmup {
            fwd.push(t0.elapsed().as_secs_f64());
        }
    }
    let mut bwd = Vec::new();
    for i in 0..warmup + iters {
        let t0 = Instant::now();
        let (_, g) = input_gradient(enc, &x, &pc, &pp)?;
        let _ = g.sum_all()?.to_scalar::<f32>()?;
        synchronize(dev)?;
        if i >= warmup {
            bwd.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(Timing {
        batch,
        size,
        iters,
        precision: enc.precision(),
        forward_s: median(fwd),
        forward_backward_s: median(bwd),
        attack_steps_per_s: None,
        finetune_steps_per_s: None,
        machine: Machine::of(dev),
    })
}

/// The study's PGD (L∞, ε 8/255, step 2/255, uniform random start, seed 0) over `steps` steps.
fn study_pgd(steps: usize) -> crate::attacks::engine::AttackConfig {
    use crate::attacks::engine::{AttackConfig, Method};
    use crate::attacks::threat::{Norm, ThreatModel};
    AttackConfig {
        method: Method::Pgd,
        threat: ThreatModel { norm: Norm::Linf, eps: 8.0 / 255.0 },
        step_size: 2.0 / 255.0,
        steps,
        restarts: 1,
        random_start: true,
        seed: 0,
        early_stop: false,
        last_iterate: false,
        evaluate_last: false,
        window: None,
        trace: false,
        queries: crate::attacks::spec::AttackSpec::DEFAULT_QUERIES,
    }
}

/// Steps per second of the attack engine: EmbedAttack (CLS and patch tokens, MSE), L∞ 8/255, step
/// 2/255, `steps` steps on a batch of random images; the time covers the whole attack (random
/// start, every forward and reverse pass, projections and bookkeeping) divided by its steps, of the
/// second of two such attacks.
pub fn attack_steps_per_s(enc: &Encoder, batch: usize, size: usize, steps: usize) -> Result<f64> {
    window_attack_steps_per_s(enc, batch, (size, size), None, steps)
}

/// [`attack_steps_per_s`] on whole `h × w` images seen through `window` (every step goes through
/// every window and back: the cost of a whole image against one crop).
pub fn window_attack_steps_per_s(
    enc: &Encoder,
    batch: usize,
    (h, w): (usize, usize),
    window: Option<crate::heads::sliding::Window>,
    steps: usize,
) -> Result<f64> {
    use crate::attacks::embed::{Distance, EmbedAttack, EmbedTarget};
    use crate::attacks::engine::attack;
    use crate::heads::sliding::{tokens_of, Tiling};
    let x = Tensor::rand(0f32, 1f32, (batch, 3, h, w), &candle_core::Device::Cpu)?;
    let tiling = window.map(|win| Tiling::new(h, w, win, enc.config().patch_size)).transpose()?;
    let clean = tokens_of(enc, &x, tiling.as_ref())?;
    let obj = EmbedAttack::new(&clean, EmbedTarget::Both, Distance::Mse)?;
    let cfg = crate::attacks::engine::AttackConfig { window, ..study_pgd(steps) };
    // One untimed attack first: a run attacks batch after batch, and the first attack of a
    // process pays for memory (pages the kernel zeroes) that the later ones reuse.
    attack(enc, &obj, &x, &cfg)?;
    synchronize(enc.vit.device())?;
    let t0 = Instant::now();
    let out = attack(enc, &obj, &x, &cfg)?;
    synchronize(enc.vit.device())?;
    let _ = out.loss;
    Ok(steps as f64 / t0.elapsed().as_secs_f64())
}

/// DeACL fine-tuning steps per second on random images after one untimed step: per step the
/// teacher's forward, the inner 5-step PGD on the student (L∞ 8/255, step 2/255), the student's
/// forward and backward to its weights on clean and adversarial images, and an SGD update.
pub fn finetune_steps_per_s(enc: &Encoder, batch: usize, size: usize, steps: usize) -> Result<f64> {
    use crate::attacks::embed::EmbedTarget;
    use crate::defense::deacl::Deacl;
    use crate::defense::run::{MiniBatch, Recipe};
    use crate::defense::student::Student;
    use crate::optim::Optimizer;
    use crate::optim::OptimizerKind;
    let inner = crate::attacks::engine::AttackConfig { last_iterate: true, ..study_pgd(5) };
    let recipe = Deacl { k: 2.0, embedding: EmbedTarget::Cls, inner };
    let student = Student::new(enc)?;
    let mut opt = Optimizer::new(OptimizerKind::Sgd { momentum: 0.9, weight_decay: 5e-4 });
    let x = Tensor::rand(0f32, 1f32, (batch, 3, size, size), &candle_core::Device::Cpu)?.to_device(enc.vit.device())?;
    let batch = MiniBatch { images: x, targets: crate::features::Targets::None };
    let mut t0 = Instant::now();
    for step in 0..=steps {
        if step == 1 {
            synchronize(enc.vit.device())?;
            t0 = Instant::now();
        }
        let (loss, _) = recipe.loss(&student, enc, &batch, step as u64)?;
        let grads = student.gradients(&loss)?;
        opt.step(&student.params, &grads, 0.01)?;
    }
    synchronize(enc.vit.device())?;
    Ok(steps as f64 / t0.elapsed().as_secs_f64())
}
