//! A monitor in shared memory: a robust process-shared mutex, a futex word
//! to sleep on (a condition variable that a dead waiter cannot jam, see
//! `sys::futex`), and a few words of state only touched with the mutex
//! held. Semaphores, events and barriers are small state machines on it.
//!
//! # Robust to a process killed at any instant
//!
//! 1. A change of state is all or nothing: the words are kept twice, and a
//!    change is written to the copy not in use, then made current by one
//!    store. A holder killed before that store changed nothing; after it,
//!    everything. The next holder needs no repair.
//! 2. A change that waiters wait for wakes them *before* it is made
//!    current, with the mutex still held: the woken go on to wait for the
//!    mutex, which the kernel hands on when its holder dies. So a waker
//!    killed between its change and its wake cannot leave sleepers behind
//!    a change they missed: either the change never happened, or they were
//!    woken already.
//! 3. Waking is always of every sleeper: a woken process killed before it
//!    acts cannot swallow a wake-up that another sleeper needed.
//!
//! What no protocol can give back is what a dead process held: a permit of
//! a semaphore, a place among a barrier's parties.
//!
//! The code is generic over where the monitor lives ([`Home`]), so that
//! `--cfg multiproc_loom` model-checks it (`synchronize::model`).

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::medium::{Real, Waits, Word32, Word64};
use super::mutex;
use super::shm::Mapping;

/// The state a monitor guards.
pub(crate) type Words = [u64; 4];

/// A monitor's shared memory.
#[repr(C)]
pub(crate) struct State<H: Waits> {
    lock: H::Lock,
    /// The futex word: bumped by every wake.
    changed: H::U32,
    /// Which of `words` is the state (0 or 1).
    current: H::U32,
    words: [[H::U64; 4]; 2],
}

impl<H: Waits> State<H> {
    /// With the lock held.
    fn read(&self) -> Words {
        let c = (self.current.load(Ordering::Relaxed) & 1) as usize;
        std::array::from_fn(|i| self.words[c][i].load(Ordering::Relaxed))
    }

    /// With the lock held: the change in one store (point 1).
    fn commit(&self, words: Words) {
        let next = 1 - (self.current.load(Ordering::Relaxed) & 1);
        for (slot, w) in self.words[next as usize].iter().zip(words) {
            slot.store(w, Ordering::Relaxed);
        }
        self.current.store(next, Ordering::Release);
    }
}

#[cfg(all(test, multiproc_loom))]
impl<H: Waits> State<H> {
    /// A monitor's state outside shared memory (for models).
    pub(crate) fn new(lock: H::Lock, words: Words) -> State<H> {
        let w = |i: usize| H::U64::new(words[i]);
        let zero = || std::array::from_fn(|_| H::U64::new(0));
        State { lock, changed: H::U32::new(0), current: H::U32::new(0), words: [std::array::from_fn(w), zero()] }
    }
}

/// Where a monitor lives.
pub(crate) trait Home: Waits {
    fn state(&self) -> &State<Self>;
}

/// One turn of a state machine: the state it may change, and whether its
/// waiters should look again.
pub(crate) struct Turn {
    words: Words,
    wake: bool,
}

impl Turn {
    /// Wakes every waiter once this turn's change is made.
    pub(crate) fn wake(&mut self) {
        self.wake = true;
    }
}

impl Deref for Turn {
    type Target = Words;
    fn deref(&self) -> &Words {
        &self.words
    }
}

impl DerefMut for Turn {
    fn deref_mut(&mut self) -> &mut Words {
        &mut self.words
    }
}

/// A monitor, as this process sees it.
pub(crate) struct Monitor<H: Home = Memory> {
    home: H,
}

impl<H: Home> Monitor<H> {
    #[cfg(all(test, multiproc_loom))]
    pub(crate) fn around(home: H) -> Monitor<H> {
        Monitor { home }
    }

    #[cfg(all(test, multiproc_loom))]
    pub(crate) fn home(&self) -> &H {
        &self.home
    }

