//! Loom's stand-ins for the real primitives of `sys::medium`, shared by
//! the models of the ring and of the monitor.

use std::sync::atomic::Ordering;
use std::time::Instant;

use loom::sync::atomic::AtomicU32;
use loom::sync::{Condvar, Mutex, MutexGuard};

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
