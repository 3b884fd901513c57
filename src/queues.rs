//! `Queue`, `SimpleQueue` and `JoinableQueue`: many producers and many
//! consumers in any number of processes (Python's `multiprocessing.queues`).
//!
//! Messages up to 16 MiB go through a byte ring in shared memory
//! (`sys::ring`), published whole or not at all. Larger ones, and those
//! carrying handles, travel as sequenced packets over one Unix socket pair
//! shared by every user of the queue, as a run of chunks under a robust
//! writer lock, their place in the order kept by a marker in the ring. A
//! consumer reads a marker's message while it holds the ring's consumer
//! lock, so marked messages come out in the ring's order; it drops a
//! partial message as soon as it can tell that its producer is gone (the
//! writer lock is free or was left by a dead holder). A consumer killed in
//! the middle of a `get` loses at most the message it was taking: the next
//! consumer skips its leftover chunks. (Python's queue is left locked for
//! good by a producer killed mid-`put`.)
//!
//! Bounded queues count free slots with a shared [`Semaphore`]; `qsize` and
//! `JoinableQueue`'s unfinished-task count are counters in the ring's header.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Payload, Side};
use crate::sys::frame::{recv_packet, send_packet};
use crate::sys::ring::{Record, Ring};
use crate::{Acquired, Error, Handle, Lock, Result, Semaphore};

/// Payload bytes per packet; well under the socket's send buffer.
const CHUNK: usize = 48 << 10;
const HEAD: usize = 1 + 8 + 8 + 4;

std::thread_local! {
    /// One packet's worth of room, reused by every get on this thread.
    static RECEIVE_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

const WHOLE: u8 = 0;
const FIRST: u8 = 1;
const MORE: u8 = 2;
const LAST: u8 = 3;

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// What every queue kind shares; it travels as its descriptors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Core {
    writer: Arc<Handle>,
    reader: Arc<Handle>,
    write_lock: Lock,
    slots: Option<Semaphore>,
    maxsize: usize,
    /// Small messages, markers for the others, and the counters.
    ring: Arc<RingHandle>,
}

/// A ring that travels as its memory.
#[derive(Debug)]
struct RingHandle(Ring);

impl Serialize for RingHandle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::reduction::share::<S::Error>(&self.0)?.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RingHandle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        Ring::open(Handle::deserialize(d)?.into_owned_fd()).map(RingHandle).map_err(D::Error::custom)
    }
}

/// Bytes of shared ring per queue. Python's unbounded queue never blocks a
/// put (its feeder thread buffers without limit), so ours must hold a
/// large backlog too: pages cost only once written, and consumers give
/// them back behind them (all but the hot window, [`HOT_BYTES`]), so this
/// is address space, not memory.
const RING_BYTES: usize = 1 << 30;

/// The start of the ring that a stream with a backlog under half of it
/// cycles through, resident and never given back. A consumer a little
/// slower than its producer keeps a backlog of hundreds of KiB: with the
/// rings' usual 256 KiB such a stream ran on through fresh pages, each
/// faulted in by the producer and given back by the consumer (a hole
/// punched, and every processor's TLB flushed, per 256 KiB), 1.7× slower
/// for 1 KiB messages (`queue_1k_per_s` of `multiproc-bench ipc`: 3.2-3.4
/// M/s against 5.8-6.3) and 2.9× for 4 KiB. The cost: a queue that has
/// carried 2 MiB keeps 2 MiB of shared memory while it lives. (A pool's
/// answer rings keep 256 KiB: they are one per worker.)
const HOT_BYTES: u64 = 2 << 20;

/// Messages above this size stream through the queue's socket instead,
/// as its consumer reads them, rather than sit whole in shared memory.
const RING_RECORD_MAX: usize = 16 << 20;

impl Core {
    fn new(maxsize: usize) -> Result<Core> {
        let (reader, writer) = crate::sys::packet_pair().map_err(io("socketpair for a queue"))?;
        let slots = match maxsize {
            0 => None,
            n => Some(Semaphore::new(u32::try_from(n).unwrap_or(u32::MAX))?),
        };
        Ok(Core {
            writer: Arc::new(Handle::new(writer)),
            reader: Arc::new(Handle::new(reader)),
            write_lock: Lock::new()?,
            slots,
            maxsize,
            ring: Arc::new(RingHandle(
                Ring::new(crate::sys::ring::Geometry::new(RING_BYTES as u64, HOT_BYTES))
                    .map_err(io("a queue's shared ring"))?,
            )),
        })
    }

