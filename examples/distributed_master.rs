//! The master of the seed's distributed processes (seed 002): a manager
//! serving a task queue and a result queue, tasks put in, results read with
//! a timeout. Workers connect from other processes or machines
//! (`examples/distributed_worker.rs`, or the seed's Python worker).
//!
//! Python (seed 002):
//! ```python
//! task_queue = queue.Queue()
//! result_queue = queue.Queue()
//! class QueueManager(BaseManager):
//!     pass
//! QueueManager.register('get_task_queue', callable=lambda: task_queue)
//! QueueManager.register('get_result_queue', callable=lambda: result_queue)
//! manager = QueueManager(address=('', 8888), authkey=b'abc')
//! manager.start()
//! task = manager.get_task_queue()
//! result = manager.get_result_queue()
//! for i in range(10):
//!     n = random.randint(0, 100000)
//!     print("Put task %d..." % n)
//!     task.put(n)
//! print('Try get result...')
//! for i in range(10):
//!     r = result.get(timeout=10)
//!     print('Redult,%s:' % r)
//! manager.shutdown()
//! print('master exit')
//! ```
//! Usage: `distributed_master [HOST:PORT]` (default 127.0.0.1:8888; port 0
//! picks a free one). The first line printed names the address workers
//! should connect to.

use std::time::Duration;

use multiproc::managers::{Address, ServerBuilder};
use multiproc::pickle::PyValue;

/// A small random number without a dependency: the clock's nanoseconds,
/// mixed.
fn random_below(n: u64, state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % n
}

/// Runs the master on `address`; `listening` is called once the manager
/// serves (the tour starts a worker there).
pub fn run(address: Address, listening: impl FnOnce(&Address)) {
    let manager = ServerBuilder::new(address)
        .authkey(b"abc")
        .register_queue("get_task_queue")
        .register_queue("get_result_queue")
        .bind()
        .expect("bind the manager's address")
        .start()
        .expect("start the manager");
    println!("listening on {}", manager.address());
    listening(manager.address());
    let client = manager.client().expect("connect to our own manager");
    let task = client.create("get_task_queue", vec![]).expect("the task queue");
    let result = client.create("get_result_queue", vec![]).expect("the result queue");
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64 | 1;
    for _ in 0..10 {
        let n = random_below(100_001, &mut seed);
        println!("Put task {n}...");
        task.call("put", vec![PyValue::Int(n as i64)]).expect("put a task");
    }
    println!("Try get result...");
    for _ in 0..10 {
        match result.get_timeout(Duration::from_secs(10)).expect("get a result") {
            Some(r) => println!("Result: {r}"),
            None => println!("no result within 10 s"),
        }
    }
    drop((task, result));
    manager.shutdown().expect("shut the manager down");
    println!("master exit");
}

pub fn main() {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8888".into());
    run(address.parse().expect("an address: HOST:PORT"), |_| {});
}
