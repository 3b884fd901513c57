//! The pool's supervisor thread: hands tasks to workers, collects results,
//! notices dead and overdue workers, replaces them.
//!
//! It never blocks on a worker: tasks wait in a per-worker outbox that is
//! flushed as the socket takes them, and replies are read as they come, so a
//! large task going one way and a large result coming the other cannot
//! deadlock.
//!
//! Each worker gets a few tasks ahead (more when tasks are short, so tiny
//! tasks stream; one when they are long, so no task waits behind a long one
//! while another worker idles). A worker runs its tasks in order, so when it
//! dies, the oldest unanswered task is the one it was running: that task
//! fails with the worker's pid and signal, the others go back to the queue.
//!
//! The direct path: an idle worker is offered to callers (its socket, in
//! the shared state). A caller whose single small task finds the queue
//! empty and a worker on offer writes the task to that worker itself and
//! leaves it in `handed` — the worker starts at once, without waking the
//! supervisor first. A worker goes back on offer as soon as its last
//! result is read, before that result's caller hears of it (the caller of
//! a round trip sends its next task at once, to the worker still awake).
//! The supervisor takes handed tasks over (`absorb`) before it reaps a
//! worker or plans, and when a reply names a task it has not taken over
//! yet; from then on the task
//! is in flight as any other, so deaths, timeouts and cancels are handled
//! as before. A worker on offer has an empty outbox and nothing in
//! flight, so nobody else writes to it meanwhile; what of the frame the
//! socket did not take goes to the front of its outbox.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::pool::answers::{self, Answers};
use crate::pool::mailbox::{self, Mailbox};
use crate::pool::result::{Args, RawItem, Sink};
use crate::pool::stats::{Recorder, RestartReason};
use crate::pool::worker::{Init, Worker};
use crate::popen::describe_exit;
use crate::reduction;
use crate::sys::frame::{self, MAX_FDS, Progress, Reader};
use crate::sys::{self, Interest};
use crate::wire::{EntryRef, FromWorker, PackedRef, ToWorker, ToWorkerRef};
use crate::{Error, Handle, Process, StartMethod};

/// One call's encoded arguments.
pub(crate) struct PackedItem {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// A chunk of calls of one function, and where their results go.
pub(crate) struct Task {
    pub entry: EntryRef,
    pub items: Vec<PackedItem>,
    /// Index of the first call within its submission.
    pub base: usize,
    /// True when `items` is one chunk of `calls` calls encoded together.
    pub batch: bool,
    pub calls: usize,
    pub sink: Arc<dyn Sink>,
    /// This task's own time limit, over the pool's (a Redis-backed pool's
    /// task carries its submitter's).
    pub timeout: Option<Duration>,
    /// The function's types (for a Redis-backed pool's messages); none on a
    /// task a worker read from Redis, whose message has its own.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub signature: Option<fn() -> crate::process::Signature>,
    /// Shows a call's arguments in its error, for map-like calls.
    pub describe: Option<crate::pool::result::Describe>,
    /// Workers that died with it sent and never begun (see
    /// [`counts_as_begun`]).
    pub unbegun: u8,
}

/// How many workers may die before they begin the same task (each time it
/// goes back to the queue) before it fails with the last death after all:
/// something in the task itself may kill them as they read it (a message
/// too big for the memory they have), and it must not go round for ever.
const UNBEGUN_AT_MOST: u8 = 3;

/// Whether a dead worker's oldest unanswered task counts as the one it was
/// running (it fails with the death) given what its mailbox says (`None`:
/// it cannot say; the pool's own kill for a time limit or a cancel counts
/// as begun), and the deaths before it began this task so far.
fn counts_as_begun(started: Option<bool>, unbegun: &mut u8) -> bool {
    match started {
        Some(false) => {
            *unbegun += 1;
            *unbegun > UNBEGUN_AT_MOST
        }
        _ => true,
    }
}

impl Task {
    /// Every call of the task ends with `error()`.
    pub(crate) fn fail(self, mut error: impl FnMut() -> Error) {
        self.fail_each(0, |_| error());
    }

    /// Call `k` of the task ends with `error(k)`, call `first` first (a
    /// map reports the first failure it is given). The calls' arguments
    /// are worked out only if a sink asks, a chunk decoded once for all.
    pub(crate) fn fail_each(&self, first: usize, mut error: impl FnMut(usize) -> Error) {
        let shown = std::cell::OnceCell::new();
        let all = || {
            if self.batch {
                self.args(0).show_range(0..self.calls)
            } else {
                (0..self.calls).map(|k| self.args(k).show(0)).collect()
            }
        };
        let first = Some(first).filter(|f| *f < self.calls);
        for k in first.into_iter().chain((0..self.calls).filter(|k| Some(*k) != first)) {
            let show = || shown.get_or_init(all).get(k).cloned().flatten();
            self.sink.deliver_with(self.base + k, RawItem::Failed(error(k)), Args::Value(&show));
        }
    }

