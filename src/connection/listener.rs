//! Python's `multiprocessing.connection.Listener` and `Client`:
//! connections over TCP or a Unix socket, authenticated with a key by the
//! same handshake the managers speak, carrying Python's frames. A Python
//! `Client` talks to our [`Listener`] and our [`Client`] to Python's
//! `Listener`; values cross as pickles (through the same bridge as the
//! managers' values), bytes as they are.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::managers::server::{Listener as Socket, Stream};
use crate::managers::wire::{self, AuthError, FrameTooLarge};
use crate::managers::{Address, from_value, to_value};
use crate::pickle::{self, PyValue};
use crate::{Error, Result};

/// The largest message a [`SocketConnection`] reads unless told otherwise.
const DEFAULT_LIMIT: usize = 1 << 30;

/// Accepts connections on an address (Python's
/// `multiprocessing.connection.Listener`). With a key, each connection is
/// authenticated both ways before [`accept`](Self::accept) returns it.
///
/// ```
/// use multiproc::connection::{Client, Listener};
///
/// let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap(), Some(b"secret password")).unwrap();
/// let address = listener.address().clone();
/// let client = std::thread::spawn(move || {
///     let mut conn = Client(&address, Some(b"secret password")).unwrap();
///     conn.send(&(1, "two", vec![3.5])).unwrap();
///     conn.recv::<String>().unwrap()
/// });
/// let mut conn = listener.accept().unwrap();
/// let got: (i32, String, Vec<f64>) = conn.recv().unwrap();
/// assert_eq!(got, (1, "two".to_string(), vec![3.5]));
/// conn.send("thanks").unwrap();
/// assert_eq!(client.join().unwrap(), "thanks");
/// ```
pub struct Listener {
    socket: Socket,
    address: Address,
    authkey: Option<Vec<u8>>,
}

impl Listener {
    /// Listens on `address` (`host:port`, port 0 for a free one, or a
    /// socket path, removed again when the listener is dropped).
    /// `authkey`: the key both sides must know, or `None` for no
    /// authentication (as Python's `authkey=None`).
    pub fn bind(address: &Address, authkey: Option<&[u8]>) -> Result<Listener> {
        let (socket, address) = Socket::bind(address)?;
        Ok(Listener { socket, address, authkey: authkey.map(<[u8]>::to_vec) })
    }

    /// The address it listens on, with the real port.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Waits for the next connection and authenticates it;
    /// [`Error::AuthenticationFailed`] for a peer with another key (which
    /// is told so, as Python's listener does).
    pub fn accept(&self) -> Result<SocketConnection> {
        let mut stream = loop {
            match self.socket.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(Error::Io { context: "accept a connection", source }),
            }
        };
        if let Some(key) = &self.authkey {
            handshake(wire::accept(&mut stream, key))?;
        }
        Ok(SocketConnection::new(stream))
    }

    /// Accepted connections, one after another.
    pub fn incoming(&self) -> impl Iterator<Item = Result<SocketConnection>> + '_ {
        std::iter::repeat_with(|| self.accept())
    }
}

fn handshake(r: std::result::Result<(), AuthError>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(AuthError::WrongKey) => Err(Error::AuthenticationFailed),
        Err(AuthError::Io(source)) => Err(Error::Io { context: "an authentication handshake", source }),
    }
}

/// Connects to a [`Listener`] (ours or Python's) at `address`, and with a
/// key, authenticates both ways (Python's
/// `multiprocessing.connection.Client`). See [`Listener`] for an example.
#[allow(non_snake_case)]
pub fn Client(address: &Address, authkey: Option<&[u8]>) -> Result<SocketConnection> {
    let mut stream =
        Stream::connect(address).map_err(|source| Error::Io { context: "connect to a listener", source })?;
    if let Some(key) = authkey {
        handshake(wire::connect(&mut stream, key))?;
    }
    Ok(SocketConnection::new(stream))
}

/// A connection made by a [`Listener`] or [`Client`]: Python's framing
/// over a socket. [`send`](Self::send) and [`recv`](Self::recv) carry
/// serde values as pickles (what Python's `send`/`recv` carry);
/// [`send_bytes`](Self::send_bytes) and [`recv_bytes`](Self::recv_bytes)
/// carry bytes as they are. Unlike a [`Pipe`](super::Pipe)'s
/// [`Connection`](super::Connection), it carries no descriptors.
pub struct SocketConnection {
    stream: Stream,
    limit: usize,
}

impl std::fmt::Debug for SocketConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketConnection").field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl SocketConnection {
    fn new(stream: Stream) -> Self {
        SocketConnection { stream, limit: DEFAULT_LIMIT }
    }

    /// The largest message [`recv`](Self::recv) and
    /// [`recv_bytes`](Self::recv_bytes) accept (default 1 GiB); a larger
    /// one is [`Error::MessageTooLarge`], refused from its header.
    pub fn set_max_message_size(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Sends `value` as Python's `send` does: pickled. A value the pickle
    /// bridge cannot carry is [`Error::ManagerValue`], and nothing is sent.
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let v = to_value(value).map_err(|e| Error::ManagerValue(e.0))?;
        self.send_value(&v)
    }

    /// Sends a Python value.
    pub fn send_value(&self, value: &PyValue) -> Result<()> {
        self.send_bytes(&pickle::dumps(value))
    }

    /// Sends bytes as one message (Python's `send_bytes`).
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        let mut w = self.stream.writer();
        wire::write_frame(&mut w, bytes).map_err(|source| Error::Io { context: "send on a connection", source })?;
        w.flush().map_err(|source| Error::Io { context: "send on a connection", source })
    }

    /// Receives one message (Python's `recv_bytes`); [`Error::Eof`] once
    /// the other end has closed.
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>> {
        match wire::read_frame(&mut self.stream, self.limit) {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(Error::Eof),
            Err(e) => Err(match e.get_ref().and_then(|i| i.downcast_ref::<FrameTooLarge>()) {
                Some(t) => Error::MessageTooLarge { size: t.size as usize, limit: t.limit },
                None => Error::Io { context: "receive on a connection", source: e },
            }),
        }
    }

    /// Receives one pickled message as a Python value.
    pub fn recv_value(&mut self) -> Result<PyValue> {
        let bytes = self.recv_bytes()?;
        pickle::loads(&bytes).map_err(|e| Error::Protocol(format!("a message that is not a pickle Python writes: {e}")))
    }

    /// Receives one pickled message as a `T`; [`Error::ManagerValue`] if
    /// it holds something else (the message is consumed).
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T> {
        from_value(self.recv_value()?).map_err(|e| Error::ManagerValue(e.0))
    }

    /// Whether a message (or the end) can be read now, waiting at most
    /// `timeout` (`None`: until one can).
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        let ready = crate::sys::poll_readable(&[self.stream.fd()], timeout)
            .map_err(|source| Error::Io { context: "poll a connection", source })?;
        Ok(ready[0])
    }
}

impl std::os::fd::AsFd for SocketConnection {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.fd()
    }
}
