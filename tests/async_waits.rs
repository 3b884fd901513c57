//! Async waits (feature `async`): `Process::join_async`, the connections'
//! and queues' `_async` calls park the task, not the thread. Each runs on a
//! current-thread runtime beside a task that can only make progress if the
//! wait gives the thread back: the peer that lets the wait end, or a
//! counter that ticks meanwhile. A wait that blocked the thread would hang
//! (the guard is a hang guard only).

mod common;

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use common::{GUARD, each_method};
use multiproc::{Connection, Error, Pipe, Process, Queue};

/// Runs `f` on a fresh current-thread runtime, failing if it hangs.
fn on_one_thread<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { tokio::time::timeout(GUARD, f).await.expect("hung: the wait held the thread") })
}

/// Counts while `wait` is pending: how many times the thread came back.
async fn ticks_during<T>(wait: impl Future<Output = T>) -> (T, u64) {
    let ticks = Cell::new(0u64);
    let done = Cell::new(false);
    let counter = async {
        while !done.get() {
            ticks.set(ticks.get() + 1);
            tokio::task::yield_now().await;
        }
    };
    let waited = async {
        let v = wait.await;
        done.set(true);
        v
    };
    let (v, ()) = tokio::join!(waited, counter);
    (v, ticks.get())
}

/// Waits for a word on `go`, then answers a large value (bigger than a
/// socket buffer, so the parent must read while it waits).
fn after_go(go: Connection, n: u64) -> Vec<u64> {
    let word: String = go.recv().unwrap();
    assert_eq!(word, "go");
    (0..n).collect()
}

#[test]
fn join_async_parks_the_task_until_the_child_ends() {
    each_method(|m| {
        let (here, there) = Pipe(true).unwrap();
        let mut p = Process::new(after_go, (there, 1 << 20)).with_start_method(m);
        p.start().unwrap();
        let (joined, ()) = on_one_thread(async {
            tokio::join!(p.join_async(), async {
                // Runs only if join_async gave the thread back.
                tokio::task::yield_now().await;
                here.send_async(&"go").await.unwrap();
            })
        });
        let v = joined.unwrap();
        assert_eq!(v.len(), 1 << 20, "{m}");
        assert!(v.iter().enumerate().all(|(i, x)| i as u64 == *x), "{m}");
        assert_eq!(p.exitcode(), Some(0));
    });
}

fn dies() {
    std::process::abort();
}

#[test]
fn join_async_reports_a_death_and_a_join_before_start() {
    let mut p = Process::new(dies, ());
    assert!(matches!(on_one_thread(p.join_async()), Err(Error::NotStarted(_))));
    p.start().unwrap();
    // (It may have died before the first look: no ticks are asked for.)
    let r = on_one_thread(p.join_async());
    assert!(matches!(r, Err(Error::Killed { signal: libc::SIGABRT, .. })), "{r:?}");
}

/// Messages of every size around the socket buffer and the frame header,
/// each a checksum of its own.
fn sizes() -> Vec<usize> {
    let mut v = vec![0, 1, 15, 16, 17, 4095, 4096, 4097, 65535, 65536, 65537, 212_991, 212_992, 212_993];
    v.extend([1 << 20, (4 << 20) + 3]);
    v
}

fn payload(size: usize, seed: usize) -> Vec<u8> {
    (0..size).map(|i| (i.wrapping_mul(31) ^ seed) as u8).collect()
}

#[test]
fn send_async_and_recv_async_share_one_thread_through_every_size() {
    let (a, b) = Pipe(true).unwrap();
    on_one_thread(async {
        let sending = async {
            for (k, size) in sizes().into_iter().enumerate() {
                a.send_async(&serde_bytes::ByteBuf::from(payload(size, k))).await.unwrap();
            }
        };
        let receiving = async {
            for (k, size) in sizes().into_iter().enumerate() {
                let got: serde_bytes::ByteBuf = b.recv_async().await.unwrap();
                assert_eq!(got.len(), size);
                assert!(got.as_slice() == payload(size, k).as_slice(), "message {k} of {size} bytes differs");
            }
        };
        tokio::join!(sending, receiving);
    });
}

/// Echoes each message back until the stream ends.
fn echo(conn: Connection) {
    while let Ok(v) = conn.recv::<serde_bytes::ByteBuf>() {
        conn.send(&v).unwrap();
    }
}

/// A child echoes what async calls send, through every size (the
/// parking itself is shown by the tests above: here the child answers on
/// its own, so a reply may already be there when it is asked for).
#[test]
fn a_child_echoes_what_async_calls_send_through_every_size() {
    let (here, there) = Pipe(true).unwrap();
    let mut p = Process::new(echo, (there,));
    p.start().unwrap();
    on_one_thread(async {
        for (k, size) in sizes().into_iter().enumerate() {
            let sent = serde_bytes::ByteBuf::from(payload(size, k));
            let (sending, back) = tokio::join!(here.send_async(&sent), here.recv_async::<serde_bytes::ByteBuf>());
            sending.unwrap();
            assert!(back.unwrap().as_slice() == sent.as_slice(), "echo {k} of {size} bytes differs");
        }
    });
    drop(here);
    common::join(&mut p).unwrap();
}

#[test]
fn a_dropped_recv_async_takes_nothing() {
    let (a, b) = Pipe(true).unwrap();
    on_one_thread(async {
        // Given up on before anything came: the message sent afterwards is
        // the next one received.
        assert!(tokio::time::timeout(Duration::from_millis(1), b.recv_async::<u32>()).await.is_err());
        a.send_async(&7u32).await.unwrap();
        assert_eq!(b.recv_async::<u32>().await.unwrap(), 7);
    });
}

