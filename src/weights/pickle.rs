//! A reader for the subset of Python's pickle format that `torch.save` writes (protocols 1-5 as
//! far as state dicts need them): containers, numbers, strings, globals, `REDUCE`/`BUILD`/`NEWOBJ`
//! and persistent ids for storages. Nothing is executed: a global is only a name, and the few
//! callables a state dict needs (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`,
//! `collections.OrderedDict`, ...) are interpreted; any other call becomes an opaque
//! [`Value::Object`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::ElemType;

/// A storage named by a persistent id: `('storage', torch.FloatStorage, key, location, numel)`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub elem: Option<ElemType>,
    /// e.g. "FloatStorage" (kept for messages about unsupported types).
    pub type_name: String,
    /// Entry name under `data/` in the archive.
    pub key: String,
    pub numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

/// A pickled value. Lists and dicts are shared (`Rc<RefCell<..>>`) because pickle mutates them
/// after memoizing them.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64 (kept only as "some number").
    BigInt,
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// `module.name`, unresolved.
    Global(String, String),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// Any other call or instance: what was called, with the state set by `BUILD`.
    Object(Rc<RefCell<Object>>),
}

#[derive(Debug)]
pub struct Object {
    pub class: Value,
    pub args: Value,
    pub state: Option<Value>,
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Short description for messages ("int", "dict with 4 entries", "object argparse.Namespace").
    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::BigInt => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(t) => format!("tuple of {}", t.len()),
            Value::List(l) => format!("list of {}", l.borrow().len()),
            Value::Dict(d) => format!("dict with {} entries", d.borrow().len()),
            Value::Global(m, n) => format!("{m}.{n}"),
            Value::Storage(s) => format!("torch.{}", s.type_name),
            Value::Tensor(_) => "tensor".into(),
            Value::Object(o) => match &o.borrow().class {
                Value::Global(m, n) => format!("object {m}.{n}"),
                _ => "object".into(),
            },
        }
    }

    /// The callable of an object, as `module.name`, if it is a global.
    pub fn class_name(&self) -> Option<String> {
        match self {
            Value::Object(o) => match &o.borrow().class {
                Value::Global(m, n) => Some(format!("{m}.{n}")),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Reads a pickle. Errors are plain strings; the caller adds the file name.
pub fn load(data: &[u8]) -> Result<Value, String> {
    Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }.run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

fn dict_from_pairs(items: Vec<Value>) -> Result<Value, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    Ok(Value::Dict(Rc::new(RefCell::new(pairs))))
}

fn int_of(v: &Value, what: &str) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bool(b) => Ok(*b as i64),
        other => Err(format!("{what}: expected an int, got {}", other.describe())),
    }
}

fn usize_of(v: &Value, what: &str) -> Result<usize, String> {
    let i = int_of(v, what)?;
    usize::try_from(i).map_err(|_| format!("{what}: negative value {i}"))
}

fn usizes_of(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(t) => t.iter().map(|x| usize_of(x, what)).collect(),
        Value::List(l) => l.borrow().iter().map(|x| usize_of(x, what)).collect(),
        other => Err(format!("{what}: expected a tuple, got {}", other.describe())),
    }
}

fn storage_elem(type_name: &str) -> Option<ElemType> {
    Some(match type_name {
        "FloatStorage" => ElemType::F32,
        "DoubleStorage" => ElemType::F64,
        "HalfStorage" => ElemType::F16,
        "BFloat16Storage" => ElemType::BF16,
        "LongStorage" => ElemType::I64,
        "IntStorage" => ElemType::I32,
        "ShortStorage" => ElemType::I16,
        "CharStorage" => ElemType::I8,
        "ByteStorage" => ElemType::U8,
        "BoolStorage" => ElemType::Bool,
        _ => return None,
    })
}

/// `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_tensor(args: &[Value]) -> Result<Value, String> {
    let [storage, offset, size, stride, ..] = args else {
        return Err(format!("_rebuild_tensor_v2 with {} arguments (expected at least 4)", args.len()));
    };
    let Value::Storage(s) = storage else {
        return Err(format!("_rebuild_tensor_v2: expected a storage, got {}", storage.describe()));
    };
    let shape = usizes_of(size, "tensor size")?;
    let strides = usizes_of(stride, "tensor stride")?;
    if shape.len() != strides.len() {
        return Err(format!("tensor with {} sizes but {} strides", shape.len(), strides.len()));
    }
    Ok(Value::Tensor(Rc::new(TensorRef {
        storage: (**s).clone(),
        offset: usize_of(offset, "storage offset")?,
        shape,
        strides,
    })))
}

