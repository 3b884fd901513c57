//! Python's pickle format, as far as managers speak it: a value type for
//! Python objects, a reader for protocols 2 to 5 that never runs anything
//! (a global is a name, kept as data), and a writer of protocol 3, which
//! every Python 3 reads.
//!
//! ```
//! use multiproc::managers::pickle::{self, PyValue};
//!
//! let v = PyValue::Tuple(vec![PyValue::Str("#RETURN".into()), PyValue::Int(42)]);
//! let bytes = pickle::dumps(&v);
//! assert_eq!(pickle::loads(&bytes).unwrap(), v);
//!
//! // A global that would be code in Python is only a name here.
//! let evil = b"\x80\x03cos\nsystem\nX\x02\x00\x00\x00lsq\x00\x85q\x01Rq\x02.";
//! let v = pickle::loads(evil).unwrap();
//! assert_eq!(v.class_name(), Some(("os", "system")));
//! ```

use std::fmt;

/// A Python object as pickle carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int` that fits in 64 bits.
    Int(i64),
    /// A larger `int`: little-endian two's complement bytes, as pickle's
    /// `LONG1`/`LONG4` carry them.
    BigInt(Vec<u8>),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes`.
    Bytes(Vec<u8>),
    /// A `bytearray`.
    ByteArray(Vec<u8>),
    /// A `tuple`.
    Tuple(Vec<PyValue>),
    /// A `list`.
    List(Vec<PyValue>),
    /// A `dict`, in insertion order.
    Dict(Vec<(PyValue, PyValue)>),
    /// A `set`.
    Set(Vec<PyValue>),
    /// A `frozenset`.
    FrozenSet(Vec<PyValue>),
    /// A reference to a class or function by name (`module.name`): only a
    /// name, never looked up.
    Global {
        /// Its module, such as `multiprocessing.managers`.
        module: String,
        /// Its name, such as `Token`.
        name: String,
    },
    /// An object built from a class: `class(*args)` (`REDUCE`) or
    /// `class.__new__(class, *args)` (`NEWOBJ`), then given `state`
    /// (`BUILD`). Nothing is called: this records what a Python reader
    /// would do.
    Object {
        /// Usually a [`PyValue::Global`].
        class: Box<PyValue>,
        /// The constructor arguments (a tuple).
        args: Box<PyValue>,
        /// Whether it was made with `NEWOBJ` rather than `REDUCE`.
        new_obj: bool,
        /// What `BUILD` gave it, if anything.
        state: Option<Box<PyValue>>,
    },
}

impl PyValue {
    /// `module` and `name` of an object's class (or of a global itself).
    pub fn class_name(&self) -> Option<(&str, &str)> {
        match self {
            PyValue::Global { module, name } => Some((module, name)),
            PyValue::Object { class, .. } => class.class_name(),
            _ => None,
        }
    }

    /// An object of class `module.name` made by calling it with `args`
    /// (how exceptions pickle).
    pub fn reduce(module: &str, name: &str, args: Vec<PyValue>) -> PyValue {
        PyValue::Object {
            class: Box::new(PyValue::global(module, name)),
            args: Box::new(PyValue::Tuple(args)),
            new_obj: false,
            state: None,
        }
    }

    /// A global `module.name`.
    pub fn global(module: &str, name: &str) -> PyValue {
        PyValue::Global { module: module.into(), name: name.into() }
    }

    /// The text of a `str`.
    pub fn as_str(&self) -> Option<&str> {
        if let PyValue::Str(s) = self { Some(s) } else { None }
    }

    /// Python's truth value of plain data (objects count as true).
    pub fn truthy(&self) -> bool {
        match self {
            PyValue::None => false,
            PyValue::Bool(b) => *b,
            PyValue::Int(i) => *i != 0,
            PyValue::BigInt(b) => b.iter().any(|x| *x != 0),
            PyValue::Float(f) => *f != 0.0,
            PyValue::Str(s) => !s.is_empty(),
            PyValue::Bytes(b) | PyValue::ByteArray(b) => !b.is_empty(),
            PyValue::Tuple(v) | PyValue::List(v) | PyValue::Set(v) | PyValue::FrozenSet(v) => !v.is_empty(),
            PyValue::Dict(d) => !d.is_empty(),
            PyValue::Global { .. } | PyValue::Object { .. } => true,
        }
    }

    /// A number as f64 (ints and floats), for timeouts.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Int(i) => Some(*i as f64),
            PyValue::Float(f) => Some(*f),
            PyValue::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        }
    }
}

/// Python's `str()` of the value: text as it is, everything else as
/// Python's `repr()` would show it.
///
/// ```
/// use multiproc::managers::pickle::PyValue;
/// let v = PyValue::Tuple(vec![PyValue::Str("a'b".into()), PyValue::Float(1.0), PyValue::None, PyValue::Bytes(b"x\n".to_vec())]);
/// assert_eq!(v.to_string(), r#"("a'b", 1.0, None, b'x\n')"#);
/// assert_eq!(PyValue::Str("plain".into()).to_string(), "plain");
/// ```
impl fmt::Display for PyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PyValue::Str(s) => f.write_str(s),
            other => other.repr(f),
        }
    }
}

