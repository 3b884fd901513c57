//! Python's `Manager` for Rust: a manager in a child process and
//! typed proxies to the objects it holds. Values cross as Python data
//! (through serde), so Python clients of the same manager read them too.
//! Proxies are cloneable and travel to other processes as arguments —
//! to `Process` children and to running `Pool` workers alike.

use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Client, ManagerProcess, Proxy, ServerBuilder, from_value, to_value};
use crate::pickle::PyValue;
use crate::{Error, Result};

fn value<T: Serialize + ?Sized>(v: &T) -> Result<PyValue> {
    to_value(v).map_err(|e| Error::ManagerValue(e.0))
}

fn back<T: DeserializeOwned>(v: PyValue) -> Result<T> {
    from_value(v).map_err(|e| Error::ManagerValue(e.0))
}

/// Python's `queue.Empty` and `queue.Full` as our typed errors.
fn queue_error(e: Error) -> Error {
    match &e {
        Error::RemoteException { class, .. } if class.ends_with(".Empty") => Error::Empty,
        Error::RemoteException { class, .. } if class.ends_with(".Full") => Error::Full,
        Error::RemoteException { class, .. } if class.ends_with(".ShutDown") => Error::ShutDown,
        _ => e,
    }
}

/// A timeout as Python takes it: seconds, or `None` to wait forever.
pub(super) fn seconds(timeout: Option<Duration>) -> PyValue {
    timeout.map_or(PyValue::None, |t| PyValue::Float(t.as_secs_f64()))
}

fn int(v: PyValue) -> Result<usize> {
    match v {
        PyValue::Int(n) if n >= 0 => Ok(n as usize),
        other => Err(Error::ManagerValue(format!("expected a count, got {other}"))),
    }
}

/// What every typed proxy has: made from an untyped [`Proxy`] (and back),
/// cloned (a new reference), `Debug` naming the object and `Display`
/// showing its value as Python's `print(proxy)` does.
macro_rules! typed_proxy {
    ($name:ident<$($t:ident),+>) => {
        impl<$($t),+> Clone for $name<$($t),+> {
            fn clone(&self) -> Self {
                $name { proxy: self.proxy.clone(), types: PhantomData }
            }
        }
        impl<$($t),+> $name<$($t),+> {
            /// A typed view of an untyped proxy (one a [`Client`] made,
            /// or one registered by name, as the seed's `get_task_queue`).
            /// The types are not checked here: a value of another type
            /// fails to decode when read, with [`Error::ManagerValue`].
            pub fn from_proxy(proxy: Proxy) -> Self {
                $name { proxy, types: PhantomData }
            }
        }
        impl<$($t),+> From<Proxy> for $name<$($t),+> {
            fn from(proxy: Proxy) -> Self {
                Self::from_proxy(proxy)
            }
        }
        typed_proxy!(@common $name<$($t),+>);
    };
    ($name:ident) => {
        impl $name {
            /// A typed view of an untyped proxy.
            pub fn from_proxy(proxy: Proxy) -> Self {
                $name { proxy }
            }
        }
        impl From<Proxy> for $name {
            fn from(proxy: Proxy) -> Self {
                Self::from_proxy(proxy)
            }
        }
        typed_proxy!(@common $name<>);
    };
    (@common $name:ident<$($t:ident),*>) => {
        impl<$($t),*> $name<$($t),*> {
            /// The untyped proxy underneath (for calls by method name).
            pub fn proxy(&self) -> &Proxy {
                &self.proxy
            }

            /// Turns it back into an untyped proxy.
            pub fn into_proxy(self) -> Proxy {
                self.proxy
            }
        }
        impl<$($t),*> std::fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("typeid", &self.proxy.typeid())
                    .field("id", &self.proxy.id())
                    .field("address", &self.proxy.address().to_string())
                    .finish()
            }
        }
        impl<$($t),*> std::fmt::Display for $name<$($t),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.proxy, f)
            }
        }
    };
}

