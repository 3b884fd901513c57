//! Per-process state: who this process is, who its parent is, which
//! children it has not reaped yet, and what happens when it exits.
//!
//! All of it lives behind one lock, and every `fork` we make happens while
//! that lock is held, so a forked child never inherits it half-updated.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::Result;
use crate::error::Context as _;
use crate::popen::forkserver::Client as ForkserverClient;
use crate::sys::proc::{self as sysproc, ExitCode};

/// Who the current process is.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub name: String,
    pub pid: i32,
    pub daemon: bool,
    pub identity: Vec<u32>,
}

/// The process that started us.
#[derive(Debug, Clone)]
pub(crate) struct ParentRecord {
    pub pid: i32,
    pub name: String,
    pub pidfd: Option<Arc<OwnedFd>>,
}

pub(crate) struct Runtime {
    pub me: Identity,
    pub parent: Option<ParentRecord>,
    /// Numbers the next child (Python's `_counter`).
    pub counter: u32,
    /// Started children not yet reaped (Python's `_children`).
    pub children: Vec<Arc<ChildShared>>,
    self_pidfd: Option<Arc<OwnedFd>>,
    pub forkserver: Option<ForkserverClient>,
    exit_hook: bool,
}

static RUNTIME: LazyLock<Mutex<Runtime>> = LazyLock::new(|| {
    Mutex::new(Runtime {
        me: Identity {
            name: "MainProcess".into(),
            pid: rustix::process::getpid().as_raw_nonzero().get(),
            daemon: false,
            identity: Vec::new(),
        },
        parent: None,
        counter: 0,
        children: Vec::new(),
        self_pidfd: None,
        forkserver: None,
        exit_hook: false,
    })
});

/// Locks the runtime. A panic elsewhere never makes it unusable.
pub(crate) fn lock() -> MutexGuard<'static, Runtime> {
    RUNTIME.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Runtime {
    /// A pidfd of this very process, to hand to children as their view of us.
    pub fn self_pidfd(&mut self) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = &self.self_pidfd {
            return Ok(fd.clone());
        }
        let fd = Arc::new(sysproc::pidfd_open(self.me.pid).context("pidfd_open of this process")?);
        self.self_pidfd = Some(fd.clone());
        Ok(fd)
    }

    /// The identity and default name of the next child (Python's
    /// `Process-1`, `Process-1:2` for nested children).
    pub fn next_child_identity(&mut self) -> (Vec<u32>, String) {
        self.counter += 1;
        let mut identity = self.me.identity.clone();
        identity.push(self.counter);
        let name = format!("Process-{}", identity.iter().map(u32::to_string).collect::<Vec<_>>().join(":"));
        (identity, name)
    }

    /// Makes this (freshly forked or freshly spawned) process the child the
    /// parent described. Inherited children and the parent's forkserver are
    /// not ours: forget them.
    pub fn become_child(&mut self, me: Identity, parent: ParentRecord) {
        self.me = me;
        self.parent = Some(parent);
        self.counter = 0;
        self.children.clear();
        self.self_pidfd = None;
        self.forkserver = None;
        // The at-exit hook (if inherited) is still registered in a forked
        // child; it now serves this process's own children.
    }

    /// Registers the at-exit join (once per process image).
    pub fn ensure_exit_hook(&mut self) {
        if !self.exit_hook {
            self.exit_hook = true;
            // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds.
            unsafe {
                libc::atexit(at_exit);
            }
        }
    }
}

/// How long the forkserver may take to report a child that has visibly ended.
const STATUS_GRACE: Duration = Duration::from_secs(10);

/// How we learn that a child ended.
pub(crate) enum ExitWatch {
    /// Our own child: poll its pidfd, reap it with `waitid`.
    Pidfd(OwnedFd),
    /// A forkserver child: the server reports its exit code on `status`; the
    /// pidfd (when it could be opened) is for signalling; `server` is the
    /// server's own pidfd, to say what became of it if a report never comes.
    Server { status: OwnedFd, pidfd: Option<OwnedFd>, server: Arc<OwnedFd> },
}

/// What parent-side handles and the registry share about one child.
pub(crate) struct ChildShared {
    pub pid: i32,
    pub name: String,
    pub identity: Vec<u32>,
    pub daemon: bool,
    watch: ExitWatch,
    exitcode: Mutex<Option<ExitCode>>,
}

impl ChildShared {
    pub fn new(pid: i32, name: String, identity: Vec<u32>, daemon: bool, watch: ExitWatch) -> Self {
        Self { pid, name, identity, daemon, watch, exitcode: Mutex::new(None) }
    }

