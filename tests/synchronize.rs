//! Locks across processes, and what happens when a holder dies.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use common::{GUARD, each_method, join, sleep_forever};
use multiproc::{Acquired, Error, Handle, Lock, Pool, Process, RLock, StartMethod};

fn critical(lock: Lock, out: Handle, rounds: u32) {
    let mut out = out.into_file();
    let me = multiproc::os::getpid();
    for _ in 0..rounds {
        let _held = lock.lock().unwrap();
        // Separate writes: without the lock, another process's lines could
        // come between them.
        out.write_all(format!("enter {me}\n").as_bytes()).unwrap();
        std::thread::yield_now();
        out.write_all(format!("leave {me}\n").as_bytes()).unwrap();
    }
}

#[test]
fn only_one_process_at_a_time_holds_the_lock() {
    each_method(|m| {
        let lock = Lock::new().unwrap();
        let (mut reader, writer) = std::io::pipe().unwrap();
        let mut children: Vec<_> = (0..4)
            .map(|_| {
                let mut p = Process::new(critical, (lock.clone(), Handle::from(writer.try_clone().unwrap()), 50))
                    .with_start_method(m);
                p.start().unwrap();
                p
            })
            .collect();
        drop(writer);
        for p in &mut children {
            join(p).unwrap();
        }
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4 * 50 * 2, "{m}");
        for pair in lines.chunks(2) {
            let (enter, leave) = (pair[0].strip_prefix("enter "), pair[1].strip_prefix("leave "));
            assert!(enter.is_some() && enter == leave, "{m}: interleaved {pair:?}");
        }
    });
}

fn hold_and_report(lock: Lock, out: Handle) {
    let got = lock.acquire().unwrap();
    assert_eq!(got, Acquired::Normally);
    writeln!(out.into_file(), "holding").unwrap();
    sleep_forever();
}

#[test]
fn a_holder_that_dies_does_not_deadlock_the_rest() {
    each_method(|m| {
        for recursive in [false, true] {
            let (reader, writer) = std::io::pipe().unwrap();
            let lock = Lock::new().unwrap();
            let rlock = RLock::new().unwrap();
            let mut holder = if recursive {
                Process::new(hold_and_report_r, (rlock.clone(), Handle::from(writer)))
            } else {
                Process::new(hold_and_report, (lock.clone(), Handle::from(writer)))
            }
            .with_start_method(m);
            holder.start().unwrap();
            let mut line = String::new();
            BufReader::new(reader).read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "holding");
            // Held elsewhere: a bounded wait gives up.
            let busy = if recursive {
                rlock.acquire_timeout(Duration::from_millis(50))
            } else {
                lock.acquire_timeout(Duration::from_millis(50))
            };
            assert_eq!(busy.unwrap(), None, "{m}");
            holder.kill().unwrap();
            assert!(join(&mut holder).is_err());
            // Python would wait forever here.
            let got = if recursive { rlock.acquire_timeout(GUARD) } else { lock.acquire_timeout(GUARD) };
            assert_eq!(got.unwrap(), Some(Acquired::AfterOwnerDied), "{m} recursive={recursive}");
            if recursive {
                rlock.release().unwrap();
                assert_eq!(rlock.acquire().unwrap(), Acquired::Normally);
                rlock.release().unwrap();
            } else {
                lock.release().unwrap();
                assert_eq!(lock.acquire().unwrap(), Acquired::Normally);
                lock.release().unwrap();
            }
        }
    });
}

fn hold_and_report_r(lock: RLock, out: Handle) {
    lock.acquire().unwrap();
    lock.acquire().unwrap();
    writeln!(out.into_file(), "holding").unwrap();
    sleep_forever();
}

#[test]
fn ownership_rules() {
    let lock = Lock::new().unwrap();
    assert!(matches!(lock.release(), Err(Error::NotOwner)));
    lock.acquire().unwrap();
    assert!(matches!(lock.acquire(), Err(Error::AlreadyHeld)));
    assert_eq!(lock.try_acquire().unwrap(), None);
    let other = lock.clone();
    let released_elsewhere = std::thread::spawn(move || other.release()).join().unwrap();
    assert!(matches!(released_elsewhere, Err(Error::NotOwner)));
    lock.release().unwrap();

    let rlock = RLock::new().unwrap();
    for _ in 0..3 {
        rlock.acquire().unwrap();
    }
    for _ in 0..3 {
        rlock.release().unwrap();
    }
    assert!(matches!(rlock.release(), Err(Error::NotOwner)));
}

