//! Which device tensors live on. `--device` picks it once per process ([`choose`]): `cpu`,
//! `cuda`/`cuda:N` (a binary built with `scripts/build-cuda.sh`), or `auto`, the default: the
//! first CUDA GPU where the binary has CUDA and the machine can run it, the CPU otherwise. It is
//! opened when first needed, and every part of a run then gets the same one from [`default_device`].

use std::sync::OnceLock;

use anyhow::{bail, Result};
use candle_core::Device;

/// Where a run's tensors live, as a user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A CUDA GPU where this binary and this machine can use one, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The CUDA GPU of this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        Ok(match lower.as_str() {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" | "gpu" => DeviceChoice::Cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => DeviceChoice::Cuda(n),
                _ => bail!("'{s}' is not a device: use auto, cpu, cuda or cuda:N"),
            },
        })
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

static CHOICE: OnceLock<DeviceChoice> = OnceLock::new();
static OPENED: OnceLock<Device> = OnceLock::new();

/// Sets the process's device, opened when a part of the run first asks for it. One device for the
/// whole run: a CUDA device opened twice would be two devices whose tensors cannot meet.
pub fn choose(choice: DeviceChoice) -> Result<()> {
    let chosen = *CHOICE.get_or_init(|| choice);
    if chosen != choice {
        bail!("--device {choice}: this process already chose {chosen}");
    }
    Ok(())
}

/// The chosen device (`auto` where none was chosen: library use, tests).
pub fn default_device() -> Result<Device> {
    if let Some(d) = OPENED.get() {
        return Ok(d.clone());
    }
    let device = open(CHOICE.get().copied().unwrap_or_default())?;
    Ok(OPENED.get_or_init(|| device).clone())
}

fn open(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) => cuda::open(n).map_err(|why| anyhow::anyhow!("--device {choice}: {why}; or run with --device cpu")),
        DeviceChoice::Auto => Ok(match cuda::open(0) {
            Ok(device) => device,
            Err(why) => {
                if cfg!(feature = "cuda") {
                    eprintln!("note: no usable CUDA GPU ({why}); running on the CPU");
                }
                Device::Cpu
            }
        }),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::Device;

    /// The libraries candle opens a CUDA device with (the driver, cuBLAS(Lt), cuRAND), each by
    /// the names it may carry on Linux: the binary loads them at run time, so a machine without
    /// them gets this message instead of a crash.
    const NEEDED: &[(&str, &[&str])] = &[
        ("the CUDA driver", &["libcuda.so.1", "libcuda.so"]),
        ("cuBLAS", &["libcublas.so.13", "libcublas.so.12", "libcublas.so"]),
        ("cuBLASLt", &["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"]),
        ("cuRAND", &["libcurand.so.10", "libcurand.so"]),
    ];

    pub fn open(ordinal: usize) -> Result<Device, String> {
        let missing: Vec<String> = NEEDED
            .iter()
            // SAFETY: loading a library runs its initialisers; these are NVIDIA's own CUDA
            // libraries, loaded the same way candle loads them.
            .filter(|(_, names)| !names.iter().any(|n| unsafe { libloading::Library::new(n) }.is_ok()))
            .map(|(what, names)| format!("{what} ({})", names[0]))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "cannot load {}; on a GPU machine put the folders holding them on LD_LIBRARY_PATH (PyTorch's \
                 CUDA wheels carry them: site-packages/nvidia/*/lib)",
                missing.join(", ")
            ));
        }
        Device::new_cuda(ordinal).map_err(|e| format!("cannot open CUDA device {ordinal}: {e}"))
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use candle_core::Device;

    pub fn open(_: usize) -> Result<Device, String> {
        Err("this binary was built without CUDA; build the CUDA one with `bash scripts/build-cuda.sh` \
             (target/cuda/release/robust-ssl)"
            .into())
    }
}

/// Waits for queued device work (a no-op on the CPU), so timings cover the computation.
pub fn synchronize(device: &Device) -> Result<()> {
    device.synchronize()?;
    Ok(())
}

/// The device as reports name it: `cpu (N threads)`, `cuda:0`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// A field of /proc/cpuinfo's first processor (`model name`, `flags`), where there is one.
pub fn cpuinfo(name: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_named_as_users_write_them() {
        for (text, want) in
            [("auto", DeviceChoice::Auto), ("CPU", DeviceChoice::Cpu), ("cuda", DeviceChoice::Cuda(0)), ("Cuda:3", DeviceChoice::Cuda(3))]
        {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), want, "{text}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("cuda:N"), "{err}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_on_a_binary_without_it_says_how_to_build_it() {
        let err = open(DeviceChoice::Cuda(0)).unwrap_err().to_string();
        assert!(err.contains("--device cuda:0") && err.contains("scripts/build-cuda.sh"), "{err}");
        assert!(open(DeviceChoice::Auto).unwrap().is_cpu());
    }
}
