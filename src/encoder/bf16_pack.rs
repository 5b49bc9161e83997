//! Packing the operands of a bf16 product (`bf16_gemm.rs`): rounding f32 to bf16 pairs and laying
//! them out for the kernel ([`Layout`]): rows of pairs and 64-column panels for `vdpbf16ps`, 16×16
//! tiles in 32-column panels for AMX; the left operand read through strides or computed row by
//! row ([`Lhs::Rows`]: an activation fused into the product); the per-thread packing buffers.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::fastmath::SendPtr;

/// Columns of a register tile (and of a panel of `vdpbf16ps`'s right operand): `V` 16-lane vectors.
pub(super) const NR: usize = 16 * V;
/// 16-lane vectors per tile row.
pub(super) const V: usize = 4;

/// `x` rounded to bf16 (to nearest, ties to even; NaN stays NaN).
pub fn round_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn pair(lo: f32, hi: f32) -> u32 {
    round_bf16(lo) as u32 | (round_bf16(hi) as u32) << 16
}

/// 16 lanes `(lo[i], hi[i])`, given as vectors, rounded to bf16 pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn interleaved(lo: __m512, hi: __m512) -> __m512i {
    let l = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(lo)));
    let h = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(hi)));
    _mm512_or_si512(l, _mm512_slli_epi32(h, 16))
}

/// 32 adjacent floats as 16 bf16 pairs `(x[2i], x[2i+1])`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn adjacent16(x: *const f32) -> __m512i {
    std::mem::transmute(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x.add(16)), _mm512_loadu_ps(x)))
}

/// The 16 floats from `x`, of which only the first `n` are read (the rest are zero): a row's end,
/// and the zeros that pad it to whole tiles, in one masked load. `x` need not be dereferenceable
/// past those `n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn first(x: *const f32, n: usize) -> __m512 {
    match n {
        0 => _mm512_setzero_ps(),
        1..=15 => _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, x),
        _ => _mm512_loadu_ps(x),
    }
}

/// [`adjacent16`] of the 32 floats from `x` of which only the first `n` are read (the rest zero).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn adjacent16_first(x: *const f32, n: usize) -> __m512i {
    if n >= 32 {
        return adjacent16(x);
    }
    let hi = if n > 16 { first(x.wrapping_add(16), n - 16) } else { _mm512_setzero_ps() };
    std::mem::transmute(_mm512_cvtne2ps_pbh(hi, first(x, n)))
}

/// The 16×16 matrix of 32-bit lanes whose row `r` is `v[r]`, transposed: row `c` of the result
/// holds lane `c` of every `v[r]`, in order of `r`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(v: &[__m512i; 16]) -> [__m512i; 16] {
    // Within each 128-bit lane: 4×4 blocks, by 32-bit then 64-bit interleaves; u[4j + c] then
    // holds, in lane L, column 4L + c of rows 4j..4j+4.
    let mut u = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let t0 = _mm512_unpacklo_epi32(v[4 * j], v[4 * j + 1]);
        let t1 = _mm512_unpackhi_epi32(v[4 * j], v[4 * j + 1]);
        let t2 = _mm512_unpacklo_epi32(v[4 * j + 2], v[4 * j + 3]);
        let t3 = _mm512_unpackhi_epi32(v[4 * j + 2], v[4 * j + 3]);
        u[4 * j] = _mm512_unpacklo_epi64(t0, t2);
        u[4 * j + 1] = _mm512_unpackhi_epi64(t0, t2);
        u[4 * j + 2] = _mm512_unpacklo_epi64(t1, t3);
        u[4 * j + 3] = _mm512_unpackhi_epi64(t1, t3);
    }
    // Then the 4×4 matrix of 128-bit lanes across u[c], u[4 + c], u[8 + c], u[12 + c].
    let mut x = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let (a, b, cc, d) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
        let p = _mm512_shuffle_i32x4::<0x88>(a, b);
        let q = _mm512_shuffle_i32x4::<0xdd>(a, b);
        let r = _mm512_shuffle_i32x4::<0x88>(cc, d);
        let s = _mm512_shuffle_i32x4::<0xdd>(cc, d);
        x[c] = _mm512_shuffle_i32x4::<0x88>(p, r);
        x[8 + c] = _mm512_shuffle_i32x4::<0xdd>(p, r);
        x[4 + c] = _mm512_shuffle_i32x4::<0x88>(q, s);
        x[12 + c] = _mm512_shuffle_i32x4::<0xdd>(q, s);
    }
    x
}

