//! Asymmetric fences between processes: a cheap one for the side that runs
//! often (a queue's put and get) and a dear one for the side that runs
//! rarely (a waiter about to sleep).
//!
//! A waker stores "there is news" and then looks whether anyone sleeps; a
//! sleeper counts itself and then looks for news. Each side needs its store
//! ordered before its load, or both can miss each other. A full fence on
//! every put costs as much as the rest of the put; instead the sleeper asks
//! the kernel (`membarrier`, global expedited) to run a full fence on every
//! CPU running a registered process, which orders the wakers' accesses for
//! them. Wakers then need only keep the compiler from reordering.
//!
//! Registration belongs to a process image and a forked child does not
//! inherit it, so a fork handler forgets it in the child, which registers
//! again on first use. Where the kernel lacks the call, both sides use full
//! fences.

use std::sync::Once;
use std::sync::atomic::{AtomicU8, Ordering, compiler_fence, fence};

use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};

const UNKNOWN: u8 = 0;
/// This process is registered: wakers need only a compiler fence.
const REGISTERED: u8 = 1;
/// No membarrier here: full fences on both sides.
const UNSUPPORTED: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The waker's fence: orders this thread's earlier stores before its later
/// loads, as seen by a thread that passed [`heavy`].
pub(crate) fn light() {
    match STATE.load(Ordering::Relaxed) {
        REGISTERED => compiler_fence(Ordering::SeqCst),
        UNSUPPORTED => fence(Ordering::SeqCst),
        _ => {
            setup();
            light()
        }
    }
}

/// The sleeper's fence: after it, any waker's store before its
/// [`light`] fence is visible here, or the waker's load after it sees this
/// thread's earlier stores. False if the kernel refused, in which case a
/// waker may have missed us and the caller should look again now and then.
pub(crate) fn heavy() -> bool {
    fence(Ordering::SeqCst);
    // Registered or not, this process may have registered wakers elsewhere
    // once the kernel has the call.
    if supported() { membarrier(MembarrierCommand::GlobalExpedited).is_ok() } else { true }
}

fn supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let query = membarrier_query();
        query.contains_command(MembarrierCommand::GlobalExpedited)
            && query.contains_command(MembarrierCommand::RegisterGlobalExpedited)
    })
}

fn setup() {
    static FORK_HANDLER: Once = Once::new();
    FORK_HANDLER.call_once(|| {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe, as a fork child handler must be.
        unsafe { libc::pthread_atfork(None, None, Some(forget)) };
    });
    let registered = supported() && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok();
    STATE.store(if registered { REGISTERED } else { UNSUPPORTED }, Ordering::SeqCst);
}

extern "C" fn forget() {
    STATE.store(UNKNOWN, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_forgets_in_a_forked_child() {
        light();
        let state = STATE.load(Ordering::SeqCst);
        assert!(state == REGISTERED || state == UNSUPPORTED);
        assert!(heavy());
        // SAFETY: the child only reads an atomic and exits.
        match unsafe { libc::fork() } {
            0 => {
                let code = if STATE.load(Ordering::SeqCst) == UNKNOWN { 0 } else { 1 };
                // SAFETY: leaving the forked child without running the
                // parent's destructors or test harness.
                unsafe { libc::_exit(code) }
            }
            pid => {
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                // SAFETY: waiting for the child just forked.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child kept the registration");
            }
        }
    }
}
