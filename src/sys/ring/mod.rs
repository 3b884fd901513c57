//! A byte ring in shared memory for queue messages.
//!
//! Producers take turns under one robust mutex and consumers under another,
//! so between the two it is a single-producer single-consumer ring: a put
//! and a get touch different cache lines and never wait for each other.
//! Waiting for room or for a record spins briefly, then sleeps on a futex
//! word that the other side bumps only when it knows someone sleeps.
//!
//! # The invariants
//!
//! `head` and `tail` are absolute byte positions (they only grow; `pos %
//! capacity` is the place in the ring).
//! 1. `head <= tail <= head + capacity`, always: a producer checks room for
//!    everything it is about to publish (lap padding included) against a
//!    head no newer than the real one, so never more than a lap ahead.
//! 2. `[head, tail)` is a run of whole records (see [`record`]). Only the
//!    holder of the put lock writes bytes, and only at or past `tail`; it
//!    moves `tail` (release) after the bytes are in, so a producer killed
//!    before that leaves nothing behind. Only the holder of the get lock
//!    moves `head`, after it has read the record, so a consumer killed
//!    before that leaves the record for the next.
//! 3. Memory is given back only for whole chunks that lie behind `head`,
//!    outside the hot window, and whose place a lap on is not yet below
//!    `tail`; under the put lock, so no producer is writing meanwhile.
//! 4. Each side keeps a count beside its index (records pushed, popped) and
//!    notes both new values before it stores them, so that the next holder
//!    of a lock whose holder died between the two stores repairs the count.
//!
//! Each process (each [`Ring`] value) caches its last look at the other
//! side's index. Indices only grow, so a cached look is an underestimate:
//! the room or records it shows are really there; only when it shows too
//! little does a fresh look follow. Arithmetic on a cached look never
//! assumes it is within a lap of the fresh value.
//!
//! The hot window: a steady stream with little backlog goes back to the
//! ring's start once past the window (padding the rest of the lap), so it
//! cycles through memory that is already resident and in cache, while a
//! large backlog may use the whole capacity, given back behind consumers.

mod medium;
#[cfg(all(test, multiproc_loom))]
mod model;
pub(crate) mod record;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(crate) use medium::Mapped;
use medium::{DATA, Medium};
use record::{Kind, MARKER, SKIP, WORD};

use super::medium::{Word32, Word64};
use super::shm::Mapping;

/// Sizes that shape a ring, fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Geometry {
    /// Bytes of ring.
    pub capacity: u64,
    /// Memory beyond the hot window is given back in chunks of this size
    /// once consumers have passed them. Divides the capacity.
    pub chunk: u64,
    /// The start of each lap that a steady stream cycles through; never
    /// given back. A multiple of `chunk`, at most the capacity.
    pub hot: u64,
}

impl Geometry {
    /// 256 KiB chunks and a hot window of `hot` bytes (a multiple of 256
    /// KiB): a queue's is wider than a pool's answer ring's.
    pub(crate) fn new(capacity: u64, hot: u64) -> Geometry {
        Geometry { capacity, chunk: 256 << 10, hot }
    }

    fn valid(self) -> bool {
        self.capacity >= 2 * WORD
            && self.chunk > 0
            && self.capacity.is_multiple_of(self.chunk)
            && self.hot.is_multiple_of(self.chunk)
            && self.hot <= self.capacity
    }
}

/// What one side (producers, or consumers) shares: its members take turns
/// under `lock`. Its own cache lines, so that producing never touches the
/// lines consumers write.
#[repr(C, align(128))]
pub(crate) struct Side<M: Medium> {
    lock: M::Lock,
    /// The side's index: `tail` for producers (where the next record goes),
    /// `head` for consumers (the next record to take). Written under
    /// `lock`, watched without it — so on a line of its own: the other
    /// side spinning on it would otherwise pull the lock's line away from
    /// the holder between its lock, its stores and its unlock (three cache
    /// misses per record instead of one; the robust unlock showed as 14% of
    /// a 1 KiB stream's time).
    index: Line<M::U64>,
    /// Records ever pushed, or taken.
    count: M::U64,
    /// The values of `index` and `count` that the holder is about to store
    /// (invariant 4).
    intent_index: M::U64,
    intent_count: M::U64,
}

