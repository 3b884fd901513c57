//! The same [`Pool`](crate::Pool), with workers on many machines, through
//! Redis Streams (feature `cluster`).
//!
//! Build the pool with [`PoolBuilder::redis`](crate::PoolBuilder::redis)
//! and every call of the local pool works on it: apply, apply_async, map,
//! starmap, imap, imap_unordered, chunk sizes, callbacks, `AsyncResult`,
//! close, join, terminate. Only the transport differs: tasks go through a
//! Redis stream to workers, which are copies of your own program.
//!
//! ```no_run
//! # #[multiproc::main] fn main() {
//! use multiproc::Pool;
//!
//! fn square(x: u64) -> u64 { x * x }
//!
//! // On the submitting machine:
//! let pool = Pool::builder().redis("redis://10.0.0.5/", "squares").build().unwrap();
//! assert_eq!(pool.map(square, 1..=4).unwrap(), [1, 4, 9, 16]);
//! # }
//! ```
//!
//! # Workers
//!
//! Any program built with multiproc becomes a worker when started with
//! `MULTIPROC_CLUSTER_REDIS=<url>` and `MULTIPROC_CLUSTER_POOL=<name>` in
//! its environment (and optionally `MULTIPROC_CLUSTER_SLOTS=<n>`,
//! `MULTIPROC_CLUSTER_LEASE_MS=<ms>`): the load hook takes it before
//! `main`, as it does for spawned children, so its code needs no change.
//! Programs with flags of their own call [`Worker::run`] instead. Run the
//! **same build** everywhere: a task names its function by its place in
//! the executable, so every task carries the submitter's build identity
//! (its GNU build-id, or a hash of the executable) and the fingerprint of
//! its function (its path, argument and result types), and a worker of
//! another build never runs it. If no worker of its build takes it within
//! `max_deliveries` deliveries and ten leases, its caller gets
//! [`Error::BuildMismatch`] naming both builds and the function. A program
//! whose build cannot be told (no build-id, no readable
//! `/proc/self/exe`) neither submits nor works: [`Error::Cluster`].
//!
//! # Security
//!
//! A password goes in the URL (`redis://:secret@host/`; errors never show
//! it). With the feature `cluster-tls`, `rediss://` URLs are encrypted and
//! checked: [`Tls`] names the CA to trust and the client certificate to show
//! (from `MULTIPROC_REDIS_TLS_CA`, `MULTIPROC_REDIS_TLS_CERT`,
//! `MULTIPROC_REDIS_TLS_KEY` unless given in code). A worker never runs a
//! task of another build, and checks every size it reads from Redis before
//! it makes anything for it.
//!
//! # Delivery: at least once, one result
//!
//! A task runs at least once: a worker that dies (killed, its machine
//! gone, its connection cut) loses its tasks to the others within its
//! lease plus a reclaim interval, whatever the tasks' length, because a
//! running task's lease is renewed every third of the lease. So a task may
//! run more than once: **make your functions idempotent** (or harmless to
//! repeat). Its caller still gets exactly one result: a second one (a
//! worker that stalled past its lease and came back) is dropped.
//!
//! A task whose process dies every time it runs (a poison task) goes to the
//! dead letters (`{mp:<pool>}:dead`) after `max_deliveries` deliveries
//! (default 3), and its caller gets [`Error::PoisonTask`] with the count
//! and how the process ended. If Redis itself loses its data (a restart
//! without persistence), the submitter notices (a key of its own is gone),
//! makes the consumer group again and sends every task it has no result
//! for once more.
//!
//! [`AsyncResult::cancel`](crate::AsyncResult::cancel) works here too: a
//! task no worker took yet is deleted from the stream (never delivered); a
//! running one's worker sees the cancellation at its next lease renewal (a
//! third of the lease) and kills the task's process. A pool's
//! [`task_timeout`](crate::PoolBuilder::task_timeout) travels with each
//! task to the worker that runs it.
//!
//! Arguments and results that hold OS handles cannot travel between
//! machines: such a call fails with [`Error::Encode`].
//!
//! [`Error::BuildMismatch`]: crate::Error::BuildMismatch
//! [`Error::PoisonTask`]: crate::Error::PoisonTask
//! [`Error::Encode`]: crate::Error::Encode
//! [`Error::Cluster`]: crate::Error::Cluster

