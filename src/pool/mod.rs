//! `Pool`: Python's process pool (`multiprocessing.Pool`), which never hangs
//! when a worker dies.
//!
//! Workers are [`Process`](crate::Process)es running a task loop; a
//! supervisor thread in the parent feeds them (see `supervisor.rs`). Tasks
//! are functions as for `Process` (`fn` items, non-capturing closures) with
//! serde arguments; [`Handle`](crate::Handle)s travel in them too, even to
//! workers that are already running (Python refuses that).

mod answers;
mod chunk;
mod completion;
mod mailbox;
#[cfg(feature = "progress")]
mod progress;
pub(crate) mod result;
mod state;
mod stats;
pub(crate) mod supervisor;
mod worker;

use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bootstrap::entry_ref;
use crate::error::{Payload, Side};
use crate::process::{Signature, Target, entry_of};
use crate::reduction;
use crate::wire::EntryRef;
use crate::{Error, Handle, Result, StartMethod};

pub use completion::{AsCompleted, CallState, Completion, ReturnWhen, Waited, as_completed, wait};
pub use result::AsyncResult;
use result::{Args, ChannelSink, Delivered, MapSink, RawItem, Reorder, Sink, Slot};
pub use state::WithState;
pub use stats::{PoolStats, Restart, RestartReason, SlowTask, WorkerStats};
use supervisor::{Config, PackedItem, Shared, Status, Task};
use worker::Init;
pub use worker::worker_id;

/// A pool of worker processes (Python's `multiprocessing.Pool`).
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::Pool;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::new(4).unwrap();
/// assert_eq!(pool.map(square, 1..=5).unwrap(), [1, 4, 9, 16, 25]);
/// assert_eq!(pool.apply(square, (12,)).unwrap(), 144);
/// let r = pool.apply_async(square, (3,));
/// assert_eq!(r.get().unwrap(), 9);
/// let sum: u64 = pool.imap_unordered(square, 0..100).map(Result::unwrap).sum();
/// assert_eq!(sum, 328350);
/// pool.close();
/// pool.join().unwrap();
/// # }
/// ```
///
/// A worker that dies in the middle of a task (killed, segfault, abort,
/// `exit`) fails that task with [`Error::WorkerDied`] naming its pid and the
/// signal or exit code; the pool starts a replacement and the other tasks
/// go on. (Python's pool waits forever for such a task;
/// `ProcessPoolExecutor` breaks the whole pool.) A task that panics fails
/// with [`Error::Panicked`]; one whose arguments or result cannot be
/// (de)serialized fails alone.
///
/// Dropping a pool terminates it, as leaving Python's `with Pool() as p:`
/// block does: unfinished tasks fail with [`Error::PoolTerminated`]. To let
/// them finish, [`close`](Self::close) and [`join`](Self::join) first.
pub struct Pool {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    processes: usize,
    /// Worker processes a Redis-backed pool started here.
    helpers: Mutex<Vec<crate::Process<()>>>,
    /// Results a Redis-backed pool dropped as second ones.
    duplicates: Arc<std::sync::atomic::AtomicU64>,
    /// Told how far each map-like call has come.
    progress: Option<Progress>,
}

/// A progress callback: `(done, total)`, the total when known.
pub(crate) type Progress = Arc<dyn Fn(usize, Option<usize>) + Send + Sync>;

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("processes", &self.processes).finish()
    }
}

/// Options for a [`Pool`] (Python's `Pool(processes, initializer,
/// initargs, maxtasksperchild, context)`), plus a per-task timeout.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use std::time::Duration;
/// use multiproc::{Pool, StartMethod};
///
/// fn setup(greeting: String) { println!("{greeting} from {}", multiproc::os::getpid()); }
/// fn double(x: i32) -> i32 { x * 2 }
///
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(setup, ("hello".to_string(),))
///     .maxtasksperchild(100)
///     .start_method(StartMethod::Forkserver)
///     .task_timeout(Duration::from_secs(60))
///     .build()
///     .unwrap();
/// assert_eq!(pool.map(double, [1, 2, 3]).unwrap(), [2, 4, 6]);
/// # }
/// ```
#[derive(Default)]
pub struct PoolBuilder {
    processes: Option<usize>,
    init: Option<std::result::Result<Init, String>>,
    state: Option<Init>,
    exit: Option<Init>,
    progress: Option<Progress>,
    maxtasks: Option<u64>,
    method: Option<StartMethod>,
    task_timeout: Option<Duration>,
    #[cfg(feature = "cluster")]
    cluster: Option<crate::cluster::Config>,
    #[cfg(feature = "cluster")]
    local_workers: usize,
    #[cfg(feature = "cluster")]
    cluster_tls: Option<crate::cluster::Tls>,
    #[cfg(feature = "cluster")]
    cluster_lease: Option<(Duration, u64)>,
    /// See [`PoolBuilder::tasks_from_afar`].
    from_afar: bool,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("maxtasks", &self.maxtasks)
            .field("method", &self.method)
            .field("task_timeout", &self.task_timeout)
            .finish()
    }
}

impl PoolBuilder {
    /// Its tasks come from afar (a Redis-backed pool's worker takes them
    /// from Redis): neither the supervisor nor the workers spin looking for
    /// the next one, which is a Redis round trip away at best. On a small
    /// machine their spinning took the cores that Redis and the worker's
    /// threads needed (2 vCPUs: a remote round trip 130-150 µs with it,
    /// 80-110 without; 10-11.5 k tasks/s with it, 12-14 k without).
    #[cfg(feature = "cluster")]
    pub(crate) fn tasks_from_afar(mut self) -> Self {
        self.from_afar = true;
        self
    }

