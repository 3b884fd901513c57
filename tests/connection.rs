//! Pipe and Connection across processes.

mod common;

use std::time::Duration;

use common::{each_method, join};
use multiproc::{Connection, Error, Pipe, Pool, Process, StartMethod};

/// Echoes doubled words until an empty one. (Not until end of stream: a
/// forked child holds a copy of the parent's end too, as in Python.)
fn echo_twice(conn: Connection) -> usize {
    let mut n = 0;
    loop {
        let s: String = conn.recv().unwrap();
        if s.is_empty() {
            return n;
        }
        conn.send(&format!("{s}{s}")).unwrap();
        n += 1;
    }
}

#[test]
fn a_connection_works_from_a_child_under_every_method() {
    each_method(|m| {
        let (ours, theirs) = Pipe(true).unwrap();
        let mut p = Process::new(echo_twice, (theirs,)).with_start_method(m);
        p.start().unwrap();
        for word in ["a", "bc", "def"] {
            ours.send(word).unwrap();
            assert_eq!(ours.recv::<String>().unwrap(), format!("{word}{word}"), "{m}");
        }
        ours.send("").unwrap();
        assert_eq!(join(&mut p).unwrap(), 3, "{m}");
    });
}

#[test]
fn one_way_pipes_refuse_the_wrong_direction() {
    let (r, w) = Pipe(false).unwrap();
    assert!(matches!(r.send(&1), Err(Error::Connection(_))));
    assert!(matches!(w.send(&1), Ok(())));
    assert_eq!(r.recv::<i32>().unwrap(), 1);
    let w = w;
    assert!(matches!(w.recv::<i32>(), Err(Error::Connection(_))));
    assert!(matches!(w.poll(Some(Duration::ZERO)), Err(Error::Connection(_))));
}

fn exits_at_once(_conn: Connection) {}

#[test]
fn a_closed_or_dead_peer_is_a_typed_eof() {
    let (a, b) = Pipe(true).unwrap();
    a.send(&"sent before close").unwrap();
    drop(b);
    assert!(matches!(a.recv::<String>(), Err(Error::Eof)));
    assert!(matches!(a.send(&"x"), Err(Error::Eof)));

    each_method(|m| {
        let (ours, theirs) = Pipe(true).unwrap();
        let mut p = Process::new(exits_at_once, (theirs,)).with_start_method(m);
        p.start().unwrap();
        join(&mut p).unwrap();
        assert!(matches!(ours.recv::<u8>(), Err(Error::Eof)), "{m}");
    });
}

#[test]
fn data_sent_before_close_is_still_received() {
    let (a, b) = Pipe(true).unwrap();
    b.send(&1u8).unwrap();
    b.send(&2u8).unwrap();
    b.close();
    assert_eq!(a.recv::<u8>().unwrap(), 1);
    assert_eq!(a.recv::<u8>().unwrap(), 2);
    assert!(matches!(a.recv::<u8>(), Err(Error::Eof)));
}

#[test]
fn bytes_offsets_and_short_buffers() {
    let (a, b) = Pipe(true).unwrap();
    b.send_bytes_range(b"abcdefgh", 2, 4).unwrap();
    let mut buf = [0u8; 3];
    match a.recv_bytes_into(&mut buf, 0) {
        Err(Error::BufferTooShort { message }) => assert_eq!(message, b"cdef"),
        other => panic!("{other:?}"),
    }
    b.send_bytes(b"xy").unwrap();
    let mut buf = [0u8; 4];
    assert!(matches!(a.recv_bytes_into(&mut buf, 3), Err(Error::BufferTooShort { .. })));
    b.send_bytes(b"").unwrap();
    assert_eq!(a.recv_bytes().unwrap(), b"");
    assert!(b.send_bytes_range(b"abc", 2, 2).is_err());
    assert!(b.send_bytes_range(b"abc", usize::MAX, 2).is_err());
}

