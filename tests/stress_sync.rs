//! Many processes through each synchronisation primitive and each kind of
//! shared state, under every start method, with processes SIGKILLed at
//! random instants; at the end, an invariant is checked: no two holders,
//! counts that add up (a kill costs at most what its victim held), and no
//! lost wake-up (every survivor finishes; a hang is caught by the guard).
//! Each run prints its seed; `MULTIPROC_SEED` repeats it.

mod common;

use std::time::{Duration, Instant};

use common::{GUARD, Rng, checksum, join, seed};
use multiproc::{
    Acquired, Array, Barrier, BoundedSemaphore, Condition, Error, Event, Lock, Pool, Process, RLock, RawArray,
    RawValue, Semaphore, SharedMemory, StartMethod, Value,
};

/// How long each run lasts: workers go on until told to stop, and the
/// kills fall at random instants within it.
const RUN: Duration = Duration::from_millis(250);

/// Starts `n` processes made by `make`, SIGKILLs `kills` of them (victims
/// and instants drawn from `rng`) during [`RUN`], then raises `stop`.
fn start_killing<R>(
    method: StartMethod,
    n: usize,
    kills: usize,
    rng: &mut Rng,
    stop: &RawValue<bool>,
    make: impl Fn(usize) -> Process<R>,
) -> Vec<Process<R>>
where
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    // Daemons: a test that fails takes its workers along.
    let mut ps: Vec<Process<R>> = (0..n).map(|i| make(i).with_start_method(method).with_daemon(true)).collect();
    for p in &mut ps {
        p.start().unwrap();
    }
    let start = Instant::now();
    let mut at: Vec<u64> = (0..kills).map(|_| rng.below(RUN.as_micros() as u64)).collect();
    at.sort();
    for t in at {
        std::thread::sleep((start + Duration::from_micros(t)).saturating_duration_since(Instant::now()));
        let _ = ps[rng.below(n as u64) as usize].kill();
    }
    std::thread::sleep((start + RUN).saturating_duration_since(Instant::now()));
    stop.set(true);
    ps
}

/// Joins all: `Some` result for each that finished, `None` for each killed.
fn finish<R>(mut ps: Vec<Process<R>>) -> Vec<Option<R>>
where
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    ps.iter_mut()
        .map(|p| match join(p) {
            Ok(r) => Some(r),
            Err(Error::Killed { signal: libc::SIGKILL, .. }) => None,
            Err(e) => panic!("{e}"),
        })
        .collect()
}

fn run_killing<R>(
    method: StartMethod,
    n: usize,
    kills: usize,
    rng: &mut Rng,
    make: impl Fn(usize, RawValue<bool>) -> Process<R>,
) -> Vec<Option<R>>
where
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let stop = RawValue::new(false).unwrap();
    finish(start_killing(method, n, kills, rng, &stop, |i| make(i, stop.clone())))
}

fn each_seeded(test: impl Fn(StartMethod, &mut Rng)) {
    let seed = seed();
    for m in StartMethod::ALL {
        eprintln!("{m}: seed {seed} (MULTIPROC_SEED={seed} repeats it)");
        test(m, &mut Rng(seed | 1));
    }
}

/// What a lock protects in these tests: a counter updated in two steps,
/// each process's own count, and the holder's tag (0: nobody), which a
/// second holder would find taken.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Guarded {
    counter: RawValue<u64>,
    mine: RawArray<u64>,
    holder: RawValue<u32>,
    /// Holders that found another inside, or found their tag gone.
    faults: RawValue<u64>,
    /// Acquisitions that reported a dead previous holder.
    after_death: RawValue<u64>,
}

impl Guarded {
    fn new(n: usize) -> Guarded {
        Guarded {
            counter: RawValue::new(0).unwrap(),
            mine: RawArray::new(&vec![0; n]).unwrap(),
            holder: RawValue::new(0).unwrap(),
            faults: RawValue::new(0).unwrap(),
            after_death: RawValue::new(0).unwrap(),
        }
    }

