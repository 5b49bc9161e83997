//! NYU-Depth-v2's official labeled file, `nyu_depth_v2_labeled.mat`: MATLAB v7.3, i.e. HDF5 after
//! a 512-byte user block, read with libhdf5. MATLAB stores arrays column-major, so HDF5 sees the
//! dimensions reversed: `images` `(N, 3, W, H)` u8 and `depths` `(N, W, H)` f32 metres. The
//! official split is `splits.mat` beside it (MATLAB v5: 1-based `trainNdxs`, `testNdxs`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use hdf5_metno::dataset::Layout;
use hdf5_metno::types::{IntSize, TypeDescriptor};

use super::{no_such_split, Dataset, Sample, Split, Target};

pub struct NyuMat {
    file: PathBuf,
    split: Split,
    h5: hdf5_metno::File,
    /// 0-based indices into the file of this split's frames.
    frames: Vec<usize>,
    height: usize,
    width: usize,
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
        let h5 = hdf5_metno::File::open(file).map_err(|e| anyhow::anyhow!("{shown}: not a readable MATLAB v7.3 (HDF5) file: {e}"))?;
        let shape = |name: &str| -> Result<Vec<usize>> {
            Ok(h5.dataset(name).map_err(|e| anyhow::anyhow!("{shown}: no '{name}' array ({e})"))?.shape())
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
        // libhdf5 trusts a dataset's recorded storage (a damaged one can make it read out of
        // bounds): check it against the shape and the file before any read.
        let file_len = std::fs::metadata(file).with_context(|| format!("{shown}: cannot read"))?.len();
        for name in ["images", "depths"] {
            let ds = h5.dataset(name).map_err(|e| anyhow::anyhow!("{shown}: no '{name}' array ({e})"))?;
            let dtype = ds.dtype().map_err(|e| anyhow::anyhow!("{shown}: '{name}' has an unreadable type ({e})"))?;
            let descriptor = dtype.to_descriptor().map_err(|e| anyhow::anyhow!("{shown}: '{name}' has an unreadable type ({e})"))?;
            // The exact standard types (H5Tequal: size, order, precision, offset and, for floats,
            // the bit fields too): a damaged type (a precision of 0, say) passes the descriptor
            // and makes libhdf5 1.10 convert out of bounds.
            let same = |t: Result<hdf5_metno::Datatype, _>| t.is_ok_and(|t| t == dtype);
            let (kind, exact) = match name {
                "images" => (matches!(descriptor, TypeDescriptor::Unsigned(IntSize::U1)), same(hdf5_metno::Datatype::from_type::<u8>())),
                _ => (
                    matches!(descriptor, TypeDescriptor::Float(_)),
                    same(hdf5_metno::Datatype::from_type::<f32>()) || same(hdf5_metno::Datatype::from_type::<f64>()),
                ),
            };
            if !kind {
                bail!("{shown}: '{name}' holds {descriptor}, expected {}", if name == "images" { "uint8" } else { "floats" });
            }
            if !exact {
                bail!("{shown}: '{name}' holds {descriptor} in a non-standard form (byte order, precision or bit offset): damaged");
            }
            let elem = dtype.size() as u64;
            let expected = (ds.size() as u64).checked_mul(elem);
            let stored = ds.storage_size();
            let sound = match ds.layout() {
                Layout::Contiguous => {
                    ds.offset().and_then(|o| o.checked_add(stored)).is_some_and(|end| end <= file_len) && Some(stored) == expected
                }
                Layout::Compact => Some(stored) == expected,
                Layout::Chunked => stored <= file_len && chunks_sound(&ds, file_len),
                #[allow(unreachable_patterns)]
                _ => false,
            };
            if !sound {
                bail!(
                    "{shown}: '{name}' ({:?} layout) records {stored} bytes of storage for {:?} values of {elem} bytes in a {file_len}-byte file: damaged",
                    ds.layout(),
                    ds.shape()
                );
            }
        }
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
        Ok(Self { file: file.to_path_buf(), split, h5, frames, height: h, width: w })
    }

    fn read<T: hdf5_metno::H5Type + Copy, D: ndarray::Dimension>(&self, name: &str, frame: usize) -> Result<ndarray::Array<T, D>> {
        let ds = self.h5.dataset(name)?;
        let sel: hdf5_metno::Selection = match D::NDIM {
            Some(3) => (frame, .., .., ..).into(),
            _ => (frame, .., ..).into(),
        };
        ds.read_slice::<T, _, D>(sel)
            .map_err(|e| anyhow::anyhow!("{}: cannot read frame {} of '{name}': {e}", self.file.display(), frame + 1))
    }
}

/// Every chunk of a chunked dataset lies on the chunk grid inside the dataset's extent and in
/// the file, and no chunk is larger than the extent (libhdf5 1.10 reads such chunks out of
/// bounds).
fn chunks_sound(ds: &hdf5_metno::Dataset, file_len: u64) -> bool {
    let (Some(chunk), shape) = (ds.chunk(), ds.shape()) else { return false };
    // A fixed-size dataset's chunks are no larger than its extent (HDF5's own rule).
    if chunk.len() != shape.len() || chunk.contains(&0) || chunk.iter().zip(&shape).any(|(c, d)| c > d) {
        return false;
    }
    let most: usize = shape.iter().zip(&chunk).map(|(&d, &c)| d.div_ceil(c)).product();
    let Some(n) = ds.num_chunks() else { return false };
    n <= most
        && (0..n).all(|i| {
            ds.chunk_info(i).is_some_and(|c| {
                c.offset.len() == shape.len()
                    && c.offset.iter().zip(&shape).zip(&chunk).all(|((&o, &d), &k)| (o as usize) < d && (o as usize).is_multiple_of(k))
                    && c.size > 0
                    && c.addr.checked_add(c.size).is_some_and(|end| end <= file_len)
            })
        })
}

impl Dataset for NyuMat {
    fn len(&self) -> usize {
        self.frames.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let frame = *super::item(&self.frames, index)?;
        let (h, w) = (self.height, self.width);
        // (3, W, H) → planar (3, H, W): pixel (y, x) of channel c is at [c, x, y].
        let img = self.read::<u8, ndarray::Ix3>("images", frame)?;
        let pixels: Vec<f32> = img.permuted_axes([0, 2, 1]).iter().map(|&v| v as f32 / 255.0).collect();
        let depth = self.read::<f32, ndarray::Ix2>("depths", frame)?;
        let metres: Vec<f32> = depth.t().iter().copied().collect();
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