/// A call's answer decoded, or `None` where Python raised `missing` (a
/// `KeyError` for a key not there, ...).
fn or_none<T>(answer: Result<PyValue>, missing: &str, decode: impl FnOnce(PyValue) -> Result<T>) -> Result<Option<T>> {
    match answer {
        Ok(v) => decode(v).map(Some),
        Err(e) if is_exception(&e, missing) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_exception(e: &Error, name: &str) -> bool {
    matches!(e, Error::RemoteException { class, .. } if class.rsplit('.').next() == Some(name))
}

/// A manager in a child process holding Python's `Manager` types
/// (Python's `multiprocessing.Manager()`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::managers::Manager;
/// use multiproc::{Pool, managers::QueueProxy};
///
/// fn produce(q: QueueProxy<String>) { q.put(&"a".to_string()).unwrap(); }
/// fn consume(q: QueueProxy<String>) -> String { q.get().unwrap() }
///
/// // Seed 004: pool workers talking through a manager's queue.
/// let manager = Manager::start().unwrap();
/// let queue = manager.queue::<String>(10).unwrap();
/// let pool = Pool::new(2).unwrap();
/// let got = pool.apply_async(consume, (queue.clone(),));
/// let put = pool.apply_async(produce, (queue.clone(),));
/// assert_eq!(got.get().unwrap(), "a");
/// put.get().unwrap();
/// # }
/// ```
pub struct Manager {
    client: Client,
    manager: std::sync::Arc<ManagerProcess>,
}

impl Manager {
    /// Starts one on a free loopback port with a random key.
    pub fn start() -> Result<Manager> {
        let mut key = [0u8; 32];
        crate::sys::random_bytes(&mut key).map_err(|source| Error::Io { context: "a random authkey", source })?;
        let manager =
            std::sync::Arc::new(ServerBuilder::new("127.0.0.1:0".parse()?).authkey(&key).sync_types().bind()?.start()?);
        // Every proxy holds this client, so the server lives while any
        // proxy made here does, as in Python: `Manager::start()?.queue(10)`
        // is a working queue.
        let client = manager.client()?.keeping(manager.clone());
        Ok(Manager { client, manager })
    }

    /// The manager's address.
    pub fn address(&self) -> &super::Address {
        self.manager.address()
    }

    /// A client of it (for untyped calls, or typeids of your own).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A new queue of at most `maxsize` items (0: unbounded).
    pub fn queue<T: Serialize + DeserializeOwned>(&self, maxsize: usize) -> Result<QueueProxy<T>> {
        Ok(QueueProxy::from_proxy(self.client.create("Queue", vec![PyValue::Int(maxsize as i64)])?))
    }

    /// A new joinable queue (`task_done`, `join`).
    pub fn joinable_queue<T: Serialize + DeserializeOwned>(&self, maxsize: usize) -> Result<QueueProxy<T>> {
        Ok(QueueProxy::from_proxy(self.client.create("JoinableQueue", vec![PyValue::Int(maxsize as i64)])?))
    }

    /// A new, empty dict.
    pub fn dict<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned>(&self) -> Result<DictProxy<K, V>> {
        Ok(DictProxy { proxy: self.client.create("dict", vec![])?, types: PhantomData })
    }

    /// A new list holding `items`.
    pub fn list<T: Serialize + DeserializeOwned>(&self, items: &[T]) -> Result<ListProxy<T>> {
        Ok(ListProxy { proxy: self.client.create("list", vec![value(items)?])?, types: PhantomData })
    }

    /// A new `Value(typecode, value)`.
    pub fn value<T: Serialize + DeserializeOwned>(&self, typecode: &str, v: &T) -> Result<ValueProxy<T>> {
        let proxy = self.client.create("Value", vec![PyValue::Str(typecode.into()), value(v)?])?;
        Ok(ValueProxy { proxy, types: PhantomData })
    }

    /// A new `Namespace`.
    pub fn namespace(&self) -> Result<NamespaceProxy> {
        Ok(NamespaceProxy { proxy: self.client.create("Namespace", vec![])? })
    }

    /// The manager process's pid.
    pub fn pid(&self) -> Option<i32> {
        self.manager.pid()
    }

    /// Stops the manager and waits for its process, even while proxies
    /// made from it live (their calls then fail with
    /// [`Error::ManagerGone`]).
    pub fn shutdown(self) -> Result<()> {
        self.manager.stop()
    }
}

/// A manager's queue holding `T`s (Python's `Manager().Queue()`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// use std::time::Duration;
/// use multiproc::{Error, managers::Manager};
/// let q = Manager::start().unwrap().queue::<u32>(1).unwrap();
/// assert!(q.empty().unwrap());
/// q.put(&1).unwrap();
/// assert!(q.full().unwrap());
/// assert!(matches!(q.put_timeout(&2, Duration::from_millis(10)), Err(Error::Full)));
/// assert_eq!(q.get().unwrap(), 1);
/// assert!(matches!(q.get_nowait(), Err(Error::Empty)));
/// q.put(&3).unwrap();
/// q.shutdown(false).unwrap();
/// assert!(matches!(q.put(&4), Err(Error::ShutDown)));
/// assert_eq!(q.get().unwrap(), 3, "what was put before is still there");
/// assert!(matches!(q.get(), Err(Error::ShutDown)));
/// # }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(transparent, bound = "")]
pub struct QueueProxy<T> {
    proxy: Proxy,
    #[serde(skip)]
    types: PhantomData<fn() -> T>,
}

typed_proxy!(QueueProxy<T>);

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    /// Puts an item, waiting for room.
    pub fn put(&self, item: &T) -> Result<()> {
        self.proxy.call("put", vec![value(item)?]).map(drop).map_err(queue_error)
    }

    /// Puts an item, waiting at most `timeout` for room; [`Error::Full`]
    /// if there was none.
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
        let args = vec![value(item)?, PyValue::Bool(true), seconds(Some(timeout))];
        self.proxy.call("put", args).map(drop).map_err(queue_error)
    }

    /// Puts an item only if there is room now; [`Error::Full`] if not.
    pub fn put_nowait(&self, item: &T) -> Result<()> {
        self.proxy.call("put_nowait", vec![value(item)?]).map(drop).map_err(queue_error)
    }

    /// Takes an item, waiting for one.
    pub fn get(&self) -> Result<T> {
        back(self.proxy.call("get", vec![]).map_err(queue_error)?)
    }

    /// Takes an item, waiting at most `timeout`; [`Error::Empty`] if none.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        let args = vec![PyValue::Bool(true), seconds(Some(timeout))];
        back(self.proxy.call("get", args).map_err(queue_error)?)
    }

    /// Takes an item only if one is there; [`Error::Empty`] if not.
    pub fn get_nowait(&self) -> Result<T> {
        back(self.proxy.call("get_nowait", vec![]).map_err(queue_error)?)
    }

    /// Items in the queue.
    pub fn qsize(&self) -> Result<usize> {
        int(self.proxy.call("qsize", vec![])?)
    }

    /// Whether it is empty (as in Python, already stale when it returns
    /// if others use the queue).
    pub fn empty(&self) -> Result<bool> {
        flag(self.proxy.call("empty", vec![])?)
    }

    /// Whether it is full (never, for an unbounded queue).
    pub fn full(&self) -> Result<bool> {
        flag(self.proxy.call("full", vec![])?)
    }

    /// Shuts the queue down (Python 3.13's `Queue.shutdown`): every put
    /// from now on, and every get once it is empty, fails with
    /// [`Error::ShutDown`], waiting ones too. `immediate` also drops the
    /// items left (counted done, so `join` returns).
    pub fn shutdown(&self, immediate: bool) -> Result<()> {
        self.proxy.call("shutdown", vec![PyValue::Bool(immediate)]).map(drop)
    }

    /// Marks one task done (joinable queues).
    pub fn task_done(&self) -> Result<()> {
        self.proxy.call("task_done", vec![]).map(drop)
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) -> Result<()> {
        self.proxy.call("join", vec![]).map(drop)
    }
}

