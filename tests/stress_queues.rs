//! Many processes streaming through one queue, under every start method:
//! sequence-numbered, checksummed messages of sizes that straddle every
//! boundary of the queue (the ring's record word, its hot window, the
//! packet size, the largest ring record), with producers and consumers
//! SIGKILLed at random. Every message put is got at most once, whole and
//! in its producer's order by every consumer; each kill costs at most the
//! one message its victim was taking.
//!
//! `MULTIPROC_SOAK_SECS=N cargo test --release --test stress_queues soak`
//! runs the same with kills for N seconds; `MULTIPROC_SEED` repeats a run
//! (every run prints its seed).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{GUARD, Rng, checksum, join, seed};
use multiproc::{Process, Queue, StartMethod};
use serde_bytes::ByteBuf;

/// Payload sizes around each boundary (the item is a `ByteBuf`, whose
/// encoding adds its length's varint: 1 byte below 128, 3 below 2 MiB, 4
/// below 256 MiB).
const SIZES: &[usize] = &[
    16,
    17,
    23,
    24,
    25,
    100,
    126,
    127,
    128, // small records, varint edges
    4093,
    4096,
    4099, // a page
    (48 << 10) - 4,
    (48 << 10) - 3,
    (48 << 10) + 1, // one packet on the socket path (48 KiB)
    (128 << 10) - 3,
    (128 << 10) + 5, // half a chunk
    (256 << 10) - 3,
    (256 << 10),
    (256 << 10) + 7, // a chunk of the ring (given back in these)
];
/// Rarer, they are big: around the size past which a value travels in a
/// memory file of its own (1 MiB encoded), around the size past which a
/// received buffer is advised into huge pages and a received file is
/// unmapped by a thread of its own (4 MiB), and around the largest ring
/// record (16 MiB encoded, now in memory files too unless descriptors run
/// short).
const HUGE: &[usize] = &[
    (1 << 20) - 4,
    (1 << 20) - 3,
    (1 << 20) - 2,
    (4 << 20) - 5,
    (4 << 20) - 4,
    4 << 20,
    (16 << 20) - 5,
    (16 << 20) - 4,
    (16 << 20) - 3,
];

