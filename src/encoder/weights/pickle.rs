//! A restricted unpickler for the `data.pkl` of a `torch.save` checkpoint, in the spirit of
//! torch's own `weights_only` unpickler: it knows the opcodes torch writes (protocols 2–5), runs
//! no code, and turns the pickled object into plain [`Value`]s. Built for hostile files: every
//! length is checked against the bytes left before anything is allocated, nesting is bounded (no
//! recursion runs deeper than [`MAX_DEPTH`]), and so is the work (copies made by memo lookups).
//! The tensors in the result are read by [`tensors`]: names, storage key, dtype, shape, strides.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use candle_core::DType;

/// Deepest nesting of containers accepted (torch's checkpoints nest a handful of levels).
pub const MAX_DEPTH: usize = 200;
/// Most values created in all, copies included (a ViT-g training checkpoint needs ~10^5).
const MAX_NODES: usize = 2_000_000;

/// A pickled object, as far as a checkpoint needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>, usize),
    List(Vec<Value>, usize),
    Dict(Vec<(Value, Value)>, usize),
    /// `module.name`, as GLOBAL/STACK_GLOBAL name it.
    Global(String, String),
    /// `callable(*args)` (REDUCE, NEWOBJ): not run, kept.
    Call(Box<Value>, Box<Value>, usize),
    /// `object.__setstate__(state)` (BUILD): not run, kept.
    Build(Box<Value>, Box<Value>, usize),
    /// A persistent id (torch: a storage reference).
    Persistent(Box<Value>, usize),
}

impl Value {
    /// Nesting depth: 0 for scalars.
    pub fn depth(&self) -> usize {
        match self {
            Value::Tuple(_, d) | Value::List(_, d) | Value::Dict(_, d) | Value::Call(_, _, d) | Value::Build(_, _, d) => *d,
            Value::Persistent(_, d) => *d,
            _ => 0,
        }
    }

