//! Where a pool's results go: [`AsyncResult`] for one value, the map and
//! imap collectors for many.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Payload, Side};
use crate::pool::supervisor::Watch;
use crate::popen::outcome_into_result;
use crate::reduction;
use crate::wire::{ItemResult, Outcome};
use crate::{Error, Result};

/// Results as they come from a worker, before they are decoded: one call's,
/// or a whole chunk's.
pub(crate) enum RawItem {
    Outcome { outcome: Outcome, fds: Vec<OwnedFd>, worker: Arc<str>, pid: i32 },
    Batch { outcome: Outcome, fds: Vec<OwnedFd>, worker: Arc<str>, pid: i32, count: usize },
    Failed(Error),
}

impl RawItem {
    /// The results this stands for, decoded: one, or a chunk's worth.
    pub(crate) fn into_results<R: DeserializeOwned>(self) -> Vec<Result<R>> {
        let mut all = Vec::new();
        self.each_result(|_, result| all.push(result));
        all
    }

    /// [`into_results`](Self::into_results) handed to `each` with their
    /// places in the chunk, without a vector for a single one.
    pub(crate) fn each_result<R: DeserializeOwned>(self, mut each: impl FnMut(usize, Result<R>)) {
        match self {
            RawItem::Outcome { outcome, fds, worker, pid } => each(0, outcome_into_result(outcome, fds, &worker, pid)),
            RawItem::Failed(e) => each(0, Err(e)),
            RawItem::Batch { outcome, fds, worker, pid, count } => {
                for (k, result) in batch_results(outcome, fds, worker, pid, count).into_iter().enumerate() {
                    each(k, result);
                }
            }
        }
    }
}

/// A chunk's `count` results, decoded.
fn batch_results<R: DeserializeOwned>(
    outcome: Outcome,
    fds: Vec<OwnedFd>,
    worker: Arc<str>,
    pid: i32,
    count: usize,
) -> Vec<Result<R>> {
    match outcome {
        Outcome::Returned(bytes) => match reduction::decode::<Vec<ItemResult<R>>>(&bytes, fds) {
            Ok(items) if items.len() == count => items
                .into_iter()
                .map(|item| match item {
                    ItemResult::Ok(v) => Ok(v),
                    ItemResult::Err(o) => outcome_into_result(o, Vec::new(), &worker, pid),
                })
                .collect(),
            Ok(items) => (0..count)
                .map(|_| {
                    Err(Error::Protocol(format!("a chunk of {count} calls came back with {} results", items.len())))
                })
                .collect(),
            Err(message) => (0..count)
                .map(|_| Err(Error::Decode { what: Payload::Result, side: Side::Parent, message: message.clone() }))
                .collect(),
        },
        // The chunk as a whole failed (its arguments could not be decoded).
        outcome => (0..count).map(|_| outcome_into_result(outcome.clone(), Vec::new(), &worker, pid)).collect(),
    }
}

/// How long a failed call's arguments may be shown in its error.
const ARGUMENT_SHOWN: usize = 120;

/// Shows calls' encoded arguments: `(bytes, batch, calls)`, `calls` the
/// places in a chunk encoded as one value (`0..1` otherwise). A chunk is
/// decoded once for all the calls asked for.
pub(crate) type Describe = fn(&[u8], bool, Range<usize>) -> Vec<Option<String>>;

/// One call's arguments as its error shows them.
pub(crate) fn show_call<T: Serialize + ?Sized>(call: &T) -> Option<String> {
    crate::reprlib::repr_args(call, ARGUMENT_SHOWN)
}

/// The [`Describe`] of calls whose arguments are a `T`.
pub(crate) fn describe_of<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    batch: bool,
    calls: Range<usize>,
) -> Vec<Option<String>> {
    if batch {
        match reduction::decode::<Vec<T>>(bytes, Vec::new()) {
            Ok(all) => calls.map(|k| all.get(k).and_then(show_call)).collect(),
            Err(_) => calls.map(|_| None).collect(),
        }
    } else {
        let shown = reduction::decode::<T>(bytes, Vec::new()).ok().and_then(|call| show_call(&call));
        calls.map(|_| shown.clone()).collect()
    }
}

