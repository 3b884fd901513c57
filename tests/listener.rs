//! `connection::Listener` and `Client` against Python's own, both ways,
//! over TCP and a Unix socket; `connection::wait` over every kind of
//! waitable, and a queue watched by `wait` while consumers sleep on it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{GUARD, each_method, python};
use multiproc::connection::{Client, Listener, wait};
use multiproc::managers::Address;
use multiproc::pickle::PyValue;
use multiproc::{Error, JoinableQueue, Pipe, Process, Queue, SimpleQueue};

const VERSIONS: [&str; 2] = ["3.7", "3.13"];

/// Python's Listener: echoes one value and one bytes message reversed.
const PY_LISTENER: &str = r#"
import sys
from multiprocessing.connection import Listener
address = sys.argv[1] if len(sys.argv) > 1 else ('127.0.0.1', 0)
l = Listener(address, authkey=b'secret')
print(l.address[1] if isinstance(l.address, tuple) else l.address, flush=True)
c = l.accept()
obj = c.recv()
c.send(('echo', obj))
b = c.recv_bytes()
c.send_bytes(b[::-1])
print(repr(obj), flush=True)
try:
    l.accept()
except Exception as e:
    print(type(e).__name__, flush=True)
"#;

type Sent = (i32, String, Vec<f64>, Option<i32>, bool);

#[test]
fn our_client_talks_to_pythons_listener() {
    for version in VERSIONS {
        let mut child = Command::new(python(version))
            .args(["-c", PY_LISTENER])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let address: Address = format!("127.0.0.1:{}", line.trim()).parse().unwrap();
        let mut conn = Client(&address, Some(b"secret")).unwrap();
        let sent = (1, "two".to_string(), vec![3.5f64], None::<i32>, true);
        conn.send(&sent).unwrap();
        let (tag, back): (String, Sent) = conn.recv().unwrap();
        assert_eq!((tag.as_str(), back), ("echo", sent), "Python {version}");
        // Past Python's 16 KiB small-message path.
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        conn.send_bytes(&big).unwrap();
        let mut rev = big.clone();
        rev.reverse();
        assert_eq!(conn.recv_bytes().unwrap(), rev, "Python {version}");
        drop(conn);
        // A client with another key is refused, and Python's accept says so.
        assert!(matches!(Client(&address, Some(b"wrong")), Err(Error::AuthenticationFailed)), "Python {version}");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert_eq!(rest.lines().collect::<Vec<_>>(), ["(1, 'two', [3.5], None, True)", "AuthenticationError"]);
        assert!(child.wait().unwrap().success());
    }
}

/// Python's Client against our Listener.
const PY_CLIENT: &str = r#"
import sys
from multiprocessing.connection import Client
address = ('127.0.0.1', int(sys.argv[1])) if sys.argv[1].isdigit() else sys.argv[1]
c = Client(address, authkey=sys.argv[2].encode())
c.send({'k': [1, 2.5, None], 't': (1, 'x'), 'b': b'\x00\xff'})
print(repr(c.recv()))
c.send_bytes(b'abc' * 100000)
print(len(c.recv_bytes()))
c.close()
"#;

fn python_client(version: &str, address: &str, key: &str) -> std::process::Child {
    Command::new(python(version)).args(["-c", PY_CLIENT, address, key]).stdout(Stdio::piped()).spawn().unwrap()
}

fn serve_one(listener: &Listener) {
    let mut conn = listener.accept().unwrap();
    let got = conn.recv_value().unwrap();
    assert_eq!(
        got.to_string(),
        "{'k': [1, 2.5, None], 't': (1, 'x'), 'b': b'\\x00\\xff'}",
        "what Python sent, read as Python wrote it"
    );
    conn.send(&std::collections::BTreeMap::from([("answer", 42)])).unwrap();
    let bytes = conn.recv_bytes().unwrap();
    assert_eq!(bytes.len(), 300_000);
    conn.send_bytes(&bytes[..7]).unwrap();
    assert!(matches!(conn.recv_bytes(), Err(Error::Eof)), "Python closed");
}

