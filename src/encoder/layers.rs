//! The building blocks of the ViT, written with candle ops that all carry gradients (no fused
//! layer_norm/softmax kernels, which silently drop them in candle 0.11).

use candle_core::{DType, Device, Result, Tensor, D};

use super::frozen_linear::FrozenLinear;
use super::fused;

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
        let frozen = !self.w_t.track_op() && !self.b.as_ref().is_some_and(|b| b.track_op());
        if frozen && fused::applies(x) {
            let op = FrozenLinear { w_t: self.w_t.clone(), b: self.b.clone() };
            return x.contiguous()?.apply_op1(op);
        }
        self.forward_generic(x)
    }

    /// The plain candle-ops path (trainable weights, GPUs).
    pub fn forward_generic(&self, x: &Tensor) -> Result<Tensor> {
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
        if fused::applies(x) && !self.weight.track_op() && !self.bias.track_op() {
            let op = fused::FrozenLayerNorm { weight: self.weight.clone(), bias: self.bias.clone(), eps: self.eps };
            return x.contiguous()?.apply_op1(op);
        }
        self.forward_generic(x)
    }

    /// The plain candle-ops path (trainable weights, GPUs).
    pub fn forward_generic(&self, x: &Tensor) -> Result<Tensor> {
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
    if fused::applies(x) {
        return x.contiguous()?.apply_op1(fused::Softmax);
    }
    softmax_last_generic(x)
}

/// Exact (erf) GELU; fused on the CPU.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused::applies(x) {
        return x.contiguous()?.apply_op1(fused::Gelu);
    }
    x.gelu_erf()
}

/// The plain candle-ops softmax (GPUs).
pub fn softmax_last_generic(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

pub fn cast(t: &Tensor, device: &Device, dtype: DType) -> Result<Tensor> {
    t.to_device(device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    //! The fused CPU ops against the plain candle-op path: same values, same input gradients.
    use super::*;
    use candle_core::Var;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Value and input gradient (of a random projection) of `f` at `x`.
    fn value_and_grad(f: impl Fn(&Tensor) -> Result<Tensor>, x: &Tensor, proj: &Tensor) -> (Tensor, Tensor) {
        let v = Var::from_tensor(x).unwrap();
        let y = f(v.as_tensor()).unwrap();
        let g = (&y * proj).unwrap().sum_all().unwrap().backward().unwrap();
        (y.detach(), g.get(v.as_tensor()).unwrap().clone())
    }

    fn check(
        name: &str,
        fused: impl Fn(&Tensor) -> Result<Tensor>,
        generic: impl Fn(&Tensor) -> Result<Tensor>,
        x: &Tensor,
        out: &[usize],
        tol: f64,
    ) {
        let proj = rand(out, 99);
        let (y1, g1) = value_and_grad(fused, x, &proj);
        let (y2, g2) = value_and_grad(generic, x, &proj);
        let (dy, dg) = (max_diff(&y1, &y2), max_diff(&g1, &g2));
        assert!(dy < 1e-12 && dg < tol, "{name}: value differs by {dy:e}, gradient by {dg:e}");
        assert!(max_diff(&g1, &g1.zeros_like().unwrap()) > 1e-3, "{name}: zero gradient");
    }

    #[test]
    fn fused_ops_match_candle_ops() {
        let x = rand(&[3, 5, 24], 1);
        let lin = Linear::new(rand(&[7, 24], 2), Some(rand(&[7], 3))).unwrap();
        check("linear", |x| lin.forward(x), |x| lin.forward_generic(x), &x, &[3, 5, 7], 1e-12);
        let ln = LayerNorm { weight: rand(&[24], 4), bias: rand(&[24], 5), eps: 1e-6 };
        check("layer norm", |x| ln.forward(x), |x| ln.forward_generic(x), &x, &[3, 5, 24], 1e-12);
        check("softmax", softmax_last, softmax_last_generic, &(&x * 4.0).unwrap(), &[3, 5, 24], 1e-12);
        // candle's own GELU backward uses 0.398942 for 1/sqrt(2*pi) (7e-7 relative); ours is exact
        // (the f64 finite-difference tests in tests/encoder_parity.rs run through the fused path).
        check("gelu", gelu, |x| x.gelu_erf(), &(&x * 2.0).unwrap(), &[3, 5, 24], 1e-6);
    }

    #[test]
    fn trainable_weights_take_the_generic_path_and_get_gradients() {
        let w = Var::from_tensor(&rand(&[24], 6)).unwrap();
        let ln = LayerNorm { weight: w.as_tensor().clone(), bias: rand(&[24], 7), eps: 1e-6 };
        let y = ln.forward(&rand(&[2, 24], 8)).unwrap();
        let g = (y * rand(&[2, 24], 9)).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(w.as_tensor()).is_some(), "weight gradient lost");
        let wv = Var::from_tensor(&rand(&[7, 24], 10)).unwrap();
        let lin = Linear { w_t: wv.as_tensor().t().unwrap(), b: None };
        let y = lin.forward(&rand(&[2, 24], 11)).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(wv.as_tensor()).is_some(), "linear weight gradient lost");
    }
}
