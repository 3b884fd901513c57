//! Loom's stand-ins for the real primitives of `sys::medium`, shared by
//! the models of the ring and of the monitor.

use std::sync::atomic::Ordering;
use std::time::Instant;

use loom::sync::atomic::AtomicU32;
use loom::sync::{Condvar, Mutex, MutexGuard};

/// `Waits` for a modeled home whose `Park` is at `$park` (of `$s: &Self`):
/// locks are loom mutexes, sleeping is on the park.
macro_rules! waits_on_park {
    ($home:ty, |$s:ident| $park:expr) => {
        impl $crate::sys::medium::Waits for $home {
            type U64 = loom::sync::atomic::AtomicU64;
            type U32 = loom::sync::atomic::AtomicU32;
            type Lock = loom::sync::Mutex<()>;
            type Guard<'a> = loom::sync::MutexGuard<'a, ()>;

            fn lock<'a>(
                &'a self,
                lock: &'a loom::sync::Mutex<()>,
                deadline: Option<std::time::Instant>,
            ) -> std::io::Result<Option<(loom::sync::MutexGuard<'a, ()>, bool)>> {
                Ok($crate::sys::model::Park::lock(lock, deadline))
            }

            fn sleep(
                &self,
                word: &loom::sync::atomic::AtomicU32,
                seen: u32,
                deadline: Option<std::time::Instant>,
            ) -> std::io::Result<bool> {
                let $s = self;
                Ok($park.sleep(word, seen, deadline))
            }

            fn wake(&self, word: &loom::sync::atomic::AtomicU32, all: bool) {
                let $s = self;
                $park.wake(word, all)
            }
        }
    };
}
pub(crate) use waits_on_park;

/// A futex: sleeping while a word holds what the sleeper saw, woken by a
/// bump of the word. Loom has no futex; a condition variable whose mutex
/// is held across the sleeper's look at the word loses no wake-up, as the
/// kernel's hash-bucket lock does for a futex.
pub(crate) struct Park {
    mutex: Mutex<()>,
    parked: Condvar,
}

impl Park {
    pub(crate) fn new() -> Park {
        Park { mutex: Mutex::new(()), parked: Condvar::new() }
    }

    /// Sleeps while `word` holds `seen`. A deadline is modelled as one that
    /// may pass at any moment: the sleeper may return without sleeping.
    pub(crate) fn sleep(&self, word: &AtomicU32, seen: u32, deadline: Option<Instant>) -> bool {
        let held = self.mutex.lock().unwrap();
        if word.load(Ordering::Acquire) != seen {
            return true;
        }
        if deadline.is_some() {
            return false;
        }
        drop(self.parked.wait(held).unwrap());
        true
    }

    /// Bumps `word`, wakes one sleeper or all. Loom picks which one.
    pub(crate) fn wake(&self, word: &AtomicU32, all: bool) {
        word.fetch_add(1, Ordering::Release);
        let _held = self.mutex.lock().unwrap();
        if all {
            self.parked.notify_all();
        } else {
            self.parked.notify_one();
        }
    }

    /// A lock, taken; with a deadline, only if it is free now.
    pub(crate) fn lock<'a>(lock: &'a Mutex<()>, deadline: Option<Instant>) -> Option<(MutexGuard<'a, ()>, bool)> {
        match deadline {
            None => Some((lock.lock().unwrap(), false)),
            Some(_) => lock.try_lock().ok().map(|g| (g, false)),
        }
    }
}
