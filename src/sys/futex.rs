//! Waiting on a word in shared memory: the sleeping half of our condition
//! variables.
//!
//! Process-shared pthread condition variables are not robust: a process
//! killed while it waits stays counted in the condvar's groups, and the
//! next signal or broadcast can wait for it forever. A futex on a sequence
//! word has no such memory: a waiter reads the word, checks its condition,
//! and sleeps only while the word still holds what it read; a waker changes
//! the state, bumps the word and wakes sleepers. A dead sleeper is simply
//! never woken.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use rustix::thread::futex;

/// Sleeps while `seq` still holds `seen`, until woken or `deadline`.
/// Returns false only when the deadline passed; true may be spurious, so
/// callers check their condition again either way.
pub(crate) fn wait(seq: &AtomicU32, seen: u32, deadline: Option<Instant>) -> io::Result<bool> {
    let timeout = match deadline {
        None => None,
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(futex::Timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            }),
            _ => return Ok(false),
        },
    };
    // Not FUTEX_PRIVATE: the word is shared between processes.
    match futex::wait(seq, futex::Flags::empty(), seen, timeout.as_ref()) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(true),
        Err(rustix::io::Errno::TIMEDOUT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Bumps `seq` and wakes one sleeper on it, or all.
pub(crate) fn wake(seq: &AtomicU32, all: bool) {
    seq.fetch_add(1, Ordering::Release);
    let n = if all { i32::MAX as u32 } else { 1 };
    // Waking cannot fail on a valid, aligned word; a failure would only
    // mean nobody is woken, which a waiter's deadline or recheck covers.
    let _ = futex::wake(seq, futex::Flags::empty(), n);
}
