//! A worker of a Redis-backed pool: takes tasks from the pool's stream as
//! it has free slots, runs each in a child process (a local pool of its
//! own, so a task that crashes never takes the worker down), writes the
//! result to the submitter's stream, then acknowledges and deletes the
//! task. Three threads, each with its own connection: one takes tasks,
//! one answers, one renews the leases of the tasks it runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::Value;

use super::protocol::{self, DEAD_LETTERS_KEPT, Failure, GROUP, Keys, ResultMessage, TaskMessage};
use super::{Config, as_is, connect, ensure_group, kept};
use crate::pool::result::{RawItem, Sink};
use crate::pool::supervisor::{PackedItem, Task};
use crate::wire::Outcome;
use crate::{Error, Pool, Result};

/// A worker of the Redis-backed pool `pool` at `url`: any program built
/// with multiproc becomes one with [`run`](Self::run), or with no code at
/// all when started with `MULTIPROC_CLUSTER_REDIS` and
/// `MULTIPROC_CLUSTER_POOL` in its environment (see [`crate::cluster`]).
///
/// It runs up to [`slots`](Self::slots) tasks at once (default: its CPU
/// count), each in a child process. It never runs a task sent by another
/// build of the program. On SIGTERM or SIGINT it hands its running tasks
/// back at once, for other workers, and returns.
#[derive(Debug, Clone)]
pub struct Worker {
    config: Config,
    slots: usize,
    task_timeout: Option<Duration>,
}

impl Worker {
    /// A worker of pool `pool` on the Redis at `url` (`redis://`,
    /// `redis+unix://`, `rediss://` under the `cluster-tls` feature; with a
    /// password in the URL if Redis wants one).
    pub fn new(url: &str, pool: &str) -> Worker {
        Worker { config: Config::new(url, pool), slots: crate::os::process_cpu_count().max(1), task_timeout: None }
    }

    /// Certificates for a `rediss://` URL (default: from the environment,
    /// see [`Tls`](crate::cluster::Tls)).
    pub fn tls(mut self, tls: crate::cluster::Tls) -> Worker {
        self.config.tls = tls;
        self
    }

    /// How many tasks it runs at once.
    pub fn slots(mut self, n: usize) -> Worker {
        self.slots = n.max(1);
        self
    }

    /// How long a task stays its own without a renewal (default 5 s; it
    /// renews every third of that while the task runs, however long the
    /// task). A worker that dies loses its tasks to others after this, plus
    /// the reclaim interval.
    pub fn lease(mut self, lease: Duration) -> Worker {
        self.config.lease = lease.max(Duration::from_millis(100));
        self.config.reclaim = (self.config.lease / 4).max(Duration::from_millis(50));
        self
    }

    /// After how many deliveries a task that kills its process every time
    /// goes to the dead letters (default 3). A task of another build is
    /// given up after as many deliveries and ten leases of waiting.
    pub fn max_deliveries(mut self, n: u64) -> Worker {
        self.config.max_deliveries = n.max(1);
        self
    }

    /// Kills a task's process when it runs longer than `timeout`; its
    /// caller gets [`Error::TaskTimeout`].
    pub fn task_timeout(mut self, timeout: Duration) -> Worker {
        self.task_timeout = Some(timeout);
        self
    }

    /// Works until SIGTERM or SIGINT (or [`Error`] from a local pool that
    /// cannot start).
    pub fn run(self) -> Result<()> {
        protocol::known_build_identity()?;
        let signalled = crate::sys::proc::stop_signals_set_flag()
            .map_err(|source| Error::Io { context: "a handler for SIGTERM", source })?;
        let local = self.local_pool()?;
        self.run_until(signalled, local)
    }

    fn local_pool(&self) -> Result<Pool> {
        let mut builder = Pool::builder().processes(self.slots).tasks_from_afar();
        if let Some(t) = self.task_timeout {
            builder = builder.task_timeout(t);
        }
        builder.build()
    }

