//! Python's `pickle` format, as far as managers speak it: a value type for
//! Python objects, a reader for protocols 0 to 5 that never runs anything
//! (a global is a name, kept as data), and a writer of protocol 3, which
//! every Python 3 reads. What a Python client puts comes back as Python's
//! own manager server would hand it back: objects with what they were
//! filled with and their state kept apart, shared parts still shared, a
//! value inside itself still inside itself (`tests/data/pickle_corpus.py`
//! checks a broad corpus against Python's server, every protocol, 3.7 to
//! 3.13).
//!
//! ```
//! use multiproc::pickle::{self, PyValue};
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
///
/// Equality is Python's `==` on the data: two values that contain
/// themselves are equal when they are built alike, whatever their ids.
#[derive(Debug, Clone)]
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
    /// `class.__new__(class, *args)` (`NEWOBJ`), then filled with
    /// `list_items` (`APPENDS`: what `append`/`extend` add, as for a
    /// `deque` or a list subclass) and `dict_items` (`SETITEMS`: what
    /// `obj[k] = v` sets, as for an `OrderedDict`, a `defaultdict` or a
    /// `Counter`), then given `state` (`BUILD`: `__setstate__`, or its
    /// `__dict__` and slots), in that order, as Python's `__reduce__`
    /// protocol does. Nothing is called: this records what a Python reader
    /// would do, and is written back the same way.
    Object {
        /// Usually a [`PyValue::Global`].
        class: Box<PyValue>,
        /// The constructor arguments (a tuple).
        args: Box<PyValue>,
        /// Whether it was made with `NEWOBJ` rather than `REDUCE`.
        new_obj: bool,
        /// What `APPEND`/`APPENDS` added to it.
        list_items: Vec<PyValue>,
        /// What `SETITEM`/`SETITEMS` set on it, in order.
        dict_items: Vec<(PyValue, PyValue)>,
        /// What `BUILD` gave it, if anything.
        state: Option<Box<PyValue>>,
    },
    /// A mutable value (a list, dict, set or object) that one pickle held
    /// in more than one place, such as the same list under two keys: every
    /// place holds this same [`Shared`], and it is written back once, the
    /// other places referring to it, so Python sees one object again.
    Shared(Shared),
    /// Inside a [`PyValue::Shared`], the shared value itself: a value that
    /// contains itself (a list appended to itself), by its [`Shared::id`].
    Ref(u64),
}

/// A value found in several places of one pickle (see [`PyValue::Shared`]).
/// Equal when the values are; cloning is cheap.
#[derive(Clone)]
pub struct Shared(std::sync::Arc<(u64, PyValue)>);

impl Shared {
    /// A value to be shared, with a fresh id.
    pub fn new(value: PyValue) -> Shared {
        Shared::with_id(fresh_id(), value)
    }

    fn with_id(id: u64, value: PyValue) -> Shared {
        Shared(std::sync::Arc::new((id, value)))
    }

    /// What the [`PyValue::Ref`]s inside it name it by; unique in this
    /// process.
    pub fn id(&self) -> u64 {
        self.0.0
    }

    /// The value.
    pub fn value(&self) -> &PyValue {
        &self.0.1
    }
}

fn fresh_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl PartialEq for Shared {
    fn eq(&self, other: &Shared) -> bool {
        equal(&PyValue::Shared(self.clone()), &PyValue::Shared(other.clone()), &mut Vec::new())
    }
}

impl PartialEq for PyValue {
    fn eq(&self, other: &PyValue) -> bool {
        equal(self, other, &mut Vec::new())
    }
}

