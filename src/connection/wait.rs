//! `wait`: Python's `multiprocessing.connection.wait`, over connections,
//! queues, processes and descriptors at once.
//!
//! Descriptors are polled. A queue has none (its items pass through shared
//! memory, and consumers sleep on a futex), so each queue in a wait gets a
//! watcher thread that sleeps as a consumer would, takes nothing, and
//! wakes the poll through an eventfd when the queue holds an item.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::sys::ring::Ring;
use crate::{Error, Result};

mod private {
    /// What a [`Waitable`](super::Waitable) waits on.
    pub enum Source<'a> {
        /// A descriptor that becomes readable.
        Fd(std::os::fd::BorrowedFd<'a>),
        /// A descriptor, or ready now (a message already read in).
        FdOrNow(std::os::fd::BorrowedFd<'a>, bool),
        /// A queue's ring.
        Ring(RingRef<'a>),
    }

    /// A queue's ring, opaque outside the crate.
    pub struct RingRef<'a>(pub(crate) &'a crate::sys::ring::Ring);

    /// Seals [`Waitable`](super::Waitable): what can be waited on is ours
    /// to say.
    pub trait Sealed {
        fn source(&self) -> crate::Result<Source<'_>>;
    }
}

use private::{Sealed, Source};

/// What [`wait`] can wait on: a [`Connection`](super::Connection) or
/// `SocketConnection` (feature `managers`; a message or the end to
/// read), a [`Queue`](crate::Queue), [`SimpleQueue`](crate::SimpleQueue)
/// or [`JoinableQueue`](crate::JoinableQueue) (an item to get), a started
/// [`Process`](crate::Process) (its end: Python's `sentinel`), and any
/// descriptor (readable).
pub trait Waitable: Sealed {}

impl<T: Sealed + ?Sized> Waitable for T {}

impl Sealed for BorrowedFd<'_> {
    fn source(&self) -> Result<Source<'_>> {
        Ok(Source::Fd(self.as_fd()))
    }
}

impl Sealed for OwnedFd {
    fn source(&self) -> Result<Source<'_>> {
        Ok(Source::Fd(self.as_fd()))
    }
}

impl Sealed for super::Connection {
    fn source(&self) -> Result<Source<'_>> {
        if !self.readable() {
            return Err(Error::Connection("this end is write-only"));
        }
        Ok(Source::FdOrNow(self.socket()?, self.has_message()))
    }
}

#[cfg(feature = "managers")]
impl Sealed for super::SocketConnection {
    fn source(&self) -> Result<Source<'_>> {
        Ok(Source::Fd(self.as_fd()))
    }
}

impl<R> Sealed for crate::Process<R> {
    fn source(&self) -> Result<Source<'_>> {
        Ok(Source::Fd(self.sentinel()?))
    }
}

macro_rules! ring_waitable {
    ($($q:ident),*) => {$(
        impl<T> Sealed for crate::$q<T> {
            fn source(&self) -> Result<Source<'_>> {
                Ok(Source::Ring(private::RingRef(self.ring())))
            }
        }
    )*};
}
ring_waitable!(Queue, SimpleQueue, JoinableQueue);

/// Waits until at least one of `objects` is ready, or `timeout` passes
/// (`None`: no limit), and says which are: their indices, in order; empty
/// when the time ran out (Python's `multiprocessing.connection.wait`,
/// which returns the objects themselves).
///
/// Ready means: a connection has a message to receive or its other end
/// has closed (a `recv` will not block); a queue has an item (another
/// consumer may take it first, so get it with a timeout or `get_nowait`);
/// a process has ended; a descriptor is readable.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use std::time::Duration;
/// use multiproc::connection::wait;
/// use multiproc::{Pipe, Process, Queue};
///
/// fn answer(q: Queue<u32>) { q.put(&42).unwrap(); }
///
/// let (a, b) = Pipe(true).unwrap();
/// let q = Queue::new(0).unwrap();
/// let mut p = Process::new(answer, (q.clone(),));
/// assert!(wait(&[&a, &q], Some(Duration::from_millis(10))).unwrap().is_empty());
/// p.start().unwrap();
/// assert_eq!(wait(&[&a, &q], None).unwrap(), [1], "the queue has an item");
/// assert_eq!(q.get().unwrap(), 42);
/// p.join().unwrap();
/// assert_eq!(wait(&[&a, &p], None).unwrap(), [1], "the process has ended");
/// b.send("hi").unwrap();
/// assert_eq!(wait(&[&a, &q], None).unwrap(), [0]);
/// assert_eq!(a.recv::<String>().unwrap(), "hi");
/// # }
/// ```
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let sources: Vec<Source<'_>> = objects.iter().map(|o| o.source()).collect::<Result<_>>()?;
    let mut fds: Vec<(usize, BorrowedFd<'_>)> = Vec::new();
    let mut rings: Vec<(usize, &Ring)> = Vec::new();
    let mut now = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        match s {
            Source::Fd(fd) => fds.push((i, *fd)),
            Source::FdOrNow(fd, ready) => {
                if *ready {
                    now.push(i);
                }
                fds.push((i, *fd));
            }
            Source::Ring(r) => rings.push((i, r.0)),
        }
    }
    let poll_err = |source| Error::Io { context: "wait on descriptors", source };
    // What is ready already, without sleeping.
    let ready_fds = |timeout: Option<Duration>, extra: Option<BorrowedFd<'_>>| -> Result<Vec<usize>> {
        let mut all: Vec<BorrowedFd<'_>> = fds.iter().map(|(_, fd)| *fd).collect();
        all.extend(extra);
        let flags = crate::sys::poll_readable(&all, timeout).map_err(poll_err)?;
        Ok(fds.iter().zip(flags).filter(|(_, r)| *r).map(|((i, _), _)| *i).collect())
    };
    let collect = |mut found: Vec<usize>, now: &[usize]| {
        found.extend(now);
        found.extend(rings.iter().filter(|(_, r)| r.items() > 0).map(|(i, _)| *i));
        found.sort_unstable();
        found.dedup();
        found
    };
    let found = collect(ready_fds(Some(Duration::ZERO), None)?, &now);
    if !found.is_empty() || timeout == Some(Duration::ZERO) {
        return Ok(found);
    }
    if rings.is_empty() {
        return Ok(collect(ready_fds(timeout, None)?, &[]));
    }
    let bell = crate::sys::eventfd().map_err(poll_err)?;
    let stop = AtomicBool::new(false);
    let found = std::thread::scope(|scope| -> Result<Vec<usize>> {
        let watchers: Vec<_> = rings
            .iter()
            .map(|(_, ring)| {
                let (bell, stop) = (&bell, &stop);
                scope.spawn(move || {
                    // An error here (a broken ring) shows when the caller
                    // gets from the queue; the wait only needs to end.
                    let filled = ring.wait_filled(deadline, &|| stop.load(Ordering::SeqCst)).unwrap_or(true);
                    if filled && !stop.load(Ordering::SeqCst) {
                        crate::sys::eventfd_bump(bell.as_fd());
                    }
                })
            })
            .collect();
        let polled = ready_fds(timeout, Some(bell.as_fd()));
        stop.store(true, Ordering::SeqCst);
        for (_, ring) in &rings {
            ring.wake_watchers();
        }
        for w in watchers {
            let _ = w.join();
        }
        polled
    })?;
    Ok(collect(found, &[]))
}
