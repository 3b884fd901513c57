//! The ring's protocol under loom: the same `Ring` code as across
//! processes, over a medium of loom's checked primitives. Each thread has
//! its own `Ring` value (its own caches of the other side's index), as each
//! process has. The ring's bytes are loom cells, so a read racing a write
//! or a release of the same byte fails the model; the futex is a word plus
//! a loom condvar (sleep only while the word holds what the sleeper saw).
//!
//! Run with `RUSTFLAGS="--cfg multiproc_loom" cargo test --release --lib
//! sys::ring::model` (see `.ci/run`).

use std::io;
use std::sync::atomic::Ordering;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, AtomicU64, fence};
use loom::sync::{Arc, Mutex};

use super::super::medium::Word64;
use super::super::model::{Park, waits_on_park};
use super::medium::Medium;
use super::{Geometry, Header, Record, Ring, Side, Sleep};

struct Inner {
    header: Header<Modeled>,
    data: Box<[UnsafeCell<u8>]>,
    park: Park,
}

// SAFETY: the cells are shared on purpose: every access goes through
// loom's `with`/`with_mut`, which fail the model on a racing access.
unsafe impl Sync for Inner {}
// SAFETY: as above; nothing in `Inner` is tied to a thread.
unsafe impl Send for Inner {}

#[derive(Clone)]
struct Modeled(Arc<Inner>);

impl Modeled {
    fn new(geometry: Geometry) -> Modeled {
        let u64 = || AtomicU64::new(0);
        let u32 = || AtomicU32::new(0);
        let side = || Side {
            lock: Mutex::new(()),
            index: super::Line(u64()),
            count: u64(),
            intent_index: u64(),
            intent_count: u64(),
        };
        Modeled(Arc::new(Inner {
            header: Header {
                put: side(),
                get: side(),
                sleep: Sleep {
                    not_empty: u32(),
                    not_full: u32(),
                    all_done: u32(),
                    getters: u32(),
                    putters: u32(),
                    joiners: u32(),
                    done: u64(),
                    bell: u32(),
                },
                geometry,
            },
            data: (0..geometry.capacity).map(|_| UnsafeCell::new(0xEE)).collect(),
            park: Park::new(),
        }))
    }

    fn cell(&self, at: u64, i: usize) -> &UnsafeCell<u8> {
        &self.0.data[(at as usize + i) % self.0.data.len()]
    }
}

waits_on_park!(Modeled, |s| s.0.park);

impl Medium for Modeled {
    fn header(&self) -> &Header<Self> {
        &self.0.header
    }

    fn write(&self, at: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: loom checks that no other thread touches the cell
            // concurrently; that is what the model is for.
            self.cell(at, i).with_mut(|p| unsafe { *p = *b });
        }
    }

    fn read(&self, at: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: as in `write`.
            *b = self.cell(at, i).with(|p| unsafe { *p });
        }
    }

    fn read_vec(&self, at: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.read(at, &mut out);
        out
    }

    fn release(&self, at: u64, len: u64) -> io::Result<()> {
        self.write(at, &vec![0; len as usize]);
        Ok(())
    }

    fn light_fence(&self) {
        fence(Ordering::SeqCst);
    }

    fn heavy_fence(&self) -> bool {
        fence(Ordering::SeqCst);
        true
    }

    fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }

    fn spins(&self) -> u32 {
        0
    }
}

/// A 32-byte ring: a record of 8 bytes of word and up to 8 of payload, so a
/// handful of records go around it and straddle its end. The hot window is
/// its first half, given back in 8-byte chunks.
fn small() -> Geometry {
    Geometry { capacity: 32, chunk: 8, hot: 16 }
}

fn ring(m: &Modeled) -> Ring<Modeled> {
    Ring::around(m.clone())
}