#[test]
fn poll_waits_at_most_the_timeout() {
    let (a, b) = Pipe(true).unwrap();
    assert!(!a.poll(Some(Duration::from_millis(20))).unwrap());
    b.send(&7u8).unwrap();
    assert!(a.poll(None).unwrap());
    assert_eq!(a.recv::<u8>().unwrap(), 7);
}

#[test]
fn the_message_size_limit_is_enforced_on_receive() {
    let (mut a, b) = Pipe(true).unwrap();
    a.set_max_message_size(Some(1024));
    let big = vec![1u8; 8 << 20];
    let sender = std::thread::spawn(move || b.send_bytes(&big));
    match a.recv_bytes() {
        Err(Error::MessageTooLarge { size, limit }) => assert_eq!((size, limit), (8 << 20, 1024)),
        other => panic!("{other:?}"),
    }
    // The connection is spent: it says so again rather than misreading.
    assert!(matches!(a.recv_bytes(), Err(Error::MessageTooLarge { .. })));
    drop(a);
    assert!(sender.join().unwrap().is_err());
}

/// A value big enough to travel in shared memory beside its message is held
/// to the receiver's limit by its real size, and the connection goes on.
#[test]
fn the_message_size_limit_holds_for_values_in_shared_memory() {
    let (mut a, b) = Pipe(true).unwrap();
    a.set_max_message_size(Some(1024));
    b.send(&serde_bytes::ByteBuf::from(vec![1u8; 8 << 20])).unwrap();
    match a.recv::<serde_bytes::ByteBuf>() {
        // The length's varint comes first: 4 bytes for 8 MiB.
        Err(Error::MessageTooLarge { size, limit }) => assert_eq!((size, limit), ((8 << 20) + 4, 1024)),
        other => panic!("{other:?}"),
    }
    b.send(&7u32).unwrap();
    assert_eq!(a.recv::<u32>().unwrap(), 7);
    a.set_max_message_size(None);
    b.send(&serde_bytes::ByteBuf::from(vec![2u8; 8 << 20])).unwrap();
    assert!(a.recv::<serde_bytes::ByteBuf>().unwrap().iter().all(|&x| x == 2));
}

fn sum_big(conn: Connection) -> u64 {
    let v: Vec<u8> = conn.recv().unwrap();
    v.iter().map(|b| *b as u64).sum()
}

#[test]
fn a_64_mib_message_crosses() {
    let (ours, theirs) = Pipe(true).unwrap();
    let mut p = Process::new(sum_big, (theirs,)).with_start_method(StartMethod::Forkserver);
    p.start().unwrap();
    ours.send(&vec![3u8; 64 << 20]).unwrap();
    assert_eq!(join(&mut p).unwrap(), 3 * (64 << 20));
}

#[test]
fn a_connection_can_be_sent_over_a_connection() {
    let (a, b) = Pipe(true).unwrap();
    let (inner_a, inner_b) = Pipe(true).unwrap();
    b.send(&inner_b).unwrap();
    drop(inner_b);
    let received: Connection = a.recv().unwrap();
    received.send(&"through the passed end").unwrap();
    assert_eq!(inner_a.recv::<String>().unwrap(), "through the passed end");
}

#[test]
fn a_connection_with_unread_data_refuses_to_travel() {
    let (a, b) = Pipe(true).unwrap();
    b.send(&1u8).unwrap();
    b.send(&2u8).unwrap();
    assert_eq!(a.recv::<u8>().unwrap(), 1); // the second is now buffered here
    let (c, _d) = Pipe(true).unwrap();
    assert!(matches!(c.send(&a), Err(Error::Encode { .. })));
}

fn reply(conn: Connection, n: u32) -> u32 {
    conn.send(&(n * 10)).unwrap();
    n
}

#[test]
fn connections_reach_running_pool_workers() {
    let pool = Pool::new(2).unwrap();
    pool.map(|x: u32| x, 0..4).unwrap();
    let (ours, theirs) = Pipe(true).unwrap();
    assert_eq!(pool.apply(reply, (theirs, 4)).unwrap(), 4);
    assert_eq!(ours.recv::<u32>().unwrap(), 40);
}
