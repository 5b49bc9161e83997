//! The depth head's readout as one CPU op: bin logits on the patch grid → bilinear ×4 upsampling
//! (align_corners=False) → ReLU + 0.1 → normalised over bins → depth = Σ p·bin. Written out as
//! candle ops this materialises half a dozen `[B, bins, 4h, 4w]` tensors per step, forward and
//! backward; here each output pixel reads its 2×2 source taps once, and the backward pass
//! recomputes them instead of storing them:
//! `∂depth/∂u_n = 1[u_n > 0] · (bin_n − depth) / Σ_m p_m`, scattered back through the taps.
//! [`readout_generic`] is the same map in candle ops (GPUs); a test checks they agree.

use candle_core::{CpuStorage, CustomOp1, DType, Error, Layout, Result, Shape, Tensor};
use num_traits::Float;
use rayon::prelude::*;

use super::upsample::bilinear;
use crate::resize::{interpolate_with, Filter};

/// Non-zero taps `(source index, weight)` of each output index of a bilinear resize.
fn taps(input: usize, output: usize, double: bool) -> Vec<Vec<(usize, f64)>> {
    let m = interpolate_with(Filter::Bilinear, input, output, input as f64 / output as f64, double);
    m.chunks(input).map(|row| row.iter().enumerate().filter(|(_, &w)| w != 0.0).map(|(i, &w)| (i, w)).collect()).collect()
}

/// The op on logits `[B, h, w, bins]` (bins last), giving depth `[B, 1, 4h, 4w]`.
pub struct BinReadout {
    bins: Vec<f64>,
}

struct Geometry {
    b: usize,
    h: usize,
    w: usize,
    n: usize,
    ty: Vec<Vec<(usize, f64)>>,
    tx: Vec<Vec<(usize, f64)>>,
}

impl Geometry {
    fn new(l: &Layout, bins: usize, double: bool) -> Result<Self> {
        let &[b, h, w, n] = l.dims() else {
            return Err(Error::Msg(format!("bin readout: logits {:?}, expected [B, h, w, bins]", l.dims())));
        };
        if n != bins {
            return Err(Error::Msg(format!("bin readout: {n} logits per pixel for {bins} bins")));
        }
        Ok(Self { b, h, w, n, ty: taps(h, 4 * h, double), tx: taps(w, 4 * w, double) })
    }

    /// The upsampled logits `u` of output pixel (oy, ox) of image `img` (`[h, w, n]`).
    fn upsample<T: Float>(&self, img: &[T], oy: usize, ox: usize, u: &mut [T]) {
        u.iter_mut().for_each(|v| *v = T::zero());
        for &(y, wy) in &self.ty[oy] {
            for &(x, wx) in &self.tx[ox] {
                let wt = T::from(wy * wx).unwrap();
                let src = &img[(y * self.w + x) * self.n..(y * self.w + x + 1) * self.n];
                u.iter_mut().zip(src).for_each(|(a, &s)| *a = *a + wt * s);
            }
        }
    }
}

fn forward<T: Float + Send + Sync>(logits: &[T], g: &Geometry, bins: &[T]) -> Vec<T> {
    let (oh, ow) = (4 * g.h, 4 * g.w);
    let tenth = T::from(0.1).unwrap();
    let mut out = vec![T::zero(); g.b * oh * ow];
    out.par_chunks_mut(oh * ow).enumerate().for_each(|(b, dst)| {
        let img = &logits[b * g.h * g.w * g.n..(b + 1) * g.h * g.w * g.n];
        let mut u = vec![T::zero(); g.n];
        for oy in 0..oh {
            for ox in 0..ow {
                g.upsample(img, oy, ox, &mut u);
                let (mut s, mut num) = (T::zero(), T::zero());
                for (&v, &bin) in u.iter().zip(bins) {
                    let p = v.max(T::zero()) + tenth;
                    s = s + p;
                    num = num + p * bin;
                }
                dst[oy * ow + ox] = num / s;
            }
        }
    });
    out
}

fn backward<T: Float + Send + Sync>(logits: &[T], depth: &[T], grad: &[T], g: &Geometry, bins: &[T]) -> Vec<T> {
    let (oh, ow) = (4 * g.h, 4 * g.w);
    let per = g.h * g.w * g.n;
    let tenth = T::from(0.1).unwrap();
    let mut dl = vec![T::zero(); logits.len()];
    dl.par_chunks_mut(per).enumerate().for_each(|(b, dst)| {
        let img = &logits[b * per..(b + 1) * per];
        let (mut u, mut du) = (vec![T::zero(); g.n], vec![T::zero(); g.n]);
        for oy in 0..oh {
            for ox in 0..ow {
                let at = b * oh * ow + oy * ow + ox;
                if grad[at] == T::zero() {
                    continue;
                }
                g.upsample(img, oy, ox, &mut u);
                let s = u.iter().fold(T::zero(), |s, &v| s + v.max(T::zero()) + tenth);
                let k = grad[at] / s;
                for ((d, &v), &bin) in du.iter_mut().zip(&u).zip(bins) {
                    *d = if v > T::zero() { k * (bin - depth[at]) } else { T::zero() };
                }
                for &(y, wy) in &g.ty[oy] {
                    for &(x, wx) in &g.tx[ox] {
                        let wt = T::from(wy * wx).unwrap();
                        let row = &mut dst[(y * g.w + x) * g.n..(y * g.w + x + 1) * g.n];
                        row.iter_mut().zip(&du).for_each(|(a, &d)| *a = *a + wt * d);
                    }
                }
            }
        }
    });
    dl
}

