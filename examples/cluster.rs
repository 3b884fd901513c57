//! The seed's distributed master and workers (seed 002: random numbers
//! squared), on the Redis-backed pool: the master builds a `Pool` with
//! `.redis(url, "squares")` and maps; the workers are copies of this
//! program started as separate processes with the worker environment, as
//! they would be on other machines (`MULTIPROC_CLUSTER_REDIS=<url>
//! MULTIPROC_CLUSTER_POOL=squares ./cluster` there).
//!
//! Python (seed 002's master, in substance):
//! ```python
//! for i in range(10):
//!     n = random.randint(0, 100000)
//!     print("Put task %d..." % n)
//!     task.put(n)
//! print('Try get result...')
//! for i in range(10):
//!     r = result.get(timeout=10)
//!     print('Result: %s' % r)
//! ```
//! Usage: `CLUSTER_REDIS=redis://host/ cluster`. Without `CLUSTER_REDIS`
//! it starts a redis-server of its own on a Unix socket (Debian:
//! `apt-get install redis-server`).
//! Needs the `cluster` feature: `cargo run --example cluster --features cluster`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::Pool;
use multiproc::cluster::{WORKER_POOL_ENV, WORKER_REDIS_ENV, WORKER_SLOTS_ENV};

fn square(n: u64) -> u64 {
    n * n
}

fn random_below(n: u64, state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % n
}

/// Where Debian puts redis-server, if it is installed.
pub fn redis_server() -> Option<PathBuf> {
    ["/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A redis-server of our own, gone with this value.
struct OwnRedis(Child, PathBuf);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn own_redis() -> (OwnRedis, String) {
    let server = redis_server().expect("redis-server is not installed: apt-get install redis-server");
    let dir = std::env::temp_dir().join(format!("multiproc-cluster-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for redis");
    let socket = dir.join("redis.sock");
    let child = Command::new(server)
        .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
        .arg(&socket)
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let until = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < until, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    (OwnRedis(child, dir), format!("redis+unix://{}", socket.display()))
}

#[multiproc::main]
pub fn main() {
    let (own, url) = match std::env::var("CLUSTER_REDIS") {
        Ok(url) => (None, url),
        Err(_) => {
            let (r, url) = own_redis();
            (Some(r), url)
        }
    };
    // Two workers, as on two other machines.
    let mut workers: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().expect("this program"))
                .env(WORKER_REDIS_ENV, &url)
                .env(WORKER_POOL_ENV, "squares")
                .env(WORKER_SLOTS_ENV, "2")
                .spawn()
                .expect("start a worker")
        })
        .collect();

    let pool = Pool::builder().redis(&url, "squares").build().expect("the pool");
    let mut state =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64) | 1;
    let tasks: Vec<u64> = (0..10).map(|_| random_below(100_000, &mut state)).collect();
    for n in &tasks {
        println!("Put task {n}...");
    }
    println!("Try get result...");
    let results = pool.map(square, tasks.iter().copied()).expect("the results");
    for (n, r) in tasks.iter().zip(results) {
        println!("Result: {n} * {n} = {r}");
    }
    pool.close();
    pool.join().expect("join");
    for w in &mut workers {
        // SIGTERM: a worker hands back what it runs and leaves.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
        let _ = w.wait();
    }
    drop(own);
    println!("master exit");
}