/// Where the packed operands put each bf16 pair.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// Rows of `pairs` lanes; panels of [`NR`] columns, `[pair][NR]` (the register kernel's).
    Rows,
    /// AMX tiles, each 16×16 lanes contiguous: a 16-row group as `[step][row][16 pairs]`; a
    /// 32-column panel as `[step][half][16 pairs][16 columns]` (a step = 16 pairs of `k`).
    Tiles,
}

impl Layout {
    /// Columns of a panel of the right operand.
    fn panel(self) -> usize {
        match self {
            Self::Rows => NR,
            Self::Tiles => 2 * TILE,
        }
    }

    /// Lane of row `i` (of its group), pair `q` on the left; runs of 16 from `q` a multiple of
    /// 16 are contiguous in both layouts.
    fn lhs(self, i: usize, q: usize, pairs: usize) -> usize {
        match self {
            Self::Rows => i * pairs + q,
            Self::Tiles => ((q / TILE) * TILE + i) * TILE + q % TILE,
        }
    }

    /// Lane of pair `q`, column `c` (of its panel) on the right; runs of 16 from `c` a multiple
    /// of 16 are contiguous in both layouts.
    fn rhs(self, q: usize, c: usize) -> usize {
        match self {
            Self::Rows => q * NR + c,
            Self::Tiles => ((q / TILE) * 2 + c / TILE) * TILE * TILE + (q % TILE) * TILE + c % TILE,
        }
    }
}

/// Tile side of the AMX kernel.
pub(super) const TILE: usize = super::amx::TILE;

/// `rows` rows from `i0` of `lhs` (m×k through strides) into `out` (rows of `pairs` bf16 pairs,
/// placed by `layout`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_row_group(
    i0: usize,
    rows: usize,
    out: &mut [u32],
    k: usize,
    pairs: usize,
    (p, rs, cs): (*const f32, usize, usize),
    layout: Layout,
) {
    let at = |i: usize, j: usize| if j < k { *p.add((i0 + i) * rs + j * cs) } else { 0.0 };
    let at_lane = |i: usize, q: usize| layout.lhs(i, q, pairs);
    // Runs of 16 pairs are vectors, the row's end and its zero padding included (masked loads);
    // only a layout whose rows are not whole runs has pairs left for the scalar loop.
    let runs = pairs / 16;
    let mut done = 0; // pairs already written in every row
    if cs == 1 {
        done = runs * 16;
        for i in 0..rows {
            let row = p.add((i0 + i) * rs);
            for g in 0..runs {
                let v = adjacent16_first(row.wrapping_add(32 * g), k.saturating_sub(32 * g));
                _mm512_storeu_si512(out.as_mut_ptr().add(at_lane(i, 16 * g)) as *mut _, v);
            }
        }
    } else if rs == 1 && rows == 16 {
        // A transposed operand (its rows are columns in memory): 16 pairs at a time, each a
        // vector over the 16 rows, transposed in registers into 16 rows of 16 pairs.
        done = runs * 16;
        let column = |j: usize| if j < k { _mm512_loadu_ps(p.add(j * cs + i0)) } else { _mm512_setzero_ps() };
        for g in 0..runs {
            let mut v = [_mm512_setzero_si512(); 16];
            for (r, v) in v.iter_mut().enumerate() {
                let q = 16 * g + r;
                *v = interleaved(column(2 * q), column(2 * q + 1));
            }
            for (i, v) in transpose16(&v).iter().enumerate() {
                _mm512_storeu_si512(out.as_mut_ptr().add(at_lane(i, 16 * g)) as *mut _, *v);
            }
        }
    }
    for i in 0..rows {
        for q in done..pairs {
            out[at_lane(i, q)] = pair(at(i, 2 * q), at(i, 2 * q + 1));
        }
    }
}

