//! Sliding windows for the dense heads, as mmseg's `slide_inference` that the reference
//! evaluations use (DINOv2: 518 crop / 341 stride; DINO: 224 / 100): windows over the whole
//! image, each through encoder and head, outputs summed where windows overlap and divided by the
//! overlap count. A window whose sides are not multiples of the patch size is zero-padded at the
//! bottom and right, and its output cropped back (the reference pads around the centre and
//! resizes the padded output instead; the two agree whenever the crop is a patch multiple).
//! [`Window::Whole`] is DINOv2's depther instead: the whole image as one view, padded around the
//! centre to the patch multiple, the head's output resized from the padded grid to the image.
//!
//! [`Tiling`] is the geometry of one image size, shared by the evaluation ([`predict`]) and by
//! anything that differentiates through the windows: cutting a batch into windows and stitching
//! the windows' outputs back are plain tensor ops, so autograd goes through them, and [`Tiling::gather`]
//! is the cut's adjoint (a window's pixel gradient summed back into its image).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use super::head::Head;
use super::trainer::forward;
use super::upsample::bilinear;
use crate::encoder::{Encoder, Reads, Tokens};
use crate::features::Batch;

/// How a dense task sees a whole image: sliding windows of a size and stride in pixels, or the
/// whole image as one window centre-padded to the patch multiple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// mmseg's sliding windows, `crop` and `stride` in pixels.
    Slide { crop: usize, stride: usize },
    /// The whole image at once, padded around the centre up to a multiple of the patch with the
    /// normalisation mean (zeros after normalisation), and the head's output resized from the
    /// padded grid to the image: DINOv2's depther (`CenterPadding` as a pre-hook of the backbone,
    /// `encode_decode` resizing to the unpadded size), which the study's depth code restates.
    Whole,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Self::Slide { crop, stride } => write!(f, "{crop}:{stride}"),
            Self::Whole => write!(f, "whole"),
        }
    }
}

impl Window {
    /// What the report says of it.
    pub fn describe(&self) -> String {
        match self {
            Self::Slide { crop, stride } => format!("sliding windows {crop}:{stride} over whole images"),
            Self::Whole => "whole images, centre-padded to the patch multiple".into(),
        }
    }
}

/// Written as it is given: `"CROP:STRIDE"` or `"whole"`.
impl serde::Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Window {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "whole" {
            return Ok(Self::Whole);
        }
        let parsed = s.split_once(':').and_then(|(c, st)| Some((c.parse::<usize>().ok()?, st.parse::<usize>().ok()?)));
        match parsed {
            Some((crop, stride)) if crop > 0 && stride > 0 => Ok(Self::Slide { crop, stride }),
            _ => bail!(
                "window '{s}' should be CROP:STRIDE in pixels, both positive (e.g. 518:341), or 'whole' (the whole image, centre-padded)"
            ),
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

/// The windows over one image size: the crop every window has (mmseg pulls the last window of a
/// side back inside the image, so all are equal), the size a crop is padded to (a multiple of the
/// patch), where the crop sits in it, and each window's top-left corner, row by row in mmseg's
/// order. [`Window::Whole`] is one window, the image, padded around the centre.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiling {
    pub image: (usize, usize),
    pub crop: (usize, usize),
    pub padded: (usize, usize),
    /// Where the crop's top-left corner sits in the padded window: `(0, 0)` for sliding windows
    /// (padded at the bottom and right with zeros), centred for [`Window::Whole`].
    pub offset: (usize, usize),
    pub origins: Vec<(usize, usize)>,
    /// The head's output is computed at the image's size from the padded grid instead of on the
    /// padded window and cropped ([`Window::Whole`]).
    pub whole: bool,
    /// How many windows cover each pixel, `H × W` row-major.
    count: Vec<f32>,
}

impl Tiling {
    /// The windows of `window` over an `h × w` image for an encoder of `patch`-pixel patches. A
    /// sliding window larger than the image is refused (mmseg would shrink it to the image; the
    /// study resizes the shorter side to the crop first).
    pub fn new(h: usize, w: usize, window: Window, patch: usize) -> Result<Self> {
        if h == 0 || w == 0 || patch == 0 {
            bail!("no windows over a {h}x{w} image with {patch}-pixel patches");
        }
        let round_up = |(a, b): (usize, usize)| (a.div_ceil(patch) * patch, b.div_ceil(patch) * patch);
        let (crop, stride) = match window {
            Window::Whole => {
                let padded = round_up((h, w));
                let offset = ((padded.0 - h) / 2, (padded.1 - w) / 2);
                return Ok(Self {
                    image: (h, w),
                    crop: (h, w),
                    padded,
                    offset,
                    origins: vec![(0, 0)],
                    whole: true,
                    count: vec![1.0; h * w],
                });
            }
            Window::Slide { crop, stride } => (crop, stride),
        };
        if crop == 0 || stride == 0 {
            bail!("no sliding windows of {crop}:{stride}: the crop and the stride must be positive");
        }
        if crop > h || crop > w {
            bail!(
                "a {crop}-pixel sliding window is larger than a {h}x{w} image: resize the images first (resize-short{crop}, as the study) \
                 or take a smaller window"
            );
        }
        let (ys, xs) = (spans(h, crop, stride), spans(w, crop, stride));
        let crop = (ys[0].1, xs[0].1);
        let padded = round_up(crop);
        let origins: Vec<(usize, usize)> = ys.iter().flat_map(|&(y, _)| xs.iter().map(move |&(x, _)| (y, x))).collect();
        let mut count = vec![0f32; h * w];
        for &(y, x) in &origins {
            for row in count[y * w..(y + crop.0) * w].chunks_mut(w) {
                row[x..x + crop.1].iter_mut().for_each(|c| *c += 1.0);
            }
        }
        Ok(Self { image: (h, w), crop, padded, offset: (0, 0), origins, whole: false, count })
    }

