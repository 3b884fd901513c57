//! `Process`: run a Rust function in a child process and get its value back
//! (Python's `multiprocessing.Process`).

use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Payload;
use crate::popen::{self, Child, Spec};
use crate::reduction;
use crate::runtime;
use crate::wire::Outcome;
use crate::{Error, Result, StartMethod};

/// A function that can be the target of a [`Process`]: a `fn` item or a
/// closure that captures nothing, called with the elements of a tuple of
/// arguments (`()`, `(a,)`, `(a, b)`, … up to eight).
///
/// Targets must be zero-sized, because a spawned child finds the code by
/// its address in the executable, not by value; a capturing closure is
/// rejected at compile time. To run a capturing closure, use
/// [`Process::from_closure`] (fork only).
///
/// ```
/// fn add(a: i32, b: i32) -> i32 { a + b }
/// use multiproc::Target;
/// assert_eq!(Target::call(add, (2, 3)), 5);
/// ```
///
/// What is refused, at compile time: something that is no function…
///
/// ```compile_fail,E0277
/// # #[multiproc::main] fn main() {
/// let pool = multiproc::Pool::new(1).unwrap();
/// let _ = pool.apply(5u32, ());
/// # }
/// ```
///
/// …a closure that captures (its captures could not reach a spawned
/// child)…
///
/// ```compile_fail
/// # #[multiproc::main] fn main() {
/// let pool = multiproc::Pool::new(1).unwrap();
/// let n = 5;
/// let _ = pool.apply(move |x: u32| x + n, (1,));
/// # }
/// ```
///
/// …and borrowed arguments (they travel by value: take `String`).
///
/// ```compile_fail
/// # #[multiproc::main] fn main() {
/// fn f(name: &str) -> usize { name.len() }
/// let pool = multiproc::Pool::new(1).unwrap();
/// let _ = pool.apply(f, ("test",));
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be called with the arguments `{Args}` in another process",
    label = "not a task target for arguments `{Args}`",
    note = "a target is a `fn` item or a closure that captures nothing, called with the elements of a tuple: \
            `f(a, b)` takes `(a, b)`, `f(a)` takes `(a,)`, `f()` takes `()`",
    note = "arguments travel by value: take owned types (`String`, not `&str`; `Vec<T>`, not `&[T]`)",
    note = "to run a closure that captures, use `Process::from_closure` (fork only)"
)]
pub trait Target<Args>: Copy + Send + 'static {
    /// What the function returns.
    type Output;
    /// Calls the function with `args` spread out.
    fn call(self, args: Args) -> Self::Output;
}

macro_rules! impl_target {
    ($($arg:ident),*) => {
        impl<Func, Ret, $($arg,)*> Target<($($arg,)*)> for Func
        where
            Func: Fn($($arg),*) -> Ret + Copy + Send + 'static,
        {
            type Output = Ret;
            #[allow(non_snake_case)]
            fn call(self, ($($arg,)*): ($($arg,)*)) -> Ret {
                self($($arg),*)
            }
        }
    };
}
impl_target!();
impl_target!(A1);
impl_target!(A1, A2);
impl_target!(A1, A2, A3);
impl_target!(A1, A2, A3, A4);
impl_target!(A1, A2, A3, A4, A5);
impl_target!(A1, A2, A3, A4, A5, A6);
impl_target!(A1, A2, A3, A4, A5, A6, A7);
impl_target!(A1, A2, A3, A4, A5, A6, A7, A8);

/// An async function as a target: the child (or pool worker) runs the
/// future it returns to completion on its own single-threaded tokio
/// runtime, one per process, kept between tasks. Tokio's timers work there
/// (`tokio::time::sleep`, `tokio::time::timeout`), and so does `join!`: the
/// "coroutine inside a subprocess" pattern.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use std::time::Duration;
/// use multiproc::{Async, Pool};
///
/// async fn fetch(id: u32) -> String {
///     tokio::time::sleep(Duration::from_millis(10)).await;
///     format!("page {id}")
/// }
///
/// let pool = Pool::new(2).unwrap();
/// assert_eq!(pool.map(Async(fetch), [1, 2]).unwrap(), ["page 1", "page 2"]);
/// # }
/// ```
#[cfg(feature = "async")]
#[derive(Debug, Clone, Copy)]
pub struct Async<F>(pub F);

