//! Cached features read through memory maps: the chunk files stay on disk and each mini-batch
//! copies only its own rows, so training on a split larger than memory works (the page cache
//! keeps what fits).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use super::{Batch, BatchSource, Layout, Targets};

/// One chunk file, mapped.
struct Chunk {
    path: PathBuf,
    map: memmap2::Mmap,
    /// name → (byte range in the file, shape, element type)
    views: HashMap<String, (Range<usize>, Vec<usize>, Dtype)>,
}

impl Chunk {
    /// Maps `path` and checks that it holds `n` samples of `layout`.
    fn open(path: &Path, n: usize, layout: Layout) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open cached chunk", path.display()))?;
        // SAFETY: chunk files are only ever created whole (written elsewhere, then renamed) and
        // never modified in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?;
        let base = map.as_ptr() as usize;
        let st = SafeTensors::deserialize(&map).map_err(|e| anyhow::anyhow!("{}: unreadable cached chunk: {e}", path.display()))?;
        let views = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                let start = v.data().as_ptr() as usize - base;
                (name, (start..start + v.data().len(), v.shape().to_vec(), v.dtype()))
            })
            .collect::<HashMap<_, _>>();
        let c = Self { path: path.to_path_buf(), map, views };
        let rows = |name: &str| c.views.get(name).map(|(_, shape, _)| shape[0]);
        let expect = |name: &str, dtype: Dtype| -> Result<()> {
            match c.views.get(name) {
                Some((_, shape, d)) if *d == dtype && shape.first() == Some(&n) => Ok(()),
                Some((_, shape, d)) => bail!("{}: cached '{name}' is {d:?} {shape:?}, expected {dtype:?} with {n} rows", c.path.display()),
                None => bail!("{}: cached chunk has no '{name}'", c.path.display()),
            }
        };
        expect("cls", Dtype::F32)?;
        match layout {
            Layout::Tokens | Layout::PreNormTokens => expect("patch", Dtype::F32)?,
            Layout::Pooled if rows("patch_mean").is_some() => expect("patch_mean", Dtype::F32)?,
            Layout::Pooled => {}
        }
        if !matches!(c.views.get("grid"), Some((_, s, Dtype::U32)) if s == &[2]) {
            bail!("{}: cached chunk has no patch grid", c.path.display());
        }
        for (name, dtype) in [("class", Dtype::U32), ("segmentation", Dtype::U8), ("depth", Dtype::F32)] {
            if c.views.contains_key(name) {
                expect(name, dtype)?;
            }
        }
        Ok(c)
    }

    fn bytes(&self, name: &str) -> Option<(&[u8], &[usize])> {
        self.views.get(name).map(|(r, shape, _)| (&self.map[r.clone()], shape.as_slice()))
    }

    fn grid(&self) -> (usize, usize) {
        let (b, _) = self.bytes("grid").expect("checked at open");
        let v: Vec<u32> = b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect();
        (v[0] as usize, v[1] as usize)
    }
}

/// Appends row `r` of tensor `name` (elements of `size` bytes) to `out`, decoded by `f`.
fn push_row<T>(c: &Chunk, name: &str, r: usize, size: usize, out: &mut Vec<T>, f: impl Fn(&[u8]) -> T) -> Option<Vec<usize>> {
    let (bytes, shape) = c.bytes(name)?;
    let per: usize = shape[1..].iter().product();
    out.extend(bytes[r * per * size..(r + 1) * per * size].chunks_exact(size).map(f));
    Some(shape[1..].to_vec())
}

fn f32_of(b: &[u8]) -> f32 {
    f32::from_le_bytes(b.try_into().unwrap())
}

/// The cached features of one key, `chunk` samples per file.
pub struct CachedFeatures {
    chunks: Vec<Chunk>,
    chunk: usize,
    len: usize,
}

impl CachedFeatures {
    /// Maps the chunk files `paths` (each full but the last) of `len` samples.
    pub fn open(paths: &[PathBuf], chunk: usize, len: usize, layout: Layout) -> Result<Self> {
        let chunks =
            paths.iter().enumerate().map(|(i, p)| Chunk::open(p, chunk.min(len - i * chunk), layout)).collect::<Result<Vec<_>>>()?;
        Ok(Self { chunks, chunk, len })
    }

    /// Checks one chunk file without keeping it.
    pub fn check(path: &Path, n: usize, layout: Layout) -> Result<()> {
        Chunk::open(path, n, layout).map(|_| ())
    }

    fn locate(&self, i: usize) -> Result<(&Chunk, usize)> {
        if i >= self.len {
            bail!("sample {i} out of range ({})", self.len);
        }
        Ok((&self.chunks[i / self.chunk], i % self.chunk))
    }

    fn gather_targets(&self, indices: &[usize]) -> Result<Targets> {
        let (first, _) = self.locate(indices[0])?;
        let (mut class, mut seg, mut depth) = (Vec::new(), Vec::new(), Vec::new());
        let mut size = (0, 0);
        for &i in indices {
            let (c, r) = self.locate(i)?;
            push_row(c, "class", r, 4, &mut class, |b| u32::from_le_bytes(b.try_into().unwrap()));
            if let Some(s) = push_row(c, "segmentation", r, 1, &mut seg, |b| b[0] as u32) {
                size = (s[0], s[1]);
            }
            if let Some(s) = push_row(c, "depth", r, 4, &mut depth, f32_of) {
                size = (s[0], s[1]);
            }
        }
        Ok(if first.views.contains_key("class") {
            Targets::Class(class)
        } else if first.views.contains_key("segmentation") {
            Targets::Segmentation { labels: seg, height: size.0, width: size.1 }
        } else if first.views.contains_key("depth") {
            Targets::Depth { metres: depth, height: size.0, width: size.1 }
        } else {
            Targets::None
        })
    }
}

impl BatchSource for CachedFeatures {
    fn len(&self) -> usize {
        self.len
    }

    fn batch(&mut self, indices: &[usize]) -> Result<Batch> {
        if indices.is_empty() {
            bail!("an empty batch");
        }
        let n = indices.len();
        let (first, _) = self.locate(indices[0])?;
        let grid = first.grid();
        let take = |name: &str| -> Result<Option<Tensor>> {
            if !first.views.contains_key(name) {
                return Ok(None);
            }
            let mut v = Vec::new();
            let mut row_shape = Vec::new();
            for &i in indices {
                let (c, r) = self.locate(i)?;
                row_shape = push_row(c, name, r, 4, &mut v, f32_of).with_context(|| format!("{}: no '{name}'", c.path.display()))?;
            }
            let shape: Vec<usize> = std::iter::once(n).chain(row_shape).collect();
            Ok(Some(Tensor::from_vec(v, shape, &Device::Cpu)?))
        };
        let cls = take("cls")?.expect("checked at open");
        let (patch_mean, patch) = (take("patch_mean")?, take("patch")?);
        Ok(Batch { cls, patch_mean, patch, grid, targets: self.gather_targets(indices)? })
    }

    fn targets(&mut self, indices: &[usize]) -> Result<Targets> {
        self.gather_targets(indices)
    }
}
