//! A global allocator that refuses, while armed, any single request above a bound: the hostile
//! input test and the fuzz targets install it so that a reader which sizes a buffer from a field
//! of the file, before checking the field against the file, is caught on the spot.
//!
//! A refused request returns null. An infallible allocation (`Vec::with_capacity`, `vec![0; n]`,
//! `Box::new`) then goes to the standard library's allocation-error handler, which prints
//! `memory allocation of N bytes failed` and aborts the process: the fuzzer reports a crash, the
//! test's child process dies and its parent names the case. A fallible one (`try_reserve`) gets an
//! error; the request is still recorded, and [`disarm`] returns it, so the caller fails the case.
//! Nothing here allocates, locks or writes: the bookkeeping is a const-initialised thread-local
//! (the thread that armed it) and two atomics (requests from threads it started, e.g. rayon's).
#![allow(dead_code)] // each includer uses its own subset

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The bound used by the test and the fuzz targets: no reader of a tiny fixture has any business
/// asking for a single block this large.
pub const DEFAULT_BOUND: usize = 512 << 20;

thread_local! {
    /// The bound on this thread (0: disarmed) and the largest request seen since [`arm`].
    static BOUND: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The bound for threads other than the armed one (0: none armed), and the largest request they
/// made while it held.
static OTHERS_BOUND: AtomicUsize = AtomicUsize::new(0);
static OTHERS_LARGEST: AtomicUsize = AtomicUsize::new(0);

pub struct BoundedAlloc;

/// Records a request of `size` bytes; false when it must be refused.
#[inline]
fn admit(size: usize) -> bool {
    let mine = BOUND.try_with(|b| b.get()).unwrap_or(0);
    if mine != 0 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        return size <= mine;
    }
    let others = OTHERS_BOUND.load(Ordering::Relaxed);
    if others != 0 {
        OTHERS_LARGEST.fetch_max(size, Ordering::Relaxed);
        return size <= others;
    }
    true
}

unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !admit(new_size) {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
}

/// Refuses requests above `bound` bytes on this thread (and on every other thread while it is
/// armed), and starts recording the largest request.
pub fn arm(bound: usize) {
    LARGEST.with(|l| l.set(0));
    OTHERS_LARGEST.store(0, Ordering::Relaxed);
    OTHERS_BOUND.store(bound, Ordering::Relaxed);
    BOUND.with(|b| b.set(bound));
}

/// Stops refusing; returns the largest single request made since [`arm`], refused ones included
/// (above the bound means the reader asked for too much).
pub fn disarm() -> usize {
    BOUND.with(|b| b.set(0));
    OTHERS_BOUND.store(0, Ordering::Relaxed);
    LARGEST.with(|l| l.get()).max(OTHERS_LARGEST.load(Ordering::Relaxed))
}
