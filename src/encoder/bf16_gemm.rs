//! Matrix products with bf16 operands and f32 sums: the kernel of `--precision bf16`. Both
//! operands are rounded to bf16 (to nearest, ties to even, as PyTorch's autocast rounds), each pair
//! of products is summed in f32, and so is the result.
//!
//! Two kernels, picked at run time ([`Kernel::best`]): Intel AMX tiles (`super::amx`) where the
//! CPU has them and Linux grants them, else AVX512-BF16's `vdpbf16ps` in registers (this file).
//! Both read the same packed operands.
//!
//! Why our own kernels: no maintained Rust crate has one (the `gemm` crate candle uses widens
//! f16/bf16 to f32 and runs its f32 kernels), and oneDNN or OpenBLAS's `sbgemm` would bring back
//! a system library to build against. Their speed against oneDNN's (through PyTorch) is measured
//! by `robust-ssl bench --linear` (`tools/bench_linear.sh`, BENCHMARKS.md).
//!
//! Layout ([`Layout`], packed in `bf16_pack.rs`): the left operand is rounded into rows of bf16 pairs (`k` padded to even);
//! the right one into panels of 64 columns where each 32-bit lane holds the pair
//! `(b[2p][j], b[2p+1][j])`. For AMX the same lanes are laid out tile by tile instead (16×16 lanes
//! each, 32-column panels), `k` and the rows padded to 32. The packing buffers are kept per thread
//! between products. In registers, a 6×64 tile of the result lives in 24 registers while 256 of
//! `k` stream through; tiles are shared out to the threads in 96×192 blocks.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

pub use super::amx::Start;
use super::bf16_pack::{aligned_lanes, pack_panels, pack_rows, with_buffers, Layout, NR, TILE, V};
pub use super::bf16_pack::{round_bf16, Lhs};
use super::fastmath::{fill_rows, SendPtr};

/// Rows of a register tile.
const MR: usize = 6;
/// Pairs of `k` per block: a block of one panel of the right operand is 32 KiB (L1-sized; 64
/// pairs measured slower).
const KP: usize = 128;
/// Rows and columns of one thread's block.
const MC: usize = 96;
const NC: usize = 192;

/// Set (to anything), the kernel is treated as unsupported: to compare with a CPU without
/// AVX512-BF16, or to see the refusal.
pub const DISABLE_ENV: &str = "ROBUST_SSL_DISABLE_BF16";

/// The kernel that runs the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Intel AMX tiles (`tdpbf16ps`), where [`super::amx::available`].
    Amx,
    /// AVX512-BF16 (`vdpbf16ps`) in registers.
    Dpbf16,
}

impl Kernel {
    /// The fastest this machine runs: AMX where available, else `vdpbf16ps`.
    pub fn best() -> Self {
        if super::amx::available() {
            Self::Amx
        } else {
            Self::Dpbf16
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Amx => "AMX tiles (tdpbf16ps)",
            Self::Dpbf16 => "AVX512-BF16 (vdpbf16ps)",
        }
    }
}

/// Whether this CPU runs the kernel (AVX-512 F and BF16), and [`DISABLE_ENV`] is unset.
pub fn supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let cpu = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16");
        #[cfg(not(target_arch = "x86_64"))]
        let cpu = false;
        cpu && std::env::var_os(DISABLE_ENV).is_none()
    })
}

