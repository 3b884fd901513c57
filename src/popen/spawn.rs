//! The spawn start method: `posix_spawn` of the running executable, which
//! multiproc's load hook turns into the child before `main` runs.

use std::os::fd::{AsFd, OwnedFd};

use crate::Result;
use crate::bootstrap::{BOOTSTRAP_FD, BOOTSTRAP_FLAG};
use crate::error::Context as _;
use crate::popen::{Child, Spec};
use crate::runtime::{ChildShared, ExitWatch};
use crate::sys::proc as sysproc;

/// Starts the child; `child_conn` becomes its connection to us.
pub(crate) fn launch(spec: &Spec<'_>, conn: OwnedFd, child_conn: OwnedFd) -> Result<Child> {
    let fd_arg = BOOTSTRAP_FD.to_string();
    let pid = sysproc::spawn_self(&[BOOTSTRAP_FLAG, &fd_arg], &[(child_conn.as_fd(), BOOTSTRAP_FD)])
        .context("posix_spawn of this executable")?;
    drop(child_conn);
    // Our own unreaped child: its pid cannot be recycled before we open this.
    let pidfd = sysproc::pidfd_open(pid).context("pidfd_open of a spawned child")?;
    let shared =
        ChildShared::new(pid, spec.name.to_owned(), spec.identity.to_vec(), spec.daemon, ExitWatch::Pidfd(pidfd));
    Ok(Child::new(shared, conn))
}
