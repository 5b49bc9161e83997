//! Sliding-window inference for the dense heads, as mmseg's `slide_inference` that the reference
//! evaluations use (DINOv2: 518 crop / 341 stride; DINO: 224 / 100): windows over the whole
//! image, each through encoder and head, outputs summed where windows overlap and divided by the
//! overlap count. A window whose sides are not multiples of the patch size is zero-padded at the
//! bottom and right, and its output cropped back (the reference pads around the centre and
//! resizes the padded output instead; the two agree whenever the crop is a patch multiple).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use super::head::Head;
use super::trainer::forward;
use crate::encoder::{Encoder, Reads};
use crate::features::Batch;

/// Window size and stride in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub crop: usize,
    pub stride: usize,
}

impl std::str::FromStr for Window {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parsed = s.split_once(':').and_then(|(c, st)| Some((c.parse::<usize>().ok()?, st.parse::<usize>().ok()?)));
        match parsed {
            Some((crop, stride)) if crop > 0 && stride > 0 => Ok(Self { crop, stride }),
            _ => bail!("sliding window '{s}' should be CROP:STRIDE in pixels, both positive (e.g. 518:341)"),
        }
    }
}

/// The `(start, length)` of each window along a side of `len` pixels, in mmseg's order.
pub fn spans(len: usize, crop: usize, stride: usize) -> Vec<(usize, usize)> {
    let grids = (len + stride).saturating_sub(crop + 1) / stride + 1;
    (0..grids)
        .map(|i| {
            let end = (i * stride + crop).min(len);
            let start = end.saturating_sub(crop);
            (start, end - start)
        })
        .collect()
}

/// The head's dense output over a whole image `[3, H, W]` (pixels in [0,1]): segmentation logits
/// `[K, H, W]` or depth `[1, H, W]`, on the CPU. `batch` windows go through the encoder at once;
/// the head takes the encoder outputs `reads` names.
pub fn predict(enc: &Encoder, head: &Head, reads: Reads, image: &Tensor, window: Window, batch: usize) -> Result<Tensor> {
    let (_, h, w) = image.dims3()?;
    let p = enc.config().patch_size;
    let (ys, xs) = (spans(h, window.crop, window.stride), spans(w, window.crop, window.stride));
    let (ch, cw) = (ys[0].1, xs[0].1);
    let (ph, pw) = (ch.div_ceil(p) * p, cw.div_ceil(p) * p);
    let origins: Vec<(usize, usize)> = ys.iter().flat_map(|&(y, _)| xs.iter().map(move |&(x, _)| (y, x))).collect();
    let mut sum: Vec<f32> = Vec::new();
    let mut count = vec![0f32; h * w];
    let mut channels = 0;
    for group in origins.chunks(batch.max(1)) {
        let crops = group
            .iter()
            .map(|&(y, x)| Ok(image.narrow(1, y, ch)?.narrow(2, x, cw)?.pad_with_zeros(1, 0, ph - ch)?.pad_with_zeros(2, 0, pw - cw)?))
            .collect::<Result<Vec<_>>>()?;
        let pixels = Tensor::stack(&crops, 0)?.to_device(enc.vit.device())?;
        let tokens = enc.forward(&pixels)?;
        let feats = Batch::read(&tokens, reads)?;
        let (out, _) = forward(head, &feats, (ph, pw), false)?;
        let out = if out.rank() == 3 { out.unsqueeze(1)? } else { out }; // depth [n, H, W] → [n, 1, H, W]
        channels = out.dim(1)?;
        if sum.is_empty() {
            sum = vec![0f32; channels * h * w];
        }
        let out = out.narrow(2, 0, ch)?.narrow(3, 0, cw)?.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?;
        for (k, &(y, x)) in group.iter().enumerate() {
            let win = out.get(k)?.flatten_all()?.to_vec1::<f32>()?; // [channels, ch, cw]
            for c in 0..channels {
                for r in 0..ch {
                    let src = &win[(c * ch + r) * cw..(c * ch + r + 1) * cw];
                    let dst = &mut sum[(c * h + y + r) * w + x..(c * h + y + r) * w + x + cw];
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                }
            }
            for row in count[y * w..(y + ch) * w].chunks_mut(w) {
                row[x..x + cw].iter_mut().for_each(|c| *c += 1.0);
            }
        }
    }
    for plane in sum.chunks_mut(h * w) {
        plane.iter_mut().zip(&count).for_each(|(v, c)| *v /= c);
    }
    Ok(Tensor::from_vec(sum, (channels, h, w), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mmseg's windows: 1000 px with 518 / 341 → starts 0, 341, 482 (the last one pulled back to
    /// end at the border); a side shorter than the crop is one window of its own length.
    #[test]
    fn spans_follow_mmseg() {
        assert_eq!(spans(1000, 518, 341), vec![(0, 518), (341, 518), (482, 518)]);
        assert_eq!(spans(518, 518, 341), vec![(0, 518)]);
        assert_eq!(spans(519, 518, 341), vec![(0, 518), (1, 518)]);
        assert_eq!(spans(300, 518, 341), vec![(0, 300)]);
        assert_eq!(spans(224, 224, 100), vec![(0, 224)]);
        assert_eq!(spans(500, 224, 100), vec![(0, 224), (100, 224), (200, 224), (276, 224)]);
        assert!("518:341".parse::<Window>().is_ok());
        assert!("518".parse::<Window>().is_err() && "0:5".parse::<Window>().is_err());
    }
}
