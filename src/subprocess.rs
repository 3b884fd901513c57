//! Python's `subprocess`: run other programs, feed them input, collect
//! their output, with a timeout that kills the whole process tree.
//!
//! What `std::process` lacks and this adds: input and timeout together
//! without deadlock whatever the output size, typed errors that carry the
//! output ([`Error::CalledProcess`], [`Error::TimeoutExpired`]), text mode
//! with a typed decoding error, a `Popen` that is reaped even when dropped,
//! and, on timeout, the child's whole process group killed (grandchildren
//! included) so that `run` returns at once instead of waiting for a
//! grandchild that still holds the pipes.
//!
//! ```
//! use std::time::Duration;
//! use multiproc::subprocess::{self, Command, Stdio};
//!
//! // Python: subprocess.run(["echo", "hi"], capture_output=True, text=True)
//! let done = Command::new(["echo", "hi"]).capture_output().text().run().unwrap();
//! assert_eq!(done.returncode, 0);
//! assert_eq!(done.stdout.as_deref(), Some("hi\n"));
//!
//! // Input and output together, through a shell.
//! let done = Command::shell("tr a-z A-Z").input("shout\n").stdout(Stdio::Pipe).run().unwrap();
//! assert_eq!(done.stdout.unwrap(), b"SHOUT\n");
//!
//! assert_eq!(subprocess::call(["sh", "-c", "exit 3"]).unwrap(), 3);
//! assert_eq!(subprocess::check_output(["echo", "out"]).unwrap(), b"out\n");
//!
//! // A timeout kills the child and its children, and keeps what they said.
//! let err = Command::shell("echo started; sleep 100 & sleep 100")
//!     .stdout(Stdio::Pipe)
//!     .timeout(Duration::from_millis(300))
//!     .run()
//!     .unwrap_err();
//! match err {
//!     multiproc::Error::TimeoutExpired { stdout, .. } => assert_eq!(stdout.unwrap(), b"started\n"),
//!     other => panic!("{other}"),
//! }
//! ```

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, PipeReader, PipeWriter};
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};
use crate::sys::proc::{new_session, pidfd_open, signal_group, signal_pidfd, try_reap_pidfd};
use crate::sys::{Interest, poll, read_some, set_nonblocking, time_left, write_some};

/// Where a child's standard stream goes (Python's `stdin=`, `stdout=`,
/// `stderr=` arguments).
///
/// ```
/// use multiproc::subprocess::{Command, Stdio};
/// let done = Command::shell("echo out; echo err >&2").stdout(Stdio::Pipe).stderr(Stdio::Stdout).run().unwrap();
/// assert_eq!(done.stdout.unwrap(), b"out\nerr\n");
/// ```
#[derive(Debug, Default)]
pub enum Stdio {
    /// The parent's own stream (the default).
    #[default]
    Inherit,
    /// A new pipe to the parent (Python's `PIPE`): read by `run`, or
    /// available on [`Popen`].
    Pipe,
    /// `/dev/null` (Python's `DEVNULL`).
    Null,
    /// An open file.
    File(File),
    /// Any descriptor, such as another child's stdout for a pipeline.
    Fd(OwnedFd),
    /// For stderr only: wherever stdout goes (Python's `STDOUT`).
    Stdout,
}

impl From<File> for Stdio {
    fn from(f: File) -> Stdio {
        Stdio::File(f)
    }
}

impl From<OwnedFd> for Stdio {
    fn from(fd: OwnedFd) -> Stdio {
        Stdio::Fd(fd)
    }
}

impl From<PipeReader> for Stdio {
    fn from(r: PipeReader) -> Stdio {
        Stdio::Fd(r.into())
    }
}

impl From<PipeWriter> for Stdio {
    fn from(w: PipeWriter) -> Stdio {
        Stdio::Fd(w.into())
    }
}

/// What to run: an argument vector, or a shell command line (`sh -c`).
///
/// ```
/// use multiproc::subprocess::Args;
/// assert_eq!(Args::from_iter(["grep", "-n", "two words"]).to_string(), "grep -n 'two words'");
/// assert_eq!(Args::Shell("ls | wc -l".into()).to_string(), "ls | wc -l");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// The program and its arguments; the program is looked up on `PATH`.
    Argv(Vec<OsString>),
    /// A command line for `sh -c`.
    Shell(String),
}

impl<S: AsRef<OsStr>> FromIterator<S> for Args {
    fn from_iter<I: IntoIterator<Item = S>>(args: I) -> Args {
        Args::Argv(args.into_iter().map(|a| a.as_ref().to_owned()).collect())
    }
}

impl fmt::Display for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Args::Shell(line) => f.write_str(line),
            Args::Argv(argv) => {
                for (i, arg) in argv.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write_quoted(f, &arg.to_string_lossy())?;
                }
                Ok(())
            }
        }
    }
}

