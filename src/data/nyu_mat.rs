//! NYU-Depth-v2's official labeled file, `nyu_depth_v2_labeled.mat`: MATLAB v7.3, i.e. HDF5 after
//! a 512-byte user block, read in pure Rust (the `hdf5-reader` crate: no libhdf5 to install).
//! MATLAB stores arrays column-major, so HDF5 sees the dimensions reversed: `images`
//! `(N, 3, W, H)` u8 and `depths` `(N, W, H)` f32 (or f64) metres. The official split is
//! `splits.mat` beside it (MATLAB v5: 1-based `trainNdxs`, `testNdxs`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use hdf5_reader::{Hdf5File, OpenOptions, SliceInfo, SliceInfoElem};

use super::{no_such_split, Dataset, Sample, Split, Target};

/// The most one read (one frame of one array) may decode: 3 bytes × 2^26 pixels, or 8 × 2^26.
const MAX_READ_BYTES: usize = 8 << 26;

pub struct NyuMat {
    file: PathBuf,
    split: Split,
    h5: Hdf5File,
    /// 0-based indices into the file of this split's frames.
    frames: Vec<usize>,
    height: usize,
    width: usize,
    /// Whether `depths` holds float64 (else float32).
    depths_f64: bool,
}
/// The 1-based index column `name` of `splits.mat`, as 0-based indices below `n`.
fn split_indices(splits: &Path, name: &str, n: usize) -> Result<Vec<usize>> {
    let bytes = std::fs::read(splits).with_context(|| {
        format!("{}: cannot open the official split file (it must lie beside nyu_depth_v2_labeled.mat)", splits.display())
    })?;
    let values = super::mat5::numeric_matrix(&bytes, name)
        .map_err(|e| anyhow::anyhow!("{}: not a readable MATLAB v5 file: {e}", splits.display()))?
        .with_context(|| format!("{}: no numeric variable '{name}'", splits.display()))?;
    values
        .iter()
        .map(|&v| {
            if v.fract() != 0.0 || v < 1.0 || v > n as f64 {
                bail!("{}: '{name}' holds {v}, not a 1-based frame index of the {n} frames", splits.display());
            }
            Ok(v as usize - 1)
        })
        .collect()
}

impl NyuMat {
    pub fn open(file: &Path, split: Split) -> Result<Self> {
        let shown = file.display();
        let options = OpenOptions::default().with_max_read_bytes(MAX_READ_BYTES).with_max_chunk_bytes(MAX_READ_BYTES);
        let h5 = Hdf5File::open_with_options(file, options)
            .map_err(|e| anyhow::anyhow!("{shown}: not a readable MATLAB v7.3 (HDF5) file: {e}"))?;
        let shape = |name: &str| -> Result<Vec<usize>> {
            let ds = h5.dataset(name).map_err(|e| anyhow::anyhow!("{shown}: no '{name}' array ({e})"))?;
            ds.shape().iter().map(|&d| usize::try_from(d).with_context(|| format!("{shown}: '{name}' has a dimension of {d}"))).collect()
        };
        let (images, depths) = (shape("images")?, shape("depths")?);
        let [n, 3, w, h] = images[..] else {
            bail!("{shown}: 'images' has shape {images:?}, expected (N, 3, W, H)");
        };
        if w == 0 || h == 0 || w.saturating_mul(h) > 1 << 26 {
            bail!("{shown}: 'images' has shape {images:?}: frames of {w}x{h} pixels");
        }
        if depths != [n, w, h] {
            bail!("{shown}: 'depths' has shape {depths:?} but 'images' is {images:?}; expected ({n}, {w}, {h})");
        }
        // The element size in bytes of array `name`, whose type must be `want`'s standard one.
        let checked = |name: &str, want: Kind| -> Result<u32> {
            let raw = h5
                .dataset(name)
                .and_then(|ds| ds.raw_datatype())
                .map_err(|e| anyhow::anyhow!("{shown}: '{name}' has an unreadable type ({e})"))?;
            standard_type(&raw, want).map_err(|why| anyhow::anyhow!("{shown}: '{name}' {why}"))
        };
        checked("images", Kind::U8)?;
        let depths_f64 = checked("depths", Kind::Float)? == 8;
        let name = match split {
            Split::Train => "trainNdxs",
            Split::Test => "testNdxs",
            _ => return Err(no_such_split("nyu (labeled .mat)", split, &["train", "test"])),
        };
        let splits = file.with_file_name("splits.mat");
        let frames = split_indices(&splits, name, n)?;
        if frames.is_empty() {
            bail!("{}: '{name}' is empty: the {split} split has no frames", splits.display());
        }
        Ok(Self { file: file.to_path_buf(), split, h5, frames, height: h, width: w, depths_f64 })
    }