    /// The critical section, with the lock held.
    fn inside(&self, me: usize, acquired: Acquired) {
        let tag = me as u32 + 1;
        if acquired == Acquired::AfterOwnerDied {
            // The dead holder's tag may still be there.
            self.after_death.set(self.after_death.get() + 1);
            self.holder.set(0);
        }
        if self.holder.get() != 0 {
            self.faults.set(self.faults.get() + 1);
        }
        self.holder.set(tag);
        let c = self.counter.get();
        std::hint::black_box(c);
        self.counter.set(c + 1);
        self.mine.set(me, self.mine.get(me).unwrap() + 1).unwrap();
        if self.holder.get() != tag {
            self.faults.set(self.faults.get() + 1);
        }
        self.holder.set(0);
    }

    /// After the run: nobody met another holder; the counter is the sum of
    /// the processes' counts, but for holders killed between the two
    /// (at most one each); survivors did every round they count.
    fn check(&self, results: &[Option<u64>]) {
        let killed = results.iter().filter(|r| r.is_none()).count() as u64;
        assert_eq!(self.faults.get(), 0, "two holders at once");
        let sum: u64 = self.mine.to_vec().iter().sum();
        let counter = self.counter.get();
        assert!(counter >= sum && counter - sum <= killed, "counter {counter}, counts {sum}, {killed} killed");
        for (i, r) in results.iter().enumerate() {
            if let Some(rounds) = r {
                assert_eq!(self.mine.get(i), Some(*rounds), "process {i}");
            }
        }
        eprintln!("{counter} times held, {killed} holders killed, {} deaths reported", self.after_death.get());
        assert!(self.after_death.get() <= killed);
    }
}

const HOLDERS: usize = 6;

fn hold_lock(lock: Lock, g: Guarded, me: usize, stop: RawValue<bool>) -> u64 {
    let mut rounds = 0;
    while !stop.get() {
        let held = lock.lock().unwrap();
        g.inside(me, held.acquired());
        rounds += 1;
    }
    rounds
}

#[test]
fn a_lock_has_one_holder_at_a_time_whoever_is_killed() {
    each_seeded(|m, rng| {
        let (lock, g) = (Lock::new().unwrap(), Guarded::new(HOLDERS));
        let results =
            run_killing(m, HOLDERS, 3, rng, |i, stop| Process::new(hold_lock, (lock.clone(), g.clone(), i, stop)));
        g.check(&results);
        assert!(lock.try_acquire().unwrap().is_some(), "the lock stayed taken");
        lock.release().unwrap();
    });
}

fn hold_rlock(lock: RLock, g: Guarded, me: usize, stop: RawValue<bool>) -> u64 {
    let mut rounds = 0;
    while !stop.get() {
        rounds += 1;
        let outer = lock.acquire().unwrap();
        // Re-entered: the same holder, counted once.
        let inner = lock.lock().unwrap();
        assert_eq!(inner.acquired(), Acquired::Normally);
        g.inside(me, outer);
        drop(inner);
        lock.release().unwrap();
    }
    rounds
}

#[test]
fn an_rlock_has_one_holder_at_a_time_whoever_is_killed() {
    each_seeded(|m, rng| {
        let (lock, g) = (RLock::new().unwrap(), Guarded::new(HOLDERS));
        let results =
            run_killing(m, HOLDERS, 3, rng, |i, stop| Process::new(hold_rlock, (lock.clone(), g.clone(), i, stop)));
        g.check(&results);
        assert!(lock.try_acquire().unwrap().is_some(), "the lock stayed taken");
        lock.release().unwrap();
    });
}

const PERMITS: u32 = 3;

/// A semaphore, bounded or not.
trait Permits: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + 'static {
    fn acquire(&self) -> multiproc::Result<()>;
    fn release(&self) -> multiproc::Result<()>;
    fn get_value(&self) -> multiproc::Result<u32>;
}

