//! Processes taking turns under a lock (seed 001).
//!
//! Python:
//! ```python
//! def lock_in(lock, time_span):
//!     lock.acquire()
//!     print("process:", time_span)
//!     time.sleep(time_span)
//!     lock.release()
//!
//! lock = Lock()
//! for i in range(0, 5):
//!     p = Process(target=lock_in, args=(lock, i))
//!     p.start()
//!     p.join()
//! print("parent process exits")
//! ```
//! Then the same five processes all at once: each prints two lines with a
//! pause between them, and the lock keeps every pair together. Sleeps are
//! hundredths of the seed's seconds.

use std::time::Duration;

use multiproc::{Lock, Process};

fn lock_in(lock: Lock, time_span: u64) {
    lock.acquire().expect("acquire");
    println!("process: {time_span}");
    std::thread::sleep(Duration::from_millis(10 * time_span));
    lock.release().expect("release");
}

fn in_turn(lock: Lock, n: u64) {
    let _held = lock.lock().expect("lock");
    println!("process {n} starts its turn");
    std::thread::sleep(Duration::from_millis(20));
    println!("process {n} ends its turn");
}

#[multiproc::main]
pub fn main() {
    let lock = Lock::new().expect("lock");
    println!("results using lock.");
    for i in 0..5 {
        let mut p = Process::new(lock_in, (lock.clone(), i));
        p.start().expect("start");
        p.join().expect("join");
    }
    let mut all: Vec<_> = (0..5).map(|n| Process::new(in_turn, (lock.clone(), n))).collect();
    for p in &mut all {
        p.start().expect("start");
    }
    for p in &mut all {
        p.join().expect("join");
    }
    println!("parent process exits");
}