    fn put<T: Serialize + ?Sized>(&self, item: &T, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let (bytes, fds) = reduction_encode(item, SCRATCH.take())?;
        let sent = self.put_encoded(&bytes, &fds, deadline);
        if bytes.capacity() <= SCRATCH_KEPT {
            SCRATCH.set(bytes);
        }
        sent
    }

    fn put_encoded(&self, bytes: &[u8], fds: &[OwnedFd], deadline: Option<Instant>) -> Result<()> {
        if let Some(slots) = &self.slots {
            let got = match deadline {
                None => slots.acquire().map(|_| true)?,
                Some(d) => slots.acquire_timeout(d.saturating_duration_since(Instant::now()))?,
            };
            if !got {
                return Err(Error::Full);
            }
        }
        self.put_slotted(bytes, fds, deadline)
    }

    /// Puts with this put's slot (in a bounded queue) already taken; gives
    /// it back if the item does not go in.
    fn put_slotted(&self, bytes: &[u8], fds: &[OwnedFd], deadline: Option<Instant>) -> Result<()> {
        let sent = if fds.is_empty() && bytes.len() <= self.ring.0.max_record().min(RING_RECORD_MAX) {
            // The fast way: one copy into shared memory.
            self.ring.0.push(Some(bytes), deadline).map_err(io("a queue's shared ring"))
        } else {
            self.put_around(bytes, fds, deadline)
        };
        match sent {
            Ok(true) => Ok(()),
            not_sent => {
                if let Some(slots) = &self.slots {
                    let _ = slots.release();
                }
                not_sent.and(Err(Error::Full))
            }
        }
    }

