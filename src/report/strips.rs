//! Side-by-side PNG strips for looking at attacks: clean image, adversarial image, the
//! perturbation (amplified to the full range), and for dense tasks the clean and adversarial
//! predictions next to the ground truth (class maps in the VOC palette, depth as near = bright).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;
use image::{Rgb, RgbImage};

use crate::data::IGNORE;

/// PASCAL VOC's palette: class `c`'s colour from its bits, interleaved over R, G, B.
pub fn voc_colour(c: u32) -> [u8; 3] {
    if c == IGNORE {
        return [224, 224, 192];
    }
    let (mut rgb, mut c) = ([0u8; 3], c);
    for shift in (0..8).rev() {
        for (k, ch) in rgb.iter_mut().enumerate() {
            *ch |= (((c >> k) & 1) as u8) << shift;
        }
        c >>= 3;
    }
    rgb
}

/// One panel of a strip.
pub enum Panel<'a> {
    /// `[3, H, W]` pixels in [0, 1].
    Image(&'a Tensor),
    /// Perturbation `[3, H, W]` scaled by `1 / (2ε)` around grey.
    Perturbation(&'a Tensor, f64),
    Classes { labels: &'a [u32], height: usize, width: usize },
    /// Depth in metres; values outside `(lo, hi)` are black.
    Depth { metres: &'a [f32], height: usize, width: usize, lo: f32, hi: f32 },
}

fn render(p: &Panel) -> Result<RgbImage> {
    Ok(match p {
        Panel::Image(t) | Panel::Perturbation(t, _) => {
            let (_, h, w) = t.dims3()?;
            let v = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let (scale, offset) = match p {
                Panel::Perturbation(_, eps) => ((0.5 / eps.max(1e-12)) as f32, 0.5f32),
                _ => (1.0, 0.0),
            };
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let at = |c: usize| ((v[(c * h + y as usize) * w + x as usize] * scale + offset).clamp(0.0, 1.0) * 255.0).round() as u8;
                Rgb([at(0), at(1), at(2)])
            })
        }
        Panel::Classes { labels, height, width } => {
            RgbImage::from_fn(*width as u32, *height as u32, |x, y| Rgb(voc_colour(labels[y as usize * width + x as usize])))
        }
        Panel::Depth { metres, height, width, lo, hi } => RgbImage::from_fn(*width as u32, *height as u32, |x, y| {
            let d = metres[y as usize * width + x as usize];
            if !(d > *lo && d < *hi) {
                return Rgb([0, 0, 0]);
            }
            let t = 1.0 - (d - lo) / (hi - lo).max(1e-6);
            let v = (40.0 + 215.0 * t).round() as u8;
            Rgb([v, v, v])
        }),
    })
}

/// Writes the panels left to right, 4 px apart, at the height of the tallest (each resized by
/// nearest neighbour to that height).
pub fn write_strip(path: &Path, panels: &[Panel]) -> Result<()> {
    let images = panels.iter().map(render).collect::<Result<Vec<_>>>()?;
    let h = images.iter().map(|i| i.height()).max().unwrap_or(1);
    let scaled: Vec<RgbImage> = images
        .into_iter()
        .map(|i| {
            let w = (i.width() as f64 * h as f64 / i.height() as f64).round().max(1.0) as u32;
            image::imageops::resize(&i, w, h, image::imageops::FilterType::Nearest)
        })
        .collect();
    let gap = 4;
    let total = scaled.iter().map(|i| i.width()).sum::<u32>() + gap * (scaled.len() as u32).saturating_sub(1);
    let mut out = RgbImage::from_pixel(total.max(1), h, Rgb([255, 255, 255]));
    let mut x = 0;
    for i in &scaled {
        image::imageops::replace(&mut out, i, x as i64, 0);
        x += i.width() + gap;
    }
    let tmp = crate::atomic::tmp_beside(path);
    out.save_with_format(&tmp, image::ImageFormat::Png).with_context(|| format!("{}: cannot write", tmp.display()))?;
    crate::atomic::commit(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The palette by hand (VOC: background black, aeroplane (128,0,0), bicycle (0,128,0),
    /// bird (128,128,0), person 15 = (192,128,128)).
    #[test]
    fn voc_palette() {
        assert_eq!(voc_colour(0), [0, 0, 0]);
        assert_eq!(voc_colour(1), [128, 0, 0]);
        assert_eq!(voc_colour(2), [0, 128, 0]);
        assert_eq!(voc_colour(3), [128, 128, 0]);
        assert_eq!(voc_colour(15), [192, 128, 128]);
    }
}
