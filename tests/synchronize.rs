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
    let (mut a, b) = multiproc::Pipe(true).unwrap();
    b.send(&Lock::new().unwrap()).unwrap();
    assert!(a.recv::<RLock>().is_err());
}
