//! `imap` (results in input order) against `imap_unordered` (results in
//! completion order) (seed 004).
//!
//! Python:
//! ```python
//! def do_something(n):
//!     time.sleep(n)
//!     print("do something in sub_progress")
//!     return n
//!
//! for result in pool.imap(do_something, [1, 3, 5]):
//!     print(f"do something in {result}s")
//! for result in pool.imap_unordered(do_something, [1, 3, 5]):
//!     print(f"do something in {result}s")
//! ```
//! With inputs in ascending order both give 1, 3, 5; reversed (5, 3, 1),
//! `imap` still gives 5, 3, 1 while `imap_unordered` gives 1, 3, 5. Seconds
//! become tenths of seconds; `apply_async` with `get` first, as in the seed.

use std::time::Duration;

use multiproc::Pool;

fn do_something(n: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(100 * n));
    println!("do something in sub_progress");
    n
}

#[multiproc::main]
pub fn main() {
    let pool = Pool::new(multiproc::os::cpu_count().max(3)).expect("pool");
    let result = pool.apply_async(do_something, (3,));
    println!("apply_async: {}", result.get().expect("get"));
    for order in [[1, 3, 5], [5, 3, 1]] {
        let ordered: Vec<u64> = pool.imap(do_something, order).map(|r| r.expect("task")).collect();
        println!("imap {order:?}: {ordered:?}");
        let unordered: Vec<u64> = pool.imap_unordered(do_something, order).map(|r| r.expect("task")).collect();
        println!("imap_unordered {order:?}: {unordered:?}");
    }
}
