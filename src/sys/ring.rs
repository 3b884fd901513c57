//! A byte ring in shared memory for queue messages. Producers take turns
//! under one robust mutex and consumers under another, so between the two
//! it is a single-producer single-consumer ring: a put and a get touch
//! different cache lines and never wait for each other. Waiting for room or
//! for a record spins briefly, then sleeps on a futex word that the other
//! side bumps only when it knows someone sleeps.
//!
//! A record is an 8-byte length followed by its bytes; it becomes visible
//! only when `tail` moves past it, after it is written, so a writer killed
//! in the middle leaves nothing behind. A reader killed in the middle has
//! not moved `head` yet, so the record stays for the next.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::shm::Mapping;
use super::{barrier, futex, mutex};

/// What the producers share: they take turns under `lock`. Its own cache
/// lines, so that producing never touches the lines consumers write.
#[repr(C, align(128))]
struct PutSide {
    lock: libc::pthread_mutex_t,
    /// Absolute byte position of the next record; `pos % capacity` is its
    /// place in the ring. Written under `lock`, watched without it.
    tail: AtomicU64,
    /// Records ever pushed.
    pushed: AtomicU64,
}

/// What the consumers share, likewise.
#[repr(C, align(128))]
struct GetSide {
    lock: libc::pthread_mutex_t,
    /// Absolute byte position of the next record to take.
    head: AtomicU64,
    /// Records ever taken.
    popped: AtomicU64,
}

/// Where processes sleep when spinning was not enough: a futex word per
/// condition (see `sys::futex` for why not pthread condvars), and counts of
/// sleepers so that a waker makes no syscall when there are none.
#[repr(C, align(128))]
struct Sleep {
    not_empty: AtomicU32,
    not_full: AtomicU32,
    all_done: AtomicU32,
    getters: AtomicU32,
    putters: AtomicU32,
    joiners: AtomicU32,
    /// Tasks marked done (JoinableQueue): unfinished is `pushed - done`.
    done: AtomicU64,
}

#[repr(C)]
struct Header {
    put: PutSide,
    get: GetSide,
    sleep: Sleep,
    capacity: u64,
}

/// What a record holds.
pub(crate) enum Record {
    Bytes(Vec<u8>),
    /// The message went the other way (a socket); only its place is here.
    Marker,
}

const MARKER: u64 = 1 << 63;

/// Where the ring's bytes start in the memory file: a page after its
/// start, so that the data's pages can be given back without the header's.
const DATA: usize = 4096;
const _: () = assert!(size_of::<Header>() <= DATA);

/// The ring's memory beyond the hot window is given back in chunks of this
/// size once consumers have passed them, so a queue's resident memory
/// follows its backlog rather than its capacity. Divides every capacity.
const RELEASE_CHUNK: u64 = 256 << 10;

/// The start of the ring that a steady stream cycles through (producers
/// come back to the start once past it with a small backlog); it is never
/// given back.
const HOT: u64 = RELEASE_CHUNK;

/// A record word: the rest of this lap is unused, go on at the next.
const SKIP: u64 = 1 << 62;

/// How often a sleeper looks again when its wakers may have missed it.
const UNSURE_LOOK: std::time::Duration = std::time::Duration::from_millis(10);

/// How many times a waiter looks at the indices before it sleeps.
const SPIN_WAITS: u32 = 2000;

/// Which condition a waiter sleeps on.
#[derive(Clone, Copy)]
enum Until {
    NotEmpty,
    NotFull,
    AllDone,
}

