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
//! A lock dropped (its last copy in this process) while this thread holds
//! it is released.
//!
//! # Processes killed at any instant
//!
//! A process killed while it sets an [`Event`], releases a permit, or
//! waits, costs the others nothing: the change happened whole or not at
//! all, and every waiter that should wake, wakes (also when the one woken
//! first is killed before it acts: the others look again within 50 ms).
//! What a dead process held cannot be given back by anyone but a user who
//! knows: a [`Semaphore`] permit it held is gone (as in Python), and a
//! [`Barrier`] party that died can never arrive: the others wait until
//! their timeout or an [`abort`](Barrier::abort).

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sys::medium::{Real, Waits};
use crate::sys::monitor::{Home, Monitor, sleep_unlocked};
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
    map: std::mem::ManuallyDrop<Mapping>,
    recursive: bool,
}

impl Drop for Core {
    fn drop(&mut self) {
        // A lock still held through this mapping (taken with `acquire` and
        // dropped unreleased) is released first if this thread holds it,
        // and keeps its page if another thread of this process does: see
        // `mutex::release_before_unmap`.
        // SAFETY: the mutex lives in the mapping, which nothing else uses
        // once this last reference in the process goes.
        if unsafe { mutex::release_before_unmap(self.ptr()) } {
            // SAFETY: dropped once, here, and not used afterwards.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.map) }
        }
    }
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
        Ok(Arc::new(Core { map: std::mem::ManuallyDrop::new(map), recursive }))
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
    Wire { memory: crate::reduction::share(&*core.map)?, recursive: core.recursive }.serialize(s)
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
    Ok(Arc::new(Core { map: std::mem::ManuallyDrop::new(map), recursive }))
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

/// How the monitor-based primitives travel: their shared memory.
#[derive(Serialize, Deserialize)]
struct MonitorWire {
    memory: Handle,
    kind: char,
}

fn monitor_to_wire<S: serde::Serializer>(m: &Monitor, kind: char, s: S) -> std::result::Result<S::Ok, S::Error> {
    MonitorWire { memory: crate::reduction::share(m)?, kind }.serialize(s)
}

fn monitor_from_wire<'de, D: serde::Deserializer<'de>>(
    d: D,
    kind: char,
) -> std::result::Result<Arc<Monitor>, D::Error> {
    use serde::de::Error as _;
    let w = MonitorWire::deserialize(d)?;
    if w.kind != kind {
        return Err(D::Error::custom("a synchronisation object arrived as another kind"));
    }
    Monitor::open(w.memory.into_owned_fd()).map(Arc::new).map_err(D::Error::custom)
}

fn monitor_error(source: std::io::Error) -> Error {
    Error::Io { context: "a shared monitor", source }
}

fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(|| Instant::now() + Duration::from_secs(1 << 32)))
}

macro_rules! travels {
    ($name:ident, $kind:expr) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                monitor_to_wire(&self.monitor, $kind, s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Ok($name { monitor: monitor_from_wire(d, $kind)? })
            }
        }
    };
}

// Semaphore words: [value, bound (u64::MAX when unbounded), -, -].
fn sem_new(value: u32, bound: u64) -> Result<Arc<Monitor>> {
    Monitor::new([u64::from(value), bound, 0, 0]).map(Arc::new).map_err(monitor_error)
}

fn sem_acquire<H: Home>(m: &Monitor<H>, deadline: Option<Instant>) -> Result<bool> {
    let got = m.wait_until(deadline, |w| (w[0] > 0).then(|| w[0] -= 1)).map_err(monitor_error)?;
    Ok(got.is_some())
}

fn sem_release<H: Home>(m: &Monitor<H>) -> Result<()> {
    m.with(|w| {
        if w[0] >= w[1] {
            return Err(Error::SemaphoreOverflow { bound: w[1] as u32 });
        }
        w[0] += 1;
        w.wake();
        Ok(())
    })
    .map_err(monitor_error)?
}

