//! The bf16 matrix products on Intel AMX (`tdpbf16ps`): the tile unit of Sapphire Rapids and
//! later Xeons, where a single instruction multiplies a 16×32 bf16 tile by a 32×16 one into 16×16
//! f32 sums. On such a CPU it is what PyTorch's autocast runs (oneDNN); its peak there is about
//! 28× that of `vdpbf16ps` (`bench --linear`), whose peak is half the f32 FMA's on those CPUs. So
//! `--precision bf16` uses it wherever the CPU has it and Linux grants the tile state.
//!
//! The operands come packed by `bf16_gemm` tile by tile (each 16×16 lanes of bf16 pairs, 1 KiB
//! contiguous, on 64-byte lines), padded with zeros to whole blocks: rows and columns to 32, `k` to
//! 32, so the kernel never reads past them. One block of 32×32 results lives in four tile
//! registers (tmm0–3) while `k` streams through two tiles of the left operand (tmm4–5) and two of
//! the right (tmm6–7).
//!
//! Rust has no stable AMX intrinsics; the seven instructions are written as inline assembly. No
//! compiled Rust code uses the tile registers, so they keep their values between the asm blocks.
//! Arithmetic, as Intel defines `tdpbf16ps`: each pair of products is summed in f32 and added to
//! the f32 result, rounding to nearest even; bf16 inputs that are denormal count as zero.

#[cfg(target_arch = "x86_64")]
use std::arch::asm;

use rayon::prelude::*;

use super::fastmath::SendPtr;

/// Set (to anything), AMX is treated as absent and `vdpbf16ps` runs instead: to compare the two.
pub const DISABLE_ENV: &str = "ROBUST_SSL_DISABLE_AMX";

/// Rows and columns of a tile of results; pairs of `k` per tile of an operand.
pub const TILE: usize = 16;
/// Rows (and columns) of a block of results: 2×2 tiles.
pub const BLOCK: usize = 2 * TILE;

/// Whether this CPU has AMX-TILE and AMX-BF16, Linux granted this process the tile state
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once), and [`DISABLE_ENV`] is unset.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| std::env::var_os(DISABLE_ENV).is_none() && cpu_has_amx() && request_tile_state())
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // cpuid exists on every x86-64 CPU; leaf 7 is read only where the CPU reports it.
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    // CPUID.(7,0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx() -> bool {
    false
}

/// Asks Linux for the AMX tile data state (XFEATURE 18) for the whole process: without it the
/// first tile instruction faults. Any other kernel (or an error) means no AMX.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl with these arguments only changes the process's permitted xstate.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

/// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1; // palette
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes()); // bytes per row
            c[48 + t] = TILE as u8; // rows
        }
        Self(c)
    }
}

/// Loads tile `$t` from `$p`, rows `$stride` bytes apart.
macro_rules! tile_load {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{p} + {s}*1]"), p = in(reg) $p, s = in(reg) $stride, options(nostack, readonly))
    };
}
/// Stores tile `$t` to `$p`, rows `$stride` bytes apart.
macro_rules! tile_store {
    ($t:literal, $p:expr, $stride:expr) => {
        asm!(concat!("tilestored [{p} + {s}*1], tmm", $t), p = in(reg) $p, s = in(reg) $stride, options(nostack))
    };
}
macro_rules! tile_zero {
    ($t:literal) => {
        asm!(concat!("tilezero tmm", $t), options(nostack, nomem))
    };
}
/// tmm`$c` += tmm`$a` · tmm`$b` (bf16 pairs, f32 sums).
macro_rules! tile_dot {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b), options(nostack, nomem))
    };
}

/// What the sums of a product start from.
#[derive(Clone, Copy)]
pub enum Start<'a> {
    Zero,
    /// The values in `dst` (accumulate).
    Dst,
    /// Every row at this bias, `⌈n/32⌉·32` values (zeros past `n`): loaded into the tiles with a
    /// row stride of 0, where a bias written into `dst` first cost a pass over it and a load of it.
    Bias(&'a [f32]),
}

/// `dst[m,n] (+)= a · b` on the packed operands, tile by tile (each tile 16×16 lanes, 1 KiB
/// contiguous): `a` holds `⌈m/32⌉·32` rows of `pairs` bf16 pairs as `[16-row group][step][row]
/// [16 pairs]`; `b` 32-column panels as `[panel][step][half][16 pairs][16 columns]`; a step is
/// 16 pairs, and `pairs` a multiple of 16. Threads take blocks of 32 rows.
///
/// # Safety
/// [`available`] returned true; the buffers hold what is said above; `dst` addresses `m` rows
/// `dst_rs` apart of at least `n` values, aliasing neither operand.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn products(
    (m, n): (usize, usize),
    dst: SendPtr<*mut f32>,
    dst_rs: usize,
    start: Start,
    a: &[u32],
    b: &[u32],
    pairs: usize,
    parallel: bool,
) {
    if let Start::Bias(bias) = start {
        assert!(bias.len() >= n.div_ceil(BLOCK) * BLOCK, "internal error: an AMX bias not padded");
    }
    assert!(pairs.is_multiple_of(TILE) && a.len() >= m.div_ceil(BLOCK) * BLOCK * pairs, "internal error: AMX operands not padded");
    assert!(b.len() >= n.div_ceil(BLOCK) * BLOCK * pairs, "internal error: AMX panels not padded");
    // SAFETY: the caller's contract, block by block; blocks of rows are disjoint.
    let rows = |ib: usize| unsafe { row_block(ib, (m, n), (dst, dst_rs, start), (a, b, pairs)) };
    let blocks = m.div_ceil(BLOCK);
    if parallel {
        (0..blocks).into_par_iter().for_each(rows);
    } else {
        (0..blocks).for_each(rows);
    }
}

