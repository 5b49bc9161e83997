//! Resizing the learned position embedding to another patch grid, as exact interpolation
//! matrices (so the resize is differentiable and costs one small matmul).
//!
//! Three semantics exist in the wild and give slightly different numbers:
//! - `official`: DINO/DINOv2 `interpolate_pos_encoding` — bicubic (A = −0.75) with
//!   `scale_factor = (n + 0.1) / M`; torch then maps coordinates by 1/scale, not by M/n.
//! - `size`: bicubic (A = −0.75) with an explicit output size (Hugging Face transformers, ONNX
//!   `Resize` with `sizes`, half-pixel coordinates).
//! - `size-aa`: antialiased bicubic with an explicit size (official DINOv2 *with registers*, timm):
//!   torch's separable antialias filter (Keys cubic, a = −0.5), taps outside the grid dropped and
//!   the weights renormalised.
//!
//! In every mode the embedding is returned unchanged when the grid is the trained one.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PosResize {
    #[serde(rename = "official")]
    Official,
    #[serde(rename = "size")]
    Size,
    #[serde(rename = "size-aa")]
    SizeAntialias,
}

impl FromStr for PosResize {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "official" => Ok(Self::Official),
            "size" => Ok(Self::Size),
            "size-aa" => Ok(Self::SizeAntialias),
            _ => bail!("unknown position-embedding resize '{s}'; expected official, size or size-aa"),
        }
    }
}

impl fmt::Display for PosResize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Official => "official",
            Self::Size => "size",
            Self::SizeAntialias => "size-aa",
        })
    }
}

/// Keys' cubic convolution kernel with parameter `a`.
fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// Row-major `[output, input]` matrix of torch's non-antialiased bicubic (align_corners=False)
/// where a source coordinate is `coord_scale * (i + 0.5) - 0.5` and taps are clamped to the edge.
fn bicubic_matrix(input: usize, output: usize, coord_scale: f64) -> Vec<f64> {
    const A: f64 = -0.75;
    let mut m = vec![0.0; output * input];
    for i in 0..output {
        // torch computes the coordinate in the tensor's float type.
        let real = (coord_scale as f32) * (i as f32 + 0.5) - 0.5;
        let base = real.floor();
        let t = (real - base) as f64;
        let base = base as i64;
        let coeffs = [cubic(t + 1.0, A), cubic(t, A), cubic(1.0 - t, A), cubic(2.0 - t, A)];
        for (k, c) in coeffs.iter().enumerate() {
            let j = (base - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            m[i * input + j] += c;
        }
    }
    m
}

/// Row-major `[output, input]` matrix of torch's antialiased bicubic with an explicit size.
fn bicubic_aa_matrix(input: usize, output: usize) -> Vec<f64> {
    const A: f64 = -0.5;
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut m = vec![0.0; output * input];
    for i in 0..output {
        let center = scale * (i as f64 + 0.5);
        // torch truncates toward zero here, then clips.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(input as i64);
        let weights: Vec<f64> =
            (xmin..xmax).map(|j| cubic((j as f64 - center + 0.5) * inv, A)).collect();
        let total: f64 = weights.iter().sum();
        if total != 0.0 {
            for (j, w) in (xmin..xmax).zip(weights) {
                m[i * input + j as usize] = w / total;
            }
        }
    }
    m
}

/// The 1-D matrix `[output, input]` resizing one side of the grid from `input` to `output`.
pub fn resize_matrix_1d(mode: PosResize, input: usize, output: usize) -> Vec<f64> {
    match mode {
        PosResize::Official => {
            // scale_factor = (output + 0.1) / input; torch maps coordinates by 1 / scale_factor.
            let scale_factor = (output as f64 + 0.1) / input as f64;
            bicubic_matrix(input, output, 1.0 / scale_factor)
        }
        PosResize::Size => bicubic_matrix(input, output, input as f64 / output as f64),
        PosResize::SizeAntialias => bicubic_aa_matrix(input, output),
    }
}

/// The `[h*w, m*m]` matrix taking the flattened `m×m` grid to an `h×w` grid (row-major), or
/// `None` where the official code returns the embedding unchanged (the trained square grid).
pub fn resize_matrix_2d(mode: PosResize, m: usize, h: usize, w: usize) -> Option<Vec<f64>> {
    if h == m && w == m {
        return None;
    }
    let ry = resize_matrix_1d(mode, m, h);
    let rx = resize_matrix_1d(mode, m, w);
    let mm = m * m;
    let mut out = vec![0.0; h * w * mm];
    for i in 0..h {
        for j in 0..w {
            let row = &mut out[(i * w + j) * mm..(i * w + j + 1) * mm];
            for a in 0..m {
                let wy = ry[i * m + a];
                if wy == 0.0 {
                    continue;
                }
                for b in 0..m {
                    row[a * m + b] = wy * rx[j * m + b];
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_sum_to_one(m: &[f64], input: usize) {
        for row in m.chunks(input) {
            let s: f64 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-6, "row sums to {s}");
        }
    }

    #[test]
    fn every_mode_preserves_constants() {
        for mode in [PosResize::Official, PosResize::Size, PosResize::SizeAntialias] {
            for (i, o) in [(37, 16), (37, 40), (4, 3), (4, 6), (2, 5)] {
                rows_sum_to_one(&resize_matrix_1d(mode, i, o), i);
            }
        }
    }

    #[test]
    fn same_size_is_identity_in_size_mode() {
        let m = resize_matrix_1d(PosResize::Size, 5, 5);
        for i in 0..5 {
            for j in 0..5 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((m[i * 5 + j] - want).abs() < 1e-12);
            }
        }
        assert!(resize_matrix_2d(PosResize::Official, 7, 7, 7).is_none());
    }

    #[test]
    fn official_differs_from_size() {
        // The +0.1 offset shifts the sampling grid: the two semantics are not the same map.
        let a = resize_matrix_1d(PosResize::Official, 37, 16);
        let b = resize_matrix_1d(PosResize::Size, 37, 16);
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(diff > 1e-3, "{diff}");
    }
}