impl Semaphore {
    /// Waits, taking nothing, until a permit is free (`true`) or `stop`
    /// says so (`false`): an async put's helper waits so, and the task
    /// then takes the permit itself. [`nudge`](Self::nudge) makes the wait
    /// look at `stop` again.
    #[cfg(feature = "async")]
    pub(crate) fn wait_free(&self, stop: &std::sync::atomic::AtomicBool) -> Result<bool> {
        let free = |w: &mut crate::sys::monitor::Turn| {
            if w[0] > 0 {
                Some(true)
            } else if stop.load(std::sync::atomic::Ordering::SeqCst) {
                Some(false)
            } else {
                None
            }
        };
        let got = self.monitor.wait_until(None, free).map_err(monitor_error)?;
        Ok(got.unwrap_or(false))
    }

    /// Wakes every waiter to look again (see [`wait_free`](Self::wait_free)).
    #[cfg(feature = "async")]
    pub(crate) fn nudge(&self) {
        let _ = self.monitor.with(|w| w.wake());
    }
}

macro_rules! semaphore {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $bounded:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            monitor: Arc<Monitor>,
        }

        impl $name {
            /// A semaphore with `value` permits.
            pub fn new(value: u32) -> Result<Self> {
                Ok($name { monitor: sem_new(value, if $bounded { u64::from(value) } else { u64::MAX })? })
            }

            /// Takes a permit, waiting for one.
            pub fn acquire(&self) -> Result<()> {
                sem_acquire(&*self.monitor, None).map(|_| ())
            }

            /// Takes a permit, waiting at most `timeout`; false if none came.
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
                sem_acquire(&*self.monitor, deadline(Some(timeout)))
            }

            /// Takes a permit only if one is free now.
            pub fn try_acquire(&self) -> Result<bool> {
                sem_acquire(&*self.monitor, Some(Instant::now()))
            }

            /// Returns a permit.
            pub fn release(&self) -> Result<()> {
                sem_release(&*self.monitor)
            }

            /// The number of free permits (Python's `get_value`).
            pub fn get_value(&self) -> Result<u32> {
                self.monitor.with(|w| w[0] as u32).map_err(monitor_error)
            }

            /// Takes a permit until the guard is dropped.
            pub fn guard(&self) -> Result<SemaphoreGuard<'_>> {
                self.acquire()?;
                Ok(SemaphoreGuard { monitor: &self.monitor })
            }
        }

        travels!($name, $kind);
    };
}

semaphore!(
    /// A counter of permits shared between processes (Python's
    /// `multiprocessing.Semaphore`).
    ///
    /// ```
    /// let s = multiproc::Semaphore::new(2).unwrap();
    /// s.acquire().unwrap();
    /// assert!(s.try_acquire().unwrap());
    /// assert!(!s.try_acquire().unwrap());
    /// s.release().unwrap();
    /// s.release().unwrap();
    /// s.release().unwrap(); // unbounded: more than it started with is fine
    /// assert_eq!(s.get_value().unwrap(), 3);
    /// ```
    Semaphore,
    's',
    false
);

semaphore!(
    /// A [`Semaphore`] that may not be released past its initial value
    /// (Python's `BoundedSemaphore`): that is [`Error::SemaphoreOverflow`].
    ///
    /// ```
    /// let s = multiproc::BoundedSemaphore::new(1).unwrap();
    /// s.acquire().unwrap();
    /// s.release().unwrap();
    /// assert!(matches!(s.release(), Err(multiproc::Error::SemaphoreOverflow { bound: 1 })));
    /// ```
    BoundedSemaphore,
    'b',
    true
);

/// Holds a permit of a [`Semaphore`] or [`BoundedSemaphore`] until dropped.
///
/// ```
/// let s = multiproc::Semaphore::new(1).unwrap();
/// {
///     let _permit = s.guard().unwrap();
///     assert!(!s.try_acquire().unwrap());
/// }
/// assert!(s.try_acquire().unwrap());
/// ```
#[derive(Debug)]
pub struct SemaphoreGuard<'a> {
    monitor: &'a Monitor,
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let _ = sem_release(self.monitor);
    }
}