#[cfg(feature = "async")]
macro_rules! impl_async_target {
    ($($arg:ident),*) => {
        impl<Func, Fut, $($arg,)*> Target<($($arg,)*)> for Async<Func>
        where
            Func: Fn($($arg),*) -> Fut + Copy + Send + 'static,
            Fut: std::future::Future,
        {
            type Output = Fut::Output;
            #[allow(non_snake_case)]
            fn call(self, ($($arg,)*): ($($arg,)*)) -> Fut::Output {
                block_on((self.0)($($arg),*))
            }
        }
    };
}
#[cfg(feature = "async")]
impl_async_target!();
#[cfg(feature = "async")]
impl_async_target!(A1);
#[cfg(feature = "async")]
impl_async_target!(A1, A2);
#[cfg(feature = "async")]
impl_async_target!(A1, A2, A3);
#[cfg(feature = "async")]
impl_async_target!(A1, A2, A3, A4);
#[cfg(feature = "async")]
impl_async_target!(A1, A2, A3, A4, A5);
#[cfg(feature = "async")]
impl_async_target!(A1, A2, A3, A4, A5, A6);
#[cfg(feature = "async")]
impl_async_target!(A1, A2, A3, A4, A5, A6, A7);
#[cfg(feature = "async")]
impl_async_target!(A1, A2, A3, A4, A5, A6, A7, A8);

/// Runs a future on this thread's tokio runtime (made on first use).
#[cfg(feature = "async")]
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    std::thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread tokio runtime");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

/// The stateful form of a process target: Python's "subclass `Process` and
/// override `run`". The object itself travels to the child (serialized under
/// spawn and forkserver) and `run` consumes it there.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{Process, Run};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Countdown { from: u32 }
///
/// impl Run for Countdown {
///     type Output = Vec<u32>;
///     fn run(self) -> Vec<u32> { (0..=self.from).rev().collect() }
/// }
///
/// let mut p = Process::from_run(Countdown { from: 3 });
/// assert_eq!(p.pid(), None);
/// p.start().unwrap();
/// assert!(p.pid().is_some());
/// assert_eq!(p.join().unwrap(), vec![3, 2, 1, 0]);
/// # }
/// ```
pub trait Run: Send + 'static {
    /// What `run` returns to the parent.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The body of the child process.
    fn run(self) -> Self::Output;
}

/// The function a spawn or forkserver child calls, found through its
/// address: it decodes the payload, runs the target and encodes the answer.
pub(crate) type EntryFn = fn(&[u8], Vec<OwnedFd>) -> Reply;

/// A child's answer together with the descriptors its value carries.
pub(crate) struct Reply {
    pub outcome: Outcome,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    pub(crate) fn codec(what: Payload, decode: bool, message: String) -> Self {
        Reply { outcome: Outcome::Codec { what, decode, message }, fds: Vec::new() }
    }

    pub(crate) fn from_value<R: Serialize>(value: &R) -> Self {
        match reduction::encode(value) {
            Ok((bytes, fds)) => Reply { outcome: Outcome::Returned(bytes), fds },
            Err(message) => Reply::codec(Payload::Result, false, message),
        }
    }

    pub(crate) fn plain(outcome: Outcome) -> Self {
        Reply { outcome, fds: Vec::new() }
    }
}

