//! Locks shared between processes (Python's `multiprocessing.synchronize`),
//! robust to a holder that dies.
//!
//! A lock lives in a small shared memory file; the file's descriptor is
//! what travels to other processes (as a [`Handle`]), under every start
//! method and to running pool workers. Each lock is a process-shared,
//! robust pthread mutex: the kernel knows which thread holds it, so if that
//! thread's process dies, the next acquirer gets the lock together with
//! [`Acquired::AfterOwnerDied`]. (Python's `Lock` stays locked forever.)
//!
//! Unlike Python's `Lock`, which any process may release, these locks are
//! owned: releasing one that this thread does not hold is
//! [`Error::NotOwner`]. That ownership is what makes a dead holder visible.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sys::mutex::{self, Got};
use crate::sys::shm::Mapping;
use crate::{Error, Handle, Result};

/// How an acquisition went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lock was free (or freed by its holder).
    Normally,
    /// The previous holder died while holding the lock; what it protected
    /// may be half-updated. The lock is held now and works as usual.
    AfterOwnerDied,
}

impl From<Got> for Acquired {
    fn from(g: Got) -> Self {
        match g {
            Got::Clean => Acquired::Normally,
            Got::OwnerDied => Acquired::AfterOwnerDied,
        }
    }
}

/// The shared part of a lock.
#[derive(Debug)]
struct Core {
    map: Mapping,
    recursive: bool,
}

impl Core {
    fn new(recursive: bool) -> Result<Arc<Core>> {
        let size = std::mem::size_of::<libc::pthread_mutex_t>();
        let map = Mapping::new("multiproc-lock", size)
            .map_err(|source| Error::Io { context: "shared memory for a lock", source })?;
        // SAFETY: a fresh, page-aligned mapping large enough for the mutex,
        // not yet visible to any other process.
        unsafe { mutex::init(map.as_ptr().cast(), recursive) }
            .map_err(|source| Error::Io { context: "pthread_mutex_init", source })?;
        Ok(Arc::new(Core { map, recursive }))
    }

    fn ptr(&self) -> *mut libc::pthread_mutex_t {
        self.map.as_ptr().cast()
    }

    fn lock(&self, timeout: Option<Duration>) -> Result<Option<Acquired>> {
        // SAFETY: the mapping holds a mutex initialised by its creator and
        // stays mapped as long as `self` lives.
        match unsafe { mutex::lock(self.ptr(), timeout) } {
            Ok(got) => Ok(got.map(Acquired::from)),
            Err(e) if e.raw_os_error() == Some(libc::EDEADLK) => Err(Error::AlreadyHeld),
            Err(source) => Err(Error::Io { context: "pthread_mutex_lock", source }),
        }
    }

    fn unlock(&self) -> Result<()> {
        // SAFETY: as in `lock`.
        match unsafe { mutex::unlock(self.ptr()) } {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(Error::NotOwner),
            Err(source) => Err(Error::Io { context: "pthread_mutex_unlock", source }),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    memory: Handle,
    recursive: bool,
}

fn serialize_core<S: serde::Serializer>(core: &Core, s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::Error as _;
    let memory = std::os::fd::AsFd::as_fd(&core.map).try_clone_to_owned().map_err(S::Error::custom)?;
    Wire { memory: Handle::new(memory), recursive: core.recursive }.serialize(s)
}

fn deserialize_core<'de, D: serde::Deserializer<'de>>(
    d: D,
    recursive: bool,
) -> std::result::Result<Arc<Core>, D::Error> {
    use serde::de::Error as _;
    let w = Wire::deserialize(d)?;
    if w.recursive != recursive {
        return Err(D::Error::custom("a Lock and an RLock are not interchangeable"));
    }
    let map = Mapping::open(w.memory.into_owned_fd()).map_err(D::Error::custom)?;
    if map.len() < std::mem::size_of::<libc::pthread_mutex_t>() {
        return Err(D::Error::custom("the shared memory is too small for a lock"));
    }
    Ok(Arc::new(Core { map, recursive }))
}

macro_rules! lock_type {
    ($(#[$doc:meta])* $name:ident, $recursive:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            core: Arc<Core>,
        }

        impl $name {
            /// A new, unlocked lock.
            pub fn new() -> Result<Self> {
                Ok($name { core: Core::new($recursive)? })
            }

            /// Waits for the lock and takes it.
            pub fn acquire(&self) -> Result<Acquired> {
                Ok(self.core.lock(None)?.expect("an untimed lock always returns"))
            }

            /// Waits at most `timeout`; `Ok(None)` if the lock stayed taken.
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<Option<Acquired>> {
                self.core.lock(Some(timeout.max(Duration::from_nanos(1))))
            }

            /// Takes the lock only if it is free right now.
            pub fn try_acquire(&self) -> Result<Option<Acquired>> {
                self.core.lock(Some(Duration::ZERO))
            }

            /// Releases the lock; [`Error::NotOwner`] if this thread does not
            /// hold it.
            pub fn release(&self) -> Result<()> {
                self.core.unlock()
            }

            /// Takes the lock until the guard is dropped.
            pub fn lock(&self) -> Result<LockGuard<'_>> {
                let acquired = self.acquire()?;
                Ok(LockGuard { core: &self.core, acquired, _not_send: PhantomData })
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                serialize_core(&self.core, s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Ok($name { core: deserialize_core(d, $recursive)? })
            }
        }
    };
}

lock_type!(
    /// A lock shared between processes (Python's `multiprocessing.Lock`),
    /// not re-entrant: `try_acquire` on a lock this thread holds says no.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use multiproc::{Lock, Process};
    ///
    /// fn work(lock: Lock, n: u32) -> u32 {
    ///     let _held = lock.lock().unwrap();
    ///     n * 2 // only one process at a time in here
    /// }
    ///
    /// let lock = Lock::new().unwrap();
    /// let mut p = Process::new(work, (lock.clone(), 21));
    /// p.start().unwrap();
    /// assert_eq!(p.join().unwrap(), 42);
    /// assert!(lock.try_acquire().unwrap().is_some());
    /// assert!(lock.try_acquire().unwrap().is_none());
    /// lock.release().unwrap();
    /// # }
    /// ```
    Lock,
    false
);

lock_type!(
    /// A re-entrant lock shared between processes (Python's
    /// `multiprocessing.RLock`): the holding thread may take it again and
    /// must release it as often.
    ///
    /// ```
    /// let lock = multiproc::RLock::new().unwrap();
    /// lock.acquire().unwrap();
    /// lock.acquire().unwrap();
    /// lock.release().unwrap();
    /// lock.release().unwrap();
    /// assert!(matches!(lock.release(), Err(multiproc::Error::NotOwner)));
    /// ```
    RLock,
    true
);

/// Holds a [`Lock`] or [`RLock`] until dropped.
///
/// ```
/// let lock = multiproc::Lock::new().unwrap();
/// {
///     let guard = lock.lock().unwrap();
///     assert_eq!(guard.acquired(), multiproc::Acquired::Normally);
/// }
/// assert!(lock.try_acquire().unwrap().is_some());
/// ```
#[derive(Debug)]
pub struct LockGuard<'a> {
    core: &'a Core,
    acquired: Acquired,
    // A pthread mutex must be released by the thread that took it.
    _not_send: PhantomData<*const ()>,
}

impl LockGuard<'_> {
    /// How the lock was obtained: [`Acquired::AfterOwnerDied`] means the
    /// previous holder died holding it.
    pub fn acquired(&self) -> Acquired {
        self.acquired
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.core.unlock();
    }
}
