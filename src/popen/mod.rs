//! Starting a child, one file per start method (as Python's `popen_fork`,
//! `popen_spawn_posix` and `popen_forkserver`), and the parent's side of a
//! started child: waiting for it and collecting its answer.

pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod spawn;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;

use crate::bootstrap;
use crate::error::{Context as _, Payload, Side};
use crate::process::{Job, Portable};
use crate::reduction;
use crate::runtime::{self, ChildShared};
use crate::sys::frame::{self, Frame, MAX_FDS, Progress, Reader};
use crate::sys::proc::{ExitCode, signal_name};
use crate::wire::{Bootstrap, Outcome};
use crate::{Error, Result, StartMethod};

/// What the parent knows about a child it is about to start.
pub(crate) struct Spec<'a> {
    pub name: &'a str,
    pub identity: &'a [u32],
    pub daemon: bool,
    pub method: StartMethod,
}

/// Bootstraps up to this size are written before the child exists: they fit
/// in an empty socket's buffer, so the write cannot block, and the child
/// finds them the moment it starts instead of after one more round trip.
const EARLY_BOOTSTRAP: usize = 64 << 10;

/// Starts `job` in a new child according to `spec`.
pub(crate) fn launch(job: Box<dyn Job>, spec: &Spec<'_>) -> Result<Child> {
    bootstrap::keep_hook();
    if spec.method == StartMethod::Fork {
        return fork::launch(job, spec);
    }
    let portable = job
        .portable()
        .ok_or_else(|| Error::NeedsFork { name: spec.name.to_owned(), method: spec.method })?
        .map_err(|message| Error::Encode { what: Payload::Arguments, side: Side::Parent, message })?;
    if portable.fds.len() + 1 > MAX_FDS {
        return Err(Error::TooManyHandles { count: portable.fds.len(), max: MAX_FDS - 1 });
    }
    // The arguments are encoded (their handles duplicated); the parent's
    // originals are released now, as in every start method.
    drop(job);
    // A parent-death signal is only faithful for a child we create ourselves
    // from our main thread; a forkserver child's OS parent is the server.
    let deathsig = spec.method == StartMethod::Spawn && crate::sys::on_main_thread();
    let (bytes, fds) = bootstrap_message(portable, spec, deathsig)?;
    let (conn, child_conn) = crate::sys::stream_pair().context("socketpair for a child")?;
    let early = bytes.len() <= EARLY_BOOTSTRAP;
    if early {
        send_bootstrap(conn.as_fd(), &bytes, &fds)?;
    }
    let child = match spec.method {
        StartMethod::Spawn => spawn::launch(spec, conn, child_conn)?,
        _ => forkserver::launch(spec, conn, child_conn)?,
    };
    if !early {
        send_bootstrap(child.conn.as_fd(), &bytes, &fds)?;
    }
    Ok(child)
}

/// Everything a spawn or forkserver child needs to run, encoded, and the
/// descriptors that go with it: a pidfd of the parent, then the payload's.
fn bootstrap_message(portable: Portable, spec: &Spec<'_>, deathsig: bool) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
    let (parent_pid, parent_name, parent_pidfd) = {
        let mut rt = runtime::lock();
        (rt.me.pid, rt.me.name.clone(), rt.self_pidfd()?)
    };
    let boot = Bootstrap {
        entry: bootstrap::entry_ref(portable.entry),
        name: spec.name.to_owned(),
        identity: spec.identity.to_vec(),
        daemon: spec.daemon,
        start_method: spec.method,
        parent_pid,
        parent_name,
        deathsig,
        payload: portable.payload,
    };
    let mut fds = Vec::with_capacity(portable.fds.len() + 1);
    fds.push(parent_pidfd.try_clone().context("dup of this process's pidfd")?);
    fds.extend(portable.fds);
    Ok((reduction::encode_plain(&boot), fds))
}

fn send_bootstrap(conn: BorrowedFd<'_>, bytes: &[u8], fds: &[OwnedFd]) -> Result<()> {
    let fds: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
    match frame::send(conn, bytes, &fds) {
        Ok(()) => Ok(()),
        // The child died before reading: `join` will say how it ended.
        Err(e) if is_disconnect(&e) => Ok(()),
        Err(source) => Err(Error::Io { context: "sending the bootstrap to a child", source }),
    }
}

pub(crate) fn is_disconnect(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET))
}

/// The parent's side of a started child.
pub(crate) struct Child {
    pub shared: Arc<ChildShared>,
    conn: OwnedFd,
    reader: Reader,
    open: bool,
    reply: Option<Frame>,
    taken: bool,
}

