//! Async tasks inside worker processes: the "coroutine inside a
//! subprocess" pattern of seed 000 (创建一个process pool, 在其中放入async的
//! task (coroutine)): each worker runs its task's coroutines concurrently
//! on its own runtime, and the workers run in parallel.
//!
//! Python's counterpart would be a `Pool` whose function calls
//! `asyncio.run(main(batch))`, where `main` gathers several coroutines.

use std::time::{Duration, Instant};

use multiproc::{Async, Pool, os};

async fn fetch(batch: u32, item: u32) -> String {
    tokio::time::sleep(Duration::from_millis(100)).await;
    format!("batch {batch} item {item}")
}

/// Three coroutines at once, in one worker.
async fn crawl(batch: u32) -> (i32, Vec<String>, u128) {
    let start = Instant::now();
    let (a, b, c) = tokio::join!(fetch(batch, 0), fetch(batch, 1), fetch(batch, 2));
    (os::getpid(), vec![a, b, c], start.elapsed().as_millis())
}

#[multiproc::main]
pub fn main() {
    let pool = Pool::new(4).expect("pool");
    let start = Instant::now();
    let results = pool.map(Async(crawl), 0..4).expect("map");
    for (pid, pages, ms) in &results {
        // Three 100 ms coroutines overlap: about 100 ms, not 300.
        println!(
            "worker {pid}: {} pages concurrently in {}",
            pages.len(),
            if *ms < 250 { "one wait" } else { "several waits" }
        );
    }
    let mut pids: Vec<i32> = results.iter().map(|r| r.0).collect();
    pids.sort();
    pids.dedup();
    println!("{} batches of 3 coroutines ran in {} worker processes", results.len(), pids.len());
    println!(
        "total {}",
        if start.elapsed() < Duration::from_secs(2) { "well under the sequential 1.2 s" } else { "slow" }
    );
}
