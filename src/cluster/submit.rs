//! The submitting side of a Redis-backed pool: what runs in place of the
//! local pool's supervisor. It takes the pool's queued tasks, sends them as
//! stream entries (keeping each until its result comes, so that it can be
//! sent again), reads the results from its own stream and hands them to
//! the same sinks a local pool feeds. Everything the user sees (ordering,
//! callbacks, `AsyncResult`) is the local pool's code.
//!
//! Exactly one result per task: a result whose task has one already (a
//! worker that stalled past its lease and came back, a task sent again
//! after Redis lost data) is dropped and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::Value;

use super::protocol::{self, Keys, ResultMessage, TaskMessage};
use super::{Config, as_is, ensure_group, kept, pause};
use crate::Error;
use crate::pool::result::RawItem;
use crate::pool::supervisor::{Direct, Shared, Status, Task};

/// A task sent and not yet answered.
struct Sent {
    task: Task,
    message: TaskMessage,
    /// Its entry in the task stream, once sent.
    entry: Option<String>,
}

struct Books {
    sent: Mutex<HashMap<String, Sent>>,
    /// Results dropped because their task had one already (shared with
    /// the pool's handle).
    duplicates: Arc<AtomicU64>,
    /// Tasks their callers cancelled: a result of theirs is no duplicate.
    cancelled: Mutex<std::collections::HashSet<String>>,
    /// Set when Redis lost data: the reader starts its stream over.
    restart_reading: AtomicBool,
    stop: AtomicBool,
}

impl Books {
    fn sent(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sent>> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The transport thread's body.
pub(crate) fn run(shared: Arc<Shared>, config: Config, duplicates: Arc<AtomicU64>) {
    let submitter = super::random_name();
    let keys = Keys::new(&config.pool);
    let books = Arc::new(Books {
        sent: Mutex::new(HashMap::new()),
        duplicates,
        cancelled: Mutex::new(std::collections::HashSet::new()),
        restart_reading: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let reader = {
        let (books, config, keys, submitter) = (books.clone(), config.clone(), keys.clone(), submitter.clone());
        std::thread::Builder::new()
            .name("multiproc-cluster-results".into())
            .spawn(move || read_results(&books, &config, &keys.results(&submitter)))
    };
    let sender = Arc::new(Mutex::new(Sender { con: None, next_seq: 0, unsure: false, unread: Vec::new() }));
    shared.set_direct(direct(sender.clone(), books.clone(), keys.clone(), submitter.clone(), config.clone()));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dispatch(&shared, &config, &keys, &submitter, &books, &sender);
    }));
    // The pool no longer takes tasks (its status says so): the connection
    // goes now, not with the pool.
    lock(&sender).con = None;
    books.stop.store(true, Ordering::SeqCst);
    if let Ok(r) = reader {
        let _ = r.join();
    }
    let message = outcome.err().map(|p| {
        p.downcast_ref::<&str>().map(|s| (*s).to_owned()).unwrap_or_else(|| "the cluster transport panicked".into())
    });
    let fail = |t: Task| t.fail(|| message.clone().map_or(Error::PoolTerminated, Error::Protocol));
    for (_, s) in std::mem::take(&mut *books.sent()) {
        fail(s.task);
    }
    for t in std::mem::take(&mut shared.lock().pending) {
        fail(t);
    }
    shared.lock().status = Status::Stopped;
    shared.notify_stopped();
}

/// The submitting connection and what goes with it: the transport
/// thread's, or, while that thread sleeps, a caller's (see [`direct`]).
struct Sender {
    con: Option<redis::Connection>,
    next_seq: u64,
    /// A send whose reply was lost (its connection killed mid-pipeline):
    /// Redis may have added some of its entries, or none. The ones without
    /// an entry id go again; a task added twice runs twice and its second
    /// result is dropped, where one not added at all would never be
    /// answered.
    unsure: bool,
    /// Tasks whose XADD replies (their entry ids) are still to be read, in
    /// order: nobody waits for them after sending, so that a reply does not
    /// wake a thread while the task is on its way (the cores are better
    /// spent on the worker then); the next turn reads them first.
    unread: Vec<String>,
}

impl Sender {
    /// Reads the replies still owed, noting each task's entry.
    fn read_owed(&mut self, books: &Books) -> redis::RedisResult<()> {
        if self.unread.is_empty() {
            return Ok(());
        }
        let Some(c) = self.con.as_mut() else { return Ok(()) };
        let entries = (0..self.unread.len())
            .map(|_| Ok(redis::from_redis_value::<String>(c.recv_response()?)?))
            .collect::<redis::RedisResult<Vec<String>>>()?;
        note_entries(books, &std::mem::take(&mut self.unread), entries);
        Ok(())
    }