    /// What its sink may show of the arguments of its `item`th item.
    pub(crate) fn args(&self, item: usize) -> Args<'_> {
        match (self.describe, self.items.get(item)) {
            (Some(describe), Some(it)) => Args::Encoded { describe, bytes: &it.bytes, batch: self.batch },
            _ => Args::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Running,
    Closed,
    Terminating,
    Stopped,
}

pub(crate) struct State {
    pub pending: VecDeque<Task>,
    /// The supervisor is about to wait (or waiting) for events: a new task
    /// must wake it. While it is busy it will see the queue by itself.
    pub sleeping: bool,
    pub status: Status,
    /// Set when the initializer failed: no task can run.
    pub broken: Option<String>,
    /// The live workers' pids, by worker index.
    pub pids: std::collections::BTreeMap<usize, i32>,
    /// What the exit hooks of workers that left in order returned, with
    /// the worker's name and pid.
    pub exit_results: Vec<(crate::wire::Outcome, String, i32)>,
    /// Idle workers a caller may send a task to itself.
    offered: Vec<Offered>,
    /// Tasks callers sent to offered workers, for the supervisor to take
    /// over.
    handed: Vec<Handed>,
    /// The pool has a task timeout: a handed task must wake the supervisor
    /// (it times the task).
    timed: bool,
    /// Workers listen for a caller's next task after one (`Config::spin`).
    listen: bool,
}

impl State {
    /// Puts worker `index`, which has just become free, back on offer
    /// (as `offer` makes it), unless tasks are queued (the supervisor gives
    /// it one) or it is on offer or handed a task already; whether it was.
    fn offer_again(&mut self, index: usize, offer: impl FnOnce() -> Offered) -> bool {
        let again = self.pending.is_empty()
            && !self.offered.iter().any(|o| o.index == index)
            && !self.handed.iter().any(|h| h.index == index);
        if again {
            self.offered.push(offer());
        }
        again
    }
}

/// An idle worker on offer: its index, (a duplicate of) its socket, its
/// mailbox, and what a caller that takes its answer names it by.
#[derive(Clone)]
struct Offered {
    index: usize,
    conn: Arc<OwnedFd>,
    mailbox: Arc<Mailbox>,
    name: Arc<str>,
    pid: i32,
}

impl Offered {
    fn of(w: &Slot) -> Offered {
        Offered {
            index: w.index,
            conn: w.offer_conn.clone(),
            mailbox: w.answers.mailbox().expect("the supervisor's side has the mailbox").clone(),
            name: w.name.clone(),
            pid: w.pid,
        }
    }
}

/// A task a caller sent to an offered worker.
struct Handed {
    index: usize,
    id: u64,
    task: Task,
    /// The part of its frame the socket did not take.
    rest: Vec<u8>,
    at: Instant,
    /// Posted to the worker's mailbox: its caller may take the answer
    /// itself, and then puts the worker back on offer.
    mailed: Option<Offered>,
}

/// Tasks up to this size go the direct path: a frame this small fits an
/// idle worker's empty socket buffer at once.
const DIRECT_MAX: usize = 16 * 1024;

/// What the pool's handle and the supervisor share.
pub(crate) struct Shared {
    state: Mutex<State>,
    stopped: Condvar,
    wake: OwnedFd,
    /// A call was cancelled since the last look: queued tasks are sifted
    /// only then (a pool may hold a million).
    cancels: std::sync::atomic::AtomicBool,
    /// Task ids, for the supervisor and for callers on the direct path.
    next_id: std::sync::atomic::AtomicU64,
    /// What the workers did (`Pool::stats`): apart from `state`, which
    /// callers take on every submission.
    stats: Mutex<Recorder>,
    /// A transport's own direct path (the Redis pool's), tried when no
    /// local worker is offered.
    #[cfg(feature = "cluster")]
    direct: std::sync::OnceLock<Direct>,
    /// Itself, for the callers' watches on mailboxes.
    me: std::sync::Weak<Shared>,
}

/// A transport's direct path: sends a caller's task at once, or gives it
/// back for the queue. Called with the pool's state locked: it must not
/// lock it, nor wait for anything but its own socket.
#[cfg(feature = "cluster")]
pub(crate) type Direct = Box<dyn Fn(Task) -> Result<(), Task> + Send + Sync>;

impl Shared {
    pub(crate) fn new() -> std::io::Result<Arc<Shared>> {
        let wake = sys::eventfd()?;
        Ok(Arc::new_cyclic(|me| Shared {
            state: Mutex::new(State {
                pending: VecDeque::new(),
                sleeping: false,
                status: Status::Running,
                broken: None,
                pids: std::collections::BTreeMap::new(),
                exit_results: Vec::new(),
                offered: Vec::new(),
                handed: Vec::new(),
                timed: false,
                listen: true,
            }),
            next_id: std::sync::atomic::AtomicU64::new(0),
            stopped: Condvar::new(),
            wake,
            cancels: std::sync::atomic::AtomicBool::new(false),
            stats: Mutex::new(Recorder::new()),
            #[cfg(feature = "cluster")]
            direct: std::sync::OnceLock::new(),
            me: me.clone(),
        }))
    }

    pub(crate) fn stats(&self) -> MutexGuard<'_, Recorder> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call was cancelled: look.
    pub(crate) fn note_cancel(&self) {
        self.cancels.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake();
    }

    /// Drops the queued tasks whose callers cancelled them (they never
    /// run), if a call was cancelled since the last look; whether one was.
    pub(crate) fn drop_cancelled(&self, st: &mut State) -> bool {
        let cancels = self.cancels.swap(false, std::sync::atomic::Ordering::SeqCst);
        if cancels {
            st.pending.retain(|t| !t.sink.cancelled());
        }
        cancels
    }

