//! `multiproc run --redis URL --pool NAME`: the jobs go to the Redis-backed
//! pool, whose `multiproc worker`s run them with the same `exec::run` as
//! local mode (process group, timeout, captured output) and send back the
//! outcome. Everything around a job (order, joblog, retries, halt, the bar)
//! stays here, in the same code as local mode; only the attempt differs.
//!
//! The task function is this binary's own, so workers need no build of the
//! user's: any `multiproc` of the same build runs shell jobs. The pool's
//! promises hold: a worker killed mid-job loses nothing (the job runs
//! again elsewhere), and each job has exactly one result.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use multiproc::{AsyncResult, Pool};
use serde::{Deserialize, Serialize};

use super::exec::{self, Outcome, Running};

/// A job as it travels.
#[derive(Serialize, Deserialize)]
pub struct RemoteJob {
    argv: Vec<Vec<u8>>,
    timeout_us: Option<u64>,
}

/// Its outcome as it comes back.
#[derive(Serialize, Deserialize)]
pub struct RemoteOutcome {
    start_us: u64,
    runtime_us: u64,
    exitval: i32,
    signal: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    timed_out: bool,
}

/// The task the workers run: one attempt of one job, on the worker, under
/// a guard (`guard`), so that the job and all it started die with the
/// worker's process (a cancel, a halt, a killed worker).
pub fn run_job(job: RemoteJob) -> RemoteOutcome {
    let start = SystemTime::now();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            return RemoteOutcome::from(Outcome::not_started(
                start,
                255,
                format!("multiproc run: no executable: {e}\n"),
            ));
        }
    };
    let mut argv = vec![exe.into_os_string(), super::guard::FLAG.into(), std::process::id().to_string().into()];
    argv.extend(job.argv.into_iter().map(OsString::from_vec));
    let timeout = job.timeout_us.map(Duration::from_micros);
    RemoteOutcome::from(exec::run(argv, 1, timeout, None, &Running::default(), false))
}

impl From<Outcome> for RemoteOutcome {
    fn from(o: Outcome) -> RemoteOutcome {
        RemoteOutcome {
            start_us: o.start.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64,
            runtime_us: o.runtime.as_micros() as u64,
            exitval: o.exitval,
            signal: o.signal,
            stdout: o.stdout,
            stderr: o.stderr,
            timed_out: o.timed_out,
        }
    }
}

/// The submitting side: the pool, and the jobs in flight by slot (so that
/// a halt or a signal can cancel them).
pub struct Remote {
    pool: Pool,
    /// Whether the run stops, and the jobs in flight by slot: one lock, so
    /// that a job submitted while `cancel_all` runs is cancelled too.
    in_flight: Mutex<(bool, HashMap<usize, InFlight>)>,
}

type InFlight = Arc<AsyncResult<RemoteOutcome>>;

impl Remote {
    pub fn connect(url: &str, pool: &str) -> Result<Remote, String> {
        let pool = Pool::builder().redis(url, pool).build().map_err(|e| format!("--redis {url}: {e}"))?;
        Ok(Remote { pool, in_flight: Mutex::new((false, HashMap::new())) })
    }

    /// One attempt of a job on some worker.
    pub fn attempt(&self, argv: Vec<OsString>, slot: usize, timeout: Option<Duration>) -> Outcome {
        let submitted = SystemTime::now();
        let job = RemoteJob {
            argv: argv.into_iter().map(OsString::into_vec).collect(),
            timeout_us: timeout.map(|t| t.as_micros() as u64),
        };
        let result = Arc::new(self.pool.apply_async(run_job, (job,)));
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if in_flight.0 {
                result.cancel();
            }
            in_flight.1.insert(slot, Arc::clone(&result));
        }
        let got = result.get();
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).1.remove(&slot);
        match got {
            Ok(r) => Outcome {
                start: UNIX_EPOCH + Duration::from_micros(r.start_us),
                runtime: Duration::from_micros(r.runtime_us),
                exitval: r.exitval,
                signal: r.signal,
                stdout: r.stdout,
                stderr: r.stderr,
                timed_out: r.timed_out,
            },
            Err(e) => Outcome::not_started(submitted, 255, format!("multiproc run: the pool could not run it: {e}\n")),
        }
    }

    /// How many jobs are out on workers.
    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).1.len()
    }

    /// Cancels every job in flight and every one submitted from now on: a
    /// job that has not started never runs; one that runs is killed.
    pub fn cancel_all(&self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.0 = true;
        for r in in_flight.1.values() {
            r.cancel();
        }
    }
}