/// Encoded arguments, ready to travel.
pub(crate) struct Portable {
    pub entry: EntryFn,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// What a process will run, before it starts.
pub(crate) trait Job: Send {
    /// Runs in a forked child, in place: no serialization of the arguments.
    fn run_here(self: Box<Self>) -> Reply;
    /// The entry point and encoded arguments for a spawn or forkserver
    /// child; `None` for closures, which cannot leave this address space.
    fn portable(&self) -> Option<Result<Portable, String>>;
}

struct TargetJob<F, A> {
    target: F,
    args: A,
}

impl<F, A> Job for TargetJob<F, A>
where
    F: Target<A>,
    F::Output: Serialize,
    A: Serialize + DeserializeOwned + Send + 'static,
{
    fn run_here(self: Box<Self>) -> Reply {
        let this = *self;
        Reply::from_value(&this.target.call(this.args))
    }

    fn portable(&self) -> Option<Result<Portable, String>> {
        Some(reduction::encode(&self.args).map(|(payload, fds)| Portable { entry: target_entry::<F, A>, payload, fds }))
    }
}

/// The entry function that calls `F` with arguments `A`, for callers that
/// send calls to running processes (the pool).
/// What a task's function takes and gives, by type name. A Redis-backed
/// pool's task carries it beside its build identity, so that an error
/// about a task (a worker of another build, a dead letter) says which
/// function it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Signature {
    pub function: &'static str,
    pub args: &'static str,
    pub output: &'static str,
}

impl Signature {
    pub(crate) fn of<F: Target<A>, A>() -> Signature {
        Signature {
            function: std::any::type_name::<F>(),
            args: std::any::type_name::<A>(),
            output: std::any::type_name::<F::Output>(),
        }
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.function, self.args, self.output)
    }
}

pub(crate) fn entry_of<F, A>() -> EntryFn
where
    F: Target<A>,
    F::Output: Serialize,
    A: DeserializeOwned,
{
    const { assert!(size_of::<F>() == 0, "a task target must not capture anything: use a fn item") };
    target_entry::<F, A>
}

fn target_entry<F, A>(payload: &[u8], fds: Vec<OwnedFd>) -> Reply
where
    F: Target<A>,
    F::Output: Serialize,
    A: DeserializeOwned,
{
    let args: A = match reduction::decode(payload, fds) {
        Ok(args) => args,
        Err(message) => return Reply::codec(Payload::Arguments, true, message),
    };
    Reply::from_value(&conjure::<F>().call(args))
}

/// Makes a value of a zero-sized target type in the child, where the parent's
/// value cannot be sent (it has no bytes; its identity *is* its type).
pub(crate) fn conjure<F: Copy + 'static>() -> F {
    const { assert!(size_of::<F>() == 0, "a process target must not capture anything") };
    // SAFETY: F is zero-sized (checked at compile time), so there are no bytes
    // to initialize; the parent owned a value of F, so F is inhabited; and F is
    // Copy, so creating another value duplicates no owned resource.
    unsafe { std::mem::zeroed() }
}

struct RunJob<T>(T);

impl<T> Job for RunJob<T>
where
    T: Run + Serialize + DeserializeOwned,
{
    fn run_here(self: Box<Self>) -> Reply {
        Reply::from_value(&self.0.run())
    }

    fn portable(&self) -> Option<Result<Portable, String>> {
        Some(reduction::encode(&self.0).map(|(payload, fds)| Portable { entry: run_entry::<T>, payload, fds }))
    }
}

fn run_entry<T: Run + DeserializeOwned>(payload: &[u8], fds: Vec<OwnedFd>) -> Reply {
    match reduction::decode::<T>(payload, fds) {
        Ok(object) => Reply::from_value(&object.run()),
        Err(message) => Reply::codec(Payload::Arguments, true, message),
    }
}

struct ClosureJob<C>(C);

impl<C, R> Job for ClosureJob<C>
where
    C: FnOnce() -> R + Send,
    R: Serialize,
{
    fn run_here(self: Box<Self>) -> Reply {
        Reply::from_value(&(self.0)())
    }

    fn portable(&self) -> Option<Result<Portable, String>> {
        None
    }
}

