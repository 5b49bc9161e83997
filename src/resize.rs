//! Resizing as exact 1-D interpolation matrices (`[output, input]`, row-major) reproducing
//! torch's `F.interpolate` (align_corners=False): bicubic and bilinear, with or without
//! antialiasing, and nearest. A 2-D resize is `Ry · X · Rxᵀ`: exact, separable, and
//! differentiable when applied with tensor ops. Used for position embeddings, images and head
//! outputs.

/// An interpolation filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
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

/// torch's non-antialiased interpolation, where output `i` samples the source coordinate
/// `coord_scale · (i + 0.5) − 0.5`: bicubic (A = −0.75) with taps clamped to the edge, or bilinear
/// with the coordinate clamped at 0. Coordinates in f32, as torch computes them for f32 tensors.
pub fn interpolate(filter: Filter, input: usize, output: usize, coord_scale: f64) -> Vec<f64> {
    interpolate_with(filter, input, output, coord_scale, false)
}

/// [`interpolate`] with the coordinates in f64 when `double` (torch does so for f64 tensors).
pub fn interpolate_with(filter: Filter, input: usize, output: usize, coord_scale: f64, double: bool) -> Vec<f64> {
    let mut m = vec![0.0; output * input];
    for i in 0..output {
        let real = if double { coord_scale * (i as f64 + 0.5) - 0.5 } else { ((coord_scale as f32) * (i as f32 + 0.5) - 0.5) as f64 };
        match filter {
            Filter::Bicubic => {
                const A: f64 = -0.75;
                let base = real.floor();
                let t = real - base;
                let base = base as i64;
                let coeffs = [cubic(t + 1.0, A), cubic(t, A), cubic(1.0 - t, A), cubic(2.0 - t, A)];
                for (k, c) in coeffs.iter().enumerate() {
                    let j = (base - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
                    m[i * input + j] += c;
                }
            }
            Filter::Bilinear => {
                let real = real.max(0.0);
                let j0 = (real.floor() as usize).min(input - 1);
                let j1 = (j0 + 1).min(input - 1);
                let t = real - j0 as f64;
                m[i * input + j0] += 1.0 - t;
                m[i * input + j1] += t;
            }
        }
    }
    m
}

/// torch's antialiased interpolation to an explicit size (PIL's separable resampling): the
/// filter (triangle, or Keys cubic with a = −0.5) is widened by the downscale factor, taps outside
/// the input are dropped and the weights renormalised.
pub fn interpolate_antialias(filter: Filter, input: usize, output: usize) -> Vec<f64> {
    let (radius, kernel): (f64, fn(f64) -> f64) = match filter {
        Filter::Bilinear => (1.0, |x: f64| (1.0 - x.abs()).max(0.0)),
        Filter::Bicubic => (2.0, |x: f64| cubic(x, -0.5)),
    };
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { radius * scale } else { radius };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut m = vec![0.0; output * input];
    for i in 0..output {
        let center = scale * (i as f64 + 0.5);
        // torch truncates toward zero here, then clips.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(input as i64);
        let weights: Vec<f64> = (xmin..xmax).map(|j| kernel((j as f64 - center + 0.5) * inv)).collect();
        let total: f64 = weights.iter().sum();
        if total != 0.0 {
            for (j, w) in (xmin..xmax).zip(weights) {
                m[i * input + j as usize] = w / total;
            }
        }
    }
    m
}

/// Source index of each output position for torch's `nearest` mode: `floor(i · input / output)`.
pub fn nearest_indices(input: usize, output: usize) -> Vec<usize> {
    let scale = input as f32 / output as f32;
    (0..output).map(|i| ((i as f32 * scale).floor() as usize).min(input - 1)).collect()
}

/// The `[first, last)` range of the non-zero entries of each `n`-wide row of `m` (interpolation
/// matrices are banded: a few taps per row).
fn row_support(m: &[f64], n: usize) -> Vec<(usize, usize)> {
    m.chunks(n)
        .map(|row| match row.iter().position(|&v| v != 0.0) {
            Some(first) => (first, n - row.iter().rev().position(|&v| v != 0.0).unwrap_or(0)),
            None => (0, 0),
        })
        .collect()
}

/// Applies `ry` (`[oh, h]`) and `rx` (`[ow, w]`) to each of `planes` row-major `h × w` planes,
/// visiting only the non-zero taps of each row (the same sums as the dense products).
pub fn apply_separable(data: &[f32], planes: usize, (h, w): (usize, usize), ry: &[f64], rx: &[f64]) -> Vec<f32> {
    let (oh, ow) = (ry.len() / h, rx.len() / w);
    let (sy, sx) = (row_support(ry, h), row_support(rx, w));
    let mut out = vec![0f32; planes * oh * ow];
    let mut tmp = vec![0f64; h * ow];
    for p in 0..planes {
        let plane = &data[p * h * w..(p + 1) * h * w];
        // Columns first: tmp[y, j] = Σx plane[y, x]·rx[j, x].
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            for (j, &(a, b)) in sx.iter().enumerate() {
                let r = &rx[j * w..(j + 1) * w];
                tmp[y * ow + j] = (a..b).map(|x| row[x] as f64 * r[x]).sum();
            }
        }
        for (i, &(a, b)) in sy.iter().enumerate() {
            let r = &ry[i * h..(i + 1) * h];
            for j in 0..ow {
                out[p * oh * ow + i * ow + j] = (a..b).map(|y| tmp[y * ow + j] * r[y]).sum::<f64>() as f32;
            }
        }
    }
    out
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
    fn every_filter_preserves_constants() {
        for f in [Filter::Bilinear, Filter::Bicubic] {
            for (i, o) in [(37, 16), (37, 40), (4, 3), (4, 6), (2, 5), (1, 3)] {
                rows_sum_to_one(&interpolate(f, i, o, i as f64 / o as f64), i);
                rows_sum_to_one(&interpolate_antialias(f, i, o), i);
            }
        }
    }

    #[test]
    fn same_size_is_identity() {
        for f in [Filter::Bilinear, Filter::Bicubic] {
            let m = interpolate(f, 5, 5, 1.0);
            let a = interpolate_antialias(f, 5, 5);
            for i in 0..5 {
                for j in 0..5 {
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((m[i * 5 + j] - want).abs() < 1e-12 && (a[i * 5 + j] - want).abs() < 1e-12);
                }
            }
        }
        assert_eq!(nearest_indices(4, 8), vec![0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(nearest_indices(8, 3), vec![0, 2, 5]);
    }
}
