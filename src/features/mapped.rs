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
        c.shape(n, layout)?;
        Ok(c)
    }

    /// Checks every tensor's element type, rank and sizes against `n` samples of `layout` (a
    /// chunk is a file: it may have been damaged or replaced), and returns the per-sample shapes.
    fn shape(&self, n: usize, layout: Layout) -> Result<ChunkShape> {
        let file = self.path.display();
        let get = |name: &str, dtype: Dtype, rank: usize| -> Result<Option<&[usize]>> {
            let Some((_, shape, d)) = self.views.get(name) else { return Ok(None) };
            if *d != dtype || shape.len() != rank || shape[0] != n || shape[1..].contains(&0) {
                bail!("{file}: cached '{name}' is {d:?} {shape:?}, expected {dtype:?} of rank {rank} with {n} rows and no empty side");
            }
            Ok(Some(shape))
        };
        let need = |name: &str, dtype: Dtype, rank: usize| -> Result<&[usize]> {
            get(name, dtype, rank)?.ok_or_else(|| anyhow::anyhow!("{file}: cached chunk has no '{name}'"))
        };
        let width = need("cls", Dtype::F32, 2)?[1];
        let grid = match self.views.get("grid") {
            Some((r, s, Dtype::U32)) if s == &[2] => {
                let b = &self.map[r.clone()];
                let side = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]) as usize;
                (side(0), side(1))
            }
            _ => bail!("{file}: cached chunk has no patch grid"),
        };
        // Raw pixels have no patches: their grid is 0x0, and only a pooled layout may use them.
        let pixels = grid == (0, 0) && !matches!(layout, Layout::Tokens | Layout::PreNormTokens);
        if !pixels && (grid.0 == 0 || grid.1 == 0 || grid.0 * grid.1 > MAX_TOKENS) {
            bail!("{file}: cached patch grid {}x{} is empty or larger than any image's", grid.0, grid.1);
        }
        if let Some(m) = get("patch_mean", Dtype::F32, 2)? {
            if m[1] != width {
                bail!("{file}: cached 'patch_mean' is {m:?}, expected [{n}, {width}]");
            }
        }
        if matches!(layout, Layout::Tokens | Layout::PreNormTokens) {
            let p = need("patch", Dtype::F32, 3)?;
            if p[1] != grid.0 * grid.1 || p[2] != width {
                bail!("{file}: cached 'patch' is {p:?}, expected [{n}, {}, {width}] for its {}x{} grid", grid.0 * grid.1, grid.0, grid.1);
            }
        }
        let mut target = None;
        if let Some((r, _, _)) = get("class", Dtype::U32, 1)?.and(self.views.get("class")) {
            let b = &self.map[r.clone()];
            if let Some(l) = b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).find(|&l| l as usize >= MAX_CLASSES) {
                bail!("{file}: cached class label {l} is beyond any class count ({MAX_CLASSES})");
            }
            target = Some(vec![]);
        }
        for (name, dtype) in [("segmentation", Dtype::U8), ("depth", Dtype::F32)] {
            if let Some(s) = get(name, dtype, 3)? {
                if target.is_some() || s[1].saturating_mul(s[2]) > MAX_PIXELS {
                    bail!("{file}: cached '{name}' {s:?} beside other targets, or larger than any label map");
                }
                target = Some(s[1..].to_vec());
            }
        }
        Ok(ChunkShape { width, grid, target })
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

/// Most patch tokens a cached grid may have, and most pixels of a cached label map.
const MAX_TOKENS: usize = 1 << 20;
const MAX_PIXELS: usize = 1 << 28;
/// Labels at or above this are damage, not classes (ImageNet-22k has 21,841).
pub const MAX_CLASSES: usize = 1 << 20;

/// What one sample of a chunk holds: the feature width, the patch grid, and the target's shape
/// (`[]` for a class, `[H, W]` for a map, none without targets). Chunks of one key agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkShape {
    pub width: usize,
    pub grid: (usize, usize),
    pub target: Option<Vec<usize>>,
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
        if chunk == 0 || len == 0 || paths.len() != len.div_ceil(chunk) {
            bail!("{} chunk files for {len} samples of {chunk} per chunk", paths.len());
        }
        let chunks =
            paths.iter().enumerate().map(|(i, p)| Chunk::open(p, chunk.min(len - i * chunk), layout)).collect::<Result<Vec<_>>>()?;
        let first = chunks[0].shape(chunk.min(len), layout)?;
        for (i, c) in chunks.iter().enumerate().skip(1) {
            let s = c.shape(chunk.min(len - i * chunk), layout)?;
            if s != first {
                bail!("{}: cached features of shape {s:?}, unlike the first chunk's {first:?}", c.path.display());
            }
        }
        Ok(Self { chunks, chunk, len })
    }

    /// Checks one chunk file without keeping it; returns what its samples hold.
    pub fn check(path: &Path, n: usize, layout: Layout) -> Result<ChunkShape> {
        Chunk::open(path, n, layout)?.shape(n, layout)
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