#[derive(Debug)]
pub(crate) struct Ring {
    map: Mapping,
    /// This process's last look at the other side's index. Indices only
    /// grow, so an old look is a safe underestimate: room or records it
    /// shows are really there, and only when it shows too little does a
    /// fresh look (a cache line from the other core) follow.
    seen_head: AtomicU64,
    seen_tail: AtomicU64,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> io::Result<Ring> {
        if capacity == 0 || !(capacity as u64).is_multiple_of(RELEASE_CHUNK) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a ring's capacity must be whole release chunks"));
        }
        let map = Mapping::new("multiproc-queue", DATA + capacity)?;
        let r = Ring::around(map);
        let h = r.map.as_ptr().cast::<Header>();
        // SAFETY: a fresh, page-aligned (so 128-aligned) mapping large
        // enough for the header, not yet shared with anyone. Atomics and
        // counters are zero already (fresh shared memory is zeroed).
        unsafe {
            mutex::init(&raw mut (*h).put.lock, false)?;
            mutex::init(&raw mut (*h).get.lock, false)?;
            (*h).capacity = capacity as u64;
        }
        Ok(r)
    }

    pub(crate) fn open(fd: OwnedFd) -> io::Result<Ring> {
        let map = Mapping::open(fd)?;
        if map.len() < DATA {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared memory too small for a queue"));
        }
        let r = Ring::around(map);
        let cap = r.capacity();
        if cap == 0 || !cap.is_multiple_of(RELEASE_CHUNK) || r.map.len() < DATA + cap as usize {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared memory smaller than its queue"));
        }
        Ok(r)
    }

    fn around(map: Mapping) -> Ring {
        Ring { map, seen_head: AtomicU64::new(0), seen_tail: AtomicU64::new(0) }
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping holds an initialised header while `self`
        // lives. Shared access goes through atomics and pthread objects
        // (which are meant to be used through shared pointers); `capacity`
        // never changes.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    fn capacity(&self) -> u64 {
        self.header().capacity
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data follows the header inside the mapping.
        unsafe { self.map.as_ptr().add(DATA) }
    }

    /// The largest message the ring takes (anything larger goes around it).
    pub(crate) fn max_record(&self) -> usize {
        (self.capacity() as usize / 2).saturating_sub(8)
    }

    /// Appends a record (or a marker with `bytes` = None), waiting for room
    /// until `deadline`; false if there was none in time.
    pub(crate) fn push(&self, bytes: Option<&[u8]>, deadline: Option<Instant>) -> io::Result<bool> {
        let len = bytes.map_or(0, <[u8]>::len);
        let need = 8 + len as u64;
        let h = self.header();
        let cap = self.capacity();
        let room = || {
            let tail = h.put.tail.load(Ordering::Relaxed);
            let fits = |head: u64| cap - (tail - head) >= need;
            fits(look(&self.seen_head, &h.get.head, fits))
        };
        loop {
            if !self.wait(Until::NotFull, &room, deadline)? {
                return Ok(false);
            }
            let _held = Held::lock(&h.put.lock)?;
            if !room() {
                continue;
            }
            let mut tail = h.put.tail.load(Ordering::Relaxed);
            let at = tail % cap;
            // Past the hot window with (almost) nothing waiting: go back to
            // the ring's start, so that a steady stream keeps to memory
            // that is already there and in cache. The skip is published
            // with the record that follows it.
            if at >= HOT && cap - at >= 8 && tail - self.fresh_head() < HOT / 2 {
                copy_in(self.data(), cap, tail, &SKIP.to_le_bytes());
                tail += cap - at;
            }
            let word = if bytes.is_some() { len as u64 } else { MARKER };
            copy_in(self.data(), cap, tail, &word.to_le_bytes());
            if let Some(b) = bytes {
                copy_in(self.data(), cap, tail + 8, b);
            }
            // Visible only now, whole: a producer killed before this line
            // leaves nothing behind.
            h.put.tail.store(tail + need, Ordering::Release);
            h.put.pushed.store(h.put.pushed.load(Ordering::Relaxed) + 1, Ordering::Release);
            drop(_held);
            self.wake(Until::NotEmpty);
            return Ok(true);
        }
    }

    /// Takes the next record, waiting until `deadline`; `None` if none came.
    pub(crate) fn pop(&self, deadline: Option<Instant>) -> io::Result<Option<Record>> {
        let h = self.header();
        let cap = self.capacity();
        let filled = || {
            let head = h.get.head.load(Ordering::Relaxed);
            look(&self.seen_tail, &h.put.tail, |tail| tail > head) > head
        };
        loop {
            if !self.wait(Until::NotEmpty, &filled, deadline)? {
                return Ok(None);
            }
            let _held = Held::lock(&h.get.lock)?;
            if !filled() {
                continue;
            }
            let from = h.get.head.load(Ordering::Relaxed);
            let mut head = from;
            let mut word = [0u8; 8];
            copy_out(self.data(), cap, head, &mut word);
            if u64::from_le_bytes(word) == SKIP {
                // The record that follows was published with the skip.
                head += cap - head % cap;
                copy_out(self.data(), cap, head, &mut word);
            }
            let word = u64::from_le_bytes(word);
            let (record, used) = if word == MARKER {
                (Record::Marker, 8)
            } else {
                let len = word;
                if len > cap {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a corrupt queue record"));
                }
                let bytes = collect_out(self.data(), cap, head + 8, len as usize);
                (Record::Bytes(bytes), 8 + len)
            };
            // Taken only now: a consumer killed before this line leaves the
            // record for the next one.
            h.get.head.store(head + used, Ordering::Release);
            h.get.popped.store(h.get.popped.load(Ordering::Relaxed) + 1, Ordering::Release);
            drop(_held);
            self.wake(Until::NotFull);
            if head != from {
                // Skipped: the rest of the chunk it stood in is passed too.
                self.release_behind(from, from / RELEASE_CHUNK * RELEASE_CHUNK + RELEASE_CHUNK)?;
            }
            if head / RELEASE_CHUNK != (head + used) / RELEASE_CHUNK {
                self.release_behind(head, head + used)?;
            }
            return Ok(Some(record));
        }
    }

    /// Gives back the memory of the chunks that the consumer's move from
    /// `from` to `to` left behind, unless producers have come round to
    /// them again. Under the producers' lock, so that none is writing there.
    fn release_behind(&self, from: u64, to: u64) -> io::Result<()> {
        let h = self.header();
        let cap = self.capacity();
        let _held = Held::lock(&h.put.lock)?;
        let tail = h.put.tail.load(Ordering::Relaxed);
        let (mut start, end) = (from / RELEASE_CHUNK * RELEASE_CHUNK, to / RELEASE_CHUNK * RELEASE_CHUNK);
        // Not the hot window, nor what producers have come back to (they
        // write below `tail`, a lap on).
        start = start.max(start - start % cap + HOT);
        start = start.max(tail.saturating_sub(cap).next_multiple_of(RELEASE_CHUNK));
        if start >= end {
            return Ok(());
        }
        // Chunks divide the capacity, and the hot window starts each lap,
        // so the range lies within one lap.
        let at = (start % cap) as usize;
        let len = ((end - start) as usize).min(cap as usize - at);
        self.map.release(DATA + at, len)
    }

    /// Where consumers are: this process's last look if that is recent
    /// enough to call the backlog small, or a fresh look.
    fn fresh_head(&self) -> u64 {
        let h = self.header();
        let tail = h.put.tail.load(Ordering::Relaxed);
        look(&self.seen_head, &h.get.head, |head| tail - head < HOT / 2)
    }

    /// Items in the queue (exact when no put or get is half done).
    pub(crate) fn items(&self) -> io::Result<usize> {
        let h = self.header();
        let popped = h.get.popped.load(Ordering::Acquire);
        Ok(h.put.pushed.load(Ordering::Acquire).saturating_sub(popped) as usize)
    }

    /// Marks one task done; false if none was unfinished.
    pub(crate) fn task_done(&self) -> io::Result<bool> {
        let h = self.header();
        let marked = h.sleep.done.fetch_update(Ordering::SeqCst, Ordering::Acquire, |done| {
            (done < h.put.pushed.load(Ordering::Acquire)).then_some(done + 1)
        });
        if marked.is_err() {
            return Ok(false);
        }
        self.wake(Until::AllDone);
        Ok(true)
    }

    /// Waits until no task is unfinished.
    pub(crate) fn join(&self) -> io::Result<()> {
        let h = self.header();
        let all_done = || h.sleep.done.load(Ordering::Acquire) >= h.put.pushed.load(Ordering::Acquire);
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
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(ready());
        }
        for _ in 0..SPIN_WAITS {
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
        let sure = barrier::heavy();
        let result = loop {
            let seen = futex::current(word);
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
            if let Err(e) = futex::wait(word, seen, until) {
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
        barrier::light();
        let (sleepers, word) = self.sleepers(until);
        if sleepers.load(Ordering::SeqCst) == 0 {
            return;
        }
        // Producers of different sizes wait for different room, and every
        // joiner waits for the same thing: wake them all. One new record
        // is for one consumer.
        futex::wake(word, !matches!(until, Until::NotEmpty));
    }

    fn sleepers(&self, until: Until) -> (&AtomicU32, &AtomicU32) {
        let s = &self.header().sleep;
        match until {
            Until::NotEmpty => (&s.getters, &s.not_empty),
            Until::NotFull => (&s.putters, &s.not_full),
            Until::AllDone => (&s.joiners, &s.all_done),
        }
    }
}

/// One of the ring's mutexes, held until dropped. A previous holder that
/// died left no half-done state behind (indices move last), so its death
/// needs no repair. Nobody blocks while holding one, so taking one needs no
/// deadline: even `put_nowait` waits the few nanoseconds another holder
/// needs rather than report a queue full that is not.
struct Held(*mut libc::pthread_mutex_t);

impl Held {
    fn lock(m: &libc::pthread_mutex_t) -> io::Result<Held> {
        let m = (&raw const *m).cast_mut();
        // SAFETY: the mutex lives in the mapping, initialised by the creator.
        match unsafe { mutex::lock(m, None) }? {
            Some(_) => Ok(Held(m)),
            None => Err(io::Error::other("a queue lock without a deadline was not taken")),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: this thread locked it in `Held::lock`.
        let _ = unsafe { mutex::unlock(self.0) };
    }
}

/// The other side's index: this process's last look at it if `enough`
/// accepts that, else a fresh look, remembered. Indices only grow, so an
/// old look is a safe underestimate. Acquire and AcqRel carry the other
/// side's release through the remembered copy to every thread here.
fn look(seen: &AtomicU64, index: &AtomicU64, enough: impl Fn(u64) -> bool) -> u64 {
    let old = seen.load(Ordering::Acquire);
    if enough(old) {
        return old;
    }
    let fresh = index.load(Ordering::Acquire);
    seen.fetch_max(fresh, Ordering::AcqRel);
    fresh
}

fn copy_in(data: *mut u8, cap: u64, pos: u64, bytes: &[u8]) {
    let start = (pos % cap) as usize;
    let first = bytes.len().min(cap as usize - start);
    // SAFETY: both ranges lie inside the data area of `cap` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(start), first);
        std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), data, bytes.len() - first);
    }
}

