//! The "subclass Process and override run" form, with the pid before and
//! after start (seed 004; seed 001 notes it too).
//!
//! Python:
//! ```python
//! class MyProcess(multiprocessing.Process):
//!     def __init__(self, n):
//!         super().__init__()
//!         self.n = n
//!     def run(self):
//!         time.sleep(self.n)
//!         print("do something in sub_progress")
//!
//! progress = MyProcess(2)
//! print(f"progress pid: {progress.pid}")
//! progress.start()
//! print(f"progress pid: {progress.pid}")
//! progress.join()
//! print(f"main progress finished")
//! ```
//! In Rust the object implements [`Run`]; it travels to the child and `run`
//! consumes it there. The seed sleeps 2 s; a tenth of that keeps the tour quick.

use std::time::Duration;

use multiproc::{Process, Run};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct DoSomething {
    n: f64,
}

impl Run for DoSomething {
    type Output = f64;

    fn run(self) -> f64 {
        std::thread::sleep(Duration::from_secs_f64(self.n));
        println!("do something in sub_progress");
        self.n
    }
}

#[multiproc::main]
pub fn main() {
    let mut progress = Process::from_run(DoSomething { n: 0.2 });
    println!("progress pid: {:?}", progress.pid());
    progress.start().expect("start");
    println!("progress pid: {:?}", progress.pid());
    let n = progress.join().expect("join");
    println!("run returned {n}");
    println!("main progress finished");
}