/// A flag processes can wait for (Python's `multiprocessing.Event`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Event, Process};
/// fn wait_for_it(e: Event) -> bool { e.wait(None).unwrap() }
/// let e = Event::new().unwrap();
/// let mut p = Process::new(wait_for_it, (e.clone(),));
/// p.start().unwrap();
/// assert!(!e.is_set().unwrap());
/// e.set().unwrap();
/// assert!(p.join().unwrap());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Event {
    monitor: Arc<Monitor>,
}

impl Event {
    /// A new, clear event.
    pub fn new() -> Result<Self> {
        Ok(Event { monitor: Monitor::new([0; 4]).map(Arc::new).map_err(monitor_error)? })
    }

    /// Whether it is set.
    pub fn is_set(&self) -> Result<bool> {
        self.monitor.with(|w| w[0] != 0).map_err(monitor_error)
    }

    /// Sets it and wakes every waiter.
    pub fn set(&self) -> Result<()> {
        event_set(&*self.monitor)
    }

    /// Clears it.
    pub fn clear(&self) -> Result<()> {
        self.monitor.with(|w| w[0] = 0).map_err(monitor_error)
    }

    /// Waits until it is set, at most `timeout` (`None`: forever); returns
    /// whether it is set.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        event_wait(&*self.monitor, deadline(timeout))
    }
}

// Event words: [set, -, -, -].
fn event_set<H: Home>(m: &Monitor<H>) -> Result<()> {
    m.with(|w| {
        if w[0] == 0 {
            w[0] = 1;
            w.wake();
        }
    })
    .map_err(monitor_error)
}

fn event_wait<H: Home>(m: &Monitor<H>, deadline: Option<Instant>) -> Result<bool> {
    let set = m.wait_until(deadline, |w| (w[0] != 0).then_some(())).map_err(monitor_error)?;
    Ok(set.is_some())
}

travels!(Event, 'e');

/// A meeting point for a fixed number of processes (Python's
/// `multiprocessing.Barrier`): each `wait` returns once `parties` have
/// arrived.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Barrier, Process};
/// fn meet(b: Barrier) -> usize { b.wait(None).unwrap() }
/// let b = Barrier::new(2).unwrap();
/// let mut p = Process::new(meet, (b.clone(),));
/// p.start().unwrap();
/// let mine = b.wait(None).unwrap();
/// let theirs = p.join().unwrap();
/// assert_eq!(mine + theirs, 1); // indexes 0 and 1
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Barrier {
    monitor: Arc<Monitor>,
}

// Barrier words: [parties, arrived, generation, state], where state is
// `(generation of the last reset) << 1 | broken`. A waiter whose generation
// has passed was released, unless a reset happened after its round began.
impl Barrier {
    /// A barrier for `parties` processes (or threads).
    pub fn new(parties: u32) -> Result<Self> {
        if parties == 0 {
            return Err(Error::InvalidSize);
        }
        Ok(Barrier { monitor: Monitor::new([u64::from(parties), 0, 0, 0]).map(Arc::new).map_err(monitor_error)? })
    }

