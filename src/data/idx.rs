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

/// Largest payload read (MNIST's training images are 47 MB).
const MAX_PAYLOAD: usize = 1 << 31;

/// The file `name` or `name.gz` under `root`: its header checked (magic, `dims` sizes), then
/// its payload — for a gzip file, inflated only once the header's size is known to be sane (no
/// more than deflate's ~1032× of the compressed length), and never past it.
fn read_idx(root: &Path, name: &str, dims: usize) -> Result<(PathBuf, Vec<usize>, Vec<u8>)> {
    let plain = root.join(name);
    let gz = root.join(format!("{name}.gz"));
    let path = if plain.is_file() { plain } else { gz };
    let shown = path.display().to_string();
    let file = std::fs::File::open(&path).with_context(|| format!("{shown}: cannot read (nor {name})"))?;
    let file_len = file.metadata().with_context(|| format!("{shown}: cannot read"))?.len();
    let mut file = std::io::BufReader::new(file);
    let mut magic = [0u8; 2];
    let got = read_up_to(&mut file, &mut magic).with_context(|| format!("{shown}: cannot read"))?;
    let head = std::io::Cursor::new(magic[..got].to_vec()).chain(file);
    let (mut reader, limit): (Box<dyn Read>, u64) = if magic == [0x1f, 0x8b] {
        (Box::new(flate2::read::GzDecoder::new(head)), file_len.saturating_mul(1032).saturating_add(1024))
    } else {
        (Box::new(head), file_len)
    };
    let corrupt = |e: std::io::Error| anyhow::anyhow!("{shown}: corrupt or truncated gzip data: {e}");
    let mut header = vec![0u8; 4 + 4 * dims];
    let got = read_up_to(&mut reader, &mut header).map_err(corrupt)?;
    if got < header.len() {
        bail!("{shown}: {got} bytes is shorter than an IDX header");
    }
    let magic = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
    if magic != 0x0800 + dims as u32 {
        bail!("{shown}: magic {magic:#010x}, expected {:#010x} (u8 data, {dims} dimensions)", 0x0800 + dims);
    }
    let shape: Vec<usize> =
        (0..dims).map(|i| u32::from_be_bytes(header[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize).collect();
    let Some(want) = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&w| w <= MAX_PAYLOAD) else {
        bail!("{shown}: header says {shape:?}, a size no file can hold");
    };
    if want as u64 > limit {
        bail!("{shown}: header says {shape:?} = {want} bytes, more than this {file_len}-byte file can hold (truncated?)");
    }
    let mut payload = Vec::with_capacity(want);
    reader.take(want as u64 + 1).read_to_end(&mut payload).map_err(corrupt)?;
    if payload.len() != want {
        bail!("{shown}: header says {shape:?} = {want} bytes but {} follow (truncated?)", payload.len());
    }
    Ok((path, shape, payload))
}

/// Reads until `buf` is full or the input ends; the count read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Idx {
    pub fn open(root: &Path, kind: &str, split: Split) -> Result<Self> {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
            _ => return Err(no_such_split(kind, split, &["train", "test"])),
        };
        let (ipath, ishape, pixels) = read_idx(root, &format!("{prefix}-images-idx3-ubyte"), 3)?;
        let (lpath, lshape, labels) = read_idx(root, &format!("{prefix}-labels-idx1-ubyte"), 1)?;
        if ishape[1] == 0 || ishape[2] == 0 {
            bail!("{}: images of {}x{} pixels", ipath.display(), ishape[1], ishape[2]);
        }
        if ishape[0] != lshape[0] {
            bail!("{}: {} labels for {} images in {}", lpath.display(), lshape[0], ishape[0], ipath.display());
        }
        if let Some(i) = labels.iter().position(|&l| l > 9) {
            bail!("{}: label {} of image {i} is outside 0..=9", lpath.display(), labels[i]);
        }
        Ok(Self { kind: kind.to_owned(), root: root.to_owned(), split, rows: ishape[1], cols: ishape[2], pixels, labels })
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