/// Equality with `pairs`: the shared values being compared, whose `Ref`s
/// inside are equal when they name the two sides of one pair.
fn equal(a: &PyValue, b: &PyValue, pairs: &mut Vec<(u64, u64)>) -> bool {
    use PyValue as V;
    let all = |x: &[PyValue], y: &[PyValue], pairs: &mut Vec<(u64, u64)>| {
        x.len() == y.len() && x.iter().zip(y).all(|(x, y)| equal(x, y, pairs))
    };
    let all_pairs = |x: &[(PyValue, PyValue)], y: &[(PyValue, PyValue)], pairs: &mut Vec<(u64, u64)>| {
        x.len() == y.len() && x.iter().zip(y).all(|((k, v), (l, w))| equal(k, l, pairs) && equal(v, w, pairs))
    };
    match (a, b) {
        (V::Shared(x), V::Shared(y)) => {
            if x.id() == y.id() || pairs.contains(&(x.id(), y.id())) {
                return true;
            }
            pairs.push((x.id(), y.id()));
            let same = equal(x.value(), y.value(), pairs);
            pairs.pop();
            same
        }
        (V::Ref(x), V::Ref(y)) => x == y || pairs.contains(&(*x, *y)),
        (V::None, V::None) => true,
        (V::Bool(x), V::Bool(y)) => x == y,
        (V::Int(x), V::Int(y)) => x == y,
        (V::Float(x), V::Float(y)) => x == y,
        (V::BigInt(x), V::BigInt(y)) | (V::Bytes(x), V::Bytes(y)) | (V::ByteArray(x), V::ByteArray(y)) => x == y,
        (V::Str(x), V::Str(y)) => x == y,
        (V::Tuple(x), V::Tuple(y))
        | (V::List(x), V::List(y))
        | (V::Set(x), V::Set(y))
        | (V::FrozenSet(x), V::FrozenSet(y)) => all(x, y, pairs),
        (V::Dict(x), V::Dict(y)) => all_pairs(x, y, pairs),
        (V::Global { module: m, name: n }, V::Global { module: m2, name: n2 }) => m == m2 && n == n2,
        (
            V::Object { class, args, new_obj, list_items, dict_items, state },
            V::Object {
                class: class2,
                args: args2,
                new_obj: new_obj2,
                list_items: list_items2,
                dict_items: dict_items2,
                state: state2,
            },
        ) => {
            new_obj == new_obj2
                && equal(class, class2, pairs)
                && equal(args, args2, pairs)
                && all(list_items, list_items2, pairs)
                && all_pairs(dict_items, dict_items2, pairs)
                && match (state, state2) {
                    (Some(x), Some(y)) => equal(x, y, pairs),
                    (None, None) => true,
                    _ => false,
                }
        }
        _ => false,
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Shared#{}(", self.id())?;
        self.value().fmt(f)?;
        f.write_str(")")
    }
}

impl PyValue {
    /// `module` and `name` of an object's class (or of a global itself).
    pub fn class_name(&self) -> Option<(&str, &str)> {
        match self {
            PyValue::Global { module, name } => Some((module, name)),
            PyValue::Object { class, .. } => class.class_name(),
            PyValue::Shared(s) => s.value().class_name(),
            _ => None,
        }
    }

    /// The value itself, taken out of a [`PyValue::Shared`] (a copy; any
    /// [`PyValue::Ref`] inside still names the shared one).
    pub fn into_unshared(self) -> PyValue {
        match self {
            PyValue::Shared(s) => s.value().clone(),
            other => other,
        }
    }

    /// The value itself, seen through a [`PyValue::Shared`].
    pub fn unshared(&self) -> &PyValue {
        match self {
            PyValue::Shared(s) => s.value(),
            other => other,
        }
    }

