//! `apply_async` on a pool of 4 and on a pool of 35, then `close` and `join`
//! (seeds 002 and 003).
//!
//! Python:
//! ```python
//! def long_time_task(name):
//!     print('Run task %s (%s)...' % (name, os.getpid()))
//!     start = time.time()
//!     time.sleep(random.random() * 3)
//!     end = time.time()
//!     print('Task %s runs %0.2f seconds.' % (name, (end - start)))
//!
//! p = Pool(4)
//! for i in range(5):
//!     p.apply_async(long_time_task, args=(i,))
//! print('Waiting for all subprocesses done...')
//! p.close()
//! p.join()
//! print('All subprocesses done.')
//! ```
//! Seed 003 does the same with `Pool(35)` and 35 tasks, and notes that
//! `join` before `close` raises `ValueError: Pool is still running`; here it
//! is `Error::PoolStillRunning`. Sleeps are a tenth of the seed's.

use std::time::{Duration, Instant};

use multiproc::{Error, Pool, os};

/// Python's `random.random()`, near enough: a fraction in [0, 1) that
/// differs from task to task and run to run.
fn random(salt: u32) -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    (u64::from(nanos ^ salt.wrapping_mul(2_654_435_761)) % 1000) as f64 / 1000.0
}

fn long_time_task(name: u32) {
    println!("Run task {name} ({})...", os::getpid());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(random(name) * 0.3));
    println!("Task {name} runs {:.2} seconds.", start.elapsed().as_secs_f64());
}

fn run(workers: usize, tasks: u32) {
    println!("Parent process {}.", os::getpid());
    let p = Pool::new(workers).expect("pool");
    let results: Vec<_> = (0..tasks).map(|i| p.apply_async(long_time_task, (i,))).collect();
    println!("Waiting for all subprocesses done...");
    if let Err(Error::PoolStillRunning) = p.join() {
        println!("join before close: the pool is still running");
    }
    p.close();
    p.join().expect("join");
    let ok = results.iter().filter(|r| r.successful().unwrap_or(false)).count();
    println!("All subprocesses done ({ok} of {tasks} tasks succeeded).");
}

#[multiproc::main]
pub fn main() {
    run(4, 5);
    run(35, 35);
}
