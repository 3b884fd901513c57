//! A worker's mailbox: one task in and its answer out through shared
//! memory, so that a caller that waits for each result (the round trip) and
//! an idle worker meet without a system call or the supervisor in between.
//!
//! Only a worker that is listening takes mail: after a task its caller
//! handed over, it looks at the mailbox (and now and then at its socket)
//! for a moment before it goes back to sleeping on the socket. A caller
//! that took an offered worker (under the pool's lock, so it is the only
//! writer) writes its task and posts it only if the worker still listens;
//! otherwise the task takes the socket as before. The worker answers into
//! the mailbox, and whoever takes the answer first delivers it: the caller,
//! which watches the mailbox while it spins in `wait`, or the supervisor,
//! which the worker rings when nobody watches. A worker that dies leaves
//! its mailbox as it was: an answer it posted is delivered, a task it never
//! took goes back to the queue, one it was running fails with its death.
//! The mailbox also says which task the worker began last, however it came
//! (`start`): one sent through the socket and never begun goes back too.
//!
//! The protocol is [`Door`], one state word and a count of watchers,
//! generic over its atomics so that loom checks it as it is (`model`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::Handle;
use crate::sys::medium::Word32;
use crate::sys::shm::Mapping;

/// The phase of the mailbox, in the state word's low byte.
const PHASE: u32 = 0xff;
/// Nothing in it: a caller may post.
const EMPTY: u32 = 0;
/// A task is posted, not yet taken.
const TASK: u32 = 1;
/// The worker took the task and runs it.
const BUSY: u32 = 2;
/// The task's answer is in it.
const ANSWERED: u32 = 3;
/// Someone is copying the answer out.
const TAKING: u32 = 4;
/// The worker listens: it looks at the mailbox and will see a task posted.
const LISTEN: u32 = 1 << 8;
/// The listening worker sleeps on the state word (a futex): who posts a
/// task must wake it. Only ever set with `EMPTY | LISTEN`.
const SLEEP: u32 = 1 << 9;

/// How long either side, waiting for the other, looks with the processor's
/// pause before it yields between looks: an answer or the next task
/// usually comes within a microsecond or two, and a yield is a system call.
pub(crate) const PAUSE_FOR: std::time::Duration = std::time::Duration::from_micros(10);

/// What [`Door::stop`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The worker no longer listens: nobody can post until it does again.
    Stopped,
    /// A task was posted first: take it.
    Task,
    /// An answer is being taken; look again (the taker keeps the listening
    /// bit as it found it).
    Wait,
}

/// The mailbox's protocol: its state word and the number of callers
/// watching for an answer.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct Door<W> {
    state: W,
    _align: [u8; 4],
    /// What a post or an answer says, on the state's cache line: it comes
    /// with the phase that shows it, one line to fetch instead of three
    /// (the phase's, the lengths', the bytes').
    beside: Beside,
    /// Off the state's cache line: the worker spins on the state, and a
    /// caller's count of itself there would take the line from it twice
    /// per round trip.
    watchers: W,
}

/// The bytes of a task or an answer of at most this many bytes travel on
/// the state's cache line; longer ones in the task or answer area.
const INLINE_MAX: usize = 40;

/// What travels beside the state word. Written only by the party whose
/// turn the phase gives (the poster before it posts, the worker before it
/// answers), read only after the phase that shows it.
#[repr(C)]
struct Beside {
    /// The task's id, then its answer's.
    id: AtomicU64,
    /// The task's length, then its answer's.
    len: AtomicU32,
    /// The processor the task was posted from, plus one (0: not known).
    poster_cpu: AtomicU32,
    bytes: std::cell::UnsafeCell<[u8; INLINE_MAX]>,
}

// SAFETY: `bytes` is written only by the one party the door's phase lets
// write (a poster, under the pool's lock, while the phase is EMPTY; the
// worker while it is BUSY) and read only by the one the next phase lets
// read (the worker once TASK; a claimer once it holds TAKING): never
// written and read at once.
unsafe impl Sync for Beside {}

impl std::fmt::Debug for Beside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Beside").field("id", &self.id).field("len", &self.len).finish_non_exhaustive()
    }
}

