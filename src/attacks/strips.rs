//! Side-by-side PNG strips for looking at attacks: clean image, adversarial image, the
//! perturbation (amplified to the full range), and for dense tasks the clean and adversarial
//! predictions next to the ground truth (class maps in the VOC palette, depth as near = bright).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Tensor;
use image::{Rgb, RgbImage};

use crate::data::IGNORE;
use crate::features::Targets;

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
    Classes {
        labels: &'a [u32],
        height: usize,
        width: usize,
    },
    /// Depth in metres; values outside `(lo, hi)` are black.
    Depth {
        metres: &'a [f32],
        height: usize,
        width: usize,
        lo: f32,
        hi: f32,
    },
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

/// The panels left to right, 4 px apart, at the height of the tallest (each resized by nearest
/// neighbour to that height), as PNG bytes.
pub fn encode_strip(panels: &[Panel]) -> Result<Vec<u8>> {
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
    let mut png = Vec::new();
    out.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).context("cannot encode a PNG strip")?;
    Ok(png)
}

/// Writes [`encode_strip`]'s PNG to `path` atomically.
pub fn write_strip(path: &Path, panels: &[Panel]) -> Result<()> {
    crate::atomic::write(path, &encode_strip(panels)?)
}

/// The strip of sample `k` of an attacked batch: clean | adversarial | perturbation, then the
/// clean and adversarial predictions beside the truth for dense heads. `outs` are the head's
/// outputs on the clean and adversarial images. Returns a name suffix (for classification the
/// label and both predictions) and the PNG.
pub fn attack_strip(
    k: usize,
    clean: &Tensor,
    adv: &Tensor,
    outs: (&Tensor, &Tensor),
    targets: &Targets,
    eps: f64,
) -> Result<(String, Vec<u8>)> {
    let (clean_out, adv_out) = outs;
    let (c, x) = (clean.get(k)?, adv.get(k)?);
    let diff = (&x - &c)?;
    let images = [Panel::Image(&c), Panel::Image(&x), Panel::Perturbation(&diff, eps)];
    Ok(match targets {
        Targets::Class(l) => {
            let (pc, pa) = (clean_out.get(k)?.argmax(0)?.to_scalar::<u32>()?, adv_out.get(k)?.argmax(0)?.to_scalar::<u32>()?);
            (format!("-label{}-clean{pc}-adv{pa}", l[k]), encode_strip(&images)?)
        }
        Targets::Segmentation { labels, height: h, width: w } => {
            let clean_map = clean_out.get(k)?.argmax(0)?.flatten_all()?.to_vec1::<u32>()?;
            let adv_map = adv_out.get(k)?.argmax(0)?.flatten_all()?.to_vec1::<u32>()?;
            let gt = &labels[k * h * w..(k + 1) * h * w];
            let maps = [&clean_map[..], &adv_map[..], gt].map(|labels| Panel::Classes { labels, height: *h, width: *w });
            (String::new(), encode_strip(&images.into_iter().chain(maps).collect::<Vec<_>>())?)
        }
        Targets::Depth { metres, height: h, width: w } => {
            let gt = &metres[k * h * w..(k + 1) * h * w];
            let valid = gt.iter().copied().filter(|d| *d > 0.0 && d.is_finite());
            let (lo, hi) = valid.fold((f32::INFINITY, 0f32), |(lo, hi), d| (lo.min(d), hi.max(d)));
            let (cd, ad) = (clean_out.get(k)?.flatten_all()?.to_vec1::<f32>()?, adv_out.get(k)?.flatten_all()?.to_vec1::<f32>()?);
            let maps = [&cd[..], &ad[..], gt].map(|metres| Panel::Depth { metres, height: *h, width: *w, lo: lo * 0.9, hi: hi * 1.1 });
            (String::new(), encode_strip(&images.into_iter().chain(maps).collect::<Vec<_>>())?)
        }
        Targets::None => (String::new(), encode_strip(&images)?),
    })
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