/// What a sink may show of the arguments of what it is given, should a
/// call have failed: worked out only then.
#[derive(Clone, Copy)]
pub(crate) enum Args<'a> {
    Unknown,
    Encoded { describe: Describe, bytes: &'a [u8], batch: bool },
    Value(&'a (dyn Fn() -> Option<String> + 'a)),
}

impl Args<'_> {
    /// The arguments of the `k`th call delivered together.
    pub(crate) fn show(&self, k: usize) -> Option<String> {
        self.show_range(k..k + 1).pop().flatten()
    }

    /// The arguments of the calls `calls` delivered together.
    pub(crate) fn show_range(&self, calls: Range<usize>) -> Vec<Option<String>> {
        match *self {
            Args::Unknown => calls.map(|_| None).collect(),
            Args::Encoded { describe, bytes, batch } => describe(bytes, batch, calls),
            Args::Value(show) => calls.map(|_| show()).collect(),
        }
    }
}

/// Receives the results of one submission, call by call.
pub(crate) trait Sink: Send + Sync {
    /// The result of call `index` of the submission.
    fn deliver(&self, index: usize, item: RawItem);

    /// As `deliver`, with the calls' arguments to show should one have
    /// failed (sinks that name failed calls use them).
    fn deliver_with(&self, index: usize, item: RawItem, _args: Args<'_>) {
        self.deliver(index, item);
    }

    /// Whether its caller cancelled it: a task not started is not run, a
    /// running one's process is killed.
    fn cancelled(&self) -> bool {
        false
    }

    /// Its task was posted to a worker's mailbox: a waiter may take the
    /// answer there itself. Sinks whose waiters do not look ignore it.
    fn watch(&self, _watch: Watch) {}
}

/// What a cancel calls to make the pool look (its supervisor's wake-up).
pub(crate) type Nudge = Box<dyn Fn() + Send + Sync>;

type Callback<R> = Box<dyn FnOnce(&R) + Send>;

/// How long a waiter for a result looks for it before it sleeps. A round
/// trip through an idle worker takes tens of microseconds; on a VM, waking
/// a thread whose core went idle costs about as much again (measured:
/// `apply_roundtrip_us` 87 -> 38 µs with this spin, 95 µs with a 30 µs one,
/// which usually gives up just before the result comes).
const WAIT_SPIN: Duration = Duration::from_micros(100);
type ErrorCallback = Box<dyn FnOnce(&Error) + Send>;

struct SlotState<R> {
    result: Option<Result<R>>,
    /// Set once the outcome is known: `Some(true)` for a value.
    succeeded: Option<bool>,
    done: bool,
    taken: bool,
    callback: Option<Callback<R>>,
    error_callback: Option<ErrorCallback>,
    wakers: Vec<Waker>,
    /// Threads asleep on `ready`: waking none is a system call saved per
    /// result (most waiters find it while they spin).
    sleepers: usize,
}

/// A value that arrives later, once.
pub(crate) struct Slot<R> {
    state: Mutex<SlotState<R>>,
    ready: Condvar,
    /// Set once the result is in `state`: what a waiter spins on before it
    /// sleeps on `ready`.
    finished: std::sync::atomic::AtomicBool,
    cancelled: std::sync::atomic::AtomicBool,
    nudge: Mutex<Option<Nudge>>,
    /// Where its answer can be taken straight from the worker, if it can.
    watch: std::sync::OnceLock<Watch>,
}