/// A value alone on its cache lines (128 bytes: adjacent-line prefetch
/// pairs 64-byte lines).
#[repr(C, align(128))]
pub(crate) struct Line<T>(pub(crate) T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<M: Medium> Side<M> {
    /// With the lock held: moves the index to `index` and counts one more
    /// record, noting both first (invariant 4). The index is stored with
    /// release: what the holder wrote or read before is done.
    fn commit(&self, index: u64) {
        let count = self.count.load(Ordering::Relaxed) + 1;
        self.intent_index.store(index, Ordering::Relaxed);
        self.intent_count.store(count, Ordering::Relaxed);
        self.index.store(index, Ordering::Release);
        self.count.store(count, Ordering::Release);
    }

    /// With the lock held, after its holder died: a holder that died
    /// between storing the index and the count left the count one short;
    /// finish its work.
    fn repair(&self) {
        let target = self.intent_count.load(Ordering::Relaxed);
        if self.index.load(Ordering::Relaxed) == self.intent_index.load(Ordering::Relaxed)
            && self.count.load(Ordering::Relaxed) != target
        {
            self.count.store(target, Ordering::Release);
        }
    }
}

/// Where processes sleep when spinning was not enough: a futex word per
/// condition (see `sys::futex` for why not pthread condvars), and counts of
/// sleepers so that a waker makes no syscall when there are none.
#[repr(C, align(128))]
pub(crate) struct Sleep<M: Medium> {
    not_empty: M::U32,
    not_full: M::U32,
    all_done: M::U32,
    getters: M::U32,
    putters: M::U32,
    joiners: M::U32,
    /// Tasks marked done (JoinableQueue): unfinished is `put.count - done`.
    done: M::U64,
    /// Up while a consumer sleeps elsewhere than on `not_empty` (a pool's
    /// supervisor, in `poll` on its workers' sockets): a producer that sees
    /// it up after a push lowers it and wakes that consumer its own way.
    bell: M::U32,
}

#[repr(C)]
pub(crate) struct Header<M: Medium> {
    put: Side<M>,
    get: Side<M>,
    sleep: Sleep<M>,
    geometry: Geometry,
}

/// What a record holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record<T = ()> {
    Bytes(Vec<u8>),
    /// The message went the other way (a socket); only its place is here,
    /// and what the consumer made of it while it held that place.
    Marker(T),
}

/// How often a sleeper looks again when its wakers may have missed it.
const UNSURE_LOOK: std::time::Duration = std::time::Duration::from_millis(10);

/// Which condition a waiter sleeps on.
#[derive(Clone, Copy)]
enum Until {
    NotEmpty,
    NotFull,
    AllDone,
}

/// One process's view of a ring.
pub(crate) struct Ring<M: Medium = Mapped> {
    mem: M,
    /// This process's last look at the other side's index (see the module
    /// docs).
    seen_head: M::U64,
    seen_tail: M::U64,
}

impl std::fmt::Debug for Ring<Mapped> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("geometry", &self.geometry()).finish_non_exhaustive()
    }
}

fn corrupt(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Ring<Mapped> {
    /// A new ring in a fresh memory file.
    pub(crate) fn new(geometry: Geometry) -> io::Result<Ring> {
        if !geometry.valid() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a ring's sizes do not fit together"));
        }
        let map = Mapping::new("multiproc-queue", DATA + geometry.capacity as usize)?;
        let h = map.as_ptr().cast::<Header<Mapped>>();
        // SAFETY: a fresh, page-aligned (so 128-aligned) mapping large
        // enough for the header, not yet shared with anyone. Atomics and
        // counters are zero already (fresh shared memory is zeroed).
        unsafe {
            super::mutex::init(&raw mut (*h).put.lock, false)?;
            super::mutex::init(&raw mut (*h).get.lock, false)?;
            (&raw mut (*h).geometry).write(geometry);
        }
        Ok(Ring::around(Mapped { map }))
    }

    /// The ring in a memory file another process made.
    pub(crate) fn open(fd: OwnedFd) -> io::Result<Ring> {
        let map = Mapping::open(fd)?;
        if map.len() < DATA {
            return Err(corrupt("shared memory too small for a queue"));
        }
        let r = Ring::around(Mapped { map });
        let g = r.geometry();
        if !g.valid() || r.mem.map.len() < DATA + g.capacity as usize {
            return Err(corrupt("shared memory smaller than its queue"));
        }
        Ok(r)
    }

    /// Bytes of the ring's memory file in memory now (for tests).
    #[cfg(all(test, not(multiproc_loom)))]
    pub(crate) fn resident(&self) -> u64 {
        rustix::fs::fstat(self.as_fd()).unwrap().st_blocks as u64 * 512
    }
}