    /// Tells the supervisor that something changed.
    pub(crate) fn wake(&self) {
        sys::eventfd_bump(self.wake.as_fd());
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues tasks, or fails them if the pool cannot run them. A single
    /// small task that would wait for nobody goes straight to an idle
    /// worker.
    pub(crate) fn submit(&self, tasks: impl IntoIterator<Item = Task>) {
        let mut tasks = tasks.into_iter();
        let mut st = self.lock();
        let refusal = if st.status != Status::Running { Some(None) } else { st.broken.clone().map(Some) };
        match refusal {
            None => {
                let Some(first) = tasks.next() else { return };
                let mut rest = tasks.peekable();
                let first = if rest.peek().is_none() && st.pending.is_empty() && direct(&first) {
                    match self.hand(&mut st, first) {
                        Ok(wake) => {
                            drop(st);
                            if wake {
                                self.wake();
                            }
                            return;
                        }
                        Err(first) => match self.transport_direct(first) {
                            Ok(()) => return,
                            Err(first) => first,
                        },
                    }
                } else {
                    first
                };
                st.pending.push_back(first);
                st.pending.extend(rest);
                let sleeping = st.sleeping;
                drop(st);
                if sleeping {
                    self.wake();
                }
            }
            Some(broken) => {
                drop(st);
                for t in tasks {
                    t.fail(|| match &broken {
                        Some(msg) => Error::InitializerFailed(msg.clone()),
                        None => Error::PoolNotRunning,
                    });
                }
            }
        }
    }

    /// Sends `task` to an offered worker (the lock held: nobody else
    /// writes to it meanwhile); whether the supervisor must be woken.
    fn hand(&self, st: &mut State, task: Task) -> Result<bool, Task> {
        let Some(offered) = st.offered.pop() else { return Err(task) };
        let id = self.new_id();
        let mut message = Vec::new();
        // Direct, so the worker listens for this caller's next task: unless
        // this pool's tasks come from afar (`Config::spin`).
        reduction::encode_plain_onto(&task_message(id, &task, st.listen), &mut message);
        // A timed task is the supervisor's to time from the start.
        let timed = st.timed || task.timeout.is_some();
        if !timed && offered.mailbox.post(id, &message) {
            // The worker listens and has it; its caller can take the answer.
            task.sink.watch(Watch { shared: self.me.clone(), mailbox: offered.mailbox.clone(), id });
            st.handed.push(Handed {
                index: offered.index,
                id,
                task,
                rest: Vec::new(),
                at: Instant::now(),
                mailed: Some(offered),
            });
            return Ok(false);
        }
        let mut frame = Vec::with_capacity(message.len() + 16);
        frame::encode_with(&mut frame, 0, |out| out.extend_from_slice(&message));
        // An error here is a worker that is gone: its exit settles the task.
        let sent = frame::send_some(offered.conn.as_fd(), &frame, &[]).unwrap_or(0);
        let rest = frame.split_off(sent);
        // The supervisor times tasks and writes what did not fit.
        let wake = st.sleeping && (timed || !rest.is_empty());
        st.handed.push(Handed { index: offered.index, id, task, rest, at: Instant::now(), mailed: None });
        Ok(wake)
    }

    /// A caller's look at the mailbox its task was posted to: takes the
    /// answer and delivers it if it is there and the supervisor has not
    /// taken the task over.
    fn collect(&self, mailbox: &Mailbox, id: u64) -> Collect {
        if mailbox.answered() != Some(id) {
            return Collect::NotYet;
        }
        let mut st = self.lock();
        let Some(at) = st.handed.iter().position(|h| h.id == id) else { return Collect::TakenOver };
        let Some(bytes) = mailbox.take_answer(id) else { return Collect::NotYet };
        let handed = st.handed.swap_remove(at);
        let offered = handed.mailed.expect("only mailed tasks are watched");
        let (name, pid) = (offered.name.clone(), offered.pid);
        // Back on offer at once, as the supervisor does with a worker whose
        // last result it read: its caller may send the next task now.
        st.offer_again(offered.index, || offered);
        drop(st);
        match reduction::decode_plain::<FromWorker>(&bytes) {
            Ok(FromWorker::Done { items, .. }) => {
                deliver(self, handed.index, &handed.task, items, Vec::new(), &name, pid);
            }
            _ => handed.task.fail(|| Error::Protocol("a worker's mailbox held no answer".into())),
        }
        Collect::Done
    }

    /// The transport's direct path, where it has one.
    fn transport_direct(&self, task: Task) -> Result<(), Task> {
        #[cfg(feature = "cluster")]
        if let Some(direct) = self.direct.get() {
            return direct(task);
        }
        Err(task)
    }

    #[cfg(feature = "cluster")]
    /// Gives the pool its transport's direct path.
    pub(crate) fn set_direct(&self, direct: Direct) {
        let _ = self.direct.set(direct);
    }

    pub(crate) fn set_status(&self, status: Status) {
        let mut st = self.lock();
        if st.status == Status::Running || (st.status == Status::Closed && status == Status::Terminating) {
            st.status = status;
        }
        drop(st);
        self.wake();
    }

    #[cfg(feature = "cluster")]
    /// Waits at most `timeout` for a wake-up (a task queued, the pool's
    /// status changed), and takes it.
    pub(crate) fn wait_wake(&self, timeout: Duration) {
        if let Ok(ready) = sys::poll_readable(&[self.wake.as_fd()], Some(timeout))
            && ready[0]
        {
            sys::eventfd_drain(self.wake.as_fd());
        }
    }

    #[cfg(feature = "cluster")]
    /// Tells `join` that the pool has stopped (its status says so).
    pub(crate) fn notify_stopped(&self) {
        self.stopped.notify_all();
    }

    /// The mailboxes of the workers on offer now (for tests).
    #[cfg(all(test, not(multiproc_loom)))]
    pub(crate) fn offered_mailboxes(&self) -> Vec<(i32, Arc<Mailbox>)> {
        self.lock().offered.iter().map(|o| (o.pid, o.mailbox.clone())).collect()
    }

    /// Blocks until the supervisor has stopped.
    pub(crate) fn wait_stopped(&self) {
        let mut st = self.lock();
        while st.status != Status::Stopped {
            st = self.stopped.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// What a caller's look at a mailbox found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collect {
    /// Its answer is not there (yet).
    NotYet,
    /// It took its answer and delivered it.
    Done,
    /// The supervisor took the task over: the answer is its to deliver.
    TakenOver,
}

/// What a caller whose task was posted to a worker's mailbox watches while
/// it waits: it takes the answer itself, without waking the supervisor.
pub(crate) struct Watch {
    shared: std::sync::Weak<Shared>,
    mailbox: Arc<Mailbox>,
    id: u64,
}

impl Watch {
    /// Looks for `find` until `until` (`sys::spin_until`), looking at the
    /// mailbox too; `find`'s answer when it came.
    pub(crate) fn spin_until<T>(&self, until: Instant, mut find: impl FnMut() -> Option<T>) -> Option<T> {
        let Some(shared) = self.shared.upgrade() else { return sys::spin_until(until, find) };
        let door = self.mailbox.door();
        door.watch();
        let mut watching = true;
        let found = sys::spin_until_paused(until, mailbox::PAUSE_FOR, || {
            if let Some(found) = find() {
                return Some(found);
            }
            // Taken over: the supervisor delivers it.
            if watching && shared.collect(&self.mailbox, self.id) != Collect::NotYet {
                watching = false;
                self.unwatch(&shared);
            }
            None
        });
        if watching {
            self.unwatch(&shared);
            // An answer put just as we stopped watching saw us watching.
            shared.collect(&self.mailbox, self.id);
        }
        found.or_else(find)
    }

    /// Stops watching. A worker that answered while somebody watched did
    /// not ring the supervisor: if that answer is still there (ours, taken
    /// over; or another caller's that nobody takes), the supervisor must
    /// look now.
    fn unwatch(&self, shared: &Shared) {
        let door = self.mailbox.door();
        door.unwatch();
        if door.unwatched() {
            shared.wake();
        }
    }
}

/// Delivers a worker's results for `task` to its sink, and records them.
fn deliver(
    shared: &Shared,
    index: usize,
    task: &Task,
    items: Vec<(crate::wire::Outcome, u32, u64)>,
    fds: Vec<OwnedFd>,
    name: &Arc<str>,
    pid: i32,
) {
    {
        let calls = if task.batch { task.calls } else { 1 };
        let mut stats = shared.stats();
        for (k, (_, _, took)) in items.iter().enumerate() {
            stats.ran(index, task.base + k, calls, Duration::from_nanos(*took));
        }
    }
    let mut fds = fds.into_iter();
    for (k, (outcome, nfds, _)) in items.into_iter().enumerate() {
        let fds: Vec<OwnedFd> = fds.by_ref().take(nfds as usize).collect();
        let worker = name.clone();
        let item = if task.batch {
            RawItem::Batch { outcome, fds, worker, pid, count: task.calls }
        } else {
            RawItem::Outcome { outcome, fds, worker, pid }
        };
        task.sink.deliver_with(task.base + k, item, task.args(k));
    }
}

/// Whether a task may take the direct path: small, no descriptors.
fn direct(task: &Task) -> bool {
    task.items.iter().all(|i| i.fds.is_empty()) && task.items.iter().map(|i| i.bytes.len()).sum::<usize>() <= DIRECT_MAX
}

/// The message that carries `task` to a worker (`direct`: handed over by
/// its caller to an idle worker).
fn task_message(id: u64, task: &Task, direct: bool) -> ToWorkerRef<'_> {
    ToWorkerRef::Task {
        id,
        entry: task.entry,
        items: task.items.iter().map(|it| PackedRef { bytes: &it.bytes, nfds: it.fds.len() as u32 }).collect(),
        direct,
    }
}

/// How the pool's workers are made.
pub(crate) struct Config {
    pub processes: usize,
    pub method: StartMethod,
    pub init: Option<Init>,
    /// What makes each worker's state (`PoolBuilder::worker_state`).
    pub state: Option<Init>,
    /// What each worker runs on its state as it leaves in order
    /// (`PoolBuilder::worker_exit`).
    pub exit: Option<Init>,
    pub maxtasks: Option<u64>,
    pub task_timeout: Option<Duration>,
    /// Whether the supervisor and the workers spin, looking for the next
    /// answer and the next task, before they sleep (`OFFER_SPIN`, a
    /// worker's listening): false for a pool whose tasks come from afar
    /// (`PoolBuilder::tasks_from_afar`).
    pub spin: bool,
}

struct Slot {
    /// Its place among the workers (`worker_id()` in its tasks); a
    /// replacement takes the place of the worker it replaces.
    index: usize,
    process: Process<()>,
    /// Shared with the offers and results that name it.
    name: Arc<str>,
    pid: i32,
    conn: OwnedFd,
    /// The same socket, for callers while the worker is on offer.
    offer_conn: Arc<OwnedFd>,
    /// Its answers through shared memory (`pool::answers`).
    answers: Answers,
    reader: Reader,
    ready: bool,
    /// Sent, not yet answered; the front one is running.
    inflight: VecDeque<(u64, Task)>,
    running_since: Option<Instant>,
    /// Framed bytes not yet written (from `out_at` on), and descriptors to
    /// attach to the next write.
    outbox: Vec<u8>,
    out_at: usize,
    out_fds: Vec<OwnedFd>,
    sent: u64,
    /// Killed by us: its task ran past its limit or was cancelled.
    timed_out: bool,
    /// Of the two, cancelled.
    cancelled: bool,
    /// What it said before aborting on a panic (`panic = "abort"`): the
    /// task, the item, the call in a chunk, the panic.
    last_words: Option<(u64, usize, usize, crate::wire::Outcome)>,
    exited: bool,
}

struct Supervisor {
    shared: Arc<Shared>,
    config: Config,
    workers: Vec<Slot>,
    /// Smoothed time a task takes in a worker.
    service: Duration,
    /// Until when to look for events without sleeping: set when a worker
    /// goes back on offer, whose next task (a caller's, on the direct
    /// path) is usually answered within microseconds.
    spin_until: Option<Instant>,
}

/// How long the supervisor looks for the next reply before it sleeps, once
/// a worker went back on offer: a caller that waits for each result sends
/// its next task straight to the worker, and that task's reply would
/// otherwise find the supervisor asleep (a wake-up costs 25-40 µs on a VM
/// whose idle cores halt, more than the whole round trip).
const OFFER_SPIN: Duration = Duration::from_micros(100);

/// The supervisor thread's body.
pub(crate) fn run(shared: Arc<Shared>, config: Config) {
    let mut sup =
        Supervisor { shared, config, workers: Vec::new(), service: Duration::from_millis(1), spin_until: None };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sup.main_loop()));
    // Whatever happened, nobody may wait forever for a task.
    let message = match outcome {
        Ok(()) => None,
        Err(p) => {
            Some(p.downcast_ref::<&str>().map(|s| (*s).to_owned()).unwrap_or_else(|| "supervisor panicked".into()))
        }
    };
    for w in sup.workers.drain(..) {
        sup.shared.stats().ended(w.index, None);
        let _ = w.process.kill();
        for (_, t) in w.inflight {
            t.fail(|| message.clone().map_or(Error::PoolTerminated, Error::Protocol));
        }
    }
    let pending = {
        let mut st = sup.shared.lock();
        st.offered.clear();
        let handed = std::mem::take(&mut st.handed);
        let mut pending = std::mem::take(&mut st.pending);
        pending.extend(handed.into_iter().map(|h| h.task));
        pending
    };
    for t in pending {
        t.fail(|| message.clone().map_or(Error::PoolTerminated, Error::Protocol));
    }
    {
        let mut st = sup.shared.lock();
        st.pids.clear();
        st.status = Status::Stopped;
    }
    sup.shared.stopped.notify_all();
}

impl Supervisor {
    fn main_loop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.timed = self.config.task_timeout.is_some();
            st.listen = self.config.spin;
        }
        for index in 0..self.config.processes {
            if let Err(e) = self.spawn_worker(index) {
                self.shared.lock().broken = Some(format!("could not start a worker: {e}"));
                break;
            }
        }
        loop {
            // Handed tasks are taken over under the same lock as the look
            // at the status: one handed just before `close` is in flight,
            // not forgotten.
            let (status, idle) = {
                let mut st = self.shared.lock();
                absorb(&mut self.workers, &mut st);
                (st.status, st.pending.is_empty())
            };
            match status {
                Status::Terminating | Status::Stopped => return self.terminate_workers(),
                Status::Closed if idle && self.workers.iter().all(|w| w.inflight.is_empty()) => {
                    return self.stop_workers();
                }
                _ => {}
            }
            self.dispatch();
            self.flush_all();
            self.wait_for_events();
        }
    }