    /// The number of workers (default: [`os::process_cpu_count`](crate::os::process_cpu_count)).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A function each worker runs once before its first task. If it fails,
    /// no task can run: every task fails with [`Error::InitializerFailed`]
    /// (Python restarts such workers forever).
    pub fn initializer<F, A>(mut self, _f: F, args: A) -> Self
    where
        F: Target<A, Output = ()>,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        let entry = entry_ref(entry_of::<F, A>());
        self.init = Some(reduction::encode(&args).map(|(payload, fds)| Init {
            entry,
            payload,
            fds: fds.into_iter().map(Handle::new).collect(),
        }));
        self
    }

    /// A state each worker makes once, with `make`, before its first task
    /// (and before the [`initializer`](Self::initializer)), and hands to
    /// every task wrapped in [`WithState`] by `&mut`: a model loaded once
    /// per worker, a database connection (mpire's `worker_state`). It lives
    /// in the worker only: it needs no serde. If `make` panics, every task
    /// fails with [`Error::InitializerFailed`]. Local pools only: a
    /// Redis-backed pool's `build` refuses it.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use multiproc::{Pool, WithState};
    /// fn connect() -> Vec<String> { Vec::new() }
    /// fn log(seen: &mut Vec<String>, line: String) -> usize { seen.push(line); seen.len() }
    /// let pool = Pool::builder().processes(1).worker_state(connect).build().unwrap();
    /// assert_eq!(pool.apply(WithState::new(log), ("a".to_string(),)).unwrap(), 1);
    /// assert_eq!(pool.apply(WithState::new(log), ("b".to_string(),)).unwrap(), 2);
    /// # }
    /// ```
    pub fn worker_state<F, S>(mut self, _make: F) -> Self
    where
        F: Target<(), Output = S>,
        S: 'static,
    {
        let entry = entry_ref(entry_of::<state::MakeState<F, S>, ()>());
        self.state =
            Some(Init { entry, payload: reduction::encode(&()).expect("() always encodes").0, fds: Vec::new() });
        self
    }

    /// A hook each worker runs on its [`worker_state`](Self::worker_state)
    /// as it leaves in order (the pool closed and joined, or its
    /// [`maxtasksperchild`](Self::maxtasksperchild) reached): flush a
    /// cache, count what it did (mpire's `worker_exit`). What it returns is
    /// collected by [`Pool::exit_results`]. A worker that dies or is
    /// terminated runs no hook. `f` takes `&mut S` only and returns a serde
    /// value without handles.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use multiproc::{Pool, WithState};
    /// fn start() -> u32 { 0 }
    /// fn count(calls: &mut u32, x: u32) -> u32 { *calls += 1; x }
    /// fn report(calls: &mut u32) -> u32 { *calls }
    /// let pool = Pool::builder().processes(2).worker_state(start).worker_exit(report).build().unwrap();
    /// pool.map(WithState::new(count), 0..10).unwrap();
    /// pool.close();
    /// pool.join().unwrap();
    /// let per_worker: Vec<u32> = pool.exit_results().into_iter().map(Result::unwrap).collect();
    /// assert_eq!(per_worker.len(), 2);
    /// assert_eq!(per_worker.iter().sum::<u32>(), 10);
    /// # }
    /// ```
    pub fn worker_exit<F, S, T>(mut self, _f: F) -> Self
    where
        F: Fn(&mut S) -> T + Copy + Send + 'static,
        S: 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let entry = entry_ref(entry_of::<WithState<F, S>, ()>());
        self.exit =
            Some(Init { entry, payload: reduction::encode(&()).expect("() always encodes").0, fds: Vec::new() });
        self
    }

    /// Calls `report(done, total)` as the results of every `map`,
    /// `starmap` (and their `_async` forms), `imap` and `imap_unordered`
    /// of the pool come in: `done` of that call so far, `total` when known
    /// (an `imap`'s input with an exact size). A tqdm-style bar hangs on
    /// it; it changes no result and no order. For `map`-like calls it runs
    /// on the pool's own thread, for `imap` on the consumer's: keep it
    /// quick.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use std::sync::{Arc, Mutex};
    /// fn square(x: u64) -> u64 { x * x }
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let pool = multiproc::Pool::builder()
    ///     .processes(2)
    ///     .on_progress(move |done, total| log.lock().unwrap().push((done, total)))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.map(square, 1..=4).unwrap(), [1, 4, 9, 16]);
    /// assert_eq!(*seen.lock().unwrap(), [(1, Some(4)), (2, Some(4)), (3, Some(4)), (4, Some(4))]);
    /// # }
    /// ```
    pub fn on_progress(mut self, report: impl Fn(usize, Option<usize>) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(report));
        self
    }

    /// An indicatif progress bar on stderr (feature `progress`) for every
    /// `map`, `starmap` (and their `_async` forms), `imap` and
    /// `imap_unordered` of the pool, as tqdm draws: position, total when
    /// known, elapsed, ETA and rate. Drawn only when stderr is a terminal;
    /// results and their order do not change. It is an
    /// [`on_progress`](Self::on_progress) report (the two replace each
    /// other), one bar per call, calls one after another.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = multiproc::Pool::builder().processes(2).progress_bar().build().unwrap();
    /// assert_eq!(pool.map(square, 1..=4).unwrap(), [1, 4, 9, 16]);
    /// # }
    /// ```
    #[cfg(feature = "progress")]
    #[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
    pub fn progress_bar(mut self) -> Self {
        self.progress = Some(progress::reporter());
        self
    }

    /// Replace each worker after it has run this many tasks (chunks).
    pub fn maxtasksperchild(mut self, n: u64) -> Self {
        self.maxtasks = Some(n.max(1));
        self
    }

    /// How the workers are started (default: the global start method).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Kill a worker whose task runs longer than this; the task fails with
    /// [`Error::TaskTimeout`] and the worker is replaced. On a Redis-backed
    /// pool, each task carries it to the worker that runs it.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Sends the tasks through Redis, to the workers of pool `pool`
    /// (feature `cluster`; see [`crate::cluster`]). Every call of the pool
    /// works the same; the workers run wherever their programs were
    /// started. [`processes`](Self::processes) is then how many tasks the
    /// pool counts on running at once (for `map`'s default chunk size;
    /// default: this machine's CPU count); use
    /// [`local_workers`](Self::local_workers) to run some here.
    ///
    /// ```no_run
    /// # #[multiproc::main] fn main() {
    /// fn double(x: i32) -> i32 { x * 2 }
    /// let pool = multiproc::Pool::builder().redis("redis://127.0.0.1/", "jobs").local_workers(2).build().unwrap();
    /// assert_eq!(pool.map(double, [1, 2, 3]).unwrap(), [2, 4, 6]);
    /// # }
    /// ```
    #[cfg(feature = "cluster")]
    pub fn redis(mut self, url: &str, pool: &str) -> Self {
        self.cluster = Some(crate::cluster::Config::new(url, pool));
        self
    }

    /// Certificates for a Redis-backed pool's `rediss://` URL (default: from
    /// the environment, see [`cluster::Tls`](crate::cluster::Tls)); its
    /// local workers use them too.
    ///
    /// ```no_run
    /// # #[multiproc::main] fn main() {
    /// use multiproc::{Pool, cluster::Tls};
    /// let tls = Tls::default().ca("ca.pem").client("me.pem", "me.key");
    /// let pool = Pool::builder().redis("rediss://redis.example:6380/", "jobs").redis_tls(tls).build().unwrap();
    /// # }
    /// ```
    #[cfg(feature = "cluster")]
    pub fn redis_tls(mut self, tls: crate::cluster::Tls) -> Self {
        self.cluster_tls = Some(tls);
        self
    }

    /// Also runs a worker here, with `slots` slots, for a Redis-backed pool:
    /// one machine then works with nothing but a Redis URL.
    #[cfg(feature = "cluster")]
    pub fn local_workers(mut self, slots: usize) -> Self {
        self.local_workers = slots;
        self
    }

    /// A Redis-backed pool's lease and deliveries before a dead letter
    /// (for its local workers; remote ones have their own).
    #[cfg(feature = "cluster")]
    pub fn cluster_lease(mut self, lease: Duration, max_deliveries: u64) -> Self {
        self.cluster_lease = Some((lease, max_deliveries));
        self
    }

    /// Starts the pool.
    pub fn build(self) -> Result<Pool> {
        let processes = self.processes.unwrap_or_else(crate::os::process_cpu_count).max(1);
        let init = match self.init {
            None => None,
            Some(Ok(init)) => Some(init),
            Some(Err(message)) => return Err(Error::Encode { what: Payload::Arguments, side: Side::Parent, message }),
        };
        let config = Config {
            processes,
            method: self.method.unwrap_or_else(crate::get_start_method),
            init,
            state: self.state,
            exit: self.exit,
            maxtasks: self.maxtasks,
            task_timeout: self.task_timeout,
            spin: !self.from_afar,
        };
        let shared = Shared::new().map_err(|source| Error::Io { context: "eventfd for a pool", source })?;
        let thread_shared = shared.clone();
        #[cfg(feature = "cluster")]
        if let Some(mut cluster) = self.cluster {
            if config.state.is_some() || config.exit.is_some() {
                // Its workers are other programs' processes: no state of
                // ours reaches them, and tasks wanting one would only fail.
                return Err(Error::InvalidOption(
                    "worker_state and worker_exit are for local pools; a Redis-backed pool's workers keep no state",
                ));
            }
            cluster.task_timeout = self.task_timeout;
            if let Some(tls) = self.cluster_tls {
                cluster.tls = tls;
            }
            if let Some((lease, max_deliveries)) = self.cluster_lease {
                cluster.lease = lease;
                cluster.reclaim = (lease / 4).max(Duration::from_millis(50));
                cluster.max_deliveries = max_deliveries.max(1);
            }
            crate::cluster::check_reachable(&cluster)?;
            let mut helpers = Vec::new();
            if self.local_workers > 0 {
                let mut p = crate::Process::new(
                    crate::cluster::local_worker,
                    (
                        cluster.url.clone(),
                        cluster.pool.clone(),
                        self.local_workers,
                        cluster.lease.as_millis() as u64,
                        cluster.tls.clone(),
                    ),
                )
                .with_daemon(true)
                .with_name("ClusterWorker");
                p.start()?;
                helpers.push(p);
            }
            let duplicates = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counted = duplicates.clone();
            let transport = std::thread::Builder::new()
                .name("multiproc-cluster".into())
                .spawn(move || crate::cluster::run_submitter(thread_shared, cluster, counted))
                .map_err(|source| Error::Io { context: "starting the pool's transport thread", source })?;
            return Ok(Pool {
                shared,
                supervisor: Mutex::new(Some(transport)),
                processes,
                helpers: Mutex::new(helpers),
                duplicates,
                progress: self.progress,
            });
        }
        let supervisor = std::thread::Builder::new()
            .name("multiproc-pool".into())
            .spawn(move || supervisor::run(thread_shared, config))
            .map_err(|source| Error::Io { context: "starting the pool's supervisor thread", source })?;
        Ok(Pool {
            shared,
            supervisor: Mutex::new(Some(supervisor)),
            processes,
            helpers: Mutex::new(Vec::new()),
            duplicates: Arc::default(),
            progress: self.progress,
        })
    }
}

