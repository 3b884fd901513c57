//! Waiting on a word in shared memory: the sleeping half of our condition
//! variables.
//!
//! Process-shared pthread condition variables are not robust: a process
//! killed while it waits stays counted in the condvar's groups, and the
//! next signal or broadcast can wait for it forever. A futex on a sequence
//! word has no such memory: a waiter reads the word, checks its condition,
//! and sleeps only while the word still holds what it read; a waker changes
//! the state, bumps the word and wakes sleepers. A dead sleeper is simply
//! never woken; a wake-up that went to a process killed before it acted is
//! noticed by the other sleepers within [`LOOK_AGAIN`].

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::futex;

/// How long a sleeper sleeps before it looks again by itself. Wakers
/// change the word before they wake anyone, so a sleeper whose wake-up went
/// to a process killed before it acted (a futex or a pthread mutex wakes
/// one sleeper, and the kernel does not hand the wake-up on when that
/// sleeper dies) still sees the change within this time.
pub(crate) const LOOK_AGAIN: Duration = Duration::from_millis(50);

/// The end of the next slice of a sleep until `deadline` (`None`:
/// forever): [`LOOK_AGAIN`] from now, or the deadline if sooner, and
/// whether that slice is the last.
pub(crate) fn next_slice(deadline: Option<Instant>) -> (Instant, bool) {
    let look = Instant::now() + LOOK_AGAIN;
    match deadline {
        Some(d) if d <= look => (d, true),
        _ => (look, false),
    }
}

/// Sleeps while `seq` still holds `seen`, until woken or `deadline`.
/// Returns false only when the deadline passed; true may be spurious, so
/// callers check their condition again either way.
pub(crate) fn wait(seq: &AtomicU32, seen: u32, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let (until, last) = next_slice(deadline);
        // The kernel compares the word on entry: a change made while we
        // slept through a lost wake-up ends the wait at once.
        if wait_once(seq, seen, until)? {
            return Ok(true);
        }
        if last {
            return Ok(false);
        }
    }
}

fn wait_once(seq: &AtomicU32, seen: u32, until: Instant) -> io::Result<bool> {
    let Some(left) = until.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) else {
        return Ok(false);
    };
    let timeout = futex::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
    // Not FUTEX_PRIVATE: the word is shared between processes.
    match futex::wait(seq, futex::Flags::empty(), seen, Some(&timeout)) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(true),
        Err(rustix::io::Errno::TIMEDOUT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Bumps `seq` and wakes one sleeper on it, or all.
pub(crate) fn wake(seq: &AtomicU32, all: bool) {
    seq.fetch_add(1, Ordering::Release);
    wake_sleepers(seq, if all { i32::MAX as u32 } else { 1 });
}

/// Wakes one sleeper on `word`, leaving the word as it is: for a protocol
/// whose waker has changed the word itself (the pool's mailbox).
pub(crate) fn wake_one(word: &AtomicU32) {
    wake_sleepers(word, 1);
}

fn wake_sleepers(word: &AtomicU32, n: u32) {
    // Waking cannot fail on a valid, aligned word; a failure would only
    // mean nobody is woken, which a waiter's deadline or recheck covers.
    let _ = futex::wake(word, futex::Flags::empty(), n);
}