impl AsFd for Ring<Mapped> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.mem.map.as_fd()
    }
}

impl<M: Medium> Ring<M> {
    fn around(mem: M) -> Ring<M> {
        Ring { mem, seen_head: M::U64::new(0), seen_tail: M::U64::new(0) }
    }

    fn header(&self) -> &Header<M> {
        self.mem.header()
    }

    fn geometry(&self) -> Geometry {
        self.header().geometry
    }

    /// The largest message the ring takes (anything larger goes around it).
    pub(crate) fn max_record(&self) -> usize {
        (self.geometry().capacity / 2 - WORD) as usize
    }

    /// Appends a record (or a marker with `bytes` = None), waiting for room
    /// until `deadline`; false if there was none in time.
    pub(crate) fn push(&self, bytes: Option<&[u8]>, deadline: Option<Instant>) -> io::Result<bool> {
        self.place(bytes, deadline).map(|at| at.is_some())
    }

    /// As [`push`](Self::push), returning where the record went: its
    /// absolute position, which no other record ever has (a marker's tag).
    pub(crate) fn place(&self, bytes: Option<&[u8]>, deadline: Option<Instant>) -> io::Result<Option<u64>> {
        let len = bytes.map_or(0, <[u8]>::len) as u64;
        let need = WORD + len;
        let h = self.header();
        let g = self.geometry();
        if len > self.max_record() as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a record larger than the ring takes"));
        }
        let room = || {
            let tail = h.put.index.load(Ordering::Relaxed);
            // A head newer than the tail we read: consumers are past it.
            let head = self.look_head(|head| fits(tail, head, need, g.capacity));
            head > tail || fits(tail, head, need, g.capacity)
        };
        loop {
            if !self.wait(Until::NotFull, &room, deadline)? {
                return Ok(None);
            }
            let Some(held) = self.hold(&h.put, deadline)? else {
                return Ok(None);
            };
            let tail = h.put.index.load(Ordering::Relaxed);
            let head = self.look_head(|head| fits(tail, head, need, g.capacity));
            if head > tail {
                return Err(corrupt("a queue's consumers are ahead of its producers"));
            }
            if !fits(tail, head, need, g.capacity) {
                drop(held);
                continue;
            }
            let start = tail + self.padding(tail, need);
            if start != tail {
                self.mem.write(tail % g.capacity, &SKIP.to_le_bytes());
            }
            let word = if bytes.is_some() { len } else { MARKER };
            self.mem.write(start % g.capacity, &word.to_le_bytes());
            if let Some(b) = bytes {
                self.mem.write((start + WORD) % g.capacity, b);
            }
            // Visible only now, whole (invariant 2).
            h.put.commit(start + need);
            drop(held);
            self.wake(Until::NotEmpty);
            return Ok(Some(start));
        }
    }

    /// With the put lock held: the padding to put before a record of `need`
    /// bytes at `tail` (0 or the rest of the lap). Past the hot window with
    /// (almost) nothing waiting, go back to the ring's start, if the padding
    /// and the record fit (invariant 1).
    fn padding(&self, tail: u64, need: u64) -> u64 {
        let g = self.geometry();
        let at = tail % g.capacity;
        let rest = g.capacity - at;
        if at < g.hot || rest < WORD {
            return 0;
        }
        let small = |head: u64| tail.checked_sub(head).is_some_and(|backlog| backlog < g.hot / 2);
        // A fresh look at consumers' index costs a cache miss (they write
        // it with every record). While the backlog stays large, one look
        // per stretch of the stream is enough: going back a little later
        // only uses a little more of the ring.
        let stride = (g.chunk / 16).max(WORD);
        let stretch_ends = tail / stride != (tail + need) / stride;
        let head = self.look_head(|head| !stretch_ends || small(head));
        if small(head) && fits(tail, head, rest + need, g.capacity) { rest } else { 0 }
    }

    /// Takes the next record, waiting until `deadline`; `None` if none came.
    #[cfg(test)]
    pub(crate) fn pop(&self, deadline: Option<Instant>) -> io::Result<Option<Record>> {
        self.pop_with(deadline, &mut |_| Ok(()))
    }

    /// As [`pop`](Self::pop), but a marker is handled by `marked` (given its
    /// tag, see [`place`](Self::place)) while the consumers' lock is held
    /// and the marker is still in place: consumers take marked messages in
    /// the ring's order, and one killed in `marked` leaves the marker to the
    /// next. An error from `marked` leaves the marker in place too.
    pub(crate) fn pop_with<T>(
        &self,
        deadline: Option<Instant>,
        marked: &mut dyn FnMut(u64) -> io::Result<T>,
    ) -> io::Result<Option<Record<T>>> {
        let h = self.header();
        let g = self.geometry();
        let filled = || {
            let head = h.get.index.load(Ordering::Relaxed);
            self.look_tail(|tail| tail > head) > head
        };
        loop {
            if !self.wait(Until::NotEmpty, &filled, deadline)? {
                return Ok(None);
            }
            // A consumer taking a large marked message holds this lock for
            // as long as that takes: wait for it no longer than the caller.
            let Some(held) = self.hold(&h.get, deadline)? else {
                return Ok(None);
            };
            let head = h.get.index.load(Ordering::Relaxed);
            let tail = self.look_tail(|tail| tail > head);
            if tail <= head {
                drop(held);
                continue;
            }
            let word_at = |pos: u64| {
                let mut w = [0u8; 8];
                self.mem.read(pos % g.capacity, &mut w);
                u64::from_le_bytes(w)
            };
            let parsed =
                record::parse(head, tail, g.capacity, word_at).map_err(|_| corrupt("a corrupt queue record"))?;
            let record = match parsed.kind {
                Kind::Marker => Record::Marker(marked(parsed.at)?),
                Kind::Bytes { payload, len } => Record::Bytes(self.mem.read_vec(payload % g.capacity, len as usize)),
            };
            // Taken only now (invariant 2).
            h.get.commit(parsed.next);
            drop(held);
            self.wake(Until::NotFull);
            if parsed.at != head {
                // Padding: the chunk it started in is passed too.
                let chunk_end = head - head % g.chunk + g.chunk;
                self.release_passed(head, chunk_end.min(parsed.at))?;
            }
            self.release_passed(parsed.at, parsed.next)?;
            return Ok(Some(record));
        }
    }

    /// Gives back the memory of the whole chunks that consumers left behind
    /// in moving from `from` to `to` (invariant 3).
    fn release_passed(&self, from: u64, to: u64) -> io::Result<()> {
        let g = self.geometry();
        let mut start = from - from % g.chunk;
        let end = to - to % g.chunk;
        if start >= end {
            return Ok(());
        }
        let h = self.header();
        // Without a deadline the lock is always taken.
        let Some(_held) = self.hold(&h.put, None)? else { return Ok(()) };
        // Not what producers have come back to (they write below `tail`, a
        // lap on): chunks from `tail - capacity` on are free a lap ahead.
        let tail = h.put.index.load(Ordering::Relaxed);
        start = start.max(tail.saturating_sub(g.capacity).next_multiple_of(g.chunk));
        // One lap at a time, each less its hot window.
        while start < end {
            let lap = start - start % g.capacity;
            let from = start.max(lap + g.hot);
            let until = end.min(lap + g.capacity);
            if from < until {
                self.mem.release(from - lap, until - from)?;
            }
            start = until;
        }
        Ok(())
    }

    /// Takes `side`'s lock (`None` if `deadline` passed first), repairing
    /// what a holder that died left behind.
    fn hold<'a>(&'a self, side: &'a Side<M>, deadline: Option<Instant>) -> io::Result<Option<M::Guard<'a>>> {
        let Some((held, died)) = self.mem.lock(&side.lock, deadline)? else {
            return Ok(None);
        };
        if died {
            side.repair();
        }
        Ok(Some(held))
    }

    /// Consumers' index: this process's last look if `enough` accepts it,
    /// else a fresh look, remembered.
    fn look_head(&self, enough: impl Fn(u64) -> bool) -> u64 {
        look(&self.seen_head, &self.header().get.index, enough)
    }

    /// Producers' index, likewise.
    fn look_tail(&self, enough: impl Fn(u64) -> bool) -> u64 {
        look(&self.seen_tail, &self.header().put.index, enough)
    }

    /// Waits, taking nothing, until the ring holds a record (`true`), or
    /// `deadline` passes or `stop` says so (`false`): what a wait on many
    /// things at once needs (`connection::wait`). A wake-up meant for one
    /// consumer may land here; it is passed on, so that a consumer asleep
    /// in [`pop_with`](Self::pop_with) is never left sleeping beside a
    /// record. [`wake_watchers`](Self::wake_watchers) makes it look at
    /// `stop` again.
    pub(crate) fn wait_filled(&self, deadline: Option<Instant>, stop: &dyn Fn() -> bool) -> io::Result<bool> {
        let h = self.header();
        let filled = || {
            let head = h.get.index.load(Ordering::Relaxed);
            self.look_tail(|tail| tail > head) > head
        };
        self.wait(Until::NotEmpty, &|| stop() || filled(), deadline)?;
        let filled = filled();
        if filled {
            self.wake(Until::NotEmpty);
        }
        Ok(filled)
    }

    /// Wakes every sleeping consumer, [`wait_filled`](Self::wait_filled)'s
    /// included, to look again (a consumer that finds nothing sleeps on).
    pub(crate) fn wake_watchers(&self) {
        self.mem.light_fence();
        let (sleepers, word) = self.sleepers(Until::NotEmpty);
        if sleepers.load(Ordering::SeqCst) > 0 {
            self.mem.wake(word, true);
        }
    }

    /// The consumer's side, before it sleeps elsewhere: raises the bell.
    /// Then [`sleeper_fence`](Self::sleeper_fence), then a last look
    /// ([`items`](Self::items)); only if that finds nothing may it sleep.
    pub(crate) fn raise_bell(&self) {
        self.header().sleep.bell.store(1, Ordering::SeqCst);
    }

    /// The consumer's side, awake again: producers need not ring.
    pub(crate) fn lower_bell(&self) {
        self.header().sleep.bell.store(0, Ordering::SeqCst);
    }

    /// The consumer's fence between raising bells and its last look (one
    /// serves the bells of many rings: it is the thread's fence, not the
    /// ring's). Pairs with the producer's in [`answer_bell`](Self::answer_bell):
    /// either the producer sees the bell up, or the consumer sees the
    /// record. A full fence on both sides, not the asymmetric pair of the
    /// ring's own sleepers: a pool's supervisor goes to sleep hundreds of
    /// times a second in a stream of small tasks, and a `membarrier` each
    /// time (interrupting every core) cost more than a fence per answer.
    pub(crate) fn sleeper_fence(&self) {
        self.mem.full_fence();
    }

    /// The producer's side, after a push: whether a consumer sleeps
    /// elsewhere and must be woken its own way. Lowers the bell, so that
    /// one sleep is rung once.
    pub(crate) fn answer_bell(&self) -> bool {
        self.mem.full_fence();
        let bell = &self.header().sleep.bell;
        bell.load(Ordering::SeqCst) == 1 && bell.swap(0, Ordering::SeqCst) == 1
    }

    /// Times producers went back to the ring's start (for tests).
    #[cfg(all(test, not(multiproc_loom)))]
    pub(crate) fn laps(&self) -> u64 {
        self.header().put.index.load(Ordering::Acquire) / self.geometry().capacity
    }

    /// Items in the queue (exact when no put or get is half done).
    pub(crate) fn items(&self) -> usize {
        let h = self.header();
        let popped = h.get.count.load(Ordering::Acquire);
        h.put.count.load(Ordering::Acquire).saturating_sub(popped) as usize
    }

    /// Marks one task done; false if none was unfinished.
    pub(crate) fn task_done(&self) -> bool {
        let h = self.header();
        let mut done = h.sleep.done.load(Ordering::Acquire);
        loop {
            if done >= h.put.count.load(Ordering::Acquire) {
                return false;
            }
            match h.sleep.done.compare_exchange(done, done + 1, Ordering::SeqCst, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => done = now,
            }
        }
        self.wake(Until::AllDone);
        true
    }

    /// Waits until no task is unfinished.
    pub(crate) fn join(&self) -> io::Result<()> {
        let h = self.header();
        let all_done = || h.sleep.done.load(Ordering::Acquire) >= h.put.count.load(Ordering::Acquire);
        self.wait(Until::AllDone, &all_done, None).map(drop)
    }

    /// Waits until `ready` holds or `deadline` passes (false). It first
    /// watches the indices for a moment without sleeping: the other side
    /// usually acts within microseconds, and a sleep costs a futex wake-up
    /// on both sides. Then it sleeps on the condition's futex word, counted
    /// among its sleepers so that the other side knows to wake it. (A
    /// sleeper killed here stays counted: wakers then make a needless wake
    /// call, nothing worse.)
    fn wait(&self, until: Until, ready: &dyn Fn() -> bool, deadline: Option<Instant>) -> io::Result<bool> {
        // Ready at once is the common case: no need to read the clock
        // (which was a tenth of a busy pool's supervisor).
        if ready() {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
        for _ in 0..self.mem.spins() {
            if ready() {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        let (sleepers, word) = self.sleepers(until);
        sleepers.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `wake`: either the waker sees us counted,
        // or we see what it did. If the kernel would not fence for us, a
        // waker may miss us: look again every so often.
        let sure = self.mem.heavy_fence();
        let result = loop {
            let seen = word.load(Ordering::Acquire);
            if ready() {
                break Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Ok(false);
            }
            let until = match (sure, deadline) {
                (true, deadline) => deadline,
                (false, None) => Some(Instant::now() + UNSURE_LOOK),
                (false, Some(d)) => Some(d.min(Instant::now() + UNSURE_LOOK)),
            };
            if let Err(e) = self.mem.sleep(word, seen, until) {
                break Err(e);
            }
        };
        sleepers.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Wakes those sleeping on `until`, if any. The fence orders the change
    /// they wait for before the look at the sleepers, against a sleeper's
    /// count and fence: either the sleeper is seen here, or it sees the
    /// change.
    fn wake(&self, until: Until) {
        self.mem.light_fence();
        let (sleepers, word) = self.sleepers(until);
        if sleepers.load(Ordering::SeqCst) == 0 {
            return;
        }
        // Producers of different sizes wait for different room, and every
        // joiner waits for the same thing: wake them all. One new record
        // is for one consumer.
        self.mem.wake(word, !matches!(until, Until::NotEmpty));
    }

    fn sleepers(&self, until: Until) -> (&M::U32, &M::U32) {
        let s = &self.header().sleep;
        match until {
            Until::NotEmpty => (&s.getters, &s.not_empty),
            Until::NotFull => (&s.putters, &s.not_full),
            Until::AllDone => (&s.joiners, &s.all_done),
        }
    }
}

/// Whether `need` more bytes fit after `tail` with consumers at `head` (a
/// look no newer than the real head, so possibly more than a lap behind:
/// then they do not fit).
fn fits(tail: u64, head: u64, need: u64, cap: u64) -> bool {
    tail.checked_sub(head).is_some_and(|backlog| need <= cap && backlog <= cap - need)
}

/// The other side's index: this process's last look at it if `enough`
/// accepts that, else a fresh look, remembered. Indices only grow, so an
/// old look is a safe underestimate. Acquire and AcqRel carry the other
/// side's release through the remembered copy to every thread here.
fn look<W: Word64>(seen: &W, index: &W, enough: impl Fn(u64) -> bool) -> u64 {
    let old = seen.load(Ordering::Acquire);
    if enough(old) {
        return old;
    }
    let fresh = index.load(Ordering::Acquire);
    seen.fetch_max(fresh, Ordering::AcqRel);
    fresh
}

#[cfg(all(test, not(multiproc_loom)))]
mod tests;
