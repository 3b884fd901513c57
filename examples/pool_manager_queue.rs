//! Pool workers talking through a manager's queue (seed 004).
//!
//! Python:
//! ```python
//! def producer(queue):
//!     queue.put("a")
//!     time.sleep(2)
//!
//! def consumer(queue):
//!     time.sleep(2)
//!     data = queue.get()
//!     print(data)
//!
//! if __name__ == '__main__':
//!     # pool 中的 queue 需要使用 manager 中的
//!     queue = Manager().Queue(10)
//!     pool = Pool(2)
//!
//!     pool.apply_async(producer, args=(queue,))
//!     pool.apply_async(consumer, args=(queue,))
//!
//!     pool.close()
//!     pool.join()
//! ```
//! A pool's workers already run when its tasks are sent, so a plain
//! `multiproc::Queue` cannot be handed to them as an argument; a manager's
//! queue can (a proxy travels as an address). `Manager::start()?.queue(10)`
//! works as the seed's one-liner does: the manager lives while the queue's
//! proxy does. Sleeps are a tenth of the seed's.

use std::time::Duration;

use multiproc::Pool;
use multiproc::managers::{Manager, QueueProxy};

fn producer(queue: QueueProxy<String>) {
    queue.put(&"a".to_string()).expect("put");
    std::thread::sleep(Duration::from_millis(200));
}

fn consumer(queue: QueueProxy<String>) {
    std::thread::sleep(Duration::from_millis(200));
    let data = queue.get().expect("get");
    println!("{data}");
}

#[multiproc::main]
pub fn main() {
    // A pool's queue must be a manager's.
    let queue = Manager::start().and_then(|m| m.queue::<String>(10)).expect("a manager's queue");
    let pool = Pool::new(2).expect("pool");

    let produced = pool.apply_async(producer, (queue.clone(),));
    let consumed = pool.apply_async(consumer, (queue.clone(),));

    pool.close();
    pool.join().expect("join");
    // Python drops a failed async task's error silently; we look.
    for result in [produced, consumed] {
        result.get().expect("the task");
    }
}