    /// An async put: the task takes a slot of a bounded queue without
    /// waiting; a helper thread waits, taking nothing, until one is free
    /// (nudged to stop when the future is dropped), and the task tries
    /// again. So a dropped put never holds a slot, even for a moment.
    #[cfg(feature = "async")]
    async fn put_async(&self, bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Result<()> {
        if let Some(slots) = &self.slots {
            while !slots.try_acquire()? {
                let (sem, nudge) = (slots.clone(), slots.clone());
                crate::aio::Helper::spawn(move |stop| sem.wait_free(stop), move || nudge.nudge()).await??;
            }
        }
        self.put_slotted(&bytes, &fds, None)
    }

    /// An async get: the task takes without waiting; a helper thread waits,
    /// taking nothing, until the ring holds something (woken to stop when
    /// the future is dropped), and the task tries again.
    #[cfg(feature = "async")]
    async fn get_async<T: DeserializeOwned>(&self) -> Result<T> {
        loop {
            match self.get(Some(Duration::ZERO)) {
                Err(Error::Empty) => {}
                got => return got,
            }
            let (ring, waker) = (self.ring.clone(), self.ring.clone());
            crate::aio::Helper::spawn(
                move |stop| ring.0.wait_filled(None, &|| stop.load(std::sync::atomic::Ordering::SeqCst)),
                move || waker.0.wake_watchers(),
            )
            .await?
            .map_err(io("a queue's shared ring"))?;
        }
    }

    /// A message too large for the ring, or carrying handles: its place in
    /// the order goes into the ring as a marker, the message itself over
    /// the packet socket tagged with the marker's position, both under the
    /// writer lock so that markers and messages keep the same order.
    fn put_around(&self, bytes: &[u8], fds: &[OwnedFd], deadline: Option<Instant>) -> Result<bool> {
        let locked = match deadline {
            None => Some(self.write_lock.acquire()?),
            Some(d) => self.write_lock.acquire_timeout(d.saturating_duration_since(Instant::now()))?,
        };
        if locked.is_none() {
            return Ok(false);
        }
        let placed = self.ring.0.place(None, deadline).map_err(io("a queue's shared ring"));
        // Once its place is taken, the message goes out whatever the deadline.
        let sent = match placed {
            Ok(Some(tag)) => self.send_message(tag, bytes, fds).map(|()| true),
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        self.write_lock.release()?;
        sent
    }

    /// Sends one message as packets, waiting for room as long as it takes.
    fn send_message(&self, tag: u64, bytes: &[u8], fds: &[OwnedFd]) -> Result<()> {
        let sock = self.writer.as_fd();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let send =
            |packet: Vec<u8>, fds: &[BorrowedFd<'_>]| send_packet(sock, &packet, fds).map_err(io("send on a queue"));
        if bytes.len() <= CHUNK {
            return send(packet(WHOLE, tag, bytes.len(), fds.len(), bytes), &borrowed);
        }
        let mut chunks = bytes.chunks(CHUNK).peekable();
        let first = chunks.next().expect("a large message has chunks");
        send(packet(FIRST, tag, bytes.len(), fds.len(), first), &borrowed)?;
        while let Some(chunk) = chunks.next() {
            let kind = if chunks.peek().is_some() { MORE } else { LAST };
            send(packet(kind, tag, 0, 0, chunk), &[])?;
        }
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, timeout: Option<Duration>) -> Result<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let (bytes, fds) = loop {
            let mut marked = |tag| RECEIVE_BUFFER.with(|buf| self.receive_marked(tag, &mut buf.borrow_mut()));
            match self.ring.0.pop_with(deadline, &mut marked).map_err(io("a queue's shared ring"))? {
                None => return Err(Error::Empty),
                Some(Record::Bytes(bytes)) => break (bytes, Vec::new()),
                Some(Record::Marker(Some(message))) => break message,
                // Its producer died before sending it whole: its place is
                // passed, and counted done, as no consumer will.
                Some(Record::Marker(None)) => {
                    self.ring.0.task_done();
                }
            }
        };
        if let Some(slots) = &self.slots {
            let _ = slots.release();
        }
        crate::reduction::decode(&bytes, fds).map_err(|message| Error::Decode {
            what: Payload::Arguments,
            side: Side::Child,
            message,
        })
    }

    /// The message behind the marker tagged `tag`, read while this consumer
    /// holds the ring's consumer lock with the marker still in place. The
    /// socket holds messages in the markers' order, so what comes before
    /// `tag` is left over from a consumer that died while taking it (it
    /// had taken the start, so the rest is dropped), and what comes after
    /// means this marker's producer died before sending: `None`. `None`
    /// too when its producer died in the middle of the message.
    fn receive_marked(&self, tag: u64, buf: &mut Vec<u8>) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        buf.resize(HEAD + CHUNK, 0);
        let sock = self.reader.as_fd();
        let mut partial: Option<(usize, Vec<u8>, Vec<OwnedFd>)> = None;
        loop {
            let Some(n) = crate::sys::frame::peek_packet(sock, &mut buf[..HEAD])? else {
                // Nothing waiting: its producer is still sending, or gone.
                if self.producer_gone()? {
                    if crate::sys::frame::peek_packet(sock, &mut buf[..HEAD])?.is_none() {
                        return Ok(None);
                    }
                } else {
                    crate::sys::poll_readable(&[sock], Some(Duration::from_millis(50)))?;
                }
                continue;
            };
            let this = (n >= HEAD).then(|| u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes")));
            if this.is_some_and(|this| this > tag) {
                return Ok(None);
            }
            // Taken whether it is this marker's or a leftover to drop.
            let Some((n, fds)) = recv_packet(sock, buf, false)? else { continue };
            if this != Some(tag) || n < HEAD {
                continue;
            }
            let kind = buf[0];
            let total = u64::from_le_bytes(buf[9..17].try_into().expect("8 bytes")) as usize;
            let data = &buf[HEAD..n];
            match (kind, partial.as_mut()) {
                (WHOLE, _) => return Ok(Some((data.to_vec(), fds))),
                (FIRST, _) => {
                    let mut bytes = Vec::with_capacity(total.min(64 << 20));
                    bytes.extend_from_slice(data);
                    partial = Some((total, bytes, fds));
                }
                (MORE | LAST, Some((total, bytes, _))) => {
                    bytes.extend_from_slice(data);
                    if kind == LAST {
                        let complete = bytes.len() == *total;
                        let (_, bytes, fds) = partial.take().expect("just matched");
                        if complete {
                            return Ok(Some((bytes, fds)));
                        }
                        return Ok(None);
                    }
                }
                // The rest of a message whose start a dead consumer took.
                _ => continue,
            }
        }
    }

    /// True when no producer is in the middle of a message: the writer lock
    /// is free, or was left by a holder that died.
    fn producer_gone(&self) -> std::io::Result<bool> {
        let gone = |e: Error| std::io::Error::other(e.to_string());
        match self.write_lock.try_acquire().map_err(gone)? {
            None => Ok(false),
            Some(Acquired::Normally | Acquired::AfterOwnerDied) => {
                self.write_lock.release().map_err(gone)?;
                Ok(true)
            }
        }
    }

    fn qsize(&self) -> Result<usize> {
        Ok(self.ring.0.items())
    }
}

thread_local! {
    /// The buffer puts encode into, kept between puts while it is small.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest scratch buffer a thread keeps for its next put.
const SCRATCH_KEPT: usize = 64 << 10;

fn reduction_encode<T: Serialize + ?Sized>(item: &T, mut buf: Vec<u8>) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    buf.clear();
    crate::reduction::encode_into(item, buf).map_err(|message| Error::Encode {
        what: Payload::Arguments,
        side: Side::Parent,
        message,
    })
}

fn packet(kind: u8, id: u64, total: usize, nfds: usize, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEAD + data.len());
    p.push(kind);
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&(total as u64).to_le_bytes());
    p.extend_from_slice(&(nfds as u32).to_le_bytes());
    p.extend_from_slice(data);
    p
}

