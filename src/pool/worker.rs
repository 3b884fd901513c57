//! The worker process: runs tasks from its pool until told to stop.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use super::answers::Answers;
use super::mailbox::{Mailbox, PAUSE_FOR, Stop};
use crate::Handle;
use crate::bootstrap::{resolve, run_target};
use crate::process::{EntryFn, Reply, Run};
use crate::reduction;
use crate::sys::frame::{self, MAX_FDS, Progress, Reader};
use crate::wire::{EntryRef, FromWorker, Outcome, ToWorker};

/// After this many bytes of messages and results, a worker that finds
/// nothing to do trims its heap.
const TRIM_AFTER: usize = 64 << 10;

/// How long a worker must have had nothing to do before it trims.
const IDLE: std::time::Duration = std::time::Duration::from_millis(5);

/// How long a worker whose last task came straight from its caller looks
/// for the next one before it sleeps: a caller that waits for each result
/// sends the next within tens of microseconds, and on a VM waking a thread
/// whose core went idle costs as much again. (Not after tasks the pool's
/// thread queued: in a stream, spinning workers take the cores that thread
/// needs to feed them.)
const NEXT_TASK_SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// The initializer a worker runs once before its first task.
#[derive(Serialize, Deserialize)]
pub(crate) struct Init {
    pub entry: EntryRef,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub fds: Vec<Handle>,
}

impl Init {
    pub fn try_clone(&self) -> std::io::Result<Init> {
        Ok(Init {
            entry: self.entry,
            payload: self.payload.clone(),
            fds: self.fds.iter().map(Handle::try_clone).collect::<Result<_, _>>()?,
        })
    }
}

/// A pool worker: the `Run` object each worker process is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct Worker {
    pub conn: Handle,
    pub init: Option<Init>,
    /// Makes the worker's state, before the initializer.
    pub state: Option<Init>,
    /// Runs on the state when the worker leaves in order.
    pub exit: Option<Init>,
    pub maxtasks: Option<u64>,
    /// Its place among its pool's workers.
    pub index: usize,
    /// Its answer ring (`pool::answers`).
    pub answers: Handle,
    /// Its mailbox (`pool::mailbox`).
    pub mailbox: Handle,
}

/// This process's place among its pool's workers, once it is one.
static WORKER_ID: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Which of its pool's workers runs the calling task: `0..processes`
/// (a worker that replaces a dead one takes its number); `None` outside a
/// pool's worker. mpire's `worker_id`.
///
/// ```
/// # #[multiproc::main] fn main() {
/// fn who(_: u32) -> Option<usize> { multiproc::worker_id() }
/// let pool = multiproc::Pool::new(2).unwrap();
/// assert!(pool.map(who, 0..20).unwrap().iter().all(|id| matches!(id, Some(0 | 1))));
/// assert_eq!(multiproc::worker_id(), None);
/// # }
/// ```
pub fn worker_id() -> Option<usize> {
    WORKER_ID.get().copied()
}

impl Run for Worker {
    type Output = ();