impl Machine<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> String {
        format!("pickle offset {}: {msg}", self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| self.err("truncated"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err("unterminated text line"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|e| format!("invalid UTF-8 string: {e}"))?.to_string();
        Ok(Value::Str(s))
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| format!("pickle offset {pos}: stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or_else(|| self.err("missing MARK"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK above the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&self, i: u32) -> Result<Value, String> {
        self.memo.get(&i).cloned().ok_or_else(|| self.err(format!("memo entry {i} not defined")))
    }

    fn memo_put(&mut self, i: u32) -> Result<(), String> {
        let v = self.stack.last().cloned().ok_or_else(|| self.err("PUT on an empty stack"))?;
        self.memo.insert(i, v);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), String> {
        // SETITEMS on an object we do not model (a custom mapping) drops the items.
        let Value::Dict(d) = self.top()?.clone() else { return Ok(()) };
        let Value::Dict(new) = dict_from_pairs(items)? else { return Ok(()) };
        let mut d = d.borrow_mut();
        for (k, v) in new.take() {
            // Python dict semantics: a repeated key overwrites.
            match d.iter_mut().find(|(ek, _)| matches!((ek, &k), (Value::Str(a), Value::Str(b)) if a == b)) {
                Some(slot) => slot.1 = v,
                None => d.push((k, v)),
            }
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<(), String> {
        if let Value::List(l) = self.top()? {
            l.borrow_mut().extend(items);
        }
        Ok(())
    }

    /// `callable(*args)` for the callables a checkpoint needs; anything else is an opaque object.
    fn call(&self, callable: Value, args: Value) -> Result<Value, String> {
        let argv: Vec<Value> = match &args {
            Value::Tuple(t) => t.as_ref().clone(),
            _ => Vec::new(),
        };
        if let Value::Global(module, name) = &callable {
            match (module.as_str(), name.as_str()) {
                ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                    return rebuild_tensor(&argv).map_err(|e| self.err(e));
                }
                ("torch._utils", "_rebuild_parameter")
                | ("torch._utils", "_rebuild_parameter_with_state")
                | ("torch.nn.parameter", "Parameter") => {
                    if let Some(data) = argv.first() {
                        return Ok(data.clone());
                    }
                }
                ("torch._tensor", "_rebuild_from_type_v2") | ("torch._tensor", "_rebuild_from_type") => {
                    // (func, new_type, args, state): the tensor is func(*args).
                    if let (Some(func), Some(inner)) = (argv.first(), argv.get(2)) {
                        return self.call(func.clone(), inner.clone());
                    }
                }
                ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                    return Ok(Value::Dict(Rc::new(RefCell::new(Vec::new()))));
                }
                _ => {}
            }
        }
        Ok(Value::Object(Rc::new(RefCell::new(Object { class: callable, args, state: None }))))
    }

    fn persistent_load(&self, pid: Value) -> Result<Value, String> {
        let parts = match &pid {
            Value::Tuple(t) => t.clone(),
            other => return Err(self.err(format!("persistent id is {}, not a tuple", other.describe()))),
        };
        if parts.first().and_then(Value::as_str) != Some("storage") || parts.len() < 5 {
            return Err(self.err("persistent id is not a torch storage ('storage', type, key, location, numel)"));
        }
        let type_name = match &parts[1] {
            Value::Global(_, n) => n.clone(),
            other => return Err(self.err(format!("storage type is {}", other.describe()))),
        };
        let key = match &parts[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            other => return Err(self.err(format!("storage key is {}", other.describe()))),
        };
        let numel = usize_of(&parts[4], "storage size").map_err(|e| self.err(e))?;
        Ok(Value::Storage(Rc::new(StorageRef { elem: storage_elem(&type_name), type_name, key, numel })))
    }

    fn run(mut self) -> Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("unsupported pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        Value::Int(0)
                    } else if n <= 8 {
                        let mut buf = if b[n - 1] & 0x80 != 0 { [0xffu8; 8] } else { [0u8; 8] };
                        buf[..n].copy_from_slice(b);
                        Value::Int(i64::from_le_bytes(buf))
                    } else {
                        Value::BigInt
                    };
                    self.stack.push(v);
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => s.parse().map(Value::Int).unwrap_or(Value::BigInt),
                    };
                    self.stack.push(v);
                }
                b'L' => {
                    let l = self.line()?;
                    self.stack.push(l.trim_end_matches('L').parse().map(Value::Int).unwrap_or(Value::BigInt));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v));
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l.parse().map_err(|_| self.err(format!("bad float {l:?}")))?;
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| self.err("string too long"))?;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                b'T' | b'U' => {
                    // Python 2 str: bytes, read as Latin-1-ish text.
                    let n = if op == b'T' { self.u32()? as usize } else { self.u8()? as usize };
                    let s = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.stack.push(Value::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => usize::try_from(self.u64()?).map_err(|_| self.err("bytes too long"))?,
                    };
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(v));
                }
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                b']' => self.stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'}' => self.stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = dict_from_pairs(items).map_err(|e| self.err(e))?;
                    self.stack.push(d);
                }
                0x8f => {
                    // EMPTY_SET: modelled as a list (never part of a state dict).
                    self.stack.push(Value::List(Rc::new(RefCell::new(Vec::new()))));
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v]).map_err(|e| self.err(e))?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items).map_err(|e| self.err(e))?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                b'p' => {
                    let l = self.line()?;
                    let i = l.parse().map_err(|_| self.err(format!("bad PUT index {l:?}")))?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'g' => {
                    let l = self.line()?;
                    let i = l.parse().map_err(|_| self.err(format!("bad GET index {l:?}")))?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    if let Value::Object(o) = self.top()? {
                        o.borrow_mut().state = Some(state);
                    }
                    // BUILD on a dict (an OrderedDict's `_metadata`) or a tensor: not needed.
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'P' => {
                    return Err(self.err("text persistent id: not a torch zip checkpoint"));
                }
                0x97 | 0x98 => {
                    return Err(self.err("out-of-band buffers (pickle protocol 5) are not supported"));
                }
                other => {
                    return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_containers_numbers_and_memo() {
        // pickle.dumps({'a': [1, -2, 300, 70000], 'b': (1.5, None, True), 'c': 'x'}, protocol=2)
        // followed by a BINGET of the list: built by hand from the opcode table.
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.extend([b'X', 1, 0, 0, 0, b'a', b']', b'q', 1, b'(']);
        p.extend([b'K', 1, b'J', 0xfe, 0xff, 0xff, 0xff, b'M', 0x2c, 0x01, b'J', 0x70, 0x11, 0x01, 0x00, b'e']);
        p.extend([b'X', 1, 0, 0, 0, b'b', b'G']);
        p.extend(1.5f64.to_be_bytes());
        p.extend([b'N', 0x88, 0x87]);
        p.extend([b'X', 1, 0, 0, 0, b'c', b'h', 1, b'u', b'.']);
        let v = load(&p).unwrap();
        let Value::Dict(d) = v else { panic!("{v:?}") };
        let d = d.borrow();
        assert_eq!(d.len(), 3);
        let Value::List(l) = &d[0].1 else { panic!() };
        let ints: Vec<i64> = l.borrow().iter().map(|x| int_of(x, "").unwrap()).collect();
        assert_eq!(ints, vec![1, -2, 300, 70000]);
        let Value::Tuple(t) = &d[1].1 else { panic!() };
        assert!(matches!(t[0], Value::Float(f) if f == 1.5) && matches!(t[1], Value::None));
        // The memoized list is the same list (shared), not a stale copy.
        let Value::List(l2) = &d[2].1 else { panic!() };
        assert!(Rc::ptr_eq(l, l2));
    }

    #[test]
    fn long1_sign_extends() {
        let p = [0x80, 2, 0x8a, 2, 0x00, 0x80, b'.'];
        assert!(matches!(load(&p).unwrap(), Value::Int(-32768)));
        let p = [0x80, 2, 0x8a, 1, 0xff, b'.'];
        assert!(matches!(load(&p).unwrap(), Value::Int(-1)));
    }

    #[test]
    fn bad_input_is_an_error_with_offset() {
        assert!(load(&[0x80, 2, b'X', 9, 0, 0, 0, b'a']).unwrap_err().contains("truncated"));
        assert!(load(&[0x80, 2, 0xfe]).unwrap_err().contains("opcode 0xfe"));
        assert!(load(&[0x80, 2, b'h', 3, b'.']).unwrap_err().contains("memo entry 3"));
        assert!(load(b".").unwrap_err().contains("underflow"));
    }
}
