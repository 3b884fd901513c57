//! A panic in a child of a program built with `panic = "abort"`: nothing
//! unwinds and the child dies of SIGABRT, yet its caller still learns the
//! panic's message and where it happened, and a pool replaces the worker and
//! goes on. `tests/abort.rs` builds it with the workspace's `abort` profile
//! (`dev` with `panic = "abort"`): `cargo run -p multiproc-panic-abort
//! --profile abort`; built as usual it unwinds and prints the same.

use multiproc::{Error, Pool, Process, StartMethod};

fn check(n: u32) -> u32 {
    if n == 5 {
        panic!("{n} is not allowed");
    }
    n * 10
}

/// What a caller learns of a failure, on one line.
fn told(e: &Error) -> String {
    match e.root() {
        Error::Panicked { message, location, .. } => {
            format!("panicked at {}: {message}", location.as_deref().unwrap_or("?"))
        }
        other => other.to_string(),
    }
}

#[multiproc::main]
pub fn main() {
    println!("panic strategy: {}", if cfg!(panic = "abort") { "abort" } else { "unwind" });
    for method in [StartMethod::Fork, StartMethod::Spawn, StartMethod::Forkserver] {
        let mut p = Process::new(check, (5,)).with_start_method(method);
        p.start().expect("start");
        let e = p.join().expect_err("the child panics");
        println!("process ({method}): {}", told(&e));
    }
    let pool = Pool::new(2).expect("pool");
    let e = pool.map_chunksize(check, 0..10, 3).expect_err("item 5 panics");
    println!("map: item {:?} {}", e.item_index(), told(&e));
    // Round trips first, so that the panicking call is likely to go by
    // mail to a worker listening for it.
    for n in 0..50 {
        assert_eq!(pool.apply(check, (n % 5,)).expect("a round trip"), n % 5 * 10);
    }
    let e = pool.apply(check, (5,)).expect_err("the call panics");
    println!("apply: {}", told(&e));
    println!("then: {:?}", pool.map(check, 0..4).expect("the pool goes on"));
}
