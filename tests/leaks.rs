//! No leaks: daemons die with their parent, every child is reaped, no
//! descriptor is lost.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::{each_method, exits_within, isolated, join, pidfd, sleep_forever, zombie_children};
use multiproc::{Handle, Process, StartMethod};

/// Runs in a middle process: starts a daemonic grandchild (from the main
/// thread or another one), reports its pid, then waits to be killed.
fn middle(method: StartMethod, from_thread: bool, out: Handle) {
    let start = move || {
        let mut d = Process::new(sleep_forever, ()).with_daemon(true).with_start_method(method);
        d.start().unwrap();
        let pid = d.pid().unwrap();
        std::mem::forget(d);
        pid
    };
    let pid = if from_thread { std::thread::spawn(start).join().unwrap() } else { start() };
    let mut out = out.into_file();
    writeln!(out, "{pid}").unwrap();
    drop(out);
    sleep_forever();
}

#[test]
fn daemon_dies_within_a_second_of_its_parent_being_sigkilled() {
    for outer in [StartMethod::Spawn, StartMethod::Fork, StartMethod::Forkserver] {
        for inner in StartMethod::ALL {
            for from_thread in [false, true] {
                let what = format!("{outer}->{inner} from_thread={from_thread}");
                let (reader, writer) = std::io::pipe().unwrap();
                let mut m = Process::new(middle, (inner, from_thread, Handle::from(writer))).with_start_method(outer);
                m.start().unwrap();
                let mut line = String::new();
                BufReader::new(reader).read_line(&mut line).unwrap();
                let grandchild: i32 = line.trim().parse().unwrap_or_else(|_| panic!("{what}: got {line:?}"));
                let fd = pidfd(grandchild);
                // Still alive although the thread that started it is gone.
                assert!(!exits_within(&fd, Duration::ZERO), "{what}: daemon died too early");
                m.kill().unwrap();
                assert!(join(&mut m).is_err());
                assert!(exits_within(&fd, Duration::from_secs(1)), "{what}: daemon outlived its parent by 1 s");
            }
        }
    }
}

/// Waits for one byte. (Not for end of file: forked siblings inherit the
/// write end, so it would never come.)
fn wait_for_byte(h: Handle) {
    let mut byte = [0u8; 1];
    let _ = std::io::Read::read_exact(&mut h.into_file(), &mut byte);
}

#[test]
fn every_child_is_reaped_joined_or_dropped() {
    isolated("every_child_is_reaped_joined_or_dropped", every_child_is_reaped);
}

fn every_child_is_reaped() {
    each_method(|m| {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut pids = Vec::new();
        for _ in 0..4 {
            let mut p = Process::new(wait_for_byte, (Handle::from(reader.try_clone().unwrap()),)).with_start_method(m);
            p.start().unwrap();
            pids.push(p.pid().unwrap());
            // Dropped without join.
        }
        let fds: Vec<_> = pids.iter().map(|&p| pidfd(p)).collect();
        drop(reader);
        (&writer).write_all(&[1; 4]).unwrap();
        drop(writer);
        for fd in &fds {
            assert!(exits_within(fd, common::GUARD), "{m}: child hung");
        }
        // Python's active_children() reaps the finished ones.
        assert!(multiproc::active_children().is_empty(), "{m}");
        let zombies = zombie_children();
        assert!(zombies.iter().all(|z| !pids.contains(z)), "{m}: zombies {zombies:?}");

        let mut p = Process::new(|| 5u8, ()).with_start_method(m);
        p.start().unwrap();
        let pid = p.pid().unwrap();
        join(&mut p).unwrap();
        assert!(!zombie_children().contains(&pid), "{m}: joined child left a zombie");
    });
}

fn tiny(i: u32) -> u32 {
    i + 1
}

#[test]
fn a_thousand_processes_leave_the_fd_count_unchanged() {
    isolated("a_thousand_processes_leave_the_fd_count_unchanged", a_thousand_processes);
}

fn a_thousand_processes() {
    each_method(|m| {
        // Warm up: the forkserver and this process's own pidfd are opened once.
        let mut p = Process::new(tiny, (0,)).with_start_method(m);
        p.start().unwrap();
        join(&mut p).unwrap();
        let before = multiproc::__private::open_fd_count().unwrap();
        for i in 0..1000 {
            let mut p = Process::new(tiny, (i,)).with_start_method(m);
            p.start().unwrap();
            assert_eq!(join(&mut p).unwrap(), i + 1);
        }
        let after = multiproc::__private::open_fd_count().unwrap();
        assert_eq!(before, after, "{m}: descriptors leaked");
        assert!(zombie_children().is_empty(), "{m}");
    });
}

