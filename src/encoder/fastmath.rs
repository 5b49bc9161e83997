//! What the CPU kernels share: branch-free f32 `exp` and `erf` that the compiler vectorizes (libm's
//! are scalar calls), for the fused softmax and GELU (f64 callers use the exact std/libm functions:
//! finite-difference tests); sums in 8 lanes; loops compiled per CPU ([`multiversion!`]); and the
//! plumbing of parallel loops over one buffer ([`zeros`], [`SendPtr`]).

/// `exp(x)` for f32: range reduction `x = n·ln2 + r`, |r| ≤ ln2/2, a degree-6 polynomial for
/// `exp(r)`, and `2ⁿ` through the exponent bits. Relative error below 3e-7 on [-87, 88].
#[inline(always)]
#[allow(clippy::manual_clamp)] // max/min, not clamp: a NaN input maps to a bound, as it always has
pub fn exp_f32(x: f32) -> f32 {
    let x = x.max(-87.3).min(88.7);
    // Round to nearest by adding 1.5·2²³ (no libm call, so the loop vectorizes).
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    // ln2 split in two for an exact n·ln2.
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_888_9)))));
    // SAFETY: n is an integer in [-126, 128] (x was clamped above, a NaN to a bound): the plain
    // conversion, which vectorizes where `as`'s saturating one does not.
    let bits = ((unsafe { n.to_int_unchecked::<i32>() } + 127) << 23) as u32;
    p * f32::from_bits(bits)
}

/// `erf(x)` for f32: the rational approximation of Eigen's `generic_fast_erf_float` (odd degree-13
/// numerator over even degree-8 denominator on [-4, 4], where erf is ±1 to f32 precision beyond).
#[inline(always)]
#[allow(clippy::manual_clamp)] // as in exp_f32
pub fn erf_f32(x: f32) -> f32 {
    let x = x.max(-4.0).min(4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_600_1e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_2e-3;
    q = x2 * q + -1.426_473_9e-2;
    x * p / q
}

/// Sum of a slice with 8 independent accumulators (vectorizes; plain folds stay scalar because
/// float addition is not reassociated).
#[inline(always)]
pub fn sum<T: num_traits::Float>(x: &[T]) -> T {
    sum_of(x, |v| v)
}

/// `Σ f(x)` with 8 independent accumulators, as [`sum`].
#[inline(always)]
pub fn sum_of<T: num_traits::Float>(x: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] = acc[i] + f(c[i]);
        }
    }
    let mut s = tail.iter().fold(T::zero(), |a, &v| a + f(v));
    for a in acc {
        s = s + a;
    }
    s
}

/// `Σ a·b` with 8 independent accumulators, as [`sum`].
#[inline(always)]
pub fn dot<T: num_traits::Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] = acc[i] + ca[i] * cb[i];
        }
    }
    let tail = n - n % 8;
    let mut s = a[tail..].iter().zip(&b[tail..]).fold(T::zero(), |s, (&x, &y)| s + x * y);
    for v in acc {
        s = s + v;
    }
    s
}