    /// The descriptor that becomes readable when the child ends.
    pub fn exit_fd(&self) -> BorrowedFd<'_> {
        match &self.watch {
            ExitWatch::Pidfd(fd) => fd.as_fd(),
            ExitWatch::Server { status, .. } => status.as_fd(),
        }
    }

    /// A descriptor readable from the child's end on, for good: its pidfd
    /// (a forkserver child's status socket only when no pidfd could be
    /// opened, as reading the status consumes it).
    pub fn sentinel(&self) -> BorrowedFd<'_> {
        match &self.watch {
            ExitWatch::Pidfd(fd) | ExitWatch::Server { pidfd: Some(fd), .. } => fd.as_fd(),
            ExitWatch::Server { status, pidfd: None, .. } => status.as_fd(),
        }
    }

    /// The exit code if the child has ended (reaping it), else `None`.
    pub fn try_exitcode(&self) -> Result<Option<ExitCode>> {
        let mut code = self.exitcode.lock().unwrap_or_else(PoisonError::into_inner);
        if code.is_some() {
            return Ok(*code);
        }
        *code = match &self.watch {
            ExitWatch::Pidfd(fd) => sysproc::try_reap_pidfd(fd.as_fd()).context("waitid on a child")?,
            ExitWatch::Server { status, pidfd, server } => {
                let read = |wait| crate::popen::forkserver::read_status(status.as_fd(), server.as_fd(), wait);
                let reported = read(None)?;
                match pidfd {
                    // It has ended but the server's report is still on its way:
                    // wait for it, so that every answer agrees with the kernel.
                    Some(fd) if reported.is_none() && sysproc::has_exited(fd.as_fd()) => read(Some(STATUS_GRACE))?,
                    _ => reported,
                }
            }
        };
        Ok(*code)
    }

    /// Waits for the child to end, at most until `deadline`.
    pub fn wait_until(&self, deadline: Option<Instant>) -> Result<Option<ExitCode>> {
        loop {
            if let Some(code) = self.try_exitcode()? {
                return Ok(Some(code));
            }
            let Some(timeout) = crate::sys::time_left(deadline) else { return Ok(None) };
            crate::sys::poll_readable(&[self.exit_fd()], timeout).context("poll on a child")?;
        }
    }

    /// Sends a signal, unless the child is already known to have ended.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let ended = self.try_exitcode();
        if let Ok(Some(_)) = ended {
            return Ok(());
        }
        match &self.watch {
            // Sent even when whether it ended cannot be told (its forkserver
            // died before reporting): a pidfd reaches it or nobody.
            ExitWatch::Pidfd(fd) | ExitWatch::Server { pidfd: Some(fd), .. } => {
                sysproc::signal_pidfd(fd.as_fd(), signal).context("pidfd_send_signal")
            }
            // A bare pid might be another process's by then: not without
            // knowing that it still runs.
            ExitWatch::Server { pidfd: None, .. } => {
                ended?;
                sysproc::signal_pid(self.pid, signal).context("kill")
            }
        }
    }
}

/// Adds a started child to the registry.
pub(crate) fn register(child: Arc<ChildShared>) {
    let mut rt = lock();
    rt.ensure_exit_hook();
    rt.children.push(child);
}

/// Forgets a child that has been joined.
pub(crate) fn unregister(pid: i32) {
    lock().children.retain(|c| c.pid != pid);
}

/// Reaps children that have ended and drops them from the registry
/// (Python's `_cleanup`, run on every start and by `active_children`).
pub(crate) fn sweep() -> Vec<Arc<ChildShared>> {
    let children = std::mem::take(&mut lock().children);
    let alive: Vec<_> = children.into_iter().filter(|c| !matches!(c.try_exitcode(), Ok(Some(_)))).collect();
    let mut rt = lock();
    // Others may have registered children while we looked.
    rt.children.extend(alive.iter().cloned());
    alive
}

/// Terminates daemonic children and joins the others (Python's
/// `_exit_function`). Runs when a process's `main` returns and when a child
/// finishes its target.
pub(crate) fn finish_children() {
    let children = std::mem::take(&mut lock().children);
    for c in children.iter().filter(|c| c.daemon) {
        let _ = c.signal(libc::SIGTERM);
    }
    for c in &children {
        // A daemon that ignores SIGTERM gets SIGKILL after a grace period.
        let deadline = c.daemon.then(|| Instant::now() + Duration::from_secs(5));
        if let Ok(None) = c.wait_until(deadline) {
            let _ = c.signal(libc::SIGKILL);
            let _ = c.wait_until(None);
        }
    }
}

extern "C" fn at_exit() {
    // Never unwind across the C boundary.
    let _ = std::panic::catch_unwind(finish_children);
}
