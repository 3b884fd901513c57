//! The crate's one error type.

use std::fmt;
use std::io;

/// Which value failed to cross between processes.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Error, Payload, Process, Side, StartMethod};
///
/// struct Secret;
/// impl serde::Serialize for Secret {
///     fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
///         Err(serde::ser::Error::custom("not for other eyes"))
///     }
/// }
/// impl<'de> serde::Deserialize<'de> for Secret {
///     fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
///         <()>::deserialize(d).map(|_| Secret)
///     }
/// }
/// fn keep(_: Secret) {}
///
/// let mut p = Process::new(keep, (Secret,)).with_start_method(StartMethod::Spawn);
/// match p.start() {
///     Err(Error::Encode { what: Payload::Arguments, side: Side::Parent, .. }) => {}
///     other => panic!("{other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Payload {
    /// The arguments of a target function (or the object of a [`Run`](crate::Run) type).
    Arguments,
    /// The value the target returned.
    Result,
}

/// Which process noticed a failure (see [`Payload`] for an example).
///
/// ```
/// assert_eq!(multiproc::Side::Child.to_string(), "in the child");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Side {
    /// The process that started the child.
    Parent,
    /// The child process.
    Child,
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Payload::Arguments => "arguments",
            Payload::Result => "result",
        })
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Parent => "in the parent",
            Side::Child => "in the child",
        })
    }
}