impl<R> Slot<R> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                result: None,
                succeeded: None,
                done: false,
                taken: false,
                callback: None,
                error_callback: None,
                wakers: Vec::new(),
                sleepers: 0,
            }),
            ready: Condvar::new(),
            finished: std::sync::atomic::AtomicBool::new(false),
            cancelled: std::sync::atomic::AtomicBool::new(false),
            nudge: Mutex::new(None),
            watch: std::sync::OnceLock::new(),
        })
    }

    /// What [`AsyncResult::cancel`] calls so that the pool looks at once.
    pub(crate) fn on_cancel(&self, nudge: Nudge) {
        *self.nudge.lock().unwrap_or_else(PoisonError::into_inner) = Some(nudge);
    }

    /// Looks for the result until `until`, without sleeping: a short task's
    /// result usually comes within tens of microseconds, and the sleep and
    /// wake-up would cost more (the queue's and the manager client's
    /// strategy).
    fn spin_until_finished(&self, until: Instant) -> bool {
        let finished = || self.finished.load(std::sync::atomic::Ordering::Acquire).then_some(());
        match self.watch.get() {
            Some(watch) if finished().is_none() => watch.spin_until(until, finished).is_some(),
            _ => crate::sys::spin_until(until, finished).is_some(),
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<R>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Completes the slot; later completions are ignored. The callback runs
    /// before waiters wake, as in Python.
    pub(crate) fn complete(&self, result: Result<R>) {
        let (callback, error_callback) = {
            let mut st = self.lock();
            if st.done {
                return;
            }
            st.done = true;
            (st.callback.take(), st.error_callback.take())
        };
        // Cancelled by the pool (`shutdown(true)`) is cancelled, as a
        // future cancelled by `shutdown(cancel_futures=True)` is in Python.
        if matches!(result, Err(Error::Cancelled)) {
            self.cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        // A panicking callback must not take the pool's supervisor down.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match (&result, callback, error_callback) {
            (Ok(v), Some(cb), _) => cb(v),
            (Err(e), _, Some(cb)) => cb(e),
            _ => {}
        }));
        let (wakers, sleepers) = {
            let mut st = self.lock();
            st.succeeded = Some(result.is_ok());
            st.result = Some(result);
            self.finished.store(true, std::sync::atomic::Ordering::Release);
            (std::mem::take(&mut st.wakers), st.sleepers)
        };
        if sleepers > 0 {
            self.ready.notify_all();
        }
        for w in wakers {
            w.wake();
        }
    }
}

impl<R: DeserializeOwned + Send> Sink for Slot<R> {
    fn deliver(&self, _index: usize, item: RawItem) {
        let result = item.into_results().into_iter().next();
        self.complete(result.unwrap_or_else(|| Err(Error::Protocol("an empty answer".into()))));
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn watch(&self, watch: Watch) {
        let _ = self.watch.set(watch);
    }
}

/// The result of [`Pool::apply_async`](crate::Pool::apply_async) and the
/// other `_async` calls (Python's `AsyncResult`): wait for it, poll it,
/// attach callbacks, or `.await` it.
///
/// ```
/// # #[multiproc::main] fn main() {
/// fn square(x: u64) -> u64 { x * x }
/// let pool = multiproc::Pool::new(2).unwrap();
/// let r = pool.apply_async(square, (9,));
/// r.wait();
/// assert!(r.ready());
/// assert!(r.successful().unwrap());
/// assert_eq!(r.get().unwrap(), 81);
/// # }
/// ```
pub struct AsyncResult<R> {
    slot: Arc<Slot<R>>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult").field("ready", &self.ready()).finish()
    }
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(slot: Arc<Slot<R>>) -> Self {
        AsyncResult { slot }
    }

    /// `Some(true)` once it succeeded, `Some(false)` once it failed.
    pub(crate) fn slot_outcome(&self) -> Option<bool> {
        self.slot.lock().succeeded
    }

    pub(crate) fn was_cancelled(&self) -> bool {
        self.slot.is_cancelled()
    }

    /// Wakes `waker` once the outcome is known (at once if it is).
    pub(crate) fn watch_slot(&self, waker: &Waker) {
        let mut st = self.slot.lock();
        if st.succeeded.is_some() {
            drop(st);
            waker.wake_by_ref();
        } else if !st.wakers.iter().any(|w| w.will_wake(waker)) {
            st.wakers.push(waker.clone());
        }
    }

    /// Cancels the call (Python's `Future.cancel`, and more): if it has
    /// not finished, it never will — a task not yet started never runs, a
    /// running one's process is killed (its pool starts another) — and
    /// [`get`](Self::get) gives [`Error::Cancelled`]. `true` if it was
    /// cancelled now, `false` if it had already finished (or was cancelled
    /// before). For a map, every call of it.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// let running = pool.apply_async(nap, (60_000,));
    /// let waiting = pool.apply_async(nap, (1,));
    /// assert!(waiting.cancel() && running.cancel());
    /// assert!(matches!(running.get(), Err(multiproc::Error::Cancelled)));
    /// assert!(matches!(waiting.get(), Err(multiproc::Error::Cancelled)));
    /// assert_eq!(pool.apply(nap, (1,)).unwrap(), 1, "the pool goes on");
    /// # }
    /// ```
    pub fn cancel(&self) -> bool {
        if self.slot.lock().done {
            return false;
        }
        if self.slot.cancelled.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        self.slot.complete(Err(Error::Cancelled));
        if let Some(nudge) = &*self.slot.nudge.lock().unwrap_or_else(PoisonError::into_inner) {
            nudge();
        }
        true
    }