/// Panel `j` (`layout.panel()` columns) of `rhs` (k×n through strides) into `out`, the columns
/// past `n` zero.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_panel(j: usize, out: &mut [u32], n: usize, k: usize, (p, rs, cs): (*const f32, usize, usize), layout: Layout) {
    let width = layout.panel();
    let pairs = out.len() / width;
    let cols = width.min(n - j * width);
    let at = |r: usize, c: usize| if r < k { *p.add(r * rs + (j * width + c) * cs) } else { 0.0 };
    if cs == 1 {
        // Rows of 16 columns are vectors, the panel's last columns and the rows past k zero
        // (masked loads): every lane of the panel is written here.
        let row = |r: usize, c0: usize| {
            let n = cols.saturating_sub(c0).min(16);
            if r < k && n > 0 {
                first(p.add(r * rs + j * width + c0), n)
            } else {
                _mm512_setzero_ps()
            }
        };
        for q in 0..pairs {
            for c0 in (0..width).step_by(16) {
                let v = interleaved(row(2 * q, c0), row(2 * q + 1, c0));
                _mm512_storeu_si512(out.as_mut_ptr().add(layout.rhs(q, c0)) as *mut _, v);
            }
        }
        return;
    }
    let runs = pairs / 16;
    let mut done = 0; // pairs already written in every column
    if rs == 1 {
        // A transposed operand (its columns are rows in memory): 16 columns at a time, each a
        // vector of 16 pairs down its column, transposed in registers into 16 pairs of 16 columns.
        done = runs * 16;
        for c0 in (0..width).step_by(16) {
            for g in 0..runs {
                let mut v = [_mm512_setzero_si512(); 16];
                for (t, v) in v.iter_mut().enumerate().take(cols.saturating_sub(c0)) {
                    *v = adjacent16_first(p.add((j * width + c0 + t) * cs).wrapping_add(32 * g), k.saturating_sub(32 * g));
                }
                for (s, v) in transpose16(&v).iter().enumerate() {
                    _mm512_storeu_si512(out.as_mut_ptr().add(layout.rhs(16 * g + s, c0)) as *mut _, *v);
                }
            }
        }
    }
    for q in done..pairs {
        for c in 0..cols {
            out[layout.rhs(q, c)] = pair(at(2 * q, c), at(2 * q + 1, c));
        }
        for c in cols..width {
            out[layout.rhs(q, c)] = 0;
        }
    }
}

/// The left operand of a bf16 product.
#[derive(Clone, Copy)]
pub enum Lhs<'a> {
    /// m×k through (pointer, row stride, column stride), as `gemm_f32` takes it.
    Strided((*const f32, usize, usize)),
    /// `row(i, out)` writes row `i` (k values) into `out`: an element-wise op (the activation
    /// between two linear layers) run inside the packing, row by row, so that its result is never
    /// written to memory whole.
    Rows(&'a (dyn Fn(usize, &mut [f32]) + Sync)),
}