/// Packs one call's arguments; an error is that call's result.
fn pack<T: Serialize + ?Sized>(args: &T) -> std::result::Result<PackedItem, Error> {
    reduction::encode(args).map(|(bytes, fds)| PackedItem { bytes, fds }).map_err(|message| Error::Encode {
        what: Payload::Arguments,
        side: Side::Parent,
        message,
    })
}

/// Where a worker finds the code for one call of `F`, and for a chunk.
#[derive(Clone, Copy)]
struct Entries {
    single: EntryRef,
    chunk: EntryRef,
    signature: fn() -> Signature,
    describe: result::Describe,
}

impl Entries {
    fn of<F, T>() -> Entries
    where
        F: Target<T>,
        F::Output: Serialize,
        T: Serialize + DeserializeOwned,
    {
        Entries {
            single: entry_ref(entry_of::<F, T>()),
            chunk: entry_ref(chunk::chunk_entry_of::<F, T>()),
            signature: Signature::of::<F, T>,
            describe: result::describe_of::<T>,
        }
    }
}

/// Python's default map chunk size: ⌈items / (4 × workers)⌉.
fn default_chunksize(items: usize, workers: usize) -> usize {
    items.div_ceil(4 * workers).max(1)
}

impl Pool {
    /// Python's `Pool()`: one worker per CPU this process may use
    /// ([`os::process_cpu_count`](crate::os::process_cpu_count)), default
    /// options.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = multiproc::Pool::auto().unwrap();
    /// assert_eq!(pool.processes(), multiproc::os::process_cpu_count());
    /// assert_eq!(pool.map(square, [3]).unwrap(), [9]);
    /// # }
    /// ```
    pub fn auto() -> Result<Pool> {
        Pool::builder().build()
    }