/// The message `seq` of `producer`: its id, sequence number, filler, and
/// a checksum of all that.
fn message(producer: u32, seq: u32, seed: u64, huge: bool) -> ByteBuf {
    let (len, mut rng) = message_len(producer, seq, seed, huge);
    let mut m = Vec::with_capacity(len);
    m.resize(len - 8, 0);
    m[..4].copy_from_slice(&producer.to_le_bytes());
    m[4..8].copy_from_slice(&seq.to_le_bytes());
    // Filler a word at a time (a byte at a time, making it was most of
    // this test's time): each word differs from its neighbours.
    let fill = rng.next();
    for (i, chunk) in m[8..].chunks_mut(8).enumerate() {
        let word = (fill ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    let sum = checksum(&m);
    m.extend_from_slice(&sum.to_le_bytes());
    ByteBuf::from(m)
}

/// The length of message `seq` of `producer`, and the generator that then
/// makes its filler.
fn message_len(producer: u32, seq: u32, seed: u64, huge: bool) -> (usize, Rng) {
    let mut rng = Rng(seed ^ (u64::from(producer) << 32 | u64::from(seq)) | 1);
    let len = if huge && rng.below(400) == 0 {
        HUGE[rng.below(HUGE.len() as u64) as usize]
    } else if rng.below(3) == 0 {
        SIZES[rng.below(SIZES.len() as u64) as usize]
    } else {
        16 + rng.below(64) as usize
    };
    (len, rng)
}

/// Puts `n` messages, noting each one done in `progress` (4 bytes each).
fn produce(q: Queue<ByteBuf>, producer: u32, n: u32, seed: u64, huge: bool, progress: String) {
    let mut log = std::fs::OpenOptions::new().append(true).open(progress).unwrap();
    for seq in 0..n {
        q.put(&message(producer, seq, seed, huge)).unwrap();
        log.write_all(&seq.to_le_bytes()).unwrap();
    }
}

/// Takes messages until an empty one, checking each and noting it in
/// `taken` (producer, seq: 8 bytes each) as soon as it has it.
fn consume(q: Queue<ByteBuf>, taken: String, slow: bool) {
    let mut log = std::fs::OpenOptions::new().append(true).open(taken).unwrap();
    loop {
        let m = q.get_timeout(GUARD).unwrap();
        if m.is_empty() {
            return;
        }
        let (body, sum) = m.split_at(m.len() - 8);
        assert_eq!(checksum(body), u64::from_le_bytes(sum.try_into().unwrap()), "a damaged message");
        log.write_all(&m[..8]).unwrap();
        if slow {
            std::thread::yield_now();
        }
    }
}

struct Run {
    producers: u32,
    consumers: u32,
    per_producer: u32,
    maxsize: usize,
    huge: bool,
    kills: bool,
    slow: bool,
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn file(dir: &Path, name: String) -> String {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap();
    path.to_string_lossy().into_owned()
}

/// What a run moved: messages, bytes, kills.
#[derive(Default, Debug)]
struct Tally {
    messages: u64,
    bytes: u64,
    kills: u64,
}

fn stream(run: &Run, method: StartMethod, seed: u64) -> Tally {
    eprintln!("stream under {method}: seed {seed} (MULTIPROC_SEED={seed} repeats it)");
    let dir = Dir(std::env::temp_dir().join(format!("multiproc-stress-{}-{seed}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let q: Queue<ByteBuf> = Queue::new(run.maxsize).unwrap();
    let mut rng = Rng(seed | 1);
    let mut next_producer = 0u32;
    let mut next_consumer = 0u32;
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    let mut start_producer = |producers: &mut Vec<(u32, Process<()>, String)>| {
        let id = next_producer;
        next_producer += 1;
        let progress = file(&dir.0, format!("p{id}"));
        let mut p = Process::new(produce, (q.clone(), id, run.per_producer, seed, run.huge, progress.clone()))
            .with_start_method(method);
        p.start().unwrap();
        producers.push((id, p, progress));
    };
    let mut start_consumer = |consumers: &mut Vec<(Process<()>, String)>| {
        let taken = file(&dir.0, format!("c{next_consumer}"));
        next_consumer += 1;
        let mut c = Process::new(consume, (q.clone(), taken.clone(), run.slow)).with_start_method(method);
        c.start().unwrap();
        consumers.push((c, taken));
    };
    for _ in 0..run.producers {
        start_producer(&mut producers);
    }
    for _ in 0..run.consumers {
        start_consumer(&mut consumers);
    }
    let mut tally = Tally::default();
    let mut consumer_kills = 0u64;
    let mut killed_producers = HashSet::new();
    let until = Instant::now() + GUARD;
    // Kill at random while producers run, replacing each victim.
    loop {
        let running = producers.iter_mut().filter(|(id, p, _)| !killed_producers.contains(id) && p.is_alive()).count();
        if running == 0 {
            break;
        }
        assert!(Instant::now() < until, "the stream hung");
        if run.kills && tally.kills < 12 {
            std::thread::sleep(Duration::from_millis(rng.below(40)));
            if rng.below(2) == 0 {
                let live: Vec<usize> = (0..producers.len())
                    .filter(|i| !killed_producers.contains(&producers[*i].0) && producers[*i].1.is_alive())
                    .collect();
                if let Some(&i) = live.get(rng.below(live.len().max(1) as u64) as usize) {
                    producers[i].1.kill().unwrap();
                    killed_producers.insert(producers[i].0);
                    tally.kills += 1;
                    start_producer(&mut producers);
                }
            } else {
                let i = rng.below(consumers.len() as u64) as usize;
                if consumers[i].0.is_alive() {
                    consumers[i].0.kill().unwrap();
                    let _ = join(&mut consumers[i].0);
                    consumers.remove(i);
                    consumer_kills += 1;
                    tally.kills += 1;
                    start_consumer(&mut consumers);
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for (id, p, _) in &mut producers {
        let r = join(p);
        if !killed_producers.contains(id) {
            r.unwrap_or_else(|e| panic!("producer {id}: {e}"));
        }
    }
    let live: Vec<usize> = (0..consumers.len()).filter(|i| consumers[*i].0.is_alive()).collect();
    for _ in &live {
        q.put(&ByteBuf::new()).unwrap();
    }
    for (c, _) in &mut consumers {
        join(c).unwrap_or_else(|e| panic!("consumer: {e}"));
    }
    // What each producer finished putting, and what consumers took.
    let mut done: HashMap<u32, u32> = HashMap::new();
    for (id, _, progress) in &producers {
        done.insert(*id, (std::fs::metadata(progress).unwrap().len() / 4) as u32);
    }
    let mut seen: HashSet<(u32, u32)> = HashSet::new();
    for entry in std::fs::read_dir(&dir.0).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_name().to_string_lossy().starts_with('c') {
            continue;
        }
        let log = std::fs::read(entry.path()).unwrap();
        let mut last: HashMap<u32, u32> = HashMap::new();
        for rec in log.chunks_exact(8) {
            let p = u32::from_le_bytes(rec[..4].try_into().unwrap());
            let s = u32::from_le_bytes(rec[4..].try_into().unwrap());
            assert!(last.get(&p).is_none_or(|l| *l < s), "{method}: producer {p}'s #{s} came out of order");
            last.insert(p, s);
            assert!(seen.insert((p, s)), "{method}: producer {p}'s #{s} came out twice");
            let finished = done[&p];
            assert!(
                s < finished || (s == finished && killed_producers.contains(&p)),
                "{method}: producer {p}'s #{s} came out but was never put"
            );
            tally.bytes += message_len(p, s, seed, run.huge).0 as u64;
        }
    }
    let expected: u64 = done.values().map(|n| u64::from(*n)).sum();
    let lost = expected.saturating_sub(seen.iter().filter(|(p, s)| *s < done[p]).count() as u64);
    assert!(
        lost <= consumer_kills,
        "{method}: {lost} messages lost with {consumer_kills} consumers killed (seed {seed})"
    );
    tally.messages = seen.len() as u64;
    tally
}

#[test]
fn four_producers_four_consumers_every_size() {
    let run =
        Run { producers: 4, consumers: 4, per_producer: 3_000, maxsize: 0, huge: true, kills: false, slow: false };
    for m in StartMethod::ALL {
        stream(&run, m, seed());
    }
}

#[test]
fn eight_producers_two_consumers_small_messages_many_laps() {
    // 8 x 25,000 messages of 16-80 bytes (and the boundary sizes): well
    // over a hundred trips around the hot window.
    let run =
        Run { producers: 8, consumers: 2, per_producer: 25_000, maxsize: 0, huge: false, kills: false, slow: false };
    for m in StartMethod::ALL {
        assert_eq!(stream(&run, m, seed()).messages, 200_000);
    }
}

#[test]
fn a_slow_consumer_behind_a_full_bounded_queue() {
    let run =
        Run { producers: 4, consumers: 1, per_producer: 2_000, maxsize: 7, huge: false, kills: false, slow: true };
    for m in StartMethod::ALL {
        stream(&run, m, seed());
    }
}

#[test]
fn random_kills_of_producers_and_consumers() {
    let run = Run { producers: 4, consumers: 4, per_producer: 4_000, maxsize: 0, huge: true, kills: true, slow: false };
    for m in StartMethod::ALL {
        let t = stream(&run, m, seed());
        eprintln!("{m}: {t:?}");
    }
}

#[test]
fn random_kills_with_a_bounded_queue() {
    let run =
        Run { producers: 4, consumers: 2, per_producer: 3_000, maxsize: 50, huge: false, kills: true, slow: false };
    for m in StartMethod::ALL {
        stream(&run, m, seed());
    }
}

/// The soak: `MULTIPROC_SOAK_SECS` seconds of killing runs (skipped when
/// unset), each with its seed printed.
#[test]
fn soak() {
    let Some(secs) = std::env::var("MULTIPROC_SOAK_SECS").ok().and_then(|s| s.parse::<u64>().ok()) else {
        return;
    };
    let first = seed();
    let started = Instant::now();
    let mut total = Tally::default();
    let mut runs = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let seed = first.wrapping_add(runs);
        let m = StartMethod::ALL[runs as usize % StartMethod::ALL.len()];
        let run = Run {
            producers: 4,
            consumers: 4,
            per_producer: 5_000,
            maxsize: if runs % 3 == 2 { 64 } else { 0 },
            huge: true,
            kills: true,
            slow: false,
        };
        let t = stream(&run, m, seed);
        total.messages += t.messages;
        total.bytes += t.bytes;
        total.kills += t.kills;
        runs += 1;
    }
    eprintln!(
        "soak: {runs} runs from seed {first} in {:.1} min: {} messages, {} bytes, {} kills",
        started.elapsed().as_secs_f64() / 60.0,
        total.messages,
        total.bytes,
        total.kills
    );
}
