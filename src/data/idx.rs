//! MNIST / Fashion-MNIST IDX files (`train-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, …),
//! plain or gzip-compressed (`.gz`, as Debian's dataset-fashion-mnist ships them). Big-endian
//! header: magic (0x0803 images, 0x0801 labels), then one u32 per dimension.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{no_such_split, planar_u8_to_tensor, Dataset, Sample, Split, Target};

pub struct Idx {
    kind: String,
    root: PathBuf,
    split: Split,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

/// The file `name` or `name.gz` under `root`, decompressed.
fn read_maybe_gz(root: &Path, name: &str) -> Result<(PathBuf, Vec<u8>)> {
    let plain = root.join(name);
    let gz = root.join(format!("{name}.gz"));
    let path = if plain.is_file() { plain } else { gz };
    let raw = std::fs::read(&path).with_context(|| format!("{}: cannot read (nor {name})", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt or truncated gzip data", path.display()))?;
        Ok((path, out))
    } else {
        Ok((path, raw))
    }
}

/// Checks the header and returns the dimensions and the payload.
fn parse<'a>(path: &Path, bytes: &'a [u8], dims: usize) -> Result<(Vec<usize>, &'a [u8])> {
    let header = 4 + 4 * dims;
    if bytes.len() < header {
        bail!("{}: {} bytes is shorter than an IDX header", path.display(), bytes.len());
    }
    let magic = u32::from_be_bytes(bytes[..4].try_into().unwrap());
    if magic != 0x0800 + dims as u32 {
        bail!("{}: magic {magic:#010x}, expected {:#010x} (u8 data, {dims} dimensions)", path.display(), 0x0800 + dims);
    }
    let shape: Vec<usize> = (0..dims).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let payload = &bytes[header..];
    let Some(want) = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
        bail!("{}: header says {shape:?}, a size no file can hold", path.display());
    };
    if payload.len() != want {
        bail!("{}: header says {shape:?} = {want} bytes but {} follow (truncated?)", path.display(), payload.len());
    }
    Ok((shape, payload))
}

impl Idx {
    pub fn open(root: &Path, kind: &str, split: Split) -> Result<Self> {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
            _ => return Err(no_such_split(kind, split, &["train", "test"])),
        };
        let (ipath, ibytes) = read_maybe_gz(root, &format!("{prefix}-images-idx3-ubyte"))?;
        let (lpath, lbytes) = read_maybe_gz(root, &format!("{prefix}-labels-idx1-ubyte"))?;
        let (ishape, pixels) = parse(&ipath, &ibytes, 3)?;
        let (lshape, labels) = parse(&lpath, &lbytes, 1)?;
        if ishape[1] == 0 || ishape[2] == 0 {
            bail!("{}: images of {}x{} pixels", ipath.display(), ishape[1], ishape[2]);
        }
        if ishape[0] != lshape[0] {
            bail!("{}: {} labels for {} images in {}", lpath.display(), lshape[0], ishape[0], ipath.display());
        }
        if let Some(i) = labels.iter().position(|&l| l > 9) {
            bail!("{}: label {} of image {i} is outside 0..=9", lpath.display(), labels[i]);
        }
        Ok(Self {
            kind: kind.to_owned(),
            root: root.to_owned(),
            split,
            rows: ishape[1],
            cols: ishape[2],
            pixels: pixels.to_vec(),
            labels: labels.to_vec(),
        })
    }
}

impl Dataset for Idx {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        if index >= self.len() {
            bail!("index {index} out of range ({})", self.len());
        }
        let n = self.rows * self.cols;
        let image = planar_u8_to_tensor(&self.pixels[index * n..][..n], 1, self.rows, self.cols)?;
        Ok(Sample { image, target: Target::Class(self.labels[index] as u32) })
    }

    fn num_classes(&self) -> Option<usize> {
        Some(10)
    }

    fn describe(&self) -> String {
        format!("{}:{} [{}]", self.kind, self.root.display(), self.split)
    }
}