    /// Works until `stop` is set (by SIGTERM or SIGINT).
    fn run_until(self, stop: &'static AtomicBool, local: Pool) -> Result<()> {
        let name = super::random_name();
        let state = Arc::new(State {
            config: self.config.clone(),
            keys: Keys::new(&self.config.pool),
            name,
            slots: self.slots,
            running: Mutex::new(HashMap::new()),
            answering: Mutex::new(Answering { con: None, owed: Vec::new(), again: false }),
            wake_local: local.nudge(),
            freed: Condvar::new(),
            stop,
        });
        let (done_tx, done_rx) = mpsc::channel();
        let threads = [
            {
                let state = state.clone();
                std::thread::Builder::new()
                    .name("multiproc-cluster-answer".into())
                    .spawn(move || answer(&state, &done_rx))
            },
            {
                let state = state.clone();
                std::thread::Builder::new().name("multiproc-cluster-lease".into()).spawn(move || renew(&state))
            },
        ];
        take(&state, &local, &done_tx);
        // Stopping: what still runs goes back at once, for others.
        hand_back_all(&state);
        local.terminate();
        state.freed.notify_all();
        for t in threads.into_iter().flatten() {
            let _ = t.join();
        }
        Ok(())
    }
}

struct State {
    config: Config,
    keys: Keys,
    name: String,
    slots: usize,
    /// Stream ids of the tasks running here, with their messages and sinks.
    running: Mutex<HashMap<String, Running>>,
    /// The answering connection: the answer thread's, or, when that
    /// thread is idle, the local pool's thread that has a result in hand
    /// (one hand-over less between a result and its caller).
    answering: Mutex<Answering>,
    /// Makes the local pool look at its tasks (one was cancelled).
    wake_local: crate::pool::result::Nudge,
    freed: Condvar,
    /// The flag SIGTERM and SIGINT set.
    stop: &'static AtomicBool,
}

/// A task running here.
#[derive(Clone)]
struct Running {
    message: TaskMessage,
    sink: Arc<TaskSink>,
}

