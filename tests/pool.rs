//! The Pool: every call, every failure, no leaks.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{GUARD, Picky, exits_within, isolated, pidfd, sleep_forever};
use multiproc::{Error, Handle, Pool, Process, StartMethod, os};

fn inc(x: u64) -> u64 {
    x + 1
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn pid_of(_: u64) -> i32 {
    os::getpid()
}

fn pool(n: usize, m: StartMethod) -> Pool {
    Pool::builder().processes(n).start_method(m).build().unwrap()
}

#[test]
fn every_call_gives_python_results() {
    for m in StartMethod::ALL {
        let p = pool(2, m);
        assert_eq!(p.apply(add, (2, 3)).unwrap(), 5, "{m}");
        let r = p.apply_async(inc, (41,));
        assert_eq!(r.get().unwrap(), 42);
        assert!(r.ready() && r.successful().unwrap());
        assert!(matches!(r.get(), Err(Error::ResultTaken(_))));
        assert_eq!(p.map(inc, 0..100).unwrap(), (1..=100).collect::<Vec<_>>());
        assert_eq!(p.map_chunksize(inc, 0..10, 3).unwrap(), (1..=10).collect::<Vec<_>>());
        assert_eq!(p.map_async(inc, [7, 8]).get().unwrap(), [8, 9]);
        assert_eq!(p.starmap(add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
        assert_eq!(p.starmap_async(add, [(5, 6)]).get().unwrap(), [11]);
        let ordered: Vec<u64> = p.imap(inc, 0..50).map(Result::unwrap).collect();
        assert_eq!(ordered, (1..=50).collect::<Vec<_>>());
        let ordered: Vec<u64> = p.imap_chunksize(inc, 0..50, 7).map(Result::unwrap).collect();
        assert_eq!(ordered, (1..=50).collect::<Vec<_>>());
        let mut unordered: Vec<u64> = p.imap_unordered(inc, 0..50).map(Result::unwrap).collect();
        unordered.sort();
        assert_eq!(unordered, (1..=50).collect::<Vec<_>>());
        assert!(p.map(inc, Vec::<u64>::new()).unwrap().is_empty());
        assert_eq!(p.imap(inc, Vec::<u64>::new()).count(), 0);
        p.close();
        p.join().unwrap();
    }
}

/// Round trips one at a time: each call goes straight to the worker that
/// answered the last one (back on offer before its caller heard), often
/// answered before the pool's thread has taken it over. None is lost.
#[test]
fn round_trips_one_at_a_time_lose_no_task() {
    for m in StartMethod::ALL {
        let p = pool(2, m);
        for i in 0..3000u64 {
            let r = p.apply_async(inc, (i,));
            assert_eq!(r.get_timeout(GUARD).unwrap(), Some(i + 1), "{m}: round trip {i} lost");
        }
        p.close();
        p.join().unwrap();
    }
}

/// Results nobody waits for still arrive: a call posted to a listening
/// worker's mailbox whose caller does not wait (it only registered a
/// callback, or awaits it) is answered by mail with no caller watching; the
/// worker rings the pool's thread, which delivers it. Round trips with and
/// without a waiter alternate, so every call finds the worker listening.
#[test]
fn answers_nobody_waits_for_still_arrive() {
    let p = pool(1, StartMethod::Fork);
    let (tx, rx) = mpsc::channel();
    for i in 0..3000u64 {
        match i % 3 {
            0 => assert_eq!(p.apply(inc, (i,)).unwrap(), i + 1),
            1 => {
                let tx = tx.clone();
                let _r = p.apply_async(inc, (i,)).callback(move |v| tx.send(*v).unwrap());
                assert_eq!(rx.recv_timeout(GUARD), Ok(i + 1), "call {i} never arrived");
            }
            // Awaited: a future does not spin, so it does not watch either.
            _ => assert_eq!(futures_lite::future::block_on(p.apply_async(inc, (i,))).unwrap(), i + 1),
        }
    }
    p.close();
    p.join().unwrap();
}

/// Returns `i`, after waiting for a byte on `gate` when there is one.
fn gated(i: u32, gate: Option<Handle>) -> u32 {
    if let Some(g) = gate {
        let mut b = [0u8; 1];
        g.into_file().read_exact(&mut b).unwrap();
    }
    i
}

#[test]
fn imap_unordered_yields_in_completion_order() {
    let p = pool(2, StartMethod::Forkserver);
    let (reader, mut writer) = std::io::pipe().unwrap();
    let items = vec![(0, Some(Handle::from(reader))), (1, None)];
    let mut it = p.imap_unordered(|(i, g): (u32, Option<Handle>)| gated(i, g), items);
    // Item 0 cannot finish before we open its gate, so item 1 comes first.
    assert_eq!(it.next().unwrap().unwrap(), 1);
    writer.write_all(&[1]).unwrap();
    assert_eq!(it.next().unwrap().unwrap(), 0);
    assert!(it.next().is_none());
}

#[test]
fn async_results_wait_poll_and_time_out() {
    let p = pool(1, StartMethod::Forkserver);
    let (reader, mut writer) = std::io::pipe().unwrap();
    let r = p.apply_async(gated, (9, Some(Handle::from(reader))));
    assert!(!r.ready());
    assert!(matches!(r.successful(), Err(Error::NotReady)));
    assert!(!r.wait_timeout(Duration::from_millis(20)));
    assert_eq!(r.get_timeout(Duration::from_millis(20)).unwrap(), None);
    writer.write_all(&[1]).unwrap();
    assert_eq!(r.get_timeout(GUARD).unwrap(), Some(9));
}

#[test]
fn callbacks_run_in_the_parent() {
    let p = pool(2, StartMethod::Forkserver);
    let me = os::getpid();
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    let ok = p.apply_async(inc, (1,)).callback(move |v| tx.send((os::getpid(), format!("ok {v}"))).unwrap());
    let failed = p
        .apply_async(|_: u8| -> u8 { panic!("nope") }, (0,))
        .error_callback(move |e| tx2.send((os::getpid(), format!("err {e}"))).unwrap());
    assert_eq!(ok.get().unwrap(), 2);
    failed.wait();
    let mut got: Vec<(i32, String)> = rx.iter().take(2).collect();
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(got[1], (me, "ok 2".to_string()));
    assert_eq!(got[0].0, me);
    assert!(got[0].1.starts_with("err ") && got[0].1.contains("nope"), "{got:?}");
    // Registered after the fact: runs at once.
    let (tx, rx) = mpsc::channel();
    let all = p.map_async(inc, [1, 2]);
    all.wait();
    let _all = all.callback(move |v| tx.send(v.clone()).unwrap());
    assert_eq!(rx.recv().unwrap(), [2, 3]);
}

static GREETING: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn set_greeting(g: String) {
    GREETING.set(g).unwrap();
}

fn greeting(_: u8) -> String {
    GREETING.get().cloned().unwrap_or_default()
}

fn failing_init() {
    panic!("cannot initialize");
}

#[test]
fn initializer_runs_once_per_worker() {
    for m in StartMethod::ALL {
        let p = Pool::builder()
            .processes(2)
            .start_method(m)
            .initializer(set_greeting, (format!("hi from {m}"),))
            .build()
            .unwrap();
        assert!(p.map(greeting, 0..8).unwrap().iter().all(|g| *g == format!("hi from {m}")));
    }
}

#[test]
fn a_failing_initializer_fails_tasks_instead_of_respawning_forever() {
    let p = Pool::builder().processes(2).initializer(failing_init, ()).build().unwrap();
    match p.apply(inc, (1,)) {
        Err(Error::InitializerFailed(msg)) => assert!(msg.contains("cannot initialize"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(p.map(inc, 0..3), Err(Error::InitializerFailed(_))));
}

#[test]
fn maxtasksperchild_replaces_workers() {
    let p = Pool::builder().processes(1).maxtasksperchild(2).build().unwrap();
    let pids = p.map_chunksize(pid_of, 0..6, 1).unwrap();
    let mut distinct = pids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{pids:?}");
}

#[test]
fn close_join_terminate_follow_python() {
    let p = pool(1, StartMethod::Forkserver);
    assert!(matches!(p.join(), Err(Error::PoolStillRunning)));
    let queued = p.apply_async(inc, (1,));
    p.close();
    assert!(matches!(p.apply(inc, (1,)), Err(Error::PoolNotRunning)));
    p.join().unwrap();
    // Queued before close: it still ran.
    assert_eq!(queued.get().unwrap(), 2);

    let p = pool(1, StartMethod::Forkserver);
    let running = p.apply_async(|_: u8| sleep_forever(), (0,));
    let waiting = p.apply_async(inc, (1,));
    p.terminate();
    assert!(matches!(running.get(), Err(Error::PoolTerminated)));
    assert!(matches!(waiting.get(), Err(Error::PoolTerminated)));
    p.join().unwrap();
}

#[test]
fn workers_are_gone_after_terminate_drop_and_close() {
    for how in ["terminate", "drop", "close"] {
        let p = pool(2, StartMethod::Forkserver);
        let pids = p.map_chunksize(pid_of, 0..20, 1).unwrap();
        let fds: Vec<_> = pids.iter().map(|&pid| pidfd(pid)).collect();
        match how {
            "terminate" => p.terminate(),
            "drop" => drop(p),
            _ => {
                p.close();
                p.join().unwrap();
            }
        }
        for fd in &fds {
            assert!(exits_within(fd, Duration::ZERO), "{how}: a worker outlived its pool");
        }
    }
}

fn pool_then_wait(out: Handle) {
    let p = Pool::new(2).unwrap();
    let pids = p.map_chunksize(pid_of, 0..20, 1).unwrap();
    let mut out = out.into_file();
    let mut distinct = pids;
    distinct.sort();
    distinct.dedup();
    writeln!(out, "{}", distinct.iter().map(i32::to_string).collect::<Vec<_>>().join(" ")).unwrap();
    drop(out);
    sleep_forever();
}

#[test]
fn workers_die_when_the_parent_is_sigkilled() {
    let (reader, writer) = std::io::pipe().unwrap();
    let mut parent = Process::new(pool_then_wait, (Handle::from(writer),)).with_start_method(StartMethod::Spawn);
    parent.start().unwrap();
    let mut line = String::new();
    BufReader::new(reader).read_line(&mut line).unwrap();
    let fds: Vec<_> = line.split_whitespace().map(|p| pidfd(p.parse().unwrap())).collect();
    assert!(!fds.is_empty());
    parent.kill().unwrap();
    assert!(parent.join().is_err());
    for fd in &fds {
        assert!(exits_within(fd, Duration::from_secs(5)), "a worker outlived its SIGKILLed parent");
    }
}

fn panics_on(x: u64) -> u64 {
    if x.is_multiple_of(3) {
        panic!("no multiples of three: {x}");
    }
    x
}

#[test]
fn a_panicking_task_fails_alone_every_time() {
    let p = pool(2, StartMethod::Forkserver);
    let results: Vec<_> = p.imap(panics_on, 0..30).collect();
    for (x, r) in results.into_iter().enumerate() {
        if x.is_multiple_of(3) {
            let e = r.unwrap_err();
            assert_eq!(e.item_index(), Some(x));
            match e.root() {
                Error::Panicked { message, location, .. } => {
                    assert_eq!(*message, format!("no multiples of three: {x}"));
                    assert!(location.as_ref().unwrap().starts_with("tests/pool.rs:"));
                }
                other => panic!("{x}: {other:?}"),
            }
        } else {
            assert_eq!(r.unwrap(), x as u64);
        }
    }
    assert!(matches!(p.map(panics_on, [1, 2, 3]).unwrap_err().root(), Error::Panicked { .. }));
}

fn dies(how: String) -> u64 {
    // SAFETY: each branch ends the process on purpose.
    unsafe {
        match how.as_str() {
            "segfault" => {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
            "abort" => libc::abort(),
            "exit" => libc::_exit(7),
            "sigkill" => {
                libc::raise(libc::SIGKILL);
            }
            _ => {}
        }
    }
    1
}

#[test]
fn a_worker_that_dies_fails_its_task_and_is_replaced() {
    for m in StartMethod::ALL {
        let p = pool(2, m);
        for (how, expect) in [
            ("segfault", "killed by SIGSEGV"),
            ("abort", "killed by SIGABRT"),
            ("exit", "exited with code 7"),
            ("sigkill", "killed by SIGKILL"),
        ] {
            match p.apply(dies, (how.to_string(),)) {
                Err(Error::WorkerDied { how: said, pid, name, .. }) => {
                    assert_eq!(said, expect, "{m} {how}");
                    assert!(pid > 0 && name.starts_with("PoolWorker-"));
                }
                other => panic!("{m} {how}: {other:?}"),
            }
            // The pool goes on.
            assert_eq!(p.map(inc, 0..20).unwrap().len(), 20, "{m} after {how}");
        }
    }
}

fn report_and_sleep(out: Handle) -> u64 {
    writeln!(out.into_file(), "{}", os::getpid()).unwrap();
    sleep_forever();
    0
}

#[test]
fn a_worker_killed_from_outside_fails_only_its_task() {
    let p = pool(2, StartMethod::Forkserver);
    let (reader, writer) = std::io::pipe().unwrap();
    let victim = p.apply_async(report_and_sleep, (Handle::from(writer),));
    let others: Vec<_> = (0..50).map(|i| p.apply_async(inc, (i,))).collect();
    let mut line = String::new();
    BufReader::new(reader).read_line(&mut line).unwrap();
    let pid: i32 = line.trim().parse().unwrap();
    // SAFETY: signalling a worker we own.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    match victim.get() {
        Err(Error::WorkerDied { pid: got, exitcode: -9, .. }) => assert_eq!(got, pid),
        other => panic!("{other:?}"),
    }
    for (i, r) in others.into_iter().enumerate() {
        assert_eq!(r.get().unwrap(), i as u64 + 1);
    }
}

#[test]
fn map_returns_a_dead_worker_promptly() {
    let p = pool(2, StartMethod::Forkserver);
    let started = Instant::now();
    let r = p.map_chunksize(|x: u64| if x == 0 { dies("sigkill".into()) } else { sleep_forever_u64() }, 0..4, 1);
    assert!(matches!(r.as_ref().map_err(Error::root), Err(Error::WorkerDied { .. })), "{r:?}");
    assert_eq!(r.unwrap_err().item_index(), Some(0));
    // Not after the other (endless) tasks: the error came by itself.
    assert!(started.elapsed() < GUARD);
}

fn sleep_forever_u64() -> u64 {
    sleep_forever();
    0
}

#[test]
fn an_overdue_task_kills_its_worker_and_fails() {
    let p = Pool::builder().processes(1).task_timeout(Duration::from_millis(200)).build().unwrap();
    let r = p.apply_async(|_: u8| sleep_forever_u64(), (0,));
    match r.get() {
        Err(Error::TaskTimeout { timeout, .. }) => assert_eq!(timeout, Duration::from_millis(200)),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.apply(inc, (1,)).unwrap(), 2);
}

fn echo(p: Picky) -> Picky {
    p
}

fn make(fail_ser: bool, fail_de: bool) -> Picky {
    Picky { fail_ser, fail_de }
}

#[test]
fn a_value_that_cannot_cross_fails_its_task_only() {
    use multiproc::{Payload, Side};
    let p = pool(2, StartMethod::Forkserver);
    let args = vec![
        Picky { fail_ser: false, fail_de: false },
        Picky { fail_ser: true, fail_de: false },
        Picky { fail_ser: false, fail_de: true },
        Picky { fail_ser: false, fail_de: false },
    ];
    let results: Vec<_> = p.imap(echo, args).collect();
    assert!(results[0].is_ok() && results[3].is_ok(), "{results:?}");
    let root = |i: usize| results[i].as_ref().err().map(Error::root);
    assert!(matches!(root(1), Some(Error::Encode { what: Payload::Arguments, side: Side::Parent, .. })));
    assert!(matches!(root(2), Some(Error::Decode { what: Payload::Arguments, side: Side::Child, .. })));
    let outs: Vec<_> = [(false, false), (true, false), (false, true)].into_iter().map(|a| p.apply(make, a)).collect();
    assert!(outs[0].is_ok());
    assert!(matches!(outs[1], Err(Error::Encode { what: Payload::Result, side: Side::Child, .. })));
    assert!(matches!(outs[2], Err(Error::Decode { what: Payload::Result, side: Side::Parent, .. })));
}

fn write_to(out: Handle, text: String) {
    out.into_file().write_all(text.as_bytes()).unwrap();
}

#[test]
fn handles_reach_workers_that_are_already_running() {
    for m in StartMethod::ALL {
        let p = pool(2, m);
        p.map(inc, 0..4).unwrap(); // the workers are up
        let (mut reader, writer) = std::io::pipe().unwrap();
        p.apply(write_to, (Handle::from(writer), format!("hello over {m}"))).unwrap();
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, format!("hello over {m}"));
    }
}

#[test]
fn imap_reads_an_endless_input_lazily() {
    let p = pool(2, StartMethod::Forkserver);
    let first: Vec<u64> = p.imap(inc, 0..).take(5000).map(Result::unwrap).collect();
    assert_eq!(first.len(), 5000);
    assert_eq!(first[4999], 5000);
}

#[test]
fn a_million_queued_tasks_and_no_descriptor_per_task() {
    isolated("a_million_queued_tasks_and_no_descriptor_per_task", || {
        let p = pool(2, StartMethod::Forkserver);
        p.map(inc, 0..10).unwrap();
        let before = multiproc::__private::open_fd_count().unwrap();
        let n = 1_000_000u64;
        let results = p.map_chunksize(inc, 0..n, 1).unwrap();
        assert_eq!(results.len() as u64, n);
        assert_eq!(results[n as usize - 1], n);
        assert_eq!(multiproc::__private::open_fd_count().unwrap(), before);
    });
}

#[test]
fn awaiting_an_async_result() {
    let p = pool(1, StartMethod::Forkserver);
    let r = p.apply_async(add, (20, 22));
    assert_eq!(futures_lite::future::block_on(r).unwrap(), 42);
}

#[test]
fn imap_pulls_its_input_only_as_results_are_consumed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let p = pool(2, StartMethod::Forkserver);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut it = p.imap(inc, endless);
    for expected in 1..=10 {
        assert_eq!(it.next().unwrap().unwrap(), expected);
    }
    let after_ten = pulled.load(Ordering::Relaxed);
    // Bounded read-ahead: a window of in-flight calls, not the whole input.
    assert!(after_ten <= 2 * 64 + 10, "read {after_ten} items to yield 10");
    for _ in 0..1000 {
        it.next().unwrap().unwrap();
    }
    assert!(pulled.load(Ordering::Relaxed) <= 1010 + 2 * 64);
}

#[cfg(feature = "async")]
async fn slow_double(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(5)).await;
    x * 2
}

#[cfg(feature = "async")]
async fn gather(n: u64) -> (u64, u128) {
    let start = Instant::now();
    let (a, b, c) = tokio::join!(slow_double(n), slow_double(n + 1), slow_double(n + 2));
    (a + b + c, start.elapsed().as_millis())
}

#[cfg(feature = "async")]
#[test]
fn async_tasks_run_on_the_workers_runtime() {
    use multiproc::Async;
    let p = pool(2, StartMethod::Forkserver);
    assert_eq!(p.map(Async(slow_double), 0..10).unwrap(), (0..10).map(|x| x * 2).collect::<Vec<_>>());
    let (sum, _) = p.apply(Async(gather), (1,)).unwrap();
    assert_eq!(sum, 2 + 4 + 6);
    // And as a plain process target, under every start method.
    for m in StartMethod::ALL {
        let mut proc = Process::new(Async(slow_double), (21,)).with_start_method(m);
        proc.start().unwrap();
        assert_eq!(proc.join().unwrap(), 42, "{m}");
    }
}

/// Writes a file named `name` in `dir` (the task ran), then naps.
fn mark_and_nap(dir: String, name: String, millis: u64) -> u64 {
    std::fs::write(std::path::Path::new(&dir).join(name), b"").unwrap();
    std::thread::sleep(Duration::from_millis(millis));
    millis
}

fn my_pid() -> u32 {
    std::process::id()
}

fn wait_for_file(path: &std::path::Path) {
    let until = Instant::now() + GUARD;
    while !path.exists() {
        assert!(Instant::now() < until, "{} never appeared", path.display());
        std::thread::yield_now();
    }
}

/// `AsyncResult::cancel`: a queued task never runs; a running one's
/// process is killed (and replaced); a finished one is not cancelled; a
/// map's every call.
#[test]
fn cancel_stops_queued_and_running_tasks() {
    let dir = std::env::temp_dir().join(format!("multiproc-cancel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let pool = Pool::new(1).unwrap();
    let before = pool.apply(my_pid, ()).unwrap();
    let running = pool.apply_async(mark_and_nap, (d.clone(), "running".to_string(), 60_000));
    let queued = pool.apply_async(mark_and_nap, (d.clone(), "queued".to_string(), 0));
    wait_for_file(&dir.join("running"));
    assert!(queued.cancel(), "a queued task is cancelled");
    assert!(!queued.cancel(), "twice: not again");
    assert!(running.cancel(), "a running task is cancelled");
    assert!(matches!(running.get(), Err(Error::Cancelled)));
    assert!(matches!(queued.get(), Err(Error::Cancelled)));
    let after = pool.apply(my_pid, ()).unwrap();
    assert_ne!(before, after, "the cancelled task's process was killed and replaced");
    let done = pool.apply_async(mark_and_nap, (d.clone(), "done".to_string(), 0));
    assert_eq!(done.get().unwrap(), 0);
    assert!(!done.cancel(), "a finished task is not cancelled");
    assert!(!dir.join("queued").exists(), "the cancelled queued task ran");
    let all = pool.starmap_async(mark_and_nap, (0..4).map(|i| (d.clone(), format!("m{i}"), 60_000u64)));
    wait_for_file(&dir.join("m0"));
    assert!(all.cancel());
    assert!(matches!(all.get(), Err(Error::Cancelled)));
    assert_eq!(pool.apply(inc, (1,)).unwrap(), 2, "the pool goes on");
    assert!(!dir.join("m3").exists(), "a cancelled map's queued call ran");
    pool.close();
    pool.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn echo_sum(bytes: serde_bytes::ByteBuf) -> (usize, u64) {
    (bytes.len(), bytes.iter().map(|b| *b as u64).sum())
}

fn abort_now(_: u64) -> u64 {
    std::process::abort()
}

fn overstay(_: u64) -> u64 {
    std::thread::sleep(GUARD);
    0
}

fn expand(n: usize, seed: u64) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from((0..n).map(|k| (k as u64 * 7 + seed) as u8).collect::<Vec<u8>>())
}

/// Many callers at once, each call going straight to an idle worker when
/// one is on offer (through its mailbox while it listens, else its socket)
/// or through the supervisor when not, while workers abort, overstay their
/// timeout and are cancelled mid-task: every call ends once, with its own
/// value or the typed error of what happened to it. Arguments and results
/// straddle the mailbox's limits (16 KiB in, 64 KiB out). Without a task
/// timeout (the mailbox is for untimed tasks), another thread also kills
/// workers from outside at random: a call then ends with its value (its
/// task had not started and went to another worker) or `WorkerDied`.
#[test]
fn direct_handoffs_survive_concurrent_callers_deaths_timeouts_and_cancels() {
    for timed in [true, false] {
        let mut builder = Pool::builder().processes(2);
        if timed {
            builder = builder.task_timeout(Duration::from_secs(1));
        }
        let pool = builder.build().unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let (pool, done) = (&pool, &done);
            let callers: Vec<_> = (0..if timed { 4 } else { 2 })
                .map(|caller| {
                    s.spawn(move || {
                        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ caller ^ u64::from(timed) << 32;
                        for i in 0..120u64 {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            // Killed from outside (untimed only): the one
                            // error a plain call may also end with.
                            let killed = |e: &Error| !timed && matches!(e, Error::WorkerDied { .. });
                            match seed % 20 {
                                0 => assert!(matches!(pool.apply(abort_now, (i,)), Err(Error::WorkerDied { .. }))),
                                1 => {
                                    let r = pool.apply_async(overstay, (i,));
                                    if !timed || seed.is_multiple_of(3) {
                                        if r.cancel() {
                                            assert!(matches!(r.get(), Err(Error::Cancelled)));
                                        } else {
                                            assert!(r.get().is_err_and(|e| killed(&e)), "{i}");
                                        }
                                    } else {
                                        assert!(matches!(r.get(), Err(Error::TaskTimeout { .. })), "{i}");
                                    }
                                }
                                // Around the direct path's size limit (16 KiB) and far over.
                                2 | 3 => {
                                    let n = [16 * 1024 - 40, 16 * 1024 + 1, 300_000][(seed / 20 % 3) as usize];
                                    let bytes: Vec<u8> = (0..n).map(|k| (k as u64 * 31 + i) as u8).collect();
                                    let want = (n, bytes.iter().map(|b| *b as u64).sum());
                                    match pool.apply(echo_sum, (serde_bytes::ByteBuf::from(bytes),)) {
                                        Ok(got) => assert_eq!(got, want),
                                        Err(e) => assert!(killed(&e), "{e}"),
                                    }
                                }
                                // Answers around the mailbox's limit (64 KiB) and over.
                                4 | 5 => {
                                    let n = [64 * 1024 - 64, 64 * 1024 + 1, 200_000][(seed / 20 % 3) as usize];
                                    match pool.apply(expand, (n, i)) {
                                        Ok(got) => assert!(
                                            got.iter().enumerate().all(|(k, b)| *b == (k as u64 * 7 + i) as u8)
                                                && got.len() == n
                                        ),
                                        Err(e) => assert!(killed(&e), "{e}"),
                                    }
                                }
                                _ => match pool.apply(inc, (i * 1000 + caller,)) {
                                    Ok(got) => assert_eq!(got, i * 1000 + caller + 1),
                                    Err(e) => assert!(killed(&e), "{e}"),
                                },
                            }
                        }
                    })
                })
                .collect();
            let killer = (!timed).then(|| {
                s.spawn(move || {
                    let mut killed = Vec::new();
                    let mut seed = 0x2545_f491_4f6c_dd1du64;
                    loop {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        std::thread::sleep(Duration::from_micros(5000 + seed % 20_000));
                        if done.load(std::sync::atomic::Ordering::SeqCst) {
                            return killed;
                        }
                        let pids = pool.pids();
                        if let Some(pid) = pids.get((seed / 7) as usize % pids.len().max(1)) {
                            // SAFETY: a signal to a pid; the worst a reused
                            // pid could suffer is this test's own bug.
                            if unsafe { libc::kill(*pid, libc::SIGKILL) } == 0 {
                                killed.push(*pid);
                            }
                        }
                    }
                })
            });
            for c in callers {
                c.join().unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(killer) = killer {
                let killed = killer.join().unwrap();
                // Every worker killed has been noticed and replaced before
                // the last map (a task sent to a worker dead but not yet
                // noticed fails with its death).
                let until = std::time::Instant::now() + GUARD;
                loop {
                    let stats = pool.stats();
                    let reaped: Vec<i32> =
                        stats.workers.iter().flat_map(|w| w.restarts.iter().map(|r| r.pid)).collect();
                    if killed.iter().all(|pid| reaped.contains(pid)) {
                        break;
                    }
                    assert!(std::time::Instant::now() < until, "killed workers never noticed");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let all = pool.map(inc, 0..100u64).unwrap_or_else(|e| panic!("timed {timed}: {e:?}"));
        assert_eq!(all, (1..101u64).collect::<Vec<_>>());
        pool.close();
        pool.join().unwrap();
    }
}

/// `buffersize` bounds how far ahead of the consumer the input is read, in
/// tasks of `chunksize` calls, ordered or not, over an endless input.
#[test]
fn imap_buffersize_bounds_the_read_ahead() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = Pool::new(2).unwrap();
    for (tasks, chunk) in [(1usize, 1usize), (3, 1), (2, 5)] {
        for ordered in [true, false] {
            let read = AtomicUsize::new(0);
            let input = (0u64..).inspect(|_| {
                read.fetch_add(1, Ordering::SeqCst);
            });
            let it = if ordered {
                pool.imap_chunksize(inc, input, chunk)
            } else {
                pool.imap_unordered_chunksize(inc, input, chunk)
            };
            let mut got = Vec::new();
            for (yielded, r) in it.buffersize(tasks).take(200).enumerate() {
                got.push(r.unwrap());
                let ahead = read.load(Ordering::SeqCst) - yielded;
                assert!(ahead <= tasks * chunk, "{ahead} read ahead with {tasks} tasks of {chunk}");
            }
            if ordered {
                assert_eq!(got, (1..=200u64).collect::<Vec<_>>());
            } else {
                // Any 200 of what was read, each once.
                let read = read.load(Ordering::SeqCst) as u64;
                got.sort();
                got.dedup();
                assert_eq!(got.len(), 200);
                assert!(got.iter().all(|v| (1..=read).contains(v)), "{got:?} from {read} read");
            }
        }
    }
}

/// A call made just before `close` completes, whichever way it went to a
/// worker (straight to an idle one, or through the queue): close lets
/// accepted work finish.
#[test]
fn a_call_made_just_before_close_completes() {
    for _ in 0..300 {
        let pool = Pool::new(2).unwrap();
        // Both workers up; one answers while the other is idle, on offer.
        assert_eq!(pool.map_chunksize(inc, 0..4u64, 1).unwrap(), [1, 2, 3, 4]);
        assert_eq!(pool.apply(inc, (0,)).unwrap(), 1);
        let r = pool.apply_async(inc, (1,));
        pool.close();
        pool.join().unwrap();
        assert_eq!(r.get().unwrap(), 2);
    }
}

fn fails_on_seven(x: u32) -> u32 {
    assert_ne!(x, 7, "seven is refused");
    x
}

fn fails_on_pair(a: u32, b: u32) -> u32 {
    assert!(!(a == 3 && b == 4), "three and four");
    a + b
}

/// A failing call of a map names its index, whatever the chunking and the
/// form; the failure itself is under it (`Error::root`).
#[test]
fn a_failed_item_names_its_index() {
    let p = pool(2, StartMethod::Forkserver);
    for chunk in [1, 3, 100] {
        let e = p.map_chunksize(fails_on_seven, 0..20, chunk).unwrap_err();
        assert_eq!(e.item_index(), Some(7), "chunksize {chunk}: {e}");
        assert!(matches!(e.root(), Error::Panicked { message, .. } if message.contains("seven")), "{e}");
        assert!(e.to_string().starts_with("item 7 (7) failed: "), "{e}");
        assert_eq!(e.item_argument(), Some("7"));
    }
    let e = p.starmap(fails_on_pair, [(1, 2), (3, 4), (5, 6)]).unwrap_err();
    assert_eq!(e.item_index(), Some(1));
    let e = p.map_async(fails_on_seven, 5..10).get().unwrap_err();
    assert_eq!(e.item_index(), Some(2), "indices count from the first item of the input");
    for ordered in [true, false] {
        let it = if ordered { p.imap(fails_on_seven, 0..12) } else { p.imap_unordered(fails_on_seven, 0..12) };
        let failed: Vec<Error> = it.filter_map(Result::err).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].item_index(), Some(7));
    }
    // A call that is no item of a map has no index.
    assert_eq!(p.apply(fails_on_seven, (7,)).unwrap_err().item_index(), None);
}

/// A worker's anonymous memory, in KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn anonymous_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let line = s.lines().find(|l| l.starts_with("Anonymous:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A worker that has nothing left to do gives back the heap that big
/// chunks grew (about 10 MiB here, kept by the allocator otherwise): an
/// idle pool costs what it needs, not what its largest task needed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn an_idle_worker_gives_back_what_big_chunks_grew() {
    let pool = Pool::new(1).unwrap();
    let pid = pool.apply(pid_of, (0,)).unwrap();
    let before = anonymous_kib(pid);
    assert_eq!(pool.map(inc, 0..1_000_000u64).unwrap().len(), 1_000_000);
    let until = Instant::now() + GUARD;
    loop {
        let now = anonymous_kib(pid);
        if now < before + 2048 {
            break;
        }
        assert!(Instant::now() < until, "the idle worker still holds {now} KiB (it started with {before})");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Blocks kept between freed ones, so that only a trim (not `free`
/// itself) can give the freed pages back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
static PINNED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// Grows the worker's heap by 64 MiB in small blocks and frees all but
/// every 64th; its argument counts as traffic (it must be over the
/// worker's trim threshold). What the worker holds then, in KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fragment(arg: Vec<u8>) -> u64 {
    let blocks: Vec<Vec<u8>> = (0..16 * 1024).map(|i| vec![i as u8; 4000]).collect();
    PINNED.lock().unwrap().extend(blocks.into_iter().step_by(64));
    drop(arg);
    anonymous_kib(os::getpid())
}

/// A worker gives back the heap a big call grew at its next idle moment,
/// even when more work came before it found itself idle (the trim put off
/// then must not be forgotten).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_worker_gives_back_its_heap_once_idle_even_after_more_work() {
    let pool = pool(1, StartMethod::Fork);
    let pid = pool.apply(pid_of, (0,)).unwrap();
    let before = anonymous_kib(pid);
    let grown = pool.apply(fragment, (vec![7u8; 256 << 10],)).unwrap();
    // At once, through the pool's thread (two calls do not go straight to
    // a worker): the worker meets them instead of its idle moment.
    assert_eq!(pool.map(inc, [1, 2]).unwrap(), [2, 3]);
    assert!(grown >= before + (48 << 10), "the heap did not grow: {before} -> {grown} KiB");
    let guard = Instant::now() + GUARD;
    while anonymous_kib(pid) > before + (16 << 10) {
        assert!(Instant::now() < guard, "the worker kept its heap: {before} -> {} KiB", anonymous_kib(pid));
        std::thread::yield_now();
    }
}
