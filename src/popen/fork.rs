//! The fork start method: the child is a copy of the parent and runs the job
//! in place, so nothing but the answer is serialized.

use std::io::Write;

use nix::unistd::ForkResult;

use crate::Result;
use crate::bootstrap;
use crate::error::Context as _;
use crate::popen::{Child, Spec};
use crate::process::Job;
use crate::runtime::{self, ChildShared, ExitWatch, Identity, ParentRecord};
use crate::sys::{self, proc as sysproc};

pub(crate) fn launch(job: Box<dyn Job>, spec: &Spec<'_>) -> Result<Child> {
    let (conn, child_conn) = sys::stream_pair().context("socketpair for a child")?;
    let deathsig = sys::on_main_thread();
    let forked = fork_locked(|pid| Identity {
        name: spec.name.to_owned(),
        pid,
        daemon: spec.daemon,
        identity: spec.identity.to_vec(),
    })?;
    match forked {
        Forked::Child(parent) => {
            drop(conn);
            bootstrap::forked_child_main(job, child_conn, spec.daemon, deathsig, parent)
        }
        Forked::Parent(pid) => {
            drop(child_conn);
            drop(job);
            let pidfd = sysproc::pidfd_open(pid).context("pidfd_open of a forked child")?;
            let shared = ChildShared::new(
                pid,
                spec.name.to_owned(),
                spec.identity.to_vec(),
                spec.daemon,
                ExitWatch::Pidfd(pidfd),
            );
            Ok(Child::new(shared, conn))
        }
    }
}

/// Which side of a fork we are on.
pub(crate) enum Forked {
    /// The parent, with the child's pid.
    Parent(i32),
    /// The child, with a record of its parent.
    Child(ParentRecord),
}

/// Forks with the runtime locked, so the child's copy of it is consistent,
/// and makes the child's runtime describe the child: `identity` gets the
/// child's pid and says who the child is.
pub(crate) fn fork_locked(identity: impl FnOnce(i32) -> Identity) -> Result<Forked> {
    // Buffered output would otherwise be written twice, once by each side.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let mut rt = runtime::lock();
    let parent = ParentRecord { pid: rt.me.pid, name: rt.me.name.clone(), pidfd: Some(rt.self_pidfd()?) };
    // SAFETY: the child only touches state that was consistent at the fork:
    // the runtime (locked by us for the duration) and its own stack. Locks
    // held by other threads are the caller's concern (documented on
    // `StartMethod::Fork` and `os::fork`).
    match unsafe { nix::unistd::fork() }.context("fork")? {
        ForkResult::Child => {
            let me = rustix::process::getpid().as_raw_nonzero().get();
            rt.become_child(identity(me), parent.clone());
            drop(rt);
            Ok(Forked::Child(parent))
        }
        ForkResult::Parent { child } => Ok(Forked::Parent(child.as_raw())),
    }
}
