//! Structure-aware mutations of a reader's seed files, deterministic from a seed: generic byte
//! mutations (bit flips, overwrites with interesting values, size fields inflated, truncation,
//! chunks duplicated or removed) and, per format, mutations of what the format is made of — the
//! entries of a zip (pickle, npy) re-zipped, a safetensors header's JSON, an ONNX file's protobuf
//! fields re-encoded, PNG chunks with their CRCs fixed, the inside of a gzip stream recompressed,
//! IDX and record headers, TOML and list files edited as text.
#![allow(dead_code)]

use std::io::{Read, Write};

use robust_ssl::rng::SplitMix64;

use crate::hostile::Reader;

pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// The case seed of `reader`'s case `index`: every case is reproducible alone.
pub fn case_seed(reader: Reader, index: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in reader.name().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

const INTERESTING_32: [u32; 16] =
    [0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x1_0000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF, 0x1000_0000, 0x0100_0000];
const INTERESTING_64: [u64; 8] = [1 << 32, (1 << 32) - 1, 1 << 40, 1 << 62, 1 << 63, i64::MAX as u64, u64::MAX, 0x8000_0000];

fn interesting_u64(rng: &mut Rng) -> u64 {
    if rng.one_in(3) {
        rng.pick(&INTERESTING_64)
    } else {
        rng.pick(&INTERESTING_32) as u64
    }
}

/// Which mutations fit a reader's file.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A zip archive of pickles and storages (torch) or `.npy` arrays (numpy).
    Zip,
    Safetensors,
    Protobuf,
    Png,
    /// A PNG, JPEG, BMP, TIFF or WebP file.
    Image,
    GzIdx,
    Idx,
    /// Fixed-size records (CIFAR, STL-10): `record` bytes, labels first.
    Records(usize),
    Json,
    Toml,
    Lines,
    /// A binary container mutated byte-wise, the first `hot` bytes more often.
    Binary(usize),
}

fn kind(reader: Reader) -> Kind {
    match reader {
        Reader::Pth | Reader::PublishedHead | Reader::ImgvizVoc | Reader::ImgvizRgbd => Kind::Zip,
        Reader::Safetensors | Reader::Head | Reader::CacheChunk => Kind::Safetensors,
        Reader::Onnx => Kind::Protobuf,
        Reader::VocLabel | Reader::Ade20k | Reader::Cityscapes | Reader::NyuDepth => Kind::Png,
        Reader::Image | Reader::ImageFolder => Kind::Image,
        Reader::MnistGz => Kind::GzIdx,
        Reader::Mnist => Kind::Idx,
        Reader::Cifar10 => Kind::Records(3073),
        Reader::Cifar100 => Kind::Records(3074),
        Reader::Stl10 => Kind::Records(3 * 96 * 96),
        Reader::HfConfig => Kind::Json,
        Reader::Experiment => Kind::Toml,
        Reader::VocList | Reader::NyuList => Kind::Lines,
        Reader::NyuMat => Kind::Binary(4096),
        Reader::NyuSplits => Kind::Binary(512),
    }
}

/// One to four mutations of `seed`, each structure-aware three times in four.
pub fn mutate(reader: Reader, seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    let k = kind(reader);
    for _ in 0..1 + rng.below(4) {
        data = if rng.one_in(4) {
            let mut d = data;
            bytes(&mut d, rng, 0..0);
            d
        } else {
            structured(k, data, rng)
        };
    }
    data
}

fn structured(k: Kind, data: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    match k {
        Kind::Zip => zip_entries(data, rng),
        Kind::Safetensors => safetensors(data, rng),
        Kind::Protobuf => protobuf(data, rng),
        Kind::Png => png(data, rng),
        Kind::Image if data.starts_with(b"\x89PNG") => png(data, rng),
        Kind::Image => {
            let mut d = data;
            bytes(&mut d, rng, 0..64);
            d
        }
        Kind::GzIdx => gz_idx(data, rng),
        Kind::Idx => {
            let mut d = data;
            idx(&mut d, rng);
            d
        }
        Kind::Records(r) => {
            let mut d = data;
            records(&mut d, r, rng);
            d
        }
        Kind::Json => json_file(data, rng),
        Kind::Toml => toml(data, rng),
        Kind::Lines => lines(data, rng),
        Kind::Binary(hot) => {
            let mut d = data;
            bytes(&mut d, rng, 0..hot);
            d
        }
    }
}

// ---- bytes ----

/// A position, inside `hot` three times in four when it is not empty.
fn position(len: usize, hot: &std::ops::Range<usize>, rng: &mut Rng) -> usize {
    let hot = hot.start.min(len)..hot.end.min(len);
    if !hot.is_empty() && !rng.one_in(4) {
        hot.start + rng.below(hot.len())
    } else {
        rng.below(len)
    }
}

fn put(data: &mut [u8], at: usize, v: &[u8]) {
    let n = v.len().min(data.len().saturating_sub(at));
    data[at..at + n].copy_from_slice(&v[..n]);
}