/// Runs `f` in a thread of its own with its own view of the ring, as
/// another process would.
fn process<T: Send + 'static>(
    m: &Modeled,
    f: impl FnOnce(Ring<Modeled>) -> T + Send + 'static,
) -> loom::thread::JoinHandle<T> {
    let m = m.clone();
    loom::thread::spawn(move || f(ring(&m)))
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

fn take(r: &Ring<Modeled>) -> Vec<u8> {
    match r.pop(None).unwrap() {
        Some(Record::Bytes(b)) => b,
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_producer_one_consumer_around_the_end() {
    model(|| {
        let m = Modeled::new(small());
        let producer = process(&m, |r| {
            // 14 + 15 + 12 + 13 bytes: over a lap, one record straddling
            // the end, and a marker.
            for msg in [&[1u8; 6][..], &[2; 7], &[3; 4]] {
                assert!(r.push(Some(msg), None).unwrap());
            }
            assert!(r.push(None, None).unwrap());
        });
        let r = ring(&m);
        assert_eq!(take(&r), [1; 6]);
        assert_eq!(take(&r), [2; 7]);
        assert_eq!(take(&r), [3; 4]);
        assert_eq!(r.pop(None).unwrap(), Some(Record::Marker(())));
        producer.join().unwrap();
        assert_eq!(r.items(), 0);
    });
}

#[test]
fn two_producers_keep_their_order() {
    model(|| {
        let m = Modeled::new(small());
        let second = process(&m, |r| assert!(r.push(Some(&[9; 8]), None).unwrap()));
        let r = ring(&m);
        let first = process(&m, |r| {
            assert!(r.push(Some(&[1; 5]), None).unwrap());
            assert!(r.push(Some(&[2; 3]), None).unwrap());
        });
        let got: Vec<Vec<u8>> = (0..3).map(|_| take(&r)).collect();
        let at = |m: &[u8]| got.iter().position(|b| b == m).expect("every message");
        assert!(at(&[1; 5]) < at(&[2; 3]), "{got:?}");
        at(&[9; 8]);
        first.join().unwrap();
        second.join().unwrap();
    });
}

#[test]
fn two_consumers_take_each_record_once() {
    model(|| {
        let m = Modeled::new(small());
        let consumers: Vec<_> = (0..2).map(|_| process(&m, |r| take(&r))).collect();
        let r = ring(&m);
        assert!(r.push(Some(&[1; 8]), None).unwrap());
        assert!(r.push(Some(&[2; 8]), None).unwrap());
        let mut got: Vec<Vec<u8>> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, [vec![1; 8], vec![2; 8]]);
    });
}

#[test]
fn a_full_ring_wakes_its_producer() {
    model(|| {
        let m = Modeled::new(small());
        let r = ring(&m);
        // 16 + 16 bytes: full.
        assert!(r.push(Some(&[1; 8]), None).unwrap());
        assert!(r.push(Some(&[2; 8]), None).unwrap());
        let producer = process(&m, |r| assert!(r.push(Some(&[3; 8]), None).unwrap()));
        assert_eq!(take(&r), [1; 8]);
        producer.join().unwrap();
        assert_eq!(take(&r), [2; 8]);
        assert_eq!(take(&r), [3; 8]);
    });
}

#[test]
fn the_hot_window_skip_and_released_chunks_race_nothing() {
    model(|| {
        // A steady stream: each record taken before the next is put, so
        // producers go back to the start past the hot window, and consumers
        // give chunks back behind them.
        let m = Modeled::new(Geometry { capacity: 48, chunk: 8, hot: 16 });
        let producer = process(&m, |r| {
            for i in 0..3u8 {
                assert!(r.push(Some(&[i; 6]), None).unwrap());
            }
        });
        let r = ring(&m);
        for i in 0..3u8 {
            assert_eq!(take(&r), [i; 6]);
        }
        producer.join().unwrap();
    });
}

#[test]
fn join_waits_for_task_done() {
    model(|| {
        let m = Modeled::new(small());
        let r = ring(&m);
        assert!(r.push(Some(&[1]), None).unwrap());
        let worker = process(&m, |r| {
            assert_eq!(take(&r), [1]);
            assert!(r.task_done());
        });
        r.join().unwrap();
        assert!(!r.task_done());
        worker.join().unwrap();
    });
}

#[test]
fn a_lost_count_is_repaired_by_the_next_holder() {
    // Invariant 4 without loom's threads: the journal as a dead producer
    // leaves it between storing `tail` and `pushed`.
    loom::model(|| {
        let m = Modeled::new(small());
        let r = ring(&m);
        assert!(r.push(Some(&[1]), None).unwrap());
        let h = r.header();
        h.put.count.store(0, Ordering::Relaxed);
        assert_eq!(r.items(), 0);
        h.put.repair();
        assert_eq!(r.items(), 1);
        assert_eq!(<AtomicU64 as Word64>::load(&h.put.count, Ordering::Relaxed), 1);
    });
}

/// A watcher (`connection::wait`) asleep on a ring beside a consumer: the
/// one wake-up a push makes may land on the watcher, which passes it on,
/// so the consumer is never left asleep beside a record. (Without the
/// hand-on, loom finds the consumer parked for good.)
#[test]
fn a_watcher_never_keeps_a_consumers_wake_up() {
    model(|| {
        let m = Modeled::new(small());
        let stop = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            process(&m, move |r| r.wait_filled(None, &|| stop.load(Ordering::SeqCst)).unwrap())
        };
        let consumer = process(&m, |r| take(&r));
        let r = ring(&m);
        assert!(r.push(Some(&[7; 4]), None).unwrap());
        assert_eq!(consumer.join().unwrap(), [7; 4]);
        stop.store(true, Ordering::SeqCst);
        r.wake_watchers();
        watcher.join().unwrap();
        assert_eq!(r.items(), 0, "the watcher took nothing");
    });
}

/// A consumer that sleeps elsewhere (a pool's supervisor in `poll`) raises
/// the bell, fences and looks once more; a producer pushes and answers the
/// bell. Either the producer rings or the consumer sees the record, never
/// neither; and a second push does not ring the same sleep again.
/// (Without the consumer's fence, loom finds both missing each other.)
#[test]
fn a_consumer_sleeping_elsewhere_is_rung_or_sees_the_record() {
    model(|| {
        let m = Modeled::new(small());
        let producer = process(&m, |r| {
            assert!(r.push(Some(&[1; 4]), None).unwrap());
            let first = r.answer_bell();
            assert!(r.push(Some(&[2; 4]), None).unwrap());
            (first, r.answer_bell())
        });
        let r = ring(&m);
        r.raise_bell();
        r.sleeper_fence();
        let saw = r.items() > 0;
        let (first, second) = producer.join().unwrap();
        assert!(saw || first, "the record came unseen and the sleeper was not rung");
        assert!(!(first && second), "one sleep rung twice");
        r.lower_bell();
        assert_eq!(take(&r), [1; 4]);
        assert_eq!(take(&r), [2; 4]);
    });
}
