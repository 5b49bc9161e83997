//! Bilinear resizing of head outputs `[B, C, h, w] → [B, C, H, W]` (align_corners=False, as
//! torch's `F.interpolate`), as two matmuls with interpolation matrices: exact and differentiable
//! (candle's own upsampling has no backward for these cases).

use anyhow::Result;
use candle_core::Tensor;

use crate::resize::{interpolate_with, Filter};

fn matrix(input: usize, output: usize, like: &Tensor) -> Result<Tensor> {
    let double = like.dtype() == candle_core::DType::F64;
    let m = interpolate_with(Filter::Bilinear, input, output, input as f64 / output as f64, double);
    Ok(Tensor::from_vec(m, (output, input), like.device())?.to_dtype(like.dtype())?)
}

pub fn bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let ry = matrix(h, out_h, x)?; // [H, h]
    let rx_t = matrix(w, out_w, x)?.t()?; // [w, W]
    let flat = x.reshape((b * c * h, w))?.matmul(&rx_t)?; // rows resized along x
    let flat = flat.reshape((b * c, h, out_w))?;
    let out = ry.broadcast_left(b * c)?.matmul(&flat)?; // [B·C, H, W]
    Ok(out.reshape((b, c, out_h, out_w))?)
}
