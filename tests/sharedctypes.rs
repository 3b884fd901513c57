//! Value and Array shared between processes.

mod common;

use common::{each_method, join};
use multiproc::{Array, Error, Pipe, Pool, Process, RawArray, RawValue, StartMethod, Value};

fn add_many(v: Value<i64>, n: u32) {
    for _ in 0..n {
        v.update(|x| x + 1).unwrap();
    }
}

#[test]
fn updates_under_the_lock_are_never_lost() {
    each_method(|m| {
        let v = Value::new(0i64).unwrap();
        let mut ps: Vec<_> = (0..4).map(|_| Process::new(add_many, (v.clone(), 500)).with_start_method(m)).collect();
        for p in &mut ps {
            p.start().unwrap();
        }
        for p in &mut ps {
            join(p).unwrap();
        }
        assert_eq!(v.get(), 2000, "{m}");
    });
}

fn fill(a: Array<f64>, raw: RawArray<u8>, rv: RawValue<bool>) -> f64 {
    for i in 0..a.len() {
        a.update(i, |x| x * 2.0).unwrap();
        raw.set(i, i as u8 + 1).unwrap();
    }
    rv.set(true);
    a.to_vec().iter().sum()
}

#[test]
fn arrays_and_raw_values_are_seen_by_both_sides() {
    each_method(|m| {
        let a = Array::new(&[1.0, 2.0, 3.0]).unwrap();
        let raw = RawArray::new(&[0u8; 3]).unwrap();
        let rv = RawValue::new(false).unwrap();
        let mut p = Process::new(fill, (a.clone(), raw.clone(), rv.clone())).with_start_method(m);
        p.start().unwrap();
        assert_eq!(join(&mut p).unwrap(), 12.0, "{m}");
        assert_eq!(a.to_vec(), [2.0, 4.0, 6.0]);
        assert_eq!(raw.to_vec(), [1, 2, 3]);
        assert!(rv.get());
    });
}

fn bump(v: Value<u32>) -> u32 {
    v.update(|x| x + 1).unwrap()
}

#[test]
fn values_reach_running_pool_workers() {
    let pool = Pool::builder().processes(2).start_method(StartMethod::Forkserver).build().unwrap();
    pool.map(|x: u8| x, 0..4).unwrap();
    let v = Value::new(0u32).unwrap();
    let seen = pool.map(bump, vec![v.clone(); 50]).unwrap();
    assert_eq!(v.get(), 50);
    let mut seen = seen;
    seen.sort();
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
}

#[test]
fn types_must_match_on_arrival() {
    let (a, b) = Pipe(true).unwrap();
    b.send(&Value::new(1i32).unwrap()).unwrap();
    assert!(a.recv::<Value<i64>>().is_err());
    b.send(&RawArray::new(&[1u16, 2]).unwrap()).unwrap();
    assert_eq!(a.recv::<RawArray<u16>>().unwrap().to_vec(), [1, 2]);
}

#[test]
fn indexes_past_the_end_are_errors() {
    let a = Array::new(&[1i32, 2]).unwrap();
    assert_eq!(a.get(2), None);
    assert!(matches!(a.set(2, 0), Err(Error::IndexOutOfRange { index: 2, len: 2 })));
    assert!(matches!(a.update(5, |x| x), Err(Error::IndexOutOfRange { index: 5, len: 2 })));
    let empty = Array::<u8>::new(&[]).unwrap();
    assert!(empty.is_empty() && empty.to_vec().is_empty());
}

#[test]
fn the_memory_outlives_its_creator_while_others_hold_it() {
    let v = Value::new(7i32).unwrap();
    let (a, b) = Pipe(true).unwrap();
    b.send(&v).unwrap();
    drop(v);
    let v: Value<i32> = a.recv().unwrap();
    assert_eq!(v.get(), 7);
}

#[test]
fn an_array_cannot_arrive_as_a_value() {
    let (a, b) = Pipe(true).unwrap();
    b.send(&RawArray::new(&[1i32, 2, 3]).unwrap()).unwrap();
    assert!(a.recv::<RawValue<i32>>().is_err());
    b.send(&RawArray::<i32>::new(&[]).unwrap()).unwrap();
    assert!(a.recv::<RawValue<i32>>().is_err());
}