/// Quotes an argument the way a shell would need it, for messages.
fn write_quoted(f: &mut fmt::Formatter<'_>, arg: &str) -> fmt::Result {
    let plain = !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain { f.write_str(arg) } else { write!(f, "'{}'", arg.replace('\'', r"'\''")) }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for Vec<u8> {}
    impl Sealed for String {}
}

/// The form captured output takes: bytes (`Vec<u8>`, the default) or text
/// (`String`, after [`Command::text`]).
pub trait Output: sealed::Sealed + fmt::Debug + Sized {
    #[doc(hidden)]
    fn decode(bytes: Vec<u8>) -> std::result::Result<Self, std::string::FromUtf8Error>;
    #[doc(hidden)]
    fn bytes(&self) -> &[u8];
    #[doc(hidden)]
    const REPR_PREFIX: &'static str;
}

impl Output for Vec<u8> {
    const REPR_PREFIX: &'static str = "b";
    fn decode(bytes: Vec<u8>) -> std::result::Result<Self, std::string::FromUtf8Error> {
        Ok(bytes)
    }
    fn bytes(&self) -> &[u8] {
        self
    }
}

impl Output for String {
    const REPR_PREFIX: &'static str = "";
    fn decode(bytes: Vec<u8>) -> std::result::Result<Self, std::string::FromUtf8Error> {
        String::from_utf8(bytes)
    }
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// The parent's process group: a timeout can kill only the child.
    Inherit,
    /// A new process group led by the child (`process_group(0)`).
    New,
    /// A new session (`setsid`), hence a new group too.
    Session,
}

/// A program to run and how (Python's `subprocess.run` / `Popen` keyword
/// arguments, as a builder). Finish with [`run`](Self::run),
/// [`popen`](Self::popen), [`call`](Self::call),
/// [`check_call`](Self::check_call) or [`check_output`](Self::check_output).
///
/// ```
/// use multiproc::subprocess::Command;
/// let done = Command::new(["sh", "-c", "echo $GREETING from $PWD"])
///     .env("GREETING", "hello")
///     .cwd("/")
///     .capture_output()
///     .text()
///     .run()
///     .unwrap();
/// assert_eq!(done.stdout.unwrap(), "hello from /\n");
/// ```
#[derive(Debug)]
#[must_use = "a Command does nothing until run"]
pub struct Command<O: Output = Vec<u8>> {
    args: Args,
    stdin: Option<Stdio>,
    stdout: Stdio,
    stderr: Stdio,
    input: Option<Vec<u8>>,
    cwd: Option<PathBuf>,
    env_clear: bool,
    env: Vec<(OsString, Option<OsString>)>,
    timeout: Option<Duration>,
    check: bool,
    group: Group,
    kill_with_parent: bool,
    output: PhantomData<O>,
}

impl Command<Vec<u8>> {
    /// A program and its arguments (Python's `args` list).
    pub fn new<I, S>(args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::with_args(args.into_iter().collect())
    }

    /// A shell command line, run by `sh -c` (Python's `shell=True`).
    pub fn shell(command_line: impl Into<String>) -> Command {
        Command::with_args(Args::Shell(command_line.into()))
    }

    fn with_args(args: Args) -> Command {
        Command {
            args,
            stdin: None,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
            input: None,
            cwd: None,
            env_clear: false,
            env: Vec::new(),
            timeout: None,
            check: false,
            group: Group::Inherit,
            kill_with_parent: false,
            output: PhantomData,
        }
    }

    /// Decodes captured output as UTF-8 (Python's `text=True`): outputs
    /// become `String`s, and invalid UTF-8 is [`Error::InvalidUtf8`].
    pub fn text(self) -> Command<String> {
        Command {
            args: self.args,
            stdin: self.stdin,
            stdout: self.stdout,
            stderr: self.stderr,
            input: self.input,
            cwd: self.cwd,
            env_clear: self.env_clear,
            env: self.env,
            timeout: self.timeout,
            check: self.check,
            group: self.group,
            kill_with_parent: self.kill_with_parent,
            output: PhantomData,
        }
    }
}

impl<O: Output> Command<O> {
    /// Where the child's stdin comes from. Not together with
    /// [`input`](Self::input).
    pub fn stdin(mut self, stdin: impl Into<Stdio>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    /// Where the child's stdout goes.
    pub fn stdout(mut self, stdout: impl Into<Stdio>) -> Self {
        self.stdout = stdout.into();
        self
    }

    /// Where the child's stderr goes ([`Stdio::Stdout`]: with stdout).
    pub fn stderr(mut self, stderr: impl Into<Stdio>) -> Self {
        self.stderr = stderr.into();
        self
    }

    /// Both stdout and stderr into pipes (Python's `capture_output=True`).
    pub fn capture_output(self) -> Self {
        self.stdout(Stdio::Pipe).stderr(Stdio::Pipe)
    }

    /// Bytes to write to the child's stdin, which becomes a pipe closed
    /// after them (Python's `input=`). Text goes as its UTF-8 bytes.
    pub fn input(mut self, input: impl AsRef<[u8]>) -> Self {
        self.input = Some(input.as_ref().to_vec());
        self
    }

    /// The child's working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable for the child.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Starts the child with an empty environment (plus what
    /// [`env`](Self::env) adds afterwards).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self.env.clear();
        self
    }