    /// Waits for the others; returns this caller's arrival index
    /// (`0..parties`). A timeout breaks the barrier for everyone
    /// ([`Error::BrokenBarrier`]), as in Python.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<usize> {
        barrier_wait(&*self.monitor, deadline(timeout))
    }

    /// Breaks the barrier: current and future waiters get
    /// [`Error::BrokenBarrier`].
    ///
    /// ```
    /// let b = multiproc::Barrier::new(3).unwrap();
    /// b.abort().unwrap();
    /// assert!(b.broken().unwrap());
    /// assert!(matches!(b.wait(None), Err(multiproc::Error::BrokenBarrier)));
    /// ```
    pub fn abort(&self) -> Result<()> {
        barrier_abort(&*self.monitor)
    }

    /// Returns the barrier to its empty state (Python's `reset`): whoever
    /// is waiting now gets [`Error::BrokenBarrier`]; later waits work again,
    /// also after an [`abort`](Self::abort).
    ///
    /// ```
    /// let b = multiproc::Barrier::new(2).unwrap();
    /// b.abort().unwrap();
    /// b.reset().unwrap();
    /// assert!(!b.broken().unwrap());
    /// ```
    pub fn reset(&self) -> Result<()> {
        barrier_reset(&*self.monitor)
    }

    /// The number of parties.
    pub fn parties(&self) -> Result<u32> {
        self.monitor.with(|w| w[0] as u32).map_err(monitor_error)
    }

    /// How many are waiting now.
    pub fn n_waiting(&self) -> Result<u32> {
        self.monitor.with(|w| w[1] as u32).map_err(monitor_error)
    }

    /// Whether it is broken.
    pub fn broken(&self) -> Result<bool> {
        self.monitor.with(|w| w[3] & 1 != 0).map_err(monitor_error)
    }
}

travels!(Barrier, 'r');

fn barrier_wait<H: Home>(m: &Monitor<H>, deadline: Option<Instant>) -> Result<usize> {
    let mut arrived: Option<(u64, usize)> = None;
    let outcome = m
        .wait_until(deadline, |w| {
            if w[3] & 1 != 0 {
                return Some(Err(Error::BrokenBarrier));
            }
            match arrived {
                None => {
                    let index = w[1] as usize;
                    w[1] += 1;
                    if w[1] == w[0] {
                        w[1] = 0;
                        w[2] += 1;
                        w.wake();
                        return Some(Ok(index));
                    }
                    arrived = Some((w[2], index));
                    None
                }
                Some((generation, index)) if w[2] != generation => {
                    Some(if w[3] >> 1 > generation { Err(Error::BrokenBarrier) } else { Ok(index) })
                }
                Some(_) => None,
            }
        })
        .map_err(monitor_error)?;
    match outcome {
        Some(result) => result,
        None => {
            // Timed out: unless the barrier just filled up, break it.
            let (generation, index) = arrived.expect("timed out while waiting");
            m.with(|w| {
                if w[2] != generation && w[3] >> 1 <= generation {
                    Ok(index)
                } else {
                    w[3] |= 1;
                    w.wake();
                    Err(Error::BrokenBarrier)
                }
            })
            .map_err(monitor_error)?
        }
    }
}

fn barrier_abort<H: Home>(m: &Monitor<H>) -> Result<()> {
    m.with(|w| {
        w[3] |= 1;
        w.wake();
    })
    .map_err(monitor_error)
}

fn barrier_reset<H: Home>(m: &Monitor<H>) -> Result<()> {
    m.with(|w| {
        w[1] = 0;
        w[2] += 1;
        w[3] = w[2] << 1;
        w.wake();
    })
    .map_err(monitor_error)
}

/// A condition variable shared between processes, with its [`Lock`]
/// (Python's `multiprocessing.Condition`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Condition, Process, Value};
///
/// fn produce(cond: Condition, ready: Value<bool>) {
///     let _held = cond.lock().unwrap();
///     ready.set(true);
///     cond.notify_all().unwrap();
/// }
///
/// let cond = Condition::new().unwrap();
/// let ready = Value::new(false).unwrap();
/// let guard = cond.lock().unwrap();
/// let mut p = Process::new(produce, (cond.clone(), ready.clone()));
/// p.start().unwrap();
/// assert!(cond.wait_for(|| ready.get(), None).unwrap());
/// drop(guard);
/// p.join().unwrap();
/// # }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Condition {
    lock: Lock,
    cond: Arc<CondMemory>,
}

#[derive(Debug)]
struct CondMemory {
    map: Mapping,
}