/// A generic mutation, at a position in `hot` more often.
pub fn bytes(data: &mut Vec<u8>, rng: &mut Rng, hot: std::ops::Range<usize>) {
    if data.is_empty() {
        data.extend((0..1 + rng.below(16)).map(|_| rng.next() as u8));
        return;
    }
    let len = data.len();
    let at = position(len, &hot, rng);
    match rng.below(11) {
        0 => data[at] ^= 1 << rng.below(8),
        1 => data[at] = rng.pick(&[0u8, 0xFF, 0x7F, 0x80, 1, 2]),
        2 | 3 => {
            let v = interesting_u64(rng);
            let w = rng.pick(&[2usize, 4, 4, 8]);
            if rng.one_in(2) {
                put(data, at, &v.to_le_bytes()[..w]);
            } else {
                put(data, at, &v.to_be_bytes()[8 - w..]);
            }
        }
        4 => inflate_size_field(data, rng),
        5 => data.truncate(rng.below(len)),
        6 => {
            // Duplicate a chunk.
            let n = 1 + rng.below((len - at).min(4096));
            let chunk = data[at..at + n].to_vec();
            let to = rng.below(len + 1);
            data.splice(to..to, chunk);
        }
        7 => {
            let n = 1 + rng.below((len - at).min(4096));
            data.drain(at..at + n);
        }
        8 => {
            let n = 1 + rng.below(32);
            let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(at..at, junk);
        }
        9 => {
            // Add or subtract a little from a word.
            let w = rng.pick(&[1usize, 2, 4]);
            if at + w <= len {
                let mut b = [0u8; 8];
                b[..w].copy_from_slice(&data[at..at + w]);
                let v = u64::from_le_bytes(b).wrapping_add(rng.pick(&[1u64, 2, 16, u64::MAX, u64::MAX - 15]));
                put(data, at, &v.to_le_bytes()[..w]);
            }
        }
        _ => data.extend((0..1 + rng.below(64)).map(|_| rng.next() as u8)),
    }
}

/// Finds a 32- or 64-bit word (either byte order) whose value could be a size or an offset in
/// the file, and makes it larger or off by one.
fn inflate_size_field(data: &mut [u8], rng: &mut Rng) {
    let len = data.len();
    for _ in 0..64 {
        let at = rng.below(len.saturating_sub(3).max(1));
        if at + 4 > len {
            return;
        }
        let wide = at + 8 <= len && rng.one_in(3);
        let le = rng.one_in(2);
        let v = if wide {
            let b: [u8; 8] = data[at..at + 8].try_into().unwrap();
            if le {
                u64::from_le_bytes(b)
            } else {
                u64::from_be_bytes(b)
            }
        } else {
            let b: [u8; 4] = data[at..at + 4].try_into().unwrap();
            (if le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }) as u64
        };
        if v < 2 || v > len as u64 * 4 {
            continue;
        }
        let new = match rng.below(5) {
            0 => v + 1,
            1 => v - 1,
            2 => v.saturating_mul(2),
            3 => v.saturating_mul(1 << 12),
            _ => {
                if wide {
                    rng.pick(&INTERESTING_64)
                } else {
                    0xFFFF_FFFF
                }
            }
        };
        if wide {
            put(data, at, &if le { new.to_le_bytes() } else { new.to_be_bytes() });
        } else {
            let n = new.min(u32::MAX as u64) as u32;
            put(data, at, &if le { n.to_le_bytes() } else { n.to_be_bytes() });
        }
        return;
    }
}

// ---- zip: torch pickles and storages, numpy arrays ----

fn unzip(data: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(data)).ok()?;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).ok()?;
        let mut b = Vec::new();
        f.read_to_end(&mut b).ok()?;
        out.push((f.name().ok()?.to_string(), b));
    }
    Some(out)
}

fn zip_entries(data: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let Some(mut entries) = unzip(&data).filter(|e| !e.is_empty() && !rng.one_in(6)) else {
        // The archive itself: its local headers and central directory.
        let mut d = data;
        let tail = d.len().saturating_sub(2048)..d.len();
        bytes(&mut d, rng, tail);
        return d;
    };
    let i = match entries.iter().position(|(n, _)| n.ends_with(".pkl")) {
        Some(p) if rng.one_in(2) => p,
        _ => rng.below(entries.len()),
    };
    match rng.below(8) {
        0 => {
            entries.remove(i);
        }
        1 => {
            let (name, _) = &mut entries[i];
            match rng.below(3) {
                0 => name.push('x'),
                1 => {
                    name.pop();
                }
                _ => *name = name.replace("data", "dat"),
            }
        }
        _ => {
            let (name, body) = &mut entries[i];
            if name.ends_with(".pkl") {
                pickle(body, rng);
            } else if name.ends_with(".npy") {
                npy(body, rng);
            } else {
                // A tensor storage: shorter, longer, or touched.
                match rng.below(3) {
                    0 => body.truncate(rng.below(body.len() + 1)),
                    1 => body.extend(std::iter::repeat_n(0u8, 1 + rng.below(64))),
                    _ => bytes(body, rng, 0..0),
                }
            }
        }
    }
    // Two entries of one name cannot be written: keep the first.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|(n, _)| seen.insert(n.clone()));
    crate::hostile::zip_of(&entries)
}

