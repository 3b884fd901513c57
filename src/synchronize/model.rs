//! The monitor's protocol and the state machines on it (semaphores,
//! events, barriers), and the condition's wait, under loom: the same
//! functions as across processes, over a home of loom's primitives. A lost
//! wake-up shows as a deadlock, which loom reports; two holders of a
//! permit show as a failed assertion.
//!
//! Run with `RUSTFLAGS="--cfg multiproc_loom" cargo test --release --lib
//! synchronize::model` (see `.ci/run`).

use std::sync::atomic::Ordering;

use loom::sync::atomic::{AtomicU32, AtomicU64};
use loom::sync::{Arc, Mutex};

use super::*;
use crate::sys::medium::Waits;
use crate::sys::model::{Park, waits_on_park};
use crate::sys::monitor::{State, Words};

struct Inner {
    state: State<Modeled>,
    /// A condition's word, and the user's lock it goes with.
    cond: AtomicU32,
    user: Mutex<()>,
    park: Park,
}

#[derive(Clone)]
struct Modeled(Arc<Inner>);

waits_on_park!(Modeled, |s| s.0.park);

impl Home for Modeled {
    fn state(&self) -> &State<Modeled> {
        &self.0.state
    }
}

fn monitor(words: Words) -> Monitor<Modeled> {
    Monitor::around(Modeled(Arc::new(Inner {
        state: State::new(Mutex::new(()), words),
        cond: AtomicU32::new(0),
        user: Mutex::new(()),
        park: Park::new(),
    })))
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

/// Runs `f` on `n` threads (each with its own view of the monitor, as each
/// process has) and the main thread; joins them.
fn on_threads(m: &Monitor<Modeled>, n: usize, f: impl Fn(&Monitor<Modeled>) + Send + Sync + 'static) {
    let f = Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (m, f) = (Monitor::around(m.home().clone()), f.clone());
            loom::thread::spawn(move || f(&m))
        })
        .collect();
    f(m);
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn a_semaphore_never_has_more_holders_than_permits() {
    model(|| {
        let m = monitor([1, u64::MAX, 0, 0]);
        let inside = Arc::new(AtomicU64::new(0));
        let i = inside.clone();
        on_threads(&m, 2, move |m| {
            assert!(sem_acquire(m, None).unwrap());
            assert_eq!(i.fetch_add(1, Ordering::SeqCst), 0, "two holders of one permit");
            i.fetch_sub(1, Ordering::SeqCst);
            sem_release(m).unwrap();
        });
        assert_eq!(m.with(|w| w[0]).unwrap(), 1);
    });
}

#[test]
fn every_release_reaches_a_sleeping_acquirer() {
    model(|| {
        // Two sleep for permits that the main thread hands out one by one.
        let m = monitor([0, u64::MAX, 0, 0]);
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let m = Monitor::around(m.home().clone());
                loom::thread::spawn(move || assert!(sem_acquire(&m, None).unwrap()))
            })
            .collect();
        sem_release(&m).unwrap();
        sem_release(&m).unwrap();
        for t in takers {
            t.join().unwrap();
        }
        assert_eq!(m.with(|w| w[0]).unwrap(), 0);
    });
}

#[test]
fn a_bounded_semaphore_refuses_one_release_too_many() {
    model(|| {
        let m = monitor([0, 1, 0, 0]);
        let results = Arc::new(Mutex::new(Vec::new()));
        let r = results.clone();
        on_threads(&m, 1, move |m| {
            let out = sem_release(m);
            r.lock().unwrap().push(matches!(out, Err(Error::SemaphoreOverflow { bound: 1 })));
        });
        let mut got = results.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, [false, true]);
        assert_eq!(m.with(|w| w[0]).unwrap(), 1);
    });
}

#[test]
fn setting_an_event_wakes_every_waiter() {
    model(|| {
        let m = monitor([0; 4]);
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let m = Monitor::around(m.home().clone());
                loom::thread::spawn(move || assert!(event_wait(&m, None).unwrap()))
            })
            .collect();
        event_set(&m).unwrap();
        for w in waiters {
            w.join().unwrap();
        }
    });
}

#[test]
fn a_barrier_releases_each_round_whole() {
    model(|| {
        // Two parties, two rounds: the second round's arrivals must not be
        // mistaken for the first's.
        let m = monitor([2, 0, 0, 0]);
        let indexes = Arc::new(Mutex::new(Vec::new()));
        let ix = indexes.clone();
        on_threads(&m, 1, move |m| {
            for _ in 0..2 {
                let i = barrier_wait(m, None).unwrap();
                ix.lock().unwrap().push(i);
            }
        });
        let mut got = indexes.lock().unwrap().clone();
        got.sort();
        assert_eq!(got, [0, 0, 1, 1]);
        assert_eq!(m.with(|w| (w[1], w[2])).unwrap(), (0, 2));
    });
}

#[test]
fn an_abort_reaches_a_waiting_party() {
    model(|| {
        let m = monitor([2, 0, 0, 0]);
        let waiter = {
            let m = Monitor::around(m.home().clone());
            loom::thread::spawn(move || matches!(barrier_wait(&m, None), Err(Error::BrokenBarrier)))
        };
        barrier_abort(&m).unwrap();
        assert!(waiter.join().unwrap());
    });
}

#[test]
fn a_reset_breaks_the_waiting_round_and_opens_a_new_one() {
    model(|| {
        // The partner either arrived before the reset (broken out of its
        // round, it comes back) or after it; either way it meets this
        // thread in the new round.
        let m = monitor([2, 0, 0, 0]);
        let partner = {
            let m = Monitor::around(m.home().clone());
            loom::thread::spawn(move || match barrier_wait(&m, None) {
                Err(Error::BrokenBarrier) => barrier_wait(&m, None).unwrap(),
                other => other.unwrap(),
            })
        };
        barrier_reset(&m).unwrap();
        let mine = barrier_wait(&m, None).unwrap();
        let theirs = partner.join().unwrap();
        assert_eq!(mine + theirs, 1);
        assert!(!m.with(|w| w[3] & 1 != 0).unwrap(), "broken after a reset");
    });
}

#[test]
fn a_condition_waiter_sees_the_change_it_was_notified_of() {
    model(|| {
        let m = monitor([0; 4]);
        let home = m.home().clone();
        let flag = Arc::new(AtomicU64::new(0));
        let waiter = {
            let (home, flag) = (home.clone(), flag.clone());
            loom::thread::spawn(move || {
                let inner = &home.0;
                let held = std::cell::RefCell::new(Some(inner.user.lock().unwrap()));
                while flag.load(Ordering::Relaxed) == 0 {
                    let unlock = || {
                        held.borrow_mut().take();
                        Ok(())
                    };
                    let relock = || {
                        *held.borrow_mut() = Some(inner.user.lock().unwrap());
                        Ok(())
                    };
                    assert!(cond_wait(&home, &inner.cond, None, unlock, relock).unwrap());
                }
            })
        };
        {
            let _held = home.0.user.lock().unwrap();
            flag.store(1, Ordering::Relaxed);
            home.wake(&home.0.cond, false);
        }
        waiter.join().unwrap();
    });
}