fn slice<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| Error::Msg("bin readout: non-contiguous logits".into()))?;
    Ok(&s.as_slice::<T>()?[a..b])
}

impl BinReadout {
    pub fn new(bins: Vec<f64>) -> Self {
        Self { bins }
    }
}

impl CustomOp1 for BinReadout {
    fn name(&self) -> &'static str {
        "depth-bin-readout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(_) => {
                let g = Geometry::new(l, self.bins.len(), false)?;
                let bins: Vec<f32> = self.bins.iter().map(|&v| v as f32).collect();
                (CpuStorage::F32(forward(slice::<f32>(s, l)?, &g, &bins)), g)
            }
            CpuStorage::F64(_) => {
                let g = Geometry::new(l, self.bins.len(), true)?;
                (CpuStorage::F64(forward(slice::<f64>(s, l)?, &g, &self.bins)), g)
            }
            _ => return Err(Error::Msg("bin readout: only f32 and f64".into())),
        };
        let g = out.1;
        Ok((out.0, Shape::from((g.b, 1, 4 * g.h, 4 * g.w))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (arg, res, grad) = (arg.contiguous()?, res.contiguous()?, grad_res.contiguous()?);
        let double = arg.dtype() == DType::F64;
        let g = Geometry::new(arg.layout(), self.bins.len(), double)?;
        let dl = if double {
            let v = backward(
                &arg.flatten_all()?.to_vec1::<f64>()?,
                &res.flatten_all()?.to_vec1()?,
                &grad.flatten_all()?.to_vec1()?,
                &g,
                &self.bins,
            );
            Tensor::from_vec(v, arg.shape(), arg.device())?
        } else {
            let bins: Vec<f32> = self.bins.iter().map(|&v| v as f32).collect();
            let v = backward(
                &arg.flatten_all()?.to_vec1::<f32>()?,
                &res.flatten_all()?.to_vec1()?,
                &grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                &g,
                &bins,
            );
            Tensor::from_vec(v, arg.shape(), arg.device())?
        };
        Ok(Some(dl))
    }
}

/// The same readout in candle ops, for devices without the fused op: logits `[B, h, w, bins]`.
pub fn readout_generic(logits: &Tensor, bins: &Tensor) -> anyhow::Result<Tensor> {
    let (_, h, w, n) = logits.dims4()?;
    let logits = logits.permute((0, 3, 1, 2))?.contiguous()?;
    let up = bilinear(&logits, 4 * h, 4 * w)?;
    let probs = (up.relu()? + 0.1)?;
    let probs = probs.broadcast_div(&probs.sum_keepdim(1)?)?;
    Ok(probs.broadcast_mul(&bins.reshape((1, n, 1, 1))?)?.sum_keepdim(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Fused and candle-ops readouts agree in f32, values and gradients, on a non-square grid with
    /// logits on both sides of the ReLU (the torch comparison in f64 is tests/heads.rs).
    #[test]
    fn fused_matches_candle_ops() {
        let dev = Device::Cpu;
        let (b, h, w, n) = (2, 3, 5, 16);
        let mut rng = crate::rng::SplitMix64::new(5);
        let mut uniform = |count: usize| -> Vec<f32> { (0..count).map(|_| rng.uniform(-1.7, 1.7) as f32).collect() };
        let logits = Var::from_tensor(&Tensor::from_vec(uniform(b * h * w * n), (b, h, w, n), &dev).unwrap()).unwrap();
        let bins: Vec<f64> = (0..n).map(|i| 0.001 + i as f64 * (10.0 - 0.001) / (n - 1) as f64).collect();
        let bins_t = Tensor::from_vec(bins.clone(), n, &dev).unwrap().to_dtype(DType::F32).unwrap();
        let proj = Tensor::from_vec(uniform(b * 16 * h * w), (b, 1, 4 * h, 4 * w), &dev).unwrap();
        let fused = logits.as_tensor().apply_op1(BinReadout::new(bins)).unwrap();
        let generic = readout_generic(logits.as_tensor(), &bins_t).unwrap();
        let max_diff =
            |a: &Tensor, c: &Tensor| (a - c).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let scale = |a: &Tensor| a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(fused.dims(), [b, 1, 4 * h, 4 * w]);
        assert!(max_diff(&fused, &generic) < 1e-5 * scale(&generic), "values differ by {}", max_diff(&fused, &generic));
        let gf = (&fused * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let gg = (&generic * &proj).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gg) = (gf.get(logits.as_tensor()).unwrap(), gg.get(logits.as_tensor()).unwrap());
        assert!(max_diff(gf, gg) < 1e-5 * scale(gg), "gradients differ by {} (scale {})", max_diff(gf, gg), scale(gg));
    }
}