#[test]
fn a_guard_releases_when_dropped() {
    let lock = Lock::new().unwrap();
    {
        let g = lock.lock().unwrap();
        assert_eq!(g.acquired(), Acquired::Normally);
        assert_eq!(lock.try_acquire().unwrap(), None);
    }
    assert!(lock.try_acquire().unwrap().is_some());
    lock.release().unwrap();
}

fn try_it(lock: Lock) -> bool {
    let free = lock.try_acquire().unwrap().is_some();
    if free {
        lock.release().unwrap();
    }
    free
}

#[test]
fn locks_reach_running_pool_workers() {
    let pool = Pool::builder().processes(2).start_method(StartMethod::Forkserver).build().unwrap();
    pool.map(|x: u8| x, 0..4).unwrap();
    let lock = Lock::new().unwrap();
    assert!(pool.apply(try_it, (lock.clone(),)).unwrap());
    lock.acquire().unwrap();
    assert!(!pool.apply(try_it, (lock.clone(),)).unwrap());
    lock.release().unwrap();
}

#[test]
fn a_lock_and_an_rlock_are_not_interchangeable() {
    let (a, b) = multiproc::Pipe(true).unwrap();
    b.send(&Lock::new().unwrap()).unwrap();
    assert!(a.recv::<RLock>().is_err());
}

fn limited(sem: multiproc::Semaphore, inside: multiproc::Value<i32>, most: multiproc::Value<i32>) {
    for _ in 0..20 {
        sem.acquire().unwrap();
        let now = inside.update(|x| x + 1).unwrap();
        most.update(|m| m.max(now)).unwrap();
        std::thread::yield_now();
        inside.update(|x| x - 1).unwrap();
        sem.release().unwrap();
    }
}

#[test]
fn a_semaphore_bounds_how_many_are_inside() {
    each_method(|m| {
        let sem = multiproc::Semaphore::new(2).unwrap();
        let inside = multiproc::Value::new(0i32).unwrap();
        let most = multiproc::Value::new(0i32).unwrap();
        let mut ps: Vec<_> = (0..4)
            .map(|_| Process::new(limited, (sem.clone(), inside.clone(), most.clone())).with_start_method(m))
            .collect();
        for p in &mut ps {
            p.start().unwrap();
        }
        for p in &mut ps {
            join(p).unwrap();
        }
        assert!(most.get() <= 2 && most.get() >= 1, "{m}: {} inside at once", most.get());
        assert_eq!(sem.get_value().unwrap(), 2);
    });
}

#[test]
fn semaphores_time_out_and_bounded_ones_refuse_extra_releases() {
    let sem = multiproc::Semaphore::new(0).unwrap();
    assert!(!sem.acquire_timeout(Duration::from_millis(20)).unwrap());
    let b = multiproc::BoundedSemaphore::new(2).unwrap();
    assert!(matches!(b.release(), Err(Error::SemaphoreOverflow { bound: 2 })));
    b.acquire().unwrap();
    b.release().unwrap();
    assert_eq!(b.get_value().unwrap(), 2);
}

fn wait_event(e: multiproc::Event, timeout_ms: u64) -> bool {
    e.wait(Some(Duration::from_millis(timeout_ms))).unwrap()
}

#[test]
fn events_wake_other_processes() {
    each_method(|m| {
        let e = multiproc::Event::new().unwrap();
        let mut p = Process::new(wait_event, (e.clone(), 120_000)).with_start_method(m);
        p.start().unwrap();
        e.set().unwrap();
        assert!(join(&mut p).unwrap(), "{m}");
        e.clear().unwrap();
        let mut p = Process::new(wait_event, (e.clone(), 30)).with_start_method(m);
        p.start().unwrap();
        assert!(!join(&mut p).unwrap(), "{m}: a clear event times out");
    });
}

fn meet(b: multiproc::Barrier) -> usize {
    b.wait(Some(GUARD)).unwrap()
}

#[test]
fn a_barrier_releases_all_parties_together() {
    each_method(|m| {
        let b = multiproc::Barrier::new(3).unwrap();
        let mut ps: Vec<_> = (0..2).map(|_| Process::new(meet, (b.clone(),)).with_start_method(m)).collect();
        for p in &mut ps {
            p.start().unwrap();
        }
        let mut indexes = vec![b.wait(Some(GUARD)).unwrap()];
        for p in &mut ps {
            indexes.push(join(p).unwrap());
        }
        indexes.sort();
        assert_eq!(indexes, [0, 1, 2], "{m}");
        // It can be used again.
        assert_eq!(b.parties().unwrap(), 3);
        assert_eq!(b.n_waiting().unwrap(), 0);
    });
    let b = multiproc::Barrier::new(2).unwrap();
    assert!(matches!(b.wait(Some(Duration::from_millis(20))), Err(Error::BrokenBarrier)));
    assert!(b.broken().unwrap());
    assert!(matches!(multiproc::Barrier::new(0), Err(Error::InvalidSize)));
}