macro_rules! queue_common {
    () => {
        /// Puts an item, waiting for room in a bounded queue.
        pub fn put(&self, item: &T) -> Result<()> {
            self.core.put(item, None)
        }

        /// Puts an item, waiting at most `timeout` for room; [`Error::Full`]
        /// if there was none.
        pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
            self.core.put(item, Some(timeout))
        }

        /// Puts an item only if there is room now; [`Error::Full`] if not.
        pub fn put_nowait(&self, item: &T) -> Result<()> {
            self.core.put(item, Some(Duration::ZERO))
        }

        /// Takes the next item, waiting for one.
        pub fn get(&self) -> Result<T> {
            self.core.get(None)
        }

        /// [`put`](Self::put) for async code (feature `async`): the item is
        /// encoded at once; waiting for room in a bounded queue parks the
        /// task, not the thread. Dropped before it completes, the future
        /// puts nothing and holds no room. Call it inside a tokio runtime.
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")] async fn main() {
        /// let q = multiproc::Queue::new(1).unwrap();
        /// q.put_async(&1u32).await.unwrap();
        /// // The queue is full: the second put waits for the get beside it.
        /// let (put, got) = tokio::join!(q.put_async(&2), q.get_async());
        /// put.unwrap();
        /// assert_eq!(got.unwrap(), 1);
        /// assert_eq!(q.get_async().await.unwrap(), 2);
        /// # }
        /// ```
        #[cfg(feature = "async")]
        #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
        pub fn put_async(&self, item: &T) -> impl std::future::Future<Output = Result<()>> + '_ {
            let encoded = reduction_encode(item, Vec::new());
            async move {
                let (bytes, fds) = encoded?;
                self.core.put_async(bytes, fds).await
            }
        }

        /// [`get`](Self::get) for async code (feature `async`): parks the
        /// task, not the thread, until an item comes (a helper thread sleeps
        /// on the queue meanwhile, taking nothing). Dropped before it
        /// completes, the future takes nothing. Call it inside a tokio
        /// runtime.
        ///
        /// ```
        /// # #[tokio::main(flavor = "current_thread")] async fn main() {
        /// let q = multiproc::Queue::unbounded().unwrap();
        /// let (got, ()) = tokio::join!(q.get_async(), async { q.put(&"hi".to_string()).unwrap() });
        /// assert_eq!(got.unwrap(), "hi");
        /// # }
        /// ```
        #[cfg(feature = "async")]
        #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
        pub async fn get_async(&self) -> Result<T> {
            self.core.get_async().await
        }

        /// Takes the next item, waiting at most `timeout`; [`Error::Empty`]
        /// if none came.
        pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
            self.core.get(Some(timeout))
        }

        /// Takes the next item only if one is waiting; [`Error::Empty`] if not.
        pub fn get_nowait(&self) -> Result<T> {
            self.core.get(Some(Duration::ZERO))
        }

        /// The number of items in the queue (exact once puts and gets in
        /// flight have finished; Python's is approximate too).
        pub fn qsize(&self) -> Result<usize> {
            self.core.qsize()
        }

        /// Whether the queue is empty (see [`qsize`](Self::qsize)).
        pub fn empty(&self) -> Result<bool> {
            Ok(self.core.qsize()? == 0)
        }

        /// Whether a bounded queue is full (see [`qsize`](Self::qsize)).
        pub fn full(&self) -> Result<bool> {
            Ok(self.core.maxsize > 0 && self.core.qsize()? >= self.core.maxsize)
        }

        /// Closes this process's handle on the queue (dropping it does the
        /// same); others keep theirs.
        pub fn close(self) {}
    };
}