impl CondMemory {
    /// The futex word notifications bump (see `sys::futex`: a pthread
    /// condvar would let a waiter that died jam every later notify).
    fn word(&self) -> &<Self as Waits>::U32 {
        // SAFETY: the mapping is at least a word long, page-aligned, and
        // lives as long as `self`; the word is only used atomically.
        unsafe { &*self.map.as_ptr().cast::<std::sync::atomic::AtomicU32>() }
    }
}

// SAFETY: a condition's memory holds no lock; it is only slept on.
unsafe impl Real for CondMemory {}

/// A condition's wait, over any home of its word (for models): `unlock`
/// lets go of the caller's lock, `relock` takes it again.
fn cond_wait<W: Waits>(
    home: &W,
    word: &W::U32,
    deadline: Option<Instant>,
    unlock: impl FnOnce() -> Result<()>,
    relock: impl FnOnce() -> Result<()>,
) -> Result<bool> {
    let slept = sleep_unlocked(home, word, deadline, unlock)?;
    // Taken again whatever happened, as Python does.
    relock()?;
    slept.map_err(|source| Error::Io { context: "wait on a condition", source })
}

impl Serialize for CondMemory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        crate::reduction::share::<S::Error>(&self.map)?.serialize(s)
    }
}

impl<'de> Deserialize<'de> for CondMemory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let map = Mapping::open(Handle::deserialize(d)?.into_owned_fd()).map_err(D::Error::custom)?;
        if map.len() < size_of::<std::sync::atomic::AtomicU32>() {
            return Err(D::Error::custom("shared memory too small for a condition"));
        }
        Ok(CondMemory { map })
    }
}

impl Condition {
    /// A condition with a lock of its own.
    pub fn new() -> Result<Self> {
        Condition::with_lock(Lock::new()?)
    }

    /// A condition over an existing lock.
    pub fn with_lock(lock: Lock) -> Result<Self> {
        // Fresh shared memory is zeroed: the word starts at 0.
        let map = Mapping::new("multiproc-cond", size_of::<std::sync::atomic::AtomicU32>())
            .map_err(|source| Error::Io { context: "shared memory for a condition", source })?;
        Ok(Condition { lock, cond: Arc::new(CondMemory { map }) })
    }

    /// Takes the lock until the guard is dropped.
    pub fn lock(&self) -> Result<LockGuard<'_>> {
        self.lock.lock()
    }

    /// The lock (for `acquire`/`release`).
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    /// Releases the lock, waits for a notification (or `timeout`), takes
    /// the lock again; false on timeout. The caller must hold the lock
    /// ([`Error::NotOwner`] otherwise).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let ptr = self.lock.core.ptr();
        let unlock = || {
            // SAFETY: the mutex lives in a mapping kept by `self`.
            match unsafe { mutex::unlock(ptr) } {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(Error::NotOwner),
                Err(source) => Err(Error::Io { context: "release a condition's lock", source }),
            }
        };
        let relock = || {
            // SAFETY: as above.
            unsafe { mutex::lock(ptr, None) }
                .map(drop)
                .map_err(|source| Error::Io { context: "take a condition's lock again", source })
        };
        cond_wait(&*self.cond, self.cond.word(), deadline(timeout), unlock, relock)
    }

    /// Waits until `predicate` holds (checked with the lock held), at most
    /// `timeout`; returns its last value.
    pub fn wait_for(&self, mut predicate: impl FnMut() -> bool, timeout: Option<Duration>) -> Result<bool> {
        let end = deadline(timeout);
        loop {
            if predicate() {
                return Ok(true);
            }
            let left = match end {
                None => None,
                Some(e) => match e.checked_duration_since(Instant::now()) {
                    Some(l) if !l.is_zero() => Some(l),
                    _ => return Ok(predicate()),
                },
            };
            self.wait(left)?;
        }
    }

    /// Wakes one waiter.
    pub fn notify(&self) -> Result<()> {
        self.cond.wake(self.cond.word(), false);
        Ok(())
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> Result<()> {
        self.cond.wake(self.cond.word(), true);
        Ok(())
    }
}

#[cfg(all(test, multiproc_loom))]
mod model;