    /// Whether the call has finished.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn one() -> u8 { 1 }
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// let r = pool.apply_async(one, ());
    /// r.wait();
    /// assert!(r.ready());
    /// # }
    /// ```
    pub fn ready(&self) -> bool {
        self.slot.lock().succeeded.is_some()
    }

    /// Whether the call succeeded; [`Error::NotReady`] before it finished.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// fn boom() -> u8 { panic!("no") }
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// let r = pool.apply_async(boom, ());
    /// r.wait();
    /// assert!(!r.successful().unwrap());
    /// # }
    /// ```
    pub fn successful(&self) -> Result<bool> {
        self.slot.lock().succeeded.ok_or(Error::NotReady)
    }

    /// Blocks until the call has finished.
    ///
    /// See [`AsyncResult`] for an example.
    pub fn wait(&self) {
        if self.slot.spin_until_finished(Instant::now() + WAIT_SPIN) {
            return;
        }
        let mut st = self.slot.lock();
        while st.succeeded.is_none() {
            st.sleepers += 1;
            st = self.slot.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.sleepers -= 1;
        }
    }

    /// Blocks until the call has finished or `timeout` passed; true when it
    /// has finished.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use std::time::Duration;
    /// fn nap() { std::thread::sleep(Duration::from_secs(60)) }
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// let r = pool.apply_async(nap, ());
    /// assert!(!r.wait_timeout(Duration::from_millis(10)));
    /// pool.terminate();
    /// # }
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        if self.slot.spin_until_finished(deadline.min(Instant::now() + WAIT_SPIN)) {
            return true;
        }
        let mut st = self.slot.lock();
        while st.succeeded.is_none() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            st.sleepers += 1;
            st = self.slot.ready.wait_timeout(st, left).unwrap_or_else(PoisonError::into_inner).0;
            st.sleepers -= 1;
        }
        true
    }

    /// Waits for the value. It is handed out once; a second `get` gives
    /// [`Error::ResultTaken`].
    ///
    /// See [`AsyncResult`] for an example.
    pub fn get(&self) -> Result<R> {
        self.wait();
        self.take()
    }

    /// Like [`get`](Self::get), but gives up after `timeout` with `Ok(None)`
    /// (the call goes on; ask again later).
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use std::time::Duration;
    /// fn nap() { std::thread::sleep(Duration::from_secs(60)) }
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// let r = pool.apply_async(nap, ());
    /// assert!(r.get_timeout(Duration::from_millis(10)).unwrap().is_none());
    /// pool.terminate();
    /// # }
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<Option<R>> {
        if !self.wait_timeout(timeout) {
            return Ok(None);
        }
        self.take().map(Some)
    }

    fn take(&self) -> Result<R> {
        let mut st = self.slot.lock();
        if st.taken {
            return Err(Error::ResultTaken("a pool task".into()));
        }
        st.taken = true;
        st.result.take().expect("waited for the result")
    }

    /// Runs `callback` with the value when the call succeeds: in the pool's
    /// result thread, before waiters wake (Python's `callback`), or right
    /// here if it already has.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use std::sync::mpsc;
    /// fn square(x: u64) -> u64 { x * x }
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// let (tx, rx) = mpsc::channel();
    /// let r = pool.apply_async(square, (7,)).callback(move |v| tx.send(*v).unwrap());
    /// assert_eq!(r.get().unwrap(), 49);
    /// assert_eq!(rx.recv().unwrap(), 49);
    /// # }
    /// ```
    pub fn callback(self, callback: impl FnOnce(&R) + Send + 'static) -> Self {
        let mut st = self.slot.lock();
        if st.done {
            if let Some(Ok(v)) = &st.result {
                callback(v);
            }
        } else {
            st.callback = Some(Box::new(callback));
        }
        drop(st);
        self
    }

    /// Runs `callback` with the error when the call fails (Python's
    /// `error_callback`); see [`callback`](Self::callback) for when.
    ///
    /// ```
    /// # #[multiproc::main] fn main() {
    /// use std::sync::mpsc;
    /// fn boom() -> u8 { panic!("bad input") }
    /// let pool = multiproc::Pool::new(1).unwrap();
    /// let (tx, rx) = mpsc::channel();
    /// let r = pool.apply_async(boom, ()).error_callback(move |e| tx.send(e.to_string()).unwrap());
    /// r.wait();
    /// assert!(rx.recv().unwrap().contains("bad input"));
    /// # }
    /// ```
    pub fn error_callback(self, callback: impl FnOnce(&Error) + Send + 'static) -> Self {
        let mut st = self.slot.lock();
        if st.done {
            if let Some(Err(e)) = &st.result {
                callback(e);
            }
        } else {
            st.error_callback = Some(Box::new(callback));
        }
        drop(st);
        self
    }
}