/// Maximum of a slice (16 lanes: a maximum is the same in any order; NaN-free input assumed, as
/// after the input check).
#[inline(always)]
pub fn max<T: num_traits::Float>(x: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = tail.iter().fold(T::neg_infinity(), |a, &v| if v > a { v } else { a });
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

/// The widest vectors this CPU has: 2 AVX-512, 1 AVX2 with FMA, 0 the build's baseline (SSE2).
pub fn level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vl") {
                2
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                1
            } else {
                0
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// `multiversion!(name [generics] (args) => body)` defines `name(args)`, which runs `body(args)`
/// compiled for the widest vectors this CPU has: AVX-512, else AVX2 with FMA, else the build's
/// baseline (SSE2). The element-wise loops of the fast path then vectorize 16 or 8 lanes wide
/// instead of 4, with no build flag that would make the binary refuse older CPUs. `body` must be
/// `#[inline(always)]` and take its slices as arguments (so the compiler knows they do not
/// overlap: through a struct or a closure's captures it does not, and leaves the loop scalar).
/// Rust never fuses `a·b + c` on its own, so the results are bit for bit the same on every path.
macro_rules! multiversion {
    ($vis:vis $name:ident [$($gen:tt)*] ($($arg:ident : $ty:ty),* $(,)?) => $body:path) => {
        $vis fn $name<$($gen)*>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
                unsafe fn v4<$($gen)*>($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3<$($gen)*>($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: each copy runs only where the CPU has the features it is compiled for.
                match $crate::encoder::fastmath::level() {
                    2 => return unsafe { v4($($arg),*) },
                    1 => return unsafe { v3($($arg),*) },
                    _ => {}
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// `n` zeros, written by every thread (a plain `vec![0; n]` zeroes on one thread while the
/// others wait: several percent of an attack step).
pub fn zeros<T: Copy + Default + Send + Sync>(n: usize) -> Vec<T> {
    filled(n, T::default())
}

/// `n` copies of `value`, written by every thread.
pub fn filled<T: Copy + Send + Sync>(n: usize, value: T) -> Vec<T> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut().par_chunks_mut(1 << 16).for_each(|c| c.fill(std::mem::MaybeUninit::new(value)));
    // SAFETY: the n elements of the spare capacity were all written just above.
    unsafe { v.set_len(n) };
    v
}

/// `n` values written by `fill` through the pointer it is given, with no zeroing pass before
/// (a buffer a product or a loop overwrites whole: zeroing it first cost a tenth of a bf16 step).
///
/// # Safety
/// `fill` writes every one of the `n` values, and reads none before writing it.
pub unsafe fn written<T>(n: usize, fill: impl FnOnce(*mut T)) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    fill(v.as_mut_ptr());
    v.set_len(n);
    v
}

/// Each of `rows` rows of `dst` (`stride` apart) set to `row`, in parallel: a bias written where a
/// product's sums then accumulate, for a kernel that cannot start its sums from one.
///
/// # Safety
/// `dst` addresses `rows` rows of `stride ≥ row.len()` values, which nothing else reads or
/// writes meanwhile.
pub unsafe fn fill_rows(dst: *mut f32, stride: usize, rows: usize, row: &[f32]) {
    use rayon::prelude::*;
    let dst = SendPtr(dst);
    // SAFETY: each task writes its own row (the caller's contract).
    (0..rows).into_par_iter().for_each(|i| unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst.get().add(i * stride), row.len()) });
}

/// `n` values, chunk `i` (of `width`, the last maybe shorter) computed by `f(i, chunk)`, in
/// parallel, with no zeroing pass before.
///
/// # Safety
/// `f` writes every element of the chunk it is handed.
pub unsafe fn by_chunks<T: Send>(n: usize, width: usize, f: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync + Send) -> Vec<T> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(n);
    let spare = &mut v.spare_capacity_mut()[..n];
    spare.par_chunks_mut(width.max(1)).enumerate().for_each(|(i, c)| f(i, c));
    // SAFETY: every chunk was handed to `f`, which wrote it (the caller's contract).
    unsafe { v.set_len(n) };
    v
}

/// `n` values, chunk `i` (of `width`, the last maybe shorter) computed by `f(i, chunk)` in
/// parallel. Each chunk is set to `zero` by the task that computes it, just before: one pass over memory,
/// where zeroing the whole buffer first took a second one (a tenth of the element-wise time).
pub fn zeroed_chunks<T: Copy + Send + Sync>(n: usize, width: usize, zero: T, f: impl Fn(usize, &mut [T]) + Sync + Send) -> Vec<T> {
    // SAFETY: every chunk is written whole (zeroed) before it is viewed as initialized.
    unsafe {
        by_chunks(n, width, |i, c| {
            c.fill(std::mem::MaybeUninit::new(zero));
            f(i, std::slice::from_raw_parts_mut(c.as_mut_ptr() as *mut T, c.len()));
        })
    }
}

/// A raw pointer (`*const T` or `*mut T`) that may cross into rayon tasks working on disjoint parts
/// of one buffer. Read it through [`SendPtr::get`]: a closure naming the field itself would
/// capture only the field, which is not `Send`.
#[derive(Clone, Copy)]
pub struct SendPtr<P>(pub P);
// SAFETY: only a pointer; whoever dereferences it guarantees the tasks touch disjoint elements.
unsafe impl<P> Send for SendPtr<P> {}
unsafe impl<P> Sync for SendPtr<P> {}

impl<P: Copy> SendPtr<P> {
    pub fn get(self) -> P {
        self.0
    }
}

/// Float types the fused kernels run on.
pub trait Fast: num_traits::Float + Send + Sync + 'static {
    fn fast_exp(self) -> Self;
    fn fast_erf(self) -> Self;
}