/// Everything that can go wrong in multiproc.
///
/// Failures of the child are values here, never hangs: a panic, a signal, an
/// early exit or a value that cannot cross each has its own variant.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Error, Process};
/// fn boom() -> u8 { panic!("no luck") }
/// let mut p = Process::new(boom, ());
/// p.start().unwrap();
/// match p.join() {
///     Err(Error::Panicked { message, .. }) => assert_eq!(message, "no luck"),
///     other => panic!("unexpected {other:?}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target panicked in the child.
    #[error("process {name} (pid {pid}) panicked at {}: {message}", location.as_deref().unwrap_or("<unknown location>"))]
    Panicked {
        /// The child's name.
        name: String,
        /// The child's pid.
        pid: i32,
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
        /// The child's backtrace at the panic, when `RUST_BACKTRACE` (or
        /// `RUST_LIB_BACKTRACE`) asked for one in the child.
        backtrace: Option<String>,
    },
    /// Call `index` (0-based, in input order) of a `map`, `starmap`,
    /// `imap` or `imap_unordered` failed, with `source`; [`Error::root`]
    /// is that failure itself. `argument` shows its arguments, as `Debug`
    /// would, through their serde form (every argument has one), cut to
    /// about 120 characters; `None` where they hold handles (a value that
    /// cannot be rebuilt without its descriptors), and for an `imap` call
    /// that failed inside a chunk of several.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn inverse(x: i32) -> i32 { 100 / x }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// let e = pool.map(inverse, [5, 4, 0, 2]).unwrap_err();
    /// assert_eq!(e.item_index(), Some(2));
    /// assert!(matches!(e.root(), multiproc::Error::Panicked { .. }));
    /// assert!(e.to_string().starts_with("item 2 (0) failed: "));
    /// # }
    /// ```
    #[error("item {index}{shown} failed: {source}", shown = argument.as_ref().map(|a| format!(" ({a})")).unwrap_or_default())]
    Item {
        /// Which call.
        index: usize,
        /// Its arguments as `Debug` would show them (through their serde
        /// form, cut to about 120 characters), when they could be shown.
        argument: Option<String>,
        /// How it failed.
        source: Box<Error>,
    },
    /// The child was killed by a signal before it returned a value.
    #[error("process {name} (pid {pid}) was killed by {signal_name} (exitcode {exitcode})")]
    Killed {
        /// The child's name.
        name: String,
        /// The child's pid.
        pid: i32,
        /// The signal number.
        signal: i32,
        /// The signal's name, such as `SIGKILL`.
        signal_name: String,
        /// Python's exit code for it: minus the signal number.
        exitcode: i32,
    },
    /// The child exited (for instance through `std::process::exit`) before it
    /// returned a value.
    #[error("process {name} (pid {pid}) exited with code {exitcode} before returning a value")]
    Exited {
        /// The child's name.
        name: String,
        /// The child's pid.
        pid: i32,
        /// Its exit status.
        exitcode: i32,
    },
    /// A value could not be serialized for the trip.
    #[error("could not encode the {what} {side}: {message}")]
    Encode {
        /// Which value.
        what: Payload,
        /// Where it failed.
        side: Side,
        /// The codec's explanation.
        message: String,
    },
    /// A value could not be deserialized after the trip.
    #[error("could not decode the {what} {side}: {message}")]
    Decode {
        /// Which value.
        what: Payload,
        /// Where it failed.
        side: Side,
        /// The codec's explanation.
        message: String,
    },
    /// `start` was called twice.
    #[error("process {0} has already been started")]
    AlreadyStarted(String),
    /// An operation that needs a started process was called before `start`.
    #[error("process {0} has not been started")]
    NotStarted(String),
    /// `join` already handed out the child's value.
    #[error("the result of process {0} was already taken by an earlier join")]
    ResultTaken(String),
    /// A closure that captures its environment can only run in a forked child.
    #[error("process {name} runs a closure, which needs the fork start method, not {method}")]
    NeedsFork {
        /// The process's name.
        name: String,
        /// The start method that was asked for.
        method: crate::StartMethod,
    },
    /// `set_start_method` was called after the start method was fixed.
    #[error("the start method is already set to {current}")]
    StartMethodAlreadySet {
        /// The method in force.
        current: crate::StartMethod,
    },
    /// A start method name that is not `fork`, `spawn` or `forkserver`.
    #[error("unknown start method {0:?} (expected fork, spawn or forkserver)")]
    UnknownStartMethod(String),
    /// More OS handles in one message than the kernel passes at once.
    #[error("{count} handles in one message (at most {max})")]
    TooManyHandles {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The child is not running the same executable as the parent.
    #[error("the child's executable differs from the parent's; cannot find the target function")]
    ExecutableMismatch,
    /// The forkserver could not be started or stopped answering.
    #[error("forkserver: {0}")]
    Forkserver(String),
    /// A message between processes made no sense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A pool worker died (killed by a signal, or exited) while it ran this
    /// task. The pool replaced it; other tasks are not affected.
    #[error("worker {name} (pid {pid}) died running this task: {how}")]
    WorkerDied {
        /// The worker's name.
        name: String,
        /// The worker's pid.
        pid: i32,
        /// Its exit code: minus the signal number, or its exit status.
        exitcode: i32,
        /// `killed by SIGKILL`, `exited with code 3`, ….
        how: String,
    },
    /// A pool task ran past the pool's task timeout; its worker was killed
    /// and replaced.
    #[error("the task ran longer than {timeout:?}, so worker {name} (pid {pid}) was killed")]
    TaskTimeout {
        /// The worker's name.
        name: String,
        /// The worker's pid.
        pid: i32,
        /// The pool's task timeout.
        timeout: std::time::Duration,
    },
    /// A task was submitted to a pool that was closed or terminated.
    #[error("the pool is not running (it was closed or terminated)")]
    PoolNotRunning,
    /// `join` was called on a pool that was neither closed nor terminated
    /// (Python: `ValueError: Pool is still running`).
    #[error("the pool is still running: close or terminate it before join")]
    PoolStillRunning,
    /// The call was cancelled ([`AsyncResult::cancel`](crate::AsyncResult::cancel)).
    #[error("the call was cancelled")]
    Cancelled,
    /// The pool was terminated before this task finished.
    #[error("the pool was terminated before this task finished")]
    PoolTerminated,
    /// The pool's initializer failed in a worker; no task can run.
    #[error("the pool's initializer failed: {0}")]
    InitializerFailed(String),
    /// `as_completed` gave up: its timeout passed with calls unfinished
    /// (Python's `TimeoutError` from `concurrent.futures.as_completed`).
    #[error("{unfinished} (of {of}) calls unfinished when the timeout passed")]
    WaitTimeout {
        /// Calls not finished.
        unfinished: usize,
        /// Calls watched.
        of: usize,
    },
    /// The asynchronous result is not ready yet.
    #[error("the result is not ready yet")]
    NotReady,
    /// A queue had nothing to get in time (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,
    /// A bounded queue had no room in time (Python's `queue.Full`).
    #[error("the queue is full")]
    Full,
    /// The queue was shut down (Python 3.13's `queue.ShutDown`): no more
    /// puts, and gets only while items are left.
    #[error("the queue was shut down")]
    ShutDown,
    /// `task_done` was called more often than items were put (Python's
    /// `ValueError: task_done() called too many times`).
    #[error("task_done() called more times than items were put")]
    TaskDoneTooOften,
    /// The other end of a connection was closed (Python's `EOFError`).
    #[error("the other end of the connection was closed")]
    Eof,
    /// A received message was larger than the connection accepts. The
    /// message was not read; the connection cannot be used any more.
    #[error("a message of {size} bytes is over this connection's limit of {limit} bytes")]
    MessageTooLarge {
        /// The message's size.
        size: usize,
        /// The connection's limit.
        limit: usize,
    },
    /// A buffer given to `recv_bytes_into` was too short; the message is
    /// in the error (Python's `BufferTooShort`).
    #[error("the buffer is too short for a message of {} bytes", message.len())]
    BufferTooShort {
        /// The message that did not fit.
        message: Vec<u8>,
    },
    /// The connection was closed on this side, or its direction does not
    /// allow the operation (a one-way pipe).
    #[error("connection: {0}")]
    Connection(&'static str),
    /// A shared memory name that POSIX does not accept.
    #[error("invalid shared memory name {0:?}: one component, no '/' inside, at most 250 bytes")]
    InvalidName(String),
    /// A shared memory block of zero bytes.
    #[error("a shared memory block needs a size above zero")]
    InvalidSize,
    /// A task of a Redis-backed pool killed its process in each of
    /// `deliveries` deliveries; it is in the pool's dead letters.
    #[error("the task killed its process in each of {deliveries} deliveries (last: {how}); it is a dead letter now")]
    PoisonTask {
        /// How many times it was delivered.
        deliveries: u64,
        /// How its process ended the last time (`killed by SIGSEGV`, ...).
        how: String,
    },
    /// No worker of the task's build took it (workers never run a task
    /// sent by another build of the program).
    #[error("no worker of the task's build took it: {function}, built as {task}, a worker as {worker}")]
    BuildMismatch {
        /// The submitting program's build identity.
        task: String,
        /// A worker's build identity.
        worker: String,
        /// The task's function with its argument and result types
        /// (`path::to::f: (u64,) -> u64`).
        function: String,
    },
    /// Redis refused or could not be reached (a Redis-backed pool's set-up,
    /// `cluster::status`).
    #[error("Redis: {what}: {message}")]
    Redis {
        /// What was being done, with the URL where it matters.
        what: String,
        /// Redis's or the connection's message.
        message: String,
    },
    /// A Redis-backed pool's task failed on its worker, as described.
    #[error("the task failed on its worker: {0}")]
    Cluster(String),
    /// A [`ShareableList`](crate::shared_memory::ShareableList) was asked
    /// for what it cannot hold, or a block is not laid out as one.
    #[error("shareable list: {0}")]
    ShareableList(String),
    /// An index past the end of a shared array.
    #[error("index {index} is out of range for an array of {len}")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The array's length.
        len: usize,
    },
    /// A thread asked to wait for a non-re-entrant lock it already holds; it
    /// would wait forever (Python's `Lock` does).
    #[error("this thread already holds this lock, which is not re-entrant")]
    AlreadyHeld,
    /// A `BoundedSemaphore` was released more often than acquired (Python's
    /// `ValueError: Semaphore released too many times`).
    #[error("the semaphore was released too many times (its bound is {bound})")]
    SemaphoreOverflow {
        /// The semaphore's initial value.
        bound: u32,
    },
    /// A barrier was aborted, or a wait on it timed out (Python's
    /// `BrokenBarrierError`).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// A lock was released by a thread that does not hold it.
    #[error("release of a lock that this thread does not hold")]
    NotOwner,
    /// A command run with `check` ended badly (Python's
    /// `CalledProcessError`). Output is raw bytes, even in text mode.
    #[error("{}", called_process_message(cmd, *returncode))]
    CalledProcess {
        /// The command, as a shell would read it.
        cmd: String,
        /// Its exit status, or minus the signal that killed it.
        returncode: i32,
        /// Its stdout, if piped.
        stdout: Option<Vec<u8>>,
        /// Its stderr, if piped.
        stderr: Option<Vec<u8>>,
    },
    /// A command ran out of time (Python's `TimeoutExpired`), with the
    /// output it had produced by then.
    #[error("command `{cmd}` timed out after {timeout:?}")]
    TimeoutExpired {
        /// The command, as a shell would read it.
        cmd: String,
        /// The time it had.
        timeout: std::time::Duration,
        /// Its stdout so far, if piped.
        stdout: Option<Vec<u8>>,
        /// Its stderr so far, if piped.
        stderr: Option<Vec<u8>>,
    },
    /// The program to run does not exist (not on `PATH`, or no such file).
    #[error("no program named `{program}` was found")]
    ProgramNotFound {
        /// The program as given.
        program: String,
    },
    /// A program could not be started for another reason.
    #[error("could not start `{program}`: {source}")]
    Spawn {
        /// The program as given.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A command's output was not UTF-8 in text mode.
    #[error("the {stream} of `{cmd}` is not UTF-8: {source}")]
    InvalidUtf8 {
        /// The command.
        cmd: String,
        /// `"stdout"` or `"stderr"`.
        stream: &'static str,
        /// Where decoding failed; it holds the bytes.
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// A command with no program.
    #[error("an empty command: nothing to run")]
    EmptyCommand,
    /// Options that do not go together (Python's `ValueError` for them).
    #[error("invalid options: {0}")]
    InvalidOption(&'static str),
    /// A manager address that is neither `host:port` nor a socket path.
    #[error("not a manager address (host:port or /path): {0:?}")]
    InvalidAddress(String),
    /// A manager with an empty authkey on an address other machines can
    /// reach, without explicit permission.
    #[error("refusing an empty authkey on {0}, which is not loopback (allow it explicitly if you must)")]
    InsecureManager(String),
    /// The manager (or its client) did not accept our authkey.
    #[error("manager authentication failed: the keys differ")]
    AuthenticationFailed,
    /// No manager listens at the address any more: it was shut down, or
    /// its process ended (a `managers::Manager` lives as
    /// long as it or a proxy it made lives in the process that started it).
    #[error("the manager at {address} is gone: {source}")]
    ManagerGone {
        /// Where it listened.
        address: String,
        /// What connecting said.
        source: std::io::Error,
    },
    /// A manager answered with a traceback (Python's `RemoteError`).
    #[error("the manager reported an error: {0}")]
    Remote(String),
    /// A manager method raised a Python exception (`module.name`, args);
    /// shown as Python shows it: `IndexError('list index out of range')`.
    #[error("the manager raised {}{args}", class.rsplit('.').next().unwrap_or(class))]
    RemoteException {
        /// `module.name` of the exception class, such as `_queue.Empty`.
        class: String,
        /// Its arguments, as Python would print them.
        args: String,
    },
    /// A value that has no Python form for a manager, or a manager's
    /// answer that is not the Rust type expected.
    #[error("a manager value: {0}")]
    ManagerValue(String),
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// `Result` with [`Error`].
///
/// ```
/// fn start_one() -> multiproc::Result<u8> {
///     fn one() -> u8 { 1 }
///     let mut p = multiproc::Process::new(one, ());
///     p.start()?;
///     p.join()
/// }
/// # #[multiproc::main] fn main() {
/// assert_eq!(start_one().unwrap(), 1);
/// # }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The failure itself, under the [`Error::Item`] that says which call
    /// of a map it was (itself when there is none).
    pub fn root(&self) -> &Error {
        match self {
            Error::Item { source, .. } => source.root(),
            e => e,
        }
    }

    /// Which call of a `map`, `starmap` or `imap` failed, when this came
    /// from one.
    pub fn item_index(&self) -> Option<usize> {
        match self {
            Error::Item { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// Marks a call's failure with its index; failures of the pool as a
    /// whole (terminated, cancelled, not running, no initializer) stay as
    /// they are.
    pub(crate) fn at_item(self, index: usize, argument: impl FnOnce() -> Option<String>) -> Error {
        if self.names_no_item() {
            return self;
        }
        Error::Item { index, argument: argument(), source: Box::new(self) }
    }

    /// Whether this failure is not one call's: already marked with its
    /// index, or the pool's as a whole (terminated, cancelled, not
    /// running, no initializer). Such a failure is not marked with an
    /// index, so nothing need be worked out to show its arguments.
    pub(crate) fn names_no_item(&self) -> bool {
        matches!(
            self,
            Error::Item { .. }
                | Error::Cancelled
                | Error::PoolTerminated
                | Error::PoolNotRunning
                | Error::InitializerFailed(_)
        )
    }

    /// The arguments of the call that failed, as `Debug` would show them
    /// (through their serde form, cut to about 120 characters), when this
    /// came from a `map`, `starmap` or `imap` and they could be shown.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn check(word: String) -> usize { assert!(!word.is_empty(), "empty word"); word.len() }
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// let e = pool.map(check, ["a".to_string(), String::new()]).unwrap_err();
    /// assert_eq!((e.item_index(), e.item_argument()), (Some(1), Some("\"\"")));
    /// assert!(e.to_string().starts_with("item 1 (\"\") failed: "));
    /// # }
    /// ```
    pub fn item_argument(&self) -> Option<&str> {
        match self {
            Error::Item { argument, .. } => argument.as_deref(),
            _ => None,
        }
    }
}

/// Attaches a short description of what was being done to an I/O error.
pub(crate) trait Context<T> {
    fn context(self, context: &'static str) -> Result<T>;
}

impl<T, E: Into<io::Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: &'static str) -> Result<T> {
        self.map_err(|e| Error::Io { context, source: e.into() })
    }
}

fn called_process_message(cmd: &str, returncode: i32) -> String {
    if returncode < 0 {
        format!("command `{cmd}` died with {}", crate::sys::proc::signal_name(-returncode))
    } else {
        format!("command `{cmd}` returned non-zero exit status {returncode}")
    }
}
