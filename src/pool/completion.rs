//! Python's `concurrent.futures.wait` and `as_completed`, over
//! [`AsyncResult`]s of any pools and calls.
//!
//! Each result is watched through the waker list its `Future` side already
//! has: a completion pushes the result's index onto a board the waiting
//! thread sleeps on, so waiting for a thousand results costs no thread and
//! no polling.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::result::AsyncResult;
use crate::{Error, Result};

mod sealed {
    pub trait Sealed {}
}

/// How a watched call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Not finished.
    Pending,
    /// Finished with a value.
    Succeeded,
    /// Finished with an error (the task failed, its worker died, ...).
    Failed,
    /// Cancelled by [`AsyncResult::cancel`] before it finished.
    Cancelled,
}

/// A call that finishes once: an [`AsyncResult`] of any type, a reference
/// to one, or a boxed `dyn Completion` — so that [`wait`] and
/// [`as_completed`] take any mix of calls.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{CallState, Completion};
/// fn one() -> u8 { 1 }
/// let pool = multiproc::Pool::new(1).unwrap();
/// let r = pool.apply_async(one, ());
/// r.wait();
/// assert_eq!(r.state(), CallState::Succeeded);
/// # }
/// ```
pub trait Completion: sealed::Sealed {
    /// How it stands now.
    fn state(&self) -> CallState;

    /// Wakes `waker` once it has finished (at once if it has).
    #[doc(hidden)]
    fn watch(&self, waker: &Waker);
}

impl<R> sealed::Sealed for AsyncResult<R> {}

impl<R> Completion for AsyncResult<R> {
    fn state(&self) -> CallState {
        match self.slot_outcome() {
            None => CallState::Pending,
            Some(true) => CallState::Succeeded,
            Some(false) if self.was_cancelled() => CallState::Cancelled,
            Some(false) => CallState::Failed,
        }
    }

    fn watch(&self, waker: &Waker) {
        self.watch_slot(waker);
    }
}

impl<T: Completion + ?Sized> sealed::Sealed for &T {}

impl<T: Completion + ?Sized> Completion for &T {
    fn state(&self) -> CallState {
        (**self).state()
    }

    fn watch(&self, waker: &Waker) {
        (**self).watch(waker);
    }
}

impl<T: Completion + ?Sized> sealed::Sealed for Box<T> {}

impl<T: Completion + ?Sized> Completion for Box<T> {
    fn state(&self) -> CallState {
        (**self).state()
    }

    fn watch(&self, waker: &Waker) {
        (**self).watch(waker);
    }
}

/// Where completions are posted: indices, and a condition to sleep on.
struct Board {
    finished: Mutex<Vec<usize>>,
    posted: Condvar,
    /// The task polling an [`AsCompleted`] as a `Stream`, to wake as well.
    #[cfg(feature = "async")]
    task: Mutex<Option<Waker>>,
}

struct Post {
    board: Arc<Board>,
    index: usize,
}

impl Wake for Post {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.board.finished.lock().unwrap_or_else(PoisonError::into_inner).push(self.index);
        self.board.posted.notify_all();
        #[cfg(feature = "async")]
        if let Some(task) = &*self.board.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

/// The calls being watched, and which of them were seen finished.
struct Watch<T> {
    items: Vec<Option<T>>,
    seen: Vec<bool>,
    board: Arc<Board>,
}

impl<T: Completion> Watch<T> {
    fn new(items: impl IntoIterator<Item = T>) -> Watch<T> {
        let items: Vec<Option<T>> = items.into_iter().map(Some).collect();
        let board = Arc::new(Board {
            finished: Mutex::new(Vec::new()),
            posted: Condvar::new(),
            #[cfg(feature = "async")]
            task: Mutex::new(None),
        });
        for (index, item) in items.iter().enumerate() {
            let waker = Waker::from(Arc::new(Post { board: board.clone(), index }));
            item.as_ref().expect("just made").watch(&waker);
        }
        let seen = vec![false; items.len()];
        Watch { items, seen, board }
    }

