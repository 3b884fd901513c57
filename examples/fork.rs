//! `os.fork()` returns twice (seeds 000, 002, 003 and 004).
//!
//! Python:
//! ```python
//! print(f'Process ({os.getpid()}) start...')
//! pid = os.fork()
//! if pid != 0:
//!     print(f'I ({os.getpid()}) just created a child process {pid}.')
//! else:
//!     print(f'I am child process ({os.getpid()}) and my parent is {os.getppid()}.')
//! ```
//! The Rust child leaves with `exit` once it has spoken, so that it does not
//! go on to run the rest of the parent's program; the parent reaps it.

use multiproc::os::{self, ForkResult};

#[multiproc::main]
pub fn main() {
    println!("Process ({}) start...", os::getpid());
    // SAFETY: this program is single-threaded at this point.
    match unsafe { os::fork() }.expect("fork") {
        ForkResult::Parent { child } => {
            println!("I ({}) just created a child process ({child}).", os::getpid());
            let code = os::waitpid(child).expect("waitpid");
            println!("Child process ({child}) exited with code {code}.");
        }
        ForkResult::Child => {
            println!("I am child process ({}) and my parent is {}.", os::getpid(), os::getppid());
            std::process::exit(0);
        }
    }
}