macro_rules! permits {
    ($t:ty) => {
        impl Permits for $t {
            fn acquire(&self) -> multiproc::Result<()> {
                <$t>::acquire(self)
            }
            fn release(&self) -> multiproc::Result<()> {
                <$t>::release(self)
            }
            fn get_value(&self) -> multiproc::Result<u32> {
                <$t>::get_value(self)
            }
        }
    };
}
permits!(Semaphore);
permits!(BoundedSemaphore);

/// Takes and returns permits; `inside` counts holders (a holder killed
/// inside stays counted, and its permit is gone with it, so the count
/// still may never pass the permits). Every release of a permit taken is
/// accepted, bounded or not.
fn take_permits<S: Permits>(sem: S, inside: Value<u32>, most: Value<u32>, stop: RawValue<bool>) -> u64 {
    let mut rounds = 0;
    while !stop.get() {
        sem.acquire().unwrap();
        let now = inside.update(|v| v + 1).unwrap();
        most.update(|m| m.max(now)).unwrap();
        inside.update(|v| v - 1).unwrap();
        sem.release().unwrap();
        rounds += 1;
    }
    rounds
}

/// Runs [`take_permits`] with kills; returns the permits lost with their
/// holders (at most one a kill).
fn permits_survive_kills<S: Permits>(m: StartMethod, rng: &mut Rng, sem: S) -> u32 {
    let (inside, most) = (Value::new(0u32).unwrap(), Value::new(0u32).unwrap());
    // Fewer kills than permits: a killed holder takes its permit along.
    let results = run_killing(m, HOLDERS, PERMITS as usize - 1, rng, |_, stop| {
        Process::new(take_permits::<S>, (sem.clone(), inside.clone(), most.clone(), stop))
    });
    let killed = results.iter().filter(|r| r.is_none()).count() as u32;
    assert!(most.get() <= PERMITS, "{} holders at once", most.get());
    let left = sem.get_value().unwrap();
    assert!(left <= PERMITS && left + killed >= PERMITS, "{left} permits left after {killed} kills");
    PERMITS - left
}

#[test]
fn a_semaphore_never_lets_in_more_than_its_permits_whoever_is_killed() {
    each_seeded(|m, rng| {
        permits_survive_kills(m, rng, Semaphore::new(PERMITS).unwrap());
    });
}

#[test]
fn a_bounded_semaphore_never_passes_its_bound_whoever_is_killed() {
    each_seeded(|m, rng| {
        let sem = BoundedSemaphore::new(PERMITS).unwrap();
        let lost = permits_survive_kills(m, rng, sem.clone());
        // What the dead held may be given back, and not one more.
        for _ in 0..lost {
            sem.release().unwrap();
        }
        assert!(matches!(sem.release(), Err(Error::SemaphoreOverflow { bound: PERMITS })));
        assert_eq!(sem.get_value().unwrap(), PERMITS);
    });
}

/// Waits for each round's event in turn.
fn follow(go: Vec<Event>) -> usize {
    for e in &go {
        assert!(e.wait(None).unwrap());
    }
    go.len()
}

fn set_event(e: Event) {
    e.set().unwrap();
}

#[test]
fn every_waiter_wakes_for_an_event_whoever_is_killed() {
    each_seeded(|m, rng| {
        // Each round's event is set by a process of its own that may be
        // killed at any instant, and then (if it was not set) by us: the
        // waiters must all get through every round.
        const R: usize = 40;
        let go: Vec<Event> = (0..R).map(|_| Event::new().unwrap()).collect();
        let mut waiters: Vec<_> = (0..4).map(|_| Process::new(follow, (go.clone(),)).with_start_method(m)).collect();
        for w in &mut waiters {
            w.start().unwrap();
        }
        let mut killed_setters = 0;
        for e in &go {
            let mut setter = Process::new(set_event, (e.clone(),)).with_start_method(m);
            setter.start().unwrap();
            if rng.below(2) == 0 {
                std::thread::sleep(Duration::from_micros(rng.below(2000)));
                let _ = setter.kill();
            }
            match join(&mut setter) {
                Ok(()) => {}
                Err(Error::Killed { .. }) => killed_setters += 1,
                Err(e) => panic!("{e}"),
            }
            if !e.is_set().unwrap() {
                e.set().unwrap();
            }
        }
        for w in &mut waiters {
            assert_eq!(join(w).unwrap(), R);
        }
        eprintln!("{killed_setters} setters killed");
    });
}

