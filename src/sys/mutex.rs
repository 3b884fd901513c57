//! A robust, process-shared pthread mutex living in shared memory: the
//! kernel tracks its owner, so when the owner dies the next locker learns
//! it (`EOWNERDEAD`) instead of waiting forever.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    // SAFETY: `m` is a valid initialised mutex per the caller.
    let rc = unsafe {
        match timeout {
            None => libc::pthread_mutex_lock(m),
            Some(d) if d.is_zero() => libc::pthread_mutex_trylock(m),
            Some(d) => {
                let deadline =
                    SystemTime::now().checked_add(d).unwrap_or(SystemTime::now() + Duration::from_secs(1 << 32));
                let since = deadline.duration_since(UNIX_EPOCH).unwrap_or_default();
                let ts = libc::timespec { tv_sec: since.as_secs() as libc::time_t, tv_nsec: since.subsec_nanos() as _ };
                libc::pthread_mutex_timedlock(m, &ts)
            }
        }
    };
    // SAFETY: as above.
    unsafe { settle(m, rc, timeout) }
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
