//! Segmentation label maps stored as PNG: palette indices (VOC) or gray values (ADE20k,
//! Cityscapes), read as they are stored — never through a colour conversion.

use std::io::BufReader;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;

use super::{Sample, Target};

/// Largest decoded label or depth map (a 16384² 16-bit map is 512 MiB).
const MAX_PNG_BYTES: usize = 1 << 29;

/// The PNG's samples as stored (no palette expansion, 16-bit big-endian) and their layout.
fn decode_png(path: &Path, what: &str) -> Result<(Vec<u8>, png::OutputInfo)> {
    let shown = path.display();
    let file = std::fs::File::open(path).with_context(|| format!("{shown}: cannot open {what}"))?;
    let file_len = file.metadata().with_context(|| format!("{shown}: cannot open {what}"))?.len() as usize;
    let mut reader = png::Decoder::new(BufReader::new(file)).read_info().map_err(|e| anyhow!("{shown}: not a readable PNG {what}: {e}"))?;
    // The header's size, checked before it is allocated: no more than deflate can inflate this
    // file to (~1032×), and no more than any label map needs.
    let size = reader.output_buffer_size().filter(|&n| n <= MAX_PNG_BYTES && n <= file_len.saturating_mul(1032));
    let (w, h) = (reader.info().width, reader.info().height);
    let size =
        size.ok_or_else(|| anyhow!("{shown}: PNG {what} header says {w}x{h} pixels, more than this {file_len}-byte file can hold"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| anyhow!("{shown}: corrupt or truncated PNG: {e}"))?;
    Ok((buf, info))
}

/// The class value of every pixel, row-major, and (height, width).
pub fn read_label_png(path: &Path) -> Result<(Vec<u32>, usize, usize)> {
    let shown = path.display();
    let (buf, info) = decode_png(path, "label map")?;
    let (w, h, line) = (info.width as usize, info.height as usize, info.line_size);
    use png::{BitDepth, ColorType};
    let bits = match (info.color_type, info.bit_depth) {
        (ColorType::Indexed | ColorType::Grayscale, BitDepth::Eight) => 8,
        (ColorType::Indexed | ColorType::Grayscale, BitDepth::Four) => 4,
        (ColorType::Indexed | ColorType::Grayscale, BitDepth::Two) => 2,
        (ColorType::Indexed | ColorType::Grayscale, BitDepth::One) => 1,
        (c, d) => bail!("{shown}: label map is {c:?} {d:?}; expected palette or 8-bit grayscale class indices"),
    };
    let mut labels = Vec::with_capacity(w * h);
    for row in buf.chunks_exact(line).take(h) {
        for x in 0..w {
            let bit = x * bits;
            let byte = row[bit / 8];
            let v = if bits == 8 { byte } else { (byte >> (8 - bits - bit % 8)) & ((1u8 << bits) - 1) };
            labels.push(v as u32);
        }
    }
    Ok((labels, h, w))
}

/// A 16-bit grayscale depth PNG in millimetres, as metres (0 stays 0: no measurement).
pub fn read_depth_png_mm(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    let shown = path.display();
    let (buf, info) = decode_png(path, "depth map")?;
    if (info.color_type, info.bit_depth) != (png::ColorType::Grayscale, png::BitDepth::Sixteen) {
        bail!("{shown}: depth map is {:?} {:?}; expected 16-bit grayscale millimetres", info.color_type, info.bit_depth);
    }
    let (w, h) = (info.width as usize, info.height as usize);
    let mut metres = Vec::with_capacity(w * h);
    for row in buf.chunks_exact(info.line_size).take(h) {
        metres.extend(row.chunks_exact(2).take(w).map(|b| u16::from_be_bytes([b[0], b[1]]) as f32 / 1000.0));
    }
    Ok((metres, h, w))
}

/// Loads an image and its label map, checks they have one size, and maps every stored value
/// through `map` (`None`: a value the dataset does not define, which is an error).
pub fn segmentation_sample(image: &Path, label: &Path, map: impl Fn(u32) -> Option<u32>) -> Result<Sample> {
    let img: Tensor = crate::input::decode_image(image)?;
    let (raw, h, w) = read_label_png(label)?;
    let (ih, iw) = (img.dim(1)?, img.dim(2)?);
    if (ih, iw) != (h, w) {
        bail!("{}: label map is {h}x{w} but its image {} is {ih}x{iw}", label.display(), image.display());
    }
    let labels = raw
        .iter()
        .map(|&v| map(v).ok_or_else(|| anyhow!("{}: label value {v} is not a class of this dataset", label.display())))
        .collect::<Result<Vec<u32>>>()?;
    Ok(Sample { image: img, target: Target::Segmentation { labels, height: h, width: w } })
}

/// The files of `dir` ending in `suffix`, sorted.
pub fn files_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<std::path::PathBuf>> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(suffix)))
        .collect();
    out.sort();
    Ok(out)
}
