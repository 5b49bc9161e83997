//! Named numeric matrices out of a MATLAB v5 `.mat` file (NYU-Depth-v2's `splits.mat`): the
//! 128-byte header, data elements (the small format too), matrices stored plain or
//! zlib-compressed, any numeric storage type widened to f64 (MATLAB stores doubles as the
//! smallest integer type that holds them). Every length is checked against the bytes left and
//! every count against the matrix's dimensions before anything is allocated; a compressed
//! element inflates only up to [`MAX_INFLATED`]. Cell arrays, structs, strings and sparse
//! matrices are skipped.

use std::io::Read;

use anyhow::{bail, Result};

/// Most bytes one compressed element may inflate to.
pub const MAX_INFLATED: u64 = 256 << 20;

const MI_INT8: u32 = 1;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

#[derive(Clone, Copy)]
struct Reader<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

/// One data element: its type and its bytes (padding excluded).
struct Element<'a> {
    kind: u32,
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u32_at(&self, at: usize) -> u32 {
        let b: [u8; 4] = self.bytes[at..at + 4].try_into().expect("4 bytes");
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }

    /// The element at the start of `self.bytes`, and what follows it (8-byte aligned unless
    /// compressed).
    fn next(&self) -> Result<(Element<'a>, Reader<'a>)> {
        if self.bytes.len() < 8 {
            bail!("a data element is cut short ({} bytes left of an 8-byte tag)", self.bytes.len());
        }
        let word = self.u32_at(0);
        if word >> 16 != 0 {
            // Small data element: type and length in one word, up to 4 bytes of data after it.
            let (kind, len) = (word & 0xffff, (word >> 16) as usize);
            if len > 4 {
                bail!("a small data element claims {len} bytes (at most 4)");
            }
            return Ok((Element { kind, data: &self.bytes[4..4 + len] }, Reader { bytes: &self.bytes[8..], ..*self }));
        }
        let len = self.u32_at(4) as usize;
        let left = self.bytes.len() - 8;
        if len > left {
            bail!("a data element of type {word} claims {len} bytes, {left} are left");
        }
        let padded = if word == MI_COMPRESSED { len } else { len.div_ceil(8).saturating_mul(8).min(left) };
        Ok((Element { kind: word, data: &self.bytes[8..8 + len] }, Reader { bytes: &self.bytes[8 + padded..], ..*self }))
    }
}

/// The values of the numeric matrix `name` in the `.mat` file `bytes`, column-major, widened to
/// f64; `None` when the file has no numeric matrix of that name.
pub fn numeric_matrix(bytes: &[u8], name: &str) -> Result<Option<Vec<f64>>> {
    if bytes.len() < 128 {
        bail!("{} bytes: shorter than a MATLAB v5 header (128)", bytes.len());
    }
    let big_endian = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        other => bail!("not a MATLAB v5 file (endian indicator {other:?}, expected \"IM\" or \"MI\")"),
    };
    find(Reader { bytes: &bytes[128..], big_endian }, name, 0)
}