#[test]
fn pythons_client_talks_to_our_listener_over_tcp_and_unix_sockets() {
    let dir = std::env::temp_dir().join(format!("multiproc-listener-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for version in VERSIONS {
        let tcp = Listener::bind(&"127.0.0.1:0".parse().unwrap(), Some(b"secret")).unwrap();
        let Address::Tcp(a) = tcp.address().clone() else { unreachable!() };
        let port = a.rsplit_once(':').unwrap().1.to_owned();
        let path = dir.join(format!("l-{version}.sock"));
        let unix = Listener::bind(&Address::Unix(path.clone()), Some(b"secret")).unwrap();
        for (listener, address) in [(&tcp, port.as_str()), (&unix, path.to_str().unwrap())] {
            let child = python_client(version, address, "secret");
            serve_one(listener);
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "Python {version}");
            assert_eq!(String::from_utf8_lossy(&out.stdout).lines().collect::<Vec<_>>(), ["{'answer': 42}", "7"]);
        }
        // A Python client with the wrong key: our accept refuses it.
        let child = python_client(version, &port, "wrong");
        assert!(matches!(tcp.accept(), Err(Error::AuthenticationFailed)), "Python {version}");
        assert!(!child.wait_with_output().unwrap().status.success());
        drop(unix);
        assert!(!path.exists(), "the socket file goes with the listener");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_a_key_and_with_limits() {
    let listener = Listener::bind(&"127.0.0.1:0".parse().unwrap(), None).unwrap();
    let mut ours = Client(listener.address(), None).unwrap();
    let mut theirs = listener.accept().unwrap();
    assert!(!theirs.poll(Some(Duration::ZERO)).unwrap());
    ours.send_value(&PyValue::List(vec![PyValue::Int(1)])).unwrap();
    assert!(theirs.poll(Some(GUARD)).unwrap());
    assert_eq!(theirs.recv::<Vec<i64>>().unwrap(), [1]);
    theirs.set_max_message_size(10);
    ours.send_bytes(&[0u8; 11]).unwrap();
    assert!(matches!(theirs.recv_bytes(), Err(Error::MessageTooLarge { size: 11, limit: 10 })));
    // A value of the wrong type is a typed error naming it.
    theirs.send("text").unwrap();
    assert!(matches!(ours.recv::<u32>(), Err(Error::ManagerValue(_))));
    // A Listener with a key refuses a client without one (and the other
    // way round): the handshake fails, nothing hangs.
    let keyed = Listener::bind(&"127.0.0.1:0".parse().unwrap(), Some(b"k")).unwrap();
    let address = keyed.address().clone();
    let t = std::thread::spawn(move || Client(&address, None).unwrap().recv_bytes().unwrap());
    assert!(keyed.accept().is_err(), "the listener refuses a client that does not answer its challenge");
    let first = t.join().unwrap();
    assert!(first.starts_with(b"#CHALLENGE#"), "the keyless client read the challenge it could not answer");
}

fn put_later(q: Queue<u32>) {
    q.put(&7).unwrap();
}

fn nothing() {}

/// Every kind of waitable, in one wait, under every start method.
#[test]
fn wait_sees_connections_queues_processes_and_descriptors() {
    each_method(|m| {
        let (a, b) = Pipe(true).unwrap();
        let q: Queue<u32> = Queue::new(0).unwrap();
        let sq: SimpleQueue<u32> = SimpleQueue::new().unwrap();
        let jq: JoinableQueue<u32> = JoinableQueue::new(0).unwrap();
        let mut idle = Process::new(nothing, ()).with_start_method(m);
        assert!(matches!(wait(&[&idle], Some(Duration::ZERO)), Err(Error::NotStarted(_))));
        let (r, w) = std::io::pipe().unwrap();
        let r: std::os::fd::OwnedFd = r.into();
        assert!(wait(&[&a, &q, &sq, &jq, &r], Some(Duration::from_millis(20))).unwrap().is_empty());
        let mut p = Process::new(put_later, (q.clone(),)).with_start_method(m);
        p.start().unwrap();
        assert_eq!(wait(&[&a, &q, &sq, &jq, &r], Some(GUARD)).unwrap(), [1], "{m}");
        assert_eq!(q.get().unwrap(), 7);
        p.join().unwrap();
        assert_eq!(wait(&[&a, &q, &p], Some(GUARD)).unwrap(), [2], "{m}: ended, and stays so");
        assert_eq!(wait(&[&p], Some(GUARD)).unwrap(), [0], "{m}");
        idle.start().unwrap();
        assert_eq!(wait(&[&idle], Some(GUARD)).unwrap(), [0], "{m}");
        idle.join().unwrap();
        sq.put(&1).unwrap();
        jq.put(&2).unwrap();
        b.send(&3u8).unwrap();
        std::io::Write::write_all(&mut &w, b"x").unwrap();
        assert_eq!(wait(&[&a, &q, &sq, &jq, &r], Some(GUARD)).unwrap(), [0, 2, 3, 4], "{m}");
        drop(b);
        let a = a;
        assert_eq!(a.recv::<u8>().unwrap(), 3);
        assert_eq!(wait(&[&a], Some(GUARD)).unwrap(), [0], "{m}: the closed end is ready (a recv says Eof)");
        assert!(matches!(a.recv::<u8>(), Err(Error::Eof)));
    });
}

fn take_all(q: Queue<u64>, n: u64) -> u64 {
    (0..n).map(|_| q.get_timeout(GUARD).expect("every item reaches a sleeping consumer")).sum()
}

/// Waits watching a queue take nothing from a consumer asleep on it:
/// rounds of put-one with a consumer process parked in `get` and two
/// threads waiting on the queue all along; every item reaches the consumer.
/// (That a watcher hands on the one wake-up a put makes is checked by the
/// loom model `sys::ring::model::a_watcher_never_keeps_a_consumers_wake_up`:
/// here a kept wake-up would only cost a 50 ms look-again.)
#[test]
fn waits_on_a_queue_take_nothing_from_its_sleeping_consumer() {
    let q: Queue<u64> = Queue::new(0).unwrap();
    let rounds = 300u64;
    let mut consumer = Process::new(take_all, (q.clone(), rounds)).with_daemon(true);
    consumer.start().unwrap();
    let watching = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while watching.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = wait(&[&q], Some(Duration::from_millis(5))).unwrap();
                }
            });
        }
        for i in 0..rounds {
            // Give the consumer and the watchers time to fall asleep (past
            // their spinning), so that the put's one wake-up has several
            // sleepers to choose from. Not synchronisation: any timing
            // must pass.
            let settle = std::time::Instant::now() + Duration::from_millis(2);
            while std::time::Instant::now() < settle {
                std::thread::yield_now();
            }
            q.put(&i).unwrap();
            // One item at a time: the next put waits for the consumer.
            while q.qsize().unwrap() > 0 {
                std::thread::yield_now();
            }
        }
        watching.store(false, std::sync::atomic::Ordering::SeqCst);
    });
    assert_eq!(common::join(&mut consumer).unwrap(), (0..rounds).sum::<u64>());
}