/// A manager's dict from `K` to `V` (Python's `Manager().dict()`), in
/// insertion order. Each call is one round trip; `items`, `keys` and
/// `values` copy the whole dict at once.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::managers::Manager;
/// let manager = Manager::start().unwrap();
/// let d = manager.dict::<String, i64>().unwrap();
/// d.insert(&"a".into(), &1).unwrap();
/// d.update([("b".to_string(), 2), ("c".to_string(), 3)]).unwrap();
/// assert!(d.contains_key(&"b".into()).unwrap());
/// assert_eq!(d.setdefault(&"a".into(), &9).unwrap(), 1);
/// assert_eq!(d.pop(&"c".into()).unwrap(), 3);
/// assert_eq!(d.keys().unwrap(), ["a", "b"]);
/// assert_eq!(d.values().unwrap(), [1, 2]);
/// for (k, v) in d.items().unwrap() {
///     assert_eq!(d.get(&k).unwrap(), Some(v));
/// }
/// assert_eq!(d.to_string(), "{'a': 1, 'b': 2}");
/// # }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(transparent, bound = "")]
pub struct DictProxy<K, V> {
    proxy: Proxy,
    #[serde(skip)]
    types: PhantomData<fn() -> (K, V)>,
}

typed_proxy!(DictProxy<K, V>);

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> DictProxy<K, V> {
    /// `d[key] = value`.
    pub fn insert(&self, key: &K, v: &V) -> Result<()> {
        self.proxy.call("__setitem__", vec![value(key)?, value(v)?]).map(drop)
    }

    /// `d.get(key)`.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        // `None` cannot tell a missing key from a stored None: ask for
        // the item, and a KeyError says it is missing.
        or_none(self.proxy.call("__getitem__", vec![value(key)?]), "KeyError", back)
    }

    /// `key in d`.
    pub fn contains_key(&self, key: &K) -> Result<bool> {
        flag(self.proxy.call("__contains__", vec![value(key)?])?)
    }

    /// Removes `key`, giving its value if it was there.
    pub fn remove(&self, key: &K) -> Result<Option<V>> {
        or_none(self.proxy.call("pop", vec![value(key)?]), "KeyError", back)
    }

    /// `d.pop(key)`: its value, or Python's `KeyError` as
    /// [`Error::RemoteException`] if it was not there.
    pub fn pop(&self, key: &K) -> Result<V> {
        back(self.proxy.call("pop", vec![value(key)?])?)
    }

    /// `d.popitem()`: the last pair inserted, taken out; `None` when empty.
    pub fn popitem(&self) -> Result<Option<(K, V)>> {
        or_none(self.proxy.call("popitem", vec![]), "KeyError", back)
    }

    /// `d.setdefault(key, default)`: the value at `key`, inserting
    /// `default` first if there was none (in one step, so two processes
    /// racing to set a default agree on one).
    pub fn setdefault(&self, key: &K, default: &V) -> Result<V> {
        back(self.proxy.call("setdefault", vec![value(key)?, value(default)?])?)
    }

    /// `d.update(pairs)`, in one call.
    pub fn update<I: IntoIterator<Item = (K, V)>>(&self, pairs: I) -> Result<()> {
        let pairs: Result<Vec<PyValue>> =
            pairs.into_iter().map(|(k, v)| Ok(PyValue::Tuple(vec![value(&k)?, value(&v)?]))).collect();
        self.proxy.call("update", vec![PyValue::List(pairs?)]).map(drop)
    }

    /// `d.clear()`.
    pub fn clear(&self) -> Result<()> {
        self.proxy.call("clear", vec![]).map(drop)
    }

    /// `len(d)`.
    pub fn len(&self) -> Result<usize> {
        int(self.proxy.call("__len__", vec![])?)
    }

    /// `len(d) == 0`.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// `list(d.keys())`, in insertion order.
    pub fn keys(&self) -> Result<Vec<K>> {
        back(self.proxy.call("keys", vec![])?)
    }

    /// `list(d.values())`, in insertion order.
    pub fn values(&self) -> Result<Vec<V>> {
        back(self.proxy.call("values", vec![])?)
    }

    /// `list(d.items())`, in insertion order.
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        back(self.proxy.call("items", vec![])?)
    }
}

