//! Queues across processes, and processes dying in the middle of them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::{GUARD, each_method, join};
use multiproc::{Error, Handle, JoinableQueue, Pool, Process, Queue, SimpleQueue, StartMethod};

fn produce(q: Queue<(u32, u32)>, who: u32, n: u32) {
    for i in 0..n {
        q.put(&(who, i)).unwrap();
    }
}

fn consume(q: Queue<(u32, u32)>, n: u32) -> Vec<(u32, u32)> {
    (0..n).map(|_| q.get_timeout(GUARD).unwrap()).collect()
}

#[test]
fn many_producers_and_consumers_lose_and_duplicate_nothing() {
    each_method(|m| {
        let q = Queue::new(0).unwrap();
        let mut producers: Vec<_> =
            (0..3).map(|who| Process::new(produce, (q.clone(), who, 200)).with_start_method(m)).collect();
        let mut consumers: Vec<_> =
            (0..2).map(|_| Process::new(consume, (q.clone(), 300)).with_start_method(m)).collect();
        for p in &mut producers {
            p.start().unwrap();
        }
        for c in &mut consumers {
            c.start().unwrap();
        }
        for p in &mut producers {
            join(p).unwrap();
        }
        let mut all: Vec<(u32, u32)> = consumers.iter_mut().flat_map(|c| join(c).unwrap()).collect();
        all.sort();
        let expected: Vec<(u32, u32)> = (0..3).flat_map(|who| (0..200).map(move |i| (who, i))).collect();
        assert_eq!(all, expected, "{m}");
        assert!(q.empty().unwrap());
    });
}

#[test]
fn per_producer_order_is_kept() {
    let q = Queue::new(0).unwrap();
    let mut p = Process::new(produce, (q.clone(), 7, 500));
    p.start().unwrap();
    let got: Vec<u32> = (0..500).map(|_| q.get().unwrap().1).collect();
    join(&mut p).unwrap();
    assert_eq!(got, (0..500).collect::<Vec<_>>());
}

#[test]
fn full_and_empty_are_typed() {
    let q: Queue<u8> = Queue::new(2).unwrap();
    assert!(matches!(q.get_nowait(), Err(Error::Empty)));
    let started = Instant::now();
    assert!(matches!(q.get_timeout(Duration::from_millis(30)), Err(Error::Empty)));
    assert!(started.elapsed() >= Duration::from_millis(30));
    q.put(&1).unwrap();
    q.put_nowait(&2).unwrap();
    assert!(q.full().unwrap());
    assert_eq!(q.qsize().unwrap(), 2);
    assert!(matches!(q.put_nowait(&3), Err(Error::Full)));
    assert!(matches!(q.put_timeout(&3, Duration::from_millis(20)), Err(Error::Full)));
    assert_eq!(q.get().unwrap(), 1);
    q.put_nowait(&3).unwrap();
    assert_eq!((q.get().unwrap(), q.get().unwrap()), (2, 3));
    assert!(q.empty().unwrap());
}

fn sum(q: Queue<Vec<u8>>) -> u64 {
    q.get().unwrap().iter().map(|b| *b as u64).sum()
}

#[test]
fn a_64_mib_message_crosses() {
    each_method(|m| {
        let q = Queue::new(0).unwrap();
        let mut p = Process::new(sum, (q.clone(),)).with_start_method(m);
        p.start().unwrap();
        q.put(&vec![1u8; 64 << 20]).unwrap();
        assert_eq!(join(&mut p).unwrap(), 64 << 20, "{m}");
    });
}

fn count_and_sum(q: Queue<Vec<u8>>, n: usize) -> (usize, u64) {
    (0..n).map(|_| q.get_timeout(GUARD).unwrap()).fold((0, 0), |(c, s), m| (c + 1, s + m[0] as u64 + m.len() as u64))
}