/// A child process that runs a Rust function and hands its value back.
///
/// The Python surface is all here: [`start`](Self::start),
/// [`join`](Self::join), [`join_timeout`](Self::join_timeout),
/// [`pid`](Self::pid) (`None` before start), [`name`](Self::name),
/// [`daemon`](Self::daemon), [`is_alive`](Self::is_alive),
/// [`exitcode`](Self::exitcode) (minus the signal number when a signal
/// killed it), [`terminate`](Self::terminate) and [`kill`](Self::kill).
/// `join` returns the target's value, or an [`Error`] that says what went
/// wrong in the child: a panic with its message and location, a signal, an
/// early exit, a value that could not cross.
///
/// Program entry: children are started as copies of the running executable,
/// which multiproc intercepts before `main` runs, so nothing needs to be
/// guarded. Annotating `main` with [`#[multiproc::main]`](crate::main) (or
/// calling [`init`](crate::init) first thing) is still recommended; see
/// [`init`](crate::init).
///
/// Dropping a `Process` does not stop the child. A child that is never
/// joined is reaped by a later `start`, by [`active_children`], or when the
/// program exits, when non-daemonic children are joined and daemonic ones
/// terminated, as in Python.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::Process;
///
/// fn greet(name: String, times: usize) -> String {
///     format!("{} from {}", "hi ".repeat(times), name)
/// }
///
/// let mut p = Process::new(greet, ("child".to_string(), 2));
/// p.start().unwrap();
/// assert_eq!(p.join().unwrap(), "hi hi  from child");
/// assert_eq!(p.exitcode(), Some(0));
/// # }
/// ```
pub struct Process<R> {
    name: String,
    identity: Vec<u32>,
    daemon: bool,
    method: Option<StartMethod>,
    job: Option<Box<dyn Job>>,
    child: Option<Child>,
    _result: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("daemon", &self.daemon)
            .field("exitcode", &self.exitcode())
            .finish()
    }
}