    fn run(self) {
        let _ = WORKER_ID.set(self.index);
        let conn = self.conn.into_owned_fd();
        // Without the ring (it could not be mapped), every answer takes the
        // socket.
        let answers = Answers::open(self.answers.into_owned_fd()).ok();
        // Without it, callers' tasks come through the socket.
        let mailbox = Mailbox::open(self.mailbox.into_owned_fd()).ok();
        for init in self.state.into_iter().chain(self.init) {
            let fds = init.fds.into_iter().map(OwnedFd::from).collect();
            let reply = call(&resolve(init.entry), &init.payload, fds);
            if !matches!(reply.outcome, Outcome::Returned(_)) {
                send(conn.as_fd(), &FromWorker::InitFailed(reply.outcome), &[]);
                return;
            }
        }
        if !send(conn.as_fd(), &FromWorker::Ready, &[]) {
            return;
        }
        last_words(conn.as_fd());
        let mut reader = Reader::new();
        let mut done = 0u64;
        // Bytes of messages and results since the heap was last trimmed.
        let mut grown = 0usize;
        // A trim was due but work came first: the next idle moment trims.
        let mut untrimmed = false;
        // The last task came straight from its caller.
        let mut after_direct = false;
        // A frame read while listening, behind a task posted to the mailbox.
        let mut held: Option<frame::Frame> = None;
        let mut mail = Vec::new();
        loop {
            // After a caller's task, listen for the next one a moment (in
            // the mailbox, and on the socket). After messages of some size,
            // look without waiting first: with nothing to do for a moment,
            // give back the heap they grew, so that an idle worker holds no
            // more than it needs. (Not in the gap between two chunks of one
            // map: the next chunk would fault it all in again.)
            let spin = after_direct && grown <= TRIM_AFTER;
            let mut from_mailbox = false;
            let mut got = if let Some(f) = held.take() {
                Ok(Progress::Frame(f))
            } else if spin && let Some(m) = &mailbox {
                match listen(m, &mut reader, conn.as_fd(), &mut mail) {
                    Heard::Mail(frame) => {
                        held = frame;
                        from_mailbox = true;
                        Ok(Progress::Frame(frame::Frame { bytes: std::mem::take(&mut mail), fds: Vec::new() }))
                    }
                    Heard::Frame(got) => got,
                }
            } else if spin {
                reader.read_spinning(conn.as_fd(), std::time::Instant::now() + NEXT_TASK_SPIN)
            } else {
                reader.read(conn.as_fd(), grown <= TRIM_AFTER && !untrimmed)
            };
            if let Ok(Progress::Pending) = got {
                let ready = crate::sys::poll(&[(conn.as_fd(), crate::sys::Interest::Read)], Some(IDLE));
                if ready.is_ok_and(|r| !r[0].0) {
                    crate::sys::trim_heap();
                    untrimmed = false;
                } else if grown > TRIM_AFTER {
                    untrimmed = true;
                }
                grown = 0;
                got = reader.read(conn.as_fd(), true);
            }
            let frame = match got {
                Ok(Progress::Frame(f)) => f,
                // The pool is gone or closed our connection: leave.
                _ => return,
            };
            let Ok(msg) = reduction::decode_plain::<ToWorker>(&frame.bytes) else { return };
            if from_mailbox {
                // Its bytes, for the next mail.
                mail = frame.bytes;
            }
            let (id, entry, items) = match msg {
                ToWorker::Exit => return leave(self.exit, conn.as_fd()),
                ToWorker::Task { id, entry, items, direct } => {
                    after_direct = direct;
                    (id, entry, items)
                }
            };
            // Should this process die from now on, the pool knows the task
            // had begun; before, that it never ran and may run elsewhere.
            if let Some(m) = &mailbox {
                m.start(id);
            }
            let entry = resolve(entry);
            let mut fds = frame.fds.into_iter();
            let mut outcomes = Vec::with_capacity(items.len());
            let mut out_fds: Vec<OwnedFd> = Vec::new();
            for (k, item) in items.into_iter().enumerate() {
                if cfg!(panic = "abort") {
                    RUNNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner).replace((id, k as u32));
                    crate::pool::chunk::CALL.store(0, std::sync::atomic::Ordering::Relaxed);
                }
                let item_fds: Vec<OwnedFd> = fds.by_ref().take(item.nfds as usize).collect();
                // Counted where they are: a big one is in a memory file.
                grown = grown.saturating_add(reduction::payload_len(&item.bytes, &item_fds));
                #[cfg(feature = "tracing")]
                let _span = tracing::info_span!(
                    "pool.task",
                    pid = crate::os::getpid(),
                    worker_id = self.index,
                    task = id,
                    item = k
                )
                .entered();
                #[cfg(not(feature = "tracing"))]
                let _ = k;
                let began = std::time::Instant::now();
                let reply = call(&entry, &item.bytes, item_fds);
                let took = began.elapsed().as_nanos() as u64;
                if out_fds.len() + reply.fds.len() > MAX_FDS {
                    let message = format!("the results of one task carry more than {MAX_FDS} handles");
                    outcomes.push((Outcome::Codec { what: crate::Payload::Result, decode: false, message }, 0, took));
                    continue;
                }
                if let Outcome::Returned(bytes) = &reply.outcome {
                    grown = grown.saturating_add(reduction::payload_len(bytes, &reply.fds));
                }
                outcomes.push((reply.outcome, reply.fds.len() as u32, took));
                out_fds.extend(reply.fds);
            }
            let borrowed: Vec<BorrowedFd<'_>> = out_fds.iter().map(|f| f.as_fd()).collect();
            let answer = reduction::encode_plain(&FromWorker::Done { id, items: outcomes });
            // A caller's mail is answered by mail; a caller watching for it
            // takes it, else the supervisor must hear (rung as for the ring).
            // A worker that will listen next says so with its answer: the
            // caller's next task, sent as soon as it has this answer, would
            // otherwise often find it not listening yet.
            let listen_next = after_direct && grown <= TRIM_AFTER && held.is_none();
            let mailed = match &mailbox {
                Some(m) if from_mailbox && borrowed.is_empty() => m.answer(id, &answer, listen_next),
                _ => None,
            };
            // An answer in shared memory: the supervisor must hear of it if
            // it sleeps (or, without the ring's bell, always).
            let ring =
                || answers.as_ref().is_some_and(|a| !a.must_ring()) || send(conn.as_fd(), &FromWorker::Bell, &[]);
            let sent = match mailed {
                Some(true) => true,
                Some(false) => ring(),
                None if borrowed.is_empty() && answers.as_ref().is_some_and(|a| a.put(&answer)) => ring(),
                None => frame::send(conn.as_fd(), &answer, &borrowed).is_ok(),
            };
            if from_mailbox
                && mailed.is_none()
                && let Some(m) = &mailbox
            {
                m.unanswered(listen_next);
            }
            if !sent {
                return;
            }
            done += 1;
            if self.maxtasks.is_some_and(|max| done >= max) {
                return leave(self.exit, conn.as_fd());
            }
        }
    }
}