    /// The connection failed: the replies not read never come, and what
    /// has no entry yet goes again on the next.
    fn lost(&mut self) {
        self.con = None;
        self.unsure = true;
        self.unread.clear();
    }

    /// Notes `batch` in the books and sends it (without waiting for the
    /// reply); a task whose arguments cannot travel fails at once.
    fn send(&mut self, batch: Vec<Task>, books: &Books, keys: &Keys, submitter: &str, config: &Config) -> Sending {
        let Some(c) = self.con.as_mut() else { return Sending::Sent };
        let reply = keys.results(submitter);
        let tasks = keys.tasks();
        let mut pipe = redis::pipe();
        let mut ids = Vec::with_capacity(batch.len());
        for mut task in batch {
            self.next_seq += 1;
            match message(&mut task, format!("{submitter}:{}", self.next_seq), &reply, config.task_timeout) {
                Ok(m) => {
                    // Encoded here, so that the books keep the one copy
                    // (for resubmission).
                    add(&mut pipe, &tasks, &m);
                    ids.push(m.id.clone());
                    books.sent().insert(m.id.clone(), Sent { task, message: m, entry: None });
                }
                Err(e) => {
                    task.fail(|| e.clone_error());
                }
            }
        }
        // Sent after being noted: a fast result finds its task.
        if ids.is_empty() {
            return Sending::Sent;
        }
        match c.send_packed_command(&pipe.get_packed_pipeline()) {
            Ok(()) => {
                self.unread.extend(ids);
                Sending::Sent
            }
            Err(_) => {
                self.lost();
                Sending::Failed(ids)
            }
        }
    }
}

/// How a send went.
enum Sending {
    /// Sent, or failed at once with a typed error to its caller.
    Sent,
    /// The connection failed: these tasks are in the books without an
    /// entry (the next connection sends them, as `unsure`).
    Failed(Vec<String>),
}

type SenderLock = Arc<Mutex<Sender>>;

fn lock(sender: &Mutex<Sender>) -> std::sync::MutexGuard<'_, Sender> {
    sender.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The pool's direct path: a caller whose task finds the queue empty and
/// the connection free and sound sends the task itself, instead of waking
/// the transport thread to do it (one hand-over less on every round trip).
/// Anything else (no connection yet, a lost one, the in-flight limit
/// reached, the connection busy) gives the task back for the queue.
fn direct(sender: SenderLock, books: Arc<Books>, keys: Keys, submitter: String, config: Config) -> Direct {
    Box::new(move |task: Task| {
        let Ok(mut s) = sender.try_lock() else { return Err(task) };
        if s.con.is_none() || s.unsure || books.sent().len() >= config.max_in_flight {
            return Err(task);
        }
        // Replies pile up in the socket while nobody reads them; now and
        // then the caller reads what has long come.
        if s.unread.len() >= 64 && s.read_owed(&books).is_err() {
            s.lost();
            return Err(task);
        }
        match s.send(vec![task], &books, &keys, &submitter, &config) {
            Sending::Sent => Ok(()),
            Sending::Failed(ids) => {
                // Back to the queue, unless its result came meanwhile.
                let task = ids.first().and_then(|id| books.sent().remove(id)).map(|s| s.task);
                task.map_or(Ok(()), Err)
            }
        }
    })
}

/// Sends queued tasks while fewer than the limit are out, and watches the
/// epoch; returns when the pool is done or terminated.
fn dispatch(shared: &Shared, config: &Config, keys: &Keys, submitter: &str, books: &Books, sender: &Mutex<Sender>) {
    let epoch_key = keys.epoch(submitter);
    let reply = keys.results(submitter);
    let ttl_ms = config.bookkeeping_ttl.as_millis() as u64;
    let mut next_epoch_look = Instant::now();
    loop {
        let status = shared.lock().status;
        if matches!(status, Status::Terminating | Status::Stopped) {
            return;
        }
        if status == Status::Closed && shared.lock().pending.is_empty() && books.sent().is_empty() {
            return;
        }
        let tasks = keys.tasks();
        let setup = |c: &mut redis::Connection| {
            next_epoch_look = Instant::now();
            ensure_group(c, &tasks)
        };
        let mut guard = lock(sender);
        let s = &mut *guard;
        if kept(&mut s.con, config, setup).is_none() {
            drop(guard);
            pause(shared);
            continue;
        }
        let step = (|| -> redis::RedisResult<()> {
            s.read_owed(books)?;
            let c = s.con.as_mut().expect("kept above");
            if s.unsure {
                send_again(c, keys, books, |s| s.entry.is_none())?;
                s.unsure = false;
            }
            if Instant::now() >= next_epoch_look {
                next_epoch_look = Instant::now() + config.epoch_look;
                let here: bool = redis::cmd("EXISTS").arg(&epoch_key).query(c)?;
                if !here {
                    // First time, or Redis lost what it had: our tasks may be
                    // gone with it. The group again (at 0), then everything
                    // unanswered once more.
                    ensure_group(c, &keys.tasks())?;
                    books.restart_reading.store(true, Ordering::SeqCst);
                    send_again(c, keys, books, |_| true)?;
                }
                redis::pipe()
                    .cmd("SET")
                    .arg(&epoch_key)
                    .arg(submitter)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&reply)
                    .arg(ttl_ms)
                    .ignore()
                    .query::<()>(c)?;
            }
            // Cancelled before they were sent: never sent; sent ones are
            // withdrawn.
            let cancels = shared.drop_cancelled(&mut shared.lock());
            if cancels && let Err(e) = cancel(c, keys, books, ttl_ms) {
                // Looked at again on the next connection.
                shared.note_cancel();
                return Err(e);
            }
            // New tasks, as many as the limit allows.
            let room = config.max_in_flight.saturating_sub(books.sent().len());
            let batch: Vec<Task> = {
                let mut st = shared.lock();
                let n = room.min(st.pending.len());
                let batch = st.pending.drain(..n).collect();
                st.sleeping = true;
                batch
            };
            match s.send(batch, books, keys, submitter, config) {
                Sending::Sent => Ok(()),
                // Already noted as lost; they go again on the next.
                Sending::Failed(_) => Ok(()),
            }
        })();
        if step.is_err() {
            s.lost();
            continue;
        }
        drop(guard);
        // Until a task is queued, the pool changes, or the epoch is due.
        let left = next_epoch_look.saturating_duration_since(Instant::now());
        shared.wait_wake(left.min(Duration::from_millis(250)));
        shared.lock().sleeping = false;
    }
}

