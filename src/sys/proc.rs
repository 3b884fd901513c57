//! Processes at the syscall level: pidfds, reaping, signals, `posix_spawn` of
//! our own executable, parent-death protection.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;

use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};

/// Python's encoding of how a process ended: the exit status, or minus the
/// number of the signal that killed it.
pub(crate) type ExitCode = i32;

/// Opens a pidfd: a descriptor that names one process for its whole life, so
/// waiting and signalling never hit a recycled pid.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Reaps the child behind `pidfd` if it has ended; `None` while it runs.
pub(crate) fn try_reap_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitCode>> {
    waitid_pidfd(pidfd, WaitIdOptions::EXITED | WaitIdOptions::NOHANG)
}

/// How the child behind `pidfd` ended, if it has, without reaping it (its
/// zombie stays for whoever reaps it).
pub(crate) fn peek_exit_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<ExitCode>> {
    waitid_pidfd(pidfd, WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT)
}

fn waitid_pidfd(pidfd: BorrowedFd<'_>, options: WaitIdOptions) -> io::Result<Option<ExitCode>> {
    let status = loop {
        match rustix::process::waitid(WaitId::PidFd(pidfd), options) {
            Err(Errno::INTR) => continue,
            other => break other?,
        }
    };
    Ok(status.and_then(|s| exit_code(&s)))
}

fn exit_code(status: &WaitIdStatus) -> Option<ExitCode> {
    if let Some(code) = status.exit_status() { Some(code) } else { status.terminating_signal().map(|sig| -sig) }
}

/// Sends `signal` to the process behind `pidfd`. A process that has already
/// ended (`ESRCH`) is not an error: Python's `terminate` is a no-op then too.
pub(crate) fn signal_pidfd(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    let sig = Signal::from_named_raw(signal)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("unknown signal {signal}")))?;
    match rustix::process::pidfd_send_signal(pidfd, sig) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` by pid, for the rare case where no pidfd could be opened.
pub(crate) fn signal_pid(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) { Ok(()) } else { Err(err) }
}

/// Sends `signal` to every process in group `pgid`; a group that is gone
/// (`ESRCH`) is not an error.
pub(crate) fn signal_group(pgid: i32, signal: i32) -> io::Result<()> {
    signal_pid(-pgid, signal)
}

/// Every process descended from `pid` now, found by the parent links in
/// `/proc` (children first, then theirs, ...). A process that left the tree
/// (reparented when its parent died) is not found; one started during the
/// walk may be missed.
pub(crate) fn descendants(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for entry in dir.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // The name (field 2) is in parentheses and may hold anything,
        // spaces and ')' too: the fields after the last ')' are plain.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok()) {
            parents.push((child, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(parents.iter().filter(|&&(_, p)| p == parent).map(|&(c, _)| c));
        i += 1;
    }
    found.remove(0);
    found
}

/// Makes the calling process the leader of a new session (and process
/// group). Async-signal-safe: fit for between fork and exec.
pub(crate) fn new_session() -> io::Result<()> {
    rustix::process::setsid().map(drop).map_err(io::Error::from)
}

/// Asks for SIGKILL when the parent goes, and goes now if it is already
/// gone (it may have died before the request). Async-signal-safe: fit for
/// between fork and exec.
pub(crate) fn die_with_parent(parent: rustix::process::Pid) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid() != Some(parent) {
        // SAFETY: _exit ends this forked child at once, running nothing of
        // the parent's that the fork copied.
        unsafe { libc::_exit(137) }
    }
    Ok(())
}

/// The name of a signal, such as `SIGKILL`.
pub(crate) fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

/// True once the process behind `pidfd` has ended (it need not be our child).
pub(crate) fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    super::poll_readable(&[pidfd], Some(std::time::Duration::ZERO)).map(|r| r[0]).unwrap_or(false)
}

/// Asks the kernel to SIGKILL us when the thread that created us exits.
pub(crate) fn kill_me_when_parent_dies() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?)
}

/// Ignores SIGINT and SIGTERM (a process that must outlive a Ctrl-C to
/// its group long enough to clean up).
pub(crate) fn ignore_stop_signals() {
    // SAFETY: installing SIG_IGN has no handler code to race with.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
}

/// Ends this process now: no destructors, no at-exit handlers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Ignores SIGPIPE, as Rust's own `main` does, so that writing to a closed
/// pipe is an error instead of a silent death.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN has no handler code to race with.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Starts a fresh copy of the running executable with `posix_spawn`.
///
/// `args` follow argv[0]; `fds` are `(source, target)` pairs: the child gets
/// `source` as descriptor number `target`, everything else close-on-exec
/// stays behind. The child starts with no signals blocked.
pub(crate) fn spawn_self(args: &[&str], fds: &[(BorrowedFd<'_>, RawFd)]) -> io::Result<i32> {
    let mut actions = PosixSpawnFileActions::init()?;
    // dup2(fd, fd) would leave close-on-exec set, and an earlier dup2 could
    // overwrite a later source; so move every source above all targets first.
    let top = fds.iter().map(|&(_, t)| t).max().unwrap_or(0);
    let mut lifted = Vec::with_capacity(fds.len());
    for &(src, target) in fds {
        let fd = rustix::io::fcntl_dupfd_cloexec(src, top + 1)?;
        lifted.push((fd, target));
    }
    for (fd, target) in &lifted {
        actions.add_dup2(fd.as_raw_fd(), *target)?;
    }
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_sigmask(&nix::sys::signal::SigSet::empty())?;
    attr.set_flags(PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK)?;

    let argv0 = std::env::args_os().next().unwrap_or_else(|| OsString::from("multiproc-child"));
    let mut argv = vec![CString::new(argv0.into_vec()).unwrap_or_else(|_| c"multiproc-child".to_owned())];
    for a in args {
        argv.push(CString::new(*a).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))?);
    }
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    let pid = nix::spawn::posix_spawn(c"/proc/self/exe", &actions, &attr, &argv, &env)?;
    drop(lifted);
    Ok(pid.as_raw())
}

/// Takes ownership of a descriptor number handed to us at start-up.
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process.
pub(crate) unsafe fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// This process's limit on open descriptors (the soft one).
pub(crate) fn open_files_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Counts this process's open descriptors (for leak checks and tests).
pub(crate) fn open_fd_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count().saturating_sub(1))
}

/// Set by SIGTERM or SIGINT once [`stop_signals_set_flag`] was called.
#[cfg(feature = "cluster")]
static STOP_SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(feature = "cluster")]
extern "C" fn on_stop_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// From now on SIGTERM and SIGINT, whichever thread they reach, only set
/// the returned flag (for a process that must stop in its own time, as a
/// cluster worker handing its tasks back). Programs it execs start with
/// the default actions again.
#[cfg(feature = "cluster")]
pub(crate) fn stop_signals_set_flag() -> io::Result<&'static std::sync::atomic::AtomicBool> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an
        // atomic; SA_RESTART keeps interrupted system calls going.
        let r = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(&STOP_SIGNALLED)
}
