use std::sync::Arc;
use std::time::Duration;

use super::*;

const CHUNK: u64 = 256 << 10;

/// A hang guard, not a synchronisation.
const HANG: Duration = Duration::from_secs(30);

fn ring(capacity: u64) -> Ring {
    Ring::new(Geometry::new(capacity, CHUNK)).unwrap()
}

/// Another process's view of the same ring: its own mapping and caches.
fn view(r: &Ring) -> Ring {
    Ring::open(r.as_fd().try_clone_to_owned().unwrap()).unwrap()
}

fn bytes(r: Option<Record>) -> Vec<u8> {
    match r {
        Some(Record::Bytes(b)) => b,
        Some(Record::Marker(())) => panic!("a marker"),
        None => panic!("nothing"),
    }
}

#[test]
fn records_wrap_around_the_end_whole_and_in_order() {
    let r = ring(CHUNK);
    // Sizes that do not divide the capacity, so records straddle its end.
    for i in 0..20_000u32 {
        let len = 1000 + (i as usize * 7919) % 3000;
        let msg: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
        assert!(r.push(Some(&msg), None).unwrap());
        if i % 3 != 0 {
            assert_eq!(bytes(r.pop(None).unwrap()), msg);
        } else {
            assert!(r.push(None, None).unwrap());
            assert_eq!(r.pop(None).unwrap(), Some(Record::Bytes(msg)));
            assert_eq!(r.pop(None).unwrap(), Some(Record::Marker(())));
        }
    }
    assert_eq!(r.items(), 0);
}

#[test]
fn a_full_ring_times_out_and_an_empty_one_too() {
    let r = ring(CHUNK);
    let big = vec![7u8; r.max_record()];
    assert!(r.push(Some(&[1; 100]), None).unwrap());
    assert!(r.push(Some(&big), None).unwrap());
    let soon = Some(Instant::now() + Duration::from_millis(20));
    assert!(!r.push(Some(&big), soon).unwrap(), "no room for a second half");
    assert!(r.push(Some(&big[108..]), None).unwrap(), "but for the exact rest");
    assert!(!r.push(None, Some(Instant::now())).unwrap(), "and then for nothing");
    assert!(r.push(Some(&vec![7u8; r.max_record() + 1]), None).is_err(), "larger than the ring takes");
    assert_eq!(bytes(r.pop(None).unwrap()), [1; 100]);
    assert!(r.push(None, None).unwrap(), "room again once a record is taken");
    assert_eq!(bytes(r.pop(None).unwrap()), big);
    assert_eq!(bytes(r.pop(None).unwrap()), big[108..]);
    assert_eq!(r.pop(None).unwrap(), Some(Record::Marker(())));
    assert!(r.pop(Some(Instant::now() + Duration::from_millis(20))).unwrap().is_none());
}

#[test]
fn a_backlog_far_above_a_chunk_fits_and_its_memory_is_given_back() {
    let r = ring(8 * CHUNK);
    let msg = vec![1u8; 4096];
    let n = 6 * CHUNK as usize / 4096;
    for _ in 0..n {
        assert!(r.push(Some(&msg), Some(Instant::now())).unwrap(), "an unconsumed backlog must not block");
    }
    assert!(r.resident() >= 6 * CHUNK);
    for _ in 0..n {
        assert_eq!(bytes(r.pop(None).unwrap()).len(), 4096);
    }
    // Only the hot window, the chunk the consumer stands in, and the
    // header page stay.
    assert!(r.resident() <= 2 * CHUNK + DATA as u64, "{} bytes still resident", r.resident());
}

#[test]
fn a_steady_stream_keeps_to_the_hot_window() {
    let r = ring(16 * CHUNK);
    // Forty times the capacity of records, never more than a few waiting.
    let n = 40 * 16 * CHUNK as usize / 1000;
    for i in 0..n {
        let msg = vec![(i % 253) as u8; 992];
        assert!(r.push(Some(&msg), None).unwrap());
        if i % 4 == 3 {
            for j in i - 3..=i {
                assert_eq!(bytes(r.pop(None).unwrap()), vec![(j % 253) as u8; 992]);
            }
        }
    }
    assert!(r.resident() <= 2 * CHUNK + DATA as u64, "{} bytes resident", r.resident());
    let tail = r.header().put.index.load(Ordering::Relaxed);
    // A lap per hot window's worth of records, not per capacity's.
    assert!(
        tail / r.geometry().capacity >= 400,
        "only {} laps: producers did not come back early",
        tail / r.geometry().capacity
    );
}

