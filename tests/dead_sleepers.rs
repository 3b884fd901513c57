//! A process killed while it sleeps in a wait must not jam the object for
//! the others. (Process-shared pthread condition variables do: the dead
//! waiter stays in the condvar's books and a later signal can wait for it
//! forever. Ours sleep on futex words, which remember nobody.)

mod common;

use std::time::{Duration, Instant};

use common::{GUARD, join};
use multiproc::{Condition, Event, Process, Queue, Semaphore, Value};

/// Waits (bounded) until the main thread of `pid` sleeps in a futex.
fn wait_until_asleep(pid: i32) {
    let until = Instant::now() + GUARD;
    loop {
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/wchan")).unwrap_or_default();
        if wchan.contains("futex") {
            return;
        }
        assert!(Instant::now() < until, "{pid} never went to sleep (wchan {wchan:?})");
        std::thread::yield_now();
    }
}

/// Starts `sleeper`, waits until it sleeps, kills it; notifies with no
/// live waiter (`notify_nobody`, which a pthread condvar hands to the dead
/// one); then a second waiter, asleep, must be woken by `wake`.
fn killed_asleep_then<A, B>(
    sleeper: Process<A>,
    notify_nobody: impl FnOnce(),
    waiter: Process<B>,
    wake: impl FnOnce(),
) -> B
where
    A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    B: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let mut sleeper = sleeper;
    sleeper.start().unwrap();
    wait_until_asleep(sleeper.pid().unwrap());
    sleeper.kill().unwrap();
    assert!(join(&mut sleeper).is_err());
    notify_nobody();
    let mut waiter = waiter;
    waiter.start().unwrap();
    wait_until_asleep(waiter.pid().unwrap());
    wake();
    join(&mut waiter).unwrap()
}

fn get_one(q: Queue<u32>) -> u32 {
    q.get().unwrap()
}

#[test]
fn a_queue_consumer_killed_asleep() {
    let q = Queue::new(0).unwrap();
    let got = killed_asleep_then(
        Process::new(get_one, (q.clone(),)),
        || {
            q.put(&1).unwrap();
            assert_eq!(q.get().unwrap(), 1);
        },
        Process::new(get_one, (q.clone(),)),
        || q.put(&7).unwrap(),
    );
    assert_eq!(got, 7);
}

fn wait_event(e: Event) -> bool {
    e.wait(None).unwrap()
}

#[test]
fn an_event_waiter_killed_asleep() {
    let e = Event::new().unwrap();
    let woke = killed_asleep_then(
        Process::new(wait_event, (e.clone(),)),
        || {
            e.set().unwrap();
            e.clear().unwrap();
        },
        Process::new(wait_event, (e.clone(),)),
        || e.set().unwrap(),
    );
    assert!(woke);
}

fn take(s: Semaphore) -> bool {
    s.acquire().unwrap();
    true
}

#[test]
fn a_semaphore_waiter_killed_asleep() {
    let s = Semaphore::new(0).unwrap();
    let took = killed_asleep_then(
        Process::new(take, (s.clone(),)),
        || {
            s.release().unwrap();
            s.acquire().unwrap();
        },
        Process::new(take, (s.clone(),)),
        || s.release().unwrap(),
    );
    assert!(took);
}

fn wait_flag(c: Condition, flag: Value<bool>) -> bool {
    let _held = c.lock().unwrap();
    c.wait_for(|| flag.get(), Some(Duration::from_secs(600))).unwrap()
}

#[test]
fn a_condition_waiter_killed_asleep() {
    let c = Condition::new().unwrap();
    let flag = Value::new(false).unwrap();
    let saw = killed_asleep_then(
        Process::new(wait_flag, (c.clone(), flag.clone())),
        || {
            let _held = c.lock().unwrap();
            c.notify_all().unwrap();
        },
        Process::new(wait_flag, (c.clone(), flag.clone())),
        || {
            let _held = c.lock().unwrap();
            flag.set(true);
            c.notify_all().unwrap();
        },
    );
    assert!(saw);
}

/// `first` goes to sleep, then `second`; `wake` hands out one wake-up,
/// which goes to the earliest sleeper, `first`, killed at once: often
/// before it could act on it (the kernel does not hand a dead wakee's
/// wake-up on; our sleepers look again by themselves). `second` must get
/// what was meant for a sleeper either way. (Stopping `first` beforehand
/// would take it off the futex, so the race is run as it comes: once
/// `first` has ended, `again` is told whether it finished, and hands
/// `second` its own if `first` took what was meant for a sleeper.)
fn woken_then_killed<A, B>(
    mut first: Process<A>,
    mut second: Process<B>,
    wake: impl FnOnce(),
    again: impl FnOnce(bool),
) -> B
where
    A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    B: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    first.start().unwrap();
    let pid = first.pid().unwrap();
    wait_until_asleep(pid);
    second.start().unwrap();
    wait_until_asleep(second.pid().unwrap());
    wake();
    // SAFETY: kill takes a pid and a signal number. It may have ended.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    again(join(&mut first).is_ok());
    join(&mut second).unwrap()
}

#[test]
fn a_queue_consumer_killed_just_after_its_wake_up() {
    let q = Queue::new(0).unwrap();
    let got = woken_then_killed(
        Process::new(get_one, (q.clone(),)),
        Process::new(get_one, (q.clone(),)),
        || q.put(&7).unwrap(),
        // Taken by the first (finished, or killed after its get).
        |_| {
            if q.empty().unwrap() {
                q.put(&7).unwrap()
            }
        },
    );
    assert_eq!(got, 7);
}

/// Whether the lock came from a holder that died.
fn take_lock(l: multiproc::Lock) -> bool {
    l.acquire().unwrap() == multiproc::Acquired::AfterOwnerDied
}

#[test]
fn a_lock_waiter_killed_just_after_its_wake_up() {
    let l = multiproc::Lock::new().unwrap();
    l.acquire().unwrap();
    let first_finished = std::cell::Cell::new(false);
    let after_death = woken_then_killed(
        Process::new(take_lock, (l.clone(),)),
        Process::new(take_lock, (l.clone(),)),
        || l.release().unwrap(),
        |finished| first_finished.set(finished),
    );
    // Finished, it let go as its lock was dropped; killed, it may have
    // held the lock already, and then the second is told so.
    assert!(!(after_death && first_finished.get()));
}

#[test]
fn a_condition_waiter_killed_just_after_its_notify() {
    let c = Condition::new().unwrap();
    let flag = Value::new(false).unwrap();
    let saw = woken_then_killed(
        Process::new(wait_flag, (c.clone(), flag.clone())),
        Process::new(wait_flag, (c.clone(), flag.clone())),
        || {
            let _held = c.lock().unwrap();
            flag.set(true);
            c.notify().unwrap();
        },
        // The flag stays set: the second sees it once it looks again.
        |_| {},
    );
    assert!(saw);
}