impl State {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How a task ended here.
enum Done {
    Answer(ResultMessage),
    /// Its process died: it goes back (or to the dead letters).
    Crashed(String),
}

/// Collects one task's results from the local pool.
struct TaskSink {
    stream_id: String,
    calls: usize,
    /// Its caller cancelled it: the local pool kills its process.
    cancelled: AtomicBool,
    failed: Mutex<Vec<Error>>,
    done: Mutex<mpsc::Sender<(String, Done)>>,
    /// Where its result can be written at once (weak: the running task
    /// holds its sink, and the state holds the running tasks).
    state: std::sync::Weak<State>,
}

impl Sink for TaskSink {
    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn deliver(&self, _index: usize, item: RawItem) {
        let send = |d: Done| {
            let d = match (d, self.state.upgrade()) {
                (Done::Answer(result), Some(state)) => match answer_here(&state, &self.stream_id, result) {
                    None => return,
                    Some(result) => Done::Answer(result),
                },
                (d, _) => d,
            };
            let _ = self.done.lock().unwrap_or_else(PoisonError::into_inner).send((self.stream_id.clone(), d));
        };
        match item {
            RawItem::Outcome { outcome, fds, worker, pid } => match travelling(outcome, fds) {
                Ok(outcome) => send(Done::Answer(ResultMessage::Outcome { outcome, worker: worker.to_string(), pid })),
                Err(why) => send(Done::Answer(ResultMessage::Failed(Failure::Other(why)))),
            },
            RawItem::Batch { outcome, fds, worker, pid, count } => match travelling(outcome, fds) {
                Ok(outcome) => {
                    send(Done::Answer(ResultMessage::Batch { outcome, worker: worker.to_string(), pid, count }))
                }
                Err(why) => send(Done::Answer(ResultMessage::Failed(Failure::Other(why)))),
            },
            RawItem::Failed(e) => {
                let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
                failed.push(e);
                if failed.len() < self.calls {
                    return;
                }
                let done = match &failed[0] {
                    Error::WorkerDied { how, .. } => Done::Crashed(how.clone()),
                    Error::TaskTimeout { name, pid, timeout } => {
                        Done::Answer(ResultMessage::Failed(Failure::Timeout {
                            worker: name.clone(),
                            pid: *pid,
                            millis: timeout.as_millis() as u64,
                        }))
                    }
                    other => Done::Answer(ResultMessage::Failed(Failure::Other(other.to_string()))),
                };
                send(done);
            }
        }
    }
}

/// A result as it can go through Redis: its bytes whole (a big one comes
/// back out of shared memory), or why it cannot (it holds OS handles).
fn travelling(outcome: Outcome, mut fds: Vec<std::os::fd::OwnedFd>) -> std::result::Result<Outcome, String> {
    let Outcome::Returned(mut bytes) = outcome else { return Ok(outcome) };
    crate::reduction::inline(&mut bytes, &mut fds)?;
    if !fds.is_empty() {
        return Err("the result holds OS handles (descriptors), which cannot travel to another machine".into());
    }
    Ok(Outcome::Returned(bytes))
}

/// The taking loop: new tasks as slots free up, and those whose workers
/// stopped renewing them.
fn take(state: &Arc<State>, local: &Pool, done: &mpsc::Sender<(String, Done)>) {
    let tasks = state.keys.tasks();
    let mut con = None;
    let mut next_reclaim = Instant::now();
    while !state.stopping() {
        let free = {
            let mut running = state.running();
            while running.len() >= state.slots && !state.stopping() {
                running = state
                    .freed
                    .wait_timeout(running, Duration::from_millis(200))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            state.slots.saturating_sub(running.len())
        };
        if state.stopping() {
            return;
        }
        let Some(c) = kept(&mut con, &state.config, |c| join_group(c, &tasks, &state.name)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let got: redis::RedisResult<Vec<protocol::Entry>> = (|| {
            if Instant::now() >= next_reclaim {
                next_reclaim = Instant::now() + state.config.reclaim;
                let v: Value = redis::cmd("XAUTOCLAIM")
                    .arg(&tasks)
                    .arg(GROUP)
                    .arg(&state.name)
                    .arg(state.config.lease.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(free)
                    .query(c)?;
                let claimed = match &v {
                    Value::Array(parts) if parts.len() >= 2 => protocol::entries(&parts[1]),
                    _ => Vec::new(),
                };
                if !claimed.is_empty() {
                    return Ok(claimed);
                }
            }
            let v: Value = reading(state, free, Some(state.config.block)).query(c)?;
            Ok(protocol::read_reply(&v))
        })();
        match got {
            Ok(entries) => {
                for (stream_id, fields) in entries {
                    if accept(state, c, local, done, stream_id, &fields) == Accepted::HandedBack {
                        // Not ours to run: no reclaiming for a lease, so that
                        // a worker of its build (which reclaims only when its
                        // blocking read ends) gets it before this one takes
                        // it back again and again, counting deliveries.
                        next_reclaim = Instant::now() + state.config.lease;
                    }
                }
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                // Redis lost the group (a restart): make it again.
                let _ = join_group(c, &tasks, &state.name);
            }
            Err(_) => con = None,
        }
    }
}

/// The read of up to `count` new tasks for this worker, waiting up to
/// `block` for the first.
fn reading(state: &State, count: usize, block: Option<Duration>) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg(GROUP).arg(&state.name).arg("COUNT").arg(count);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS").arg(state.keys.tasks()).arg(">");
    cmd
}

/// Makes the group if Redis has none, and this worker a consumer of it now
/// (Redis would make it one only with the first task it reads): a worker
/// that has come shows in `XINFO CONSUMERS` before it has work.
fn join_group(c: &mut redis::Connection, tasks: &str, name: &str) -> redis::RedisResult<()> {
    ensure_group(c, tasks)?;
    redis::cmd("XGROUP").arg("CREATECONSUMER").arg(tasks).arg(GROUP).arg(name).query::<()>(c)
}

/// What became of a task read.
#[derive(PartialEq)]
enum Accepted {
    /// Running here, or settled (a dead letter, an error to its caller).
    Done,
    /// Another build's: given back for a worker of its build.
    HandedBack,
}

/// Starts one task here, or sends it where it belongs.
fn accept(
    state: &Arc<State>,
    c: &mut redis::Connection,
    local: &Pool,
    done: &mpsc::Sender<(String, Done)>,
    stream_id: String,
    fields: &HashMap<String, Vec<u8>>,
) -> Accepted {
    let message = fields.get("t").map(|b| crate::reduction::decode_plain::<TaskMessage>(b));
    let message = match message {
        Some(Ok(m)) => m,
        other => {
            // Nobody can answer a task that cannot be read: a dead letter.
            let why = match other {
                Some(Err(e)) => format!("unreadable task: {e}"),
                _ => "a task entry without a task".into(),
            };
            let _ = dead_letter(state, c, &stream_id, None, &why, 0);
            let _ = ack(state, c, &stream_id);
            return Accepted::Done;
        }
    };
    // Sizes from Redis are checked before anything is made for them.
    if let Err(why) = message.well_formed() {
        let _ = dead_letter(state, c, &stream_id, None, &why, 0);
        let _ = ack(state, c, &stream_id);
        return Accepted::Done;
    }
    let mine = protocol::build_identity();
    if message.build != mine {
        let deliveries = deliveries(state, c, &stream_id).unwrap_or(u64::MAX);
        // Given up only when it has also waited ten leases: a worker of its
        // build may just be busy (this one reclaims again only a lease after
        // it refused one).
        let waited = entry_age_ms(c, &stream_id).unwrap_or(u64::MAX);
        let patience = (state.config.lease.as_millis() as u64).saturating_mul(10);
        if deliveries >= state.config.max_deliveries && waited >= patience {
            let failure = Failure::BuildMismatch {
                task: message.build.clone(),
                worker: mine.to_owned(),
                function: message.function.clone(),
            };
            let why =
                format!("no worker of its build took it: {}, task {}, worker {mine}", message.function, message.build);
            let _ = dead_letter(state, c, &stream_id, Some(&message), &why, deliveries);
            let _ = answer_once(state, c, &stream_id, &message, &ResultMessage::Failed(failure));
            return Accepted::Done;
        }
        let _ = hand_back(state, c, &stream_id);
        return Accepted::HandedBack;
    }
    // A cancel is not looked for here: one made before this read deleted
    // the entry (it was never delivered), one made since is found by the
    // next lease renewal, which kills the task's process. Looking here
    // would cost every task a round trip and close no window.
    let sink = Arc::new(TaskSink {
        stream_id: stream_id.clone(),
        calls: message.calls,
        cancelled: AtomicBool::new(false),
        failed: Mutex::new(Vec::new()),
        done: Mutex::new(done.clone()),
        state: Arc::downgrade(state),
    });
    let task = Task {
        entry: message.entry,
        items: message.items.iter().map(|b| PackedItem { bytes: b.to_vec(), fds: Vec::new() }).collect(),
        base: 0,
        batch: message.batch,
        calls: message.calls,
        sink: sink.clone(),
        timeout: message.timeout_ms.map(Duration::from_millis),
        signature: None,
        describe: None,
        unbegun: 0,
    };
    state.running().insert(stream_id, Running { message, sink });
    local.submit_tasks([task]);
    Accepted::Done
}

/// The answering connection, and the answers written on it whose replies
/// are still to be read.
struct Answering {
    con: Option<redis::Connection>,
    /// In the order written. The local pool's thread that writes an answer
    /// does not wait for its reply: it would wake for it just as Redis
    /// wakes the answer's caller, on the same few cores (measured on 2
    /// vCPUs: 10-14 k tasks/s waiting, 14.5-17 k without). Whoever uses the
    /// connection next reads the replies first (`ready`); until then each
    /// answer stays here, to be written again if the connection fails (the
    /// submitter drops a second result; a second acknowledgement does
    /// nothing).
    owed: Vec<Owed>,
    /// The connection failed with answers owed: Redis may or may not have
    /// them, so they go again, on the next one.
    again: bool,
}

/// An answer written, its reply not yet read.
struct Owed {
    stream_id: String,
    message: TaskMessage,
    result: ResultMessage,
}

/// Owed answers past which the writer of the next one reads their replies
/// first (they have long come): what waits for its reply stays bounded.
const OWED_AT_MOST: usize = 32;

impl Answering {
    /// The connection, with nothing owed on it: the replies to the answers
    /// written on it read, or, on a new connection after a failure, those
    /// answers written again (each waiting for its reply). `None` while
    /// Redis cannot be reached or the connection failed (marked lost).
    fn ready(&mut self, state: &State) -> Option<&mut redis::Connection> {
        let c = kept(&mut self.con, &state.config, as_is)?;
        let settled = if self.again {
            self.owed.iter().all(|o| answer_once(state, c, &o.stream_id, &o.message, &o.result).is_ok())
        } else {
            self.owed.iter().all(|_| replies_read(c))
        };
        if !settled {
            self.lost();
            return None;
        }
        self.owed.clear();
        self.again = false;
        self.con.as_mut()
    }

    fn lost(&mut self) {
        self.con = None;
        self.again = !self.owed.is_empty();
    }
}

/// Reads the replies to one answer written by [`answering`]: MULTI's, each
/// command's QUEUED, then EXEC's; whether Redis took it all.
fn replies_read(c: &mut redis::Connection) -> bool {
    (0..ANSWER_COMMANDS + 2).all(|_| match c.recv_response() {
        Ok(Value::ServerError(_)) | Err(_) => false,
        Ok(Value::Array(items)) => !items.iter().any(|v| matches!(v, Value::ServerError(_))),
        Ok(_) => true,
    })
}

/// The answering loop: results out, tasks acknowledged; crashed tasks back
/// or to the dead letters. A write that fails is tried again on a new
/// connection: an answer is never dropped while the worker lives.
fn answer(state: &State, done: &mpsc::Receiver<(String, Done)>) {
    loop {
        let (stream_id, outcome) = match done.recv_timeout(Duration::from_millis(200)) {
            Ok(d) => d,
            Err(e) => {
                // Idle: the replies of what was written meanwhile.
                let stopping = state.stopping() || e == mpsc::RecvTimeoutError::Disconnected;
                let mut a = state.answering.lock().unwrap_or_else(PoisonError::into_inner);
                for _ in 0..if stopping { 3 } else { 1 } {
                    if a.owed.is_empty() || a.ready(state).is_some() {
                        break;
                    }
                }
                if stopping {
                    return;
                }
                continue;
            }
        };
        let Some(message) = state.running().get(&stream_id).map(|r| r.message.clone()) else { continue };
        let mut a = state.answering.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if state.stopping() && !state.running().contains_key(&stream_id) {
                break;
            }
            let Some(c) = a.ready(state) else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let r = match &outcome {
                Done::Answer(result) => answer_once(state, c, &stream_id, &message, result),
                Done::Crashed(how) => crashed(state, c, &stream_id, &message, how),
            };
            match r {
                Ok(()) => break,
                Err(_) => a.lost(),
            }
        }
        drop(a);
        settled(state, &stream_id);
    }
}

/// Writes a result from the thread that has it, when the answering
/// connection is free and up: `None` once written (its reply is read
/// later, see [`Answering::owed`]), else the result back for the answer
/// thread (which waits for the connection, and retries on a new one).
fn answer_here(state: &State, stream_id: &str, result: ResultMessage) -> Option<ResultMessage> {
    let Ok(mut a) = state.answering.try_lock() else { return Some(result) };
    if a.con.is_none() || a.again {
        return Some(result);
    }
    let Some(message) = state.running().get(stream_id).map(|r| r.message.clone()) else {
        // Handed back meanwhile (the worker is stopping): not ours to answer.
        return None;
    };
    if a.owed.len() >= OWED_AT_MOST && a.ready(state).is_none() {
        return Some(result);
    }
    let c = a.con.as_mut()?;
    if c.send_packed_command(&answering(state, stream_id, &message, &result).get_packed_pipeline()).is_err() {
        // Redis may have it all: the answer thread writes it again.
        a.lost();
        return Some(result);
    }
    a.owed.push(Owed { stream_id: stream_id.to_owned(), message, result });
    drop(a);
    settled(state, stream_id);
    None
}

/// A task answered (or given back): its slot is free.
fn settled(state: &State, stream_id: &str) {
    state.running().remove(stream_id);
    state.freed.notify_all();
}

/// The result and the acknowledgement in one transaction (one round trip;
/// all or nothing). When its reply is lost with the connection, it is sent
/// again on a new one: the second result is dropped by the submitter, the
/// second acknowledgement does nothing.
fn answer_once(
    state: &State,
    c: &mut redis::Connection,
    stream_id: &str,
    message: &TaskMessage,
    result: &ResultMessage,
) -> redis::RedisResult<()> {
    answering(state, stream_id, message, result).query(c)
}

/// The commands of [`answer_once`] inside MULTI/EXEC (as many as
/// [`replies_read`] reads the replies of).
const ANSWER_COMMANDS: usize = 4;

/// The transaction that writes `result` to its caller's stream and
/// acknowledges its task.
fn answering(state: &State, stream_id: &str, message: &TaskMessage, result: &ResultMessage) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("XADD")
        .arg(&message.reply)
        .arg("*")
        .arg("id")
        .arg(&message.id)
        .arg("r")
        .arg(crate::reduction::encode_plain(result))
        .ignore()
        .cmd("PEXPIRE")
        .arg(&message.reply)
        .arg(state.config.bookkeeping_ttl.as_millis() as u64)
        .ignore();
    acknowledge(state, &mut pipe, stream_id);
    pipe
}

fn ack(state: &State, c: &mut redis::Connection, stream_id: &str) -> redis::RedisResult<()> {
    acknowledge(state, redis::pipe().atomic(), stream_id).query(c)
}

/// Adds the task's acknowledgement (XACK, then XDEL: nobody needs it any
/// more) to `pipe`.
fn acknowledge<'p>(state: &State, pipe: &'p mut redis::Pipeline, stream_id: &str) -> &'p mut redis::Pipeline {
    let tasks = state.keys.tasks();
    pipe.cmd("XACK").arg(&tasks).arg(GROUP).arg(stream_id).ignore().cmd("XDEL").arg(&tasks).arg(stream_id).ignore()
}