    /// How long [`run`](Self::run) (and its shorthands) may take. When it
    /// runs out, the child's process group is killed, the child reaped,
    /// and [`Error::TimeoutExpired`] returned with the output so far.
    ///
    /// So that the kill reaches grandchildren, a child run with a timeout
    /// gets its own process group, unless [`new_session`](Self::new_session)
    /// or [`process_group`](Self::process_group) already chose. (One
    /// consequence: a terminal's Ctrl-C no longer reaches it directly.)
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Makes a non-zero exit an error, [`Error::CalledProcess`] (Python's
    /// `check=True`).
    pub fn check(mut self) -> Self {
        self.check = true;
        self
    }

    /// Starts the child in a new session (Python's
    /// `start_new_session=True`), hence in a new process group.
    pub fn new_session(mut self) -> Self {
        self.group = Group::Session;
        self
    }

    /// Starts the child in a new process group of its own (Python's
    /// `process_group=0`).
    pub fn process_group(mut self) -> Self {
        self.group = Group::New;
        self
    }

    /// Kills the child (SIGKILL) when the thread that started it ends, or
    /// its process dies, even by SIGKILL (Linux's `PR_SET_PDEATHSIG`): for a
    /// child that must not outlive a worker that may be killed. Only the
    /// child itself: what it starts needs its own arrangement. Such a child
    /// is started by fork and exec rather than `posix_spawn`.
    ///
    /// ```
    /// use multiproc::subprocess::Command;
    /// assert_eq!(Command::new(["true"]).kill_with_parent().call().unwrap(), 0);
    /// ```
    pub fn kill_with_parent(mut self) -> Self {
        self.kill_with_parent = true;
        self
    }

    /// Runs the command to its end (Python's `subprocess.run`): writes the
    /// input, collects piped output, waits, and applies the timeout and
    /// `check`.
    pub fn run(mut self) -> Result<CompletedProcess<O>> {
        let timeout = self.timeout;
        if timeout.is_some() && self.group == Group::Inherit {
            self.group = Group::New;
        }
        let check = self.check;
        let mut p = self.spawn()?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let finished = p.exchange(None, deadline).and_then(|done| match done {
            true => p.wait_until(deadline),
            false => Ok(None),
        });
        let returncode = match finished {
            Ok(Some(code)) => code,
            Ok(None) => {
                let timeout = timeout.expect("only a deadline runs out");
                return Err(p.give_up(timeout));
            }
            Err(e) => {
                p.kill_all();
                return Err(e);
            }
        };
        let (stdout, stderr) = p.take_collected();
        if check && returncode != 0 {
            return Err(Error::CalledProcess { cmd: p.args.to_string(), returncode, stdout, stderr });
        }
        Ok(CompletedProcess {
            stdout: decode(&p.args, "stdout", stdout)?,
            stderr: decode(&p.args, "stderr", stderr)?,
            args: p.args.clone(),
            returncode,
        })
    }

    /// Runs the command and returns its exit code (Python's
    /// `subprocess.call`).
    pub fn call(self) -> Result<i32> {
        Ok(self.run()?.returncode)
    }

    /// Runs the command; a non-zero exit is [`Error::CalledProcess`]
    /// (Python's `subprocess.check_call`).
    pub fn check_call(self) -> Result<()> {
        self.check().run().map(drop)
    }

    /// Runs the command and returns its stdout; a non-zero exit is
    /// [`Error::CalledProcess`] (Python's `subprocess.check_output`).
    pub fn check_output(self) -> Result<O> {
        let done = self.stdout(Stdio::Pipe).check().run()?;
        Ok(done.stdout.expect("stdout was piped"))
    }

    /// Starts the command and returns at once (Python's `Popen`). Input and
    /// timeout belong to [`Popen::communicate`] then; set here they are
    /// [`Error::InvalidOption`].
    pub fn popen(self) -> Result<Popen<O>> {
        if self.input.is_some() || self.timeout.is_some() {
            return Err(Error::InvalidOption(
                "input and timeout belong to Popen::communicate, not to a Command that is popened",
            ));
        }
        self.spawn()
    }

    fn spawn(self) -> Result<Popen<O>> {
        let program = match &self.args {
            Args::Argv(argv) => argv.first().ok_or(Error::EmptyCommand)?.clone(),
            Args::Shell(_) => OsString::from("/bin/sh"),
        };
        let mut cmd = std::process::Command::new(&program);
        match &self.args {
            Args::Argv(argv) => cmd.args(&argv[1..]),
            Args::Shell(line) => cmd.arg("-c").arg(line),
        };
        let stdin = match (self.stdin, self.input.is_some()) {
            (Some(_), true) => return Err(Error::InvalidOption("stdin and input may not both be given")),
            (None, true) => Stdio::Pipe,
            (stdin, false) => stdin.unwrap_or_default(),
        };
        cmd.stdin(std_stdio(stdin, "stdin")?);
        let mut merged_reader = None;
        if matches!(self.stderr, Stdio::Stdout) {
            let (stdout, stderr) = match self.stdout {
                Stdio::Pipe => {
                    let (r, w) = io::pipe().context("a pipe for a child's stdout and stderr")?;
                    merged_reader = Some(r);
                    let w2 = w.try_clone().context("a pipe for a child's stdout and stderr")?;
                    (std::process::Stdio::from(w), std::process::Stdio::from(w2))
                }
                Stdio::Inherit => {
                    let ours = io::stdout().as_fd().try_clone_to_owned().context("this process's stdout")?;
                    (std::process::Stdio::inherit(), ours.into())
                }
                // A file, a descriptor, null: stderr shares stdout's.
                Stdio::File(f) => {
                    let same = f.try_clone().context("a child's stdout file")?;
                    (f.into(), same.into())
                }
                Stdio::Fd(fd) => {
                    let same = fd.try_clone().context("a child's stdout descriptor")?;
                    (fd.into(), same.into())
                }
                Stdio::Null => (std::process::Stdio::null(), std::process::Stdio::null()),
                Stdio::Stdout => return Err(Error::InvalidOption("Stdio::Stdout is for stderr only, not stdout")),
            };
            cmd.stdout(stdout);
            cmd.stderr(stderr);
        } else {
            cmd.stdout(std_stdio(self.stdout, "stdout")?);
            cmd.stderr(std_stdio(self.stderr, "stderr")?);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        if self.env_clear {
            cmd.env_clear();
        }
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        match self.group {
            Group::Inherit => {}
            Group::New => {
                cmd.process_group(0);
            }
            Group::Session => {
                // SAFETY: setsid is async-signal-safe and touches no memory
                // of ours, as a pre-exec hook between fork and exec must.
                unsafe {
                    cmd.pre_exec(new_session);
                }
            }
        }
        if self.kill_with_parent {
            let parent = rustix::process::getpid();
            // SAFETY: prctl, getppid and kill are async-signal-safe and touch
            // no memory of ours, as a pre-exec hook between fork and exec must.
            unsafe {
                cmd.pre_exec(move || crate::sys::proc::die_with_parent(parent));
            }
        }
        let mut child = cmd.spawn().map_err(|e| spawn_error(&program, self.cwd.as_ref(), e))?;
        // Our copies of the child's ends (the merged pipe's writer) close
        // with the std command, so that EOF comes when the child is done.
        drop(cmd);
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid).context("pidfd_open for a child")?;
        let stdin = child.stdin.take().map(|s| PipeWriter::from(OwnedFd::from(s)));
        let stdout = merged_reader.or_else(|| child.stdout.take().map(|s| PipeReader::from(OwnedFd::from(s))));
        let stderr = child.stderr.take().map(|s| PipeReader::from(OwnedFd::from(s)));
        // The std handle is only a pid now; dropping it neither waits nor kills.
        drop(child);
        Ok(Popen {
            stdin,
            stdout,
            stderr,
            args: self.args,
            pid,
            pidfd,
            returncode: None,
            own_group: self.group != Group::Inherit,
            collected: Collected { input: self.input, ..Collected::default() },
            output: PhantomData,
        })
    }
}

fn std_stdio(stdio: Stdio, stream: &'static str) -> Result<std::process::Stdio> {
    Ok(match stdio {
        Stdio::Inherit => std::process::Stdio::inherit(),
        Stdio::Pipe => std::process::Stdio::piped(),
        Stdio::Null => std::process::Stdio::null(),
        Stdio::File(f) => f.into(),
        Stdio::Fd(fd) => fd.into(),
        Stdio::Stdout => {
            return Err(Error::InvalidOption(if stream == "stdin" {
                "Stdio::Stdout is for stderr only, not stdin"
            } else {
                "Stdio::Stdout is for stderr only, not stdout"
            }));
        }
    })
}

fn spawn_error(program: &OsStr, cwd: Option<&PathBuf>, e: io::Error) -> Error {
    let program = program.to_string_lossy().into_owned();
    if e.kind() == io::ErrorKind::NotFound {
        if let Some(dir) = cwd.filter(|d| !d.is_dir()) {
            return Error::Spawn {
                program,
                source: io::Error::new(io::ErrorKind::NotFound, format!("no directory {}", dir.display())),
            };
        }
        return Error::ProgramNotFound { program };
    }
    Error::Spawn { program, source: e }
}

fn decode<O: Output>(args: &Args, stream: &'static str, bytes: Option<Vec<u8>>) -> Result<Option<O>> {
    bytes
        .map(|b| O::decode(b).map_err(|source| Error::InvalidUtf8 { cmd: args.to_string(), stream, source }))
        .transpose()
}

/// A finished command (Python's `CompletedProcess`).
///
/// ```
/// let done = multiproc::subprocess::run(["sh", "-c", "kill -TERM $$"]).unwrap();
/// assert_eq!(done.returncode, -15); // killed by SIGTERM, as Python says it
/// assert!(done.check_returncode().is_err());
/// assert_eq!(done.stdout, None); // not captured
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedProcess<O: Output = Vec<u8>> {
    /// What was run.
    pub args: Args,
    /// The exit status, or minus the number of the signal that killed it.
    pub returncode: i32,
    /// Its stdout, if it was piped.
    pub stdout: Option<O>,
    /// Its stderr, if it was piped.
    pub stderr: Option<O>,
}

/// Python's repr of it: `CompletedProcess(args=['date', '-R'],
/// returncode=0, stdout=b'...')`.
///
/// ```
/// use multiproc::subprocess::{Command, Stdio};
/// let done = Command::new(["echo", "it's"]).stdout(Stdio::Pipe).run().unwrap();
/// assert_eq!(done.to_string(), r"CompletedProcess(args=['echo', 'it\'s'], returncode=0, stdout=b'it\'s\n')");
/// let done = Command::shell("printf x").capture_output().text().run().unwrap();
/// assert_eq!(done.to_string(), "CompletedProcess(args='printf x', returncode=0, stdout='x', stderr='')");
/// ```
impl<O: Output> fmt::Display for CompletedProcess<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CompletedProcess(args=")?;
        match &self.args {
            Args::Shell(line) => write!(f, "'{}'", line.as_bytes().escape_ascii())?,
            Args::Argv(argv) => {
                f.write_str("[")?;
                for (i, arg) in argv.iter().enumerate() {
                    let sep = if i > 0 { ", " } else { "" };
                    write!(f, "{sep}'{}'", arg.as_encoded_bytes().escape_ascii())?;
                }
                f.write_str("]")?;
            }
        }
        write!(f, ", returncode={}", self.returncode)?;
        for (name, out) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if let Some(out) = out {
                write!(f, ", {name}={}'{}'", O::REPR_PREFIX, out.bytes().escape_ascii())?;
            }
        }
        f.write_str(")")
    }
}

