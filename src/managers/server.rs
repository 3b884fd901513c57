//! The manager server: accepts connections, authenticates them, and
//! answers Python's manager requests (`create`, `incref`, `decref`,
//! `accept_connection`, ...) and method calls on the objects it holds. A
//! thread per connection, so a blocking `get` holds only its own.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::objects::{self, Raise, Shared};
use super::pickle::{self, PyValue};
use super::wire::{self, AuthError};
use crate::{Error, Result};

/// Where a manager listens: TCP `host:port` (port 0 picks a free one) or
/// a Unix socket path.
///
/// ```
/// use multiproc::managers::Address;
/// assert_eq!("127.0.0.1:5000".parse::<Address>().unwrap().to_string(), "127.0.0.1:5000");
/// assert_eq!("/tmp/m.sock".parse::<Address>().unwrap(), Address::Unix("/tmp/m.sock".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `host:port`.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for Address {
    type Err = Error;
    fn from_str(s: &str) -> Result<Address> {
        if s.starts_with('/') || s.starts_with("./") {
            return Ok(Address::Unix(s.into()));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(Address::Tcp(s.to_owned())),
            _ => Err(Error::InvalidAddress(s.to_owned())),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => f.write_str(a),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Address {
    fn is_loopback(&self) -> bool {
        match self {
            Address::Unix(_) => true,
            Address::Tcp(a) => {
                a.to_socket_addrs().map(|mut addrs| addrs.all(|s| s.ip().is_loopback())).unwrap_or(false)
            }
        }
    }
}

/// A connection of either kind.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn connect(address: &Address) -> io::Result<Stream> {
        Ok(match address {
            Address::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Address::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
        })
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

type Factory =
    Box<dyn Fn(&[PyValue], &[(PyValue, PyValue)]) -> std::result::Result<Arc<dyn Shared>, Raise> + Send + Sync>;

enum Maker {
    /// Each `create` makes a new object.
    Fresh(Factory),
    /// Each `create` returns this one object (Python's
    /// `register(name, callable=lambda: obj)`).
    Same(Arc<dyn Shared>),
}

/// Builds a [`Server`]: where it listens, its key, what it shares.
///
/// ```
/// use multiproc::managers::ServerBuilder;
/// let server = ServerBuilder::new("127.0.0.1:0".parse().unwrap())
///     .authkey(b"secret")
///     .sync_types()
///     .register_queue("get_task_queue")
///     .bind()
///     .unwrap();
/// assert!(server.address().to_string().starts_with("127.0.0.1:"));
/// ```
pub struct ServerBuilder {
    address: Address,
    authkey: Vec<u8>,
    makers: HashMap<String, Maker>,
    max_frame: usize,
    allow_empty_key: bool,
}

impl ServerBuilder {
    /// A server for `address`, sharing nothing yet, with an empty key.
    pub fn new(address: Address) -> ServerBuilder {
        ServerBuilder {
            address,
            authkey: Vec::new(),
            makers: HashMap::new(),
            max_frame: 64 << 20,
            allow_empty_key: false,
        }
    }

    /// The key both sides must know.
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = key.to_vec();
        self
    }

    /// The largest request accepted, in bytes (default 64 MiB). A larger
    /// one is refused from its header, before any memory is taken for it,
    /// and its connection closed.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Allows an empty key on an address other hosts can reach. Without
    /// this, `bind` refuses that combination.
    pub fn allow_empty_key_remotely(mut self) -> Self {
        self.allow_empty_key = true;
        self
    }

    /// Registers a type id whose every `create` makes a new object.
    pub fn register_type(
        mut self,
        typeid: &str,
        factory: impl Fn(&[PyValue], &[(PyValue, PyValue)]) -> std::result::Result<Arc<dyn Shared>, Raise>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.makers.insert(typeid.to_owned(), Maker::Fresh(Box::new(factory)));
        self
    }

    /// Registers a type id whose every `create` returns `object` (Python's
    /// `register('get_task_queue', callable=lambda: task_queue)`).
    pub fn register_shared(mut self, typeid: &str, object: Arc<dyn Shared>) -> Self {
        self.makers.insert(typeid.to_owned(), Maker::Same(object));
        self
    }

    /// Registers a type id that returns one queue, made here.
    pub fn register_queue(self, typeid: &str) -> Self {
        self.register_shared(typeid, Arc::new(objects::Queue::new(0)))
    }

    /// Registers what Python's `SyncManager` offers that is data:
    /// `Queue`, `JoinableQueue`, `dict`, `list`, `Value`, `Namespace`,
    /// `Event`.
    pub fn sync_types(self) -> Self {
        fn arc<T: Shared + 'static>(r: std::result::Result<T, Raise>) -> std::result::Result<Arc<dyn Shared>, Raise> {
            r.map(|t| Arc::new(t) as Arc<dyn Shared>)
        }
        self.register_type("Queue", |a, k| arc(objects::Queue::from_args(a, k)))
            .register_type("JoinableQueue", |a, k| arc(objects::Queue::from_args(a, k)))
            .register_type("dict", |a, k| arc(objects::Dict::from_args(a, k)))
            .register_type("list", |a, _| arc(objects::List::from_args(a)))
            .register_type("Value", |a, k| arc(objects::Value::from_args(a, k)))
            .register_type("Namespace", |_, k| arc(Ok(objects::Namespace::from_kwds(k))))
            .register_type("Event", |_, _| arc(Ok(objects::Event::default())))
    }

    /// Binds the address. Refuses an empty key on an address that is not
    /// loopback unless [`allow_empty_key_remotely`](Self::allow_empty_key_remotely).
    pub fn bind(self) -> Result<Server> {
        if self.authkey.is_empty() && !self.allow_empty_key && !self.address.is_loopback() {
            return Err(Error::InsecureManager(self.address.to_string()));
        }
        let (listener, address) = match &self.address {
            Address::Tcp(a) => {
                let l =
                    TcpListener::bind(a).map_err(|source| Error::Io { context: "bind a manager's address", source })?;
                let local = l.local_addr().map_err(|source| Error::Io { context: "a manager's address", source })?;
                (Listener::Tcp(l), Address::Tcp(local.to_string()))
            }
            Address::Unix(p) => {
                let l =
                    UnixListener::bind(p).map_err(|source| Error::Io { context: "bind a manager's socket", source })?;
                (Listener::Unix(l, p.clone()), self.address.clone())
            }
        };
        Ok(Server {
            shared: Arc::new(State {
                address,
                authkey: self.authkey,
                makers: self.makers,
                objects: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                stopping: AtomicBool::new(false),
                max_frame: self.max_frame,
            }),
            listener,
        })
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

struct Held {
    object: Arc<dyn Shared>,
    refs: u64,
}

struct State {
    address: Address,
    authkey: Vec<u8>,
    makers: HashMap<String, Maker>,
    objects: Mutex<HashMap<String, Held>>,
    next_id: AtomicU64,
    stopping: AtomicBool,
    max_frame: usize,
}

/// A bound manager server (Python's `Server` from `get_server()`).
pub struct Server {
    shared: Arc<State>,
    listener: Listener,
}

/// Stops a [`Server`] from another thread (or a signal handler's thread).
#[derive(Clone)]
pub struct Stopper(Arc<State>);

impl Stopper {
    /// Makes `serve_forever` return: no new connections are served.
    pub fn stop(&self) {
        if !self.0.stopping.swap(true, Ordering::SeqCst) {
            // Wake the accept loop with a connection of our own.
            let _ = Stream::connect(&self.0.address);
        }
    }
}

impl Server {
    /// The address it listens on (with the real port when 0 was asked).
    pub fn address(&self) -> &Address {
        &self.shared.address
    }

    /// A handle that stops this server.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.clone())
    }

    /// Serves until stopped (by a `shutdown` request or a [`Stopper`]).
    pub fn serve_forever(&self) -> Result<()> {
        loop {
            let stream = match &self.listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                }),
                Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            };
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(source) => return Err(Error::Io { context: "accept a manager connection", source }),
            };
            let state = self.shared.clone();
            let spawned = std::thread::Builder::new().name("multiproc-manager-conn".into()).spawn(move || {
                // One bad connection never disturbs the others: whatever
                // goes wrong ends this thread only.
                let _ = serve_connection(&state, stream);
            });
            if spawned.is_err() {
                continue;
            }
        }
    }

    /// Serves on a background thread; the returned handle stops it (and
    /// waits for the accept loop) when dropped.
    pub fn spawn(self) -> Result<RunningServer> {
        let stopper = self.stopper();
        let address = self.address().clone();
        let thread = std::thread::Builder::new()
            .name("multiproc-manager".into())
            .spawn(move || self.serve_forever())
            .map_err(|source| Error::Io { context: "start a manager thread", source })?;
        Ok(RunningServer { stopper, address, thread: Some(thread) })
    }
}