/// How long ago the entry was added (its id starts with Redis's clock in
/// milliseconds; compared with Redis's clock now).
fn entry_age_ms(c: &mut redis::Connection, stream_id: &str) -> redis::RedisResult<u64> {
    let added: u64 = stream_id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0);
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(c)?;
    Ok((secs * 1000 + micros / 1000).saturating_sub(added))
}

/// How often the task has been delivered (Redis counts).
fn deliveries(state: &State, c: &mut redis::Connection, stream_id: &str) -> redis::RedisResult<u64> {
    let v: Value =
        redis::cmd("XPENDING").arg(state.keys.tasks()).arg(GROUP).arg(stream_id).arg(stream_id).arg(1).query(c)?;
    let count = match &v {
        Value::Array(rows) => match rows.first() {
            Some(Value::Array(row)) => match row.get(3) {
                Some(Value::Int(n)) => *n as u64,
                _ => 1,
            },
            _ => 1,
        },
        _ => 1,
    };
    Ok(count)
}

/// A task whose process died: back for another delivery, or, after
/// `max_deliveries`, a dead letter and a typed error to its caller.
fn crashed(
    state: &State,
    c: &mut redis::Connection,
    stream_id: &str,
    message: &TaskMessage,
    how: &str,
) -> redis::RedisResult<()> {
    let n = deliveries(state, c, stream_id)?;
    if n < state.config.max_deliveries {
        return hand_back(state, c, stream_id);
    }
    let why = format!("its process was {how} in each of {n} deliveries");
    dead_letter(state, c, stream_id, Some(message), &why, n)?;
    let failure = Failure::Poison { deliveries: n, how: how.to_owned() };
    answer_once(state, c, stream_id, message, &ResultMessage::Failed(failure))
}