/// What a listening worker heard.
enum Heard {
    /// A task in its mailbox (its message in the buffer given), and a
    /// frame read from the socket meanwhile, to handle after it.
    Mail(Option<frame::Frame>),
    /// What the socket gave: a frame, or nothing in time (`Pending`).
    Frame(std::io::Result<Progress>),
}

/// How often a listening worker looks at its socket: what comes that way
/// while it listens (the supervisor's queued tasks, `Exit`) is rare, and a
/// look is a system call, during which a posted task waits.
const SOCKET_EVERY: std::time::Duration = std::time::Duration::from_micros(20);

/// Listens for the next task for [`NEXT_TASK_SPIN`]: in the mailbox, and
/// now and then on the socket (the supervisor's queued tasks, a caller's
/// task sent while the worker did not listen, `Exit`). Stops listening
/// before it returns, unless a task was posted first: that one is taken.
fn listen(mailbox: &Mailbox, reader: &mut Reader, conn: BorrowedFd<'_>, mail: &mut Vec<u8>) -> Heard {
    // Sharing a processor with the caller: move to another, or, where
    // there is none, sleep on the mailbox instead of looking.
    let crowded = mailbox.poster_shares_my_cpu() && !crate::sys::move_off_this_cpu();
    mailbox.door().listen();
    let began = std::time::Instant::now();
    let mut read = None;
    loop {
        // The mailbox until the next look at the socket.
        let elapsed = began.elapsed();
        let until = began + (elapsed + SOCKET_EVERY).min(NEXT_TASK_SPIN);
        let mailed = if crowded {
            mailbox.take_task(mail) || {
                mailbox.sleep_until(until);
                mailbox.take_task(mail)
            }
        } else {
            let pause = PAUSE_FOR.saturating_sub(elapsed);
            crate::sys::spin_until_paused(until, pause, || mailbox.take_task(mail).then_some(())).is_some()
        };
        if mailed {
            let frame = match read {
                Some(Ok(Progress::Frame(f))) => Some(f),
                _ => None,
            };
            return Heard::Mail(frame);
        }
        if read.is_none() {
            match reader.read(conn, false) {
                Ok(Progress::Pending) => {}
                // The pool is gone: nobody will post, nor take an answer.
                gone @ (Ok(Progress::Eof) | Err(_)) => return Heard::Frame(gone),
                frame => read = Some(frame),
            }
        }
        if read.is_some() || began.elapsed() >= NEXT_TASK_SPIN {
            match mailbox.door().stop() {
                Stop::Stopped => return Heard::Frame(read.unwrap_or(Ok(Progress::Pending))),
                Stop::Task | Stop::Wait => {}
            }
        }
    }
}

/// The task and item running now, for the last words.
static RUNNING: std::sync::Mutex<Option<(u64, u32)>> = std::sync::Mutex::new(None);

/// Under `panic = "abort"`, a task's panic is told to the pool before the
/// worker aborts, naming the call, so that its caller gets the panic's
/// message and place rather than only SIGABRT.
fn last_words(conn: BorrowedFd<'_>) {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&conn);
    crate::bootstrap::on_abort(move |outcome| {
        let Some((id, item)) = *RUNNING.lock().unwrap_or_else(std::sync::PoisonError::into_inner) else { return };
        let call = crate::pool::chunk::CALL.load(std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the worker's connection stays open for as long as it runs
        // tasks, and the hook runs inside one.
        let conn = unsafe { BorrowedFd::borrow_raw(raw) };
        send(conn, &FromWorker::Aborting { id, item, call, outcome }, &[]);
    });
}

/// Leaving in order: the exit hook's result, if there is one, for the pool
/// to collect.
fn leave(exit: Option<Init>, conn: BorrowedFd<'_>) {
    if let Some(exit) = exit {
        let fds = exit.fds.into_iter().map(OwnedFd::from).collect();
        let reply = call(&resolve(exit.entry), &exit.payload, fds);
        send(conn, &FromWorker::Exited(reply.outcome), &[]);
    }
}

/// Runs one call of a resolved entry, panics captured; an entry that could
/// not be found answers every call with that.
fn call(entry: &Result<EntryFn, crate::Error>, bytes: &[u8], fds: Vec<OwnedFd>) -> Reply {
    match entry {
        Ok(entry) => run_target(|| entry(bytes, fds)),
        Err(e) => Reply::plain(Outcome::Bootstrap(e.to_string())),
    }
}

fn send(conn: BorrowedFd<'_>, msg: &FromWorker, fds: &[BorrowedFd<'_>]) -> bool {
    frame::send(conn, &reduction::encode_plain(msg), fds).is_ok()
}