mod local;
mod protocol;
mod status;
mod submit;
mod tls;
mod worker;

use std::time::Duration;

pub use local::LocalRedis;
pub use status::{ClusterStatus, DeadLetter, InFlight, WorkerSeen, requeue_dead_letters, status};
pub use tls::{TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV, Tls};
pub use worker::Worker;

pub(crate) use submit::run as run_submitter;

use crate::Error;

/// The environment variable naming the Redis URL of a worker.
pub const WORKER_REDIS_ENV: &str = "MULTIPROC_CLUSTER_REDIS";
/// The environment variable naming a worker's pool.
pub const WORKER_POOL_ENV: &str = "MULTIPROC_CLUSTER_POOL";
/// Optional: how many tasks a worker runs at once.
pub const WORKER_SLOTS_ENV: &str = "MULTIPROC_CLUSTER_SLOTS";
/// Optional: a worker's lease, in milliseconds.
pub const WORKER_LEASE_ENV: &str = "MULTIPROC_CLUSTER_LEASE_MS";

/// What both sides of a Redis-backed pool are set up with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub url: String,
    pub pool: String,
    pub lease: Duration,
    pub reclaim: Duration,
    pub max_deliveries: u64,
    /// Tasks a submitter keeps out at once (back-pressure).
    pub max_in_flight: usize,
    /// How long a blocking read waits before looking around.
    pub block: Duration,
    /// How often the submitter looks whether Redis lost its data.
    pub epoch_look: Duration,
    /// How long results and bookkeeping keys outlive their last use.
    pub bookkeeping_ttl: Duration,
    /// The submitting pool's task timeout, carried by each task.
    pub task_timeout: Option<Duration>,
    /// Certificates for a `rediss://` URL.
    pub tls: Tls,
}

impl Config {
    pub(crate) fn new(url: &str, pool: &str) -> Config {
        Config {
            url: url.to_owned(),
            pool: pool.to_owned(),
            lease: Duration::from_secs(5),
            reclaim: Duration::from_millis(1250),
            max_deliveries: 3,
            max_in_flight: 4096,
            block: Duration::from_millis(1000),
            epoch_look: Duration::from_millis(500),
            bookkeeping_ttl: Duration::from_secs(600),
            task_timeout: None,
            tls: Tls::from_env(),
        }
    }
}

/// A dedicated blocking connection, with read timeouts longer than any
/// blocking read.
pub(crate) fn connect(config: &Config) -> redis::RedisResult<redis::Connection> {
    let client = tls::client(&config.url, &config.tls)?;
    let c = client.get_connection_with_timeout(Duration::from_secs(5))?;
    c.set_read_timeout(Some(config.block + Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(c)
}

/// The connection kept in `con`, made (and set up by `setup`) when there
/// is none; `None` while Redis cannot be reached (the caller waits a little
/// and tries again). A caller drops a connection that failed by setting
/// `con` to `None`.
pub(crate) fn kept<'a>(
    con: &'a mut Option<redis::Connection>,
    config: &Config,
    setup: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<()>,
) -> Option<&'a mut redis::Connection> {
    if con.is_none() {
        let mut c = connect(config).ok()?;
        setup(&mut c).ok()?;
        *con = Some(c);
    }
    con.as_mut()
}

/// No set-up beyond connecting.
pub(crate) fn as_is(_: &mut redis::Connection) -> redis::RedisResult<()> {
    Ok(())
}

/// Connects once and makes the group: a pool whose Redis is wrong (a
/// typo in its URL, a wrong password) fails when it is built, not by
/// waiting forever. (After that, lost connections are retried.)
pub(crate) fn check_reachable(config: &Config) -> crate::Result<()> {
    protocol::known_build_identity()?;
    let fail = |e: redis::RedisError| Error::Redis {
        what: format!("connect to {}", redacted(&config.url)),
        message: e.to_string(),
    };
    let mut c = connect(config).map_err(fail)?;
    ensure_group(&mut c, &protocol::Keys::new(&config.pool).tasks()).map_err(fail)
}