fn report_parent_alive() -> bool {
    multiproc::parent_process().unwrap().is_alive()
}

#[test]
fn a_child_sees_its_parent_alive() {
    each_method(|m| {
        let mut p = Process::new(report_parent_alive, ()).with_start_method(m);
        p.start().unwrap();
        assert!(join(&mut p).unwrap(), "{m}");
    });
}

fn exit_hooks(inner: StartMethod, out: Handle) -> i32 {
    // Leaves a non-daemonic child that writes to `out` after a long wait, and
    // a daemonic one that would run forever: returning must join the first
    // and terminate the second.
    let mut slow = Process::new(slow_writer, (out,)).with_start_method(inner);
    slow.start().unwrap();
    let mut d = Process::new(sleep_forever, ()).with_daemon(true).with_start_method(inner);
    d.start().unwrap();
    let daemon = d.pid().unwrap();
    std::mem::forget(slow);
    std::mem::forget(d);
    daemon
}

fn slow_writer(out: Handle) {
    std::thread::sleep(Duration::from_millis(300));
    writeln!(out.into_file(), "slow child done").unwrap();
}

#[test]
fn leaving_joins_non_daemons_and_terminates_daemons() {
    each_method(|m| {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut p = Process::new(exit_hooks, (m, Handle::from(writer))).with_start_method(StartMethod::Spawn);
        p.start().unwrap();
        let daemon = join(&mut p).unwrap();
        // The middle process has ended, so its non-daemon child had finished:
        // its line is already in the pipe.
        let mut line = String::new();
        BufReader::new(reader).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "slow child done", "{m}");
        // And its daemon is gone (or going: SIGTERM was sent and waited for).
        let gone = std::fs::read_to_string(format!("/proc/{daemon}/stat"))
            .map(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')).unwrap_or(true))
            .unwrap_or(true);
        assert!(gone, "{m}: daemon {daemon} still running");
    });
}

fn reversed(bytes: serde_bytes::ByteBuf) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(bytes.iter().rev().copied().collect::<Vec<u8>>())
}

/// Memory files of this process that hold a big payload.
fn payload_files() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("multiproc-payload"))
        .count()
}

/// Values big enough to travel in memory files of their own, through every
/// path (process arguments and results under each start method, a pool, a
/// queue, a pipe): each arrives whole, and no memory file or descriptor
/// stays behind.
#[test]
fn big_values_leave_no_memory_file_behind() {
    isolated("big_values_leave_no_memory_file_behind", big_values);
}

fn big_values() {
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
    let want: Vec<u8> = big.iter().rev().copied().collect();
    let arg = || serde_bytes::ByteBuf::from(big.clone());
    let pool = multiproc::Pool::new(2).unwrap();
    assert!(pool.apply(reversed, (arg(),)).unwrap().as_slice() == want.as_slice());
    let q: multiproc::Queue<serde_bytes::ByteBuf> = multiproc::Queue::new(0).unwrap();
    let (a, b) = multiproc::Pipe(true).unwrap();
    each_method(|m| {
        let mut p = Process::new(reversed, (arg(),)).with_start_method(m);
        p.start().unwrap();
        assert!(join(&mut p).unwrap().as_slice() == want.as_slice());
    });
    let before = multiproc::__private::open_fd_count().unwrap();
    for _ in 0..20 {
        each_method(|m| {
            let mut p = Process::new(reversed, (arg(),)).with_start_method(m);
            p.start().unwrap();
            assert!(join(&mut p).unwrap().as_slice() == want.as_slice(), "{m}");
        });
        let results = pool.map(reversed, (0..3).map(|_| arg())).unwrap();
        assert!(results.iter().all(|r| r.as_slice() == want.as_slice()));
        q.put(&arg()).unwrap();
        assert!(q.get().unwrap().as_slice() == big.as_slice());
        a.send(&arg()).unwrap();
        assert!(b.recv::<serde_bytes::ByteBuf>().unwrap().as_slice() == big.as_slice());
    }
    assert_eq!(payload_files(), 0, "memory files left open");
    assert_eq!(multiproc::__private::open_fd_count().unwrap(), before, "descriptors leaked");
    pool.close();
    pool.join().unwrap();
}