impl PyValue {
    fn repr(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = |f: &mut fmt::Formatter<'_>, open: &str, items: &[PyValue], close: &str| {
            f.write_str(open)?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                item.repr(f)?;
            }
            f.write_str(close)
        };
        match self {
            PyValue::None => f.write_str("None"),
            PyValue::Bool(true) => f.write_str("True"),
            PyValue::Bool(false) => f.write_str("False"),
            PyValue::Int(i) => write!(f, "{i}"),
            PyValue::BigInt(b) if b.len() <= 16 => {
                let fill = if b.last().is_some_and(|x| x & 0x80 != 0) { 0xff } else { 0 };
                let mut bytes = [fill; 16];
                bytes[..b.len()].copy_from_slice(b);
                write!(f, "{}", i128::from_le_bytes(bytes))
            }
            PyValue::BigInt(b) => write!(f, "<int of {} bytes>", b.len()),
            PyValue::Float(x) if x.is_nan() => f.write_str("nan"),
            PyValue::Float(x) if x.is_infinite() => f.write_str(if *x > 0.0 { "inf" } else { "-inf" }),
            PyValue::Float(x) => write!(f, "{x:?}"),
            PyValue::Str(s) => {
                let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
                write!(f, "{quote}")?;
                for c in s.chars() {
                    match c {
                        '\\' => f.write_str("\\\\")?,
                        '\n' => f.write_str("\\n")?,
                        '\t' => f.write_str("\\t")?,
                        '\r' => f.write_str("\\r")?,
                        c if c == quote => write!(f, "\\{c}")?,
                        c => write!(f, "{c}")?,
                    }
                }
                write!(f, "{quote}")
            }
            PyValue::Bytes(b) => write!(f, "b'{}'", b.escape_ascii()),
            PyValue::ByteArray(b) => write!(f, "bytearray(b'{}')", b.escape_ascii()),
            PyValue::Tuple(items) if items.len() == 1 => seq(f, "(", items, ",)"),
            PyValue::Tuple(items) => seq(f, "(", items, ")"),
            PyValue::List(items) => seq(f, "[", items, "]"),
            PyValue::Set(items) if items.is_empty() => f.write_str("set()"),
            PyValue::Set(items) => seq(f, "{", items, "}"),
            PyValue::FrozenSet(items) => seq(f, "frozenset({", items, "})"),
            PyValue::Dict(pairs) => {
                f.write_str("{")?;
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    k.repr(f)?;
                    f.write_str(": ")?;
                    v.repr(f)?;
                }
                f.write_str("}")
            }
            PyValue::Global { module, name } => write!(f, "<{module}.{name}>"),
            PyValue::Object { class, args, .. } => {
                match class.class_name() {
                    Some((m, n)) => write!(f, "{m}.{n}")?,
                    None => class.repr(f)?,
                }
                match &**args {
                    PyValue::Tuple(a) => seq(f, "(", a, ")"),
                    other => {
                        f.write_str("(")?;
                        other.repr(f)?;
                        f.write_str(")")
                    }
                }
            }
        }
    }
}

/// Python's equality for the kinds that can be dict keys here: numbers
/// compare by value across int, bool and float; floats by bits otherwise
/// not needed.
impl Eq for PyValue {}

