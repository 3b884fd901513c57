//! The forkserver start method.
//!
//! The server is a fresh copy of the executable, started with `posix_spawn`
//! and held by multiproc's load hook before `main` runs, so it is
//! single-threaded and holds none of the program's state. For each new
//! process the parent sends it two sockets: the child's end of the
//! parent–child connection, and a status socket. The server forks, the child
//! reads its bootstrap from the parent like a spawned child, and the server
//! writes the child's pid and, later, its exit code on the status socket.
//!
//! The server watches the parent through a pidfd: when the parent dies, it
//! kills its daemonic children and exits.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::bootstrap::{self, FORKSERVER_FLAG};
use crate::error::Context as _;
use crate::popen::{Child, Spec};
use crate::runtime::{self, ChildShared, ExitWatch};
use crate::sys::frame::{recv_packet, send_packet};
use crate::sys::proc::{self as sysproc, ExitCode};
use crate::sys::{self, poll_readable};
use crate::{Error, Result};

const CONTROL_FD: i32 = 3;
const PARENT_FD: i32 = 4;

/// The parent's connection to its forkserver.
pub(crate) struct Client {
    control: Arc<OwnedFd>,
    pidfd: Arc<OwnedFd>,
}

impl Client {
    fn start(parent_pidfd: &OwnedFd) -> Result<Client> {
        let (control, theirs) = sys::packet_pair().context("socketpair for the forkserver")?;
        let pid = sysproc::spawn_self(
            &[FORKSERVER_FLAG, &CONTROL_FD.to_string(), &PARENT_FD.to_string()],
            &[(theirs.as_fd(), CONTROL_FD), (parent_pidfd.as_fd(), PARENT_FD)],
        )
        .context("posix_spawn of the forkserver")?;
        let pidfd = sysproc::pidfd_open(pid).context("pidfd_open of the forkserver")?;
        Ok(Client { control: Arc::new(control), pidfd: Arc::new(pidfd) })
    }

    fn alive(&self) -> bool {
        !sysproc::has_exited(self.pidfd.as_fd())
    }
}

/// Starts the forkserver now if it is not running (used by `init`, so that
/// it is up before the program makes threads or grows).
pub(crate) fn ensure_started() -> Result<(Arc<OwnedFd>, Arc<OwnedFd>)> {
    let mut rt = runtime::lock();
    if let Some(c) = &rt.forkserver {
        if c.alive() {
            return Ok((c.control.clone(), c.pidfd.clone()));
        }
        // It died; reap it before starting another.
        let _ = sysproc::try_reap_pidfd(c.pidfd.as_fd());
    }
    let parent_pidfd = rt.self_pidfd()?;
    let c = Client::start(&parent_pidfd)?;
    let handles = (c.control.clone(), c.pidfd.clone());
    rt.forkserver = Some(c);
    Ok(handles)
}

/// Asks the forkserver for a new child, which gets `child_conn` as its
/// connection to us.
pub(crate) fn launch(spec: &Spec<'_>, conn: OwnedFd, child_conn: OwnedFd) -> Result<Child> {
    let (status, server_status) = sys::packet_pair().context("socketpair for a child's status")?;
    let request = [u8::from(spec.daemon)];
    let fds = [child_conn.as_fd(), server_status.as_fd()];
    let mut sent = None;
    for _ in 0..2 {
        let (control, server) = ensure_started()?;
        match send_packet(control.as_fd(), &request, &fds) {
            Ok(()) => {
                sent = Some(server);
                break;
            }
            // The server died between our check and the send: start another.
            Err(e) if crate::popen::is_disconnect(&e) => continue,
            Err(source) => {
                return Err(Error::Io { context: "sending a request to the forkserver", source });
            }
        }
    }
    let Some(server) = sent else {
        return Err(Error::Forkserver("the forkserver keeps dying".into()));
    };
    drop(child_conn);
    drop(server_status);
    let mut buf = [0u8; 4];
    let pid = match recv_packet(status.as_fd(), &mut buf, true).context("reading a pid from the forkserver")? {
        Some((4, _)) => i32::from_le_bytes(buf),
        _ => {
            return Err(Error::Forkserver("it closed the connection instead of starting a child".into()));
        }
    };
    // Not our child, so a pid could in principle be recycled before this;
    // the server has not reaped it yet unless it already exited, in which
    // case we signal nobody and learn its exit code from the status socket.
    let pidfd = sysproc::pidfd_open(pid).ok();
    let shared = ChildShared::new(
        pid,
        spec.name.to_owned(),
        spec.identity.to_vec(),
        spec.daemon,
        ExitWatch::Server { status, pidfd, server },
    );
    Ok(Child::new(shared, conn))
}

/// The first byte of the server's report that it cannot watch a child
/// (the errno of its failed `pidfd_open` follows): a 5-byte packet, never
/// taken for a 4-byte exit code.
const CANNOT_WATCH: u8 = b'!';

