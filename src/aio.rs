//! Async waits (feature `async`): what `Process::join_async`, the
//! connections' and the queues' `_async` calls park on.
//!
//! A wait on a descriptor (a child's pidfd and answer socket, a
//! connection's socket) goes to tokio's reactor through `AsyncFd`, on a
//! duplicate so that the object keeps its own. A wait with no descriptor (a
//! queue's ring and its slots sleep on futexes) runs on tokio's blocking
//! threads and only waits there, taking nothing: the task itself then takes
//! without waiting, so an async call that is dropped loses no item and holds
//! no slot.

use std::future::Future;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::{Error, Result};

fn io_error(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// A descriptor watched by the tokio reactor of the running task.
pub(crate) struct Watched(AsyncFd<OwnedFd>);

impl Watched {
    /// Watches a duplicate of `fd`. Must be called inside a tokio runtime
    /// with IO enabled (`enable_io` or `enable_all`, as `#[tokio::main]`).
    pub(crate) fn new(fd: BorrowedFd<'_>, interest: Interest) -> Result<Watched> {
        let dup = fd.try_clone_to_owned().map_err(io_error("dup of a descriptor to watch"))?;
        // SAFETY: an `OwnedFd` is open until it is dropped, which happens
        // only with the `AsyncFd` that owns it, and always answers the same
        // descriptor.
        let watched = unsafe { AsyncFd::register_with_interest(dup, interest) };
        watched.map(Watched).map_err(|e| io_error("registering a descriptor with tokio")(e.into()))
    }

    /// Ready for reading since the last look: the caller tries without
    /// waiting next, and waits again if it finds nothing. The readiness is
    /// forgotten before the try, so nothing arriving after it is missed.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match self.0.poll_read_ready(cx) {
            Poll::Ready(Ok(mut guard)) => {
                guard.clear_ready();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(io_error("waiting for a descriptor")(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    pub(crate) async fn readable(&self) -> Result<()> {
        std::future::poll_fn(|cx| self.poll_readable(cx)).await
    }

    pub(crate) async fn writable(&self) -> Result<()> {
        let mut guard = self.0.writable().await.map_err(io_error("waiting for a descriptor"))?;
        guard.clear_ready();
        Ok(())
    }
}

impl AsFd for Watched {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.get_ref().as_fd()
    }
}

/// Waits until `a`, or `b` when there is one, is readable.
pub(crate) async fn either_readable(a: &Watched, b: Option<&Watched>) -> Result<()> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = a.poll_readable(cx) {
            return Poll::Ready(r);
        }
        match b {
            Some(b) => b.poll_readable(cx),
            None => Poll::Pending,
        }
    })
    .await
}

/// A wait with no descriptor, run on one of tokio's blocking threads. The
/// wait is given a stop flag; dropping the future sets it and calls `wake`,
/// which must make the wait look at the flag, so no thread outlives its
/// caller's interest for long.
pub(crate) struct Helper<T> {
    handle: tokio::task::JoinHandle<T>,
    stop: Arc<AtomicBool>,
    wake: Option<Box<dyn FnOnce() + Send>>,
}

impl<T: Send + 'static> Helper<T> {
    pub(crate) fn spawn(
        wait: impl FnOnce(&AtomicBool) -> T + Send + 'static,
        wake: impl FnOnce() + Send + 'static,
    ) -> Helper<T> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::task::spawn_blocking(move || wait(&flag));
        Helper { handle, stop, wake: Some(Box::new(wake)) }
    }
}

impl<T> Future for Helper<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        match Pin::new(&mut self.handle).poll(cx) {
            Poll::Ready(Ok(v)) => {
                self.wake = None;
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) => {
                self.wake = None;
                Poll::Ready(Err(Error::Protocol(format!("an async wait's helper thread failed: {e}"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for Helper<T> {
    fn drop(&mut self) {
        if let Some(wake) = self.wake.take() {
            self.stop.store(true, Ordering::SeqCst);
            wake();
        }
    }
}
