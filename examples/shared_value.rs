//! Shared memory: `Value('i')`, `Value('d')`, `Array('i')`, and two
//! processes adding under a lock to reach 40 (seed 002).
//!
//! Python:
//! ```python
//! value1 = mp.Value('i', 0)
//! value2 = mp.Value('d', 3.14)
//! array = mp.Array('i', [1, 2, 3, 4])
//!
//! l = mp.Lock()
//! def job(v, num):
//!     l.acquire()
//!     try:
//!         for _ in range(10):
//!             time.sleep(0.1)
//!             v.value += num
//!             print(v.value)
//!     finally:
//!         l.release()
//!
//! v = mp.Value('i', 0)
//! p1 = mp.Process(target=job, args=(v, 1))
//! p2 = mp.Process(target=job, args=(v, 3))
//! p1.start(); p2.start(); p1.join(); p2.join()
//! print("End")
//! ```
//! The lock is an argument here rather than a global that fork happens to
//! carry; sleeps are a tenth of the seed's.

use std::time::Duration;

use multiproc::{Array, Lock, Process, Value};

fn job(v: Value<i32>, num: i32, lock: Lock) {
    let _held = lock.lock().expect("lock");
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(10));
        let now = v.update(|x| x + num).expect("update");
        println!("{now}");
    }
}

#[multiproc::main]
pub fn main() {
    let value1 = Value::new(0i32).expect("value");
    // The seed's own number, not an approximation of π.
    #[allow(clippy::approx_constant)]
    let value2 = Value::new(3.14f64).expect("value");
    let array = Array::new(&[1i32, 2, 3, 4]).expect("array");
    println!(
        "value1 = {} ({:?}), value2 = {} ({:?}), array = {:?}",
        value1.get(),
        value1.typecode(),
        value2.get(),
        value2.typecode(),
        array.to_vec()
    );

    let lock = Lock::new().expect("lock");
    let v = Value::new(0i32).expect("value");
    let mut p1 = Process::new(job, (v.clone(), 1, lock.clone()));
    let mut p2 = Process::new(job, (v.clone(), 3, lock.clone()));
    p1.start().expect("start");
    p2.start().expect("start");
    p1.join().expect("join");
    p2.join().expect("join");
    println!("End");
}