    /// A pool of `processes` workers with the default options.
    ///
    /// See [`Pool`] for an example.
    pub fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build()
    }

    /// Options for a new pool.
    ///
    /// See [`PoolBuilder`] for an example.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of workers.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// assert_eq!(multiproc::Pool::new(3).unwrap().processes(), 3);
    /// # }
    /// ```
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// Splits calls into tasks of `chunksize` and queues them. A chunk
    /// travels as one value; if that cannot be encoded, its calls travel one
    /// by one and those that cannot be encoded fail at once.
    fn submit_calls<T: Serialize>(&self, entries: Entries, calls: Vec<T>, chunksize: usize, sink: Arc<dyn Sink>) {
        let mut tasks = Vec::new();
        let mut base = 0;
        for chunk in calls.chunks(chunksize.max(1)) {
            if chunk.len() > 1
                && let Ok(item) = pack(chunk)
            {
                let calls = chunk.len();
                tasks.push(Task {
                    entry: entries.chunk,
                    items: vec![item],
                    base,
                    batch: true,
                    calls,
                    sink: sink.clone(),
                    timeout: None,
                    signature: Some(entries.signature),
                    describe: Some(entries.describe),
                    unbegun: 0,
                });
                base += calls;
                continue;
            }
            for call in chunk {
                match pack(call) {
                    Ok(item) => tasks.push(Task {
                        entry: entries.single,
                        items: vec![item],
                        base,
                        batch: false,
                        calls: 1,
                        sink: sink.clone(),
                        timeout: None,
                        signature: Some(entries.signature),
                        describe: Some(entries.describe),
                        unbegun: 0,
                    }),
                    Err(e) => {
                        let show = || result::show_call(call);
                        sink.deliver_with(base, RawItem::Failed(e), Args::Value(&show));
                    }
                }
                base += 1;
            }
        }
        self.shared.submit(tasks);
    }

    /// Runs `f(args…)` in a worker and waits for its value (Python's `apply`).
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn add(a: i32, b: i32) -> i32 { a + b }
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// assert_eq!(pool.apply(add, (2, 3)).unwrap(), 5);
    /// # }
    /// ```
    pub fn apply<F, A, R>(&self, f: F, args: A) -> Result<R>
    where
        F: Target<A, Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async(f, args).get()
    }

    /// Queues `f(args…)` and returns at once (Python's `apply_async`).
    /// Failures, including a closed pool, arrive through the result.
    ///
    /// See [`AsyncResult`] for an example.
    pub fn apply_async<F, A, R>(&self, _f: F, args: A) -> AsyncResult<R>
    where
        F: Target<A, Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let slot = Slot::<R>::new();
        slot.on_cancel(self.nudge());
        let entry = entry_ref(entry_of::<F, A>());
        match pack(&args) {
            Ok(item) => self.shared.submit([Task {
                describe: None,
                unbegun: 0,
                entry,
                items: vec![item],
                base: 0,
                batch: false,
                calls: 1,
                sink: slot.clone(),
                timeout: None,
                signature: Some(Signature::of::<F, A>),
            }]),
            Err(e) => slot.complete(Err(e)),
        }
        AsyncResult::new(slot)
    }

    /// `f(x)` for every `x`, in input order (Python's `map`), with Python's
    /// default chunk size. The first failure is returned as soon as it
    /// happens.
    ///
    /// See [`Pool`] for an example.
    pub fn map<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        F: Target<(A,), Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_async(f, items).get()
    }

    /// [`map`](Self::map) with tasks of `chunksize` items.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn inc(x: u32) -> u32 { x + 1 }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// assert_eq!(pool.map_chunksize(inc, 0..6, 4).unwrap(), [1, 2, 3, 4, 5, 6]);
    /// # }
    /// ```
    pub fn map_chunksize<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>, chunksize: usize) -> Result<Vec<R>>
    where
        F: Target<(A,), Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.starmap_async_chunksize(f, items.into_iter().map(|a| (a,)), Some(chunksize)).get()
    }

    /// [`map`](Self::map) without waiting (Python's `map_async`): the result
    /// is the whole list.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn inc(x: u32) -> u32 { x + 1 }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// let all = pool.map_async(inc, [1, 2, 3]).callback(|v| println!("got {v:?}"));
    /// assert_eq!(all.get().unwrap(), [2, 3, 4]);
    /// # }
    /// ```
    pub fn map_async<F, A, R>(&self, f: F, items: impl IntoIterator<Item = A>) -> AsyncResult<Vec<R>>
    where
        F: Target<(A,), Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.starmap_async_chunksize(f, items.into_iter().map(|a| (a,)), None)
    }

    /// [`map_async`](Self::map_async) with tasks of `chunksize` items
    /// (Python's `map_async(f, items, chunksize)`).
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn inc(x: u32) -> u32 { x + 1 }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// assert_eq!(pool.map_async_chunksize(inc, 0..5, 2).get().unwrap(), [1, 2, 3, 4, 5]);
    /// # }
    /// ```
    pub fn map_async_chunksize<F, A, R>(
        &self,
        f: F,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> AsyncResult<Vec<R>>
    where
        F: Target<(A,), Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.starmap_async_chunksize(f, items.into_iter().map(|a| (a,)), Some(chunksize))
    }

    /// `f(a, b, …)` for every tuple of arguments, in input order (Python's
    /// `starmap`).
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn pow(base: u64, exp: u32) -> u64 { base.pow(exp) }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// assert_eq!(pool.starmap(pow, [(2, 10), (3, 3)]).unwrap(), [1024, 27]);
    /// # }
    /// ```
    pub fn starmap<F, T, R>(&self, f: F, items: impl IntoIterator<Item = T>) -> Result<Vec<R>>
    where
        F: Target<T, Output = R>,
        T: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.starmap_async_chunksize(f, items, None).get()
    }

    /// [`starmap`](Self::starmap) without waiting (Python's `starmap_async`).
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn add(a: i32, b: i32) -> i32 { a + b }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// assert_eq!(pool.starmap_async(add, [(1, 2), (3, 4)]).get().unwrap(), [3, 7]);
    /// # }
    /// ```
    pub fn starmap_async<F, T, R>(&self, f: F, items: impl IntoIterator<Item = T>) -> AsyncResult<Vec<R>>
    where
        F: Target<T, Output = R>,
        T: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.starmap_async_chunksize(f, items, None)
    }

    /// [`starmap_async`](Self::starmap_async) with tasks of `chunksize`
    /// items (`None`: Python's default).
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn add(a: i32, b: i32) -> i32 { a + b }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// let r = pool.starmap_async_chunksize(add, [(1, 2), (3, 4), (5, 6)], Some(2));
    /// assert_eq!(r.get().unwrap(), [3, 7, 11]);
    /// # }
    /// ```
    pub fn starmap_async_chunksize<F, T, R>(
        &self,
        _f: F,
        items: impl IntoIterator<Item = T>,
        chunksize: Option<usize>,
    ) -> AsyncResult<Vec<R>>
    where
        F: Target<T, Output = R>,
        T: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let items = items.into_iter();
        let mut calls: Vec<T> = crate::sys::vec_with_capacity(items.size_hint().0);
        calls.extend(items);
        let chunksize = chunksize.unwrap_or_else(|| default_chunksize(calls.len(), self.processes));
        let slot = Slot::<Vec<R>>::new();
        slot.on_cancel(self.nudge());
        let sink = MapSink::<R>::new(calls.len(), slot.clone(), self.progress.clone());
        if !calls.is_empty() {
            self.submit_calls(Entries::of::<F, T>(), calls, chunksize, sink);
        }
        AsyncResult::new(slot)
    }

    /// A lazy iterator of `f(x)` in input order (Python's `imap`, chunk size
    /// 1). The input is read only as fast as results are consumed, so an
    /// endless input works in bounded memory.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// let first: Vec<u64> = pool.imap(square, 1..).take(4).map(Result::unwrap).collect();
    /// assert_eq!(first, [1, 4, 9, 16]);
    /// # }
    /// ```
    pub fn imap<F, A, R, I>(&self, f: F, items: I) -> IMap<'_, I::IntoIter, R>
    where
        F: Target<(A,), Output = R>,
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.imap_chunksize(f, items, 1)
    }

    /// [`imap`](Self::imap) with tasks of `chunksize` items.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn neg(x: i64) -> i64 { -x }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// let v: Vec<i64> = pool.imap_chunksize(neg, 0..10, 3).map(Result::unwrap).collect();
    /// assert_eq!(v, (0..10).map(|x| -x).collect::<Vec<_>>());
    /// # }
    /// ```
    pub fn imap_chunksize<F, A, R, I>(&self, _f: F, items: I, chunksize: usize) -> IMap<'_, I::IntoIter, R>
    where
        F: Target<(A,), Output = R>,
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        IMap::new(self, Entries::of::<F, (A,)>(), items.into_iter(), chunksize, true)
    }

    /// Like [`imap`](Self::imap), but results come in the order they finish
    /// (Python's `imap_unordered`).
    ///
    /// See [`Pool`] for an example.
    pub fn imap_unordered<F, A, R, I>(&self, f: F, items: I) -> IMap<'_, I::IntoIter, R>
    where
        F: Target<(A,), Output = R>,
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.imap_unordered_chunksize(f, items, 1)
    }

    /// [`imap_unordered`](Self::imap_unordered) with tasks of `chunksize` items.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn neg(x: i64) -> i64 { -x }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// let mut v: Vec<i64> = pool.imap_unordered_chunksize(neg, 0..10, 3).map(Result::unwrap).collect();
    /// v.sort();
    /// assert_eq!(v, (-9..=0).collect::<Vec<_>>());
    /// # }
    /// ```
    pub fn imap_unordered_chunksize<F, A, R, I>(&self, _f: F, items: I, chunksize: usize) -> IMap<'_, I::IntoIter, R>
    where
        F: Target<(A,), Output = R>,
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        IMap::new(self, Entries::of::<F, (A,)>(), items.into_iter(), chunksize, false)
    }

    /// No more tasks will be submitted; the workers leave once the queued
    /// ones are done (Python's `close`).
    ///
    /// See [`Pool`] for an example.
    pub fn close(&self) {
        self.shared.set_status(Status::Closed);
    }

    /// Python's `Executor.shutdown(wait=True, cancel_futures=...)`: no new
    /// tasks; with `cancel_pending`, every task not yet started is
    /// cancelled (its result is [`Error::Cancelled`]; it never runs); then
    /// waits for the rest and for the workers to leave.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use multiproc::{Event, Pool};
    /// fn nap(started: Event, ms: u64) -> u64 {
    ///     started.set().unwrap();
    ///     std::thread::sleep(std::time::Duration::from_millis(ms));
    ///     ms
    /// }
    /// let pool = Pool::new(1).unwrap();
    /// let started = Event::new().unwrap();
    /// let running = pool.apply_async(nap, (started.clone(), 200));
    /// started.wait(None).unwrap();
    /// let queued = pool.apply_async(nap, (Event::new().unwrap(), 1));
    /// pool.shutdown(true).unwrap();
    /// assert_eq!(running.get().unwrap(), 200);
    /// assert!(matches!(queued.get(), Err(multiproc::Error::Cancelled)));
    /// # }
    /// ```
    pub fn shutdown(&self, cancel_pending: bool) -> Result<()> {
        if cancel_pending {
            let queued = {
                let mut st = self.shared.lock();
                if st.status == Status::Running {
                    st.status = Status::Closed;
                }
                std::mem::take(&mut st.pending)
            };
            for t in queued {
                t.fail(|| Error::Cancelled);
            }
        }
        self.close();
        self.join()
    }

    /// What the [`worker_exit`](PoolBuilder::worker_exit) hooks of the
    /// workers that left in order returned, each as a `T`, one per worker
    /// (taken: a second call gives what came since). A hook that panicked
    /// is an [`Error::Panicked`]; `T` other than the hook's type, an
    /// [`Error::Decode`]. Call it after [`join`](Self::join) for every
    /// worker's; workers replaced after `maxtasksperchild` add theirs as
    /// they go (mpire's `get_exit_results`).
    pub fn exit_results<T: DeserializeOwned>(&self) -> Vec<Result<T>> {
        let results = std::mem::take(&mut self.shared.lock().exit_results);
        results
            .into_iter()
            .flat_map(|(outcome, worker, pid)| {
                result::RawItem::Outcome { outcome, fds: Vec::new(), worker: worker.into(), pid }.into_results::<T>()
            })
            .collect()
    }

    /// The pids of the pool's worker processes now, in worker order
    /// (`worker_id` 0 first); a worker that died and was replaced has its
    /// replacement's. Empty for a Redis-backed pool (its workers are
    /// elsewhere) and once the pool has stopped.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn pid(_: u32) -> u32 { std::process::id() }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// let seen = pool.map(pid, 0..4).unwrap();
    /// let pids = pool.pids();
    /// assert!(pids.len() <= 2 && seen.iter().all(|p| pids.contains(&(*p as i32))));
    /// # }
    /// ```
    pub fn pids(&self) -> Vec<i32> {
        self.shared.lock().pids.values().copied().collect()
    }

    /// What the pool's workers have done so far: per worker, the calls it
    /// ran, its busy and idle time, its start-up time and each restart with
    /// its reason; the slowest calls with their index; the pool's start-up
    /// time (mpire's worker insights). Its `Display` prints a small table.
    /// A Redis-backed pool's workers are elsewhere: its `workers` is empty.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn nap(ms: u64) { std::thread::sleep(std::time::Duration::from_millis(ms)) }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// pool.map_chunksize(nap, [1, 1, 30, 1], 1).unwrap();
    /// let stats = pool.stats();
    /// assert_eq!(stats.slowest[0].index, 2);
    /// assert!(stats.workers.iter().all(|w| w.restarts.is_empty()));
    /// print!("{stats}");
    /// # }
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.shared.stats().snapshot()
    }

    /// Stops the workers now; unfinished tasks fail with
    /// [`Error::PoolTerminated`] (Python's `terminate`).
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn nap() { std::thread::sleep(std::time::Duration::from_secs(60)) }
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// let r = pool.apply_async(nap, ());
    /// pool.terminate();
    /// assert!(matches!(r.get(), Err(multiproc::Error::PoolTerminated)));
    /// pool.join().unwrap();
    /// # }
    /// ```
    pub fn terminate(&self) {
        self.shared.set_status(Status::Terminating);
        self.wait_supervisor();
    }

    /// Waits for the workers to leave, after [`close`](Self::close) or
    /// [`terminate`](Self::terminate). Before either it is an error, as in
    /// Python ([`Error::PoolStillRunning`]).
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// assert!(matches!(pool.join(), Err(multiproc::Error::PoolStillRunning)));
    /// pool.close();
    /// pool.join().unwrap();
    /// # }
    /// ```
    pub fn join(&self) -> Result<()> {
        if self.shared.lock().status == Status::Running {
            return Err(Error::PoolStillRunning);
        }
        self.wait_supervisor();
        Ok(())
    }

    fn wait_supervisor(&self) {
        let handle = self.supervisor.lock().unwrap_or_else(PoisonError::into_inner).take();
        match handle {
            Some(h) => {
                let _ = h.join();
            }
            None => self.shared.wait_stopped(),
        }
        // Workers this pool started (a Redis-backed pool's local ones):
        // SIGTERM hands their tasks back; then they are gone.
        for mut p in std::mem::take(&mut *self.helpers.lock().unwrap_or_else(PoisonError::into_inner)) {
            let _ = p.terminate();
            if !matches!(p.join_timeout(Duration::from_secs(10)), Ok(Some(()))) {
                let _ = p.kill();
                let _ = p.join();
            }
        }
    }

    /// How many results a Redis-backed pool dropped because their task had
    /// one already (a worker that stalled past its lease and answered after
    /// another did; a task sent again after Redis lost data). Always 0 for
    /// a local pool, whose tasks run exactly once.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// assert_eq!(multiproc::Pool::new(1).unwrap().duplicate_results(), 0);
    /// # }
    /// ```
    pub fn duplicate_results(&self) -> u64 {
        self.duplicates.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What a cancelled call uses to make the supervisor look at once (a
    /// weak reference: a forgotten result keeps no pool alive).
    pub(crate) fn nudge(&self) -> result::Nudge {
        let shared = Arc::downgrade(&self.shared);
        Box::new(move || {
            if let Some(s) = shared.upgrade() {
                s.note_cancel();
            }
        })
    }

    /// Queues tasks made elsewhere in the crate (a cluster worker's).
    #[cfg(feature = "cluster")]
    pub(crate) fn submit_tasks(&self, tasks: impl IntoIterator<Item = supervisor::Task>) {
        self.shared.submit(tasks);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: yields one
/// `Result` per input item, reading the input lazily.
pub struct IMap<'p, I, R> {
    pool: &'p Pool,
    entries: Entries,
    input: Option<I>,
    chunksize: usize,
    submitted: usize,
    yielded: usize,
    limit: usize,
    tx: mpsc::Sender<Delivered>,
    rx: mpsc::Receiver<Delivered>,
    results: Reorder<Result<R>>,
    /// The input's length when it says exactly, for progress reports.
    total: Option<usize>,
}

impl<I, R> std::fmt::Debug for IMap<'_, I, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap").field("submitted", &self.submitted).field("yielded", &self.yielded).finish()
    }
}