    /// Values in this one, itself included (bounded by the depth limit's recursion).
    fn nodes(&self) -> usize {
        1 + match self {
            Value::Tuple(v, _) | Value::List(v, _) => v.iter().map(Value::nodes).sum(),
            Value::Dict(v, _) => v.iter().map(|(k, x)| k.nodes() + x.nodes()).sum(),
            Value::Call(a, b, _) | Value::Build(a, b, _) => a.nodes() + b.nodes(),
            Value::Persistent(a, _) => a.nodes(),
            _ => 0,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

fn depth_of<'a>(items: impl IntoIterator<Item = &'a Value>) -> Result<usize> {
    let d = 1 + items.into_iter().map(Value::depth).max().unwrap_or(0);
    if d > MAX_DEPTH {
        bail!("objects nested more than {MAX_DEPTH} deep");
    }
    Ok(d)
}

fn tuple(items: Vec<Value>) -> Result<Value> {
    let d = depth_of(&items)?;
    Ok(Value::Tuple(items, d))
}

enum Slot {
    Mark,
    V(Value),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Slot>,
    memo: HashMap<u32, Value>,
    nodes: usize,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!("a length of {n} bytes at offset {} runs past the end of the pickle ({} bytes)", self.pos, self.data.len())
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn le(&mut self, n: usize) -> Result<u64> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64))
    }

    fn len(&mut self, n: usize) -> Result<usize> {
        let v = self.le(n)?;
        usize::try_from(v).map_err(|_| anyhow!("a length of {v} bytes at offset {}", self.pos))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("GLOBAL without a line end at offset {}", self.pos))?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| anyhow!("GLOBAL name is not UTF-8 at offset {}", self.pos))?.to_string();
        self.pos += end + 1;
        Ok(s)
    }

    fn count(&mut self, n: usize) -> Result<()> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            bail!("more than {MAX_NODES} objects: not a checkpoint's pickle");
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> Result<()> {
        self.count(1)?;
        self.stack.push(Slot::V(v));
        Ok(())
    }

    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(Slot::V(v)) => Ok(v),
            Some(Slot::Mark) => bail!("a MARK where a value was expected (offset {})", self.pos),
            None => bail!("pops from an empty stack (offset {})", self.pos),
        }
    }

    fn top(&mut self) -> Result<&mut Value> {
        match self.stack.last_mut() {
            Some(Slot::V(v)) => Ok(v),
            _ => bail!("no value on the stack (offset {})", self.pos),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)).ok_or_else(|| anyhow!("no MARK (offset {})", self.pos))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items.into_iter().map(|s| if let Slot::V(v) = s { v } else { Value::None }).collect())
    }

    /// A copy of `v`, counted before it is made.
    fn copy(&mut self, v: &Value) -> Result<Value> {
        self.count(v.nodes())?;
        Ok(v.clone())
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let top = match self.stack.last() {
            Some(Slot::V(v)) => v,
            _ => bail!("no value on the stack to memoize (offset {})", self.pos),
        };
        self.nodes = self.nodes.saturating_add(top.nodes());
        if self.nodes > MAX_NODES {
            bail!("more than {MAX_NODES} objects: not a checkpoint's pickle");
        }
        let v = top.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let pos = self.pos;
        let memo = std::mem::take(&mut self.memo);
        let v = match memo.get(&key) {
            Some(v) => self.copy(v),
            None => Err(anyhow!("memo key {key} was never stored (offset {pos})")),
        };
        self.memo = memo;
        self.stack.push(Slot::V(v?));
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            bail!("SETITEMS with an odd number of values (offset {})", self.pos);
        }
        let pos = self.pos;
        let target = self.top()?;
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        let d = depth_of(pairs.iter().flat_map(|(k, v)| [k, v]))?;
        match target {
            Value::Dict(entries, depth) => {
                entries.extend(pairs);
                *depth = (*depth).max(d);
            }
            // `collections.OrderedDict()` before its items are set.
            Value::Call(..) => {
                let call = std::mem::replace(target, Value::None);
                let Value::Call(c, _, _) = call else { unreachable!() };
                if !matches!(*c, Value::Global(ref m, ref n) if m == "collections" && n == "OrderedDict") {
                    bail!("SETITEMS on an object that is not a dict (offset {pos})");
                }
                *target = Value::Dict(pairs, d);
            }
            _ => bail!("SETITEMS on a value that is not a dict (offset {pos})"),
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        let pos = self.pos;
        let d = depth_of(&items)?;
        match self.top()? {
            Value::List(v, depth) => {
                v.extend(items);
                *depth = (*depth).max(d);
                Ok(())
            }
            _ => bail!("APPEND on a value that is not a list (offset {pos})"),
        }
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.le(8)?; // FRAME: a hint only
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Slot::Mark),
                b'}' => self.push(Value::Dict(Vec::new(), 1))?,
                b']' => self.push(Value::List(Vec::new(), 1))?,
                b')' => self.push(Value::Tuple(Vec::new(), 1))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new(), 1))?;
                    self.set_items(items)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let d = depth_of(&items)?;
                    self.push(Value::List(items, d))?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let t = tuple(items)?;
                    self.push(t)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>>>()?;
                    items.reverse();
                    let t = tuple(items)?;
                    self.push(t)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.le(4)? as u32;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = u32::try_from(self.memo.len()).map_err(|_| anyhow!("memo too large"))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.le(4)? as u32;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(module, name))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n))?,
                        _ => bail!("STACK_GLOBAL without two strings (offset {at})"),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let d = depth_of([&callable, &args])?;
                    self.push(Value::Call(Box::new(callable), Box::new(args), d))?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let object = self.pop()?;
                    let d = depth_of([&object, &state])?;
                    self.push(Value::Build(Box::new(object), Box::new(state), d))?;
                }
                b'Q' => {
                    let id = self.pop()?;
                    let d = depth_of([&id])?;
                    self.push(Value::Persistent(Box::new(id), d))?;
                }
                b'J' => {
                    let v = self.le(4)? as u32 as i32 as i64;
                    self.push(Value::Int(v))?;
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(Value::Int(v))?;
                }
                b'M' => {
                    let v = self.le(2)? as i64;
                    self.push(Value::Int(v))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    if n > 8 {
                        bail!("an integer of {n} bytes (offset {at}): larger than any size a tensor has");
                    }
                    let mut v: i64 = 0;
                    for (i, &b) in bytes.iter().enumerate() {
                        v |= (b as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Value::Int(v))?;
                }
                b'G' => {
                    let b: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
                    self.push(Value::Float(f64::from_be_bytes(b)))?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                0x8c | b'X' | 0x8d => {
                    let n = match op {
                        0x8c => self.len(1)?,
                        b'X' => self.len(4)?,
                        _ => self.len(8)?,
                    };
                    let s = std::str::from_utf8(self.take(n)?).map_err(|_| anyhow!("a string that is not UTF-8 (offset {at})"))?;
                    self.push(Value::Str(s.to_string()))?;
                }
                b'C' | b'B' | 0x8e | b'U' | b'T' => {
                    let n = match op {
                        b'C' | b'U' => self.len(1)?,
                        b'B' | b'T' => self.len(4)?,
                        _ => self.len(8)?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(match op {
                        // Python 2 strings: torch's pickles use them for names only.
                        b'U' | b'T' => Value::Str(String::from_utf8_lossy(&b).into_owned()),
                        _ => Value::Bytes(b),
                    })?;
                }
                b'0' => {
                    self.stack.pop().ok_or_else(|| anyhow!("POP on an empty stack (offset {at})"))?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = std::mem::replace(self.top()?, Value::None);
                    let v = self.copy(&top);
                    *self.top()? = top;
                    self.stack.push(Slot::V(v?));
                }
                other => bail!("opcode 0x{other:02x} at offset {at} is not one torch.save writes"),
            }
        }
    }
}