/// A manager's list of `T` (Python's `Manager().list()`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::managers::Manager;
/// let manager = Manager::start().unwrap();
/// let l = manager.list(&[3, 1, 2]).unwrap();
/// l.extend(&[5, 4]).unwrap();
/// l.sort().unwrap();
/// assert_eq!(l.to_vec().unwrap(), [1, 2, 3, 4, 5]);
/// l.insert(0, &0).unwrap();
/// assert_eq!(l.pop().unwrap(), Some(5));
/// assert_eq!(l.pop_at(0).unwrap(), 0);
/// l.remove(&3).unwrap();
/// assert_eq!(l.index(&4).unwrap(), Some(2));
/// assert_eq!(l.count(&1).unwrap(), 1);
/// assert!(l.contains(&2).unwrap());
/// assert_eq!(l.to_string(), "[1, 2, 4]");
/// # }
/// ```
#[derive(Serialize, Deserialize)]
#[serde(transparent, bound = "")]
pub struct ListProxy<T> {
    proxy: Proxy,
    #[serde(skip)]
    types: PhantomData<fn() -> T>,
}

typed_proxy!(ListProxy<T>);

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// `l.append(item)`.
    pub fn push(&self, item: &T) -> Result<()> {
        self.proxy.call("append", vec![value(item)?]).map(drop)
    }

    /// `l.append(item)` (Python's name).
    pub fn append(&self, item: &T) -> Result<()> {
        self.push(item)
    }

    /// `l.extend(items)`, in one call.
    pub fn extend(&self, items: &[T]) -> Result<()> {
        self.proxy.call("extend", vec![value(items)?]).map(drop)
    }

    /// `l.insert(index, item)` (negative counts from the end; past either
    /// end inserts there, as in Python).
    pub fn insert(&self, index: i64, item: &T) -> Result<()> {
        self.proxy.call("insert", vec![PyValue::Int(index), value(item)?]).map(drop)
    }

    /// `l[index]` (negative counts from the end, as in Python);
    /// Python's `IndexError` as [`Error::RemoteException`] past the end.
    pub fn get(&self, index: i64) -> Result<T> {
        back(self.proxy.call("__getitem__", vec![PyValue::Int(index)])?)
    }

    /// `l[index] = item`.
    pub fn set(&self, index: i64, item: &T) -> Result<()> {
        self.proxy.call("__setitem__", vec![PyValue::Int(index), value(item)?]).map(drop)
    }

    /// `del l[index]`.
    pub fn delete(&self, index: i64) -> Result<()> {
        self.proxy.call("__delitem__", vec![PyValue::Int(index)]).map(drop)
    }

    /// `l.pop()`: the last item, taken out; `None` when empty.
    pub fn pop(&self) -> Result<Option<T>> {
        or_none(self.proxy.call("pop", vec![]), "IndexError", back)
    }

    /// `l.pop(index)`; Python's `IndexError` as [`Error::RemoteException`] past the end.
    pub fn pop_at(&self, index: i64) -> Result<T> {
        back(self.proxy.call("pop", vec![PyValue::Int(index)])?)
    }

    /// `l.remove(item)`: takes out the first equal item; Python's
    /// `ValueError` as [`Error::RemoteException`] if there is none.
    pub fn remove(&self, item: &T) -> Result<()> {
        self.proxy.call("remove", vec![value(item)?]).map(drop)
    }

    /// `l.index(item)`: where the first equal item is, if any.
    pub fn index(&self, item: &T) -> Result<Option<usize>> {
        or_none(self.proxy.call("index", vec![value(item)?]), "ValueError", int)
    }

    /// `l.count(item)`.
    pub fn count(&self, item: &T) -> Result<usize> {
        int(self.proxy.call("count", vec![value(item)?])?)
    }

    /// `item in l`.
    pub fn contains(&self, item: &T) -> Result<bool> {
        flag(self.proxy.call("__contains__", vec![value(item)?])?)
    }

    /// `l.sort()`, in the server, by Python's ordering (numbers, strings,
    /// bytes, tuples and lists of those); Python's `TypeError` as
    /// [`Error::RemoteException`] for items that do not compare, leaving
    /// the list as it was.
    pub fn sort(&self) -> Result<()> {
        self.proxy.call("sort", vec![]).map(drop)
    }

    /// `l.sort(reverse=True)`.
    pub fn sort_reverse(&self) -> Result<()> {
        self.proxy.call_kw("sort", vec![], vec![(PyValue::Str("reverse".into()), PyValue::Bool(true))]).map(drop)
    }

    /// `l.reverse()`.
    pub fn reverse(&self) -> Result<()> {
        self.proxy.call("reverse", vec![]).map(drop)
    }

    /// `len(l)`.
    pub fn len(&self) -> Result<usize> {
        int(self.proxy.call("__len__", vec![])?)
    }

    /// `len(l) == 0`.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The whole list (`l[:]`), in one call.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        back(self.proxy.call("__getitem__", vec![everything()])?)
    }
}