impl<'p, I, A, R> IMap<'p, I, R>
where
    I: Iterator<Item = A>,
    A: Serialize,
{
    fn new(pool: &'p Pool, entries: Entries, input: I, chunksize: usize, ordered: bool) -> Self {
        let chunksize = chunksize.max(1);
        let (tx, rx) = mpsc::channel();
        // Enough in flight to keep every worker's pipeline full, no more.
        let limit = (pool.processes * 64).max(pool.processes * chunksize * 2);
        let total = match input.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        IMap {
            total,
            pool,
            entries,
            input: Some(input),
            chunksize,
            submitted: 0,
            yielded: 0,
            limit,
            tx,
            rx,
            results: Reorder::new(ordered),
        }
    }

    /// At most `tasks` tasks (of `chunksize` calls each) submitted ahead of
    /// what has been consumed (Python 3.14's `buffersize`); the input is
    /// read no further ahead than that. The default keeps every worker's
    /// pipeline full: 64 calls per process (or two chunks).
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = multiproc::Pool::new(2).unwrap();
    /// let read = AtomicUsize::new(0);
    /// let input = (0..100u64).inspect(|_| { read.fetch_add(1, Ordering::SeqCst); });
    /// let mut squares = pool.imap(square, input).buffersize(4);
    /// assert_eq!(squares.next().unwrap().unwrap(), 0);
    /// assert!(read.load(Ordering::SeqCst) <= 4, "read ahead no further than 4 tasks");
    /// assert_eq!(squares.map(Result::unwrap).sum::<u64>(), (1..100u64).map(|x| x * x).sum::<u64>());
    /// # }
    /// ```
    pub fn buffersize(mut self, tasks: usize) -> Self {
        self.limit = tasks.max(1) * self.chunksize;
        self
    }

    /// Reads as much input as may be in flight and submits it in one go.
    fn fill(&mut self) {
        let ahead = self.submitted - self.yielded;
        let room = self.limit.saturating_sub(ahead);
        // Refilled by halves, not by one task per result taken: each
        // submission costs a wake-up somewhere, and half the limit still
        // ahead keeps every worker busy. With nothing ahead it fills at once.
        if room < self.chunksize || (ahead > 0 && room < self.limit / 2) {
            return;
        }
        let Some(input) = self.input.as_mut() else { return };
        let want = room - room % self.chunksize;
        let calls: Vec<(A,)> = input.by_ref().take(want).map(|a| (a,)).collect();
        if calls.len() < want {
            self.input = None;
        }
        if calls.is_empty() {
            return;
        }
        let sink = Arc::new(ChannelSink(Mutex::new(self.tx.clone())));
        let n = calls.len();
        let base = self.submitted;
        self.pool.submit_calls(self.entries, calls, self.chunksize, Arc::new(Offset { base, inner: sink }));
        self.submitted += n;
    }
}

