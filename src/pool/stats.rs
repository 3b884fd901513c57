//! What a pool has done so far, per worker: mpire's "insights".
//!
//! The supervisor records as it goes (a worker started, became ready, ran a
//! task, ended); [`Pool::stats`](super::Pool::stats) takes a copy. Task times
//! are measured in the worker around the call itself, so they leave out the
//! time a task spent queued or on the wire.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// How many of the slowest tasks a pool remembers.
const SLOWEST: usize = 5;

/// A pool's record so far: [`Pool::stats`](super::Pool::stats).
///
/// Its `Display` is a small table, one row per worker:
///
/// ```
/// # #[multiproc::main] fn main() {
/// fn square(x: u64) -> u64 { x * x }
/// let pool = multiproc::Pool::new(2).unwrap();
/// pool.map(square, 0..100).unwrap();
/// let stats = pool.stats();
/// assert_eq!(stats.workers.iter().map(|w| w.tasks).sum::<u64>(), 100);
/// println!("{stats}");
/// # }
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// One entry per worker place (`worker_id()` `0..processes`), in order.
    /// A replacement worker takes its predecessor's place and adds to its
    /// counts. Empty for a Redis-backed pool, whose workers are elsewhere
    /// (`multiproc cluster status` watches those).
    pub workers: Vec<WorkerStats>,
    /// The slowest calls so far, slowest first (at most five).
    pub slowest: Vec<SlowTask>,
    /// From the pool's start until each of its first workers was ready to
    /// take tasks (its initializer done); `None` while one is still starting.
    pub startup: Option<Duration>,
}

/// One worker place of a pool: [`PoolStats::workers`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Its `worker_id()`.
    pub id: usize,
    /// The pid of the process in this place now; `None` between a death
    /// and its replacement, and after the pool stopped.
    pub pid: Option<i32>,
    /// Calls it ran (an item of a chunk counts as one call).
    pub tasks: u64,
    /// Time spent running calls.
    pub busy: Duration,
    /// Time it was ready but ran nothing.
    pub idle: Duration,
    /// How long its latest process took from being started to being ready
    /// (start-up and initializer); `None` while it is starting.
    pub startup: Option<Duration>,
    /// Each time a process in this place ended before the pool did, and why.
    pub restarts: Vec<Restart>,
}

/// A worker process that ended before its pool: [`WorkerStats::restarts`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restart {
    /// The pid of the process that ended.
    pub pid: i32,
    /// Why.
    pub reason: RestartReason,
}

/// Why a worker process ended before its pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartReason {
    /// It died: a signal, an abort or an exit in the middle of its work.
    Died {
        /// Python's `exitcode`: negative for a signal.
        exitcode: i32,
        /// The same in words ("killed by signal 9 (SIGKILL)").
        how: String,
    },
    /// Its task ran past its time limit and the pool killed it.
    TimedOut,
    /// Its running task was cancelled and the pool killed it.
    Cancelled,
    /// It ran `maxtasksperchild` tasks and left.
    MaxTasks,
}

/// One of the slowest calls: [`PoolStats::slowest`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlowTask {
    /// Its index within its call (`map`'s item index; 0 for `apply`); for a
    /// chunk encoded as one value, its first item's.
    pub index: usize,
    /// How many calls the measured time covers: 1, or a whole chunk's.
    pub calls: usize,
    /// How long it ran.
    pub took: Duration,
    /// The worker that ran it.
    pub worker: usize,
}

impl fmt::Display for RestartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartReason::Died { how, .. } => f.write_str(how),
            RestartReason::TimedOut => f.write_str("timed out"),
            RestartReason::Cancelled => f.write_str("its task was cancelled"),
            RestartReason::MaxTasks => f.write_str("maxtasksperchild reached"),
        }
    }
}

/// A duration as a table cell: three significant figures, a fitting unit.
fn cell(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>6} {:>8} {:>8} {:>10} {:>10} {:>9}  restarts",
            "worker", "pid", "tasks", "busy", "idle", "start-up"
        )?;
        for w in &self.workers {
            let pid = w.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
            let startup = w.startup.map_or_else(|| "-".to_owned(), cell);
            write!(
                f,
                "{:>6} {pid:>8} {:>8} {:>10} {:>10} {startup:>9}  {}",
                w.id,
                w.tasks,
                cell(w.busy),
                cell(w.idle),
                w.restarts.len()
            )?;
            // The reasons, each with how often: "2 (1× timed out, 1× killed by ...)".
            let mut reasons: Vec<(String, usize)> = Vec::new();
            for r in &w.restarts {
                let why = r.reason.to_string();
                match reasons.iter_mut().find(|(w, _)| *w == why) {
                    Some((_, n)) => *n += 1,
                    None => reasons.push((why, 1)),
                }
            }
            if !reasons.is_empty() {
                let list: Vec<String> = reasons.iter().map(|(why, n)| format!("{n}× {why}")).collect();
                write!(f, " ({})", list.join(", "))?;
            }
            writeln!(f)?;
        }
        match self.startup {
            Some(d) => writeln!(f, "pool start-up: {}", cell(d))?,
            None => writeln!(f, "pool start-up: still starting")?,
        }
        if !self.slowest.is_empty() {
            let list: Vec<String> = self
                .slowest
                .iter()
                .map(|t| {
                    let what = if t.calls > 1 {
                        format!("chunk from #{} ({} calls)", t.index, t.calls)
                    } else {
                        format!("#{}", t.index)
                    };
                    format!("{what} {} on worker {}", cell(t.took), t.worker)
                })
                .collect();
            writeln!(f, "slowest: {}", list.join("; "))?;
        }
        Ok(())
    }
}

