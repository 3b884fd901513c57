//! The shared objects a manager server holds, each with the methods its
//! Python proxy calls by name: `Queue`, `dict`, `list`, `Value`,
//! `Namespace`, `Lock`, `Event`. Arguments and results are [`PyValue`]s
//! as they come off the wire.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indexmap::IndexMap;

use crate::pickle::PyValue;

/// What a method call can end in besides a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Raise {
    /// A Python exception instance to raise in the caller (sent as
    /// `#ERROR`), such as `queue.Empty()`.
    Exception(PyValue),
    /// A failure the caller sees as `RemoteError` (sent as `#TRACEBACK`).
    Traceback(String),
}

impl Raise {
    /// The exception `module.name(message)`.
    pub fn exception(module: &str, name: &str, message: Option<&str>) -> Raise {
        let args = message.map(|m| vec![PyValue::Str(m.into())]).unwrap_or_default();
        Raise::Exception(PyValue::reduce(module, name, args))
    }

    fn type_error(message: impl Into<String>) -> Raise {
        Raise::exception("builtins", "TypeError", Some(&message.into()))
    }
}

/// An object a manager shares: its methods are called by name from any
/// connection, so it synchronises itself (`&self`).
///
/// Implement it to share a type of your own through
/// [`ServerBuilder::register_type`](super::ServerBuilder::register_type).
///
/// ```
/// use multiproc::managers::objects::{Raise, Shared};
/// use multiproc::pickle::PyValue;
/// use std::sync::atomic::{AtomicI64, Ordering};
///
/// #[derive(Default)]
/// struct Counter(AtomicI64);
///
/// impl Shared for Counter {
///     fn exposed(&self) -> Vec<String> {
///         vec!["add".into(), "get".into()]
///     }
///     fn call(&self, method: &str, args: &[PyValue], _kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
///         match (method, args) {
///             ("add", [PyValue::Int(n)]) => Ok(PyValue::Int(self.0.fetch_add(*n, Ordering::SeqCst) + n)),
///             ("get", []) => Ok(PyValue::Int(self.0.load(Ordering::SeqCst))),
///             _ => Err(Raise::exception("builtins", "TypeError", Some("bad call"))),
///         }
///     }
/// }
/// let c = Counter::default();
/// assert_eq!(c.call("add", &[PyValue::Int(2)], &[]), Ok(PyValue::Int(2)));
/// ```
pub trait Shared: Send + Sync {
    /// The method names a proxy may call.
    fn exposed(&self) -> Vec<String>;
    /// Calls `method`. Unknown methods never reach here: the server checks
    /// [`exposed`](Self::exposed) first.
    fn call(&self, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise>;

    /// For an exposed `__iter__`: the items to iterate, which the server
    /// hands out as a new shared iterator (Python's `#PROXY` reply with an
    /// `Iterator` token). `None`: not iterable that way.
    fn iterate(&self) -> Option<Vec<PyValue>> {
        None
    }

    /// Takes back what a call that returned `result` did, when its caller
    /// is found gone before the reply is written (a queue's `get` puts the
    /// item back at the front; a lock's `acquire` releases it), so that a
    /// caller that died costs nothing. The default does nothing.
    fn undo(&self, method: &str, result: &PyValue) {
        let _ = (method, result);
    }

    /// Its value as data, for Python's `#GETVALUE` (a proxy's
    /// `_getvalue()`), when it has one. The default: none.
    fn snapshot(&self) -> Option<PyValue> {
        None
    }

    /// What Python's `repr()` of the object would show, for a proxy's
    /// `__repr__` and `__str__` (the server answers both for every object,
    /// as Python's does). The default shows the snapshot, or names the
    /// type.
    fn repr(&self) -> String {
        match self.snapshot() {
            Some(v) => v.repr_string(),
            None => {
                let name = std::any::type_name::<Self>();
                format!("<{} object>", name.rsplit("::").next().unwrap_or(name))
            }
        }
    }
}

/// The iterator a `__iter__` call hands out (Python's `Iterator` type id).
pub struct IteratorObject(Mutex<std::vec::IntoIter<PyValue>>);

impl IteratorObject {
    /// An iterator over `items`.
    pub fn new(items: Vec<PyValue>) -> IteratorObject {
        IteratorObject(Mutex::new(items.into_iter()))
    }
}

impl Shared for IteratorObject {
    fn exposed(&self) -> Vec<String> {
        exposed(&["__next__", "send", "throw", "close"])
    }

    fn call(&self, method: &str, _args: &[PyValue], _kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        match method {
            "__next__" | "send" => {
                lock(&self.0).next().ok_or_else(|| Raise::exception("builtins", "StopIteration", None))
            }
            "close" => {
                lock(&self.0).by_ref().for_each(drop);
                Ok(PyValue::None)
            }
            _ => Err(Raise::exception("builtins", "StopIteration", None)),
        }
    }
}

/// Positional-or-keyword argument `name` at `index`.
fn arg<'a>(args: &'a [PyValue], kwds: &'a [(PyValue, PyValue)], index: usize, name: &str) -> Option<&'a PyValue> {
    args.get(index).or_else(|| kwds.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v))
}