/// Unpickles `data` (a whole `data.pkl`).
pub fn load(data: &[u8]) -> Result<Value> {
    Machine { data, pos: 0, stack: Vec::new(), memo: HashMap::new(), nodes: 0 }.run()
}

/// Where a tensor's values live: a storage (`data/<key>` in the archive) viewed with a shape,
/// strides and an offset, all in elements.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub name: String,
    pub storage: String,
    pub dtype: DType,
    /// Elements the storage holds, as declared.
    pub storage_len: usize,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl TensorRef {
    /// Elements of the tensor (checked product).
    pub fn numel(&self) -> Result<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| anyhow!("shape {:?} is too large", self.shape))
    }

    /// Whether the view is the row-major layout of its shape.
    pub fn is_contiguous(&self) -> bool {
        let mut expect = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expect {
                return false;
            }
            expect = expect.saturating_mul(d);
        }
        true
    }

    /// One past the last storage element the view reads (0 for an empty tensor).
    pub fn extent(&self) -> Result<usize> {
        if self.shape.contains(&0) {
            return Ok(0);
        }
        let overflow = || anyhow!("shape {:?} with strides {:?} reaches past any storage", self.shape, self.stride);
        let mut last = self.offset;
        for (&d, &s) in self.shape.iter().zip(&self.stride) {
            last = (d - 1).checked_mul(s).and_then(|x| last.checked_add(x)).ok_or_else(overflow)?;
        }
        last.checked_add(1).ok_or_else(overflow)
    }
}

/// Every tensor of an unpickled checkpoint, with its dotted path (`teacher.blocks.0.norm1.weight`).
/// Values that are not tensors are skipped; a tensor reconstruction that is malformed is an error.
pub fn tensors(root: &Value) -> Result<Vec<TensorRef>> {
    let mut out = Vec::new();
    flatten(root, "", &mut out)?;
    Ok(out)
}

