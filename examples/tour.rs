//! The tour: every seed program ported so far, one after another, each in a
//! child process of its own so that one program's exit handling cannot
//! touch the next. Each line of the listing names the seeds
//! (`../shared/seeds/00N_*`) whose programs the example ports.
//!
//! `cargo run --example tour --all-features` (without the `cluster` feature the
//! Redis-backed pool's program says how to get it)

#[cfg(feature = "cluster")]
#[path = "cluster.rs"]
mod cluster;
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
#[path = "manager_list.rs"]
mod manager_list;
#[path = "manager_shared.rs"]
mod manager_shared;
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
#[path = "pool_manager_queue.rs"]
mod pool_manager_queue;
#[path = "pool_map.rs"]
mod pool_map;
#[path = "process.rs"]
mod process;
#[path = "progress.rs"]
mod progress;
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
#[path = "worker_state.rs"]
mod worker_state;

use multiproc::{Process, StartMethod};

const PROGRAMS: &[(&str, &str, fn())] = &[
    ("fork", "os.fork returns twice (seeds 000, 002, 003, 004)", fork::main),
    ("process", "Process with arguments, start, join, pids (seeds 000, 002, 003)", process::main),
    ("nested", "a child starting a grandchild (seed 001)", nested::main),
    ("daemon", "daemon flag, is_alive, exitcode (seed 001)", daemon::main),
    ("run_method", "the subclass-with-run form (seeds 001, 004)", run_method::main),
    ("pool", "Pool(4) with imap_unordered: theoretical vs actual time (seed 000)", pool::main),
    ("pool_apply_async", "apply_async on Pool(4) and Pool(35), close, join (seeds 002, 003)", pool_apply_async::main),
    ("pool_map", "map, map_async, starmap, chunksize, callback, maxtasksperchild (seeds 001, 003)", pool_map::main),
    ("pool_imap", "imap against imap_unordered (seed 004)", pool_imap::main),
    ("pool_async", "async tasks inside worker processes (seed 000)", pool_async::main),
    (
        "worker_state",
        "a heavy state loaded once per worker, handed to each task (beyond the seeds: mpire's worker_state)",
        worker_state::main,
    ),
    (
        "progress",
        "a progress bar over a slow imap, drawn when stderr is a terminal (beyond the seeds: tqdm)",
        progress::main,
    ),
    (
        "pipe",
        "Pipe: a child writes, the parent reads (seed 000); both directions (seed 001); producer and consumer processes (seed 004)",
        pipe::main,
    ),
    ("lock", "processes taking turns under a Lock (seed 001)", lock::main),
    ("shared_value", "Value, Array, and two processes adding under a lock to 40 (seed 002)", shared_value::main),
    ("queue", "two producers, one consumer, consumer terminated (seed 000)", queue::main),
    (
        "queue_read_write",
        "a writer and a reader process on a Queue (seeds 002, 003); Queue(10) producer and consumer (seed 004)",
        queue_read_write::main,
    ),
    ("manager_list", "manager.list(range(0, 5)) appended to by five processes (seed 001)", manager_list::main),
    ("pool_manager_queue", "Pool(2) producer and consumer on Manager().Queue(10) (seed 004)", pool_manager_queue::main),
    ("manager_shared", "a manager's dict, Array and list used from child processes (seed 004)", manager_shared::main),
    ("subprocess_call", "subprocess.call and exit codes (seeds 002, 003)", subprocess_call::main),
    (
        "subprocess_communicate",
        "Popen and communicate, feeding bc several lines (seeds 002, 003)",
        subprocess_communicate::main,
    ),
    ("subprocess_run", "run into a file, run with a pipe, check_output (seed 003)", subprocess_run::main),
    ("distributed_master", "a manager master and a worker process over TCP (seed 002)", distributed),
    ("cluster", "the distributed master and workers on the Redis-backed pool (seed 002)", cluster_program),
];

/// The Redis-backed pool's program, when it can run here.
fn cluster_program() {
    #[cfg(feature = "cluster")]
    {
        if multiproc::cluster::LocalRedis::installed() {
            return cluster::main();
        }
        println!("(skipped: redis-server is not installed; `apt-get install redis-server`, then run the tour again)");
    }
    #[cfg(not(feature = "cluster"))]
    println!("(skipped: it needs the cluster feature: `cargo run --example tour --all-features`)");
}

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
