//! `robust_ssl._native`: the Python extension (PyO3). It runs the command line's own code: each
//! call is parsed from flags exactly as `robust-ssl` parses them (same names, defaults and
//! checks; `robust_ssl/__init__.py` turns keyword arguments into those flags), so that a result
//! from Python equals the command's on the same inputs. Arrays cross as contiguous numpy arrays,
//! checked on the Python side first; every error is a Python exception with the message.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Parser;
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../src/commands/mod.rs"]
mod commands;

fn failed(e: anyhow::Error) -> PyErr {
    PyRuntimeError::new_err(format!("{e:#}"))
}

/// `argv` parsed as the command line (`robust-ssl ARGV...`).
fn parse(argv: Vec<String>) -> PyResult<commands::Cli> {
    commands::Cli::try_parse_from(std::iter::once("robust-ssl".to_string()).chain(argv)).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The device of `cli` (`--device`), chosen once per process as the command does.
fn choose(cli: &commands::Cli) -> PyResult<()> {
    robust_ssl::device::choose(cli.device).map_err(failed)
}

/// A C-contiguous numpy array as a CPU tensor of its shape.
fn tensor<T: numpy::Element + candle_core::WithDType>(a: &PyReadonlyArrayDyn<'_, T>, what: &str) -> PyResult<candle_core::Tensor> {
    let values = a.as_slice().map_err(|_| PyValueError::new_err(format!("{what} must be a C-contiguous array")))?;
    candle_core::Tensor::from_vec(values.to_vec(), a.shape(), &candle_core::Device::Cpu).map_err(|e| failed(e.into()))
}

/// A float32 numpy array owned by Python.
type Array<'py> = Bound<'py, PyArrayDyn<f32>>;

/// A tensor as a float32 numpy array of its shape.
fn to_numpy<'py>(py: Python<'py>, t: &candle_core::Tensor) -> PyResult<Array<'py>> {
    let values =
        t.to_dtype(candle_core::DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>()).map_err(|e| failed(e.into()))?;
    numpy::PyArray1::from_vec(py, values).reshape(t.dims().to_vec())
}

/// The `robust-ssl` command: `argv` without the program name; returns the exit status.
#[pyfunction]
fn cli(py: Python<'_>, argv: Vec<String>) -> i32 {
    let parsed = commands::Cli::try_parse_from(std::iter::once("robust-ssl".to_string()).chain(argv));
    match parsed {
        Err(e) => {
            let _ = e.print();
            e.exit_code()
        }
        Ok(cli) => match py.detach(|| commands::run(cli)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        },
    }
}

/// An encoder loaded from a checkpoint, as `--checkpoint FILE` and the model flags load it.
#[pyclass(name = "Encoder", module = "robust_ssl._native")]
struct Encoder {
    enc: robust_ssl::encoder::Encoder,
    /// The flags it was loaded with (`--checkpoint FILE ...`), for the commands that load it again.
    #[pyo3(get)]
    flags: Vec<String>,
}

#[derive(Parser)]
struct EncoderFlags {
    #[command(flatten)]
    encoder: commands::EncoderArgs,
}

#[pymethods]
impl Encoder {
    /// `flags`: `--checkpoint FILE` and any model flag (`--arch`, `--num-heads`, `--pos-resize`,
    /// `--backbone`, `--precision`).
    #[new]
    fn new(py: Python<'_>, flags: Vec<String>) -> PyResult<Self> {
        let parsed = EncoderFlags::try_parse_from(std::iter::once("encoder".to_string()).chain(flags.clone()))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let enc = py.detach(|| parsed.encoder.load()).map_err(failed)?;
        Ok(Self { enc, flags })
    }

    /// CLS `[N, D]` and patch tokens `[N, P, D]` (after the final norm) of f32 images
    /// `[N, 3, H, W]` in [0, 1], as `robust-ssl embed` computes them.
    #[pyo3(signature = (images, batch_size = 8))]
    fn embed<'py>(&self, py: Python<'py>, images: PyReadonlyArrayDyn<'py, f32>, batch_size: usize) -> PyResult<(Array<'py>, Array<'py>)> {
        let x = tensor(&images, "images")?;
        if x.rank() != 4 || x.dims()[1] != 3 {
            return Err(PyValueError::new_err(format!("images must be [N, 3, H, W]; got {:?}", x.dims())));
        }
        let (cls, patch) = py.detach(|| commands::embed::embed(&self.enc, &x, batch_size)).map_err(failed)?;
        Ok((to_numpy(py, &cls)?, to_numpy(py, &patch)?))
    }

    /// What the checkpoint holds and how it was read, as `robust-ssl inspect --json` (JSON).
    fn info(&self) -> PyResult<String> {
        serde_json::to_string(&self.enc.info).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }
}