/// One worker place, as the supervisor records it.
struct Place {
    /// A process in this place has been ready (the pool's start-up ends
    /// when every place's first has).
    was_ready: bool,
    pid: Option<i32>,
    started: Instant,
    ready_at: Option<Instant>,
    startup: Option<Duration>,
    tasks: u64,
    busy: Duration,
    /// Ready time of the processes that ended, in full.
    alive: Duration,
    restarts: Vec<Restart>,
}

/// The supervisor's running record.
pub(crate) struct Recorder {
    created: Instant,
    startup: Option<Duration>,
    places: BTreeMap<usize, Place>,
    slowest: Vec<SlowTask>,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder { created: Instant::now(), startup: None, places: BTreeMap::new(), slowest: Vec::new() }
    }

    /// A process was started in place `index`.
    pub(crate) fn started(&mut self, index: usize, pid: i32) {
        let now = Instant::now();
        let place = self.places.entry(index).or_insert_with(|| Place {
            was_ready: false,
            pid: None,
            started: now,
            ready_at: None,
            startup: None,
            tasks: 0,
            busy: Duration::ZERO,
            alive: Duration::ZERO,
            restarts: Vec::new(),
        });
        place.pid = Some(pid);
        place.started = now;
        place.ready_at = None;
        place.startup = None;
    }

    /// The process in place `index` is ready for tasks.
    pub(crate) fn ready(&mut self, index: usize) {
        let now = Instant::now();
        let Some(place) = self.places.get_mut(&index) else { return };
        if place.ready_at.is_some() {
            return;
        }
        place.ready_at = Some(now);
        place.startup = Some(now.duration_since(place.started));
        place.was_ready = true;
        if self.startup.is_none() && self.places.values().all(|p| p.was_ready) {
            self.startup = Some(now.duration_since(self.created));
        }
    }

    /// Place `worker` ran `calls` calls, from index `index` of their call, in `took`.
    pub(crate) fn ran(&mut self, worker: usize, index: usize, calls: usize, took: Duration) {
        if let Some(place) = self.places.get_mut(&worker) {
            place.tasks += calls as u64;
            place.busy += took;
        }
        if self.slowest.len() < SLOWEST || self.slowest.last().is_some_and(|s| s.took < took) {
            let at = self.slowest.partition_point(|s| s.took >= took);
            self.slowest.insert(at, SlowTask { index, calls, took, worker });
            self.slowest.truncate(SLOWEST);
        }
    }

    /// The process in place `index` ended; `reason` when before its pool.
    pub(crate) fn ended(&mut self, index: usize, reason: Option<RestartReason>) {
        let now = Instant::now();
        let Some(place) = self.places.get_mut(&index) else { return };
        if let Some(ready) = place.ready_at.take() {
            place.alive += now.duration_since(ready);
        }
        if let (Some(pid), Some(reason)) = (place.pid.take(), reason) {
            place.restarts.push(Restart { pid, reason });
        }
    }

    pub(crate) fn snapshot(&self) -> PoolStats {
        let now = Instant::now();
        let workers = self
            .places
            .iter()
            .map(|(&id, p)| {
                let alive = p.alive + p.ready_at.map_or(Duration::ZERO, |r| now.duration_since(r));
                WorkerStats {
                    id,
                    pid: p.pid,
                    tasks: p.tasks,
                    busy: p.busy,
                    idle: alive.saturating_sub(p.busy),
                    startup: p.startup,
                    restarts: p.restarts.clone(),
                }
            })
            .collect();
        PoolStats { workers, slowest: self.slowest.clone(), startup: self.startup }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_five_slowest_in_order() {
        let mut r = Recorder::new();
        r.started(0, 10);
        for (i, ms) in [3u64, 9, 1, 7, 5, 8, 2, 6].into_iter().enumerate() {
            r.ran(0, i, 1, Duration::from_millis(ms));
        }
        let s = r.snapshot();
        let took: Vec<u64> = s.slowest.iter().map(|t| t.took.as_millis() as u64).collect();
        assert_eq!(took, [9, 8, 7, 6, 5]);
        assert_eq!(s.slowest[0].index, 1);
        assert_eq!(s.workers[0].tasks, 8);
        assert_eq!(s.workers[0].busy, Duration::from_millis(41));
    }

    #[test]
    fn startup_waits_for_every_first_worker() {
        let mut r = Recorder::new();
        r.started(0, 10);
        r.started(1, 11);
        r.ready(0);
        assert_eq!(r.snapshot().startup, None);
        r.ready(1);
        assert!(r.snapshot().startup.is_some());
        // A replacement neither counts as a first worker nor resets it.
        r.ended(1, Some(RestartReason::TimedOut));
        r.started(1, 12);
        let s = r.snapshot();
        assert!(s.startup.is_some());
        assert_eq!(s.workers[1].restarts, [Restart { pid: 11, reason: RestartReason::TimedOut }]);
        assert_eq!(s.workers[1].pid, Some(12));
        assert_eq!(s.workers[1].startup, None);
    }

    #[test]
    fn display_is_a_table_with_reasons() {
        let mut r = Recorder::new();
        r.started(0, 10);
        r.ready(0);
        r.ran(0, 4, 1, Duration::from_millis(20));
        r.ended(0, Some(RestartReason::Died { exitcode: -9, how: "killed by signal 9 (SIGKILL)".into() }));
        r.started(0, 11);
        r.ended(0, Some(RestartReason::MaxTasks));
        let text = r.snapshot().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("worker"), "{text}");
        assert!(lines[1].contains("2 (1× killed by signal 9 (SIGKILL), 1× maxtasksperchild reached)"), "{text}");
        assert!(text.contains("slowest: #4 20.0 ms on worker 0"), "{text}");
    }
}