/// Pickle opcodes a torch checkpoint is made of.
const PICKLE_OPS: &[u8] = b"()t}]esuRbhqrN.\x85\x86\x87\x88\x89KMJX\x8a\x8c\x94";

fn pickle(p: &mut Vec<u8>, rng: &mut Rng) {
    if p.is_empty() {
        return;
    }
    let len = p.len();
    match rng.below(8) {
        0 | 1 => {
            // An integer argument (sizes, strides, offsets) set to an interesting value.
            let ints: Vec<usize> = (0..len).filter(|&i| matches!(p[i], b'K' | b'M' | b'J')).collect();
            if ints.is_empty() {
                return bytes(p, rng, 0..0);
            }
            let at = rng.pick(&ints);
            let v = interesting_u64(rng);
            match p[at] {
                b'K' => put(p, at + 1, &[v as u8]),
                b'M' => put(p, at + 1, &(v as u16).to_le_bytes()),
                _ => put(p, at + 1, &(v as u32).to_le_bytes()),
            }
        }
        2 | 3 => {
            // Drop a few bytes: a tuple loses an element (short `_rebuild_tensor_v2` args).
            let at = rng.below(len);
            let n = (1 + rng.below(6)).min(len - at);
            p.drain(at..at + n);
        }
        4 => {
            let at = rng.below(len);
            p[at] = rng.pick(PICKLE_OPS);
        }
        5 => {
            // A string's length field.
            let strs: Vec<usize> = (0..len.saturating_sub(5)).filter(|&i| p[i] == b'X').collect();
            if let Some(&at) = strs.get(rng.below(strs.len().max(1))) {
                put(p, at + 1, &(interesting_u64(rng) as u32).to_le_bytes());
            }
        }
        6 => {
            let at = rng.below(len);
            let n = (1 + rng.below(24)).min(len - at);
            let chunk = p[at..at + n].to_vec();
            let to = rng.below(len);
            p.splice(to..to, chunk);
        }
        _ => p.truncate(rng.below(len)),
    }
}

fn npy(b: &mut Vec<u8>, rng: &mut Rng) {
    let header_end = b.iter().position(|&c| c == b'\n').map_or(b.len().min(128), |p| p + 1);
    let Ok(header) = std::str::from_utf8(&b[..header_end.min(b.len())]).map(str::to_string) else {
        return bytes(b, rng, 0..header_end);
    };
    let new = match rng.below(5) {
        0 => {
            // A dimension of the shape.
            let dims: Vec<(usize, usize)> = number_spans(&header).into_iter().filter(|&(s, _)| s > 10).collect();
            if dims.is_empty() {
                return bytes(b, rng, 0..header_end);
            }
            let (s, e) = rng.pick(&dims);
            let v = rng.pick(&["0", "1", "4294967295", "9223372036854775807", "99999999999", "-1", "65536"]);
            format!("{}{v}{}", &header[..s], &header[e..])
        }
        1 => {
            let d = rng.pick(&["'<f4'", "'|u1'", "'<i4'", "'|b1'", "'<f8'", "'>i4'", "'<c8'", "'O'", "'<U3'", "'zz'"]);
            match (header.find("'descr': "), header.find(", 'fortran")) {
                (Some(s), Some(e)) if s + 9 < e => format!("{}{d}{}", &header[..s + 9], &header[e..]),
                _ => header,
            }
        }
        2 => header.replace("False", "True"),
        3 => header.replace("), }", ", 2), }").replace(",), }", ", 1), }"),
        _ => {
            let mut d = b.clone();
            bytes(&mut d, rng, 0..header_end);
            *b = d;
            return;
        }
    };
    let mut out = new.into_bytes();
    if out.len() >= 10 && rng.below(4) != 0 {
        // Keep the header length field true to the new header.
        let hl = (out.len() - 10) as u16;
        out[8..10].copy_from_slice(&hl.to_le_bytes());
    }
    out.extend_from_slice(&b[header_end.min(b.len())..]);
    *b = out;
}

/// Byte spans of the decimal numbers in `s`.
fn number_spans(s: &str) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s0 = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'e') {
                i += 1;
            }
            out.push((s0, i));
        } else {
            i += 1;
        }
    }
    out
}

// ---- safetensors ----

const DTYPES: &[&str] = &["F32", "F16", "BF16", "F64", "U8", "I8", "I32", "I64", "U32", "U64", "BOOL", "F8_E4M3", "XX"];
const NAMES: &[&str] = &[
    "cls",
    "patch",
    "patch_mean",
    "grid",
    "class",
    "segmentation",
    "depth",
    "linear.weight",
    "linear.bias",
    "decode_head.conv_seg.weight",
    "decode_head.bn.running_var",
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "blocks.0.norm1.weight",
    "blocks.7.norm1.weight",
    "register_tokens",
    "blocks.0.mlp.fc1.weight",
];