thread_local! {
    /// One group of rows of an [`Lhs::Rows`] operand, before packing.
    static ROW_GROUP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `lhs` (m×k) into `out` as groups of 16 rows of `pairs` bf16 pairs, then zero rows to its end.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn pack_rows(m: usize, k: usize, pairs: usize, out: &mut [u32], lhs: Lhs, parallel: bool, layout: Layout) {
    let (src, row_of) = match lhs {
        Lhs::Strided((p, rs, cs)) => (Some((SendPtr(p), rs, cs)), None),
        Lhs::Rows(f) => (None, Some(f)),
    };
    let group = |(g, o): (usize, &mut [u32])| {
        let rows = 16.min(m - 16 * g);
        if rows < 16 && layout == Layout::Tiles {
            o.fill(0); // the rows past m, which tiles interleave with the others
        }
        match (src, row_of) {
            // SAFETY: group g holds rows 16g.. of the caller's matrix; the CPU was checked by the
            // caller.
            (Some((p, rs, cs)), _) => unsafe { pack_row_group(16 * g, rows, o, k, pairs, (p.get(), rs, cs), layout) },
            (None, Some(f)) => ROW_GROUP.with(|cell| {
                let mut buf = cell.borrow_mut();
                buf.resize(16 * k, 0.0);
                for (r, row) in buf.chunks_exact_mut(k).take(rows).enumerate() {
                    f(16 * g + r, row);
                }
                // SAFETY: buf holds the group's rows × k values, row-major; CPU as above.
                unsafe { pack_row_group(0, rows, o, k, pairs, (buf.as_ptr(), k, 1), layout) }
            }),
            (None, None) => unreachable!("an operand is strided or given by rows"),
        }
    };
    // Rows: m rows then zeros; tiles: whole groups of 16 rows then zeros.
    let packed = match layout {
        Layout::Rows => m * pairs,
        Layout::Tiles => m.div_ceil(16) * 16 * pairs,
    };
    let (rows, padding) = out.split_at_mut(packed);
    padding.fill(0);
    if parallel {
        rows.par_chunks_mut(16 * pairs).enumerate().for_each(group);
    } else {
        rows.chunks_mut(16 * pairs).enumerate().for_each(group);
    }
}

/// `rhs` (k×n through strides) into `out` as panels of `layout.panel()` columns of bf16 pairs.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn pack_panels(
    n: usize,
    k: usize,
    pairs: usize,
    out: &mut [u32],
    rhs: (*const f32, usize, usize),
    parallel: bool,
    layout: Layout,
) {
    let src = SendPtr(rhs.0);
    // SAFETY: panel j holds columns width·j.. of the caller's matrix; the CPU was checked by the caller.
    let panel = |(j, o): (usize, &mut [u32])| unsafe { pack_panel(j, o, n, k, (src.get(), rhs.1, rhs.2), layout) };
    if parallel {
        out.par_chunks_mut(pairs * layout.panel()).enumerate().for_each(panel);
    } else {
        out.chunks_mut(pairs * layout.panel()).enumerate().for_each(panel);
    }
}

thread_local! {
    /// This thread's packing buffers, kept from one product to the next: a fresh pair per product
    /// cost a fifth of a bf16 step in zeroing and page faults.
    static BUFFERS: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The range of `v`'s lanes, `len` long, that starts on a 64-byte line (a tile's rows are lines:
/// an unaligned one would read two per row); `v` grows (zeroed) where it is too short for it.
pub(super) fn aligned_lanes(v: &mut Vec<u32>, len: usize) -> std::ops::Range<usize> {
    const LINE: usize = 64 / std::mem::size_of::<u32>();
    if v.len() < len + LINE {
        *v = super::fastmath::zeros(len + LINE);
    }
    let skip = v.as_ptr().align_offset(64).min(LINE);
    skip..skip + len
}

/// `f` on two packing buffers of `la` and `lb` lanes (contents unspecified), each starting on a
/// 64-byte line ([`aligned_lanes`]): this thread's own, or new ones where they are in use (a
/// product inside a product's task).
pub(super) fn with_buffers<R>(la: usize, lb: usize, f: impl FnOnce(&mut [u32], &mut [u32]) -> R) -> R {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (a, b) = &mut *bufs;
            let (ra, rb) = (aligned_lanes(a, la), aligned_lanes(b, lb));
            f(&mut a[ra], &mut b[rb])
        }
        Err(_) => {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let (ra, rb) = (aligned_lanes(&mut a, la), aligned_lanes(&mut b, lb));
            f(&mut a[ra], &mut b[rb])
        }
    })
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The register transpose against the index definition, on distinct lanes.
    #[test]
    fn transpose16_transposes() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        let m: Vec<u32> = (0..256).collect();
        // SAFETY: AVX-512F checked above; loads and stores of 16 lanes inside `m` and `got`.
        let got = unsafe {
            let v: [__m512i; 16] = std::array::from_fn(|r| _mm512_loadu_si512(m.as_ptr().add(16 * r) as *const _));
            let mut got = [0u32; 256];
            for (c, x) in transpose16(&v).iter().enumerate() {
                _mm512_storeu_si512(got.as_mut_ptr().add(16 * c) as *mut _, *x);
            }
            got
        };
        for r in 0..16 {
            for c in 0..16 {
                assert_eq!(got[16 * c + r], m[16 * r + c], "({r}, {c})");
            }
        }
    }
}