/// Rows `32·ib..` of the result, every column, on this thread's tiles.
#[cfg(target_arch = "x86_64")]
unsafe fn row_block(
    ib: usize,
    (m, n): (usize, usize),
    (dst, dst_rs, start): (SendPtr<*mut f32>, usize, Start),
    (a, b, pairs): (&[u32], &[u32], usize),
) {
    let config = TileConfig::full();
    asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    const AREA: usize = TILE * TILE; // lanes of a tile
    let (tile_stride, c_stride) = (4 * TILE, 4 * dst_rs);
    let i0 = ib * BLOCK;
    let a0 = a.as_ptr().add(i0 * pairs);
    let a1 = a0.add(TILE * pairs);
    let mut spill = [0f32; BLOCK * BLOCK];
    // Edge blocks accumulating onto dst start from zero and add dst after (below).
    let accumulate = matches!(start, Start::Dst);
    for j0 in (0..n).step_by(BLOCK) {
        let full = i0 + BLOCK <= m && j0 + BLOCK <= n;
        let c = dst.get().add(i0 * dst_rs + j0);
        match start {
            Start::Dst if full => {
                tile_load!(0, c, c_stride);
                tile_load!(1, c.add(TILE), c_stride);
                tile_load!(2, c.add(TILE * dst_rs), c_stride);
                tile_load!(3, c.add(TILE * dst_rs + TILE), c_stride);
            }
            Start::Bias(bias) => {
                // Row stride 0: the bias's 16 values in every row of the tile.
                let (b0, b1) = (bias.as_ptr().add(j0), bias.as_ptr().add(j0 + TILE));
                tile_load!(0, b0, 0usize);
                tile_load!(1, b1, 0usize);
                tile_load!(2, b0, 0usize);
                tile_load!(3, b1, 0usize);
            }
            _ => {
                tile_zero!(0);
                tile_zero!(1);
                tile_zero!(2);
                tile_zero!(3);
            }
        }
        let b0 = b.as_ptr().add(j0 * pairs);
        // Loads between the products, so that each overlaps the products that do not need it.
        for step in 0..pairs / TILE {
            let (ap, bp) = (step * AREA, b0.add(2 * step * AREA));
            tile_load!(4, a0.add(ap), tile_stride);
            tile_load!(6, bp, tile_stride);
            tile_dot!(0, 4, 6);
            tile_load!(7, bp.add(AREA), tile_stride);
            tile_dot!(1, 4, 7);
            tile_load!(5, a1.add(ap), tile_stride);
            tile_dot!(2, 5, 6);
            tile_dot!(3, 5, 7);
        }
        if full {
            tile_store!(0, c, c_stride);
            tile_store!(1, c.add(TILE), c_stride);
            tile_store!(2, c.add(TILE * dst_rs), c_stride);
            tile_store!(3, c.add(TILE * dst_rs + TILE), c_stride);
        } else {
            // An edge block: through a 32×32 copy, of which the rows and columns inside are kept.
            let s = spill.as_mut_ptr();
            let s_stride = 4 * BLOCK;
            tile_store!(0, s, s_stride);
            tile_store!(1, s.add(TILE), s_stride);
            tile_store!(2, s.add(TILE * BLOCK), s_stride);
            tile_store!(3, s.add(TILE * BLOCK + TILE), s_stride);
            for i in 0..BLOCK.min(m - i0) {
                let (row, from) = (c.add(i * dst_rs), &spill[i * BLOCK..]);
                for (j, v) in from[..BLOCK.min(n - j0)].iter().enumerate() {
                    *row.add(j) = if accumulate { *row.add(j) + v } else { *v };
                }
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// The peak of `tdpbf16ps` on this thread: `iters` rounds of four independent products on tiles
/// already loaded (zeros: the unit's speed does not depend on the values). Returns a sink and the
/// flops (2 per multiply-add).
///
/// # Safety
/// [`available`] returned true.
#[cfg(target_arch = "x86_64")]
pub unsafe fn peak(iters: usize) -> (f32, f64) {
    let config = TileConfig::full();
    asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    tile_zero!(0);
    tile_zero!(1);
    tile_zero!(2);
    tile_zero!(3);
    tile_zero!(4);
    tile_zero!(5);
    tile_zero!(6);
    tile_zero!(7);
    for _ in 0..iters {
        tile_dot!(0, 4, 6);
        tile_dot!(1, 4, 7);
        tile_dot!(2, 5, 6);
        tile_dot!(3, 5, 7);
    }
    let mut out = [0f32; TILE * TILE];
    tile_store!(0, out.as_mut_ptr(), 4 * TILE);
    asm!("tilerelease", options(nostack, nomem));
    (out[0], (iters * 4 * TILE * TILE * 2 * TILE * 2) as f64)
}
