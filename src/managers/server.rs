//! The manager server: accepts connections, authenticates them, and
//! answers Python's manager requests (`create`, `incref`, `decref`,
//! `accept_connection`, ...) and method calls on the objects it holds. A
//! thread per connection, so a blocking `get` holds only its own.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::objects::{self, Raise, Shared};
use super::wire::{self, AuthError};
use crate::pickle::{self, PyValue};
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

    /// Its socket.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }

    /// A writer through a shared reference (a socket's writes need no
    /// exclusive access).
    pub(crate) fn writer(&self) -> Box<dyn Write + '_> {
        match self {
            Stream::Tcp(s) => Box::new(s),
            Stream::Unix(s) => Box::new(s),
        }
    }

    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
}

/// A manager connection after its handshake, read through a buffer: a
/// frame's header and body then usually come in one `recv`, not two, and
/// each `recv` on the round trip's path costs a microsecond or more. (Not
/// for [`SocketConnection`](crate::connection::SocketConnection), which is
/// polled by its descriptor: bytes in a buffer would be invisible there.)
pub(crate) type Buffered = std::io::BufReader<Stream>;

/// How long a read waits for an answer actively before it sleeps: a
/// manager call is a round trip whose answer usually comes within tens of
/// microseconds, and two thread wake-ups per call would cost more.
const READ_SPIN: Duration = Duration::from_micros(50);

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = match &*self {
            Stream::Tcp(s) => {
                crate::sys::quick_ack(s.as_fd());
                s.as_fd()
            }
            Stream::Unix(s) => s.as_fd(),
        };
        if let Some(n) = crate::sys::recv_spinning(fd, buf, READ_SPIN)? {
            return Ok(n);
        }
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

    /// Registers Python's `SyncManager` types: `Queue`, `JoinableQueue`,
    /// `dict`, `list`, `Value`, `Array`, `Namespace`, `Event`, `Lock`,
    /// `RLock`, `Semaphore`, `BoundedSemaphore`, `Condition`, `Barrier`;
    /// `Pool` is refused with Python's `NotImplementedError` (it would run
    /// code sent over the wire).
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
            .register_type("Lock", |_, _| arc(Ok(objects::Permits::lock())))
            .register_type("RLock", |_, _| arc(Ok(objects::Permits::rlock())))
            .register_type("Semaphore", |a, k| arc(objects::Permits::semaphore(a, k, false)))
            .register_type("BoundedSemaphore", |a, k| arc(objects::Permits::semaphore(a, k, true)))
            .register_type("Condition", |_, _| arc(Ok(objects::Condition::default())))
            .register_type("Barrier", |a, k| arc(objects::Barrier::from_args(a, k)))
            .register_type("Array", |a, k| arc(objects::Array::from_args(a, k)))
            // Python's SyncManager has a Pool too; a server that runs no
            // code from the wire cannot run its tasks, and says so.
            .register_type("Pool", |_, _| {
                Err(Raise::exception(
                    "builtins",
                    "NotImplementedError",
                    Some("this manager server runs no code from the wire, so it serves no Pool; use multiproc's Pool"),
                ))
            })
    }

    /// Binds the address. Refuses an empty key on an address that is not
    /// loopback unless [`allow_empty_key_remotely`](Self::allow_empty_key_remotely).
    pub fn bind(self) -> Result<Server> {
        if self.authkey.is_empty() && !self.allow_empty_key && !self.address.is_loopback() {
            return Err(Error::InsecureManager(self.address.to_string()));
        }
        let (listener, address) = Listener::bind(&self.address)?;
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

/// A listening socket, TCP or Unix (Python's `SocketListener`).
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// The socket file is removed when the listener is dropped in the
    /// process that owns it (0: none, as in the parent of a started
    /// manager, whose child serves).
    Unix(UnixListener, PathBuf, std::sync::atomic::AtomicU32),
}