impl<R> Process<R>
where
    R: Serialize + DeserializeOwned + Send + 'static,
{
    /// A process that will run `target(args…)`; `args` is a tuple.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn add(a: i32, b: i32) -> i32 { a + b }
    /// let mut p = multiproc::Process::new(add, (2, 3));
    /// p.start().unwrap();
    /// assert_eq!(p.join().unwrap(), 5);
    /// # }
    /// ```
    pub fn new<F, A>(target: F, args: A) -> Self
    where
        F: Target<A, Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        const {
            assert!(
                size_of::<F>() == 0,
                "a process target must not capture anything: use a fn item, or Process::from_closure with the fork start method"
            )
        };
        Self::with_job(Box::new(TargetJob { target, args }), None)
    }

    /// A process that will run `object.run()`.
    ///
    /// See [`Run`] for an example.
    pub fn from_run<T>(object: T) -> Self
    where
        T: Run<Output = R> + Serialize + DeserializeOwned,
    {
        Self::with_job(Box::new(RunJob(object)), None)
    }

    /// A process that runs any closure, captures and all. Only a forked child
    /// can run it, so its start method is [`StartMethod::Fork`]; choosing
    /// another one makes `start` fail with [`Error::NeedsFork`].
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// let data = vec![1, 2, 3];
    /// let mut p = multiproc::Process::from_closure(move || data.iter().sum::<i32>());
    /// p.start().unwrap();
    /// assert_eq!(p.join().unwrap(), 6);
    /// # }
    /// ```
    pub fn from_closure<C>(closure: C) -> Self
    where
        C: FnOnce() -> R + Send + 'static,
    {
        Self::with_job(Box::new(ClosureJob(closure)), Some(StartMethod::Fork))
    }

    fn with_job(job: Box<dyn Job>, method: Option<StartMethod>) -> Self {
        let (identity, name) = runtime::lock().next_child_identity();
        Process { name, identity, daemon: false, method, job: Some(job), child: None, _result: PhantomData }
    }

    /// Sets the name (builder form).
    ///
    /// ```
    /// fn f() {}
    /// let p = multiproc::Process::new(f, ()).with_name("loader");
    /// assert_eq!(p.name(), "loader");
    /// ```
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the daemon flag (builder form).
    ///
    /// ```
    /// fn f() {}
    /// assert!(multiproc::Process::new(f, ()).with_daemon(true).daemon());
    /// ```
    pub fn with_daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Chooses the start method for this process alone.
    ///
    /// ```
    /// use multiproc::{Process, StartMethod};
    /// fn f() {}
    /// let p = Process::new(f, ()).with_start_method(StartMethod::Spawn);
    /// assert_eq!(p.start_method(), StartMethod::Spawn);
    /// ```
    pub fn with_start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Starts the child. A process can be started once.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn f() {}
    /// let mut p = multiproc::Process::new(f, ());
    /// p.start().unwrap();
    /// assert!(p.start().is_err()); // once only
    /// p.join().unwrap();
    /// # }
    /// ```
    pub fn start(&mut self) -> Result<()> {
        let job = self.job.take().ok_or_else(|| Error::AlreadyStarted(self.name.clone()))?;
        runtime::sweep();
        let spec =
            Spec { name: &self.name, identity: &self.identity, daemon: self.daemon, method: self.start_method() };
        #[cfg(feature = "tracing")]
        let _span =
            tracing::info_span!("process.start", name = %self.name, method = ?spec.method, daemon = self.daemon)
                .entered();
        let child = popen::launch(job, &spec)?;
        #[cfg(feature = "tracing")]
        tracing::info!(pid = child.shared.pid, "started");
        runtime::register(child.shared.clone());
        self.child = Some(child);
        Ok(())
    }

    /// Waits for the child to end and returns its target's value. The value
    /// is handed out once; a second `join` gives [`Error::ResultTaken`].
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn shout(s: String) -> String { s.to_uppercase() }
    /// let mut p = multiproc::Process::new(shout, ("hi".to_string(),));
    /// p.start().unwrap();
    /// assert_eq!(p.join().unwrap(), "HI");
    /// assert!(matches!(p.join(), Err(multiproc::Error::ResultTaken(_))));
    /// # }
    /// ```
    pub fn join(&mut self) -> Result<R> {
        Ok(self.join_until(None)?.expect("no deadline, so the child has ended"))
    }

    /// Like [`join`](Self::join), but gives up after `timeout`: `Ok(None)`
    /// means the child is still running (as Python's `join(timeout)` returns
    /// with the process alive).
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use std::time::Duration;
    /// fn nap() { std::thread::sleep(Duration::from_secs(60)) }
    /// let mut p = multiproc::Process::new(nap, ());
    /// p.start().unwrap();
    /// assert_eq!(p.join_timeout(Duration::from_millis(10)).unwrap(), None);
    /// p.kill().unwrap();
    /// # }
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<R>> {
        self.join_until(Some(Instant::now() + timeout))
    }

    /// [`join`](Self::join) for async code (feature `async`): parks the
    /// task, not the thread, until the child ends (tokio's `AsyncFd` on
    /// the child's pidfd and answer socket). Call it inside a tokio runtime
    /// with IO enabled. Dropping the future leaves the child running, to be
    /// joined again.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn square(x: u64) -> u64 { x * x }
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// let mut p = multiproc::Process::new(square, (12,));
    /// p.start().unwrap();
    /// assert_eq!(rt.block_on(p.join_async()).unwrap(), 144);
    /// # }
    /// ```
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn join_async(&mut self) -> Result<R> {
        use tokio::io::Interest;
        let name = self.name.clone();
        let child = self.child.as_mut().ok_or(Error::NotStarted(name))?;
        let exit = crate::aio::Watched::new(child.shared.exit_fd(), Interest::READABLE)?;
        let conn = crate::aio::Watched::new(child.conn(), Interest::READABLE)?;
        loop {
            if let Some(code) = child.try_wait()? {
                runtime::unregister(child.shared.pid);
                return child.take_result(code);
            }
            // The answer socket only while an answer is to come: once it
            // is at its end it would read as ready for ever.
            crate::aio::either_readable(&exit, child.listening().then_some(&conn)).await?;
        }
    }

    fn join_until(&mut self, deadline: Option<Instant>) -> Result<Option<R>> {
        let name = self.name.clone();
        let child = self.child.as_mut().ok_or(Error::NotStarted(name))?;
        match child.wait(deadline)? {
            None => Ok(None),
            Some(code) => {
                runtime::unregister(child.shared.pid);
                child.take_result(code).map(Some)
            }
        }
    }
}