    /// Indices of calls finished since the last look, in the order they
    /// finished; waits until there is one or `deadline` passes.
    fn next_finished(&mut self, deadline: Option<Instant>) -> Vec<usize> {
        let mut finished = self.board.finished.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let fresh = Self::fresh(&mut self.seen, &mut finished);
            if !fresh.is_empty() {
                return fresh;
            }
            let wait = match deadline {
                None => Duration::from_secs(3600),
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Vec::new(),
                },
            };
            finished = self.board.posted.wait_timeout(finished, wait).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// The posted indices not seen before, marked seen.
    fn fresh(seen: &mut [bool], finished: &mut Vec<usize>) -> Vec<usize> {
        finished.drain(..).filter(|&i| !std::mem::replace(&mut seen[i], true)).collect()
    }

    /// Indices of calls finished since the last look, without waiting.
    #[cfg(feature = "async")]
    fn take_finished(&mut self) -> Vec<usize> {
        let mut finished = self.board.finished.lock().unwrap_or_else(PoisonError::into_inner);
        Self::fresh(&mut self.seen, &mut finished)
    }

    fn unfinished(&self) -> usize {
        self.seen.iter().filter(|s| !**s).count()
    }
}

/// What [`wait`] waits for (Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION`,
/// `ALL_COMPLETED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnWhen {
    /// Any call finished or was cancelled.
    FirstCompleted,
    /// Any call failed (a cancel is no failure), or else all finished.
    FirstException,
    /// Every call finished or was cancelled.
    AllCompleted,
}

/// What [`wait`] returns: the calls that finished and those that did not,
/// each in the order they were given.
#[derive(Debug)]
pub struct Waited<T> {
    /// Finished (with a value, an error, or cancelled).
    pub done: Vec<T>,
    /// Still running when `wait` returned.
    pub not_done: Vec<T>,
}

/// Waits for calls of any pools (Python's `concurrent.futures.wait`): until
/// `return_when` holds, or `timeout` passes (`None`: no limit). Nothing is
/// taken from the results: `get` them afterwards.
///
/// ```
/// # #[multiproc::main] fn main() {
/// use multiproc::{ReturnWhen, wait};
/// fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
/// let pool = multiproc::Pool::new(2).unwrap();
/// let calls = vec![pool.apply_async(nap, (60_000,)), pool.apply_async(nap, (1,))];
/// let mut waited = wait(calls, ReturnWhen::FirstCompleted, None);
/// assert_eq!(waited.done.len(), 1);
/// assert_eq!(waited.done[0].get().unwrap(), 1);
/// waited.not_done[0].cancel();
/// # }
/// ```
pub fn wait<T: Completion>(
    results: impl IntoIterator<Item = T>,
    return_when: ReturnWhen,
    timeout: Option<Duration>,
) -> Waited<T> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut watch = Watch::new(results);
    let total = watch.items.len();
    let mut finished = 0;
    let mut failed = false;
    while finished < total {
        let fresh = watch.next_finished(deadline);
        if fresh.is_empty() {
            break;
        }
        finished += fresh.len();
        failed |= fresh.iter().any(|&i| watch.items[i].as_ref().is_some_and(|t| t.state() == CallState::Failed));
        match return_when {
            ReturnWhen::FirstCompleted => break,
            ReturnWhen::FirstException if failed => break,
            _ => {}
        }
    }
    let (mut done, mut not_done) = (Vec::new(), Vec::new());
    for (item, seen) in watch.items.into_iter().zip(watch.seen) {
        let item = item.expect("all still here");
        if seen { done.push(item) } else { not_done.push(item) }
    }
    Waited { done, not_done }
}

/// The calls in the order they finish (Python's
/// `concurrent.futures.as_completed`): each as it finishes (those finished
/// already first), ready for `get`. With a [`timeout`](AsCompleted::timeout), an
/// [`Error::WaitTimeout`] once it passes, and then the end; what had not
/// finished is in [`remaining`](AsCompleted::remaining).
///
/// ```
/// # #[multiproc::main] fn main() {
/// fn nap(ms: u64) -> u64 { std::thread::sleep(std::time::Duration::from_millis(ms)); ms }
/// let pool = multiproc::Pool::new(2).unwrap();
/// let calls = vec![pool.apply_async(nap, (300,)), pool.apply_async(nap, (1,))];
/// let order: Vec<u64> = multiproc::as_completed(calls).map(|r| r.unwrap().get().unwrap()).collect();
/// assert_eq!(order, [1, 300]);
/// # }
/// ```
pub fn as_completed<T: Completion>(results: impl IntoIterator<Item = T>) -> AsCompleted<T> {
    AsCompleted {
        watch: Watch::new(results),
        ready: std::collections::VecDeque::new(),
        deadline: None,
        over: false,
        #[cfg(feature = "async")]
        timer: None,
    }
}