/// The `len` bytes at `pos`, gathered into a new vector (without zeroing
/// it first, as `copy_out` into a fresh one would need).
fn collect_out(data: *mut u8, cap: u64, pos: u64, len: usize) -> Vec<u8> {
    let start = (pos % cap) as usize;
    let first = len.min(cap as usize - start);
    let mut out = Vec::with_capacity(len);
    // SAFETY: as in `copy_in`; the ring's bytes are plain data, and the
    // lock with the index protocol keeps writers off this record.
    unsafe {
        out.extend_from_slice(std::slice::from_raw_parts(data.add(start), first));
        out.extend_from_slice(std::slice::from_raw_parts(data, len - first));
    }
    out
}

fn copy_out(data: *mut u8, cap: u64, pos: u64, out: &mut [u8]) {
    let start = (pos % cap) as usize;
    let first = out.len().min(cap as usize - start);
    // SAFETY: as in `copy_in`.
    unsafe {
        std::ptr::copy_nonoverlapping(data.add(start), out.as_mut_ptr(), first);
        std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), out.len() - first);
    }
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident(r: &Ring) -> u64 {
        rustix::fs::fstat(r.as_fd()).unwrap().st_blocks as u64 * 512
    }

    fn bytes(r: Option<Record>) -> Vec<u8> {
        match r {
            Some(Record::Bytes(b)) => b,
            Some(Record::Marker) => panic!("a marker"),
            None => panic!("nothing"),
        }
    }

    #[test]
    fn records_wrap_around_the_end_whole_and_in_order() {
        let r = Ring::new(RELEASE_CHUNK as usize).unwrap();
        // Sizes that do not divide the capacity, so records straddle its end.
        for i in 0..20_000u32 {
            let len = 1000 + (i as usize * 7919) % 3000;
            let msg: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
            assert!(r.push(Some(&msg), None).unwrap());
            if i % 3 != 0 {
                assert_eq!(bytes(r.pop(None).unwrap()), msg);
            } else {
                assert!(r.push(None, None).unwrap());
                assert!(matches!(r.pop(None).unwrap(), Some(Record::Bytes(b)) if b == msg));
                assert!(matches!(r.pop(None).unwrap(), Some(Record::Marker)));
            }
        }
        assert_eq!(r.items().unwrap(), 0);
    }

    #[test]
    fn a_full_ring_times_out_and_an_empty_one_too() {
        let r = Ring::new(RELEASE_CHUNK as usize).unwrap();
        let big = vec![7u8; r.max_record()];
        assert!(r.push(Some(&big), None).unwrap());
        let soon = Some(Instant::now() + std::time::Duration::from_millis(20));
        let bigger = vec![7u8; r.max_record() + 1];
        assert!(!r.push(Some(&bigger), soon).unwrap(), "no room for more than the other half");
        assert_eq!(bytes(r.pop(None).unwrap()), big);
        assert!(r.pop(Some(Instant::now() + std::time::Duration::from_millis(20))).unwrap().is_none());
    }

    #[test]
    fn a_backlog_far_above_a_chunk_fits_and_its_memory_is_given_back() {
        let r = Ring::new(8 * RELEASE_CHUNK as usize).unwrap();
        let msg = vec![1u8; 4096];
        let n = 6 * RELEASE_CHUNK as usize / 4096;
        for _ in 0..n {
            assert!(r.push(Some(&msg), Some(Instant::now())).unwrap(), "an unconsumed backlog must not block");
        }
        assert!(resident(&r) >= 6 * RELEASE_CHUNK);
        for _ in 0..n {
            assert_eq!(bytes(r.pop(None).unwrap()).len(), 4096);
        }
        // Only the hot window, the chunk the consumer stands in, and the
        // header page stay.
        assert!(resident(&r) <= HOT + RELEASE_CHUNK + DATA as u64, "{} bytes still resident", resident(&r));
    }

    #[test]
    fn a_steady_stream_keeps_to_the_hot_window() {
        let r = Ring::new(16 * RELEASE_CHUNK as usize).unwrap();
        // Forty times the capacity of records, never more than a few waiting.
        let n = 40 * 16 * RELEASE_CHUNK as usize / 1000;
        for i in 0..n {
            let msg = vec![(i % 253) as u8; 992];
            assert!(r.push(Some(&msg), None).unwrap());
            if i % 4 == 3 {
                for j in i - 3..=i {
                    assert_eq!(bytes(r.pop(None).unwrap()), vec![(j % 253) as u8; 992]);
                }
            }
        }
        assert!(resident(&r) <= HOT + RELEASE_CHUNK + DATA as u64, "{} bytes resident", resident(&r));
        let tail = r.header().put.tail.load(Ordering::Relaxed);
        // A lap per hot window's worth of records, not per capacity's.
        assert!(tail / r.capacity() >= 400, "only {} laps: producers did not come back early", tail / r.capacity());
    }

    #[test]
    fn joins_wait_for_every_task_done() {
        let r = Ring::new(RELEASE_CHUNK as usize).unwrap();
        assert!(!r.task_done().unwrap(), "nothing was put");
        assert!(r.push(Some(b"a"), None).unwrap());
        assert!(r.push(Some(b"b"), None).unwrap());
        let r = std::sync::Arc::new(r);
        let joiner = {
            let r = r.clone();
            std::thread::spawn(move || r.join().unwrap())
        };
        assert!(r.task_done().unwrap());
        assert!(r.task_done().unwrap());
        joiner.join().unwrap();
        assert!(!r.task_done().unwrap(), "more task_done calls than puts");
    }
}