    /// An object of class `module.name` made by calling it with `args`
    /// (how exceptions pickle).
    pub fn reduce(module: &str, name: &str, args: Vec<PyValue>) -> PyValue {
        PyValue::Object {
            class: Box::new(PyValue::global(module, name)),
            args: Box::new(PyValue::Tuple(args)),
            new_obj: false,
            list_items: Vec::new(),
            dict_items: Vec::new(),
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
            PyValue::Shared(s) => s.value().truthy(),
            PyValue::Ref(_) => true,
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
/// use multiproc::pickle::PyValue;
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
    /// Python's `repr()` of it (`Display` is Python's `str()`, which
    /// differs for a string: no quotes).
    ///
    /// ```
    /// use multiproc::pickle::PyValue;
    /// let v = PyValue::List(vec![PyValue::Str("a".into()), PyValue::Int(1)]);
    /// assert_eq!(v.repr_string(), "['a', 1]");
    /// assert_eq!(PyValue::Str("a".into()).repr_string(), "'a'");
    /// ```
    pub fn repr_string(&self) -> String {
        struct Repr<'a>(&'a PyValue);
        impl fmt::Display for Repr<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.repr(f)
            }
        }
        Repr(self).to_string()
    }

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
            PyValue::Shared(s) => s.value().repr(f),
            // As Python shows a container inside itself.
            PyValue::Ref(_) => f.write_str("[...]"),
            PyValue::Object { class, args, list_items, dict_items, .. } => {
                match class.class_name() {
                    Some((m, n)) => write!(f, "{m}.{n}")?,
                    None => class.repr(f)?,
                }
                match &**args {
                    PyValue::Tuple(a) => seq(f, "(", a, ")")?,
                    other => {
                        f.write_str("(")?;
                        other.repr(f)?;
                        f.write_str(")")?
                    }
                }
                // What it was filled with, as Python would show the data.
                if !list_items.is_empty() {
                    seq(f, "[", list_items, "]")?;
                }
                if !dict_items.is_empty() {
                    PyValue::Dict(dict_items.clone()).repr(f)?;
                }
                Ok(())
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
            PyValue::Object { class, args, new_obj, list_items, dict_items, state } => {
                (class, args, new_obj, list_items, dict_items, state).hash(h)
            }
            PyValue::Shared(s) => s.value().hash(h),
            // Equal values may name themselves by different ids.
            PyValue::Ref(_) => {}
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
/// malformed input is a [`PickleError`]. A mutable value that the pickle
/// holds in several places (or inside itself) comes out as a
/// [`PyValue::Shared`] (and [`PyValue::Ref`]s inside it).
///
/// ```
/// use multiproc::pickle::{self, PyValue};
/// // Python 3's pickle of `l = [1]; l.append(l)`.
/// let v = pickle::loads(b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01h\x00e.").unwrap();
/// let PyValue::Shared(s) = &v else { panic!("{v:?}") };
/// assert_eq!(s.value(), &PyValue::List(vec![PyValue::Int(1), PyValue::Ref(s.id())]));
/// assert_eq!(pickle::loads(&pickle::dumps(&v)).unwrap(), v);
/// ```
pub fn loads(data: &[u8]) -> Result<PyValue, PickleError> {
    Reader {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Vec::new(),
        popped: 0,
        proto: 0,
        nodes: Vec::new(),
    }
    .run()
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
    /// The protocol the pickle announced (0 when it announced none).
    proto: u8,
    /// The mutable values (lists, dicts, sets, objects) made so far: on the
    /// stack and in the memo, each is `PyValue::Ref(its index here)`, so
    /// that every place holds the same one and changes made after it was
    /// memoized (a list filled after it went into another) reach them all.
    /// `finish` turns the handles back into values.
    nodes: Vec<PyValue>,
}

impl<'a> Reader<'a> {
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
        String::from_utf8(self.line_bytes()?.to_vec()).map_err(|_| PickleError("line not UTF-8".into()))
    }

    fn line_bytes(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = &self.data[self.pos..];
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else { return bad("unterminated line") };
        self.pos += nl + 1;
        Ok(&rest[..nl])
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

    /// A new mutable value: kept in `nodes`, its handle returned.
    fn node(&mut self, value: PyValue) -> PyValue {
        self.nodes.push(value);
        PyValue::Ref(self.nodes.len() as u64 - 1)
    }

    /// The top value, to change in place: the node itself for a handle.
    fn top_mut(&mut self) -> Result<&mut PyValue, PickleError> {
        let top = &mut self.stack.last_mut().ok_or_else(|| PickleError("stack underflow".into()))?.value;
        match top {
            PyValue::Ref(n) => Ok(&mut self.nodes[*n as usize]),
            other => Ok(other),
        }
    }

    /// An object made by `class(*args)`, or the plain data Python's pickler
    /// writes as such a call at low protocols.
    fn object(&mut self, class: PyValue, args: PyValue, new_obj: bool) -> PyValue {
        if !new_obj {
            // The arguments as the calls of `plain_data` take them: lists
            // and dicts seen through their handles.
            let view = match &args {
                PyValue::Tuple(items) => PyValue::Tuple(
                    items
                        .iter()
                        .map(|i| match i {
                            PyValue::Ref(n) => self.nodes[*n as usize].clone(),
                            other => other.clone(),
                        })
                        .collect(),
                ),
                other => other.clone(),
            };
            if let Some(data) = plain_data(&class, &view) {
                return match data {
                    PyValue::Set(_) | PyValue::ByteArray(_) => self.node(data),
                    data => data,
                };
            }
        }
        self.node(PyValue::Object {
            class: Box::new(class),
            args: Box::new(args),
            new_obj,
            list_items: Vec::new(),
            dict_items: Vec::new(),
            state: None,
        })
    }

    /// The value with its handles turned back into values: a node found in
    /// one place is put there; one found in several (or inside itself)
    /// becomes one [`Shared`] held by each, with [`PyValue::Ref`] where it
    /// is inside itself. Nesting is checked here on the whole value.
    fn finish(&self, root: PyValue) -> Result<PyValue, PickleError> {
        let mut seen = vec![0u32; self.nodes.len()];
        self.count(&root, &mut seen, 0)?;
        let mut made: Vec<Option<Result<Shared, u64>>> = vec![None; self.nodes.len()];
        self.build(&root, &seen, &mut made, 0)
    }

    fn count(&self, v: &PyValue, seen: &mut [u32], depth: usize) -> Result<(), PickleError> {
        if depth > MAX_DEPTH {
            return bad("nested too deeply");
        }
        let mut each = |v: &PyValue| self.count(v, seen, depth + 1);
        match v {
            PyValue::Ref(n) => {
                let n = *n as usize;
                seen[n] = seen[n].saturating_add(1);
                if seen[n] == 1 {
                    self.count(&self.nodes[n], seen, depth + 1)?;
                }
            }
            PyValue::Tuple(items) | PyValue::List(items) | PyValue::Set(items) | PyValue::FrozenSet(items) => {
                items.iter().try_for_each(&mut each)?
            }
            PyValue::Dict(pairs) => pairs.iter().try_for_each(|(k, v)| each(k).and_then(|()| each(v)))?,
            PyValue::Object { class, args, list_items, dict_items, state, .. } => {
                each(class)?;
                each(args)?;
                list_items.iter().try_for_each(&mut each)?;
                dict_items.iter().try_for_each(|(k, v)| each(k).and_then(|()| each(v)))?;
                if let Some(s) = state {
                    each(s)?
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `made[n]`: `Err(id)` while node `n` is being built (a reference to
    /// it then is a cycle), its `Shared` once built.
    fn build(
        &self,
        v: &PyValue,
        seen: &[u32],
        made: &mut Vec<Option<Result<Shared, u64>>>,
        depth: usize,
    ) -> Result<PyValue, PickleError> {
        if depth > MAX_DEPTH {
            return bad("nested too deeply");
        }
        let mut each = |v: &PyValue| self.build(v, seen, made, depth + 1);
        Ok(match v {
            PyValue::Ref(n) => {
                let n = *n as usize;
                if seen[n] <= 1 {
                    return self.build(&self.nodes[n], seen, made, depth + 1);
                }
                match &made[n] {
                    Some(Ok(shared)) => PyValue::Shared(shared.clone()),
                    Some(Err(id)) => PyValue::Ref(*id),
                    None => {
                        let id = fresh_id();
                        made[n] = Some(Err(id));
                        let value = self.build(&self.nodes[n], seen, made, depth + 1)?;
                        let shared = Shared::with_id(id, value);
                        made[n] = Some(Ok(shared.clone()));
                        PyValue::Shared(shared)
                    }
                }
            }
            PyValue::Tuple(items) => PyValue::Tuple(items.iter().map(&mut each).collect::<Result<_, _>>()?),
            PyValue::List(items) => PyValue::List(items.iter().map(&mut each).collect::<Result<_, _>>()?),
            PyValue::Set(items) => PyValue::Set(items.iter().map(&mut each).collect::<Result<_, _>>()?),
            PyValue::FrozenSet(items) => PyValue::FrozenSet(items.iter().map(&mut each).collect::<Result<_, _>>()?),
            PyValue::Dict(pairs) => {
                PyValue::Dict(pairs.iter().map(|(k, v)| Ok((each(k)?, each(v)?))).collect::<Result<_, PickleError>>()?)
            }
            PyValue::Object { class, args, new_obj, list_items, dict_items, state } => PyValue::Object {
                class: Box::new(each(class)?),
                args: Box::new(each(args)?),
                new_obj: *new_obj,
                list_items: list_items.iter().map(&mut each).collect::<Result<_, _>>()?,
                dict_items: dict_items
                    .iter()
                    .map(|(k, v)| Ok((each(k)?, each(v)?)))
                    .collect::<Result<_, PickleError>>()?,
                state: match state {
                    Some(s) => Some(Box::new(each(s)?)),
                    None => None,
                },
            },
            other => other.clone(),
        })
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
                    self.proto = proto;
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return bad("values left after STOP");
                    }
                    return self.finish(v);
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
                    let v =
                        decimal(line.trim_end_matches('L')).ok_or_else(|| PickleError(format!("bad LONG {line:?}")))?;
                    self.push(v)?
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
                    let line = self.line_bytes()?;
                    self.push(PyValue::Str(raw_unicode_escape(line)))?
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
                b']' => {
                    let v = self.node(PyValue::List(Vec::new()));
                    self.push(v)?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.node(PyValue::List(items));
                    self.push_built(v)?
                }
                b'a' => {
                    let item = self.pop()?;
                    append(self.top_mut()?, vec![item])?;
                    self.deepen_top()?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    append(self.top_mut()?, items)?;
                    self.deepen_top()?
                }
                b'}' => {
                    let v = self.node(PyValue::Dict(Vec::new()));
                    self.push(v)?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.node(PyValue::Dict(pairs(items)?));
                    self.push_built(v)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    set_items(self.top_mut()?, vec![(k, v)])?;
                    self.deepen_top()?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let items = pairs(items)?;
                    set_items(self.top_mut()?, items)?;
                    self.deepen_top()?
                }
                0x8f => {
                    let v = self.node(PyValue::Set(Vec::new()));
                    self.push(v)?
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    match self.top_mut()? {
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
                    let (module, name) = (self.line()?, self.line()?);
                    // Below protocol 3 Python 3 writes Python 2's names, and
                    // maps them back when it reads (`fix_imports`).
                    let (module, name) = if self.proto < 3 { python3_name(module, name) } else { (module, name) };
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
                    let v = self.object(class, args, false);
                    self.push_built(v)?
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let v = self.object(class, args, true);
                    self.push_built(v)?
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let v = self.object(class, PyValue::Tuple(vec![args, kwargs]), true);
                    self.push_built(v)?
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top_mut()? {
                        PyValue::Object { state: s, .. } => *s = Some(Box::new(state)),
                        other => {
                            // BUILD on anything else: keep both as an object
                            // of unknown class rather than drop the state.
                            let inner = std::mem::replace(other, PyValue::None);
                            *other = PyValue::Object {
                                class: Box::new(inner),
                                args: Box::new(PyValue::Tuple(Vec::new())),
                                new_obj: false,
                                list_items: Vec::new(),
                                dict_items: Vec::new(),
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

/// A decimal integer of any size (protocol 0's `LONG`).
fn decimal(text: &str) -> Option<PyValue> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(PyValue::Int(i));
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The magnitude, little-endian base 256, then one byte of room for the
    // sign, then two's complement for a negative.
    let mut mag: Vec<u8> = vec![0];
    for d in digits.bytes() {
        let mut carry = u32::from(d - b'0');
        for byte in &mut mag {
            let v = u32::from(*byte) * 10 + carry;
            *byte = v as u8;
            carry = v >> 8;
        }
        if carry > 0 {
            mag.push(carry as u8);
        }
    }
    mag.push(0);
    if negative {
        let mut carry = 1u16;
        for byte in &mut mag {
            let v = u16::from(!*byte) + carry;
            *byte = v as u8;
            carry = v >> 8;
        }
    }
    // Shortest two's complement form, as pickle's LONG1 carries it.
    while mag.len() > 1 {
        let (last, prev) = (mag[mag.len() - 1], mag[mag.len() - 2]);
        if (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0) {
            mag.pop();
        } else {
            break;
        }
    }
    Some(long(mag))
}

/// Python's `raw-unicode-escape` (protocol 0's `UNICODE` lines): each byte
/// is a Latin-1 character, except `\uXXXX` and `\UXXXXXXXX`.
fn raw_unicode_escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let width = match (bytes[i], bytes.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => 0,
        };
        let escaped = (width > 0)
            .then(|| bytes.get(i + 2..i + 2 + width))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        match escaped {
            Some(code) => {
                // A lone surrogate has no Rust `char`: kept visible.
                out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                i += 2 + width;
            }
            None => {
                out.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    out
}

/// Python 2's name for a module or a global, as Python 3 reads it
/// (`_compat_pickle`'s mappings, for what Python 3 writes below protocol
/// 3).
fn python3_name(module: String, name: String) -> (String, String) {
    let renamed = match (module.as_str(), name.as_str()) {
        ("__builtin__", "xrange") => Some(("builtins", "range")),
        ("__builtin__", "reduce") => Some(("functools", "reduce")),
        ("__builtin__", "intern") => Some(("sys", "intern")),
        ("__builtin__", "unichr") => Some(("builtins", "chr")),
        ("__builtin__", "unicode") => Some(("builtins", "str")),
        ("__builtin__", "long") => Some(("builtins", "int")),
        ("itertools", "izip") => Some(("builtins", "zip")),
        ("itertools", "imap") => Some(("builtins", "map")),
        ("itertools", "ifilter") => Some(("builtins", "filter")),
        ("itertools", "ifilterfalse") => Some(("itertools", "filterfalse")),
        ("itertools", "izip_longest") => Some(("itertools", "zip_longest")),
        ("UserDict", "IterableUserDict") => Some(("collections", "UserDict")),
        ("UserList", "UserList") => Some(("collections", "UserList")),
        ("UserString", "UserString") => Some(("collections", "UserString")),
        ("whichdb", "whichdb") => Some(("dbm", "whichdb")),
        ("_socket", "fromfd") => Some(("socket", "fromfd")),
        ("_multiprocessing", "Connection") => Some(("multiprocessing.connection", "Connection")),
        ("multiprocessing.process", "Process") => Some(("multiprocessing.context", "Process")),
        ("multiprocessing.forking", "Popen") => Some(("multiprocessing.popen_fork", "Popen")),
        ("exceptions", _) => Some(("builtins", name.as_str())),
        _ => None,
    };
    if let Some((m, n)) = renamed {
        return (m.to_owned(), n.to_owned());
    }
    let module = match module.as_str() {
        "__builtin__" => "builtins",
        "copy_reg" => "copyreg",
        "Queue" => "queue",
        "SocketServer" => "socketserver",
        "ConfigParser" => "configparser",
        "repr" => "reprlib",
        "cPickle" => "pickle",
        "thread" => "_thread",
        "dummy_thread" => "_dummy_thread",
        "httplib" => "http.client",
        "Cookie" => "http.cookies",
        "cookielib" => "http.cookiejar",
        "htmlentitydefs" => "html.entities",
        "HTMLParser" => "html.parser",
        "xmlrpclib" => "xmlrpc.client",
        "urlparse" => "urllib.parse",
        "robotparser" => "urllib.robotparser",
        "StringIO" | "cStringIO" => "io",
        "UserDict" | "UserList" | "UserString" => "collections",
        "anydbm" => "dbm",
        "whichdb" => "dbm",
        "dbhash" => "dbm.bsd",
        "dumbdbm" => "dbm.dumb",
        "dbm" => "dbm.ndbm",
        "gdbm" => "dbm.gnu",
        "_winreg" => "winreg",
        other => return (other.to_owned(), name),
    };
    (module.to_owned(), name)
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
        // On an object, each is an `obj[k] = v` (an OrderedDict, a
        // defaultdict, a dict subclass): kept apart from its `BUILD` state,
        // which means something else (its attributes).
        PyValue::Object { dict_items, .. } => {
            dict_items.extend(items);
            Ok(())
        }
        _ => bad("SETITEM(S) on a non-dict"),
    }
}

fn append(target: &mut PyValue, items: Vec<PyValue>) -> Result<(), PickleError> {
    match target {
        PyValue::List(l) => l.extend(items),
        // An `append`/`extend` on it (a deque, a list subclass).
        PyValue::Object { list_items, .. } => list_items.extend(items),
        _ => return bad("APPEND(S) to a non-list"),
    }
    Ok(())
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
    let mut w = Writer { out: vec![0x80, 3], memo: std::collections::HashMap::new() };
    w.write(value);
    w.out.push(b'.');
    w.out
}

/// Where a pickle is being written, and which shared values it holds so
/// far (their memo slots).
struct Writer {
    out: Vec<u8>,
    memo: std::collections::HashMap<u64, u32>,
}

impl Writer {
    /// Memoizes what was just written as shared value `id`.
    fn put(&mut self, id: u64) {
        let slot = self.memo.len() as u32;
        self.memo.insert(id, slot);
        self.out.push(b'r');
        self.out.extend(slot.to_le_bytes());
    }

    /// Refers to shared value `id`, written before (or around) this.
    fn get(&mut self, id: u64) {
        match self.memo.get(&id) {
            Some(slot) => {
                self.out.push(b'j');
                self.out.extend(slot.to_le_bytes());
            }
            // A `Ref` outside the value it names: nothing to refer to. A
            // memo slot that does not exist makes Python's reader fail
            // loudly rather than read something else.
            None => {
                self.out.push(b'j');
                self.out.extend(u32::MAX.to_le_bytes());
            }
        }
    }

    /// A shared value: written once, memoized as soon as it exists (before
    /// what it contains, which may refer to it), referred to after.
    fn shared(&mut self, s: &Shared) {
        if self.memo.contains_key(&s.id()) {
            return self.get(s.id());
        }
        match s.value() {
            PyValue::List(items) => {
                self.out.push(b']');
                self.put(s.id());
                self.appends(items);
            }
            PyValue::Dict(items) => {
                self.out.push(b'}');
                self.put(s.id());
                self.setitems(items);
            }
            PyValue::Object { class, args, new_obj, list_items, dict_items, state } => {
                self.write(class);
                self.write(args);
                self.out.push(if *new_obj { 0x81 } else { b'R' });
                self.put(s.id());
                self.fill(list_items, dict_items, state.as_deref());
            }
            // Sets, bytearrays and the rest cannot contain themselves.
            other => {
                self.write(other);
                self.put(s.id());
            }
        }
    }

    fn write(&mut self, value: &PyValue) {
        let out = &mut self.out;
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
                self.write(&PyValue::reduce("builtins", "bytearray", vec![PyValue::Bytes(b.clone())]));
            }
            PyValue::Tuple(items) => match items.len() {
                0 => out.push(b')'),
                1..=3 => {
                    items.iter().for_each(|i| self.write(i));
                    self.out.push([0x85, 0x86, 0x87][items.len() - 1]);
                }
                _ => {
                    out.push(b'(');
                    items.iter().for_each(|i| self.write(i));
                    self.out.push(b't');
                }
            },
            PyValue::List(items) => {
                out.push(b']');
                self.appends(items);
            }
            PyValue::Dict(items) => {
                out.push(b'}');
                self.setitems(items);
            }
            PyValue::Set(items) | PyValue::FrozenSet(items) => {
                let name = if matches!(value, PyValue::Set(_)) { "set" } else { "frozenset" };
                self.write(&PyValue::reduce("builtins", name, vec![PyValue::List(items.clone())]));
            }
            PyValue::Global { module, name } => {
                out.push(b'c');
                out.extend(module.as_bytes());
                out.push(b'\n');
                out.extend(name.as_bytes());
                out.push(b'\n');
            }
            PyValue::Object { class, args, new_obj, list_items, dict_items, state } => {
                self.write(class);
                self.write(args);
                self.out.push(if *new_obj { 0x81 } else { b'R' });
                self.fill(list_items, dict_items, state.as_deref());
            }
            PyValue::Shared(s) => self.shared(s),
            PyValue::Ref(id) => self.get(*id),
        }
    }

    /// What an object is filled with, in the order Python's `save_reduce`
    /// writes it.
    fn fill(&mut self, list_items: &[PyValue], dict_items: &[(PyValue, PyValue)], state: Option<&PyValue>) {
        self.appends(list_items);
        self.setitems(dict_items);
        if let Some(state) = state {
            self.write(state);
            self.out.push(b'b');
        }
    }

    /// `APPENDS` of `items`, a thousand at a time as Python writes them.
    fn appends(&mut self, items: &[PyValue]) {
        for chunk in items.chunks(1000) {
            self.out.push(b'(');
            chunk.iter().for_each(|i| self.write(i));
            self.out.push(b'e');
        }
    }

    /// `SETITEMS` of `items`, likewise.
    fn setitems(&mut self, items: &[(PyValue, PyValue)]) {
        for chunk in items.chunks(1000) {
            self.out.push(b'(');
            for (k, v) in chunk {
                self.write(k);
                self.write(v);
            }
            self.out.push(b'u');
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

    fn p(ops: &[u8]) -> Vec<u8> {
        [&[0x80, 4][..], ops, b"."].concat()
    }

    #[test]
    fn an_object_filled_by_setitems_keeps_its_items_apart_from_its_state() {
        // OrderedDict([('z', 1), ('a', 2)]) as Python writes it: a call
        // with no arguments, then SETITEMS.
        let bytes = p(b"\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R(\x8c\x01zK\x01\x8c\x01aK\x02u");
        let v = loads(&bytes).unwrap();
        let PyValue::Object { dict_items, state, list_items, .. } = &v else { panic!("{v:?}") };
        assert_eq!(
            dict_items,
            &[(PyValue::Str("z".into()), PyValue::Int(1)), (PyValue::Str("a".into()), PyValue::Int(2))]
        );
        assert!(state.is_none() && list_items.is_empty());
        // Written back as SETITEMS, not as a BUILD state (which Python
        // would set as attributes, leaving the dict empty).
        let out = dumps(&v);
        assert!(!out.contains(&b'b'), "{out:?}");
        assert_eq!(loads(&out).unwrap(), v);
    }

    #[test]
    fn shared_and_self_containing_values_stay_so() {
        // {'a': l, 'b': l} with l = [1, 2].
        let v = loads(&p(b"}\x94(\x8c\x01a\x94]\x94(K\x01K\x02e\x8c\x01b\x94h\x02u")).unwrap();
        let PyValue::Dict(d) = &v else { panic!("{v:?}") };
        let (PyValue::Shared(a), PyValue::Shared(b)) = (&d[0].1, &d[1].1) else { panic!("{v:?}") };
        assert_eq!(a.id(), b.id());
        assert_eq!(a.value(), &PyValue::List(vec![PyValue::Int(1), PyValue::Int(2)]));
        let back = loads(&dumps(&v)).unwrap();
        let PyValue::Dict(d) = &back else { panic!() };
        let (PyValue::Shared(a), PyValue::Shared(b)) = (&d[0].1, &d[1].1) else { panic!("{back:?}") };
        assert_eq!(a.id(), b.id(), "still one list");
        // A dict that holds itself, through an object's state too.
        let v = loads(&p(b"}\x94\x8c\x04selfh\x00s")).unwrap();
        let PyValue::Shared(s) = &v else { panic!("{v:?}") };
        assert_eq!(s.value(), &PyValue::Dict(vec![(PyValue::Str("self".into()), PyValue::Ref(s.id()))]));
        assert_eq!(v.to_string(), "{'self': [...]}");
        assert_eq!(loads(&dumps(&v)).unwrap(), v);
    }

    #[test]
    fn sharing_is_cheap_and_nesting_through_later_changes_is_still_limited() {
        // Thirty levels, each list holding the one below twice: 2^30 places,
        // one value each.
        let put = |ops: &mut Vec<u8>, i: u32| {
            ops.push(b'r');
            ops.extend(i.to_le_bytes());
        };
        let get = |ops: &mut Vec<u8>, i: u32| {
            ops.push(b'j');
            ops.extend(i.to_le_bytes());
        };
        let mut ops = vec![b']'];
        put(&mut ops, 0);
        for level in 1..=30u32 {
            ops.extend([b'0', b']']);
            put(&mut ops, level);
            ops.push(b'(');
            get(&mut ops, level - 1);
            get(&mut ops, level - 1);
            ops.push(b'e');
        }
        let v = loads(&p(&ops)).unwrap();
        assert!(dumps(&v).len() < 2000, "written once each, referred to after");
        // Lists made first, then each put into the one before it: deep only
        // after they were all built, which the final check still sees.
        let n = MAX_DEPTH as u32 + 10;
        let mut ops = Vec::new();
        for _ in 0..n {
            ops.extend([b']', 0x94, b'0']);
        }
        for i in 0..n - 1 {
            ops.push(b'j');
            ops.extend(i.to_le_bytes());
            ops.push(b'j');
            ops.extend((i + 1).to_le_bytes());
            ops.extend([b'a', b'0']);
        }
        ops.push(b'j');
        ops.extend(0u32.to_le_bytes());
        assert!(loads(&p(&ops)).unwrap_err().0.contains("deeply"));
    }

    #[test]
    fn protocol_0_reads_as_python_3_does() {
        // 2**64 as a LONG line, a UNICODE line in raw-unicode-escape with a
        // Latin-1 byte and an escape, and Python 2's name for `builtins`.
        let v = loads(b"(L18446744073709551616L\nL-18446744073709551617L\nV\xe9\\u20ac\\\\\nc__builtin__\nset\np0\nt.")
            .unwrap();
        assert_eq!(
            v,
            PyValue::Tuple(vec![
                PyValue::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0, 1]),
                PyValue::BigInt(vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]),
                PyValue::Str("\u{e9}\u{20ac}\\\\".into()),
                PyValue::global("builtins", "set"),
            ])
        );
    }
}