/// One `R`×`NR` tile: `c (+)= a · b` over `pairs` pairs of `k`. `a` holds R rows `a_rs` pairs
/// apart, `b` one panel block, `c` rows `c_rs` apart of which the first `cols` columns are written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(pairs: usize, a: *const u32, a_rs: usize, b: *const u32, c: *mut f32, c_rs: usize, cols: usize, add: bool) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for p in 0..pairs {
        let mut bv = [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); V];
        for (v, b_v) in bv.iter_mut().enumerate() {
            *b_v = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.add(p * NR + 16 * v) as *const _));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i * a_rs + p) as i32));
            for v in 0..V {
                acc[v] = _mm512_dpbf16_ps(acc[v], av, bv[v]);
            }
        }
    }
    let mask = |v: usize| -> __mmask16 {
        let left = cols.saturating_sub(16 * v).min(16);
        ((1u32 << left) - 1) as __mmask16
    };
    let masks: [__mmask16; V] = std::array::from_fn(mask);
    for (i, acc) in acc.iter().enumerate() {
        let row = c.add(i * c_rs);
        for v in 0..V {
            let (m, out) = (masks[v], row.add(16 * v));
            if m == 0 {
                continue;
            }
            let mut r = acc[v];
            if add {
                r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, out));
            }
            _mm512_mask_storeu_ps(out, m, r);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows(
    rows: usize,
    pairs: usize,
    a: *const u32,
    a_rs: usize,
    b: *const u32,
    c: *mut f32,
    c_rs: usize,
    cols: usize,
    add: bool,
) {
    macro_rules! by_rows {
        ($($r:literal)*) => {
            match rows {
                $($r => tile::<$r>(pairs, a, a_rs, b, c, c_rs, cols, add),)*
                _ => unreachable!("a tile has 1 to {MR} rows"),
            }
        };
    }
    const _: () = assert!(MR == 6, "by_rows lists every tile height up to MR");
    by_rows!(1 2 3 4 5 6)
}

/// `dst[m,n] (+)= lhs[m,k] · rhs[k,n]` with both operands rounded to bf16 and the sums in f32;
/// strides in elements, as [`super::frozen_linear::gemm_f32`] takes them. `accumulate` adds to
/// `dst`.
///
/// # Safety
/// As `gemm_f32`: every pointer addresses the whole matrix its strides describe, `dst` aliases
/// neither operand. The CPU must pass [`supported`] (checked: a panic otherwise, never a wrong
/// instruction).
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_bf16(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    parallel: bool,
) {
    gemm_bf16_of(Kernel::best(), (m, n, k), dst, dst_rs, accumulate, Lhs::Strided(lhs), Rhs::Strided(rhs), parallel)
}

/// [`gemm_bf16`] with the operands given as [`Lhs`] and [`Rhs`], on the given kernel.
///
/// # Safety
/// As [`gemm_bf16`], [`Kernel::Amx`] only where [`super::amx::available`], and an [`Lhs::Rows`]
/// operand writes every value of the row it is asked for.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_bf16_of(
    kernel: Kernel,
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Lhs,
    rhs: Rhs,
    parallel: bool,
) {
    gemm_bf16_from(kernel, dims, dst, dst_rs, if accumulate { Start::Dst } else { Start::Zero }, lhs, rhs, parallel)
}

/// [`gemm_bf16_of`] whose sums start from `start`: zero, `dst`, or a bias of `n` values in every
/// row (on AMX loaded into the tiles, elsewhere written into `dst` first).
///
/// # Safety
/// As [`gemm_bf16_of`]; a bias holds `n` values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_bf16_from(
    kernel: Kernel,
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    start: Start,
    lhs: Lhs,
    rhs: Rhs,
    parallel: bool,
) {
    assert!(supported(), "internal error: the bf16 kernel on a CPU without AVX512-BF16");
    assert!(kernel == Kernel::Dpbf16 || super::amx::available(), "internal error: AMX where it is not available");
    if let Start::Bias(b) = start {
        assert!(b.len() == n, "internal error: a bias of {} values for {n} columns", b.len());
    }
    if m == 0 || n == 0 {
        return;
    }
    let start = match start {
        Start::Bias(b) if k == 0 || kernel != Kernel::Amx => {
            fill_rows(dst, dst_rs, m, b);
            Start::Dst
        }
        s => s,
    };
    if k == 0 {
        if let Start::Zero = start {
            for i in 0..m {
                std::ptr::write_bytes(dst.add(i * dst_rs), 0, n);
            }
        }
        return;
    }
    let parallel = parallel && rayon::current_num_threads() > 1;
    #[cfg(target_arch = "x86_64")]
    products(kernel, (m, n, k), SendPtr(dst), dst_rs, start, lhs, rhs, parallel);
}