    fn spawn_worker(&mut self, index: usize) -> crate::Result<()> {
        let (conn, theirs) =
            sys::stream_pair().map_err(|source| Error::Io { context: "socketpair for a worker", source })?;
        let copy = |init: &Option<Init>, context| {
            init.as_ref().map(Init::try_clone).transpose().map_err(|source| Error::Io { context, source })
        };
        let init = copy(&self.config.init, "dup of initializer handles")?;
        let state = copy(&self.config.state, "dup of worker state handles")?;
        let exit = copy(&self.config.exit, "dup of worker exit hook handles")?;
        let answers = Answers::new().map_err(|source| Error::Io { context: "a worker's answer ring", source })?;
        let (ring, mailbox) =
            answers.handles().map_err(|source| Error::Io { context: "dup of a worker's answer ring", source })?;
        let worker = Worker {
            conn: Handle::new(theirs),
            init,
            state,
            exit,
            maxtasks: self.config.maxtasks,
            index,
            answers: ring,
            mailbox,
        };
        let mut process = Process::from_run(worker).with_start_method(self.config.method).with_daemon(true);
        let name = format!("PoolWorker-{}", process.name().trim_start_matches("Process-"));
        process.set_name(name.clone());
        process.start()?;
        let pid = process.pid().expect("started");
        let offer_conn =
            Arc::new(conn.try_clone().map_err(|source| Error::Io { context: "dup of a worker's socket", source })?);
        self.shared.lock().pids.insert(index, pid);
        self.shared.stats().started(index, pid);
        self.workers.push(Slot {
            index,
            process,
            name: name.into(),
            pid,
            conn,
            offer_conn,
            answers,
            reader: Reader::new(),
            ready: false,
            inflight: VecDeque::new(),
            running_since: None,
            outbox: Vec::new(),
            out_at: 0,
            out_fds: Vec::new(),
            sent: 0,
            timed_out: false,
            cancelled: false,
            last_words: None,
            exited: false,
        });
        Ok(())
    }

