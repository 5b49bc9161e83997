//! FAB-T against AutoAttack's own code (tests/fixtures/attacks/fab.safetensors, written by
//! tools/gen_fab_fixtures.py from pyautoattack): its L∞ and L2 projections row by row, and whole
//! 10-iteration targeted runs on a linear model and an MLP of 3×4×4 pixels at L∞ 8/255 and L2 0.5
//! — the nearest misclassified point found and whether it counts (within ε).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use robust_ssl::attacks::fab::{search, Gaps};
use robust_ssl::attacks::fab_projection;
use robust_ssl::attacks::problem::Sanity;
use robust_ssl::attacks::threat::Norm;

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/attacks/fab.safetensors"), &Device::Cpu)
        .unwrap()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64).unwrap().flatten_from(1).unwrap().to_vec2().unwrap()
}

/// Both projections on every fixture row (reachable, on the plane, out of reach on either side,
/// zero weights, points on the box faces), in f64, at 12 and 147 coordinates.
#[test]
fn projections_match_autoattack() {
    let f = fixture();
    for (norm, project) in [("linf", fab_projection::linf as fn(&[f64], &[f64], f64) -> Vec<f64>), ("l2", fab_projection::l2)] {
        for size in ["", "_d147"] {
            let key = |k: &str| &f[&format!("{norm}{size}_{k}")];
            let (points, w, b, want) = (rows(key("points")), rows(key("w")), f64s(key("b")), rows(key("out")));
            for r in 0..points.len() {
                let got = project(&points[r], &w[r], b[r]);
                let worst = got.iter().zip(&want[r]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-9, "{norm}{size} row {r}: off by {worst}\n{got:?}\n{:?}", want[r]);
            }
        }
    }
}

/// The fixture's models: `W x + b`, or `W2 tanh(W1 x + b1) + b2`, and the gap z_t − z_y.
struct Model {
    layers: Vec<(Vec<Vec<f64>>, Vec<f64>)>,
    labels: Vec<u32>,
    targets: Vec<u32>,
}

impl Model {
    /// Logits, and each logit's gradient with respect to the input.
    fn forward(&self, x: &[f32]) -> (Vec<f64>, Vec<Vec<f64>>) {
        let mut v: Vec<f64> = x.iter().map(|&a| a as f64).collect();
        // Jacobian of the current activations with respect to the input.
        let mut jac: Vec<Vec<f64>> = (0..v.len()).map(|i| (0..v.len()).map(|j| f64::from(u8::from(i == j))).collect()).collect();
        for (l, (w, b)) in self.layers.iter().enumerate() {
            let z: Vec<f64> = w.iter().zip(b).map(|(row, b)| row.iter().zip(&v).map(|(a, c)| a * c).sum::<f64>() + b).collect();
            let mut jz: Vec<Vec<f64>> =
                w.iter().map(|row| (0..x.len()).map(|k| row.iter().zip(&jac).map(|(a, j)| a * j[k]).sum()).collect()).collect();
            if l + 1 < self.layers.len() {
                let h: Vec<f64> = z.iter().map(|a| a.tanh()).collect();
                for (r, hv) in jz.iter_mut().zip(&h) {
                    r.iter_mut().for_each(|g| *g *= 1.0 - hv * hv);
                }
                v = h;
            } else {
                v = z;
            }
            jac = jz;
        }
        (v, jac)
    }
}

impl Gaps for Model {
    fn gaps(&mut self, points: &[Vec<f32>]) -> anyhow::Result<(Vec<f64>, Vec<Vec<f32>>)> {
        let mut gaps = Vec::new();
        let mut grads = Vec::new();
        for (i, p) in points.iter().enumerate() {
            let (z, jac) = self.forward(p);
            let (t, y) = (self.targets[i] as usize, self.labels[i] as usize);
            gaps.push(z[t] - z[y]);
            grads.push(jac[t].iter().zip(&jac[y]).map(|(a, b)| (a - b) as f32).collect());
        }
        Ok((gaps, grads))
    }

    fn predict(&mut self, points: &[Vec<f32>]) -> anyhow::Result<Vec<u32>> {
        Ok(points
            .iter()
            .map(|p| {
                let z = self.forward(p).0;
                (0..z.len()).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap() as u32
            })
            .collect())
    }
}

/// FAB-T's search on both models in both norms: the nearest misclassified point found equals
/// AutoAttack's (float64 run), and so does which samples it counts within ε.
#[test]
fn fab_t_runs_match_autoattack() {
    let f = fixture();
    let u32s = |k: &str| f[k].to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap().iter().map(|&v| v as u32).collect::<Vec<_>>();
    let x: Vec<Vec<f32>> = f["x"].flatten_from(1).unwrap().to_vec2().unwrap();
    let mat = |k: &str| rows(&f[k]);
    for (model, suffix) in [("linear", ""), ("mlp", "_mlp")] {
        let (layers, labels, targets) = if model == "linear" {
            (vec![(mat("model_w"), f64s(&f["model_b"]))], u32s("y"), u32s("target"))
        } else {
            (vec![(mat("mlp_w1"), f64s(&f["mlp_b1"])), (mat("mlp_w2"), f64s(&f["mlp_b2"]))], u32s("y_mlp"), u32s("target_mlp"))
        };
        let mut m = Model { layers, labels: labels.clone(), targets };
        for (norm, eps, name) in [(Norm::Linf, 8.0 / 255.0, "linf"), (Norm::L2, 0.5, "l2")] {
            let mut sanity = Sanity::default();
            let found = search(&mut m, &x, &labels, norm, 10, &mut sanity).unwrap();
            let want_found = rows(&f[&format!("fab_{name}{suffix}_found_f64")]);
            let want_found_f32 = rows(&f[&format!("fab_{name}{suffix}_found")]);
            let want_fooled = f64s(&f[&format!("fab_{name}{suffix}_fooled_f64")]);
            for i in 0..x.len() {
                let (d, point) = &found[i];
                let point = point.as_ref().unwrap_or_else(|| panic!("{model} {name} sample {i}: AutoAttack found a point"));
                // Near the boundary AutoAttack's float32 and float64 runs part (the generator says
                // so of the MLP's first L∞ sample): there either run's point is the reference.
                let off = |want: &[f64]| point.iter().zip(want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                let worst = off(&want_found[i]).min(off(&want_found_f32[i]));
                assert!(worst < 1e-4, "{model} {name} sample {i}: point off by {worst}");
                let within = (*d as f32) <= eps as f32;
                assert_eq!(within, want_fooled[i] > 0.5, "{model} {name} sample {i}: distance {d}, ε {eps}");
            }
            assert_eq!(sanity.nan_gradients, 0);
        }
    }
}

#[test]
fn fab_fixture_is_not_trivial() {
    // Some samples counted, some beyond ε: the comparison above can fail either way.
    let f = fixture();
    let fooled: Vec<f64> = ["linf", "linf_mlp", "l2_mlp"].iter().flat_map(|k| f64s(&f[&format!("fab_{k}_fooled_f64")])).collect();
    assert!(fooled.contains(&0.0) && fooled.contains(&1.0));
}
