//! The client side of the manager protocol: what Python's `BaseManager`
//! does after `connect()`, and its proxies. Works against our server and
//! against Python's.

use std::sync::Mutex;
use std::time::Duration;

use super::server::{Address, Buffered, Stream};
use super::wire::{self, AuthError};
use crate::pickle::{self, PyValue};
use crate::{Error, Result};

/// Replies are read up to this size (a client trusts its server more than
/// the reverse, but not without limit).
const REPLY_LIMIT: usize = 1 << 30;

/// A connection to a manager (Python's `BaseManager(address, authkey)`
/// after `connect()`).
///
/// ```
/// use multiproc::managers::{Client, ServerBuilder};
/// use multiproc::pickle::PyValue;
/// let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap()).authkey(b"k").sync_types().bind().unwrap().spawn().unwrap();
/// let client = Client::connect(server.address(), b"k").unwrap();
/// let d = client.create("dict", vec![]).unwrap();
/// d.call("__setitem__", vec![PyValue::Str("a".into()), PyValue::Int(1)]).unwrap();
/// assert_eq!(d.call("get", vec![PyValue::Str("a".into())]).unwrap(), PyValue::Int(1));
/// assert!(Client::connect(server.address(), b"wrong").is_err());
/// ```
#[derive(Clone)]
pub struct Client {
    address: Address,
    authkey: Vec<u8>,
    /// What keeps the manager running while this client (and every proxy
    /// it made) lives: the manager process a [`Manager`](super::Manager)
    /// started, as Python's proxies keep theirs.
    keep: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
}

/// The authkey stays out of debug output.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("address", &self.address.to_string()).finish_non_exhaustive()
    }
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

impl Client {
    /// Connects (and checks the key with a `dummy` request, as Python's
    /// `connect()` does).
    pub fn connect(address: &Address, authkey: &[u8]) -> Result<Client> {
        let client = Client { address: address.clone(), authkey: authkey.to_vec(), keep: None };
        client.manager_call("dummy", vec![])?;
        Ok(client)
    }

    /// This client, keeping `owner` alive as long as it or a proxy it made
    /// lives.
    pub(crate) fn keeping(mut self, owner: std::sync::Arc<dyn std::any::Any + Send + Sync>) -> Client {
        self.keep = Some(owner);
        self
    }