impl Listener {
    /// Binds `address`; the listener and its address with the real port.
    pub(crate) fn bind(address: &Address) -> Result<(Listener, Address)> {
        Ok(match address {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(|source| Error::Io { context: "bind an address", source })?;
                let local = l.local_addr().map_err(|source| Error::Io { context: "a bound address", source })?;
                (Listener::Tcp(l), Address::Tcp(local.to_string()))
            }
            Address::Unix(p) => {
                let l = UnixListener::bind(p).map_err(|source| Error::Io { context: "bind a socket path", source })?;
                (Listener::Unix(l, p.clone(), std::process::id().into()), address.clone())
            }
        })
    }

    /// The next connection.
    pub(crate) fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
            Listener::Unix(l, _, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path, owner) = self
            && owner.load(Ordering::SeqCst) == std::process::id()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

struct Held {
    object: Arc<dyn Shared>,
    /// Its exposed methods, asked once: every call is checked against them.
    exposed: Vec<String>,
    refs: u64,
}

impl Held {
    fn new(object: Arc<dyn Shared>, refs: u64) -> Held {
        Held { exposed: object.exposed(), object, refs }
    }
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

impl State {
    /// A fresh object id, in the hex form Python's ids take.
    fn new_id(&self) -> String {
        format!("{:x}", self.next_id.fetch_add(1, Ordering::Relaxed) + 0x7f00_0000_0000)
    }
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
            let stream = self.listener.accept();
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