/// `.await` the value from async code.
///
/// ```
/// # #[multiproc::main] fn main() {
/// fn square(x: u64) -> u64 { x * x }
/// let pool = multiproc::Pool::new(1).unwrap();
/// let r = pool.apply_async(square, (5,));
/// let v = futures_lite::future::block_on(async { r.await });
/// assert_eq!(v.unwrap(), 25);
/// # }
/// ```
impl<R> Future for AsyncResult<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let mut st = self.slot.lock();
        if st.taken {
            return Poll::Ready(Err(Error::ResultTaken("a pool task".into())));
        }
        match st.result.take() {
            Some(r) => {
                st.taken = true;
                Poll::Ready(r)
            }
            None => {
                if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    st.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl<R> Unpin for AsyncResult<R> {}

/// Collects the results of a `map`: in input order, failing at the first
/// error (Python's `MapResult`).
pub(crate) struct MapSink<R> {
    slot: Arc<Slot<Vec<R>>>,
    values: Mutex<Places<R>>,
    progress: Option<super::Progress>,
}

/// A map's results, filled in any order, that become the caller's vector
/// in place: no slot per value wider than the value, and no second vector
/// to move them into (for a million small results, the page faults of
/// those two were a fifth of the call).
struct Places<R> {
    values: Vec<std::mem::MaybeUninit<R>>,
    /// One bit per place: set once its value is written.
    filled: Vec<u64>,
    remaining: usize,
}

impl<R> Places<R> {
    fn new(len: usize) -> Self {
        let mut values = crate::sys::vec_with_capacity(len);
        // SAFETY: `MaybeUninit` needs no initialisation; which places hold
        // a value is kept in `filled`.
        unsafe { values.set_len(len) };
        Places { values, filled: vec![0; len.div_ceil(64)], remaining: len }
    }

    fn is_filled(&self, at: usize) -> bool {
        self.filled[at / 64] & (1 << (at % 64)) != 0
    }

    /// Writes the value of place `at` unless it has one (or there is no
    /// such place); true when it was written.
    fn fill(&mut self, at: usize, v: R) -> bool {
        if at >= self.values.len() || self.is_filled(at) {
            return false;
        }
        self.values[at].write(v);
        self.filled[at / 64] |= 1 << (at % 64);
        self.remaining -= 1;
        true
    }

    /// The values in order, once every place has one.
    fn take_all(&mut self) -> Option<Vec<R>> {
        if self.remaining > 0 || self.values.is_empty() {
            return None;
        }
        self.filled.clear();
        let mut values = std::mem::ManuallyDrop::new(std::mem::take(&mut self.values));
        let (ptr, len, cap) = (values.as_mut_ptr(), values.len(), values.capacity());
        // SAFETY: every place was written (`remaining` is 0), and
        // `MaybeUninit<R>` has `R`'s size and alignment, so the allocation
        // is a valid `Vec<R>` of the same length and capacity; `values` is
        // not dropped, so it is freed once, as the new vector.
        Some(unsafe { Vec::from_raw_parts(ptr.cast::<R>(), len, cap) })
    }
}

impl<R> Drop for Places<R> {
    fn drop(&mut self) {
        if !std::mem::needs_drop::<R>() {
            return;
        }
        for at in 0..self.values.len() {
            if self.is_filled(at) {
                // SAFETY: a filled place holds a value, dropped once here.
                unsafe { self.values[at].assume_init_drop() };
            }
        }
    }
}

impl<R> MapSink<R> {
    pub(crate) fn new(len: usize, slot: Arc<Slot<Vec<R>>>, progress: Option<super::Progress>) -> Arc<Self> {
        let values = Mutex::new(Places::new(len));
        let sink = Arc::new(MapSink { slot, values, progress });
        if len == 0 {
            sink.slot.complete(Ok(Vec::new()));
        }
        sink
    }
}

impl<R: DeserializeOwned + Send> Sink for MapSink<R> {
    fn cancelled(&self) -> bool {
        self.slot.is_cancelled()
    }

    fn deliver(&self, index: usize, item: RawItem) {
        self.deliver_with(index, item, Args::Unknown);
    }

    fn deliver_with(&self, index: usize, item: RawItem, args: Args<'_>) {
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let failed = match item {
            // A chunk's results go to their places as they are decoded:
            // no vector of them all in between (for a map of small values
            // that vector, not the values, was most of the work).
            RawItem::Batch { outcome: Outcome::Returned(bytes), fds, worker, pid, count } => {
                let mut k = 0;
                let mut failed = None;
                let decoded = reduction::decode_each::<ItemResult<R>>(&bytes, fds, |result| {
                    if k < count && failed.is_none() {
                        match result {
                            ItemResult::Ok(v) => Self::place(&mut values, index + k, v, &self.progress),
                            ItemResult::Err(o) => match outcome_into_result::<R>(o, Vec::new(), &worker, pid) {
                                Ok(v) => Self::place(&mut values, index + k, v, &self.progress),
                                Err(e) => failed = Some((k, e)),
                            },
                        }
                    }
                    k += 1;
                });
                failed.or(match decoded {
                    Ok(n) if n == count => None,
                    Ok(n) => Some((0, Error::Protocol(format!("a chunk of {count} calls came back with {n} results")))),
                    Err(message) => Some((
                        k.min(count.saturating_sub(1)),
                        Error::Decode { what: Payload::Result, side: Side::Parent, message },
                    )),
                })
            }
            item => item.into_results::<R>().into_iter().enumerate().find_map(|(k, result)| match result {
                Ok(v) => {
                    Self::place(&mut values, index + k, v, &self.progress);
                    None
                }
                Err(e) => Some((k, e)),
            }),
        };
        if let Some((k, e)) = failed {
            drop(values);
            self.slot.complete(Err(e.at_item(index + k, || args.show(k))));
        } else if let Some(all) = values.take_all() {
            drop(values);
            self.slot.complete(Ok(all));
        }
    }
}

impl<R> MapSink<R> {
    /// Puts the value of call `at` in its place, once, and reports it.
    fn place(values: &mut Places<R>, at: usize, v: R, progress: &Option<super::Progress>) {
        if values.fill(at, v)
            && let Some(report) = progress
        {
            report(values.values.len() - values.remaining, Some(values.values.len()));
        }
    }
}

/// What an imap's iterator is sent: where the results go, the results,
/// and for a delivery known to have failed, its calls' arguments shown.
pub(crate) type Delivered = (usize, RawItem, Vec<Option<String>>);

/// Forwards an imap's results to its iterator.
pub(crate) struct ChannelSink(pub Mutex<mpsc::Sender<Delivered>>);

impl Sink for ChannelSink {
    fn deliver(&self, index: usize, item: RawItem) {
        self.deliver_with(index, item, Args::Unknown);
    }

    fn deliver_with(&self, index: usize, item: RawItem, args: Args<'_>) {
        // Only a failure seen without decoding (the results' type is the
        // iterator's) has its arguments shown: a call that failed inside a
        // chunk that came back is not seen here.
        let shown = match &item {
            RawItem::Failed(e) if !e.names_no_item() => vec![args.show(0)],
            RawItem::Outcome { outcome, .. } if !matches!(outcome, Outcome::Returned(_)) => vec![args.show(0)],
            RawItem::Batch { outcome, count, .. } if !matches!(outcome, Outcome::Returned(_)) => {
                args.show_range(0..*count)
            }
            _ => Vec::new(),
        };
        let _ = self.0.lock().unwrap_or_else(PoisonError::into_inner).send((index, item, shown));
    }
}

/// Results waiting to be handed out by an imap iterator. In order, result
/// `next + k` waits at `waiting[k]`: an imap's results come from at most
/// its in-flight window past the last one handed out, so the queue stays
/// that short, and each result costs no tree node.
pub(crate) struct Reorder<T> {
    ordered: bool,
    next: usize,
    waiting: VecDeque<Option<T>>,
}

impl<T> Reorder<T> {
    pub(crate) fn new(ordered: bool) -> Self {
        Reorder { ordered, next: 0, waiting: VecDeque::new() }
    }

    /// Keeps result `index` (in order) or the next result (unordered). An
    /// index already handed out, or already waiting, is ignored.
    pub(crate) fn push(&mut self, index: usize, item: T) {
        if !self.ordered {
            self.waiting.push_back(Some(item));
            return;
        }
        let Some(at) = index.checked_sub(self.next) else { return };
        if at >= self.waiting.len() {
            self.waiting.resize_with(at + 1, || None);
        }
        if self.waiting[at].is_none() {
            self.waiting[at] = Some(item);
        }
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        let item = self.waiting.front_mut()?.take()?;
        self.waiting.pop_front();
        self.next += 1;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{Places, Reorder};

    #[test]
    fn results_are_handed_out_in_order_or_as_they_come() {
        let mut ordered = Reorder::new(true);
        for i in [2, 0, 5, 1, 3] {
            ordered.push(i, i);
        }
        // A second result for a place is ignored.
        ordered.push(2, 99);
        let mut out = Vec::new();
        while let Some(i) = ordered.pop() {
            out.push(i);
        }
        assert_eq!(out, [0, 1, 2, 3], "5 waits for 4");
        ordered.push(1, 99);
        assert_eq!(ordered.pop(), None, "an index already handed out is ignored");
        ordered.push(4, 4);
        assert_eq!((ordered.pop(), ordered.pop(), ordered.pop()), (Some(4), Some(5), None));

        let mut unordered = Reorder::new(false);
        for i in [2, 0, 5] {
            unordered.push(i, i);
        }
        assert_eq!(
            (unordered.pop(), unordered.pop(), unordered.pop(), unordered.pop()),
            (Some(2), Some(0), Some(5), None)
        );
    }

    /// Counts its drops, to see that each placed value is dropped once.
    struct Counted(u32, Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn places_fill_in_any_order_once_and_become_the_vector() {
        let drops = Arc::new(AtomicUsize::new(0));
        let n = 200;
        let mut places = Places::new(n);
        // Out of order, across words of the bitmap.
        let order: Vec<usize> = (0..n).map(|i| (i * 67) % n).collect();
        for (k, &at) in order.iter().enumerate() {
            assert!(places.take_all().is_none(), "complete after {k} of {n}");
            assert!(places.fill(at, Counted(at as u32, drops.clone())));
            // A second value for the same place, or for a place that does
            // not exist, is refused and dropped at once.
            assert!(!places.fill(at, Counted(u32::MAX, drops.clone())));
            assert!(!places.fill(n + k, Counted(u32::MAX, drops.clone())));
        }
        assert_eq!(drops.load(Ordering::Relaxed), 2 * n);
        let all = places.take_all().expect("every place is filled");
        assert!(all.iter().enumerate().all(|(i, c)| c.0 == i as u32));
        assert!(places.take_all().is_none(), "handed over once");
        drop(places);
        assert_eq!(drops.load(Ordering::Relaxed), 2 * n, "the values now belong to the vector");
        drop(all);
        assert_eq!(drops.load(Ordering::Relaxed), 3 * n);
    }

    #[test]
    fn places_dropped_half_filled_drop_exactly_their_values() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut places = Places::new(130);
        for at in (0..130).step_by(3) {
            places.fill(at, Counted(0, drops.clone()));
        }
        drop(places);
        assert_eq!(drops.load(Ordering::Relaxed), (0..130).step_by(3).count());
    }
}