fn find(mut r: Reader, name: &str, depth: usize) -> Result<Option<Vec<f64>>> {
    while !r.bytes.is_empty() {
        let (e, rest) = r.next()?;
        r = rest;
        let found = match e.kind {
            MI_MATRIX => matrix(Reader { bytes: e.data, ..r }, name)?,
            MI_COMPRESSED if depth == 0 => {
                let mut inflated = Vec::new();
                flate2::read::ZlibDecoder::new(e.data)
                    .take(MAX_INFLATED + 1)
                    .read_to_end(&mut inflated)
                    .map_err(|err| anyhow::anyhow!("a compressed element does not inflate: {err}"))?;
                if inflated.len() as u64 > MAX_INFLATED {
                    bail!("a compressed element inflates beyond {MAX_INFLATED} bytes");
                }
                find(Reader { bytes: &inflated, ..r }, name, depth + 1)?
            }
            _ => None,
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The matrix in `r` (its flags, dimensions, name and real part) if it is numeric and named
/// `wanted`.
fn matrix(r: Reader, wanted: &str) -> Result<Option<Vec<f64>>> {
    let (flags, r) = r.next()?;
    if flags.kind != MI_UINT32 || flags.data.len() != 8 {
        bail!("a matrix's array flags are of type {} and {} bytes (expected uint32, 8)", flags.kind, flags.data.len());
    }
    let class = Reader { bytes: flags.data, ..r }.u32_at(0) & 0xff;
    if !(6..=15).contains(&class) {
        return Ok(None); // cell, struct, object, char, sparse
    }
    let (dims, r) = r.next()?;
    if dims.kind != MI_INT32 || dims.data.len() < 8 || dims.data.len() % 4 != 0 {
        bail!("a matrix's dimensions are of type {} and {} bytes (expected int32, at least 2)", dims.kind, dims.data.len());
    }
    let d = Reader { bytes: dims.data, ..r };
    let mut count: usize = 1;
    for k in 0..dims.data.len() / 4 {
        let side = d.u32_at(4 * k) as i32;
        if side < 0 {
            bail!("a matrix has a negative dimension ({side})");
        }
        count =
            count.checked_mul(side as usize).filter(|&c| c <= 1 << 40).ok_or_else(|| anyhow::anyhow!("a matrix's dimensions overflow"))?;
    }
    let (name, r) = r.next()?;
    if name.kind != MI_INT8 || name.data != wanted.as_bytes() {
        return Ok(None);
    }
    let (real, _) = r.next()?;
    let (size, read): (usize, Widen) = match real.kind {
        1 => (1, |b, _| b[0] as i8 as f64),
        2 => (1, |b, _| b[0] as f64),
        3 => (2, |b, be| num(b, be, i16::from_be_bytes, i16::from_le_bytes) as f64),
        4 => (2, |b, be| num(b, be, u16::from_be_bytes, u16::from_le_bytes) as f64),
        5 => (4, |b, be| num(b, be, i32::from_be_bytes, i32::from_le_bytes) as f64),
        6 => (4, |b, be| num(b, be, u32::from_be_bytes, u32::from_le_bytes) as f64),
        7 => (4, |b, be| num(b, be, f32::from_be_bytes, f32::from_le_bytes) as f64),
        9 => (8, |b, be| num(b, be, f64::from_be_bytes, f64::from_le_bytes)),
        12 => (8, |b, be| num(b, be, i64::from_be_bytes, i64::from_le_bytes) as f64),
        13 => (8, |b, be| num(b, be, u64::from_be_bytes, u64::from_le_bytes) as f64),
        other => bail!("'{wanted}' stores its values as type {other}, not a number"),
    };
    if real.data.len() != count.saturating_mul(size) {
        bail!("'{wanted}' holds {} bytes for {count} values of {size} bytes", real.data.len());
    }
    Ok(Some(real.data.chunks_exact(size).map(|b| read(b, r.big_endian)).collect()))
}

/// Reads one stored value (its bytes, big-endian or not) as f64.
type Widen = fn(&[u8], bool) -> f64;

fn num<T, const N: usize>(b: &[u8], big_endian: bool, be: fn([u8; N]) -> T, le: fn([u8; N]) -> T) -> T {
    let a: [u8; N] = b.try_into().expect("a value's bytes");
    if big_endian {
        be(a)
    } else {
        le(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian v5 file by hand: one plain int32 matrix of two values stored as uint16,
    /// named `a`, then a compressed double matrix `b` of 1 value.
    fn file() -> Vec<u8> {
        let mut f = vec![b' '; 116];
        f.extend([0u8; 8]);
        f.extend([0x00, 0x01]);
        f.extend(b"IM");
        let tag = |f: &mut Vec<u8>, kind: u32, len: usize| {
            f.extend(kind.to_le_bytes());
            f.extend((len as u32).to_le_bytes());
        };
        let matrix = |class: u32, dims: [i32; 2], name: &str, kind: u32, data: &[u8]| {
            let mut m = Vec::new();
            tag(&mut m, MI_UINT32, 8);
            m.extend(class.to_le_bytes());
            m.extend([0u8; 4]);
            tag(&mut m, MI_INT32, 8);
            m.extend(dims[0].to_le_bytes());
            m.extend(dims[1].to_le_bytes());
            // The name in the small format.
            m.extend((MI_INT8 | (name.len() as u32) << 16).to_le_bytes());
            m.extend(name.as_bytes());
            m.extend(vec![0u8; 4 - name.len()]);
            tag(&mut m, kind, data.len());
            m.extend(data);
            m.extend(vec![0u8; data.len().div_ceil(8) * 8 - data.len()]);
            let mut e = Vec::new();
            tag(&mut e, MI_MATRIX, m.len());
            e.extend(m);
            e
        };
        f.extend(matrix(12, [2, 1], "a", 4, &[7, 0, 9, 0]));
        let inner = matrix(6, [1, 1], "b", 9, &2.5f64.to_le_bytes());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, &inner).unwrap();
        let z = z.finish().unwrap();
        tag(&mut f, MI_COMPRESSED, z.len());
        f.extend(z);
        f
    }

    #[test]
    fn reads_plain_and_compressed_matrices_and_refuses_damage() {
        let f = file();
        assert_eq!(numeric_matrix(&f, "a").unwrap(), Some(vec![7.0, 9.0]));
        assert_eq!(numeric_matrix(&f, "b").unwrap(), Some(vec![2.5]));
        assert_eq!(numeric_matrix(&f, "c").unwrap(), None);
        // Dimensions whose product overflows; a length beyond the file; a cut file; no header.
        let mut overflow = f.clone();
        let dims = 128 + 8 + 16 + 8;
        overflow[dims..dims + 8].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f]);
        assert!(numeric_matrix(&overflow, "a").unwrap_err().to_string().contains("overflow"));
        let mut long = f.clone();
        long[132..136].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(numeric_matrix(&long, "a").unwrap_err().to_string().contains("claims"));
        assert!(numeric_matrix(&f[..150], "a").is_err());
        assert!(numeric_matrix(&f[..100], "a").is_err());
        let mut endian = f.clone();
        endian[126] = b'X';
        assert!(numeric_matrix(&endian, "a").unwrap_err().to_string().contains("endian indicator"));
    }
}