// The state and what travels with it fill one cache line exactly; the
// watchers start the next.
const _: () = assert!(std::mem::offset_of!(Door<AtomicU32>, watchers) == 64);

impl<W: Word32> Door<W> {
    #[cfg(all(test, multiproc_loom))]
    pub(crate) fn new() -> Door<W> {
        Door {
            state: W::new(EMPTY),
            _align: [0; 4],
            beside: Beside {
                id: AtomicU64::new(0),
                len: AtomicU32::new(0),
                poster_cpu: AtomicU32::new(0),
                bytes: std::cell::UnsafeCell::new([0; INLINE_MAX]),
            },
            watchers: W::new(0),
        }
    }

    /// The worker's side: listens from now on.
    pub(crate) fn listen(&self) {
        loop {
            let s = self.state.load(Ordering::Acquire);
            match s & PHASE {
                _ if s & LISTEN != 0 => return,
                // Its taker will put the bit back as it found it: wait.
                TAKING => std::thread::yield_now(),
                _ => {
                    if self.state.compare_exchange(s, s | LISTEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        return;
                    }
                }
            }
        }
    }

    /// The worker's side: stops listening, unless a task was posted first.
    pub(crate) fn stop(&self) -> Stop {
        loop {
            let s = self.state.load(Ordering::Acquire);
            match s & PHASE {
                TASK => return Stop::Task,
                TAKING => return Stop::Wait,
                _ if s & LISTEN == 0 => return Stop::Stopped,
                _ => {
                    let stopped = s & !(LISTEN | SLEEP);
                    if self.state.compare_exchange(s, stopped, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        return Stop::Stopped;
                    }
                }
            }
        }
    }

    /// The caller's side, its task written: posts it if the worker listens
    /// and the mailbox is empty; `Some(true)` when the worker sleeps and
    /// must be woken. The caller must be the only one posting (the pool's
    /// lock).
    pub(crate) fn post(&self) -> Option<bool> {
        for seen in [EMPTY | LISTEN, EMPTY | LISTEN | SLEEP] {
            if self.state.compare_exchange(seen, TASK | LISTEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Some(seen & SLEEP != 0);
            }
        }
        None
    }

    /// The listening worker's side: about to sleep on the state word until
    /// a task is posted; the value to sleep on, or `None` if something is
    /// already there (look again).
    pub(crate) fn sleeping(&self) -> Option<u32> {
        let idle = EMPTY | LISTEN;
        self.state.compare_exchange(idle, idle | SLEEP, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| idle | SLEEP)
    }