    /// Runs `step` on the state with the mutex held, until it returns
    /// `Some` (waiting for a wake-up in between) or `deadline` passes
    /// (`Ok(None)`). What a step changes is made current after the step,
    /// and its wake-up given before that (points 1 and 2). A holder that
    /// died is taken in stride: the state is always whole.
    pub(crate) fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut step: impl FnMut(&mut Turn) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let s = self.home.state();
        let lock = || match self.home.lock(&s.lock, None) {
            Ok(Some((held, _))) => Ok(held),
            Ok(None) => Err(io::Error::other("a monitor's lock without a deadline was not taken")),
            Err(e) => Err(e),
        };
        let mut held = lock()?;
        loop {
            let before = s.read();
            let mut turn = Turn { words: before, wake: false };
            let out = step(&mut turn);
            if turn.wake {
                self.home.wake(&s.changed, true);
            }
            if turn.words != before {
                s.commit(turn.words);
            }
            if out.is_some() {
                return Ok(out);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            let slept = sleep_unlocked(&self.home, &s.changed, deadline, || {
                drop(held);
                Ok::<_, io::Error>(())
            })?;
            held = lock()?;
            slept?;
        }
    }

    /// Runs `f` on the state with the mutex held.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Turn) -> T) -> io::Result<T> {
        let mut f = Some(f);
        Ok(self.wait_until(None, |t| Some((f.take().expect("runs once"))(t)))?.expect("never waits"))
    }
}

/// The step from "the state is not what I wait for" to sleeping, taken
/// with the lock that guards the state held: notes `word`, lets go of the
/// lock (`unlock`), sleeps while the word still holds what was noted. The
/// note is taken under the lock, after the caller's last look at the
/// state: a wake for any change made after that look changes the word, so
/// the sleep cannot miss it. The sleep's own result (false: `deadline`
/// passed) is inside; the caller takes its lock again.
pub(crate) fn sleep_unlocked<W: Waits, E>(
    home: &W,
    word: &W::U32,
    deadline: Option<Instant>,
    unlock: impl FnOnce() -> Result<(), E>,
) -> Result<io::Result<bool>, E> {
    let seen = word.load(Ordering::Acquire);
    unlock()?;
    Ok(home.sleep(word, seen, deadline))
}

/// The real home: a memory file mapped in this process.
#[derive(Debug)]
pub(crate) struct Memory {
    map: Mapping,
}

// SAFETY: the one lock is in the mapping `Memory` keeps, initialised by
// `Monitor::new` (and checked to fit by `Monitor::open`).
unsafe impl Real for Memory {}

impl Home for Memory {
    fn state(&self) -> &State<Memory> {
        // SAFETY: the mapping is page-aligned, at least a `State` long
        // (checked on open) and initialised by its creator; shared access
        // goes through atomics and the pthread mutex.
        unsafe { &*self.map.as_ptr().cast::<State<Memory>>() }
    }
}

impl Monitor {
    pub(crate) fn new(words: Words) -> io::Result<Monitor> {
        let map = Mapping::new("multiproc-sync", size_of::<State<Memory>>())?;
        let s = map.as_ptr().cast::<State<Memory>>();
        // SAFETY: fresh, page-aligned, large enough, not yet shared; the
        // words are atomics, zero in fresh memory, with copy 0 current.
        unsafe { mutex::init(&raw mut (*s).lock, false)? };
        let m = Monitor { home: Memory { map } };
        let st = m.home.state();
        for (slot, w) in st.words[0].iter().zip(words) {
            slot.store(w, Ordering::Relaxed);
        }
        Ok(m)
    }

    pub(crate) fn open(fd: OwnedFd) -> io::Result<Monitor> {
        let map = Mapping::open(fd)?;
        if map.len() < size_of::<State<Memory>>() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared memory too small for a monitor"));
        }
        Ok(Monitor { home: Memory { map } })
    }
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

impl AsFd for Monitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.home.map.as_fd()
    }
}