#[test]
fn recv_async_sees_the_end_of_the_stream() {
    let (a, b) = Pipe(true).unwrap();
    on_one_thread(async {
        let (got, ()) = tokio::join!(b.recv_async::<u32>(), async {
            tokio::task::yield_now().await;
            a.close();
        });
        assert!(matches!(got, Err(Error::Eof)), "{got:?}");
    });
}

/// Puts `n` items once told to.
fn producer(go: Connection, q: Queue<u64>, n: u64) {
    let _: String = go.recv().unwrap();
    for i in 0..n {
        q.put(&i).unwrap();
    }
}

#[test]
fn get_async_parks_the_task_while_another_process_fills_the_queue() {
    let q = Queue::unbounded().unwrap();
    let (here, there) = Pipe(true).unwrap();
    let mut p = Process::new(producer, (there, q.clone(), 1000));
    p.start().unwrap();
    let got = on_one_thread(async {
        let getting = async {
            let mut got = Vec::new();
            for _ in 0..1000 {
                got.push(q.get_async().await.unwrap());
            }
            got
        };
        let (got, ()) = tokio::join!(getting, async {
            tokio::task::yield_now().await;
            here.send_async(&"go").await.unwrap();
        });
        got
    });
    assert_eq!(got, (0..1000).collect::<Vec<u64>>());
    common::join(&mut p).unwrap();
}

#[test]
fn a_dropped_get_async_takes_nothing() {
    let q = Queue::unbounded().unwrap();
    on_one_thread(async {
        for _ in 0..20 {
            assert!(tokio::time::timeout(Duration::from_millis(1), q.get_async()).await.is_err());
        }
        q.put(&5u32).unwrap();
        q.put(&6u32).unwrap();
        assert_eq!(q.get_async().await.unwrap(), 5);
        assert_eq!(q.get_async().await.unwrap(), 6);
        assert!(matches!(q.get_nowait(), Err(Error::Empty)));
    });
}

#[test]
fn put_async_waits_for_room_and_a_dropped_one_holds_none() {
    let q = Queue::new(1).unwrap();
    on_one_thread(async {
        q.put_async(&1u32).await.unwrap();
        let ((put, ticks), got) = tokio::join!(ticks_during(q.put_async(&2)), async {
            tokio::task::yield_now().await;
            q.get_async().await
        });
        put.unwrap();
        assert!(ticks > 0);
        assert_eq!(got.unwrap(), 1);
        // Full again: a put given up on puts nothing and keeps no room.
        for _ in 0..5 {
            assert!(tokio::time::timeout(Duration::from_millis(5), q.put_async(&3)).await.is_err());
        }
        assert_eq!(q.get_async().await.unwrap(), 2);
        q.put_nowait(&4).unwrap();
        assert!(matches!(q.put_nowait(&5), Err(Error::Full)));
        assert_eq!(q.get_async().await.unwrap(), 4);
        assert!(matches!(q.get_nowait(), Err(Error::Empty)));
    });
}

/// Waits for `go`, then answers `x`.
fn when(go: multiproc::Event, x: u64) -> u64 {
    assert!(go.wait(Some(GUARD)).unwrap(), "never told to go");
    x
}

#[test]
fn as_completed_as_a_stream_yields_in_finishing_order_and_times_out() {
    use futures_lite::StreamExt;
    let pool = multiproc::Pool::new(3).unwrap();
    let events: Vec<multiproc::Event> = (0..3).map(|_| multiproc::Event::new().unwrap()).collect();
    let calls: Vec<_> = (0..3).map(|i| pool.apply_async(when, (events[i].clone(), i as u64))).collect();
    // Finished as 2, 0, 1: each let go by a task beside the stream once the
    // one before came out, so the stream must give the thread back.
    let order = [2usize, 0, 1];
    let seen = on_one_thread(async {
        let (tx, mut rx) = (std::cell::RefCell::new(Vec::new()), 0usize);
        events[order[0]].set().unwrap();
        let reading = async {
            let mut done = multiproc::as_completed(calls);
            while let Some(call) = StreamExt::next(&mut done).await {
                tx.borrow_mut().push(call.unwrap().get().unwrap());
            }
        };
        let steering = async {
            while rx < order.len() - 1 {
                if tx.borrow().len() > rx {
                    rx += 1;
                    events[order[rx]].set().unwrap();
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::join!(reading, steering);
        tx.into_inner()
    });
    assert_eq!(seen, [2, 0, 1]);

    // One call never finishes: after the one that does, a typed timeout,
    // then the end; the unfinished call is still there to wait for.
    let stuck = multiproc::Event::new().unwrap();
    let calls = vec![pool.apply_async(when, (stuck.clone(), 7)), pool.apply_async(when, (events[0].clone(), 8))];
    let (got, timeout, end) = on_one_thread(async {
        let mut done = multiproc::as_completed(calls).timeout(Duration::from_millis(200));
        let got = StreamExt::next(&mut done).await.unwrap().unwrap().get().unwrap();
        let timeout = StreamExt::next(&mut done).await.unwrap();
        (got, timeout, StreamExt::next(&mut done).await.is_none())
    });
    assert_eq!(got, 8);
    assert!(matches!(timeout, Err(Error::WaitTimeout { unfinished: 1, of: 2 })), "{timeout:?}");
    assert!(end);
    stuck.set().unwrap();
}