impl Child {
    pub(crate) fn new(shared: ChildShared, conn: OwnedFd) -> Self {
        Child { shared: Arc::new(shared), conn, reader: Reader::new(), open: true, reply: None, taken: false }
    }

    /// Waits (at most until `deadline`) for the child to end, reading its
    /// answer as it arrives so that a large answer never blocks its exit.
    pub(crate) fn wait(&mut self, deadline: Option<Instant>) -> Result<Option<ExitCode>> {
        loop {
            if let Some(code) = self.shared.try_exitcode()? {
                // Everything it sent is in the socket by now.
                while self.open && self.reply.is_none() {
                    if !self.pump()? {
                        break;
                    }
                }
                return Ok(Some(code));
            }
            let Some(timeout) = crate::sys::time_left(deadline) else { return Ok(None) };
            let listen_conn = self.open && self.reply.is_none();
            let ready = if listen_conn {
                crate::sys::poll_readable(&[self.shared.exit_fd(), self.conn.as_fd()], timeout)
            } else {
                crate::sys::poll_readable(&[self.shared.exit_fd()], timeout)
            }
            .context("poll on a child")?;
            if listen_conn && ready[1] {
                self.pump()?;
            }
        }
    }

    /// [`wait`](Self::wait) without waiting: reads what of the answer has
    /// come, and the exit code if the child has ended.
    #[cfg(feature = "async")]
    pub(crate) fn try_wait(&mut self) -> Result<Option<ExitCode>> {
        while self.listening() && self.pump()? {}
        match self.shared.try_exitcode()? {
            Some(code) => {
                while self.listening() && self.pump()? {}
                Ok(Some(code))
            }
            None => Ok(None),
        }
    }

    /// Whether the child's answer is still to come.
    #[cfg(feature = "async")]
    pub(crate) fn listening(&self) -> bool {
        self.open && self.reply.is_none()
    }

    /// The socket the answer comes on.
    #[cfg(feature = "async")]
    pub(crate) fn conn(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }

    /// Reads what is available; false when nothing more will come now.
    fn pump(&mut self) -> Result<bool> {
        match self.reader.read(self.conn.as_fd(), false) {
            Ok(Progress::Frame(f)) => {
                self.reply = Some(f);
                Ok(true)
            }
            Ok(Progress::Pending) => Ok(false),
            Ok(Progress::Eof) => {
                self.open = false;
                Ok(false)
            }
            // A child killed in the middle of its answer: no answer.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof || is_disconnect(&e) => {
                self.open = false;
                Ok(false)
            }
            Err(e) => Err(Error::Protocol(format!("reading the answer of {}: {e}", self.shared.name))),
        }
    }

    /// Turns the child's answer (or its absence) into the join result.
    pub(crate) fn take_result<R: DeserializeOwned>(&mut self, code: ExitCode) -> Result<R> {
        let (name, pid) = (self.shared.name.clone(), self.shared.pid);
        if self.taken {
            return Err(Error::ResultTaken(name));
        }
        self.taken = true;
        let Some(frame) = self.reply.take() else {
            return Err(if code < 0 {
                Error::Killed { name, pid, signal: -code, signal_name: signal_name(-code), exitcode: code }
            } else {
                Error::Exited { name, pid, exitcode: code }
            });
        };
        let outcome: Outcome = reduction::decode_plain(&frame.bytes)
            .map_err(|e| Error::Protocol(format!("undecodable answer from {name}: {e}")))?;
        outcome_into_result(outcome, frame.fds, &name, pid)
    }
}

/// The value (or error) a child's outcome stands for. `name` and `pid` say
/// which process ran the call.
pub(crate) fn outcome_into_result<R: DeserializeOwned>(
    outcome: Outcome,
    fds: Vec<OwnedFd>,
    name: &str,
    pid: i32,
) -> Result<R> {
    match outcome {
        Outcome::Returned(bytes) => reduction::decode(&bytes, fds).map_err(|message| Error::Decode {
            what: Payload::Result,
            side: Side::Parent,
            message,
        }),
        Outcome::Panicked { message, location, backtrace } => {
            Err(Error::Panicked { name: name.to_owned(), pid, message, location, backtrace })
        }
        Outcome::Codec { what, decode: true, message } => Err(Error::Decode { what, side: Side::Child, message }),
        Outcome::Codec { what, decode: false, message } => Err(Error::Encode { what, side: Side::Child, message }),
        Outcome::Bootstrap(message) => Err(Error::Protocol(format!("{name} could not start: {message}"))),
    }
}

/// How a process ended, in words: `killed by SIGKILL`, `exited with code 3`.
pub(crate) fn describe_exit(code: ExitCode) -> String {
    if code < 0 { format!("killed by {}", signal_name(-code)) } else { format!("exited with code {code}") }
}
