//! A robust, process-shared pthread mutex living in shared memory: the
//! kernel tracks its owner, so when the owner dies the next locker learns
//! it (`EOWNERDEAD`) instead of waiting forever.

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How a lock was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Got {
    Clean,
    OwnerDied,
}

fn check(rc: i32) -> io::Result<()> {
    if rc == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(rc)) }
}

/// Initialises a mutex in place.
///
/// # Safety
/// `m` points to writable, suitably aligned shared memory that no process
/// uses as a mutex yet.
pub(crate) unsafe fn init(m: *mut libc::pthread_mutex_t, recursive: bool) -> io::Result<()> {
    // SAFETY: attr is initialised before use and destroyed after; `m` is
    // valid per the caller.
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        check(libc::pthread_mutexattr_init(&mut attr))?;
        let result = (|| {
            check(libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED))?;
            check(libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST))?;
            let kind = if recursive { libc::PTHREAD_MUTEX_RECURSIVE } else { libc::PTHREAD_MUTEX_ERRORCHECK };
            check(libc::pthread_mutexattr_settype(&mut attr, kind))?;
            check(libc::pthread_mutex_init(m, &attr))
        })();
        libc::pthread_mutexattr_destroy(&mut attr);
        result
    }
}

/// Locks, waiting at most `timeout` (`None`: forever; zero: do not wait).
/// `Ok(None)` when the time ran out.
///
/// # Safety
/// `m` points to a mutex initialised by [`init`], mapped in this process.
pub(crate) unsafe fn lock(m: *mut libc::pthread_mutex_t, timeout: Option<Duration>) -> io::Result<Option<Got>> {
    // Critical sections on our shared mutexes are a few stores long, so a
    // holder on another core lets go within nanoseconds: a short spin saves
    // the futex round trip (a few microseconds) that blocking would cost.
    if timeout.is_none_or(|d| !d.is_zero()) {
        for _ in 0..SPIN_TRIES {
            // SAFETY: `m` is a valid initialised mutex per the caller.
            match unsafe { libc::pthread_mutex_trylock(m) } {
                libc::EBUSY => std::hint::spin_loop(),
                // SAFETY: `rc` came from locking `m` just now.
                rc => return unsafe { settle(m, rc, timeout) },
            }
        }
    }
    if timeout.is_some_and(|d| d.is_zero()) {
        // SAFETY: `m` is a valid initialised mutex per the caller.
        return unsafe { settle(m, libc::pthread_mutex_trylock(m), timeout) };
    }
    // Blocking, in slices: the kernel hands a dead *holder*'s mutex on, but
    // when a waiter woken by an unlock is killed before it takes the mutex,
    // the wake-up dies with it and the other waiters sleep on beside a free
    // mutex. Each slice ends with a fresh try.
    let deadline = timeout.map(|d| Instant::now().checked_add(d).unwrap_or_else(far_future));
    loop {
        let (until, last) = super::futex::next_slice(deadline);
        let at = SystemTime::now() + until.saturating_duration_since(Instant::now());
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ts = libc::timespec { tv_sec: since.as_secs() as libc::time_t, tv_nsec: since.subsec_nanos() as _ };
        // SAFETY: `m` is a valid initialised mutex per the caller.
        let rc = unsafe { libc::pthread_mutex_timedlock(m, &ts) };
        if rc == libc::ETIMEDOUT && !last {
            continue;
        }
        // SAFETY: as above.
        return unsafe { settle(m, rc, timeout) };
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(1 << 32)
}

/// How many times [`lock`] tries before it blocks.
const SPIN_TRIES: u32 = 100;

/// What a lock call's return code means.
///
/// # Safety
/// As for [`lock`]; `rc` came from locking `m` on this thread.
unsafe fn settle(m: *mut libc::pthread_mutex_t, rc: i32, timeout: Option<Duration>) -> io::Result<Option<Got>> {
    match rc {
        0 => Ok(Some(Got::Clean)),
        libc::EOWNERDEAD => {
            // We hold it now; mark it usable again and tell the caller.
            // SAFETY: we are the owner, as EOWNERDEAD says.
            check(unsafe { libc::pthread_mutex_consistent(m) })?;
            Ok(Some(Got::OwnerDied))
        }
        libc::EBUSY | libc::ETIMEDOUT => Ok(None),
        // This thread holds it (a non-recursive mutex): taken, for anyone
        // who would not wait; an error for one who would wait forever.
        libc::EDEADLK if timeout.is_some() => Ok(None),
        other => Err(io::Error::from_raw_os_error(other)),
    }
}

/// Unlocks; `EPERM` when the calling thread is not the owner.
///
/// # Safety
/// As for [`lock`].
pub(crate) unsafe fn unlock(m: *mut libc::pthread_mutex_t) -> io::Result<()> {
    // SAFETY: `m` is a valid initialised mutex per the caller.
    check(unsafe { libc::pthread_mutex_unlock(m) })
}

/// Lets go of `m` before its memory is unmapped, if this process holds it
/// through that memory; false if another thread of this process holds it,
/// in which case the memory must stay mapped.
///
/// glibc links the robust mutexes a thread holds into a list through the
/// mutexes themselves (the kernel walks it when the thread dies). A held
/// mutex whose memory is unmapped leaves that list pointing at nothing, and
/// the thread's next robust lock writes there. The owner is found in the
/// mutex's futex word, the kernel's robust-futex ABI: the owner's thread id
/// in the low 30 bits (glibc keeps that word first in `pthread_mutex_t`).
///
/// # Safety
/// As for [`lock`]; nothing else uses this mapping of `m` afterwards.
pub(crate) unsafe fn release_before_unmap(m: *mut libc::pthread_mutex_t) -> bool {
    const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
    // SAFETY: the mutex's first word is its futex word, read atomically as
    // the kernel and glibc do.
    let word = unsafe { &*m.cast::<std::sync::atomic::AtomicU32>() };
    let owner = (word.load(std::sync::atomic::Ordering::Acquire) & FUTEX_TID_MASK) as libc::pid_t;
    if owner == 0 {
        return true;
    }
    // SAFETY: gettid takes nothing.
    if owner == unsafe { libc::gettid() } {
        // As often as a recursive holder took it.
        // SAFETY: as for `lock`; we are the owner.
        while unsafe { unlock(m) }.is_ok() {}
        return true;
    }
    // Another process's thread: its own list points into its own mapping.
    // SAFETY: tgkill with signal 0 only checks that `owner` is a thread of
    // this process.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), owner, 0) != 0 }
}