/// How long a server whose status socket closed may take to be seen ended.
const SERVER_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads a forkserver child's exit code from its status socket, if it has
/// been reported (waiting up to `wait` for the report). `server` is the
/// server's pidfd: when the report never comes, the error says what became
/// of the server.
pub(crate) fn read_status(
    status: BorrowedFd<'_>,
    server: BorrowedFd<'_>,
    wait: Option<std::time::Duration>,
) -> Result<Option<ExitCode>> {
    if let Some(wait) = wait {
        poll_readable(&[status], Some(wait)).context("waiting for the forkserver's report")?;
    }
    let mut buf = [0u8; 8];
    match recv_packet(status, &mut buf, false).context("reading a status from the forkserver")? {
        None => Ok(None),
        Some((4, _)) => Ok(Some(i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]))),
        Some((5, _)) if buf[0] == CANNOT_WATCH => {
            let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
            Err(Error::Forkserver(format!(
                "it could not watch the child it started (pidfd_open: {})",
                std::io::Error::from_raw_os_error(errno)
            )))
        }
        Some((len, _)) => {
            let what = match len {
                0 => "closed a child's status without reporting how it ended".to_owned(),
                n => format!("sent a child's status as {n} bytes, not 4"),
            };
            // The server's sockets close as it exits, a moment before the
            // kernel marks it ended: give that moment before looking.
            let _ = poll_readable(&[server], Some(SERVER_EXIT_GRACE));
            let server = match sysproc::peek_exit_pidfd(server) {
                Ok(Some(code)) if code < 0 => format!("it was killed by signal {}", -code),
                Ok(Some(code)) => format!("it exited with code {code}"),
                Ok(None) => "it is still running".to_owned(),
                Err(e) => format!("its state is unknown: {e}"),
            };
            Err(Error::Forkserver(format!("it {what} ({server})")))
        }
    }
}

struct Served {
    pidfd: OwnedFd,
    status: OwnedFd,
    daemon: bool,
}

/// The server's main loop. Runs in the load hook of a freshly spawned copy
/// of the executable and never returns.
pub(crate) fn serve(control: OwnedFd, parent: OwnedFd) -> ! {
    sysproc::ignore_sigpipe();
    let mut children: Vec<Served> = Vec::new();
    loop {
        let mut watched: Vec<BorrowedFd<'_>> = vec![control.as_fd(), parent.as_fd()];
        watched.extend(children.iter().map(|c| c.pidfd.as_fd()));
        let ready = match poll_readable(&watched, None) {
            Ok(r) => r,
            Err(_) => shutdown(&children),
        };
        let exited: Vec<usize> = ready[2..].iter().enumerate().filter(|(_, r)| **r).map(|(i, _)| i).collect();
        if ready[1] {
            shutdown(&children);
        }
        if ready[0] {
            let mut buf = [0u8; 1];
            match recv_packet(control.as_fd(), &mut buf, false) {
                Ok(Some((1, fds))) if fds.len() == 2 => {
                    let mut fds = fds.into_iter();
                    let (conn, status) = (fds.next().expect("two fds"), fds.next().expect("two fds"));
                    let daemon = buf[0] != 0;
                    // SAFETY: the server is single-threaded (it runs before
                    // `main`, and never starts a thread).
                    match unsafe { nix::unistd::fork() } {
                        Ok(nix::unistd::ForkResult::Child) => {
                            drop(children);
                            drop(control);
                            drop(parent);
                            drop(status);
                            bootstrap::child_main(conn)
                        }
                        Ok(nix::unistd::ForkResult::Parent { child }) => {
                            let pid = child.as_raw();
                            drop(conn);
                            let _ = send_packet(status.as_fd(), &pid.to_le_bytes(), &[]);
                            match sysproc::pidfd_open(pid) {
                                Ok(pidfd) => children.push(Served { pidfd, status, daemon }),
                                Err(e) => {
                                    let errno = e.raw_os_error().unwrap_or(0).to_le_bytes();
                                    let report = [CANNOT_WATCH, errno[0], errno[1], errno[2], errno[3]];
                                    let _ = send_packet(status.as_fd(), &report, &[]);
                                }
                            }
                        }
                        // Dropping `status` tells the parent we failed.
                        Err(_) => {}
                    }
                }
                Ok(Some((0, _))) => shutdown(&children),
                // A malformed request: ignore it, its fds are closed.
                Ok(_) => {}
                Err(_) => shutdown(&children),
            }
        }
        for i in exited.into_iter().rev() {
            if let Ok(Some(code)) = sysproc::try_reap_pidfd(children[i].pidfd.as_fd()) {
                let c = children.swap_remove(i);
                let _ = send_packet(c.status.as_fd(), &code.to_le_bytes(), &[]);
            }
        }
    }
}

fn shutdown(children: &[Served]) -> ! {
    for c in children.iter().filter(|c| c.daemon) {
        let _ = sysproc::signal_pidfd(c.pidfd.as_fd(), libc::SIGKILL);
    }
    // SAFETY: _exit has no preconditions; nothing needs flushing here.
    unsafe { libc::_exit(0) }
}