impl<R> Process<R> {
    /// The child's pid; `None` before `start`.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn f() {}
    /// let mut p = multiproc::Process::new(f, ());
    /// assert_eq!(p.pid(), None);
    /// p.start().unwrap();
    /// assert!(p.pid().unwrap() > 0);
    /// p.join().unwrap();
    /// # }
    /// ```
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.shared.pid)
    }

    /// A descriptor that becomes readable when the process ends, and stays
    /// so (Python's `sentinel`): for [`connection::wait`](crate::connection::wait)
    /// or any poller. It lives as long as this `Process`.
    /// [`Error::NotStarted`] before `start`.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn f() {}
    /// let mut p = multiproc::Process::new(f, ());
    /// assert!(p.sentinel().is_err());
    /// p.start().unwrap();
    /// let ended = multiproc::connection::wait(&[&p.sentinel().unwrap()], None).unwrap();
    /// assert_eq!(ended, [0]);
    /// p.join().unwrap();
    /// # }
    /// ```
    pub fn sentinel(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        let child = self.child.as_ref().ok_or_else(|| Error::NotStarted(self.name.clone()))?;
        Ok(child.shared.sentinel())
    }

    /// The process's name (default `Process-N`, `Process-N:M` in a child).
    ///
    /// ```
    /// fn f() {}
    /// let p = multiproc::Process::new(f, ());
    /// assert!(p.name().starts_with("Process-"));
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the process; the child sees the new name only if it is set
    /// before `start`.
    ///
    /// ```
    /// fn f() {}
    /// let mut p = multiproc::Process::new(f, ());
    /// p.set_name("indexer");
    /// assert_eq!(p.name(), "indexer");
    /// ```
    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// Whether the child is daemonic: killed when its parent dies, even by
    /// SIGKILL, and terminated when the parent's `main` returns.
    ///
    /// ```
    /// fn f() {}
    /// assert!(!multiproc::Process::new(f, ()).daemon());
    /// ```
    pub fn daemon(&self) -> bool {
        self.daemon
    }

    /// Sets the daemon flag; only before `start`, as in Python.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn f() {}
    /// let mut p = multiproc::Process::new(f, ());
    /// p.set_daemon(true).unwrap();
    /// p.start().unwrap();
    /// assert!(p.set_daemon(false).is_err());
    /// p.join().unwrap();
    /// # }
    /// ```
    pub fn set_daemon(&mut self, daemon: bool) -> Result<()> {
        if self.child.is_some() {
            return Err(Error::AlreadyStarted(self.name.clone()));
        }
        self.daemon = daemon;
        Ok(())
    }

    /// The start method this process uses (its own, or the global one).
    ///
    /// ```
    /// fn f() {}
    /// let p = multiproc::Process::new(f, ());
    /// assert_eq!(p.start_method(), multiproc::get_start_method());
    /// ```
    pub fn start_method(&self) -> StartMethod {
        self.method.unwrap_or_else(crate::get_start_method)
    }

    /// True between a successful `start` and the child's end.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn nap() { std::thread::sleep(std::time::Duration::from_secs(60)) }
    /// let mut p = multiproc::Process::new(nap, ());
    /// assert!(!p.is_alive());
    /// p.start().unwrap();
    /// assert!(p.is_alive());
    /// p.kill().unwrap();
    /// let _ = p.join();
    /// assert!(!p.is_alive());
    /// # }
    /// ```
    pub fn is_alive(&self) -> bool {
        self.child.as_ref().is_some_and(|c| matches!(c.shared.try_exitcode(), Ok(None)))
    }

    /// How the child ended: its exit status, or minus the signal that killed
    /// it; `None` before start and while it runs.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn fail() { std::process::exit(4) }
    /// let mut p = multiproc::Process::new(fail, ());
    /// assert_eq!(p.exitcode(), None);
    /// p.start().unwrap();
    /// let _ = p.join();
    /// assert_eq!(p.exitcode(), Some(4));
    /// # }
    /// ```
    pub fn exitcode(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| c.shared.try_exitcode().ok().flatten())
    }

    /// Sends SIGTERM. A no-op when the child has already ended.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn nap() { std::thread::sleep(std::time::Duration::from_secs(60)) }
    /// let mut p = multiproc::Process::new(nap, ());
    /// p.start().unwrap();
    /// p.terminate().unwrap();
    /// assert!(p.join().is_err());
    /// assert_eq!(p.exitcode(), Some(-15));
    /// # }
    /// ```
    pub fn terminate(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// Sends SIGKILL. A no-op when the child has already ended.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn nap() { std::thread::sleep(std::time::Duration::from_secs(60)) }
    /// let mut p = multiproc::Process::new(nap, ());
    /// p.start().unwrap();
    /// p.kill().unwrap();
    /// assert!(matches!(p.join(), Err(multiproc::Error::Killed { signal: 9, .. })));
    /// # }
    /// ```
    pub fn kill(&self) -> Result<()> {
        self.signal(libc::SIGKILL)
    }

    fn signal(&self, signal: i32) -> Result<()> {
        let child = self.child.as_ref().ok_or_else(|| Error::NotStarted(self.name.clone()))?;
        child.shared.signal(signal)
    }

    /// The descriptor that becomes readable when the started child ends.
    pub(crate) fn exit_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.child.as_ref().map(|c| c.shared.exit_fd())
    }
}

