//! A manager's dict, Array and list used from child processes (seed 004).
//!
//! Python (the seed names the types; this is the program it points at):
//! ```python
//! from multiprocessing import Manager, Process
//!
//! def work(d, a, l, i):
//!     d[i] = i * i
//!     a[i] = i + 10
//!     l.append(i)
//!
//! if __name__ == '__main__':
//!     manager = Manager()
//!     share_dict = manager.dict()
//!     share_array = manager.Array('i', [0] * 4)
//!     share_list = manager.list()
//!     ps = [Process(target=work, args=(share_dict, share_array, share_list, i)) for i in range(4)]
//!     for p in ps: p.start()
//!     for p in ps: p.join()
//!     print(sorted(share_dict.items()))
//!     print(share_array[:])
//!     print(sorted(share_list))
//! ```
//! The four children run at once, so the dict's and the list's orders vary
//! from run to run; printed sorted, the output does not.

use multiproc::Process;
use multiproc::managers::{ArrayProxy, DictProxy, ListProxy, Manager};

fn work(d: DictProxy<i64, i64>, a: ArrayProxy<i64>, l: ListProxy<i64>, i: i64) {
    d.insert(&i, &(i * i)).expect("d[i] = i * i");
    a.set(i, &(i + 10)).expect("a[i] = i + 10");
    l.append(&i).expect("l.append(i)");
}

#[multiproc::main]
pub fn main() {
    let manager = Manager::start().expect("start a manager");
    let share_dict = manager.dict::<i64, i64>().expect("dict");
    let share_array = manager.array("i", &[0i64; 4]).expect("Array");
    let share_list = manager.list::<i64>(&[]).expect("list");

    let mut ps: Vec<Process<()>> =
        (0..4).map(|i| Process::new(work, (share_dict.clone(), share_array.clone(), share_list.clone(), i))).collect();
    for p in &mut ps {
        p.start().expect("start");
    }
    for p in &mut ps {
        p.join().expect("join");
    }

    let mut items = share_dict.items().expect("items");
    items.sort();
    println!("{items:?}");
    println!("{:?}", share_array.to_vec().expect("a[:]"));
    let mut list = share_list.to_vec().expect("l[:]");
    list.sort();
    println!("{list:?}");
}