impl<O: Output> CompletedProcess<O> {
    /// [`Error::CalledProcess`] if the return code is not zero.
    pub fn check_returncode(&self) -> Result<()> {
        if self.returncode == 0 {
            return Ok(());
        }
        Err(Error::CalledProcess {
            cmd: self.args.to_string(),
            returncode: self.returncode,
            stdout: self.stdout.as_ref().map(|o| o.bytes().to_vec()),
            stderr: self.stderr.as_ref().map(|o| o.bytes().to_vec()),
        })
    }
}

/// Output read so far by `communicate`, kept across a timeout so that a
/// second call loses nothing (as in Python).
#[derive(Debug, Default)]
struct Collected {
    input: Option<Vec<u8>>,
    written: usize,
    stdout: Option<Vec<u8>>,
    stderr: Option<Vec<u8>>,
}

/// A running child (Python's `subprocess.Popen`). Dropping it without
/// waiting leaves the child running and reaps it in the background: it
/// never becomes a zombie.
///
/// ```
/// use multiproc::subprocess::{Command, Stdio};
/// // A pipeline: printf | sort
/// let mut first = Command::new(["printf", "b\\na\\n"]).stdout(Stdio::Pipe).popen().unwrap();
/// let mut second = Command::new(["sort"])
///     .stdin(first.stdout.take().unwrap())
///     .stdout(Stdio::Pipe)
///     .popen()
///     .unwrap();
/// let (out, _) = second.communicate(None).unwrap();
/// assert_eq!(out.unwrap(), b"a\nb\n");
/// assert_eq!(first.wait().unwrap(), 0);
/// assert_eq!(second.returncode(), Some(0));
/// ```
#[derive(Debug)]
pub struct Popen<O: Output = Vec<u8>> {
    /// The write end of the child's stdin, if it was piped.
    pub stdin: Option<PipeWriter>,
    /// The read end of the child's stdout, if it was piped.
    pub stdout: Option<PipeReader>,
    /// The read end of the child's stderr, if it was piped.
    pub stderr: Option<PipeReader>,
    args: Args,
    pid: i32,
    pidfd: OwnedFd,
    returncode: Option<i32>,
    own_group: bool,
    collected: Collected,
    output: PhantomData<O>,
}