#[test]
fn a_condition_needs_its_lock_and_times_out() {
    let c = multiproc::Condition::new().unwrap();
    assert!(matches!(c.wait(Some(Duration::from_millis(10))), Err(Error::NotOwner)));
    let _held = c.lock().unwrap();
    assert!(!c.wait(Some(Duration::from_millis(20))).unwrap());
    assert!(!c.wait_for(|| false, Some(Duration::from_millis(20))).unwrap());
    assert!(c.wait_for(|| true, None).unwrap());
}

fn wait_on(b: multiproc::Barrier) -> Result<usize, String> {
    b.wait(Some(GUARD)).map_err(|e| e.to_string())
}

#[test]
fn reset_breaks_current_waiters_and_reopens_the_barrier() {
    each_method(|m| {
        let b = multiproc::Barrier::new(2).unwrap();
        let mut waiter = Process::new(wait_on, (b.clone(),)).with_start_method(m);
        waiter.start().unwrap();
        // Wait (bounded) until it is waiting, then reset under it.
        let until = std::time::Instant::now() + GUARD;
        while b.n_waiting().unwrap() == 0 {
            assert!(std::time::Instant::now() < until, "{m}: the waiter never arrived");
            std::thread::yield_now();
        }
        b.reset().unwrap();
        assert_eq!(join(&mut waiter).unwrap(), Err("the barrier is broken".to_string()), "{m}");
        assert!(!b.broken().unwrap());
        // It works again.
        let mut waiter = Process::new(wait_on, (b.clone(),)).with_start_method(m);
        waiter.start().unwrap();
        let mine = b.wait(Some(GUARD)).unwrap();
        assert_eq!(mine + join(&mut waiter).unwrap().unwrap(), 1, "{m}");
    });
}

fn signal_when_set(cond: multiproc::Condition, flag: multiproc::Value<bool>) {
    let _held = cond.lock().unwrap();
    flag.set(true);
    cond.notify_all().unwrap();
}

#[test]
fn a_condition_wakes_a_waiter_in_another_process() {
    each_method(|m| {
        let cond = multiproc::Condition::new().unwrap();
        let flag = multiproc::Value::new(false).unwrap();
        let held = cond.lock().unwrap();
        let mut p = Process::new(signal_when_set, (cond.clone(), flag.clone())).with_start_method(m);
        p.start().unwrap();
        // wait_for releases the lock while waiting, so the child can set the flag.
        assert!(cond.wait_for(|| flag.get(), Some(GUARD)).unwrap(), "{m}");
        drop(held);
        join(&mut p).unwrap();
    });
}

/// A lock taken with `acquire` and dropped unreleased: its memory goes, and
/// this thread's list of held robust mutexes must not point there (the next
/// lock would write into unmapped memory and crash). Another lock made
/// before the drop keeps the old address from being reused.
#[test]
fn dropping_a_held_lock_leaves_this_thread_able_to_lock_others() {
    for _ in 0..20 {
        let (held, other) = (Lock::new().unwrap(), Lock::new().unwrap());
        let (rheld, rother) = (RLock::new().unwrap(), RLock::new().unwrap());
        held.acquire().unwrap();
        rheld.acquire().unwrap();
        rheld.acquire().unwrap();
        drop(held);
        drop(rheld);
        other.acquire().unwrap();
        rother.acquire().unwrap();
        other.release().unwrap();
        rother.release().unwrap();
    }
}

fn hold_dropped_lock_in_thread(lock: Lock) -> bool {
    // Taken here, dropped by another thread of this process while held:
    // the holder's list still points into the memory, which must stay.
    let (tx, rx) = std::sync::mpsc::channel();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mine = Lock::new().unwrap();
        lock.acquire().unwrap();
        tx.send(lock).unwrap();
        back_rx.recv().unwrap();
        // Still able to take another robust lock after the other thread
        // dropped the one this thread holds.
        mine.acquire().unwrap();
        mine.release().unwrap();
    });
    drop(rx.recv().unwrap());
    back_tx.send(()).unwrap();
    holder.join().is_ok()
}

#[test]
fn dropping_a_lock_another_thread_holds_keeps_its_memory() {
    let mut p = Process::new(hold_dropped_lock_in_thread, (Lock::new().unwrap(),));
    p.start().unwrap();
    assert!(join(&mut p).unwrap());
}