    /// The manager's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    fn open(&self) -> Result<Buffered> {
        let mut s = Stream::connect(&self.address).map_err(|source| match source.kind() {
            // Nobody listens there any more (or never did).
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound => {
                Error::ManagerGone { address: self.address.to_string(), source }
            }
            _ => Error::Io { context: "connect to a manager", source },
        })?;
        match wire::connect(&mut s, &self.authkey) {
            Ok(()) => Ok(Buffered::new(s)),
            Err(AuthError::WrongKey) => Err(Error::AuthenticationFailed),
            Err(AuthError::Io(e)) => Err(io("a manager handshake")(e)),
        }
    }

    /// One request on a fresh connection, as Python's `dispatch`.
    fn manager_call(&self, method: &str, args: Vec<PyValue>) -> Result<PyValue> {
        let mut s = self.open()?;
        request(&mut s, PyValue::None, method, args, Vec::new())
    }

    /// Creates a shared object of type `typeid` with constructor `args`.
    pub fn create(&self, typeid: &str, args: Vec<PyValue>) -> Result<Proxy> {
        let mut all = vec![PyValue::Str(typeid.into())];
        all.extend(args);
        let reply = self.manager_call("create", all)?;
        let (id, exposed) = match reply {
            PyValue::Tuple(t) if t.len() == 2 => match (&t[0], &t[1]) {
                (PyValue::Str(id), PyValue::Tuple(names) | PyValue::List(names)) => {
                    (id.clone(), names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
                }
                (PyValue::Str(id), PyValue::None) => (id.clone(), Vec::new()),
                _ => return Err(Error::Protocol(format!("create answered {t:?}"))),
            },
            other => return Err(Error::Protocol(format!("create answered {other:?}"))),
        };
        Ok(Proxy {
            client: self.clone(),
            typeid: typeid.to_owned(),
            id,
            exposed,
            conn: Mutex::new(None),
            owner: std::process::id().into(),
        })
    }

    /// A proxy for the object a `#PROXY` answer (`(exposed, token)`)
    /// names, taking over the reference the server holds for it. As
    /// Python's client, it uses our own address rather than the token's
    /// (a server behind a forwarded port names an address we cannot reach).
    fn adopt(&self, answer: &PyValue) -> Result<Proxy> {
        let bad = || Error::Protocol(format!("a #PROXY answer must be (exposed, Token), not {answer}"));
        let PyValue::Tuple(parts) = answer.unshared() else { return Err(bad()) };
        let [exposed, token] = parts.as_slice() else { return Err(bad()) };
        let exposed = match exposed.unshared() {
            PyValue::Tuple(names) | PyValue::List(names) => {
                names.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect()
            }
            _ => Vec::new(),
        };
        let fields = match token.unshared() {
            PyValue::Object { state: Some(state), .. } => match state.unshared() {
                PyValue::Tuple(f) if f.len() == 3 => f.clone(),
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        let (Some(typeid), Some(id)) = (fields[0].as_str(), fields[2].as_str()) else { return Err(bad()) };
        Ok(Proxy {
            client: self.clone(),
            typeid: typeid.to_owned(),
            id: id.to_owned(),
            exposed,
            conn: Mutex::new(None),
            owner: std::process::id().into(),
        })
    }

    /// How many objects the manager holds.
    pub fn number_of_objects(&self) -> Result<i64> {
        match self.manager_call("number_of_objects", vec![])? {
            PyValue::Int(n) => Ok(n),
            other => Err(Error::Protocol(format!("number_of_objects answered {other:?}"))),
        }
    }

    /// Asks the manager to shut down.
    pub fn shutdown(&self) -> Result<()> {
        self.manager_call("shutdown", vec![]).map(drop)
    }
}

/// What a call answered: a value, or (Python's `#PROXY`) a shared object
/// the server made for it, as its exposed methods and token.
enum Answer {
    Value(PyValue),
    Proxy(PyValue),
}

fn request(
    s: &mut Buffered,
    id: PyValue,
    method: &str,
    args: Vec<PyValue>,
    kwds: Vec<(PyValue, PyValue)>,
) -> Result<PyValue> {
    match exchange(s, id, method, args, kwds)? {
        Answer::Value(v) => Ok(v),
        Answer::Proxy(_) => Err(Error::Protocol(format!("the manager answered {method} with a proxy"))),
    }
}

fn exchange(
    s: &mut Buffered,
    id: PyValue,
    method: &str,
    args: Vec<PyValue>,
    kwds: Vec<(PyValue, PyValue)>,
) -> Result<Answer> {
    let msg = PyValue::Tuple(vec![id, PyValue::Str(method.into()), PyValue::Tuple(args), PyValue::Dict(kwds)]);
    wire::write_frame(s.get_mut(), &pickle::dumps(&msg)).map_err(io("send to a manager"))?;
    let frame = wire::read_frame(s, REPLY_LIMIT)
        .map_err(io("read from a manager"))?
        .ok_or_else(|| Error::Protocol("the manager closed the connection".into()))?;
    let reply = pickle::loads(&frame).map_err(|e| Error::Protocol(e.to_string()))?;
    let PyValue::Tuple(mut t) = reply else { return Err(Error::Protocol("a reply must be a 2-tuple".into())) };
    if t.len() != 2 {
        return Err(Error::Protocol("a reply must be a 2-tuple".into()));
    }
    let value = t.pop().expect("two");
    match t[0].as_str() {
        Some("#RETURN") => Ok(Answer::Value(value)),
        Some("#PROXY") => Ok(Answer::Proxy(value)),
        Some("#ERROR") => Err(exception(&value)),
        Some("#TRACEBACK") | Some("#UNSERIALIZABLE") => Err(Error::Remote(value.as_str().unwrap_or("").to_owned())),
        _ => Err(Error::Protocol(format!("an unknown reply kind {:?}", t[0]))),
    }
}

fn exception(e: &PyValue) -> Error {
    let class = e.class_name().map(|(m, n)| format!("{m}.{n}")).unwrap_or_else(|| "<unknown>".into());
    // Python's repr of the arguments, in parentheses without the
    // trailing comma of a one-tuple, as an exception's repr has them.
    let items = match e.unshared() {
        PyValue::Object { args, .. } => match args.unshared() {
            PyValue::Tuple(items) => items.clone(),
            other => vec![other.clone()],
        },
        other => vec![other.clone()],
    };
    let list = PyValue::List(items).to_string();
    let args = format!("({})", &list[1..list.len() - 1]);
    Error::RemoteException { class, args }
}

/// What [`Proxy::invoke`] got back.
#[derive(Debug)]
pub enum Returned {
    /// A value.
    Value(PyValue),
    /// A proxy to a shared object the server made for the call.
    Proxy(Proxy),
}

/// A shared object in a manager, used by method name (Python's proxies).
/// Dropping it releases the manager's reference.
///
/// `Debug` shows which object it is; `Display` shows the object's value as
/// Python's `print(proxy)` does (one call to the manager; the error, in
/// angle brackets, if that call fails).
pub struct Proxy {
    client: Client,
    typeid: String,
    id: String,
    exposed: Vec<String>,
    /// The connection its calls use, opened on first use and kept
    /// (Python's per-thread connection).
    conn: Mutex<Option<Buffered>>,
    /// The process whose reference this is. A forked child inherits the
    /// value but not the reference: it takes one of its own (and a
    /// connection of its own) on first use, as Python's proxies do after a
    /// fork, and releases only what it took.
    owner: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("typeid", &self.typeid)
            .field("id", &self.id)
            .field("address", &self.client.address.to_string())
            .finish()
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.call("__str__", vec![]) {
            Ok(PyValue::Str(s)) => f.write_str(&s),
            Ok(other) => write!(f, "{other}"),
            Err(e) => write!(f, "<{} proxy {}: {e}>", self.typeid, self.id),
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

impl Proxy {
    /// The object's id in the manager.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address of the manager holding it.
    pub fn address(&self) -> &Address {
        &self.client.address
    }

    /// Its type id.
    pub fn typeid(&self) -> &str {
        &self.typeid
    }

    /// The methods it exposes.
    pub fn exposed(&self) -> &[String] {
        &self.exposed
    }

    /// Calls `method` with positional arguments.
    pub fn call(&self, method: &str, args: Vec<PyValue>) -> Result<PyValue> {
        self.call_kw(method, args, Vec::new())
    }

    /// Calls `method` with positional and keyword arguments. A method that
    /// answers with a shared object (Python's `#PROXY`, such as a dict's
    /// `__iter__`) is an error here, naming it; use
    /// [`invoke`](Self::invoke) for those.
    pub fn call_kw(&self, method: &str, args: Vec<PyValue>, kwds: Vec<(PyValue, PyValue)>) -> Result<PyValue> {
        match self.invoke(method, args, kwds)? {
            Returned::Value(v) => Ok(v),
            Returned::Proxy(p) => Err(Error::Protocol(format!(
                "{method} answered with a shared object of type {:?}: call it with Proxy::invoke to get its proxy",
                p.typeid
            ))),
        }
    }

    /// Calls `method`, accepting either answer: a value, or a proxy to a
    /// shared object the server made for this call (Python's `#PROXY`
    /// reply: a dict's `__iter__`, a method registered with
    /// `method_to_typeid`). The new proxy holds the reference the server
    /// took for it and gives it back when dropped.
    ///
    /// ```
    /// use multiproc::managers::{Client, Returned, ServerBuilder};
    /// use multiproc::pickle::PyValue;
    /// let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap()).authkey(b"k").sync_types().bind().unwrap().spawn().unwrap();
    /// let d = Client::connect(server.address(), b"k").unwrap().create("dict", vec![]).unwrap();
    /// d.call("__setitem__", vec![PyValue::Str("a".into()), PyValue::Int(1)]).unwrap();
    /// let Returned::Proxy(keys) = d.invoke("__iter__", vec![], vec![]).unwrap() else { panic!() };
    /// assert_eq!(keys.typeid(), "Iterator");
    /// assert_eq!(keys.call("__next__", vec![]).unwrap(), PyValue::Str("a".into()));
    /// assert!(keys.call("__next__", vec![]).is_err(), "StopIteration");
    /// ```
    pub fn invoke(&self, method: &str, args: Vec<PyValue>, kwds: Vec<(PyValue, PyValue)>) -> Result<Returned> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let me = std::process::id();
        if self.owner.load(std::sync::atomic::Ordering::SeqCst) != me {
            // Forked: the inherited connection is the parent's (closing
            // our copy of its descriptor leaves it open there).
            drop(conn.take());
            self.client.manager_call("incref", vec![PyValue::Str(self.id.clone())])?;
            self.owner.store(me, std::sync::atomic::Ordering::SeqCst);
        }
        if conn.is_none() {
            let mut s = self.client.open()?;
            request(&mut s, PyValue::None, "accept_connection", vec![PyValue::Str("RustProxy".into())], Vec::new())?;
            *conn = Some(s);
        }
        let s = conn.as_mut().expect("opened");
        let result = exchange(s, PyValue::Str(self.id.clone()), method, args, kwds);
        if matches!(result, Err(Error::Io { .. } | Error::Protocol(_))) {
            // A broken connection is not reused.
            *conn = None;
        }
        drop(conn);
        match result? {
            Answer::Value(v) => Ok(Returned::Value(v)),
            Answer::Proxy(v) => self.client.adopt(&v).map(Returned::Proxy),
        }
    }

    /// `get(True, timeout)` on a queue proxy: `Ok(None)` when the queue
    /// stayed empty (Python's `queue.Empty`).
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<PyValue>> {
        match self.call("get", vec![PyValue::Bool(true), super::proxies::seconds(Some(timeout))]) {
            Ok(v) => Ok(Some(v)),
            Err(Error::RemoteException { class, .. }) if class.ends_with(".Empty") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What a proxy is on its way to another process: enough to reconnect.
/// The authkey travels with it, as Python's does to its children.
#[derive(serde::Serialize, serde::Deserialize)]
struct ProxyWire {
    address: String,
    authkey: Vec<u8>,
    typeid: String,
    id: String,
    exposed: Vec<String>,
}

/// A proxy travels as its address, key and id; the receiving side takes a
/// reference of its own on arrival (Python's `RebuildProxy`), released
/// when that copy is dropped. The sender must keep its proxy alive until
/// then, as in Python.
impl serde::Serialize for Proxy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        ProxyWire {
            address: self.client.address.to_string(),
            authkey: self.client.authkey.clone(),
            typeid: self.typeid.clone(),
            id: self.id.clone(),
            exposed: self.exposed.clone(),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Proxy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Proxy, D::Error> {
        use serde::de::Error as _;
        let w = ProxyWire::deserialize(d)?;
        let address: Address = w.address.parse().map_err(D::Error::custom)?;
        let client = Client { address, authkey: w.authkey, keep: None };
        client.manager_call("incref", vec![PyValue::Str(w.id.clone())]).map_err(D::Error::custom)?;
        Ok(Proxy {
            client,
            typeid: w.typeid,
            id: w.id,
            exposed: w.exposed,
            conn: Mutex::new(None),
            owner: std::process::id().into(),
        })
    }
}

impl Clone for Proxy {
    fn clone(&self) -> Proxy {
        let _ = self.client.manager_call("incref", vec![PyValue::Str(self.id.clone())]);
        Proxy {
            client: self.client.clone(),
            typeid: self.typeid.clone(),
            id: self.id.clone(),
            exposed: self.exposed.clone(),
            conn: Mutex::new(None),
            owner: std::process::id().into(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.owner.load(std::sync::atomic::Ordering::SeqCst) != std::process::id() {
            // A forked copy that never took a reference has none to give
            // back (its copy of the connection closes with it).
            return;
        }
        let _ = self.client.manager_call("decref", vec![PyValue::Str(self.id.clone())]);
    }
}