/// Both operands packed for `kernel` (for AMX padded to whole tiles and laid out tile by tile),
/// then its products.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn products(
    kernel: Kernel,
    (m, n, k): (usize, usize, usize),
    out: SendPtr<*mut f32>,
    dst_rs: usize,
    start: Start,
    lhs: Lhs,
    rhs: Rhs,
    parallel: bool,
) {
    let (layout, pairs, rows, cols) = geometry(kernel, (m, n, k));
    // The AMX kernel reads a bias by whole blocks of columns.
    let padded: Vec<f32>;
    let start = match start {
        Start::Bias(b) => {
            padded = b.iter().copied().chain(std::iter::repeat(0.0)).take(cols).collect();
            Start::Bias(&padded)
        }
        s => s,
    };
    let run = |a: &[u32], b: &[u32]| match kernel {
        Kernel::Amx => super::amx::products((m, n), out, dst_rs, start, a, b, pairs, parallel),
        Kernel::Dpbf16 => {
            assert!(!matches!(start, Start::Bias(_)), "internal error: a bias in the register kernel's tiles");
            register_products((m, n, pairs), out, dst_rs, matches!(start, Start::Dst), a, b, parallel)
        }
    };
    match rhs {
        Rhs::Strided(rhs) => with_buffers(rows * pairs, cols * pairs, |a, b| {
            pack_rows(m, k, pairs, a, lhs, parallel, layout);
            pack_panels(n, k, pairs, b, rhs, parallel, layout);
            run(a, b)
        }),
        Rhs::Packed(p) => {
            assert!(p.kernel == kernel && (p.k, p.n) == (k, n), "internal error: a packed operand of another product");
            with_buffers(rows * pairs, 0, |a, _| {
                pack_rows(m, k, pairs, a, lhs, parallel, layout);
                run(a, p.lanes())
            })
        }
    }
}

/// How `kernel` lays out a product of (m, n, k): the layout, pairs of `k` per row (padded), and
/// the rows and columns the packed operands hold (padded).
fn geometry(kernel: Kernel, (m, n, k): (usize, usize, usize)) -> (Layout, usize, usize, usize) {
    use super::amx::BLOCK;
    match kernel {
        Kernel::Amx => (Layout::Tiles, k.div_ceil(2).div_ceil(TILE) * TILE, m.div_ceil(BLOCK) * BLOCK, n.div_ceil(BLOCK) * BLOCK),
        Kernel::Dpbf16 => (Layout::Rows, k.div_ceil(2), m, n.div_ceil(NR) * NR),
    }
}

/// The right operand of a bf16 product.
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    /// k×n through (pointer, row stride, column stride).
    Strided((*const f32, usize, usize)),
    /// Packed once ([`PackedRhs::new`]) and read by every product that multiplies by it: a frozen
    /// weight, which a product would otherwise round and lay out again on every call.
    Packed(&'a PackedRhs),
}

/// A right operand rounded and laid out for one kernel, once.
pub struct PackedRhs {
    kernel: Kernel,
    k: usize,
    n: usize,
    lanes: Vec<u32>,
    /// Where the lanes start in `lanes`: on a 64-byte line, as the packing buffers do.
    start: usize,
}

impl PackedRhs {
    /// `rhs` (k×n through strides) packed for `kernel`.
    ///
    /// # Safety
    /// `rhs` addresses the whole matrix its strides describe; the CPU passes [`supported`] (and
    /// AMX's check for [`Kernel::Amx`]).
    pub unsafe fn new(kernel: Kernel, (k, n): (usize, usize), rhs: (*const f32, usize, usize)) -> Self {
        assert!(supported(), "internal error: the bf16 kernel on a CPU without AVX512-BF16");
        let (layout, pairs, _, cols) = geometry(kernel, (0, n, k));
        let mut lanes = Vec::new();
        let range = aligned_lanes(&mut lanes, cols * pairs);
        let start = range.start;
        #[cfg(target_arch = "x86_64")]
        if n > 0 && k > 0 {
            pack_panels(n, k, pairs, &mut lanes[range], rhs, true, layout);
        }
        Self { kernel, k, n, lanes, start }
    }

