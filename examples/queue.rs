//! Two producers and one consumer on a `Queue`; the consumer loops forever
//! and is terminated at the end (seed 000).
//!
//! Python:
//! ```python
//! def producer_process(q, urls):
//!     print('Producer process starts writing...')
//!     for url in urls:
//!         q.put(url)
//!         print(f'[Producer Process] Put {url} to the queue')
//!         time.sleep(random.random())
//!
//! def consumer_process(q):
//!     print('Consumer process starts reading...')
//!     while True:
//!         url = q.get(block=True)
//!         print(f'[Consumer Process] Get {url} from the queue')
//!
//! q = Queue()
//! producer1 = Process(target=producer_process, args=(q, ['url1', 'url2', 'url3']))
//! producer2 = Process(target=producer_process, args=(q, ['url4', 'url5']))
//! consumer = Process(target=consumer_process, args=(q,))
//! producer1.start(); producer2.start(); consumer.start()
//! producer1.join(); producer2.join()
//! time.sleep(3)  # Make sure the consumer has finished consuming the values
//! consumer.terminate()
//! ```
//! Instead of sleeping and hoping, the parent waits until the queue is
//! drained (a `JoinableQueue` would too); sleeps are a tenth of the seed's.

use std::time::Duration;

use multiproc::{JoinableQueue, Process};

fn producer_process(q: JoinableQueue<String>, urls: Vec<String>) {
    println!("Producer process starts writing...");
    for (i, url) in urls.into_iter().enumerate() {
        q.put(&url).expect("put");
        println!("[Producer Process] Put {url} to the queue");
        std::thread::sleep(Duration::from_millis(37 * (i as u64 + 1) % 100));
    }
}

fn consumer_process(q: JoinableQueue<String>) {
    println!("Consumer process starts reading...");
    loop {
        let url = q.get().expect("get");
        println!("[Consumer Process] Get {url} from the queue");
        q.task_done().expect("task_done");
    }
}

#[multiproc::main]
pub fn main() {
    let q = JoinableQueue::new(0).expect("queue");
    let urls = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut producer1 = Process::new(producer_process, (q.clone(), urls(&["url1", "url2", "url3"])));
    let mut producer2 = Process::new(producer_process, (q.clone(), urls(&["url4", "url5"])));
    let mut consumer = Process::new(consumer_process, (q.clone(),));
    producer1.start().expect("start");
    producer2.start().expect("start");
    consumer.start().expect("start");
    producer1.join().expect("join");
    producer2.join().expect("join");
    q.join().expect("every url consumed");
    consumer.terminate().expect("terminate");
    let _ = consumer.join();
    println!("consumer terminated: exitcode {:?}", consumer.exitcode());
}