/// Python's `slice(None, None, None)`: `[:]`.
fn everything() -> PyValue {
    PyValue::reduce("builtins", "slice", vec![PyValue::None, PyValue::None, PyValue::None])
}

/// A manager's `Value` holding a `T`.
#[derive(Serialize, Deserialize)]
#[serde(transparent, bound = "")]
pub struct ValueProxy<T> {
    proxy: Proxy,
    #[serde(skip)]
    types: PhantomData<fn() -> T>,
}

typed_proxy!(ValueProxy<T>);

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// `v.value`.
    pub fn get(&self) -> Result<T> {
        back(self.proxy.call("get", vec![])?)
    }

    /// `v.value = x`.
    pub fn set(&self, x: &T) -> Result<()> {
        self.proxy.call("set", vec![value(x)?]).map(drop)
    }
}

/// A manager's `Namespace`: attributes of any serde type by name.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NamespaceProxy {
    proxy: Proxy,
}

typed_proxy!(NamespaceProxy);

impl NamespaceProxy {
    /// `getattr(ns, name)`; [`Error::RemoteException`] (`AttributeError`)
    /// if it has none.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        back(self.proxy.call("__getattribute__", vec![PyValue::Str(name.into())])?)
    }

    /// `setattr(ns, name, x)`.
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, x: &T) -> Result<()> {
        self.proxy.call("__setattr__", vec![PyValue::Str(name.into()), value(x)?]).map(drop)
    }
}

