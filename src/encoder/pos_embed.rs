//! Resizing the learned position embedding to another patch grid, as exact interpolation
//! matrices from `crate::resize` (so the resize is differentiable and costs one small matmul).
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

use crate::resize::{interpolate, interpolate_antialias, Filter};

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

/// The 1-D matrix `[output, input]` resizing one side of the grid from `input` to `output`.
pub fn resize_matrix_1d(mode: PosResize, input: usize, output: usize) -> Vec<f64> {
    match mode {
        PosResize::Official => {
            // scale_factor = (output + 0.1) / input; torch maps coordinates by 1 / scale_factor.
            let scale_factor = (output as f64 + 0.1) / input as f64;
            interpolate(Filter::Bicubic, input, output, 1.0 / scale_factor)
        }
        PosResize::Size => interpolate(Filter::Bicubic, input, output, input as f64 / output as f64),
        PosResize::SizeAntialias => interpolate_antialias(Filter::Bicubic, input, output),
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