/// Takes items as a condition says they come, until the producers are
/// done and nothing is left.
fn take_items(cond: Condition, items: RawValue<u64>, done: RawValue<u32>, taken: RawArray<u64>, me: usize) -> u64 {
    loop {
        let held = cond.lock().unwrap();
        let ready = cond.wait_for(|| items.get() > 0 || done.get() == 1, Some(GUARD)).unwrap();
        assert!(ready, "a consumer was never woken");
        if items.get() == 0 {
            return taken.get(me).unwrap();
        }
        items.set(items.get() - 1);
        taken.set(me, taken.get(me).unwrap() + 1).unwrap();
        drop(held);
    }
}

fn give_items(cond: Condition, items: RawValue<u64>, given: RawArray<u64>, me: usize, stop: RawValue<bool>) -> u64 {
    let mut n = 0;
    while !stop.get() {
        n += 1;
        let _held = cond.lock().unwrap();
        items.set(items.get() + 1);
        given.set(me, given.get(me).unwrap() + 1).unwrap();
        cond.notify_all().unwrap();
    }
    n
}

#[test]
fn a_condition_loses_no_wake_up_and_no_item_whoever_is_killed() {
    each_seeded(|m, rng| {
        let cond = Condition::new().unwrap();
        let items = RawValue::new(0u64).unwrap();
        let done = RawValue::new(0u32).unwrap();
        let taken = RawArray::new(&[0u64; 4]).unwrap();
        let given = RawArray::new(&[0u64; 2]).unwrap();
        let stop = RawValue::new(false).unwrap();
        let mut producers: Vec<_> = (0..2)
            .map(|i| {
                Process::new(give_items, (cond.clone(), items.clone(), given.clone(), i, stop.clone()))
                    .with_start_method(m)
            })
            .collect();
        for p in &mut producers {
            p.start().unwrap();
        }
        // Consumers are the ones killed; producers finish.
        let consumers = start_killing(m, 4, 2, rng, &stop, |i| {
            Process::new(take_items, (cond.clone(), items.clone(), done.clone(), taken.clone(), i))
        });
        let mut produced = 0;
        for p in &mut producers {
            produced += join(p).unwrap();
        }
        {
            let _held = cond.lock().unwrap();
            done.set(1);
            cond.notify_all().unwrap();
        }
        let results = finish(consumers);
        let killed = results.iter().filter(|r| r.is_none()).count() as u64;
        let given: u64 = given.to_vec().iter().sum();
        let taken: u64 = taken.to_vec().iter().sum();
        let left = items.get();
        assert_eq!(given, produced);
        eprintln!("{given} items, {taken} taken, {killed} consumers killed");
        // A consumer killed between its two stores leaves one item counted
        // neither as taken nor as left.
        assert!(taken + left <= given && given - (taken + left) <= killed, "given {given}, taken {taken}, left {left}");
    });
}

/// Meets the others `rounds` times; returns its arrival index each round.
fn meet(b: Barrier, rounds: usize) -> Vec<usize> {
    (0..rounds).map(|_| b.wait(Some(GUARD)).unwrap()).collect()
}

#[test]
fn a_barrier_releases_whole_rounds_in_order() {
    for m in StartMethod::ALL {
        const P: usize = 4;
        const R: usize = 300;
        let b = Barrier::new(P as u32).unwrap();
        let mut ps: Vec<_> = (0..P).map(|_| Process::new(meet, (b.clone(), R)).with_start_method(m)).collect();
        for p in &mut ps {
            p.start().unwrap();
        }
        let all: Vec<Vec<usize>> = ps.iter_mut().map(|p| join(p).unwrap()).collect();
        for r in 0..R {
            let mut round: Vec<usize> = all.iter().map(|a| a[r]).collect();
            round.sort();
            assert_eq!(round, (0..P).collect::<Vec<_>>(), "round {r} under {m}");
        }
        assert_eq!(b.n_waiting().unwrap(), 0);
    }
}

