//! The guard of a remote job: `multiproc __run-guard PARENT_PID ARGV...`.
//!
//! A worker may be SIGKILLed mid-job; its job must not live on and run a
//! second time beside the rerun elsewhere. SIGKILL cannot be caught, and
//! the kernel's parent-death signal reaches one process, not the job's
//! children (a `sleep &` in the script). So each remote job runs under this
//! small process, the leader of the job's process group: it asks for SIGTERM
//! when its parent dies, and on SIGTERM (that, a timeout, a cancel) kills
//! its whole group. Otherwise it waits for the job and ends as the job did.

use std::ffi::OsString;

use nix::sys::signal::{SigSet, Signal};

/// The argv[1] that marks a guard.
pub const FLAG: &str = "__run-guard";

/// Runs the guard; never returns.
pub fn main(args: &[OsString]) -> ! {
    let (Some(parent), Some(program)) = (args.first().and_then(|p| p.to_str()?.parse::<i32>().ok()), args.get(1))
    else {
        eprintln!("multiproc {FLAG}: PARENT_PID PROGRAM [ARGS...]");
        std::process::exit(255);
    };
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.add(Signal::SIGINT);
    if term.thread_block().is_err() {
        std::process::exit(255);
    }
    // SAFETY: prctl with an integer argument.
    let asked = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) };
    // SAFETY: getppid has no preconditions.
    if asked != 0 || unsafe { libc::getppid() } != parent {
        // The parent is gone already (or cannot be watched): run nothing.
        std::process::exit(137);
    }
    std::thread::spawn(move || {
        if term.wait().is_ok() {
            // SAFETY: killpg on our own group (we lead it), us included.
            unsafe { libc::killpg(0, libc::SIGKILL) };
        }
    });
    let status = match std::process::Command::new(program).args(&args[2..]).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("multiproc run: {}: {e}", program.to_string_lossy());
            std::process::exit(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        // End as the job did, so the outcome names its signal.
        // SAFETY: restoring the default action and raising a signal at
        // ourselves; SIGTERM/SIGINT are unblocked for that alone.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(signal);
        }
    }
    std::process::exit(status.code().unwrap_or(255));
}
