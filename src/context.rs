//! Start methods: how a child process comes to be (Python's
//! `set_start_method` and `get_context`).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::process::{Process, Run, Target};
use crate::{Error, Result};

/// How a child process is created.
///
/// | method | how | cost | threads in the parent | what the child can run |
/// |---|---|---|---|---|
/// | [`Forkserver`](Self::Forkserver) (default) | a small single-threaded server, itself spawned fresh, forks each child | lowest | safe | `fn` items and non-capturing closures; arguments are serialized |
/// | [`Spawn`](Self::Spawn) | `posix_spawn` of the running executable | a fresh exec each time | safe | as forkserver |
/// | [`Fork`](Self::Fork) | `fork()` of the parent | grows with the parent's memory | **unsafe** if another thread holds a lock at the moment of the fork | anything, including capturing closures; nothing is serialized |
///
/// The default is `Forkserver`, as in Python 3.14: it is the fastest way to
/// start a process that is safe whatever threads the parent runs, and the
/// child starts from a clean state, like `Spawn`. The environment variable
/// `MULTIPROC_START_METHOD` (`fork`, `spawn` or `forkserver`) overrides the
/// default; [`set_start_method`] overrides both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
///
/// ```
/// use multiproc::StartMethod;
/// assert_eq!("spawn".parse::<StartMethod>().unwrap(), StartMethod::Spawn);
/// assert_eq!(StartMethod::Forkserver.to_string(), "forkserver");
/// ```
pub enum StartMethod {
    /// `fork()` the parent.
    Fork,
    /// `posix_spawn` a fresh copy of the executable.
    Spawn,
    /// Ask the forkserver to fork a child.
    Forkserver,
}

impl StartMethod {
    /// All start methods, in Python's order of `get_all_start_methods`.
    pub const ALL: [StartMethod; 3] = [StartMethod::Forkserver, StartMethod::Spawn, StartMethod::Fork];

    /// The method's name, as Python spells it.
    ///
    /// ```
    /// assert_eq!(multiproc::StartMethod::Fork.as_str(), "fork");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::Forkserver => "forkserver",
        }
    }

    fn code(self) -> u8 {
        match self {
            StartMethod::Fork => 1,
            StartMethod::Spawn => 2,
            StartMethod::Forkserver => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(StartMethod::Fork),
            2 => Some(StartMethod::Spawn),
            3 => Some(StartMethod::Forkserver),
            _ => None,
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StartMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fork" => Ok(StartMethod::Fork),
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::Forkserver),
            other => Err(Error::UnknownStartMethod(other.to_owned())),
        }
    }
}

static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// Sets the start method for every process started without one of its own.
///
/// As in Python, it can be set once; setting it again to another method is
/// an error (setting the same one again is not).
///
/// ```
/// use multiproc::{set_start_method, get_start_method, StartMethod};
/// set_start_method(StartMethod::Spawn).unwrap();
/// assert_eq!(get_start_method(), StartMethod::Spawn);
/// assert!(set_start_method(StartMethod::Fork).is_err());
/// ```
pub fn set_start_method(method: StartMethod) -> Result<()> {
    match CHOSEN.compare_exchange(0, method.code(), Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Ok(()),
        Err(current) if current == method.code() => Ok(()),
        Err(current) => Err(Error::StartMethodAlreadySet {
            current: StartMethod::from_code(current).expect("only valid codes are stored"),
        }),
    }
}

/// The start method in force: the one set with [`set_start_method`], else
/// `MULTIPROC_START_METHOD` from the environment, else
/// [`StartMethod::Forkserver`].
///
/// ```
/// println!("children start with {}", multiproc::get_start_method());
/// ```
pub fn get_start_method() -> StartMethod {
    if let Some(m) = StartMethod::from_code(CHOSEN.load(Ordering::Acquire)) {
        return m;
    }
    std::env::var("MULTIPROC_START_METHOD").ok().and_then(|v| v.parse().ok()).unwrap_or(StartMethod::Forkserver)
}

/// A start method bound to a factory of processes (Python's `get_context`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{get_context, StartMethod};
/// fn double(x: i32) -> i32 { x * 2 }
/// let ctx = get_context(StartMethod::Spawn);
/// let mut p = ctx.process(double, (21,));
/// p.start().unwrap();
/// assert_eq!(p.join().unwrap(), 42);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    method: StartMethod,
}

/// A [`Context`] for `method`.
///
/// ```
/// let ctx = multiproc::get_context(multiproc::StartMethod::Fork);
/// assert_eq!(ctx.start_method(), multiproc::StartMethod::Fork);
/// ```
pub fn get_context(method: StartMethod) -> Context {
    Context { method }
}

impl Context {
    /// This context's start method.
    ///
    /// ```
    /// use multiproc::{get_context, StartMethod};
    /// assert_eq!(get_context(StartMethod::Spawn).start_method(), StartMethod::Spawn);
    /// ```
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// A process that runs `target(args…)` with this context's start method.
    ///
    /// See [`Context`] for an example.
    pub fn process<F, A, R>(&self, target: F, args: A) -> Process<R>
    where
        F: Target<A, Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        Process::new(target, args).with_start_method(self.method)
    }

    /// A process that runs `object.run()` with this context's start method.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use multiproc::{get_context, Run, StartMethod};
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Hello;
    /// impl Run for Hello {
    ///     type Output = String;
    ///     fn run(self) -> String { "hello".into() }
    /// }
    /// let mut p = get_context(StartMethod::Fork).process_run(Hello);
    /// p.start().unwrap();
    /// assert_eq!(p.join().unwrap(), "hello");
    /// # }
    /// ```
    pub fn process_run<T>(&self, object: T) -> Process<T::Output>
    where
        T: Run + Serialize + DeserializeOwned,
    {
        Process::from_run(object).with_start_method(self.method)
    }
}
