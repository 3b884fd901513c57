//! `map`, `map_async` with `get`, `starmap`, `chunksize`, `callback` and
//! `maxtasksperchild` (seeds 001 and 003).
//!
//! Python (seed 001):
//! ```python
//! def process_task(x):
//!     print("task: running", x, "seconds")
//!     return time.sleep(x)
//!
//! p = Pool(5)
//! p.map(process_task, [1, 1, 1])          # blocks
//! p.map_async(process_task, [1, 1, 5])    # does not block
//! print("finished sync task")
//! p.close()
//! p.join()
//! print("finished async task")
//! ```
//! and seed 003's `results = p.map(func, arg)`, `p.map_async(func, arg).get()`,
//! `p.starmap(func, arg)`, `p.map(func, arg, chunksize=10)`,
//! `p.map_async(func, arg, callback=print_func)`, `Pool(5, maxtasksperchild=50)`.
//! Seconds become tenths of seconds.

use std::time::Duration;

use multiproc::{Pool, os};

fn process_task(x: u64) {
    println!("task: running {x} tenths of a second");
    std::thread::sleep(Duration::from_millis(100 * x));
}

fn square(x: u64) -> u64 {
    x * x
}

fn power(base: u64, exp: u32) -> u64 {
    base.pow(exp)
}

fn worker_pid(_: u64) -> i32 {
    os::getpid()
}

#[multiproc::main]
pub fn main() {
    let p = Pool::new(5).expect("pool");
    p.map(process_task, [1, 1, 1]).expect("map");
    let pending = p.map_async(process_task, [1, 1, 5]);
    println!("finished sync task");
    p.close();
    p.join().expect("join");
    pending.wait();
    println!("finished async task");

    let p = Pool::new(4).expect("pool");
    let results = p.map(square, 0..10).expect("map");
    println!("map: {results:?}");
    let later = p.map_async(square, 0..5).callback(|outputs| println!("callback {outputs:?}"));
    println!("map_async get: {:?}", later.get().expect("get"));
    println!("starmap: {:?}", p.starmap(power, [(2, 10), (3, 4), (10, 3)]).expect("starmap"));
    println!("chunksize=10: {} results", p.map_chunksize(square, 0..100, 10).expect("map").len());

    let p = Pool::builder().processes(2).maxtasksperchild(5).build().expect("pool");
    let mut pids = p.map_chunksize(worker_pid, 0..20, 1).expect("map");
    pids.sort();
    pids.dedup();
    println!("maxtasksperchild=5: 20 tasks ran in {} worker processes", pids.len());
}