    /// Serves in a child process (Python's `BaseManager.start()`), forked
    /// with the objects registered so far. The returned [`ManagerProcess`] stops
    /// it with a `shutdown` request when dropped or shut down; the child is
    /// a daemon, so it also dies if this process is killed.
    pub fn start(self) -> Result<ManagerProcess> {
        let address = self.address().clone();
        let authkey = self.shared.authkey.clone();
        if let Listener::Unix(_, _, owner) = &self.listener {
            // The child removes the socket file when it is done, not us.
            owner.store(0, Ordering::SeqCst);
        }
        let mut process = crate::Process::from_closure(move || {
            if let Listener::Unix(_, _, owner) = &self.listener {
                owner.store(std::process::id(), Ordering::SeqCst);
            }
            self.serve_forever().map_err(|e| e.to_string())
        })
        .with_name("manager")
        .with_daemon(true);
        process.start()?;
        Ok(ManagerProcess { address, authkey, process: std::sync::Mutex::new(Some(process)) })
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

/// A manager serving in a child process (see [`Server::start`];
/// Python's started `BaseManager`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::managers::ServerBuilder;
/// use multiproc::pickle::PyValue;
/// let manager = ServerBuilder::new("127.0.0.1:0".parse().unwrap())
///     .authkey(b"abc")
///     .sync_types()
///     .bind()
///     .unwrap()
///     .start()
///     .unwrap();
/// let d = manager.client().unwrap().create("dict", vec![]).unwrap();
/// d.call("__setitem__", vec![PyValue::Int(1), PyValue::Int(2)]).unwrap();
/// assert_eq!(d.call("__len__", vec![]).unwrap(), PyValue::Int(1));
/// drop(d);
/// manager.shutdown().unwrap();
/// # }
/// ```
pub struct ManagerProcess {
    address: Address,
    authkey: Vec<u8>,
    process: std::sync::Mutex<Option<crate::Process<std::result::Result<(), String>>>>,
}

impl ManagerProcess {
    /// Where it listens.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The child's pid.
    pub fn pid(&self) -> Option<i32> {
        self.process.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(crate::Process::pid)
    }

    /// A client connected to it.
    pub fn client(&self) -> Result<super::Client> {
        super::Client::connect(&self.address, &self.authkey)
    }

    /// Stops the server (a `shutdown` request) and waits for its process.
    pub fn shutdown(self) -> Result<()> {
        self.stop()
    }

    pub(crate) fn stop(&self) -> Result<()> {
        let Some(mut process) = self.process.lock().unwrap_or_else(|e| e.into_inner()).take() else { return Ok(()) };
        let asked = self.client().and_then(|c| c.shutdown());
        let joined = match asked {
            Ok(()) => process.join_timeout(Duration::from_secs(10)),
            Err(_) => Ok(None),
        };
        match joined {
            Ok(Some(served)) => served.map_err(Error::Protocol),
            // Not answering, or not stopping: it goes the hard way.
            _ => {
                let _ = process.kill();
                process.join().map(drop).or(Ok(()))
            }
        }
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        let _ = self.stop();
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

std::thread_local! {
    /// The connection this thread answers, while it runs a call for it.
    static CALLER: std::cell::Cell<Option<std::os::fd::RawFd>> = const { std::cell::Cell::new(None) };
}

/// Whether this thread runs a call for a manager connection.
pub(crate) fn serving_a_caller() -> bool {
    CALLER.with(|c| c.get().is_some())
}

/// Whether the connection this thread answers was closed by its caller.
pub(crate) fn caller_gone() -> bool {
    CALLER.with(|c| c.get()).is_some_and(|fd| {
        // SAFETY: the connection's socket stays open while its thread runs
        // a call for it (`serve_connection` owns it for that long).
        crate::sys::peer_closed(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
    })
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
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream.fd());
    let mut stream = Buffered::new(stream);
    loop {
        let Some(frame) = wire::read_frame(&mut stream, state.max_frame)? else { return Ok(()) };
        CALLER.with(|c| c.set(Some(fd)));
        let (answer, accepted, undo) = answer(state, &frame, persistent);
        let gone = caller_gone();
        CALLER.with(|c| c.set(None));
        if gone {
            // Nobody to answer: what the call took goes back.
            if let Some(undo) = undo {
                undo();
            }
            return Ok(());
        }
        wire::write_frame(stream.get_mut(), &answer)?;
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
fn answer(state: &State, frame: &[u8], persistent: bool) -> (Vec<u8>, bool, Option<Undo>) {
    let request = match pickle::loads(frame) {
        Ok(PyValue::Tuple(t)) if t.len() == 4 => t,
        Ok(other) => return (traceback(format!("a request must be a 4-tuple, not {other:?}")), false, None),
        Err(e) => return (traceback(e.to_string()), false, None),
    };
    let [ident, method, args, kwds] = <[PyValue; 4]>::try_from(request).expect("length checked");
    let Some(method) = method.as_str().map(str::to_owned) else {
        return (traceback("a method name must be a string".into()), false, None);
    };
    let args = match args {
        PyValue::Tuple(a) | PyValue::List(a) => a,
        PyValue::None => Vec::new(),
        _ => return (traceback("arguments must be a tuple".into()), false, None),
    };
    let kwds = match kwds {
        PyValue::Dict(k) => k,
        PyValue::None => Vec::new(),
        _ => return (traceback("keyword arguments must be a dict".into()), false, None),
    };
    match ident {
        PyValue::None => {
            let (reply, accepted) = manager_call(state, &method, &args, &kwds);
            (reply, accepted, None)
        }
        PyValue::Str(id) if persistent => {
            let (reply, undo) = object_call(state, &id, &method, &args, &kwds);
            (reply, false, undo)
        }
        _ => (traceback("a method call needs accept_connection first".into()), false, None),
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
                Some(held) => ok(PyValue::Tuple(held.exposed.iter().cloned().map(PyValue::Str).collect())),
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
        Maker::Fresh(f) => (state.new_id(), f(&args[1..], kwds)?),
        // One object, one id: refcounts add up across creates, as in
        // Python (whose id is the object's address).
        Maker::Same(o) => (format!("{:x}", Arc::as_ptr(o) as *const () as usize), o.clone()),
    };
    let mut objects = state.objects.lock().unwrap_or_else(|e| e.into_inner());
    let held = objects.entry(id.clone()).or_insert_with(|| Held::new(object, 0));
    held.refs += 1;
    Ok((id, held.exposed.clone()))
}

/// What takes back a call whose caller went away before its answer.
type Undo = Box<dyn FnOnce()>;

fn object_call(
    state: &State,
    id: &str,
    method: &str,
    args: &[PyValue],
    kwds: &[(PyValue, PyValue)],
) -> (Vec<u8>, Option<Undo>) {
    let object = {
        let objects = state.objects.lock().unwrap_or_else(|e| e.into_inner());
        match objects.get(id) {
            Some(held) if held.exposed.iter().any(|m| m == method) => held.object.clone(),
            // Python's server answers these for every object, exposed or
            // not (its `fallback_mapping`).
            Some(held) if matches!(method, "__str__" | "__repr__") => {
                return (reply("#RETURN", PyValue::Str(held.object.repr())), None);
            }
            Some(held) if method == "#GETVALUE" => {
                return match held.object.snapshot() {
                    Some(v) => (reply("#RETURN", v), None),
                    None => (traceback(format!("TypeError: object {id} has no value to copy")), None),
                };
            }
            Some(_) => {
                return (traceback(format!("AttributeError: method {method:?} of object {id} is not exposed")), None);
            }
            None => return (traceback(format!("KeyError: no object with id {id:?}")), None),
        }
    };
    if method == "__iter__"
        && let Some(items) = object.iterate()
    {
        return (proxy_reply(state, "Iterator", Arc::new(objects::IteratorObject::new(items))), None);
    }
    // The call runs without the table's lock: a blocking get holds nothing
    // but its own connection.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| object.call(method, args, kwds))) {
        Ok(Ok(v)) => {
            let bytes = reply("#RETURN", v.clone());
            let method = method.to_owned();
            (bytes, Some(Box::new(move || object.undo(&method, &v))))
        }
        Ok(Err(Raise::Exception(e))) => (reply("#ERROR", e), None),
        Ok(Err(Raise::Traceback(t))) => (traceback(t), None),
        Err(_) => (traceback(format!("the method {method:?} panicked")), None),
    }
}

/// Registers `object` under a new id and answers with Python's `#PROXY`:
/// its exposed methods and a `Token(typeid, address, id)`, which the
/// client turns into a proxy (taking, then giving back, a reference).
fn proxy_reply(state: &State, typeid: &str, object: Arc<dyn Shared>) -> Vec<u8> {
    let id = state.new_id();
    let held = Held::new(object, 1);
    let exposed = PyValue::Tuple(held.exposed.iter().cloned().map(PyValue::Str).collect());
    state.objects.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), held);
    let address = match &state.address {
        Address::Tcp(a) => match a.rsplit_once(':') {
            Some((host, port)) => PyValue::Tuple(vec![
                PyValue::Str(host.trim_matches(['[', ']']).to_owned()),
                PyValue::Int(port.parse().unwrap_or(0)),
            ]),
            None => PyValue::Str(a.clone()),
        },
        Address::Unix(p) => PyValue::Str(p.display().to_string()),
    };
    let token = PyValue::Object {
        class: Box::new(PyValue::global("multiprocessing.managers", "Token")),
        args: Box::new(PyValue::Tuple(Vec::new())),
        new_obj: true,
        list_items: Vec::new(),
        dict_items: Vec::new(),
        state: Some(Box::new(PyValue::Tuple(vec![PyValue::Str(typeid.into()), address, PyValue::Str(id)]))),
    };
    reply("#PROXY", PyValue::Tuple(vec![exposed, token]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::managers::Client;

    fn serve(builder: ServerBuilder) -> RunningServer {
        builder.bind().unwrap().spawn().unwrap()
    }

    fn local() -> ServerBuilder {
        ServerBuilder::new("127.0.0.1:0".parse().unwrap()).authkey(b"key").sync_types()
    }

    /// An authenticated raw connection.
    fn raw(address: &Address) -> Stream {
        let mut s = Stream::connect(address).unwrap();
        wire::connect(&mut s, b"key").unwrap();
        s
    }

    fn ask(s: &mut Stream, request: &PyValue) -> PyValue {
        wire::write_frame(s, &pickle::dumps(request)).unwrap();
        pickle::loads(&wire::read_frame(s, 1 << 20).unwrap().expect("a reply")).unwrap()
    }

    fn req(id: PyValue, method: &str, args: Vec<PyValue>) -> PyValue {
        PyValue::Tuple(vec![id, PyValue::Str(method.into()), PyValue::Tuple(args), PyValue::Dict(vec![])])
    }

    fn kind(reply: &PyValue) -> &str {
        match reply {
            PyValue::Tuple(t) => t[0].as_str().unwrap(),
            _ => panic!("{reply:?}"),
        }
    }

    #[test]
    fn a_wrong_key_is_rejected_before_any_request_is_read() {
        let server = serve(local());
        let mut s = Stream::connect(server.address()).unwrap();
        assert!(matches!(wire::connect(&mut s, b"nope"), Err(AuthError::WrongKey)));
        // Whatever we send now is never answered: the server has closed.
        let _ =
            wire::write_frame(&mut s, &pickle::dumps(&req(PyValue::None, "create", vec![PyValue::Str("dict".into())])));
        // All that comes back is Python's traceback for the failure, then
        // the end of the connection.
        let frame = wire::read_frame(&mut s, 1 << 20).unwrap().expect("the failure's traceback");
        let reply = pickle::loads(&frame).unwrap();
        assert_eq!(kind(&reply), "#TRACEBACK");
        assert!(matches!(wire::read_frame(&mut s, 1 << 20), Ok(None) | Err(_)), "a request was answered");
        let client = Client::connect(server.address(), b"key").unwrap();
        assert_eq!(client.number_of_objects().unwrap(), 0, "nothing was created by the unauthenticated peer");
    }

    #[test]
    fn an_empty_key_off_loopback_is_refused_unless_allowed() {
        let open = ServerBuilder::new("0.0.0.0:0".parse().unwrap());
        assert!(matches!(open.bind(), Err(Error::InsecureManager(_))));
        assert!(ServerBuilder::new("0.0.0.0:0".parse().unwrap()).allow_empty_key_remotely().bind().is_ok());
        assert!(ServerBuilder::new("127.0.0.1:0".parse().unwrap()).bind().is_ok(), "loopback may have no key");
    }

    #[test]
    fn globals_from_the_wire_are_data_never_code() {
        let server = serve(local());
        let client = Client::connect(server.address(), b"key").unwrap();
        let q = client.create("Queue", vec![]).unwrap();
        let marker = std::env::temp_dir().join(format!("multiproc-pwned-{}", std::process::id()));
        // What Python's unpickler would run: os.system("touch <marker>").
        let evil = PyValue::reduce("os", "system", vec![PyValue::Str(format!("touch {}", marker.display()))]);
        q.call("put", vec![evil.clone()]).unwrap();
        assert_eq!(q.call("get", vec![]).unwrap(), evil, "kept as data, returned as sent");
        assert!(!marker.exists());
    }

    #[test]
    fn unknown_ids_and_methods_get_a_traceback_and_the_connection_goes_on() {
        let server = serve(local());
        let mut s = raw(server.address());
        assert_eq!(
            kind(&ask(&mut s, &req(PyValue::None, "accept_connection", vec![PyValue::Str("t".into())]))),
            "#RETURN"
        );
        assert_eq!(kind(&ask(&mut s, &req(PyValue::Str("nope".into()), "get", vec![]))), "#TRACEBACK");
        let client = Client::connect(server.address(), b"key").unwrap();
        let q = client.create("Queue", vec![]).unwrap();
        assert_eq!(kind(&ask(&mut s, &req(PyValue::Str(q.id().into()), "__class__", vec![]))), "#TRACEBACK");
        assert_eq!(kind(&ask(&mut s, &req(PyValue::Str(q.id().into()), "qsize", vec![]))), "#RETURN");
        // Not even a tuple: a traceback, and still the connection goes on.
        wire::write_frame(&mut s, &pickle::dumps(&PyValue::Int(3))).unwrap();
        let reply = pickle::loads(&wire::read_frame(&mut s, 1 << 20).unwrap().unwrap()).unwrap();
        assert_eq!(kind(&reply), "#TRACEBACK");
        assert_eq!(kind(&ask(&mut s, &req(PyValue::Str(q.id().into()), "empty", vec![]))), "#RETURN");
        let mut bad = raw(server.address());
        assert_eq!(kind(&ask(&mut bad, &req(PyValue::None, "nosuchfunction", vec![]))), "#TRACEBACK");
    }

    #[test]
    fn requests_sent_together_are_each_answered_in_order() {
        // The server reads through a buffer: frames that arrive in one
        // segment (a client that does not wait for each answer), and a
        // frame split across segments, must all be served, none dropped.
        let server = serve(local());
        let client = Client::connect(server.address(), b"key").unwrap();
        let q = client.create("Queue", vec![]).unwrap();
        let mut s = raw(server.address());
        // A dropped frame would leave us waiting: fail instead (hang guard).
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let id = PyValue::Str(q.id().into());
        let mut batch = Vec::new();
        wire::write_frame(&mut batch, &pickle::dumps(&req(PyValue::None, "accept_connection", vec![]))).unwrap();
        for i in 0..50 {
            wire::write_frame(&mut batch, &pickle::dumps(&req(id.clone(), "put", vec![PyValue::Int(i)]))).unwrap();
        }
        for _ in 0..50 {
            wire::write_frame(&mut batch, &pickle::dumps(&req(id.clone(), "get", vec![]))).unwrap();
        }
        // Half, then the rest: the cut falls inside a frame.
        let (first, rest) = batch.split_at(batch.len() / 2 + 3);
        s.write_all(first).unwrap();
        s.write_all(rest).unwrap();
        let mut answers = Vec::new();
        for _ in 0..101 {
            answers.push(pickle::loads(&wire::read_frame(&mut s, 1 << 20).unwrap().expect("an answer")).unwrap());
        }
        assert!(answers.iter().all(|a| kind(a) == "#RETURN"), "{answers:?}");
        let got: Vec<PyValue> = answers[51..]
            .iter()
            .map(|a| match a {
                PyValue::Tuple(t) => t[1].clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, (0..50).map(PyValue::Int).collect::<Vec<_>>());
    }

    #[test]
    fn frames_above_the_limit_are_refused_without_allocating_and_others_go_on() {
        let server = serve(local().max_frame(1024));
        let mut s = raw(server.address());
        // Announce 2 GiB (and 2^62 in the long form): the server must close
        // rather than allocate.
        s.write_all(&0x7fff_ffffi32.to_be_bytes()).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "no reply to an oversized frame");
        let mut s = raw(server.address());
        s.write_all(&[0xff, 0xff, 0xff, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        let _ = s.read_to_end(&mut rest);
        let client = Client::connect(server.address(), b"key").unwrap();
        let q = client.create("Queue", vec![]).unwrap();
        q.call("put", vec![PyValue::Int(1)]).unwrap();
        assert_eq!(q.call("get", vec![]).unwrap(), PyValue::Int(1));
    }

    #[test]
    fn a_client_gone_mid_request_leaves_the_server_and_others_working() {
        let server = serve(local());
        let client = Client::connect(server.address(), b"key").unwrap();
        let q = client.create("Queue", vec![]).unwrap();
        // Another client blocks in a get on its own connection meanwhile.
        let blocked = {
            let q2 = q.clone();
            std::thread::spawn(move || q2.call("get", vec![]))
        };
        for cut in [2, 4, 10] {
            let mut s = raw(server.address());
            let frame = pickle::dumps(&req(PyValue::None, "create", vec![PyValue::Str("dict".into())]));
            let mut bytes = (frame.len() as i32).to_be_bytes().to_vec();
            bytes.extend(&frame);
            s.write_all(&bytes[..cut]).unwrap();
            drop(s); // as a killed process's socket closes
        }
        q.call("put", vec![PyValue::Str("after".into())]).unwrap();
        assert_eq!(blocked.join().unwrap().unwrap(), PyValue::Str("after".into()));
        assert_eq!(client.number_of_objects().unwrap(), 1, "half-sent creates created nothing");
    }

    #[test]
    fn shutdown_stops_the_server() {
        let server = serve(local());
        let client = Client::connect(server.address(), b"key").unwrap();
        client.shutdown().unwrap();
        server.stop().unwrap();
        assert!(Client::connect(client_address(&client), b"key").is_err());
    }

    fn client_address(c: &Client) -> &Address {
        c.address()
    }

    #[test]
    fn unix_socket_addresses() {
        let path = std::env::temp_dir().join(format!("multiproc-manager-{}.sock", std::process::id()));
        let server = serve(ServerBuilder::new(Address::Unix(path.clone())).authkey(b"key").sync_types());
        let client = Client::connect(server.address(), b"key").unwrap();
        let l = client.create("list", vec![]).unwrap();
        l.call("append", vec![PyValue::Int(1)]).unwrap();
        assert_eq!(l.call("__len__", vec![]).unwrap(), PyValue::Int(1));
        drop(l);
        server.stop().unwrap();
        assert!(!path.exists(), "the socket file is removed");
    }
}

/// A server's state with the SyncManager types and no listener, for
/// feeding requests straight to `answer`.
#[cfg(test)]
fn test_state() -> State {
    let b = ServerBuilder::new("127.0.0.1:0".parse().unwrap()).sync_types();
    State {
        address: b.address,
        authkey: Vec::new(),
        makers: b.makers,
        objects: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        stopping: AtomicBool::new(false),
        max_frame: 1 << 16,
    }
}

#[cfg(test)]
mod fuzz {
    //! Mutation fuzzing of everything a peer's bytes reach: the frame
    //! reader, the pickle reader, request dispatch and object methods.
    //! `MULTIPROC_FUZZ_ITERS` sets the number of inputs (default 200,000;
    //! the closing notes report a run of several million).
    use super::*;
    use crate::managers::objects;
    use crate::managers::wire::captures;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Bytes Python's pickles are made of, to splice in.
    const OPCODES: &[u8] = b"\x80\x95.(N\x88\x89KMJ\x8a\x8bIL GF\x8cX\x8dCB\x8e\x96UTV)\x85\x86\x87t]lae}dsu\x8f\x90\x91c\x93R\x81\x92b\x94qrphjg021";

    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=rng.below(4) {
            match rng.below(7) {
                0 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                1 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v[i] = rng.next() as u8;
                }
                2 => {
                    let i = rng.below(v.len() + 1);
                    v.insert(i, OPCODES[rng.below(OPCODES.len())]);
                }
                3 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v.truncate(i);
                }
                4 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v.remove(i);
                }
                5 => {
                    // A huge length right after an opcode that takes one.
                    let i = rng.below(v.len() + 1);
                    v.splice(i..i, [0xff, 0xff, 0xff, 0x7f]);
                }
                _ => {
                    let i = rng.below(v.len() + 1);
                    let n = rng.below(16);
                    let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    v.splice(i..i, junk);
                }
            }
        }
        v
    }

    fn state() -> State {
        super::test_state()
    }

    #[test]
    fn nothing_a_peer_sends_panics_the_server() {
        let iters: usize = std::env::var("MULTIPROC_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
        let mut corpus: Vec<Vec<u8>> = captures::frames()
            .into_iter()
            .flat_map(|(_, frames)| frames.into_iter().map(|f| f.payload))
            .filter(|p| p.first() == Some(&0x80))
            .collect();
        for typeid in ["Queue", "dict", "list", "Value", "Namespace", "Event"] {
            corpus.push(pickle::dumps(&PyValue::Tuple(vec![
                PyValue::None,
                PyValue::Str("create".into()),
                PyValue::Tuple(vec![PyValue::Str(typeid.into()), PyValue::Int(1)]),
                PyValue::Dict(vec![]),
            ])));
        }
        let state = state();
        let shared: Vec<(Arc<dyn Shared>, Vec<String>)> = vec![
            Arc::new(objects::Dict::default()) as Arc<dyn Shared>,
            Arc::new(objects::List::default()),
            Arc::new(objects::Namespace::default()),
            Arc::new(objects::Value::from_args(&[], &[]).unwrap()),
            Arc::new(objects::Queue::new(4)),
        ]
        .into_iter()
        .map(|o| {
            let exposed = o.exposed();
            (o, exposed)
        })
        .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut decoded, mut objects_called) = (0usize, 0usize);
        for i in 0..iters {
            let seed = &corpus[rng.below(corpus.len())];
            let input = mutate(&mut rng, seed);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut framed = (input.len() as i32).to_be_bytes().to_vec();
                if rng.below(8) == 0 {
                    framed = mutate(&mut rng, &framed);
                }
                framed.extend(&input);
                let _ = wire::read_frame(&mut &framed[..], 1 << 16);
                let _ = answer(&state, &input, false);
                if let Ok(value) = pickle::loads(&input) {
                    decoded += 1;
                    let _ = pickle::loads(&pickle::dumps(&value));
                    let (object, exposed) = &shared[rng.below(shared.len())];
                    let method = &exposed[rng.below(exposed.len())];
                    // Blocking calls would only wait; the non-blocking
                    // forms see the same arguments.
                    let method = match method.as_str() {
                        "get" | "join" => "get_nowait",
                        "put" => "put_nowait",
                        "wait" => "is_set",
                        m => m,
                    };
                    let args = match value {
                        PyValue::Tuple(v) | PyValue::List(v) => v,
                        other => vec![other],
                    };
                    if object.exposed().iter().any(|m| m == method) {
                        let _ = object.call(method, &args, &[]);
                        objects_called += 1;
                    }
                }
            }));
            assert!(outcome.is_ok(), "input {i} panicked: {input:02x?}");
        }
        eprintln!("fuzz: {iters} inputs, {decoded} decoded as pickles, {objects_called} object calls");
        assert!(decoded > iters / 20, "the mutations hardly ever make a readable pickle: {decoded}");
    }
}

#[cfg(test)]
mod properties {
    //! Property tests (proptest) of the same surfaces as `fuzz`: arbitrary
    //! bytes, and arbitrary well-formed values as requests.
    //! `MULTIPROC_PROPTEST_CASES` sets the cases per property (default
    //! 20,000; the closing notes report a run of a million).
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("MULTIPROC_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
    }

