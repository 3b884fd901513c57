//! A manager's shared list, appended to by five processes (seed 001).
//!
//! Python:
//! ```python
//! from multiprocessing import Manager
//!
//! def shared_data_process(l, i):
//!     l.append(i)
//!
//! manager = Manager()
//! #create a shared list
//! database = manager.list(range(0, 5))
//!
//! for i in range(0, 5):
//!     p = Process(target=shared_data_process, args = (database, i))
//!     p.start()
//!     p.join()
//!
//! print("manager returns shared database")
//! print(database)
//! ```
//! Prints `[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]`: each child appends through its
//! copy of the proxy, and printing the proxy shows the manager's list, as
//! Python's `print(database)` does.

use multiproc::Process;
use multiproc::managers::{ListProxy, Manager};

fn shared_data_process(l: ListProxy<i64>, i: i64) {
    l.append(&i).expect("append");
}

#[multiproc::main]
pub fn main() {
    let manager = Manager::start().expect("start a manager");
    // create a shared list
    let database = manager.list(&(0..5).collect::<Vec<i64>>()).expect("a shared list");

    for i in 0..5 {
        let mut p = Process::new(shared_data_process, (database.clone(), i));
        p.start().expect("start");
        p.join().expect("join");
    }

    println!("manager returns shared database");
    println!("{database}");
}