fn flatten(v: &Value, prefix: &str, out: &mut Vec<TensorRef>) -> Result<()> {
    let v = match v {
        // A scripted module or an object whose state is a dict.
        Value::Build(object, state, _) => match **object {
            Value::Dict(..) => &**object,
            _ => &**state,
        },
        v => v,
    };
    let Value::Dict(entries, _) = v else { return Ok(()) };
    for (key, value) in entries {
        let Some(key) = key.as_str() else { continue };
        if key == "_metadata" {
            continue;
        }
        let name = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
        match value {
            Value::Dict(..) | Value::Build(..) => flatten(value, &name, out)?,
            Value::Call(..) => {
                if let Some(t) = tensor(value, &name)? {
                    out.push(t)
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn global(v: &Value) -> Option<(&str, &str)> {
    match v {
        Value::Global(m, n) => Some((m, n)),
        _ => None,
    }
}

fn items<'a>(v: &'a Value, name: &str, what: &str) -> Result<&'a [Value]> {
    match v {
        Value::Tuple(items, _) | Value::List(items, _) => Ok(items),
        _ => bail!("tensor '{name}': {what} is not a tuple"),
    }
}

fn size(v: &Value, name: &str, what: &str) -> Result<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| anyhow!("tensor '{name}': {what} is {i}")),
        _ => bail!("tensor '{name}': {what} is not an integer"),
    }
}

