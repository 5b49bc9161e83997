//! Images into the pipeline: a `.safetensors` batch (`images`, f32 `[N,3,H,W]` in [0,1]), one
//! image file, or a folder of image files — always pixels in [0,1], never normalized here.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};

pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff"];

/// A batch of images with a name for each.
pub struct ImageBatch {
    /// `[N, 3, H, W]`, f32, in [0, 1].
    pub images: Tensor,
    pub names: Vec<String>,
}

/// Loads `path` as a batch; every image must have the same size.
pub fn load_images(path: &Path) -> Result<ImageBatch> {
    let shown = path.display();
    if !path.exists() {
        bail!("{shown}: no such file or folder");
    }
    let batch = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("{shown}: cannot list the folder"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && has_image_extension(p))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("{shown}: the folder holds no image files ({})", IMAGE_EXTENSIONS.join(", "));
        }
        let images = files.iter().map(|f| decode_image(f)).collect::<Result<Vec<_>>>()?;
        let (h, w) = (images[0].dim(1)?, images[0].dim(2)?);
        for (f, img) in files.iter().zip(&images) {
            if (img.dim(1)?, img.dim(2)?) != (h, w) {
                bail!(
                    "{}: image is {}x{} but {} is {h}x{w}; images of one folder must share a size",
                    f.display(),
                    img.dim(1)?,
                    img.dim(2)?,
                    files[0].display()
                );
            }
        }
        let names = files.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
        ImageBatch { images: Tensor::stack(&images, 0)?, names }
    } else if path.extension().and_then(|e| e.to_str()) == Some("safetensors") {
        load_safetensors(path)?
    } else {
        let img = decode_image(path)?;
        ImageBatch { images: img.unsqueeze(0)?, names: vec![path.file_name().unwrap_or_default().to_string_lossy().into_owned()] }
    };
    check_pixels(&batch.images, path)?;
    Ok(batch)
}

/// True for a file name ending in one of [`IMAGE_EXTENSIONS`] (any case).
pub fn has_image_extension(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Largest side of an image read, and most bytes its decoding may take.
const MAX_SIDE: u32 = 16384;
const MAX_DECODED: u64 = 96 << 20;

/// One image file as `[3, H, W]` f32 in [0, 1].
pub fn decode_image(path: &Path) -> Result<Tensor> {
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?;
    // A header's size is checked before anything is allocated (its f32 copy is 4× as large).
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| anyhow!("{}: not a decodable image (corrupt or truncated?): {e}", path.display()))?.to_rgb8();
    let (w, h) = img.dimensions();
    let data: Vec<f32> = img.into_raw().into_iter().map(|v| v as f32 / 255.0).collect();
    Ok(Tensor::from_vec(data, (h as usize, w as usize, 3), &Device::Cpu)?.permute((2, 0, 1))?.contiguous()?)
}

fn load_safetensors(path: &Path) -> Result<ImageBatch> {
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("{shown}: cannot read"))?;
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| anyhow!("{shown}: not a valid safetensors file (truncated or corrupt?): {e}"))?;
    let images = tensors.remove("images").ok_or_else(|| {
        let names: Vec<&String> = tensors.keys().collect();
        anyhow!("{shown}: no tensor named 'images' (found {names:?})")
    })?;
    if images.rank() != 4 || images.dim(1)? != 3 {
        bail!("{shown}: tensor 'images' has shape {:?}, expected [N, 3, H, W]", images.dims());
    }
    if images.dtype() != DType::F32 {
        bail!("{shown}: tensor 'images' is {:?}, expected f32 pixels in [0, 1]", images.dtype());
    }
    let n = images.dim(0)?;
    Ok(ImageBatch { images, names: (0..n).map(|i| format!("images[{i}]")).collect() })
}

/// Refuses NaN/inf and values outside [0, 1] (the latter usually means already-normalized input).
pub fn check_pixels(images: &Tensor, path: &Path) -> Result<()> {
    let flat = images.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = flat.iter().position(|v| !v.is_finite()) {
        bail!("{}: pixel {i} is {} (NaN or infinite values are not images)", path.display(), flat[i]);
    }
    if let Some(i) = flat.iter().position(|v| !(0.0..=1.0).contains(v)) {
        bail!(
            "{}: pixel {i} is {}, outside [0, 1]; give raw pixels scaled to [0, 1] (normalization happens inside)",
            path.display(),
            flat[i]
        );
    }
    Ok(())
}
