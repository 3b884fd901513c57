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

use std::process::{Child, Command};

use multiproc::Pool;
use multiproc::cluster::{LocalRedis, WORKER_POOL_ENV, WORKER_REDIS_ENV, WORKER_SLOTS_ENV};

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
#[multiproc::main]
pub fn main() {
    let (own, url) = match std::env::var("CLUSTER_REDIS") {
        Ok(url) => (None, url),
        Err(_) => {
            let r = LocalRedis::start().expect("a local redis-server (apt-get install redis-server)");
            let url = r.url();
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