/// A multi-producer, multi-consumer queue between processes (Python's
/// `multiprocessing.Queue`), optionally bounded. Messages of any size
/// cross it; a process killed in the middle of a `put` or `get` never
/// leaves the queue unusable.
///
/// Messages up to 16 MiB travel through a ring in shared memory, which
/// holds up to 1 GiB of backlog: like Python's, an unbounded queue does not
/// block a `put` for want of a consumer (within that). Memory beyond the
/// ring's first 2 MiB (the window a steady stream goes round) is given
/// back behind consumers; those 2 MiB stay while the queue lives. Larger
/// messages, and those carrying handles, stream through a socket as a
/// consumer reads them, keeping their place in the order.
///
/// Byte payloads: serde sends a `Vec<u8>` as a sequence, one element at a
/// time; `serde_bytes::ByteBuf` (the counterpart of Python's `bytes`) goes
/// as one block, several times faster.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Process, Queue};
///
/// fn producer(q: Queue<String>) {
///     for url in ["url1", "url2", "url3"] {
///         q.put(&url.to_string()).unwrap();
///     }
/// }
///
/// let q = Queue::new(10).unwrap();
/// let mut p = Process::new(producer, (q.clone(),));
/// p.start().unwrap();
/// let got: Vec<String> = (0..3).map(|_| q.get().unwrap()).collect();
/// assert_eq!(got, ["url1", "url2", "url3"]);
/// p.join().unwrap();
/// assert!(q.empty().unwrap());
/// assert!(matches!(q.get_nowait(), Err(multiproc::Error::Empty)));
/// # }
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Queue<T> {
    core: Core,
    #[serde(skip)]
    _t: std::marker::PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue { core: self.core.clone(), _t: std::marker::PhantomData }
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue holding at most `maxsize` items (0: unbounded).
    pub fn new(maxsize: usize) -> Result<Self> {
        Ok(Queue { core: Core::new(maxsize)?, _t: std::marker::PhantomData })
    }

    /// Python's `Queue()`: no bound.
    ///
    /// ```
    /// let q = multiproc::Queue::<u32>::unbounded().unwrap();
    /// for i in 0..10_000 { q.put(&i).unwrap(); }
    /// assert_eq!(q.get().unwrap(), 0);
    /// ```
    pub fn unbounded() -> Result<Self> {
        Queue::new(0)
    }

    queue_common!();
}

/// An unbounded queue with only the basics (Python's `SimpleQueue`).
///
/// ```
/// let q = multiproc::SimpleQueue::<String>::new().unwrap();
/// q.put(&"queue: [message] (1)".to_string()).unwrap();
/// q.put(&"queue: [message] (2)".to_string()).unwrap();
/// assert_eq!(q.get().unwrap(), "queue: [message] (1)");
/// assert!(!q.empty().unwrap());
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SimpleQueue<T> {
    core: Core,
    #[serde(skip)]
    _t: std::marker::PhantomData<fn(T) -> T>,
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue { core: self.core.clone(), _t: std::marker::PhantomData }
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// A new, empty queue.
    pub fn new() -> Result<Self> {
        Ok(SimpleQueue { core: Core::new(0)?, _t: std::marker::PhantomData })
    }

    /// Puts an item.
    pub fn put(&self, item: &T) -> Result<()> {
        self.core.put(item, None)
    }

    /// Takes the next item, waiting for one.
    pub fn get(&self) -> Result<T> {
        self.core.get(None)
    }

    /// Whether the queue is empty.
    pub fn empty(&self) -> Result<bool> {
        Ok(self.core.qsize()? == 0)
    }

    /// Closes this process's handle (dropping it does the same).
    pub fn close(self) {}
}