fn dead_letter(
    state: &State,
    c: &mut redis::Connection,
    stream_id: &str,
    message: Option<&TaskMessage>,
    why: &str,
    deliveries: u64,
) -> redis::RedisResult<()> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(state.keys.dead())
        .arg("MAXLEN")
        .arg("~")
        .arg(DEAD_LETTERS_KEPT)
        .arg("*")
        .arg("entry")
        .arg(stream_id)
        .arg("reason")
        .arg(why)
        .arg("deliveries")
        .arg(deliveries)
        .arg("worker")
        .arg(&state.name);
    if let Some(m) = message {
        cmd.arg("task").arg(&m.id).arg("t").arg(crate::reduction::encode_plain(m));
    }
    cmd.query(c)
}

/// Gives a task back at once: idle for longer than any lease, so the next
/// reclaim anywhere takes it.
fn hand_back(state: &State, c: &mut redis::Connection, stream_id: &str) -> redis::RedisResult<()> {
    let idle = (state.config.lease.as_millis() as u64).saturating_mul(1000).max(3_600_000);
    redis::cmd("XCLAIM")
        .arg(state.keys.tasks())
        .arg(GROUP)
        .arg(&state.name)
        .arg(0)
        .arg(stream_id)
        .arg("IDLE")
        .arg(idle)
        .arg("JUSTID")
        .query::<Value>(c)
        .map(drop)
}

