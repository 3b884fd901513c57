//! The Redis-backed pool against a real redis-server (Debian's), with
//! workers as separate processes of this same test binary (started with
//! the worker environment variables, taken by the load hook before the
//! test harness's `main`).
#![cfg(feature = "cluster")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::GUARD;
use multiproc::{Error, Handle, Pool};

/// A redis-server of our own on a Unix socket, no persistence; stopped
/// (SIGKILL) when dropped.
struct Redis {
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
}

fn redis_server() -> PathBuf {
    for p in ["/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("redis-server is missing: `apt-get install redis-server` (the README's test command does it)");
}

impl Redis {
    fn start(name: &str) -> Redis {
        Redis::start_with(name, &[])
    }

    fn start_with(name: &str, extra: &[&str]) -> Redis {
        let dir = std::env::temp_dir().join(format!("multiproc-redis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis { child: None, dir, extra: extra.iter().map(|s| (*s).to_owned()).collect() };
        r.up();
        r
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn up(&mut self) {
        let child = Command::new(redis_server())
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let until = Instant::now() + GUARD;
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::yield_now();
        }
    }

    /// Kills it (losing everything: no persistence) and starts it again.
    fn restart(&mut self) {
        self.down();
        self.up();
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut con = redis::Client::open(self.url()).unwrap().get_connection().unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        match cmd.query::<redis::Value>(&mut con).unwrap() {
            redis::Value::Int(n) => n.to_string(),
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            other => format!("{other:?}"),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A worker: this test binary, started with the worker environment.
struct WorkerProc(Child);

fn worker(redis: &Redis, pool: &str, slots: usize, lease_ms: u64) -> WorkerProc {
    worker_of(&std::env::current_exe().unwrap(), redis, pool, slots, lease_ms)
}

fn worker_of(exe: &Path, redis: &Redis, pool: &str, slots: usize, lease_ms: u64) -> WorkerProc {
    spawn_worker(Command::new(exe), &redis.url(), pool, slots, Some(lease_ms))
}

/// Runs `cmd` (this test binary, or a command that runs it) with the
/// worker environment for pool `pool` at `url` (the default lease when
/// `lease_ms` is `None`).
fn spawn_worker(mut cmd: Command, url: &str, pool: &str, slots: usize, lease_ms: Option<u64>) -> WorkerProc {
    cmd.env(multiproc::cluster::WORKER_REDIS_ENV, url)
        .env(multiproc::cluster::WORKER_POOL_ENV, pool)
        .env(multiproc::cluster::WORKER_SLOTS_ENV, slots.to_string());
    if let Some(ms) = lease_ms {
        cmd.env(multiproc::cluster::WORKER_LEASE_ENV, ms.to_string());
    }
    WorkerProc(cmd.stdout(Stdio::null()).spawn().unwrap())
}

impl WorkerProc {
    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }

    /// Waits (bounded) for it to exit; its code.
    fn wait(mut self) -> Option<i32> {
        let until = Instant::now() + GUARD;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < until, "the worker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pool(redis: &Redis, name: &str) -> Pool {
    Pool::builder().redis(&redis.url(), name).build().unwrap()
}

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn fail_on_three(x: u32) -> u32 {
    assert_ne!(x, 3, "three is refused");
    x
}

#[test]
fn every_pool_call_works_through_redis() {
    let redis = Redis::start("calls");
    let _w1 = worker(&redis, "calls", 2, 2000);
    let _w2 = worker(&redis, "calls", 2, 2000);
    let pool = pool(&redis, "calls");
    assert_eq!(pool.apply(square, (12,)).unwrap(), 144);
    assert_eq!(pool.map(square, 0..200u64).unwrap(), (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    assert_eq!(pool.map_chunksize(square, 0..1000u64, 37).unwrap().len(), 1000);
    assert_eq!(pool.starmap(add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
    let ordered: Vec<u64> = pool.imap(square, 0..50u64).map(Result::unwrap).collect();
    assert_eq!(ordered, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool.imap_unordered(square, 0..50u64).map(Result::unwrap).collect();
    unordered.sort();
    assert_eq!(unordered, ordered);
    let results: Vec<_> = pool.imap(fail_on_three, 0..5u32).collect();
    let failed = results[3].as_ref().unwrap_err();
    assert_eq!(failed.item_index(), Some(3));
    assert!(matches!(failed.root(), Error::Panicked { message, .. } if message.contains("three is refused")));
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    let (tx, rx) = std::sync::mpsc::channel();
    let r = pool.apply_async(square, (9,)).callback(move |v| tx.send(*v).unwrap());
    assert_eq!(r.get().unwrap(), 81);
    assert_eq!(rx.recv_timeout(GUARD).unwrap(), 81);
    pool.close();
    pool.join().unwrap();
    // Redis holds nothing of the run but the group's empty stream.
    assert_eq!(redis.cli(&["XLEN", "{mp:calls}:tasks"]), "0");
}

fn reversed(bytes: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(bytes.iter().rev().copied().collect::<Vec<u8>>())
}

fn pipe_end(_: u32) -> Handle {
    Handle::from(std::io::pipe().unwrap().0)
}

/// Arguments and results big enough to travel through shared memory on
/// one machine still reach Redis whole, both ways; a result holding an OS
/// handle is an error the caller sees, not a value lost on the way.
#[test]
fn big_values_travel_and_handles_are_refused() {
    let redis = Redis::start("big");
    let _w = worker(&redis, "big", 2, 2000);
    let pool = pool(&redis, "big");
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let want: Vec<u8> = big.iter().rev().copied().collect();
    let back = pool.apply(reversed, (serde_bytes::ByteBuf::from(big.clone()),)).unwrap();
    assert!(back.as_slice() == want.as_slice());
    let many = pool.map(reversed, (0..3).map(|_| serde_bytes::ByteBuf::from(big.clone()))).unwrap();
    assert!(many.iter().all(|b| b.as_slice() == want.as_slice()));
    let err = pool.apply(pipe_end, (1,)).unwrap_err();
    assert!(err.to_string().contains("cannot travel to another machine"), "{err}");
    assert_eq!(pool.apply(square, (5,)).unwrap(), 25);
}

/// A Redis that cannot be reached is an error when the pool is built, not
/// a wait forever.
#[test]
fn an_unreachable_redis_is_an_error_at_build() {
    let err = Pool::builder().redis("redis+unix:///nonexistent/redis.sock", "x").build().unwrap_err();
    assert!(matches!(&err, Error::Redis { what, .. } if what.contains("/nonexistent/redis.sock")), "{err}");
    assert!(matches!(Pool::builder().redis("not a url", "x").build(), Err(Error::Redis { .. })));
}

/// Runs for `millis`, after noting its run in `dir` (one file per run).
fn noted_nap(dir: String, millis: u64) -> u32 {
    let n = std::fs::read_dir(&dir).unwrap().count();
    std::fs::write(Path::new(&dir).join(format!("{}-{n}", std::process::id())), b"").unwrap();
    std::thread::sleep(Duration::from_millis(millis));
    7
}

/// A fresh folder for `noted_nap`'s notes, in the test's Redis folder.
fn runs_dir(redis: &Redis) -> PathBuf {
    let dir = redis.dir.join("runs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn runs(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn wait_for_runs(dir: &Path, n: usize) {
    let until = Instant::now() + GUARD;
    while runs(dir) < n {
        assert!(Instant::now() < until, "the task never ran");
        std::thread::yield_now();
    }
}

/// A worker SIGKILLed while its task runs: another worker runs the task,
/// and its caller gets one result.
#[test]
fn a_killed_workers_task_runs_elsewhere_and_answers_once() {
    let redis = Redis::start("killed");
    let dir = runs_dir(&redis);
    let pool = Pool::builder().redis(&redis.url(), "killed").build().unwrap();
    let first = worker(&redis, "killed", 1, 500);
    let r = pool.apply_async(noted_nap, (dir.display().to_string(), 1500));
    wait_for_runs(&dir, 1);
    first.signal(libc::SIGKILL);
    first.wait();
    let _second = worker(&redis, "killed", 1, 500);
    assert_eq!(r.get_timeout(GUARD).unwrap(), Some(7));
    assert_eq!(runs(&dir), 2, "ran once on each worker");
}

/// A task ten times its lease, on a worker that lives: never delivered
/// twice, because the worker renews the lease while it runs.
#[test]
fn a_long_task_on_a_live_worker_is_never_redelivered() {
    let redis = Redis::start("long");
    let dir = runs_dir(&redis);
    let _w1 = worker(&redis, "long", 1, 200);
    let _w2 = worker(&redis, "long", 1, 200);
    let pool = pool(&redis, "long");
    assert_eq!(pool.apply(noted_nap, (dir.display().to_string(), 2000)).unwrap(), 7);
    assert_eq!(runs(&dir), 1, "the task was delivered again while its worker lived");
}

/// What `multiproc cluster status` shows while a worker runs a task and
/// another waits: the task in flight with its worker, lease age and
/// delivery count, the backlog, the worker's slots, and how long the
/// oldest task has waited for its result.
#[test]
fn status_shows_the_running_task_the_backlog_and_the_oldest_age() {
    let redis = Redis::start("status");
    let dir = runs_dir(&redis);
    let _w = worker(&redis, "status", 1, 500);
    let pool = pool(&redis, "status");
    let empty = multiproc::cluster::status(&redis.url(), "status").unwrap();
    assert_eq!((empty.backlog, empty.in_flight.len(), empty.oldest_pending_age_ms), (0, 0, None), "{empty}");
    let submitted = Instant::now();
    let running = pool.apply_async(noted_nap, (dir.display().to_string(), 600_000));
    wait_for_runs(&dir, 1);
    let waiting = pool.apply_async(square, (3,));
    let until = Instant::now() + GUARD;
    let status = loop {
        let s = multiproc::cluster::status(&redis.url(), "status").unwrap();
        if s.backlog == 1 && s.workers.first().is_some_and(|w| w.running == 1) {
            break s;
        }
        assert!(Instant::now() < until, "never saw the second task waiting: {s}");
        std::thread::yield_now();
    };
    assert_eq!(status.in_flight.len(), 1, "{status}");
    let task = &status.in_flight[0];
    assert_eq!(task.deliveries, 1, "{status}");
    assert_eq!(status.workers.len(), 1, "{status}");
    assert_eq!(task.worker, status.workers[0].name, "{status}");
    assert_eq!(status.workers[0].slots, 1, "{status}");
    // The worker renews its lease (500 ms) while the task runs.
    assert!(task.lease_age_ms < 60_000, "{status}");
    let age = status.oldest_pending_age_ms.expect("a task waits for its result");
    assert!(age as u128 <= submitted.elapsed().as_millis() + 5, "{age} ms, older than the task: {status}");
    let shown = status.to_string();
    assert!(shown.contains("backlog 1, in flight 1") && shown.contains("oldest pending age"), "{shown}");
    assert!(shown.contains(&task.worker) && shown.contains("running 1/1"), "{shown}");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["backlog"], 1);
    assert_eq!(json["in_flight"][0]["deliveries"], 1);
    assert!(json["oldest_pending_age_ms"].is_u64(), "{json}");
    assert!(running.cancel());
    assert_eq!(waiting.get_timeout(GUARD).unwrap(), Some(9));
}

fn crash(_: u32) -> u32 {
    std::process::abort()
}

/// A task that kills its process every time goes to the dead letters after
/// three deliveries; its caller gets a typed error, and the workers live on.
#[test]
fn a_poison_task_becomes_a_dead_letter() {
    let redis = Redis::start("poison");
    let w = worker(&redis, "poison", 1, 300);
    let pool = pool(&redis, "poison");
    match pool.apply(crash, (1,)) {
        Err(Error::PoisonTask { deliveries, how }) => {
            assert_eq!(deliveries, 3);
            assert!(how.contains("SIGABRT"), "{how}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(redis.cli(&["XLEN", "{mp:poison}:dead"]), "1");
    assert_eq!(pool.apply(square, (3,)).unwrap(), 9, "the worker goes on");
    // What `multiproc cluster status` shows.
    let status = multiproc::cluster::status(&redis.url(), "poison").unwrap();
    assert_eq!((status.backlog, status.in_flight.len()), (0, 0));
    assert_eq!(status.workers.len(), 1, "{status}");
    assert_eq!(status.dead_letters.len(), 1);
    let dead = &status.dead_letters[0];
    assert_eq!(dead.deliveries, 3);
    assert!(dead.reason.contains("SIGABRT") && dead.task.is_some(), "{dead:?}");
    assert!(dead.function.as_deref().is_some_and(|f| f.contains("crash: (u32,) -> u32")), "{dead:?}");
    assert!(dead.to_string().contains("crash: (u32,) -> u32"), "{dead}");
    assert!(status.to_string().contains("dead letters (1)"), "{status}");
    // Requeued, it is delivered again (and, poison still, comes back).
    assert_eq!(multiproc::cluster::requeue_dead_letters(&redis.url(), "poison").unwrap(), 1);
    assert!(multiproc::cluster::status(&redis.url(), "poison").unwrap().dead_letters.is_empty());
    let until = Instant::now() + GUARD;
    while multiproc::cluster::status(&redis.url(), "poison").unwrap().dead_letters.is_empty() {
        assert!(Instant::now() < until, "the requeued task never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(w);
}

/// Redis restarted (losing everything) in the middle of a map: every
/// result still comes, once, in order.
#[test]
fn a_redis_restart_mid_map_loses_nothing() {
    let mut redis = Redis::start("restart");
    let _w1 = worker(&redis, "restart", 2, 500);
    let pool = pool(&redis, "restart");
    let results = pool.map_async(slow_square, 0..400u64);
    // Some are done, most are not.
    let until = Instant::now() + GUARD;
    while redis.cli(&["XLEN", "{mp:restart}:tasks"]) == "0" {
        assert!(Instant::now() < until);
        std::thread::yield_now();
    }
    redis.restart();
    let got = results.get_timeout(GUARD).unwrap().expect("every result after the restart");
    assert_eq!(got, (0..400u64).map(|x| x * x).collect::<Vec<_>>());
}

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x * x
}

/// SIGTERM: a worker hands back what it runs at once (not after its
/// lease) and exits cleanly; another worker finishes the task.
#[test]
fn sigterm_hands_tasks_back_at_once() {
    let redis = Redis::start("term");
    let dir = runs_dir(&redis);
    let pool = pool(&redis, "term");
    // A long lease: only a hand-back lets the second worker have it soon.
    let first = worker(&redis, "term", 1, 60_000);
    let r = pool.apply_async(noted_nap, (dir.display().to_string(), 500));
    wait_for_runs(&dir, 1);
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait(), Some(0));
    let _second = worker(&redis, "term", 1, 60_000);
    assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), Some(7), "handed back, not waiting for the lease");
    assert_eq!(runs(&dir), 2);
}

/// Every connection (the submitter's and the workers', blocking reads,
/// task sends and acknowledgements alike) killed with CLIENT KILL, again and
/// again, while a map runs and single calls keep being submitted (each
/// round's kill lands right after a submission, often mid-send): every
/// result still comes, once, in order.
#[test]
fn connections_killed_mid_command_lose_nothing() {
    let redis = Redis::start("clientkill");
    let _w1 = worker(&redis, "clientkill", 2, 500);
    let _w2 = worker(&redis, "clientkill", 2, 500);
    let pool = pool(&redis, "clientkill");
    let results = pool.map_async_chunksize(slow_square, 0..300u64, 1);
    let mut admin = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let mut kills = 0;
    let mut singles = Vec::new();
    let until = Instant::now() + GUARD;
    while !results.ready() || singles.len() < 100 {
        assert!(Instant::now() < until, "the map never finished: a task was lost ({kills} rounds of kills)");
        let x = 1000 + singles.len() as u64;
        singles.push((x, pool.apply_async(square, (x,))));
        // SKIPME yes (the default): our own connection stays.
        let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query(&mut admin).unwrap();
        kills += usize::from(killed > 0);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(kills > 3, "the connections were killed {kills} times");
    assert_eq!(results.get().unwrap(), (0..300u64).map(|x| x * x).collect::<Vec<_>>());
    for (x, r) in singles {
        assert_eq!(r.get_timeout(GUARD).unwrap(), Some(x * x), "call {x}");
    }
}

/// One call at a time: each is sent by its caller itself (the queue is
/// empty and the connection idle), and every connection is killed right
/// after, often before the reply to that send is read. Every call still
/// gets its one result.
#[test]
fn calls_sent_by_their_callers_survive_killed_connections() {
    let redis = Redis::start("directkill");
    let _w = worker(&redis, "directkill", 2, 500);
    let pool = pool(&redis, "directkill");
    let mut admin = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let mut kills = 0;
    for x in 0..90u64 {
        let r = pool.apply_async(square, (x,));
        if x % 3 != 2 {
            let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").query(&mut admin).unwrap();
            kills += usize::from(killed > 0);
        }
        assert_eq!(r.get_timeout(GUARD).unwrap(), Some(x * x), "call {x} ({kills} kills)");
    }
    assert!(kills > 30, "the connections were killed {kills} times");
}

/// Waits until `n` workers have come to pool `pool`'s stream (each
/// becomes a consumer of its group with its first look for tasks).
fn wait_for_consumers(redis: &Redis, pool: &str, n: usize) {
    let mut con = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    let until = Instant::now() + GUARD;
    loop {
        let consumers: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(format!("{{mp:{pool}}}:tasks"))
            .arg("workers")
            .query(&mut con)
            .unwrap();
        if consumers.len() >= n {
            return;
        }
        assert!(Instant::now() < until, "{} of {n} workers came: {consumers:?}", consumers.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn nothing(_: u32) {}

fn used_memory(redis: &Redis) -> i64 {
    let info = redis.cli(&["INFO", "memory"]);
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
}

/// 100,000 no-op tasks: afterwards Redis holds what it held before, give
/// or take its own allocator's slack (results and tasks are deleted as
/// they are used; bookkeeping keys expire).
#[test]
fn a_hundred_thousand_tasks_leave_redis_memory_at_baseline() {
    let redis = Redis::start("memory");
    let _w1 = worker(&redis, "memory", 2, 2000);
    let pool = pool(&redis, "memory");
    pool.map_chunksize(nothing, 0..100u32, 1).unwrap();
    let before = used_memory(&redis);
    pool.map_chunksize(nothing, 0..100_000u32, 10).unwrap();
    pool.close();
    pool.join().unwrap();
    let after = used_memory(&redis);
    assert!(after < before + 256 * 1024, "Redis grew from {before} to {after} bytes");
    assert_eq!(redis.cli(&["XLEN", "{mp:memory}:tasks"]), "0");
}

/// A worker of another build (the `cluster` example: another executable)
/// never runs our tasks; with no worker of our build, the caller learns it,
/// naming both builds.
#[test]
fn a_worker_of_another_build_never_runs_a_task() {
    // The same workspace-wide, all-features build as the test run's, so
    // nothing is compiled twice.
    common::cargo_build(&["--workspace", "--all-features", "--example", "cluster"]);
    let exe = std::env::current_exe().unwrap();
    let other = exe.parent().unwrap().parent().unwrap().join("examples/cluster");
    let redis = Redis::start("build");
    let dir = runs_dir(&redis);
    let _stranger = worker_of(&other, &redis, "build", 1, 300);
    let pool = pool(&redis, "build");
    match pool.apply(noted_nap, (dir.display().to_string(), 0)) {
        Err(Error::BuildMismatch { task, worker, function }) => {
            assert_ne!(task, worker);
            assert!(function.contains("noted_nap: (alloc::string::String, u64) -> u32"), "{function}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(runs(&dir), 0, "another build ran it");
    // With a worker of our build, tasks run. (Once it is taking tasks: the
    // stranger gives a task up after ten of its short leases, and a worker
    // still starting on a loaded machine can take longer than that.)
    let _ours = worker(&redis, "build", 1, 300);
    wait_for_consumers(&redis, "build", 2);
    assert_eq!(pool.apply(square, (5,)).unwrap(), 25);
}

/// A worker stopped (SIGSTOP) past its lease: another takes its task and
/// answers; resumed, the first answers too, and that second result is
/// dropped and counted, never delivered.
#[test]
fn a_stalled_workers_late_result_is_dropped() {
    let redis = Redis::start("stalled");
    let dir = runs_dir(&redis);
    let pool = pool(&redis, "stalled");
    let first = worker(&redis, "stalled", 1, 300);
    let (tx, rx) = std::sync::mpsc::channel();
    let r = pool.apply_async(noted_nap, (dir.display().to_string(), 1000)).callback(move |v| tx.send(*v).unwrap());
    wait_for_runs(&dir, 1);
    first.signal(libc::SIGSTOP);
    let _second = worker(&redis, "stalled", 1, 300);
    assert_eq!(r.get_timeout(GUARD).unwrap(), Some(7));
    assert_eq!(runs(&dir), 2);
    first.signal(libc::SIGCONT);
    let until = Instant::now() + GUARD;
    while pool.duplicate_results() == 0 {
        assert!(Instant::now() < until, "the stalled worker's result never came");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.duplicate_results(), 1);
    assert_eq!(rx.recv_timeout(GUARD).unwrap(), 7);
    assert!(rx.try_recv().is_err(), "the callback ran twice");
}

/// Seeded random faults: whatever the schedule of worker kills, stalls,
/// connection kills and Redis restarts, every submitted task ends with
/// exactly one result (here, always a value: no fault is the task's).
#[test]
fn random_faults_leave_every_task_one_result() {
    for seed in [1u64, 7, 42] {
        let mut redis = Redis::start(&format!("faults{seed}"));
        let name = format!("faults{seed}");
        let mut workers: Vec<WorkerProc> = (0..3).map(|_| worker(&redis, &name, 2, 300)).collect();
        let pool = pool(&redis, &name);
        let results = pool.map_async_chunksize(slow_square, 0..300u64, 3);
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut schedule = Vec::new();
        for _ in 0..6 {
            if results.ready() {
                break;
            }
            let event = next() % 4;
            schedule.push(event);
            match event {
                0 => {
                    let i = (next() % workers.len() as u64) as usize;
                    workers[i].signal(libc::SIGKILL);
                    workers[i] = worker(&redis, &name, 2, 300);
                }
                1 => {
                    let i = (next() % workers.len() as u64) as usize;
                    workers[i].signal(libc::SIGSTOP);
                    std::thread::sleep(Duration::from_millis(400));
                    workers[i].signal(libc::SIGCONT);
                }
                2 => {
                    let _ = redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
                }
                _ => redis.restart(),
            }
            std::thread::sleep(Duration::from_millis(next() % 150));
        }
        let got =
            results.get_timeout(GUARD).unwrap().unwrap_or_else(|| panic!("seed {seed}: no result ({schedule:?})"));
        assert_eq!(got, (0..300u64).map(|x| x * x).collect::<Vec<_>>(), "seed {seed}, faults {schedule:?}");
    }
}

/// The submitting pool's task timeout travels with each task: the worker
/// kills the task's process and its caller gets `TaskTimeout`; the worker
/// goes on.
#[test]
fn a_task_past_its_timeout_is_killed_and_the_worker_goes_on() {
    let redis = Redis::start("timeout");
    let _w = worker(&redis, "timeout", 1, 2000);
    let pool = Pool::builder().redis(&redis.url(), "timeout").task_timeout(Duration::from_millis(300)).build().unwrap();
    let dir = runs_dir(&redis);
    match pool.apply(noted_nap, (dir.display().to_string(), 60_000)) {
        Err(Error::TaskTimeout { timeout, .. }) => assert_eq!(timeout, Duration::from_millis(300)),
        other => panic!("{other:?}"),
    }
    assert_eq!(runs(&dir), 1, "a timed-out task is not run again");
    assert_eq!(pool.apply(square, (4,)).unwrap(), 16);
}

/// Two hosts on one machine: a worker in a network namespace of its own,
/// reaching Redis over a veth link that is cut while it runs a task. The
/// task runs again on the other host; when the link comes back, the cut
/// worker's late result is dropped: one result.
#[test]
fn a_worker_host_cut_off_mid_task_costs_one_rerun_and_no_second_result() {
    let host = Host::new();
    let redis = TcpRedis::start(&host.root_ip);
    let dir = std::env::temp_dir().join(format!("multiproc-netns-runs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pool = Pool::builder().redis(&redis.url, "hosts").build().unwrap();
    let far = host.worker(&redis.url, "hosts", 500);
    let r = pool.apply_async(noted_nap, (dir.display().to_string(), 1500));
    wait_for_runs(&dir, 1);
    host.link(false);
    // The worker here takes the task once the far one's lease runs out.
    let _near = spawn_worker(Command::new(std::env::current_exe().unwrap()), &redis.url, "hosts", 1, Some(500));
    assert_eq!(r.get_timeout(GUARD).unwrap(), Some(7));
    assert_eq!(runs(&dir), 2, "ran on each host");
    host.link(true);
    let until = Instant::now() + GUARD;
    while pool.duplicate_results() == 0 {
        assert!(Instant::now() < until, "the cut-off worker never answered after the link came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(far);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A network namespace joined to this one by a veth pair.
struct Host {
    ns: String,
    veth: String,
    root_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2's ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Host {
    fn new() -> Host {
        let id = std::process::id();
        let (ns, veth, peer) = (format!("mpns{id}"), format!("mpv{id}a"), format!("mpv{id}b"));
        let net = format!("10.{}.{}", 100 + (id >> 16) % 100, (id >> 8) % 250);
        let sub = (id % 60) * 4;
        let (root_ip, far_ip) = (format!("{net}.{}", sub + 1), format!("{net}.{}", sub + 2));
        ip(&["netns", "add", &ns]);
        let host = Host { ns: ns.clone(), veth: veth.clone(), root_ip: root_ip.clone() };
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{root_ip}/30"), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{far_ip}/30"), "dev", &peer]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &peer, "up"]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        host
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.veth, if up { "up" } else { "down" }]);
    }

    fn worker(&self, url: &str, pool: &str, lease_ms: u64) -> WorkerProc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(std::env::current_exe().unwrap());
        spawn_worker(cmd, url, pool, 1, Some(lease_ms))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.veth]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A redis-server on TCP at `bind`, on a port that was free.
struct TcpRedis {
    child: Child,
    url: String,
}

impl TcpRedis {
    fn start(bind: &str) -> TcpRedis {
        TcpRedis::launch(bind, None)
    }

    /// With TLS only (`rediss://`), the certificates of [`certificates`] in
    /// `certs`, clients asked for theirs, and a password.
    #[cfg(feature = "cluster-tls")]
    fn start_tls(bind: &str, certs: &Path) -> TcpRedis {
        TcpRedis::launch(bind, Some(certs))
    }

    fn launch(bind: &str, tls: Option<&Path>) -> TcpRedis {
        let port = std::net::TcpListener::bind((bind, 0)).unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new(redis_server());
        cmd.args(["--bind", bind, "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir"])
            .arg(std::env::temp_dir())
            .stdout(Stdio::null());
        let url = match tls {
            None => {
                cmd.args(["--port", &port.to_string()]);
                format!("redis://{bind}:{port}/")
            }
            Some(certs) => {
                cmd.args(["--port", "0", "--tls-port", &port.to_string(), "--tls-auth-clients", "yes"])
                    .args(["--requirepass", "sesame", "--tls-cert-file"])
                    .arg(certs.join("server.pem"))
                    .arg("--tls-key-file")
                    .arg(certs.join("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(certs.join("ca.pem"));
                format!("rediss://:sesame@{bind}:{port}/")
            }
        };
        let child = cmd.spawn().unwrap();
        let until = Instant::now() + GUARD;
        while std::net::TcpStream::connect((bind, port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::yield_now();
        }
        TcpRedis { child, url }
    }
}

/// A CA (`ca.pem`), a server certificate for 127.0.0.1 (`server.pem`,
/// `server.key`) and a client's (`client.pem`, `client.key`), signed by it.
#[cfg(feature = "cluster-tls")]
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    // Every certificate its own name: one named as its issuer would be
    // taken for self-signed.
    let named = |sans: Vec<String>, name: &str| {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params
    };
    let mut params = named(Vec::new(), "multiproc test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, host) in [("server", "127.0.0.1"), ("client", "worker.example")] {
        let key = KeyPair::generate().unwrap();
        let cert = named(vec![host.to_owned()], name).signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// `rediss://` with a password: refused without the CA or without a
/// client certificate; with both, tasks go to a worker configured by its
/// environment and to a pool's local worker configured by the pool.
#[cfg(feature = "cluster-tls")]
#[test]
fn rediss_urls_work_with_a_ca_and_a_client_certificate() {
    use multiproc::cluster::Tls;
    let dir = std::env::temp_dir().join(format!("multiproc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let redis = TcpRedis::start_tls("127.0.0.1", &dir);
    let full = Tls::default().ca(dir.join("ca.pem")).client(dir.join("client.pem"), dir.join("client.key"));
    for (tls, why) in [
        (Tls::default(), "a server whose CA is not trusted"),
        (Tls::default().ca(dir.join("ca.pem")), "no client certificate"),
        (Tls { ca_file: None, ..full.clone() }, "a server whose CA is not trusted, with a client certificate"),
    ] {
        match Pool::builder().redis(&redis.url, "tls").redis_tls(tls).build() {
            Err(e @ Error::Redis { .. }) => assert!(!e.to_string().contains("sesame"), "the password shows: {e}"),
            Err(other) => panic!("{why}: {other:?}"),
            Ok(_) => panic!("{why}: connected"),
        }
    }
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(multiproc::cluster::TLS_CA_ENV, dir.join("ca.pem"))
        .env(multiproc::cluster::TLS_CERT_ENV, dir.join("client.pem"))
        .env(multiproc::cluster::TLS_KEY_ENV, dir.join("client.key"));
    let mut worker = spawn_worker(cmd, &redis.url, "tls", 2, None);
    let pool = Pool::builder().redis(&redis.url, "tls").redis_tls(full.clone()).build().unwrap();
    assert_eq!(pool.map(square, 0..100u64).unwrap(), (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    assert!(worker.0.try_wait().unwrap().is_none(), "the worker is alive");
    drop(pool);
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(), Some(0));
    let pool = Pool::builder().redis(&redis.url, "tls").redis_tls(full).local_workers(1).build().unwrap();
    assert_eq!(pool.apply(add, (40, 2)).unwrap(), 42);
    drop(pool);
    let _ = std::fs::remove_dir_all(&dir);
}

impl Drop for TcpRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A lazy `imap` over an endless input keeps the task stream short: the
/// pool reads its input only as results come back.
#[test]
fn an_endless_imap_keeps_the_stream_bounded() {
    let redis = Redis::start("endless");
    let _w = worker(&redis, "endless", 2, 2000);
    let pool = Pool::builder().redis(&redis.url(), "endless").processes(2).build().unwrap();
    let mut longest = 0u64;
    for (i, r) in pool.imap(square, 0u64..).take(3000).enumerate() {
        assert_eq!(r.unwrap(), (i as u64) * (i as u64));
        if i % 100 == 0 {
            longest = longest.max(redis.cli(&["XLEN", "{mp:endless}:tasks"]).parse().unwrap());
        }
    }
    // The read-ahead is 64 tasks per counted process: 128 here.
    assert!(longest <= 128, "the task stream grew to {longest}");
}

/// A Redis with a password: the password in the URL works for the pool and
/// its workers; a wrong one is an error when the pool is built.
#[test]
fn a_password_in_the_url_is_used_and_a_wrong_one_refused() {
    let redis = Redis::start_with("password", &["--requirepass", "s3cret"]);
    let base = redis.url();
    let url = format!("{base}?pass=s3cret");
    let wrong = format!("{base}?pass=nope");
    assert!(matches!(Pool::builder().redis(&wrong, "pw").build(), Err(Error::Redis { .. })));
    let _w = spawn_worker(Command::new(std::env::current_exe().unwrap()), &url, "pw", 1, None);
    let pool = Pool::builder().redis(&url, "pw").build().unwrap();
    assert_eq!(pool.apply(square, (6,)).unwrap(), 36);
}

/// `cancel` on a Redis-backed pool: a task no worker took yet is never
/// delivered; a running one's process is killed by its worker (which then
/// takes the next task); neither counts as a second result.
#[test]
fn cancel_stops_a_waiting_task_and_kills_a_running_one() {
    let redis = Redis::start("cancel");
    let dir = runs_dir(&redis);
    let d = dir.display().to_string();
    let _w = worker(&redis, "cancel", 1, 600);
    let pool = pool(&redis, "cancel");
    let running = pool.apply_async(noted_nap, (d.clone(), 60_000));
    wait_for_runs(&dir, 1);
    let waiting = pool.apply_async(noted_nap, (d.clone(), 0));
    assert!(waiting.cancel() && running.cancel());
    assert!(matches!(running.get(), Err(Error::Cancelled)));
    assert!(matches!(waiting.get(), Err(Error::Cancelled)));
    // One slot: this runs only once the cancelled task's process is gone
    // (long before its 60 s).
    let next = pool.apply_async(square, (8,));
    assert_eq!(next.get_timeout(Duration::from_secs(30)).unwrap(), Some(64));
    assert_eq!(runs(&dir), 1, "the cancelled waiting task ran");
    assert_eq!(pool.duplicate_results(), 0);
}

/// A task entry that is not one (garbage bytes, a missing field) becomes a
/// dead letter; the worker goes on.
#[test]
fn garbage_in_the_task_stream_is_a_dead_letter_not_a_crash() {
    let redis = Redis::start("garbage");
    let _w = worker(&redis, "garbage", 1, 500);
    let pool = pool(&redis, "garbage");
    assert_eq!(pool.apply(square, (2,)).unwrap(), 4);
    redis.cli(&["XADD", "{mp:garbage}:tasks", "*", "t", "\u{1}\u{ff}garbage"]);
    redis.cli(&["XADD", "{mp:garbage}:tasks", "*", "other", "field"]);
    let until = Instant::now() + GUARD;
    while multiproc::cluster::status(&redis.url(), "garbage").unwrap().dead_letters.len() < 2 {
        assert!(Instant::now() < until, "the garbage never became dead letters");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.apply(square, (3,)).unwrap(), 9, "the worker goes on");
}

fn no_state() -> u32 {
    0
}

fn exit_report(s: &mut u32) -> u32 {
    *s
}

/// Worker state is for local pools: asked of a Redis-backed one, the
/// builder refuses (its workers would only fail the tasks).
#[test]
fn a_redis_pool_refuses_worker_state_and_exit_hooks() {
    for builder in [
        Pool::builder().redis("redis://127.0.0.1:1/", "x").worker_state(no_state),
        Pool::builder().redis("redis://127.0.0.1:1/", "x").worker_state(no_state).worker_exit(exit_report),
    ] {
        match builder.build() {
            Err(Error::InvalidOption(why)) => assert!(why.contains("worker_state"), "{why}"),
            other => panic!("{:?}", other.map(|_| "a pool")),
        }
    }
}
