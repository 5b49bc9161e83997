//! Task losses and head upsampling against PyTorch (tools/gen_loss_fixtures.py): values and
//! gradients in f64, including ignored labels and invalid depth pixels whose prediction is 0.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use robust_ssl::heads::losses::{cross_entropy, depth_loss, grad_loss, sig_loss, valid_mask};
use robust_ssl::heads::upsample::bilinear;
use robust_ssl::metrics::DepthRange;

fn fixture() -> std::collections::HashMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/losses/losses.expected.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    let m = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    d / m.max(1e-300)
}

#[test]
fn cross_entropy_with_ignore_matches_torch() {
    let f = fixture();
    let x = Var::from_tensor(&f["logits"]).unwrap();
    let labels = f["labels"].to_dtype(DType::U32).unwrap();
    let loss = cross_entropy(x.as_tensor(), &labels, 255).unwrap();
    assert!((scalar(&loss) - scalar(&f["ce"])).abs() < 1e-12, "{} vs {}", scalar(&loss), scalar(&f["ce"]));
    let g = loss.backward().unwrap();
    assert!(rel_diff(g.get(x.as_tensor()).unwrap(), &f["ce_grad"]) < 1e-10);
    // All ignored: an error, not a NaN.
    let all = Tensor::full(255u32, (2, 4, 6), &Device::Cpu).unwrap();
    assert!(cross_entropy(x.as_tensor(), &all, 255).is_err());
    let bad = Tensor::full(9u32, (2, 4, 6), &Device::Cpu).unwrap();
    assert!(cross_entropy(x.as_tensor(), &bad, 255).is_err());
}

#[test]
fn depth_losses_match_torch_on_valid_pixels_only() {
    let f = fixture();
    let mask = valid_mask(&f["gt"], DepthRange { min: 1e-3, max: 10.0 }).unwrap();
    type LossFn = fn(&Tensor, &Tensor, &Tensor) -> anyhow::Result<Tensor>;
    let cases: [(&str, LossFn); 3] = [("sig", sig_loss), ("grad", |p, g, m| grad_loss(p, g, m, 4)), ("depth", depth_loss)];
    for (name, f_loss) in cases {
        let p = Var::from_tensor(&f["pred"]).unwrap();
        let loss = f_loss(p.as_tensor(), &f["gt"], &mask).unwrap();
        let want = scalar(&f[&format!("{name}_loss")]);
        assert!(scalar(&loss).is_finite(), "{name}: invalid pixels leaked into the loss");
        assert!((scalar(&loss) - want).abs() < 1e-10 * want.abs().max(1.0), "{name}: {} vs {want}", scalar(&loss));
        let g = loss.backward().unwrap();
        let got = g.get(p.as_tensor()).unwrap();
        assert!(rel_diff(got, &f[&format!("{name}_grad")]) < 1e-9, "{name}: gradient");
    }
    assert!(scalar(&grad_loss(&f["pred"], &f["gt"], &mask, 4).unwrap()) > 0.0, "GradLoss is not identically 0");
}

#[test]
fn bilinear_upsampling_matches_torch_with_gradient() {
    let f = fixture();
    let x = Var::from_tensor(&f["up_in"]).unwrap();
    let y = bilinear(x.as_tensor(), 9, 13).unwrap();
    let f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let d = rel_diff(&f64(&y), &f64(&f["up_out"]));
    assert!(d < 1e-6, "output differs by {d} (relative)");
    assert_eq!(y.dims(), &[2, 3, 9, 13]);
    let g = (y * &f["up_proj"]).unwrap().sum_all().unwrap().backward().unwrap();
    let d = rel_diff(&f64(g.get(x.as_tensor()).unwrap()), &f64(&f["up_grad"]));
    assert!(d < 1e-6, "gradient differs by {d} (relative)");
}