    /// The worker's side, awake again (woken, or its time up): nobody need
    /// wake it.
    pub(crate) fn awake(&self) {
        let asleep = EMPTY | LISTEN | SLEEP;
        let _ = self.state.compare_exchange(asleep, EMPTY | LISTEN, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Whether the worker listens now (for tests).
    #[cfg(all(test, not(multiproc_loom)))]
    pub(crate) fn listening(&self) -> bool {
        self.state.load(Ordering::Acquire) & LISTEN != 0
    }

    /// Whether the worker sleeps on the mailbox now (for tests).
    #[cfg(all(test, not(multiproc_loom)))]
    pub(crate) fn asleep(&self) -> bool {
        self.state.load(Ordering::Acquire) & SLEEP != 0
    }

    /// The worker's side: whether a task is posted.
    pub(crate) fn posted(&self) -> bool {
        self.state.load(Ordering::Acquire) & PHASE == TASK
    }

    /// The worker's side: it has copied the posted task out.
    pub(crate) fn took(&self) {
        self.state.store(BUSY, Ordering::Release);
    }

    /// The worker's side, its answer written: posts it, listening from now
    /// on if `listen` (a worker that will look for the next task at once:
    /// the bit is set only by a worker that will look, and cleared before
    /// it stops looking). True when somebody watches for the answer (else
    /// the worker must see that the supervisor hears).
    pub(crate) fn answer(&self, listen: bool) -> bool {
        // A full fence on both sides (with `unwatch`): either the worker
        // sees a watcher, who then sees the answer, or it sees none and
        // rings.
        self.state.store(ANSWERED | if listen { LISTEN } else { 0 }, Ordering::Release);
        W::full_fence();
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// The worker's side: the answer went another way (it did not fit);
    /// the mailbox is empty, and listened to if `listen` (as for
    /// [`answer`](Self::answer)).
    pub(crate) fn unanswered(&self, listen: bool) {
        self.state.store(if listen { LISTEN } else { EMPTY }, Ordering::Release);
    }

    /// Whether an answer waits in it.
    pub(crate) fn answered(&self) -> bool {
        self.state.load(Ordering::Acquire) & PHASE == ANSWERED
    }

    /// Whether an answer waits that no caller watches for.
    pub(crate) fn unwatched(&self) -> bool {
        W::full_fence();
        self.state.load(Ordering::Acquire) & PHASE == ANSWERED && self.watchers.load(Ordering::Relaxed) == 0
    }

    /// A consumer's side: claims the answer to copy it out; the listening
    /// bit to give back to [`release`](Self::release).
    pub(crate) fn claim(&self) -> Option<u32> {
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s & PHASE != ANSWERED {
                return None;
            }
            let listen = s & LISTEN;
            if self.state.compare_exchange(s, TAKING | listen, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return Some(listen);
            }
        }
    }

    /// A consumer's side: the answer is copied out; the mailbox is empty.
    pub(crate) fn release(&self, listen: u32) {
        self.state.store(EMPTY | listen, Ordering::Release);
    }

    /// A caller starts watching for its answer.
    pub(crate) fn watch(&self) {
        self.watchers.fetch_add(1, Ordering::AcqRel);
    }

    /// A caller stops watching; it must look once more afterwards
    /// ([`unwatched`](Self::unwatched), whose fence pairs with the
    /// worker's in [`answer`](Self::answer)).
    pub(crate) fn unwatch(&self) {
        self.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where things are in the mapping: the door first, then (past
/// [`INLINE_MAX`]) the task and answer areas.
#[repr(C)]
struct Header {
    door: Door<AtomicU32>,
    /// What the worker started last, whichever way it came: 0 before it
    /// mapped the mailbox, [`NONE_STARTED`] until its first task, then the
    /// task's id plus [`NONE_STARTED`] + 1. What its death tells the pool
    /// about the task it was sent last. On a cache line of its own: on the
    /// watchers' line, the worker's store would take it from a watching
    /// caller every round trip.
    started: OwnLine,
}

#[repr(C, align(64))]
struct OwnLine(AtomicU64);

/// See [`Header::started`].
const NONE_STARTED: u64 = 1;

const TASK_AT: usize = 4096;
const _: () = assert!(std::mem::size_of::<Header>() <= TASK_AT);
const _: () = assert!(std::mem::offset_of!(Header, started) == 128);
/// The largest task message (its items are at most the direct path's 16
/// KiB, plus the message around them).
pub(crate) const TASK_MAX: usize = 20 << 10;
const ANSWER_AT: usize = TASK_AT + TASK_MAX;
/// The largest answer: larger ones take the answer ring or the socket.
pub(crate) const ANSWER_MAX: usize = 64 << 10;
const BYTES: usize = ANSWER_AT + ANSWER_MAX;

/// One worker's mailbox, as the pool or the worker maps it.
#[derive(Debug)]
pub(crate) struct Mailbox {
    map: Mapping,
}

impl Mailbox {
    /// A new, empty mailbox, made by the supervisor for a worker.
    pub(crate) fn new() -> io::Result<Mailbox> {
        Ok(Mailbox { map: Mapping::new("multiproc-mailbox", BYTES)? })
    }

    /// What the worker is started with to open it.
    pub(crate) fn handle(&self) -> io::Result<Handle> {
        self.map.as_fd().try_clone_to_owned().map(Handle::new)
    }

    /// The worker's side, from what it was started with.
    pub(crate) fn open(fd: OwnedFd) -> io::Result<Mailbox> {
        let map = Mapping::open(fd)?;
        if map.len() < BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a worker's mailbox is too short"));
        }
        let mailbox = Mailbox { map };
        // From now on its death can say whether a task had begun.
        mailbox.header().started.0.store(NONE_STARTED, Ordering::Release);
        Ok(mailbox)
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least `BYTES` long, page-aligned, and
        // lives as long as `self`; the header's fields are atomics, padding,
        // or bytes in an `UnsafeCell` (written only through its pointer),
        // all valid as the zeroes the memory file starts with.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    pub(crate) fn door(&self) -> &Door<AtomicU32> {
        &self.header().door
    }

    /// Where a message of `len` bytes goes: beside the state word, or in
    /// the area at `area`.
    fn place(&self, len: usize, area: usize) -> *mut u8 {
        if len <= INLINE_MAX { self.door().beside.bytes.get().cast() } else { self.map.as_ptr().wrapping_add(area) }
    }

    /// The caller's side (under the pool's lock): writes task `id`'s
    /// message and posts it; false, with nothing posted, when the worker
    /// does not listen or the message does not fit.
    pub(crate) fn post(&self, id: u64, message: &[u8]) -> bool {
        let h = self.header();
        let beside = &h.door.beside;
        // Even for a task that takes the socket: the worker, about to
        // listen after it, must know whether its caller runs beside it.
        beside.poster_cpu.store(cpu_plus_one(), Ordering::Relaxed);
        if message.len() > TASK_MAX || h.door.state.load(Ordering::Acquire) & !SLEEP != EMPTY | LISTEN {
            return false;
        }
        // SAFETY: `place` gives room for `message.len()` bytes (beside the
        // state word, or the task area of `TASK_MAX` bytes inside the
        // mapping); the phase is EMPTY, so the worker does not read it, and
        // the pool's lock makes this the only writer.
        unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), self.place(message.len(), TASK_AT), message.len()) };
        beside.len.store(message.len() as u32, Ordering::Relaxed);
        beside.id.store(id, Ordering::Relaxed);
        match h.door.post() {
            Some(asleep) => {
                if asleep {
                    crate::sys::futex::wake_one(&h.door.state);
                }
                true
            }
            None => false,
        }
    }

    /// The listening worker's side: sleeps until a task is posted or
    /// `until`, instead of looking, for a worker that shares the one
    /// processor it may use with its caller (see
    /// [`poster_shares_my_cpu`](Self::poster_shares_my_cpu)). False when it
    /// slept until `until`.
    pub(crate) fn sleep_until(&self, until: std::time::Instant) -> bool {
        let door = self.door();
        let Some(seen) = door.sleeping() else {
            // Something is there: a task to take, or the last answer, not
            // yet taken. Its taker may be waiting for this processor.
            std::thread::yield_now();
            return true;
        };
        let woken = crate::sys::futex::wait(&door.state, seen, Some(until)).unwrap_or(true);
        door.awake();
        woken
    }

    /// The worker's side: the posted task's message, if one is; the
    /// mailbox is then the worker's until it answers.
    pub(crate) fn take_task(&self, into: &mut Vec<u8>) -> bool {
        let h = self.header();
        if !h.door.posted() {
            return false;
        }
        let len = (h.door.beside.len.load(Ordering::Relaxed) as usize).min(TASK_MAX);
        into.clear();
        // SAFETY: `place` gives where the poster put `len` bytes (within the
        // task area or beside the state word), which nobody writes while
        // the task is posted.
        into.extend_from_slice(unsafe { std::slice::from_raw_parts(self.place(len, TASK_AT), len) });
        h.door.took();
        true
    }

    /// The worker's side: whether the last task came from the processor it
    /// runs on. The caller and the worker would then spin for each other on
    /// one core (the scheduler leaves them so for tens of milliseconds
    /// after a busy stretch, when socket wake-ups put each wakee beside its
    /// waker): the worker had better move to another processor, or, where
    /// it may use no other, sleep on the mailbox instead of looking.
    pub(crate) fn poster_shares_my_cpu(&self) -> bool {
        let cpu = self.door().beside.poster_cpu.load(Ordering::Relaxed);
        cpu != 0 && cpu == cpu_plus_one()
    }

    /// The worker's side: it starts task `id` now (before running any of
    /// its calls).
    pub(crate) fn start(&self, id: u64) {
        self.header().started.0.store(id.wrapping_add(NONE_STARTED + 1), Ordering::Release);
    }

    /// The pool's side, once the worker is dead: whether it had started
    /// task `id` (false: it never read it, the task never ran); `None` when
    /// the worker never mapped its mailbox, so it cannot say.
    pub(crate) fn started(&self, id: u64) -> Option<bool> {
        match self.header().started.0.load(Ordering::Acquire) {
            0 => None,
            last => Some(last == id.wrapping_add(NONE_STARTED + 1)),
        }
    }

    /// The id of a task posted and never taken.
    pub(crate) fn untaken(&self) -> Option<u64> {
        let h = self.header();
        h.door.posted().then(|| h.door.beside.id.load(Ordering::Relaxed))
    }

    /// The worker's side: answers task `id`, listening from now on if
    /// `listen`; `None` when the answer does not fit (the worker sends it
    /// another way and calls [`unanswered`](Self::unanswered)), else
    /// whether somebody watches.
    pub(crate) fn answer(&self, id: u64, bytes: &[u8], listen: bool) -> Option<bool> {
        if bytes.len() > ANSWER_MAX {
            return None;
        }
        let h = self.header();
        // SAFETY: `place` gives room for `bytes.len()` bytes (beside the
        // state word, or the answer area of `ANSWER_MAX` bytes inside the
        // mapping); the phase is BUSY, so nobody else touches either.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.place(bytes.len(), ANSWER_AT), bytes.len()) };
        h.door.beside.len.store(bytes.len() as u32, Ordering::Relaxed);
        h.door.beside.id.store(id, Ordering::Relaxed);
        Some(h.door.answer(listen))
    }

    pub(crate) fn unanswered(&self, listen: bool) {
        self.door().unanswered(listen);
    }

    /// The task whose answer waits, if one does.
    pub(crate) fn answered(&self) -> Option<u64> {
        let h = self.header();
        h.door.answered().then(|| h.door.beside.id.load(Ordering::Relaxed))
    }

    /// Takes the waiting answer if it is task `id`'s.
    pub(crate) fn take_answer(&self, id: u64) -> Option<Vec<u8>> {
        let h = self.header();
        let listen = h.door.claim()?;
        let answer = (h.door.beside.id.load(Ordering::Relaxed) == id).then(|| {
            let len = (h.door.beside.len.load(Ordering::Relaxed) as usize).min(ANSWER_MAX);
            // SAFETY: `place` gives where the worker put `len` bytes (within
            // the answer area or beside the state word), which nobody
            // writes while the answer is claimed.
            unsafe { std::slice::from_raw_parts(self.place(len, ANSWER_AT), len) }.to_vec()
        });
        match answer {
            Some(bytes) => {
                h.door.release(listen);
                Some(bytes)
            }
            None => {
                // Not the one asked for: left as it was.
                h.door.state.store(ANSWERED | listen, Ordering::Release);
                None
            }
        }
    }
}

/// This thread's processor plus one; 0 when not known.
fn cpu_plus_one() -> u32 {
    crate::sys::current_cpu().map_or(0, |c| c.saturating_add(1))
}

#[cfg(all(test, not(multiproc_loom)))]
mod tests {
    use super::*;