    /// How many tasks a worker may hold: enough to hide the round trip when
    /// tasks are short, one when they are long.
    fn depth(&self) -> usize {
        let target = Duration::from_micros(500).as_nanos();
        let each = self.service.as_nanos().max(1);
        (target / each).clamp(1, 64) as usize
    }

    fn dispatch(&mut self) {
        let depth = self.depth();
        let mut st = self.shared.lock();
        if let Some(msg) = st.broken.clone() {
            let pending = std::mem::take(&mut st.pending);
            drop(st);
            for t in pending {
                t.fail(|| Error::InitializerFailed(msg.clone()));
            }
            return;
        }
        absorb(&mut self.workers, &mut st);
        self.shared.drop_cancelled(&mut st);
        let room = |w: &Slot, maxtasks: Option<u64>| -> usize {
            if !w.ready || w.exited || w.timed_out {
                return 0;
            }
            let quota = maxtasks.map_or(usize::MAX, |m| m.saturating_sub(w.sent) as usize);
            depth.saturating_sub(w.inflight.len()).min(quota)
        };
        let mut plan: Vec<Vec<Task>> = self.workers.iter().map(|_| Vec::new()).collect();
        // Idle workers first, so that no task waits behind another while a
        // worker has nothing to do; then top up in turn.
        for (i, w) in self.workers.iter().enumerate() {
            if w.inflight.is_empty() && room(w, self.config.maxtasks) > 0 {
                match st.pending.pop_front() {
                    Some(t) => plan[i].push(t),
                    None => break,
                }
            }
        }
        // Top up only when every worker is up and busy and the queue is long:
        // a task sent ahead waits behind its worker's current one, which is
        // only harmless when no other worker could have taken it.
        let saturated = self.workers.iter().all(|w| w.ready && !w.inflight.is_empty())
            || plan.iter().zip(&self.workers).all(|(p, w)| w.ready && (!p.is_empty() || !w.inflight.is_empty()));
        let mut progress = saturated && st.pending.len() > self.workers.len();
        while progress && !st.pending.is_empty() {
            progress = false;
            for (i, w) in self.workers.iter().enumerate() {
                if room(w, self.config.maxtasks) > plan[i].len() {
                    match st.pending.pop_front() {
                        Some(t) => {
                            plan[i].push(t);
                            progress = true;
                        }
                        None => break,
                    }
                }
            }
        }
        // Idle workers without a plan go on offer; a worker with
        // `maxtasksperchild` never does (its quota is counted here).
        st.offered.clear();
        if self.config.maxtasks.is_none() {
            for (w, p) in self.workers.iter().zip(&plan) {
                if p.is_empty() && w.ready && !w.exited && !w.timed_out && w.inflight.is_empty() && w.outbox.is_empty()
                {
                    st.offered.push(Offered::of(w));
                }
            }
        }
        // From here until the next dispatch, new tasks must wake us.
        st.sleeping = true;
        drop(st);
        for (i, tasks) in plan.into_iter().enumerate() {
            for t in tasks {
                self.enqueue(i, t);
            }
        }
    }