/// A server running on a background thread (see [`Server::spawn`]).
pub struct RunningServer {
    stopper: Stopper,
    address: Address,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl RunningServer {
    /// Where it listens.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Stops it and waits for its accept loop to end.
    pub fn stop(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        self.stopper.stop();
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Protocol("the manager thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

fn reply(kind: &str, value: PyValue) -> Vec<u8> {
    pickle::dumps(&PyValue::Tuple(vec![PyValue::Str(kind.into()), value]))
}

fn traceback(message: String) -> Vec<u8> {
    reply("#TRACEBACK", PyValue::Str(message))
}

fn serve_connection(state: &State, mut stream: Stream) -> io::Result<()> {
    if state.stopping.load(Ordering::SeqCst) {
        return Ok(());
    }
    // A peer that never completes the handshake does not keep a thread.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    match wire::accept(&mut stream, &state.authkey) {
        Ok(()) => {}
        Err(AuthError::WrongKey) => {
            // As Python: a traceback after #FAILURE#, then close.
            let _ = wire::write_frame(&mut stream, &traceback("AuthenticationError: digest received was wrong".into()));
            return Ok(());
        }
        Err(AuthError::Io(e)) => return Err(e),
    }
    stream.set_read_timeout(None)?;
    let mut persistent = false;
    loop {
        let Some(frame) = wire::read_frame(&mut stream, state.max_frame)? else { return Ok(()) };
        let (answer, accepted) = answer(state, &frame, persistent);
        wire::write_frame(&mut stream, &answer)?;
        if accepted {
            persistent = true;
        } else if !persistent {
            // One request per connection unless it asked to stay.
            return Ok(());
        }
        if state.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

/// The reply to one request frame, and whether it was `accept_connection`.
fn answer(state: &State, frame: &[u8], persistent: bool) -> (Vec<u8>, bool) {
    let request = match pickle::loads(frame) {
        Ok(PyValue::Tuple(t)) if t.len() == 4 => t,
        Ok(other) => return (traceback(format!("a request must be a 4-tuple, not {other:?}")), false),
        Err(e) => return (traceback(e.to_string()), false),
    };
    let [ident, method, args, kwds] = <[PyValue; 4]>::try_from(request).expect("length checked");
    let Some(method) = method.as_str().map(str::to_owned) else {
        return (traceback("a method name must be a string".into()), false);
    };
    let args = match args {
        PyValue::Tuple(a) | PyValue::List(a) => a,
        PyValue::None => Vec::new(),
        _ => return (traceback("arguments must be a tuple".into()), false),
    };
    let kwds = match kwds {
        PyValue::Dict(k) => k,
        PyValue::None => Vec::new(),
        _ => return (traceback("keyword arguments must be a dict".into()), false),
    };
    match ident {
        PyValue::None => manager_call(state, &method, &args, &kwds),
        PyValue::Str(id) if persistent => (object_call(state, &id, &method, &args, &kwds), false),
        _ => (traceback("a method call needs accept_connection first".into()), false),
    }
}

fn manager_call(state: &State, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> (Vec<u8>, bool) {
    let ok = |v| reply("#RETURN", v);
    let id_arg = || args.first().and_then(PyValue::as_str).map(str::to_owned);
    let out = match method {
        "dummy" => ok(PyValue::None),
        "accept_connection" => return (ok(PyValue::None), true),
        "create" => match create(state, args, kwds) {
            Ok((id, exposed)) => ok(PyValue::Tuple(vec![
                PyValue::Str(id),
                PyValue::Tuple(exposed.into_iter().map(PyValue::Str).collect()),
            ])),
            Err(Raise::Exception(e)) => reply("#ERROR", e),
            Err(Raise::Traceback(t)) => traceback(t),
        },
        "incref" | "decref" => match id_arg() {
            Some(id) => {
                let mut objects = state.objects.lock().unwrap_or_else(|e| e.into_inner());
                match objects.get_mut(&id) {
                    Some(held) if method == "incref" => {
                        held.refs += 1;
                        ok(PyValue::None)
                    }
                    Some(held) => {
                        held.refs = held.refs.saturating_sub(1);
                        if held.refs == 0 {
                            objects.remove(&id);
                        }
                        ok(PyValue::None)
                    }
                    None => traceback(format!("KeyError: no object with id {id:?}")),
                }
            }
            None => traceback(format!("{method} needs an object id")),
        },
        "get_methods" => {
            // A Token: Object whose state is (typeid, address, id).
            let id = match args.first() {
                Some(PyValue::Object { state: Some(s), .. }) => match &**s {
                    PyValue::Tuple(t) if t.len() == 3 => t[2].as_str().map(str::to_owned),
                    _ => None,
                },
                other => other.and_then(PyValue::as_str).map(str::to_owned),
            };
            let objects = state.objects.lock().unwrap_or_else(|e| e.into_inner());
            match id.and_then(|id| objects.get(&id)) {
                Some(held) => ok(PyValue::Tuple(held.object.exposed().into_iter().map(PyValue::Str).collect())),
                None => traceback("KeyError: get_methods of an unknown object".into()),
            }
        }
        "number_of_objects" => ok(PyValue::Int(state.objects.lock().unwrap_or_else(|e| e.into_inner()).len() as i64)),
        "debug_info" => {
            let objects = state.objects.lock().unwrap_or_else(|e| e.into_inner());
            let mut lines: Vec<String> =
                objects.iter().map(|(id, h)| format!("  {id}:       refcount={}", h.refs)).collect();
            lines.sort();
            ok(PyValue::Str(lines.join("\n")))
        }
        "shutdown" => {
            state.stopping.store(true, Ordering::SeqCst);
            // Wake the accept loop, which sees the flag and returns.
            let _ = Stream::connect(&state.address);
            ok(PyValue::None)
        }
        other => traceback(format!("AttributeError: the manager has no function {other:?}")),
    };
    (out, false)
}

fn create(
    state: &State,
    args: &[PyValue],
    kwds: &[(PyValue, PyValue)],
) -> std::result::Result<(String, Vec<String>), Raise> {
    let typeid =
        args.first().and_then(PyValue::as_str).ok_or_else(|| Raise::Traceback("create needs a typeid".into()))?;
    let maker =
        state.makers.get(typeid).ok_or_else(|| Raise::Traceback(format!("KeyError: unknown typeid {typeid:?}")))?;
    let (id, object) = match maker {
        Maker::Fresh(f) => {
            let id = format!("{:x}", state.next_id.fetch_add(1, Ordering::Relaxed) + 0x7f00_0000_0000);
            (id, f(&args[1..], kwds)?)
        }
        // One object, one id: refcounts add up across creates, as in
        // Python (whose id is the object's address).
        Maker::Same(o) => (format!("{:x}", Arc::as_ptr(o) as *const () as usize), o.clone()),
    };
    let exposed = object.exposed();
    let mut objects = state.objects.lock().unwrap_or_else(|e| e.into_inner());
    objects.entry(id.clone()).or_insert(Held { object, refs: 0 }).refs += 1;
    Ok((id, exposed))
}

fn object_call(state: &State, id: &str, method: &str, args: &[PyValue], kwds: &[(PyValue, PyValue)]) -> Vec<u8> {
    let object = {
        let objects = state.objects.lock().unwrap_or_else(|e| e.into_inner());
        match objects.get(id) {
            Some(held) => held.object.clone(),
            None => return traceback(format!("KeyError: no object with id {id:?}")),
        }
    };
    if !object.exposed().iter().any(|m| m == method) {
        return traceback(format!("AttributeError: method {method:?} of object {id} is not exposed"));
    }
    // The call runs without the table's lock: a blocking get holds nothing
    // but its own connection.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| object.call(method, args, kwds))) {
        Ok(Ok(v)) => reply("#RETURN", v),
        Ok(Err(Raise::Exception(e))) => reply("#ERROR", e),
        Ok(Err(Raise::Traceback(t))) => traceback(t),
        Err(_) => traceback(format!("the method {method:?} panicked")),
    }
}