/// A snapshot of a process: the current one, or a running child.
#[derive(Debug, Clone, PartialEq, Eq)]
///
/// ```
/// let me = multiproc::current_process();
/// assert_eq!((me.name(), me.pid(), me.daemon()), ("MainProcess", multiproc::os::getpid(), false));
/// assert!(me.identity().is_empty());
/// ```
pub struct ProcessInfo {
    name: String,
    pid: i32,
    daemon: bool,
    identity: Vec<u32>,
}

impl ProcessInfo {
    /// Its name (`MainProcess` for the program's first process).
    ///
    /// ```
    /// assert_eq!(multiproc::current_process().name(), "MainProcess");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its pid.
    ///
    /// ```
    /// assert_eq!(multiproc::current_process().pid(), multiproc::os::getpid());
    /// ```
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// Whether it is daemonic.
    ///
    /// ```
    /// assert!(!multiproc::current_process().daemon());
    /// ```
    pub fn daemon(&self) -> bool {
        self.daemon
    }
    /// Its place in the process tree: empty for the main process, `[1, 2]`
    /// for the second child of the first child (Python's `_identity`).
    ///
    /// ```
    /// assert_eq!(multiproc::current_process().identity(), &[] as &[u32]);
    /// ```
    pub fn identity(&self) -> &[u32] {
        &self.identity
    }
}

