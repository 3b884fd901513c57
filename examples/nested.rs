//! A child that starts its own child (seed 001).
//!
//! Python:
//! ```python
//! def individual_process(sec):
//!     print("start child process")
//!     print("waiting for", sec, "seconds")
//!     time.sleep(sec)
//!     print("exit child process")
//!     return sec
//!
//! def complicated_process(sec):
//!     print("start x child process")
//!     child_p = Process(target=individual_process, args=(3,))
//!     child_p.start()
//!     child_p.join()
//!     print("exit x child process")
//!
//! p = Process(target=complicated_process, args=(2,))
//! p.start()
//! p.join()
//! print("exit parent process")
//! ```
//! The seed sleeps for seconds; here tenths of seconds keep the tour quick.
//! Unlike Python, the grandchild's return value reaches its parent, and the
//! parent learns the names the processes had.

use std::time::Duration;

use multiproc::{Process, current_process};

fn individual_process(ms: u64) -> (String, u64) {
    println!("start child process {}", current_process().name());
    println!("waiting for {} seconds", ms as f64 / 1000.0);
    std::thread::sleep(Duration::from_millis(ms));
    println!("exit child process");
    (current_process().name().to_owned(), ms)
}

fn complicated_process(ms: u64) -> (String, String, u64) {
    println!("start x child process {}", current_process().name());
    let mut child_p = Process::new(individual_process, (ms + 100,));
    child_p.start().expect("start grandchild");
    let (grandchild, slept) = child_p.join().expect("join grandchild");
    println!("exit x child process");
    (current_process().name().to_owned(), grandchild, slept)
}

#[multiproc::main]
pub fn main() {
    println!("start parent process");
    let mut p = Process::new(complicated_process, (200,));
    p.start().expect("start child");
    let (child, grandchild, slept) = p.join().expect("join child");
    println!("child was {child}, grandchild was {grandchild}, which slept {slept} ms");
    println!("exit parent process");
}
