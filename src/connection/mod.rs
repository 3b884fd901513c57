//! Python's `multiprocessing.connection`: `Pipe` and `Connection`, two
//! connected ends that send serde values or raw bytes between processes;
//! `Listener` and `Client` (feature `managers`), authenticated connections
//! over TCP or a Unix socket that speak Python's own framing; and [`wait`] for any of
//! several connections, queues, processes and descriptors.
//!
//! Messages are framed (length and descriptor count, then the bytes) over a
//! Unix socket. A `Connection` travels to children and to running pool
//! workers as an argument, and can even be sent over another connection:
//! its socket goes as a [`Handle`].

#[cfg(feature = "managers")]
mod listener;
mod wait;

#[cfg(feature = "managers")]
#[cfg_attr(docsrs, doc(cfg(feature = "managers")))]
pub use listener::{Client, Listener, SocketConnection};
pub use wait::{Waitable, wait};

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Payload, Side};
use crate::reduction;
use crate::sys::frame::{self, Oversize, Progress, Reader};
use crate::{Error, Handle, Result};

/// One end of a [`Pipe`].
///
/// The other end reports [`Error::Eof`] once every copy of this end is
/// closed. A child started with the fork method holds copies of all the
/// parent's descriptors, including ends it was not given, so (as in Python)
/// end a conversation with a forked child by a message, not by closing.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Connection, Pipe, Process};
///
/// fn write_process(conn: Connection) {
///     conn.send(&(42, None::<u8>, "Hello".to_string())).unwrap();
/// }
///
/// let (parent_conn, child_conn) = Pipe(true).unwrap();
/// let mut p = Process::new(write_process, (child_conn,));
/// p.start().unwrap();
/// let got: (i32, Option<u8>, String) = parent_conn.recv().unwrap();
/// assert_eq!(got, (42, None, "Hello".to_string()));
/// p.join().unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct Connection {
    sock: Option<OwnedFd>,
    /// What was read but not yet received. Behind a lock so that receiving
    /// takes `&self`, as `std::sync::mpsc::Receiver::recv` does: threads
    /// sharing a connection receive whole messages, one at a time.
    rx: Mutex<Rx>,
    readable: bool,
    writable: bool,
    limit: Option<usize>,
}

#[derive(Debug)]
struct Rx {
    reader: Reader,
    /// Set once a message over the limit was refused: the stream cannot be
    /// read past it.
    broken: Option<(usize, usize)>,
}

/// Two connected [`Connection`]s (Python's `Pipe(duplex)`). With `duplex`
/// false, the first can only receive and the second only send.
///
/// ```
/// use multiproc::Pipe;
/// let (a, b) = Pipe(true).unwrap();
/// a.send(&"pipe: [message] from conn_1").unwrap();
/// assert_eq!(b.recv::<String>().unwrap(), "pipe: [message] from conn_1");
/// b.send(&"pipe: [message] from conn_2").unwrap();
/// assert_eq!(a.recv::<String>().unwrap(), "pipe: [message] from conn_2");
/// ```
#[allow(non_snake_case)]
pub fn Pipe(duplex: bool) -> Result<(Connection, Connection)> {
    let (a, b) = crate::sys::stream_pair().map_err(|source| Error::Io { context: "socketpair for a pipe", source })?;
    let (ra, wa, rb, wb) = if duplex { (true, true, true, true) } else { (true, false, false, true) };
    Ok((Connection::new(a, ra, wa), Connection::new(b, rb, wb)))
}

/// Python's `Pipe()`: two connected ends, each can send and receive
/// ([`Pipe(true)`](Pipe)).
///
/// ```
/// let (a, b) = multiproc::duplex_pipe().unwrap();
/// a.send(&"ping").unwrap();
/// assert_eq!(b.recv::<String>().unwrap(), "ping");
/// b.send(&"pong").unwrap();
/// assert_eq!(a.recv::<String>().unwrap(), "pong");
/// ```
pub fn duplex_pipe() -> Result<(Connection, Connection)> {
    Pipe(true)
}

impl Connection {
    fn new(sock: OwnedFd, readable: bool, writable: bool) -> Self {
        Connection {
            sock: Some(sock),
            rx: Mutex::new(Rx { reader: Reader::new(), broken: None }),
            readable,
            writable,
            limit: None,
        }
    }

    /// Whether a whole message has been read in already (so `recv` will
    /// not touch the socket). While another thread receives, the socket
    /// alone tells.
    pub(crate) fn has_message(&self) -> bool {
        self.rx.try_lock().is_ok_and(|rx| rx.reader.has_frame())
    }