    /// Windows per image.
    pub fn windows(&self) -> usize {
        self.origins.len()
    }

    /// The windows of each image of `images` `[n, C, H, W]`: `[n·m, C, ph, pw]`, image by image,
    /// each crop zero-padded at the bottom and right.
    pub fn crops(&self, images: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = images.dims4()?;
        if (h, w) != self.image {
            bail!("images of {h}x{w} pixels given to windows laid out for {}x{}", self.image.0, self.image.1);
        }
        let crops = self.origins.iter().map(|&o| self.window(images, o)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&crops, 1)?.reshape((n * self.windows(), c, self.padded.0, self.padded.1))?)
    }

    /// The window at `origin` of each image of `images` `[n, C, H, W]`, padded: `[n, C, ph, pw]`.
    /// Sliding windows are padded at the bottom and right with zeros; the whole image around the
    /// centre with the normalisation mean (zeros once normalised, as DINOv2 pads after `Normalize`).
    fn window(&self, images: &Tensor, (y, x): (usize, usize)) -> Result<Tensor> {
        let ((ch, cw), (ph, pw), (top, left)) = (self.crop, self.padded, self.offset);
        let win = images.narrow(2, y, ch)?.narrow(3, x, cw)?;
        let padded = win.pad_with_zeros(2, top, ph - ch - top)?.pad_with_zeros(3, left, pw - cw - left)?;
        if !self.whole || (ph, pw) == (ch, cw) {
            return Ok(padded);
        }
        let c = images.dim(1)?;
        let inside = Tensor::ones((1, 1, ch, cw), images.dtype(), images.device())?.pad_with_zeros(2, top, ph - ch - top)?.pad_with_zeros(
            3,
            left,
            pw - cw - left,
        )?;
        let mean = &crate::encoder::IMAGENET_MEAN;
        if c != mean.len() {
            bail!("centre padding with the normalisation mean needs 3-channel images, not {c}");
        }
        let mean = Tensor::from_slice(mean, (1, c, 1, 1), images.device())?.to_dtype(images.dtype())?;
        let fill = inside.affine(-1.0, 1.0)?.broadcast_mul(&mean)?;
        Ok(padded.broadcast_add(&fill)?)
    }

