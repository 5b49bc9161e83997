//! Named arrays written row by row (a batch at a time, never all in memory) to one `.safetensors`
//! file, one `.npz` archive (numpy's `np.load` gives a dict), or `.npy` files (the path names the
//! first array; the others go beside it as `STEM_NAME.npy`). Each array streams into a part file
//! beside the output; [`ArrayWriter::finish`] assembles the outputs and renames them into place,
//! so a killed run leaves no half-written output.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Elem {
    F32,
    I64,
}

impl Elem {
    fn safetensors(self) -> &'static str {
        match self {
            Elem::F32 => "F32",
            Elem::I64 => "I64",
        }
    }
    fn numpy(self) -> &'static str {
        match self {
            Elem::F32 => "<f4",
            Elem::I64 => "<i8",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Safetensors,
    Npz,
    Npy,
}

struct Stream {
    name: String,
    elem: Option<Elem>,
    row_shape: Option<Vec<usize>>,
    rows: usize,
    bytes: u64,
    part: PathBuf,
    out: BufWriter<File>,
}

pub struct ArrayWriter {
    path: PathBuf,
    format: Format,
    streams: Vec<Stream>,
}

fn part_path(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl ArrayWriter {
    /// A writer of the arrays `names` (in that order) to `path`, whose extension picks the format.
    pub fn create(path: &Path, names: &[&str]) -> Result<Self> {
        let format = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("safetensors") => Format::Safetensors,
            Some("npz") => Format::Npz,
            Some("npy") => Format::Npy,
            _ => bail!("{}: write arrays to a .safetensors, .npz or .npy file", path.display()),
        };
        let mut streams = Vec::new();
        for name in names {
            let part = part_path(path, &format!(".{name}.part"));
            let file = File::create(&part).with_context(|| format!("{}: cannot create", part.display()))?;
            streams.push(Stream {
                name: name.to_string(),
                elem: None,
                row_shape: None,
                rows: 0,
                bytes: 0,
                part,
                out: BufWriter::new(file),
            });
        }
        Ok(Self { path: path.to_path_buf(), format, streams })
    }

    fn stream(&mut self, name: &str, elem: Elem, row_shape: &[usize], values: usize) -> Result<&mut Stream> {
        let path = self.path.display().to_string();
        let s = self.streams.iter_mut().find(|s| s.name == name).with_context(|| format!("{path}: no array '{name}'"))?;
        let per: usize = row_shape.iter().product();
        if per == 0 || !values.is_multiple_of(per) {
            bail!("{path}: '{name}': {values} values are not whole rows of {row_shape:?}");
        }
        match (&s.row_shape, s.elem) {
            (Some(shape), Some(e)) if shape != row_shape || e != elem => {
                bail!("{path}: '{name}' has rows of {shape:?} ({e:?}); these are {row_shape:?} ({elem:?}): images of different sizes?")
            }
            _ => {}
        }
        s.row_shape = Some(row_shape.to_vec());
        s.elem = Some(elem);
        s.rows += values / per;
        Ok(s)
    }

    /// Appends rows of shape `row_shape` to array `name`.
    pub fn append_f32(&mut self, name: &str, row_shape: &[usize], values: &[f32]) -> Result<()> {
        self.append(name, Elem::F32, row_shape, values.len(), values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn append_i64(&mut self, name: &str, row_shape: &[usize], values: &[i64]) -> Result<()> {
        self.append(name, Elem::I64, row_shape, values.len(), values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// Appends `count` values of `elem`, as their little-endian `bytes`.
    fn append(&mut self, name: &str, elem: Elem, row_shape: &[usize], count: usize, bytes: Vec<u8>) -> Result<()> {
        let s = self.stream(name, elem, row_shape, count)?;
        s.bytes += bytes.len() as u64;
        s.out.write_all(&bytes).with_context(|| format!("{}: cannot write", s.part.display()))
    }

    /// Writes the outputs; returns their paths.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        for s in &mut self.streams {
            s.out.flush().with_context(|| format!("{}: cannot write", s.part.display()))?;
            if s.elem.is_none() {
                bail!("{}: no rows were written to '{}'", self.path.display(), s.name);
            }
        }
        let written = match self.format {
            Format::Safetensors => vec![self.safetensors()?],
            Format::Npy => self.npy_files()?,
            Format::Npz => vec![self.npz()?],
        };
        for s in &self.streams {
            let _ = std::fs::remove_file(&s.part);
        }
        Ok(written)
    }

    fn shape(s: &Stream) -> Vec<usize> {
        let mut shape = vec![s.rows];
        shape.extend(s.row_shape.as_deref().unwrap_or(&[]));
        shape
    }

    fn copy_part(s: &Stream, out: &mut dyn Write) -> Result<()> {
        let mut f = File::open(&s.part).with_context(|| format!("{}: cannot read back", s.part.display()))?;
        let copied = std::io::copy(&mut f, out)?;
        if copied != s.bytes {
            bail!("{}: {copied} bytes read back of {}", s.part.display(), s.bytes);
        }
        Ok(())
    }

    /// Writes `path` through a temporary file beside it, synced, then renamed into place.
    fn atomically(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<PathBuf> {
        let tmp = crate::atomic::tmp_beside(path);
        let mut out = BufWriter::new(File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?);
        write(&mut out)?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        crate::atomic::commit(&tmp, path)?;
        Ok(path.to_path_buf())
    }

    fn safetensors(&self) -> Result<PathBuf> {
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for s in &self.streams {
            let dtype = s.elem.expect("checked").safetensors();
            header.insert(
                s.name.clone(),
                serde_json::json!({ "dtype": dtype, "shape": Self::shape(s), "data_offsets": [offset, offset + s.bytes] }),
            );
            offset += s.bytes;
        }
        let mut text = serde_json::to_string(&serde_json::Value::Object(header))?;
        while text.len() % 8 != 0 {
            text.push(' ');
        }
        Self::atomically(&self.path, |out| {
            out.write_all(&(text.len() as u64).to_le_bytes())?;
            out.write_all(text.as_bytes())?;
            self.streams.iter().try_for_each(|s| Self::copy_part(s, out))
        })
    }

    /// numpy's .npy header (format 1.0) for a stream.
    fn npy_header(s: &Stream) -> Vec<u8> {
        let shape = Self::shape(s);
        let dims = match shape.len() {
            1 => format!("({},)", shape[0]),
            _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let mut dict = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}", s.elem.expect("checked").numpy());
        while (10 + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((dict.len() as u16).to_le_bytes());
        out.extend(dict.as_bytes());
        out
    }

    fn npy_files(&self) -> Result<Vec<PathBuf>> {
        let stem = self.path.file_stem().and_then(|s| s.to_str()).unwrap_or("arrays").to_string();
        let mut written = Vec::new();
        for (i, s) in self.streams.iter().enumerate() {
            let path = if i == 0 { self.path.clone() } else { self.path.with_file_name(format!("{stem}_{}.npy", s.name)) };
            written.push(Self::atomically(&path, |out| {
                out.write_all(&Self::npy_header(s))?;
                Self::copy_part(s, out)
            })?);
        }
        Ok(written)
    }

    fn npz(&self) -> Result<PathBuf> {
        Self::atomically(&self.path, |out| {
            let mut zip = zip::ZipWriter::new(out);
            let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
            for s in &self.streams {
                zip.start_file(format!("{}.npy", s.name), options)?;
                zip.write_all(&Self::npy_header(s))?;
                Self::copy_part(s, &mut zip)?;
            }
            zip.finish()?;
            Ok(())
        })
    }
}