fn safetensors(data: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let n = data.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize).unwrap_or(usize::MAX);
    let header = (n <= data.len().saturating_sub(8)).then(|| serde_json::from_slice::<serde_json::Value>(&data[8..8 + n]).ok()).flatten();
    let Some(mut header) = header.filter(|h| h.is_object() && !rng.one_in(8)) else {
        let mut d = data;
        bytes(&mut d, rng, 0..n.min(4096).saturating_add(8));
        return d;
    };
    let body = &data[8 + n..];
    let obj = header.as_object_mut().unwrap();
    let names: Vec<String> = obj.keys().filter(|k| *k != "__metadata__").cloned().collect();
    match rng.below(10) {
        0..=5 if !names.is_empty() => {
            let name = &names[rng.below(names.len())];
            let t = obj.get_mut(name).unwrap();
            match rng.below(6) {
                0 | 1 => {
                    if let Some(shape) = t.get_mut("shape").and_then(|s| s.as_array_mut()) {
                        match rng.below(4) {
                            0 => shape.push(serde_json::json!(rng.pick(&[1u64, 2, 0, 1 << 31]))),
                            1 => {
                                shape.pop();
                            }
                            _ if !shape.is_empty() => {
                                let i = rng.below(shape.len());
                                shape[i] = serde_json::json!(rng.pick(&[0u64, 1, 2, 3, 1 << 31, (1 << 32) - 1, 1 << 40, u64::MAX / 2]));
                            }
                            _ => shape.push(serde_json::json!(0)),
                        }
                    }
                }
                2 => {
                    if let Some(o) = t.as_object_mut() {
                        o.insert("dtype".into(), serde_json::json!(rng.pick(DTYPES)));
                    }
                }
                3 => {
                    if let Some(off) = t.get_mut("data_offsets").and_then(|s| s.as_array_mut()) {
                        if !off.is_empty() {
                            let i = rng.below(off.len());
                            let v = off[i].as_u64().unwrap_or(0);
                            off[i] = serde_json::json!(rng.pick(&[0, v + 1, v.saturating_sub(1), v * 2, 1 << 40, body.len() as u64 + 4]));
                        }
                    }
                }
                4 => {
                    obj.remove(name);
                }
                _ => {
                    let v = obj.remove(name).unwrap();
                    obj.insert(rng.pick(NAMES).to_string(), v);
                }
            }
        }
        6 | 7 => {
            // The metadata: a head's JSON, mutated inside its string.
            let meta = obj.entry("__metadata__").or_insert_with(|| serde_json::json!({}));
            if let Some(m) = meta.as_object_mut() {
                let keys: Vec<String> = m.keys().cloned().collect();
                if keys.is_empty() || rng.one_in(6) {
                    m.insert("robust_ssl_head".into(), serde_json::json!("{}"));
                } else {
                    let k = &keys[rng.below(keys.len())];
                    let s = m[k].as_str().unwrap_or("").to_string();
                    let new = match serde_json::from_str::<serde_json::Value>(&s) {
                        Ok(mut v) if !rng.one_in(5) => {
                            json(&mut v, rng);
                            v.to_string()
                        }
                        _ => {
                            let mut b = s.into_bytes();
                            bytes(&mut b, rng, 0..0);
                            String::from_utf8_lossy(&b).into_owned()
                        }
                    };
                    m.insert(k.clone(), serde_json::json!(new));
                }
            } else {
                *meta = serde_json::json!(rng.pick(&[0, 1]));
            }
        }
        _ => json(&mut header, rng),
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut len = text.len() as u64;
    if rng.one_in(10) {
        len = rng.pick(&[len + 1, len.saturating_sub(1), len * 2, u32::MAX as u64, u64::MAX, 1 << 40]);
    }
    let mut out = len.to_le_bytes().to_vec();
    out.extend(text);
    let keep = if rng.one_in(8) { rng.below(body.len() + 1) } else { body.len() };
    out.extend_from_slice(&body[..keep]);
    out
}

// ---- JSON ----