/// A [`Queue`] that also counts unfinished tasks (Python's
/// `JoinableQueue`): every `put` adds one, every `task_done` removes one,
/// and `join` waits until none is left.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{JoinableQueue, Process};
///
/// fn worker(q: JoinableQueue<u32>) {
///     while let Ok(n) = q.get() {
///         if n == 0 { q.task_done().unwrap(); break; }
///         q.task_done().unwrap();
///     }
/// }
///
/// let q = JoinableQueue::new(0).unwrap();
/// let mut p = Process::new(worker, (q.clone(),));
/// p.start().unwrap();
/// for n in [3, 2, 1, 0] { q.put(&n).unwrap(); }
/// q.join().unwrap();
/// p.join().unwrap();
/// assert!(matches!(q.task_done(), Err(multiproc::Error::TaskDoneTooOften)));
/// # }
/// ```
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct JoinableQueue<T> {
    core: Core,
    #[serde(skip)]
    _t: std::marker::PhantomData<fn(T) -> T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue { core: self.core.clone(), _t: std::marker::PhantomData }
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// A queue holding at most `maxsize` items (0: unbounded).
    pub fn new(maxsize: usize) -> Result<Self> {
        Ok(JoinableQueue { core: Core::new(maxsize)?, _t: std::marker::PhantomData })
    }

    /// Python's `JoinableQueue()`: no bound.
    ///
    /// ```
    /// let q = multiproc::JoinableQueue::<u8>::unbounded().unwrap();
    /// q.put(&1).unwrap();
    /// q.get().unwrap();
    /// q.task_done().unwrap();
    /// q.join().unwrap();
    /// ```
    pub fn unbounded() -> Result<Self> {
        JoinableQueue::new(0)
    }

    queue_common!();

    /// Marks one task as done; [`Error::TaskDoneTooOften`] past the number
    /// of items put.
    pub fn task_done(&self) -> Result<()> {
        if self.core.ring.0.task_done() { Ok(()) } else { Err(Error::TaskDoneTooOften) }
    }

    /// Waits until every item put has been marked done.
    pub fn join(&self) -> Result<()> {
        self.core.ring.0.join().map_err(io("a queue's shared ring"))
    }
}

macro_rules! ring_of {
    ($($q:ident),*) => {$(
        impl<T> $q<T> {
            /// Its ring, for `connection::wait`.
            pub(crate) fn ring(&self) -> &Ring {
                &self.core.ring.0
            }
        }
    )*};
}
ring_of!(Queue, SimpleQueue, JoinableQueue);

#[cfg(all(test, not(multiproc_loom)))]
mod tests {
    use serde_bytes::ByteBuf;

    /// A stream with a backlog of several hundred KiB (a consumer a little
    /// behind its producer) goes round the queue's hot window instead of
    /// on through fresh pages: the producer comes back to the ring's start
    /// every few MiB, and the ring holds no more than that window.
    #[test]
    fn a_stream_with_a_modest_backlog_keeps_to_the_hot_window() {
        let q = super::Queue::<ByteBuf>::new(0).unwrap();
        let msg = ByteBuf::from(vec![7u8; 1000]);
        for _ in 0..600 {
            q.put(&msg).unwrap();
        }
        for _ in 0..60_000 {
            q.put(&msg).unwrap();
            assert_eq!(q.get().unwrap(), msg);
        }
        let ring = &q.core.ring.0;
        assert!(ring.laps() >= 8, "{} laps: the stream ran on through fresh pages", ring.laps());
        assert!(ring.resident() <= super::HOT_BYTES + (1 << 20), "{} bytes resident", ring.resident());
    }
}