impl<O: Output> Popen<O> {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// What was run.
    pub fn args(&self) -> &Args {
        &self.args
    }

    /// The exit code once the child has been reaped (by
    /// [`poll`](Self::poll), [`wait`](Self::wait) or
    /// [`communicate`](Self::communicate)); minus the signal number if a
    /// signal killed it.
    pub fn returncode(&self) -> Option<i32> {
        self.returncode
    }

    /// Reaps the child if it has ended, without waiting.
    pub fn poll(&mut self) -> Result<Option<i32>> {
        if self.returncode.is_none() {
            self.returncode = try_reap_pidfd(self.pidfd.as_fd()).context("waitid on a child")?;
        }
        Ok(self.returncode)
    }

    /// Waits for the child to end and returns its exit code.
    pub fn wait(&mut self) -> Result<i32> {
        Ok(self.wait_until(None)?.expect("no deadline"))
    }

    /// Waits at most `timeout`; [`Error::TimeoutExpired`] (without output)
    /// if the child is still running then. The child is not killed.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<i32> {
        self.wait_until(Some(Instant::now() + timeout))?.ok_or_else(|| Error::TimeoutExpired {
            cmd: self.args.to_string(),
            timeout,
            stdout: None,
            stderr: None,
        })
    }

    fn wait_until(&mut self, deadline: Option<Instant>) -> Result<Option<i32>> {
        loop {
            if let Some(code) = self.poll()? {
                return Ok(Some(code));
            }
            let Some(left) = time_left(deadline) else { return Ok(None) };
            poll(&[(self.pidfd.as_fd(), Interest::Read)], left).context("poll on a child's pidfd")?;
        }
    }

    /// Writes `input` to the child's stdin and closes it, reads stdout and
    /// stderr to their end, and waits for the child (Python's
    /// `communicate`). Returns the outputs of the streams that were piped.
    /// Both pipes are read while the input is written, so no output size
    /// deadlocks it.
    pub fn communicate(&mut self, input: Option<&[u8]>) -> Result<(Option<O>, Option<O>)> {
        self.communicate_until(input, None, None)
    }

    /// [`communicate`](Self::communicate) for at most `timeout`; then
    /// [`Error::TimeoutExpired`] with the output so far. The child goes on
    /// running, and a later call carries on where this one stopped, losing
    /// nothing (as in Python: kill the child, then call again to collect).
    pub fn communicate_timeout(&mut self, input: Option<&[u8]>, timeout: Duration) -> Result<(Option<O>, Option<O>)> {
        self.communicate_until(input, Some(Instant::now() + timeout), Some(timeout))
    }

    fn communicate_until(
        &mut self,
        input: Option<&[u8]>,
        deadline: Option<Instant>,
        timeout: Option<Duration>,
    ) -> Result<(Option<O>, Option<O>)> {
        let done = self.exchange(input.map(<[u8]>::to_vec), deadline)?;
        let code = if done { self.wait_until(deadline)? } else { None };
        if code.is_none() {
            return Err(Error::TimeoutExpired {
                cmd: self.args.to_string(),
                timeout: timeout.expect("only a deadline runs out"),
                stdout: self.collected.stdout.clone(),
                stderr: self.collected.stderr.clone(),
            });
        }
        let (stdout, stderr) = self.take_collected();
        Ok((decode(&self.args, "stdout", stdout)?, decode(&self.args, "stderr", stderr)?))
    }

    /// Sends `signal` to the child (nothing once it has been reaped).
    pub fn send_signal(&self, signal: i32) -> Result<()> {
        if self.returncode.is_some() {
            return Ok(());
        }
        signal_pidfd(self.pidfd.as_fd(), signal).context("signal a child")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> Result<()> {
        self.send_signal(libc::SIGTERM)
    }

    /// Sends SIGKILL.
    pub fn kill(&self) -> Result<()> {
        self.send_signal(libc::SIGKILL)
    }

    /// Sends `signal` to the child's whole process group: the child and
    /// every descendant that stayed in it. Only for a child started in a
    /// group of its own ([`Command::process_group`],
    /// [`Command::new_session`]); otherwise [`Error::InvalidOption`].
    pub fn signal_group(&self, signal: i32) -> Result<()> {
        if !self.own_group {
            return Err(Error::InvalidOption("signal_group needs a child started in a process group of its own"));
        }
        signal_group(self.pid, signal).context("signal a process group")
    }

    /// The child's descendants now: its children, theirs, and so on
    /// (psutil's `children(recursive=True)`), found by the parent links in
    /// `/proc`, those in a session or group of their own too. A process
    /// whose parent died before the call has left the tree and is not
    /// found; empty once the child has been reaped.
    ///
    /// ```
    /// use multiproc::subprocess::{Command, Stdio};
    /// let mut child = Command::shell("sleep 30 & echo started; wait").stdout(Stdio::Pipe).popen().unwrap();
    /// let mut line = String::new();
    /// std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
    /// assert_eq!(child.descendants().len(), 1, "the sleep");
    /// child.signal_tree(libc::SIGKILL).unwrap();
    /// child.wait().unwrap();
    /// ```
    pub fn descendants(&self) -> Vec<i32> {
        if self.returncode.is_some() {
            return Vec::new();
        }
        crate::sys::proc::descendants(self.pid)
    }

    /// Sends `signal` to the child's whole tree: its process group when it
    /// has one of its own, every [descendant](Self::descendants) (those that
    /// left the group with `setsid` too), and the child. Nothing once the
    /// child has been reaped.
    pub fn signal_tree(&self, signal: i32) -> Result<()> {
        if self.returncode.is_some() {
            return Ok(());
        }
        // Found before anything is signalled: a parent that dies first
        // hands its children to init, out of sight (their pids stay theirs
        // until init reaps them).
        let tree = self.descendants();
        if self.own_group {
            signal_group(self.pid, signal).context("signal a process group")?;
        }
        // The child before its descendants: it is the one whose end the
        // caller waits for, and seeing them die first it might end on its
        // own (a shell's `wait` returns 0) instead of by the signal.
        let mut outcome = self.send_signal(signal);
        // Every one is tried; the first failure (not a process gone
        // meanwhile, which is no failure) is reported.
        for pid in tree {
            let sent = crate::sys::proc::signal_pid(pid, signal).context("signal a descendant");
            outcome = outcome.and(sent);
        }
        outcome
    }

    /// The pipes' work: write the input, read the outputs, until both
    /// outputs end (true) or `deadline` passes (false).
    fn exchange(&mut self, input: Option<Vec<u8>>, deadline: Option<Instant>) -> Result<bool> {
        let c = &mut self.collected;
        if c.input.is_none() && c.written == 0 {
            c.input = input;
        }
        if c.input.as_ref().is_some_and(Vec::is_empty) {
            c.input = None;
        }
        if self.stdout.is_some() {
            c.stdout.get_or_insert_default();
        }
        if self.stderr.is_some() {
            c.stderr.get_or_insert_default();
        }
        if c.input.is_none() {
            // Nothing (more) to write: the child sees the end of its input.
            self.stdin = None;
        }
        for fd in [self.stdin.as_ref().map(AsFd::as_fd), self.stdout.as_ref().map(AsFd::as_fd)]
            .into_iter()
            .chain([self.stderr.as_ref().map(AsFd::as_fd)])
            .flatten()
        {
            set_nonblocking(fd).context("make a child's pipe non-blocking")?;
        }
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let mut fds: Vec<(BorrowedFd<'_>, Interest)> = Vec::with_capacity(3);
            if let Some(w) = &self.stdin {
                fds.push((w.as_fd(), Interest::ReadWrite));
            }
            if let Some(r) = &self.stdout {
                fds.push((r.as_fd(), Interest::Read));
            }
            if let Some(r) = &self.stderr {
                fds.push((r.as_fd(), Interest::Read));
            }
            if fds.is_empty() {
                return Ok(true);
            }
            let Some(left) = time_left(deadline) else { return Ok(false) };
            let ready = poll(&fds, left).context("poll on a child's pipes")?;
            let mut ready = ready.into_iter();
            if self.stdin.is_some() && ready.next().is_some_and(|(_, writable)| writable) {
                self.feed()?;
            }
            if self.stdout.is_some() && ready.next().is_some_and(|(readable, _)| readable) {
                let out = self.collected.stdout.get_or_insert_default();
                if drain(self.stdout.as_ref().expect("checked"), out, &mut buf)? {
                    self.stdout = None;
                }
            }
            if self.stderr.is_some() && ready.next().is_some_and(|(readable, _)| readable) {
                let err = self.collected.stderr.get_or_insert_default();
                if drain(self.stderr.as_ref().expect("checked"), err, &mut buf)? {
                    self.stderr = None;
                }
            }
        }
    }

    /// Writes what stdin takes now; closes it after the last byte, or when
    /// the child has closed its end (as Python, ignoring the broken pipe).
    fn feed(&mut self) -> Result<()> {
        let (Some(w), Some(input)) = (&self.stdin, &self.collected.input) else { return Ok(()) };
        let mut written = self.collected.written;
        loop {
            let rest = &input[written..];
            match write_some(w.as_fd(), &rest[..rest.len().min(64 << 10)]) {
                Ok(Some(n)) => {
                    written += n;
                    if written == input.len() {
                        break;
                    }
                }
                Ok(None) => {
                    self.collected.written = written;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
                Err(e) => return Err(e).context("write to a child's stdin"),
            }
        }
        self.collected.written = written;
        self.stdin = None;
        self.collected.input = None;
        Ok(())
    }

    fn take_collected(&mut self) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        (self.collected.stdout.take(), self.collected.stderr.take())
    }

    /// After a timeout in `run`: kill the child's group (or the child),
    /// reap it, and keep whatever output was already in the pipes. Waiting
    /// for the pipes' end could wait for a grandchild that escaped the
    /// group, so it does not.
    fn give_up(&mut self, timeout: Duration) -> Error {
        self.kill_all();
        let mut buf = vec![0u8; 64 << 10];
        for (pipe, out) in [(&self.stdout, &mut self.collected.stdout), (&self.stderr, &mut self.collected.stderr)] {
            if let (Some(r), Some(out)) = (pipe, out) {
                let _ = drain(r, out, &mut buf);
            }
        }
        self.stdout = None;
        self.stderr = None;
        let (stdout, stderr) = self.take_collected();
        Error::TimeoutExpired { cmd: self.args.to_string(), timeout, stdout, stderr }
    }

    /// Kills the child's tree (its group, its descendants, the child) and
    /// reaps it.
    fn kill_all(&mut self) {
        let _ = self.signal_tree(libc::SIGKILL);
        let _ = self.wait();
    }
}