/// The process that started this one, seen from the child.
///
/// ```
/// # #[multiproc::main] fn main() {
/// fn ask() -> (i32, String, bool) {
///     let p = multiproc::parent_process().unwrap();
///     (p.pid(), p.name().to_owned(), p.is_alive())
/// }
/// let mut p = multiproc::Process::new(ask, ());
/// p.start().unwrap();
/// assert_eq!(p.join().unwrap(), (multiproc::os::getpid(), "MainProcess".to_string(), true));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ParentProcess {
    name: String,
    pid: i32,
    pidfd: Option<Arc<OwnedFd>>,
}

impl ParentProcess {
    /// The parent's name (see [`ParentProcess`] for an example).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The parent's pid (see [`ParentProcess`] for an example).
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// Whether the parent is still running (see [`ParentProcess`] for an
    /// example).
    pub fn is_alive(&self) -> bool {
        match &self.pidfd {
            Some(fd) => !crate::sys::proc::has_exited(std::os::fd::AsFd::as_fd(&**fd)),
            None => crate::sys::proc::signal_pid(self.pid, 0).is_ok(),
        }
    }
}

/// The process this code runs in (Python's `current_process()`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// assert_eq!(multiproc::current_process().name(), "MainProcess");
/// fn my_name() -> String { multiproc::current_process().name().to_owned() }
/// let mut p = multiproc::Process::new(my_name, ()).with_name("worker");
/// p.start().unwrap();
/// assert_eq!(p.join().unwrap(), "worker");
/// # }
/// ```
pub fn current_process() -> ProcessInfo {
    let rt = runtime::lock();
    ProcessInfo { name: rt.me.name.clone(), pid: rt.me.pid, daemon: rt.me.daemon, identity: rt.me.identity.clone() }
}

/// The process that started this one; `None` in the main process.
///
/// ```
/// # #[multiproc::main] fn main() {
/// assert!(multiproc::parent_process().is_none());
/// fn parent_pid() -> i32 { multiproc::parent_process().unwrap().pid() }
/// let mut p = multiproc::Process::new(parent_pid, ());
/// p.start().unwrap();
/// assert_eq!(p.join().unwrap(), multiproc::os::getpid());
/// # }
/// ```
pub fn parent_process() -> Option<ParentProcess> {
    let rt = runtime::lock();
    rt.parent.as_ref().map(|p| ParentProcess { name: p.name.clone(), pid: p.pid, pidfd: p.pidfd.clone() })
}

/// The children of this process that are still running; finished ones are
/// reaped on the way (Python's `active_children()`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// fn nap() { std::thread::sleep(std::time::Duration::from_secs(30)) }
/// let mut p = multiproc::Process::new(nap, ());
/// p.start().unwrap();
/// let pids: Vec<i32> = multiproc::active_children().iter().map(|c| c.pid()).collect();
/// assert!(pids.contains(&p.pid().unwrap()));
/// p.kill().unwrap();
/// assert!(p.join().is_err());
/// assert!(multiproc::active_children().is_empty());
/// # }
/// ```
pub fn active_children() -> Vec<ProcessInfo> {
    runtime::sweep()
        .into_iter()
        .map(|c| ProcessInfo { name: c.name.clone(), pid: c.pid, daemon: c.daemon, identity: c.identity.clone() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn triple(x: u32) -> u32 {
        x * 3
    }

    // The library's own unit tests are a test binary too: children must
    // start from it under every method, like from any other program.
    #[test]
    fn unit_test_binaries_start_children() {
        for m in StartMethod::ALL {
            let mut p = Process::new(triple, (14,)).with_start_method(m);
            p.start().unwrap();
            assert_eq!(p.join_timeout(Duration::from_secs(120)).unwrap(), Some(42), "{m}");
        }
    }

    #[test]
    fn identities_nest() {
        let mut rt = runtime::lock();
        let saved = (rt.me.identity.clone(), rt.counter);
        rt.me.identity = vec![3];
        rt.counter = 1;
        let (identity, name) = rt.next_child_identity();
        (rt.me.identity, rt.counter) = saved;
        assert_eq!(identity, [3, 2]);
        assert_eq!(name, "Process-3:2");
    }
}