/// A manager's `Lock`, `RLock`, `Semaphore` or `BoundedSemaphore`
/// (Python's `AcquirerProxy`). Each proxy has its own connection, and so
/// its own server thread: an `RLock` is owned per proxy.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AcquirerProxy {
    proxy: Proxy,
}

typed_proxy!(AcquirerProxy);

fn flag(v: PyValue) -> Result<bool> {
    match v {
        PyValue::Bool(b) => Ok(b),
        other => Err(Error::ManagerValue(format!("expected a bool, got {other}"))),
    }
}

/// Python's `RuntimeError` from a lock, as our typed error.
fn lock_error(e: Error) -> Error {
    match &e {
        Error::RemoteException { class, .. } if class == "builtins.RuntimeError" => Error::NotOwner,
        _ => e,
    }
}

impl AcquirerProxy {
    /// Waits until acquired.
    pub fn acquire(&self) -> Result<()> {
        self.proxy.call("acquire", vec![]).map(drop)
    }

    /// Waits at most `timeout`; whether it was acquired.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
        flag(self.proxy.call("acquire", vec![PyValue::Bool(true), seconds(Some(timeout))])?)
    }

    /// Releases; [`Error::NotOwner`] for an `RLock` this proxy does not
    /// hold (or a `Lock` not held); past a bounded semaphore's bound,
    /// Python's `ValueError` as [`Error::RemoteException`].
    pub fn release(&self) -> Result<()> {
        self.proxy.call("release", vec![]).map(drop).map_err(lock_error)
    }
}

/// A manager's `Condition` (with its own re-entrant lock).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConditionProxy {
    proxy: Proxy,
}

typed_proxy!(ConditionProxy);

impl ConditionProxy {
    /// Takes the lock.
    pub fn acquire(&self) -> Result<()> {
        self.proxy.call("acquire", vec![]).map(drop)
    }

    /// Releases the lock.
    pub fn release(&self) -> Result<()> {
        self.proxy.call("release", vec![]).map(drop).map_err(lock_error)
    }

    /// Releases the lock, waits for a notice (at most `timeout`), takes the
    /// lock again; false on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        flag(self.proxy.call("wait", vec![seconds(timeout)]).map_err(lock_error)?)
    }

    /// Wakes one waiter (the lock must be held).
    pub fn notify(&self) -> Result<()> {
        self.proxy.call("notify", vec![]).map(drop).map_err(lock_error)
    }

    /// Wakes every waiter (the lock must be held).
    pub fn notify_all(&self) -> Result<()> {
        self.proxy.call("notify_all", vec![]).map(drop).map_err(lock_error)
    }
}

/// A manager's `Event`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventProxy {
    proxy: Proxy,
}

typed_proxy!(EventProxy);

impl EventProxy {
    /// Sets the flag, waking waiters.
    pub fn set(&self) -> Result<()> {
        self.proxy.call("set", vec![]).map(drop)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<()> {
        self.proxy.call("clear", vec![]).map(drop)
    }

    /// Whether it is set.
    pub fn is_set(&self) -> Result<bool> {
        flag(self.proxy.call("is_set", vec![])?)
    }

    /// Waits until set (at most `timeout`); whether it is set.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        flag(self.proxy.call("wait", vec![seconds(timeout)])?)
    }
}

/// A manager's `Barrier`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BarrierProxy {
    proxy: Proxy,
}

typed_proxy!(BarrierProxy);