/// Reads all that `r` has now into `out`; true at its end.
fn drain(r: &PipeReader, out: &mut Vec<u8>, buf: &mut [u8]) -> Result<bool> {
    loop {
        match read_some(r.as_fd(), buf).context("read from a child's pipe")? {
            Some(0) => return Ok(true),
            Some(n) => out.extend_from_slice(&buf[..n]),
            None => return Ok(false),
        }
    }
}

impl<O: Output> Drop for Popen<O> {
    fn drop(&mut self) {
        self.stdin = None;
        self.stdout = None;
        self.stderr = None;
        if self.returncode.is_some() || matches!(self.poll(), Ok(Some(_)) | Err(_)) {
            return;
        }
        // Still running: it goes on, and a thread reaps it when it ends.
        let pidfd = match self.pidfd.try_clone() {
            Ok(fd) => fd,
            Err(_) => return,
        };
        let _ = std::thread::Builder::new().name("multiproc-reaper".into()).spawn(move || {
            while let Ok(None) = try_reap_pidfd(pidfd.as_fd()) {
                let _ = poll(&[(pidfd.as_fd(), Interest::Read)], None);
            }
        });
    }
}

/// Runs `args` with default options (Python's `subprocess.run(args)`); see
/// [`Command`] for the options.
///
/// ```
/// let done = multiproc::subprocess::run(["true"]).unwrap();
/// assert_eq!(done.returncode, 0);
/// ```
pub fn run<I, S>(args: I) -> Result<CompletedProcess>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(args).run()
}