    fn worker_side(m: &Mailbox) -> Mailbox {
        Mailbox::open(m.handle().unwrap().into_owned_fd()).unwrap()
    }

    /// Tasks and answers of every length around the limit of what travels
    /// beside the state word, short after long and long after short, come
    /// out as they went in (the two places never mix).
    #[test]
    fn messages_short_and_long_come_out_whole_from_either_place() {
        let pool = Mailbox::new().unwrap();
        let worker = worker_side(&pool);
        let mut task = Vec::new();
        let lengths = [0, 1, INLINE_MAX - 1, INLINE_MAX, INLINE_MAX + 1, 200, 1, TASK_MAX, INLINE_MAX, 2];
        for (k, &len) in lengths.iter().enumerate() {
            let id = k as u64 + 1;
            let message: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + id) as u8).collect();
            worker.door().listen();
            assert!(pool.post(id, &message));
            assert_eq!(pool.untaken(), Some(id));
            assert!(worker.take_task(&mut task));
            assert_eq!(task, message, "task of {len} bytes");
            let answer_len = lengths[lengths.len() - 1 - k];
            let answer: Vec<u8> = (0..answer_len).map(|i| (i as u64 * 13 + id) as u8).collect();
            assert_eq!(worker.answer(id, &answer, false), Some(false));
            assert_eq!(pool.answered(), Some(id));
            assert_eq!(pool.take_answer(id), Some(answer), "answer of {answer_len} bytes to a task of {len}");
        }
    }

    #[test]
    fn a_task_goes_in_only_while_the_worker_listens_and_its_answer_comes_out_once() {
        let pool = Mailbox::new().unwrap();
        let worker = worker_side(&pool);
        let mut task = Vec::new();
        assert!(!pool.post(1, b"not listening"), "a worker asleep takes no mail");
        assert!(!worker.take_task(&mut task));
        worker.door().listen();
        assert!(!pool.post(2, &vec![7; TASK_MAX + 1]), "too long");
        assert!(pool.post(3, b"task three"));
        assert!(!pool.post(4, b"one at a time"));
        assert_eq!(worker.door().stop(), Stop::Task, "a posted task is taken before the worker stops");
        assert_eq!(pool.untaken(), Some(3));
        assert!(worker.take_task(&mut task));
        assert_eq!(task, b"task three");
        assert_eq!(pool.untaken(), None);
        assert!(!worker.take_task(&mut task), "taken once");
        assert_eq!(worker.answer(3, &vec![1; ANSWER_MAX + 1], false), None, "too long");
        let answer: Vec<u8> = (0..ANSWER_MAX).map(|i| (i % 251) as u8).collect();
        assert_eq!(worker.answer(3, &answer, false), Some(false), "nobody watches");
        assert!(worker.door().unwatched());
        assert_eq!(pool.answered(), Some(3));
        assert!(!pool.post(5, b"the answer is still in"));
        assert_eq!(pool.take_answer(9), None, "not task 9's");
        assert_eq!(pool.take_answer(3), Some(answer));
        assert_eq!(pool.take_answer(3), None, "taken once");
        assert_eq!(pool.answered(), None);
        // A worker that answered listens only once it says so.
        assert!(!pool.post(6, b"six"));
        worker.door().listen();
        assert!(pool.post(6, b"six"));
        assert!(worker.take_task(&mut task));
        pool.door().watch();
        assert_eq!(worker.answer(6, b"watched", true), Some(true));
        assert!(!worker.door().unwatched());
        pool.door().unwatch();
        assert!(worker.door().unwatched());
        // It listens with the answer not taken yet, then stops.
        assert!(!pool.post(7, b"the answer is still in"));
        assert_eq!(worker.door().stop(), Stop::Stopped);
        assert_eq!(pool.take_answer(6).as_deref(), Some(&b"watched"[..]));
        assert!(!pool.post(7, b"it stopped listening"));
        worker.door().listen();
        assert!(pool.post(7, b"listening again"));
    }

    #[test]
    fn an_answer_that_did_not_fit_leaves_the_mailbox_empty_and_not_listening() {
        let pool = Mailbox::new().unwrap();
        let worker = worker_side(&pool);
        let mut task = Vec::new();
        worker.door().listen();
        assert!(pool.post(1, b"one"));
        assert!(worker.take_task(&mut task));
        worker.unanswered(false);
        assert_eq!(pool.answered(), None);
        assert!(!pool.post(2, b"two"), "a worker that does not look takes no mail");
        worker.door().listen();
        assert!(pool.post(2, b"two"));
        assert!(worker.take_task(&mut task));
        worker.unanswered(true);
        assert!(pool.post(3, b"three"), "one that will look does");
    }

    #[test]
    fn a_sleeping_listener_is_woken_by_a_post_and_only_a_listener_sleeps() {
        let pool = Mailbox::new().unwrap();
        let worker = worker_side(&pool);
        let far = std::time::Instant::now() + std::time::Duration::from_secs(60);
        assert!(worker.door().sleeping().is_none(), "not listening: no sleep on the mailbox");
        worker.door().listen();
        std::thread::scope(|s| {
            let sleeper = s.spawn(|| {
                let mut task = Vec::new();
                // Woken (or never asleep: the post came first), not timed out.
                while !worker.take_task(&mut task) {
                    assert!(worker.sleep_until(far), "slept through the post");
                }
                task
            });
            while !pool.door().asleep() {
                std::thread::yield_now();
            }
            assert!(pool.post(1, b"wake up"));
            assert_eq!(sleeper.join().unwrap(), b"wake up");
        });
        // Asleep with nothing posted: the time runs out; a post after that
        // needs no wake-up and still goes in.
        assert!(worker.answer(1, b"one", true).is_some());
        assert_eq!(pool.take_answer(1).as_deref(), Some(&b"one"[..]));
        assert!(!worker.sleep_until(std::time::Instant::now() + std::time::Duration::from_millis(1)));
        assert_eq!(worker.door().post(), Some(false), "awake again: nobody to wake");
        assert_eq!(worker.door().stop(), Stop::Task);
    }

    #[test]
    fn a_short_file_is_refused() {
        let short = Mapping::new("short", 4096).unwrap();
        let fd = short.as_fd().try_clone_to_owned().unwrap();
        assert_eq!(Mailbox::open(fd).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}

#[cfg(all(test, multiproc_loom))]
mod model {
    //! The door under loom: a worker, a caller and the supervisor, the
    //! same code with loom's atomics.
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicBool as LoomBool, AtomicU32 as LoomU32, AtomicU64 as LoomU64};

    /// The door plus stand-ins for the task and answer areas.
    struct Box_ {
        door: Door<LoomU32>,
        task: LoomU64,
        answer: LoomU64,
        /// How many times the answer was taken.
        taken: LoomU32,
        /// The supervisor was told to look (rung by the worker, or woken by
        /// a caller that stopped watching with an answer there).
        told: LoomBool,
    }

    impl Box_ {
        /// Takes the answer if it is there, as `Mailbox::take_answer`.
        fn take(&self) {
            if let Some(listen) = self.door.claim() {
                assert_eq!(self.answer.load(Ordering::Relaxed), 43, "the answer's bytes come before its phase");
                self.taken.fetch_add(1, Ordering::Relaxed);
                self.door.release(listen);
            }
        }
    }

    /// A caller posts a task to a worker that may stop listening at the
    /// same moment; the worker answers; the caller watches for the answer
    /// a moment and then stops, as `supervisor::Watch` does, while the
    /// supervisor, awake, takes any answer nobody watches. Either the task
    /// is refused (the worker stopped first) or it is taken, and its
    /// answer is taken at most once, with the bytes the worker wrote; one
    /// that is left is one the supervisor was told to look for.
    #[test]
    fn every_posted_task_is_answered_once_and_someone_takes_the_answer() {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(|| {
            let b = Arc::new(Box_ {
                door: Door::new(),
                task: LoomU64::new(0),
                answer: LoomU64::new(0),
                taken: LoomU32::new(0),
                told: LoomBool::new(false),
            });
            b.door.listen();
            let worker = {
                let b = b.clone();
                loom::thread::spawn(move || {
                    // Sleeps on the mailbox (and is woken, or its time is
                    // up), looks once, then stops listening unless a task
                    // came.
                    if b.door.sleeping().is_some() {
                        b.door.awake();
                    }
                    let got = b.door.posted() || b.door.stop() == Stop::Task;
                    if !got {
                        return false;
                    }
                    assert_eq!(b.task.load(Ordering::Relaxed), 42, "the task's bytes come before its phase");
                    b.door.took();
                    b.answer.store(43, Ordering::Relaxed);
                    if !b.door.answer(true) {
                        b.told.store(true, Ordering::SeqCst);
                    }
                    true
                })
            };
            let caller = {
                let b = b.clone();
                loom::thread::spawn(move || {
                    b.task.store(42, Ordering::Relaxed);
                    if b.door.post().is_none() {
                        return false;
                    }
                    b.door.watch();
                    b.take();
                    b.door.unwatch();
                    if b.door.unwatched() {
                        b.told.store(true, Ordering::SeqCst);
                    }
                    b.take();
                    true
                })
            };
            let supervisor = {
                let b = b.clone();
                loom::thread::spawn(move || {
                    if b.door.unwatched() {
                        b.take();
                    }
                })
            };
            let took = worker.join().unwrap();
            let posted = caller.join().unwrap();
            supervisor.join().unwrap();
            assert_eq!(posted, took, "a posted task is taken, a refused one is not");
            if posted && b.taken.load(Ordering::Relaxed) == 0 {
                assert!(b.told.load(Ordering::SeqCst), "an answer left with nobody to take it");
                b.take();
            }
            assert_eq!(b.taken.load(Ordering::Relaxed), u32::from(posted), "answered once, taken once");
        });
    }
}