    pub(crate) fn socket(&self) -> Result<BorrowedFd<'_>> {
        self.sock.as_ref().map(|s| s.as_fd()).ok_or(Error::Connection("it was closed"))
    }

    /// Whether this end can receive.
    ///
    /// ```
    /// let (r, w) = multiproc::Pipe(false).unwrap();
    /// assert!(r.readable() && !r.writable());
    /// assert!(w.writable() && !w.readable());
    /// ```
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send (see [`readable`](Self::readable)).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Refuses received messages larger than `limit` bytes (`None`: no
    /// limit, the default) with [`Error::MessageTooLarge`], before reading
    /// or allocating them.
    ///
    /// ```
    /// let (a, mut b) = multiproc::Pipe(true).unwrap();
    /// b.set_max_message_size(Some(16));
    /// a.send_bytes(&[0; 1000]).unwrap();
    /// assert!(matches!(b.recv_bytes(), Err(multiproc::Error::MessageTooLarge { size: 1000, limit: 16 })));
    /// ```
    pub fn set_max_message_size(&mut self, limit: Option<usize>) {
        self.limit = limit;
        self.rx.get_mut().unwrap_or_else(PoisonError::into_inner).reader.set_limit(limit);
    }

    /// Sends a serde value (and any [`Handle`]s inside it).
    ///
    /// See [`Pipe`] for an example.
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let (bytes, fds) = reduction::encode(value).map_err(|message| Error::Encode {
            what: Payload::Arguments,
            side: Side::Parent,
            message,
        })?;
        let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        self.send_frame(&bytes, &fds)
    }

    /// Sends raw bytes as one message.
    ///
    /// ```
    /// let (a, b) = multiproc::Pipe(true).unwrap();
    /// a.send_bytes(b"raw").unwrap();
    /// assert_eq!(b.recv_bytes().unwrap(), b"raw");
    /// ```
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        self.send_frame(bytes, &[])
    }

    /// Sends `bytes[offset..offset + size]` (Python's `send_bytes(buf,
    /// offset, size)`); out-of-range values are an error.
    ///
    /// ```
    /// let (a, b) = multiproc::Pipe(true).unwrap();
    /// a.send_bytes_range(b"0123456789", 2, 3).unwrap();
    /// assert_eq!(b.recv_bytes().unwrap(), b"234");
    /// assert!(a.send_bytes_range(b"0123", 3, 2).is_err());
    /// ```
    pub fn send_bytes_range(&self, bytes: &[u8], offset: usize, size: usize) -> Result<()> {
        let end = offset
            .checked_add(size)
            .filter(|e| *e <= bytes.len())
            .ok_or(Error::Connection("offset and size reach past the end of the buffer"))?;
        self.send_frame(&bytes[offset..end], &[])
    }

    fn send_frame(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        if !self.writable {
            return Err(Error::Connection("this end is read-only"));
        }
        match frame::send(self.socket()?, bytes, fds) {
            Ok(()) => Ok(()),
            Err(e) if crate::popen::is_disconnect(&e) => Err(Error::Eof),
            Err(source) => Err(Error::Io { context: "sending on a connection", source }),
        }
    }

    /// Receives a serde value; [`Error::Eof`] once the other end is closed
    /// and everything it sent has been read. Takes `&self`: threads that
    /// share a connection each receive whole messages.
    ///
    /// ```
    /// let (a, b) = multiproc::Pipe(true).unwrap();
    /// for i in 0..4u32 { a.send(&i).unwrap(); }
    /// let got: Vec<u32> = std::thread::scope(|s| {
    ///     let readers: Vec<_> = (0..2).map(|_| s.spawn(|| (0..2).map(|_| b.recv::<u32>().unwrap()).collect::<Vec<_>>())).collect();
    ///     readers.into_iter().flat_map(|r| r.join().unwrap()).collect()
    /// });
    /// let mut got = got;
    /// got.sort();
    /// assert_eq!(got, [0, 1, 2, 3]);
    /// ```
    pub fn recv<T: DeserializeOwned>(&self) -> Result<T> {
        self.decode_frame(self.next_frame()?)
    }

    /// [`recv`](Self::recv) for async code (feature `async`): parks the
    /// task, not the thread, until a message comes. Dropping the future
    /// loses nothing: a message read in part stays for the next receive.
    /// Call it inside a tokio runtime with IO enabled.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (a, b) = multiproc::Pipe(true).unwrap();
    /// let (got, ()) = tokio::join!(b.recv_async::<String>(), async { a.send(&"hi").unwrap() });
    /// assert_eq!(got.unwrap(), "hi");
    /// # }
    /// ```
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn recv_async<T: DeserializeOwned>(&self) -> Result<T> {
        let watched = crate::aio::Watched::new(self.socket()?, tokio::io::Interest::READABLE)?;
        let frame = loop {
            if let Some(frame) = self.read_frame(false)? {
                break frame;
            }
            watched.readable().await?;
        };
        self.decode_frame(frame)
    }

    /// [`send`](Self::send) for async code (feature `async`): the value is
    /// encoded at once; writing parks the task, not the thread, while the
    /// socket is full. A message is always sent whole: dropping the future
    /// after its first byte went out finishes the message, blocking. As with
    /// `send` from several threads, several sends on one connection at once
    /// must not overlap.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let (a, b) = multiproc::Pipe(true).unwrap();
    /// let big = vec![7u8; 4 << 20];
    /// let (sent, got) = tokio::join!(a.send_async(&big), b.recv_async::<Vec<u8>>());
    /// sent.unwrap();
    /// assert_eq!(got.unwrap(), big);
    /// # }
    /// ```
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn send_async<T: Serialize + ?Sized>(&self, value: &T) -> impl Future<Output = Result<()>> + Send + '_ {
        let encoded = reduction::encode(value).map_err(|message| Error::Encode {
            what: Payload::Arguments,
            side: Side::Parent,
            message,
        });
        async move {
            let (bytes, fds) = encoded?;
            if !self.writable {
                return Err(Error::Connection("this end is read-only"));
            }
            if fds.len() > frame::MAX_FDS {
                return Err(Error::Io {
                    context: "sending on a connection",
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("{} descriptors in one message (at most {})", fds.len(), frame::MAX_FDS),
                    ),
                });
            }
            let sock = self.socket()?;
            let mut out = Vec::with_capacity(bytes.len() + 16);
            frame::encode_with(&mut out, fds.len(), |out| out.extend_from_slice(&bytes));
            let mut pending = Unsent { sock, rest: out, at: 0, fds, started: false };
            let watched = crate::aio::Watched::new(sock, tokio::io::Interest::WRITABLE)?;
            loop {
                match pending.write_some() {
                    Ok(true) => return Ok(()),
                    Ok(false) => watched.writable().await?,
                    Err(e) if crate::popen::is_disconnect(&e) => {
                        pending.started = false;
                        return Err(Error::Eof);
                    }
                    Err(source) => {
                        pending.started = false;
                        return Err(Error::Io { context: "sending on a connection", source });
                    }
                }
            }
        }
    }

    /// Receives one message as bytes.
    ///
    /// See [`send_bytes`](Self::send_bytes) for an example.
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.next_frame()?.bytes)
    }

    /// Receives one message into `buf[offset..]` and returns its length;
    /// [`Error::BufferTooShort`] (carrying the message) if it does not fit.
    ///
    /// ```
    /// let (a, b) = multiproc::Pipe(true).unwrap();
    /// a.send_bytes(b"hello").unwrap();
    /// let mut buf = [0u8; 8];
    /// assert_eq!(b.recv_bytes_into(&mut buf, 2).unwrap(), 5);
    /// assert_eq!(&buf[2..7], b"hello");
    /// ```
    pub fn recv_bytes_into(&self, buf: &mut [u8], offset: usize) -> Result<usize> {
        let message = self.recv_bytes()?;
        match buf.get_mut(offset..offset.saturating_add(message.len())) {
            Some(dst) => {
                dst.copy_from_slice(&message);
                Ok(message.len())
            }
            _ => Err(Error::BufferTooShort { message }),
        }
    }

    /// Whether a message (or the end of the stream) can be received now,
    /// waiting up to `timeout` (`None`: as long as it takes).
    ///
    /// ```
    /// use std::time::Duration;
    /// let (a, b) = multiproc::Pipe(true).unwrap();
    /// assert!(!b.poll(Some(Duration::ZERO)).unwrap());
    /// a.send(&1).unwrap();
    /// assert!(b.poll(Some(Duration::from_secs(5))).unwrap());
    /// ```
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool> {
        if !self.readable {
            return Err(Error::Connection("this end is write-only"));
        }
        if self.has_message() {
            return Ok(true);
        }
        let ready = crate::sys::poll_readable(&[self.socket()?], timeout)
            .map_err(|source| Error::Io { context: "poll on a connection", source })?;
        Ok(ready[0])
    }

    /// Closes this end; the other end then receives [`Error::Eof`].
    /// Dropping it does the same.
    ///
    /// ```
    /// let (a, b) = multiproc::Pipe(true).unwrap();
    /// b.close();
    /// assert!(matches!(a.recv::<u8>(), Err(multiproc::Error::Eof)));
    /// ```
    pub fn close(mut self) {
        self.sock = None;
    }

    fn next_frame(&self) -> Result<frame::Frame> {
        self.read_frame(true)?.ok_or_else(|| Error::Protocol("a blocking read returned without data".into()))
    }

    /// A received message as the value it holds; a big one kept in shared
    /// memory is held to this end's size limit too.
    fn decode_frame<T: DeserializeOwned>(&self, frame: frame::Frame) -> Result<T> {
        if let (Some(limit), Some(size)) = (self.limit, reduction::spilled_len(&frame.bytes, &frame.fds))
            && size > limit
        {
            return Err(Error::MessageTooLarge { size, limit });
        }
        reduction::decode(&frame.bytes, frame.fds).map_err(|message| Error::Decode {
            what: Payload::Arguments,
            side: Side::Child,
            message,
        })
    }

    /// The next message; without `blocking`, `None` when none is whole yet
    /// (what was read stays buffered for the next call).
    fn read_frame(&self, blocking: bool) -> Result<Option<frame::Frame>> {
        if !self.readable {
            return Err(Error::Connection("this end is write-only"));
        }
        let mut rx = self.rx.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((size, limit)) = rx.broken {
            return Err(Error::MessageTooLarge { size, limit });
        }
        let sock = self.sock.as_ref().ok_or(Error::Connection("it was closed"))?;
        // A blocking receive looks for a moment before it sleeps: an answer
        // usually comes within microseconds.
        let got = if blocking {
            rx.reader.read_spinning(sock.as_fd(), Instant::now() + RECV_SPIN)
        } else {
            rx.reader.read(sock.as_fd(), false)
        };
        match got {
            Ok(Progress::Frame(f)) => Ok(Some(f)),
            Ok(Progress::Eof) => Err(Error::Eof),
            Ok(Progress::Pending) => Ok(None),
            Err(e) => {
                if let Some(o) = e.get_ref().and_then(|i| i.downcast_ref::<Oversize>()) {
                    rx.broken = Some((o.size, o.limit));
                    return Err(Error::MessageTooLarge { size: o.size, limit: o.limit });
                }
                if e.kind() == std::io::ErrorKind::UnexpectedEof || crate::popen::is_disconnect(&e) {
                    return Err(Error::Eof);
                }
                Err(Error::Io { context: "receiving on a connection", source: e })
            }
        }
    }
}