/// Encodes a task for the wire; its calls fail at once if they hold OS
/// handles, which cannot reach another machine. Big arguments kept in
/// shared memory come back into the message.
fn message(task: &mut Task, id: String, reply: &str, timeout: Option<Duration>) -> Result<TaskMessage, TravelError> {
    for item in &mut task.items {
        crate::reduction::inline(&mut item.bytes, &mut item.fds).map_err(TravelError)?;
    }
    if task.items.iter().any(|i| !i.fds.is_empty()) {
        return Err(TravelError("arguments holding OS handles (descriptors) cannot travel to another machine".into()));
    }
    let m = TaskMessage {
        id,
        reply: reply.to_owned(),
        build: protocol::build_identity().to_owned(),
        function: task.signature.map(|s| s().to_string()).unwrap_or_default(),
        entry: task.entry,
        batch: task.batch,
        calls: task.calls,
        timeout_ms: timeout.map(|t| t.as_millis() as u64),
        items: task.items.iter().map(|i| serde_bytes::ByteBuf::from(i.bytes.clone())).collect(),
    };
    Ok(m)
}

/// Arguments that cannot travel through Redis (they hold OS handles), and
/// why.
struct TravelError(String);

impl TravelError {
    fn clone_error(&self) -> Error {
        Error::Encode { what: crate::Payload::Arguments, side: crate::Side::Parent, message: self.0.clone() }
    }
}

/// Adds the tasks to the stream; their entry ids, in order.
fn send(c: &mut redis::Connection, keys: &Keys, messages: &[TaskMessage]) -> redis::RedisResult<Vec<String>> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    adding(keys, messages).query(c)
}

/// The commands that add `messages` to the task stream, one XADD each.
fn adding(keys: &Keys, messages: &[TaskMessage]) -> redis::Pipeline {
    let tasks = keys.tasks();
    let mut pipe = redis::pipe();
    for m in messages {
        add(&mut pipe, &tasks, m);
    }
    pipe
}

/// The XADD of one task message to the task stream `tasks`.
fn add(pipe: &mut redis::Pipeline, tasks: &str, m: &TaskMessage) {
    pipe.cmd("XADD").arg(tasks).arg("*").arg("t").arg(crate::reduction::encode_plain(m));
}

/// Sends once more the unanswered tasks that `which` picks, noting their
/// new entries.
fn send_again(
    c: &mut redis::Connection,
    keys: &Keys,
    books: &Books,
    which: impl Fn(&Sent) -> bool,
) -> redis::RedisResult<()> {
    let again: Vec<TaskMessage> = books.sent().values().filter(|s| which(s)).map(|s| s.message.clone()).collect();
    let entries = send(c, keys, &again)?;
    let ids: Vec<String> = again.into_iter().map(|m| m.id).collect();
    note_entries(books, &ids, entries);
    Ok(())
}