/// JSON pointers to every node of `v`.
fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, c) in m {
                pointers(c, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// One mutation of a node of `v`.
pub fn json(v: &mut serde_json::Value, rng: &mut Rng) {
    use serde_json::json;
    let mut ps = Vec::new();
    pointers(v, String::new(), &mut ps);
    let p = ps[rng.below(ps.len())].clone();
    let node = v.pointer_mut(&p).unwrap();
    match node {
        serde_json::Value::Number(_) => {
            *node = rng.pick(&[
                json!(0),
                json!(-1),
                json!(1),
                json!(2147483648u64),
                json!(4294967295u64),
                json!(u64::MAX),
                json!(i64::MIN),
                json!(1e308),
                json!(-0.0),
                json!(0.5),
                json!("7"),
                json!(null),
            ])
        }
        serde_json::Value::String(s) => {
            *node = match rng.below(5) {
                0 => json!(""),
                1 => json!("x".repeat(300)),
                2 => json!(format!("{s}x")),
                3 => json!(rng.pick(&["cls", "seg", "depth", "dinov2", "vit", "cls+mean", "bn", "none", "../"])),
                _ => json!(12),
            }
        }
        serde_json::Value::Bool(b) => *node = if rng.one_in(2) { json!(!*b) } else { json!("true") },
        serde_json::Value::Array(a) => match rng.below(3) {
            0 => {
                a.pop();
            }
            1 if !a.is_empty() => {
                let c = a[rng.below(a.len())].clone();
                a.push(c);
            }
            _ => *node = json!({}),
        },
        serde_json::Value::Object(m) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            match rng.below(3) {
                0 if !keys.is_empty() => {
                    m.remove(&keys[rng.below(keys.len())]);
                }
                1 => {
                    m.insert(
                        rng.pick(&[
                            "num_attention_heads",
                            "layer_norm_eps",
                            "model_args",
                            "hidden_size",
                            "num_heads",
                            "architecture",
                            "model_type",
                        ])
                        .to_string(),
                        rng.pick(&[json!(0), json!(7), json!(-1), json!(u64::MAX), json!("x"), json!({"num_heads": 0}), json!(1e-300)]),
                    );
                }
                _ => *node = json!([]),
            }
        }
        serde_json::Value::Null => *node = json!(0),
    }
}

fn json_file(data: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(&data) {
        Ok(mut v) if !rng.one_in(6) => {
            json(&mut v, rng);
            serde_json::to_vec_pretty(&v).unwrap()
        }
        _ => {
            let mut d = data;
            bytes(&mut d, rng, 0..0);
            d
        }
    }
}

// ---- protobuf (ONNX) ----

enum Field {
    Varint(u64, u64),
    Fixed64(u64, [u8; 8]),
    Fixed32(u64, [u8; 4]),
    Bytes(u64, Vec<u8>),
    Message(u64, Vec<Field>),
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let c = *b.get(*i)?;
        *i += 1;
        v |= ((c & 0x7F) as u64) << shift;
        if c & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn parse_pb(b: &[u8], depth: usize) -> Option<Vec<Field>> {
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (tag, wt) = (key >> 3, key & 7);
        if tag == 0 || tag > 1 << 20 {
            return None;
        }
        out.push(match wt {
            0 => Field::Varint(tag, varint(b, &mut i)?),
            1 => {
                let v = b.get(i..i + 8)?.try_into().ok()?;
                i += 8;
                Field::Fixed64(tag, v)
            }
            5 => {
                let v = b.get(i..i + 4)?.try_into().ok()?;
                i += 4;
                Field::Fixed32(tag, v)
            }
            2 => {
                let n = varint(b, &mut i)? as usize;
                let body = b.get(i..i.checked_add(n)?)?;
                i += n;
                // Raw tensor data is left whole: only small payloads are tried as messages.
                match (depth < 8 && (2..1 << 16).contains(&n)).then(|| parse_pb(body, depth + 1)).flatten() {
                    Some(fields) if !fields.is_empty() => Field::Message(tag, fields),
                    _ => Field::Bytes(tag, body.to_vec()),
                }
            }
            _ => return None,
        });
    }
    Some(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn write_pb(fields: &[Field], out: &mut Vec<u8>) {
    for f in fields {
        match f {
            Field::Varint(t, v) => {
                put_varint(out, t << 3);
                put_varint(out, *v);
            }
            Field::Fixed64(t, v) => {
                put_varint(out, t << 3 | 1);
                out.extend(v);
            }
            Field::Fixed32(t, v) => {
                put_varint(out, t << 3 | 5);
                out.extend(v);
            }
            Field::Bytes(t, v) => {
                put_varint(out, t << 3 | 2);
                put_varint(out, v.len() as u64);
                out.extend(v);
            }
            Field::Message(t, m) => {
                let mut body = Vec::new();
                write_pb(m, &mut body);
                put_varint(out, t << 3 | 2);
                put_varint(out, body.len() as u64);
                out.extend(body);
            }
        }
    }
}

/// Paths (child indices) to every field.
fn pb_paths(fields: &[Field], at: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    for (i, f) in fields.iter().enumerate() {
        at.push(i);
        out.push(at.clone());
        if let Field::Message(_, m) = f {
            pb_paths(m, at, out);
        }
        at.pop();
    }
}

fn protobuf(data: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let Some(mut fields) = parse_pb(&data, 0).filter(|f| !f.is_empty() && !rng.one_in(8)) else {
        let mut d = data;
        bytes(&mut d, rng, 0..0);
        return d;
    };
    let mut paths = Vec::new();
    pb_paths(&fields, &mut Vec::new(), &mut paths);
    let path = paths[rng.below(paths.len())].clone();
    let (last, parents) = path.split_last().unwrap();
    let mut siblings = &mut fields;
    for &p in parents {
        let Field::Message(_, m) = &mut siblings[p] else { unreachable!() };
        siblings = m;
    }
    match rng.below(8) {
        0 => {
            siblings.remove(*last);
        }
        1 => {
            // The same field again (a repeated field gains an element; a scalar is set twice).
            let mut copy = Vec::new();
            write_pb(std::slice::from_ref(&siblings[*last]), &mut copy);
            if let Some(mut f) = parse_pb(&copy, 0) {
                siblings.insert(*last, f.remove(0));
            }
        }
        2 => {
            let j = rng.below(siblings.len());
            siblings.swap(*last, j);
        }
        _ => match &mut siblings[*last] {
            Field::Varint(t, v) => {
                if rng.one_in(8) {
                    *t += 1;
                } else {
                    *v = match rng.below(4) {
                        0 => v.wrapping_add(1),
                        1 => v.wrapping_sub(1),
                        2 => u64::MAX,
                        _ => interesting_u64(rng),
                    };
                }
            }
            Field::Fixed64(_, v) => *v = interesting_u64(rng).to_le_bytes(),
            Field::Fixed32(_, v) => *v = rng.pick(&[0f32, f32::NAN, f32::INFINITY, -1.0, 1e30, 0.125]).to_le_bytes(),
            Field::Bytes(_, v) => match rng.below(3) {
                0 => v.truncate(rng.below(v.len() + 1)),
                1 => v.extend((0..1 + rng.below(8)).map(|_| rng.next() as u8)),
                _ => bytes(v, rng, 0..0),
            },
            Field::Message(_, m) => {
                if m.is_empty() || rng.one_in(3) {
                    m.clear();
                } else {
                    let i = rng.below(m.len());
                    m.remove(i);
                }
            }
        },
    }
    let mut out = Vec::with_capacity(data.len());
    write_pb(&fields, &mut out);
    out
}

// ---- PNG ----

fn crc32(data: &[u8]) -> u32 {
    let mut h = flate2::Crc::new();
    h.update(data);
    h.sum()
}

fn png_chunks(data: &[u8]) -> Option<Vec<([u8; 4], Vec<u8>)>> {
    if !data.starts_with(b"\x89PNG\r\n\x1a\n") {
        return None;
    }
    let mut i = 8;
    let mut out = Vec::new();
    while i + 12 <= data.len() {
        let n = u32::from_be_bytes(data[i..i + 4].try_into().unwrap()) as usize;
        let ty: [u8; 4] = data[i + 4..i + 8].try_into().unwrap();
        let body = data.get(i + 8..(i + 8).checked_add(n)?)?.to_vec();
        i += 12 + n;
        out.push((ty, body));
    }
    (i == data.len()).then_some(out)
}

fn zlib(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn png(data: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let Some(mut chunks) = png_chunks(&data).filter(|c| !c.is_empty()) else {
        let mut d = data;
        bytes(&mut d, rng, 0..64);
        return d;
    };
    let pick_type = |chunks: &[([u8; 4], Vec<u8>)], ty: &[u8; 4]| chunks.iter().position(|(t, _)| t == ty);
    match rng.below(10) {
        0..=3 => {
            if let Some(i) = pick_type(&chunks, b"IHDR") {
                let h = &mut chunks[i].1;
                if h.len() >= 13 {
                    match rng.below(5) {
                        0 | 1 => {
                            let at = rng.pick(&[0usize, 4]);
                            let v = rng.pick(&[0u32, 1, 2, 3, 16384, 65535, 100_000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 46341]);
                            h[at..at + 4].copy_from_slice(&v.to_be_bytes());
                        }
                        2 => h[8] = rng.pick(&[1u8, 2, 4, 8, 16, 0, 3, 32]),
                        3 => h[9] = rng.pick(&[0u8, 2, 3, 4, 6, 1, 7]),
                        _ => h[10 + rng.below(3)] = rng.pick(&[0u8, 1, 2]),
                    }
                } else {
                    bytes(h, rng, 0..0);
                }
            }
        }
        4 | 5 => {
            // The image data, decompressed, changed, recompressed.
            if let Some(i) = pick_type(&chunks, b"IDAT") {
                let mut raw = Vec::new();
                let _ = flate2::read::ZlibDecoder::new(chunks[i].1.as_slice()).take(1 << 24).read_to_end(&mut raw);
                match rng.below(3) {
                    0 => raw.truncate(rng.below(raw.len() + 1)),
                    1 => raw.extend(std::iter::repeat_n(rng.pick(&[0u8, 1, 4, 0xFF]), 1 + rng.below(4096))),
                    _ => bytes(&mut raw, rng, 0..0),
                }
                chunks[i].1 = zlib(&raw);
            }
        }
        6 => {
            let i = rng.below(chunks.len());
            let c = chunks[i].clone();
            chunks.insert(i, c);
        }
        7 => {
            let i = rng.below(chunks.len());
            chunks.remove(i);
        }
        8 => {
            let i = rng.below(chunks.len());
            let extra: &[([u8; 4], Vec<u8>)] = &[
                (*b"PLTE", vec![0; 3]),
                (*b"PLTE", vec![7; 3 * 256]),
                (*b"tRNS", vec![0; 300]),
                (*b"acTL", vec![0, 0, 0, 2, 0, 0, 0, 0]),
                (*b"fcTL", vec![0xFF; 26]),
                (*b"IEND", vec![]),
            ];
            let c = extra[rng.below(extra.len())].clone();
            chunks.insert(i, c);
        }
        _ => {
            let i = rng.below(chunks.len());
            bytes(&mut chunks[i].1, rng, 0..0);
        }
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let stale = rng.one_in(16);
    for (ty, body) in chunks {
        out.extend((body.len() as u32).to_be_bytes());
        out.extend(ty);
        out.extend(&body);
        let mut c = ty.to_vec();
        c.extend(&body);
        out.extend(if stale { 0 } else { crc32(&c) }.to_be_bytes());
    }
    out
}

// ---- IDX, gzip, records ----

fn idx(d: &mut Vec<u8>, rng: &mut Rng) {
    if d.len() < 8 {
        return bytes(d, rng, 0..16);
    }
    let dims = (d.len().min(16) - 4) / 4;
    match rng.below(6) {
        0 => {
            let m = rng.pick(&[0x0803u32, 0x0801, 0x0800, 0x0804, 0x0D03, 0x0B03, 0, 0xFFFF_FFFF]);
            put(d, 0, &m.to_be_bytes());
        }
        1..=3 => {
            let at = 4 + 4 * rng.below(dims.max(1));
            let v = rng.pick(&[0u32, 1, 2, 3, 27, 29, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 0x1_0000, 46341, 0x10_0000]);
            put(d, at, &v.to_be_bytes());
        }
        4 => {
            let n = rng.pick(&[1usize, 27, 28, 784, 785]).min(d.len());
            if rng.one_in(2) {
                d.truncate(d.len() - n);
            } else {
                d.extend(std::iter::repeat_n(0u8, n));
            }
        }
        _ => bytes(d, rng, 0..16),
    }
}

/// A gzip stream whose content is a valid IDX header followed by more than 512 MiB of zeros: the
/// whole stream inflates to more than any reader should hold for a tiny file.
fn gz_bomb() -> &'static [u8] {
    static BOMB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BOMB.get_or_init(|| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&[0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28]).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..520 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    })
}

fn gz_idx(data: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    if rng.one_in(1500) {
        return gz_bomb().to_vec();
    }
    let mut inner = Vec::new();
    let ok = flate2::read::GzDecoder::new(data.as_slice()).take(1 << 24).read_to_end(&mut inner).is_ok();
    if !ok || rng.one_in(6) {
        // The gzip stream itself: header, deflate blocks, CRC and size trailer.
        let mut d = data;
        let n = d.len();
        let hot = if rng.one_in(2) { 0..16 } else { n.saturating_sub(8)..n };
        bytes(&mut d, rng, hot);
        return d;
    }
    idx(&mut inner, rng);
    crate::hostile::gzip(&inner)
}

fn records(d: &mut Vec<u8>, record: usize, rng: &mut Rng) {
    let n = d.len() / record.max(1);
    match rng.below(6) {
        0 | 1 if n > 0 => {
            // A label byte (CIFAR: first byte(s) of a record).
            let at = rng.below(n) * record + rng.below(2.min(record));
            d[at] = rng.pick(&[9u8, 10, 11, 19, 20, 99, 100, 255, 0]);
        }
        2 => {
            let k = rng.pick(&[1usize, 2, record - 1, record + 1]).min(d.len());
            d.truncate(d.len() - k);
        }
        3 => d.extend(std::iter::repeat_n(0u8, rng.pick(&[1usize, 2, record, record + 1]))),
        4 if n > 0 => {
            let i = rng.below(n);
            let r = d[i * record..(i + 1) * record].to_vec();
            d.extend(r);
        }
        _ => bytes(d, rng, 0..0),
    }
}

// ---- text: TOML, lists ----

const TOML_VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "1e308",
    "-0.0",
    "nan",
    "inf",
    "\"\"",
    "\"../../\"",
    "\"/\"",
    "\".\"",
    "\"synthetic-seg:99999999999x8\"",
    "\"synthetic-depth:1x99999999\"",
    "\"synthetic-seg:0x0\"",
    "\"synthetic-depth:3x7\"",
    "\"cifar10:cifar\"",
    "\"cifar10:/\"",
    "\"cifar100:cifar\"",
    "\"imagefolder:.\"",
    "\"nyu:enc.pth\"",
    "\"mnist:fmnist\"",
    "\"stl10:cifar\"",
    "\"8/0\"",
    "\"0/0\"",
    "\"1e400\"",
    "\"eps/0\"",
    "\"-8/255\"",
    "\"255/8\"",
    "[]",
    "[0, 0]",
    "{}",
    "true",
    "\"enc.pth\"",
    "\"exp.toml\"",
    "\"cache\"",
    "\"x\"",
    "\"resize-short0\"",
    "\"crop99999x99999\"",
    "\"pad0\"",
    "\"resize0x0\"",
    "\"teacher\"",
    "\"student\"",
    "\"dinov2_vitg14\"",
    "\"official\"",
    "\"test\"",
    "\"unlabeled\"",
    "[\"embed\"]",
    "[\"apgd\"]",
    "\"both\"",
    "\"patch-prenorm\"",
    "\"last\"",
    "[{ bins = 0 }]",
    "[{ classes = 0 }]",
    "[{ batch_size = 0 }]",
    "[{ epochs = 99999999999 }]",
    "[{ min_depth = 10.0, max_depth = 1.0 }]",
    "[{ recipe = \"study\" }]",
    "[{ pooling = \"cls+mean\" }, { pooling = \"cls+mean\" }]",
];

const TOML_KEYS: &[&str] = &[
    "name",
    "size",
    "attack_batch_size",
    "encoder_batch_size",
    "examples",
    "cache_dir",
    "checkpoint",
    "arch",
    "pos_resize",
    "num_heads",
    "backbone",
    "task",
    "train",
    "eval",
    "images",
    "transforms",
    "heads",
    "dataset",
    "split",
    "limit",
    "subset_seed",
    "kinds",
    "eps",
    "norm",
    "steps",
    "step_size",
    "seeds",
    "restarts",
    "random_start",
    "embed_target",
    "embed_distance",
    "embed_scope",
    "segpgd",
    "ce_scaling",
    "iterate",
    "bogus",
];

fn toml(data: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let Ok(text) = String::from_utf8(data.clone()) else {
        let mut d = data;
        bytes(&mut d, rng, 0..0);
        return d;
    };
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return b"[[encoder]]\n".to_vec();
    }
    let with_value: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains('=') && !lines[i].trim_start().starts_with('#')).collect();
    let i = if with_value.is_empty() || rng.one_in(5) { rng.below(lines.len()) } else { rng.pick(&with_value) };
    match rng.below(12) {
        0..=3 => {
            // A whole value.
            if let Some(eq) = lines[i].find('=') {
                lines[i] = format!("{}= {}", &lines[i][..eq], rng.pick(TOML_VALUES));
            }
        }
        4 | 5 => {
            // A number inside the value (inline tables, lists, fractions).
            let spans = number_spans(&lines[i]);
            if !spans.is_empty() {
                let (s, e) = rng.pick(&spans);
                let v = rng.pick(&["0", "1", "99999999999", "4294967296", "18446744073709551616", "00", "1e999", "255"]);
                lines[i] = format!("{}{v}{}", &lines[i][..s], &lines[i][e..]);
            }
        }
        6 => {
            // A key renamed.
            if let Some(eq) = lines[i].find('=') {
                lines[i] = format!("{} {}", rng.pick(TOML_KEYS), &lines[i][eq..]);
            }
        }
        7 => {
            lines.remove(i);
        }
        8 => {
            let l = lines[i].clone();
            lines.insert(i, l);
        }
        9 => {
            // A table duplicated (a second encoder or task of the same name, another attack block).
            let heads: Vec<usize> = (0..lines.len()).filter(|&j| lines[j].starts_with("[[")).collect();
            if !heads.is_empty() {
                let s = rng.pick(&heads);
                let e = (s + 1..lines.len()).find(|&j| lines[j].starts_with('[')).unwrap_or(lines.len());
                let block: Vec<String> = lines[s..e].to_vec();
                let at = rng.below(lines.len() + 1);
                lines.splice(at..at, block);
            }
        }
        10 => {
            let s: String = lines.join("\n");
            let cut = rng.below(s.len() + 1);
            let cut = (0..=cut).rev().find(|&c| s.is_char_boundary(c)).unwrap_or(0);
            return s.as_bytes()[..cut].to_vec();
        }
        _ => {
            let c = rng.pick(&['"', '[', ']', '{', '}', '=', '\n', ',', '#', '\\', '\u{0}', 'é']);
            let at = rng.below(lines[i].len() + 1);
            if lines[i].is_char_boundary(at) {
                lines[i].insert(at, c);
            }
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out.into_bytes()
}

const LIST_LINES: &[&str] = &[
    "",
    " ",
    "../../../../etc/passwd",
    "/",
    "..",
    ".",
    "a/b/c",
    "\t",
    "2007_000032 extra",
    "2007_000032/../2007_000039",
    "2007_000039",
    "/train/kitchen_0028a/rgb_00000.jpg",
    "/train/kitchen_0028a/rgb_00000.jpg /train/kitchen_0028a/rgb_00000.jpg",
    "/train/kitchen_0028a/sync_depth_00000.png /train/kitchen_0028a/rgb_00000.jpg",
    "/train/kitchen_0028a/rgb_00000.jpg /train/bedroom_0004/sync_depth_00001.png nan",
    "/train/kitchen_0028a/rgb_00000.jpg /train/kitchen_0028a",
    "/train /train",
    "a b c d e",
    "\u{feff}2007_000032",
    "2007_000032\r",
];

fn lines(data: Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let Ok(text) = String::from_utf8(data.clone()) else {
        let mut d = data;
        bytes(&mut d, rng, 0..0);
        return d;
    };
    let mut ls: Vec<String> = text.lines().map(str::to_string).collect();
    let i = rng.below(ls.len() + 1);
    match rng.below(6) {
        0 | 1 => ls.insert(i, rng.pick(LIST_LINES).to_string()),
        2 if i < ls.len() => {
            ls.remove(i);
        }
        3 if i < ls.len() => ls[i] = rng.pick(LIST_LINES).to_string(),
        4 if i < ls.len() => {
            let mut w: Vec<&str> = ls[i].split_whitespace().collect();
            w.reverse();
            ls[i] = w.join(" ");
        }
        _ => {
            let mut d = text.into_bytes();
            bytes(&mut d, rng, 0..0);
            return d;
        }
    }
    (ls.join("\n") + "\n").into_bytes()
}
