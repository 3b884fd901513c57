//! A worker's answers through shared memory: its results go into a ring
//! (the queues' ring, one producer and one consumer) instead of one socket
//! write each, and the supervisor reads them without a system call.
//!
//! The supervisor still sleeps in `poll` on the worker's socket. Before it
//! does, it raises the ring's bell and looks at the ring once more; a
//! worker that has put an answer lowers the bell and, if it was up, sends a
//! `FromWorker::Bell` frame over the socket to wake it. The ring's fences
//! make sure that either the worker sees the bell up or the supervisor sees
//! the answer, never neither (`sys::ring`'s loom model checks it). While the
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
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::mailbox::Mailbox;
use crate::Handle;
use crate::sys::ring::{Geometry, Record, Ring};

/// Bytes of ring per worker: address space; only the hot window is
/// touched by a steady stream of answers.
const RING_BYTES: u64 = 4 << 20;

/// The answer ring's hot window: narrower than a queue's, as there is one
/// ring per worker and answers are mostly small.
const HOT_BYTES: u64 = 256 << 10;

/// Answers above this size take the socket: for them a system call is
/// small beside the copying, and records beyond the ring's hot window would
/// make it fault in and give back memory for each (a map's chunk answers,
/// hundreds of KiB: its rate was 5% lower through the ring).
const RING_ANSWER_MAX: usize = 64 << 10;

/// One worker's answer ring, as either side sees it.
#[derive(Debug)]
pub(crate) struct Answers {
    ring: Ring,
    /// The worker's mailbox (`pool::mailbox`), on the supervisor's side:
    /// an answer in it that no caller watches for is the supervisor's.
    mailbox: Option<Arc<Mailbox>>,
}

impl Answers {
    /// A new ring and mailbox, made by the supervisor for a worker.
    pub(crate) fn new() -> io::Result<Answers> {
        Ok(Answers { ring: Ring::new(Geometry::new(RING_BYTES, HOT_BYTES))?, mailbox: Some(Arc::new(Mailbox::new()?)) })
    }

    /// What the worker is started with to open them: the ring's handle
    /// and the mailbox's.
    pub(crate) fn handles(&self) -> io::Result<(Handle, Handle)> {
        let ring = self.ring.as_fd().try_clone_to_owned().map(Handle::new)?;
        let mailbox = match &self.mailbox {
            Some(m) => m.handle()?,
            None => return Err(io::Error::other("a worker's own answers have no handles to give")),
        };
        Ok((ring, mailbox))
    }

    /// The worker's side of the ring, from what it was started with (it
    /// opens its mailbox itself).
    pub(crate) fn open(ring: OwnedFd) -> io::Result<Answers> {
        Ok(Answers { ring: Ring::open(ring)?, mailbox: None })
    }

    /// The supervisor's side: the worker's mailbox.
    pub(crate) fn mailbox(&self) -> Option<&Arc<Mailbox>> {
        self.mailbox.as_ref()
    }

    /// The worker's side: puts an encoded answer if it fits now. False
    /// when it does not (larger than [`RING_ANSWER_MAX`], or the ring is
    /// full because the supervisor is behind or gone): the socket takes it
    /// instead, which never waits for a supervisor that is gone.
    pub(crate) fn put(&self, bytes: &[u8]) -> bool {
        bytes.len() <= RING_ANSWER_MAX && matches!(self.ring.push(Some(bytes), Some(past())), Ok(true))
    }

    /// The worker's side, after [`put`](Self::put): whether the supervisor
    /// sleeps and must be rung. Lowers the bell.
    pub(crate) fn must_ring(&self) -> bool {
        self.ring.answer_bell()
    }

    /// Whether answers are waiting for the supervisor: in the ring, or in
    /// the mailbox with no caller watching for them.
    pub(crate) fn waiting(&self) -> bool {
        self.ring.items() > 0 || self.mailbox.as_ref().is_some_and(|m| m.door().unwatched())
    }

    /// The supervisor's side: the next answer, without waiting.
    pub(crate) fn take(&self) -> io::Result<Option<Vec<u8>>> {
        let refuse = &mut |_| -> io::Result<()> {
            Err(io::Error::new(io::ErrorKind::InvalidData, "a marker in a worker's answer ring"))
        };
        match self.ring.pop_with(Some(past()), refuse)? {
            Some(Record::Bytes(bytes)) => Ok(Some(bytes)),
            Some(Record::Marker(())) | None => Ok(None),
        }
    }
}

/// A deadline that has passed, without a look at the clock per answer
/// (the ring reads the clock only when it would otherwise wait).
fn past() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// The supervisor's side, before it sleeps for up to `timeout`: raises
/// every ring's bell and looks at them once more. Returns how long it may
/// sleep: not at all if answers are waiting. [`awake`] afterwards.
pub(crate) fn sleeping<'a>(
    rings: impl Iterator<Item = &'a Answers> + Clone,
    timeout: Option<Duration>,
) -> Option<Duration> {
    let mut any = None;
    for a in rings.clone() {
        a.ring.raise_bell();
        any = Some(a);
    }
    // One fence for all: it is the thread's, not a ring's.
    if let Some(a) = any {
        a.ring.sleeper_fence();
    }
    if rings.into_iter().any(Answers::waiting) { Some(Duration::ZERO) } else { timeout }
}

/// The supervisor's side, awake again: workers need not ring.
pub(crate) fn awake<'a>(rings: impl Iterator<Item = &'a Answers>) {
    for a in rings {
        a.ring.lower_bell();
    }
}

#[cfg(all(test, not(multiproc_loom)))]
mod tests {
    use super::*;

    /// The worker's side of `a`, as a worker opens it.
    fn worker_side(a: &Answers) -> Answers {
        Answers::open(a.handles().unwrap().0.into_owned_fd()).unwrap()
    }

    #[test]
    fn answers_come_back_whole_in_order_and_a_full_ring_refuses_instead_of_waiting() {
        let supervisor = Answers::new().unwrap();
        let worker = worker_side(&supervisor);
        let answer = |k: usize| (0..(k * 7919) % RING_ANSWER_MAX).map(|i| (i ^ k) as u8).collect::<Vec<u8>>();
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
        // Larger than the ring takes answers: refused, for the socket.
        assert!(worker.put(&vec![0; RING_ANSWER_MAX]));
        assert!(!worker.put(&vec![0; RING_ANSWER_MAX + 1]));
    }

    #[test]
    fn the_bell_rings_once_and_only_for_a_supervisor_going_to_sleep() {
        let supervisor = Answers::new().unwrap();
        let worker = worker_side(&supervisor);
        assert!(worker.put(b"one"));
        assert!(!worker.must_ring(), "the supervisor is awake");
        assert_eq!(sleeping([&supervisor].into_iter(), None), Some(Duration::ZERO), "one is waiting");
        awake([&supervisor].into_iter());
        assert_eq!(supervisor.take().unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(sleeping([&supervisor].into_iter(), None), None, "nothing waits");
        assert!(worker.put(b"two"));
        assert!(worker.must_ring(), "the supervisor sleeps");
        assert!(worker.put(b"three"));
        assert!(!worker.must_ring(), "already rung");
        let _ = sleeping([&supervisor].into_iter(), None);
        awake([&supervisor].into_iter());
        assert!(worker.put(b"four"));
        assert!(!worker.must_ring(), "awake again");
        let got: Vec<_> = std::iter::from_fn(|| supervisor.take().unwrap()).collect();
        assert_eq!(got, [&b"two"[..], b"three", b"four"]);
    }
}