#[test]
fn records_larger_than_the_hot_window_never_overrun_the_consumer() {
    // Records of half the ring, taken as they come: each skip must leave
    // room for the record after it.
    let r = ring(4 * CHUNK);
    for i in 0..200u32 {
        let len = r.max_record() - (i as usize % 3) * 1000;
        let msg = vec![(i % 251) as u8; len];
        assert!(r.push(Some(&msg), Some(Instant::now())).unwrap(), "no room for record {i}");
        if i % 2 == 1 {
            assert!(r.push(Some(&[i as u8; 10]), Some(Instant::now())).unwrap());
        }
        assert_eq!(bytes(r.pop(None).unwrap()), msg, "record {i}");
        if i % 2 == 1 {
            assert_eq!(bytes(r.pop(None).unwrap()), [i as u8; 10]);
        }
    }
}

#[test]
fn joins_wait_for_every_task_done() {
    let r = ring(CHUNK);
    assert!(!r.task_done(), "nothing was put");
    assert!(r.push(Some(b"a"), None).unwrap());
    assert!(r.push(Some(b"b"), None).unwrap());
    let r = Arc::new(r);
    let joiner = {
        let r = r.clone();
        std::thread::spawn(move || r.join().unwrap())
    };
    assert!(r.task_done());
    assert!(r.task_done());
    joiner.join().unwrap();
    assert!(!r.task_done(), "more task_done calls than puts");
}

/// A message that says who sent it, its sequence number, and a checksum
/// of its own bytes; sizes from 0 to `max` bytes of payload.
fn message(producer: u32, seq: u32, max: usize) -> Vec<u8> {
    let x = (u64::from(producer) << 32 | u64::from(seq)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let len = match x % 5 {
        0 => (x >> 8) as usize % 16,
        1 => (x >> 8) as usize % 300,
        _ => (x >> 8) as usize % (max + 1),
    }
    .max(12);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&producer.to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.resize(len - 4, (x >> 40) as u8);
    let sum = m.iter().fold(0u32, |s, b| s.wrapping_mul(31).wrapping_add(u32::from(*b)));
    m.extend_from_slice(&sum.to_le_bytes());
    m
}

fn check(m: &[u8]) -> (u32, u32) {
    let (body, sum) = m.split_at(m.len() - 4);
    let want = body.iter().fold(0u32, |s, b| s.wrapping_mul(31).wrapping_add(u32::from(*b)));
    assert_eq!(u32::from_le_bytes(sum.try_into().unwrap()), want, "a damaged message");
    (u32::from_le_bytes(body[..4].try_into().unwrap()), u32::from_le_bytes(body[4..8].try_into().unwrap()))
}

/// Producers and consumers, each with its own view (as separate processes
/// have), stream many laps of mixed sizes through a small ring; every
/// message arrives once, whole, in its producer's order.
fn stream(producers: u32, consumers: u32, per: u32, capacity: u64, max: usize) {
    let r = ring(capacity);
    let max = max.min(r.max_record());
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let v = view(&r);
            std::thread::spawn(move || {
                for s in 0..per {
                    let m = message(p, s, max);
                    let until = Some(Instant::now() + HANG);
                    if s % 97 == 0 {
                        assert!(v.push(None, until).unwrap(), "no room for {HANG:?}");
                    }
                    assert!(v.push(Some(&m), until).unwrap(), "no room for {HANG:?}");
                }
            })
        })
        .collect();
    let total = u64::from(producers) * u64::from(per) + u64::from(producers) * u64::from(per.div_ceil(97));
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let takers: Vec<_> = (0..consumers)
        .map(|_| {
            let v = view(&r);
            let taken = taken.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while taken.fetch_add(1, Ordering::SeqCst) < total {
                    match v.pop(Some(Instant::now() + HANG)).unwrap() {
                        Some(Record::Bytes(m)) => got.push(check(&m)),
                        Some(Record::Marker(())) => {}
                        None => panic!("no message for {HANG:?}"),
                    }
                }
                got
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut all = Vec::new();
    for t in takers {
        let got = t.join().unwrap();
        // Each consumer sees each producer's messages in order.
        let mut last = vec![None; producers as usize];
        for &(p, s) in &got {
            assert!(last[p as usize] < Some(s), "producer {p}'s #{s} out of order");
            last[p as usize] = Some(s);
        }
        all.extend(got);
    }
    all.sort_unstable();
    let want: Vec<_> = (0..producers).flat_map(|p| (0..per).map(move |s| (p, s))).collect();
    assert!(all == want, "lost or repeated messages: {} of {}", all.len(), want.len());
    assert_eq!(r.items(), 0);
    let laps = r.header().put.index.load(Ordering::Relaxed) / capacity;
    assert!(laps >= 3, "only {laps} laps");
}

#[test]
fn four_producers_one_consumer_small_messages() {
    stream(4, 1, 50_000, 4 * CHUNK, 24);
}

#[test]
fn four_by_four_mixed_sizes_up_to_half_the_ring() {
    stream(4, 4, 3_000, 2 * CHUNK, usize::MAX);
}

#[test]
fn eight_by_two_sizes_around_the_hot_window() {
    stream(8, 2, 1_500, 8 * CHUNK, 3 * CHUNK as usize / 2);
}
