//! The building blocks of the ViT, written with candle ops that all carry gradients (no fused
//! layer_norm/softmax kernels, which silently drop them in candle 0.11).

use candle_core::{DType, Device, Result, Tensor, D};

/// `y = x · Wᵀ + b`, with W kept transposed (`[in, out]`) so the product is one plain 2-D matmul.
#[derive(Clone)]
pub struct Linear {
    pub w_t: Tensor,
    pub b: Option<Tensor>,
}

impl Linear {
    /// From a torch-layout weight `[out, in]`.
    pub fn new(w: Tensor, b: Option<Tensor>) -> Result<Self> {
        Ok(Self { w_t: w.t()?.contiguous()?, b })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let inner = dims[dims.len() - 1];
        let rows = x.elem_count() / inner;
        let y = x.reshape((rows, inner))?.matmul(&self.w_t)?;
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims.to_vec();
        *out.last_mut().unwrap() = self.w_t.dim(1)?;
        y.reshape(out)
    }

    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        Ok(Self { w_t: cast(&self.w_t, device, dtype)?, b: self.b.as_ref().map(|b| cast(b, device, dtype)).transpose()? })
    }
}

/// LayerNorm over the last dimension, written out so gradients flow.
#[derive(Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }

    pub fn to(&self, device: &Device, dtype: DType) -> Result<Self> {
        Ok(Self { weight: cast(&self.weight, device, dtype)?, bias: cast(&self.bias, device, dtype)?, eps: self.eps })
    }
}

/// Softmax over the last dimension; the max is a constant shift (no gradient needed through it).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

pub fn cast(t: &Tensor, device: &Device, dtype: DType) -> Result<Tensor> {
    t.to_device(device)?.to_dtype(dtype)
}