fn wait_broken(b: Barrier) -> bool {
    matches!(b.wait(Some(GUARD)), Err(Error::BrokenBarrier))
}

#[test]
fn an_abort_after_a_party_dies_releases_every_other_party() {
    each_seeded(|m, rng| {
        // A party killed while it waits can never arrive (as in Python);
        // aborting frees the others, however the kill fell.
        let b = Barrier::new(5).unwrap();
        let mut ps: Vec<_> = (0..4).map(|_| Process::new(wait_broken, (b.clone(),)).with_start_method(m)).collect();
        for p in &mut ps {
            p.start().unwrap();
        }
        std::thread::sleep(Duration::from_micros(rng.below(5000)));
        let victim = rng.below(4) as usize;
        ps[victim].kill().unwrap();
        b.abort().unwrap();
        for (i, p) in ps.iter_mut().enumerate() {
            match join(p) {
                Ok(broken) => assert!(broken),
                Err(Error::Killed { .. }) => assert_eq!(i, victim),
                Err(e) => panic!("{e}"),
            }
        }
    });
}

/// Writes the whole array with one value under its lock, or checks that
/// it holds one value; a holder killed mid-write leaves it torn, which
/// only an acquirer told of the death may see (and mends).
fn write_or_check(a: Array<u64>, faults: RawValue<u64>, seed: u64, stop: RawValue<bool>) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut rounds = 0;
    while !stop.get() {
        rounds += 1;
        let held = a.get_lock().lock().unwrap();
        let v = a.to_vec();
        if v.iter().any(|&x| x != v[0]) {
            if held.acquired() == Acquired::AfterOwnerDied {
                for i in 0..a.len() {
                    a.set(i, v[0]).unwrap();
                }
            } else {
                faults.set(faults.get() + 1);
            }
        }
        if rng.below(2) == 0 {
            let x = rng.next();
            for i in 0..a.len() {
                a.set(i, x).unwrap();
            }
        }
    }
    rounds
}

fn add_to(v: Value<u64>, stop: RawValue<bool>) -> u64 {
    let mut rounds = 0;
    while !stop.get() {
        v.update(|x| x + 1).unwrap();
        rounds += 1;
    }
    rounds
}

#[test]
fn values_and_arrays_never_tear_under_their_lock_whoever_is_killed() {
    each_seeded(|m, rng| {
        let a = Array::new(&[0u64; 512]).unwrap();
        let faults = RawValue::new(0u64).unwrap();
        let s = rng.next();
        run_killing(m, HOLDERS, 3, rng, |i, stop| {
            Process::new(write_or_check, (a.clone(), faults.clone(), s ^ i as u64, stop))
        });
        assert_eq!(faults.get(), 0, "a torn array seen by a holder not told of a death");

        // Without kills, a Value's update is exact.
        let v = Value::new(0u64).unwrap();
        let results = run_killing(m, HOLDERS, 0, rng, |_, stop| Process::new(add_to, (v.clone(), stop)));
        assert_eq!(v.get(), results.iter().flatten().sum::<u64>());
    });
}

const REGION: usize = 64 << 10;

/// Attaches to the block by name over and over; writes its own region
/// with a pattern and its checksum, checks the regions of others that are
/// complete (their checksum matches, or is still being written).
fn use_block(name: String, me: usize, seed: u64, stop: RawValue<bool>) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut checked = 0;
    while !stop.get() {
        let shm = SharedMemory::attach(&name).unwrap();
        let fill = rng.next();
        let mut region: Vec<u8> = (0..REGION - 8).map(|i| (fill >> (i % 8 * 8)) as u8 ^ i as u8).collect();
        let sum = checksum(&region);
        region.extend_from_slice(&sum.to_le_bytes());
        shm.write(me * REGION, &region).unwrap();
        let mut mine = vec![0; REGION];
        shm.read(me * REGION, &mut mine).unwrap();
        assert_eq!(mine, region, "process {me}'s own region changed under it");
        checked += 1;
    }
    checked
}

