//! The platform layer: the only place that talks to the kernel directly.
//!
//! Everything above this module works with owned file descriptors, frames and
//! exit codes; nothing above it names a syscall. Linux only for now (pidfds,
//! `PR_SET_PDEATHSIG`, `/proc/self/exe`).

pub(crate) mod barrier;
#[cfg(feature = "cluster")]
pub(crate) mod build_id;
pub(crate) mod frame;
pub(crate) mod futex;
pub(crate) mod medium;
#[cfg(all(test, multiproc_loom))]
pub(crate) mod model;
pub(crate) mod monitor;
pub(crate) mod mutex;
pub(crate) mod proc;
pub(crate) mod ring;
pub(crate) mod shm;

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// A connected pair of Unix stream sockets, close-on-exec.
pub(crate) fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)?)
}

/// A connected pair of Unix sequenced-packet sockets, close-on-exec.
/// Used where each message must arrive whole (control and status messages).
pub(crate) fn packet_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

/// What to wait for on a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    Read,
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    Write,
    ReadWrite,
}

/// Waits until one of `fds` is ready for what was asked (a hang-up or error
/// counts as ready), or `timeout` passes. Returns `(readable, writable)` per
/// descriptor.
pub(crate) fn poll(fds: &[(BorrowedFd<'_>, Interest)], timeout: Option<Duration>) -> io::Result<Vec<(bool, bool)>> {
    let mut pollfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(fd, i)| {
            let flags = match i {
                Interest::Read => PollFlags::IN,
                Interest::Write => PollFlags::OUT,
                Interest::ReadWrite => PollFlags::IN | PollFlags::OUT,
            };
            PollFd::new(fd, flags)
        })
        .collect();
    let timeout = timeout
        .map(|d| Timespec { tv_sec: d.as_secs().min(i64::MAX as u64) as i64, tv_nsec: i64::from(d.subsec_nanos()) });
    loop {
        match rustix::event::poll(&mut pollfds, timeout.as_ref()) {
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pollfds
        .iter()
        .map(|p| {
            let r = p.revents();
            let trouble = r.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL);
            (trouble || r.contains(PollFlags::IN), trouble || r.contains(PollFlags::OUT))
        })
        .collect())
}

/// Fills `buf` from the kernel's random source.
#[cfg(any(feature = "managers", feature = "cluster"))]
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Hands the heap's free memory back to the system (glibc keeps what big
/// messages grew, raising its own thresholds as it goes). A no-op where the
/// C library has no such call.
pub(crate) fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only touches the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Asks that the 2 MiB-aligned middle of `[ptr, ptr + len)`, memory of
/// ours not yet touched, fault in as huge pages (where the system lets a
/// program ask: transparent huge pages in `madvise` or `always` mode).
/// Only the advice changes; a system without it refuses and nothing
/// happens.
pub(crate) fn advise_huge(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) & !(HUGE - 1);
    if end > start {
        // SAFETY: the range lies inside the caller's allocation and is
        // aligned; advice changes how pages are backed, never their bytes.
        let _ = unsafe {
            rustix::mm::madvise(start as *mut std::ffi::c_void, end - start, rustix::mm::Advice::LinuxHugepage)
        };
    }
}

/// Vectors at least this many bytes long are advised into huge pages.
pub(crate) const HUGE_AT: usize = 4 << 20;

/// An empty vector with room for `cap` values, advised into huge pages
/// when that room is long (a fresh 8 MiB of 4 KiB pages is 2,048 page
/// faults on first touch; of 2 MiB pages, four).
pub(crate) fn vec_with_capacity<T>(cap: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(cap);
    let bytes = cap.saturating_mul(size_of::<T>());
    if bytes >= HUGE_AT {
        advise_huge(v.as_mut_ptr().cast(), bytes);
    }
    v
}

/// Makes `fd` non-blocking.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::io::ioctl_fionbio(fd, true)?)
}

