//! A `Process` running a function with arguments (seeds 000, 002 and 003).
//!
//! Python:
//! ```python
//! def run_process(name):
//!     print(f"Running child process '{name}' ({os.getpid()})")
//!
//! print(f'Parent process {os.getpid()}')
//! p = Process(target=run_process, args=('test',))
//! print('Child process starting...')
//! p.start()
//! p.join()
//! print('Child process ends.')
//! print('Parent process ends.')
//! ```
//! In Rust the target can also hand a value back: `join` returns it.

use multiproc::{Process, os};

fn run_process(name: String) -> i32 {
    println!("Running child process '{name}' ({})", os::getpid());
    os::getpid()
}

#[multiproc::main]
pub fn main() {
    println!("Parent process {}", os::getpid());
    let mut p = Process::new(run_process, ("test".to_string(),));
    println!("Child process starting...");
    p.start().expect("start");
    let child_pid = p.join().expect("join");
    println!("Child process ends (it reported pid {child_pid}, Process.pid is {}).", p.pid().expect("started"));
    println!("Parent process ends.");
}