    /// Frames a task into a worker's outbox.
    fn enqueue(&mut self, i: usize, task: Task) {
        let id = self.shared.new_id();
        let w = &mut self.workers[i];
        let nfds: usize = task.items.iter().map(|it| it.fds.len()).sum();

        // Descriptors ride on the next write; keep each write under the limit.
        if w.out_fds.len() + nfds > MAX_FDS && !w.outbox.is_empty() {
            flush(w);
        }
        frame::encode_with(&mut w.outbox, nfds, |out| {
            reduction::encode_plain_onto(&task_message(id, &task, false), out)
        });
        for it in &task.items {
            for fd in &it.fds {
                match fd.try_clone() {
                    Ok(fd) => w.out_fds.push(fd),
                    Err(_) => w.exited = true,
                }
            }
        }
        if w.inflight.is_empty() {
            w.running_since = Some(Instant::now());
        }
        w.inflight.push_back((id, task));
        w.sent += 1;
    }

    fn flush_all(&mut self) {
        for w in &mut self.workers {
            flush(w);
        }
    }

    /// The time limit of the task a worker runs, if any.
    fn limit(&self, w: &Slot) -> Option<Duration> {
        w.inflight.front().and_then(|(_, t)| t.timeout).or(self.config.task_timeout)
    }