    /// Frame `frame` of array `name`, its other dimensions whole, in the file's (column-major)
    /// order.
    fn read<T: hdf5_reader::H5Type>(&self, name: &str, frame: usize) -> Result<Vec<T>> {
        let fail =
            |e: hdf5_reader::error::Error| anyhow::anyhow!("{}: cannot read frame {} of '{name}': {e}", self.file.display(), frame + 1);
        let ds = self.h5.dataset(name).map_err(fail)?;
        let mut selections = vec![SliceInfoElem::Slice { start: 0, end: u64::MAX, step: 1 }; ds.ndim()];
        selections[0] = SliceInfoElem::Index(frame as u64);
        let values = ds.read_slice::<T>(&SliceInfo { selections }).map_err(fail)?;
        Ok(values.as_standard_layout().iter().cloned().collect())
    }
}

/// The element types the two arrays may hold.
#[derive(Clone, Copy)]
enum Kind {
    U8,
    Float,
}

/// Checks a raw HDF5 datatype message (its class, bit fields, size and properties; HDF5 spec
/// IV.A.2.d) against the standard little-endian `uint8` or IEEE `float32`/`float64`: a damaged
/// type (a precision of 0, a moved exponent) would otherwise be decoded as the standard one and
/// give wrong numbers silently. Returns the element size in bytes.
fn standard_type(raw: &[u8], want: Kind) -> std::result::Result<u32, String> {
    let u16_at = |i: usize| raw.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |i: usize| raw.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let (class, bits, size) = match (raw.first(), raw.get(1..4), u32_at(4)) {
        (Some(&c), Some(b), Some(s)) => (c & 0x0f, [b[0], b[1], b[2]], s),
        _ => return Err(format!("has a truncated type message ({} bytes)", raw.len())),
    };
    let standard = match (want, class, size) {
        // Fixed point: little-endian, zero padding, unsigned; offset 0, all 8 bits.
        (Kind::U8, 0, 1) => bits == [0, 0, 0] && u16_at(8) == Some(0) && u16_at(10) == Some(8),
        // Floating point: little-endian, zero padding, implied mantissa bit, sign at the top; offset
        // 0, full precision, IEEE exponent and mantissa fields and bias.
        (Kind::Float, 1, 4 | 8) => {
            let (exp_loc, exp_size, mant_size, bias) = if size == 4 { (23, 8, 23, 127) } else { (52, 11, 52, 1023) };
            bits == [0x20, (size * 8 - 1) as u8, 0]
                && u16_at(8) == Some(0)
                && u16_at(10) == Some((size * 8) as u16)
                && raw.get(12..16) == Some(&[exp_loc, exp_size, 0, mant_size][..])
                && u32_at(16) == Some(bias)
        }
        (Kind::U8, ..) => return Err(format!("holds a type of class {class} and {size} bytes, expected uint8")),
        (Kind::Float, ..) => return Err(format!("holds a type of class {class} and {size} bytes, expected float32 or float64")),
    };
    if standard {
        Ok(size)
    } else {
        Err("holds its type in a non-standard form (byte order, precision, bit offset or float fields): damaged".into())
    }
}

impl Dataset for NyuMat {
    fn len(&self) -> usize {
        self.frames.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let frame = *super::item(&self.frames, index)?;
        let (h, w) = (self.height, self.width);
        // (3, W, H) → planar (3, H, W): pixel (y, x) of channel c is at [c, x, y].
        let img = self.read::<u8>("images", frame)?;
        let mut pixels = vec![0f32; 3 * h * w];
        for (c, plane) in pixels.chunks_exact_mut(h * w).enumerate() {
            for (y, row) in plane.chunks_exact_mut(w).enumerate() {
                for (x, p) in row.iter_mut().enumerate() {
                    *p = img[(c * w + x) * h + y] as f32 / 255.0;
                }
            }
        }
        let depth: Vec<f32> = match self.depths_f64 {
            true => self.read::<f64>("depths", frame)?.into_iter().map(|v| v as f32).collect(),
            false => self.read::<f32>("depths", frame)?,
        };
        let mut metres = vec![0f32; h * w];
        for (y, row) in metres.chunks_exact_mut(w).enumerate() {
            for (x, m) in row.iter_mut().enumerate() {
                *m = depth[x * h + y];
            }
        }
        Ok(Sample {
            image: Tensor::from_vec(pixels, (3, h, w), &candle_core::Device::Cpu)?,
            target: Target::Depth { metres, height: h, width: w },
        })
    }

    fn num_classes(&self) -> Option<usize> {
        None
    }

    fn describe(&self) -> String {
        format!("nyu:{} [{}]", self.file.display(), self.split)
    }
}