#[test]
fn shared_memory_blocks_survive_their_users_being_killed() {
    each_seeded(|m, rng| {
        let shm = SharedMemory::create(None, HOLDERS * REGION).unwrap();
        let name = shm.name().to_owned();
        let s = rng.next();
        let results =
            run_killing(m, HOLDERS, 3, rng, |i, stop| Process::new(use_block, (name.clone(), i, s ^ i as u64, stop)));
        // Each finished region is whole: its checksum matches.
        for (i, r) in results.iter().enumerate() {
            let mut region = vec![0; REGION];
            shm.read(i * REGION, &mut region).unwrap();
            let (data, sum) = region.split_at(REGION - 8);
            if r.is_some() {
                assert_eq!(checksum(data).to_le_bytes(), sum, "region {i}");
            }
        }
        // Still there by name for a newcomer, gone once its creator unlinks.
        assert_eq!(SharedMemory::attach(&name).unwrap().size(), shm.size());
        shm.unlink().unwrap();
        assert!(SharedMemory::attach(&name).is_err());
    });
}

/// Sizes around the pool's framing: empty, small, a page, 64 KiB (where
/// answers leave the workers' answer rings for their sockets), a socket
/// buffer, the rings' hot window, just under a megabyte, a megabyte
/// (spilled), past 4 MiB (decoded into huge pages, its file unmapped by a
/// thread of its own).
const TASK_SIZES: &[usize] = &[
    0,
    1,
    7,
    8,
    9,
    4095,
    4096,
    4097,
    65_450,
    65_500,
    65535,
    65536,
    65537,
    212_992,
    212_993,
    262_144,
    (1 << 20) - 64,
    1 << 20,
    (4 << 20) + 1,
];

/// Echoes its argument with its checksum and the worker's pid.
fn echo(bytes: serde_bytes::ByteBuf) -> (u64, serde_bytes::ByteBuf, i32) {
    (checksum(&bytes), bytes, std::process::id() as i32)
}

#[test]
fn every_pool_task_gets_one_result_whichever_worker_is_killed() {
    each_seeded(|m, rng| {
        let pool = Pool::builder().processes(3).start_method(m).build().unwrap();
        let mut sent = Vec::new();
        let mut results = Vec::new();
        for t in 0..240 {
            let size = TASK_SIZES[rng.below(TASK_SIZES.len() as u64) as usize];
            let bytes: Vec<u8> = (0..size).map(|i| (i as u64 ^ t) as u8).collect();
            sent.push(checksum(&bytes));
            results.push(pool.apply_async(echo, (serde_bytes::ByteBuf::from(bytes),)));
        }
        // Now and then, kill the worker that answered a task: whatever it
        // runs then fails with `WorkerDied`; every other task's result
        // comes back intact.
        let (mut kills, mut died) = (0, 0);
        for (t, r) in results.iter_mut().enumerate() {
            match r.get_timeout(GUARD) {
                Ok(Some((sum, bytes, pid))) => {
                    assert_eq!(sum, sent[t], "task {t}: the worker saw other bytes");
                    assert_eq!(checksum(&bytes), sent[t], "task {t}: its result came back changed");
                    if kills < 6 && rng.below(20) == 0 {
                        // SAFETY: kill takes a pid and a signal number.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        kills += 1;
                    }
                }
                Ok(None) => panic!("task {t} hung"),
                Err(Error::WorkerDied { .. }) => died += 1,
                Err(e) => panic!("task {t}: {e}"),
            }
        }
        assert!(died <= kills, "{died} tasks lost to {kills} kills");
        pool.close();
        pool.join().unwrap();
    });
}
