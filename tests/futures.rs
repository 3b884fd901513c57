//! concurrent.futures in Rust: `wait`, `as_completed`, `Pool::shutdown`,
//! and the pool's worker numbers and pids. Completion order is steered by
//! events the tasks wait for, never by sleeps.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::GUARD;
use multiproc::{CallState, Completion, Error, Event, Pool, ReturnWhen, as_completed, wait};

/// Waits for `go`, then answers `x`.
fn when(go: Event, x: u64) -> u64 {
    assert!(go.wait(Some(GUARD)).unwrap(), "never told to go");
    x
}

fn fail_when(go: Event) -> u64 {
    assert!(go.wait(Some(GUARD)).unwrap(), "never told to go");
    panic!("refused")
}

fn words(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

#[test]
fn wait_first_completed_returns_with_the_first_and_leaves_the_rest() {
    let pool = Pool::new(2).unwrap();
    let (slow, fast) = (Event::new().unwrap(), Event::new().unwrap());
    let calls = vec![pool.apply_async(when, (slow.clone(), 1)), pool.apply_async(when, (fast.clone(), 2))];
    fast.set().unwrap();
    let w = wait(calls, ReturnWhen::FirstCompleted, Some(GUARD));
    assert_eq!((w.done.len(), w.not_done.len()), (1, 1));
    assert_eq!(w.done[0].get().unwrap(), 2);
    assert_eq!(w.not_done[0].state(), CallState::Pending);
    slow.set().unwrap();
    assert_eq!(w.not_done[0].get().unwrap(), 1);
}

#[test]
fn wait_first_exception_returns_at_a_failure_and_not_at_a_cancel() {
    let pool = Pool::new(3).unwrap();
    let (never, fail) = (Event::new().unwrap(), Event::new().unwrap());
    let long = pool.apply_async(when, (never.clone(), 1));
    let cancelled = pool.apply_async(when, (never.clone(), 2));
    assert!(cancelled.cancel());
    let failing = pool.apply_async(fail_when, (fail.clone(),));
    // A cancel alone is no exception: still waiting when the timeout ends.
    let w = wait([&long, &cancelled], ReturnWhen::FirstException, Some(Duration::from_millis(100)));
    assert_eq!((w.done.len(), w.not_done.len()), (1, 1));
    assert_eq!(w.done[0].state(), CallState::Cancelled);
    fail.set().unwrap();
    let w = wait([&long, &cancelled, &failing], ReturnWhen::FirstException, Some(GUARD));
    assert_eq!(w.not_done.len(), 1, "the long call is still running");
    assert!(w.done.iter().any(|c| c.state() == CallState::Failed));
    never.set().unwrap();
    let w = wait([&long, &cancelled, &failing], ReturnWhen::AllCompleted, Some(GUARD));
    assert_eq!(w.done.len(), 3);
    // Without a failure, FirstException waits for them all.
    let go = Event::new().unwrap();
    let calls: Vec<_> = (0..3).map(|i| pool.apply_async(when, (go.clone(), i))).collect();
    go.set().unwrap();
    let w = wait(calls, ReturnWhen::FirstException, Some(GUARD));
    assert_eq!((w.done.len(), w.not_done.len()), (3, 0));
}

#[test]
fn wait_all_completed_over_any_mix_of_pools_and_calls() {
    let (a, b) = (Pool::new(1).unwrap(), Pool::new(2).unwrap());
    let go = Event::new().unwrap();
    let one = a.apply_async(when, (go.clone(), 7));
    let many = b.map_async(words, [1, 2, 3]);
    let mixed: Vec<&dyn Completion> = vec![&one, &many];
    let w = wait(mixed.clone(), ReturnWhen::AllCompleted, Some(Duration::from_millis(50)));
    assert_eq!(w.not_done.len(), 1, "one call waits for its event");
    go.set().unwrap();
    let w = wait(mixed, ReturnWhen::AllCompleted, None);
    assert!(w.not_done.is_empty() && w.done.iter().all(|c| c.state() == CallState::Succeeded));
    assert_eq!(one.get().unwrap(), 7);
    assert_eq!(many.get().unwrap(), vec![words(1), words(2), words(3)]);
}

#[test]
fn as_completed_gives_calls_in_the_order_they_finish() {
    let pool = Pool::new(3).unwrap();
    let events: Vec<Event> = (0..3).map(|_| Event::new().unwrap()).collect();
    let calls: Vec<_> = (0..3).map(|i| pool.apply_async(when, (events[i].clone(), i as u64))).collect();
    // Finish them as 2, 0, 1: each set once the one before came out.
    let order = [2usize, 0, 1];
    events[order[0]].set().unwrap();
    let mut seen = Vec::new();
    for (k, call) in as_completed(calls).enumerate() {
        seen.push(call.unwrap().get().unwrap());
        if let Some(next) = order.get(k + 1) {
            events[*next].set().unwrap();
        }
    }
    assert_eq!(seen, [2, 0, 1]);
}

#[test]
fn as_completed_with_a_timeout_ends_with_a_typed_error_and_leaves_the_rest() {
    let pool = Pool::new(2).unwrap();
    let (now, never) = (Event::new().unwrap(), Event::new().unwrap());
    now.set().unwrap();
    let calls = vec![pool.apply_async(when, (never.clone(), 1)), pool.apply_async(when, (now, 2))];
    let start = Instant::now();
    let mut it = as_completed(calls).timeout(Duration::from_millis(200));
    assert_eq!(it.next().unwrap().unwrap().get().unwrap(), 2);
    match it.next() {
        Some(Err(Error::WaitTimeout { unfinished: 1, of: 2 })) => {}
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(it.next().is_none(), "nothing after the timeout");
    let rest = it.remaining();
    assert_eq!(rest.len(), 1);
    never.set().unwrap();
    let last = rest.into_iter().next().unwrap();
    assert_eq!(last.get().unwrap(), 1);
}

#[test]
fn shutdown_cancels_what_has_not_started_and_finishes_the_rest() {
    let pool = Pool::new(1).unwrap();
    let (started, go) = (Event::new().unwrap(), Event::new().unwrap());
    fn started_then(started: Event, go: Event) -> u64 {
        started.set().unwrap();
        when(go, 5)
    }
    let running = pool.apply_async(started_then, (started.clone(), go.clone()));
    assert!(started.wait(Some(GUARD)).unwrap());
    let mut queued: Vec<_> = (0..5).map(|i| pool.apply_async(when, (go.clone(), i))).collect();
    let mapped = pool.map_async(words, [1, 2]);
    // The running call is let go only once the queued ones are cancelled:
    // were it let go first, the worker could start one of them.
    std::thread::scope(|s| {
        let stopping = s.spawn(|| pool.shutdown(true));
        let waiting: Vec<&dyn Completion> =
            queued.iter().map(|q| q as &dyn Completion).chain([&mapped as &dyn Completion]).collect();
        let w = wait(waiting, ReturnWhen::AllCompleted, Some(GUARD));
        let states: Vec<_> = w.done.iter().chain(&w.not_done).map(|c| c.state()).collect();
        // Cancelled by the pool reads as cancelled, as in Python.
        assert!(w.not_done.is_empty() && states.iter().all(|s| *s == CallState::Cancelled), "{states:?}");
        go.set().unwrap();
        stopping.join().unwrap().unwrap();
    });
    assert_eq!(running.get().unwrap(), 5);
    for q in &mut queued {
        assert!(matches!(q.get(), Err(Error::Cancelled)));
    }
    assert!(matches!(mapped.get(), Err(Error::Cancelled)));
    assert!(matches!(pool.apply_async(words, (1,)).get(), Err(Error::PoolNotRunning)));

    // Without cancelling, everything queued runs.
    let pool = Pool::new(1).unwrap();
    let go = Event::new().unwrap();
    let mut queued: Vec<_> = (0..5).map(|i| pool.apply_async(when, (go.clone(), i))).collect();
    go.set().unwrap();
    pool.shutdown(false).unwrap();
    for (i, q) in queued.iter_mut().enumerate() {
        assert_eq!(q.get().unwrap(), i as u64);
    }
}

fn whoami(_: u32) -> (usize, u32) {
    (multiproc::worker_id().expect("in a worker"), std::process::id())
}

fn die_if(x: u32) -> u32 {
    if x == 0 {
        std::process::abort();
    }
    x
}

#[test]
fn worker_ids_and_pids_name_the_workers_and_a_replacement_takes_its_place() {
    let pool = Pool::new(3).unwrap();
    assert_eq!(multiproc::worker_id(), None, "the parent is no worker");
    let seen = pool.map_chunksize(whoami, 0..300, 1).unwrap();
    let ids: BTreeSet<usize> = seen.iter().map(|(id, _)| *id).collect();
    assert!(ids.iter().all(|id| *id < 3), "{ids:?}");
    let pids = pool.pids();
    assert_eq!(pids.len(), 3);
    for (id, pid) in &seen {
        assert_eq!(pids[*id], *pid as i32, "worker {id}'s pid");
    }
    // One dies; its replacement takes its number, with a new pid.
    assert!(matches!(pool.apply(die_if, (0,)), Err(Error::WorkerDied { .. })));
    let until = Instant::now() + GUARD;
    while pool.pids().len() < 3 || pool.pids() == pids {
        assert!(Instant::now() < until, "the dead worker was never replaced");
        std::thread::yield_now();
    }
    let after = pool.pids();
    assert_eq!(after.iter().filter(|p| !pids.contains(p)).count(), 1, "{pids:?} -> {after:?}");
    let seen = pool.map_chunksize(whoami, 0..300, 1).unwrap();
    for (id, pid) in &seen {
        assert!(*id < 3);
        assert_eq!(after[*id], *pid as i32);
    }
    pool.close();
    pool.join().unwrap();
    assert!(pool.pids().is_empty(), "no workers once stopped");
}

struct Counter {
    worker: usize,
    calls: u64,
}

fn make_counter() -> Counter {
    Counter { worker: multiproc::worker_id().expect("made in a worker"), calls: 0 }
}

fn count(c: &mut Counter, x: u64) -> (usize, u64, u64) {
    c.calls += 1;
    (c.worker, c.calls, x)
}

fn count_pair(c: &mut Counter, a: u64, b: u64) -> u64 {
    c.calls += 1;
    a + b
}

fn failing_make() -> Counter {
    panic!("no model today")
}

/// Each worker makes its state once; every task gets it by `&mut`, through
/// every kind of call; a replacement worker makes its own; a maker that
/// panics fails the tasks with a typed error; a task wanting a state the
/// pool lacks says so.
#[test]
fn worker_state_is_made_once_per_worker_and_handed_to_each_task() {
    let pool = Pool::builder().processes(2).worker_state(make_counter).build().unwrap();
    let out = pool.map_chunksize(multiproc::WithState::new(count), 0..200u64, 1).unwrap();
    // Per worker, its calls were counted 1, 2, 3, ... with no gap.
    for w in 0..2 {
        let mut calls: Vec<u64> = out.iter().filter(|(id, _, _)| *id == w).map(|(_, n, _)| *n).collect();
        calls.sort();
        assert_eq!(calls, (1..=calls.len() as u64).collect::<Vec<_>>(), "worker {w}");
    }
    assert_eq!(out.iter().map(|(_, _, x)| x).sum::<u64>(), (0..200u64).sum::<u64>());
    assert_eq!(pool.starmap(multiproc::WithState::new(count_pair), [(1, 2), (3, 4)]).unwrap(), [3, 7]);
    let lazy: Vec<u64> = pool.imap(multiproc::WithState::new(count), 0..10u64).map(|r| r.unwrap().2).collect();
    assert_eq!(lazy, (0..10).collect::<Vec<_>>());
    assert_eq!(pool.apply_async(multiproc::WithState::new(count), (5,)).get().unwrap().2, 5);

    let broken = Pool::builder().processes(1).worker_state(failing_make).build().unwrap();
    match broken.apply(multiproc::WithState::new(count), (1,)) {
        Err(Error::InitializerFailed(why)) => assert!(why.contains("no model today"), "{why}"),
        other => panic!("{other:?}"),
    }

    let stateless = Pool::new(1).unwrap();
    match stateless.apply(multiproc::WithState::new(count), (1,)) {
        Err(Error::Panicked { message, .. }) => assert!(message.contains("worker_state"), "{message}"),
        other => panic!("{other:?}"),
    }
}

fn double(x: u64) -> u64 {
    2 * x
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// `on_progress` hears every result of every map-like call once, counting
/// up to the total (when known), and changes no result.
#[test]
fn on_progress_reports_every_result_of_every_map_like_call() {
    use std::sync::{Arc, Mutex};
    type Reports = Vec<(usize, Option<usize>)>;
    let seen: Arc<Mutex<Reports>> = Arc::default();
    let log = seen.clone();
    let pool = Pool::builder()
        .processes(2)
        .on_progress(move |done, total| log.lock().unwrap().push((done, total)))
        .build()
        .unwrap();
    let take = || std::mem::take(&mut *seen.lock().unwrap());
    let counted = |n: usize, total: Option<usize>| (1..=n).map(|d| (d, total)).collect::<Vec<_>>();

    assert_eq!(pool.map_chunksize(double, 0..100u64, 7).unwrap(), (0..100u64).map(|x| 2 * x).collect::<Vec<_>>());
    assert_eq!(take(), counted(100, Some(100)));
    assert_eq!(pool.starmap(add, [(1, 2), (3, 4), (5, 6)]).unwrap(), [3, 7, 11]);
    assert_eq!(take(), counted(3, Some(3)));
    let v: Vec<u64> = pool.imap(double, 0..50u64).map(Result::unwrap).collect();
    assert_eq!(v.len(), 50);
    assert_eq!(take(), counted(50, Some(50)));
    let n = pool.imap_unordered(double, (0u64..).take_while(|x| *x < 30)).count();
    assert_eq!(n, 30);
    assert_eq!(take(), counted(30, None), "an input of unknown length");
    pool.map_async(double, 0..10u64).get().unwrap();
    assert_eq!(take(), counted(10, Some(10)));
}

#[cfg(feature = "progress")]
#[test]
fn a_progress_bar_changes_no_result_and_no_order() {
    fn triple(x: u64) -> u64 {
        x * 3
    }
    let pool = Pool::builder().processes(2).progress_bar().build().unwrap();
    assert_eq!(pool.map(triple, 0..100).unwrap(), (0..100).map(|x| x * 3).collect::<Vec<_>>());
    let ordered: Vec<u64> = pool.imap(triple, 0..50).map(Result::unwrap).collect();
    assert_eq!(ordered, (0..50).map(|x| x * 3).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool.imap_unordered(triple, 0..50).map(Result::unwrap).collect();
    unordered.sort_unstable();
    assert_eq!(unordered, ordered);
    assert_eq!(pool.starmap(|a: u64, b: u64| a + b, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
}

fn report(c: &mut Counter) -> (usize, u64) {
    (c.worker, c.calls)
}

fn report_badly(_: &mut Counter) -> (usize, u64) {
    panic!("no report today")
}

/// The exit hook runs on each worker's state as it leaves in order (close
/// and join, or its task quota), and the parent collects what it returned;
/// a panicking hook is a typed error; a terminated pool's workers run none.
#[test]
fn worker_exit_results_come_back_to_the_parent() {
    let pool = Pool::builder().processes(2).worker_state(make_counter).worker_exit(report).build().unwrap();
    let n = pool.map_chunksize(multiproc::WithState::new(count), 0..100u64, 1).unwrap().len();
    pool.close();
    pool.join().unwrap();
    let mut results: Vec<(usize, u64)> = pool.exit_results().into_iter().map(Result::unwrap).collect();
    results.sort_unstable();
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(results.iter().map(|r| r.1).sum::<u64>(), n as u64, "every call counted once");
    assert!(pool.exit_results::<(usize, u64)>().is_empty(), "taken");

    // A quota of 5 tasks: every worker that leaves for it reports 5.
    let pool = Pool::builder()
        .processes(1)
        .maxtasksperchild(5)
        .worker_state(make_counter)
        .worker_exit(report)
        .build()
        .unwrap();
    pool.map_chunksize(multiproc::WithState::new(count), 0..20u64, 1).unwrap();
    pool.close();
    pool.join().unwrap();
    let results: Vec<(usize, u64)> = pool.exit_results().into_iter().map(Result::unwrap).collect();
    assert!(results.len() >= 4, "{results:?}");
    assert_eq!(results.iter().map(|r| r.1).sum::<u64>(), 20);

    let pool = Pool::builder().processes(1).worker_state(make_counter).worker_exit(report_badly).build().unwrap();
    pool.apply(multiproc::WithState::new(count), (1,)).unwrap();
    pool.close();
    pool.join().unwrap();
    let results = pool.exit_results::<(usize, u64)>();
    assert!(matches!(&results[..], [Err(Error::Panicked { message, .. })] if message == "no report today"));

    let pool = Pool::builder().processes(1).worker_state(make_counter).worker_exit(report).build().unwrap();
    pool.apply(multiproc::WithState::new(count), (1,)).unwrap();
    pool.terminate();
    pool.join().unwrap();
    assert!(pool.exit_results::<(usize, u64)>().is_empty());
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn stats_count_every_call_and_name_each_restart() {
    let pool = Pool::new(2).unwrap();
    let seen = pool.map_chunksize(whoami, 0..200, 1).unwrap();
    // A chunk encoded as one value counts as its calls.
    assert_eq!(pool.map_chunksize(die_if, 1..101, 10).unwrap().len(), 100);
    assert_eq!(pool.apply(nap_ms, (60,)).unwrap(), 60);
    let stats = pool.stats();
    assert_eq!(stats.workers.len(), 2, "{stats:?}");
    assert_eq!(stats.workers.iter().map(|w| w.tasks).sum::<u64>(), 301, "{stats:?}");
    for w in &stats.workers {
        let mine = seen.iter().filter(|(id, _)| *id == w.id).count() as u64;
        assert!(w.tasks >= mine, "worker {} ran {mine} of the first map alone: {stats:?}", w.id);
        assert_eq!(w.pid, Some(pool.pids()[w.id]));
        assert!(w.startup.is_some() && w.restarts.is_empty(), "{stats:?}");
    }
    assert!(stats.startup.is_some());
    let slowest = &stats.slowest[0];
    assert!(slowest.took >= Duration::from_millis(60) && slowest.calls == 1 && slowest.index == 0, "{stats:?}");
    assert!(stats.workers[slowest.worker].busy >= Duration::from_millis(60), "{stats:?}");
    assert!(stats.slowest.windows(2).all(|w| w[0].took >= w[1].took));

    // A death is a restart, with its reason, in the place of the worker
    // that died; the replacement's pid is the place's pid.
    assert!(matches!(pool.apply(die_if, (0,)), Err(Error::WorkerDied { .. })));
    let stats = pool.stats();
    let died: Vec<_> = stats.workers.iter().flat_map(|w| w.restarts.iter().map(move |r| (w.id, r))).collect();
    assert_eq!(died.len(), 1, "{stats:?}");
    let (place, restart) = died[0];
    match &restart.reason {
        multiproc::RestartReason::Died { exitcode, how } => {
            assert_eq!(*exitcode, -libc::SIGABRT);
            assert!(how.contains("SIGABRT"), "{how}");
        }
        other => panic!("{other:?}"),
    }
    assert_ne!(stats.workers[place].pid, Some(restart.pid));
    let table = stats.to_string();
    assert_eq!(table.lines().filter(|l| l.contains("SIGABRT")).count(), 1, "{table}");
    assert!(table.lines().next().unwrap().contains("worker"), "{table}");
    pool.close();
    pool.join().unwrap();
    let stats = pool.stats();
    assert!(stats.workers.iter().all(|w| w.pid.is_none()), "{stats:?}");
    assert_eq!(stats.workers.iter().map(|w| w.restarts.len()).sum::<usize>(), 1, "closing is no restart: {stats:?}");
}

#[test]
fn stats_say_when_a_worker_was_replaced_for_its_quota_or_its_time_limit() {
    let pool = Pool::builder().processes(1).maxtasksperchild(1).build().unwrap();
    pool.map_chunksize(whoami, 0..3, 1).unwrap();
    let stats = pool.stats();
    let reasons: Vec<_> = stats.workers[0].restarts.iter().map(|r| r.reason.clone()).collect();
    assert!(reasons.len() >= 2 && reasons.iter().all(|r| *r == multiproc::RestartReason::MaxTasks), "{stats:?}");
    assert_eq!(stats.workers[0].tasks, 3);

    let pool = Pool::builder().processes(1).task_timeout(Duration::from_millis(100)).build().unwrap();
    assert!(matches!(pool.apply(nap_ms, (GUARD.as_millis() as u64,)), Err(Error::TaskTimeout { .. })));
    let restarts = &pool.stats().workers[0].restarts;
    assert_eq!(restarts.len(), 1);
    assert_eq!(restarts[0].reason, multiproc::RestartReason::TimedOut);
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Order {
    id: u32,
    items: Vec<String>,
}

fn ship(order: Order) -> u32 {
    assert!(!order.items.is_empty(), "order {} is empty", order.id);
    order.id
}

fn ship_or_die(order: Order) -> u32 {
    if order.items.is_empty() {
        std::process::abort();
    }
    order.id
}

fn pair(id: u32, name: String) -> u32 {
    assert_ne!(name, "bad");
    id
}

fn orders() -> Vec<Order> {
    (0..12).map(|id| Order { id, items: if id == 7 { Vec::new() } else { vec![format!("book {id}")] } }).collect()
}

#[test]
fn a_failed_calls_error_shows_its_index_and_argument() {
    let pool = Pool::new(2).unwrap();
    let shown = "Order { id: 7, items: [] }";
    // One call per task, and chunks encoded as one value (the failing call
    // in the middle of its chunk).
    for chunksize in [1, 4, 12] {
        let e = pool.map_chunksize(ship, orders(), chunksize).unwrap_err();
        assert_eq!((e.item_index(), e.item_argument()), (Some(7), Some(shown)), "chunksize {chunksize}: {e}");
        assert!(matches!(e.root(), Error::Panicked { message, .. } if message == "order 7 is empty"));
        assert!(e.to_string().starts_with(&format!("item 7 ({shown}) failed: ")), "{e}");
    }
    // imap names each failed call (its default: one call per task).
    let failed: Vec<_> = pool.imap(ship, orders()).filter_map(|r| r.err()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].item_index(), failed[0].item_argument()), (Some(7), Some(shown)));
    // starmap shows the whole tuple.
    let e = pool.starmap(pair, [(1, "good".to_string()), (2, "bad".to_string())]).unwrap_err();
    assert_eq!((e.item_index(), e.item_argument()), (Some(1), Some("(2, \"bad\")")));
    // A worker that dies in a call: the calls of its task name themselves.
    let e = pool.map_chunksize(ship_or_die, orders(), 1).unwrap_err();
    assert_eq!((e.item_index(), e.item_argument()), (Some(7), Some(shown)), "{e}");
    assert!(matches!(e.root(), Error::WorkerDied { .. }), "{e}");
    // Only the failed call is shown, however long the others are.
    let big = Order { id: 9, items: (0..1000).map(|i| i.to_string()).collect() };
    let e = pool.map(ship, [big, Order { id: 0, items: Vec::new() }]).unwrap_err();
    assert_eq!(e.item_argument(), Some("Order { id: 0, items: [] }"));
    // A long argument is cut.
    fn first_empty(words: Vec<String>) -> usize {
        assert!(words.iter().all(|w| !w.is_empty()));
        words.len()
    }
    let words: Vec<String> = (0..1000).map(|i| if i == 999 { String::new() } else { format!("word{i}") }).collect();
    let e = pool.map(first_empty, [words]).unwrap_err();
    let argument = e.item_argument().unwrap();
    assert!(argument.starts_with("[\"word0\", \"word1\"") && argument.ends_with('…'), "{argument}");
    assert!(argument.chars().count() <= 121, "{argument}");
}