/// Reads what a non-blocking `fd` has: `Some(0)` at its end, `None` when
/// nothing is there yet.
pub(crate) fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Ok(n) => return Ok(Some(n)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes what a non-blocking `fd` takes now: `None` when it takes nothing
/// yet. A reader that has gone is `ErrorKind::BrokenPipe`.
pub(crate) fn write_some(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<Option<usize>> {
    loop {
        match rustix::io::write(fd, buf) {
            Ok(n) => return Ok(Some(n)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the peer of a connected stream socket has closed its side (or
/// the connection broke): a caller that is gone. Never waits.
#[cfg(feature = "managers")]
pub(crate) fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::RDHUP)];
    match rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })) {
        Ok(0) => false,
        Ok(_) => fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        Err(_) => false,
    }
}

/// Asks the kernel to acknowledge what arrives on this TCP socket at once,
/// until its next delayed acknowledgement. A peer that writes two small
/// messages in a row without `TCP_NODELAY` (Python's `Connection`) holds
/// the second back until the first is acknowledged (Nagle), and a delayed
/// acknowledgement makes that 40 ms; asked before each read, it is never
/// delayed. Errors are ignored: it only changes timing.
#[cfg(feature = "managers")]
pub(crate) fn quick_ack(fd: BorrowedFd<'_>) {
    let _ = rustix::net::sockopt::set_tcp_quickack(fd, true);
}

/// Receives from a socket without blocking, trying for up to `spin`:
/// `Some(n)` as soon as data (or the end, `n == 0`) is there, `None` if
/// nothing came in that time. For request/reply peers whose answer usually
/// comes within microseconds: a blocking read would cost a wake-up of the
/// thread, which on a small VM is tens of microseconds.
#[cfg(feature = "managers")]
pub(crate) fn recv_spinning(fd: BorrowedFd<'_>, buf: &mut [u8], spin: Duration) -> io::Result<Option<usize>> {
    spin_until(Instant::now() + spin, || match rustix::net::recv(fd, &mut *buf, rustix::net::RecvFlags::DONTWAIT) {
        Ok((n, _)) => Some(Ok(n)),
        Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => None,
        Err(e) => Some(Err(e.into())),
    })
    .transpose()
}

/// Looks with `look` until it finds something or `until` passes (`None`),
/// yielding between looks rather than pausing: when more threads wait like
/// this than there are cores, the one whose turn it is gets the core. What
/// every "look a moment before sleeping" in the crate does: on a VM whose
/// idle cores halt, being woken costs tens of microseconds, more than most
/// waits for an answer.
pub(crate) fn spin_until<T>(until: Instant, look: impl FnMut() -> Option<T>) -> Option<T> {
    spin_until_paused(until, Duration::ZERO, look)
}

/// As [`spin_until`], but for its first `pause` looks with the processor's
/// pause between looks instead of a yield (a system call): for two parties
/// that answer each other within microseconds, one on each core.
pub(crate) fn spin_until_paused<T>(until: Instant, pause: Duration, mut look: impl FnMut() -> Option<T>) -> Option<T> {
    let mut pause_until = if pause.is_zero() { None } else { Some(Instant::now() + pause) };
    let mut turn = 0u32;
    loop {
        turn = turn.wrapping_add(1);
        if let Some(found) = look() {
            return Some(found);
        }
        // While pausing, the clock only now and then: a look at it costs as
        // much as a look, and delays seeing what comes as much.
        if pause_until.is_some() && !turn.is_multiple_of(8) {
            pause_turn(turn);
            continue;
        }
        let now = Instant::now();
        if now >= until {
            return None;
        }
        if pause_until.is_some_and(|p| now < p) {
            pause_turn(turn);
        } else {
            pause_until = None;
            std::thread::yield_now();
        }
    }
}

/// One turn of waiting between looks, pausing: the processor's pause, and
/// every 32nd turn (a microsecond or two) a yield. Two parties that spin
/// for each other do well on two cores; when the scheduler has put them on
/// one (it did, for tens of milliseconds after a busy stretch), pausing
/// alone would keep the other from running until the pause ends, and the
/// yields give it the core (round trips: 26 µs without them, in such
/// stretches).
fn pause_turn(turn: u32) {
    if turn.is_multiple_of(32) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// The processor this thread runs on now, if the C library can tell
/// cheaply (glibc reads it from the thread's `rseq` area: no system call).
pub(crate) fn current_cpu() -> Option<u32> {
    // SAFETY: `sched_getcpu` has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}

/// Moves the calling thread off the processor it runs on now, when its
/// affinity allows another, and gives it back the affinity it had: a
/// thread that finds the party it spins for on its own processor moves
/// instead of taking turns with it. (Taking turns, the two look like one
/// busy processor to the scheduler and stay together: a round trip then
/// costs two context switches, 4 µs instead of 0.7.) False when it could
/// not move: one processor allowed, or the calls failed.
pub(crate) fn move_off_this_cpu() -> bool {
    let Some(cpu) = current_cpu().map(|c| c as usize) else { return false };
    let Ok(allowed) = rustix::thread::sched_getaffinity(None) else { return false };
    if allowed.count() < 2 || !allowed.is_set(cpu) {
        return false;
    }
    let mut elsewhere = allowed;
    elsewhere.unset(cpu);
    // The kernel moves a thread off a processor it may no longer use
    // before the call returns.
    let moved = rustix::thread::sched_setaffinity(None, &elsewhere).is_ok();
    let _ = rustix::thread::sched_setaffinity(None, &allowed);
    moved
}

/// An eventfd: a counter other threads bump to wake a thread in `poll`.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)?)
}

/// Wakes the thread polling `fd` (an eventfd).
pub(crate) fn eventfd_bump(fd: BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets an eventfd after a wake-up.
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; 8];
    let _ = rustix::io::read(fd, &mut buf);
}

/// Waits until one of `fds` is readable (or hung up), or `timeout` passes.
/// Returns one flag per descriptor; all false means the time ran out.
pub(crate) fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let fds: Vec<_> = fds.iter().map(|fd| (*fd, Interest::Read)).collect();
    Ok(poll(&fds, timeout)?.into_iter().map(|(r, _)| r).collect())
}