    /// Each window's value `[n·m, C, ph, pw]` (padding dropped) summed into its place in its
    /// image: `[n, C, H, W]`. On pixel gradients this is the adjoint of [`Tiling::crops`].
    pub fn gather(&self, windows: &Tensor) -> Result<Tensor> {
        let (nm, c, ph, pw) = windows.dims4()?;
        let m = self.windows();
        if nm % m != 0 || (ph, pw) != self.padded {
            bail!("{nm} windows of {ph}x{pw} do not fit {m} windows of {}x{} per image", self.padded.0, self.padded.1);
        }
        let ((h, w), (ch, cw), (top, left)) = (self.image, self.crop, self.offset);
        let per_image = windows.reshape((nm / m, m, c, ph, pw))?;
        let mut sum: Option<Tensor> = None;
        for (j, &(y, x)) in self.origins.iter().enumerate() {
            let win = per_image.narrow(1, j, 1)?.squeeze(1)?.narrow(2, top, ch)?.narrow(3, left, cw)?;
            let placed = win.pad_with_zeros(2, y, h - y - ch)?.pad_with_zeros(3, x, w - x - cw)?;
            sum = Some(match sum {
                Some(s) => (s + placed)?,
                None => placed,
            });
        }
        Ok(sum.expect("a tiling has at least one window"))
    }

    /// The windows' outputs `[n·m, C, ph, pw]` stitched into whole-image outputs `[n, C, H, W]`:
    /// averaged where windows overlap, as mmseg's `slide_inference`.
    pub fn stitch(&self, outputs: &Tensor) -> Result<Tensor> {
        let sum = self.gather(outputs)?;
        let count = Tensor::from_slice(&self.count, (1, 1, self.image.0, self.image.1), sum.device())?.to_dtype(sum.dtype())?;
        Ok(sum.broadcast_div(&count)?)
    }
}

/// A dense head's output for whole images of `size` (`[n, K, H, W]`, depth `[n, H, W]`), from
/// `batch`'s tokens of the images or, with `windows`, of their windows (`m` rows per image, image
/// by image) stitched as [`predict`] does, then resized bilinearly to `size` where the images
/// were resized from their labels. Differentiable: the attacks go through it.
pub fn dense_forward(head: &Head, batch: &Batch, size: (usize, usize), windows: Option<&Tiling>) -> Result<Tensor> {
    let Some(t) = windows else { return Ok(forward(head, batch, size, false)?.0) };
    if matches!(head, Head::Linear(_)) {
        bail!("a classification head sees the whole image at once: windows are for the dense heads");
    }
    let out = forward(head, batch, if t.whole { t.image } else { t.padded }, false)?.0;
    let depth = out.rank() == 3;
    let out = if depth { out.unsqueeze(1)? } else { out };
    let out = if t.whole { out } else { t.stitch(&out)? };
    let out = if t.image == size { out } else { bilinear(&out, size.0, size.1)? };
    Ok(if depth { out.squeeze(1)? } else { out })
}

/// The encoder's tokens of `images` `[n, 3, H, W]`, or of their windows (`[n·m, …]`).
pub fn tokens_of(enc: &Encoder, images: &Tensor, windows: Option<&Tiling>) -> Result<Tokens> {
    let pixels = match windows {
        Some(t) => t.crops(images)?,
        None => images.clone(),
    };
    enc.forward(&pixels.to_device(enc.vit.device())?)
}

