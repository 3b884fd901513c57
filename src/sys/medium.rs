//! What our shared-memory protocols (the queue's ring, the monitor behind
//! semaphores, events and barriers) need from where they live: atomic
//! words, a robust lock, and sleeping on a word. The real primitives are
//! for memory mapped in this process ([`Real`]); under `--cfg
//! multiproc_loom`, `sys::model` gives the same on loom's checked
//! primitives, so that each protocol is model-checked as it is, not a copy
//! of it.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An atomic 64-bit word (std's or loom's).
pub(crate) trait Word64: Send + Sync {
    fn new(value: u64) -> Self;
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    fn fetch_max(&self, value: u64, order: Ordering) -> u64;
    fn compare_exchange(&self, old: u64, new: u64, ok: Ordering, fail: Ordering) -> Result<u64, u64>;
}

/// An atomic 32-bit word (std's or loom's).
pub(crate) trait Word32: Send + Sync {
    #[cfg_attr(not(all(test, multiproc_loom)), allow(dead_code, reason = "models build state outside shared memory"))]
    fn new(value: u32) -> Self;
    fn load(&self, order: Ordering) -> u32;
    fn store(&self, value: u32, order: Ordering);
    fn fetch_add(&self, value: u32, order: Ordering) -> u32;
    fn fetch_sub(&self, value: u32, order: Ordering) -> u32;
    fn swap(&self, value: u32, order: Ordering) -> u32;
    fn compare_exchange(&self, old: u32, new: u32, ok: Ordering, fail: Ordering) -> Result<u32, u32>;
    /// A full fence of the same family (std's or loom's), for a protocol
    /// whose two sides each store one word and then load the other's.
    fn full_fence()
    where
        Self: Sized;
}

macro_rules! words {
    ($u64:ty, $u32:ty, $fence:path) => {
        impl Word64 for $u64 {
            fn new(value: u64) -> Self {
                <$u64>::new(value)
            }
            fn load(&self, order: Ordering) -> u64 {
                <$u64>::load(self, order)
            }
            fn store(&self, value: u64, order: Ordering) {
                <$u64>::store(self, value, order)
            }
            fn fetch_max(&self, value: u64, order: Ordering) -> u64 {
                <$u64>::fetch_max(self, value, order)
            }
            fn compare_exchange(&self, old: u64, new: u64, ok: Ordering, fail: Ordering) -> Result<u64, u64> {
                <$u64>::compare_exchange(self, old, new, ok, fail)
            }
        }
        impl Word32 for $u32 {
            fn new(value: u32) -> Self {
                <$u32>::new(value)
            }
            fn load(&self, order: Ordering) -> u32 {
                <$u32>::load(self, order)
            }
            fn store(&self, value: u32, order: Ordering) {
                <$u32>::store(self, value, order)
            }
            fn fetch_add(&self, value: u32, order: Ordering) -> u32 {
                <$u32>::fetch_add(self, value, order)
            }
            fn fetch_sub(&self, value: u32, order: Ordering) -> u32 {
                <$u32>::fetch_sub(self, value, order)
            }
            fn swap(&self, value: u32, order: Ordering) -> u32 {
                <$u32>::swap(self, value, order)
            }
            fn compare_exchange(&self, old: u32, new: u32, ok: Ordering, fail: Ordering) -> Result<u32, u32> {
                <$u32>::compare_exchange(self, old, new, ok, fail)
            }
            fn full_fence() {
                $fence(Ordering::SeqCst)
            }
        }
    };
}

words!(AtomicU64, AtomicU32, std::sync::atomic::fence);
#[cfg(multiproc_loom)]
words!(loom::sync::atomic::AtomicU64, loom::sync::atomic::AtomicU32, loom::sync::atomic::fence);

/// Locking and sleeping where a protocol's memory lives.
pub(crate) trait Waits: Send + Sync + Sized {
    type U64: Word64;
    type U32: Word32;
    type Lock: Send + Sync;
    /// A held lock; dropping it unlocks.
    type Guard<'a>
    where
        Self: 'a;

    /// Takes `lock`, waiting until `deadline` (`None`: forever; a past one:
    /// only if it is free now); `None` if it stayed taken. True alongside
    /// when its previous holder died holding it.
    fn lock<'a>(
        &'a self,
        lock: &'a Self::Lock,
        deadline: Option<Instant>,
    ) -> io::Result<Option<(Self::Guard<'a>, bool)>>;
    /// Sleeps while `word` holds `seen`, until woken or `deadline`; false
    /// only when the deadline passed. May return early: callers look again.
    fn sleep(&self, word: &Self::U32, seen: u32, deadline: Option<Instant>) -> io::Result<bool>;
    /// Bumps `word` and wakes one sleeper on it, or all.
    fn wake(&self, word: &Self::U32, all: bool);
}

/// Memory mapped in this process, shared with others: robust pthread
/// mutexes (`sys::mutex`) and futexes (`sys::futex`).
///
/// # Safety
/// Every lock an implementor is asked to take lives in memory it keeps
/// mapped, initialised by `sys::mutex::init`.
pub(crate) unsafe trait Real: Send + Sync {}

impl<T: Real> Waits for T {
    type U64 = AtomicU64;
    type U32 = AtomicU32;
    type Lock = libc::pthread_mutex_t;
    type Guard<'a>
        = Held
    where
        T: 'a;

    fn lock<'a>(&'a self, lock: &'a Self::Lock, deadline: Option<Instant>) -> io::Result<Option<(Held, bool)>> {
        use super::mutex::{self, Got};
        let m = (&raw const *lock).cast_mut();
        // One try first: a free lock needs no look at the clock.
        // SAFETY: `T: Real` promises the mutex lives in mapped memory,
        // initialised by the mapping's creator.
        let got = match unsafe { mutex::lock(m, Some(Duration::ZERO)) }? {
            Some(got) => Some(got),
            // A past deadline is a zero timeout: that try was it.
            None => {
                let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if timeout.is_some_and(|t| t.is_zero()) {
                    None
                } else {
                    // SAFETY: as above.
                    unsafe { mutex::lock(m, timeout) }?
                }
            }
        };
        Ok(got.map(|got| (Held(m), got == Got::OwnerDied)))
    }

    fn sleep(&self, word: &AtomicU32, seen: u32, deadline: Option<Instant>) -> io::Result<bool> {
        super::futex::wait(word, seen, deadline)
    }

    fn wake(&self, word: &AtomicU32, all: bool) {
        super::futex::wake(word, all)
    }
}

/// A robust mutex in shared memory, held by this thread until dropped.
pub(crate) struct Held(*mut libc::pthread_mutex_t);

impl Drop for Held {
    fn drop(&mut self) {
        // SAFETY: this thread locked it in `Real::lock`.
        let _ = unsafe { super::mutex::unlock(self.0) };
    }
}