/// The poll timeout left until `deadline`: `Some(None)` to wait without
/// limit, `Some(Some(d))` to wait at most `d`, `None` once it has passed.
pub(crate) fn time_left(deadline: Option<Instant>) -> Option<Option<Duration>> {
    match deadline {
        None => Some(None),
        Some(d) => d.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()).map(Some),
    }
}

/// True when this code runs on the process's main thread. A child's
/// parent-death signal fires when the *thread* that created it exits, so it is
/// only a faithful "parent died" signal when that thread is the main one.
pub(crate) fn on_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

#[cfg(all(test, not(multiproc_loom)))]
mod tests {
    /// A thread allowed more than one processor leaves the one it was on
    /// and keeps the affinity it had; one allowed a single processor stays.
    #[test]
    fn a_thread_moves_off_its_processor_and_keeps_its_affinity() {
        std::thread::spawn(|| {
            let allowed = rustix::thread::sched_getaffinity(None).unwrap();
            if allowed.count() >= 2 {
                let before = super::current_cpu().unwrap();
                assert!(super::move_off_this_cpu());
                assert_ne!(super::current_cpu().unwrap(), before, "still on processor {before}");
                assert!(rustix::thread::sched_getaffinity(None).unwrap() == allowed, "its affinity changed");
            }
            let mut one = rustix::thread::CpuSet::new();
            one.set(super::current_cpu().unwrap() as usize);
            rustix::thread::sched_setaffinity(None, &one).unwrap();
            assert!(!super::move_off_this_cpu(), "nowhere else to go");
            assert!(rustix::thread::sched_getaffinity(None).unwrap() == one);
        })
        .join()
        .unwrap();
    }
}
