//! A worker of the seed's distributed processes (seed 002's companion):
//! connects to the master's manager, takes tasks, puts results.
//!
//! Python (the seed's worker):
//! ```python
//! class QueueManager(BaseManager):
//!     pass
//! QueueManager.register('get_task_queue')
//! QueueManager.register('get_result_queue')
//! m = QueueManager(address=('127.0.0.1', 8888), authkey=b'abc')
//! m.connect()
//! task = m.get_task_queue()
//! result = m.get_result_queue()
//! for i in range(10):
//!     try:
//!         n = task.get(timeout=1)
//!         print('run task %d * %d...' % (n, n))
//!         r = '%d * %d = %d' % (n, n, n*n)
//!         result.put(r)
//!     except queue.Empty:
//!         print('task queue is empty.')
//! print('worker exit.')
//! ```
//! Usage: `distributed_worker [HOST:PORT]` (default 127.0.0.1:8888).

use std::time::Duration;

use multiproc::managers::{Address, Client};
use multiproc::pickle::PyValue;

/// Runs the worker against the manager at `address`.
pub fn run(address: Address) {
    println!("Connect to server {address}...");
    let m = Client::connect(&address, b"abc").expect("connect to the master");
    let task = m.create("get_task_queue", vec![]).expect("the task queue");
    let result = m.create("get_result_queue", vec![]).expect("the result queue");
    for _ in 0..10 {
        match task.get_timeout(Duration::from_secs(1)).expect("get a task") {
            Some(PyValue::Int(n)) => {
                println!("run task {n} * {n}...");
                let r = format!("{n} * {n} = {}", n * n);
                result.call("put", vec![PyValue::Str(r)]).expect("put a result");
            }
            Some(other) => println!("not a number: {other}"),
            None => println!("task queue is empty."),
        }
    }
    println!("worker exit.");
}

pub fn main() {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8888".into());
    run(address.parse().expect("an address: HOST:PORT"));
}