#[test]
fn an_unbounded_queue_takes_a_large_backlog_without_a_consumer() {
    // Python's unbounded put never blocks; 48 MiB with nobody reading.
    let q = Queue::new(0).unwrap();
    let n = 12_000;
    for i in 0..n {
        q.put_nowait(&vec![(i % 251) as u8; 4096]).unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    assert_eq!(q.qsize().unwrap(), n);
    let mut p = Process::new(count_and_sum, (q.clone(), n));
    p.start().unwrap();
    let expected: u64 = (0..n).map(|i| (i % 251) as u64 + 4096).sum();
    assert_eq!(join(&mut p).unwrap(), (n, expected));
    assert!(q.empty().unwrap());
}

type Item = (Vec<u8>, Option<Handle>);

/// Leaves this process too few spare descriptors for a big message to
/// travel in a memory file of its own (a new descriptor must keep half the
/// limit free): it then streams through the queue's packet socket, the
/// path these tests are about.
fn without_spare_descriptors() {
    // SAFETY: dup, close and setrlimit take plain integers and a struct we own.
    unsafe {
        let lowest_free = libc::dup(0);
        assert!(lowest_free > 0);
        libc::close(lowest_free);
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = 2 * lowest_free as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

fn put_forever(q: Queue<Item>, out: Handle) {
    writeln!(out.into_file(), "{}", multiproc::os::getpid()).unwrap();
    without_spare_descriptors();
    // Too large for the shared ring: it goes over the packet socket and
    // blocks once that is full, in the middle of the message.
    q.put(&(vec![9u8; 256 << 20], None)).unwrap();
}

#[test]
fn a_producer_killed_mid_put_leaves_the_queue_usable() {
    each_method(|m| {
        let q: Queue<Item> = Queue::new(0).unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let mut producer = Process::new(put_forever, (q.clone(), Handle::from(writer))).with_start_method(m);
        producer.start().unwrap();
        let mut line = String::new();
        BufReader::new(reader).read_line(&mut line).unwrap();
        // Its message takes its place in the queue before it streams, so
        // from then on it is in the middle of the put (bounded wait).
        let until = Instant::now() + GUARD;
        while q.qsize().unwrap() == 0 {
            assert!(Instant::now() < until, "{m}: the producer never started its put");
            std::thread::yield_now();
        }
        producer.kill().unwrap();
        assert!(join(&mut producer).is_err());
        // The queue goes on: others put and get, nothing partial comes out.
        // (The put runs beside the gets, with a handle so that it too takes
        // the packet path behind the dead producer's partial message.)
        let putter = {
            let q = q.clone();
            std::thread::spawn(move || q.put(&(vec![2], Some(Handle::from(std::fs::File::open("/dev/null").unwrap())))))
        };
        let mut seen = Vec::new();
        loop {
            let started = Instant::now();
            let (item, _) =
                q.get_timeout(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{m}: {e} after {seen:?}"));
            assert!(started.elapsed() < Duration::from_secs(10));
            assert!(item.len() <= 1, "{m}: a partial message of {} bytes came out", item.len());
            seen.push(item[0]);
            if item == [2] {
                break;
            }
        }
        assert_eq!(seen, [2], "{m}");
        putter.join().unwrap().unwrap();
        // And a get with a timeout returns on time once it is empty.
        let started = Instant::now();
        assert!(matches!(q.get_timeout(Duration::from_millis(100)), Err(Error::Empty)));
        assert!(started.elapsed() < Duration::from_secs(5));
    });
}

fn worker(q: JoinableQueue<u32>, results: Queue<u32>) {
    loop {
        let n = q.get().unwrap();
        if n == 0 {
            q.task_done().unwrap();
            return;
        }
        results.put(&(n * n)).unwrap();
        q.task_done().unwrap();
    }
}

#[test]
fn joinable_queues_wait_for_every_task() {
    let tasks = JoinableQueue::new(0).unwrap();
    let results = Queue::new(0).unwrap();
    let mut ps: Vec<_> = (0..2).map(|_| Process::new(worker, (tasks.clone(), results.clone()))).collect();
    for p in &mut ps {
        p.start().unwrap();
    }
    for n in 1..=20 {
        tasks.put(&n).unwrap();
    }
    tasks.put(&0).unwrap();
    tasks.put(&0).unwrap();
    tasks.join().unwrap();
    for p in &mut ps {
        join(p).unwrap();
    }
    let mut squares: Vec<u32> = (0..20).map(|_| results.get().unwrap()).collect();
    squares.sort();
    assert_eq!(squares, (1..=20).map(|n| n * n).collect::<Vec<_>>());
    assert!(matches!(tasks.task_done(), Err(Error::TaskDoneTooOften)));
}

fn via_queue(q: SimpleQueue<Handle>, text: String) {
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(text.as_bytes()).unwrap();
    drop(writer);
    q.put(&Handle::from(reader)).unwrap();
}

#[test]
fn handles_travel_through_queues_and_queues_reach_pool_workers() {
    let q = SimpleQueue::new().unwrap();
    let pool = Pool::builder().processes(2).start_method(StartMethod::Forkserver).build().unwrap();
    pool.map(|x: u8| x, 0..4).unwrap();
    pool.apply(via_queue, (q.clone(), "through a queue".to_string())).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut q.get().unwrap().into_file(), &mut text).unwrap();
    assert_eq!(text, "through a queue");
}

fn stream(q: Queue<(u32, Vec<u8>)>, n: u32) {
    for i in 0..n {
        q.put(&(i, vec![(i % 251) as u8; 200 << 10])).unwrap();
    }
}

fn take_and_report(q: Queue<(u32, Vec<u8>)>, out: Handle) {
    let mut out = out.into_file();
    loop {
        let (i, body) = q.get().unwrap();
        assert!(body.len() == 200 << 10 && body.iter().all(|b| *b == (i % 251) as u8));
        writeln!(out, "{i}").unwrap();
    }
}

#[test]
fn a_consumer_killed_mid_get_loses_at_most_that_message() {
    let n = 120;
    let q: Queue<(u32, Vec<u8>)> = Queue::new(0).unwrap();
    let mut producer = Process::new(stream, (q.clone(), n));
    producer.start().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let mut first = Process::new(take_and_report, (q.clone(), Handle::from(writer)));
    first.start().unwrap();
    let mut reported = BufReader::new(reader);
    let mut taken = Vec::new();
    for _ in 0..20 {
        let mut line = String::new();
        reported.read_line(&mut line).unwrap();
        taken.push(line.trim().parse::<u32>().unwrap());
    }
    // Wherever it is now (most likely in the middle of a 200 KiB get):
    first.kill().unwrap();
    assert!(join(&mut first).is_err());
    let mut line = String::new();
    while reported.read_line(&mut line).unwrap() > 0 {
        taken.push(line.trim().parse().unwrap());
        line.clear();
    }
    // A second consumer takes the rest; everything it gets is whole.
    loop {
        match q.get_timeout(Duration::from_secs(5)) {
            Ok((i, body)) => {
                assert!(body.len() == 200 << 10 && body.iter().all(|b| *b == (i % 251) as u8), "message {i} is broken");
                taken.push(i);
            }
            Err(Error::Empty) => break,
            Err(e) => panic!("{e}"),
        }
    }
    join(&mut producer).unwrap();
    let mut sorted = taken.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), taken.len(), "a message came out twice");
    assert!(taken.len() as u32 >= n - 1, "lost {} messages, at most 1 may be", n - taken.len() as u32);
}

fn put_big(q: Queue<serde_bytes::ByteBuf>, n: usize) {
    without_spare_descriptors();
    q.put(&serde_bytes::ByteBuf::from(vec![7u8; n])).unwrap();
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill takes a pid and a signal number.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// A consumer taking a large message holds the queue's consumer lock until
/// the whole message is in; another consumer's `get_timeout` must still
/// return at its deadline. The producer is stopped mid-message, so the
/// first consumer's read lasts until it is continued.
#[test]
fn get_timeout_keeps_its_deadline_while_another_consumer_takes_a_large_message() {
    let q: Queue<serde_bytes::ByteBuf> = Queue::new(0).unwrap();
    let n = 32 << 20; // past the ring: a marker, then packets
    let mut p = Process::new(put_big, (q.clone(), n));
    p.start().unwrap();
    let pid = p.pid().unwrap();
    // The marker is in once the queue counts the message; the producer then
    // blocks sending, a socket buffer at a time.
    let start = Instant::now();
    while q.qsize().unwrap() == 0 {
        assert!(start.elapsed() < GUARD, "the producer never placed its message");
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(pid, libc::SIGSTOP);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let (q, done) = (q.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let got = q.get_timeout(Duration::from_millis(200));
                let empty = matches!(got, Err(Error::Empty));
                done.send(empty).unwrap();
                got
            })
        })
        .collect();
    // One consumer took the marker and waits for the rest of the message;
    // the other must give up at its deadline, not wait for the first.
    assert!(done_rx.recv_timeout(GUARD).expect("a consumer waited past its deadline"));
    signal(pid, libc::SIGCONT);
    let results: Vec<_> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
    let got: Vec<_> = results.into_iter().filter_map(|r| r.ok()).collect();
    assert_eq!(got.len(), 1);
    assert!(got[0].len() == n && got[0].iter().all(|&b| b == 7));
    join(&mut p).unwrap();
}