impl BarrierProxy {
    /// Waits for all parties (at most `timeout`); this party's index.
    /// [`Error::BrokenBarrier`] when aborted, reset or timed out.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<usize> {
        match self.proxy.call("wait", vec![seconds(timeout)]) {
            Ok(v) => int(v),
            Err(Error::RemoteException { class, .. }) if class.ends_with("BrokenBarrierError") => {
                Err(Error::BrokenBarrier)
            }
            Err(e) => Err(e),
        }
    }

    /// Breaks it for current and future waiters.
    pub fn abort(&self) -> Result<()> {
        self.proxy.call("abort", vec![]).map(drop)
    }

    /// Makes it usable again.
    pub fn reset(&self) -> Result<()> {
        self.proxy.call("reset", vec![]).map(drop)
    }

    /// How many parties it waits for.
    pub fn parties(&self) -> Result<usize> {
        int(self.proxy.call("__getattribute__", vec![PyValue::Str("parties".into())])?)
    }

    /// Whether it is broken.
    pub fn broken(&self) -> Result<bool> {
        flag(self.proxy.call("__getattribute__", vec![PyValue::Str("broken".into())])?)
    }
}

/// A manager's `Array` of `T`.
#[derive(Serialize, Deserialize)]
#[serde(transparent, bound = "")]
pub struct ArrayProxy<T> {
    proxy: Proxy,
    #[serde(skip)]
    types: PhantomData<fn() -> T>,
}

typed_proxy!(ArrayProxy<T>);

impl<T: Serialize + DeserializeOwned> ArrayProxy<T> {
    /// `len(a)`.
    pub fn len(&self) -> Result<usize> {
        int(self.proxy.call("__len__", vec![])?)
    }

    /// `len(a) == 0`.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// `a[index]`.
    pub fn get(&self, index: i64) -> Result<T> {
        back(self.proxy.call("__getitem__", vec![PyValue::Int(index)])?)
    }

    /// `a[index] = x`.
    pub fn set(&self, index: i64, x: &T) -> Result<()> {
        self.proxy.call("__setitem__", vec![PyValue::Int(index), value(x)?]).map(drop)
    }

    /// `a[:]`.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let all = PyValue::reduce("builtins", "slice", vec![PyValue::None, PyValue::None, PyValue::None]);
        back(self.proxy.call("__getitem__", vec![all])?)
    }
}

impl Manager {
    fn make(&self, typeid: &str, args: Vec<PyValue>) -> Result<Proxy> {
        self.client.create(typeid, args)
    }

    /// A new `Lock`.
    pub fn lock(&self) -> Result<AcquirerProxy> {
        Ok(AcquirerProxy { proxy: self.make("Lock", vec![])? })
    }

    /// A new `RLock`.
    pub fn rlock(&self) -> Result<AcquirerProxy> {
        Ok(AcquirerProxy { proxy: self.make("RLock", vec![])? })
    }

    /// A new `Semaphore(value)`.
    pub fn semaphore(&self, value: u32) -> Result<AcquirerProxy> {
        Ok(AcquirerProxy { proxy: self.make("Semaphore", vec![PyValue::Int(value.into())])? })
    }

    /// A new `BoundedSemaphore(value)`.
    pub fn bounded_semaphore(&self, value: u32) -> Result<AcquirerProxy> {
        Ok(AcquirerProxy { proxy: self.make("BoundedSemaphore", vec![PyValue::Int(value.into())])? })
    }

    /// A new `Condition`.
    pub fn condition(&self) -> Result<ConditionProxy> {
        Ok(ConditionProxy { proxy: self.make("Condition", vec![])? })
    }

    /// A new `Event`.
    pub fn event(&self) -> Result<EventProxy> {
        Ok(EventProxy { proxy: self.make("Event", vec![])? })
    }

    /// A new `Barrier(parties)`.
    pub fn barrier(&self, parties: u32) -> Result<BarrierProxy> {
        Ok(BarrierProxy { proxy: self.make("Barrier", vec![PyValue::Int(parties.into())])? })
    }

    /// A new `Array(typecode, items)`.
    pub fn array<T: Serialize + DeserializeOwned>(&self, typecode: &str, items: &[T]) -> Result<ArrayProxy<T>> {
        let proxy = self.make("Array", vec![PyValue::Str(typecode.into()), value(items)?])?;
        Ok(ArrayProxy { proxy, types: PhantomData })
    }
}