    fn state() -> &'static State {
        static STATE: std::sync::OnceLock<State> = std::sync::OnceLock::new();
        STATE.get_or_init(super::test_state)
    }

    fn value() -> impl Strategy<Value = PyValue> {
        let leaf = prop_oneof![
            Just(PyValue::None),
            any::<bool>().prop_map(PyValue::Bool),
            any::<i64>().prop_map(PyValue::Int),
            any::<f64>().prop_filter("NaN is not equal to itself", |f| !f.is_nan()).prop_map(PyValue::Float),
            ".{0,12}".prop_map(PyValue::Str),
            prop::collection::vec(any::<u8>(), 0..12).prop_map(PyValue::Bytes),
            ("[a-z_.]{1,8}", "[A-Za-z_]{1,8}").prop_map(|(m, n)| PyValue::Global { module: m, name: n }),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(PyValue::Tuple),
                prop::collection::vec(inner.clone(), 0..6).prop_map(PyValue::List),
                prop::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(PyValue::Dict),
                (
                    inner.clone(),
                    prop::collection::vec(inner.clone(), 0..3),
                    prop::collection::vec(inner.clone(), 0..3),
                    prop::collection::vec((inner.clone(), inner), 0..3),
                )
                    .prop_map(|(state, args, list_items, dict_items)| PyValue::Object {
                        class: Box::new(PyValue::global("m", "C")),
                        args: Box::new(PyValue::Tuple(args)),
                        new_obj: false,
                        list_items,
                        dict_items,
                        state: Some(Box::new(state)),
                    }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = pickle::loads(&bytes);
            let _ = answer(state(), &bytes, false);
            let _ = wire::read_frame(&mut &bytes[..], 1 << 16);
        }

        #[test]
        fn values_round_trip_and_any_request_is_answered(v in value(), method in "[a-z_]{0,12}") {
            // Dicts with repeated keys collapse on reading, as in Python.
            let back = pickle::loads(&pickle::dumps(&v)).unwrap();
            if !format!("{v:?}").contains("Dict") {
                prop_assert_eq!(&back, &v);
            }
            let request = PyValue::Tuple(vec![PyValue::None, PyValue::Str(method), PyValue::Tuple(vec![v]), PyValue::Dict(vec![])]);
            let (reply, _, _) = answer(state(), &pickle::dumps(&request), false);
            prop_assert!(pickle::loads(&reply).is_ok());
        }
    }
}