fn hand_back_all(state: &State) {
    let ids: Vec<String> = state.running().keys().cloned().collect();
    if ids.is_empty() {
        return;
    }
    for _ in 0..3 {
        if let Ok(mut c) = connect(&state.config)
            && ids.iter().all(|id| hand_back(state, &mut c, id).is_ok())
        {
            break;
        }
    }
    state.running().clear();
}

/// Renews, every third of the lease, the lease of each task running here
/// that is still ours (a task another worker took from us after a stall
/// stays theirs).
fn renew(state: &State) {
    let script = redis::Script::new(
        r"
        local n = 0
        for i = 3, #ARGV do
            local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
            if p[1] and p[1][2] == ARGV[2] then
                redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
                n = n + 1
            end
        end
        return n
        ",
    );
    let mut con = None;
    let every = state.config.lease / 3;
    let mut next = Instant::now();
    while !state.stopping() {
        let now = Instant::now();
        if now < next {
            let running = state.running();
            let _ = state.freed.wait_timeout(running, (next - now).min(Duration::from_millis(200)));
            continue;
        }
        next = now + every;
        let running: Vec<(String, Running)> = state.running().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let ids: Vec<String> = running.iter().map(|(id, _)| id.clone()).collect();
        let Some(c) = kept(&mut con, &state.config, as_is) else { continue };
        let mut call = script.key(state.keys.tasks());
        call.arg(GROUP).arg(&state.name);
        for id in &ids {
            call.arg(id);
        }
        // Who is here, and how busy, for `cluster status`.
        let seen = redis::cmd("SET")
            .arg(state.keys.worker(&state.name))
            .arg(format!("{} {}", ids.len(), state.slots))
            .arg("PX")
            .arg((state.config.lease.as_millis() as u64).saturating_mul(3))
            .query::<()>(c);
        // Tasks whose callers cancelled them: their processes go.
        let cancelled = if running.is_empty() {
            Ok(Vec::new())
        } else {
            let keys: Vec<String> = running.iter().map(|(_, r)| state.keys.cancel(&r.message.id)).collect();
            redis::cmd("MGET").arg(&keys).query::<Vec<Option<String>>>(c)
        };
        if let Ok(flags) = &cancelled {
            let mut any = false;
            for ((_, r), flag) in running.iter().zip(flags) {
                if flag.is_some() && !r.sink.cancelled.swap(true, Ordering::SeqCst) {
                    any = true;
                }
            }
            if any {
                (state.wake_local)();
            }
        }
        if call.invoke::<i64>(c).is_err() || seen.is_err() || cancelled.is_err() {
            con = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EntryRef;

    /// A worker's state on `redis`, with no threads: the tests drive it.
    fn state(redis: &super::super::LocalRedis, pool: &str) -> State {
        State {
            config: Config::new(&redis.url(), pool),
            keys: Keys::new(pool),
            name: "w-1".into(),
            slots: 1,
            running: Mutex::new(HashMap::new()),
            answering: Mutex::new(Answering { con: None, owed: Vec::new(), again: false }),
            wake_local: Box::new(|| {}),
            freed: Condvar::new(),
            stop: Box::leak(Box::new(AtomicBool::new(false))),
        }
    }

    /// Puts `n` tasks in the stream, takes them as the worker would (so
    /// that they are pending, its to acknowledge) and notes them as running.
    fn take_tasks(state: &State, admin: &mut redis::Connection, n: usize) -> Vec<String> {
        let tasks = state.keys.tasks();
        ensure_group(admin, &tasks).unwrap();
        for _ in 0..n {
            redis::cmd("XADD").arg(&tasks).arg("*").arg("t").arg("x").query::<String>(admin).unwrap();
        }
        let v: Value = reading(state, n, None).query(admin).unwrap();
        let (done, _) = mpsc::channel();
        protocol::read_reply(&v)
            .into_iter()
            .enumerate()
            .map(|(k, (stream_id, _))| {
                let message = TaskMessage {
                    id: format!("s:{k}"),
                    reply: "answers".into(),
                    build: String::new(),
                    function: String::new(),
                    entry: EntryRef { offset: 0, check: 0 },
                    batch: false,
                    calls: 1,
                    timeout_ms: None,
                    items: Vec::new(),
                };
                let sink = Arc::new(TaskSink {
                    stream_id: stream_id.clone(),
                    calls: 1,
                    cancelled: AtomicBool::new(false),
                    failed: Mutex::new(Vec::new()),
                    done: Mutex::new(done.clone()),
                    state: std::sync::Weak::new(),
                });
                state.running().insert(stream_id.clone(), Running { message, sink });
                stream_id
            })
            .collect()
    }

    /// A Redis of its own, a worker's state on it with `n` tasks running
    /// and its answering connection up, an admin connection, the tasks'
    /// stream ids.
    fn running(n: usize) -> (super::super::LocalRedis, State, redis::Connection, Vec<String>) {
        let redis = super::super::LocalRedis::start().expect("redis-server (scripts/test installs it)");
        let state = state(&redis, "answers");
        let mut admin = connect(&state.config).unwrap();
        let ids = take_tasks(&state, &mut admin, n);
        state.answering.lock().unwrap().con = Some(connect(&state.config).unwrap());
        (redis, state, admin, ids)
    }

    fn result(k: u8) -> ResultMessage {
        ResultMessage::Outcome { outcome: Outcome::Returned(vec![k]), worker: "w".into(), pid: 1 }
    }

    fn pending(state: &State, admin: &mut redis::Connection) -> i64 {
        let v: Value = redis::cmd("XPENDING").arg(state.keys.tasks()).arg(GROUP).query(admin).unwrap();
        match v {
            Value::Array(parts) => match parts.first() {
                Some(Value::Int(n)) => *n,
                other => panic!("XPENDING: {other:?}"),
            },
            other => panic!("XPENDING: {other:?}"),
        }
    }

    /// Answers written without waiting for their replies: the next user of
    /// the connection reads exactly those replies first (a command after
    /// them gets its own reply), and each answer is in, its task
    /// acknowledged.
    #[test]
    fn replies_owed_are_read_before_the_connection_serves_again() {
        let (_redis, state, mut admin, ids) = running(3);
        for (k, id) in ids.iter().enumerate() {
            assert!(answer_here(&state, id, result(k as u8)).is_none(), "written at once");
        }
        assert!(state.running().is_empty(), "their slots are free");
        let mut a = state.answering.lock().unwrap();
        assert_eq!(a.owed.len(), 3);
        let c = a.ready(&state).expect("the replies read");
        assert_eq!(redis::cmd("PING").query::<String>(c).unwrap(), "PONG");
        assert!(a.owed.is_empty());
        let answers: i64 = redis::cmd("XLEN").arg("answers").query(&mut admin).unwrap();
        assert_eq!((answers, pending(&state, &mut admin)), (3, 0));
    }

    /// An answer written on a connection that dies before Redis runs it is
    /// written again on the next connection: nothing is lost because its
    /// writer did not wait for the reply.
    #[test]
    fn an_answer_whose_connection_died_unread_is_written_again() {
        let (_redis, state, mut admin, ids) = running(1);
        // Writes wait while Redis is paused for them: the answer is held
        // there when its connection is killed.
        redis::cmd("CLIENT").arg("PAUSE").arg(60_000).arg("WRITE").query::<()>(&mut admin).unwrap();
        assert!(answer_here(&state, &ids[0], result(7)).is_none());
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query(&mut admin)
            .unwrap();
        assert_eq!(killed, 1, "the answering connection");
        redis::cmd("CLIENT").arg("UNPAUSE").query::<()>(&mut admin).unwrap();
        let answers = |admin: &mut redis::Connection| redis::cmd("XLEN").arg("answers").query::<i64>(admin).unwrap();
        assert_eq!((answers(&mut admin), pending(&state, &mut admin)), (0, 1), "lost with its connection");
        let mut a = state.answering.lock().unwrap();
        assert!(a.ready(&state).is_none(), "the replies never come: the connection is lost");
        assert!(a.again && a.owed.len() == 1);
        assert!(a.ready(&state).is_some(), "a new connection, the answer written again");
        assert!(a.owed.is_empty() && !a.again);
        assert_eq!((answers(&mut admin), pending(&state, &mut admin)), (1, 0));
    }
}