/// `url` with its password (and user name) hidden, for messages.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority = rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end]);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The task stream's consumer group, made at `0` if missing.
pub(crate) fn ensure_group(c: &mut redis::Connection, tasks: &str) -> redis::RedisResult<()> {
    match redis::cmd("XGROUP").arg("CREATE").arg(tasks).arg(protocol::GROUP).arg("0").arg("MKSTREAM").query::<()>(c) {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// A short wait before trying Redis again (woken early by the pool).
fn pause(shared: &crate::pool::supervisor::Shared) {
    shared.wait_wake(Duration::from_millis(100));
}

/// A name no other submitter or worker has: host, pid, random.
pub(crate) fn random_name() -> String {
    let mut r = [0u8; 6];
    let _ = crate::sys::random_bytes(&mut r);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{hex}", host.trim(), std::process::id())
}

/// The typed error a failure stands for.
fn failure_error(f: &protocol::Failure) -> Error {
    match f {
        protocol::Failure::Poison { deliveries, how } => {
            Error::PoisonTask { deliveries: *deliveries, how: how.clone() }
        }
        protocol::Failure::BuildMismatch { task, worker, function } => {
            Error::BuildMismatch { task: task.clone(), worker: worker.clone(), function: function.clone() }
        }
        protocol::Failure::Timeout { worker, pid, millis } => {
            Error::TaskTimeout { name: worker.clone(), pid: *pid, timeout: Duration::from_millis(*millis) }
        }
        protocol::Failure::Other(message) => Error::Cluster(message.clone()),
    }
}

/// A worker started by [`PoolBuilder::local_workers`](crate::PoolBuilder::local_workers).
pub(crate) fn local_worker(url: String, pool: String, slots: usize, lease_ms: u64, tls: Tls) {
    if let Err(e) = Worker::new(&url, &pool).slots(slots).lease(Duration::from_millis(lease_ms)).tls(tls).run() {
        // The worker's process ends with the error, for its pool to see.
        panic!("the local cluster worker failed: {e}");
    }
}

/// The load hook's part: a process started with the worker variables set
/// becomes a worker and exits when it is stopped; otherwise returns.
pub(crate) fn worker_from_environment() {
    let (Ok(url), Ok(pool)) = (std::env::var(WORKER_REDIS_ENV), std::env::var(WORKER_POOL_ENV)) else { return };
    let slots = std::env::var(WORKER_SLOTS_ENV).ok().and_then(|s| s.parse().ok());
    let lease = std::env::var(WORKER_LEASE_ENV).ok().and_then(|s| s.parse().ok()).map(Duration::from_millis);
    // SAFETY: the load hook runs before `main`, on the only thread there
    // is: nothing reads the environment concurrently. Programs this worker
    // starts must not become workers too.
    unsafe {
        for var in [WORKER_REDIS_ENV, WORKER_POOL_ENV, WORKER_SLOTS_ENV, WORKER_LEASE_ENV] {
            std::env::remove_var(var);
        }
    }
    let mut worker = Worker::new(&url, &pool);
    if let Some(n) = slots {
        worker = worker.slots(n);
    }
    if let Some(l) = lease {
        worker = worker.lease(l);
    }
    let code = match worker.run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("multiproc cluster worker: {e}");
            1
        }
    };
    crate::bootstrap::exit_child(code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_never_shows_in_a_message() {
        assert_eq!(super::redacted("rediss://:sesame@h:6380/0"), "rediss://***@h:6380/0");
        assert_eq!(super::redacted("redis://me:p@ss@h/"), "redis://***@h/");
        assert_eq!(super::redacted("redis://h:1/?x=a@b"), "redis://h:1/?x=a@b");
        assert_eq!(super::redacted("redis+unix:///tmp/r.sock"), "redis+unix:///tmp/r.sock");
    }
}