/// The tensor a `Call` rebuilds, if it is one torch's rebuild functions make.
fn tensor(v: &Value, name: &str) -> Result<Option<TensorRef>> {
    let Value::Call(callable, args, _) = v else { return Ok(None) };
    let Some(f) = global(callable) else { return Ok(None) };
    match f {
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
            let a = items(args, name, "the arguments of _rebuild_parameter")?;
            let first = a.first().ok_or_else(|| anyhow!("tensor '{name}': _rebuild_parameter without its tensor"))?;
            tensor(first, name)
        }
        ("torch._tensor", "_rebuild_from_type_v2") => {
            let a = items(args, name, "the arguments of _rebuild_from_type_v2")?;
            let [func, _, inner, ..] = a else { bail!("tensor '{name}': _rebuild_from_type_v2 with {} arguments, expected 4", a.len()) };
            tensor(&Value::Call(Box::new(func.clone()), Box::new(inner.clone()), 1), name)
        }
        ("torch._utils", "_rebuild_tensor_v2") => {
            let a = items(args, name, "the arguments of _rebuild_tensor_v2")?;
            let [storage, offset, shape, stride, ..] = a else {
                bail!("tensor '{name}': _rebuild_tensor_v2 with {} arguments, expected at least 4", a.len())
            };
            let Value::Persistent(id, _) = storage else { bail!("tensor '{name}': its storage is not a persistent reference") };
            let id = items(id, name, "the storage reference")?;
            let [kind, class, key, _location, len, ..] = id else {
                bail!("tensor '{name}': a storage reference of {} fields, expected 5", id.len())
            };
            if kind.as_str() != Some("storage") {
                bail!("tensor '{name}': a persistent reference that is not a storage");
            }
            let Some((_, class)) = global(class) else { bail!("tensor '{name}': the storage's type is not a class") };
            let dtype = match class {
                "FloatStorage" => DType::F32,
                "DoubleStorage" => DType::F64,
                "HalfStorage" => DType::F16,
                "BFloat16Storage" => DType::BF16,
                "LongStorage" => DType::I64,
                "IntStorage" => DType::I32,
                "ShortStorage" => DType::I16,
                "ByteStorage" | "BoolStorage" => DType::U8,
                // Other element types (complex, quantized, 8-bit floats) hold no ViT weight.
                _ => return Ok(None),
            };
            let key = match key {
                Value::Str(k) => k.clone(),
                Value::Int(k) => k.to_string(),
                _ => bail!("tensor '{name}': the storage key is not a string"),
            };
            if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
                bail!("tensor '{name}': storage key {key:?} is not a plain name");
            }
            let shape = items(shape, name, "the shape")?.iter().map(|d| size(d, name, "a dimension")).collect::<Result<Vec<_>>>()?;
            let stride = items(stride, name, "the strides")?.iter().map(|d| size(d, name, "a stride")).collect::<Result<Vec<_>>>()?;
            if shape.len() != stride.len() {
                bail!("tensor '{name}': shape {shape:?} with strides {stride:?}");
            }
            let t = TensorRef {
                name: name.to_string(),
                storage: key,
                dtype,
                storage_len: size(len, name, "the storage size")?,
                offset: size(offset, name, "the storage offset")?,
                shape,
                stride,
            };
            t.numel()?;
            let extent = t.extent()?;
            if extent > t.storage_len {
                bail!(
                    "tensor '{name}': shape {:?} (strides {:?}, offset {}) reaches element {extent} of a storage of {}",
                    t.shape,
                    t.stride,
                    t.offset,
                    t.storage_len
                );
            }
            Ok(Some(t))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Vec<u8> {
        let mut v = vec![0x8c, x.len() as u8];
        v.extend_from_slice(x.as_bytes());
        v
    }

    /// `{name: _rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())}`.
    fn state_dict(name: &str, offset: u8, shape: &[u8], stride: &[u8], storage_len: u8) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend(s(name));
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x01(");
        p.extend(b"(");
        p.extend(s("storage"));
        p.extend(b"ctorch\nFloatStorage\n");
        p.extend(s("0"));
        p.extend(s("cpu"));
        p.extend([b'K', storage_len, b't', b'Q', b'K', offset, b'(']);
        for &d in shape {
            p.extend([b'K', d]);
        }
        p.extend(b"t(");
        for &d in stride {
            p.extend([b'K', d]);
        }
        p.extend(b"t\x89ccollections\nOrderedDict\n)Rt");
        p.extend(b"Ru.");
        p
    }

    #[test]
    fn a_state_dict_entry_is_read() {
        let v = load(&state_dict("w", 1, &[2, 3], &[1, 2], 7)).unwrap();
        let t = tensors(&v).unwrap();
        assert_eq!(t.len(), 1);
        let t = &t[0];
        assert_eq!((t.name.as_str(), t.storage.as_str(), t.dtype, t.storage_len, t.offset), ("w", "0", DType::F32, 7, 1));
        assert_eq!((t.shape.clone(), t.stride.clone(), t.is_contiguous(), t.extent().unwrap()), (vec![2, 3], vec![1, 2], false, 7));
    }

    #[test]
    fn hostile_pickles_are_errors() {
        // A view past its storage.
        let err = tensors(&load(&state_dict("w", 2, &[2, 3], &[1, 2], 7)).unwrap()).unwrap_err().to_string();
        assert!(err.contains("reaches element 8 of a storage of 7"), "{err}");
        // Too few arguments to the rebuild.
        let p = b"\x80\x02}(\x8c\x01wctorch._utils\n_rebuild_tensor_v2\n(K\x01tRu.";
        let err = tensors(&load(p).unwrap()).unwrap_err().to_string();
        assert!(err.contains("_rebuild_tensor_v2 with 1 arguments"), "{err}");
        // A 4 GB string in a short pickle.
        let err = load(b"\x80\x02X\xff\xff\xff\xff..").unwrap_err().to_string();
        assert!(err.contains("runs past the end"), "{err}");
        // Deep nesting.
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 100_000));
        deep.extend(std::iter::repeat_n(b'a', 99_999));
        deep.push(b'.');
        let err = load(&deep).unwrap_err().to_string();
        assert!(err.contains("nested more than"), "{err}");
        // Exponential copies through the memo.
        let mut bomb = b"\x80\x02]q\x00".to_vec();
        for _ in 0..64 {
            bomb.extend(b"h\x00h\x00\x86q\x00");
        }
        bomb.push(b'.');
        let err = load(&bomb).unwrap_err().to_string();
        assert!(err.contains("nested more than") || err.contains("objects"), "{err}");
        let err = load(b"\x80\x02\xff").unwrap_err().to_string();
        assert!(err.contains("opcode 0xff at offset 2"), "{err}");
    }
}