    fn wait_for_events(&mut self) {
        let now = Instant::now();
        let timeout = self
            .workers
            .iter()
            .filter(|w| !w.timed_out)
            .filter_map(|w| Some((w.running_since?, self.limit(w)?)))
            .map(|(since, limit)| (since + limit).saturating_duration_since(now))
            .min();
        let ready = {
            let mut fds: Vec<(BorrowedFd<'_>, Interest)> = vec![(self.shared.wake.as_fd(), Interest::Read)];
            for w in &self.workers {
                let interest = if w.outbox.is_empty() { Interest::Read } else { Interest::ReadWrite };
                fds.push((w.conn.as_fd(), interest));
                fds.push((w.process.exit_fd().expect("started"), Interest::Read));
            }
            let waiting = || self.workers.iter().any(|w| w.answers.waiting());
            let mut ready = None;
            if let Some(until) = self.spin_until.take()
                && timeout.is_none_or(|t| now + t > until)
            {
                let looked = sys::spin_until(until, || match sys::poll(&fds, Some(Duration::ZERO)) {
                    Ok(r) if waiting() || r.iter().any(|&(r, w)| r || w) => Some(Ok(r)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                });
                match looked {
                    Some(Ok(r)) => ready = Some(r),
                    Some(Err(_)) => return,
                    None => {}
                }
            }
            if ready.is_none() {
                // Workers ring from now on; an answer put before they could
                // see the bell is seen here (see `pool::answers`).
                let timeout = answers::sleeping(self.workers.iter().map(|w| &w.answers), timeout);
                let polled = sys::poll(&fds, timeout);
                answers::awake(self.workers.iter().map(|w| &w.answers));
                ready = polled.ok();
            }
            match ready {
                Some(r) => r,
                None => return,
            }
        };
        {
            let mut st = self.shared.lock();
            st.sleeping = false;
            absorb(&mut self.workers, &mut st);
        }
        if ready[0].0 {
            sys::eventfd_drain(self.shared.wake.as_fd());
        }
        let mut dead = Vec::new();
        for i in 0..self.workers.len() {
            let (readable, writable) = ready[1 + 2 * i];
            if writable {
                flush(&mut self.workers[i]);
            }
            if readable || self.workers[i].answers.waiting() {
                self.read_replies(i);
            }
            if ready[2 + 2 * i].0 {
                dead.push(i);
            }
        }
        let now = Instant::now();
        for i in 0..self.workers.len() {
            let limit = self.limit(&self.workers[i]);
            let w = &mut self.workers[i];
            let over = limit.is_some_and(|l| w.running_since.is_some_and(|s| now.duration_since(s) >= l));
            // A running task whose caller cancelled it: its process goes.
            let cancelled = w.inflight.front().is_some_and(|(_, t)| t.sink.cancelled());
            if !w.timed_out && (over || cancelled) {
                w.timed_out = true;
                w.cancelled = !over;
                let _ = w.process.kill();
            }
        }
        for i in dead.into_iter().rev() {
            self.reap(i);
        }
    }

    /// Reads what a worker said: its socket, then its answer ring.
    fn read_replies(&mut self, i: usize) {
        loop {
            let w = &mut self.workers[i];
            let frame = match w.reader.read(w.conn.as_fd(), false) {
                Ok(Progress::Frame(f)) => f,
                // Pending, end of stream or a broken stream: the exit (if any)
                // is noticed through the process itself.
                _ => break,
            };
            let Ok(msg) = reduction::decode_plain::<FromWorker>(&frame.bytes) else { break };
            self.on_reply(i, msg, frame.fds);
        }
        // A ring that cannot be read (its worker corrupted it while dying)
        // leaves that worker's unanswered tasks to its exit.
        while let Ok(Some(bytes)) = self.workers[i].answers.take() {
            let Ok(msg) = reduction::decode_plain::<FromWorker>(&bytes) else { return };
            self.on_reply(i, msg, Vec::new());
        }
        self.read_mailbox(i);
    }

    /// Takes the answer in a worker's mailbox, unless a caller watches for
    /// it and can still take it itself (its task not taken over yet).
    fn read_mailbox(&mut self, i: usize) {
        let w = &self.workers[i];
        let Some(mailbox) = w.answers.mailbox() else { return };
        let Some(id) = mailbox.answered() else { return };
        if !w.inflight.iter().any(|(tid, _)| *tid == id) {
            if !mailbox.door().unwatched() {
                return;
            }
            absorb(&mut self.workers, &mut self.shared.lock());
        }
        let taken = self.workers[i].answers.mailbox().and_then(|m| m.take_answer(id));
        if let Some(bytes) = taken
            && let Ok(msg) = reduction::decode_plain::<FromWorker>(&bytes)
        {
            self.on_reply(i, msg, Vec::new());
        }
    }

    fn on_reply(&mut self, i: usize, msg: FromWorker, fds: Vec<OwnedFd>) {
        let w = &mut self.workers[i];
        match msg {
            FromWorker::Bell => {}
            FromWorker::Aborting { id, item, call, outcome } => {
                w.last_words = Some((id, item as usize, call as usize, outcome));
            }
            FromWorker::Ready => {
                w.ready = true;
                self.shared.stats().ready(w.index);
            }
            FromWorker::Exited(outcome) => {
                let (name, pid) = (w.name.to_string(), w.pid);
                self.shared.lock().exit_results.push((outcome, name, pid));
            }
            FromWorker::InitFailed(outcome) => {
                let why = match outcome {
                    crate::wire::Outcome::Panicked { message, location, .. } => {
                        format!("panicked at {}: {message}", location.unwrap_or_default())
                    }
                    other => format!("{other:?}"),
                };
                self.shared.lock().broken = Some(why);
            }
            FromWorker::Done { id, items } => {
                if !w.inflight.iter().any(|(tid, _)| *tid == id) {
                    // A task a caller handed over since this worker went
                    // back on offer, answered before the next plan took
                    // it over: taken over now.
                    absorb(&mut self.workers, &mut self.shared.lock());
                }
                let w = &mut self.workers[i];
                let Some(pos) = w.inflight.iter().position(|(tid, _)| *tid == id) else { return };
                let (_, task) = w.inflight.remove(pos).expect("found");
                let now = Instant::now();
                if let Some(since) = w.running_since {
                    let took = now.duration_since(since);
                    self.service = (self.service * 7 + took) / 8;
                }
                let w = &mut self.workers[i];
                w.running_since = if w.inflight.is_empty() { None } else { Some(now) };
                let (name, pid) = (w.name.clone(), w.pid);
                // Back on offer before its caller hears: a caller that
                // waits for each result sends its next task at once,
                // and this worker, just done, is the one still awake
                // (on top: offers are taken from the end).
                let free = w.inflight.is_empty() && w.outbox.is_empty() && w.ready && !w.exited && !w.timed_out;
                if free
                    && self.config.maxtasks.is_none()
                    && self.shared.lock().offer_again(w.index, || Offered::of(w))
                    && self.config.spin
                {
                    self.spin_until = Some(now + OFFER_SPIN);
                }
                deliver(&self.shared, w.index, &task, items, fds, &name, pid);
            }
        }
    }

    /// A worker has ended: settle its tasks and replace it.
    fn reap(&mut self, i: usize) {
        {
            let mut st = self.shared.lock();
            let index = self.workers[i].index;
            st.offered.retain(|o| o.index != index);
            absorb(&mut self.workers, &mut st);
        }
        self.read_replies(i);
        let mut w = self.workers.remove(i);
        // A task posted to its mailbox that it never took did not run: it
        // goes back to the queue with the others it never started, not
        // down with the worker.
        let untaken = w
            .answers
            .mailbox()
            .and_then(|m| m.untaken())
            .and_then(|id| w.inflight.iter().position(|(tid, _)| *tid == id))
            .and_then(|at| w.inflight.remove(at));
        self.shared.lock().pids.remove(&w.index);
        let code = match w.process.join_timeout(Duration::from_secs(5)) {
            Ok(Some(())) => 0,
            _ => w.process.exitcode().unwrap_or(-libc::SIGKILL),
        };
        let finished_quota = self.config.maxtasks.is_some_and(|m| w.sent >= m && w.inflight.is_empty());
        let mut inflight = std::mem::take(&mut w.inflight);
        // The oldest unanswered task was running, unless the worker left on
        // its own after its quota (then nothing was), or died before it read
        // that task (killed while idle, the task still in its socket): then
        // it goes back with the others it never started. A task killed for
        // its time or its cancel is the one that was running, as before.
        let clean = code == 0 && finished_quota;
        let front_began = match inflight.front_mut() {
            Some((id, t)) => {
                let started = if w.timed_out { Some(true) } else { w.answers.mailbox().and_then(|m| m.started(*id)) };
                counts_as_begun(started, &mut t.unbegun)
            }
            None => false,
        };
        let how = describe_exit(code);
        let reason = if clean {
            RestartReason::MaxTasks
        } else if w.cancelled {
            RestartReason::Cancelled
        } else if w.timed_out {
            RestartReason::TimedOut
        } else {
            RestartReason::Died { exitcode: code, how: how.clone() }
        };
        self.shared.stats().ended(w.index, Some(reason));
        #[cfg(feature = "tracing")]
        if !clean {
            tracing::warn!(
                worker = %w.name,
                pid = w.pid,
                exitcode = code,
                how = %how,
                timed_out = w.timed_out,
                running = !inflight.is_empty(),
                "pool worker died"
            );
        }
        if !clean
            && front_began
            && let Some((id, running)) = inflight.pop_front()
        {
            let (name, pid, timeout) = (w.name.to_string(), w.pid, running.timeout.or(self.config.task_timeout));
            let died = || Error::WorkerDied { name: name.clone(), pid, exitcode: code, how: how.clone() };
            if let Some((_, item, call, crate::wire::Outcome::Panicked { message, location, backtrace })) =
                w.last_words.take().filter(|(said, ..)| *said == id)
            {
                // The call that panicked (delivered first) fails with its
                // panic, the others of its task with the death it caused.
                let culprit = if running.batch { call } else { item };
                let mut panicked = Some(Error::Panicked { name: name.clone(), pid, message, location, backtrace });
                running.fail_each(culprit, |_| panicked.take().unwrap_or_else(died));
            } else if w.timed_out {
                running.fail(|| Error::TaskTimeout { name: name.clone(), pid, timeout: timeout.unwrap_or_default() });
            } else {
                running.fail(died);
            }
        }
        // What it never started goes back, unless its caller cancelled it.
        let requeue: Vec<Task> =
            untaken.into_iter().chain(inflight).map(|(_, t)| t).filter(|t| !t.sink.cancelled()).collect();
        let more_work = {
            let mut st = self.shared.lock();
            for t in requeue.into_iter().rev() {
                st.pending.push_front(t);
            }
            let busy = !st.pending.is_empty() || self.workers.iter().any(|w| !w.inflight.is_empty());
            let wanted = matches!(st.status, Status::Running) || (st.status == Status::Closed && busy);
            wanted && st.broken.is_none()
        };
        if more_work
            && let Err(e) = self.spawn_worker(w.index)
            && self.workers.is_empty()
        {
            self.shared.lock().broken = Some(format!("could not replace a worker: {e}"));
        }
    }

    /// Close: every task is done; tell the workers to leave and wait for them.
    fn stop_workers(&mut self) {
        self.shared.lock().offered.clear();
        for w in self.workers.drain(..) {
            let Slot { process: mut p, conn, name, pid, index, .. } = w;
            let name = name.to_string();
            // Exit is a few bytes into an idle socket; closing our end right
            // after also tells a worker that somehow missed it to leave.
            let _ = frame::send(conn.as_fd(), &reduction::encode_plain(&ToWorker::Exit), &[]);
            if self.config.exit.is_some() {
                // Its exit hook's answer comes before it leaves (or the
                // stream ends, if it died).
                let mut reader = Reader::new();
                while let Ok(Progress::Frame(f)) = reader.read(conn.as_fd(), true) {
                    if let Ok(FromWorker::Exited(outcome)) = reduction::decode_plain::<FromWorker>(&f.bytes) {
                        self.shared.lock().exit_results.push((outcome, name, pid));
                        break;
                    }
                }
            }
            drop(conn);
            let _ = p.join();
            self.shared.stats().ended(index, None);
        }
    }

    /// Terminate: stop the workers now (SIGTERM, as Python does).
    fn terminate_workers(&mut self) {
        {
            let mut st = self.shared.lock();
            st.offered.clear();
            absorb(&mut self.workers, &mut st);
        }
        for w in &self.workers {
            let _ = w.process.terminate();
        }
        for mut w in self.workers.drain(..) {
            self.shared.stats().ended(w.index, None);
            if let Ok(None) = w.process.join_timeout(Duration::from_secs(5)) {
                let _ = w.process.kill();
                let _ = w.process.join();
            }
            for (_, t) in w.inflight {
                t.fail(|| Error::PoolTerminated);
            }
        }
    }
}

/// Takes over the tasks callers sent to offered workers: in flight from
/// when they were sent, the unsent rest of a frame first in the outbox.
fn absorb(workers: &mut [Slot], st: &mut State) {
    for h in std::mem::take(&mut st.handed) {
        let Some(w) = workers.iter_mut().find(|w| w.index == h.index) else {
            // Not possible while offers are withdrawn before a worker goes;
            // were it, the task would wait for the next worker.
            st.pending.push_front(h.task);
            continue;
        };
        if w.inflight.is_empty() {
            w.running_since = Some(h.at);
        }
        w.inflight.push_back((h.id, h.task));
        w.sent += 1;
        if !h.rest.is_empty() {
            let mut out = h.rest;
            out.extend_from_slice(&w.outbox[w.out_at..]);
            w.outbox = out;
            w.out_at = 0;
        }
    }
}

/// Writes as much of a worker's outbox as its socket takes now.
fn flush(w: &mut Slot) {
    if w.outbox.is_empty() {
        return;
    }
    let fds: Vec<BorrowedFd<'_>> = w.out_fds.iter().map(|f| f.as_fd()).collect();
    match frame::send_some(w.conn.as_fd(), &w.outbox[w.out_at..], &fds) {
        Ok(0) => {}
        Ok(n) => {
            w.out_fds.clear();
            w.out_at += n;
            if w.out_at == w.outbox.len() {
                w.outbox.clear();
                w.out_at = 0;
            } else if w.out_at >= w.outbox.len() / 2 {
                // A big frame leaves in socket-sized pieces. Dropping the
                // sent front after each moved the rest every time
                // (quadratic: seconds for 64 MiB); now only once the front
                // is half the outbox, so each byte moves at most once more.
                w.outbox.drain(..w.out_at);
                w.out_at = 0;
            }
        }
        // The worker is gone; its exit settles its tasks.
        Err(_) => {
            w.outbox.clear();
            w.out_at = 0;
            w.out_fds.clear();
            w.exited = true;
        }
    }
}

#[cfg(test)]
mod tests {
    /// A task its dead workers never began goes back to the queue, but
    /// only so often: after [`UNBEGUN_AT_MOST`] such deaths it fails like
    /// a task they ran. One they began, or whose worker cannot say, fails
    /// at once.
    #[test]
    fn a_task_never_begun_goes_back_a_bounded_number_of_times() {
        use super::{UNBEGUN_AT_MOST, counts_as_begun};
        let mut unbegun = 0;
        for _ in 0..UNBEGUN_AT_MOST {
            assert!(!counts_as_begun(Some(false), &mut unbegun));
        }
        assert!(counts_as_begun(Some(false), &mut unbegun), "it went round for ever");
        let mut fresh = 0;
        assert!(counts_as_begun(Some(true), &mut fresh));
        assert!(counts_as_begun(None, &mut fresh));
        assert_eq!(fresh, 0, "begun deaths are not counted as unbegun ones");
    }
}