    fn lanes(&self) -> &[u32] {
        &self.lanes[self.start..]
    }
}

/// The `vdpbf16ps` path on the packed operands.
///
/// # Safety
/// As [`gemm_bf16`], with `a` and `b` packed by `pack_rows` and `pack_panels`.
#[cfg(target_arch = "x86_64")]
unsafe fn register_products(
    (m, n, pairs): (usize, usize, usize),
    out: SendPtr<*mut f32>,
    dst_rs: usize,
    accumulate: bool,
    a: &[u32],
    b: &[u32],
    parallel: bool,
) {
    let panels = n.div_ceil(NR);
    let groups = panels.div_ceil(NC / NR);
    let blocks = m.div_ceil(MC);
    let block = |t: usize| {
        let (ib, jg) = (t / groups, t % groups);
        let rows_end = ((ib + 1) * MC).min(m);
        for p0 in (0..pairs).step_by(KP) {
            let pc = KP.min(pairs - p0);
            for j in jg * (NC / NR)..((jg + 1) * (NC / NR)).min(panels) {
                for i0 in (ib * MC..rows_end).step_by(MR) {
                    // SAFETY: tiles of one block are disjoint from every other block's; the
                    // packed buffers hold m×pairs and panels×pairs×NR lanes.
                    unsafe {
                        tile_rows(
                            MR.min(rows_end - i0),
                            pc,
                            a.as_ptr().add(i0 * pairs + p0),
                            pairs,
                            b.as_ptr().add((j * pairs + p0) * NR),
                            out.get().add(i0 * dst_rs + j * NR),
                            dst_rs,
                            NR.min(n - j * NR),
                            accumulate || p0 > 0,
                        )
                    }
                }
            }
        }
    };
    if parallel {
        (0..blocks * groups).into_par_iter().for_each(block);
    } else {
        (0..blocks * groups).for_each(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this machine runs (AMX is skipped, with a note, where absent).
    fn kernels() -> Vec<Kernel> {
        let mut k = vec![Kernel::Dpbf16];
        if crate::encoder::amx::available() {
            k.push(Kernel::Amx);
        } else {
            eprintln!("AMX not checked: this CPU or kernel has none");
        }
        k
    }

    fn widen(h: u16) -> f64 {
        f32::from_bits((h as u32) << 16) as f64
    }

    /// Rounding agrees with the `half` crate's (an independent implementation of IEEE rounding
    /// to nearest, ties to even) on edge cases and a sweep of bit patterns.
    #[test]
    fn rounding_is_to_nearest_even() {
        let mut xs = vec![0.0f32, -0.0, 1.0, -1.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY];
        xs.extend((0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
        // Exact ties: 1 + 2^-8 (rounds down to even) and 1 + 3·2^-8 (rounds up to even).
        xs.extend([1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)]);
        for x in xs {
            let ours = round_bf16(x);
            if x.is_nan() {
                assert!(f32::from_bits((ours as u32) << 16).is_nan());
            } else {
                assert_eq!(ours, half::bf16::from_f32(x).to_bits(), "{x:e}");
            }
        }
    }

    /// Every shape class (edges of tiles, blocks, panels; odd k; strided and transposed operands;
    /// sums from zero, from dst, from a bias) against the exact product of the rounded operands,
    /// in f64.
    #[test]
    fn products_equal_the_exact_sums_of_the_rounded_operands() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for &(m, n, k) in &[(1, 1, 1), (13, 33, 3), (97, 129, 257), (200, 70, 300), (64, 64, 96), (12, 32, 256), (5, 400, 64)] {
            for &(lhs_t, rhs_t, acc, par) in
                &[(false, false, false, true), (true, false, true, false), (false, true, false, true), (true, true, true, true)]
            {
                let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
                let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
                let init: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
                // Stored transposed where asked, read through strides.
                let (lhs_rs, lhs_cs) = if lhs_t { (1, m) } else { (k, 1) };
                let (rhs_rs, rhs_cs) = if rhs_t { (1, k) } else { (n, 1) };
                let av = |i: usize, j: usize| a[i * lhs_rs + j * lhs_cs];
                let bv = |i: usize, j: usize| b[i * rhs_rs + j * rhs_cs];
                // The sums start from dst (acc) or from zero; and, a second time, from a bias.
                let bias: Vec<f32> = (0..n).map(|_| rnd()).collect();
                for (kernel, biased) in kernels().into_iter().flat_map(|k| [(k, false), (k, true)]) {
                    let mut c = init.clone();
                    let start = match (biased, acc) {
                        (true, _) => Start::Bias(&bias),
                        (false, true) => Start::Dst,
                        (false, false) => Start::Zero,
                    };
                    unsafe {
                        gemm_bf16_from(
                            kernel,
                            (m, n, k),
                            c.as_mut_ptr(),
                            n,
                            start,
                            Lhs::Strided((a.as_ptr(), lhs_rs, lhs_cs)),
                            Rhs::Strided((b.as_ptr(), rhs_rs, rhs_cs)),
                            par,
                        )
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let mut s = match start {
                                Start::Bias(b) => b[j] as f64,
                                Start::Dst => init[i * n + j] as f64,
                                Start::Zero => 0.0,
                            };
                            let mut mag = s.abs();
                            for l in 0..k {
                                let p = widen(round_bf16(av(i, l))) * widen(round_bf16(bv(l, j)));
                                s += p;
                                mag += p.abs();
                            }
                            // f32 summation of exact products (bf16×bf16 fits in f32): error ≤ k·2⁻²⁴·Σ|p|.
                            let bound = (k as f64 + 2.0) * 6e-8 * mag + 1e-30;
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - s).abs() <= bound,
                                "{kernel:?} ({m},{n},{k}) t=({lhs_t},{rhs_t}) acc={acc} bias={biased} at ({i},{j}): {got} vs {s}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// An operand given row by row packs exactly as the same matrix in memory, and a right
    /// operand packed once as one packed by the product: bit-equal products on every kernel,
    /// across row groups and tile edges, in parallel or not.
    #[test]
    fn rows_and_prepacked_operands_give_the_products_of_the_plain_ones() {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for &(m, n, k) in &[(1, 1, 1), (17, 33, 5), (40, 70, 300), (33, 64, 1536)] {
            let row = |i: usize, out: &mut [f32]| {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = ((i * 31 + j * 17) % 97) as f32 / 13.0 - 3.5;
                }
            };
            let mut a = vec![0f32; m * k];
            a.chunks_exact_mut(k).enumerate().for_each(|(i, r)| row(i, r));
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 7) % 23) as f32 / 5.0 - 2.0).collect();
            for kernel in kernels() {
                for par in [false, true] {
                    let (mut want, mut got) = (vec![1f32; m * n], vec![1f32; m * n]);
                    unsafe {
                        gemm_bf16_of(
                            kernel,
                            (m, n, k),
                            want.as_mut_ptr(),
                            n,
                            true,
                            Lhs::Strided((a.as_ptr(), k, 1)),
                            Rhs::Strided((b.as_ptr(), n, 1)),
                            par,
                        );
                        gemm_bf16_of(kernel, (m, n, k), got.as_mut_ptr(), n, true, Lhs::Rows(&row), Rhs::Strided((b.as_ptr(), n, 1)), par);
                    }
                    assert_eq!(got, want, "{kernel:?} ({m},{n},{k}) parallel {par}");
                    // The right operand transposed in memory, packed once, used twice.
                    let b_t: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
                    let packed = unsafe { PackedRhs::new(kernel, (k, n), (b_t.as_ptr(), 1, k)) };
                    for lhs in [Lhs::Strided((a.as_ptr(), k, 1)), Lhs::Rows(&row)] {
                        let mut again = vec![1f32; m * n];
                        unsafe { gemm_bf16_of(kernel, (m, n, k), again.as_mut_ptr(), n, true, lhs, Rhs::Packed(&packed), par) };
                        assert_eq!(again, want, "{kernel:?} ({m},{n},{k}) parallel {par}, packed once");
                    }
                }
            }
        }
    }
}