/// How long a blocking receive looks for a message before it sleeps.
const RECV_SPIN: Duration = Duration::from_micros(50);

/// What of a message an async send has not written yet; dropped before the
/// end (its future was), it writes the rest, blocking, so that the stream
/// never holds half a message.
#[cfg(feature = "async")]
struct Unsent<'a> {
    sock: BorrowedFd<'a>,
    /// The message; `rest[at..]` is not written yet (an offset, not a
    /// shrinking buffer: dropping the front after each write would move
    /// the rest each time).
    rest: Vec<u8>,
    at: usize,
    /// Descriptors, until the first byte carries them.
    fds: Vec<OwnedFd>,
    /// Its first byte went out.
    started: bool,
}

#[cfg(feature = "async")]
impl Unsent<'_> {
    /// Writes what the socket takes now; whether all is written.
    fn write_some(&mut self) -> std::io::Result<bool> {
        let fds: Vec<BorrowedFd<'_>> = self.fds.iter().map(|f| f.as_fd()).collect();
        let n = frame::send_some(self.sock, &self.rest[self.at..], &fds)?;
        if n > 0 {
            self.at += n;
            self.fds.clear();
            self.started = true;
        }
        Ok(self.at == self.rest.len())
    }
}

#[cfg(feature = "async")]
impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        // Untouched (nothing went out yet), the message is simply not sent.
        if !self.started {
            return;
        }
        while let Ok(false) = self.write_some() {
            if crate::sys::poll(&[(self.sock, crate::sys::Interest::Write)], None).is_err() {
                return;
            }
        }
    }
}

/// How a connection travels: its socket as a handle, and its settings.
#[derive(Serialize, Deserialize)]
struct Wire {
    sock: Handle,
    readable: bool,
    writable: bool,
    limit: Option<usize>,
}

impl Serialize for Connection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        if self.rx.lock().unwrap_or_else(PoisonError::into_inner).reader.has_buffered() {
            // Those bytes would be lost on the way.
            return Err(S::Error::custom("a Connection with received but unread data cannot be sent"));
        }
        let sock = self.sock.as_ref().ok_or_else(|| S::Error::custom("a closed Connection cannot be sent"))?;
        let sock = crate::reduction::share(sock)?;
        Wire { sock, readable: self.readable, writable: self.writable, limit: self.limit }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let mut c = Connection::new(w.sock.into_owned_fd(), w.readable, w.writable);
        c.set_max_message_size(w.limit);
        Ok(c)
    }
}
