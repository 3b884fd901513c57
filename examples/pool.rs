//! A pool of four workers and `imap_unordered` over long tasks, with the
//! theoretical (summed) and the actual (wall-clock) running time (seed 000).
//!
//! Python:
//! ```python
//! def long_time_task(name):
//!     print(f"Running task '{name}' ({os.getpid()})...")
//!     start = time.time()
//!     time.sleep(random.random() * 3)
//!     end = time.time()
//!     print(f"Task '{name}' runs {end - start:.2f} seconds.")
//!     return end - start
//!
//! with Pool(4) as pool:
//!     start = time.time()
//!     total_running_time = 0
//!     for result in pool.imap_unordered(func=long_time_task,
//!                                       iterable=map(lambda x: f'Task-{x}', range(5))):
//!         total_running_time += result
//!     pool.close()
//!     pool.join()
//!     print(f'Theoretical total running time: {total_running_time:.2f} seconds.')
//!     end = time.time()
//!     print(f'Actual running time: {end - start:.2f} seconds.')
//! print('All subprocesses done.')
//! ```
//! The seed sleeps up to 3 s per task; here up to 0.3 s keeps the tour quick.

use std::time::{Duration, Instant};

use multiproc::{Pool, os};

/// A random fraction in [0, 1), different in every process and call.
pub fn random() -> f64 {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64
        ^ (os::getpid() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut x = seed | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x % 1_000_000) as f64 / 1_000_000.0
}

fn long_time_task(name: String) -> f64 {
    println!("Running task '{name}' ({})...", os::getpid());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(random() * 0.3));
    let elapsed = start.elapsed().as_secs_f64();
    println!("Task '{name}' runs {elapsed:.2} seconds.");
    elapsed
}

#[multiproc::main]
pub fn main() {
    println!("Parent process {}", os::getpid());
    let pool = Pool::new(4).expect("pool");
    let start = Instant::now();
    let mut total_running_time = 0.0;
    for result in pool.imap_unordered(long_time_task, (0..5).map(|x| format!("Task-{x}"))) {
        total_running_time += result.expect("task");
    }
    pool.close();
    pool.join().expect("join");
    println!("Theoretical total running time: {total_running_time:.2} seconds.");
    println!("Actual running time: {:.2} seconds.", start.elapsed().as_secs_f64());
    println!("All subprocesses done.");
}
