//! A weight of the candle model read in place by the hand-written path: no second f32 copy of
//! the weights beside candle's (a ViT-g/14 would pay 4.4 GB for one).

use anyhow::{bail, Result};
use candle_core::{DType, Storage, Tensor};

/// The elements of a contiguous f32 CPU tensor, borrowed for as long as this value lives: it
/// holds the tensor (so its storage) alive beside the pointer.
///
/// The storage is never resized. It is written only by `Var::set` (fine-tuning's optimizer
/// step), which the training loop runs between passes, never during one, so a pass reads the
/// weights of one step throughout.
pub(super) struct SharedF32 {
    _owner: Tensor,
    ptr: *const f32,
    len: usize,
}

// SAFETY: the pointer addresses the owner's storage, kept alive by `_owner` and only read here.
unsafe impl Send for SharedF32 {}
unsafe impl Sync for SharedF32 {}

impl SharedF32 {
    /// `t` itself where it is a contiguous f32 CPU tensor (every weight of the fast path, which
    /// runs only for f32 models on the CPU); anything else is an error.
    pub(super) fn new(t: &Tensor) -> Result<Self> {
        if t.dtype() != DType::F32 {
            bail!("internal error: a weight of the fast path is {:?}, not f32", t.dtype());
        }
        let (ptr, len) = {
            let (storage, layout) = t.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else { bail!("internal error: a weight of the fast path is not on the CPU") };
            let Some((start, end)) = layout.contiguous_offsets() else {
                bail!("internal error: a weight of the fast path is not contiguous")
            };
            let s = &cpu.as_slice::<f32>()?[start..end];
            (s.as_ptr(), s.len())
        };
        Ok(Self { _owner: t.clone(), ptr, len })
    }
}

impl std::ops::Deref for SharedF32 {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: see the type's comment; `len` elements from `ptr` lie in the owner's storage.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The slice is the tensor's own memory (no copy), sees an optimizer's in-place update, and a
    /// view that is not contiguous or not f32 is refused.
    #[test]
    fn a_shared_weight_is_the_tensors_own_memory() {
        let v = Var::from_tensor(&Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap()).unwrap();
        let s = SharedF32::new(v.as_tensor()).unwrap();
        assert_eq!(&*s, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let (storage, _) = v.as_tensor().storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { panic!() };
        assert_eq!(cpu.as_slice::<f32>().unwrap().as_ptr(), s.as_ptr());
        drop(storage);
        v.set(&Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(&*s, &[1.0; 6]);
        assert!(SharedF32::new(&v.as_tensor().t().unwrap()).is_err());
        assert!(SharedF32::new(&v.as_tensor().to_dtype(DType::F64).unwrap()).is_err());
    }
}
