//! A worker's answers through shared memory: its results go into a ring
//! (the queues' ring, one producer and one consumer) instead of one socket
//! write each, and the supervisor reads them without a system call.
//!
//! The supervisor still sleeps in `poll` on the worker's socket. Before it
//! does, it raises the worker's bell word and looks at the ring once more;
//! a worker that has put an answer lowers the bell and, if it was up, sends
//! a `FromWorker::Bell` frame over the socket to wake it. Both sides fence
//! between their store and their look, so either the worker sees the bell
//! up or the supervisor sees the answer (never neither). While the
//! supervisor is awake, answers cost no system call at all.
//!
//! A worker that dies leaves every answer it committed in the ring (a
//! half-written one is never visible: the ring's invariant 2), so the
//! supervisor, which drains the ring before it settles a dead worker's
//! tasks, still knows exactly which task was running. Answers that carry
//! descriptors, or do not fit now, take the socket as before; the
//! supervisor matches answers to tasks by id, so the two ways need no
//! common order.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::time::Instant;

use crate::Handle;
use crate::sys::ring::{Geometry, Record, Ring};
use crate::sys::shm::Mapping;

/// Bytes of ring per worker: address space; only the hot window (256 KiB)
/// is touched by a steady stream of answers.
const RING_BYTES: u64 = 4 << 20;

/// One worker's answer ring and bell, as either side sees them.
pub(crate) struct Answers {
    ring: Ring,
    bell: Mapping,
}

impl std::fmt::Debug for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers").field("ring", &self.ring).finish_non_exhaustive()
    }
}

impl Answers {
    /// A new ring and bell, made by the supervisor for a worker.
    pub(crate) fn new() -> io::Result<Answers> {
        Ok(Answers { ring: Ring::new(Geometry::queue(RING_BYTES))?, bell: Mapping::new("multiproc-pool-bell", 4096)? })
    }

    /// What the worker is started with to open them.
    pub(crate) fn handles(&self) -> io::Result<(Handle, Handle)> {
        let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(Handle::new);
        Ok((dup(std::os::fd::AsFd::as_fd(&self.ring))?, dup(std::os::fd::AsFd::as_fd(&self.bell))?))
    }

    /// The worker's side, from what it was started with.
    pub(crate) fn open(ring: OwnedFd, bell: OwnedFd) -> io::Result<Answers> {
        let bell = Mapping::open(bell)?;
        if bell.len() < size_of::<AtomicU32>() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a pool worker's bell is too small"));
        }
        Ok(Answers { ring: Ring::open(ring)?, bell })
    }

    fn bell(&self) -> &AtomicU32 {
        // SAFETY: the mapping is page-aligned, at least a word long (checked
        // in `open`, a page in `new`) and lives as long as `self`; the word
        // is only ever used atomically.
        unsafe { &*self.bell.as_ptr().cast::<AtomicU32>() }
    }

    /// The worker's side: puts an encoded answer if it fits now. False
    /// when it does not (too big, or the ring is full because the
    /// supervisor is behind or gone): the socket takes it instead, which
    /// never waits for a supervisor that is gone.
    pub(crate) fn put(&self, bytes: &[u8]) -> bool {
        bytes.len() <= self.ring.max_record() && matches!(self.ring.push(Some(bytes), Some(Instant::now())), Ok(true))
    }

    /// The worker's side, after [`put`](Self::put): whether the supervisor
    /// is (about to be) asleep and must be rung. Lowers the bell.
    pub(crate) fn must_ring(&self) -> bool {
        // Orders the put before the look at the bell; pairs with the fence
        // in `sleeping`.
        fence(Ordering::SeqCst);
        self.bell().swap(0, Ordering::SeqCst) == 1
    }

    /// The supervisor's side, before it sleeps: raises the bell. Callers
    /// fence once after raising every worker's bell, then look at the
    /// rings ([`waiting`](Self::waiting)) before they sleep.
    pub(crate) fn sleeping(&self) {
        self.bell().store(1, Ordering::Relaxed);
    }

    /// The supervisor's side, awake again: no bell needed.
    pub(crate) fn awake(&self) {
        self.bell().store(0, Ordering::Relaxed);
    }

    /// Whether answers are waiting in the ring.
    pub(crate) fn waiting(&self) -> bool {
        self.ring.items() > 0
    }

    /// The supervisor's side: the next answer, without waiting.
    pub(crate) fn take(&self) -> io::Result<Option<Vec<u8>>> {
        let refuse = &mut |_| -> io::Result<()> {
            Err(io::Error::new(io::ErrorKind::InvalidData, "a marker in a worker's answer ring"))
        };
        match self.ring.pop_with(Some(Instant::now()), refuse)? {
            Some(Record::Bytes(bytes)) => Ok(Some(bytes)),
            Some(Record::Marker(())) | None => Ok(None),
        }
    }
}

/// The fence the supervisor makes between raising the bells and its last
/// look at the rings (see the module docs).
pub(crate) fn before_sleep() {
    fence(Ordering::SeqCst);
}

#[cfg(all(test, not(multiproc_loom)))]
mod tests {
    use super::*;

    /// The worker's side of `a`, as a worker opens it.
    fn worker_side(a: &Answers) -> Answers {
        let (ring, bell) = a.handles().unwrap();
        Answers::open(ring.into_owned_fd(), bell.into_owned_fd()).unwrap()
    }

    #[test]
    fn answers_come_back_whole_in_order_and_a_full_ring_refuses_instead_of_waiting() {
        let supervisor = Answers::new().unwrap();
        let worker = worker_side(&supervisor);
        let answer = |k: usize| (0..(k * 7919) % 70_000).map(|i| (i ^ k) as u8).collect::<Vec<u8>>();
        // Until the ring is full: then `put` says no at once.
        let mut k = 0;
        while worker.put(&answer(k)) {
            k += 1;
        }
        assert!(k > 10, "only {k} answers fit");
        assert!(supervisor.waiting());
        for j in 0..k {
            assert_eq!(supervisor.take().unwrap(), Some(answer(j)), "answer {j}");
        }
        assert!(!supervisor.waiting());
        assert_eq!(supervisor.take().unwrap(), None);
        // Room again, on a later lap.
        assert!(worker.put(&answer(k)));
        assert_eq!(supervisor.take().unwrap(), Some(answer(k)));
        // Larger than the ring takes: refused, for the socket.
        assert!(!worker.put(&vec![0; RING_BYTES as usize]));
    }

    #[test]
    fn the_bell_rings_once_and_only_for_a_supervisor_going_to_sleep() {
        let supervisor = Answers::new().unwrap();
        let worker = worker_side(&supervisor);
        assert!(worker.put(b"one"));
        assert!(!worker.must_ring(), "the supervisor is awake");
        supervisor.sleeping();
        before_sleep();
        assert!(worker.put(b"two"));
        assert!(worker.must_ring(), "the supervisor sleeps");
        assert!(worker.put(b"three"));
        assert!(!worker.must_ring(), "already rung");
        supervisor.sleeping();
        supervisor.awake();
        assert!(worker.put(b"four"));
        assert!(!worker.must_ring(), "awake again");
        let got: Vec<_> = std::iter::from_fn(|| supervisor.take().unwrap()).collect();
        assert_eq!(got, [&b"one"[..], b"two", b"three", b"four"]);
    }
}