impl std::hash::Hash for PyValue {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self).hash(h);
        match self {
            PyValue::None => {}
            PyValue::Bool(b) => b.hash(h),
            PyValue::Int(i) => i.hash(h),
            PyValue::BigInt(b) | PyValue::Bytes(b) | PyValue::ByteArray(b) => b.hash(h),
            PyValue::Float(f) => f.to_bits().hash(h),
            PyValue::Str(s) => s.hash(h),
            PyValue::Tuple(v) | PyValue::List(v) | PyValue::Set(v) | PyValue::FrozenSet(v) => v.hash(h),
            PyValue::Dict(d) => d.hash(h),
            PyValue::Global { module, name } => (module, name).hash(h),
            PyValue::Object { class, args, new_obj, state } => (class, args, new_obj, state).hash(h),
        }
    }
}

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError(pub String);

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad pickle: {}", self.0)
    }
}

impl std::error::Error for PickleError {}

fn bad<T>(what: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError(what.into()))
}

/// How deep containers may nest in a pickle we read.
const MAX_DEPTH: usize = 512;

/// Reads one pickle. Never executes anything, never panics on bad input:
/// malformed input is a [`PickleError`].
pub fn loads(data: &[u8]) -> Result<PyValue, PickleError> {
    Reader { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: Vec::new(), popped: 0 }.run()
}

