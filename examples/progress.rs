//! A progress bar over a slow `imap`, as tqdm draws one around
//! `pool.imap(...)` in Python (feature `progress`).
//!
//! Python:
//! ```python
//! from tqdm import tqdm
//! with Pool(2) as pool:
//!     for r in tqdm(pool.imap(slow_square, range(40)), total=40):
//!         ...
//! ```
//! Here the pool draws it (on stderr, only when that is a terminal), for
//! every map and imap it runs; results and their order are untouched.

use std::time::Duration;

use multiproc::Pool;

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(25));
    x * x
}

#[multiproc::main]
pub fn main() {
    let pool = Pool::builder().processes(2).progress_bar().build().expect("the pool");
    let total: u64 = pool.imap(slow_square, 0..40u64).map(|r| r.expect("a square")).sum();
    println!("sum of squares below 40: {total}");
    let squares = pool.map(slow_square, 0..8u64).expect("the squares");
    println!("first squares: {squares:?}");
}
