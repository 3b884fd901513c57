//! Python's `os` functions that multiprocessing programs use: `fork`,
//! `getpid`, `getppid`, `cpu_count`, `waitpid`.

use crate::Result;
use crate::error::Context as _;
use crate::popen::fork::{Forked, fork_locked};
use crate::runtime::{self, Identity};

/// Which side of [`fork`] this is (see there for an example).
///
/// ```
/// use multiproc::os::ForkResult;
/// let side = ForkResult::Parent { child: 42 };
/// assert!(matches!(side, ForkResult::Parent { child: 42 }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkResult {
    /// The original process; `child` is the new process's pid.
    Parent {
        /// The child's pid.
        child: i32,
    },
    /// The new process.
    Child,
}

/// Duplicates the calling process (`os.fork`): returns twice, once in the
/// parent with the child's pid and once in the child.
///
/// multiproc's own state is carried over consistently: in the child,
/// [`current_process`](crate::current_process) has the new pid, the
/// parent's children are not the child's, and
/// [`parent_process`](crate::parent_process) is the forking process.
/// Reap the child with [`waitpid`].
///
/// # Safety
/// In a multi-threaded parent only the calling thread exists in the child;
/// any lock another thread held at that moment (inside the allocator, stdout,
/// a `Mutex` of yours) stays locked forever there. The child must then
/// restrict itself to async-signal-safe work until it `exec`s or exits. In a
/// single-threaded program `fork` is safe.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::os::{self, ForkResult};
/// let parent = os::getpid();
/// // SAFETY: doctests run single-threaded here; the child exits at once.
/// match unsafe { os::fork() }.unwrap() {
///     ForkResult::Child => {
///         let code = if os::getppid() == parent { 7 } else { 1 };
///         std::process::exit(code);
///     }
///     ForkResult::Parent { child } => assert_eq!(os::waitpid(child).unwrap(), 7),
/// }
/// # }
/// ```
pub unsafe fn fork() -> Result<ForkResult> {
    let (name, daemon, identity) = {
        let rt = runtime::lock();
        (rt.me.name.clone(), rt.me.daemon, rt.me.identity.clone())
    };
    Ok(match fork_locked(|pid| Identity { name, pid, daemon, identity })? {
        Forked::Parent(child) => ForkResult::Parent { child },
        Forked::Child(_) => ForkResult::Child,
    })
}

/// Waits for the child `pid` to end and returns its exit code, encoded as
/// Python's `Process.exitcode` (the exit status, or minus the signal number).
///
/// ```
/// # #[multiproc::main] fn main() {
/// let child = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
/// assert_eq!(multiproc::os::waitpid(child.id() as i32).unwrap(), 3);
/// # }
/// ```
pub fn waitpid(pid: i32) -> Result<i32> {
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).context("waitpid")?;
    use nix::sys::wait::WaitStatus;
    Ok(match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => -(sig as i32),
        other => {
            return Err(crate::Error::Protocol(format!("waitpid({pid}) returned an unexpected status {other:?}")));
        }
    })
}

/// This process's pid.
///
/// ```
/// assert_eq!(multiproc::os::getpid(), std::process::id() as i32);
/// ```
pub fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// The parent's pid (that of the OS parent: a forkserver child's OS parent
/// is the forkserver; [`parent_process`](crate::parent_process) names the
/// process that asked for it).
///
/// ```
/// assert!(multiproc::os::getppid() > 0);
/// ```
pub fn getppid() -> i32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
}

/// The number of CPUs in the system (Python's `os.cpu_count()` and
/// `multiprocessing.cpu_count()`), whether or not this process may use them.
///
/// ```
/// assert!(multiproc::os::cpu_count() >= 1);
/// ```
pub fn cpu_count() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { process_cpu_count() }
}

/// The number of CPUs this process may run on, after affinity masks and
/// cgroup quotas (Python 3.13's `os.process_cpu_count()`). This is the right
/// default for a number of workers.
///
/// ```
/// assert!(multiproc::os::process_cpu_count() <= multiproc::os::cpu_count());
/// ```
pub fn process_cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