fn exposed(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another connection's call must not take the object down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Python's `queue.Queue` (and the manager's `JoinableQueue`).
pub struct Queue {
    state: Mutex<QueueState>,
    changed: Condvar,
    maxsize: usize,
}

struct QueueState {
    items: VecDeque<PyValue>,
    unfinished: u64,
    /// Python 3.13's `shutdown()` was called.
    shut_down: bool,
}

fn shut_down() -> Raise {
    Raise::exception("queue", "ShutDown", None)
}

impl Queue {
    /// A queue of at most `maxsize` items (0: unbounded).
    pub fn new(maxsize: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState { items: VecDeque::new(), unfinished: 0, shut_down: false }),
            changed: Condvar::new(),
            maxsize,
        }
    }

    /// From `Queue(maxsize=0)` arguments.
    pub fn from_args(args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<Queue, Raise> {
        match arg(args, kwds, 0, "maxsize") {
            None => Ok(Queue::new(0)),
            Some(PyValue::Int(n)) => Ok(Queue::new((*n).max(0) as usize)),
            Some(_) => Err(Raise::type_error("maxsize must be an int")),
        }
    }

    /// `block` and `timeout` of a put or get into a deadline: `None` to
    /// wait forever, `Some(now)` not to wait.
    fn deadline(block: bool, timeout: Option<&PyValue>) -> Result<Option<Instant>, Raise> {
        if !block {
            return Ok(Some(Instant::now()));
        }
        match timeout {
            None | Some(PyValue::None) => Ok(None),
            Some(t) => {
                let secs = t.as_f64().ok_or_else(|| Raise::type_error("timeout must be a number"))?;
                if secs < 0.0 {
                    return Err(Raise::exception(
                        "builtins",
                        "ValueError",
                        Some("'timeout' must be a non-negative number"),
                    ));
                }
                Ok(Some(Instant::now() + Duration::from_secs_f64(secs.min(1e9))))
            }
        }
    }

    /// Puts `item`, waiting for room until `deadline`; `queue.Full` if none.
    pub fn put(&self, item: PyValue, deadline: Option<Instant>) -> Result<(), Raise> {
        let room = |s: &mut QueueState| s.shut_down || self.maxsize == 0 || s.items.len() < self.maxsize;
        let (mut s, room) = wait_while(&self.changed, lock(&self.state), deadline, room);
        if s.shut_down {
            return Err(shut_down());
        }
        if !room {
            return Err(Raise::exception("queue", "Full", None));
        }
        s.items.push_back(item);
        s.unfinished += 1;
        drop(s);
        self.changed.notify_all();
        Ok(())
    }

    /// Takes an item, waiting until `deadline`; `queue.Empty` if none came.
    pub fn get(&self, deadline: Option<Instant>) -> Result<PyValue, Raise> {
        let (mut s, _) = wait_while(&self.changed, lock(&self.state), deadline, |s| s.shut_down || !s.items.is_empty());
        let item = match s.items.pop_front() {
            Some(item) => item,
            None if s.shut_down => return Err(shut_down()),
            None => return Err(Raise::exception("_queue", "Empty", None)),
        };
        drop(s);
        self.changed.notify_all();
        Ok(item)
    }

    /// Items in the queue.
    pub fn qsize(&self) -> usize {
        lock(&self.state).items.len()
    }

    /// Python 3.13's `shutdown(immediate)`: puts fail from now on, and gets
    /// once the queue is empty, with `queue.ShutDown`; waiting puts and gets
    /// wake to find it. `immediate` also drops the items left (each counted
    /// done, so that `join` returns).
    pub fn shutdown(&self, immediate: bool) {
        let mut s = lock(&self.state);
        s.shut_down = true;
        if immediate {
            let dropped = s.items.len() as u64;
            s.items.clear();
            s.unfinished = s.unfinished.saturating_sub(dropped);
        }
        drop(s);
        self.changed.notify_all();
    }
}

impl Shared for Queue {
    fn exposed(&self) -> Vec<String> {
        exposed(&["empty", "full", "get", "get_nowait", "join", "put", "put_nowait", "qsize", "shutdown", "task_done"])
    }

    fn call(&self, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        let block = |i| arg(args, kwds, i, "block").is_none_or(PyValue::truthy);
        match method {
            "put" => {
                let item = arg(args, kwds, 0, "item").ok_or_else(|| Raise::type_error("put() needs an item"))?;
                let deadline = Queue::deadline(block(1), arg(args, kwds, 2, "timeout"))?;
                self.put(item.clone(), deadline).map(|()| PyValue::None)
            }
            "put_nowait" => {
                let item = arg(args, kwds, 0, "item").ok_or_else(|| Raise::type_error("put_nowait() needs an item"))?;
                self.put(item.clone(), Some(Instant::now())).map(|()| PyValue::None)
            }
            "get" => self.get(Queue::deadline(block(0), arg(args, kwds, 1, "timeout"))?),
            "get_nowait" => self.get(Some(Instant::now())),
            "qsize" => Ok(PyValue::Int(self.qsize() as i64)),
            "shutdown" => {
                self.shutdown(arg(args, kwds, 0, "immediate").is_some_and(PyValue::truthy));
                Ok(PyValue::None)
            }
            "empty" => Ok(PyValue::Bool(self.qsize() == 0)),
            "full" => Ok(PyValue::Bool(self.maxsize > 0 && self.qsize() >= self.maxsize)),
            "task_done" => {
                let mut s = lock(&self.state);
                if s.unfinished == 0 {
                    return Err(Raise::exception("builtins", "ValueError", Some("task_done() called too many times")));
                }
                s.unfinished -= 1;
                drop(s);
                self.changed.notify_all();
                Ok(PyValue::None)
            }
            "join" => {
                drop(wait_while(&self.changed, lock(&self.state), None, |s| s.unfinished == 0));
                Ok(PyValue::None)
            }
            other => Err(Raise::Traceback(format!("no method {other} on a Queue"))),
        }
    }

    fn undo(&self, method: &str, result: &PyValue) {
        if matches!(method, "get" | "get_nowait") {
            lock(&self.state).items.push_front(result.clone());
            self.changed.notify_all();
        }
    }
}

fn key_error(key: &PyValue) -> Raise {
    Raise::Exception(PyValue::reduce("builtins", "KeyError", vec![key.clone()]))
}

/// Python's `dict`, in insertion order.
#[derive(Default)]
pub struct Dict(Mutex<IndexMap<PyValue, PyValue>>);

impl Dict {
    /// From `dict(mapping_or_pairs, **kwds)` arguments.
    pub fn from_args(args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<Dict, Raise> {
        let d = Dict::default();
        d.update(args, kwds)?;
        Ok(d)
    }

    fn update(&self, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<(), Raise> {
        let mut m = lock(&self.0);
        let first = args.first().map(|a| super::serde_bridge::plain(a.clone()));
        match first.as_ref().map(PyValue::unshared) {
            None => {}
            Some(PyValue::Dict(pairs)) => m.extend(pairs.iter().cloned()),
            Some(PyValue::List(items) | PyValue::Tuple(items)) => {
                for item in items {
                    match item {
                        PyValue::Tuple(kv) | PyValue::List(kv) if kv.len() == 2 => {
                            m.insert(kv[0].clone(), kv[1].clone());
                        }
                        _ => return Err(Raise::type_error("dict update needs key/value pairs")),
                    }
                }
            }
            Some(_) => return Err(Raise::type_error("dict update needs a mapping or pairs")),
        }
        m.extend(kwds.iter().cloned());
        Ok(())
    }
}

impl Shared for Dict {
    fn exposed(&self) -> Vec<String> {
        exposed(&[
            "__contains__",
            "__delitem__",
            "__getitem__",
            "__iter__",
            "__len__",
            "__setitem__",
            "clear",
            "copy",
            "get",
            "items",
            "keys",
            "pop",
            "popitem",
            "setdefault",
            "update",
            "values",
        ])
    }

    fn iterate(&self) -> Option<Vec<PyValue>> {
        Some(lock(&self.0).keys().cloned().collect())
    }

    fn snapshot(&self) -> Option<PyValue> {
        Some(PyValue::Dict(lock(&self.0).iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }

    fn call(&self, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        let key = || args.first().ok_or_else(|| Raise::type_error(format!("{method}() needs a key")));
        match method {
            "update" => return self.update(args, kwds).map(|()| PyValue::None),
            "__contains__" => return Ok(PyValue::Bool(lock(&self.0).contains_key(key()?))),
            _ => {}
        }
        let mut m = lock(&self.0);
        match method {
            "__getitem__" => m.get(key()?).cloned().ok_or_else(|| key_error(key().expect("checked"))),
            "__setitem__" => {
                let value = args.get(1).ok_or_else(|| Raise::type_error("__setitem__ needs a value"))?;
                m.insert(key()?.clone(), value.clone());
                Ok(PyValue::None)
            }
            "__delitem__" => m.shift_remove(key()?).map(|_| PyValue::None).ok_or_else(|| key_error(&args[0])),
            "__len__" => Ok(PyValue::Int(m.len() as i64)),
            "clear" => {
                m.clear();
                Ok(PyValue::None)
            }
            "copy" => Ok(PyValue::Dict(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())),
            "get" => Ok(m.get(key()?).cloned().unwrap_or_else(|| args.get(1).cloned().unwrap_or(PyValue::None))),
            "items" => Ok(PyValue::List(m.iter().map(|(k, v)| PyValue::Tuple(vec![k.clone(), v.clone()])).collect())),
            "keys" => Ok(PyValue::List(m.keys().cloned().collect())),
            "values" => Ok(PyValue::List(m.values().cloned().collect())),
            "pop" => match (m.shift_remove(key()?), args.get(1)) {
                (Some(v), _) => Ok(v),
                (None, Some(default)) => Ok(default.clone()),
                (None, None) => Err(key_error(&args[0])),
            },
            "popitem" => m
                .pop()
                .map(|(k, v)| PyValue::Tuple(vec![k, v]))
                .ok_or_else(|| Raise::exception("builtins", "KeyError", Some("popitem(): dictionary is empty"))),
            "setdefault" => {
                let default = args.get(1).cloned().unwrap_or(PyValue::None);
                Ok(m.entry(key()?.clone()).or_insert(default).clone())
            }
            other => Err(Raise::Traceback(format!("no method {other} on a dict"))),
        }
    }
}

/// Python's `list`.
#[derive(Default)]
pub struct List(Mutex<Vec<PyValue>>);

impl List {
    /// From `list(sequence)` arguments.
    pub fn from_args(args: &[PyValue]) -> Result<List, Raise> {
        match args.first() {
            None => Ok(List::default()),
            Some(v) => Ok(List(Mutex::new(items_of(v).ok_or_else(|| Raise::type_error("list() needs a sequence"))??))),
        }
    }
}

/// The most elements a `range` or a string is turned into here.
const MATERIALISE_LIMIT: i64 = 10_000_000;

/// What iterating `v` gives in Python, for the values whose iteration
/// runs no user code: sequences, sets, a dict's keys, a string's
/// characters, a bytes' ints, a `range` (the seed's
/// `manager.list(range(0, 5))`). `None` for anything else; an error for a
/// range too large to hold.
fn items_of(v: &PyValue) -> Option<Result<Vec<PyValue>, Raise>> {
    // `deque(...)`, `OrderedDict(...)`, `list(...)` of a dict view and the
    // like: standard containers written as calls, iterated as Python would.
    let plain = super::serde_bridge::plain(v.clone());
    Some(Ok(match plain.unshared() {
        PyValue::List(v) | PyValue::Tuple(v) | PyValue::Set(v) | PyValue::FrozenSet(v) => v.clone(),
        PyValue::Dict(d) => d.iter().map(|(k, _)| k.clone()).collect(),
        PyValue::Str(s) => s.chars().map(|c| PyValue::Str(c.into())).collect(),
        PyValue::Bytes(b) | PyValue::ByteArray(b) => b.iter().map(|x| PyValue::Int((*x).into())).collect(),
        obj @ PyValue::Object { args, .. } if obj.class_name() == Some(("builtins", "range")) => {
            let PyValue::Tuple(a) = args.unshared() else { return None };
            let ints: Option<Vec<i64>> =
                a.iter().map(|x| if let PyValue::Int(i) = x { Some(*i) } else { None }).collect();
            let (start, stop, step) = match ints?.as_slice() {
                [stop] => (0, *stop, 1),
                [start, stop] => (*start, *stop, 1),
                [start, stop, step] if *step != 0 => (*start, *stop, *step),
                _ => return None,
            };
            // Python's len(range): ceil(span / step), never negative.
            let (span, by) = if step > 0 {
                (i128::from(stop) - i128::from(start), i128::from(step))
            } else {
                (i128::from(start) - i128::from(stop), -i128::from(step))
            };
            let len = if span <= 0 { 0 } else { (span + by - 1) / by };
            if len > i128::from(MATERIALISE_LIMIT) {
                return Some(Err(Raise::exception(
                    "builtins",
                    "MemoryError",
                    Some(&format!("a range of {len} elements is more than this server holds")),
                )));
            }
            (0..len as i64).map(|i| PyValue::Int(start + i * step)).collect()
        }
        _ => return None,
    }))
}

/// A Python index (negative from the end) into a sequence of `len`.
fn index(i: &PyValue, len: usize) -> Result<usize, Raise> {
    let PyValue::Int(i) = i else { return Err(Raise::type_error("list indices must be integers")) };
    let i = if *i < 0 { *i + len as i64 } else { *i };
    if i < 0 || i as usize >= len {
        return Err(Raise::exception("builtins", "IndexError", Some("list index out of range")));
    }
    Ok(i as usize)
}

impl Shared for List {
    fn exposed(&self) -> Vec<String> {
        // Python's ListProxy.
        exposed(&[
            "__add__",
            "__contains__",
            "__delitem__",
            "__getitem__",
            "__imul__",
            "__len__",
            "__mul__",
            "__rmul__",
            "__setitem__",
            "append",
            "count",
            "extend",
            "index",
            "insert",
            "pop",
            "remove",
            "reverse",
            "sort",
        ])
    }

    fn snapshot(&self) -> Option<PyValue> {
        Some(PyValue::List(lock(&self.0).clone()))
    }

    fn call(&self, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        let mut l = lock(&self.0);
        let first = || args.first().ok_or_else(|| Raise::type_error(format!("{method}() needs an argument")));
        let times = || match first()? {
            PyValue::Int(n) => Ok((*n).max(0) as usize),
            _ => Err(Raise::type_error("can't multiply sequence by non-int")),
        };
        match method {
            "__len__" => Ok(PyValue::Int(l.len() as i64)),
            "__contains__" => Ok(PyValue::Bool(l.contains(first()?))),
            "__getitem__" => match slice_range(first()?, l.len()) {
                Some(range) => Ok(PyValue::List(range.into_iter().map(|i| l[i].clone()).collect())),
                None => Ok(l[index(first()?, l.len())?].clone()),
            },
            "__setitem__" => {
                let i = index(first()?, l.len())?;
                l[i] = args.get(1).cloned().ok_or_else(|| Raise::type_error("__setitem__ needs a value"))?;
                Ok(PyValue::None)
            }
            "__delitem__" => {
                match slice_range(first()?, l.len()) {
                    Some(mut range) => {
                        range.sort_unstable();
                        for i in range.into_iter().rev() {
                            l.remove(i);
                        }
                    }
                    None => {
                        let i = index(first()?, l.len())?;
                        l.remove(i);
                    }
                }
                Ok(PyValue::None)
            }
            "__add__" => match first()?.unshared() {
                PyValue::List(more) => Ok(PyValue::List(l.iter().chain(more).cloned().collect())),
                _ => Err(Raise::type_error("can only concatenate list (not another type) to list")),
            },
            "__mul__" | "__rmul__" => {
                let n = times()?;
                Ok(PyValue::List(l.iter().cloned().cycle().take(l.len() * n).collect()))
            }
            "__imul__" => {
                let n = times()?;
                let all: Vec<PyValue> = l.iter().cloned().cycle().take(l.len() * n).collect();
                *l = all;
                // Python's ListProxy.__imul__ ignores the answer and
                // returns itself.
                Ok(PyValue::None)
            }
            "append" => {
                l.push(first()?.clone());
                Ok(PyValue::None)
            }
            "extend" => match items_of(first()?) {
                Some(items) => {
                    l.extend(items?);
                    Ok(PyValue::None)
                }
                None => Err(Raise::type_error("extend() needs a sequence")),
            },
            "insert" => {
                let PyValue::Int(i) = first()? else { return Err(Raise::type_error("insert() needs an index")) };
                let len = l.len() as i64;
                let at = if *i < 0 { (*i + len).max(0) } else { (*i).min(len) } as usize;
                l.insert(at, args.get(1).cloned().ok_or_else(|| Raise::type_error("insert() needs a value"))?);
                Ok(PyValue::None)
            }
            "pop" => {
                if l.is_empty() {
                    return Err(Raise::exception("builtins", "IndexError", Some("pop from empty list")));
                }
                let i = match args.first() {
                    Some(i) => index(i, l.len())
                        .map_err(|_| Raise::exception("builtins", "IndexError", Some("pop index out of range")))?,
                    None => l.len() - 1,
                };
                Ok(l.remove(i))
            }
            "count" => Ok(PyValue::Int(l.iter().filter(|v| *v == first().expect("checked")).count() as i64)),
            "index" => {
                let x = first()?;
                // index(x, start, stop), with Python's clamping.
                let bound = |i: usize, default: usize| match args.get(i) {
                    Some(PyValue::Int(n)) if *n < 0 => (*n + l.len() as i64).max(0) as usize,
                    Some(PyValue::Int(n)) => (*n as usize).min(l.len()),
                    _ => default,
                };
                let (start, stop) = (bound(1, 0), bound(2, l.len()));
                l.iter()
                    .enumerate()
                    .take(stop)
                    .skip(start)
                    .find(|(_, v)| *v == x)
                    .map(|(i, _)| PyValue::Int(i as i64))
                    .ok_or_else(|| {
                        Raise::exception("builtins", "ValueError", Some(&format!("{} is not in list", x.repr_string())))
                    })
            }
            "remove" => {
                let x = first()?;
                let i = l
                    .iter()
                    .position(|v| v == x)
                    .ok_or_else(|| Raise::exception("builtins", "ValueError", Some("list.remove(x): x not in list")))?;
                l.remove(i);
                Ok(PyValue::None)
            }
            "reverse" => {
                l.reverse();
                Ok(PyValue::None)
            }
            "sort" => {
                if arg(&[], kwds, 0, "key").is_some_and(|k| *k != PyValue::None) {
                    // A key function is code: a server never runs it.
                    return Err(Raise::type_error("sort(key=...) would run a function: a manager server runs no code"));
                }
                let reverse = arg(&[], kwds, 0, "reverse").is_some_and(PyValue::truthy);
                let sorted = match merge_sort(l.clone(), reverse) {
                    Ok(sorted) => sorted,
                    Err((a, b)) => {
                        // As Python's message; the list is left as it was.
                        return Err(Raise::type_error(format!(
                            "'<' not supported between instances of '{a}' and '{b}'"
                        )));
                    }
                };
                *l = sorted;
                Ok(PyValue::None)
            }
            other => Err(Raise::Traceback(format!("no method {other} on a list"))),
        }
    }
}

/// A stable merge sort by [`compare`]; the type names of a pair that does
/// not compare, if any. Ours, not the standard library's, which panics on an order that is
/// not total (NaN, or values a client made up): a server never panics on
/// what a client sent.
fn merge_sort(items: Vec<PyValue>, reverse: bool) -> Result<Vec<PyValue>, (String, String)> {
    if items.len() <= 1 {
        return Ok(items);
    }
    let mut right = items;
    let left: Vec<PyValue> = right.drain(..right.len() / 2).collect();
    let (left, right) = (merge_sort(left, reverse)?, merge_sort(right, reverse)?);
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut a, mut b) = (left.into_iter().peekable(), right.into_iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        let order = compare(x, y).ok_or_else(|| (type_name(x), type_name(y)))?;
        // Stable: the left one first unless the right one is strictly
        // before it (after it, when reversed).
        let take_right = if reverse { order == std::cmp::Ordering::Less } else { order == std::cmp::Ordering::Greater };
        out.push(if take_right { b.next() } else { a.next() }.expect("peeked"));
    }
    out.extend(a);
    out.extend(b);
    Ok(out)
}

/// Python's name of a value's type, for messages.
fn type_name(v: &PyValue) -> String {
    match v.unshared() {
        PyValue::None => "NoneType".into(),
        PyValue::Bool(_) => "bool".into(),
        PyValue::Int(_) | PyValue::BigInt(_) => "int".into(),
        PyValue::Float(_) => "float".into(),
        PyValue::Str(_) => "str".into(),
        PyValue::Bytes(_) => "bytes".into(),
        PyValue::ByteArray(_) => "bytearray".into(),
        PyValue::Tuple(_) => "tuple".into(),
        PyValue::List(_) => "list".into(),
        PyValue::Dict(_) => "dict".into(),
        PyValue::Set(_) => "set".into(),
        PyValue::FrozenSet(_) => "frozenset".into(),
        other => other.class_name().map_or_else(|| "object".into(), |(_, n)| n.to_owned()),
    }
}

/// A big int's little-endian two's complement bytes, sign-extended to `n`.
fn widen(b: &[u8], n: usize) -> Vec<u8> {
    let fill = if b.last().is_some_and(|x| x & 0x80 != 0) { 0xff } else { 0 };
    let mut out = b.to_vec();
    out.resize(n.max(b.len()), fill);
    out
}

/// Compares two two's complement little-endian integers of any length.
fn compare_ints(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    let (a, b) = (widen(a, n), widen(b, n));
    // The top byte carries the sign; the rest compare as unsigned.
    (a[n - 1] as i8).cmp(&(b[n - 1] as i8)).then_with(|| a[..n - 1].iter().rev().cmp(b[..n - 1].iter().rev()))
}

/// Python's `<` ordering where Python has one without running user code:
/// numbers with numbers, strings, bytes, and tuples or lists of those,
/// element by element. `None` where Python raises `TypeError`.
fn compare(a: &PyValue, b: &PyValue) -> Option<std::cmp::Ordering> {
    use PyValue as P;
    let int_bytes = |v: &PyValue| match v {
        P::Int(i) => Some(i.to_le_bytes().to_vec()),
        P::Bool(x) => Some(vec![u8::from(*x)]),
        P::BigInt(b) => Some(b.clone()),
        _ => None,
    };
    match (a.unshared(), b.unshared()) {
        (x, y) if matches!(x, P::Float(_)) || matches!(y, P::Float(_)) => {
            // NaN is neither less nor greater than anything, as in Python.
            Some(x.as_f64()?.partial_cmp(&y.as_f64()?).unwrap_or(std::cmp::Ordering::Equal))
        }
        (x @ (P::Int(_) | P::Bool(_) | P::BigInt(_)), y @ (P::Int(_) | P::Bool(_) | P::BigInt(_))) => {
            Some(compare_ints(&int_bytes(x)?, &int_bytes(y)?))
        }
        (P::Str(x), P::Str(y)) => Some(x.cmp(y)),
        (P::Bytes(x) | P::ByteArray(x), P::Bytes(y) | P::ByteArray(y)) => Some(x.cmp(y)),
        (P::Tuple(x), P::Tuple(y)) | (P::List(x), P::List(y)) => {
            for (p, q) in x.iter().zip(y) {
                if p != q {
                    return compare(p, q);
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        _ => None,
    }
}

/// The manager's `Value(typecode, value)`: a value with `get` and `set`.
pub struct Value {
    typecode: String,
    value: Mutex<PyValue>,
}

impl Value {
    /// From `Value(typecode, value)` arguments.
    pub fn from_args(args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<Value, Raise> {
        let typecode = arg(args, kwds, 0, "typecode").and_then(PyValue::as_str).unwrap_or("").to_owned();
        let value = arg(args, kwds, 1, "value").cloned().unwrap_or(PyValue::None);
        Ok(Value { typecode, value: Mutex::new(value) })
    }

    /// The typecode it was made with, such as `"i"`.
    pub fn typecode(&self) -> &str {
        &self.typecode
    }
}

impl Shared for Value {
    fn exposed(&self) -> Vec<String> {
        exposed(&["get", "set"])
    }

    fn snapshot(&self) -> Option<PyValue> {
        Some(lock(&self.value).clone())
    }

    fn repr(&self) -> String {
        format!("Value({}, {})", PyValue::Str(self.typecode.clone()).repr_string(), lock(&self.value).repr_string())
    }

    fn call(&self, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        match method {
            "get" => Ok(lock(&self.value).clone()),
            "set" => {
                let v = arg(args, kwds, 0, "value").ok_or_else(|| Raise::type_error("set() needs a value"))?;
                *lock(&self.value) = v.clone();
                Ok(PyValue::None)
            }
            other => Err(Raise::Traceback(format!("no method {other} on a Value"))),
        }
    }
}

/// The manager's `Namespace`: attributes by name.
#[derive(Default)]
pub struct Namespace(Mutex<IndexMap<String, PyValue>>);

impl Namespace {
    /// From `Namespace(**kwds)` arguments.
    pub fn from_kwds(kwds: &[(PyValue, PyValue)]) -> Namespace {
        let ns = Namespace::default();
        lock(&ns.0).extend(kwds.iter().filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone()))));
        ns
    }
}

impl Shared for Namespace {
    fn exposed(&self) -> Vec<String> {
        exposed(&["__getattribute__", "__setattr__", "__delattr__"])
    }

    fn repr(&self) -> String {
        let mut fields: Vec<String> = lock(&self.0)
            .iter()
            .filter(|(k, _)| !k.starts_with('_'))
            .map(|(k, v)| format!("{k}={}", v.repr_string()))
            .collect();
        fields.sort();
        format!("Namespace({})", fields.join(", "))
    }

    fn call(&self, method: &str, args: &[PyValue], _kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        let name = args
            .first()
            .and_then(PyValue::as_str)
            .ok_or_else(|| Raise::type_error("attribute name must be a string"))?;
        let missing = || Raise::exception("builtins", "AttributeError", Some(name));
        let mut m = lock(&self.0);
        match method {
            "__getattribute__" => m.get(name).cloned().ok_or_else(missing),
            "__setattr__" => {
                m.insert(name.to_owned(), args.get(1).cloned().unwrap_or(PyValue::None));
                Ok(PyValue::None)
            }
            "__delattr__" => m.shift_remove(name).map(|_| PyValue::None).ok_or_else(missing),
            other => Err(Raise::Traceback(format!("no method {other} on a Namespace"))),
        }
    }
}

/// The manager's `Event`.
#[derive(Default)]
pub struct Event {
    set: Mutex<bool>,
    changed: Condvar,
}

impl Shared for Event {
    fn exposed(&self) -> Vec<String> {
        exposed(&["is_set", "set", "clear", "wait"])
    }

    fn call(&self, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        let mut s = lock(&self.set);
        match method {
            "is_set" => Ok(PyValue::Bool(*s)),
            "set" => {
                *s = true;
                self.changed.notify_all();
                Ok(PyValue::None)
            }
            "clear" => {
                *s = false;
                Ok(PyValue::None)
            }
            "wait" => {
                let deadline = Queue::deadline(true, arg(args, kwds, 0, "timeout"))?;
                let (_held, set) = wait_while(&self.changed, s, deadline, |set| *set);
                Ok(PyValue::Bool(set))
            }
            other => Err(Raise::Traceback(format!("no method {other} on an Event"))),
        }
    }
}

/// A deadline from Python's `(blocking=True, timeout=-1)` arguments at
/// `index` and `index + 1`: `None` to wait forever, `Some(now)` not to.
fn lock_deadline(args: &[PyValue], kwds: &[(PyValue, PyValue)], index: usize) -> Result<Option<Instant>, Raise> {
    let blocking = arg(args, kwds, index, "blocking").is_none_or(PyValue::truthy);
    let timeout = arg(args, kwds, index + 1, "timeout");
    let timeout = match timeout {
        Some(t) if t.as_f64().is_some_and(|s| s < 0.0) => None,
        other => other,
    };
    Queue::deadline(blocking, timeout)
}

/// Waits on `cv` until `ready` or `deadline`; whether `ready` held. A
/// wait for a manager connection whose caller goes away is abandoned
/// (false) without waiting on: what it waited for is left to the others.
fn wait_while<'a, T>(
    cv: &Condvar,
    mut guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
    mut ready: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    let serving = super::server::serving_a_caller();
    loop {
        if ready(&mut guard) {
            return (guard, true);
        }
        if serving && super::server::caller_gone() {
            return (guard, false);
        }
        // A caller's wait looks at its connection now and then.
        let slice = serving.then_some(CALLER_LOOK);
        let left = match (deadline, slice) {
            (None, None) => None,
            (Some(d), s) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return (guard, false);
                }
                Some(s.map_or(left, |s| s.min(left)))
            }
            (None, s) => s,
        };
        guard = match left {
            None => cv.wait(guard).unwrap_or_else(|e| e.into_inner()),
            Some(left) => cv.wait_timeout(guard, left).unwrap_or_else(|e| e.into_inner()).0,
        };
    }
}

/// How often a parked call looks whether its caller is still there.
const CALLER_LOOK: Duration = Duration::from_millis(50);

fn runtime_error(message: &str) -> Raise {
    Raise::exception("builtins", "RuntimeError", Some(message))
}

/// The manager's `Lock`, `RLock`, `Semaphore` and `BoundedSemaphore`: a
/// count of permits, with an owner for the re-entrant kind. Each manager
/// connection has its own server thread, so "the caller" is that thread,
/// as in Python's server.
pub struct Permits {
    state: Mutex<PermitState>,
    changed: Condvar,
    kind: PermitKind,
}

struct PermitState {
    free: u64,
    owner: Option<std::thread::ThreadId>,
    depth: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PermitKind {
    Lock,
    RLock,
    Semaphore,
    Bounded(u64),
}

impl Permits {
    fn new(kind: PermitKind, free: u64) -> Permits {
        Permits { state: Mutex::new(PermitState { free, owner: None, depth: 0 }), changed: Condvar::new(), kind }
    }

    /// A lock (no owner: any caller may release it, as `threading.Lock`).
    pub fn lock() -> Permits {
        Permits::new(PermitKind::Lock, 1)
    }

    /// A re-entrant lock owned by the caller that took it.
    pub fn rlock() -> Permits {
        Permits::new(PermitKind::RLock, 1)
    }

    /// From `Semaphore(value=1)` or, `bounded`, `BoundedSemaphore(value=1)`.
    pub fn semaphore(args: &[PyValue], kwds: &[(PyValue, PyValue)], bounded: bool) -> Result<Permits, Raise> {
        let value = match arg(args, kwds, 0, "value") {
            None => 1,
            Some(PyValue::Int(n)) if *n >= 0 => *n as u64,
            Some(_) => {
                return Err(Raise::exception("builtins", "ValueError", Some("semaphore initial value must be >= 0")));
            }
        };
        Ok(Permits::new(if bounded { PermitKind::Bounded(value) } else { PermitKind::Semaphore }, value))
    }

    fn acquire(&self, deadline: Option<Instant>) -> bool {
        let me = std::thread::current().id();
        let s = lock(&self.state);
        if self.kind == PermitKind::RLock && s.owner == Some(me) {
            let mut s = s;
            s.depth += 1;
            return true;
        }
        let (mut s, got) = wait_while(&self.changed, s, deadline, |s| s.free > 0);
        if got {
            s.free -= 1;
            if self.kind == PermitKind::RLock {
                s.owner = Some(me);
                s.depth = 1;
            }
        }
        got
    }

    fn release(&self, n: u64) -> Result<(), Raise> {
        let mut s = lock(&self.state);
        match self.kind {
            PermitKind::Lock if s.free > 0 => return Err(runtime_error("release unlocked lock")),
            PermitKind::RLock => {
                if s.owner != Some(std::thread::current().id()) {
                    return Err(runtime_error("cannot release un-acquired lock"));
                }
                s.depth -= 1;
                if s.depth > 0 {
                    return Ok(());
                }
                s.owner = None;
            }
            PermitKind::Bounded(bound) if s.free + n > bound => {
                return Err(Raise::exception("builtins", "ValueError", Some("Semaphore released too many times")));
            }
            _ => {}
        }
        s.free += n;
        drop(s);
        self.changed.notify_all();
        Ok(())
    }
}

impl Shared for Permits {
    fn exposed(&self) -> Vec<String> {
        exposed(&["acquire", "release", "__enter__", "__exit__"])
    }

    fn undo(&self, method: &str, result: &PyValue) {
        if matches!(method, "acquire" | "__enter__") && *result == PyValue::Bool(true) {
            let _ = self.release(1);
        }
    }

    fn call(&self, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        match method {
            "acquire" => Ok(PyValue::Bool(self.acquire(lock_deadline(args, kwds, 0)?))),
            "__enter__" => Ok(PyValue::Bool(self.acquire(None))),
            "release" => {
                let n = match arg(args, kwds, 0, "n") {
                    Some(PyValue::Int(n))
                        if *n >= 1 && self.kind != PermitKind::Lock && self.kind != PermitKind::RLock =>
                    {
                        *n as u64
                    }
                    _ => 1,
                };
                self.release(n).map(|()| PyValue::None)
            }
            "__exit__" => self.release(1).map(|()| PyValue::None),
            other => Err(Raise::Traceback(format!("no method {other} on a lock"))),
        }
    }
}

/// The manager's `Condition`: a re-entrant lock and waiting for notices.
pub struct Condition {
    lock: Permits,
    waits: Mutex<WaitState>,
    changed: Condvar,
}

#[derive(Default)]
struct WaitState {
    waiting: u64,
    permits: u64,
}

impl Default for Condition {
    fn default() -> Condition {
        Condition { lock: Permits::rlock(), waits: Mutex::new(WaitState::default()), changed: Condvar::new() }
    }
}

impl Shared for Condition {
    fn exposed(&self) -> Vec<String> {
        exposed(&["acquire", "release", "wait", "wait_for", "notify", "notify_all", "__enter__", "__exit__"])
    }

    fn undo(&self, method: &str, result: &PyValue) {
        match method {
            "acquire" | "__enter__" => self.lock.undo(method, result),
            // A wait took the lock back, at every level its caller held:
            // all of them go.
            "wait" | "wait_for" => while self.lock.release(1).is_ok() {},
            _ => {}
        }
    }

    fn call(&self, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        match method {
            "acquire" | "release" | "__enter__" | "__exit__" => self.lock.call(method, args, kwds),
            "wait" => {
                // Python: waiting needs the lock; it is released meanwhile,
                // all levels of it, and taken back after.
                let deadline = Queue::deadline(true, arg(args, kwds, 0, "timeout"))?;
                let mut s = lock(&self.lock.state);
                if s.owner != Some(std::thread::current().id()) {
                    return Err(runtime_error("cannot wait on un-acquired lock"));
                }
                // Counted as a waiter while still holding the lock, which a
                // notifier needs: no notice can fall between the two.
                let w = {
                    let mut w = lock(&self.waits);
                    w.waiting += 1;
                    w
                };
                let depth = s.depth;
                s.depth = 0;
                s.owner = None;
                s.free += 1;
                drop(s);
                self.lock.changed.notify_all();
                let (mut w, notified) = wait_while(&self.changed, w, deadline, |w| w.permits > 0);
                if notified {
                    w.permits -= 1;
                }
                w.waiting -= 1;
                drop(w);
                // Not taken back for a caller that went away meanwhile.
                if !self.lock.acquire(None) {
                    return Err(runtime_error("the caller went away while it waited"));
                }
                lock(&self.lock.state).depth = depth;
                Ok(PyValue::Bool(notified))
            }
            "notify" | "notify_all" => {
                if lock(&self.lock.state).owner != Some(std::thread::current().id()) {
                    return Err(runtime_error("cannot notify on un-acquired lock"));
                }
                let mut w = lock(&self.waits);
                let n = match (method, arg(args, kwds, 0, "n")) {
                    ("notify_all", _) => w.waiting,
                    (_, Some(PyValue::Int(n))) => (*n).max(0) as u64,
                    _ => 1,
                };
                w.permits = (w.permits + n).min(w.waiting);
                drop(w);
                self.changed.notify_all();
                Ok(PyValue::None)
            }
            other => Err(Raise::Traceback(format!("no method {other} on a Condition"))),
        }
    }
}

/// The manager's `Barrier(parties)`.
pub struct Barrier {
    parties: u64,
    state: Mutex<BarrierState>,
    changed: Condvar,
}

struct BarrierState {
    waiting: u64,
    generation: u64,
    broken: bool,
}

impl Barrier {
    /// From `Barrier(parties)` arguments.
    pub fn from_args(args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<Barrier, Raise> {
        match arg(args, kwds, 0, "parties") {
            Some(PyValue::Int(n)) if *n >= 1 => Ok(Barrier {
                parties: *n as u64,
                state: Mutex::new(BarrierState { waiting: 0, generation: 0, broken: false }),
                changed: Condvar::new(),
            }),
            _ => Err(Raise::exception("builtins", "ValueError", Some("parties must be > 0"))),
        }
    }
}

fn broken() -> Raise {
    Raise::exception("threading", "BrokenBarrierError", None)
}

impl Shared for Barrier {
    fn exposed(&self) -> Vec<String> {
        exposed(&["__getattribute__", "wait", "abort", "reset"])
    }

    fn call(&self, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        let mut s = lock(&self.state);
        match method {
            "wait" => {
                if s.broken {
                    return Err(broken());
                }
                let index = s.waiting;
                s.waiting += 1;
                if s.waiting == self.parties {
                    s.waiting = 0;
                    s.generation += 1;
                    drop(s);
                    self.changed.notify_all();
                    return Ok(PyValue::Int(index as i64));
                }
                let generation = s.generation;
                let deadline = Queue::deadline(true, arg(args, kwds, 0, "timeout"))?;
                let (mut s, done) = wait_while(&self.changed, s, deadline, |s| s.generation != generation || s.broken);
                if !done || s.broken {
                    if !s.broken {
                        s.broken = true;
                        drop(s);
                        self.changed.notify_all();
                    }
                    return Err(broken());
                }
                Ok(PyValue::Int(index as i64))
            }
            "abort" => {
                s.broken = true;
                drop(s);
                self.changed.notify_all();
                Ok(PyValue::None)
            }
            "reset" => {
                if s.waiting > 0 {
                    // Current waiters see it broken, as in Python.
                    s.broken = true;
                    s.generation += 1;
                }
                s.waiting = 0;
                s.broken = false;
                drop(s);
                self.changed.notify_all();
                Ok(PyValue::None)
            }
            "__getattribute__" => match args.first().and_then(PyValue::as_str) {
                Some("parties") => Ok(PyValue::Int(self.parties as i64)),
                Some("n_waiting") => Ok(PyValue::Int(s.waiting as i64)),
                Some("broken") => Ok(PyValue::Bool(s.broken)),
                other => Err(Raise::exception("builtins", "AttributeError", Some(other.unwrap_or("?")))),
            },
            other => Err(Raise::Traceback(format!("no method {other} on a Barrier"))),
        }
    }
}

/// The manager's `Array(typecode, sequence)`: a fixed-length list.
pub struct Array {
    typecode: String,
    items: Mutex<Vec<PyValue>>,
}

impl Array {
    /// From `Array(typecode, sequence_or_size)` arguments.
    pub fn from_args(args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Result<Array, Raise> {
        let typecode = arg(args, kwds, 0, "typecode").and_then(PyValue::as_str).unwrap_or("").to_owned();
        let zero = if typecode == "d" || typecode == "f" { PyValue::Float(0.0) } else { PyValue::Int(0) };
        let items = match arg(args, kwds, 1, "sequence").map(PyValue::unshared) {
            Some(PyValue::Int(n)) if *n >= 0 => vec![zero; *n as usize],
            Some(PyValue::List(v) | PyValue::Tuple(v)) => v.clone(),
            _ => return Err(Raise::type_error("Array needs a typecode and a sequence or a size")),
        };
        Ok(Array { typecode, items: Mutex::new(items) })
    }

    /// The typecode it was made with.
    pub fn typecode(&self) -> &str {
        &self.typecode
    }
}

/// `(start, stop, step)` of a Python `slice` object over `len` items.
fn slice_range(s: &PyValue, len: usize) -> Option<Vec<usize>> {
    let (Some(("builtins", "slice")), PyValue::Object { args, .. }) = (s.class_name(), s) else { return None };
    let PyValue::Tuple(parts) = &**args else { return None };
    let get = |i: usize| match parts.get(i) {
        Some(PyValue::Int(n)) => Some(*n),
        _ => None,
    };
    let step = get(2).unwrap_or(1);
    if step == 0 {
        return None;
    }
    let len = len as i64;
    let clamp = |v: i64, lo: i64, hi: i64| if v < 0 { (v + len).max(lo) } else { v.min(hi) };
    let (start, stop) = if step > 0 {
        (get(0).map_or(0, |v| clamp(v, 0, len)), get(1).map_or(len, |v| clamp(v, 0, len)))
    } else {
        (get(0).map_or(len - 1, |v| clamp(v, -1, len - 1)), get(1).map_or(-1, |v| clamp(v, -1, len - 1)))
    };
    let mut out = Vec::new();
    let mut i = start;
    while (step > 0 && i < stop) || (step < 0 && i > stop) {
        out.push(i as usize);
        i += step;
    }
    Some(out)
}

impl Shared for Array {
    fn exposed(&self) -> Vec<String> {
        exposed(&["__len__", "__getitem__", "__setitem__"])
    }

    fn snapshot(&self) -> Option<PyValue> {
        Some(PyValue::List(lock(&self.items).clone()))
    }

    fn repr(&self) -> String {
        format!(
            "array({}, {})",
            PyValue::Str(self.typecode.clone()).repr_string(),
            self.snapshot().expect("has one").repr_string()
        )
    }

    fn call(&self, method: &str, args: &[PyValue], _kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        let mut items = lock(&self.items);
        if method == "__len__" {
            return Ok(PyValue::Int(items.len() as i64));
        }
        let key = args.first().ok_or_else(|| Raise::type_error(format!("{method}() needs an index")))?;
        match method {
            "__getitem__" => match slice_range(key, items.len()) {
                Some(range) => Ok(PyValue::List(range.into_iter().map(|i| items[i].clone()).collect())),
                None => Ok(items[index(key, items.len())?].clone()),
            },
            "__setitem__" => {
                let value = args.get(1).ok_or_else(|| Raise::type_error("__setitem__ needs a value"))?;
                match (slice_range(key, items.len()), value.unshared()) {
                    (Some(range), PyValue::List(v) | PyValue::Tuple(v)) if range.len() == v.len() => {
                        for (i, x) in range.into_iter().zip(v) {
                            items[i] = x.clone();
                        }
                    }
                    (Some(_), _) => {
                        return Err(Raise::exception(
                            "builtins",
                            "ValueError",
                            Some("can only assign a sequence of the same size"),
                        ));
                    }
                    (None, v) => {
                        let i = index(key, items.len())?;
                        items[i] = v.clone();
                    }
                }
                Ok(PyValue::None)
            }
            other => Err(Raise::Traceback(format!("no method {other} on an Array"))),
        }
    }
}

type Method<T> = Box<dyn Fn(&mut T, PyValue) -> Result<PyValue, Raise> + Send + Sync>;

/// A Rust value shared by method name with serde arguments and results:
/// the easy way to [`register_type`](super::ServerBuilder::register_type)
/// a type of your own. Each method takes its positional arguments as one
/// serde tuple; methods run one at a time, under the object's lock.
///
/// ```
/// use std::sync::Arc;
/// use multiproc::managers::objects::Methods;
/// use multiproc::managers::{Client, ServerBuilder, pickle::PyValue};
///
/// #[derive(Default)]
/// struct Tally { names: Vec<String> }
///
/// let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap())
///     .register_type("Tally", |_, _| {
///         Ok(Arc::new(
///             Methods::new(Tally::default())
///                 .method("add", |t: &mut Tally, (name,): (String,)| { t.names.push(name); t.names.len() })
///                 .method("names", |t: &mut Tally, (): ()| t.names.clone()),
///         ))
///     })
///     .bind().unwrap().spawn().unwrap();
/// let tally = Client::connect(server.address(), b"").unwrap().create("Tally", vec![]).unwrap();
/// assert_eq!(tally.call("add", vec![PyValue::Str("ann".into())]).unwrap(), PyValue::Int(1));
/// assert_eq!(tally.call("names", vec![]).unwrap().to_string(), "['ann']");
/// assert!(tally.call("add", vec![PyValue::Int(3)]).is_err(), "a TypeError for the wrong argument type");
/// ```
pub struct Methods<T> {
    object: Mutex<T>,
    methods: Vec<(String, Method<T>)>,
}

impl<T: Send + 'static> Methods<T> {
    /// `object`, with no methods yet.
    pub fn new(object: T) -> Methods<T> {
        Methods { object: Mutex::new(object), methods: Vec::new() }
    }

    /// Adds method `name`: `f(&mut object, args)`, where `args` is the
    /// call's positional arguments as a tuple type (`()` for none,
    /// `(x,)` for one) and the result any serde type.
    pub fn method<A, R, F>(mut self, name: &str, f: F) -> Self
    where
        A: serde::de::DeserializeOwned,
        R: serde::Serialize,
        F: Fn(&mut T, A) -> R + Send + Sync + 'static,
    {
        let call = move |object: &mut T, args: PyValue| {
            let args = super::from_value::<A>(args).map_err(|e| Raise::type_error(e.0))?;
            super::to_value(&f(object, args)).map_err(|e| Raise::type_error(e.0))
        };
        self.methods.push((name.to_owned(), Box::new(call)));
        self
    }
}

impl<T: Send> Shared for Methods<T> {
    fn exposed(&self) -> Vec<String> {
        self.methods.iter().map(|(n, _)| n.clone()).collect()
    }

    fn call(&self, method: &str, args: &[PyValue], _kwds: &[(PyValue, PyValue)]) -> Result<PyValue, Raise> {
        let (_, f) = self
            .methods
            .iter()
            .find(|(n, _)| n == method)
            .ok_or_else(|| Raise::Traceback(format!("no method {method}")))?;
        f(&mut lock(&self.object), PyValue::Tuple(args.to_vec()))
    }
}
