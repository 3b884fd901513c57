//! A writer process and a reader process on a `Queue` (seeds 002 and 003),
//! then seed 004's producer and consumer processes on a `Queue(10)`.
//!
//! Python:
//! ```python
//! def write(q):
//!     print('Process to write: %s' % os.getpid())
//!     for value in ['A', 'B', 'C']:
//!         print('Put %s to queue...' % value)
//!         q.put(value)
//!         time.sleep(random.random())
//!
//! def read(q):
//!     print('Process to read: %s' % os.getpid())
//!     while True:
//!         value = q.get(True)
//!         print('Get %s from queue.' % value)
//!
//! q = Queue()
//! pw = Process(target=write, args=(q,))
//! pr = Process(target=read, args=(q,))
//! pw.start(); pr.start()
//! pw.join()
//! pr.terminate()
//! ```
//!
//! Seed 004:
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
//! queue = Queue(10)
//! my_producer = Process(target=producer, args=(queue,))
//! my_consumer = Process(target=consumer, args=(queue,))
//! my_producer.start(); my_consumer.start()
//! my_producer.join(); my_consumer.join()
//! ```
//! The seed terminates the reader as soon as the writer is done, which can
//! cut it off before it read the last value; here the reader also stops on
//! its own after the writer's last value ("C") and is terminated only if it
//! has not. Sleeps are a tenth of the seed's.

use std::time::Duration;

use multiproc::{Process, Queue, os};

fn write(q: Queue<String>) {
    println!("Process to write: {}", os::getpid());
    for value in ["A", "B", "C"] {
        println!("Put {value} to queue...");
        q.put(&value.to_string()).expect("put");
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn read(q: Queue<String>) {
    println!("Process to read: {}", os::getpid());
    loop {
        let value = q.get().expect("get");
        println!("Get {value} from queue.");
        if value == "C" {
            return;
        }
    }
}

fn producer(queue: Queue<String>) {
    queue.put(&"a".to_string()).expect("put");
    std::thread::sleep(Duration::from_millis(200));
}

fn consumer(queue: Queue<String>) {
    std::thread::sleep(Duration::from_millis(200));
    let data = queue.get().expect("get");
    println!("{data}");
}

#[multiproc::main]
pub fn main() {
    let q = Queue::new(10).expect("queue");
    let mut pw = Process::new(write, (q.clone(),));
    let mut pr = Process::new(read, (q.clone(),));
    pw.start().expect("start");
    pr.start().expect("start");
    pw.join().expect("join");
    if pr.join_timeout(Duration::from_secs(60)).expect("join").is_none() {
        pr.terminate().expect("terminate");
    }

    // Seed 004: a producer and a consumer process on a Queue(10).
    let queue = Queue::new(10).expect("queue");
    let mut my_producer = Process::new(producer, (queue.clone(),));
    let mut my_consumer = Process::new(consumer, (queue.clone(),));
    my_producer.start().expect("start");
    my_consumer.start().expect("start");
    my_producer.join().expect("join");
    my_consumer.join().expect("join");
}