/// A stack entry: the value and the memo slot it was stored in, so that a
/// container filled after memoizing updates its memo copy too.
struct Entry {
    value: PyValue,
    memo: Option<usize>,
    /// How deeply its containers nest, kept as values are built so that
    /// nesting is refused before it is deep enough to overflow a stack
    /// (dropping, cloning and comparing values recurse).
    depth: usize,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Entry>,
    marks: Vec<usize>,
    memo: Vec<Option<(PyValue, usize)>>,
    /// The deepest entry popped by the current opcode.
    popped: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.data.len());
        let Some(end) = end else { return bad("truncated") };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn sized(&mut self, n: u64) -> Result<Vec<u8>, PickleError> {
        let n = usize::try_from(n).map_err(|_| PickleError("length too large".into()))?;
        Ok(self.take(n)?.to_vec())
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else { return bad("unterminated line") };
        let s = String::from_utf8(rest[..nl].to_vec()).map_err(|_| PickleError("line not UTF-8".into()))?;
        self.pos += nl + 1;
        Ok(s)
    }

    fn text(bytes: Vec<u8>) -> Result<PyValue, PickleError> {
        // Python writes lone surrogates as UTF-8-ish bytes ("surrogatepass");
        // a lossy decode keeps them readable rather than failing.
        Ok(PyValue::Str(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())))
    }

    fn push(&mut self, value: PyValue) -> Result<(), PickleError> {
        if self.stack.len() > self.data.len() + 16 {
            return bad("stack larger than the input");
        }
        self.stack.push(Entry { value, memo: None, depth: 0 });
        Ok(())
    }

    /// Pushes a container made of what this opcode popped.
    fn push_built(&mut self, value: PyValue) -> Result<(), PickleError> {
        let depth = self.popped + 1;
        if depth > MAX_DEPTH {
            return bad("nested too deeply");
        }
        self.push(value)?;
        self.stack.last_mut().expect("just pushed").depth = depth;
        Ok(())
    }

    /// After putting what this opcode popped into the top container.
    fn deepen_top(&mut self) -> Result<(), PickleError> {
        let depth = self.popped + 1;
        let top = self.top()?;
        top.depth = top.depth.max(depth);
        if top.depth > MAX_DEPTH {
            return bad("nested too deeply");
        }
        self.refresh_memo()
    }

    fn pop(&mut self) -> Result<PyValue, PickleError> {
        if self.marks.last().is_some_and(|m| *m >= self.stack.len()) {
            return bad("pop past a mark");
        }
        let e = self.stack.pop().ok_or_else(|| PickleError("stack underflow".into()))?;
        self.popped = self.popped.max(e.depth);
        Ok(e.value)
    }

    fn top(&mut self) -> Result<&mut Entry, PickleError> {
        self.stack.last_mut().ok_or_else(|| PickleError("stack underflow".into()))
    }

    fn pop_mark(&mut self) -> Result<Vec<PyValue>, PickleError> {
        let Some(mark) = self.marks.pop() else { return bad("no mark") };
        if mark > self.stack.len() {
            return bad("mark past the stack");
        }
        let popped = self.stack[mark..].iter().map(|e| e.depth).max().unwrap_or(0);
        self.popped = self.popped.max(popped);
        Ok(self.stack.drain(mark..).map(|e| e.value).collect())
    }

    /// After changing the top entry in place, refresh its memo copy.
    fn refresh_memo(&mut self) -> Result<(), PickleError> {
        let top = self.stack.last().ok_or_else(|| PickleError("stack underflow".into()))?;
        if let Some(slot) = top.memo {
            self.memo[slot] = Some((top.value.clone(), top.depth));
        }
        Ok(())
    }

    fn memo_put(&mut self, index: usize) -> Result<(), PickleError> {
        if index > self.data.len() {
            return bad("memo index out of range");
        }
        if self.memo.len() <= index {
            self.memo.resize(index + 1, None);
        }
        let top = self.stack.last_mut().ok_or_else(|| PickleError("memoize on an empty stack".into()))?;
        top.memo = Some(index);
        self.memo[index] = Some((top.value.clone(), top.depth));
        Ok(())
    }

    fn memo_get(&mut self, index: usize) -> Result<(), PickleError> {
        let (v, depth) =
            self.memo.get(index).cloned().flatten().ok_or_else(|| PickleError(format!("no memo {index}")))?;
        self.push(v)?;
        self.stack.last_mut().expect("just pushed").depth = depth;
        Ok(())
    }

    fn run(mut self) -> Result<PyValue, PickleError> {
        loop {
            self.popped = 0;
            let op = self.byte()?;
            match op {
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return bad(format!("unsupported protocol {proto}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return bad("values left after STOP");
                    }
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() > self.data.len() {
                        return bad("too many marks");
                    }
                    self.marks.push(self.stack.len());
                }
                b'N' => self.push(PyValue::None)?,
                0x88 => self.push(PyValue::Bool(true))?,
                0x89 => self.push(PyValue::Bool(false))?,
                b'K' => {
                    let v = self.byte()?;
                    self.push(PyValue::Int(v.into()))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(PyValue::Int(v.into()))?
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(PyValue::Int(v.into()))?
                }
                0x8a => {
                    let n = self.byte()?;
                    let bytes = self.sized(n.into())?;
                    self.push(long(bytes))?
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return bad("negative LONG4 length");
                    }
                    let bytes = self.sized(n as u64)?;
                    self.push(long(bytes))?
                }
                b'I' => {
                    let line = self.line()?;
                    let v = match line.as_str() {
                        "00" => PyValue::Bool(false),
                        "01" => PyValue::Bool(true),
                        s => PyValue::Int(s.parse().map_err(|_| PickleError(format!("bad INT {s:?}")))?),
                    };
                    self.push(v)?
                }
                b'L' => {
                    let line = self.line()?;
                    let digits = line.trim_end_matches('L');
                    let v = digits.parse().map_err(|_| PickleError(format!("bad LONG {line:?}")))?;
                    self.push(PyValue::Int(v))?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.push(PyValue::Float(v))?
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line.parse().map_err(|_| PickleError(format!("bad FLOAT {line:?}")))?;
                    self.push(PyValue::Float(v))?
                }
                0x8c => {
                    let n = self.byte()?;
                    let b = self.sized(n.into())?;
                    self.push(Self::text(b)?)?
                }
                b'X' => {
                    let n = self.u32()?;
                    let b = self.sized(n.into())?;
                    self.push(Self::text(b)?)?
                }
                0x8d => {
                    let n = self.u64()?;
                    let b = self.sized(n)?;
                    self.push(Self::text(b)?)?
                }
                b'C' => {
                    let n = self.byte()?;
                    let b = self.sized(n.into())?;
                    self.push(PyValue::Bytes(b))?
                }
                b'B' => {
                    let n = self.u32()?;
                    let b = self.sized(n.into())?;
                    self.push(PyValue::Bytes(b))?
                }
                0x8e => {
                    let n = self.u64()?;
                    let b = self.sized(n)?;
                    self.push(PyValue::Bytes(b))?
                }
                0x96 => {
                    let n = self.u64()?;
                    let b = self.sized(n)?;
                    self.push(PyValue::ByteArray(b))?
                }
                b'U' => {
                    // SHORT_BINSTRING (protocol 2 str of Python 2): bytes
                    // read as latin-1 text, as Python 3 does by default.
                    let n = self.byte()?;
                    let b = self.sized(n.into())?;
                    self.push(PyValue::Str(b.iter().map(|c| char::from(*c)).collect()))?
                }
                b'T' => {
                    let n = self.u32()?;
                    let b = self.sized(n.into())?;
                    self.push(PyValue::Str(b.iter().map(|c| char::from(*c)).collect()))?
                }
                b'V' => {
                    let line = self.line()?;
                    self.push(PyValue::Str(line))?
                }
                b')' => self.push(PyValue::Tuple(Vec::new()))?,
                0x85 => {
                    let a = self.pop()?;
                    self.push_built(PyValue::Tuple(vec![a]))?
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push_built(PyValue::Tuple(vec![a, b]))?
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.push_built(PyValue::Tuple(vec![a, b, c]))?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_built(PyValue::Tuple(items))?
                }
                b']' => self.push(PyValue::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_built(PyValue::List(items))?
                }
                b'a' => {
                    let item = self.pop()?;
                    match &mut self.top()?.value {
                        PyValue::List(l) => l.push(item),
                        _ => return bad("APPEND to a non-list"),
                    }
                    self.deepen_top()?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match &mut self.top()?.value {
                        PyValue::List(l) => l.extend(items),
                        _ => return bad("APPENDS to a non-list"),
                    }
                    self.deepen_top()?
                }
                b'}' => self.push(PyValue::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_built(PyValue::Dict(pairs(items)?))?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    set_items(&mut self.top()?.value, vec![(k, v)])?;
                    self.deepen_top()?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let items = pairs(items)?;
                    set_items(&mut self.top()?.value, items)?;
                    self.deepen_top()?
                }
                0x8f => self.push(PyValue::Set(Vec::new()))?,
                0x90 => {
                    let items = self.pop_mark()?;
                    match &mut self.top()?.value {
                        PyValue::Set(s) => s.extend(items),
                        _ => return bad("ADDITEMS to a non-set"),
                    }
                    self.deepen_top()?
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push_built(PyValue::FrozenSet(items))?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(PyValue::Global { module, name })?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (PyValue::Str(module), PyValue::Str(name)) => self.push(PyValue::Global { module, name })?,
                        _ => return bad("STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.push_built(object(class, args, false))?
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.push_built(object(class, args, true))?
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.push_built(object(class, PyValue::Tuple(vec![args, kwargs]), true))?
                }
                b'b' => {
                    let state = self.pop()?;
                    match &mut self.top()?.value {
                        PyValue::Object { state: s, .. } => *s = Some(Box::new(state)),
                        other => {
                            // BUILD on anything else: keep both as an object
                            // of unknown class rather than drop the state.
                            let inner = std::mem::replace(other, PyValue::None);
                            *other = PyValue::Object {
                                class: Box::new(inner),
                                args: Box::new(PyValue::Tuple(Vec::new())),
                                new_obj: false,
                                state: Some(Box::new(state)),
                            };
                        }
                    }
                    // Wrapping adds a level too.
                    self.popped = self.popped.max(self.top()?.depth);
                    self.deepen_top()?
                }
                0x94 => {
                    let index = self.memo.len();
                    self.memo_put(index)?
                }
                b'q' => {
                    let i = self.byte()?;
                    self.memo_put(i.into())?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i as usize)?
                }
                b'p' => {
                    let line = self.line()?;
                    let i = line.parse().map_err(|_| PickleError("bad PUT".into()))?;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.byte()?;
                    self.memo_get(i.into())?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i as usize)?
                }
                b'g' => {
                    let line = self.line()?;
                    let i = line.parse().map_err(|_| PickleError("bad GET".into()))?;
                    self.memo_get(i)?
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let (v, depth) = {
                        let top = self.top()?;
                        (top.value.clone(), top.depth)
                    };
                    self.push(v)?;
                    self.stack.last_mut().expect("just pushed").depth = depth;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                0x97 => {} // NEXT_BUFFER / READONLY_BUFFER need out-of-band buffers
                other => return bad(format!("unsupported opcode 0x{other:02x} at {}", self.pos - 1)),
            }
        }
    }
}