/// The iterator of [`as_completed`].
///
/// Under the `async` feature it is also a `Stream` (`futures_core::Stream`)
/// that parks the task, not the thread. Being an `Iterator` too, its
/// `next` is ambiguous with a `StreamExt` in scope: name the trait.
///
/// ```
/// # #[multiproc::main] fn main() {
/// # #[cfg(feature = "async")] {
/// use futures_lite::StreamExt;
/// fn square(x: u64) -> u64 { x * x }
/// let pool = multiproc::Pool::new(2).unwrap();
/// let calls: Vec<_> = (1..=3).map(|x| pool.apply_async(square, (x,))).collect();
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// let mut got: Vec<u64> = rt.block_on(async {
///     let mut done = multiproc::as_completed(calls);
///     let mut got = Vec::new();
///     while let Some(call) = StreamExt::next(&mut done).await {
///         got.push(call.unwrap().get().unwrap());
///     }
///     got
/// });
/// got.sort();
/// assert_eq!(got, [1, 4, 9]);
/// # }
/// # }
/// ```
pub struct AsCompleted<T> {
    watch: Watch<T>,
    ready: std::collections::VecDeque<usize>,
    deadline: Option<Instant>,
    over: bool,
    /// The deadline as a tokio timer, once polled as a `Stream`.
    #[cfg(feature = "async")]
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> std::fmt::Debug for AsCompleted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted").field("calls", &self.watch.items.len()).field("over", &self.over).finish()
    }
}

impl<T: Completion> AsCompleted<T> {
    /// Gives up `timeout` from now (Python counts from the call; so does
    /// this, when called at once).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(Instant::now() + timeout);
        self
    }

    /// The calls not yet given out (after a timeout: those unfinished).
    pub fn remaining(self) -> Vec<T> {
        self.watch.items.into_iter().flatten().collect()
    }
}

impl<T: Completion> AsCompleted<T> {
    /// The next call out, `look` finding the calls finished since the last
    /// look (`None`: the deadline passed; empty: none yet, come back).
    fn advance(&mut self, look: impl FnOnce(&mut Self) -> Option<Vec<usize>>) -> Poll<Option<Result<T>>> {
        if self.over {
            return Poll::Ready(None);
        }
        if self.ready.is_empty() {
            if self.watch.unfinished() == 0 {
                self.over = true;
                return Poll::Ready(None);
            }
            match look(self) {
                None => {
                    self.over = true;
                    let unfinished = self.watch.unfinished();
                    return Poll::Ready(Some(Err(Error::WaitTimeout { unfinished, of: self.watch.items.len() })));
                }
                Some(fresh) if fresh.is_empty() => return Poll::Pending,
                Some(fresh) => self.ready.extend(fresh),
            }
        }
        let i = self.ready.pop_front().expect("just filled");
        Poll::Ready(self.watch.items[i].take().map(Ok))
    }
}

impl<T: Completion> Iterator for AsCompleted<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        let deadline = self.deadline;
        // A blocking look finds a call or gives up: never "none yet".
        let look = |me: &mut Self| Some(me.watch.next_finished(deadline)).filter(|fresh| !fresh.is_empty());
        match self.advance(look) {
            Poll::Ready(next) => next,
            Poll::Pending => unreachable!("a blocking look always finds a call or gives up"),
        }
    }
}

// The calls are moved out whole, never pinned in place.
impl<T> Unpin for AsCompleted<T> {}

#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
impl<T: Completion> futures_core::Stream for AsCompleted<T> {
    type Item = Result<T>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Result<T>>> {
        self.get_mut().advance(|me| {
            // Registered before looking, so a completion between the look
            // and the return still wakes us.
            *me.watch.board.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            let fresh = me.watch.take_finished();
            if fresh.is_empty()
                && let Some(deadline) = me.deadline
            {
                let timer = me.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
                if timer.as_mut().poll(cx).is_ready() {
                    return None;
                }
            }
            Some(fresh)
        })
    }
}