/// How long an imap's reader looks for the next result before it sleeps.
const RECV_SPIN: Duration = Duration::from_micros(20);

/// The next result, looked for a moment before sleeping: results come
/// microseconds apart, and a sleep costs a wake-up on each side.
fn recv_spinning<T>(rx: &mpsc::Receiver<T>) -> std::result::Result<T, mpsc::RecvError> {
    let looked = crate::sys::spin_until(Instant::now() + RECV_SPIN, || match rx.try_recv() {
        Ok(v) => Some(Ok(v)),
        Err(mpsc::TryRecvError::Disconnected) => Some(Err(mpsc::RecvError)),
        Err(mpsc::TryRecvError::Empty) => None,
    });
    looked.unwrap_or_else(|| rx.recv())
}

/// Shifts a submission's indices to the iterator's running count.
struct Offset {
    base: usize,
    inner: Arc<ChannelSink>,
}

impl Sink for Offset {
    fn deliver(&self, index: usize, item: RawItem) {
        self.inner.deliver(self.base + index, item);
    }

    fn deliver_with(&self, index: usize, item: RawItem, args: Args<'_>) {
        self.inner.deliver_with(self.base + index, item, args);
    }
}

impl<I, A, R> Iterator for IMap<'_, I, R>
where
    I: Iterator<Item = A>,
    A: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            self.fill();
            if let Some(result) = self.results.pop() {
                self.yielded += 1;
                if let Some(report) = &self.pool.progress {
                    report(self.yielded, self.total);
                }
                return Some(result);
            }
            if self.yielded == self.submitted && self.input.is_none() {
                return None;
            }
            match recv_spinning(&self.rx) {
                Ok((index, item, mut shown)) => {
                    item.each_result::<R>(|k, result| {
                        let argument = || shown.get_mut(k).and_then(Option::take);
                        self.results.push(index + k, result.map_err(|e| e.at_item(index + k, argument)));
                    });
                }
                Err(_) => return Some(Err(Error::PoolTerminated)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::default_chunksize;

    #[test]
    fn default_chunksize_is_pythons_rule() {
        // Python: chunksize, extra = divmod(len, 4 * workers); if extra: chunksize += 1
        assert_eq!(default_chunksize(0, 4), 1);
        assert_eq!(default_chunksize(1, 4), 1);
        assert_eq!(default_chunksize(16, 4), 1);
        assert_eq!(default_chunksize(17, 4), 2);
        assert_eq!(default_chunksize(1_000_000, 2), 125_000);
        assert_eq!(default_chunksize(1_000_001, 2), 125_001);
    }

    #[cfg(not(multiproc_loom))]
    fn inc(x: u64) -> u64 {
        x + 1
    }

    #[cfg(not(multiproc_loom))]
    /// Whether process `pid` is stopped (by a signal) now.
    fn stopped(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T'))
    }

    #[cfg(not(multiproc_loom))]
    /// Makes the pool's one worker listen, and stops it (SIGSTOP) while it
    /// does: what is posted to its mailbox now stays there untaken.
    fn a_stopped_listener(pool: &super::Pool) -> (i32, std::sync::Arc<super::mailbox::Mailbox>) {
        use nix::sys::signal::{Signal, kill};
        let guard = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            assert!(std::time::Instant::now() < guard, "never caught the worker listening");
            // After a call like this one the worker listens for its next.
            assert_eq!(pool.apply(inc, (1,)).unwrap(), 2);
            let Some((pid, mailbox)) = pool.shared.offered_mailboxes().pop() else { continue };
            kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
            while !stopped(pid) {
                assert!(std::time::Instant::now() < guard, "the worker never stopped");
                std::thread::yield_now();
            }
            if mailbox.door().listening() {
                return (pid, mailbox);
            }
            // It had stopped listening before the signal landed: again.
            kill(nix::unistd::Pid::from_raw(pid), Signal::SIGCONT).unwrap();
        }
    }

    #[cfg(not(multiproc_loom))]
    fn mark(path: String) {
        std::fs::write(path, b"ran").unwrap();
    }

    /// A pool whose tasks come from afar (a cluster worker's local pool):
    /// after a caller's task its worker does not listen for the next one,
    /// where a plain pool's worker does.
    #[cfg(all(feature = "cluster", not(multiproc_loom)))]
    #[test]
    fn the_workers_of_a_pool_fed_from_afar_do_not_listen() {
        let listening = |pool: &super::Pool| {
            assert_eq!(pool.apply(inc, (1,)).unwrap(), 2);
            pool.shared.offered_mailboxes().iter().any(|(_, m)| m.door().listening())
        };
        let plain = super::Pool::new(1).unwrap();
        let guard = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !listening(&plain) {
            assert!(std::time::Instant::now() < guard, "a plain pool's worker never seen listening");
        }
        let afar = super::Pool::builder().processes(1).tasks_from_afar().build().unwrap();
        for _ in 0..200 {
            assert!(!listening(&afar), "a worker fed from afar listened");
        }
    }

    /// A task posted to a listening worker's mailbox that the worker never
    /// took (it was stopped while listening, then killed) runs on the
    /// worker that replaces it and gives its value, instead of failing
    /// with a death it had nothing to do with; unless its caller cancelled
    /// it: then it never runs.
    #[cfg(not(multiproc_loom))]
    #[test]
    fn a_posted_task_a_dead_worker_never_took_runs_elsewhere_unless_cancelled() {
        use nix::sys::signal::{Signal, kill};
        let pool = super::Pool::builder().processes(1).start_method(crate::StartMethod::Fork).build().unwrap();
        let (pid, mailbox) = a_stopped_listener(&pool);
        let r = pool.apply_async(inc, (41,));
        assert!(mailbox.untaken().is_some(), "the call went by mail and waits there");
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        assert_eq!(r.get().unwrap(), 42);
        assert!(!pool.pids().contains(&pid));

        let dir = std::env::temp_dir().join(format!("multiproc-untaken-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("ran");
        let (pid, mailbox) = a_stopped_listener(&pool);
        let r = pool.apply_async(mark, (marker.to_string_lossy().into_owned(),));
        assert!(mailbox.untaken().is_some(), "the call went by mail and waits there");
        assert!(r.cancel());
        // The supervisor may take the cancelled call for a running one and
        // kill the worker first (and reap it): then it is gone already.
        match kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => panic!("killing the stopped worker: {e}"),
        }
        // The next call runs after anything put back in the queue would have.
        assert_eq!(pool.apply(inc, (7,)).unwrap(), 8);
        assert!(!marker.exists(), "a cancelled call ran");
        std::fs::remove_dir_all(&dir).unwrap();
        pool.close();
        pool.join().unwrap();
    }

    /// Tasks sent to a worker that died before it read them (killed while
    /// idle, stopped here so that it cannot read) never ran: they run on
    /// the worker that replaces it and give their values; while a task a
    /// worker had begun when it died fails with that death.
    #[cfg(not(multiproc_loom))]
    #[test]
    fn tasks_a_dead_worker_never_read_run_elsewhere() {
        use nix::sys::signal::{Signal, kill};
        let pool = super::Pool::builder().processes(1).start_method(crate::StartMethod::Fork).build().unwrap();
        assert_eq!(pool.apply(inc, (1,)).unwrap(), 2);
        let pid = pool.pids()[0];
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
        let guard = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !stopped(pid) {
            assert!(std::time::Instant::now() < guard, "the worker never stopped");
            std::thread::yield_now();
        }
        // Two calls: they go through the pool's thread and the socket.
        let r = pool.map_async(inc, [10, 20]);
        while pool.shared.lock().pending.len() == 2 {
            assert!(std::time::Instant::now() < guard, "nothing was sent to the worker");
            std::thread::yield_now();
        }
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        assert_eq!(r.get().unwrap(), [11, 21]);
        assert!(!pool.pids().contains(&pid));
        // A call the worker had begun fails with its death.
        let died = pool.apply(die, (0,));
        assert!(matches!(died, Err(crate::Error::WorkerDied { .. })), "{died:?}");
        assert_eq!(pool.apply(inc, (2,)).unwrap(), 3);
        pool.close();
        pool.join().unwrap();
    }

    #[cfg(not(multiproc_loom))]
    fn die(_: u8) -> u8 {
        std::process::abort()
    }
}