fn long(bytes: Vec<u8>) -> PyValue {
    if bytes.is_empty() {
        return PyValue::Int(0);
    }
    if bytes.len() <= 8 {
        let fill = if bytes[bytes.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
        let mut b = [fill; 8];
        b[..bytes.len()].copy_from_slice(&bytes);
        return PyValue::Int(i64::from_le_bytes(b));
    }
    PyValue::BigInt(bytes)
}

fn pairs(items: Vec<PyValue>) -> Result<Vec<(PyValue, PyValue)>, PickleError> {
    if !items.len().is_multiple_of(2) {
        return bad("odd number of dict items");
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn set_items(target: &mut PyValue, items: Vec<(PyValue, PyValue)>) -> Result<(), PickleError> {
    match target {
        PyValue::Dict(d) => {
            for (k, v) in items {
                match d.iter_mut().find(|(key, _)| *key == k) {
                    Some(slot) => slot.1 = v,
                    None => d.push((k, v)),
                }
            }
            Ok(())
        }
        // SETITEMS on an object is a __setitem__ on it (a dict subclass):
        // kept as its state.
        PyValue::Object { state, .. } => {
            let mut d = match state.take().map(|s| *s) {
                Some(PyValue::Dict(d)) => d,
                _ => Vec::new(),
            };
            d.extend(items);
            *state = Some(Box::new(PyValue::Dict(d)));
            Ok(())
        }
        _ => bad("SETITEM(S) on a non-dict"),
    }
}

fn object(class: PyValue, args: PyValue, new_obj: bool) -> PyValue {
    if !new_obj && let Some(data) = plain_data(&class, &args) {
        return data;
    }
    PyValue::Object { class: Box::new(class), args: Box::new(args), new_obj, state: None }
}

/// The few calls Python's own pickler uses for plain data at low
/// protocols (bytes as `_codecs.encode(text, 'latin1')`, sets as
/// `set([...])`, ...): read as the data they make. Nothing is called; any
/// other global stays an object record.
fn plain_data(class: &PyValue, args: &PyValue) -> Option<PyValue> {
    let PyValue::Global { module, name } = class else { return None };
    let PyValue::Tuple(args) = args else { return None };
    let latin1 = |s: &str| s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect::<Option<Vec<u8>>>();
    let builtin = module == "builtins" || module == "__builtin__";
    match (module.as_str(), name.as_str(), args.as_slice()) {
        ("_codecs", "encode", [PyValue::Str(text), PyValue::Str(codec)]) if codec == "latin1" || codec == "latin-1" => {
            latin1(text).map(PyValue::Bytes)
        }
        (_, "bytes", []) if builtin => Some(PyValue::Bytes(Vec::new())),
        (_, "bytearray", []) if builtin => Some(PyValue::ByteArray(Vec::new())),
        (_, "bytearray", [PyValue::Bytes(b)]) if builtin => Some(PyValue::ByteArray(b.clone())),
        (_, "bytearray", [PyValue::Str(text), PyValue::Str(codec)]) if builtin && codec.starts_with("latin") => {
            latin1(text).map(PyValue::ByteArray)
        }
        (_, "set", [PyValue::List(items)]) if builtin => Some(PyValue::Set(items.clone())),
        (_, "set", []) if builtin => Some(PyValue::Set(Vec::new())),
        (_, "frozenset", [PyValue::List(items)]) if builtin => Some(PyValue::FrozenSet(items.clone())),
        (_, "frozenset", []) if builtin => Some(PyValue::FrozenSet(Vec::new())),
        _ => None,
    }
}

/// Writes `value` as a protocol 3 pickle, readable by every Python 3.
pub fn dumps(value: &PyValue) -> Vec<u8> {
    let mut out = vec![0x80, 3];
    write(value, &mut out);
    out.push(b'.');
    out
}

fn write(value: &PyValue, out: &mut Vec<u8>) {
    match value {
        PyValue::None => out.push(b'N'),
        PyValue::Bool(true) => out.push(0x88),
        PyValue::Bool(false) => out.push(0x89),
        PyValue::Int(i) => match *i {
            0..=0xff => out.extend([b'K', *i as u8]),
            0x100..=0xffff => {
                out.push(b'M');
                out.extend((*i as u16).to_le_bytes());
            }
            i if i32::try_from(i).is_ok() => {
                out.push(b'J');
                out.extend((i as i32).to_le_bytes());
            }
            i => {
                let bytes = i.to_le_bytes();
                // Shortest two's complement form.
                let mut n = 8;
                while n > 1 {
                    let (last, prev) = (bytes[n - 1], bytes[n - 2]);
                    if (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0) {
                        n -= 1;
                    } else {
                        break;
                    }
                }
                out.extend([0x8a, n as u8]);
                out.extend(&bytes[..n]);
            }
        },
        PyValue::BigInt(bytes) => {
            out.push(0x8b);
            out.extend((bytes.len() as u32).to_le_bytes());
            out.extend(bytes);
        }
        PyValue::Float(f) => {
            out.push(b'G');
            out.extend(f.to_be_bytes());
        }
        PyValue::Str(s) => {
            out.push(b'X');
            out.extend((s.len() as u32).to_le_bytes());
            out.extend(s.as_bytes());
        }
        PyValue::Bytes(b) => {
            if b.len() < 256 {
                out.extend([b'C', b.len() as u8]);
            } else {
                out.push(b'B');
                out.extend((b.len() as u32).to_le_bytes());
            }
            out.extend(b);
        }
        PyValue::ByteArray(b) => {
            // Protocol 3 has no BYTEARRAY8: bytearray(b'...') by REDUCE.
            write(&PyValue::reduce("builtins", "bytearray", vec![PyValue::Bytes(b.clone())]), out);
        }
        PyValue::Tuple(items) => match items.len() {
            0 => out.push(b')'),
            1..=3 => {
                items.iter().for_each(|i| write(i, out));
                out.push([0x85, 0x86, 0x87][items.len() - 1]);
            }
            _ => {
                out.push(b'(');
                items.iter().for_each(|i| write(i, out));
                out.push(b't');
            }
        },
        PyValue::List(items) => {
            out.push(b']');
            for chunk in items.chunks(1000) {
                out.push(b'(');
                chunk.iter().for_each(|i| write(i, out));
                out.push(b'e');
            }
        }
        PyValue::Dict(items) => {
            out.push(b'}');
            for chunk in items.chunks(1000) {
                out.push(b'(');
                for (k, v) in chunk {
                    write(k, out);
                    write(v, out);
                }
                out.push(b'u');
            }
        }
        PyValue::Set(items) | PyValue::FrozenSet(items) => {
            let name = if matches!(value, PyValue::Set(_)) { "set" } else { "frozenset" };
            write(&PyValue::reduce("builtins", name, vec![PyValue::List(items.clone())]), out);
        }
        PyValue::Global { module, name } => {
            out.push(b'c');
            out.extend(module.as_bytes());
            out.push(b'\n');
            out.extend(name.as_bytes());
            out.push(b'\n');
        }
        PyValue::Object { class, args, new_obj, state } => {
            write(class, out);
            write(args, out);
            out.push(if *new_obj { 0x81 } else { b'R' });
            if let Some(state) = state {
                write(state, out);
                out.push(b'b');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        // A million nested one-tuples: refused long before a recursive drop
        // or clone could overflow the stack.
        let mut p = vec![0x80, 3, b'N'];
        p.extend(std::iter::repeat_n(0x85, 1_000_000));
        p.push(b'.');
        assert!(loads(&p).unwrap_err().0.contains("deeply"));
        // Nested lists built by APPEND, and by memo copies.
        let mut p = vec![0x80, 3, b']'];
        for _ in 0..100_000 {
            p.extend([b']', b'a']);
        }
        p.push(b'.');
        assert!(loads(&p).is_ok(), "wide is fine");
        let mut p = vec![0x80, 3];
        p.extend(std::iter::repeat_n(b']', 100_000));
        p.extend(std::iter::repeat_n(b'a', 99_999));
        p.push(b'.');
        assert!(loads(&p).unwrap_err().0.contains("deeply"));
        let ok: Vec<u8> = [&[0x80, 3, b'N'][..], &[0x85; 100], b"."].concat();
        assert!(loads(&ok).is_ok());
    }

    #[test]
    fn numbers_and_text_round_trip() {
        for v in [
            PyValue::Int(0),
            PyValue::Int(255),
            PyValue::Int(65535),
            PyValue::Int(-1),
            PyValue::Int(i64::MAX),
            PyValue::Int(i64::MIN),
            PyValue::Int(1 << 40),
            PyValue::BigInt(vec![1, 2, 3, 4, 5, 6, 7, 8, 9]),
            PyValue::Float(-2.5),
            PyValue::Str("h\u{e9}llo".into()),
            PyValue::Bytes(vec![0; 300]),
            PyValue::ByteArray(vec![1, 2]),
            PyValue::Set(vec![PyValue::Int(1)]),
            PyValue::FrozenSet(vec![]),
            PyValue::Dict(vec![(PyValue::Str("k".into()), PyValue::List(vec![PyValue::None; 1500]))]),
            PyValue::Tuple(vec![PyValue::Bool(true); 5]),
        ] {
            // Protocol 3 writes sets and bytearrays as calls to build them,
            // which read back as the data they make.
            assert_eq!(loads(&dumps(&v)).unwrap(), v);
        }
    }
}
