//! `arrays:FILE.safetensors`: images and labels a user holds as arrays (numpy, torch), e.g. what
//! `attack --save-adversarial` wrote or `safetensors.numpy.save_file` writes. `images`: f32
//! `[N, 3, H, W]` in [0, 1] (or u8 `[N, 3, H, W]`, divided by 255); `labels` (optional): integers
//! `[N]` (classes), integers `[N, H, W]` (segmentation; 255 ignored) or floats `[N, H, W]`
//! (depth in metres, 0 unmeasured). The file is every split. Pixels outside [0, 1] (NaN
//! included), labels of another length and negative classes are refused, naming the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::{Dataset, Sample, Split, Target};

pub struct Arrays {
    file: PathBuf,
    split: Split,
    images: Tensor,
    labels: Option<Labels>,
}

enum Labels {
    Class(Vec<u32>),
    Segmentation(Vec<u32>, usize, usize),
    Depth(Vec<f32>, usize, usize),
}

impl Arrays {
    pub fn open(file: &Path, split: Split) -> Result<Self> {
        let shown = file.display();
        let mut tensors = candle_core::safetensors::load(file, &Device::Cpu)
            .with_context(|| format!("{shown}: not a readable .safetensors file of arrays"))?;
        let images = tensors.remove("images").with_context(|| format!("{shown}: no tensor 'images' ([N, 3, H, W] in [0, 1])"))?;
        let (n, c, h, w) =
            images.dims4().map_err(|_| anyhow::anyhow!("{shown}: 'images' is {:?}, expected [N, 3, H, W]", images.dims()))?;
        if c != 3 || n == 0 || h == 0 || w == 0 {
            bail!("{shown}: 'images' is {:?}, expected [N, 3, H, W] with N, H, W at least 1", images.dims());
        }
        let images = match images.dtype() {
            // Divided by 255 as the other readers (and torchvision's ToTensor) do; candle's scalar
            // division multiplies by the reciprocal, which rounds differently.
            DType::U8 => {
                let bytes = images.flatten_all()?.to_vec1::<u8>()?;
                let each = bytes.chunks(c * h * w).map(|b| super::planar_u8_to_tensor(b, c, h, w)).collect::<Result<Vec<_>>>()?;
                Tensor::stack(&each, 0)?
            }
            DType::F32 => images,
            DType::F16 | DType::BF16 | DType::F64 => images.to_dtype(DType::F32)?,
            other => bail!("{shown}: 'images' holds {other:?}; expected f32 in [0, 1] or u8"),
        };
        if let Some(bad) = images.flatten_all()?.to_vec1::<f32>()?.into_iter().find(|v| !(0.0..=1.0).contains(v)) {
            bail!("{shown}: 'images' holds {bad}: pixels must be finite and lie in [0, 1] (not normalized)");
        }
        let labels = match tensors.remove("labels") {
            None => None,
            Some(l) => Some(Self::labels(&l, n).map_err(|e| anyhow::anyhow!("{shown}: 'labels': {e}"))?),
        };
        Ok(Self { file: file.to_path_buf(), split, images, labels })
    }

    fn labels(l: &Tensor, n: usize) -> Result<Labels> {
        if l.dims().first() != Some(&n) {
            bail!("{:?} for {n} images", l.dims());
        }
        let integer = matches!(l.dtype(), DType::U8 | DType::U32 | DType::I64 | DType::I32 | DType::I16);
        let ints = || -> Result<Vec<u32>> {
            let v = l.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
            v.iter().map(|&x| u32::try_from(x).map_err(|_| anyhow::anyhow!("holds {x}, not a class"))).collect()
        };
        Ok(match (l.rank(), integer) {
            (1, true) => Labels::Class(ints()?),
            (3, true) => Labels::Segmentation(ints()?, l.dim(1)?, l.dim(2)?),
            (3, false) => {
                let v = l.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                if let Some(bad) = v.iter().find(|x| !x.is_finite() || **x < 0.0) {
                    bail!("holds {bad}, not a depth in metres (0 where unmeasured)");
                }
                Labels::Depth(v, l.dim(1)?, l.dim(2)?)
            }
            _ => bail!(
                "{:?} of {:?}: expected integers [N] (classes), integers [N, H, W] (segmentation) or floats [N, H, W] (depth)",
                l.dims(),
                l.dtype()
            ),
        })
    }
}

impl Dataset for Arrays {
    fn len(&self) -> usize {
        self.images.dim(0).unwrap_or(0)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len() {
            bail!("{}: index {index} out of range ({})", self.file.display(), self.len());
        }
        let image = self.images.get(index)?;
        let target = match &self.labels {
            None => Target::None,
            Some(Labels::Class(c)) => Target::Class(c[index]),
            Some(Labels::Segmentation(v, h, w)) => {
                Target::Segmentation { labels: v[index * h * w..(index + 1) * h * w].to_vec(), height: *h, width: *w }
            }
            Some(Labels::Depth(v, h, w)) => Target::Depth { metres: v[index * h * w..(index + 1) * h * w].to_vec(), height: *h, width: *w },
        };
        Ok(Sample { image, target })
    }

    fn num_classes(&self) -> Option<usize> {
        match &self.labels {
            Some(Labels::Class(c)) => c.iter().max().map(|&m| m as usize + 1),
            Some(Labels::Segmentation(v, ..)) => v.iter().filter(|&&x| x != super::IGNORE).max().map(|&m| m as usize + 1),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        format!("arrays:{} [{}]", self.file.display(), self.split)
    }
}