impl Fast for f32 {
    #[inline(always)]
    fn fast_exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn fast_erf(self) -> Self {
        erf_f32(self)
    }
}

impl Fast for f64 {
    #[inline(always)]
    fn fast_exp(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn fast_erf(self) -> Self {
        libm::erf(self)
    }
}

/// `f()` with subnormal floats flushed to zero on this thread — as inputs (DAZ) and as results
/// (FTZ), x86-64's MXCSR bits — and the previous mode restored after, also on a panic. Elsewhere
/// `f()` as it is.
///
/// For the attention: `exp` of a far-off score is a weight of 1e-39 or less, and the products
/// that read such subnormals took microcode assists: the two of its reverse pass that read the
/// softmax's gradient ran three times slower than the same shapes without. Flushed, a value under
/// 1.2e-38 counts as 0, below f32's resolution of every sum it enters.
pub fn flushing_subnormals<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        struct Restore(u32);
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: loads the MXCSR value read below from this thread.
                unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &self.0, options(nostack, readonly)) };
            }
        }
        let mut saved = 0u32;
        // SAFETY: stores MXCSR into a local u32.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut saved, options(nostack)) };
        let _restore = Restore(saved);
        // FTZ (bit 15) and DAZ (bit 6); rounding and exception masks unchanged.
        let flushing = saved | 0x8040;
        // SAFETY: only the two flush bits change.
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &flushing, options(nostack, readonly)) };
        f()
    }
    #[cfg(not(target_arch = "x86_64"))]
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp_f32(x) as f64) - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "exp relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-200.0) >= 0.0 && exp_f32(-200.0) < 1e-37);
    }

    #[test]
    fn erf_is_accurate() {
        let mut worst = 0f64;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst = worst.max(((erf_f32(x) as f64) - libm::erf(x as f64)).abs());
            x += 0.00173;
        }
        assert!(worst < 1e-6, "erf absolute error {worst:e}");
        assert_eq!(erf_f32(0.0), 0.0);
    }

    /// Inside, a subnormal input reads as zero and a subnormal result is zero; after, both are
    /// back (the mode is restored, also after a panic inside).
    #[test]
    fn subnormals_flush_inside_and_only_inside() {
        let tiny = std::hint::black_box(f32::MIN_POSITIVE / 4.0);
        let half = std::hint::black_box(0.5f32);
        let product = || std::hint::black_box(tiny) * std::hint::black_box(1.0f32);
        let result = || std::hint::black_box(f32::MIN_POSITIVE) * half;
        if cfg!(target_arch = "x86_64") {
            assert_eq!(flushing_subnormals(product), 0.0);
            assert_eq!(flushing_subnormals(result), 0.0);
        }
        assert_eq!(product(), tiny);
        assert_eq!(result(), f32::MIN_POSITIVE / 2.0);
        assert!(std::panic::catch_unwind(|| flushing_subnormals(|| panic!("inside"))).is_err());
        assert_eq!(product(), tiny);
    }
}