/// The head's dense output over a whole image `[3, H, W]` (pixels in [0,1]): segmentation logits
/// `[K, H, W]` or depth `[1, H, W]`, on the CPU. `batch` windows go through the encoder at once;
/// the head takes the encoder outputs `reads` names.
pub fn predict(enc: &Encoder, head: &Head, reads: Reads, image: &Tensor, window: Window, batch: usize) -> Result<Tensor> {
    let (_, h, w) = image.dims3()?;
    let tiling = Tiling::new(h, w, window, enc.config().patch_size)?;
    let ((ch, cw), (ph, pw)) = (tiling.crop, tiling.padded);
    let image = image.unsqueeze(0)?;
    if tiling.whole {
        let pixels = tiling.crops(&image)?.to_device(enc.vit.device())?;
        let feats = Batch::read(&enc.forward(&pixels)?, reads)?;
        let out = forward(head, &feats, (h, w), false)?.0;
        let out = if out.rank() == 3 { out.unsqueeze(1)? } else { out };
        return Ok(out.squeeze(0)?.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F32)?);
    }
    let mut sum: Vec<f32> = Vec::new();
    let mut channels = 0;
    for group in tiling.origins.chunks(batch.max(1)) {
        let crops = group.iter().map(|&o| tiling.window(&image, o)).collect::<Result<Vec<_>>>()?;
        let pixels = Tensor::cat(&crops, 0)?.to_device(enc.vit.device())?;
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
        }
    }
    for plane in sum.chunks_mut(h * w) {
        plane.iter_mut().zip(&tiling.count).for_each(|(v, c)| *v /= c);
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
        assert!("518".parse::<Window>().is_err() && "0:5".parse::<Window>().is_err() && "5:0".parse::<Window>().is_err());
        assert_eq!("whole".parse::<Window>().unwrap(), Window::Whole);
        assert_eq!(Window::Whole.to_string(), "whole");
    }

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut r = crate::rng::SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| r.uniform(-1.0, 1.0) as f32).collect::<Vec<_>>(), shape, &Device::Cpu).unwrap()
    }

    fn dot(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_dtype(candle_core::DType::F64).unwrap() * b.to_dtype(candle_core::DType::F64).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Uneven sizes: 3 × 4 windows of 9 px (padded to 10 for 5-px patches) over 23 × 31 with
    /// stride 7; a side shorter than the crop gets one window of its own length.
    #[test]
    fn tilings_cover_the_image_as_mmseg() {
        let t = Tiling::new(23, 31, "9:7".parse().unwrap(), 5).unwrap();
        assert_eq!((t.crop, t.padded, t.windows()), ((9, 9), (10, 10), 3 * 5));
        assert!(t.count.iter().all(|&c| c >= 1.0), "every pixel is in a window");
        let err = Tiling::new(6, 40, "9:7".parse().unwrap(), 5).unwrap_err().to_string();
        assert!(err.contains("a 9-pixel sliding window is larger than a 6x40 image"), "{err}");
        for bad in [(0, 5, 5), (5, 5, 0)] {
            assert!(Tiling::new(bad.0, bad.1, Window::Slide { crop: 9, stride: 7 }, bad.2).is_err());
        }
        assert!(Tiling::new(5, 5, Window::Slide { crop: 9, stride: 0 }, 5).is_err());
        assert!(t.crops(&random(&[1, 3, 22, 31], 1)).is_err(), "images of another size");
        assert!(t.gather(&random(&[7, 3, 10, 10], 1)).is_err(), "not a whole number of images");
    }

    /// Cutting an image into windows and stitching them back gives the image; the gathering is
    /// the cut's adjoint: ⟨crops(x), y⟩ = ⟨x, gather(y)⟩.
    #[test]
    fn stitching_the_crops_gives_the_image_and_gather_is_the_adjoint() {
        let t = Tiling::new(23, 31, "9:7".parse().unwrap(), 5).unwrap();
        let x = random(&[2, 3, 23, 31], 2);
        let back = t.stitch(&t.crops(&x).unwrap()).unwrap();
        let err = (back - &x).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-6, "{err}");
        let y = random(&[2 * t.windows(), 3, 10, 10], 3);
        let (lhs, rhs) = (dot(&t.crops(&x).unwrap(), &y), dot(&x, &t.gather(&y).unwrap()));
        assert!((lhs - rhs).abs() < 1e-6 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    }

    /// The whole image padded around the centre, as DINOv2's `CenterPadding` (left = pad / 2, the
    /// rest on the right): 30 × 43 with 14-px patches → 42 × 56, offsets 6 and 6; the padding holds
    /// the normalisation mean, the image sits untouched in the middle, and the gradient's gather
    /// is the cut's adjoint.
    #[test]
    fn the_whole_image_is_padded_around_the_centre_with_the_mean() {
        let t = Tiling::new(30, 43, Window::Whole, 14).unwrap();
        assert_eq!((t.crop, t.padded, t.offset, t.windows(), t.whole), ((30, 43), (42, 56), (6, 6), 1, true));
        let x = random(&[2, 3, 30, 43], 7);
        let crops = t.crops(&x).unwrap();
        assert_eq!(crops.dims(), &[2, 3, 42, 56]);
        let inner = crops.narrow(2, 6, 30).unwrap().narrow(3, 6, 43).unwrap();
        assert_eq!(inner.flatten_all().unwrap().to_vec1::<f32>().unwrap(), x.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        for (c, &m) in crate::encoder::IMAGENET_MEAN.iter().enumerate() {
            let plane = crops.get(1).unwrap().get(c).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!((plane[0][0], plane[41][55], plane[5][20], plane[36][20], plane[20][5], plane[20][49]), (m, m, m, m, m, m));
            assert_ne!(plane[6][6], m);
        }
        let y = random(&[2, 3, 42, 56], 8);
        let (lhs, rhs) = (dot(&(crops - t.crops(&x.zeros_like().unwrap()).unwrap()).unwrap(), &y), dot(&x, &t.gather(&y).unwrap()));
        assert!((lhs - rhs).abs() < 1e-6 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
        let exact = Tiling::new(28, 42, Window::Whole, 14).unwrap();
        assert_eq!((exact.padded, exact.offset), ((28, 42), (0, 0)));
        assert_eq!(exact.crops(&random(&[1, 3, 28, 42], 9)).unwrap().dims(), &[1, 3, 28, 42]);
    }

    /// Autograd through cut → a nonlinear per-window map → stitch matches f64 central finite
    /// differences of the same function computed by hand, pixel by pixel.
    #[test]
    fn the_gradient_through_the_windows_matches_finite_differences() {
        let (h, w) = (11, 13);
        let t = Tiling::new(h, w, "6:4".parse().unwrap(), 4).unwrap();
        let (ch, cw) = t.crop;
        let x = random(&[1, 1, h, w], 4).to_dtype(candle_core::DType::F64).unwrap();
        let r = random(&[1, 1, h, w], 5).to_dtype(candle_core::DType::F64).unwrap();
        // Window j's output: (j + 1) · tanh(crop); then averaged and weighted by r.
        let f = |x: &Tensor| -> Tensor {
            let crops = t.crops(x).unwrap();
            let scale: Vec<f64> = (0..t.windows()).map(|j| (j + 1) as f64).collect();
            let scale = Tensor::from_vec(scale, (t.windows(), 1, 1, 1), &Device::Cpu).unwrap();
            let out = crops.tanh().unwrap().broadcast_mul(&scale).unwrap();
            (t.stitch(&out).unwrap() * &r).unwrap().sum_all().unwrap()
        };
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let grad = f(var.as_tensor()).backward().unwrap().get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        // By hand, in plain f64: F(x) = Σ_p r_p · mean over windows covering p of (j + 1) tanh(x_p).
        let (xs, rs) = (x.flatten_all().unwrap().to_vec1::<f64>().unwrap(), r.flatten_all().unwrap().to_vec1::<f64>().unwrap());
        let by_hand = |xs: &[f64]| -> f64 {
            (0..h * w)
                .map(|p| {
                    let (py, px) = (p / w, p % w);
                    let covering: Vec<usize> = t
                        .origins
                        .iter()
                        .enumerate()
                        .filter(|(_, &(y, x))| (y..y + ch).contains(&py) && (x..x + cw).contains(&px))
                        .map(|(j, _)| j)
                        .collect();
                    let mean = covering.iter().map(|&j| (j + 1) as f64 * xs[p].tanh()).sum::<f64>() / covering.len() as f64;
                    rs[p] * mean
                })
                .sum()
        };
        assert!((by_hand(&xs) - f(&x).to_scalar::<f64>().unwrap()).abs() < 1e-9, "the tensor ops compute the function by hand");
        let eps = 1e-6;
        for p in 0..h * w {
            let (mut up, mut down) = (xs.clone(), xs.clone());
            up[p] += eps;
            down[p] -= eps;
            let fd = (by_hand(&up) - by_hand(&down)) / (2.0 * eps);
            assert!((fd - grad[p]).abs() <= 1e-6 * fd.abs().max(1.0), "pixel {p}: finite differences {fd}, autograd {}", grad[p]);
        }
    }
}