/// Notes the stream entry of each task (by id, in order) still unanswered.
fn note_entries(books: &Books, ids: &[String], entries: Vec<String>) {
    let mut sent = books.sent();
    for (id, entry) in ids.iter().zip(entries) {
        if let Some(s) = sent.get_mut(id) {
            s.entry = Some(entry);
        }
    }
}

/// Tasks sent whose callers cancelled them: out of the stream if no worker
/// took them yet (XDEL: never delivered), a cancel key that a worker running
/// one looks for (it kills the task's process), then out of the books. They
/// leave the books only once Redis has both: if the connection is lost on
/// the way, the next look sends them again.
fn cancel(c: &mut redis::Connection, keys: &Keys, books: &Books, ttl_ms: u64) -> redis::RedisResult<()> {
    let gone: Vec<(String, Option<String>)> = books
        .sent()
        .iter()
        .filter(|(_, s)| s.task.sink.cancelled())
        .map(|(id, s)| (id.clone(), s.entry.clone()))
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (id, entry) in &gone {
        pipe.cmd("SET").arg(keys.cancel(id)).arg(1).arg("PX").arg(ttl_ms).ignore();
        if let Some(entry) = entry {
            pipe.cmd("XDEL").arg(keys.tasks()).arg(entry).ignore();
        }
    }
    pipe.query::<()>(c)?;
    let mut sent = books.sent();
    let mut cancelled = books.cancelled.lock().unwrap_or_else(PoisonError::into_inner);
    for (id, _) in gone {
        // Answered meanwhile: its result was delivered (to a call that
        // keeps its cancellation); none is still to come.
        if sent.remove(&id).is_some() {
            cancelled.insert(id);
        }
    }
    Ok(())
}

/// The result reader's loop (its own connection: it blocks). Entries read
/// are deleted with the next read, in the same write: no round trip of its
/// own while a caller waits for the next result.
fn read_results(books: &Books, config: &Config, stream: &str) {
    let mut con = None;
    let mut last = "0-0".to_string();
    let mut read: Vec<String> = Vec::new();
    while !books.stop.load(Ordering::SeqCst) {
        let Some(c) = kept(&mut con, config, as_is) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if books.restart_reading.swap(false, Ordering::SeqCst) {
            last = "0-0".into();
        }
        let mut pipe = redis::pipe();
        if !read.is_empty() {
            pipe.cmd("XDEL").arg(stream).arg(&read).ignore();
        }
        pipe.cmd("XREAD").arg("COUNT").arg(1000).arg("BLOCK").arg(config.block.as_millis() as u64);
        pipe.arg("STREAMS").arg(stream).arg(&last);
        let entries = match pipe.query::<(Value,)>(c) {
            Ok((v,)) => protocol::read_reply(&v),
            Err(_) => {
                // Whether or not the deletion went through, it is tried
                // again with the next read (deleting twice is harmless).
                con = None;
                continue;
            }
        };
        read.clear();
        for (id, fields) in entries {
            read.push(id.clone());
            last = id;
            deliver(books, &fields);
        }
    }
}

fn deliver(books: &Books, fields: &HashMap<String, Vec<u8>>) {
    let (Some(id), Some(body)) = (fields.get("id"), fields.get("r")) else { return };
    let Ok(id) = String::from_utf8(id.clone()) else { return };
    let Some(sent) = books.sent().remove(&id) else {
        // A cancelled task's answer is expected; anything else is a second.
        if !books.cancelled.lock().unwrap_or_else(PoisonError::into_inner).remove(&id) {
            books.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        return;
    };
    let task = sent.task;
    match crate::reduction::decode_plain::<ResultMessage>(body) {
        Ok(ResultMessage::Outcome { outcome, worker, pid }) => {
            task.sink.deliver_with(
                task.base,
                RawItem::Outcome { outcome, fds: Vec::new(), worker: worker.into(), pid },
                task.args(0),
            );
        }
        Ok(ResultMessage::Batch { outcome, worker, pid, count: _ }) => {
            // The count is ours, not what came from Redis: a wrong one
            // there cannot make us allocate for it.
            task.sink.deliver_with(
                task.base,
                RawItem::Batch { outcome, fds: Vec::new(), worker: worker.into(), pid, count: task.calls },
                task.args(0),
            );
        }
        Ok(ResultMessage::Failed(f)) => {
            task.fail(|| super::failure_error(&f));
        }
        Err(message) => {
            task.fail(|| Error::Protocol(format!("a result: {message}")));
        }
    }
}