/// Runs `args` and returns the exit code (Python's `subprocess.call`).
///
/// ```
/// assert_eq!(multiproc::subprocess::call(["false"]).unwrap(), 1);
/// ```
pub fn call<I, S>(args: I) -> Result<i32>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(args).call()
}

/// Runs `args`; a non-zero exit is [`Error::CalledProcess`] (Python's
/// `subprocess.check_call`).
///
/// ```
/// use multiproc::Error;
/// multiproc::subprocess::check_call(["true"]).unwrap();
/// let err = multiproc::subprocess::check_call(["false"]).unwrap_err();
/// assert!(matches!(err, Error::CalledProcess { returncode: 1, .. }));
/// ```
pub fn check_call<I, S>(args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(args).check_call()
}

/// Runs `args` and returns its stdout; a non-zero exit is
/// [`Error::CalledProcess`] carrying the output (Python's
/// `subprocess.check_output`).
///
/// ```
/// assert_eq!(multiproc::subprocess::check_output(["echo", "a", "b"]).unwrap(), b"a b\n");
/// ```
pub fn check_output<I, S>(args: I) -> Result<Vec<u8>>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(args).check_output()
}

/// Runs a shell command line and returns its exit code and its output
/// (stdout and stderr together) as text, less one trailing newline
/// (Python's `subprocess.getstatusoutput`).
///
/// ```
/// let (code, out) = multiproc::subprocess::getstatusoutput("echo hi; echo oops >&2; exit 4").unwrap();
/// assert_eq!((code, out.as_str()), (4, "hi\noops"));
/// ```
pub fn getstatusoutput(command_line: &str) -> Result<(i32, String)> {
    let done = Command::shell(command_line).stdout(Stdio::Pipe).stderr(Stdio::Stdout).text().run()?;
    let mut out = done.stdout.unwrap_or_default();
    if out.ends_with('\n') {
        out.pop();
    }
    Ok((done.returncode, out))
}

/// [`getstatusoutput`] without the exit code (Python's
/// `subprocess.getoutput`).
///
/// ```
/// assert_eq!(multiproc::subprocess::getoutput("echo hi").unwrap(), "hi");
/// ```
pub fn getoutput(command_line: &str) -> Result<String> {
    Ok(getstatusoutput(command_line)?.1)
}
