//! The tour: every seed program ported so far, one after another, each in a
//! child process of its own so that one program's exit handling cannot
//! touch the next.
//!
//! `cargo run --example tour`

#[path = "daemon.rs"]
mod daemon;
#[path = "distributed_master.rs"]
#[allow(dead_code, reason = "the tour runs the pair on a free port, not through their main")]
mod distributed_master;
#[path = "distributed_worker.rs"]
#[allow(dead_code, reason = "the tour runs the pair on a free port, not through their main")]
mod distributed_worker;
#[path = "fork.rs"]
mod fork;
#[path = "lock.rs"]
mod lock;
#[path = "nested.rs"]
mod nested;
#[path = "pipe.rs"]
mod pipe;
#[path = "pool.rs"]
mod pool;
#[path = "pool_apply_async.rs"]
mod pool_apply_async;
#[path = "pool_async.rs"]
mod pool_async;
#[path = "pool_imap.rs"]
mod pool_imap;
#[path = "pool_map.rs"]
mod pool_map;
#[path = "process.rs"]
mod process;
#[path = "queue.rs"]
mod queue;
#[path = "queue_read_write.rs"]
mod queue_read_write;
#[path = "run_method.rs"]
mod run_method;
#[path = "shared_value.rs"]
mod shared_value;
#[path = "subprocess_call.rs"]
mod subprocess_call;
#[path = "subprocess_communicate.rs"]
mod subprocess_communicate;
#[path = "subprocess_run.rs"]
mod subprocess_run;

use multiproc::{Process, StartMethod};

const PROGRAMS: &[(&str, &str, fn())] = &[
    ("fork", "os.fork returns twice", fork::main),
    ("process", "Process with arguments, start, join, pids", process::main),
    ("nested", "a child starting a grandchild", nested::main),
    ("daemon", "daemon flag, is_alive, exitcode", daemon::main),
    ("run_method", "the subclass-with-run form", run_method::main),
    ("pool", "Pool(4) with imap_unordered: theoretical vs actual time", pool::main),
    ("pool_apply_async", "apply_async on Pool(4) and Pool(35), close, join", pool_apply_async::main),
    ("pool_map", "map, map_async, starmap, chunksize, callback, maxtasksperchild", pool_map::main),
    ("pool_imap", "imap against imap_unordered", pool_imap::main),
    ("pool_async", "async tasks inside worker processes", pool_async::main),
    ("pipe", "Pipe: a child writes, the parent reads; both directions", pipe::main),
    ("lock", "processes taking turns under a Lock", lock::main),
    ("shared_value", "Value, Array, and two processes adding under a lock to 40", shared_value::main),
    ("queue", "two producers, one consumer, consumer terminated", queue::main),
    ("queue_read_write", "a writer and a reader process on a Queue", queue_read_write::main),
    ("subprocess_call", "subprocess.call and exit codes", subprocess_call::main),
    ("subprocess_communicate", "Popen and communicate, feeding bc several lines", subprocess_communicate::main),
    ("subprocess_run", "run into a file, run with a pipe, check_output", subprocess_run::main),
    ("distributed_master", "a manager master and a worker process over TCP", distributed),
];

/// The distributed pair: the master here, its worker in a child process
/// that connects over loopback once the manager listens.
fn distributed() {
    fn worker(address: String) {
        distributed_worker::run(address.parse().expect("the master's address"));
    }
    let mut started = None;
    distributed_master::run("127.0.0.1:0".parse().expect("an address"), |address| {
        let mut p = Process::new(worker, (address.to_string(),));
        p.start().expect("start the worker");
        started = Some(p);
    });
    if let Some(mut p) = started {
        p.join().expect("the worker");
    }
}

/// Runs one program as if it were `main` of its own process.
fn run_program(index: usize) {
    (PROGRAMS[index].2)();
    // Its own exit handling (joining its children) happens as it leaves.
}

#[multiproc::main]
fn main() {
    println!("multiproc tour: {} programs from the seed tutorials", PROGRAMS.len());
    for (index, (name, what, _)) in PROGRAMS.iter().enumerate() {
        println!("\n=== examples/{name}.rs: {what} ===");
        let mut p = Process::new(run_program, (index,)).with_start_method(StartMethod::Spawn).with_name(*name);
        p.start().expect("start program");
        if let Err(e) = p.join() {
            eprintln!("examples/{name}.rs failed: {e}");
            std::process::exit(1);
        }
    }
    println!("\nall {} programs ran", PROGRAMS.len());
}
