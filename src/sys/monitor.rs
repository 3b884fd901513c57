//! A monitor in shared memory: a robust process-shared mutex, a futex word
//! to sleep on (a condition variable that a dead waiter cannot jam, see
//! `sys::futex`), and a few words of state that are only touched with the
//! mutex held. Semaphores, events and barriers are small state machines on
//! it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use super::shm::Mapping;
use super::{futex, mutex};

/// The state a monitor guards.
pub(crate) type Words = [u64; 4];

#[repr(C)]
struct Layout {
    mutex: libc::pthread_mutex_t,
    changed: AtomicU32,
    words: Words,
}

#[derive(Debug)]
pub(crate) struct Monitor {
    map: Mapping,
}

impl Monitor {
    pub(crate) fn new(words: Words) -> io::Result<Monitor> {
        let map = Mapping::new("multiproc-sync", size_of::<Layout>())?;
        let m = Monitor { map };
        let l = m.layout();
        // SAFETY: fresh, page-aligned, large enough, not yet shared.
        unsafe {
            mutex::init(&raw mut (*l).mutex, false)?;
            (&raw mut (*l).words).write(words);
        }
        Ok(m)
    }

    pub(crate) fn open(fd: OwnedFd) -> io::Result<Monitor> {
        let map = Mapping::open(fd)?;
        if map.len() < size_of::<Layout>() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "shared memory too small for a monitor"));
        }
        Ok(Monitor { map })
    }

    fn layout(&self) -> *mut Layout {
        self.map.as_ptr().cast()
    }

    /// Runs `step` on the state with the mutex held, until it returns
    /// `Some` (waiting for a notification in between) or `deadline` passes
    /// (`Ok(None)`). A holder that died is taken in stride: the state
    /// changes under the lock are single word writes.
    pub(crate) fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut step: impl FnMut(&mut Words) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let l = self.layout();
        // SAFETY: the layout was initialised by the creator and stays mapped
        // while `self` lives; the words are only touched with the mutex held.
        unsafe {
            let m = &raw mut (*l).mutex;
            mutex::lock(m, None)?;
            let result = loop {
                if let Some(t) = step(&mut (*l).words) {
                    break Ok(Some(t));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break Ok(None);
                }
                // Read under the lock, after the state: a notify for any
                // change made after this read changes the word, so the
                // sleep below cannot miss it.
                let changed = &(*l).changed;
                let seen = futex::current(changed);
                mutex::unlock(m)?;
                let slept = futex::wait(changed, seen, deadline);
                mutex::lock(m, None)?;
                if let Err(e) = slept {
                    break Err(e);
                }
            };
            mutex::unlock(m)?;
            result
        }
    }

    /// Runs `f` on the state with the mutex held.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Words) -> T) -> io::Result<T> {
        let mut f = Some(f);
        Ok(self.wait_until(None, |w| Some((f.take().expect("runs once"))(w)))?.expect("never waits"))
    }

    /// Wakes waiters (call it after changing the state).
    pub(crate) fn notify(&self, all: bool) {
        // SAFETY: as in `wait_until`; the word is an atomic.
        futex::wake(unsafe { &(*self.layout()).changed }, all)
    }
}

impl AsFd for Monitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.as_fd()
    }
}