/// `robust-ssl attack` on arrays: `flags` are the command's (`--task`, `--head`, `--attack`, ...
/// and the encoder's); the images and labels are written to a temporary `arrays:` file and
/// attacked without transforms. Returns the report (JSON), the adversarial images and the
/// perturbations.
#[pyfunction]
fn attack<'py>(
    py: Python<'py>,
    flags: Vec<String>,
    images: PyReadonlyArrayDyn<'py, f32>,
    labels: &Bound<'py, PyAny>,
) -> PyResult<(String, Array<'py>, Array<'py>)> {
    let dir = tempfile::tempdir().map_err(|e| PyRuntimeError::new_err(format!("cannot make a temporary folder: {e}")))?;
    let labels = if let Ok(l) = labels.extract::<PyReadonlyArrayDyn<'py, i64>>() {
        tensor(&l, "labels")?
    } else if let Ok(l) = labels.extract::<PyReadonlyArrayDyn<'py, f32>>() {
        tensor(&l, "labels")?
    } else {
        return Err(PyValueError::new_err("labels must be an int64 array (classes [N], label maps [N, H, W]) or float32 depths [N, H, W]"));
    };
    let tensors = HashMap::from([("images".to_string(), tensor(&images, "images")?), ("labels".to_string(), labels)]);
    let input = dir.path().join("input.safetensors");
    let output = dir.path().join("adversarial.safetensors");
    robust_ssl::atomic::save_safetensors(&tensors, &input).map_err(failed)?;
    let mut argv = vec!["attack".to_string()];
    argv.extend(flags);
    argv.extend([
        "--dataset".into(),
        format!("arrays:{}", input.display()),
        "--transforms".into(),
        String::new(),
        "--save-adversarial".into(),
        output.display().to_string(),
    ]);
    let cli = parse(argv)?;
    choose(&cli)?;
    let commands::Command::Attack(args) = cli.command else { unreachable!("parsed as attack") };
    let report = py.detach(|| commands::attack::execute(&args)).map_err(failed)?.0;
    let text = serde_json::to_string(&report).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let saved = candle_core::safetensors::load(&output, &candle_core::Device::Cpu).map_err(|e| failed(e.into()))?;
    Ok((text, to_numpy(py, &saved["images"])?, to_numpy(py, &saved["delta"])?))
}

/// `robust-ssl run EXP.toml FLAGS...` (not a dry run): runs the experiment (or a shard) and
/// returns `{run_dir, store, summary}` as JSON.
#[pyfunction]
fn run(py: Python<'_>, argv: Vec<String>) -> PyResult<String> {
    let cli = parse(std::iter::once("run".to_string()).chain(argv).collect())?;
    choose(&cli)?;
    let commands::Command::Run(args) = cli.command else { unreachable!("parsed as run") };
    if args.dry_run {
        return Err(PyValueError::new_err("run(): a dry run prints its plan; use the command for that"));
    }
    let shard = robust_ssl::experiment::shard::shard_spec(args.shard.as_deref()).map_err(failed)?;
    let (_, dir, store, summary) = py.detach(|| commands::run::execute(&args, shard)).map_err(failed)?;
    Ok(serde_json::json!({ "run_dir": dir.root, "store": store.path(), "summary": summary }).to_string())
}

/// A run's results in the long format of `robust-ssl export` (CSV text), or per image
/// (`--format per-sample`).
#[pyfunction]
#[pyo3(signature = (run_dir, per_sample = false))]
fn export_csv(run_dir: PathBuf, per_sample: bool) -> PyResult<String> {
    let store = commands::export::store_of(&run_dir).map_err(failed)?;
    let cells = store.cells().map_err(failed)?;
    let mut out = Vec::new();
    match per_sample {
        true => robust_ssl::experiment::export::write_per_sample_csv(&cells, &mut out),
        false => robust_ssl::experiment::export::write_csv(&cells, &mut out),
    }
    .map_err(failed)?;
    String::from_utf8(out).map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Encoder>()?;
    m.add_function(wrap_pyfunction!(cli, m)?)?;
    m.add_function(wrap_pyfunction!(attack, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(export_csv, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
